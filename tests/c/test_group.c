/*
 * test_group.c — consumer groups on a log (FQ_P_NO_QUEUE_GROUP): create /
 * attach / conflict / delete, fan-out across groups, competing consumers in
 * one group, gating (FULL until the slowest group finishes), start positions
 * (EARLIEST / LATEST / SEQ) on a wrapped log, the ungated log overwriting its
 * oldest records, nack / extend / visibility timeout / late ack (FQ_ERR_LOST),
 * max_deliveries -> FQ_MSG_DEADLETTER -> fq_dead, counters, qsize, wake-ups of
 * fq_wait_data on deadlines; then threaded checks: a mixed workload of 2
 * groups x 2 consumers + 2 producers with random nack / late ack / extend /
 * abandon (each record finished exactly once per group), lease stealing
 * between concurrent retakers, and the group-creation race against the
 * ungated floor (the two-phase floor with c_floor_proposal).
 */
#include "fq_test.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

static double g_secs = 2.0;


static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int mklog(fq_queue *q, uint64_t cap, uint32_t max_groups, uint32_t window, uint32_t desc_count)
{
    fq_params p = fqt_params(cap);
    p.flags = FQ_P_NO_QUEUE_GROUP;
    p.max_groups = max_groups;
    p.window = window;
    p.desc_count = desc_count;
    int rc = fq_create(q, NULL, &p);
    if (rc == FQ_OK)
        rc = fq_join(q, FQ_M_KIND_PRODUCER | FQ_M_KIND_CONSUMER);
    return rc;
}

static fq_group_cfg gcfg(const char *name, uint32_t window, uint32_t maxd, uint32_t vis_ms)
{
    fq_group_cfg c;
    memset(&c, 0, sizeof c);
    c.name = name;
    c.window = window;
    c.max_deliveries = maxd;
    c.visibility_ms = vis_ms;
    c.start = FQ_START_EARLIEST;
    return c;
}

static int gopen(fq_queue *q, const char *name, uint32_t window, uint32_t maxd, uint32_t vis, uint32_t *g)
{
    fq_group_cfg c = gcfg(name, window, maxd, vis);
    int created = 0;
    return fq_group_open(q, &c, g, &created);
}

/* ---- self-checking records: [u64 key][u32 crc32c(body)][u32 len][body] ---- */
#define REC_HDR 16u
static int rec_put(fq_queue *q, uint32_t len, uint64_t key, uint64_t *seq_out)
{
    if (len < REC_HDR)
        len = REC_HDR;
    uint64_t seq;
    int rc = fq_claim(q, &len, 1, &seq);
    if (rc != FQ_OK)
        return rc;
    uint8_t *p = fq_payload(q, seq);
    fqt_fill(p + REC_HDR, len - REC_HDR, key);
    uint32_t crc = fq_crc32c(0, p + REC_HDR, len - REC_HDR);
    memcpy(p, &key, 8);
    memcpy(p + 8, &crc, 4);
    memcpy(p + 12, &len, 4);
    fq_commit(q, seq, 1);
    if (seq_out)
        *seq_out = seq;
    return FQ_OK;
}
/* 1 if intact; *key = the record's key. */
static int rec_ok(const fq_msg *m, uint64_t *key)
{
    if (m->len < REC_HDR)
        return 0;
    uint64_t k;
    uint32_t crc, len;
    memcpy(&k, m->data, 8);
    memcpy(&crc, m->data + 8, 4);
    memcpy(&len, m->data + 12, 4);
    if (key)
        *key = k;
    if (len != m->len)
        return 0;
    if (fq_crc32c(0, m->data + REC_HDR, m->len - REC_HDR) != crc)
        return 0;
    return fqt_verify(m->data + REC_HDR, m->len - REC_HDR, k);
}

static int take1(fq_queue *q, uint32_t g, fq_msg *m)
{
    uint32_t n = 0;
    int rc = fq_take(q, g, m, 1, 0, &n);
    if (rc == FQ_OK && n != 1)
        return -100;
    return rc;
}

static uint64_t glow(fq_queue *q, uint32_t g) { return atomic_load(&q->groups[g].g_low); }
static uint64_t gctr(_Atomic uint64_t *c) { return atomic_load(c); }

/* ------------------------------------------------------------------------ */
static void test_log_has_no_group0(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 14, 4, 64, 0), FQ_OK);
    uint32_t g = 99;
    FQT_ST(fq_group_find(&q, "queue", &g), FQ_ERR_NOENT);
    fq_msg m;
    uint32_t n = 7;
    FQT_ST(fq_take(&q, 0, &m, 1, 0, &n), FQ_ERR_NOENT);
    FQT_EQ(n, 0);
    /* producing into a log nobody reads never blocks */
    for (int i = 0; i < 2000; i++)
        FQT_ST(rec_put(&q, 64, (uint64_t)i, NULL), FQ_OK);
    FQT_EQ(fq_tail_seq(&q), 2000);
    fq_close(&q);
}

static void test_open_attach_conflict_delete(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 14, 3, 256, 0), FQ_OK);
    uint32_t g1 = 99, g2 = 99, g3;
    int created = -1;
    fq_group_cfg c = gcfg("alpha", 64, 3, 500);
    c.dlq = "alpha-dlq";
    FQT_ST(fq_group_open(&q, &c, &g1, &created), FQ_OK);
    FQT_EQ(created, 1);
    /* attach: same settings (start is not a setting) */
    c.start = FQ_START_LATEST;
    FQT_ST(fq_group_open(&q, &c, &g2, &created), FQ_OK);
    FQT_EQ(created, 0);
    FQT_EQ(g2, g1);
    /* window 50 rounds up to 64: the same group */
    c.window = 50;
    FQT_ST(fq_group_open(&q, &c, &g2, &created), FQ_OK);
    FQT_EQ(created, 0);
    c.window = 64;
    fq_group_cfg d = c;
    d.visibility_ms = 501;
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_ERR_CONFLICT);
    d = c;
    d.window = 128;
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_ERR_CONFLICT);
    d = c;
    d.max_deliveries = 4;
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_ERR_CONFLICT);
    d = c;
    d.dlq = NULL;
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_ERR_CONFLICT);
    d = c;
    d.backoff[0] = 10;
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_ERR_CONFLICT);
    /* bad arguments */
    d = c;
    d.name = "";
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_ERR_INVAL);
    char longname[80];
    memset(longname, 'x', 64);
    longname[64] = 0;
    d.name = longname;
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_ERR_INVAL);
    longname[63] = 0; /* 63 bytes: fine */
    FQT_ST(fq_group_open(&q, &d, &g3, &created), FQ_OK);
    FQT_EQ(created, 1);
    FQT_ST(fq_group_find(&q, longname, &g2), FQ_OK);
    FQT_EQ(g2, g3);
    d = gcfg("beta", 0, 255, 0);
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_ERR_INVAL);
    d.max_deliveries = 254;
    FQT_ST(fq_group_open(&q, &d, &g2, &created), FQ_OK);
    FQT_EQ(created, 1);
    /* the window defaults to 1024 clamped to window_max */
    fq_group_cfg info;
    char nm[64], dl[64];
    FQT_ST(fq_group_info(&q, g2, &info, nm, dl), FQ_OK);
    FQT_EQ(info.window, q.window);
    FQT_CHECK(q.window < 1024);
    FQT_EQ(info.max_deliveries, 254);
    FQT_CHECK(strcmp(nm, "beta") == 0);
    FQT_ST(fq_group_info(&q, g1, &info, nm, dl), FQ_OK);
    FQT_CHECK(strcmp(dl, "alpha-dlq") == 0);
    FQT_EQ(info.window, 64);
    FQT_EQ(info.visibility_ms, 500);
    /* table full */
    d = gcfg("gamma", 0, 0, 0);
    FQT_ST(fq_group_open(&q, &d, &g3, &created), FQ_ERR_GROUPS);
    /* attaching to an existing one still works when the table is full */
    FQT_ST(fq_group_open(&q, &c, &g3, &created), FQ_OK);
    FQT_EQ(g3, g1);
    /* delete frees a slot */
    FQT_ST(fq_group_delete(&q, "beta"), FQ_OK);
    FQT_ST(fq_group_delete(&q, "beta"), FQ_ERR_NOENT);
    FQT_ST(fq_group_find(&q, "beta", &g3), FQ_ERR_NOENT);
    fq_msg m;
    uint32_t n;
    FQT_ST(fq_take(&q, g2, &m, 1, 0, &n), FQ_ERR_NOENT);
    FQT_ST(fq_group_info(&q, g2, &info, nm, dl), FQ_ERR_NOENT);
    FQT_ST(fq_group_open(&q, &d, &g3, &created), FQ_OK);
    FQT_EQ(created, 1);
    FQT_EQ(g3, g2);
    /* an unjoined handle cannot administer groups */
    fq_queue h = q;
    h.member = -1;
    FQT_ST(fq_group_open(&h, &c, &g3, &created), FQ_ERR_INVAL);
    FQT_ST(fq_group_delete(&h, "alpha"), FQ_ERR_INVAL);
    fq_close(&q);
}

/* Every group sees every record, independently. */
static void test_fanout(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 4, 256, 0), FQ_OK);
    uint32_t g[3];
    FQT_REQUIRE_ST(gopen(&q, "a", 0, 0, 0, &g[0]), FQ_OK);
    FQT_REQUIRE_ST(gopen(&q, "b", 0, 0, 0, &g[1]), FQ_OK);
    FQT_REQUIRE_ST(gopen(&q, "c", 16, 0, 0, &g[2]), FQ_OK);
    const int N = 100;
    for (int i = 0; i < N; i++)
        FQT_ST(rec_put(&q, 16 + (uint32_t)(i * 13 % 200), 5000 + (uint64_t)i, NULL), FQ_OK);
    for (int k = 0; k < 3; k++)
        FQT_EQ(fq_qsize(&q, g[k]), N);
    /* group a consumes everything; b half; c nothing */
    fq_msg m[32];
    uint32_t n;
    int got = 0;
    while (got < N && fq_take(&q, g[0], m, 32, 0, &n) == FQ_OK) {
        for (uint32_t i = 0; i < n; i++) {
            uint64_t key;
            FQT_CHECK(rec_ok(&m[i], &key));
            FQT_EQ(m[i].seq, got + (int)i);
            FQT_EQ(key, 5000 + m[i].seq);
            FQT_EQ(m[i].deliveries, 1);
        }
        FQT_ST(fq_ack(&q, g[0], m, n), FQ_OK);
        got += (int)n;
    }
    FQT_EQ(got, N);
    FQT_EQ(fq_qsize(&q, g[0]), 0);
    FQT_EQ(fq_qsize(&q, g[1]), N);
    got = 0;
    while (got < N / 2 && fq_take(&q, g[1], m, 10, 0, &n) == FQ_OK) {
        for (uint32_t i = 0; i < n; i++)
            FQT_EQ(m[i].seq, got + (int)i);
        FQT_ST(fq_ack(&q, g[1], m, n), FQ_OK);
        got += (int)n;
    }
    FQT_EQ(fq_qsize(&q, g[1]), N - got);
    FQT_EQ(fq_qsize(&q, g[2]), N);
    /* window 16: c leases at most 16 at a time */
    FQT_ST(fq_take(&q, g[2], m, 32, 0, &n), FQ_OK);
    FQT_EQ(n, 16);
    uint32_t n2 = 9;
    FQT_ST(fq_take(&q, g[2], m + 16, 16, 0, &n2), FQ_EMPTY);
    FQT_EQ(n2, 0);
    FQT_ST(fq_ack(&q, g[2], m, 1), FQ_OK);
    FQT_ST(fq_take(&q, g[2], m + 16, 16, 0, &n2), FQ_OK);
    FQT_EQ(n2, 1);
    FQT_EQ(m[16].seq, 16);
    FQT_EQ(gctr(&q.groups[g[0]].g_delivered), N);
    fq_stats st;
    fq_get_stats(&q, g[2], &st);
    FQT_EQ(st.pending, 16);
    FQT_EQ(st.low, 1);
    FQT_EQ(st.delivered, 17);
    FQT_EQ(st.tail_seq, N);
    fq_close(&q);
}

