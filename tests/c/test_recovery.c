/*
 * test_recovery.c — dead members and what fq_maintain makes of them.
 *
 * In-process: a member "dies" when its lock descriptor closes (the kernel
 * drops its OFD lock exactly as on process death).  Across processes: a
 * forked child joins on its inherited handle, arms a crash point
 * (fq_crash_arm) and is SIGKILLed there; the parent recovers.  The fork
 * cases run in every configuration (FQT_NO_FORK=1 skips them); under TSan
 * they add no race detection across processes, only coverage.
 */
#include "fq_test.h"

#include <signal.h>
#include <sys/wait.h>

static int mk(fq_queue *q, uint64_t cap)
{
    fq_params p = fqt_params(cap);
    p.max_members = 16;
    int rc = fq_create(q, NULL, &p);
    if (rc == FQ_OK)
        rc = fq_join(q, 3);
    return rc;
}

static int peer(fq_queue *dst, const fq_queue *src)
{
    int rc = fqt_open_dup(dst, src);
    if (rc == FQ_OK)
        rc = fq_join(dst, 3);
    return rc;
}

/* What process death does to a member: its lock descriptor closes. */
static void die(fq_queue *a)
{
    close(a->lock_fd);
    a->lock_fd = -1;
    a->member = -1; /* the corpse never runs fq_leave */
}

static unsigned desc_state(fq_queue *q, uint64_t seq)
{
    uint64_t cw = atomic_load(&q->desc[seq & q->desc_mask].d_cw);
    return fq__cw_seq(cw) == (seq & FQ_SEQ_MASK) ? fq__cw_st(cw) : 99u;
}

/* Take everything available now; check each against the expected (seq, key,
 * deliveries) list in order; ack; return how many. */
struct expect {
    uint64_t seq;
    uint32_t len;
    uint64_t key;
    uint32_t deliveries;
};
static int take_expect(fq_queue *q, const struct expect *e, int ne)
{
    fq_msg m[32];
    int got = 0;
    for (;;) {
        uint32_t n = 0;
        int rc = fq_take(q, 0, m, 32, 0, &n);
        if (rc != FQ_OK)
            break;
        for (uint32_t i = 0; i < n; i++, got++) {
            if (got >= ne) {
                FQT_CHECKM(0, "unexpected extra record seq %" PRIu64, m[i].seq);
                continue;
            }
            FQT_CHECKM(m[i].seq == e[got].seq, "record %d: seq %" PRIu64 ", want %" PRIu64, got, m[i].seq,
                       e[got].seq);
            FQT_CHECKM(m[i].len == e[got].len, "seq %" PRIu64 ": len %u want %u", m[i].seq, m[i].len, e[got].len);
            FQT_CHECKM(m[i].deliveries == e[got].deliveries, "seq %" PRIu64 ": deliveries %u want %u", m[i].seq,
                       m[i].deliveries, e[got].deliveries);
            if (m[i].len == e[got].len)
                FQT_CHECKM(fqt_verify(m[i].data, m[i].len, e[got].key), "seq %" PRIu64 ": payload differs",
                           m[i].seq);
        }
        FQT_ST(fq_ack(q, 0, m, n), FQ_OK);
    }
    FQT_EQ(got, ne);
    return got;
}

/* As take_expect, but in any order (redeliveries are not ordered against
 * newer records): every expected record exactly once. */
static int take_expect_any(fq_queue *q, const struct expect *e, int ne)
{
    fq_msg m[32];
    int got = 0;
    uint64_t seen = 0; /* bit i: e[i] delivered (ne <= 64) */
    for (;;) {
        uint32_t n = 0;
        if (fq_take(q, 0, m, 32, 0, &n) != FQ_OK)
            break;
        for (uint32_t i = 0; i < n; i++, got++) {
            int k = 0;
            while (k < ne && e[k].seq != m[i].seq)
                k++;
            if (k == ne) {
                FQT_CHECKM(0, "unexpected record seq %" PRIu64, m[i].seq);
                continue;
            }
            FQT_CHECKM(!(seen & (1ull << k)), "seq %" PRIu64 " delivered twice", m[i].seq);
            seen |= 1ull << k;
            FQT_CHECKM(m[i].deliveries == e[k].deliveries, "seq %" PRIu64 ": deliveries %u want %u", m[i].seq,
                       m[i].deliveries, e[k].deliveries);
            FQT_CHECKM(m[i].len == e[k].len && fqt_verify(m[i].data, m[i].len, e[k].key),
                       "seq %" PRIu64 ": payload differs", m[i].seq);
        }
        FQT_ST(fq_ack(q, 0, m, n), FQ_OK);
    }
    FQT_EQ(got, ne);
    return got;
}

