/*
 * fq_group.c — consumer groups: create/attach/delete (under the admin mutex),
 * and the per-message transitions besides take/ack: nack, extend, dead.
 *
 * Lease-entry transitions (fq_layout.h, fq_lease_shm), each one CAS carrying
 * the owner, so a crash at any point leaves a state that explains itself:
 *
 *   FRESH ──take──▶ LEASED(me,1) ──ack──▶ ACKED
 *                     │  ├──nack(delay)──▶ RETRY(not-before) ──take──▶ LEASED(me,d+1)
 *                     │  ├──deadline passed (any taker)─────────────▶ LEASED(them,d+1)
 *                     │  ├──owner dead (recovery R4)──▶ RETRY(now)
 *                     │  └──dead (after the copy to the DLQ)──▶ DEAD
 *   ABORTED desc ──take──▶ SKIPPED
 *
 * G1  creator: config fields, then g_state = ACTIVE (seq_cst), then loads of
 *     c_floor_proposal and c_floor_seq (seq_cst): pairs with F0/F2 of
 *     fq__refresh_floor (Dekker): either the refresher sees the group, or the
 *     creator sees the refresher's proposal and starts at or above it.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fq_pvt.h"

/* ---- admin mutex (same take-over rule as the recovery mutex) ---- */
static int fq__admin_lock(fq_queue *q)
{
    uint32_t me = (uint32_t)q->member + 1;
    int64_t until = fq_now_ns() + 2000000000LL;
    uint32_t cur = atomic_load_explicit(&q->ctrl->c_admin_owner, FQ_ACQUIRE);
    for (;;) {
        if (cur == me)
            return 1;
        int holder_alive = cur != 0 && cur - 1 < q->max_members && fq__probe_lock(q, cur - 1) != 0;
        if (!holder_alive) {
            if (atomic_compare_exchange_weak_explicit(&q->ctrl->c_admin_owner, &cur, me, FQ_SEQCST, FQ_ACQUIRE))
                return 1;
            continue;
        }
        if (fq_now_ns() > until)
            return 0;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
        cur = atomic_load_explicit(&q->ctrl->c_admin_owner, FQ_ACQUIRE);
    }
}

static void fq__admin_unlock(fq_queue *q) { atomic_store_explicit(&q->ctrl->c_admin_owner, 0, FQ_RELEASE); }

static int fq__member_bind(fq_queue *q, uint32_t g);

static int fq__name_eq(const char *shm_name, size_t cap, const char *name)
{
    size_t n = strlen(name);
    return n < cap && memcmp(shm_name, name, n) == 0 && shm_name[n] == 0;
}

static uint32_t fq__log2(uint64_t x)
{
    uint32_t l = 0;
    while (((uint64_t)1 << l) < x)
        l++;
    return l;
}

static int fq__group_find_locked(fq_queue *q, const char *name, uint32_t *g_out)
{
    for (uint32_t g = 0; g < q->max_groups; g++) {
        struct fq_group_shm *G = fq__group(q, g);
        if (atomic_load_explicit(&G->g_state, FQ_ACQUIRE) == FQ_G_ACTIVE &&
            fq__name_eq(G->g_name, sizeof G->g_name, name)) {
            *g_out = g;
            return FQ_OK;
        }
    }
    return FQ_ERR_NOENT;
}

/* Names are rewritten when a slot is reused, so they are compared under the
 * admin mutex. */
int fq_group_find(fq_queue *q, const char *name, uint32_t *g_out)
{
    if (q->member < 0)
        return FQ_ERR_INVAL;
    if (!fq__admin_lock(q)) {
        fq__set_err("the queue's group admin lock is held by a live process");
        return FQ_TIMEOUT;
    }
    int rc = fq__group_find_locked(q, name, g_out);
    fq__admin_unlock(q);
    return rc;
}

