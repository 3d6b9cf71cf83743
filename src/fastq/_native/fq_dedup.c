/*
 * fq_dedup.c — producer-side deduplication: append(data, dedup_key=k) within
 * a window appends k's record once and hands every duplicate the original
 * offset (SQS FIFO dedup, Kafka's idempotent producer).  Layout of the table
 * and its invariants X-a..X-d: fq_layout.h ("Dedup table"); the protocol
 * with its crash points: docs/messages.md §3 and docs/protocol.md.
 *
 *   X1  begin (bucket lock held, a few hundred ns): scan the key's bucket.
 *       An unexpired SET entry of the key -> FQ_DUPLICATE with its seq.  A
 *       CLAIMING entry of the key -> FQ_STALLED (an append is in flight; if
 *       its owner is dead, recovery is run first).  Otherwise claim a FREE or
 *       expired entry: identity fields, journal m_dedup_entry, then the state
 *       CLAIMING(me) with release; unlock.
 *   X2  bind: after fq_claim, e_seq = the claimed seq (release), before the
 *       payload is written: a recoverer that finds the owner dead learns
 *       which record to look at.
 *   X3  end: after fq_commit, e_expiry = now + e_window, e_set_ns, then
 *       CLAIMING(me) -> SET (release; takers of the entry read e_seq and
 *       e_expiry after an acquire load of the state).  Nothing claimed:
 *       CLAIMING(me) -> FREE.  Then the journal is cleared.
 *   R1b recovery of a dead member m (fq_live.c, under the recovery mutex,
 *       after R1 marked m RECOVERING and BEFORE R2/R3 abort anything): its
 *       journalled entry, if still CLAIMING(m), becomes SET when its record
 *       was committed and FREE otherwise; a bucket lock m held is released.
 *       "Committed" is read off the descriptor of e_seq: COMMITTED -> yes;
 *       WRITING, ABORTED or never published -> no (a dead claimant's record
 *       is aborted by R2/R3); recycled by a later lap -> the record is below
 *       the floor, so finished, and not aborted, since only the recovery of
 *       its dead producer aborts it, and that recovery runs R1b first -> yes.
 *   cold recovery of a store (nobody attached): locks cleared; CLAIMING
 *       entries resolved against the recovered segments (a data frame at
 *       e_seq -> SET, else FREE); SET entries at or past the recovered tail
 *       (a torn tail that was cut) -> FREE.
 *
 * Memory orders: b_lock is taken with an acquire CAS and released with a
 * release store, so a holder sees every identity write of earlier holders
 * (X-a).  e_state is stored with release after the fields it publishes and
 * loaded with acquire before they are read.  Journals are stored with
 * release before the state they describe; recovery loads them with acquire
 * after the owner is known dead.
 *
 * Identity: a key is its 128-bit keyed SipHash-2-4 pair (h1, h2); two keys
 * collide with probability about 2^-128 per comparison, so the key bytes
 * themselves are not stored.  The SipHash key is random per queue
 * (getrandom at create) and lives only in the 0600 queue file, so hostile
 * keys cannot be aimed at one bucket.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <string.h>

#include "fq_pvt.h"

static inline uint64_t fq__rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

static inline uint64_t fq__le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

#define FQ_SIPROUND                                                                                                   \
    do {                                                                                                              \
        v0 += v1; v1 = fq__rotl(v1, 13); v1 ^= v0; v0 = fq__rotl(v0, 32);                                            \
        v2 += v3; v3 = fq__rotl(v3, 16); v3 ^= v2;                                                                    \
        v0 += v3; v3 = fq__rotl(v3, 21); v3 ^= v0;                                                                    \
        v2 += v1; v1 = fq__rotl(v1, 17); v1 ^= v2; v2 = fq__rotl(v2, 32);                                            \
    } while (0)

/* SipHash-2-4 (Aumasson & Bernstein), 64-bit output. */
uint64_t fq_siphash24(const uint64_t k[2], const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t v0 = k[0] ^ 0x736f6d6570736575ull, v1 = k[1] ^ 0x646f72616e646f6dull;
    uint64_t v2 = k[0] ^ 0x6c7967656e657261ull, v3 = k[1] ^ 0x7465646279746573ull;
    size_t full = len & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = fq__le64(p + i);
        v3 ^= m;
        FQ_SIPROUND;
        FQ_SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)p[full + i] << (8 * i);
    v3 ^= b;
    FQ_SIPROUND;
    FQ_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    FQ_SIPROUND;
    FQ_SIPROUND;
    FQ_SIPROUND;
    FQ_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static inline uint32_t fq__xw(unsigned st, uint32_t owner) { return (st & 3u) | (owner << 8); }
