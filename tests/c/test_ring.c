/*
 * test_ring.c — single-threaded semantics of the ring: put/take/ack FIFO,
 * batches, FULL by bytes / by maxsize / by descriptors, space coming back
 * after acks, padding at the wrap over many laps of a tiny ring, TOO_BIG,
 * exact qsize, lease window, and bounded waits (plus two small cross-thread
 * wake-up checks).
 */
#include "fq_test.h"

#include <pthread.h>

static int mk(fq_queue *q, uint64_t cap, uint64_t maxsize, uint32_t window)
{
    fq_params p = fqt_params(cap);
    p.maxsize = maxsize;
    p.window = window;
    int rc = fq_create(q, NULL, &p);
    if (rc == FQ_OK)
        rc = fq_join(q, FQ_M_KIND_PRODUCER | FQ_M_KIND_CONSUMER);
    return rc;
}

/* Take exactly one record, check it is (seq, len, key), ack it. */
static void take_check_ack(fq_queue *q, uint64_t seq, uint32_t len, uint64_t key)
{
    fq_msg m;
    uint32_t n = 0;
    int rc = fq_take(q, 0, &m, 1, 0, &n);
    FQT_CHECKM(rc == FQ_OK && n == 1, "take -> %s n=%u (want seq %" PRIu64 ")", fq_strerror(rc), n, seq);
    if (rc != FQ_OK || n != 1)
        return;
    FQT_EQ(m.seq, seq);
    FQT_EQ(m.len, len);
    FQT_EQ(m.deliveries, 1);
    FQT_CHECKM(fqt_verify(m.data, m.len, key), "payload of seq %" PRIu64 " differs", seq);
    FQT_ST(fq_ack(q, 0, &m, 1), FQ_OK);
}

/* ------------------------------------------------------------------------ */
static void test_fifo(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 16, 0, 0), FQ_OK);
    fq_msg m[16];
    uint32_t n = 99;
    FQT_ST(fq_take(&q, 0, m, 16, 0, &n), FQ_EMPTY);
    FQT_EQ(n, 0);
    const int N = 200;
    for (int i = 0; i < N; i++) {
        uint64_t seq;
        FQT_ST(fqt_put(&q, (uint32_t)(i * 7 % 300), 1000 + (uint64_t)i, &seq), FQ_OK);
        FQT_EQ(seq, i);
        FQT_EQ(fq_qsize(&q, 0), i + 1);
        FQT_EQ(fq_tail_seq(&q), i + 1);
    }
    int got = 0;
    while (got < N) {
        uint32_t want = 1 + (uint32_t)(got % 13);
        FQT_ST(fq_take(&q, 0, m, want, 0, &n), FQ_OK);
        FQT_CHECK(n >= 1 && n <= want);
        for (uint32_t k = 0; k < n; k++) {
            FQT_EQ(m[k].seq, got + (int)k);
            FQT_EQ(m[k].len, (uint32_t)((got + (int)k) * 7 % 300));
            FQT_EQ(m[k].deliveries, 1);
            FQT_CHECK(fqt_verify(m[k].data, m[k].len, 1000 + (uint64_t)(got + (int)k)));
            FQT_CHECK(m[k].ts_ns > 0);
        }
        /* leased but not acked: still counted by qsize */
        FQT_EQ(fq_qsize(&q, 0), N - got);
        FQT_ST(fq_ack(&q, 0, m, n), FQ_OK);
        got += (int)n;
        FQT_EQ(fq_qsize(&q, 0), N - got);
        if (n == 0)
            break;
    }
    FQT_ST(fq_take(&q, 0, m, 16, 0, &n), FQ_EMPTY);
    FQT_EQ(fq_qsize(&q, 0), 0);
    FQT_EQ(atomic_load(&q.members[q.member].m_puts), N);
    FQT_EQ(atomic_load(&q.members[q.member].m_gets), N);
    FQT_EQ(atomic_load(&q.groups[0].g_delivered), N);
    FQT_EQ(atomic_load(&q.groups[0].g_low), N);
    fq_close(&q);
}

