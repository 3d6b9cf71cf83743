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

/* Initialise FREE slot g as group c (admin mutex held) and publish it
 * ACTIVE.  clamp: a start offset below the oldest retained record starts
 * there instead of failing (a reset, validated before the slot was freed). */
static int fq__group_init(fq_queue *q, uint32_t g, const fq_group_cfg *c, uint32_t wlog, int clamp)
{
    int rc = FQ_OK;
    size_t nl = strlen(c->name), dl = c->dlq ? strlen(c->dlq) : 0;
    struct fq_group_shm *G = fq__group(q, g);
    /* FREE slot: nobody reads its config or window; reset them */
    for (uint64_t i = 0; i < q->window; i++) {
        struct fq_lease_shm *L = &q->windows[(uint64_t)g * q->window + i];
        atomic_store_explicit(&L->l_w, 0, FQ_RELAXED);
        atomic_store_explicit(&L->l_deadline_ns, 0, FQ_RELAXED);
    }
    /* pairs with the acquire fence of fq_group_info: a reader that sees any
     * byte written below also sees the slot FREE or its new generation */
    atomic_thread_fence(FQ_RELEASE);
    fq__name_store(G->g_name, sizeof G->g_name, c->name, nl);
    fq__name_store(G->g_dlq, sizeof G->g_dlq, c->dlq ? c->dlq : "", dl);
    FQ_CFG_STORE(G->g_flags, FQ_G_GATING);
    FQ_CFG_STORE(G->g_window_log2, wlog);
    FQ_CFG_STORE(G->g_max_deliveries, c->max_deliveries);
    FQ_CFG_STORE(G->g_visibility_ms, c->visibility_ms);
    for (int i = 0; i < 4; i++)
        FQ_CFG_STORE(G->g_backoff[i], c->backoff[i]);
    atomic_store_explicit(&G->g_acked, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_retry_pending, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_next_deadline, (uint64_t)INT64_MAX, FQ_RELAXED);
    atomic_store_explicit(&G->g_delivered, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_redelivered, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_expired, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_dead, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_nacked, 0, FQ_RELAXED);
    atomic_store_explicit(&G->g_skipped, 0, FQ_RELAXED);
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
            if (c->start == FQ_START_SEQ && !clamp) {
                atomic_store_explicit(&G->g_state, FQ_G_FREE, FQ_SEQCST);
                fq__set_err("start offset %llu is no longer in the ring (the oldest retained offset is %llu)",
                            (unsigned long long)c->start_seq, (unsigned long long)fs);
                rc = FQ_ERR_RANGE;
                goto out;
            }
            L = fs;
        }
        FQ_CFG_STORE(G->g_start_seq, L);
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
out:
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
    rc = fq__group_init(q, g, c, wlog, 0);
    if (rc != FQ_OK)
        goto out;
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
        atomic_thread_fence(FQ_RELEASE); /* before any later rewrite of the slot (fq_group_info) */
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

/* A copy of an ACTIVE group's settings, without a lock (monitoring reads
 * it while producers, consumers and admins run): a seqlock over g_gen and
 * g_state.  Read gen, then state (acquire: the config of that generation is
 * visible), copy, acquire fence, read state and gen again; a slot deleted or
 * re-created meanwhile changed one of them (creators store FREE, fence
 * (release), then rewrite).  Handles need not be members. */
int fq_group_info(fq_queue *q, uint32_t g, fq_group_cfg *out, char name[64], char dlq[64])
{
    if (g >= q->max_groups)
        return FQ_ERR_INVAL;
    struct fq_group_shm *G = fq__group(q, g);
    for (int tries = 0; tries < 1000; tries++) {
        uint32_t gen = atomic_load_explicit(&G->g_gen, FQ_ACQUIRE);
        if (atomic_load_explicit(&G->g_state, FQ_ACQUIRE) != FQ_G_ACTIVE)
            return FQ_ERR_NOENT;
        fq__name_load(name, G->g_name, 64);
        fq__name_load(dlq, G->g_dlq, 64);
        memset(out, 0, sizeof *out);
        out->name = name;
        out->dlq = dlq;
        out->window = (uint32_t)fq__gw(q, g);
        out->max_deliveries = FQ_CFG_LOAD(G->g_max_deliveries);
        out->visibility_ms = FQ_CFG_LOAD(G->g_visibility_ms);
        out->start_seq = FQ_CFG_LOAD(G->g_start_seq);
        for (int i = 0; i < 4; i++)
            out->backoff[i] = FQ_CFG_LOAD(G->g_backoff[i]);
        atomic_thread_fence(FQ_ACQUIRE);
        /* state with acquire: if it is already the ACTIVE of a re-creation,
         * that creation's g_gen bump (sequenced before it) is visible below */
        if (atomic_load_explicit(&G->g_state, FQ_ACQUIRE) == FQ_G_ACTIVE &&
            atomic_load_explicit(&G->g_gen, FQ_RELAXED) == gen)
            return FQ_OK;
    }
    return FQ_TIMEOUT; /* re-created a thousand times while we read: let the caller retry */
}

