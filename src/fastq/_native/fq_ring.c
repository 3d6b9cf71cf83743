/*
 * fq_ring.c — claim / publish / commit (producers), take / ack / low-watermark
 * (consumers of a group), and the reclaim floor.
 *
 * Synchronizing edges (labels are listed in docs/protocol.md):
 *   P0  producer: store m_intent (release) before the claim CAS.
 *   P1  producer: CAS c_tail (acq_rel); claims seq range + byte extent at once.
 *   P2  producer: store d_cw = WRITING (release) after the extent fields.
 *   P3  producer: clear m_intent (release) after every P2 of the claim.
 *   P4  producer: store d_cw = COMMITTED (release; seq_cst for the last record)
 *       after the frame; then E2 (notify data waiters if counted).
 *   C0  taker: load g_low (acquire), pairs with C5.
 *   C1  taker: load d_cw (acquire), pairs with P2/P4 and recovery R3.
 *   C2  taker: CAS lease entry FRESH/RETRY -> LEASED (acq_rel).
 *   C3  acker: CAS lease entry LEASED -> ACKED (seq_cst, includes release): the
 *       frame reads of the consumer happen before anyone who observes ACKED.
 *   C4  low advance: load g_low and lease entries (seq_cst), pairs with C3;
 *       seq_cst so concurrent ackers of neighbouring records cannot both
 *       miss each other's ACKED (store-buffer pattern, see fq__advance_low).
 *   C5  low advance: CAS-max g_low (seq_cst), then E2 on c_space_ec.
 *   F1  floor refresh: load g_low (seq_cst; pairs with C5 and with the space
 *       waiter's E1), F2: CAS-max c_floor_* (release), pairs with A1.
 *   A1  producer: load c_tail then c_floor_* (acquire).
 */
#include <errno.h>
#include <string.h>

#include "fq_pvt.h"

uint32_t fq_max_payload(const fq_queue *q) { return q->max_frame - FQ_FRAME_HDR; }

/* Records one claim may hold (also bounded by bytes: for a batch of more
 * than one record, sum of fq_frame_bytes + max frame <= capacity). */
uint64_t fq_batch_limit(const fq_queue *q) { return q->limit_records; }

uint64_t fq_frame_bytes(uint32_t len) { return fq__align8((uint64_t)FQ_FRAME_HDR + len); }
#define fq__frame_bytes fq_frame_bytes

/* Extent end of n frames placed from byte position p (padding at the wrap,
 * as Agrona: a frame never crosses the end of the arena). */
static uint64_t fq__place(const fq_queue *q, uint64_t p, const uint32_t *lens, uint32_t n)
{
    uint64_t e = p;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t fb = fq__frame_bytes(lens[i]);
        uint64_t off = e & q->cap_mask;
        if (off + fb > q->cap)
            e += q->cap - off;
        e += fb;
    }
    return e;
}

/* Load the claim word and the floor (A1: tail FIRST, then the floor, so the
 * serial reconstruction is exact; see fq_layout.h).  Returns 0 when the tail
 * was stale against a newer floor (caller retries). */
static inline int fq__load_tail(fq_queue *q, uint64_t *t, uint64_t *s, uint64_t *p, uint64_t *fs, uint64_t *fp)
{
    *t = atomic_load_explicit(&q->ctrl->c_tail, FQ_ACQUIRE);
    *fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
    *fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    *s = fq__tail_seq(*t, *fs);
    *p = fq__tail_pos(*t, *fp);
    return (int64_t)(*s - *fs) >= 0 && (int64_t)(*p - *fp) >= 0;
}

/* A tail behind the floor is normal for a moment (the floor moved after our
 * tail load); for ~1 ms of retries it is a corrupt control page: give up
 * (returns 0) instead of spinning forever with the GIL held. */
static int fq__load_tail_bounded(fq_queue *q, uint64_t *t, uint64_t *s, uint64_t *p, uint64_t *fs, uint64_t *fp)
{
    for (uint32_t i = 0; i < 20000; i++) {
        if (fq__load_tail(q, t, s, p, fs, fp))
            return 1;
        fq__cpu_relax();
    }
    return 0;
}

uint64_t fq_tail_seq(fq_queue *q)
{
    uint64_t t, s, p, fs, fp;
    if (!fq__load_tail_bounded(q, &t, &s, &p, &fs, &fp))
        return fs; /* corrupt: callers see an empty range */
    return s;
}

/* Consistency of the dynamic state at open: tail, floor and every active
 * group's low within the bounds the protocol keeps. */
int fq__check_dynamic(fq_queue *q)
{
    uint64_t t, s, p, fs, fp;
    if (!fq__load_tail_bounded(q, &t, &s, &p, &fs, &fp))
        return 0;
    if (s - fs > q->n_desc || p - fp > q->span || (fp & 7u) || (int64_t)(fs - q->base_seq) < 0)
        return 0;
    if (q->durable && !fq__store_dynamic_ok(q))
        return 0;
    for (uint32_t g = 0; g < q->max_groups; g++) {
        struct fq_group_shm *G = fq__group(q, g);
        uint32_t st = atomic_load_explicit(&G->g_state, FQ_ACQUIRE);
        if (st == FQ_G_FREE)
            continue;
        if (st != FQ_G_ACTIVE && st != FQ_G_DELETING)
            return 0;
        uint64_t low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE);
        /* (a store's group may lag the frontier by any amount) */
        if ((!q->durable && (int64_t)(low - fs) < 0) || (int64_t)(s - low) < 0)
            return 0;
    }
    return 1;
}

/* ext_end(seq): byte position just after record seq's extent.  Validated
 * seqlock-style: the descriptor must show seq before and after the field
 * reads, else it was recycled (*ok = 0).  The writer side is P2a in
 * fq_claim (invalidate d_cw, release fence, then the fields): without it a
 * reader could combine the old d_cw with the next lap's fields and push the
 * floor past records still in use. */
uint64_t fq__pos_after(fq_queue *q, uint64_t seq, int *ok)
{
    struct fq_desc_shm *d = fq__desc(q, seq);
    uint64_t cw = atomic_load_explicit(&d->d_cw, FQ_ACQUIRE);
    *ok = 0;
    if (fq__cw_seq(cw) != (seq & FQ_SEQ_MASK) || fq__cw_st(cw) == FQ_D_EMPTY)
        return 0;
    uint64_t es = atomic_load_explicit(&d->d_ext_start, FQ_RELAXED);
    uint32_t el = atomic_load_explicit(&d->d_ext_len, FQ_RELAXED);
    atomic_thread_fence(FQ_ACQUIRE);
    if (atomic_load_explicit(&d->d_cw, FQ_RELAXED) != cw)
        return 0;
    if (el > q->cap)
        return 0; /* hostile or corrupt: never trusted */
    *ok = 1;
    return es + el;
}

void fq__cas_min(_Atomic uint64_t *a, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(a, FQ_SEQCST);
    while ((int64_t)(v - cur) < 0 && !atomic_compare_exchange_weak_explicit(a, &cur, v, FQ_SEQCST, FQ_SEQCST))
        ;
}