int fq_group_open(fq_queue *q, const fq_group_cfg *c, uint32_t *g_out, int *created)
{
    *created = 0;
    if (q->member < 0)
        return FQ_ERR_INVAL;
    size_t nl = strlen(c->name), dl = c->dlq ? strlen(c->dlq) : 0;
    if (nl == 0 || nl >= sizeof(((struct fq_group_shm *)0)->g_name) || dl >= sizeof(((struct fq_group_shm *)0)->g_dlq)) {
        fq__set_err("group name must be 1-63 bytes and dead-letter name at most 63 bytes");
        return FQ_ERR_INVAL;
    }
    if (c->max_deliveries > 254) {
        fq__set_err("max_deliveries must be at most 254");
        return FQ_ERR_INVAL;
    }
    uint64_t W = c->window ? c->window : 1024;
    if (W > q->window)
        W = q->window;
    uint32_t wlog = fq__log2(W);
    if (!fq__admin_lock(q)) {
        fq__set_err("the queue's group admin lock is held by a live process");
        return FQ_TIMEOUT;
    }
    int rc = FQ_OK;
    uint32_t g;
    if (fq__group_find_locked(q, c->name, &g) == FQ_OK) {
        struct fq_group_shm *G = fq__group(q, g);
        const char *dlq = c->dlq ? c->dlq : "";
        if (G->g_window_log2 != wlog || G->g_max_deliveries != c->max_deliveries ||
            G->g_visibility_ms != c->visibility_ms || !fq__name_eq(G->g_dlq, sizeof G->g_dlq, dlq) ||
            memcmp(G->g_backoff, c->backoff, sizeof G->g_backoff) != 0) {
            fq__set_err("group '%s' exists with other settings (window=%u, max_deliveries=%u, "
                        "visibility_timeout=%.3fs, dead_letter='%.63s', retry=%u..%u ms x%.3f jitter %.3f)",
                        c->name, 1u << (G->g_window_log2 & 31), G->g_max_deliveries,
                        G->g_visibility_ms / 1000.0, G->g_dlq, G->g_backoff[0], G->g_backoff[1],
                        G->g_backoff[2] / 1000.0, G->g_backoff[3] / 1000.0);
            rc = FQ_ERR_CONFLICT;
        } else {
            *g_out = g;
        }
        goto out;
    }
    for (g = 0; g < q->max_groups; g++)
        if (atomic_load_explicit(&fq__group(q, g)->g_state, FQ_ACQUIRE) == FQ_G_FREE)
            break;
    if (g == q->max_groups) {
        fq__set_err("the queue's group table is full (max_groups=%u)", q->max_groups);
        rc = FQ_ERR_GROUPS;
        goto out;
    }
    struct fq_group_shm *G = fq__group(q, g);
    /* FREE slot: nobody reads its config or window; reset them */
    for (uint64_t i = 0; i < q->window; i++) {
        struct fq_lease_shm *L = &q->windows[(uint64_t)g * q->window + i];
        atomic_store_explicit(&L->l_w, 0, FQ_RELAXED);
        atomic_store_explicit(&L->l_deadline_ns, 0, FQ_RELAXED);
    }
    memset(G->g_name, 0, sizeof G->g_name);
    memcpy(G->g_name, c->name, nl);
    memset(G->g_dlq, 0, sizeof G->g_dlq);
    if (dl)
        memcpy(G->g_dlq, c->dlq, dl);
    FQ_CFG_STORE(G->g_flags, FQ_G_GATING);
    FQ_CFG_STORE(G->g_window_log2, wlog);
    FQ_CFG_STORE(G->g_max_deliveries, c->max_deliveries);
    FQ_CFG_STORE(G->g_visibility_ms, c->visibility_ms);
    memcpy(G->g_backoff, c->backoff, sizeof G->g_backoff);
    atomic_store_explicit(&G->g_acked, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_retry_pending, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_next_deadline, (uint64_t)INT64_MAX, FQ_RELAXED);
    atomic_store_explicit(&G->g_delivered, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_redelivered, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_expired, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_dead, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_nacked, 0, FQ_RELAXED);
    atomic_fetch_add_explicit(&G->g_gen, 1, FQ_RELAXED);
    /* The oldest record a new group may start at: the ring's floor, or the
     * store's retention start (the store keeps everything above it). */
    uint64_t fs = q->durable ? atomic_load_explicit(&q->store->st_retain_seq, FQ_SEQCST)
                             : atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_SEQCST);
    uint64_t ts = fq_tail_seq(q);
    uint64_t L;
    if (c->start == FQ_START_LATEST) {
        L = ts;
    } else if (c->start == FQ_START_SEQ) {
        L = c->start_seq;
        if ((int64_t)(L - ts) > 0) {
            fq__set_err("start offset %llu is beyond the head of the log (%llu)", (unsigned long long)L,
                        (unsigned long long)ts);
            rc = FQ_ERR_RANGE;
            goto out;
        }
    } else {
        L = fs;
    }
    for (int publish = 1;; publish = 0) {
        if ((int64_t)(L - fs) < 0) {
            if (c->start == FQ_START_SEQ) {
                atomic_store_explicit(&G->g_state, FQ_G_FREE, FQ_SEQCST);
                fq__set_err("start offset %llu is no longer in the ring (the oldest retained offset is %llu)",
                            (unsigned long long)c->start_seq, (unsigned long long)fs);
                rc = FQ_ERR_RANGE;
                goto out;
            }
            L = fs;
        }
        G->g_start_seq = L;
        atomic_store_explicit(&G->g_low, L, FQ_SEQCST);
        atomic_store_explicit(&G->g_dispatch, L, FQ_RELAXED);
        if (publish)
            atomic_store_explicit(&G->g_state, FQ_G_ACTIVE, FQ_SEQCST); /* G1 */
        FQ_CRASHPOINT("admin.after_active");
        if (q->durable)
            break; /* producers never overwrite the store: no floor to race */
        uint64_t prop = atomic_load_explicit(&q->ctrl->c_floor_proposal, FQ_SEQCST);
        fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_SEQCST);
        if ((int64_t)(prop - fs) > 0)
            fs = prop; /* a refresher may be about to move the floor there */
        if ((int64_t)(L - fs) >= 0)
            break;
    }
    atomic_fetch_add_explicit(&q->ctrl->c_groups_epoch, 1, FQ_RELAXED);
    *created = 1;
    *g_out = g;