/* The slowest gating group holds the ring. */
static void test_gating(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 4096, 4, 64, 0), FQ_OK);
    uint32_t a, b;
    FQT_REQUIRE_ST(gopen(&q, "fast", 0, 0, 0, &a), FQ_OK);
    FQT_REQUIRE_ST(gopen(&q, "slow", 0, 0, 0, &b), FQ_OK);
    int put = 0, rc;
    fq_msg m[64];
    uint32_t n;
    while ((rc = rec_put(&q, 100, (uint64_t)put, NULL)) == FQ_OK) {
        put++;
        /* group a keeps up */
        FQT_ST(fq_take(&q, a, m, 64, 0, &n), FQ_OK);
        FQT_ST(fq_ack(&q, a, m, n), FQ_OK);
        if (put > 1000)
            break;
    }
    FQT_ST(rc, FQ_FULL);
    FQT_CHECK(put > 10 && put < 100);
    FQT_EQ(fq_qsize(&q, a), 0);
    FQT_EQ(fq_qsize(&q, b), put);
    /* b leases without acking: still FULL */
    FQT_ST(fq_take(&q, b, m, 4, 0, &n), FQ_OK);
    FQT_EQ(n, 4);
    FQT_ST(rec_put(&q, 100, 1, NULL), FQ_FULL);
    /* b acks out of order (not the first): still FULL */
    FQT_ST(fq_ack(&q, b, &m[1], 3), FQ_OK);
    FQT_ST(rec_put(&q, 100, 1, NULL), FQ_FULL);
    FQT_EQ(glow(&q, b), 0);
    FQT_ST(fq_ack(&q, b, &m[0], 1), FQ_OK);
    FQT_EQ(glow(&q, b), 4);
    FQT_ST(rec_put(&q, 100, (uint64_t)put, NULL), FQ_OK);
    put++;
    /* fq_wait_space reports it too */
    FQT_ST(fq_wait_space(&q, 1, fq_frame_bytes(100), fq_now_ns() + 1000000), FQ_OK);
    fq_close(&q);
}

/* Two handles in one group compete: each record to one of them. */
static void test_competing(void)
{
    fq_queue q, h;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 256, 0), FQ_OK);
    FQT_REQUIRE_ST(fqt_clone(&h, &q, 3), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "work", 0, 0, 0, &g), FQ_OK);
    uint32_t g2;
    FQT_REQUIRE_ST(gopen(&h, "work", 0, 0, 0, &g2), FQ_OK);
    FQT_EQ(g2, g);
    const int N = 60;
    for (int i = 0; i < N; i++)
        FQT_ST(rec_put(&q, 32, (uint64_t)i, NULL), FQ_OK);
    fq_msg ma[N], mb[N];
    uint32_t na = 0, nb = 0, n;
    unsigned char seen[N];
    memset(seen, 0, sizeof seen);
    for (int round = 0; round < N; round++) {
        fq_queue *hq = (round & 1) ? &h : &q;
        fq_msg *out = (round & 1) ? mb + nb : ma + na;
        if (fq_take(hq, g, out, 1 + (uint32_t)(round % 3), 0, &n) != FQ_OK)
            break;
        for (uint32_t i = 0; i < n; i++) {
            FQT_CHECK(out[i].seq < (uint64_t)N);
            if (out[i].seq < (uint64_t)N)
                seen[out[i].seq]++;
        }
        if (round & 1)
            nb += n;
        else
            na += n;
    }
    FQT_EQ(na + nb, N);
    for (int i = 0; i < N; i++)
        FQT_EQ(seen[i], 1);
    /* acks of the other holder's lease fail */
    if (na && nb) {
        FQT_ST(fq_ack(&h, g, &ma[0], 1), FQ_ERR_LOST);
        FQT_ST(fq_nack(&h, g, &ma[0], 0), FQ_ERR_LOST);
        FQT_ST(fq_extend(&h, g, &ma[0], 1000), FQ_ERR_LOST);
    }
    FQT_ST(fq_ack(&q, g, ma, na), FQ_OK);
    FQT_ST(fq_ack(&h, g, mb, nb), FQ_OK);
    FQT_EQ(fq_qsize(&q, g), 0);
    FQT_EQ(glow(&q, g), N);
    /* leaving returns a handle's leases to the group */
    FQT_ST(rec_put(&q, 32, 777, NULL), FQ_OK);
    FQT_ST(take1(&h, g, &ma[0]), FQ_OK);
    fqt_unclone(&h);
    FQT_ST(take1(&q, g, &mb[0]), FQ_OK);
    FQT_EQ(mb[0].seq, N);
    FQT_EQ(mb[0].deliveries, 2);
    FQT_ST(fq_ack(&q, g, &mb[0], 1), FQ_OK);
    FQT_EQ(fq_qsize(&q, g), 0);
    fq_close(&q);
}

static void test_nack(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 0), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "n", 0, 0, 0, &g), FQ_OK);
    for (int i = 0; i < 3; i++)
        FQT_ST(rec_put(&q, 40, 100 + (uint64_t)i, NULL), FQ_OK);
    fq_msg m, m2;
    FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK);
    FQT_EQ(m.seq, 0);
    FQT_ST(fq_nack(&q, g, &m, 0), FQ_OK);
    FQT_ST(fq_nack(&q, g, &m, 0), FQ_ERR_LOST); /* no longer leased */
    FQT_ST(fq_ack(&q, g, &m, 1), FQ_ERR_LOST);
    FQT_EQ(gctr(&q.groups[g].g_nacked), 1);
    FQT_EQ(atomic_load(&q.groups[g].g_retry_pending), 1);
    /* the retry comes first, with deliveries 2 */
    FQT_REQUIRE_ST(take1(&q, g, &m2), FQ_OK);
    FQT_EQ(m2.seq, 0);
    FQT_EQ(m2.deliveries, 2);
    FQT_CHECK(rec_ok(&m2, NULL));
    FQT_EQ(gctr(&q.groups[g].g_redelivered), 1);
    FQT_EQ(gctr(&q.groups[g].g_expired), 0);
    FQT_EQ(atomic_load(&q.groups[g].g_retry_pending), 0);
    /* nack with a delay: invisible until it passes */
    FQT_ST(fq_nack(&q, g, &m2, 40 * 1000000ull), FQ_OK);
    fq_msg a, b;
    FQT_REQUIRE_ST(take1(&q, g, &a), FQ_OK);
    FQT_EQ(a.seq, 1);
    FQT_REQUIRE_ST(take1(&q, g, &b), FQ_OK);
    FQT_EQ(b.seq, 2);
    FQT_ST(take1(&q, g, &m), FQ_EMPTY);
    FQT_EQ(fq_qsize(&q, g), 3);
    int64_t t0 = fq_now_ns();
    /* fq_wait_data wakes at the end of the delay (not at its own deadline) */
    int rc;
    do
        rc = fq_wait_data(&q, g, t0 + 3000000000LL, 0);
    while (rc == FQ_TIMEOUT && fq_now_ns() < t0 + 3000000000LL);
    FQT_ST(rc, FQ_OK);
    int64_t waited = fq_now_ns() - t0;
    FQT_CHECKM(waited >= 30000000 && waited < 1000000000, "waited %lld ns for a 40 ms nack", (long long)waited);
    FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK);
    FQT_EQ(m.seq, 0);
    FQT_EQ(m.deliveries, 3);
    FQT_ST(fq_ack(&q, g, &m, 1), FQ_OK);
    FQT_ST(fq_ack(&q, g, &a, 1), FQ_OK);
    FQT_ST(fq_ack(&q, g, &b, 1), FQ_OK);
    FQT_EQ(fq_qsize(&q, g), 0);
    FQT_EQ(glow(&q, g), 3);
    FQT_EQ(gctr(&q.groups[g].g_delivered), 5);
    FQT_EQ(gctr(&q.groups[g].g_redelivered), 2);
    FQT_EQ(gctr(&q.groups[g].g_nacked), 2);
    fq_close(&q);
}

/* visibility timeout: redelivery to the next taker, late ack/extend/nack LOST */
static void test_visibility(void)
{
    fq_queue q, h;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 0), FQ_OK);
    FQT_REQUIRE_ST(fqt_clone(&h, &q, 3), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "v", 0, 0, 30, &g), FQ_OK);
    for (int i = 0; i < 3; i++)
        FQT_ST(rec_put(&q, 40, 200 + (uint64_t)i, NULL), FQ_OK);
    fq_msg m0, m1, r;
    FQT_REQUIRE_ST(take1(&q, g, &m0), FQ_OK);
    FQT_EQ(m0.seq, 0);
    FQT_REQUIRE_ST(take1(&q, g, &m1), FQ_OK);
    FQT_EQ(m1.seq, 1);
    /* within the timeout the other handle gets the next record only */
    FQT_REQUIRE_ST(take1(&h, g, &r), FQ_OK);
    FQT_EQ(r.seq, 2);
    FQT_ST(fq_ack(&h, g, &r, 1), FQ_OK);
    FQT_ST(take1(&h, g, &r), FQ_EMPTY);
    /* fq_wait_data wakes when the lease expires */
    int64_t t0 = fq_now_ns();
    int rc;
    do
        rc = fq_wait_data(&h, g, t0 + 3000000000LL, 0);
    while (rc == FQ_TIMEOUT && fq_now_ns() < t0 + 3000000000LL);
    FQT_ST(rc, FQ_OK);
    int64_t waited = fq_now_ns() - t0;
    FQT_CHECKM(waited >= 15000000 && waited < 1000000000, "waited %lld ns for a 30 ms lease", (long long)waited);
    sleep_ms(5);
    /* an expired lease not yet retaken can still be acked by its holder */
    FQT_ST(fq_ack(&q, g, &m1, 1), FQ_OK);
    /* the other one goes to the next taker */
    FQT_REQUIRE_ST(take1(&h, g, &r), FQ_OK);
    FQT_EQ(r.seq, 0);
    FQT_EQ(r.deliveries, 2);
    FQT_CHECK(rec_ok(&r, NULL));
    FQT_ST(take1(&h, g, &m1), FQ_EMPTY);
    FQT_EQ(gctr(&q.groups[g].g_expired), 1);
    FQT_EQ(gctr(&q.groups[g].g_redelivered), 1);
    /* the old holder lost it */
    FQT_ST(fq_ack(&q, g, &m0, 1), FQ_ERR_LOST);
    FQT_ST(fq_extend(&q, g, &m0, 1000), FQ_ERR_LOST);
    FQT_ST(fq_nack(&q, g, &m0, 0), FQ_ERR_LOST);
    FQT_ST(fq_dead(&q, g, &m0, 1), FQ_ERR_LOST);
    FQT_EQ(fq_qsize(&q, g), 1);
    FQT_EQ(glow(&q, g), 0);
    /* the new holder still holds it */
    FQT_ST(fq_ack(&h, g, &r, 1), FQ_OK);
    FQT_EQ(fq_qsize(&q, g), 0);
    FQT_EQ(glow(&q, g), 3);
    FQT_EQ(gctr(&q.groups[g].g_dead), 0);
    /* the same handle retaking its own expired lease: the old msg is stale */
    FQT_ST(rec_put(&q, 40, 300, NULL), FQ_OK);
    FQT_REQUIRE_ST(take1(&q, g, &m0), FQ_OK);
    sleep_ms(45);
    FQT_REQUIRE_ST(take1(&q, g, &r), FQ_OK);
    FQT_EQ(r.seq, m0.seq);
    FQT_EQ(r.deliveries, 2);
    FQT_ST(fq_ack(&q, g, &m0, 1), FQ_ERR_LOST);
    FQT_ST(fq_ack(&q, g, &r, 1), FQ_OK);
    FQT_EQ(fq_qsize(&q, g), 0);
    fqt_unclone(&h);
    fq_close(&q);
}

