/*
 * stress_impl.h — one parameterised MPMC stress body (DPDK app/test style):
 * a stress_*.c file defines the parameters below and includes this file.
 *
 *   STRESS_NAME          program name for the summary line
 *   STRESS_PRODUCERS     producer threads
 *   STRESS_CONSUMERS     consumer threads
 *   STRESS_CAPACITY      arena bytes
 *   STRESS_MAX_LEN       largest payload (0 = fq_max_payload)
 *   STRESS_MAX_BATCH     records per claim, 1..8
 *   STRESS_TAKE_MAX      records per take, 1..64
 *   STRESS_SEPARATE_MAPS 1: each thread maps the queue itself (fq_open_fd on a
 *                        dup, as another process would); 0: threads share the
 *                        creator's mapping with their own member slot, so
 *                        ThreadSanitizer can relate every access
 *   STRESS_MAINTAIN      1: a maintainer thread runs fq_maintain(force) in a
 *                        loop — a liveness scan must never abort a live claim
 *
 * Each producer writes numbered, checksummed records of random size (seeded
 * PRNG): [u32 producer][u32 len][u64 counter][u32 crc32c][u32 0][body].
 * Consumers verify length and checksum, that per consumer the sequence
 * numbers and each producer's counters only increase, and (bitmap) that
 * every record is delivered exactly once.  Blocking goes through
 * fq_wait_data / fq_wait_space with short deadlines.  At the end nothing is
 * lost or duplicated and qsize == 0.
 */
#ifndef STRESS_IMPL_H
#define STRESS_IMPL_H

#include "fq_test.h"

#include <pthread.h>
#include <time.h>

#ifndef STRESS_MAX_LEN
#define STRESS_MAX_LEN 0
#endif
#ifndef STRESS_MAX_BATCH
#define STRESS_MAX_BATCH 4
#endif
#ifndef STRESS_TAKE_MAX
#define STRESS_TAKE_MAX 16
#endif
#ifndef STRESS_SEPARATE_MAPS
#define STRESS_SEPARATE_MAPS 0
#endif
#ifndef STRESS_MAINTAIN
#define STRESS_MAINTAIN 1
#endif

#define ST_HDR 24u
#define ST_CAP_BITS 26 /* at most 2^26 records per producer (8 MiB bitmap each) */
#define ST_MAX_ACK_HOLD 64

struct st_hdr {
    uint32_t producer;
    uint32_t len;
    uint64_t counter;
    uint32_t crc;
    uint32_t zero;
};
_Static_assert(sizeof(struct st_hdr) == ST_HDR, "stress header");

static fq_queue st_q;                     /* the creator's handle */
static _Atomic int st_stop;               /* producers: stop producing */
static _Atomic int st_producers_done;     /* all producers have finished */
static _Atomic uint64_t st_produced_total;
static _Atomic uint64_t st_consumed_total;
static uint64_t st_produced[STRESS_PRODUCERS];
static _Atomic uint64_t *st_seen[STRESS_PRODUCERS]; /* bitmap per producer */
static _Atomic uint64_t st_full_waits, st_empty_waits, st_stalls, st_maint_runs, st_bytes;
static double st_seconds = 2.0;

static int st_handle(fq_queue *h)
{
#if STRESS_SEPARATE_MAPS
    int rc = fqt_open_dup(h, &st_q);
    if (rc == FQ_OK)
        rc = fq_join(h, 3);
    return rc;
#else
    return fqt_clone(h, &st_q, 3);
#endif
}
static void st_release(fq_queue *h)
{
#if STRESS_SEPARATE_MAPS
    fq_close(h);
#else
    fqt_unclone(h);
#endif
}

static uint32_t st_crc(const uint8_t *p, uint32_t len)
{
    /* over producer, len, counter and the body; not over crc/zero */
    uint32_t c = fq_crc32c(0, p, 16);
    return fq_crc32c(c, p + ST_HDR, len - ST_HDR);
}