static inline unsigned fq__xw_st(uint32_t w) { return w & 3u; }
static inline uint32_t fq__xw_owner(uint32_t w) { return w >> 8; }

static inline uint32_t fq__dedup_slots(const fq_queue *q) { return q->dedup_buckets * FQ_DEDUP_WAYS; }
static inline struct fq_dedup_entry_shm *fq__dedup_entry(fq_queue *q, uint32_t slot)
{
    return &q->dedup[slot / FQ_DEDUP_WAYS].b_e[slot % FQ_DEDUP_WAYS];
}

/* Take bucket b's lock.  1: held.  0: busy after a bounded spin; *dead = 1
 * if its holder is dead (the caller runs recovery, which releases it). */
static int fq__dedup_lock(fq_queue *q, uint32_t b, int *dead)
{
    struct fq_dedup_bucket_shm *B = &q->dedup[b];
    struct fq_member_shm *m = &q->members[q->member];
    uint32_t me = (uint32_t)q->member + 1;
    /* X-c: named before it may be held (seq_cst with the seq_cst CAS below:
     * the journal is never ordered after the acquisition) */
    atomic_store_explicit(&m->m_dedup_lock, b + 1, FQ_SEQCST);
    for (uint32_t i = 0; i < 20000; i++) {
        uint32_t cur = 0;
        /* acquire: pairs with the previous holder's release in fq__dedup_unlock */
        if (atomic_compare_exchange_weak_explicit(&B->b_lock, &cur, me, FQ_SEQCST, FQ_RELAXED))
            return 1;
        /* Never wait on a holder that cannot exist: an id out of range (a
         * damaged file), or a member slot that is FREE (recovery releases a
         * dead holder's lock before its slot is FREE, and a new process in
         * that slot cannot hold the lock: it would have to CAS it from 0). */
        if (cur && (cur - 1 >= q->max_members ||
                    atomic_load_explicit(&q->members[cur - 1].m_state, FQ_ACQUIRE) == FQ_M_FREE) &&
            atomic_compare_exchange_strong_explicit(&B->b_lock, &cur, me, FQ_SEQCST, FQ_RELAXED))
            return 1;
        if (cur && (i & 1023) == 1023 && (cur - 1 >= q->max_members || !fq_member_alive(q, cur - 1))) {
            *dead = 1;
            break;
        }
        if (i < 256)
            fq__cpu_relax();
        else
            sched_yield();
    }
    atomic_store_explicit(&m->m_dedup_lock, 0, FQ_RELEASE);
    return 0;
}

static void fq__dedup_unlock(fq_queue *q, uint32_t b)
{
    atomic_store_explicit(&q->dedup[b].b_lock, 0, FQ_RELEASE); /* publishes our identity writes (X-a) */
    atomic_store_explicit(&q->members[q->member].m_dedup_lock, 0, FQ_RELEASE);
}

static void fq__dedup_finish(fq_queue *q, struct fq_dedup_entry_shm *e, uint32_t expect, int committed);
static int fq__dedup_committed(fq_queue *q, uint64_t s);