static void test_extend(void)
{
    fq_queue q, h;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 0), FQ_OK);
    FQT_REQUIRE_ST(fqt_clone(&h, &q, 3), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "e", 0, 0, 40, &g), FQ_OK);
    FQT_ST(rec_put(&q, 40, 1, NULL), FQ_OK);
    fq_msg m, r;
    FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK);
    /* keep renewing well past the original 40 ms */
    for (int i = 0; i < 6; i++) {
        sleep_ms(20);
        FQT_ST(fq_extend(&q, g, &m, 60), FQ_OK);
        FQT_ST(take1(&h, g, &r), FQ_EMPTY);
    }
    FQT_EQ(gctr(&q.groups[g].g_expired), 0);
    /* stop renewing: it expires */
    sleep_ms(90);
    FQT_REQUIRE_ST(take1(&h, g, &r), FQ_OK);
    FQT_EQ(r.deliveries, 2);
    FQT_ST(fq_extend(&q, g, &m, 60), FQ_ERR_LOST);
    /* the new holder can extend its own */
    FQT_ST(fq_extend(&h, g, &r, 500), FQ_OK);
    sleep_ms(60);
    FQT_ST(take1(&q, g, &m), FQ_EMPTY);
    FQT_ST(fq_ack(&h, g, &r, 1), FQ_OK);
    FQT_EQ(fq_qsize(&q, g), 0);
    fqt_unclone(&h);
    fq_close(&q);
}

/* max_deliveries: the delivery past the limit carries FQ_MSG_DEADLETTER */
static void test_deadletter(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 0), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "d", 0, 2, 25, &g), FQ_OK);
    FQT_ST(rec_put(&q, 40, 11, NULL), FQ_OK);
    FQT_ST(rec_put(&q, 40, 12, NULL), FQ_OK);
    fq_msg m;
    /* seq 0: by nacks */
    FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK);
    FQT_EQ(m.seq, 0);
    FQT_EQ(m.deliveries, 1);
    FQT_EQ(m.flags & FQ_MSG_DEADLETTER, 0);
    FQT_ST(fq_nack(&q, g, &m, 0), FQ_OK);
    FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK);
    FQT_EQ(m.seq, 0);
    FQT_EQ(m.deliveries, 2);
    FQT_EQ(m.flags & FQ_MSG_DEADLETTER, 0);
    FQT_ST(fq_nack(&q, g, &m, 0), FQ_OK);
    FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK);
    FQT_EQ(m.seq, 0);
    FQT_EQ(m.deliveries, 3);
    FQT_EQ(m.flags & FQ_MSG_DEADLETTER, FQ_MSG_DEADLETTER);
    FQT_CHECK(rec_ok(&m, NULL)); /* still readable: to be copied to the DLQ */
    FQT_ST(fq_dead(&q, g, &m, 1), FQ_OK);
    FQT_ST(fq_dead(&q, g, &m, 1), FQ_ERR_LOST);
    FQT_EQ(gctr(&q.groups[g].g_dead), 1);
    FQT_EQ(glow(&q, g), 1);
    FQT_EQ(fq_qsize(&q, g), 1);
    /* seq 1: by visibility timeouts */
    for (uint32_t d = 1; d <= 3; d++) {
        FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK);
        FQT_EQ(m.seq, 1);
        FQT_EQ(m.deliveries, d);
        FQT_EQ(m.flags & FQ_MSG_DEADLETTER, d == 3 ? FQ_MSG_DEADLETTER : 0);
        if (d < 3)
            sleep_ms(40);
    }
    FQT_ST(fq_dead(&q, g, &m, 1), FQ_OK);
    FQT_EQ(gctr(&q.groups[g].g_dead), 2);
    FQT_EQ(gctr(&q.groups[g].g_expired), 2);
    FQT_EQ(gctr(&q.groups[g].g_nacked), 2);
    FQT_EQ(gctr(&q.groups[g].g_redelivered), 4);
    FQT_EQ(gctr(&q.groups[g].g_delivered), 6);
    FQT_EQ(fq_qsize(&q, g), 0);
    FQT_EQ(glow(&q, g), 2);
    fq_stats st;
    fq_get_stats(&q, g, &st);
    FQT_EQ(st.dead, 2);
    FQT_EQ(st.expired, 2);
    FQT_EQ(st.nacked, 2);
    FQT_EQ(st.redelivered, 4);
    FQT_EQ(st.pending, 0);
    FQT_EQ(st.acked, 2); /* dead counts as finished */
    fq_close(&q);
}

/* fq_dead of a batch where one lease was lost: the others are finished
 * (DEAD) and must be counted in g_dead. */
static void test_dead_partial_count(void)
{
    fq_queue q, h;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 0), FQ_OK);
    FQT_REQUIRE_ST(fqt_clone(&h, &q, 3), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "dp", 0, 0, 20, &g), FQ_OK);
    FQT_ST(rec_put(&q, 40, 1, NULL), FQ_OK);
    FQT_ST(rec_put(&q, 40, 2, NULL), FQ_OK);
    fq_msg m[2], r;
    uint32_t n;
    FQT_REQUIRE_ST(fq_take(&q, g, m, 2, 0, &n), FQ_OK);
    FQT_REQUIRE(n == 2);
    sleep_ms(40);
    /* another consumer retakes seq 0 only */
    uint32_t n1;
    FQT_REQUIRE_ST(fq_take(&h, g, &r, 1, 0, &n1), FQ_OK);
    FQT_EQ(r.seq, 0);
    FQT_ST(fq_extend(&q, g, &m[1], 10000), FQ_OK);
    FQT_ST(fq_dead(&q, g, m, 2), FQ_ERR_LOST); /* seq 0 lost, seq 1 finished as DEAD */
    FQT_EQ(fq_qsize(&q, g), 1);
    FQT_CHECKM(gctr(&q.groups[g].g_dead) == 1, "g_dead = %" PRIu64 " after one record was dead-lettered",
               gctr(&q.groups[g].g_dead));
    FQT_ST(fq_ack(&h, g, &r, 1), FQ_OK);
    FQT_EQ(fq_qsize(&q, g), 0);
    fqt_unclone(&h);
    fq_close(&q);
}

/* A log without groups overwrites only what a claim needs, oldest first;
 * a group created later at EARLIEST starts at the oldest record held. */
static void test_ungated_overwrite(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 4096, 4, 64, 0), FQ_OK);
    uint64_t prev_floor = 0, held = 0;
    const uint32_t LEN = 96; /* 128-byte frames: 32 fit the arena */
    for (int i = 0; i < 300; i++) {
        uint64_t seq;
        FQT_ST(rec_put(&q, LEN, 1000 + (uint64_t)i, &seq), FQ_OK);
        FQT_EQ(seq, i);
        fq_stats st;
        fq_get_stats(&q, 0, &st);
        FQT_CHECK(st.floor_seq >= prev_floor);
        if (i >= 40) {
            /* steady state: one record overwritten per record written */
            FQT_EQ(st.floor_seq, prev_floor + 1);
            FQT_EQ(st.tail_seq - st.floor_seq, held);
        }
        held = st.tail_seq - st.floor_seq;
        prev_floor = st.floor_seq;
    }
    FQT_CHECKM(held >= 31 && held <= 32, "the log holds %" PRIu64 " records of 128 bytes in 4096", held);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "late", 0, 0, 0, &g), FQ_OK);
    fq_stats st;
    fq_get_stats(&q, g, &st);
    FQT_EQ(st.low, st.floor_seq);
    FQT_EQ(fq_qsize(&q, g), held);
    uint64_t expect = st.floor_seq;
    fq_msg m[64];
    uint32_t n;
    while (fq_take(&q, g, m, 64, 0, &n) == FQ_OK) {
        for (uint32_t i = 0; i < n; i++) {
            uint64_t key;
            FQT_EQ(m[i].seq, expect);
            FQT_CHECKM(rec_ok(&m[i], &key) && key == 1000 + m[i].seq, "record %" PRIu64 " damaged", m[i].seq);
            expect++;
        }
        FQT_ST(fq_ack(&q, g, m, n), FQ_OK);
    }
    FQT_EQ(expect, 300);
    FQT_EQ(fq_qsize(&q, g), 0);
    fq_close(&q);
}