static void test_batches(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 16, 0, 0), FQ_OK);
    uint32_t lens[10] = {0, 1, 7, 8, 9, 100, 1000, 31, 32, 33};
    uint64_t first = 77;
    FQT_REQUIRE_ST(fq_claim(&q, lens, 10, &first), FQ_OK);
    FQT_EQ(first, 0);
    for (uint32_t i = 0; i < 10; i++)
        fqt_fill(fq_payload(&q, first + i), lens[i], 500 + i);
    /* claimed, not committed: a taker sees the stall, never a partial record */
    fq_msg m[20];
    uint32_t n = 99;
    FQT_ST(fq_take(&q, 0, m, 20, 0, &n), FQ_STALLED);
    FQT_EQ(n, 0);
    FQT_EQ(fq_qsize(&q, 0), 10);
    fq_commit(&q, first, 10);
    /* a second batch behind it */
    FQT_REQUIRE_ST(fq_claim(&q, lens, 3, &first), FQ_OK);
    FQT_EQ(first, 10);
    for (uint32_t i = 0; i < 3; i++)
        fqt_fill(fq_payload(&q, first + i), lens[i], 510 + i);
    fq_commit(&q, first, 3);
    FQT_ST(fq_take(&q, 0, m, 20, 0, &n), FQ_OK);
    FQT_EQ(n, 13);
    for (uint32_t i = 0; i < n && i < 13; i++) {
        FQT_EQ(m[i].seq, i);
        FQT_EQ(m[i].len, i < 10 ? lens[i] : lens[i - 10]);
        FQT_CHECK(fqt_verify(m[i].data, m[i].len, 500 + i));
        FQT_CHECK(((uintptr_t)m[i].data & 7u) == 0); /* frames are 8-aligned */
    }
    /* ack in reverse order: low advances only once the first is acked */
    for (int i = (int)n - 1; i >= 1; i--)
        FQT_ST(fq_ack(&q, 0, &m[i], 1), FQ_OK);
    FQT_EQ(atomic_load(&q.groups[0].g_low), 0);
    FQT_EQ(fq_qsize(&q, 0), 1);
    FQT_ST(fq_ack(&q, 0, &m[0], 1), FQ_OK);
    FQT_EQ(atomic_load(&q.groups[0].g_low), 13);
    FQT_EQ(fq_qsize(&q, 0), 0);
    /* acking again, or with a wrong delivery count, is a lost lease */
    FQT_ST(fq_ack(&q, 0, &m[0], 1), FQ_ERR_LOST);
    FQT_ST(fqt_put(&q, 5, 1, NULL), FQ_OK);
    FQT_ST(fq_take(&q, 0, m, 1, 0, &n), FQ_OK);
    fq_msg bad = m[0];
    bad.deliveries = 2;
    FQT_ST(fq_ack(&q, 0, &bad, 1), FQ_ERR_LOST);
    FQT_EQ(fq_qsize(&q, 0), 1);
    FQT_ST(fq_ack(&q, 0, m, 1), FQ_OK);
    FQT_EQ(fq_qsize(&q, 0), 0);
    fq_close(&q);
}

static void test_full_by_bytes(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 4096, 0, 0), FQ_OK);
    uint32_t mp = fq_max_payload(&q);
    FQT_EQ(mp, 1024 - 32);
    for (int i = 0; i < 4; i++)
        FQT_ST(fqt_put(&q, mp, (uint64_t)i, NULL), FQ_OK);
    FQT_ST(fqt_put(&q, mp, 9, NULL), FQ_FULL);
    FQT_ST(fqt_put(&q, 0, 9, NULL), FQ_FULL); /* not even 32 bytes */
    FQT_EQ(fq_qsize(&q, 0), 4);
    FQT_ST(fq_wait_space(&q, 1, fq_frame_bytes(0), 0), FQ_TIMEOUT);
    /* leased is not free: space returns only after the ack */
    fq_msg m;
    uint32_t n;
    FQT_ST(fq_take(&q, 0, &m, 1, 0, &n), FQ_OK);
    FQT_ST(fqt_put(&q, 0, 9, NULL), FQ_FULL);
    FQT_ST(fq_ack(&q, 0, &m, 1), FQ_OK);
    FQT_ST(fq_wait_space(&q, 1, fq_frame_bytes(mp), 0), FQ_OK);
    FQT_ST(fqt_put(&q, mp, 4, NULL), FQ_OK);
    FQT_ST(fqt_put(&q, 0, 9, NULL), FQ_FULL);
    for (int i = 1; i <= 4; i++)
        take_check_ack(&q, (uint64_t)i, mp, (uint64_t)i);
    FQT_EQ(fq_qsize(&q, 0), 0);
    /* smaller frames: exactly floor(4096 / 136) fit when the ring is empty and
     * the next position is at a frame boundary that divides nothing: count them */
    uint64_t pos0 = 5 * 1024; /* byte position after 5 frames of 1024 */
    FQT_EQ(pos0 % 4096, 1024);
    int fit = 0;
    while (fqt_put(&q, 100, 100 + (uint64_t)fit, NULL) == FQ_OK)
        fit++;
    /* 136-byte frames from offset 1024: 22 fit before the end (3072/136=22.6),
     * the 23rd pads 80 bytes at the wrap, then the arena holds up to 4096 total */
    uint64_t used = 0, p = pos0;
    int expect = 0;
    for (;;) {
        uint64_t off = p % 4096, pad = off + 136 > 4096 ? 4096 - off : 0;
        if (used + pad + 136 > 4096)
            break;
        used += pad + 136;
        p += pad + 136;
        expect++;
    }
    FQT_EQ(fit, expect);
    for (int i = 0; i < fit; i++)
        take_check_ack(&q, 5 + (uint64_t)i, 100, 100 + (uint64_t)i);
    fq_close(&q);
}