/* D1: publish that something becomes due at `when`.  A due-scan that ran
 * concurrently may raise the hint past `when` after our first CAS-min; it
 * only raises if g_dl_seq did not change, and we bump g_dl_seq and CAS-min
 * again, so one of the two always leaves the hint <= when. */
void fq__deadline_insert(struct fq_group_shm *G, uint64_t when)
{
    fq__cas_min(&G->g_next_deadline, when);
    atomic_fetch_add_explicit(&G->g_dl_seq, 1, FQ_SEQCST);
    fq__cas_min(&G->g_next_deadline, when);
}

void fq__cas_max(_Atomic uint64_t *a, uint64_t v, memory_order mo)
{
    uint64_t cur = atomic_load_explicit(a, FQ_RELAXED);
    while ((int64_t)(v - cur) > 0 && !atomic_compare_exchange_weak_explicit(a, &cur, v, mo, FQ_RELAXED))
        ;
}

/* Lowest g_low over ACTIVE gating groups (seq_cst: F1); *any = 0 if none. */
static uint64_t fq__min_low(fq_queue *q, uint64_t L, int *any)
{
    *any = 0;
    for (uint32_t g = 0; g < q->max_groups; g++) {
        struct fq_group_shm *G = fq__group(q, g);
        if (atomic_load_explicit(&G->g_state, FQ_SEQCST) != FQ_G_ACTIVE)
            continue; /* every active group gates the ring */
        *any = 1;
        uint64_t low = atomic_load_explicit(&G->g_low, FQ_SEQCST); /* F1 */
        if ((int64_t)(low - L) < 0)
            L = low;
    }
    return L;
}

/* Recompute the floor and its byte position.  With gating groups the floor
 * is the lowest g_low.  With none (a log nobody subscribes to yet) it moves
 * only as far as this claim needs (need_seq, need_pos): the oldest records
 * are overwritten first, so a group created later with start="earliest"
 * still finds what the ring holds.  Never past a record still being written.
 *
 * Two phases (F0): the candidate is first published in c_floor_proposal
 * (CAS-max, seq_cst), then the group table is read again; a group created
 * meanwhile either shows up in that second read (then we retry and respect
 * it) or its creator sees the proposal (fq_group_open clamps its start to
 * it).  Only then is the floor itself moved (F2: seq first, then position;
 * each is an independent lower bound).
 * Returns 1 if the floor moved (or may have: caller retries), 0 if not. */
int fq__refresh_floor(fq_queue *q, uint64_t need_seq, uint64_t need_pos)
{
    uint64_t t, ts, tp, fs, fp, P;
    if (!fq__load_tail_bounded(q, &t, &ts, &tp, &fs, &fp))
        return 0;
    int any;
    uint64_t L = fq__min_low(q, ts, &any);
    if (!any) {
        L = fs;
        P = fp;
        while (((int64_t)(need_seq - L) > 0 || (int64_t)(need_pos - P) > 0) && (int64_t)(ts - L) > 0) {
            struct fq_desc_shm *d = fq__desc(q, L);
            uint64_t cw = atomic_load_explicit(&d->d_cw, FQ_ACQUIRE);
            if (!fq__cw_published(cw, L) || fq__cw_st(cw) == FQ_D_WRITING)
                break; /* never reclaim a record a producer is still writing */
            /* Other refreshers may move the floor and producers recycle
             * desc[L] while we read it: validate like fq__pos_after. */
            uint64_t P2 = atomic_load_explicit(&d->d_ext_start, FQ_RELAXED) +
                          atomic_load_explicit(&d->d_ext_len, FQ_RELAXED);
            atomic_thread_fence(FQ_ACQUIRE);
            if (atomic_load_explicit(&d->d_cw, FQ_RELAXED) != cw)
                return 1; /* recycled: the floor moved, start over */
            P = P2;
            L++;
        }
        if (L == ts)
            P = tp;
    } else {
        if ((int64_t)(L - fs) <= 0)
            return 0;
        if (L == ts) {
            P = tp;
        } else {
            int ok;
            P = fq__pos_after(q, L - 1, &ok);
            if (!ok)
                return atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE) != fs;
        }
    }
    if ((int64_t)(L - fs) <= 0 || (int64_t)(P - fp) < 0)
        return 0;
    fq__cas_max(&q->ctrl->c_floor_proposal, L, FQ_SEQCST); /* F0 */
    int any2;
    if ((int64_t)(fq__min_low(q, L, &any2) - L) < 0)
        return 1; /* a group appeared below L: start over and respect it */
    fq__cas_max(&q->ctrl->c_floor_seq, L, FQ_SEQCST); /* F2 */
    fq__cas_max(&q->ctrl->c_floor_pos, P, FQ_SEQCST);
    return 1;
}

/* Would a claim of these records fit now?  (Used by space waiters.) */
int fq__space_ok(fq_queue *q, uint64_t n_records, uint64_t n_bytes)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        uint64_t t, s, p, fs, fp;
        if (!fq__load_tail(q, &t, &s, &p, &fs, &fp))
            continue;
        /* n_bytes = the frames' bytes (fq_frame_bytes); add the padding of a
         * wrap, exact for one record and an upper bound for a batch. */
        uint64_t off = p & q->cap_mask, e = p + n_bytes;
        if (off + n_bytes > q->cap)
            e += q->cap - off;
        if (s + n_records - fs <= q->limit_records && e - fp <= q->span)
            return 1;
        if (!(q->durable ? fq__refresh_frontier(q)
                         : fq__refresh_floor(q, s + n_records - q->limit_records, e - q->cap)))
            return 0;
    }
    return 0;
}