/* Live consumers bound to the current generation of group g, other than
 * this handle (a member whose process died is not counted). */
static uint32_t fq__live_consumers(fq_queue *q, uint32_t g)
{
    uint32_t n = 0, gen = atomic_load_explicit(&fq__group(q, g)->g_gen, FQ_ACQUIRE);
    for (uint32_t i = 0; i < q->max_members; i++) {
        struct fq_member_shm *m = &q->members[i];
        if ((int)i != q->member && atomic_load_explicit(&m->m_state, FQ_ACQUIRE) == FQ_M_ALIVE &&
            (FQ_CFG_LOAD(m->m_kind) & FQ_M_KIND_CONSUMER) && FQ_CFG_LOAD(m->m_group) == g &&
            FQ_CFG_LOAD(m->m_group_gen) == gen && fq_member_alive(q, i))
            n++;
    }
    return n;
}

/* Move group `name` to another start (earliest, latest, an offset), like
 * Kafka's --reset-offsets.  The group is re-created in its slot with the same
 * settings (a new generation): leases, retries and counters start afresh;
 * consumers still attached see the group as deleted (FastqError) and must
 * attach again.  Refused (FQ_ERR_BUSY, *live set) while consumers are alive
 * unless force.  The target is validated before the slot is freed; if the
 * oldest retained record moves past it meanwhile, the group starts there. */
int fq_group_reset(fq_queue *q, const char *name, uint32_t start, uint64_t start_seq, int force, uint32_t *live)
{
    *live = 0;
    if (q->member < 0 || start > FQ_START_SEQ)
        return FQ_ERR_INVAL;
    if (!fq__admin_lock(q)) {
        fq__set_err("the queue's group admin lock is held by a live process");
        return FQ_TIMEOUT;
    }
    uint32_t g;
    int rc = fq__group_find_locked(q, name, &g);
    if (rc != FQ_OK) {
        fq__set_err("no group named '%s'", name);
        goto out;
    }
    struct fq_group_shm *G = fq__group(q, g);
    *live = fq__live_consumers(q, g);
    if (*live && !force) {
        fq__set_err("group '%s' has %u live consumer(s): stop them first, or force", name, *live);
        rc = FQ_ERR_BUSY;
        goto out;
    }
    if (start == FQ_START_SEQ) {
        uint64_t fs = q->durable ? atomic_load_explicit(&q->store->st_retain_seq, FQ_SEQCST)
                                 : atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_SEQCST);
        uint64_t ts = fq_tail_seq(q);
        if ((int64_t)(start_seq - ts) > 0 || (int64_t)(start_seq - fs) < 0) {
            fq__set_err("offset %llu is outside the log (%llu .. %llu)", (unsigned long long)start_seq,
                        (unsigned long long)fs, (unsigned long long)ts);
            rc = FQ_ERR_RANGE;
            goto out;
        }
    }
    char nm[64], dq[64];
    fq__name_load(nm, G->g_name, sizeof nm);
    fq__name_load(dq, G->g_dlq, sizeof dq);
    fq_group_cfg c = {.name = nm, .dlq = dq, .max_deliveries = FQ_CFG_LOAD(G->g_max_deliveries),
                      .visibility_ms = FQ_CFG_LOAD(G->g_visibility_ms), .start = start, .start_seq = start_seq};
    for (int i = 0; i < 4; i++)
        c.backoff[i] = FQ_CFG_LOAD(G->g_backoff[i]);
    uint32_t wlog = FQ_CFG_LOAD(G->g_window_log2);
    atomic_store_explicit(&G->g_state, FQ_G_FREE, FQ_SEQCST);
    atomic_thread_fence(FQ_RELEASE);
    FQ_CRASHPOINT("admin.reset_freed");
    rc = fq__group_init(q, g, &c, wlog, 1);
    fq__member_bind(q, g); /* best effort, as at create: the resetting handle may consume */
    fq__ec_notify(&q->ctrl->c_space_ec); /* the floor may move (a group went forward) */
    fq__ec_notify(&q->ctrl->c_data_ec);  /* consumers re-check their group */
out:
    fq__admin_unlock(q);
    return rc;
}

/* A lock-free copy of member slot i (FQ_ERR_NOENT: free).  `alive` probes
 * the slot's lock: 0 when its process died and recovery has not run yet. */