/* Start positions on a log that has wrapped (many laps of arena and descriptors). */
static void test_start_positions(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 4096, 8, 64, 64), FQ_OK);
    for (int i = 0; i < 1000; i++)
        FQT_ST(rec_put(&q, 16 + (uint32_t)(i * 37 % 120), (uint64_t)i, NULL), FQ_OK);
    fq_stats st;
    fq_get_stats(&q, 0, &st);
    uint64_t fs = st.floor_seq, ts = st.tail_seq;
    FQT_EQ(ts, 1000);
    FQT_CHECK(fs > 900 && fs < ts);
    fq_group_cfg c;
    uint32_t g;
    int created;
    /* SEQ too old / beyond the tail */
    c = gcfg("seq-old", 0, 0, 0);
    c.start = FQ_START_SEQ;
    c.start_seq = fs - 1;
    FQT_ST(fq_group_open(&q, &c, &g, &created), FQ_ERR_RANGE);
    c.start_seq = 0;
    FQT_ST(fq_group_open(&q, &c, &g, &created), FQ_ERR_RANGE);
    c.start_seq = ts + 1;
    FQT_ST(fq_group_open(&q, &c, &g, &created), FQ_ERR_RANGE);
    FQT_ST(fq_group_find(&q, "seq-old", &g), FQ_ERR_NOENT);
    /* a failed open leaves no group behind (and no hold on the ring) */
    fq_get_stats(&q, 0, &st);
    FQT_EQ(st.floor_seq, fs);
    /* SEQ in the middle */
    uint32_t gs, ge, gl, gt;
    c.name = "seq-mid";
    c.start_seq = fs + 5;
    FQT_REQUIRE_ST(fq_group_open(&q, &c, &gs, &created), FQ_OK);
    c.name = "seq-tail";
    c.start_seq = ts;
    FQT_REQUIRE_ST(fq_group_open(&q, &c, &gt, &created), FQ_OK);
    c = gcfg("earliest", 0, 0, 0);
    FQT_REQUIRE_ST(fq_group_open(&q, &c, &ge, &created), FQ_OK);
    c = gcfg("latest", 0, 0, 0);
    c.start = FQ_START_LATEST;
    FQT_REQUIRE_ST(fq_group_open(&q, &c, &gl, &created), FQ_OK);
    FQT_EQ(fq_qsize(&q, gs), ts - fs - 5);
    FQT_EQ(fq_qsize(&q, ge), ts - fs);
    FQT_EQ(fq_qsize(&q, gl), 0);
    FQT_EQ(fq_qsize(&q, gt), 0);
    fq_msg m[64];
    uint32_t n;
    FQT_ST(fq_take(&q, gl, m, 64, 0, &n), FQ_EMPTY);
    FQT_ST(fq_take(&q, gt, m, 64, 0, &n), FQ_EMPTY);
    FQT_REQUIRE_ST(fq_take(&q, gs, m, 1, 0, &n), FQ_OK);
    FQT_EQ(m[0].seq, fs + 5);
    uint64_t key;
    FQT_CHECK(rec_ok(&m[0], &key) && key == fs + 5);
    FQT_ST(fq_ack(&q, gs, m, 1), FQ_OK);
    uint64_t expect = fs;
    while (fq_take(&q, ge, m, 64, 0, &n) == FQ_OK) {
        for (uint32_t i = 0; i < n; i++) {
            FQT_EQ(m[i].seq, expect);
            FQT_CHECK(rec_ok(&m[i], &key) && key == m[i].seq);
            expect++;
        }
        FQT_ST(fq_ack(&q, ge, m, n), FQ_OK);
    }
    FQT_EQ(expect, ts);
    /* new records reach every group */
    FQT_ST(rec_put(&q, 16, 5555, NULL), FQ_OK);
    uint32_t gg[3] = {gl, gt, ge};
    for (int k = 0; k < 3; k++) {
        FQT_REQUIRE_ST(fq_take(&q, gg[k], m, 64, 0, &n), FQ_OK);
        FQT_EQ(n, 1);
        FQT_EQ(m[0].seq, ts);
        FQT_ST(fq_ack(&q, gg[k], m, 1), FQ_OK);
        FQT_EQ(fq_qsize(&q, gg[k]), 0);
    }
    /* the groups now gate the log: the slowest (seq-mid) holds it */
    int puts = 0;
    while (rec_put(&q, 16, 1, NULL) == FQ_OK && puts < 1000)
        puts++;
    FQT_CHECK(puts < 1000);
    FQT_EQ(st.floor_seq, fs);
    fq_get_stats(&q, 0, &st);
    FQT_EQ(st.floor_seq, fs + 6); /* seq-mid acked fs+5 only */
    /* deleting it moves the hold to the next slowest (the others, at ts+1) */
    FQT_ST(fq_group_delete(&q, "seq-mid"), FQ_OK);
    int more = 0;
    while (rec_put(&q, 16, 1, NULL) == FQ_OK && more < 1000)
        more++;
    FQT_CHECK(more > 0 && more < 1000);
    fq_get_stats(&q, 0, &st);
    FQT_EQ(st.floor_seq, ts + 1);
    FQT_ST(rec_put(&q, 16, 1, NULL), FQ_FULL);
    fq_close(&q);
}

/* Deleting the group that holds the ring lets a blocked producer go on. */
struct blocked_arg {
    fq_queue *q;
    _Atomic int done;
    int rc;
};
static void *blocked_producer(void *p)
{
    struct blocked_arg *a = p;
    fq_queue h;
    if (fqt_clone(&h, a->q, 3) != FQ_OK) {
        a->rc = -999;
        atomic_store(&a->done, 1);
        return NULL;
    }
    int64_t until = fq_now_ns() + 5000000000LL;
    int rc;
    for (;;) {
        rc = rec_put(&h, 100, 42, NULL);
        if (rc != FQ_FULL || fq_now_ns() > until)
            break;
        fq_wait_space(&h, 1, fq_frame_bytes(100), fq_now_ns() + 100000000LL);
    }
    a->rc = rc;
    atomic_store(&a->done, 1);
    fqt_unclone(&h);
    return NULL;
}
static void test_delete_releases_producer(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 4096, 2, 64, 0), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "holder", 0, 0, 0, &g), FQ_OK);
    int puts = 0;
    while (rec_put(&q, 100, (uint64_t)puts, NULL) == FQ_OK)
        puts++;
    fq_msg m;
    FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK); /* a lease of the deleted group */
    struct blocked_arg a = {.q = &q};
    pthread_t t;
    pthread_create(&t, NULL, blocked_producer, &a);
    sleep_ms(50);
    FQT_EQ(atomic_load(&a.done), 0);
    FQT_ST(fq_group_delete(&q, "holder"), FQ_OK);
    int64_t t0 = fq_now_ns();
    while (!atomic_load(&a.done) && fq_now_ns() - t0 < 3000000000LL)
        sleep_ms(1);
    pthread_join(t, NULL);
    FQT_ST(a.rc, FQ_OK);
    FQT_CHECKM(fq_now_ns() - t0 < 1000000000LL, "producer took %lld ms after the delete",
               (long long)((fq_now_ns() - t0) / 1000000));
    FQT_ST(take1(&q, g, &m), FQ_ERR_NOENT);
    /* with no group left the log overwrites */
    for (int i = 0; i < 200; i++)
        FQT_ST(rec_put(&q, 100, 7, NULL), FQ_OK);
    fq_close(&q);
}

/* A member's ack count (m_ack_word, counted toward m_group, 0 by default)
 * must not leak into a new group that reuses the slot of a deleted one. */
static void test_slot_reuse_qsize(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 0), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "first", 0, 0, 0, &g), FQ_OK);
    FQT_EQ(g, 0);
    for (int i = 0; i < 5; i++)
        FQT_ST(rec_put(&q, 32, (uint64_t)i, NULL), FQ_OK);
    fq_msg m[8];
    uint32_t n;
    FQT_REQUIRE_ST(fq_take(&q, g, m, 8, 0, &n), FQ_OK);
    FQT_ST(fq_ack(&q, g, m, n), FQ_OK);
    FQT_EQ(fq_qsize(&q, g), 0);
    FQT_ST(fq_group_delete(&q, "first"), FQ_OK);
    uint32_t g2;
    fq_group_cfg c = gcfg("second", 0, 0, 0);
    c.start = FQ_START_LATEST;
    int created;
    FQT_REQUIRE_ST(fq_group_open(&q, &c, &g2, &created), FQ_OK);
    FQT_EQ(g2, 0);
    for (int i = 0; i < 3; i++)
        FQT_ST(rec_put(&q, 32, (uint64_t)i, NULL), FQ_OK);
    FQT_CHECKM(fq_qsize(&q, g2) == 3, "qsize of a new group = %" PRIu64 ", want 3 (3 records, none taken)",
               fq_qsize(&q, g2));
    fq_stats st;
    fq_get_stats(&q, g2, &st);
    FQT_CHECKM(st.acked == 0, "stats.acked of a new group = %" PRIu64, st.acked);
    fq_close(&q);
}

/* A consumer killed right after the CAS of fq_dead (before its ack count
 * is updated): recovery must count the record as finished. */
static void test_fork_dead_letter_crash(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 14, 2, 64, 0), FQ_OK);
    uint32_t g;
    FQT_REQUIRE_ST(gopen(&q, "c", 0, 1, 0, &g), FQ_OK);
    FQT_EQ(g, 0); /* the child's default m_group: its count is journaled */
    FQT_ST(rec_put(&q, 32, 1, NULL), FQ_OK);
    FQT_ST(rec_put(&q, 32, 2, NULL), FQ_OK);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        fq_after_fork_child(&q);
        if (fq_join(&q, 3) != FQ_OK)
            _exit(3);
        fq_msg m;
        if (take1(&q, g, &m) != FQ_OK)
            _exit(4);
        fq_crash_arm("cons.after_ack");
        fq_dead(&q, g, &m, 1);
        _exit(0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        ;
    FQT_REQUIRE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    FQT_EQ(fq_maintain(&q, 1), 1);
    fq_msg m;
    FQT_REQUIRE_ST(take1(&q, g, &m), FQ_OK);
    FQT_EQ(m.seq, 1);
    FQT_ST(fq_ack(&q, g, &m, 1), FQ_OK);
    FQT_EQ(glow(&q, g), 2);
    FQT_CHECKM(fq_qsize(&q, g) == 0, "qsize %" PRIu64 " after both records were finished (one dead-lettered by a "
                                     "consumer killed after its DEAD CAS)", fq_qsize(&q, g));
    fq_close(&q);
}

/* ------------------------------------------------------------------------ */
/* Threads: 2 groups x 2 consumers + 2 producers, random nack / late ack /
 * extend / abandon; each record finished (ack or dead) exactly once per group. */
#define MT_PRODUCERS 2
#define MT_GROUPS 2
#define MT_CONS 2
#define MT_MAXREC (1u << 18)
/* Under TSan, leases never expire by the clock in this test: a time-based
 * redelivery has no happens-before edge TSan can see (the old holder's reads
 * of the payload vs. the producer that reuses the bytes after the new holder
 * acked), so late acks and abandoned leases are left to the plain/ASan runs. */
#define MT_VIS (FQT_TSAN ? 20000 : 25)
#define MT_LATE_ACTIONS (!FQT_TSAN)

struct mt_shared {
    fq_queue *q;
    uint32_t g[MT_GROUPS];
    uint32_t maxd[MT_GROUPS];
    _Atomic uint64_t produced[MT_PRODUCERS];
    _Atomic int producers_done;
    _Atomic int stop;
    _Atomic uint8_t *finished[MT_GROUPS]; /* [producer * MT_MAXREC + i] */
    _Atomic uint64_t deliveries[MT_GROUPS], redeliveries[MT_GROUPS], dead_ok[MT_GROUPS], fin[MT_GROUPS];
    _Atomic uint64_t lost_ack[MT_GROUPS], late[MT_GROUPS], nacks_ok[MT_GROUPS], bad[MT_GROUPS];
};
struct mt_arg {
    struct mt_shared *s;
    int id, gi;
};