static void test_full_by_maxsize(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 16, 5, 0), FQ_OK);
    FQT_EQ(fq_batch_limit(&q), 5);
    for (int i = 0; i < 5; i++)
        FQT_ST(fqt_put(&q, 10, (uint64_t)i, NULL), FQ_OK);
    FQT_ST(fqt_put(&q, 0, 9, NULL), FQ_FULL);
    FQT_EQ(fq_qsize(&q, 0), 5);
    FQT_ST(fq_wait_space(&q, 1, 64, 0), FQ_TIMEOUT);
    uint32_t lens[6] = {0};
    uint64_t first;
    FQT_ST(fq_claim(&q, lens, 6, &first), FQ_ERR_TOO_BIG); /* can never fit */
    /* ack seq 1 before seq 0: the gating low-watermark does not move, no space */
    fq_msg m[5];
    uint32_t n;
    FQT_ST(fq_take(&q, 0, m, 5, 0, &n), FQ_OK);
    FQT_EQ(n, 5);
    FQT_ST(fq_ack(&q, 0, &m[1], 1), FQ_OK);
    FQT_EQ(fq_qsize(&q, 0), 4);
    FQT_ST(fqt_put(&q, 0, 9, NULL), FQ_FULL);
    FQT_ST(fq_ack(&q, 0, &m[0], 1), FQ_OK);
    FQT_ST(fq_wait_space(&q, 2, 64, 0), FQ_OK);
    FQT_ST(fq_wait_space(&q, 3, 64, 0), FQ_TIMEOUT);
    FQT_ST(fq_claim(&q, lens, 3, &first), FQ_FULL);
    FQT_ST(fq_claim(&q, lens, 2, &first), FQ_OK);
    FQT_EQ(first, 5);
    fq_commit(&q, first, 2);
    FQT_ST(fqt_put(&q, 0, 9, NULL), FQ_FULL);
    FQT_EQ(fq_qsize(&q, 0), 5);
    FQT_ST(fq_ack(&q, 0, &m[2], 3), FQ_OK);
    FQT_EQ(fq_qsize(&q, 0), 2);
    FQT_ST(fq_take(&q, 0, m, 5, 0, &n), FQ_OK);
    FQT_EQ(n, 2);
    FQT_ST(fq_ack(&q, 0, m, n), FQ_OK);
    FQT_EQ(fq_qsize(&q, 0), 0);
    fq_close(&q);
}

static void test_full_by_descriptors(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 16, 0, 0), FQ_OK);
    uint64_t limit = q.limit_records;
    FQT_EQ(limit, q.n_desc - 1);
    for (uint64_t i = 0; i < limit; i++)
        FQT_ST(fqt_put(&q, 0, i, NULL), FQ_OK);
    FQT_ST(fqt_put(&q, 0, 0, NULL), FQ_FULL);
    FQT_EQ(fq_qsize(&q, 0), limit);
    take_check_ack(&q, 0, 0, 0);
    FQT_ST(fqt_put(&q, 0, limit, NULL), FQ_OK);
    FQT_ST(fqt_put(&q, 0, 0, NULL), FQ_FULL);
    for (uint64_t i = 1; i <= limit; i++)
        take_check_ack(&q, i, 0, i);
    FQT_EQ(fq_qsize(&q, 0), 0);
    fq_close(&q);
}