/* ------------------------------------------------------------------------ */
static void *st_producer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    fq_queue h;
    int rc = st_handle(&h);
    if (rc != FQ_OK) {
        FQT_CHECKM(0, "producer %u: handle -> %s", id, fq_strerror(rc));
        return NULL;
    }
    fqt_rng r;
    fqt_seed(&r, 0xC0FFEEull + id);
    uint32_t maxp = fq_max_payload(&h);
    if (STRESS_MAX_LEN && STRESS_MAX_LEN < maxp)
        maxp = STRESS_MAX_LEN;
    uint64_t counter = 0, cap = (uint64_t)1 << ST_CAP_BITS;
    uint32_t lens[8];
    while (!atomic_load_explicit(&st_stop, memory_order_relaxed) && counter + 8 < cap) {
        uint32_t nb = 1 + fqt_below(&r, STRESS_MAX_BATCH);
        uint64_t bytes = 0;
        for (uint32_t i = 0; i < nb; i++) {
            uint32_t k = fqt_below(&r, 20), len;
            if (k < 14)
                len = ST_HDR + fqt_below(&r, 100);
            else if (k < 19)
                len = ST_HDR + fqt_below(&r, 1000);
            else
                len = ST_HDR + fqt_below(&r, maxp - ST_HDR + 1);
            if (len > maxp)
                len = maxp;
            /* a batch stays within half the arena (see test_ring: larger
             * batches can be TOO_BIG depending on where the wrap falls) */
            if (bytes + fq_frame_bytes(len) > h.cap / 2)
                len = ST_HDR;
            bytes += fq_frame_bytes(len);
            lens[i] = len;
        }
        uint64_t first;
        for (;;) {
            rc = fq_claim(&h, lens, nb, &first);
            if (rc != FQ_FULL)
                break;
            atomic_fetch_add_explicit(&st_full_waits, 1, memory_order_relaxed);
            fq_wait_space(&h, nb, bytes, fq_now_ns() + 2000000);
            if (atomic_load_explicit(&st_stop, memory_order_relaxed) > 1)
                break; /* the run is being aborted */
        }
        if (rc != FQ_OK) {
            FQT_CHECKM(rc == FQ_FULL, "producer %u: claim -> %s", id, fq_strerror(rc));
            break;
        }
        for (uint32_t i = 0; i < nb; i++) {
            uint8_t *p = fq_payload(&h, first + i);
            struct st_hdr hd = {.producer = id, .len = lens[i], .counter = counter + i, .crc = 0, .zero = 0};
            memcpy(p, &hd, ST_HDR);
            fqt_fill(p + ST_HDR, lens[i] - ST_HDR, ((uint64_t)id << 48) ^ (counter + i));
            hd.crc = st_crc(p, lens[i]);
            memcpy(p + 16, &hd.crc, 4);
        }
        fq_commit(&h, first, nb);
        counter += nb;
        atomic_fetch_add_explicit(&st_produced_total, nb, memory_order_relaxed);
    }
    st_produced[id] = counter;
    st_release(&h);
    return NULL;
}