static void *mt_producer(void *p)
{
    struct mt_arg *a = p;
    struct mt_shared *s = a->s;
    fq_queue h;
    if (fqt_clone(&h, s->q, 3) != FQ_OK) {
        FQT_CHECK(0);
        return NULL;
    }
    fqt_rng r;
    fqt_seed(&r, 1000 + (uint64_t)a->id);
    int64_t end = fq_now_ns() + (int64_t)(g_secs * 0.5e9);
    uint64_t i = 0;
    while (fq_now_ns() < end && i < MT_MAXREC) {
        uint64_t key = ((uint64_t)a->id << 32) | i;
        uint32_t len = REC_HDR + fqt_below(&r, 300);
        int rc = rec_put(&h, len, key, NULL);
        if (rc == FQ_OK) {
            i++;
            atomic_store(&s->produced[a->id], i);
        } else if (rc == FQ_FULL) {
            fq_wait_space(&h, 1, fq_frame_bytes(len), fq_now_ns() + 20000000);
        } else {
            FQT_CHECKM(0, "producer: %s", fq_strerror(rc));
            break;
        }
    }
    fqt_unclone(&h);
    return NULL;
}

static void *mt_consumer(void *p)
{
    struct mt_arg *a = p;
    struct mt_shared *s = a->s;
    int gi = a->gi;
    uint32_t g = s->g[gi];
    fq_queue h;
    if (fqt_clone(&h, s->q, 3) != FQ_OK) {
        FQT_CHECK(0);
        return NULL;
    }
    fq_member_group(&h, g);
    fqt_rng r;
    fqt_seed(&r, 77 + (uint64_t)a->id * 13 + (uint64_t)gi);
    fq_msg m[8];
    while (!atomic_load(&s->stop)) {
        int draining = atomic_load(&s->producers_done);
        uint32_t n = 0;
        int rc = fq_take(&h, g, m, 1 + fqt_below(&r, 8), 0, &n);
        if (rc == FQ_ERR_NOENT) {
            FQT_CHECK(0);
            break;
        }
        if (rc != FQ_OK) {
            FQT_CHECKM(rc == FQ_EMPTY || rc == FQ_STALLED, "take: %s", fq_strerror(rc));
            fq_wait_data(&h, g, fq_now_ns() + 5000000, 0);
            continue;
        }
        atomic_fetch_add(&s->deliveries[gi], n);
        /* payloads are valid only while the lease is held: check them all
         * now, before any (late) processing lets the other leases expire */
        uint64_t keys[8];
        int ok[8];
        for (uint32_t i = 0; i < n; i++) {
            ok[i] = rec_ok(&m[i], &keys[i]);
            if (!ok[i]) {
                uint64_t w = atomic_load(&fq__lease(&h, g, m[i].seq)->l_w);
                if (w == fq__lw(m[i].seq, m[i].deliveries, (unsigned)h.member, FQ_L_LEASED)) {
                    atomic_fetch_add(&s->bad[gi], 1);
                    FQT_CHECKM(0, "group %d: record %" PRIu64 " damaged while leased", gi, m[i].seq);
                }
            }
        }
        for (uint32_t i = 0; i < n; i++) {
            uint64_t key = keys[i];
            if (m[i].deliveries > 1)
                atomic_fetch_add(&s->redeliveries[gi], 1);
            if (!ok[i]) { /* lost before we could read it (preempted past the timeout) */
                atomic_fetch_add(&s->lost_ack[gi], 1);
                continue;
            }
            uint32_t prod = (uint32_t)(key >> 32), idx = (uint32_t)key;
            if (prod >= MT_PRODUCERS || idx >= MT_MAXREC) {
                FQT_CHECK(0);
                continue;
            }
            uint32_t maxd = s->maxd[gi];
            int flagged = (m[i].flags & FQ_MSG_DEADLETTER) != 0;
            FQT_CHECKM(flagged == (maxd && m[i].deliveries > maxd), "flag %d deliveries %u maxd %u", flagged,
                       m[i].deliveries, maxd);
            _Atomic uint8_t *fin = &s->finished[gi][(size_t)prod * MT_MAXREC + idx];
            if (flagged) {
                rc = fq_dead(&h, g, &m[i], 1);
                if (rc == FQ_OK) {
                    atomic_fetch_add(&s->dead_ok[gi], 1);
                    atomic_fetch_add(fin, 1);
                    atomic_fetch_add(&s->fin[gi], 1);
                } else {
                    FQT_CHECKM(rc == FQ_ERR_LOST, "dead: %s", fq_strerror(rc));
                    atomic_fetch_add(&s->lost_ack[gi], 1);
                }
                continue;
            }
            uint32_t act = draining ? 99 : fqt_below(&r, 100);
            if (act < 8) { /* nack, maybe with a small delay */
                rc = fq_nack(&h, g, &m[i], fqt_below(&r, 2) ? 0 : (uint64_t)fqt_below(&r, 3000000));
                FQT_CHECKM(rc == FQ_OK || rc == FQ_ERR_LOST, "nack: %s", fq_strerror(rc));
                if (rc == FQ_OK)
                    atomic_fetch_add(&s->nacks_ok[gi], 1);
                continue;
            }
            if (act < 9 && MT_LATE_ACTIONS) { /* abandon: must come back after the timeout */
                continue;
            }
            if (act < 11 && MT_LATE_ACTIONS) { /* late: sleep past the lease, then ack */
                atomic_fetch_add(&s->late[gi], 1);
                sleep_ms(MT_VIS + 5 + (int)fqt_below(&r, 10));
            } else if (act < 14) { /* extend, work a little, ack */
                rc = fq_extend(&h, g, &m[i], 200);
                FQT_CHECKM(rc == FQ_OK || rc == FQ_ERR_LOST, "extend: %s", fq_strerror(rc));
                if (rc == FQ_OK)
                    sleep_ms(1 + (int)fqt_below(&r, 3));
            }
            rc = fq_ack(&h, g, &m[i], 1);
            if (rc == FQ_OK) {
                uint8_t before = atomic_fetch_add(fin, 1);
                FQT_CHECKM(before == 0, "group %d: key %u/%u finished twice (seq %" PRIu64 ", deliveries %u)", gi,
                           prod, idx, m[i].seq, m[i].deliveries);
                atomic_fetch_add(&s->fin[gi], 1);
            } else {
                FQT_CHECKM(rc == FQ_ERR_LOST, "ack: %s", fq_strerror(rc));
                atomic_fetch_add(&s->lost_ack[gi], 1);
            }
        }
    }
    fqt_unclone(&h);
    return NULL;
}

static int mt_nack_forgotten;     /* test_mt_groups hit the forgotten-nack bug */
static int64_t mt_retry_pending_bad; /* nonzero g_retry_pending left by test_mt_groups */
static int mt_groups_ran;

static void test_mt_groups(void)
{
    mt_groups_ran = 1;
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 15, 4, 256, 0), FQ_OK);
    struct mt_shared *s = calloc(1, sizeof *s);
    s->q = &q;
    for (int gi = 0; gi < MT_GROUPS; gi++) {
        char name[16];
        snprintf(name, sizeof name, "mt%d", gi);
        s->maxd[gi] = gi == 0 ? 0 : 3;
        FQT_REQUIRE_ST(gopen(&q, name, gi == 0 ? 256 : 32, s->maxd[gi], MT_VIS, &s->g[gi]), FQ_OK);
        s->finished[gi] = calloc((size_t)MT_PRODUCERS * MT_MAXREC, 1);
    }
    pthread_t pt[MT_PRODUCERS], ct[MT_GROUPS * MT_CONS];
    struct mt_arg pa[MT_PRODUCERS], ca[MT_GROUPS * MT_CONS];
    for (int i = 0; i < MT_GROUPS * MT_CONS; i++) {
        ca[i] = (struct mt_arg){s, i, i / MT_CONS};
        pthread_create(&ct[i], NULL, mt_consumer, &ca[i]);
    }
    for (int i = 0; i < MT_PRODUCERS; i++) {
        pa[i] = (struct mt_arg){s, i, 0};
        pthread_create(&pt[i], NULL, mt_producer, &pa[i]);
    }
    for (int i = 0; i < MT_PRODUCERS; i++)
        pthread_join(pt[i], NULL);
    uint64_t total = 0;
    for (int i = 0; i < MT_PRODUCERS; i++)
        total += atomic_load(&s->produced[i]);
    atomic_store(&s->producers_done, 1);
    int64_t t0 = fq_now_ns();
    for (;;) {
        int all = 1;
        for (int gi = 0; gi < MT_GROUPS; gi++)
            if (atomic_load(&s->fin[gi]) < total)
                all = 0;
        if (all || fq_now_ns() - t0 > 4000000000LL)
            break;
        sleep_ms(2);
    }
    atomic_store(&s->stop, 1);
    for (int i = 0; i < MT_GROUPS * MT_CONS; i++)
        pthread_join(ct[i], NULL);
    printf("  produced %" PRIu64 " records; drain %.0f ms\n", total, (double)(fq_now_ns() - t0) / 1e6);
    FQT_EQ(fq_tail_seq(&q), total);
    for (int gi = 0; gi < MT_GROUPS; gi++) {
        struct fq_group_shm *G = &q.groups[s->g[gi]];
        uint64_t missing = 0, twice = 0;
        for (int p = 0; p < MT_PRODUCERS; p++)
            for (uint64_t i = 0; i < atomic_load(&s->produced[p]); i++) {
                uint8_t v = atomic_load(&s->finished[gi][(size_t)p * MT_MAXREC + i]);
                missing += v == 0;
                twice += v > 1;
            }
        printf("  group %d: delivered %" PRIu64 " redelivered %" PRIu64 " expired %" PRIu64 " nacked %" PRIu64
               " dead %" PRIu64 " lost-acks %" PRIu64 " late %" PRIu64 "\n",
               gi, gctr(&G->g_delivered), gctr(&G->g_redelivered), gctr(&G->g_expired), gctr(&G->g_nacked),
               gctr(&G->g_dead), atomic_load(&s->lost_ack[gi]), atomic_load(&s->late[gi]));
        if (missing) {
            /* Known bug (test_mt_nack_not_forgotten): the record at g_low is
             * RETRY and due, but g_next_deadline lies in the future, so no
             * taker rescans it; the group's window fills up behind it. */
            uint64_t lo = gctr(&G->g_low), W = fq__gw(&q, s->g[gi]);
            int64_t now = fq_now_ns();
            int forgotten = 0;
            for (uint64_t x = lo; x - lo < W && x < total; x++) {
                struct fq_lease_shm *E = fq__lease(&q, s->g[gi], x);
                uint64_t w = atomic_load(&E->l_w);
                if (!fq__lw_is(w, x))
                    continue;
                if (fq__lw_st(w) == FQ_L_LEASED || fq__lw_st(w) == FQ_L_RETRY)
                    printf("  group %d: seq %" PRIu64 " state %u deliveries %u owner %u deadline %+" PRId64 " ms\n", gi,
                           x, fq__lw_st(w), fq__lw_deliv(w), fq__lw_owner(w),
                           ((int64_t)atomic_load(&E->l_deadline_ns) - now) / 1000000);
                if (fq__lw_st(w) == FQ_L_RETRY && (int64_t)atomic_load(&E->l_deadline_ns) <= now &&
                    (int64_t)atomic_load(&G->g_next_deadline) > now)
                    forgotten = 1;
            }
            if (forgotten) {
                printf("  group %d: record %" PRIu64 " is RETRY and due but g_next_deadline is %" PRId64
                       " ms ahead: known bug (nack forgotten), %" PRIu64 " records stuck behind it\n",
                       gi, lo, ((int64_t)atomic_load(&G->g_next_deadline) - now) / 1000000, missing);
                mt_nack_forgotten = 1;
                free((void *)s->finished[gi]);
                continue;
            }
        }
        FQT_CHECKM(missing == 0, "group %d: %" PRIu64 " records never finished (low %" PRIu64 ", next_deadline "
                                 "%" PRId64 " ms from now, retry_pending %" PRId64 ")",
                   gi, missing, gctr(&G->g_low),
                   ((int64_t)atomic_load(&G->g_next_deadline) - fq_now_ns()) / 1000000,
                   (int64_t)atomic_load(&G->g_retry_pending));
        FQT_EQ(twice, 0);
        FQT_EQ(atomic_load(&s->bad[gi]), 0);
        FQT_EQ(fq_qsize(&q, s->g[gi]), 0);
        FQT_EQ(gctr(&G->g_low), total);
        FQT_EQ(gctr(&G->g_delivered), atomic_load(&s->deliveries[gi]));
        FQT_EQ(gctr(&G->g_redelivered), atomic_load(&s->redeliveries[gi]));
        FQT_EQ(gctr(&G->g_dead), atomic_load(&s->dead_ok[gi]));
        FQT_EQ(gctr(&G->g_nacked), atomic_load(&s->nacks_ok[gi]));
        FQT_EQ(gctr(&G->g_delivered) - gctr(&G->g_redelivered), total);
        FQT_CHECK(gctr(&G->g_redelivered) >= gctr(&G->g_nacked));
        /* g_retry_pending is checked by test_mt_retry_pending (known bug) */
        if (atomic_load(&G->g_retry_pending) != 0)
            mt_retry_pending_bad = atomic_load(&G->g_retry_pending);
        if (s->maxd[gi] == 0)
            FQT_EQ(gctr(&G->g_dead), 0);
        free((void *)s->finished[gi]);
    }
    free(s);
    fq_close(&q);
}