static void test_too_big_and_inval(void)
{
    fq_queue q, o;
    FQT_REQUIRE_ST(mk(&q, 4096, 0, 0), FQ_OK);
    uint32_t mp = fq_max_payload(&q);
    uint64_t first;
    uint32_t len = mp + 1;
    FQT_ST(fq_claim(&q, &len, 1, &first), FQ_ERR_TOO_BIG);
    len = UINT32_MAX;
    FQT_ST(fq_claim(&q, &len, 1, &first), FQ_ERR_TOO_BIG);
    uint32_t five[5] = {mp, mp, mp, mp, mp}; /* 5 KiB in a 4 KiB arena */
    FQT_ST(fq_claim(&q, five, 5, &first), FQ_ERR_TOO_BIG);
    FQT_ST(fq_claim(&q, five, 0, &first), FQ_ERR_INVAL);
    uint32_t four[4] = {mp, mp, mp, mp}; /* fits at position 0 only: refused wherever the ring stands */
    FQT_ST(fq_claim(&q, four, 4, &first), FQ_ERR_TOO_BIG);
    FQT_ST(fq_claim(&q, four, 3, &first), FQ_OK);
    uint32_t one = mp;
    uint64_t first1;
    FQT_ST(fq_claim(&q, &one, 1, &first1), FQ_OK);
    fq_commit(&q, first, 3);
    fq_commit(&q, first1, 1);
    FQT_EQ(fq_qsize(&q, 0), 4);
    fq_msg m[4];
    uint32_t n;
    FQT_ST(fq_take(&q, 0, m, 0, 0, &n), FQ_ERR_INVAL);
    FQT_ST(fq_take(&q, 1, m, 4, 0, &n), FQ_ERR_INVAL); /* one group only */
    FQT_ST(fq_ack(&q, 1, m, 1), FQ_ERR_INVAL);
    FQT_ST(fq_wait_data(&q, 1, 0, 0), FQ_ERR_INVAL);
    /* a handle that has not joined may not produce or consume */
    FQT_REQUIRE_ST(fqt_open_dup(&o, &q), FQ_OK);
    FQT_ST(fq_claim(&o, &len, 1, &first), FQ_ERR_INVAL);
    FQT_ST(fq_take(&o, 0, m, 1, 0, &n), FQ_ERR_INVAL);
    FQT_ST(fq_ack(&o, 0, m, 1), FQ_ERR_INVAL);
    FQT_EQ(fq_maintain(&o, 1), 0);
    FQT_EQ(fq_qsize(&o, 0), 4); /* read-only calls work */
    fq_close(&o);
    FQT_ST(fq_take(&q, 0, m, 4, 0, &n), FQ_OK);
    FQT_EQ(n, 4);
    for (uint32_t i = 0; i < n; i++)
        FQT_EQ(m[i].len, mp);
    FQT_ST(fq_ack(&q, 0, m, n), FQ_OK);
    fq_close(&q);
}

/* Many laps of a tiny ring with random sizes up to the maximum: padding at the
 * wrap, batches, content checks, exact qsize. */