int fq_claim(fq_queue *q, const uint32_t *lens, uint32_t n, uint64_t *first_seq)
{
    if (n == 0 || q->member < 0)
        return FQ_ERR_INVAL;
    if (n > q->limit_records)
        return FQ_ERR_TOO_BIG;
    uint32_t maxp = fq_max_payload(q);
    uint64_t frames = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (lens[i] > maxp)
            return FQ_ERR_TOO_BIG;
        frames += fq__frame_bytes(lens[i]);
    }
    /* A batch's frames plus the padding of one wrap (< max_frame) must fit
     * the arena wherever the ring stands: whether a batch is too big never
     * depends on the ring position. */
    if (n > 1 && frames + q->max_frame > q->cap)
        return FQ_ERR_TOO_BIG;
    struct fq_member_shm *me = &q->members[q->member];
    uint64_t t, s, p, fs, fp, e;
    for (;;) {
        if (!fq__load_tail_bounded(q, &t, &s, &p, &fs, &fp))
            return FQ_ERR_CORRUPT;
        e = fq__place(q, p, lens, n);
        /* Space rules: N-1 slack keeps desc[floor-1] alive (its extent end
         * is the floor's byte position); bytes [p, e) may overwrite only
         * what lies below the floor position. */
        if (s + n - fs > q->limit_records || e - fp > q->span) {
            if (q->durable ? fq__refresh_frontier(q) : fq__refresh_floor(q, s + n - q->limit_records, e - q->cap))
                continue;
            return FQ_FULL;
        }
        if (q->durable) { /* S1: the files this claim needs exist and are mapped */
            int rc = fq__store_prepare(q, p, e);
            if (rc)
                return rc;
        }
        atomic_store_explicit(&me->m_intent, fq__intent(s, n), FQ_RELEASE); /* P0 */
        FQ_CRASHPOINT("prod.after_intent");
        if (atomic_compare_exchange_weak_explicit(&q->ctrl->c_tail, &t, fq__tail_pack(s + n, e), FQ_ACQREL,
                                                  FQ_RELAXED)) /* P1 */
            break;
    }
    FQ_CRASHPOINT("prod.after_cas");
    int64_t now = fq_realtime_ns();
    uint64_t pos = p;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t seq = s + i;
        uint64_t fb = fq__frame_bytes(lens[i]);
        uint64_t off = pos & q->cap_mask;
        uint32_t fo = (off + fb > q->cap) ? (uint32_t)(q->cap - off) : 0u;
        struct fq_desc_shm *d = fq__desc(q, seq);
        /* P2a (seqlock writer): mark the slot as seq-not-yet-published BEFORE
         * overwriting the previous lap's fields; the release fence pairs with
         * the acquire fence of fq__pos_after, so a reader that saw any new
         * field value sees d_cw changed and discards what it read. */
        atomic_store_explicit(&d->d_cw, fq__cw(seq, FQ_D_EMPTY), FQ_RELAXED);
        atomic_thread_fence(FQ_RELEASE);
        atomic_store_explicit(&d->d_ext_start, pos, FQ_RELAXED);
        atomic_store_explicit(&d->d_ext_len, (uint32_t)(fo + fb), FQ_RELAXED);
        atomic_store_explicit(&d->d_frame_off, fo, FQ_RELAXED);
        atomic_store_explicit(&d->d_frame_len, FQ_FRAME_HDR + lens[i], FQ_RELAXED);
        atomic_store_explicit(&d->d_producer, (uint16_t)q->member, FQ_RELAXED);
        atomic_store_explicit(&d->d_flags, 0, FQ_RELAXED);
        atomic_store_explicit(&d->d_cw, fq__cw(seq, FQ_D_WRITING), FQ_RELEASE); /* P2 */
        if (q->durable) {
            fq__store_index(q, seq, pos, pos + fo + fb, now); /* S2: per record, so every 4 KiB has an anchor */
            if (fo)
                fq__store_pad(q, seq, pos, fo); /* S2: the segment's tail says "next segment" */
        }
        struct fq_frame_hdr *h = (struct fq_frame_hdr *)fq__at(q, pos + fo);
        h->f_len = FQ_FRAME_HDR + lens[i];
        h->f_crc = 0;
        h->f_seq = seq;
        __atomic_store_n(&h->f_ts_ns, now, __ATOMIC_RELAXED); /* stats read it racily (oldest age) */
        __atomic_store_n(&h->f_flags, (uint16_t)FQ_FR_DATA, __ATOMIC_RELAXED);
        h->f_version = FQ_FRAME_VERSION;
        h->f_type = 0;
        pos += fo + fb;
    }
    FQ_CRASHPOINT("prod.after_desc");
    atomic_store_explicit(&me->m_intent, 0, FQ_RELEASE); /* P3 */
    *first_seq = s;
    return FQ_OK;
}

/* Frame of a record this handle claimed and has not committed (fields are ours). */
static inline struct fq_frame_hdr *fq__own_frame(fq_queue *q, uint64_t seq)
{
    struct fq_desc_shm *d = fq__desc(q, seq);
    uint64_t pos = atomic_load_explicit(&d->d_ext_start, FQ_RELAXED) +
                   atomic_load_explicit(&d->d_frame_off, FQ_RELAXED);
    return (struct fq_frame_hdr *)fq__at(q, pos);
}

uint8_t *fq_payload(fq_queue *q, uint64_t seq) { return (uint8_t *)fq__own_frame(q, seq) + FQ_FRAME_HDR; }

void fq_commit(fq_queue *q, uint64_t first_seq, uint32_t n)
{
    FQ_CRASHPOINT("prod.before_commit");
    /* P4a: the frame's own commit mark, written last in the frame (release);
     * in the segment store after its CRC32C (S3). */
    if (q->durable) {
        for (uint32_t i = 0; i < n; i++)
            fq__store_seal(fq__own_frame(q, first_seq + i), (uint16_t)(FQ_FR_DATA | FQ_FR_COMMITTED));
    } else {
        for (uint32_t i = 0; i < n; i++)
            __atomic_store_n(&fq__own_frame(q, first_seq + i)->f_flags, (uint16_t)(FQ_FR_DATA | FQ_FR_COMMITTED),
                             __ATOMIC_RELEASE);
    }
    for (uint32_t i = 0; i + 1 < n; i++)
        atomic_store_explicit(&fq__desc(q, first_seq + i)->d_cw, fq__cw(first_seq + i, FQ_D_COMMITTED),
                              FQ_RELEASE); /* P4 */
    /* P4 (seq_cst) + E2: pairs with a data waiter's E1 (fetch_add, then re-check). */
    atomic_store_explicit(&fq__desc(q, first_seq + n - 1)->d_cw, fq__cw(first_seq + n - 1, FQ_D_COMMITTED),
                          FQ_SEQCST);
    FQ_CRASHPOINT("prod.after_commit");
    fq__ec_notify_if_waiters(&q->ctrl->c_data_ec);
    atomic_fetch_add_explicit(&q->members[q->member].m_puts, n, FQ_RELAXED);
}

/* ------------------------------------------------------------------------ */

/* Segment store: the frame of a record we hold a lease on — from its
 * descriptor while that still shows it (validated like fq__pos_after: the
 * store's descriptors are recycled without waiting for groups), else found
 * in the segment — checked with its CRC. */
static int fq__fill_store(fq_queue *q, uint64_t seq, unsigned deliveries, fq_msg *m)
{
    struct fq_desc_shm *d = fq__desc(q, seq);
    uint64_t cw = atomic_load_explicit(&d->d_cw, FQ_ACQUIRE), pos = 0;
    int have = 0;
    if (q->rf_pos && q->rf_seq == seq) {
        /* fq_take just found it in the segment and checked it (CRC included):
         * a committed frame below the frontier never changes. */
        const uint8_t *fr = fq__at(q, q->rf_pos);
        q->rf_pos = 0;
        if (!fr)
            return 0;
        fq__msg_from_frame(m, &q->rf_hdr, fr, deliveries); /* the header as checked, never re-read */
        return 1;
    }
    if (fq__cw_published(cw, seq) && fq__cw_st(cw) == FQ_D_COMMITTED) {
        /* seqlock read: acquire loads keep the re-check of d_cw after them */
        pos = atomic_load_explicit(&d->d_ext_start, FQ_ACQUIRE) + atomic_load_explicit(&d->d_frame_off, FQ_ACQUIRE);
        have = atomic_load_explicit(&d->d_cw, FQ_RELAXED) == cw;
    }
    if (!have && fq__store_find(q, seq, &pos) != 1)
        return 0;
    if (pos & 7u)
        return 0;
    const uint8_t *fr = fq__at(q, pos);
    uint64_t room = q->cap - (pos & q->cap_mask);
    if (!fr || room < FQ_FRAME_HDR)
        return 0;
    struct fq_frame_hdr h; /* checked as a local copy: a writer of the shared file cannot change it afterwards */
    if (!fq__store_read_hdr(fr, room, &h) || (h.f_flags & FQ_FR_KIND) != FQ_FR_DATA || h.f_seq != seq)
        return 0;
    fq__msg_from_frame(m, &h, fr, deliveries);
    return 1;
}