/* Quiescent consistency: extents of [from, to) are contiguous and every
 * descriptor is terminal-published (COMMITTED or ABORTED). */
static void check_extents(fq_queue *q, uint64_t from, uint64_t to)
{
    for (uint64_t s = from; s + 1 < to; s++) {
        struct fq_desc_shm *d = &q->desc[s & q->desc_mask], *e = &q->desc[(s + 1) & q->desc_mask];
        uint64_t end = atomic_load(&d->d_ext_start) + atomic_load(&d->d_ext_len);
        FQT_CHECKM(end == atomic_load(&e->d_ext_start), "extent of %" PRIu64 " ends at %" PRIu64
                   ", next starts at %" PRIu64, s, end, (uint64_t)atomic_load(&e->d_ext_start));
    }
    for (uint64_t s = from; s < to; s++) {
        unsigned st = desc_state(q, s);
        FQT_CHECKM(st == FQ_D_COMMITTED || st == FQ_D_ABORTED, "seq %" PRIu64 " state %u", s, st);
    }
}

/* After recovery the ring must keep working for several laps. */
static void laps(fq_queue *q, int nlaps, uint64_t seed)
{
    fqt_rng r;
    fqt_seed(&r, seed);
    uint32_t mp = fq_max_payload(q);
    uint64_t target = fq_tail_seq(q) + (uint64_t)nlaps * q->n_desc;
    while (fq_tail_seq(q) < target) {
        uint64_t seq;
        uint32_t len = fqt_below(&r, 4) ? fqt_below(&r, 100) : fqt_below(&r, mp + 1);
        int rc = fqt_put(q, len, fq_tail_seq(q) ^ seed, &seq);
        if (rc == FQ_FULL || fqt_below(&r, 3) == 0) {
            fq_msg m[8];
            uint32_t n = 0;
            rc = fq_take(q, 0, m, 8, 0, &n);
            if (rc == FQ_OK) {
                for (uint32_t i = 0; i < n; i++)
                    if (!fqt_verify(m[i].data, m[i].len, m[i].seq ^ seed)) {
                        FQT_CHECKM(0, "lap record %" PRIu64 " corrupt", m[i].seq);
                        return;
                    }
                FQT_ST(fq_ack(q, 0, m, n), FQ_OK);
            } else if (rc != FQ_EMPTY) {
                FQT_CHECKM(0, "lap take -> %s", fq_strerror(rc));
                return;
            }
        } else if (rc != FQ_OK) {
            FQT_CHECKM(0, "lap put -> %s", fq_strerror(rc));
            return;
        }
    }
    for (;;) {
        fq_msg m[8];
        uint32_t n = 0;
        if (fq_take(q, 0, m, 8, 0, &n) != FQ_OK)
            break;
        for (uint32_t i = 0; i < n; i++)
            FQT_CHECK(fqt_verify(m[i].data, m[i].len, m[i].seq ^ seed));
        FQT_ST(fq_ack(q, 0, m, n), FQ_OK);
    }
    FQT_EQ(fq_qsize(q, 0), 0);
}

/* ------------------------------------------------------------------------ */
/* A producer dies with WRITING records (claimed, descriptors published, never
 * committed): recovery turns them into ABORTED gaps, later records flow. */