/* After test_mt_groups drained everything, and after each steal run, the
 * count g_retry_pending must equal the RETRY entries.  (The phantom-count reset of fq__take_due can zero a count
 * whose nack has incremented it but not yet CASed the entry to RETRY; the
 * later retake then decrements it below zero.) */
static void test_mt_retry_pending(void)
{
    FQT_CHECK(mt_groups_ran);
    FQT_CHECKM(mt_retry_pending_bad == 0, "g_retry_pending = %lld after a full drain", (long long)mt_retry_pending_bad);
}

/* ------------------------------------------------------------------------ */
/* Retakers racing on the same few records in a group whose leases never
 * expire in this test (visibility 60 s, or none): every nack/ack of a lease
 * just taken must succeed: a taker must never steal a lease another taker
 * has just won (e.g. from a deadline left in the entry by a previous nack). */
struct steal_shared {
    fq_queue *q;
    uint32_t g;
    _Atomic int stop;
    _Atomic uint64_t lost, ops, acked;
};
static void *steal_thread(void *p)
{
    struct steal_shared *s = p;
    fq_queue h;
    if (fqt_clone(&h, s->q, 3) != FQ_OK)
        return NULL;
    fq_member_group(&h, s->g);
    fqt_rng r;
    fqt_seed(&r, (uint64_t)(uintptr_t)&h);
    fq_msg m[4];
    while (!atomic_load(&s->stop)) {
        uint32_t n = 0;
        if (fq_take(&h, s->g, m, 1 + fqt_below(&r, 2), 0, &n) != FQ_OK)
            continue;
        for (uint32_t i = 0; i < n; i++) {
            int rc = fqt_below(&r, 50) ? fq_nack(&h, s->g, &m[i], 0) : fq_ack(&h, s->g, &m[i], 1);
            atomic_fetch_add(&s->ops, 1);
            if (rc == FQ_ERR_LOST) {
                if (atomic_fetch_add(&s->lost, 1) < 3)
                    fprintf(stderr, "  lease of seq %" PRIu64 " (deliveries %u) lost right after the take\n",
                            m[i].seq, m[i].deliveries);
            } else if (rc != FQ_OK) {
                FQT_CHECKM(0, "%s", fq_strerror(rc));
            }
        }
    }
    fqt_unclone(&h);
    return NULL;
}
static void steal_run(uint32_t vis)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 0), FQ_OK);
    struct steal_shared s = {.q = &q};
    FQT_REQUIRE_ST(gopen(&q, "steal", 0, 0, vis, &s.g), FQ_OK);
    for (int i = 0; i < 64; i++)
        FQT_ST(rec_put(&q, 16, (uint64_t)i, NULL), FQ_OK);
    enum { T = 3 };
    pthread_t t[T];
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, steal_thread, &s);
    int64_t end = fq_now_ns() + (int64_t)(g_secs * 0.4e9);
    uint64_t key = 20000;
    while (fq_now_ns() < end) {
        if (fq_qsize(&q, s.g) < 8) /* keep a few records circulating */
            for (int i = 0; i < 16; i++)
                if (rec_put(&q, 16, key++, NULL) != FQ_OK)
                    break;
        sleep_ms(1);
    }
    atomic_store(&s.stop, 1);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    struct fq_group_shm *G = &q.groups[s.g];
    /* g_retry_pending must equal the RETRY entries now (nothing in flight) */
    int64_t retry = 0;
    uint64_t low = glow(&q, s.g), tail = fq_tail_seq(&q);
    for (uint64_t x = low; x < tail && x - low < fq__gw(&q, s.g); x++) {
        uint64_t w = atomic_load(&fq__lease(&q, s.g, x)->l_w);
        retry += fq__lw_is(w, x) && fq__lw_st(w) == FQ_L_RETRY;
    }
    if (atomic_load(&G->g_retry_pending) != retry) {
        printf("  g_retry_pending %lld, RETRY entries %lld\n", (long long)atomic_load(&G->g_retry_pending),
               (long long)retry);
        mt_retry_pending_bad = atomic_load(&G->g_retry_pending) - retry;
    }
    printf("  visibility %u ms: %" PRIu64 " nack/ack, %" PRIu64 " lost, expired %" PRIu64 "\n", vis,
           atomic_load(&s.ops), atomic_load(&s.lost), gctr(&G->g_expired));
    FQT_CHECKM(atomic_load(&s.lost) == 0, "visibility %u: %" PRIu64 " leases were stolen from their taker", vis,
               atomic_load(&s.lost));
    FQT_EQ(gctr(&G->g_expired), 0);
    fq_close(&q);
}
static void test_mt_no_steal_vis(void) { steal_run(60000); }
static void test_mt_no_steal_novis(void) { steal_run(0); }

/* A nack that lands while another taker is scanning the window for due
 * entries must not be forgotten (g_next_deadline): with no visibility
 * timeout, the only thing that brings a nacked record back is that scan.
 * The main thread holds ~1000 leases; per round it nacks a high one (A),
 * then, after a random few microseconds, a low one (B); a scanner thread
 * polls fq_take and acks whatever comes back.  B must come back too. */
struct nd_shared {
    fq_queue *q;
    uint32_t g;
    _Atomic int stop;
    _Atomic uint64_t taken;
};
static void *nd_scanner(void *p)
{
    struct nd_shared *s = p;
    fq_queue h;
    if (fqt_clone(&h, s->q, 3) != FQ_OK)
        return NULL;
    fq_member_group(&h, s->g);
    fq_msg m[4];
    while (!atomic_load(&s->stop)) {
        uint32_t n = 0;
        if (fq_take(&h, s->g, m, 4, 0, &n) == FQ_OK) {
            FQT_ST(fq_ack(&h, s->g, m, n), FQ_OK);
            atomic_fetch_add(&s->taken, n);
        }
    }
    fqt_unclone(&h);
    return NULL;
}
static int nd_back(fq_queue *q, uint32_t g, uint64_t seq, int64_t ns)
{
    int64_t t0 = fq_now_ns();
    do {
        uint64_t w = atomic_load(&fq__lease(q, g, seq)->l_w);
        if (!fq__lw_is(w, seq) || fq__lw_st(w) == FQ_L_ACKED)
            return 1;
        sched_yield();
    } while (fq_now_ns() - t0 < ns);
    return 0;
}
static void test_mt_nack_not_forgotten(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 17, 2, 2048, 4096), FQ_OK);
    struct nd_shared s = {.q = &q};
    FQT_REQUIRE_ST(gopen(&q, "nd", 2048, 0, 0, &s.g), FQ_OK);
    enum { NH = 2000 };
    for (int i = 0; i < NH; i++)
        FQT_ST(rec_put(&q, 16, (uint64_t)i, NULL), FQ_OK);
    fq_msg *held = calloc(NH, sizeof *held);
    uint32_t nh = 0, n;
    while (nh < NH && fq_take(&q, s.g, held + nh, NH - nh, 0, &n) == FQ_OK)
        nh += n;
    FQT_EQ(nh, NH);
    pthread_t t;
    pthread_create(&t, NULL, nd_scanner, &s);
    int64_t end = fq_now_ns() + (int64_t)(g_secs * 0.5e9);
    fqt_rng r;
    fqt_seed(&r, 5);
    uint32_t lo = 0, hi = nh, rounds = 0, stuck = 0;
    while (fq_now_ns() < end && lo + 1 < hi && !stuck) {
        fq_msg *A = &held[--hi], *B = &held[lo++];
        FQT_ST(fq_nack(&q, s.g, A, 0), FQ_OK);
        uint32_t spin = fqt_below(&r, 4000);
        for (volatile uint32_t i = 0; i < spin; i++)
            ;
        FQT_ST(fq_nack(&q, s.g, B, 0), FQ_OK);
        if (!nd_back(&q, s.g, A->seq, 1000000000LL))
            stuck++;
        if (!nd_back(&q, s.g, B->seq, 300000000LL)) {
            stuck++;
            fprintf(stderr, "  round %u: nacked seq %" PRIu64 " still RETRY after 300 ms; g_next_deadline = %s\n",
                    rounds, B->seq,
                    atomic_load(&q.groups[s.g].g_next_deadline) == (uint64_t)INT64_MAX ? "INT64_MAX (never)"
                                                                                       : "set");
        }
        rounds++;
    }
    atomic_store(&s.stop, 1);
    pthread_join(t, NULL);
    printf("  %u rounds of two nacks against a scanning taker; %u lost\n", rounds, stuck);
    FQT_CHECKM(!mt_nack_forgotten, "test_mt_groups also got a nacked record stuck");
    FQT_CHECKM(stuck == 0, "a nack landing during another taker's due-scan was forgotten: the record stays RETRY "
                           "while g_next_deadline says nothing is due");
    free(held);
    fq_close(&q);
}