static void test_wrap_random(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 4096, 0, 0), FQ_OK);
    const uint32_t mp = fq_max_payload(&q);
    const uint8_t *arena_end = q.arena + q.cap;
    fqt_rng r;
    fqt_seed(&r, 12345);
    uint64_t next_put = 0, next_take = 0;
    uint32_t lens_of[64]; /* lens of in-flight records, indexed seq & 63 (< 64 in flight) */
    uint64_t bytes = 0, padded = 0;
    const uint64_t TOTAL = 60000;
    while (next_take < TOTAL) {
        /* produce a random batch until FULL */
        int produced = 0;
        for (;;) {
            uint32_t nb = 1 + (fqt_below(&r, 4) == 0 ? fqt_below(&r, 4) : 0);
            uint32_t lens[4];
            uint64_t batch_bytes = 0;
            for (uint32_t i = 0; i < nb; i++) {
                uint32_t k = fqt_below(&r, 8);
                lens[i] = k == 0 ? mp : k < 3 ? fqt_below(&r, mp + 1) : fqt_below(&r, 200);
                /* a batch whose frames need more than half the arena may be
                 * TOO_BIG depending on where the wrap falls (see report):
                 * keep batches within cap/2 as fq_batch_limit's comment says */
                if (batch_bytes + fq_frame_bytes(lens[i]) > q.cap / 2)
                    lens[i] = 0;
                batch_bytes += fq_frame_bytes(lens[i]);
            }
            uint64_t first;
            int rc = fq_claim(&q, lens, nb, &first);
            if (rc == FQ_FULL)
                break;
            FQT_CHECKM(rc == FQ_OK, "claim -> %s", fq_strerror(rc));
            if (rc != FQ_OK)
                goto out;
            FQT_EQ(first, next_put);
            for (uint32_t i = 0; i < nb; i++) {
                uint8_t *p = fq_payload(&q, first + i);
                FQT_CHECK(p >= q.arena && p + lens[i] <= arena_end); /* never crosses the end */
                fqt_fill(p, lens[i], first + i);
                lens_of[(first + i) & 63] = lens[i];
                uint32_t fo = atomic_load(&q.desc[(first + i) & q.desc_mask].d_frame_off);
                if (fo)
                    padded++;
            }
            fq_commit(&q, first, nb);
            next_put += nb;
            produced += (int)nb;
            if (fqt_below(&r, 3) == 0)
                break;
        }
        FQT_EQ(fq_qsize(&q, 0), next_put - next_take);
        /* consume a random amount (everything, sometimes) */
        uint32_t k = fqt_below(&r, 2) ? (uint32_t)(next_put - next_take) : 1 + fqt_below(&r, 5);
        while (k > 0 && next_take < next_put) {
            fq_msg m[8];
            uint32_t n = 0, want = k < 8 ? k : 8;
            int rc = fq_take(&q, 0, m, want, 0, &n);
            FQT_CHECKM(rc == FQ_OK && n > 0, "take -> %s", fq_strerror(rc));
            if (rc != FQ_OK || n == 0)
                goto out;
            for (uint32_t i = 0; i < n; i++) {
                FQT_EQ(m[i].seq, next_take + i);
                FQT_EQ(m[i].len, lens_of[m[i].seq & 63]);
                FQT_CHECK(m[i].data >= q.arena && m[i].data + m[i].len <= arena_end);
                if (!fqt_verify(m[i].data, m[i].len, m[i].seq)) {
                    FQT_CHECKM(0, "content of seq %" PRIu64 " (len %u) differs", m[i].seq, m[i].len);
                    goto out;
                }
                bytes += m[i].len;
            }
            FQT_ST(fq_ack(&q, 0, m, n), FQ_OK);
            next_take += n;
            k -= n < k ? n : k;
        }
        FQT_EQ(fq_qsize(&q, 0), next_put - next_take);
        (void)produced;
    }
out:
    FQT_CHECK(padded > 100); /* the wrap was exercised */
    printf("  %" PRIu64 " records, %" PRIu64 " payload bytes, %" PRIu64 " padded, %" PRIu64 " laps\n", next_take,
           bytes, padded, (uint64_t)(fq_tail_seq(&q) / q.n_desc));
    fq_close(&q);
}

static void test_window(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 16, 0, 4), FQ_OK);
    FQT_EQ(q.window, 4);
    for (int i = 0; i < 10; i++)
        FQT_ST(fqt_put(&q, 4, (uint64_t)i, NULL), FQ_OK);
    fq_msg m[10];
    uint32_t n;
    FQT_ST(fq_take(&q, 0, m, 10, 0, &n), FQ_OK);
    FQT_EQ(n, 4); /* at most W leases in flight */
    uint32_t n2 = 9;
    int rc = fq_take(&q, 0, m + 4, 6, 0, &n2);
    FQT_CHECKM(rc == FQ_EMPTY && n2 == 0, "window full: take -> %s n=%u", fq_strerror(rc), n2);
    FQT_ST(fq_ack(&q, 0, m, 2), FQ_OK);
    FQT_ST(fq_take(&q, 0, m + 4, 6, 0, &n2), FQ_OK);
    FQT_EQ(n2, 2);
    FQT_EQ(m[4].seq, 4);
    FQT_EQ(m[5].seq, 5);
    FQT_ST(fq_ack(&q, 0, m + 2, 4), FQ_OK);
    int got = 6;
    while (got < 10) {
        FQT_ST(fq_take(&q, 0, m, 10, 0, &n), FQ_OK);
        for (uint32_t i = 0; i < n; i++)
            FQT_EQ(m[i].seq, got + (int)i);
        FQT_ST(fq_ack(&q, 0, m, n), FQ_OK);
        got += (int)n;
        if (!n)
            break;
    }
    FQT_EQ(fq_qsize(&q, 0), 0);
    fq_close(&q);
}