static void test_dead_producer_writing(void)
{
    fq_queue b, a, c;
    FQT_REQUIRE_ST(mk(&b, 1 << 14), FQ_OK);
    FQT_REQUIRE_ST(peer(&a, &b), FQ_OK);
    FQT_REQUIRE_ST(peer(&c, &b), FQ_OK);
    FQT_ST(fqt_put(&b, 10, 100, NULL), FQ_OK); /* seq 0 */
    uint32_t lens[2] = {50, 60};
    uint64_t sa;
    FQT_REQUIRE_ST(fq_claim(&a, lens, 2, &sa), FQ_OK); /* seq 1, 2: never committed */
    FQT_EQ(sa, 1);
    memset(fq_payload(&a, sa), 0xAB, 50);
    FQT_ST(fqt_put(&c, 30, 103, NULL), FQ_OK); /* seq 3 */
    FQT_ST(fqt_put(&c, 40, 104, NULL), FQ_OK); /* seq 4 */
    FQT_EQ(fq_qsize(&b, 0), 5);
    struct expect e0[] = {{0, 10, 100, 1}};
    take_expect(&b, e0, 1);
    fq_msg m;
    uint32_t n;
    FQT_ST(fq_take(&b, 0, &m, 1, 0, &n), FQ_STALLED);
    /* A is alive: nothing to recover, nothing aborted */
    FQT_EQ(fq_maintain(&b, 1), 0);
    FQT_EQ(desc_state(&b, 1), FQ_D_WRITING);
    FQT_EQ((atomic_load(&b.ctrl->c_aborted) >> 1), 0);
    int am = a.member;
    die(&a);
    FQT_EQ(fq_member_alive(&b, (uint32_t)am), 0);
    FQT_EQ(fq_maintain(&b, 1), 1);
    FQT_EQ(desc_state(&b, 1), FQ_D_ABORTED);
    FQT_EQ(desc_state(&b, 2), FQ_D_ABORTED);
    FQT_EQ((atomic_load(&b.ctrl->c_aborted) >> 1), 2);
    FQT_EQ(atomic_load(&b.ctrl->c_recovered), 1);
    FQT_EQ(atomic_load(&b.members[am].m_state), FQ_M_FREE);
    FQT_EQ(atomic_load(&b.ctrl->c_recovery_owner), 0);
    FQT_EQ(fq_qsize(&b, 0), 2);
    struct expect e1[] = {{3, 30, 103, 1}, {4, 40, 104, 1}};
    take_expect(&b, e1, 2);
    FQT_EQ(fq_qsize(&b, 0), 0);
    FQT_EQ(atomic_load(&b.groups[0].g_low), 5);
    check_extents(&b, 0, 5);
    FQT_EQ(fq_maintain(&b, 1), 0); /* idempotent */
    FQT_EQ((atomic_load(&b.ctrl->c_aborted) >> 1), 2);
    /* the freed slot is reusable */
    fq_queue d;
    FQT_ST(peer(&d, &b), FQ_OK);
    fq_close(&d);
    laps(&b, 3, 0x51);
    fq_close(&a);
    fq_close(&c);
    fq_close(&b);
}

/* White box: the state a producer leaves when it dies between its claim CAS
 * and publishing descriptors (prod.after_cas), built in-process so it also
 * runs under TSan.  Two runs: a dead claim in the middle (its gap ends where
 * the next published record starts) and at the tail (gap ends at the tail). */
static uint64_t fake_claim(fq_queue *a, const uint32_t *lens, uint32_t n)
{
    struct fq_member_shm *me = &a->members[a->member];
    for (;;) {
        uint64_t t = atomic_load(&a->ctrl->c_tail);
        uint64_t fs = atomic_load(&a->ctrl->c_floor_seq), fp = atomic_load(&a->ctrl->c_floor_pos);
        uint64_t s = fq__tail_seq(t, fs), p = fq__tail_pos(t, fp), e = p;
        for (uint32_t i = 0; i < n; i++) {
            uint64_t fb = fq_frame_bytes(lens[i]), off = e & a->cap_mask;
            if (off + fb > a->cap)
                e += a->cap - off;
            e += fb;
        }
        atomic_store(&me->m_intent, fq__intent(s, n));
        if (atomic_compare_exchange_strong(&a->ctrl->c_tail, &t, fq__tail_pack(s + n, e)))
            return s;
    }
}

