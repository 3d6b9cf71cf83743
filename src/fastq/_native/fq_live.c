/*
 * fq_live.c — members, liveness by OFD locks, and recovery of dead members.
 *
 * Liveness (iceoryx2 model): member i is alive while some open file
 * description holds the OFD write lock on byte FQ_LOCK_BASE + i of the queue
 * file.  The kernel drops the lock when the last descriptor of that open file
 * description closes — on exit, kill -9, segfault, anything.  Probes use the
 * handle's main descriptor, which never holds a lock (F_OFD_GETLK through an
 * open file description that holds the lock itself would report it free).
 *
 * Recovery (R1..R5 in docs/protocol.md) runs under the recovery mutex
 * c_recovery_owner (member id + 1; taken over when its holder is dead), so
 * two recoverers never write the same descriptor; every step is idempotent,
 * so a recoverer killed half-way is simply redone by the next one.
 *   R1  mark dead members RECOVERING (their intents stop counting as live).
 *   R1b resolve a dead member's dedup entry and bucket lock (fq_dedup.c),
 *       before R2/R3 below may abort any of its claims.
 *   R2  turn dead claims into gaps: for s in [floor, tail) with d_cw not
 *       showing s (claimed, never published) and no ALIVE member's intent
 *       covering s, re-read d_cw after collecting the intents; still stale
 *       => the claimant is dead (a live claimant keeps its intent until its
 *       P2 stores are visible, P3).  A run of such seqs [s, u) becomes one
 *       gap from ext_end(s-1) to ext_start(u) (or the tail position when u is
 *       the tail); the first seq gets the whole extent, the rest length 0.
 *       The floor moves while we scan: a descriptor showing a NEWER seq than
 *       s means s was finished and its slot recycled, never a dead claim
 *       (found by the ASan stress run: treating it as one aborted a live
 *       record of the next lap).
 *   R3  WRITING descriptors whose producer is dead become ABORTED (their
 *       extent is already recorded).  Stores d_cw with release.
 *   R4  leases held by dead members go back to their group: LEASED -> RETRY
 *       (not-before = now, deliveries kept), g_retry_pending counted first.
 *   R5  waiter counts the member held are subtracted (saturating); then the
 *       slot is FREE again and its lock byte reusable.
 * A live but stopped (SIGSTOP) process keeps its lock: it is never
 * force-unblocked, its claims hold dispatch (surfaced by stats).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fq_pvt.h"

static void fq__flock_byte(struct flock *fl, uint32_t id, short type)
{
    memset(fl, 0, sizeof *fl);
    fl->l_type = type;
    fl->l_whence = SEEK_SET;
    fl->l_start = FQ_LOCK_BASE + (off_t)id;
    fl->l_len = 1;
}

static int fq__lock_byte(int fd, uint32_t id, short type)
{
    struct flock fl;
    fq__flock_byte(&fl, id, type);
    return fcntl(fd, F_OFD_SETLK, &fl);
}

/* 1 = held (alive), 0 = free (dead), -1 = probe failed (treated as alive). */
int fq__probe_lock(fq_queue *q, uint32_t id)
{
    struct flock fl;
    fq__flock_byte(&fl, id, F_WRLCK);
    if (fcntl(q->fd, F_OFD_GETLK, &fl) != 0)
        return -1;
    return fl.l_type != F_UNLCK;
}

int fq_member_alive(fq_queue *q, uint32_t id)
{
    if (id >= q->max_members)
        return 0;
    if (atomic_load_explicit(&q->members[id].m_state, FQ_ACQUIRE) == FQ_M_FREE)
        return 0;
    return fq__probe_lock(q, id) != 0;
}

int fq__open_lock_fd(fq_queue *q)
{
    /* /proc/self/fd/N opens a NEW open file description of the very inode
     * we mapped (for a memfd, and for a named file even if its name was
     * unlinked and reused meanwhile): our lock must sit on that inode. */
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", q->fd);
    return open(p, O_RDWR | O_CLOEXEC);
}