/* Fill a message from a record we hold a lease on.  Returns 0 if the shared
 * descriptor or frame header fails validation. */
static int fq__fill(fq_queue *q, uint64_t seq, unsigned deliveries, fq_msg *m)
{
    if (q->durable)
        return fq__fill_store(q, seq, deliveries, m);
    struct fq_desc_shm *d = fq__desc(q, seq);
    uint64_t es = atomic_load_explicit(&d->d_ext_start, FQ_RELAXED);
    uint32_t fo = atomic_load_explicit(&d->d_frame_off, FQ_RELAXED);
    uint32_t fl = atomic_load_explicit(&d->d_frame_len, FQ_RELAXED);
    if (fl < FQ_FRAME_HDR || fl > q->max_frame || fo >= q->cap)
        return 0;
    uint64_t off = (es + fo) & q->cap_mask;
    if (off + fl > q->cap || (off & 7u))
        return 0;
    const struct fq_frame_hdr *h = (const struct fq_frame_hdr *)(q->arena + off);
    if (h->f_len != fl || h->f_seq != seq ||
        !(__atomic_load_n(&h->f_flags, __ATOMIC_ACQUIRE) & FQ_FR_COMMITTED))
        return 0;
    m->seq = seq;
    m->data = q->arena + off + FQ_FRAME_HDR;
    m->len = fl - FQ_FRAME_HDR;
    m->deliveries = deliveries;
    m->flags = fq__type_flags(h->f_type);
    m->ts_ns = h->f_ts_ns;
    m->key_len = h->f_type >> 16;
    if (m->key_len > m->len)
        return 0;
    return 1;
}

/* A record we leased failed validation: it is dropped (DEAD) so the group
 * goes on, and the caller reports FQ_ERR_CORRUPT. */
static void fq__drop_corrupt(fq_queue *q, uint32_t g, uint64_t seq, uint64_t w)
{
    struct fq_lease_shm *L = fq__lease(q, g, seq);
    if (atomic_compare_exchange_strong_explicit(&L->l_w, &w, fq__lw(seq, fq__lw_deliv(w), FQ_OWNER_NONE, FQ_L_DEAD),
                                                FQ_RELEASE, FQ_RELAXED)) {
        atomic_fetch_add_explicit(&fq__group(q, g)->g_dead, 1, FQ_RELAXED);
        atomic_fetch_add_explicit(&fq__group(q, g)->g_acked, 1, FQ_RELAXED);
    }
}

/* Retake what is due again: RETRY entries whose not-before passed (nack,
 * recovery) and LEASED entries whose visibility deadline passed (expiry).
 * Runs only once g_next_deadline has passed, scans [g_low, tail) within the
 * window, and leaves g_next_deadline at the earliest future instant it saw.
 * A message whose next delivery would exceed max_deliveries is leased with
 * FQ_MSG_DEADLETTER: the caller copies it to the dead-letter queue, then
 * finishes it with fq_dead (copy first, then finish).
 * g_retry_pending is a statistic only (nothing waits on it): exact while
 * everyone lives; a process killed between a state change and its count
 * leaves it off by one. */
static uint32_t fq__take_due(fq_queue *q, uint32_t g, fq_msg *out, uint32_t max, uint32_t only_len, int *corrupt)
{
    struct fq_group_shm *G = fq__group(q, g);
    uint64_t nd0 = atomic_load_explicit(&G->g_next_deadline, FQ_ACQUIRE);
    if (nd0 == (uint64_t)INT64_MAX)
        return 0; /* nothing in flight can come back: no clock read on the hot path */
    int64_t now = fq_now_ns();
    if ((int64_t)nd0 > now)
        return 0;
    uint64_t low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE); /* C0 */
    uint64_t end = fq_tail_seq(q), W = fq__gw(q, g);
    if ((int64_t)(end - low) > (int64_t)W)
        end = low + W;
    uint32_t vis = FQ_CFG_LOAD(G->g_visibility_ms), maxd = FQ_CFG_LOAD(G->g_max_deliveries);
    uint32_t dlseq0 = atomic_load_explicit(&G->g_dl_seq, FQ_SEQCST);
    uint64_t next = INT64_MAX;
    uint32_t n = 0;
    int complete = 1;
    for (uint64_t s = low; (int64_t)(end - s) > 0; s++) {
        struct fq_lease_shm *L = fq__lease(q, g, s);
        uint64_t w = atomic_load_explicit(&L->l_w, FQ_ACQUIRE);
        if (!fq__lw_is(w, s))
            continue;
        unsigned st = fq__lw_st(w);
        if (st != FQ_L_RETRY && st != FQ_L_LEASED)
            continue;
        if (st == FQ_L_RETRY && fq__lw_owner(w) != FQ_OWNER_NONE)
            continue; /* a nack in progress (fq_nack): its not-before is not final yet */
        uint64_t due = atomic_load_explicit(&L->l_deadline_ns, FQ_ACQUIRE);
        if (st == FQ_L_LEASED && due == 0)
            continue; /* no visibility timeout (or its taker has not stored it yet) */
        if ((int64_t)due > now) {
            if ((int64_t)(due - next) < 0)
                next = due;
            continue;
        }
        if (n == max) {
            complete = 0; /* more is due: leave g_next_deadline passed */
            break;
        }
        if (only_len && atomic_load_explicit(&fq__desc(q, s)->d_frame_len, FQ_RELAXED) != FQ_FRAME_HDR + only_len) {
            complete = 0;
            break; /* keep order: the caller sees FQ_ERR_SIZE from the main scan only if nothing was taken */
        }
        unsigned dv = fq__lw_deliv(w) + 1u;
        if (dv > FQ_DELIV_MAX)
            dv = FQ_DELIV_MAX; /* the word's generation: 65,535 deliveries before it could repeat */
        uint64_t nw = fq__lw(s, dv, (unsigned)q->member, FQ_L_LEASED);
        uint64_t dl = vis ? (uint64_t)(now + (int64_t)vis * 1000000) : 0;
        atomic_store_explicit(&L->l_deadline_ns, dl, FQ_RELAXED); /* before the CAS: see fq_take */
        if (!atomic_compare_exchange_strong_explicit(&L->l_w, &w, nw, FQ_ACQREL, FQ_RELAXED)) /* C2 */
            continue;
        if (st == FQ_L_RETRY)
            atomic_fetch_sub_explicit(&G->g_retry_pending, 1, FQ_SEQCST);
        else
            atomic_fetch_add_explicit(&G->g_expired, 1, FQ_RELAXED);
        if (dv > 1) /* dv == 1: a delayed record's first delivery (D2), not a redelivery */
            atomic_fetch_add_explicit(&G->g_redelivered, 1, FQ_RELAXED);
        if (dl && (int64_t)(dl - next) < 0)
            next = dl;
        if (fq__fill(q, s, dv, &out[n])) {
            if (maxd && dv > maxd)
                out[n].flags |= FQ_MSG_DEADLETTER;
            n++;
        } else {
            fq__drop_corrupt(q, g, s, nw);
            *corrupt = 1;
        }
    }
    if (complete && atomic_load_explicit(&G->g_dl_seq, FQ_SEQCST) == dlseq0) {
        /* Raise the hint to what we saw, only over a value that had passed
         * and only if no deadline was inserted during the scan (D1): an
         * insert we may have missed keeps the hint passed, or lowers it
         * again after our raise (fq__deadline_insert's second CAS-min). */
        uint64_t cur = atomic_load_explicit(&G->g_next_deadline, FQ_SEQCST);
        while ((int64_t)cur <= now &&
               !atomic_compare_exchange_weak_explicit(&G->g_next_deadline, &cur, next, FQ_SEQCST, FQ_SEQCST))
            ;
    }
    return n;
}