static void test_dead_claim_unpublished(void)
{
    fq_queue b, a, c;
    FQT_REQUIRE_ST(mk(&b, 1 << 14), FQ_OK);
    for (int at_tail = 0; at_tail < 2; at_tail++) {
        FQT_REQUIRE_ST(peer(&a, &b), FQ_OK);
        FQT_REQUIRE_ST(peer(&c, &b), FQ_OK);
        uint64_t s0;
        FQT_ST(fqt_put(&b, 10, 7, &s0), FQ_OK);
        uint32_t lens[3] = {100, 0, 333};
        uint64_t sa = fake_claim(&a, lens, 3);
        FQT_EQ(sa, s0 + 1);
        uint64_t sc = 0;
        if (!at_tail)
            FQT_ST(fqt_put(&c, 20, 8, &sc), FQ_OK);
        struct expect e0[] = {{s0, 10, 7, 1}};
        take_expect(&b, e0, 1);
        /* alive: its intent covers the unpublished seqs, nothing happens */
        FQT_EQ(fq_maintain(&b, 1), 0);
        for (uint32_t i = 0; i < 3; i++)
            FQT_EQ(desc_state(&b, sa + i), 99);
        fq_msg m;
        uint32_t n;
        FQT_ST(fq_take(&b, 0, &m, 1, 0, &n), FQ_STALLED);
        uint64_t aborted0 = (atomic_load(&b.ctrl->c_aborted) >> 1);
        die(&a);
        FQT_EQ(fq_maintain(&b, 1), 1);
        FQT_EQ((atomic_load(&b.ctrl->c_aborted) >> 1), aborted0 + 3);
        for (uint32_t i = 0; i < 3; i++)
            FQT_EQ(desc_state(&b, sa + i), FQ_D_ABORTED);
        /* the run is one gap: the first seq holds the whole extent */
        struct fq_desc_shm *d0 = &b.desc[sa & b.desc_mask];
        uint64_t want = fq_frame_bytes(100) + fq_frame_bytes(0) + fq_frame_bytes(333);
        FQT_CHECK(atomic_load(&d0->d_ext_len) >= want);
        FQT_EQ(atomic_load(&b.desc[(sa + 1) & b.desc_mask].d_ext_len), 0);
        FQT_EQ(atomic_load(&b.desc[(sa + 2) & b.desc_mask].d_ext_len), 0);
        uint64_t after;
        if (!at_tail) {
            struct expect e1[] = {{sc, 20, 8, 1}};
            take_expect(&b, e1, 1);
            after = sc + 1;
        } else {
            FQT_ST(fq_take(&b, 0, &m, 1, 0, &n), FQ_EMPTY);
            uint64_t s4;
            FQT_ST(fqt_put(&c, 5, 9, &s4), FQ_OK);
            FQT_EQ(s4, sa + 3);
            struct expect e1[] = {{s4, 5, 9, 1}};
            take_expect(&b, e1, 1);
            after = s4 + 1;
        }
        check_extents(&b, s0, after);
        FQT_EQ(fq_qsize(&b, 0), 0);
        fq_close(&a);
        fq_close(&c);
    }
    laps(&b, 3, 0x52);
    fq_close(&b);
}

/* A consumer dies holding leases (in-process): they come back as RETRY and
 * are delivered again with deliveries == 2, before newer records. */