/* ------------------------------------------------------------------------ */
/* The group-creation race: producers hammer a small ungated log (the floor
 * moves on every claim) while another thread creates a group at EARLIEST,
 * drains it for a moment, deletes it, and again.  Every record a group
 * receives must be intact: the creator must never start below what a
 * concurrent refresher is about to reclaim. */
struct cr_shared {
    fq_queue *q;
    _Atomic int stop;
    _Atomic uint64_t puts, bad_claims;
};
static void *cr_producer(void *p)
{
    struct cr_shared *s = p;
    fq_queue h;
    if (fqt_clone(&h, s->q, 3) != FQ_OK)
        return NULL;
    fqt_rng r;
    fqt_seed(&r, (uint64_t)(uintptr_t)&h ^ (uint64_t)fq_now_ns());
    uint64_t i = 0;
    while (!atomic_load(&s->stop)) {
        uint32_t len = REC_HDR + fqt_below(&r, 400);
        int rc = rec_put(&h, len, ((uint64_t)h.member << 40) | i, NULL);
        if (rc == FQ_OK) {
            i++;
            atomic_fetch_add_explicit(&s->puts, 1, memory_order_relaxed);
        } else if (rc == FQ_FULL) {
            fq_wait_space(&h, 1, fq_frame_bytes(len), fq_now_ns() + 2000000);
        } else {
            if (atomic_fetch_add(&s->bad_claims, 1) < 3)
                fprintf(stderr, "  claim failed: %s (%s)\n", fq_strerror(rc), fq_last_error());
            sleep_ms(1);
        }
    }
    fqt_unclone(&h);
    return NULL;
}
static void test_mt_create_race(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 4096, 2, 64, 64), FQ_OK);
    struct cr_shared s = {.q = &q};
    enum { P = 4 }; /* more producers than CPUs: refreshers get preempted mid-walk */
    pthread_t t[P];
    for (int i = 0; i < P; i++)
        pthread_create(&t[i], NULL, cr_producer, &s);
    int64_t end = fq_now_ns() + (int64_t)(g_secs * 1.0e9);
    uint64_t groups = 0, recs = 0, bad = 0, order = 0;
    fqt_rng r;
    fqt_seed(&r, 99);
    while (fq_now_ns() < end) {
        uint32_t g;
        int created;
        fq_group_cfg c = gcfg("race", 64, 0, 0);
        int rc = fq_group_open(&q, &c, &g, &created);
        if (rc != FQ_OK) {
            FQT_ST(rc, FQ_OK);
            break;
        }
        groups++;
        uint64_t start = atomic_load(&q.groups[g].g_low), expect = start;
        uint32_t want = 1 + fqt_below(&r, 40);
        uint32_t got = 0;
        fq_msg m[16];
        int64_t until = fq_now_ns() + 20000000;
        while (got < want && fq_now_ns() < until) {
            uint32_t n = 0;
            rc = fq_take(&q, g, m, 16, 0, &n);
            if (rc != FQ_OK) {
                FQT_CHECKM(rc == FQ_EMPTY || rc == FQ_STALLED, "take: %s", fq_strerror(rc));
                continue;
            }
            for (uint32_t i = 0; i < n; i++) {
                uint64_t key;
                if (!rec_ok(&m[i], &key)) {
                    if (bad++ < 5)
                        fprintf(stderr, "  group #%" PRIu64 " (start %" PRIu64 "): record %" PRIu64
                                        " damaged (floor now %" PRIu64 ")\n",
                                groups, start, m[i].seq, (uint64_t)atomic_load(&q.ctrl->c_floor_seq));
                }
                if (m[i].seq != expect)
                    order++;
                expect = m[i].seq + 1;
                recs++;
            }
            FQT_ST(fq_ack(&q, g, m, n), FQ_OK);
            got += n;
        }
        FQT_ST(fq_group_delete(&q, "race"), FQ_OK);
    }
    atomic_store(&s.stop, 1);
    for (int i = 0; i < P; i++)
        pthread_join(t[i], NULL);
    printf("  %" PRIu64 " groups created, %" PRIu64 " records checked, %" PRIu64 " puts\n", groups, recs,
           atomic_load(&s.puts));
    FQT_EQ(bad, 0);
    FQT_EQ(order, 0);
    FQT_EQ(atomic_load(&s.bad_claims), 0);
    FQT_CHECK(groups > 10);
    fq_close(&q);
}

/* ---- reset (fastq groups NAME reset) and the lock-free monitoring reads ---- */
static void test_reset(void)
{
    fq_queue q, c;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 4, 64, 256), FQ_OK);
    uint32_t g, g2, live = 99;
    FQT_ST(gopen(&q, "r", 64, 3, 0, &g), FQ_OK);
    for (uint32_t i = 0; i < 20; i++)
        FQT_ST(rec_put(&q, 40, i, NULL), FQ_OK);
    FQT_ST(fq_group_reset(&q, "nope", FQ_START_EARLIEST, 0, 0, &live), FQ_ERR_NOENT);
    /* a live consumer bound to the group: refused unless forced */
    FQT_REQUIRE_ST(fqt_clone(&c, &q, FQ_M_KIND_CONSUMER), FQ_OK);
    FQT_ST(fq_member_group(&c, g), FQ_OK);
    fq_msg m;
    FQT_ST(take1(&c, g, &m), FQ_OK);
    FQT_EQ(m.seq, 0);
    FQT_ST(fq_group_reset(&q, "r", FQ_START_SEQ, 10, 0, &live), FQ_ERR_BUSY);
    FQT_EQ(live, 1);
    FQT_EQ(glow(&q, g), 0); /* untouched */
    /* out of range targets are refused before anything changes */
    FQT_ST(fq_group_reset(&q, "r", FQ_START_SEQ, 21, 1, &live), FQ_ERR_RANGE);
    FQT_ST(fq_group_find(&q, "r", &g2), FQ_OK);
    FQT_EQ(g2, g);
    uint32_t gen = atomic_load(&q.groups[g].g_gen);
    FQT_ST(fq_group_reset(&q, "r", FQ_START_SEQ, 10, 1, &live), FQ_OK);
    FQT_EQ(live, 1);
    FQT_EQ(atomic_load(&q.groups[g].g_gen), gen + 1);
    FQT_EQ(glow(&q, g), 10);
    /* same settings, new generation: the old consumer's lease is gone and its handle sees the group deleted */
    fq_group_cfg info;
    char name[64], dlq[64];
    FQT_ST(fq_group_info(&q, g, &info, name, dlq), FQ_OK);
    FQT_CHECK(strcmp(name, "r") == 0);
    FQT_EQ(info.max_deliveries, 3);
    FQT_EQ(info.window, 64);
    FQT_EQ(info.start_seq, 10);
    FQT_ST(fq_ack(&c, g, &m, 1), FQ_ERR_LOST);
    uint32_t n = 0;
    FQT_ST(fq_take(&c, g, &m, 1, 0, &n), FQ_ERR_NOENT);
    FQT_ST(take1(&q, g, &m), FQ_OK); /* the resetting handle itself stays bound */
    FQT_EQ(m.seq, 10);
    FQT_ST(fq_ack(&q, g, &m, 1), FQ_OK);
    fqt_unclone(&c);
    /* no consumer left: latest, then back to earliest */
    FQT_ST(fq_group_reset(&q, "r", FQ_START_LATEST, 0, 0, &live), FQ_OK);
    FQT_EQ(live, 0);
    FQT_EQ(glow(&q, g), 20);
    FQT_ST(fq_group_reset(&q, "r", FQ_START_EARLIEST, 0, 0, &live), FQ_OK);
    FQT_EQ(glow(&q, g), atomic_load(&q.ctrl->c_floor_seq));
    FQT_ST(take1(&q, g, &m), FQ_OK);
    FQT_EQ(m.seq, glow(&q, g));
    fq_close(&q);
}

struct rp_shared {
    fq_queue *q;
    _Atomic int stop;
    _Atomic uint64_t reads, torn, members_seen;
};
/* Reads every group slot and member slot without locks while the main
 * thread creates, resets and deletes groups: a copy is either refused or
 * one consistent group (name and settings from the same creation). */
static void *rp_monitor(void *p)
{
    struct rp_shared *s = p;
    while (!atomic_load(&s->stop)) {
        for (uint32_t g = 0; g < s->q->max_groups; g++) {
            fq_group_cfg c;
            char name[64], dlq[64];
            if (fq_group_info(s->q, g, &c, name, dlq) != FQ_OK)
                continue;
            atomic_fetch_add(&s->reads, 1);
            int a = strcmp(name, "alpha") == 0 && strcmp(dlq, "alpha.dlq") == 0 && c.max_deliveries == 3 &&
                    c.window == 16 && c.visibility_ms == 1000 && c.backoff[0] == 11;
            int b = strcmp(name, "beta-group") == 0 && dlq[0] == 0 && c.max_deliveries == 7 && c.window == 32 &&
                    c.visibility_ms == 0 && c.backoff[0] == 22;
            if (!a && !b && atomic_fetch_add(&s->torn, 1) < 3)
                fprintf(stderr, "  torn group copy: name '%s' dlq '%s' maxd %u window %u\n", name, dlq,
                        c.max_deliveries, c.window);
        }
        for (uint32_t i = 0; i < s->q->max_members; i++) {
            fq_member_info mi;
            if (fq_member_peek(s->q, i, &mi) == FQ_OK) {
                atomic_fetch_add(&s->members_seen, 1);
                if (mi.pid != (int32_t)getpid())
                    atomic_fetch_add(&s->torn, 1);
            }
        }
    }
    return NULL;
}
static void test_mt_reset_peek(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 3, 64, 256), FQ_OK);
    fq_member_set_name(&q, "admin");
    struct rp_shared s = {.q = &q};
    pthread_t t;
    pthread_create(&t, NULL, rp_monitor, &s);
    fqt_rng r;
    fqt_seed(&r, 7);
    int64_t end = fq_now_ns() + (int64_t)(g_secs * 0.5e9);
    uint64_t ops = 0;
    while (fq_now_ns() < end) {
        fq_group_cfg a = gcfg("alpha", 16, 3, 1000), b = gcfg("beta-group", 32, 7, 0);
        a.dlq = "alpha.dlq";
        a.backoff[0] = 11;
        b.backoff[0] = 22;
        uint32_t g, live;
        int created;
        /* alternate the creation order: each slot changes name and settings every round */
        FQT_ST(fq_group_open(&q, ops & 1 ? &b : &a, &g, &created), FQ_OK);
        FQT_ST(fq_group_open(&q, ops & 1 ? &a : &b, &g, &created), FQ_OK);
        if (ops < 100) /* the groups never consume: keep the ring from filling */
            FQT_ST(rec_put(&q, 32, ops, NULL), FQ_OK);
        FQT_ST(fq_group_reset(&q, fqt_below(&r, 2) ? "alpha" : "beta-group", fqt_below(&r, 3), 0, 0, &live), FQ_OK);
        FQT_ST(fq_group_delete(&q, fqt_below(&r, 2) ? "alpha" : "beta-group"), FQ_OK);
        FQT_ST(fq_group_delete(&q, fq_group_find(&q, "alpha", &g) == FQ_OK ? "alpha" : "beta-group"), FQ_OK);
        for (int i = 0; i < 50; i++) { /* slot 0 only: delete and re-create it as the other group */
            FQT_ST(fq_group_open(&q, (ops + i) & 1 ? &b : &a, &g, &created), FQ_OK);
            FQT_ST(fq_group_delete(&q, (ops + i) & 1 ? "beta-group" : "alpha"), FQ_OK);
        }
        ops++;
    }
    atomic_store(&s.stop, 1);
    pthread_join(t, NULL);
    printf("  %" PRIu64 " create/reset/delete rounds, %" PRIu64 " lock-free group reads, %" PRIu64
           " member reads\n", ops, atomic_load(&s.reads), atomic_load(&s.members_seen));
    FQT_EQ(atomic_load(&s.torn), 0);
    FQT_CHECK(atomic_load(&s.reads) > 0 && atomic_load(&s.members_seen) > 0);
    fq_member_info mi;
    FQT_ST(fq_member_peek(&q, (uint32_t)q.member, &mi), FQ_OK);
    FQT_CHECK(strcmp(mi.name, "admin") == 0);
    FQT_CHECK(mi.alive);
    fq_close(&q);
}

