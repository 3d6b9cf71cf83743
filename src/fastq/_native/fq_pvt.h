/*
 * fq_pvt.h — internal inline helpers shared by the core's .c files.
 * Not installed API. Names are fq__*.
 */
#ifndef FQ_PVT_H
#define FQ_PVT_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "fq.h"

#define FQ_RELAXED memory_order_relaxed
#define FQ_ACQUIRE memory_order_acquire
#define FQ_RELEASE memory_order_release
#define FQ_ACQREL memory_order_acq_rel
#define FQ_SEQCST memory_order_seq_cst

#define fq__likely(x) __builtin_expect(!!(x), 1)
#define fq__unlikely(x) __builtin_expect(!!(x), 0)

static inline void fq__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t fq__align8(uint64_t x) { return (x + 7u) & ~(uint64_t)7u; }

/* ---- claim word: (seq_lo32 << 32) | (pos/8)_lo32 ---- */
static inline uint64_t fq__tail_pack(uint64_t seq, uint64_t pos)
{
    return ((seq & 0xFFFFFFFFu) << 32) | ((pos >> 3) & 0xFFFFFFFFu);
}
/* Serial-number reconstruction against a lower bound loaded AFTER the word
 * (see fq_layout.h c_tail).  May return a value below the bound when the
 * word is stale; callers treat that as "retry". */
static inline uint64_t fq__tail_seq(uint64_t t, uint64_t floor_seq)
{
    return floor_seq + (uint64_t)(int64_t)(int32_t)((uint32_t)(t >> 32) - (uint32_t)floor_seq);
}
static inline uint64_t fq__tail_pos(uint64_t t, uint64_t floor_pos)
{
    return floor_pos + 8u * (uint64_t)(int64_t)(int32_t)((uint32_t)t - (uint32_t)(floor_pos >> 3));
}

/* ---- descriptor control word ---- */
static inline uint64_t fq__cw(uint64_t seq, unsigned st) { return (seq << 3) | st; }
static inline uint64_t fq__cw_seq(uint64_t cw) { return cw >> 3; }
static inline unsigned fq__cw_st(uint64_t cw) { return (unsigned)(cw & 7u); }
/* d_cw describes seq (an all-zero descriptor is NOT a published seq 0). */
static inline int fq__cw_published(uint64_t cw, uint64_t seq)
{
    return fq__cw_seq(cw) == (seq & ((((uint64_t)1) << 61) - 1)) && fq__cw_st(cw) != FQ_D_EMPTY;
}
#define FQ_SEQ_MASK ((((uint64_t)1) << 61) - 1)

/* ---- lease word: tag32 | deliveries16 | owner13 | state3 ---- */
#define FQ_TAG_MASK ((((uint64_t)1) << 32) - 1)
#define FQ_DELIV_MAX 0xFFFFu
#define FQ_OWNER_NONE 0x1FFFu
static inline uint64_t fq__lw(uint64_t seq, unsigned deliveries, unsigned owner, unsigned st)
{
    return ((seq & FQ_TAG_MASK) << 32) | ((uint64_t)(deliveries & 0xFFFFu) << 16) |
           ((uint64_t)(owner & 0x1FFFu) << 3) | (st & 7u);
}
static inline uint64_t fq__lw_tag(uint64_t w) { return w >> 32; }
static inline unsigned fq__lw_deliv(uint64_t w) { return (unsigned)((w >> 16) & 0xFFFFu); }
static inline unsigned fq__lw_owner(uint64_t w) { return (unsigned)((w >> 3) & 0x1FFFu); }
static inline unsigned fq__lw_st(uint64_t w) { return (unsigned)(w & 7u); }
static inline int fq__lw_is(uint64_t w, uint64_t seq) { return fq__lw_tag(w) == (seq & FQ_TAG_MASK); }
/* Entry tag belongs to a later lap than seq (32-bit serial comparison: laps
 * in a window are < 2^24 apart). */