int fq_dedup_begin(fq_queue *q, const void *key, uint32_t klen, int64_t window_ns, uint64_t *orig_seq,
                   uint32_t *slot)
{
    if (!q->dedup_buckets) {
        fq__set_err("this log has no dedup table (it was created with dedup_slots=0)");
        return FQ_ERR_INVAL;
    }
    if (q->member < 0 || (!key && klen))
        return FQ_ERR_INVAL;
    uint64_t h1 = fq_siphash24(&q->dedup_key[0], key, klen), h2 = fq_siphash24(&q->dedup_key[2], key, klen);
    uint32_t b = (uint32_t)(h1 & (q->dedup_buckets - 1));
    struct fq_dedup_bucket_shm *B = &q->dedup[b];
    uint32_t me = (uint32_t)q->member;
    if (window_ns <= 0)
        window_ns = (int64_t)q->dedup_window_ms * 1000000;
    int dead = 0;
    if (!fq__dedup_lock(q, b, &dead)) {
        if (dead)
            fq_maintain(q, 1);
        return FQ_STALLED;
    }
    int64_t now = fq_realtime_ns();
    int cand = -1, rc = FQ_OK;
    uint32_t rescans = 0;
    for (uint32_t i = 0; i < FQ_DEDUP_WAYS; i++) {
        struct fq_dedup_entry_shm *e = &B->b_e[i];
        uint32_t w = atomic_load_explicit(&e->e_state, FQ_ACQUIRE); /* then e_seq/e_expiry of a SET (X3) */
        unsigned st = fq__xw_st(w);
        int live = st == FQ_X_CLAIMING ||
                   (st == FQ_X_SET && atomic_load_explicit(&e->e_expiry, FQ_RELAXED) > now);
        if (!live) {
            if (cand < 0)
                cand = (int)i; /* FREE, expired, or a state no fastq writes: reusable */
            continue;
        }
        if (atomic_load_explicit(&e->e_h1, FQ_RELAXED) != h1 || atomic_load_explicit(&e->e_h2, FQ_RELAXED) != h2)
            continue;
        if (st == FQ_X_SET) {
            *orig_seq = atomic_load_explicit(&e->e_seq, FQ_RELAXED);
            atomic_fetch_add_explicit(&B->b_hits, 1, FQ_RELAXED);
            rc = FQ_DUPLICATE;
            break;
        }
        uint32_t owner = fq__xw_owner(w);
        if (owner >= q->max_members || atomic_load_explicit(&q->members[owner].m_state, FQ_ACQUIRE) == FQ_M_FREE) {
            /* An owner that cannot exist (a damaged file) or whose slot is
             * FREE: by X-b/X-c its entry would have been resolved before
             * the slot became FREE, so this one is stale; nobody else can
             * claim it while we hold the bucket lock.  Resolve it as R1b
             * would and look at the bucket again. */
            uint64_t s = atomic_load_explicit(&e->e_seq, FQ_ACQUIRE);
            fq__dedup_finish(q, e, w, s != FQ_DEDUP_NOSEQ && fq__dedup_committed(q, s));
            if (++rescans <= FQ_DEDUP_WAYS) {
                i = (uint32_t)-1; /* look at the whole bucket again */
                cand = -1;
            }
            continue;
        }
        if (!fq_member_alive(q, owner))
            dead = 1;
        rc = FQ_STALLED; /* in flight: its owner ends it (X3) or its recovery does (R1b) */
        break;
    }
    if (rc == FQ_OK && cand < 0) {
        fq__set_err("dedup table full: the %u entries of this key's bucket hold unexpired keys (create the log "
                    "with more dedup_slots or a shorter dedup_window)", FQ_DEDUP_WAYS);
        rc = FQ_ERR_DEDUP_FULL;
    }
    if (rc == FQ_OK) {
        struct fq_dedup_entry_shm *e = &B->b_e[cand];
        atomic_store_explicit(&e->e_h1, h1, FQ_RELAXED);
        atomic_store_explicit(&e->e_h2, h2, FQ_RELAXED);
        atomic_store_explicit(&e->e_klen, klen, FQ_RELAXED);
        atomic_store_explicit(&e->e_seq, FQ_DEDUP_NOSEQ, FQ_RELAXED);
        atomic_store_explicit(&e->e_expiry, 0, FQ_RELAXED);
        atomic_store_explicit(&e->e_window, window_ns, FQ_RELAXED); /* applied at SET (X3/R1b), kept */
        atomic_store_explicit(&e->e_set_ns, 0, FQ_RELAXED);
        *slot = b * FQ_DEDUP_WAYS + (uint32_t)cand;
        atomic_store_explicit(&q->members[me].m_dedup_entry, *slot + 1, FQ_RELEASE); /* X-c before the state */
        atomic_store_explicit(&e->e_state, fq__xw(FQ_X_CLAIMING, me), FQ_RELEASE);
        FQ_CRASHPOINT("dedup.after_claim"); /* dies holding the bucket lock and a CLAIMING entry */
    }
    fq__dedup_unlock(q, b);
    if (rc == FQ_STALLED && dead)
        fq_maintain(q, 1); /* R1b resolves the dead owner's entry; the caller retries */
    return rc;
}