static void test_only_len(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 16, 0, 0), FQ_OK);
    FQT_ST(fqt_put(&q, 8, 0, NULL), FQ_OK);
    FQT_ST(fqt_put(&q, 8, 1, NULL), FQ_OK);
    FQT_ST(fqt_put(&q, 16, 2, NULL), FQ_OK);
    fq_msg m[4];
    uint32_t n;
    FQT_ST(fq_take(&q, 0, m, 4, 8, &n), FQ_OK);
    FQT_EQ(n, 2);
    FQT_ST(fq_ack(&q, 0, m, n), FQ_OK);
    FQT_ST(fq_take(&q, 0, m, 4, 8, &n), FQ_ERR_SIZE);
    FQT_EQ(n, 0);
    FQT_ST(fq_take(&q, 0, m, 4, 16, &n), FQ_OK);
    FQT_EQ(n, 1);
    FQT_EQ(m[0].seq, 2);
    FQT_ST(fq_ack(&q, 0, m, n), FQ_OK);
    FQT_EQ(fq_qsize(&q, 0), 0);
    fq_close(&q);
}

/* Two handles: a claim in flight on one stalls the other's take, in order. */
static void test_stall_order(void)
{
    fq_queue a, b;
    FQT_REQUIRE_ST(mk(&a, 1 << 16, 0, 0), FQ_OK);
    FQT_REQUIRE_ST(fqt_open_dup(&b, &a), FQ_OK);
    FQT_REQUIRE_ST(fq_join(&b, 3), FQ_OK);
    FQT_CHECK(a.member != b.member);
    uint32_t len = 10;
    uint64_t sa;
    FQT_REQUIRE_ST(fq_claim(&a, &len, 1, &sa), FQ_OK);
    fqt_fill(fq_payload(&a, sa), len, 1);
    uint64_t sb;
    FQT_ST(fqt_put(&b, 20, 2, &sb), FQ_OK);
    FQT_EQ(sb, sa + 1);
    fq_msg m[2];
    uint32_t n;
    FQT_ST(fq_take(&b, 0, m, 2, 0, &n), FQ_STALLED);
    FQT_ST(fq_wait_data(&b, 0, fq_now_ns() + 1000000, 0), FQ_TIMEOUT);
    FQT_EQ(fq_maintain(&b, 1), 0); /* a live claimant is never recovered */
    FQT_ST(fq_take(&b, 0, m, 2, 0, &n), FQ_STALLED);
    fq_commit(&a, sa, 1);
    FQT_ST(fq_wait_data(&b, 0, 0, 0), FQ_OK);
    FQT_ST(fq_take(&b, 0, m, 2, 0, &n), FQ_OK);
    FQT_EQ(n, 2);
    FQT_EQ(m[0].seq, sa);
    FQT_EQ(m[1].seq, sb);
    FQT_CHECK(fqt_verify(m[0].data, 10, 1) && fqt_verify(m[1].data, 20, 2));
    FQT_ST(fq_ack(&b, 0, m, 2), FQ_OK);
    FQT_EQ((atomic_load(&a.ctrl->c_aborted) >> 1), 0);
    /* leaving returns leases: b takes, closes; a gets it again (2nd delivery) */
    FQT_ST(fqt_put(&a, 3, 3, NULL), FQ_OK);
    FQT_ST(fq_take(&b, 0, m, 1, 0, &n), FQ_OK);
    fq_close(&b);
    FQT_ST(fq_take(&a, 0, m, 1, 0, &n), FQ_OK);
    FQT_EQ(n, 1);
    FQT_EQ(m[0].deliveries, 2);
    FQT_CHECK(fqt_verify(m[0].data, 3, 3));
    FQT_ST(fq_ack(&a, 0, m, 1), FQ_OK);
    FQT_EQ(fq_qsize(&a, 0), 0);
    fq_close(&a);
}