out:
    if (rc == FQ_OK)
        fq__member_bind(q, *g_out); /* best effort: the opener usually consumes it */
    fq__admin_unlock(q);
    return rc;
}

int fq_group_delete(fq_queue *q, const char *name)
{
    if (q->member < 0)
        return FQ_ERR_INVAL;
    if (!fq__admin_lock(q)) {
        fq__set_err("the queue's group admin lock is held by a live process");
        return FQ_TIMEOUT;
    }
    uint32_t g;
    int rc = fq__group_find_locked(q, name, &g);
    if (rc == FQ_OK) {
        /* Takers of the group see it gone (FQ_ERR_NOENT); producers stop
         * counting its low at once (F1 reads ACTIVE groups only). */
        atomic_store_explicit(&fq__group(q, g)->g_state, FQ_G_FREE, FQ_SEQCST);
        atomic_fetch_add_explicit(&q->ctrl->c_groups_epoch, 1, FQ_RELAXED);
        fq__ec_notify(&q->ctrl->c_space_ec);
        fq__ec_notify(&q->ctrl->c_data_ec);
    } else {
        fq__set_err("no group named '%s'", name);
    }
    fq__admin_unlock(q);
    return rc;
}

/* LEASED(me, d) -> RETRY, visible again after delay_ns (nack).  The
 * not-before is stored before the CAS, so whoever sees RETRY sees it. */
int fq_nack(fq_queue *q, uint32_t g, const fq_msg *m, uint64_t delay_ns)
{
    if (q->member < 0 || g >= q->max_groups)
        return FQ_ERR_INVAL;
    struct fq_group_shm *G = fq__group(q, g);
    struct fq_lease_shm *L = fq__lease(q, g, m->seq);
    uint64_t w = fq__lw(m->seq, m->deliveries, (unsigned)q->member, FQ_L_LEASED);
    if (atomic_load_explicit(&L->l_w, FQ_ACQUIRE) != w)
        return FQ_ERR_LOST;
    /* Two steps, so no scan ever reads a not-before that is not final:
     * LEASED(me) -> RETRY(owner me: "nack in progress", skipped by scans),
     * store the not-before, then RETRY(me) -> RETRY(none) (release).  A
     * nacker killed in between leaves RETRY(me); recovery R4 finishes it. */
    uint64_t mine = fq__lw(m->seq, m->deliveries, (unsigned)q->member, FQ_L_RETRY);
    if (!atomic_compare_exchange_strong_explicit(&L->l_w, &w, mine, FQ_SEQCST, FQ_RELAXED))
        return FQ_ERR_LOST;
    atomic_fetch_add_explicit(&G->g_retry_pending, 1, FQ_SEQCST);
    uint64_t nb = (uint64_t)fq_now_ns() + delay_ns;
    atomic_store_explicit(&L->l_deadline_ns, nb, FQ_RELAXED);
    FQ_CRASHPOINT("cons.after_nack");
    atomic_store_explicit(&L->l_w, fq__lw(m->seq, m->deliveries, FQ_OWNER_NONE, FQ_L_RETRY), FQ_RELEASE);
    fq__deadline_insert(G, nb);
    atomic_fetch_add_explicit(&G->g_nacked, 1, FQ_RELAXED);
    fq__ec_notify(&q->ctrl->c_data_ec); /* waiters re-read g_next_deadline */
    return FQ_OK;
}

