/*
 * fq.h — the public C API of the fastq core (no Python.h anywhere under _native/).
 *
 * A process opens a queue file into a process-local handle (struct fq_queue)
 * which keeps a private copy of the validated geometry; nothing on a hot path
 * re-reads geometry from shared memory.  All functions return an fq_status
 * (>= 0 success) unless stated otherwise.
 *
 * Threads: a handle may be used from several threads, but the claim → commit
 * sequence of one handle must not interleave with another claim on the same
 * handle (one intent slot per member).  The Cython layer guarantees this by
 * holding the GIL from fq_claim to fq_commit.  Waits (fq_wait_*) may run
 * concurrently from any number of threads without the GIL.
 */
#ifndef FQ_H
#define FQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fq_layout.h"

typedef enum fq_status {
    FQ_OK = 0,
    FQ_EMPTY = 1,        /* nothing to take now */
    FQ_FULL = 2,         /* no space now */
    FQ_TIMEOUT = 3,      /* a wait slice ended */
    FQ_STALLED = 4,      /* the next record is claimed but not committed */
    FQ_DUPLICATE = 5,    /* fq_dedup_begin: the key was appended within its window (*orig_seq) */
    FQ_ERR_SYS = -1,     /* errno is set */
    FQ_ERR_INVAL = -2,   /* bad argument */
    FQ_ERR_TOO_BIG = -3, /* record larger than the ring can ever hold */
    FQ_ERR_CORRUPT = -4, /* shared state failed validation */
    FQ_ERR_FORMAT = -5,  /* not a fastq file / wrong version / not initialised */
    FQ_ERR_PERM = -6,    /* owner or mode not acceptable */
    FQ_ERR_EXISTS = -7,  /* name already taken */
    FQ_ERR_NOENT = -8,   /* no such queue */
    FQ_ERR_NOMEM = -9,   /* cannot reserve shared memory */
    FQ_ERR_MEMBERS = -10, /* member table full */
    FQ_ERR_LOST = -11,   /* lease lost (expired or recovered) */
    FQ_ERR_SIZE = -12,   /* next record has another size than asked for */
    FQ_ERR_CONFLICT = -13, /* a group exists with other settings */
    FQ_ERR_GROUPS = -14, /* group table full */
    FQ_ERR_RANGE = -15,  /* offset outside what the ring holds */
    FQ_ERR_DATA = -16,   /* a record failed its checksum (segment store) */
    FQ_ERR_BUSY = -17,   /* refused: the group has live consumers */
    FQ_ERR_DEDUP_FULL = -18, /* the dedup table has no free entry for this key */
} fq_status;

typedef struct fq_params {
    uint64_t capacity;      /* arena bytes; rounded up to a power of two, >= 4096 */
    uint64_t maxsize;       /* record-count bound; 0 = as many as the descriptor ring holds */
    uint32_t desc_count;    /* 0 = derived from capacity */
    uint32_t window;        /* lease window per group; 0 = derived */
    uint32_t max_members;   /* 0 = 256 */
    uint32_t max_groups;    /* 0 = 1 */
    uint32_t flags;         /* FQ_P_* */
    uint32_t dedup_slots;   /* dedup table entries (rounded up to buckets of 63); 0 = no table */
    uint32_t dedup_window_ms; /* default dedup window; 0 = 300 s */
} fq_params;
#define FQ_P_NO_QUEUE_GROUP 0x1u  /* a log: no implicit group 0 (groups are created by name) */
/* Durable store (fq_create_dir): capacity is the segment size (a power of
 * two, 64 KiB .. 1 GiB); records are at most a quarter of it. */

/* Consumer group settings (fq_group_open). */
enum { FQ_START_EARLIEST = 0, FQ_START_LATEST = 1, FQ_START_SEQ = 2 };
typedef struct fq_group_cfg {
    const char *name;           /* 1..63 bytes */
    uint32_t window;            /* in-flight bound (prefetch); 0 = 1024; rounded up to 2^k, <= window_max */
    uint32_t max_deliveries;    /* 0 = unlimited, else <= 254 */
    uint32_t visibility_ms;     /* lease duration; 0 = leases never expire */
    uint32_t start;             /* FQ_START_*; only used when the group is created */
    uint64_t start_seq;
    const char *dlq;            /* dead-letter queue name, NULL/"" = none */
    uint32_t backoff[4];        /* retry policy, stored for every process: initial ms, max ms, mult x1000, jitter x1000 */
} fq_group_cfg;