int fq_join(fq_queue *q, uint32_t kind)
{
    if (q->member >= 0)
        return FQ_OK;
    if (q->lock_fd < 0) {
        q->lock_fd = fq__open_lock_fd(q);
        if (q->lock_fd < 0)
            return FQ_ERR_SYS;
    }
    for (uint32_t i = 0; i < q->max_members; i++) {
        struct fq_member_shm *m = &q->members[i];
        if (atomic_load_explicit(&m->m_state, FQ_ACQUIRE) != FQ_M_FREE)
            continue;
        /* Lock first: while we hold byte i no other joiner can use slot i,
         * and a scanner never mistakes us for a dead member (state FREE). */
        if (fq__lock_byte(q->lock_fd, i, F_WRLCK) != 0)
            continue;
        if (atomic_load_explicit(&m->m_state, FQ_ACQUIRE) != FQ_M_FREE) {
            fq__lock_byte(q->lock_fd, i, F_UNLCK);
            continue;
        }
        /* relaxed atomics: fq_member_peek reads these without a lock */
        FQ_CFG_STORE(m->m_kind, kind);
        FQ_CFG_STORE(m->m_pid, (int32_t)getpid());
        FQ_CFG_STORE(m->m_started_ns, fq_realtime_ns());
        fq__name_store(m->m_name, sizeof m->m_name, "", 0);
        atomic_store_explicit(&m->m_intent, 0, FQ_RELAXED);
        atomic_store_explicit(&m->m_waiting, 0, FQ_RELAXED);
        atomic_store_explicit(&m->m_ack_word, 0, FQ_RELAXED);
        atomic_store_explicit(&m->m_ack_seq, 0, FQ_RELAXED);
        atomic_store_explicit(&m->m_dedup_lock, 0, FQ_RELAXED);
        atomic_store_explicit(&m->m_dedup_entry, 0, FQ_RELAXED);
        atomic_store_explicit(&m->m_puts, 0, FQ_RELAXED); /* counters of this membership only */
        atomic_store_explicit(&m->m_gets, 0, FQ_RELAXED);
        FQ_CFG_STORE(m->m_group, 0);
        FQ_CFG_STORE(m->m_group_gen, 0); /* not bound to a group generation (fq_member_group binds) */
        atomic_store_explicit(&m->m_heartbeat_ns, (uint64_t)fq_now_ns(), FQ_RELAXED);
        uint32_t exp = FQ_M_FREE;
        if (!atomic_compare_exchange_strong_explicit(&m->m_state, &exp, FQ_M_ALIVE, FQ_ACQREL, FQ_ACQUIRE)) {
            fq__lock_byte(q->lock_fd, i, F_UNLCK);
            continue;
        }
        uint32_t hwm = atomic_load_explicit(&q->ctrl->c_member_hwm, FQ_RELAXED);
        while (hwm < i + 1 && !atomic_compare_exchange_weak_explicit(&q->ctrl->c_member_hwm, &hwm, i + 1,
                                                                     FQ_RELEASE, FQ_RELAXED))
            ;
        q->member = (int)i;
        q->pid = getpid();
        return FQ_OK;
    }
    close(q->lock_fd);
    q->lock_fd = -1;
    return FQ_ERR_MEMBERS;
}