int fq__take_ready(fq_queue *q, uint32_t g)
{
    struct fq_group_shm *G = fq__group(q, g);
    uint64_t nd = atomic_load_explicit(&G->g_next_deadline, FQ_ACQUIRE);
    if (nd != (uint64_t)INT64_MAX && (int64_t)nd <= fq_now_ns())
        return 1;
    uint64_t low = atomic_load_explicit(&G->g_low, FQ_SEQCST);
    uint64_t disp = atomic_load_explicit(&G->g_dispatch, FQ_RELAXED);
    uint64_t s = (int64_t)(disp - low) > 0 ? disp : low;
    if (s - low >= fq__gw(q, g))
        return 0; /* window full: nothing is takeable until an ack moves g_low (E3 wakes us) */
    /* seq_cst: the re-check half of the E1 Dekker pair with P4. */
    uint64_t cw = atomic_load_explicit(&fq__desc(q, s)->d_cw, FQ_SEQCST);
    unsigned st = fq__cw_st(cw);
    if (q->durable && !fq__cw_published(cw, s) &&
        (int64_t)(s - atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_SEQCST)) < 0)
        return 1; /* behind the descriptor ring: in the segments */
    return fq__cw_seq(cw) == (s & FQ_SEQ_MASK) && (st == FQ_D_COMMITTED || st == FQ_D_ABORTED);
}