/* Process-local handle. */
typedef struct fq_queue {
    uint8_t *base;
    size_t map_size;
    int fd;                 /* mapping + liveness probes; holds no locks */
    int lock_fd;            /* separate open file description holding our member lock */
    int member;             /* our member id, -1 if not joined */
    int anonymous;
    pid_t pid;              /* process that opened the handle / joined */
    char path[256];
    /* geometry, copied once after validation */
    uint64_t cap, cap_mask;
    uint32_t n_desc, desc_mask;
    uint32_t max_frame;
    uint32_t max_members, max_groups, window, window_mask;
    uint64_t maxsize;       /* as created; 0 = none */
    uint64_t limit_records; /* min(maxsize, N-1) */
    uint64_t base_seq, base_pos;
    struct fq_super_shm *sup;
    struct fq_ctrl_shm *ctrl;
    struct fq_member_shm *members;
    struct fq_group_shm *groups;
    struct fq_desc_shm *desc;
    struct fq_lease_shm *windows;
    uint8_t *arena;
    /* segment store only (durable != 0) */
    int durable;
    int dirfd;
    uint32_t seg_shift;     /* S = 1 << seg_shift = cap */
    uint64_t span;          /* bytes claimed beyond the floor at most: cap (ring), 2^32 (store) */
    uint8_t uuid[16];
    struct fq_segmap *segmap;   /* process-local: FQ_SEGMAP direct-mapped entries */
    uint64_t rd_seq, rd_pos;    /* walker cache: record rd_seq starts at rd_pos */
    uint64_t rf_seq, rf_pos;    /* the last data record fq__store_find found (CRC checked); rf_pos 0 = none */
    struct fq_frame_hdr rf_hdr; /* ... and its header as checked */
    uint32_t fsync_mode;
    int open_fd;            /* segment store: holds the shared "open" lock (cold recovery needs it exclusive) */
    struct fq_ckpt_shm *ckpt;   /* two slots */
    /* dedup table (fq_dedup.c); dedup_buckets 0 = none */
    struct fq_dedup_bucket_shm *dedup;
    uint32_t dedup_buckets;
    uint32_t dedup_window_ms;
    uint64_t dedup_key[4];      /* SipHash keys of h1 and h2 */
    struct fq_store_shm *store;
} fq_queue;

/* A mapped segment (process-local). A handle's segment map is used under the
 * caller's serialization (the GIL in fastq._core); segments are unmapped only
 * at close, on a table collision (4096 segments apart) or below retention. */
#define FQ_SEGMAP 4096u
struct fq_segmap {
    uint64_t tag;           /* segment number + 1; 0 = empty */
    uint8_t *seg;           /* mapping of the whole segment file */
    uint8_t *idx;           /* mapping of its index file (NULL: none, walk instead) */
    size_t seg_len, idx_len;
};

/* One taken record (a lease). `data` points into the arena and stays valid
 * until the lease is acked or lost. */
typedef struct fq_msg {
    uint64_t seq;
    const uint8_t *data;
    uint32_t len;
    uint32_t deliveries;
    int64_t ts_ns;
    uint32_t flags;         /* FQ_MSG_DEADLETTER: over max_deliveries, dead-letter it then fq_dead */
    uint32_t key_len;       /* the first key_len bytes of data are the record's key */
} fq_msg;
#define FQ_MSG_DEADLETTER 0x1u
#define FQ_MSG_KEY 0x2u         /* the record has a key (key_len may be 0) */
#define FQ_MSG_META 0x4u        /* the first key_len bytes are a meta region (FQ_TYPE_META), not the bare key */
#define FQ_MSG_DELAYED 0x8u     /* ... which starts with the record's not-before time (FQ_TYPE_DELAYED) */