/* R4 for one member: its leases in every active group go back (RETRY). */
static uint32_t fq__return_leases(fq_queue *q, uint32_t id)
{
    uint32_t returned = 0;
    uint64_t ts = fq_tail_seq(q);
    int64_t now = fq_now_ns();
    for (uint32_t g = 0; g < q->max_groups; g++) {
        struct fq_group_shm *G = fq__group(q, g);
        if (atomic_load_explicit(&G->g_state, FQ_ACQUIRE) != FQ_G_ACTIVE)
            continue;
        uint64_t low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE), W = fq__gw(q, g);
        for (uint64_t s = low; (int64_t)(ts - s) > 0 && s - low < W; s++) {
            struct fq_lease_shm *L = fq__lease(q, g, s);
            uint64_t w = atomic_load_explicit(&L->l_w, FQ_ACQUIRE);
            /* LEASED by it, or RETRY(it) = a nack it did not finish */
            if (!fq__lw_is(w, s) || (fq__lw_st(w) != FQ_L_LEASED && fq__lw_st(w) != FQ_L_RETRY) ||
                fq__lw_owner(w) != id)
                continue;
            int was_retry = fq__lw_st(w) == FQ_L_RETRY;
            atomic_store_explicit(&L->l_deadline_ns, (uint64_t)now, FQ_RELAXED);
            if (!was_retry)
                atomic_fetch_add_explicit(&G->g_retry_pending, 1, FQ_SEQCST);
            if (atomic_compare_exchange_strong_explicit(&L->l_w, &w,
                                                        fq__lw(s, fq__lw_deliv(w), FQ_OWNER_NONE, FQ_L_RETRY),
                                                        FQ_ACQREL, FQ_RELAXED)) {
                fq__deadline_insert(G, (uint64_t)now); /* takers scan for it now */
                returned++;
                FQ_CRASHPOINT("rec.mid_leases");
            } else if (!was_retry) {
                atomic_fetch_sub_explicit(&G->g_retry_pending, 1, FQ_SEQCST);
            }
        }
    }
    return returned;
}

/* Move a member's ack count to its group (the member is dead or leaving).
 * A pending journal entry counts iff its lease shows ACKED by this member. */
static void fq__retire_acks(fq_queue *q, uint32_t id)
{
    struct fq_member_shm *m = &q->members[id];
    uint64_t word = atomic_load_explicit(&m->m_ack_word, FQ_ACQUIRE);
    uint64_t count = word >> 1;
    uint32_t g = FQ_CFG_LOAD(m->m_group);
    if (g >= q->max_groups || FQ_CFG_LOAD(m->m_group_gen) != atomic_load_explicit(&fq__group(q, g)->g_gen, FQ_ACQUIRE)) {
        atomic_store_explicit(&m->m_ack_word, 0, FQ_RELEASE); /* its group is gone */
        return;
    }
    if (word & 1u) {
        uint64_t seq = atomic_load_explicit(&m->m_ack_seq, FQ_RELAXED);
        uint64_t w = atomic_load_explicit(&fq__lease(q, g, seq)->l_w, FQ_ACQUIRE);
        if (fq__lw_is(w, seq) && (fq__lw_st(w) == FQ_L_ACKED || fq__lw_st(w) == FQ_L_DEAD) &&
            fq__lw_owner(w) == id)
            count++;
    }
    atomic_fetch_add_explicit(&fq__group(q, g)->g_acked, count, FQ_SEQCST);
    atomic_store_explicit(&m->m_ack_word, 0, FQ_RELEASE);
}

void fq_leave(fq_queue *q)
{
    if (q->member < 0)
        return;
    if (q->pid == getpid()) {
        struct fq_member_shm *m = &q->members[q->member];
        uint32_t returned = fq__return_leases(q, (uint32_t)q->member);
        fq__retire_acks(q, (uint32_t)q->member);
        fq__dedup_recover_member(q, (uint32_t)q->member); /* an entry left CLAIMING (never by fastq._core) */
        atomic_store_explicit(&m->m_intent, 0, FQ_RELAXED);
        atomic_store_explicit(&m->m_state, FQ_M_FREE, FQ_RELEASE); /* FREE before unlock: see fq_join */
        if (returned)
            fq__ec_notify(&q->ctrl->c_data_ec);
        if (q->lock_fd >= 0)
            fq__lock_byte(q->lock_fd, (uint32_t)q->member, F_UNLCK);
    }
    q->member = -1;
}