static inline int fq__lw_newer(uint64_t w, uint64_t seq) { return (int64_t)((fq__lw_tag(w) - seq) << 32) > 0; }
static inline int fq__lst_terminal(unsigned st)
{
    return st == FQ_L_ACKED || st == FQ_L_DEAD || st == FQ_L_SKIPPED;
}

/* ---- intent word: (seq_lo32 << 32) | (count << 1) | 1 ---- */
static inline uint64_t fq__intent(uint64_t seq, uint32_t n)
{
    return ((seq & 0xFFFFFFFFu) << 32) | ((uint64_t)(n & 0x7FFFFFFFu) << 1) | 1u;
}

/* ---- accessors: every index is masked with process-local geometry ---- */
static inline struct fq_desc_shm *fq__desc(fq_queue *q, uint64_t seq)
{
    return &q->desc[seq & q->desc_mask];
}
static inline struct fq_group_shm *fq__group(fq_queue *q, uint32_t g) { return &q->groups[g]; }
/* Lease window of group g: 2^g_window_log2 entries, clamped to the validated
 * window_max (a hostile value can shrink a window, never overrun it). */
#define FQ_CFG_LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#define FQ_CFG_STORE(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
/* Shared names (g_name, g_dlq, m_name) are written and read with relaxed
 * byte atomics: writers hold the admin mutex (or own the member slot),
 * readers (fq_group_info, fq_member_peek) take no lock and reject a torn copy
 * by re-checking the slot's generation afterwards (a seqlock). */
static inline void fq__name_store(char *dst, size_t cap, const char *src, size_t n)
{
    for (size_t i = 0; i < cap; i++)
        __atomic_store_n(&dst[i], i < n ? src[i] : 0, __ATOMIC_RELAXED);
}