static void test_dead_consumer_inproc(void)
{
    fq_queue b, a;
    FQT_REQUIRE_ST(mk(&b, 1 << 14), FQ_OK);
    FQT_REQUIRE_ST(peer(&a, &b), FQ_OK);
    for (int i = 0; i < 4; i++)
        FQT_ST(fqt_put(&b, 16, 40 + (uint64_t)i, NULL), FQ_OK);
    fq_msg m[4];
    uint32_t n;
    FQT_ST(fq_take(&a, 0, m, 2, 0, &n), FQ_OK);
    FQT_EQ(n, 2);
    die(&a);
    FQT_EQ(fq_maintain(&b, 1), 1);
    FQT_EQ(atomic_load(&b.groups[0].g_retry_pending), 2);
    struct expect e[] = {{0, 16, 40, 2}, {1, 16, 41, 2}, {2, 16, 42, 1}, {3, 16, 43, 1}};
    take_expect(&b, e, 4);
    FQT_EQ(atomic_load(&b.groups[0].g_retry_pending), 0);
    FQT_EQ(atomic_load(&b.groups[0].g_redelivered), 2);
    FQT_EQ(fq_qsize(&b, 0), 0);
    /* the corpse's stale ack is refused */
    FQT_ST(fq_ack(&b, 0, m, 1), FQ_ERR_LOST);
    FQT_EQ(fq_qsize(&b, 0), 0);
    fq_close(&a);
    fq_close(&b);
}

/* A waiter that dies while counted: recovery subtracts its count. */
static void test_dead_waiter_uncounted(void)
{
    fq_queue b, a;
    FQT_REQUIRE_ST(mk(&b, 1 << 14), FQ_OK);
    FQT_REQUIRE_ST(peer(&a, &b), FQ_OK);
    /* simulate a member killed inside fq_wait_data (after E1, before cancel) */
    atomic_fetch_add(&a.members[a.member].m_waiting, 1u);
    atomic_fetch_add(&a.ctrl->c_data_ec, 1u);
    atomic_fetch_add(&a.members[a.member].m_waiting, 1u << 10);
    atomic_fetch_add(&a.ctrl->c_space_ec, 1u);
    die(&a);
    FQT_EQ(fq_maintain(&b, 1), 1);
    FQT_EQ((uint32_t)atomic_load(&b.ctrl->c_data_ec), 0);
    FQT_EQ((uint32_t)atomic_load(&b.ctrl->c_space_ec), 0);
    fq_close(&a);
    fq_close(&b);
}

/* ------------------------------------------------------------------------ */
/* fork + crash points */

typedef void (*child_fn)(fq_queue *q, void *arg);

/* Fork a child that joins on the inherited handle, arms `crash` and runs fn.
 * Returns 1 if it died of SIGKILL (the crash point fired). */
static int run_child(fq_queue *q, const char *crash, child_fn fn, void *arg)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        fq_after_fork_child(q);
        if (fq_join(q, 3) != FQ_OK)
            _exit(3);
        fq_crash_arm(crash);
        fn(q, arg);
        _exit(0); /* the crash point was not reached */
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        ;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

struct claim_arg {
    uint32_t n;
    uint32_t lens[4];
    uint64_t key;
};
static void child_produce(fq_queue *q, void *p)
{
    struct claim_arg *a = p;
    uint64_t first;
    if (fq_claim(q, a->lens, a->n, &first) != FQ_OK)
        _exit(4);
    for (uint32_t i = 0; i < a->n; i++)
        fqt_fill(fq_payload(q, first + i), a->lens[i], a->key + first + i);
    fq_commit(q, first, a->n);
}

static const struct {
    const char *point;
    int claimed;   /* seqs taken from the tail */
    int delivered; /* the records survive (committed) */
} g_prod_points[] = {
    {"prod.after_intent", 0, 0},
    {"prod.after_cas", 1, 0},
    {"prod.after_desc", 1, 0},
    {"prod.before_commit", 1, 0},
    {"prod.after_commit", 1, 1},
};