int fq_after_fork_child(fq_queue *q)
{
    /* The child shares the parent's open file descriptions: closing our copy
     * of the lock descriptor leaves the parent's lock in place (and, if the
     * parent dies, lets the kernel release it).  The child joins afresh. */
    if (q->lock_fd >= 0)
        close(q->lock_fd);
    q->lock_fd = -1;
    q->member = -1;
    q->pid = getpid();
    return FQ_OK;
}

/* ---- recovery mutex ---- */
static int fq__recovery_lock(fq_queue *q)
{
    if (q->member < 0)
        return 0;
    uint32_t me = (uint32_t)q->member + 1;
    uint32_t cur = atomic_load_explicit(&q->ctrl->c_recovery_owner, FQ_ACQUIRE);
    for (;;) {
        if (cur == me)
            return 0; /* another thread of this handle recovers (e.g. a flusher without the GIL): never twice at once */
        /* Held: take over only if the holder is dead (or the id is garbage). */
        if (cur != 0 && cur - 1 < q->max_members && fq__probe_lock(q, cur - 1) != 0)
            return 0;
        if (atomic_compare_exchange_weak_explicit(&q->ctrl->c_recovery_owner, &cur, me, FQ_SEQCST, FQ_ACQUIRE))
            break;
    }
    /* diagnostic: how many times recovery ran */
    atomic_fetch_add_explicit(&q->ctrl->c_recovery_gen, 1, FQ_SEQCST);
    return 1;
}

static void fq__recovery_unlock(fq_queue *q)
{
    atomic_store_explicit(&q->ctrl->c_recovery_owner, 0, FQ_RELEASE);
}

struct fq__intent_rng {
    uint64_t seq;
    uint32_t n;
};

static int fq__covered(const struct fq__intent_rng *r, uint32_t nr, uint64_t s)
{
    for (uint32_t i = 0; i < nr; i++)
        if (s - r[i].seq < r[i].n)
            return 1;
    return 0;
}

/* c_aborted journal (fq_layout.h): only the recovery-mutex holder writes. */
static uint64_t fq__journal_begin(fq_queue *q, uint64_t seq, uint64_t len)
{
    uint64_t word = atomic_load_explicit(&q->ctrl->c_aborted, FQ_ACQUIRE) & ~(uint64_t)1;
    atomic_store_explicit(&q->ctrl->c_abort_seq, seq, FQ_RELAXED);
    atomic_store_explicit(&q->ctrl->c_abort_len, len, FQ_RELAXED);
    atomic_store_explicit(&q->ctrl->c_aborted, word | 1u, FQ_RELEASE);
    return word;
}

static void fq__journal_end(fq_queue *q, uint64_t word, uint64_t n)
{
    atomic_store_explicit(&q->ctrl->c_aborted, word + (n << 1), FQ_SEQCST);
}

/* A recoverer died with the journal open: count what it finished (every seq
 * of its run that already shows ABORTED; seqs still unpublished are found
 * again by the abort pass and become gaps of their own, zero-length at the
 * end of the extent the first one took). */
static void fq__journal_recover(fq_queue *q)
{
    uint64_t word = atomic_load_explicit(&q->ctrl->c_aborted, FQ_ACQUIRE);
    if (!(word & 1u))
        return;
    uint64_t seq = atomic_load_explicit(&q->ctrl->c_abort_seq, FQ_RELAXED);
    uint64_t len = atomic_load_explicit(&q->ctrl->c_abort_len, FQ_RELAXED);
    uint64_t n = len ? len : 1, done = 0;
    if (n > q->n_desc)
        n = 0; /* garbage: count nothing rather than trust it */
    for (uint64_t v = seq; v - seq < n; v++) {
        uint64_t cw = atomic_load_explicit(&fq__desc(q, v)->d_cw, FQ_ACQUIRE);
        if (fq__cw_published(cw, v) && fq__cw_st(cw) == FQ_D_ABORTED)
            done++;
    }
    fq__journal_end(q, word & ~(uint64_t)1, done);
}