/* ------------------------------------------------------------------------ */
static void *st_consumer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    fq_queue h;
    int rc = st_handle(&h);
    if (rc != FQ_OK) {
        FQT_CHECKM(0, "consumer %u: handle -> %s", id, fq_strerror(rc));
        return NULL;
    }
    fqt_rng r;
    fqt_seed(&r, 0xBEEFull + id);
    int64_t last_counter[STRESS_PRODUCERS];
    for (int p = 0; p < STRESS_PRODUCERS; p++)
        last_counter[p] = -1;
    int64_t last_seq = -1;
    fq_msg msgs[STRESS_TAKE_MAX], held[ST_MAX_ACK_HOLD];
    uint32_t nheld = 0;
    int64_t drain_deadline = 0;
    uint64_t bytes = 0;
    int errors = 0;
    for (;;) {
        uint32_t n = 0, want = 1 + fqt_below(&r, STRESS_TAKE_MAX);
        rc = fq_take(&h, 0, msgs, want, 0, &n);
        if (rc == FQ_OK) {
            for (uint32_t i = 0; i < n; i++) {
                const fq_msg *m = &msgs[i];
                struct st_hdr hd;
                if (m->len < ST_HDR) {
                    FQT_CHECKM(0, "consumer %u: seq %" PRIu64 " len %u too short", id, m->seq, m->len);
                    errors++;
                    continue;
                }
                memcpy(&hd, m->data, ST_HDR);
                if (hd.producer >= STRESS_PRODUCERS || hd.len != m->len || hd.zero != 0 ||
                    hd.crc != st_crc(m->data, m->len)) {
                    FQT_CHECKM(0, "consumer %u: seq %" PRIu64 " corrupt (producer %u len %u/%u counter %" PRIu64 ")",
                               id, m->seq, hd.producer, hd.len, m->len, hd.counter);
                    errors++;
                    continue;
                }
                FQT_CHECKM((int64_t)m->seq > last_seq, "consumer %u: seq %" PRIu64 " after %" PRId64, id, m->seq,
                           last_seq);
                last_seq = (int64_t)m->seq;
                FQT_CHECKM((int64_t)hd.counter > last_counter[hd.producer],
                           "consumer %u: producer %u counter %" PRIu64 " after %" PRId64 " (FIFO)", id, hd.producer,
                           hd.counter, last_counter[hd.producer]);
                last_counter[hd.producer] = (int64_t)hd.counter;
                FQT_CHECKM(m->deliveries == 1, "consumer %u: seq %" PRIu64 " delivered %u times", id, m->seq,
                           m->deliveries);
                if (hd.counter >> ST_CAP_BITS) {
                    FQT_CHECKM(0, "counter %" PRIu64 " out of range", hd.counter);
                    continue;
                }
                uint64_t bit = 1ull << (hd.counter & 63);
                uint64_t old = atomic_fetch_or_explicit(&st_seen[hd.producer][hd.counter >> 6], bit,
                                                        memory_order_relaxed);
                FQT_CHECKM(!(old & bit), "producer %u counter %" PRIu64 " delivered twice (seq %" PRIu64 ")",
                           hd.producer, hd.counter, m->seq);
                bytes += m->len;
            }
            /* ack: now, in reverse, split, or hold some across the next take */
            uint32_t mode = fqt_below(&r, 8);
            if (mode == 0 && nheld + n <= ST_MAX_ACK_HOLD) {
                memcpy(held + nheld, msgs, n * sizeof *msgs);
                nheld += n;
            } else {
                if (nheld) {
                    FQT_ST(fq_ack(&h, 0, held, nheld), FQ_OK);
                    nheld = 0;
                }
                if (mode == 1) {
                    for (uint32_t i = n; i-- > 0;)
                        FQT_ST(fq_ack(&h, 0, &msgs[i], 1), FQ_OK);
                } else if (mode == 2 && n > 1) {
                    FQT_ST(fq_ack(&h, 0, msgs + n / 2, n - n / 2), FQ_OK);
                    FQT_ST(fq_ack(&h, 0, msgs, n / 2), FQ_OK);
                } else {
                    FQT_ST(fq_ack(&h, 0, msgs, n), FQ_OK);
                }
            }
            atomic_fetch_add_explicit(&st_consumed_total, n, memory_order_relaxed);
            continue;
        }
        if (rc != FQ_EMPTY && rc != FQ_STALLED) {
            FQT_CHECKM(0, "consumer %u: take -> %s", id, fq_strerror(rc));
            break;
        }
        if (nheld) { /* never sleep on leases */
            FQT_ST(fq_ack(&h, 0, held, nheld), FQ_OK);
            nheld = 0;
        }
        if (rc == FQ_STALLED)
            atomic_fetch_add_explicit(&st_stalls, 1, memory_order_relaxed);
        else
            atomic_fetch_add_explicit(&st_empty_waits, 1, memory_order_relaxed);
        if (atomic_load(&st_producers_done)) {
            if (atomic_load(&st_consumed_total) >= atomic_load(&st_produced_total))
                break;
            int64_t now = fq_now_ns();
            if (!drain_deadline)
                drain_deadline = now + 10000000000LL;
            else if (now > drain_deadline) {
                FQT_CHECKM(0, "consumer %u: drain timed out: consumed %" PRIu64 " of %" PRIu64 " (last take %s)", id,
                           atomic_load(&st_consumed_total), atomic_load(&st_produced_total), fq_strerror(rc));
                break;
            }
        }
        if (errors > 20)
            break;
        fq_wait_data(&h, 0, fq_now_ns() + 2000000, 20000); /* spin 20 us, then park */
    }
    if (nheld)
        FQT_ST(fq_ack(&h, 0, held, nheld), FQ_OK);
    atomic_fetch_add(&st_bytes, bytes);
    st_release(&h);
    return NULL;
}