static void test_members_table(void)
{
    fq_params p = fqt_params(4096);
    p.max_members = 2;
    fq_queue a, b, c;
    FQT_REQUIRE_ST(fq_create(&a, NULL, &p), FQ_OK);
    FQT_REQUIRE_ST(fqt_open_dup(&b, &a), FQ_OK);
    FQT_REQUIRE_ST(fqt_open_dup(&c, &a), FQ_OK);
    FQT_ST(fq_join(&a, 1), FQ_OK);
    FQT_ST(fq_join(&b, 2), FQ_OK);
    FQT_ST(fq_join(&c, 2), FQ_ERR_MEMBERS);
    FQT_EQ(c.member, -1);
    FQT_EQ(fq_member_alive(&c, (uint32_t)a.member), 1);
    FQT_EQ(fq_member_alive(&c, (uint32_t)b.member), 1);
    FQT_EQ(fq_member_alive(&c, 5), 0);
    fq_leave(&b);
    FQT_EQ(fq_member_alive(&c, 1), 0);
    FQT_ST(fq_join(&c, 2), FQ_OK);
    FQT_ST(fq_join(&c, 2), FQ_OK); /* idempotent */
    fq_close(&c);
    fq_close(&b);
    fq_close(&a);
}

static void test_task_done(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 1 << 16, 0, 0), FQ_OK);
    FQT_ST(fq_wait_done(&q, 0), FQ_OK);
    for (int i = 0; i < 3; i++)
        FQT_ST(fqt_put(&q, 1, 0, NULL), FQ_OK);
    FQT_EQ(fq_unfinished(&q), 3);
    FQT_ST(fq_wait_done(&q, fq_now_ns() + 1000000), FQ_TIMEOUT);
    FQT_ST(fq_task_done(&q, 4), FQ_ERR_INVAL);
    FQT_ST(fq_task_done(&q, 2), FQ_OK);
    FQT_EQ(fq_unfinished(&q), 1);
    FQT_ST(fq_task_done(&q, 1), FQ_OK);
    FQT_EQ(fq_unfinished(&q), 0);
    FQT_ST(fq_wait_done(&q, 0), FQ_OK);
    FQT_ST(fq_task_done(&q, 1), FQ_ERR_INVAL);
    fq_close(&q);
}

/* ------------------------------------------------------------------------ */
static int64_t timed_wait_data(fq_queue *q, int64_t ahead_ns, uint32_t spin, int *rc)
{
    int64_t t0 = fq_now_ns();
    *rc = fq_wait_data(q, 0, t0 + ahead_ns, spin);
    return fq_now_ns() - t0;
}

static void test_wait_timeouts(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 4096, 0, 0), FQ_OK);
    const int64_t ms = 1000000;
    /* upper bound: generous (sanitizers, loaded CI machines) but bounded */
    const int64_t slack = 150 * ms;
    int rc;
    int64_t dt = timed_wait_data(&q, 20 * ms, 0, &rc);
    FQT_ST(rc, FQ_TIMEOUT);
    FQT_CHECKM(dt >= 19 * ms && dt <= 20 * ms + slack, "wait_data 20 ms took %.2f ms", dt / 1e6);
    dt = timed_wait_data(&q, 20 * ms, 5 * ms, &rc); /* spinning first (5 ms) does not extend it */
    FQT_ST(rc, FQ_TIMEOUT);
    FQT_CHECKM(dt >= 19 * ms && dt <= 20 * ms + slack, "wait_data(spin) 20 ms took %.2f ms", dt / 1e6);
    dt = timed_wait_data(&q, -5 * ms, 0, &rc); /* deadline already passed */
    FQT_ST(rc, FQ_TIMEOUT);
    FQT_CHECKM(dt < 10 * ms, "past deadline took %.2f ms", dt / 1e6);
    /* the waiter count is back to zero after each wait */
    FQT_EQ((uint32_t)atomic_load(&q.ctrl->c_data_ec), 0);
    FQT_EQ(atomic_load(&q.members[q.member].m_waiting), 0);
    /* data present: immediate */
    FQT_ST(fqt_put(&q, 1, 0, NULL), FQ_OK);
    dt = timed_wait_data(&q, 1000 * ms, 0, &rc);
    FQT_ST(rc, FQ_OK);
    FQT_CHECKM(dt < 10 * ms, "ready wait took %.2f ms", dt / 1e6);
    take_check_ack(&q, 0, 1, 0);
    /* space: full ring -> bounded timeout; space -> immediate */
    uint32_t mp = fq_max_payload(&q);
    while (fqt_put(&q, mp, 0, NULL) == FQ_OK)
        ;
    int64_t t0 = fq_now_ns();
    rc = fq_wait_space(&q, 1, fq_frame_bytes(mp), t0 + 20 * ms);
    dt = fq_now_ns() - t0;
    FQT_ST(rc, FQ_TIMEOUT);
    FQT_CHECKM(dt >= 19 * ms && dt <= 20 * ms + slack, "wait_space 20 ms took %.2f ms", dt / 1e6);
    FQT_EQ((uint32_t)atomic_load(&q.ctrl->c_space_ec), 0);
    FQT_EQ(atomic_load(&q.members[q.member].m_waiting), 0);
    /* done: bounded */
    t0 = fq_now_ns();
    rc = fq_wait_done(&q, t0 + 20 * ms);
    dt = fq_now_ns() - t0;
    FQT_ST(rc, FQ_TIMEOUT);
    FQT_CHECKM(dt >= 19 * ms && dt <= 20 * ms + slack, "wait_done 20 ms took %.2f ms", dt / 1e6);
    fq_close(&q);
}