static void fq__set_gap(fq_queue *q, uint64_t s, uint64_t cw_old, uint64_t start, uint64_t len)
{
    struct fq_desc_shm *d = fq__desc(q, s);
    atomic_store_explicit(&d->d_ext_start, start, FQ_RELAXED);
    atomic_store_explicit(&d->d_ext_len, (uint32_t)len, FQ_RELAXED);
    atomic_store_explicit(&d->d_frame_off, 0, FQ_RELAXED);
    atomic_store_explicit(&d->d_frame_len, 0, FQ_RELAXED);
    atomic_store_explicit(&d->d_producer, FQ_D_NO_PRODUCER, FQ_RELAXED);
    /* R3-style publication (release): takers see the extent with the state. */
    atomic_compare_exchange_strong_explicit(&d->d_cw, &cw_old, fq__cw(s, FQ_D_ABORTED), FQ_RELEASE, FQ_RELAXED);
}

/* R2 + R3.  Caller holds the recovery mutex.  Returns records aborted. */
static uint64_t fq__abort_dead_claims(fq_queue *q)
{
    uint64_t t = atomic_load_explicit(&q->ctrl->c_tail, FQ_ACQUIRE);
    uint64_t fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
    uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    uint64_t ts = fq__tail_seq(t, fs), tp = fq__tail_pos(t, fp);
    if ((int64_t)(ts - fs) < 0 || (int64_t)(tp - fp) < 0 || ts - fs > q->n_desc)
        return 0;
    /* Collect live intents AFTER loading the tail (see R2). */
    struct fq__intent_rng *live = calloc(q->max_members, sizeof *live);
    if (!live)
        return 0;
    uint32_t nl = 0;
    for (uint32_t i = 0; i < q->max_members; i++) {
        struct fq_member_shm *m = &q->members[i];
        if (atomic_load_explicit(&m->m_state, FQ_ACQUIRE) != FQ_M_ALIVE)
            continue;
        uint64_t it = atomic_load_explicit(&m->m_intent, FQ_ACQUIRE);
        if (!(it & 1u))
            continue;
        live[nl].seq = fs + (uint64_t)(int64_t)(int32_t)((uint32_t)(it >> 32) - (uint32_t)fs);
        live[nl].n = (uint32_t)((it >> 1) & 0x7FFFFFFFu);
        nl++;
    }
    uint64_t aborted = 0;
    uint64_t s = fs;
    while ((int64_t)(ts - s) > 0) {
        struct fq_desc_shm *d = fq__desc(q, s);
        uint64_t cw = atomic_load_explicit(&d->d_cw, FQ_ACQUIRE);
        if (fq__cw_published(cw, s)) {
            if (fq__cw_st(cw) == FQ_D_WRITING) { /* R3 */
                uint32_t prod = atomic_load_explicit(&d->d_producer, FQ_RELAXED);
                uint32_t pst = prod < q->max_members
                                   ? atomic_load_explicit(&q->members[prod].m_state, FQ_ACQUIRE)
                                   : FQ_M_FREE;
                if (pst != FQ_M_ALIVE) {
                    uint64_t word = fq__journal_begin(q, s, 0);
                    int gap_ok = 1;
                    if (q->durable) { /* S5: the segment must say "gap" before the floor may pass it */
                        uint64_t es = atomic_load_explicit(&d->d_ext_start, FQ_RELAXED);
                        uint32_t el = atomic_load_explicit(&d->d_ext_len, FQ_RELAXED);
                        gap_ok = el <= q->cap && fq__store_gap(q, s, 1, es, es + el) == FQ_OK;
                    }
                    if (gap_ok && atomic_compare_exchange_strong_explicit(&d->d_cw, &cw, fq__cw(s, FQ_D_ABORTED),
                                                                FQ_RELEASE, FQ_RELAXED)) {
                        fq__journal_end(q, word, 1);
                        aborted++;
                    } else {
                        fq__journal_end(q, word, 0);
                    }
                }
            }
            s++;
            continue;
        }
        /* A newer lap's tag: s was finished and its slot recycled after we
         * loaded the floor (it moves under us).  Never "dead". */
        if ((int64_t)(fq__cw_seq(cw) - (s & FQ_SEQ_MASK)) > 0) {
            s++;
            continue;
        }
        /* unpublished */
        if (fq__covered(live, nl, s)) {
            s++;
            continue;
        }
        cw = atomic_load_explicit(&d->d_cw, FQ_ACQUIRE);
        if (fq__cw_published(cw, s) || (int64_t)(fq__cw_seq(cw) - (s & FQ_SEQ_MASK)) > 0)
            continue; /* published (or finished and recycled) meanwhile: look again */
        /* dead run [s, u) */
        uint64_t start;
        if (s == q->base_seq) {
            start = q->base_pos;
        } else {
            int ok;
            start = fq__pos_after(q, s - 1, &ok);
            if (!ok)
                break;
        }
        uint64_t u = s + 1, end;
        int give_up = 0;
        while ((int64_t)(ts - u) > 0) {
            uint64_t cu = atomic_load_explicit(&fq__desc(q, u)->d_cw, FQ_ACQUIRE);
            if (fq__cw_published(cu, u))
                break;
            if (fq__covered(live, nl, u)) {
                give_up = 1; /* a live claim inside: its start is unknown yet */
                break;
            }
            u++;
        }
        if (give_up)
            break;
        if (u == ts)
            end = tp; /* the claim word at seq ts has exactly this position */
        else
            end = atomic_load_explicit(&fq__desc(q, u)->d_ext_start, FQ_RELAXED);
        if ((int64_t)(end - start) < 0 || end - start > (q->durable ? q->span : q->cap))
            break; /* inconsistent: leave it for a later scan */
        uint64_t word = fq__journal_begin(q, s, u - s);
        FQ_CRASHPOINT("rec.before_gap");
        if (q->durable && fq__store_gap(q, s, u - s, start, end) != FQ_OK) { /* S5 */
            fq__journal_end(q, word, 0);
            break; /* the segment could not say "gap": leave the claim for a later scan */
        }
        fq__set_gap(q, s, cw, start, end - start);
        for (uint64_t v = s + 1; v != u; v++)
            fq__set_gap(q, v, atomic_load_explicit(&fq__desc(q, v)->d_cw, FQ_ACQUIRE), end, 0);
        fq__journal_end(q, word, u - s);
        aborted += u - s;
        s = u;
    }
    free(live);
    return aborted;
}