int fq_take(fq_queue *q, uint32_t g, fq_msg *out, uint32_t max, uint32_t only_len, uint32_t *n_out)
{
    *n_out = 0;
    if (q->member < 0 || g >= q->max_groups || max == 0)
        return FQ_ERR_INVAL;
    struct fq_group_shm *G = fq__group(q, g);
    uint32_t n = 0;
    int corrupt = 0, stalled = 0, wrong_size = 0, leased_new = 0;
    uint32_t skipped = 0;
    if (fq__unlikely(atomic_load_explicit(&G->g_state, FQ_ACQUIRE) != FQ_G_ACTIVE))
        return FQ_ERR_NOENT; /* the group was deleted */
    struct fq_member_shm *mm = &q->members[q->member];
    uint32_t gen = atomic_load_explicit(&G->g_gen, FQ_ACQUIRE), mgen = FQ_CFG_LOAD(mm->m_group_gen);
    if (fq__unlikely(mgen == 0 && gen != 0 && (atomic_load_explicit(&mm->m_ack_word, FQ_RELAXED) >> 1) == 0)) {
        /* An unbound handle taking from a created group binds to it (as
         * fq_member_group does), so its acks use the crash-proof journal. */
        FQ_CFG_STORE(mm->m_group, g);
        FQ_CFG_STORE(mm->m_group_gen, gen);
        mgen = gen;
    }
    if (fq__unlikely(FQ_CFG_LOAD(mm->m_group) == g && mgen != 0 && mgen != gen))
        return FQ_ERR_NOENT; /* deleted, and its slot now holds another group */
    n = fq__take_due(q, g, out, max, only_len, &corrupt);
    uint64_t low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE); /* C0 */
    uint64_t disp = atomic_load_explicit(&G->g_dispatch, FQ_RELAXED);
    uint64_t s = (int64_t)(disp - low) > 0 ? disp : low;
    unsigned me = (unsigned)q->member;
    uint64_t W = fq__gw(q, g);
    uint32_t vis = FQ_CFG_LOAD(G->g_visibility_ms);
    int64_t deadline = vis ? fq_now_ns() + (int64_t)vis * 1000000 : 0;
    while (n < max) {
        if (s - low >= W) {
            low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE);
            if ((int64_t)(low - s) > 0)
                s = low; /* others finished past us */
            if (s - low >= W)
                break; /* window full: back-pressure (prefetch limit) */
        }
        uint64_t cw = atomic_load_explicit(&fq__desc(q, s)->d_cw, FQ_ACQUIRE); /* C1 */
        unsigned st = fq__cw_st(cw);
        int store_delayed = 0;
        if (!fq__cw_published(cw, s)) {
            if (q->durable && (int64_t)(s - atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE)) < 0) {
                /* S4: below the frontier, behind the descriptor ring: the
                 * segment says whether s is a record or a gap. */
                uint64_t pos;
                int k = fq__store_find(q, s, &pos);
                if (k == -1) { /* retention deleted it: jump */
                    fq__retention_jump(q, g);
                    low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE);
                    if ((int64_t)(low - s) > 0)
                        s = low;
                    else
                        s++;
                    continue;
                }
                if (k == 1) {
                    st = FQ_D_COMMITTED;
                    store_delayed = (q->rf_hdr.f_type & FQ_TYPE_DELAYED) != 0; /* the header it just checked */
                }
                else if (k == 2)
                    st = FQ_D_ABORTED;
                else
                    st = FQ_D_COMMITTED; /* corrupt: lease it, fq__fill fails, it is dropped and reported */
            } else {
                /* Not yet published for s: either nothing claimed there (empty)
                 * or a claim in flight (or dead: recovery R2 turns it into a gap). */
                stalled = (int64_t)(fq_tail_seq(q) - s) > 0;
                break;
            }
        }
        if (st == FQ_D_WRITING) {
            stalled = 1;
            break;
        }
        struct fq_lease_shm *L = fq__lease(q, g, s);
        uint64_t w = atomic_load_explicit(&L->l_w, FQ_ACQUIRE);
        if (fq__lw_is(w, s) && fq__lw_st(w) != FQ_L_FRESH) {
            s++; /* taken by another consumer, or finished */
            continue;
        }
        if (!fq__lw_is(w, s) && fq__lw_newer(w, s)) {
            /* The entry already belongs to a later lap: we were preempted
             * between C1 and this load while the ring went round, so s (and
             * what we read of desc[s]) is long finished.  Jump to g_low. */
            low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE);
            s = (int64_t)(low - s) > 0 ? low : s + 1;
            continue;
        }
        if (st == FQ_D_ABORTED) {
            if (atomic_compare_exchange_strong_explicit(&L->l_w, &w, fq__lw(s, 0, FQ_OWNER_NONE, FQ_L_SKIPPED),
                                                        FQ_SEQCST, FQ_RELAXED))
                skipped++;
            s++;
            continue;
        }
        if (only_len && !q->durable &&
            atomic_load_explicit(&fq__desc(q, s)->d_frame_len, FQ_RELAXED) != FQ_FRAME_HDR + only_len) {
            wrong_size = 1; /* fields are stable: s is committed and not terminal */
            break;
        }
        /* delayed?  the descriptor's hint (relaxed: stored before the
         * commit's release of d_cw, P4, which C1 acquired), or behind the
         * descriptor ring the header fq__store_find just checked */
        if (fq__unlikely(fq__cw_published(cw, s)
                             ? (atomic_load_explicit(&fq__desc(q, s)->d_flags, FQ_RELAXED) & FQ_D_F_DELAYED) != 0
                             : store_delayed)) {
            /* D1: a delayed record not yet due goes FRESH -> RETRY(none, 0)
             * with its due time as the not-before, in one CAS after the
             * deadline store (as the lease deadline below): a taker killed
             * before the CAS leaves it FRESH (the next taker repeats D1),
             * after it, RETRY with a final deadline.  The copy read here is
             * only trusted if the CAS from the FRESH word we saw wins. */
            fq_msg dm;
            int64_t nb, rt;
            if (fq__fill(q, s, 0, &dm) && (dm.flags & FQ_MSG_DELAYED) && (memcpy(&nb, dm.data, 8), 1) &&
                nb > (rt = fq_realtime_ns())) {
                int64_t wait = nb - rt;
                if (wait > (int64_t)1 << 62)
                    wait = (int64_t)1 << 62;
                uint64_t due = (uint64_t)(fq_now_ns() + wait);
                atomic_store_explicit(&L->l_deadline_ns, due, FQ_RELAXED);
                if (atomic_compare_exchange_strong_explicit(&L->l_w, &w, fq__lw(s, 0, FQ_OWNER_NONE, FQ_L_RETRY),
                                                            FQ_ACQREL, FQ_RELAXED)) {
                    atomic_fetch_add_explicit(&G->g_retry_pending, 1, FQ_SEQCST);
                    fq__deadline_insert(G, due);
                    FQ_CRASHPOINT("cons.after_delay");
                }
                s++;
                continue;
            }
        }
        uint64_t nw = fq__lw(s, 1, me, FQ_L_LEASED);
        /* The deadline goes in BEFORE the lease CAS (whose release publishes
         * it): an expiry scan that sees LEASED must never read a previous
         * lap's deadline.  Storing into an entry we may not win is harmless
         * when it is still FRESH (nobody scans it) or the winner stores its
         * own.  KNOWN BUG (docs/protocol.md C2): a taker preempted between
         * its load of the FRESH word and this store, while another taker
         * leases and nacks the record, overwrites the nack's not-before with
         * this lease deadline (the record then waits a visibility timeout);
         * fq__take_due and D1 store the same way.  A two-step claim (CAS to
         * RETRY(me) first, then the deadline, then LEASED) was tried and
         * reverted: it let test_aio's two-loop test see records delivered
         * twice (about 1 run in 15), cause not yet found. */
        atomic_store_explicit(&L->l_deadline_ns, (uint64_t)deadline, FQ_RELAXED);
        if (atomic_compare_exchange_strong_explicit(&L->l_w, &w, nw, FQ_ACQREL, FQ_RELAXED)) { /* C2 */
            FQ_CRASHPOINT("cons.after_lease");
            if (fq__fill(q, s, 1, &out[n])) {
                n++;
                leased_new = 1;
            }
            else {
                fq__drop_corrupt(q, g, s, nw);
                corrupt = 1;
            }
        }
        s++;
    }
    /* D1 once per take: every lease of this take expires at `deadline`
     * (the hint is a lower bound of all of them from here on). */
    if (leased_new && deadline)
        fq__deadline_insert(G, (uint64_t)deadline);
    fq__cas_max(&G->g_dispatch, s, FQ_SEQCST); /* a hint; seq_cst for E3 (a lock cmpxchg either way on x86) */
    if (skipped || corrupt)
        fq__advance_low(q, g);
    *n_out = n;
    if (n) {
        atomic_fetch_add_explicit(&G->g_delivered, n, FQ_RELAXED);
        atomic_fetch_add_explicit(&q->members[me].m_gets, n, FQ_RELAXED);
        return FQ_OK;
    }
    if (corrupt)
        return FQ_ERR_CORRUPT;
    if (wrong_size)
        return FQ_ERR_SIZE;
    return stalled ? FQ_STALLED : FQ_EMPTY;
}

void fq__advance_low(fq_queue *q, uint32_t g)
{
    struct fq_group_shm *G = fq__group(q, g);
    /* seq_cst (C4/C5 with C3): two ackers finishing s and s+1 concurrently
     * form a store-buffer pattern (each stores its entry, then reads the
     * other's entry or g_low).  With every access seq_cst, at least one of
     * them sees both entries terminal, so g_low never stalls below a run of
     * finished records. */
    uint64_t l0 = atomic_load_explicit(&G->g_low, FQ_SEQCST);
    uint64_t l = l0;
    /* Invariant: g_low only passes terminal entries.  Entries at or beyond
     * the tail carry an older tag (or are zero), so the scan stops there. */
    uint64_t W = fq__gw(q, g);
    while (l - l0 < W) {
        uint64_t w = atomic_load_explicit(&fq__lease(q, g, l)->l_w, FQ_SEQCST); /* C4 */
        if (!fq__lw_is(w, l) || !fq__lst_terminal(fq__lw_st(w)))
            break;
        l++;
    }
    if (l == l0)
        return;
    uint64_t cur = l0;
    int moved = 0;
    while ((int64_t)(l - cur) > 0) {
        if (atomic_compare_exchange_weak_explicit(&G->g_low, &cur, l, FQ_SEQCST, FQ_RELAXED)) { /* C5 */
            moved = 1;
            break;
        }
    }
    FQ_CRASHPOINT("cons.after_low");
    if (moved) {
        fq__ec_notify_if_waiters(&q->ctrl->c_space_ec); /* E2 */
        /* E3: takers stopped by a full window (g_dispatch >= old low + W)
         * wait for this move.  Dekker pair with fq_take's seq_cst g_dispatch
         * store and fq__take_ready's seq_cst g_low load: either the waiter's
         * re-check sees the new low, or we see its dispatch and its waiter
         * count and wake it.  Only then: acks with idle consumers waiting for
         * new records wake nobody. */
        if (atomic_load_explicit(&G->g_dispatch, FQ_SEQCST) - l0 >= W)
            fq__ec_notify_if_waiters(&q->ctrl->c_data_ec);
    }
}