/* lifecycle (fq_shm.c) */
int fq_name_valid(const char *name);
int fq_create(fq_queue *q, const char *name, const fq_params *p);   /* name NULL = anonymous memfd */
int fq_open(fq_queue *q, const char *name, int64_t wait_ns);
int fq_open_fd(fq_queue *q, int fd);                                /* attach an inherited anonymous queue */
void fq_close(fq_queue *q);
int fq_unlink(const char *name);
int fq_after_fork_child(fq_queue *q);                               /* drop inherited identity */
int fq_join(fq_queue *q, uint32_t kind);                            /* take a member slot */
void fq_leave(fq_queue *q);

/* produce (fq_ring.c) */
int fq_claim(fq_queue *q, const uint32_t *lens, uint32_t n, uint64_t *first_seq);
uint8_t *fq_payload(fq_queue *q, uint64_t seq);
void fq_commit(fq_queue *q, uint64_t first_seq, uint32_t n);
uint32_t fq_max_payload(const fq_queue *q);
uint64_t fq_batch_limit(const fq_queue *q);
uint64_t fq_frame_bytes(uint32_t len);  /* arena bytes of one record, header included */

/* consume (fq_ring.c) */
/* Lease up to max records of group g.  only_len != 0: stop before the first
 * record whose payload is not exactly only_len bytes (FQ_ERR_SIZE if it is the
 * first one); that record is not leased. */
int fq_take(fq_queue *q, uint32_t g, fq_msg *out, uint32_t max, uint32_t only_len, uint32_t *n_out);
int fq_ack(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n);
int fq_dead(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n);   /* finish as dead-lettered */
int fq_ack_n(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n, uint32_t *acked); /* fq_ack + how many */
/* Copy record seq of a ring without a group (monitoring; see fq_ring.c). */
int fq_peek(fq_queue *q, uint64_t seq, uint8_t *buf, uint32_t cap, fq_msg *out, uint64_t *floor);

/* groups (fq_group.c) */
int fq_group_open(fq_queue *q, const fq_group_cfg *cfg, uint32_t *g_out, int *created);
int fq_group_find(fq_queue *q, const char *name, uint32_t *g_out);
int fq_group_delete(fq_queue *q, const char *name);
int fq_nack(fq_queue *q, uint32_t g, const fq_msg *m, uint64_t delay_ns);
int fq_extend(fq_queue *q, uint32_t g, const fq_msg *m, uint64_t ms);
int fq_member_group(fq_queue *q, uint32_t g);   /* this handle consumes (and counts acks) in group g */
int fq_group_info(fq_queue *q, uint32_t g, fq_group_cfg *out, char name[64], char dlq[64]); /* lock-free */
int fq_finished(fq_queue *q, uint32_t g, uint64_t seq);  /* acked/dead/skipped in g (lock-free) */
uint32_t fq_leases_held(fq_queue *q, uint32_t g, uint32_t member);  /* lock-free */
int fq_lease_state(fq_queue *q, uint32_t g, uint64_t seq, uint32_t *deliveries); /* lock-free; fq_group.c */
int fq_group_reset(fq_queue *q, const char *name, uint32_t start, uint64_t start_seq, int force, uint32_t *live);

/* A member slot as monitoring sees it (fq_member_peek: lock-free). */
typedef struct fq_member_info {
    int32_t pid;
    uint32_t kind;          /* FQ_M_KIND_* bits */
    uint32_t group;         /* the group it consumes in (valid if bound) */
    int bound;              /* bound to the current generation of an active group */
    int alive;              /* its process holds its lock (0: died, not recovered yet) */
    int64_t started_ns;     /* CLOCK_REALTIME at join */
    int64_t heartbeat_ns;   /* CLOCK_MONOTONIC of its last liveness scan */
    uint64_t puts, gets, acked;
    char name[32];
} fq_member_info;
int fq_member_peek(fq_queue *q, uint32_t i, fq_member_info *out);
void fq_member_set_name(fq_queue *q, const char *name);