static void fq__uncount_waiters(fq_queue *q, struct fq_member_shm *m)
{
    uint32_t w = atomic_exchange_explicit(&m->m_waiting, 0, FQ_ACQREL);
    for (uint32_t i = 0; i < (w & 0x3FFu); i++)
        fq__ec_uncount(&q->ctrl->c_data_ec);
    for (uint32_t i = 0; i < ((w >> 10) & 0x3FFu); i++)
        fq__ec_uncount(&q->ctrl->c_space_ec);
    for (uint32_t i = 0; i < ((w >> 20) & 0x3FFu); i++)
        fq__ec_uncount(&q->ctrl->c_done_ec);
}

int fq_maintain(fq_queue *q, int force)
{
    if (q->member < 0)
        return 0;
    int64_t now = fq_now_ns();
    uint64_t last = atomic_load_explicit(&q->ctrl->c_last_scan_ns, FQ_RELAXED);
    if (!force && (int64_t)((uint64_t)now - last) < 20000000)
        return 0;
    if (!atomic_compare_exchange_strong_explicit(&q->ctrl->c_last_scan_ns, &last, (uint64_t)now, FQ_RELAXED,
                                                 FQ_RELAXED) &&
        !force)
        return 0;
    atomic_store_explicit(&q->members[q->member].m_heartbeat_ns, (uint64_t)now, FQ_RELAXED);
    if (!fq__recovery_lock(q))
        return 0;
    fq__journal_recover(q);
    /* R1 */
    uint32_t ndead = 0;
    for (uint32_t i = 0; i < q->max_members; i++) {
        if ((int)i == q->member)
            continue;
        struct fq_member_shm *m = &q->members[i];
        uint32_t st = atomic_load_explicit(&m->m_state, FQ_ACQUIRE);
        if (st == FQ_M_FREE || fq__probe_lock(q, i) != 0)
            continue;
        if (st == FQ_M_ALIVE &&
            !atomic_compare_exchange_strong_explicit(&m->m_state, &st, FQ_M_RECOVERING, FQ_ACQREL, FQ_ACQUIRE))
            continue;
        /* ABA: between our load of ALIVE and the probe, the member may have
         * left (FREE, unlocked: the probe saw "dead") and a new process
         * joined the slot (locked first, then FREE -> ALIVE): our CAS then
         * hit a live member.  A joiner holds the byte before it is ALIVE,
         * so a second probe after the CAS catches it (found by review: the
         * live member's dedup key was resolved under it).  Once the state
         * is RECOVERING no joiner can take the slot (it needs FREE). */
        if (fq__probe_lock(q, i) != 0) {
            uint32_t rec = FQ_M_RECOVERING;
            atomic_compare_exchange_strong_explicit(&m->m_state, &rec, FQ_M_ALIVE, FQ_ACQREL, FQ_ACQUIRE);
            continue;
        }
        if (atomic_load_explicit(&m->m_state, FQ_ACQUIRE) != FQ_M_RECOVERING)
            continue; /* it left meanwhile (fq_leave stores FREE): nothing of it to recover */
        /* R1b: before R2/R3 may abort its claims, its dedup entry is resolved
         * from the state of its record (fq_dedup.c) */
        fq__dedup_recover_member(q, i);
        FQ_CRASHPOINT("rec.after_dedup");
        ndead++;
    }
    /* R2/R3 run even without new deaths: a previous recoverer may have died. */
    uint64_t aborted = fq__abort_dead_claims(q);
    uint32_t returned = 0, recovered = 0;
    for (uint32_t i = 0; i < q->max_members && ndead; i++) {
        struct fq_member_shm *m = &q->members[i];
        if (atomic_load_explicit(&m->m_state, FQ_ACQUIRE) != FQ_M_RECOVERING || fq__probe_lock(q, i) != 0)
            continue;
        returned += fq__return_leases(q, i); /* R4 */
        if (q->durable) { /* a flush lock the dead member held (S6) */
            uint32_t own = i + 1;
            if (atomic_compare_exchange_strong_explicit(&q->store->st_flush_owner, &own, 0, FQ_RELEASE, FQ_RELAXED))
                fq__ec_wake_all(&q->ctrl->c_durable_ec);
        }
        fq__uncount_waiters(q, m);           /* R5 */
        fq__retire_acks(q, i);               /* R5: counts survive the member */
        FQ_CRASHPOINT("rec.after_retire");
        atomic_store_explicit(&m->m_intent, 0, FQ_RELAXED);
        FQ_CRASHPOINT("rec.before_free");
        atomic_store_explicit(&m->m_state, FQ_M_FREE, FQ_RELEASE);
        recovered++;
    }
    fq__recovery_unlock(q);
    if (recovered)
        atomic_fetch_add_explicit(&q->ctrl->c_recovered, recovered, FQ_RELAXED);
    if (aborted || returned) {
        fq__ec_notify(&q->ctrl->c_data_ec);
        fq__ec_notify(&q->ctrl->c_space_ec);
        fq__ec_notify(&q->ctrl->c_done_ec);
    }
    return (int)recovered;
}