int fq_member_peek(fq_queue *q, uint32_t i, fq_member_info *out)
{
    memset(out, 0, sizeof *out);
    if (i >= q->max_members)
        return FQ_ERR_INVAL;
    struct fq_member_shm *m = &q->members[i];
    if (atomic_load_explicit(&m->m_state, FQ_ACQUIRE) != FQ_M_ALIVE)
        return FQ_ERR_NOENT;
    out->pid = FQ_CFG_LOAD(m->m_pid);
    out->kind = FQ_CFG_LOAD(m->m_kind);
    out->started_ns = FQ_CFG_LOAD(m->m_started_ns);
    fq__name_load(out->name, m->m_name, sizeof out->name);
    out->group = FQ_CFG_LOAD(m->m_group);
    uint32_t gen = FQ_CFG_LOAD(m->m_group_gen);
    out->bound = gen != 0 && out->group < q->max_groups &&
                 gen == atomic_load_explicit(&fq__group(q, out->group)->g_gen, FQ_RELAXED) &&
                 atomic_load_explicit(&fq__group(q, out->group)->g_state, FQ_RELAXED) == FQ_G_ACTIVE;
    out->heartbeat_ns = (int64_t)atomic_load_explicit(&m->m_heartbeat_ns, FQ_RELAXED);
    out->puts = atomic_load_explicit(&m->m_puts, FQ_RELAXED);
    out->gets = atomic_load_explicit(&m->m_gets, FQ_RELAXED);
    out->acked = atomic_load_explicit(&m->m_ack_word, FQ_RELAXED) >> 1;
    out->alive = fq__probe_lock(q, i) != 0;
    /* the slot was left and re-joined while we read: report it free */
    if (atomic_load_explicit(&m->m_state, FQ_ACQUIRE) != FQ_M_ALIVE || FQ_CFG_LOAD(m->m_pid) != out->pid)
        return FQ_ERR_NOENT;
    return FQ_OK;
}

/* Label this handle's member slot (shown by `fastq stat`). */
void fq_member_set_name(fq_queue *q, const char *name)
{
    if (q->member >= 0)
        fq__name_store(q->members[q->member].m_name, sizeof q->members[q->member].m_name, name,
                       strnlen(name, sizeof q->members[q->member].m_name - 1));
}

/* Is record seq finished in group g (acked, dead-lettered or skipped)?  A
 * lock-free read for monitoring: below the low-watermark, or its lease entry
 * in the window says so. */
int fq_finished(fq_queue *q, uint32_t g, uint64_t seq)
{
    if (g >= q->max_groups)
        return 0;
    uint64_t low = atomic_load_explicit(&fq__group(q, g)->g_low, FQ_ACQUIRE);
    if ((int64_t)(seq - low) < 0)
        return 1;
    if (seq - low >= fq__gw(q, g))
        return 0;
    uint64_t w = atomic_load_explicit(&fq__lease(q, g, seq)->l_w, FQ_ACQUIRE);
    return fq__lw_is(w, seq) && fq__lst_terminal(fq__lw_st(w));
}

/* The state of record seq in group g (lock-free, monitoring): FQ_L_* of
 * its window entry (FRESH if the entry is of another lap), FQ_L_ACKED for
 * every seq below the low-watermark (finished: acked, dead or skipped),
 * -1 beyond the window (not dispatched yet).  *deliveries: of the entry. */
int fq_lease_state(fq_queue *q, uint32_t g, uint64_t seq, uint32_t *deliveries)
{
    *deliveries = 0;
    if (g >= q->max_groups)
        return -1;
    uint64_t low = atomic_load_explicit(&fq__group(q, g)->g_low, FQ_ACQUIRE);
    if ((int64_t)(seq - low) < 0)
        return FQ_L_ACKED;
    if (seq - low >= fq__gw(q, g))
        return -1;
    uint64_t w = atomic_load_explicit(&fq__lease(q, g, seq)->l_w, FQ_ACQUIRE);
    if (!fq__lw_is(w, seq))
        return fq__lw_newer(w, seq) ? FQ_L_ACKED : FQ_L_FRESH;
    *deliveries = fq__lw_deliv(w);
    return (int)fq__lw_st(w);
}

/* Leases member `id` holds in group g now (lock-free, for monitoring). */
uint32_t fq_leases_held(fq_queue *q, uint32_t g, uint32_t id)
{
    if (g >= q->max_groups)
        return 0;
    uint64_t W = fq__gw(q, g), low = atomic_load_explicit(&fq__group(q, g)->g_low, FQ_ACQUIRE), n = 0;
    for (uint64_t s = low; s - low < W; s++) {
        uint64_t w = atomic_load_explicit(&fq__lease(q, g, s)->l_w, FQ_RELAXED);
        if (fq__lw_is(w, s) && fq__lw_st(w) == FQ_L_LEASED && fq__lw_owner(w) == id)
            n++;
    }
    return (uint32_t)n;
}