static inline void fq__name_load(char *dst, const char *src, size_t cap)
{
    for (size_t i = 0; i + 1 < cap; i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    dst[cap - 1] = 0;
}

static inline uint64_t fq__gw(fq_queue *q, uint32_t g)
{
    uint32_t l = FQ_CFG_LOAD(fq__group(q, g)->g_window_log2);
    return (l < 32 && ((uint64_t)1 << l) <= q->window) ? (uint64_t)1 << l : q->window;
}
static inline struct fq_lease_shm *fq__lease(fq_queue *q, uint32_t g, uint64_t seq)
{
    return &q->windows[(uint64_t)g * q->window + (seq & (fq__gw(q, g) - 1))];
}

/* ---- eventcounts (folly EventCount layout): epoch (high 32) | waiters (low 32) ---- */
static inline void fq__ec_notify(_Atomic uint64_t *ec);
void fq__ec_wake(_Atomic uint64_t *ec);
/* Notify only if someone is counted.  The seq_cst load pairs with the waiter's
 * seq_cst fetch_add in fq__ec_prepare (Dekker): either the notifier sees the
 * waiter, or the waiter's re-check (after its increment) sees the notifier's
 * earlier seq_cst store.  E1/E2 in docs/protocol.md. */
static inline void fq__ec_notify_if_waiters(_Atomic uint64_t *ec)
{
    uint64_t v = atomic_load_explicit(ec, FQ_SEQCST); /* E2 */
    if (fq__unlikely((uint32_t)v != 0))
        fq__ec_wake(ec);
}
static inline void fq__ec_notify(_Atomic uint64_t *ec) { fq__ec_wake(ec); }

/* internal functions across files */
int fq__take_ready(fq_queue *q, uint32_t g);
int fq__space_ok(fq_queue *q, uint64_t n_records, uint64_t n_bytes);
int fq__refresh_floor(fq_queue *q, uint64_t need_seq, uint64_t need_pos);
void fq__cas_max(_Atomic uint64_t *a, uint64_t v, memory_order mo);
void fq__cas_min(_Atomic uint64_t *a, uint64_t v);
void fq__deadline_insert(struct fq_group_shm *G, uint64_t when);
int fq__check_dynamic(fq_queue *q);
void fq__set_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t fq__aborted(fq_queue *q);
uint64_t fq__acked(fq_queue *q, uint32_t g);
void fq__advance_low(fq_queue *q, uint32_t g);
uint64_t fq__pos_after(fq_queue *q, uint64_t seq, int *ok);
int fq__probe_lock(fq_queue *q, uint32_t id);
void fq__ec_uncount(_Atomic uint64_t *ec);
void fq__ec_wake_all(_Atomic uint64_t *ec);
void fq__ec_park(_Atomic uint64_t *ec, uint32_t key, int64_t deadline_ns);
int fq__open_lock_fd(fq_queue *q);

/* ---- segment store (fq_store.c) ---- */
uint8_t *fq__store_ptr(fq_queue *q, uint64_t pos, int create);
int fq__store_prepare(fq_queue *q, uint64_t p, uint64_t e);
void fq__store_index(fq_queue *q, uint64_t seq, uint64_t p, uint64_t e, int64_t ts);
void fq__store_pad(fq_queue *q, uint64_t seq, uint64_t pos, uint32_t len);
void fq__store_seal(struct fq_frame_hdr *h, uint16_t flags);
int fq__store_check(const struct fq_frame_hdr *h, const uint8_t *frame, uint64_t room);
int fq__store_gap(fq_queue *q, uint64_t seq, uint64_t count, uint64_t start, uint64_t end);
int fq__refresh_frontier(fq_queue *q);
/* Segment lookup of a complete record: 1 data, 2 gap, 0 not below the
 * frontier, -1 deleted by retention, -2 corrupt.  *pos = its frame. */
int fq__store_find(fq_queue *q, uint64_t seq, uint64_t *pos);
void fq__store_close(fq_queue *q);
/* dedup (fq_dedup.c) */
void fq__dedup_recover_member(fq_queue *q, uint32_t id);  /* R1b: under the recovery mutex, id dead */
void fq__dedup_cold(fq_queue *q, uint64_t tail_seq);      /* cold recovery of a store, nobody attached */
void fq__retention_jump(fq_queue *q, uint32_t g);
int fq__store_dynamic_ok(fq_queue *q);
int fq__create(fq_queue *q, const char *name, int dirfd, const fq_params *p);
int fq__attach(fq_queue *q, int fd, int64_t wait_ns);

/* Copy a frame header out of a shared segment and check the copy (CRC over
 * the payload included): callers use only what was checked.  The flags are
 * loaded first with acquire (they are stored last, S3). */
static inline int fq__store_read_hdr(const uint8_t *fr, uint64_t room, struct fq_frame_hdr *h)
{
    uint16_t fl = __atomic_load_n(&((const struct fq_frame_hdr *)fr)->f_flags, __ATOMIC_ACQUIRE);
    memcpy(h, fr, sizeof *h);
    h->f_flags = fl;
    return fq__store_check(h, fr, room);
}

/* A message for a checked DATA frame at fr (header h). */
/* fq_msg flags of a frame's f_type (DELAYED only inside a meta region) */
static inline uint32_t fq__type_flags(uint32_t t)
{
    return ((t & FQ_TYPE_HAS_KEY) ? FQ_MSG_KEY : 0) | ((t & FQ_TYPE_META) ? FQ_MSG_META : 0) |
           ((t & FQ_TYPE_META) && (t & FQ_TYPE_DELAYED) && (t >> 16) >= 8 ? FQ_MSG_DELAYED : 0);
}

static inline void fq__msg_from_frame(fq_msg *m, const struct fq_frame_hdr *h, const uint8_t *fr, unsigned deliveries)
{
    m->seq = h->f_seq;
    m->data = fr + FQ_FRAME_HDR;
    m->len = h->f_len - FQ_FRAME_HDR;
    m->deliveries = deliveries;
    m->flags = fq__type_flags(h->f_type);
    m->ts_ns = h->f_ts_ns;
    m->key_len = h->f_type >> 16;
}

/* Byte at log position pos: the ring arena, or the mapped segment. */
static inline uint8_t *fq__at(fq_queue *q, uint64_t pos)
{
    if (fq__likely(!q->durable))
        return q->arena + (pos & q->cap_mask);
    return fq__store_ptr(q, pos, 0);
}

#endif /* FQ_PVT_H */
