/*
 * fq_wait.c — blocking: eventcounts on shared futexes, spin then park.
 *
 * Eventcount (folly EventCount layout), one 64-bit atomic in shared memory:
 *
 *     63            32 31             0
 *     +---------------+----------------+
 *     | epoch (futex) | waiters        |
 *     +---------------+----------------+
 *
 * E1  waiter: fetch_add(+1 waiter) (seq_cst) returns the epoch key; then it
 *     re-checks its condition (seq_cst loads), then FUTEX_WAIT on the epoch
 *     half while it still equals the key.
 * E2  notifier: after its seq_cst store/RMW that makes the condition true, a
 *     seq_cst load of the word; only if waiters != 0: fetch_add(+1 epoch) and
 *     FUTEX_WAKE(all).  Either the notifier sees the waiter (E2 load after
 *     E1 in the single total order) or the waiter's re-check sees the
 *     condition: no lost wake-up (Dekker through seq_cst).
 *
 * The futex is only a wake-up hint: correctness never depends on it (TSan
 * does not see futexes).  Waits are bounded (the caller passes an absolute
 * CLOCK_MONOTONIC deadline; the Python layer slices waits to <= 100 ms so
 * signals, liveness scans and dead wakers are handled).  Shared futexes: no
 * FUTEX_PRIVATE_FLAG (other processes map the same page).  A waiter killed
 * while counted leaves `waiters` inflated (extra syscalls only); its member
 * slot counts how many it held (m_waiting) and recovery subtracts them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "fq_pvt.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fastq's eventcount layout assumes little-endian (epoch = high half at byte offset 4)"
#endif

/* Test hook: a process-local offset added to fq_now_ns (lease deadlines,
 * nack delays, expiry), so property tests can make time pass without
 * sleeping.  Never set outside tests; waits subtract it again when they
 * hand an absolute deadline to the kernel. */
int64_t fq_clock_skew_ns = 0;

int64_t fq_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + __atomic_load_n(&fq_clock_skew_ns, __ATOMIC_RELAXED);
}

int64_t fq_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint32_t *fq__ec_word(_Atomic uint64_t *ec) { return (uint32_t *)(void *)ec + 1; }