static int fq__finish(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n, unsigned state, uint32_t *done)
{
    if (q->member < 0 || g >= q->max_groups)
        return FQ_ERR_INVAL;
    unsigned me = (unsigned)q->member;
    struct fq_member_shm *m = &q->members[me];
    /* The ack journal (fq_layout.h, m_ack_word): only this member writes its
     * word, so plain stores; release so a recoverer reading the word sees
     * m_ack_seq.  A crash anywhere leaves the count exactly recoverable. */
    uint64_t count = atomic_load_explicit(&m->m_ack_word, FQ_RELAXED) >> 1;
    int counts = FQ_CFG_LOAD(m->m_group) == g && FQ_CFG_LOAD(m->m_group_gen) == atomic_load_explicit(&fq__group(q, g)->g_gen, FQ_RELAXED);
    uint32_t lost = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t seq = msgs[i].seq;
        struct fq_lease_shm *L = fq__lease(q, g, seq);
        uint64_t w = fq__lw(seq, msgs[i].deliveries, me, FQ_L_LEASED);
        if (counts) {
            atomic_store_explicit(&m->m_ack_seq, seq, FQ_RELAXED);
            atomic_store_explicit(&m->m_ack_word, count << 1 | 1u, FQ_RELEASE);
        }
        if (!atomic_compare_exchange_strong_explicit(&L->l_w, &w,
                                                     fq__lw(seq, msgs[i].deliveries, me, state), FQ_SEQCST,
                                                     FQ_RELAXED)) { /* C3 (release + seq_cst: see C4) */
            lost++;
            continue;
        }
        FQ_CRASHPOINT("cons.after_ack");
        if (counts)
            atomic_store_explicit(&m->m_ack_word, ++count << 1, FQ_RELEASE);
        else
            atomic_fetch_add_explicit(&fq__group(q, g)->g_acked, 1, FQ_RELAXED);
    }
    if (counts)
        atomic_store_explicit(&m->m_ack_word, count << 1, FQ_RELEASE);
    *done = n - lost;
    fq__advance_low(q, g);
    return lost ? FQ_ERR_LOST : FQ_OK;
}

/* Finish leased records: ACKED (processed) or DEAD (copied to the dead-letter
 * queue first).  FQ_ERR_LOST if any lease was no longer ours. */
int fq_ack(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n)
{
    uint32_t done;
    return fq__finish(q, g, msgs, n, FQ_L_ACKED, &done);
}

int fq_ack_n(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n, uint32_t *acked)
{
    *acked = 0;
    return fq__finish(q, g, msgs, n, FQ_L_ACKED, acked);
}

int fq_dead(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n)
{
    uint32_t done = 0;
    int rc = fq__finish(q, g, msgs, n, FQ_L_DEAD, &done);
    if (done)
        atomic_fetch_add_explicit(&fq__group(q, g)->g_dead, done, FQ_RELAXED);
    return rc;
}

/* ------------------------------------------------------------------------ */

/* Records finished by ack in group g: the group's retired count plus every
 * member's own count (read lock-free; exact when no ack is in flight). */
uint64_t fq__acked(fq_queue *q, uint32_t g)
{
    uint64_t acked = atomic_load_explicit(&fq__group(q, g)->g_acked, FQ_ACQUIRE);
    uint32_t hwm = atomic_load_explicit(&q->ctrl->c_member_hwm, FQ_ACQUIRE);
    if (hwm > q->max_members)
        hwm = q->max_members;
    for (uint32_t i = 0; i < hwm; i++) {
        struct fq_member_shm *m = &q->members[i];
        if (atomic_load_explicit(&m->m_state, FQ_ACQUIRE) == FQ_M_FREE || FQ_CFG_LOAD(m->m_group) != g ||
            FQ_CFG_LOAD(m->m_group_gen) != atomic_load_explicit(&fq__group(q, g)->g_gen, FQ_RELAXED))
            continue; /* counts of a deleted earlier group in this slot do not count here */
        acked += atomic_load_explicit(&m->m_ack_word, FQ_ACQUIRE) >> 1;
    }
    return acked;
}

uint64_t fq__aborted(fq_queue *q) { return atomic_load_explicit(&q->ctrl->c_aborted, FQ_ACQUIRE) >> 1; }

uint64_t fq_qsize(fq_queue *q, uint32_t g)
{
    struct fq_group_shm *G = fq__group(q, g);
    uint64_t acked = fq__acked(q, g);
    uint64_t aborted = fq__aborted(q);
    uint64_t ts = fq_tail_seq(q);
    uint64_t used = ts - FQ_CFG_LOAD(G->g_start_seq);
    uint64_t gone = acked + aborted;
    return used > gone ? used - gone : 0;
}

uint64_t fq_unfinished(fq_queue *q)
{
    uint64_t done = atomic_load_explicit(&q->ctrl->c_tasks_done, FQ_ACQUIRE);
    uint64_t aborted = fq__aborted(q);
    uint64_t ts = fq_tail_seq(q);
    uint64_t used = ts - q->base_seq;
    return used > done + aborted ? used - done - aborted : 0;
}

int fq_task_done(fq_queue *q, uint64_t n)
{
    uint64_t d = atomic_load_explicit(&q->ctrl->c_tasks_done, FQ_RELAXED);
    for (;;) {
        uint64_t total = fq_tail_seq(q) - q->base_seq - fq__aborted(q);
        if (d + n > total)
            return FQ_ERR_INVAL; /* more task_done() than items put */
        if (atomic_compare_exchange_weak_explicit(&q->ctrl->c_tasks_done, &d, d + n, FQ_SEQCST, FQ_RELAXED))
            break;
    }
    fq__ec_notify_if_waiters(&q->ctrl->c_done_ec);
    return FQ_OK;
}