/* A lock-free snapshot for monitoring (fields read independently, relaxed). */
typedef struct fq_stats {
    uint64_t tail_seq, tail_pos, floor_seq, floor_pos;
    uint64_t low, dispatch, acked, delivered, redelivered, dead, expired, nacked;
    uint64_t pending, lag_bytes, oldest_ts_ns;  /* leased now; bytes from low to tail; timestamp at low */
    int64_t retry_pending;
    uint64_t aborted, recovered, tasks_done;
    uint64_t skipped;       /* group: records retention deleted before it finished them */
    uint64_t first_seq, durable_seq;   /* store: oldest retained record; everything below durable_seq is on disk */
    uint32_t data_waiters, space_waiters, members_alive, recovery_owner, consumers;
} fq_stats;
void fq_get_stats(fq_queue *q, uint32_t g, fq_stats *st);

/* counts */
uint64_t fq_tail_seq(fq_queue *q);
uint64_t fq_qsize(fq_queue *q, uint32_t g);
int fq_task_done(fq_queue *q, uint64_t n);
uint64_t fq_unfinished(fq_queue *q);

/* waiting (fq_wait.c): each waits at most until deadline_ns (CLOCK_MONOTONIC) */
int fq_wait_data(fq_queue *q, uint32_t g, int64_t deadline_ns, uint32_t spin_ns);  /* spin_ns: busy-wait first */
int fq_wait_space(fq_queue *q, uint64_t n_records, uint64_t n_bytes, int64_t deadline_ns);
int fq_wait_done(fq_queue *q, int64_t deadline_ns);
void fq_wake_all(fq_queue *q); /* every waiter of the queue re-checks (fastq.aio stops its parked waiter) */
int64_t fq_now_ns(void);       /* CLOCK_MONOTONIC (+ fq_clock_skew_ns, a test hook) */
extern int64_t fq_clock_skew_ns;
int64_t fq_realtime_ns(void);  /* CLOCK_REALTIME */

/* liveness and recovery (fq_live.c) */
int fq_maintain(fq_queue *q, int force);  /* rate-limited scan; returns members recovered */
int fq_member_alive(fq_queue *q, uint32_t id);

/* crash points (fq_crash.c): armed by FASTQ_CRASHPOINT=name[:countdown] */
void fq_crashpoint_slow(const char *name);
extern volatile int fq_crash_armed;
#define FQ_CRASHPOINT(name) do { if (__builtin_expect(fq_crash_armed, 0)) fq_crashpoint_slow(name); } while (0)
void fq_crash_arm(const char *spec);

/* segment store (fq_store.c) */
enum { FQ_FSYNC_NEVER = 0, FQ_FSYNC_INTERVAL = 1, FQ_FSYNC_ALWAYS = 2 };
enum { FQ_RECOVER_AUTO = 0, FQ_RECOVER_FORCE = 1 };
enum { FQ_CORRUPT_REFUSE = 0, FQ_CORRUPT_SKIP = 1 };
typedef struct fq_recovery_report {
    int ran;                    /* 1 if a cold recovery ran at open */
    int reason;                 /* 1 new boot, 2 forced, 3 no checkpoint (and no other cause), 4 inconsistent shared state */
    uint64_t ckpt_seq, ckpt_pos;    /* where the scan started */
    uint64_t tail_seq, tail_pos;    /* end of the valid prefix */
    uint64_t scanned;           /* records verified */
    uint64_t truncated_bytes;   /* torn tail zeroed */
    uint64_t corrupt_seq;       /* first bad record in the middle of the log (if any) */
    uint64_t skipped;           /* records given up by policy "skip" */
    uint64_t leases_reset;      /* in-flight leases turned back into deliverable records */
    uint32_t groups;            /* groups restored */
    uint32_t segments_removed;  /* segments past the valid prefix removed */
    uint32_t index_rebuilt;     /* index entries rewritten */
    int corrupt;                /* 1: mid-log corruption found (refused unless skip) */
} fq_recovery_report;
int fq_create_dir(fq_queue *q, const char *dir, const fq_params *p, uint32_t fsync_mode);
int fq_open_dir(fq_queue *q, const char *dir, int64_t wait_ns, int recover, int corrupt_policy,
                fq_recovery_report *rep);