/* Renew a lease: deadline = now + ms.  Fails (FQ_ERR_LOST) if the lease is no
 * longer ours; checked again after the store, since an expiring taker may
 * have won meanwhile. */
int fq_extend(fq_queue *q, uint32_t g, const fq_msg *m, uint64_t ms)
{
    if (q->member < 0 || g >= q->max_groups)
        return FQ_ERR_INVAL;
    struct fq_lease_shm *L = fq__lease(q, g, m->seq);
    uint64_t w = fq__lw(m->seq, m->deliveries, (unsigned)q->member, FQ_L_LEASED);
    if (atomic_load_explicit(&L->l_w, FQ_ACQUIRE) != w)
        return FQ_ERR_LOST;
    uint64_t dl = (uint64_t)fq_now_ns() + ms * 1000000u;
    atomic_store_explicit(&L->l_deadline_ns, dl, FQ_SEQCST);
    if (atomic_load_explicit(&L->l_w, FQ_SEQCST) != w)
        return FQ_ERR_LOST;
    return FQ_OK;
}

/* Bind this handle's member to group g (its acks are then journaled and
 * counted per member for g).  Allowed when it is unbound, bound to a group
 * that was deleted meanwhile (its count goes with that group), or has not
 * acked anything yet; else it keeps its binding (returns 0). */
static int fq__member_bind(fq_queue *q, uint32_t g)
{
    struct fq_member_shm *m = &q->members[q->member];
    uint32_t cg = FQ_CFG_LOAD(m->m_group), cgen = FQ_CFG_LOAD(m->m_group_gen);
    uint32_t gen = atomic_load_explicit(&fq__group(q, g)->g_gen, FQ_ACQUIRE);
    if (cg == g && cgen == gen)
        return 1;
    int stale = cgen != 0 && (cg >= q->max_groups || cgen != atomic_load_explicit(&fq__group(q, cg)->g_gen, FQ_ACQUIRE));
    if (!(cgen == 0 || stale || (atomic_load_explicit(&m->m_ack_word, FQ_ACQUIRE) >> 1) == 0))
        return 0;
    atomic_store_explicit(&m->m_ack_word, 0, FQ_RELEASE);
    FQ_CFG_STORE(m->m_group, g);
    FQ_CFG_STORE(m->m_group_gen, gen);
    return 1;
}

int fq_member_group(fq_queue *q, uint32_t g)
{
    if (q->member < 0 || g >= q->max_groups)
        return FQ_ERR_INVAL;
    return fq__member_bind(q, g) ? FQ_OK : FQ_ERR_INVAL; /* its count belongs to a live other group */
}

/* A copy of an ACTIVE group's settings (validated sizes, NUL-terminated). */
int fq_group_info(fq_queue *q, uint32_t g, fq_group_cfg *out, char name[64], char dlq[64])
{
    if (g >= q->max_groups || q->member < 0)
        return FQ_ERR_INVAL;
    struct fq_group_shm *G = fq__group(q, g);
    if (!fq__admin_lock(q))
        return FQ_TIMEOUT;
    if (atomic_load_explicit(&G->g_state, FQ_ACQUIRE) != FQ_G_ACTIVE) {
        fq__admin_unlock(q);
        return FQ_ERR_NOENT;
    }
    memcpy(name, G->g_name, 63);
    name[63] = 0;
    memcpy(dlq, G->g_dlq, 63);
    dlq[63] = 0;
    memset(out, 0, sizeof *out);
    out->name = name;
    out->dlq = dlq;
    out->window = (uint32_t)fq__gw(q, g);
    out->max_deliveries = G->g_max_deliveries;
    out->visibility_ms = G->g_visibility_ms;
    out->start_seq = G->g_start_seq;
    memcpy(out->backoff, G->g_backoff, sizeof out->backoff);
    fq__admin_unlock(q);
    return FQ_OK;
}