static _Atomic int st_maint_stop;
static void *st_maintainer(void *arg)
{
    (void)arg;
    fq_queue h;
    int rc = st_handle(&h);
    if (rc != FQ_OK) {
        FQT_CHECKM(0, "maintainer: handle -> %s", fq_strerror(rc));
        return NULL;
    }
    while (!atomic_load(&st_maint_stop)) {
        int rec = fq_maintain(&h, 1);
        FQT_CHECKM(rec == 0, "maintainer: fq_maintain recovered %d members of a healthy queue", rec);
        atomic_fetch_add_explicit(&st_maint_runs, 1, memory_order_relaxed);
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    st_release(&h);
    return NULL;
}

/* ------------------------------------------------------------------------ */
static void stress(void)
{
    fq_params p = fqt_params(STRESS_CAPACITY);
    p.max_members = 64;
    FQT_REQUIRE_ST(fq_create(&st_q, NULL, &p), FQ_OK);
    for (int i = 0; i < STRESS_PRODUCERS; i++) {
        st_seen[i] = calloc((size_t)1 << (ST_CAP_BITS - 6), sizeof(uint64_t));
        FQT_REQUIRE(st_seen[i] != NULL);
    }
    pthread_t prod[STRESS_PRODUCERS], cons[STRESS_CONSUMERS], maint;
    int64_t t0 = fq_now_ns();
    for (uintptr_t i = 0; i < STRESS_CONSUMERS; i++)
        FQT_REQUIRE(pthread_create(&cons[i], NULL, st_consumer, (void *)i) == 0);
    for (uintptr_t i = 0; i < STRESS_PRODUCERS; i++)
        FQT_REQUIRE(pthread_create(&prod[i], NULL, st_producer, (void *)i) == 0);
    if (STRESS_MAINTAIN)
        FQT_REQUIRE(pthread_create(&maint, NULL, st_maintainer, NULL) == 0);
    /* run; stop early if something already failed */
    while (fq_now_ns() - t0 < (int64_t)(st_seconds * 1e9) && atomic_load(&fqt_failures) == 0) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&st_stop, atomic_load(&fqt_failures) ? 2 : 1);
    for (int i = 0; i < STRESS_PRODUCERS; i++)
        pthread_join(prod[i], NULL);
    atomic_store(&st_producers_done, 1);
    for (int i = 0; i < STRESS_CONSUMERS; i++)
        pthread_join(cons[i], NULL);
    atomic_store(&st_maint_stop, 1);
    if (STRESS_MAINTAIN)
        pthread_join(maint, NULL);
    double secs = (double)(fq_now_ns() - t0) / 1e9;

    /* exactly once, nothing lost */
    uint64_t total = 0;
    for (int i = 0; i < STRESS_PRODUCERS; i++) {
        uint64_t n = st_produced[i], words = (uint64_t)1 << (ST_CAP_BITS - 6), seen = 0, missing_at = UINT64_MAX;
        for (uint64_t w = 0; w < words; w++) {
            uint64_t v = atomic_load_explicit(&st_seen[i][w], memory_order_relaxed);
            seen += (uint64_t)__builtin_popcountll(v);
            if (missing_at == UINT64_MAX && w * 64 < n) {
                uint64_t want = n - w * 64 >= 64 ? ~0ull : ((1ull << (n - w * 64)) - 1);
                if ((v & want) != want)
                    missing_at = w * 64 + (uint64_t)__builtin_ctzll(~v & want);
            }
        }
        FQT_CHECKM(seen == n, "producer %d: produced %" PRIu64 ", delivered %" PRIu64, i, n, seen);
        FQT_CHECKM(missing_at == UINT64_MAX, "producer %d: counter %" PRIu64 " never delivered", i, missing_at);
        total += n;
        free(st_seen[i]);
    }
    FQT_EQ(atomic_load(&st_produced_total), total);
    FQT_EQ(atomic_load(&st_consumed_total), total);
    FQT_EQ(fq_qsize(&st_q, 0), 0);
    FQT_EQ(fq_tail_seq(&st_q), total);
    FQT_EQ(atomic_load(&st_q.groups[0].g_low), total);
    FQT_EQ(fq__acked(&st_q, 0), total); /* group count + members' own counts */
    FQT_EQ(atomic_load(&st_q.groups[0].g_delivered), total);
    FQT_EQ(atomic_load(&st_q.groups[0].g_redelivered), 0);
    FQT_EQ(atomic_load(&st_q.groups[0].g_retry_pending), 0);
    FQT_EQ((atomic_load(&st_q.ctrl->c_aborted) >> 1), 0);
    FQT_EQ(atomic_load(&st_q.ctrl->c_recovered), 0);
    FQT_EQ((uint32_t)atomic_load(&st_q.ctrl->c_data_ec), 0); /* no waiter left counted */
    FQT_EQ((uint32_t)atomic_load(&st_q.ctrl->c_space_ec), 0);
    for (uint32_t i = 0; i < st_q.max_members; i++)
        FQT_CHECKM(atomic_load(&st_q.members[i].m_state) == FQ_M_FREE, "member %u still %u", i,
                   atomic_load(&st_q.members[i].m_state));
    FQT_CHECK(total > 0);
    printf("  %dP x %dC, capacity %u, %.2f s: %" PRIu64 " records (%.0f/s), %.1f MB, full waits %" PRIu64
           ", empty waits %" PRIu64 ", stalls %" PRIu64 ", maintain runs %" PRIu64 "\n",
           STRESS_PRODUCERS, STRESS_CONSUMERS, (unsigned)st_q.cap, secs, total, (double)total / secs,
           (double)atomic_load(&st_bytes) / 1e6, atomic_load(&st_full_waits), atomic_load(&st_empty_waits),
           atomic_load(&st_stalls), atomic_load(&st_maint_runs));
    fq_close(&st_q);
}

int main(int argc, char **argv)
{
    fqt_prog = STRESS_NAME;
    st_seconds = fqt_seconds(argc, argv);
    FQT_RUN(stress);
    return fqt_summary();
}

#endif /* STRESS_IMPL_H */