void fq__ec_wake(_Atomic uint64_t *ec)
{
    uint64_t old = atomic_fetch_add_explicit(ec, (uint64_t)1 << 32, FQ_SEQCST);
    if ((uint32_t)old != 0)
        syscall(SYS_futex, fq__ec_word(ec), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Saturating decrement of the waiter count (recovery of a dead waiter). */
void fq__ec_uncount(_Atomic uint64_t *ec)
{
    uint64_t v = atomic_load_explicit(ec, FQ_RELAXED);
    while ((uint32_t)v != 0 && !atomic_compare_exchange_weak_explicit(ec, &v, v - 1, FQ_SEQCST, FQ_RELAXED))
        ;
}

/* m_waiting holds three 10-bit counters: data (bits 0-9), space (10-19),
 * done (20-29): how many times this member is counted in each eventcount. */
static inline unsigned fq__wait_shift(unsigned which) { return which == FQ_W_DATA ? 0 : which == FQ_W_SPACE ? 10 : 20; }

static uint32_t fq__ec_prepare(fq_queue *q, _Atomic uint64_t *ec, unsigned which)
{
    if (q->member >= 0)
        atomic_fetch_add_explicit(&q->members[q->member].m_waiting, 1u << fq__wait_shift(which), FQ_RELAXED);
    uint64_t old = atomic_fetch_add_explicit(ec, 1, FQ_SEQCST); /* E1 */
    return (uint32_t)(old >> 32);
}

static void fq__ec_cancel(fq_queue *q, _Atomic uint64_t *ec, unsigned which)
{
    atomic_fetch_sub_explicit(ec, 1, FQ_SEQCST);
    if (q->member >= 0)
        atomic_fetch_sub_explicit(&q->members[q->member].m_waiting, 1u << fq__wait_shift(which), FQ_RELAXED);
}

/* Bump the epoch and wake every parked thread, counted or not (the flush
 * leader: its followers do not count themselves, a flush is rare). */
void fq__ec_wake_all(_Atomic uint64_t *ec)
{
    atomic_fetch_add_explicit(ec, (uint64_t)1 << 32, FQ_SEQCST);
    syscall(SYS_futex, fq__ec_word(ec), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void fq__ec_park(_Atomic uint64_t *ec, uint32_t key, int64_t deadline_ns)
{
    if (deadline_ns <= fq_now_ns())
        return;
    deadline_ns -= __atomic_load_n(&fq_clock_skew_ns, __ATOMIC_RELAXED); /* kernel time */
    struct timespec abs = {.tv_sec = deadline_ns / 1000000000, .tv_nsec = deadline_ns % 1000000000};
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline; EINTR,
     * EAGAIN (epoch already moved) and ETIMEDOUT all just return. */
    syscall(SYS_futex, fq__ec_word(ec), FUTEX_WAIT_BITSET, key, &abs, NULL, FUTEX_BITSET_MATCH_ANY);
}

typedef int (*fq__cond_fn)(fq_queue *q, uint64_t a, uint64_t b);

static int fq__wait_generic(fq_queue *q, _Atomic uint64_t *ec, unsigned which, fq__cond_fn cond, uint64_t a,
                            uint64_t b, int64_t deadline_ns, uint32_t spin_ns)
{
    if (cond(q, a, b))
        return FQ_OK;
    if (spin_ns) { /* spin briefly before parking: a futex round trip costs ~10-50 us */
        int64_t until = fq_now_ns() + (int64_t)spin_ns;
        if (until > deadline_ns)
            until = deadline_ns;
        for (uint32_t i = 1;; i++) {
            fq__cpu_relax();
            if ((i & 7u) == 0) {
                if (cond(q, a, b))
                    return FQ_OK;
                if ((i & 63u) == 0 && fq_now_ns() >= until)
                    break;
            }
        }
    }
    uint32_t key = fq__ec_prepare(q, ec, which);
    if (cond(q, a, b)) { /* re-check after being counted (E1) */
        fq__ec_cancel(q, ec, which);
        return FQ_OK;
    }
    fq__ec_park(ec, key, deadline_ns);
    fq__ec_cancel(q, ec, which);
    return cond(q, a, b) ? FQ_OK : FQ_TIMEOUT;
}

static int fq__cond_data(fq_queue *q, uint64_t g, uint64_t unused)
{
    (void)unused;
    return fq__take_ready(q, (uint32_t)g);
}

static int fq__cond_space(fq_queue *q, uint64_t n_records, uint64_t n_bytes)
{
    return fq__space_ok(q, n_records, n_bytes);
}

static int fq__cond_done(fq_queue *q, uint64_t a, uint64_t b)
{
    (void)a;
    (void)b;
    return fq_unfinished(q) == 0;
}

int fq_wait_data(fq_queue *q, uint32_t g, int64_t deadline_ns, uint32_t spin_ns)
{
    if (g >= q->max_groups)
        return FQ_ERR_INVAL;
    /* wake up when a lease expires or a nack delay ends, not only on commits */
    int64_t nd = (int64_t)atomic_load_explicit(&q->groups[g].g_next_deadline, FQ_ACQUIRE);
    if (nd < deadline_ns)
        deadline_ns = nd;
    return fq__wait_generic(q, &q->ctrl->c_data_ec, FQ_W_DATA, fq__cond_data, g, 0, deadline_ns, spin_ns);
}

int fq_wait_space(fq_queue *q, uint64_t n_records, uint64_t n_bytes, int64_t deadline_ns)
{
    return fq__wait_generic(q, &q->ctrl->c_space_ec, FQ_W_SPACE, fq__cond_space, n_records, n_bytes, deadline_ns,
                            5000);
}

int fq_wait_done(fq_queue *q, int64_t deadline_ns)
{
    return fq__wait_generic(q, &q->ctrl->c_done_ec, FQ_W_DONE, fq__cond_done, 0, 0, deadline_ns, 0);
}

/* Wake every waiter of this queue (all processes) so each re-checks its
 * condition: fastq.aio's parked waiter uses it to stop promptly when its
 * handle closes.  Spurious wake-ups are harmless by the eventcount protocol. */
void fq_wake_all(fq_queue *q)
{
    fq__ec_wake_all(&q->ctrl->c_data_ec);
    fq__ec_wake_all(&q->ctrl->c_space_ec);
}