/* Flush committed records to disk (fdatasync, group commit): returns once
 * every record below upto_seq is durable (FQ_TIMEOUT at deadline_ns).  One
 * process flushes at a time; the others wait for its result. */
int fq_flush(fq_queue *q, uint64_t upto_seq, int64_t deadline_ns);
int fq_checkpoint(fq_queue *q);              /* flush + write a checkpoint */
uint64_t fq_durable_seq(fq_queue *q);
/* Retention: delete whole segments (never the active one); the checkpoint
 * moves before files are unlinked.  max_bytes/max_age_ns 0 = no limit;
 * consumed != 0 = also delete what every group finished.  Returns segments
 * deleted (>= 0) or an error. */
int fq_retain(fq_queue *q, uint64_t max_bytes, int64_t max_age_ns, int consumed);
/* Replay without a group. */
typedef struct fq_cursor {
    uint64_t seq, pos;      /* next record to read and where its extent starts */
} fq_cursor;
uint64_t fq_first_seq(fq_queue *q);         /* oldest retained record */
int fq_seek_seq(fq_queue *q, uint64_t seq, fq_cursor *c);
int fq_seek_time(fq_queue *q, int64_t ts_ns, fq_cursor *c);
/* Next committed record at or after c->seq below the commit frontier (gaps
 * skipped); FQ_EMPTY at the frontier.  The message data stays valid until the
 * next call on this handle. */
int fq_read_next(fq_queue *q, fq_cursor *c, fq_msg *out);
uint64_t fq_frontier(fq_queue *q);          /* every record below is committed or a gap */
void fq_set_key_len(fq_queue *q, uint64_t seq, uint32_t key_len);  /* before fq_commit */
/* before fq_commit: the payload starts with a prefix of prefix_len bytes (FQ_PREFIX_* bits) */
enum { FQ_PREFIX_KEY = 1, FQ_PREFIX_META = 2, FQ_PREFIX_DELAYED = 4 };
void fq_set_prefix(fq_queue *q, uint64_t seq, uint32_t prefix_len, unsigned prefix_flags);
int fq_verify(fq_queue *q, uint64_t *records, uint64_t *bad_seq);  /* CRC every retained record */

/* producer-side deduplication (fq_dedup.c, docs/messages.md §3).  One
 * append with a dedup key:
 *   rc = fq_dedup_begin(q, key, klen, window_ns, &orig, &slot)
 *     FQ_DUPLICATE: drop the append, the original is record orig
 *     FQ_STALLED:   an append of this key is in flight (or its bucket is busy,
 *                   or its holder died and awaits recovery): retry later
 *     FQ_OK:        the key is ours (CLAIMING): fq_claim, then
 *                   fq_dedup_bind(q, slot, seq) before writing, fq_commit,
 *                   fq_dedup_end(q, slot, 1); or fq_dedup_end(q, slot, 0)
 *                   if nothing was claimed
 *     FQ_ERR_DEDUP_FULL, FQ_ERR_INVAL (no table, not joined)
 * begin..end must not interleave with another begin on the same handle (one
 * journal per member; the GIL in fastq._core). window_ns <= 0: the default. */
int fq_dedup_begin(fq_queue *q, const void *key, uint32_t klen, int64_t window_ns, uint64_t *orig_seq,
                   uint32_t *slot);
void fq_dedup_bind(fq_queue *q, uint32_t slot, uint64_t seq);
void fq_dedup_end(fq_queue *q, uint32_t slot, int committed);
typedef struct fq_dedup_stats {
    uint64_t slots, set, claiming, expired, hits;
    uint32_t window_ms;
} fq_dedup_stats;
void fq_dedup_get_stats(fq_queue *q, fq_dedup_stats *st);    /* lock-free scan */
uint64_t fq_siphash24(const uint64_t k[2], const void *data, size_t len);

const char *fq_strerror(int status);
const char *fq_last_error(void);  /* detail of the last error in this thread */

#endif /* FQ_H */