static void test_fork_dead_producer(void)
{
    for (size_t pi = 0; pi < sizeof g_prod_points / sizeof g_prod_points[0]; pi++) {
        for (uint32_t batch = 1; batch <= 3; batch += 2) {
            for (int later = 0; later < 2; later++) {
                fq_queue q;
                FQT_REQUIRE_ST(mk(&q, 1 << 14), FQ_OK);
                const char *pt = g_prod_points[pi].point;
                uint64_t s0;
                FQT_ST(fqt_put(&q, 12, 1, &s0), FQ_OK);
                struct claim_arg ca = {.n = batch, .lens = {200, 0, 77, 0}, .key = 5000};
                int killed = run_child(&q, pt, child_produce, &ca);
                FQT_CHECKM(killed == 1, "%s: child was not killed at the crash point", pt);
                uint64_t tail = fq_tail_seq(&q);
                int claimed = g_prod_points[pi].claimed;
                FQT_EQ(tail, s0 + 1 + (claimed ? batch : 0));
                int blocked = claimed && !g_prod_points[pi].delivered;
                uint64_t sl = 0;
                if (later) {
                    FQT_ST(fqt_put(&q, 33, 2, &sl), FQ_OK);
                    FQT_EQ(sl, tail);
                }
                /* before recovery: everything up to the dead claim */
                struct expect e[8];
                int ne = 0;
                e[ne++] = (struct expect){s0, 12, 1, 1};
                if (g_prod_points[pi].delivered)
                    for (uint32_t i = 0; i < batch; i++)
                        e[ne++] = (struct expect){s0 + 1 + i, ca.lens[i], ca.key + s0 + 1 + i, 1};
                if (later && !blocked)
                    e[ne++] = (struct expect){sl, 33, 2, 1};
                take_expect(&q, e, ne);
                fq_msg m;
                uint32_t n;
                FQT_CHECKM(fq_take(&q, 0, &m, 1, 0, &n) == (blocked ? FQ_STALLED : FQ_EMPTY),
                           "%s batch %u later %d: not %s before recovery", pt, batch, later,
                           blocked ? "stalled" : "empty");
                FQT_EQ(fq_maintain(&q, 1), 1);
                uint64_t want_aborted = blocked ? batch : 0;
                FQT_CHECKM((atomic_load(&q.ctrl->c_aborted) >> 1) == want_aborted, "%s batch %u: aborted %" PRIu64, pt,
                           batch, (uint64_t)(atomic_load(&q.ctrl->c_aborted) >> 1));
                if (later && blocked) {
                    struct expect el[] = {{sl, 33, 2, 1}};
                    take_expect(&q, el, 1);
                }
                FQT_ST(fq_take(&q, 0, &m, 1, 0, &n), FQ_EMPTY);
                FQT_CHECKM(fq_qsize(&q, 0) == 0, "%s batch %u later %d: qsize %" PRIu64, pt, batch, later,
                           fq_qsize(&q, 0));
                check_extents(&q, s0, fq_tail_seq(&q));
                laps(&q, 2, 0x60 + pi);
                fq_close(&q);
            }
        }
    }
}

/* A consumer dies right after its lease CAS: the parent recovers the lease
 * and the record is delivered again (deliveries == 2), in order. */
struct take_arg {
    uint32_t max;
    int ack;
};
static void child_consume(fq_queue *q, void *p)
{
    struct take_arg *a = p;
    fq_msg m[8];
    uint32_t n;
    if (fq_take(q, 0, m, a->max, 0, &n) != FQ_OK)
        _exit(5);
    if (a->ack)
        fq_ack(q, 0, m, n);
}

static void test_fork_dead_consumer(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 14), FQ_OK);
    for (int i = 0; i < 3; i++)
        FQT_ST(fqt_put(&q, 24, 70 + (uint64_t)i, NULL), FQ_OK);
    struct take_arg ta = {.max = 1, .ack = 0};
    FQT_CHECK(run_child(&q, "cons.after_lease", child_consume, &ta) == 1);
    /* the dead child's lease blocks nothing but itself */
    uint64_t w = atomic_load(&q.windows[0].l_w);
    FQT_EQ(fq__lw_st(w), FQ_L_LEASED);
    FQT_EQ(fq_maintain(&q, 1), 1);
    struct expect e[] = {{0, 24, 70, 2}, {1, 24, 71, 1}, {2, 24, 72, 1}};
    take_expect_any(&q, e, 3);
    FQT_EQ(fq_qsize(&q, 0), 0);
    FQT_EQ(atomic_load(&q.groups[0].g_retry_pending), 0);
    /* a lease taken in a batch of 2 (crash on the second lease) */
    for (int i = 0; i < 3; i++)
        FQT_ST(fqt_put(&q, 24, 80 + (uint64_t)i, NULL), FQ_OK);
    ta.max = 2;
    FQT_CHECK(run_child(&q, "cons.after_lease:2", child_consume, &ta) == 1);
    FQT_EQ(fq_maintain(&q, 1), 1);
    struct expect e2[] = {{3, 24, 80, 2}, {4, 24, 81, 2}, {5, 24, 82, 1}};
    take_expect_any(&q, e2, 3);
    FQT_EQ(fq_qsize(&q, 0), 0);
    laps(&q, 2, 0x70);
    fq_close(&q);
}