void fq_get_stats(fq_queue *q, uint32_t g, fq_stats *st)
{
    uint64_t t, fs, fp;
    memset(st, 0, sizeof *st);
    fq__load_tail_bounded(q, &t, &st->tail_seq, &st->tail_pos, &fs, &fp);
    st->floor_seq = fs;
    st->floor_pos = fp;
    if (g < q->max_groups) {
        struct fq_group_shm *G = fq__group(q, g);
        st->low = atomic_load_explicit(&G->g_low, FQ_RELAXED);
        st->dispatch = atomic_load_explicit(&G->g_dispatch, FQ_RELAXED);
        st->acked = fq__acked(q, g);
        st->delivered = atomic_load_explicit(&G->g_delivered, FQ_RELAXED);
        st->redelivered = atomic_load_explicit(&G->g_redelivered, FQ_RELAXED);
        st->dead = atomic_load_explicit(&G->g_dead, FQ_RELAXED);
        st->expired = atomic_load_explicit(&G->g_expired, FQ_RELAXED);
        st->nacked = atomic_load_explicit(&G->g_nacked, FQ_RELAXED);
        st->retry_pending = atomic_load_explicit(&G->g_retry_pending, FQ_RELAXED);
        st->skipped = atomic_load_explicit(&G->g_skipped, FQ_RELAXED);
        uint64_t W = fq__gw(q, g);
        for (uint64_t s = st->low; (int64_t)(st->tail_seq - s) > 0 && s - st->low < W; s++) {
            uint64_t w = atomic_load_explicit(&fq__lease(q, g, s)->l_w, FQ_RELAXED);
            if (fq__lw_is(w, s) && fq__lw_st(w) == FQ_L_LEASED)
                st->pending++;
        }
        if ((int64_t)(st->tail_seq - st->low) > 0) {
            int ok = 0;
            uint64_t p = st->low == q->base_seq ? q->base_pos : fq__pos_after(q, st->low - 1, &ok);
            if (st->low == q->base_seq || ok)
                st->lag_bytes = st->tail_pos - p;
            struct fq_desc_shm *d = fq__desc(q, st->low);
            uint64_t cw = atomic_load_explicit(&d->d_cw, FQ_ACQUIRE);
            if (fq__cw_published(cw, st->low) && fq__cw_st(cw) == FQ_D_COMMITTED) {
                uint64_t pos = atomic_load_explicit(&d->d_ext_start, FQ_RELAXED) +
                               atomic_load_explicit(&d->d_frame_off, FQ_RELAXED);
                const struct fq_frame_hdr *h = (const struct fq_frame_hdr *)fq__at(q, pos);
                if (h && (pos & q->cap_mask) + FQ_FRAME_HDR <= q->cap && !(pos & 7u))
                    st->oldest_ts_ns = (uint64_t)__atomic_load_n(&h->f_ts_ns, __ATOMIC_RELAXED);
            }
        }
    }
    st->aborted = fq__aborted(q);
    st->first_seq = fq_first_seq(q);
    st->durable_seq = q->durable ? fq_durable_seq(q) : st->tail_seq;
    st->recovered = atomic_load_explicit(&q->ctrl->c_recovered, FQ_RELAXED);
    st->tasks_done = atomic_load_explicit(&q->ctrl->c_tasks_done, FQ_RELAXED);
    st->data_waiters = (uint32_t)atomic_load_explicit(&q->ctrl->c_data_ec, FQ_RELAXED);
    st->space_waiters = (uint32_t)atomic_load_explicit(&q->ctrl->c_space_ec, FQ_RELAXED);
    st->recovery_owner = atomic_load_explicit(&q->ctrl->c_recovery_owner, FQ_RELAXED);
    for (uint32_t i = 0; i < q->max_members; i++)
        if (atomic_load_explicit(&q->members[i].m_state, FQ_RELAXED) == FQ_M_ALIVE) {
            st->members_alive++;
            if (g < q->max_groups && FQ_CFG_LOAD(q->members[i].m_group) == g &&
                (FQ_CFG_LOAD(q->members[i].m_kind) & FQ_M_KIND_CONSUMER) &&
                FQ_CFG_LOAD(q->members[i].m_group_gen) == atomic_load_explicit(&fq__group(q, g)->g_gen, FQ_RELAXED) &&
                fq_member_alive(q, i))
                st->consumers++; /* bound to this generation (not detached by a delete or reset), process alive */
        }
}

/* Copy record `seq` of a shared-memory ring without joining any group or
 * holding any lease (`fastq tail`): invisible to producers and consumers.
 * Nothing gates a reader that is not a group, so producers may overwrite the
 * record while we copy it; the copy is validated afterwards, seqlock style:
 * acquire fence, then the descriptor must still describe `seq` and the
 * reclaim floor must not have passed it (producers only write below
 * c_floor_pos, which moves after c_floor_seq, F2; c_floor_proposal is raised
 * even earlier, F0, and is checked too).  A torn copy is never returned.
 *   FQ_OK         *out describes the copy in buf (key first, as fq_take)
 *   FQ_EMPTY      seq is not committed yet (at or past the tail, or being written)
 *   FQ_ERR_RANGE  seq is below the floor (overwritten); *floor = the oldest record
 *   FQ_ERR_LOST   seq is a gap left by a dead producer: there is no record
 *   FQ_ERR_TOO_BIG  buf is smaller than the record (out->len = its size) */
int fq_peek(fq_queue *q, uint64_t seq, uint8_t *buf, uint32_t cap, fq_msg *out, uint64_t *floor)
{
    if (q->durable)
        return FQ_ERR_INVAL;
    uint64_t fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
    *floor = fs;
    if ((int64_t)(seq - fs) < 0)
        return FQ_ERR_RANGE;
    struct fq_desc_shm *d = fq__desc(q, seq);
    uint64_t cw = atomic_load_explicit(&d->d_cw, FQ_ACQUIRE);
    if (!fq__cw_published(cw, seq) || fq__cw_st(cw) == FQ_D_WRITING)
        return FQ_EMPTY;
    if (fq__cw_st(cw) != FQ_D_COMMITTED)
        return FQ_ERR_LOST;
    uint64_t pos = atomic_load_explicit(&d->d_ext_start, FQ_RELAXED) + atomic_load_explicit(&d->d_frame_off, FQ_RELAXED);
    struct fq_frame_hdr h;
    int shape_ok = !(pos & 7u) && (pos & q->cap_mask) + FQ_FRAME_HDR <= q->cap;
    if (shape_ok) {
        memcpy(&h, q->arena + (pos & q->cap_mask), sizeof h);
        shape_ok = h.f_seq == seq && h.f_len >= FQ_FRAME_HDR && h.f_len <= q->max_frame &&
                   (pos & q->cap_mask) + h.f_len <= q->cap && (h.f_type >> 16) <= h.f_len - FQ_FRAME_HDR;
    }
    uint32_t len = shape_ok ? h.f_len - FQ_FRAME_HDR : 0;
    if (shape_ok && len <= cap)
        memcpy(buf, q->arena + (pos & q->cap_mask) + FQ_FRAME_HDR, len);
    atomic_thread_fence(FQ_ACQUIRE);
    uint64_t fs2 = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_RELAXED);
    uint64_t fp2 = atomic_load_explicit(&q->ctrl->c_floor_proposal, FQ_RELAXED);
    if (atomic_load_explicit(&d->d_cw, FQ_RELAXED) != cw || (int64_t)(seq - fs2) < 0 || (int64_t)(seq - fp2) < 0) {
        *floor = (int64_t)(fp2 - fs2) > 0 ? fp2 : fs2;
        return FQ_ERR_RANGE; /* overwritten while we copied */
    }
    if (!shape_ok) {
        fq__set_err("record %llu has a damaged frame header", (unsigned long long)seq);
        return FQ_ERR_CORRUPT;
    }
    fq__msg_from_frame(out, &h, q->arena, 0);
    out->data = buf;
    if (len > cap)
        return FQ_ERR_TOO_BIG;
    return FQ_OK;
}