/* fq_peek (`fastq tail` of a ring) against producers that overwrite the
 * records it reads: an ungated log (no group) recycles its space as fast as
 * the producers go.  Every copy it returns must be intact; a record
 * overwritten during the copy must be reported, never returned torn. */
struct pk_shared {
    fq_queue *q;
    _Atomic int stop;
};
static void *pk_producer(void *p)
{
    struct pk_shared *s = p;
    fq_queue h;
    if (fqt_clone(&h, s->q, FQ_M_KIND_PRODUCER) != FQ_OK)
        return NULL;
    fqt_rng r;
    fqt_seed(&r, (uint64_t)(uintptr_t)&h);
    for (uint64_t i = 0; !atomic_load(&s->stop); i++)
        if (rec_put(&h, REC_HDR + fqt_below(&r, 300), ((uint64_t)h.member << 40) | i, NULL) != FQ_OK)
            sleep_ms(0);
    fqt_unclone(&h);
    return NULL;
}
static void test_mt_peek_overwritten(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 14, 2, 64, 64), FQ_OK);
    struct pk_shared s = {.q = &q};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, pk_producer, &s);
    static uint8_t buf[1 << 14];
    uint64_t seq = 0, good = 0, gone = 0, bad = 0, order = 0, last = 0;
    int64_t end = fq_now_ns() + (int64_t)(g_secs * 0.5e9);
    while (fq_now_ns() < end) {
        fq_msg m;
        uint64_t floor;
        int rc = fq_peek(&q, seq, buf, sizeof buf, &m, &floor);
        if (rc == FQ_OK) {
            if (!rec_ok(&m, NULL) && bad++ < 3)
                fprintf(stderr, "  record %" PRIu64 " returned torn\n", seq);
            if (good && m.seq <= last)
                order++;
            last = m.seq;
            good++;
            seq++;
        } else if (rc == FQ_ERR_RANGE) {
            gone++;
            seq = floor > seq ? floor : seq + 1;
        } else if (rc != FQ_EMPTY) {
            FQT_CHECKM(rc == FQ_ERR_LOST, "peek: %s", fq_strerror(rc));
            seq++;
        }
    }
    atomic_store(&s.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    printf("  %" PRIu64 " records copied intact, %" PRIu64 " found overwritten\n", good, gone);
    FQT_EQ(bad, 0);
    FQT_EQ(order, 0);
    FQT_CHECK(good > 1000);
    fq_close(&q);
}

/* fq_set_prefix: the key / meta-region bits of a record reach takers and
 * fq_peek as FQ_MSG_KEY / FQ_MSG_META with the prefix length. */
static void test_prefix_flags(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 64), FQ_OK);
    uint32_t g;
    FQT_ST(gopen(&q, "p", 64, 0, 0, &g), FQ_OK);
    struct { uint32_t plen; int key, meta; uint32_t want; } cases[] = {
        {0, 0, 0, 0}, {3, 1, 0, FQ_MSG_KEY}, {7, 1, 1, FQ_MSG_KEY | FQ_MSG_META}, {6, 0, 1, FQ_MSG_META},
        {0, 1, 0, FQ_MSG_KEY}};
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t len = 10;
        uint64_t seq;
        FQT_REQUIRE_ST(fq_claim(&q, &len, 1, &seq), FQ_OK);
        memset(fq_payload(&q, seq), 'a' + (int)i, len);
        if (cases[i].key || cases[i].meta)
            fq_set_prefix(&q, seq, cases[i].plen,
                          (cases[i].key ? FQ_PREFIX_KEY : 0u) | (cases[i].meta ? FQ_PREFIX_META : 0u));
        fq_commit(&q, seq, 1);
        fq_msg m;
        FQT_ST(take1(&q, g, &m), FQ_OK);
        FQT_EQ(m.flags & (FQ_MSG_KEY | FQ_MSG_META), cases[i].want);
        FQT_EQ(m.key_len, cases[i].plen);
        FQT_EQ(m.len, 10);
        uint8_t buf[64];
        fq_msg pm;
        uint64_t floor;
        FQT_ST(fq_peek(&q, seq, buf, sizeof buf, &pm, &floor), FQ_OK);
        FQT_EQ(pm.flags & (FQ_MSG_KEY | FQ_MSG_META), cases[i].want);
        FQT_EQ(pm.key_len, cases[i].plen);
        FQT_EQ(buf[0], (uint8_t)('a' + i));
        FQT_ST(fq_ack(&q, g, &m, 1), FQ_OK);
    }
    fq_close(&q);
}

/* D1/D2: a delayed record is not dispatched before its not-before time,
 * does not hold back the records after it, and arrives with deliveries 1
 * (not counted as a redelivery); a record whose time has passed goes at once. */
static int put_delayed(fq_queue *q, int64_t not_before_ns, const char *body, uint64_t *seq)
{
    uint32_t blen = (uint32_t)strlen(body), plen = 8 + 2 + 2; /* not-before, key length 0, 0 headers */
    uint32_t len = plen + blen;
    int rc = fq_claim(q, &len, 1, seq);
    if (rc != FQ_OK)
        return rc;
    uint8_t *p = fq_payload(q, *seq);
    memcpy(p, &not_before_ns, 8);
    memset(p + 8, 0, 4);
    memcpy(p + plen, body, blen);
    fq_set_prefix(q, *seq, plen, FQ_PREFIX_META | FQ_PREFIX_DELAYED);
    fq_commit(q, *seq, 1);
    return FQ_OK;
}
static void test_delayed(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mklog(&q, 1 << 16, 2, 64, 64), FQ_OK);
    uint32_t g;
    FQT_ST(gopen(&q, "d", 64, 3, 0, &g), FQ_OK);
    uint64_t s0, s1, s2, s3;
    int64_t now = fq_realtime_ns();
    FQT_ST(put_delayed(&q, now + 300000000, "late", &s0), FQ_OK);  /* +300 ms */
    FQT_ST(rec_put(&q, 40, 1, &s1), FQ_OK);                         /* plain, right behind it */
    FQT_ST(put_delayed(&q, now - 1000000, "past", &s2), FQ_OK);     /* due already */
    FQT_ST(put_delayed(&q, now + 150000000, "mid", &s3), FQ_OK);    /* +150 ms */
    fq_msg m[8];
    uint32_t n = 0;
    FQT_ST(fq_take(&q, g, m, 8, 0, &n), FQ_OK);
    FQT_EQ(n, 2); /* the plain record and the past-due one; the delayed ones wait */
    FQT_EQ(m[0].seq, s1);
    FQT_EQ(m[1].seq, s2);
    FQT_CHECK(m[1].flags & FQ_MSG_DELAYED);
    FQT_ST(fq_ack(&q, g, m, 2), FQ_OK);
    FQT_ST(fq_take(&q, g, m, 8, 0, &n), FQ_EMPTY);
    uint64_t order[2];
    int got = 0;
    int64_t t_first = 0;
    while (got < 2) {
        int64_t dl = fq_now_ns() + 2000000000LL;
        int rc = fq_wait_data(&q, g, dl, 0); /* wakes at the not-before (g_next_deadline), no polling */
        FQT_CHECKM(rc == FQ_OK, "wait: %s", fq_strerror(rc));
        if (rc != FQ_OK)
            break;
        if (fq_take(&q, g, m, 8, 0, &n) != FQ_OK)
            continue;
        for (uint32_t i = 0; i < n; i++) {
            int64_t at = fq_realtime_ns();
            order[got++] = m[i].seq;
            FQT_EQ(m[i].deliveries, 1);
            int64_t want = m[i].seq == s3 ? now + 150000000 : now + 300000000;
            FQT_CHECKM(at >= want, "record %" PRIu64 " delivered %" PRId64 " ns early", m[i].seq, want - at);
            FQT_CHECKM(at - want < 100000000, "record %" PRIu64 " delivered %" PRId64 " ms late", m[i].seq,
                       (at - want) / 1000000);
            if (!t_first)
                t_first = at;
        }
        FQT_ST(fq_ack(&q, g, m, n), FQ_OK);
    }
    FQT_EQ(order[0], s3); /* in order of their time, not of their offsets */
    FQT_EQ(order[1], s0);
    fq_stats st;
    fq_get_stats(&q, g, &st);
    FQT_EQ(st.redelivered, 0);
    FQT_EQ(st.delivered, 4);
    FQT_EQ(st.retry_pending, 0);
    FQT_EQ(st.low, s3 + 1);
    fq_close(&q);
}

int main(int argc, char **argv)
{
    fqt_prog = "test_group";
    g_secs = fqt_seconds(argc, argv);
    FQT_RUN(test_log_has_no_group0);
    FQT_RUN(test_open_attach_conflict_delete);
    FQT_RUN(test_fanout);
    FQT_RUN(test_gating);
    FQT_RUN(test_competing);
    FQT_RUN(test_nack);
    FQT_RUN(test_visibility);
    FQT_RUN(test_extend);
    FQT_RUN(test_deadletter);
    FQT_RUN(test_dead_partial_count);
    FQT_RUN(test_ungated_overwrite);
    FQT_RUN(test_start_positions);
    FQT_RUN(test_delete_releases_producer);
    FQT_RUN(test_slot_reuse_qsize);
    FQT_RUN(test_fork_dead_letter_crash);
    FQT_RUN(test_mt_groups);
    FQT_RUN(test_mt_no_steal_vis);
    FQT_RUN(test_mt_no_steal_novis);
    FQT_RUN(test_mt_retry_pending);
    FQT_RUN(test_mt_nack_not_forgotten);
    FQT_RUN(test_mt_create_race);
    FQT_RUN(test_reset);
    FQT_RUN(test_prefix_flags);
    FQT_RUN(test_delayed);
    FQT_RUN(test_mt_reset_peek);
    if (FQT_TSAN) /* the copy races with the overwriting producer by design (validated afterwards) */
        fqt_skip("test_mt_peek_overwritten", "a validated racy copy (seqlock reader)");
    else
        FQT_RUN(test_mt_peek_overwritten);
    return fqt_summary();
}