/* A consumer dies right after its lease CAS, before it advanced the
 * g_dispatch hint.  After recovery the record is RETRY at seq >= g_dispatch:
 * fq__take_retries scans only [g_low, g_dispatch) and the main scan skips
 * non-FRESH entries, so the first fq_take returns EMPTY although a record is
 * ready (and fq_wait_data says so); only the next take delivers it. */
static void test_fork_retry_beyond_dispatch(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 14), FQ_OK);
    FQT_ST(fqt_put(&q, 24, 70, NULL), FQ_OK);
    struct take_arg ta = {.max = 1, .ack = 0};
    FQT_CHECK(run_child(&q, "cons.after_lease", child_consume, &ta) == 1);
    FQT_EQ(fq_maintain(&q, 1), 1);
    FQT_ST(fq_wait_data(&q, 0, 0, 0), FQ_OK);
    fq_msg m;
    uint32_t n = 0;
    int rc = fq_take(&q, 0, &m, 1, 0, &n);
    FQT_CHECKM(rc == FQ_OK && n == 1, "first take after recovery -> %s (n=%u), want the redelivery", fq_strerror(rc),
               n);
    if (rc != FQ_OK)
        rc = fq_take(&q, 0, &m, 1, 0, &n); /* the second one gets it */
    FQT_ST(rc, FQ_OK);
    if (rc == FQ_OK) {
        FQT_EQ(m.seq, 0);
        FQT_EQ(m.deliveries, 2);
        FQT_ST(fq_ack(&q, 0, &m, 1), FQ_OK);
    }
    FQT_EQ(fq_qsize(&q, 0), 0);
    fq_close(&q);
}

/* A consumer dies after its ack CAS (before the low-watermark advance): the
 * record is done; nothing is redelivered; qsize must return to 0. */
static void test_fork_dead_after_ack(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 14), FQ_OK);
    for (int i = 0; i < 2; i++)
        FQT_ST(fqt_put(&q, 8, 90 + (uint64_t)i, NULL), FQ_OK);
    struct take_arg ta = {.max = 1, .ack = 1};
    FQT_CHECK(run_child(&q, "cons.after_ack", child_consume, &ta) == 1);
    FQT_EQ(fq_maintain(&q, 1), 1);
    struct expect e[] = {{1, 8, 91, 1}};
    take_expect(&q, e, 1);
    FQT_EQ(atomic_load(&q.groups[0].g_low), 2);
    FQT_CHECKM(fq_qsize(&q, 0) == 0, "qsize %" PRIu64 " after the queue drained (g_acked %" PRIu64 ")",
               fq_qsize(&q, 0), (uint64_t)atomic_load(&q.groups[0].g_acked));
    fq_close(&q);
}

/* The recoverer itself dies at each recovery crash point; the next
 * fq_maintain takes the recovery mutex over and finishes the job. */
static void child_maintain(fq_queue *q, void *p)
{
    (void)p;
    fq_maintain(q, 1);
}