/* Cross-thread wake-ups: a parked waiter returns well before its deadline. */
struct waker_arg {
    fq_queue *q;
    int what; /* 0 = data, 1 = space */
    int rc;
    int64_t dt;
    _Atomic int started;
};
static void *waiter_thread(void *p)
{
    struct waker_arg *a = p;
    fq_queue h;
    if (fqt_clone(&h, a->q, 3) != FQ_OK) {
        a->rc = -100;
        return NULL;
    }
    atomic_store(&a->started, 1);
    int64_t t0 = fq_now_ns();
    a->rc = a->what == 0 ? fq_wait_data(&h, 0, t0 + 5000000000LL, 0)
                         : fq_wait_space(&h, 1, fq_frame_bytes(fq_max_payload(&h)), t0 + 5000000000LL);
    a->dt = fq_now_ns() - t0;
    fqt_unclone(&h);
    return NULL;
}

static void test_wakeups(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 4096, 0, 0), FQ_OK);
    for (int what = 0; what < 2; what++) {
        if (what == 1)
            while (fqt_put(&q, fq_max_payload(&q), 0, NULL) == FQ_OK)
                ;
        struct waker_arg a = {.q = &q, .what = what};
        pthread_t th;
        FQT_REQUIRE(pthread_create(&th, NULL, waiter_thread, &a) == 0);
        while (!atomic_load(&a.started))
            usleep(100);
        usleep(30000); /* let it park */
        if (what == 0) {
            FQT_ST(fqt_put(&q, 5, 5, NULL), FQ_OK);
        } else {
            fq_msg m;
            uint32_t n;
            FQT_ST(fq_take(&q, 0, &m, 1, 0, &n), FQ_OK);
            FQT_ST(fq_ack(&q, 0, &m, 1), FQ_OK);
        }
        pthread_join(th, NULL);
        FQT_ST(a.rc, FQ_OK);
        FQT_CHECKM(a.dt < 2000000000LL, "%s waiter woke after %.1f ms", what ? "space" : "data", a.dt / 1e6);
        if (what == 0)
            take_check_ack(&q, 0, 5, 5);
    }
    fq_close(&q);
}

int main(int argc, char **argv)
{
    fqt_prog = "test_ring";
    FQT_RUN(test_fifo);
    FQT_RUN(test_batches);
    FQT_RUN(test_full_by_bytes);
    FQT_RUN(test_full_by_maxsize);
    FQT_RUN(test_full_by_descriptors);
    FQT_RUN(test_too_big_and_inval);
    FQT_RUN(test_wrap_random);
    FQT_RUN(test_window);
    FQT_RUN(test_only_len);
    FQT_RUN(test_stall_order);
    FQT_RUN(test_members_table);
    FQT_RUN(test_task_done);
    FQT_RUN(test_wait_timeouts);
    FQT_RUN(test_wakeups);
    return fqt_summary();
}