void fq_dedup_bind(fq_queue *q, uint32_t slot, uint64_t seq)
{
    if (slot >= fq__dedup_slots(q))
        return;
    /* release: ordered before the payload and the commit (X2) */
    atomic_store_explicit(&fq__dedup_entry(q, slot)->e_seq, seq, FQ_RELEASE);
}

/* CLAIMING (the state word `expect`) -> SET (committed) or FREE, by its
 * owner, its recoverer, or a producer that found it stale. */
static void fq__dedup_finish(fq_queue *q, struct fq_dedup_entry_shm *e, uint32_t expect, int committed)
{
    uint32_t w = expect;
    if (committed) {
        /* Idempotent: a finisher killed between these stores and the CAS is
         * redone from the same e_window (found by review: the window used to
         * be kept in e_expiry, which the first try had overwritten). */
        int64_t now = fq_realtime_ns();
        int64_t win = atomic_load_explicit(&e->e_window, FQ_RELAXED);
        if (win <= 0)
            win = 1;
        atomic_store_explicit(&e->e_expiry, win > INT64_MAX - now ? INT64_MAX : now + win, FQ_RELAXED);
        atomic_store_explicit(&e->e_set_ns, now, FQ_RELAXED);
        FQ_CRASHPOINT("dedup.mid_finish"); /* expiry written, still CLAIMING: the next finisher redoes it */
        atomic_compare_exchange_strong_explicit(&e->e_state, &w, fq__xw(FQ_X_SET, 0), FQ_RELEASE, FQ_RELAXED);
    } else {
        atomic_compare_exchange_strong_explicit(&e->e_state, &w, fq__xw(FQ_X_FREE, 0), FQ_RELEASE, FQ_RELAXED);
    }
}

void fq_dedup_end(fq_queue *q, uint32_t slot, int committed)
{
    if (slot >= fq__dedup_slots(q) || q->member < 0)
        return;
    if (committed)
        FQ_CRASHPOINT("dedup.after_commit"); /* committed, entry still CLAIMING: R1b must make it SET */
    fq__dedup_finish(q, fq__dedup_entry(q, slot), fq__xw(FQ_X_CLAIMING, (uint32_t)q->member), committed);
    atomic_store_explicit(&q->members[q->member].m_dedup_entry, 0, FQ_RELEASE);
}

/* Was record s committed?  Only asked about the record of a dead member's
 * CLAIMING entry, before R2/R3 of this recovery run (see R1b above). */
static int fq__dedup_committed(fq_queue *q, uint64_t s)
{
    uint64_t cw = atomic_load_explicit(&fq__desc(q, s)->d_cw, FQ_ACQUIRE);
    if (fq__cw_published(cw, s))
        return fq__cw_st(cw) == FQ_D_COMMITTED;
    return (int64_t)(fq__cw_seq(cw) - (s & FQ_SEQ_MASK)) > 0; /* recycled by a later lap: committed */
}