static void test_fork_dead_recoverer(void)
{
    static const char *points[] = {"rec.before_gap", "rec.mid_leases", "rec.before_free"};
    for (size_t pi = 0; pi < 3; pi++) {
        fq_queue q;
        FQT_REQUIRE_ST(mk(&q, 1 << 14), FQ_OK);
        for (int i = 0; i < 3; i++)
            FQT_ST(fqt_put(&q, 8, 10 + (uint64_t)i, NULL), FQ_OK); /* 0..2 */
        /* a dead consumer holding 0 and 1 */
        struct take_arg ta = {.max = 2, .ack = 0};
        FQT_CHECK(run_child(&q, "no.such.point", child_consume, &ta) == 0);
        /* a dead producer with an unpublished claim (3) */
        struct claim_arg ca = {.n = 1, .lens = {40}, .key = 0};
        FQT_CHECK(run_child(&q, "prod.after_cas", child_produce, &ca) == 1);
        uint64_t s4;
        FQT_ST(fqt_put(&q, 8, 14, &s4), FQ_OK); /* 4 */
        FQT_EQ(s4, 4);
        /* the recoverer dies half-way */
        int killed = run_child(&q, points[pi], child_maintain, NULL);
        FQT_CHECKM(killed == 1, "recoverer did not reach %s", points[pi]);
        FQT_CHECK(atomic_load(&q.ctrl->c_recovery_owner) != 0);
        int rec = fq_maintain(&q, 1);
        FQT_CHECKM(rec >= 1, "%s: fq_maintain recovered %d", points[pi], rec);
        FQT_EQ(atomic_load(&q.ctrl->c_recovery_owner), 0);
        FQT_EQ((atomic_load(&q.ctrl->c_aborted) >> 1), 1);
        for (uint32_t i = 0; i < q.max_members; i++)
            if ((int)i != q.member)
                FQT_CHECKM(atomic_load(&q.members[i].m_state) == FQ_M_FREE, "%s: member %u state %u", points[pi],
                           i, atomic_load(&q.members[i].m_state));
        struct expect e[] = {{0, 8, 10, 2}, {1, 8, 11, 2}, {2, 8, 12, 1}, {4, 8, 14, 1}};
        take_expect(&q, e, 4);
        FQT_EQ(atomic_load(&q.groups[0].g_retry_pending), 0);
        FQT_CHECKM(fq_qsize(&q, 0) == 0, "%s: qsize %" PRIu64, points[pi], fq_qsize(&q, 0));
        check_extents(&q, 0, 5);
        laps(&q, 2, 0x80 + pi);
        fq_close(&q);
    }
}

static void child_hold_lease_exit(fq_queue *q, void *p)
{
    (void)p;
    fq_msg m;
    uint32_t n;
    fq_take(q, 0, &m, 1, 0, &n);
    /* exit without leaving: the kernel drops the lock, like a crash */
    _exit(0);
}

/* A child that simply exits (no crash point) while holding a lease. */
static void test_fork_exit_without_leave(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 14), FQ_OK);
    FQT_ST(fqt_put(&q, 8, 3, NULL), FQ_OK);
    FQT_CHECK(run_child(&q, "no.such.point", child_hold_lease_exit, NULL) == 0);
    fq_msg m;
    uint32_t n;
    FQT_ST(fq_take(&q, 0, &m, 1, 0, &n), FQ_EMPTY); /* leased by the dead child */
    FQT_EQ(fq_maintain(&q, 1), 1);
    struct expect e[] = {{0, 8, 3, 2}};
    take_expect(&q, e, 1);
    FQT_EQ(fq_qsize(&q, 0), 0);
    fq_close(&q);
}

int main(int argc, char **argv)
{
    fqt_prog = "test_recovery";
    FQT_RUN(test_dead_producer_writing);
    FQT_RUN(test_dead_claim_unpublished);
    FQT_RUN(test_dead_consumer_inproc);
    FQT_RUN(test_dead_waiter_uncounted);
    /* The fork cases also run under TSan (each process is single-threaded at
     * fork time; TSan simply cannot see the child's writes to the mapping).
     * FQT_NO_FORK=1 skips them. */
    if (getenv("FQT_NO_FORK")) {
        fqt_skip("test_fork_*", "FQT_NO_FORK is set");
    } else {
        FQT_RUN(test_fork_dead_producer);
        FQT_RUN(test_fork_dead_consumer);
        FQT_RUN(test_fork_retry_beyond_dispatch);
        FQT_RUN(test_fork_dead_after_ack);
        FQT_RUN(test_fork_dead_recoverer);
        FQT_RUN(test_fork_exit_without_leave);
    }
    return fqt_summary();
}