void fq__dedup_recover_member(fq_queue *q, uint32_t id)
{
    if (!q->dedup_buckets || id >= q->max_members)
        return;
    struct fq_member_shm *m = &q->members[id];
    uint32_t ej = atomic_load_explicit(&m->m_dedup_entry, FQ_ACQUIRE);
    if (ej && ej - 1 < fq__dedup_slots(q)) {
        struct fq_dedup_entry_shm *e = fq__dedup_entry(q, ej - 1);
        if (atomic_load_explicit(&e->e_state, FQ_ACQUIRE) == fq__xw(FQ_X_CLAIMING, id)) {
            uint64_t s = atomic_load_explicit(&e->e_seq, FQ_ACQUIRE);
            fq__dedup_finish(q, e, fq__xw(FQ_X_CLAIMING, id), s != FQ_DEDUP_NOSEQ && fq__dedup_committed(q, s));
        }
    }
    atomic_store_explicit(&m->m_dedup_entry, 0, FQ_RELEASE);
    uint32_t bj = atomic_load_explicit(&m->m_dedup_lock, FQ_ACQUIRE);
    if (bj && bj - 1 < q->dedup_buckets) {
        uint32_t own = id + 1; /* only if it still holds it: nobody else uses id + 1 before m is FREE */
        atomic_compare_exchange_strong_explicit(&q->dedup[bj - 1].b_lock, &own, 0, FQ_RELEASE, FQ_RELAXED);
    }
    atomic_store_explicit(&m->m_dedup_lock, 0, FQ_RELEASE);
}

void fq__dedup_cold(fq_queue *q, uint64_t tail_seq)
{
    for (uint32_t b = 0; b < q->dedup_buckets; b++) {
        struct fq_dedup_bucket_shm *B = &q->dedup[b];
        atomic_store_explicit(&B->b_lock, 0, FQ_RELAXED);
        for (uint32_t i = 0; i < FQ_DEDUP_WAYS; i++) {
            struct fq_dedup_entry_shm *e = &B->b_e[i];
            uint32_t w = atomic_load_explicit(&e->e_state, FQ_RELAXED);
            uint64_t s = atomic_load_explicit(&e->e_seq, FQ_RELAXED);
            int below = s != FQ_DEDUP_NOSEQ && (int64_t)(s - tail_seq) < 0;
            if (fq__xw_st(w) == FQ_X_CLAIMING) {
                uint64_t pos;
                fq__dedup_finish(q, e, w, below && q->durable && fq__store_find(q, s, &pos) == 1);
            } else if (fq__xw_st(w) == FQ_X_SET && !below) {
                atomic_store_explicit(&e->e_state, fq__xw(FQ_X_FREE, 0), FQ_RELAXED); /* its record was cut */
            } else if (fq__xw_st(w) != FQ_X_SET) {
                atomic_store_explicit(&e->e_state, fq__xw(FQ_X_FREE, 0), FQ_RELAXED);
            }
        }
    }
}

void fq_dedup_get_stats(fq_queue *q, fq_dedup_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!q->dedup_buckets)
        return;
    st->slots = fq__dedup_slots(q);
    st->window_ms = q->dedup_window_ms;
    int64_t now = fq_realtime_ns();
    for (uint32_t b = 0; b < q->dedup_buckets; b++) {
        struct fq_dedup_bucket_shm *B = &q->dedup[b];
        st->hits += atomic_load_explicit(&B->b_hits, FQ_RELAXED);
        for (uint32_t i = 0; i < FQ_DEDUP_WAYS; i++) {
            struct fq_dedup_entry_shm *e = &B->b_e[i];
            uint32_t w = atomic_load_explicit(&e->e_state, FQ_ACQUIRE);
            if (fq__xw_st(w) == FQ_X_CLAIMING)
                st->claiming++;
            else if (fq__xw_st(w) == FQ_X_SET && atomic_load_explicit(&e->e_expiry, FQ_RELAXED) > now)
                st->set++;
            else if (fq__xw_st(w) == FQ_X_SET)
                st->expired++;
        }
    }
}
