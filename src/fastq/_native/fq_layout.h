/*
 * fq_layout.h — every structure that lives in a shared mapping.
 *
 * Everything in this file is shared between processes and must be treated as
 * possibly hostile: a value read from one of these structs is validated, masked
 * or range-checked against the process-local geometry (struct fq_queue, copied
 * once at open) before it becomes an index, a length or a pointer.
 *
 * One queue = one file (a named /dev/shm object or an anonymous memfd), laid out
 * in page-aligned sections:
 *
 *   0x0000   fq_super_shm    4 KiB   geometry; immutable once s_state == READY
 *   0x1000   fq_ctrl_shm     4 KiB   hot atomics, each in its own 128-byte block
 *   off_members  M x fq_member_shm  (128 B each)   producers/consumers, liveness
 *   off_groups   G x fq_group_shm   (1 KiB each)   consumer groups (group 0 = Queue)
 *   off_desc     N x fq_desc_shm    (32 B each)    descriptor ring, desc[seq & (N-1)]
 *   off_windows  G x W x fq_lease_shm (16 B each)  per-group lease windows
 *   off_arena    C bytes                            frames, position p at p & (C-1)
 *
 * Every section offset is a multiple of 4096 and the sections do not overlap;
 * the opener checks both with overflow-checked arithmetic (fq_shm.c).
 *
 * Naming: shared structs end in _shm and their fields carry a struct prefix
 * (s_, c_, m_, g_, d_, l_, f_), so grep finds exactly one struct per field.
 * Positions that only grow are *_pos / *seq (64-bit); masked indexes are *_idx.
 *
 * The segment store (durable log) uses the same frame format (fq_frame_hdr) in
 * its segment files and the same control state (members, groups, windows) in
 * its control file; only the arena differs (DESIGN.md §2).
 */
#ifndef FQ_LAYOUT_H
#define FQ_LAYOUT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define FQ_MAGIC "FASTQRB"             /* 8 bytes with the NUL */
#define FQ_LAYOUT_MAJOR 1u
#define FQ_LAYOUT_MINOR 1u              /* 1: superblock extension (dedup table) */
#define FQ_PAGE 4096u
#define FQ_BLOCK 128u                  /* two cache lines: defeats adjacent-line prefetch (Agrona) */

#define FQ_STATIC_ASSERT(c, m) _Static_assert(c, m)

/* s_state values; stored last with release by the creator (Aeron CnC model). */
enum { FQ_S_EMPTY = 0, FQ_S_INIT = 1, FQ_S_READY = 2, FQ_S_POISONED = 3 };

/* s_flags */
#define FQ_F_DURABLE   0x1u   /* arena backed by segment files (issue 4) */
#define FQ_F_FRAME_CRC 0x2u   /* producers fill f_crc */

/* ------------------------------------------------------------------------ *
 * Superblock (page 0).  Written only by the creator before READY.
 *
 *   0                   8        10       12               16
 *   +-------------------+--------+--------+----------------+
 *   | s_magic "FASTQRB" | major  | minor  | s_state (atom) |
 *   16        20              24               32              40
 *   | s_flags | s_fingerprint | s_total_size   | s_arena_cap   |
 *   40            44            48              52            56            60      64
 *   | s_desc_count | s_max_frame | s_max_members | s_max_groups | s_window_max | s_uid |
 *   64 .. 112: s_off_ctrl, s_off_members, s_off_groups, s_off_desc, s_off_windows, s_off_arena
 *   112 s_base_seq | 120 s_base_pos | 128 s_uuid[16] | 144 s_created_ns | 152 s_creator_pid
 *   156 s_pad0 | 160 s_maxsize | 168 s_crc | 172 s_pad1 | 176
 *
 * Publication: the creator fills everything, computes s_crc (CRC32C of bytes
 * [0,168) with s_state read as 0), then stores s_state = READY with release.
 * An opener that loads READY with acquire sees the whole superblock.
 * Crash during init: s_state stays INIT; openers time out and refuse the file
 * ("not initialised"), the name stays taken until unlink.
 * ------------------------------------------------------------------------ */
struct fq_super_shm {
    char s_magic[8];
    uint16_t s_layout_major;
    uint16_t s_layout_minor;
    _Atomic uint32_t s_state;
    uint32_t s_flags;
    uint32_t s_fingerprint;
    uint64_t s_total_size;
    uint64_t s_arena_cap;       /* C, power of two */
    uint32_t s_desc_count;      /* N, power of two */
    uint32_t s_max_frame;       /* header + payload, <= C/4 */
    uint32_t s_max_members;     /* M <= FQ_MAX_MEMBERS */
    uint32_t s_max_groups;      /* G <= FQ_MAX_GROUPS */
    uint32_t s_window_max;      /* W, power of two, <= N */
    uint32_t s_uid;             /* creator euid (diagnostic; ownership is checked with fstat) */
    uint64_t s_off_ctrl;
    uint64_t s_off_members;
    uint64_t s_off_groups;
    uint64_t s_off_desc;
    uint64_t s_off_windows;
    uint64_t s_off_arena;
    uint64_t s_base_seq;        /* first seq of this ring */
    uint64_t s_base_pos;        /* byte position of s_base_seq */
    uint8_t s_uuid[16];
    int64_t s_created_ns;       /* CLOCK_REALTIME */
    int32_t s_creator_pid;
    uint32_t s_pad0;
    uint64_t s_maxsize;         /* record-count bound (multiprocessing maxsize); <= N-1 */
    uint32_t s_crc;
    uint32_t s_pad1;
};
#define FQ_SUPER_CRC_LEN 168u
FQ_STATIC_ASSERT(offsetof(struct fq_super_shm, s_state) == 12, "super layout");
FQ_STATIC_ASSERT(offsetof(struct fq_super_shm, s_off_ctrl) == 64, "super layout");
FQ_STATIC_ASSERT(offsetof(struct fq_super_shm, s_base_seq) == 112, "super layout");
FQ_STATIC_ASSERT(offsetof(struct fq_super_shm, s_maxsize) == 160, "super layout");
FQ_STATIC_ASSERT(offsetof(struct fq_super_shm, s_crc) == FQ_SUPER_CRC_LEN, "super layout");
FQ_STATIC_ASSERT(sizeof(struct fq_super_shm) == 176, "super size");

/* ------------------------------------------------------------------------ *
 * Superblock extension (layout minor >= 1), at byte 256 of page 0.  Written
 * by the creator with the superblock, before READY; its own CRC (a minor-0
 * file has zeros here and no dedup table).
 *
 *   256 x_off_dedup u64 | 264 x_dedup_buckets u32 (0 = no table, else 2^k)
 *   268 x_dedup_window_ms u32 (default window) | 272 x_dedup_key[16] (SipHash key, random)
 *   288 x_crc u32 (CRC32C of [256, 288)) | 292 x_pad u32 | 296
 * ------------------------------------------------------------------------ */
#define FQ_SUPER_EXT_OFF 256u
struct fq_super_ext_shm {
    uint64_t x_off_dedup;
    uint32_t x_dedup_buckets;
    uint32_t x_dedup_window_ms;
    uint8_t x_dedup_key[16];
    uint32_t x_crc;
    uint32_t x_pad;
};
#define FQ_SUPER_EXT_CRC_LEN 32u
FQ_STATIC_ASSERT(offsetof(struct fq_super_ext_shm, x_crc) == FQ_SUPER_EXT_CRC_LEN, "super ext layout");
FQ_STATIC_ASSERT(sizeof(struct fq_super_ext_shm) == 40, "super ext size");
FQ_STATIC_ASSERT(FQ_SUPER_EXT_OFF >= sizeof(struct fq_super_shm), "ext after the superblock");

/* ------------------------------------------------------------------------ *
 * Control block (page 1): one 128-byte block per independently written word.
 *
 *   block  0 (0x000)  c_tail          the claim word: (seq_lo32 << 32) | (pos/8)_lo32
 *   block  1 (0x080)  c_floor_seq, c_floor_pos   cached reclaim floor (CAS-max, both monotone)
 *   block  2 (0x100)  c_data_ec       eventcount "a record was committed / returned"
 *   block  3 (0x180)  c_space_ec      eventcount "a gating low-watermark advanced"
 *   block  4 (0x200)  c_done_ec, c_tasks_done    JoinableQueue task_done/join
 *   block  5 (0x280)  c_recovery_owner, c_recovery_gen, c_last_scan_ns, c_aborted, c_recovered,
 *                     c_abort_seq, c_abort_len, c_member_hwm
 *
 * Counting journals (so qsize stays exact whoever dies where): a counter and
 * its "pending" flag share one word written by a single writer, and the item
 * being counted is recorded beside it first.  c_aborted is written only by
 * the recovery-mutex holder: it stores the run (c_abort_seq/len), then
 * c_aborted|1, writes the gaps, then c_aborted+len with the flag clear.  A
 * recoverer that takes the mutex over from a dead one and finds the flag set
 * rewrites that run (idempotent) and completes the count.
 *   block  6 (0x300)  c_durable_seq, c_durable_ec  (segment store, issue 4)
 *   block  7 (0x380)  c_admin_owner, c_groups_epoch, c_floor_proposal (group admin)
 *
 * c_tail: producers CAS it; full 64-bit seq/pos are rebuilt with serial-number
 * arithmetic against the floor (DPDK modulo-2^32 indexes):
 *     seq = floor_seq + (int32_t)(hi32(tail) - (uint32_t)floor_seq)
 *     pos = floor_pos + 8 * (int32_t)(lo32(tail) - (uint32_t)(floor_pos / 8))
 * exact while tail - floor < 2^31 records and < 2^34 bytes, which the space
 * rules (N <= 2^24 records, C <= 2^32 bytes) guarantee for any tail value
 * loaded BEFORE the floor (a tail loaded before a newer floor yields a
 * negative difference, detected, and retried; its CAS would fail anyway).
 * ABA on c_tail needs 2^32 claims between a load and a CAS: accepted.
 *
 * c_floor_seq / c_floor_pos: lower bounds of the oldest record that some
 * gating group still needs (min over gating groups of g_low) and of its byte
 * position. Each is monotone and each is a valid bound on its own, so readers
 * may combine values from different refreshes.
 * ------------------------------------------------------------------------ */
struct fq_ctrl_shm {
    _Atomic uint64_t c_tail;
    uint8_t c_pad0[FQ_BLOCK - 8];
    _Atomic uint64_t c_floor_seq;
    _Atomic uint64_t c_floor_pos;
    uint8_t c_pad1[FQ_BLOCK - 16];
    _Atomic uint64_t c_data_ec;
    uint8_t c_pad2[FQ_BLOCK - 8];
    _Atomic uint64_t c_space_ec;
    uint8_t c_pad3[FQ_BLOCK - 8];
    _Atomic uint64_t c_done_ec;
    _Atomic uint64_t c_tasks_done;
    uint8_t c_pad4[FQ_BLOCK - 16];
    _Atomic uint32_t c_recovery_owner;   /* member id + 1 of the recoverer; 0 = free */
    _Atomic uint32_t c_recovery_gen;     /* +1 at every acquisition of the recovery mutex */
    _Atomic uint64_t c_last_scan_ns;     /* CLOCK_MONOTONIC of the last liveness scan */
    _Atomic uint64_t c_aborted;          /* (records turned into gaps << 1) | journal pending */
    _Atomic uint64_t c_recovered;        /* dead members recovered */
    _Atomic uint64_t c_abort_seq;        /* journal: first seq of the gap run being written */
    _Atomic uint64_t c_abort_len;        /* journal: its length (0 = an R3 abort of c_abort_seq) */
    _Atomic uint32_t c_member_hwm;       /* 1 + highest member id ever joined (bounds scans) */
    uint8_t c_pad5[FQ_BLOCK - 52];
    _Atomic uint64_t c_durable_seq;
    _Atomic uint64_t c_durable_ec;
    uint8_t c_pad6[FQ_BLOCK - 16];
    _Atomic uint32_t c_admin_owner;      /* member id + 1 of the group admin; 0 = free */
    _Atomic uint32_t c_groups_epoch;     /* +1 at every group create/delete */
    _Atomic uint64_t c_floor_proposal;   /* F0: the highest floor any refresher proposed */
    uint8_t c_pad7[FQ_BLOCK - 16];
};
FQ_STATIC_ASSERT(offsetof(struct fq_ctrl_shm, c_floor_seq) == 1 * FQ_BLOCK, "ctrl layout");
FQ_STATIC_ASSERT(offsetof(struct fq_ctrl_shm, c_data_ec) == 2 * FQ_BLOCK, "ctrl layout");
FQ_STATIC_ASSERT(offsetof(struct fq_ctrl_shm, c_space_ec) == 3 * FQ_BLOCK, "ctrl layout");
FQ_STATIC_ASSERT(offsetof(struct fq_ctrl_shm, c_done_ec) == 4 * FQ_BLOCK, "ctrl layout");
FQ_STATIC_ASSERT(offsetof(struct fq_ctrl_shm, c_recovery_owner) == 5 * FQ_BLOCK, "ctrl layout");
FQ_STATIC_ASSERT(offsetof(struct fq_ctrl_shm, c_durable_seq) == 6 * FQ_BLOCK, "ctrl layout");
FQ_STATIC_ASSERT(offsetof(struct fq_ctrl_shm, c_admin_owner) == 7 * FQ_BLOCK, "ctrl layout");
FQ_STATIC_ASSERT(sizeof(struct fq_ctrl_shm) == 8 * FQ_BLOCK, "ctrl size");
FQ_STATIC_ASSERT(sizeof(struct fq_ctrl_shm) <= FQ_PAGE, "ctrl fits its page");

/* ------------------------------------------------------------------------ *
 * Member slot (128 B): one per process-local handle that produces/consumes.
 *
 *   0 m_state (atom u32) | 4 m_kind | 8 m_pid | 12 m_waiting (atom u32)
 *   16 m_intent (atom u64) | 24 m_heartbeat_ns (atom u64) | 32 m_started_ns
 *   40 m_name[32] | 72 m_puts (atom) | 80 m_gets (atom) | 88 m_ack_word (atom)
 *   96 m_ack_seq (atom) | 104 m_group | 108 .. 128 reserved
 *
 * m_ack_word: acks are counted per member (single writer, no shared RMW):
 * store m_ack_seq = s, store word = count<<1 | 1, CAS the lease to ACKED,
 * store word = (count+1)<<1.  Recovery of a dead member whose word is
 * pending adds 1 iff the entry of m_ack_seq shows ACKED by this member; then
 * it moves the count to the group's g_acked.  qsize sums g_acked and the
 * live members' counts, so it is exact wherever a consumer dies.
 *
 * Liveness is NOT the pid: a member is alive while some open file description
 * holds the OFD write lock on byte FQ_LOCK_BASE + id of the queue file; the
 * kernel drops it however the process dies (iceoryx2 pattern). Joining takes
 * the lock FIRST, then CASes FREE -> ALIVE, so a slot whose state is ALIVE and
 * whose lock is free belongs to a dead process (never to a joiner in progress).
 *
 * m_intent: (seq_lo32 << 32) | (count << 1) | 1 while the member is claiming
 * [seq, seq+count): stored (release) BEFORE the claim CAS and cleared (release)
 * only after every claimed descriptor shows WRITING.  A recoverer that sees
 * tail > s with desc[s] unpublished and no live member's intent covering s
 * knows the claimant is dead (protocol.md R2).  One intent per member: the
 * Python layer holds the GIL from claim to commit, so threads sharing a handle
 * never claim concurrently.
 * ------------------------------------------------------------------------ */
enum { FQ_M_FREE = 0, FQ_M_ALIVE = 1, FQ_M_RECOVERING = 2 };
#define FQ_M_KIND_PRODUCER 0x1u
#define FQ_M_KIND_CONSUMER 0x2u
#define FQ_LOCK_BASE (1LL << 40)        /* OFD lock bytes lie beyond EOF */

struct fq_member_shm {
    _Atomic uint32_t m_state;
    uint32_t m_kind;
    int32_t m_pid;
    _Atomic uint32_t m_waiting;     /* bit per eventcount this member is counted in */
    _Atomic uint64_t m_intent;
    _Atomic uint64_t m_heartbeat_ns;
    int64_t m_started_ns;
    char m_name[32];
    _Atomic uint64_t m_puts;
    _Atomic uint64_t m_gets;
    _Atomic uint64_t m_ack_word;    /* (records acked in m_group << 1) | pending; only this member writes it */
    _Atomic uint64_t m_ack_seq;     /* journal: the record whose ack is pending */
    uint32_t m_group;               /* the group this member acks in */
    uint32_t m_group_gen;           /* ... in this generation of that slot (g_gen); 0 = unbound */
    _Atomic uint32_t m_dedup_lock;  /* journal: dedup bucket whose lock it takes or holds, + 1 (fq_dedup.c) */
    _Atomic uint32_t m_dedup_entry; /* journal: dedup entry it has CLAIMING, + 1 */
    uint8_t m_reserved[8];
};
FQ_STATIC_ASSERT(offsetof(struct fq_member_shm, m_intent) == 16, "member layout");
FQ_STATIC_ASSERT(offsetof(struct fq_member_shm, m_name) == 40, "member layout");
FQ_STATIC_ASSERT(sizeof(struct fq_member_shm) == FQ_BLOCK, "member size");

/* m_waiting bits */
#define FQ_W_DATA 0x1u
#define FQ_W_SPACE 0x2u
#define FQ_W_DONE 0x4u

/* ------------------------------------------------------------------------ *
 * Group (1 KiB).  Group 0 is created with the queue: the implicit group of
 * fastq.Queue, gating (producers never overwrite what it has not finished).
 *
 *   block 0 (0x000)  g_state, g_flags, g_window_log2, g_max_deliveries,
 *                    g_visibility_ms, g_start_seq, g_name[64]   (config)
 *   block 1 (0x080)  g_low, g_acked        written by ackers
 *   block 2 (0x100)  g_dispatch            written by takers (a hint)
 *   block 3 (0x180)  g_retry_pending, g_ec, g_next_deadline, g_gen  (nack, expiry, recovery)
 *   block 4 (0x200)  counters (relaxed): delivered, redelivered, expired, dead, nacked, skipped
 *   0x280            g_dlq[64]: dead-letter queue name
 *   0x2C0            g_backoff[4]: retry policy (nack without a delay)
 *   0x2D0 .. 0x400   reserved
 *
 * Config fields (block 0, g_dlq) are written by the creator under the admin
 * mutex before g_state = ACTIVE (seq_cst) and never change while ACTIVE.
 * The numeric ones are read and written with __atomic builtins (relaxed):
 * a handle of a deleted group may still read them while the slot is reused.
 * Names are only read under the admin mutex.
 * g_next_deadline: a lower bound of the earliest instant at which some
 * entry becomes takeable again (a lease expires, a nack delay ends); takers
 * scan the window only once it has passed, then raise it to the earliest
 * deadline they saw (only replacing a value that had passed).
 *
 * Invariants: every seq < g_low is terminal in this group (ACKED, DEAD or
 * SKIPPED) — g_low only grows (CAS-max) and only over terminal entries.
 * g_dispatch is a hint (CAS-max): takers start at max(g_low, g_dispatch) and
 * the per-entry CAS, not the hint, decides who gets a record.
 * g_retry_pending counts entries in RETRY state (a statistic: a process
 * killed between a transition and its count leaves it off by one).
 * ------------------------------------------------------------------------ */
enum { FQ_G_FREE = 0, FQ_G_ACTIVE = 1, FQ_G_DELETING = 2 };
#define FQ_G_GATING 0x1u

struct fq_group_shm {
    _Atomic uint32_t g_state;
    uint32_t g_flags;
    uint32_t g_window_log2;
    uint32_t g_max_deliveries;      /* 0 = unlimited */
    uint32_t g_visibility_ms;       /* 0 = no visibility timeout */
    uint32_t g_pad0;
    uint64_t g_start_seq;
    char g_name[64];
    uint8_t g_pad1[FQ_BLOCK - 96];
    _Atomic uint64_t g_low;
    _Atomic uint64_t g_acked;       /* acks of members that left or died (+ dropped corrupt records) */
    uint8_t g_pad2[FQ_BLOCK - 16];
    _Atomic uint64_t g_dispatch;
    uint8_t g_pad3[FQ_BLOCK - 8];
    _Atomic int64_t g_retry_pending;
    _Atomic uint64_t g_ec;
    _Atomic uint64_t g_next_deadline;  /* <= every LEASED deadline / RETRY not-before (CAS-min) */
    _Atomic uint32_t g_gen;            /* +1 at every create of this slot: stale handles notice */
    _Atomic uint32_t g_dl_seq;         /* +1 by every deadline insert (see fq__deadline_insert) */
    uint8_t g_pad4[FQ_BLOCK - 32];
    _Atomic uint64_t g_delivered;
    _Atomic uint64_t g_redelivered;
    _Atomic uint64_t g_expired;
    _Atomic uint64_t g_dead;
    _Atomic uint64_t g_nacked;
    _Atomic uint64_t g_skipped;        /* records retention deleted before this group finished them */
    uint8_t g_pad5[FQ_BLOCK - 48];
    char g_dlq[64];                    /* dead-letter target (a queue name), "" = none */
    uint32_t g_backoff[4];             /* retry policy: initial ms, maximum ms, multiplier x1000, jitter x1000 */
    uint8_t g_reserved[3 * FQ_BLOCK - 80];
};
FQ_STATIC_ASSERT(offsetof(struct fq_group_shm, g_low) == 1 * FQ_BLOCK, "group layout");
FQ_STATIC_ASSERT(offsetof(struct fq_group_shm, g_dispatch) == 2 * FQ_BLOCK, "group layout");
FQ_STATIC_ASSERT(offsetof(struct fq_group_shm, g_retry_pending) == 3 * FQ_BLOCK, "group layout");
FQ_STATIC_ASSERT(offsetof(struct fq_group_shm, g_delivered) == 4 * FQ_BLOCK, "group layout");
FQ_STATIC_ASSERT(sizeof(struct fq_group_shm) == 1024, "group size");

/* ------------------------------------------------------------------------ *
 * Descriptor (32 B), desc[seq & (N-1)]: where record `seq` lives.
 *
 *   0                               8                16          20          24          28       30      32
 *   +-------------------------------+----------------+-----------+-----------+-----------+--------+-------+
 *   | d_cw = (seq << 3) | state     | d_ext_start    | d_ext_len | d_frame_off| d_frame_len|producer| flags |
 *   +-------------------------------+----------------+-----------+-----------+-----------+--------+-------+
 *
 * state: EMPTY 0 (never published for this seq), WRITING 1, COMMITTED 2,
 * ABORTED 3 (a gap: dead producer; extent known, no frame).
 * Extent [d_ext_start, d_ext_start + d_ext_len) = padding (d_frame_off bytes,
 * at the arena wrap) + the frame (align8(d_frame_len)).  Extents of
 * consecutive seqs are contiguous: ext_start(s+1) == ext_end(s).
 *
 * Publication: the producer writes the extent fields (relaxed), then
 * d_cw = WRITING (release, P2), then the frame, then d_cw = COMMITTED
 * (release; the last record of a claim uses seq_cst, P4, pairing with the
 * eventcount check of waiting consumers).  A reader trusts the fields only
 * after an acquire load of d_cw shows its own seq (C1).  A slot is rewritten
 * for seq+N only when the floor has passed seq+1 (space rule: claims need
 * s + n - floor_seq <= N - 1), so desc[floor-1] always survives and gives the
 * floor's byte position.
 * ------------------------------------------------------------------------ */
enum { FQ_D_EMPTY = 0, FQ_D_WRITING = 1, FQ_D_COMMITTED = 2, FQ_D_ABORTED = 3 };
#define FQ_D_NO_PRODUCER 0xFFFFu

struct fq_desc_shm {
    _Atomic uint64_t d_cw;
    _Atomic uint64_t d_ext_start;
    _Atomic uint32_t d_ext_len;
    _Atomic uint32_t d_frame_off;
    _Atomic uint32_t d_frame_len;
    _Atomic uint16_t d_producer;
    _Atomic uint16_t d_flags;
};
FQ_STATIC_ASSERT(offsetof(struct fq_desc_shm, d_ext_start) == 8, "desc layout");
FQ_STATIC_ASSERT(offsetof(struct fq_desc_shm, d_frame_len) == 24, "desc layout");
FQ_STATIC_ASSERT(sizeof(struct fq_desc_shm) == 32, "desc size");

/* ------------------------------------------------------------------------ *
 * Lease entry (16 B), window[g][seq & (W-1)]: the state of record seq in group g.
 *
 *   l_w:  63            32 31         16 15          3 2     0
 *         +---------------+-------------+-------------+-------+
 *         | tag32 (seq)   | deliveries16| owner13     | state |
 *         +---------------+-------------+-------------+-------+
 *   l_deadline_ns: lease expiry (LEASED) or not-before (RETRY), CLOCK_MONOTONIC.
 *
 * state: FRESH 0, LEASED 1, ACKED 2, RETRY 3, DEAD 4, SKIPPED 5.
 * An entry whose tag is not seq (an older lap, or zero-initialised) means
 * "FRESH for seq": a lease for seq+W is only attempted when seq+W < low+W,
 * i.e. when the entry's previous occupant is terminal, and entries never
 * leave a terminal state, so the taker's CAS from the observed value cannot
 * overwrite live state.  Every transition is one CAS carrying the owner, so
 * a crash at any point leaves a state that explains itself.  deliveries is
 * also the word's generation (a receipt is seq + deliveries): 16 bits, so a
 * stale CAS can only succeed after 65,535 redeliveries of one record.
 * ------------------------------------------------------------------------ */
enum { FQ_L_FRESH = 0, FQ_L_LEASED = 1, FQ_L_ACKED = 2, FQ_L_RETRY = 3, FQ_L_DEAD = 4, FQ_L_SKIPPED = 5 };
#define FQ_MAX_MEMBERS 8191u    /* owner13; owner 0x1FFF = none */
#define FQ_MAX_GROUPS 64u

struct fq_lease_shm {
    _Atomic uint64_t l_w;
    _Atomic uint64_t l_deadline_ns;
};
FQ_STATIC_ASSERT(sizeof(struct fq_lease_shm) == 16, "lease size");

/* ------------------------------------------------------------------------ *
 * Dedup table (producer-side deduplication, docs/messages.md §3): section
 * off_dedup, B buckets of 4 KiB (B = 2^k).  A key's bucket is h1 & (B-1),
 * h1/h2 = SipHash-2-4 of the key under two keys derived from x_dedup_key.
 *
 *   bucket (4096 B):
 *     0    b_lock  (atom u32)  member id + 1 of the holder; 0 = free
 *     4    b_pad
 *     8    b_hits  (atom u64)  duplicates dropped (relaxed, monitoring)
 *     16.. 64  reserved
 *     64   b_e[63]  entries of 64 B:
 *
 *   entry (64 B):
 *     0  e_state  (atom u32)   state (bits 0..1: FREE 0, CLAIMING 1, SET 2) | owner member << 8
 *     4  e_klen   (atom u32)   key length (diagnostic)
 *     8  e_h1, 16 e_h2 (atom u64)  the key's 128-bit keyed hash (identity)
 *     24 e_seq    (atom u64)   the original record's offset; FQ_DEDUP_NOSEQ until bound
 *     32 e_expiry (atom i64)   SET: CLOCK_REALTIME ns after which the key may be appended again
 *     40 e_set_ns (atom i64)   CLOCK_REALTIME when it became SET (monitoring)
 *     48 e_window (atom i64)   the window (ns) asked for at X1; never overwritten, so
 *                              finishing is idempotent (a resolver killed mid-finish is redone)
 *     56 .. 64 reserved
 *
 * Invariants (fq_dedup.c keeps them):
 *   X-a  an entry's identity (h1, h2, klen) changes only under its bucket
 *        lock, and only from FREE or an expired SET, to CLAIMING(me).
 *   X-b  CLAIMING(m) leaves CLAIMING only by m (SET after its commit, FREE
 *        if it appended nothing) or by the recovery of m when m is dead.
 *   X-c  while an entry is CLAIMING(m), m's journal m_dedup_entry names it;
 *        while m takes or holds a bucket lock, m_dedup_lock names the bucket.
 *   X-d  one (h1, h2) is CLAIMING or unexpired-SET in at most one entry.
 * ------------------------------------------------------------------------ */
enum { FQ_X_FREE = 0, FQ_X_CLAIMING = 1, FQ_X_SET = 2 };
#define FQ_DEDUP_NOSEQ UINT64_MAX
#define FQ_DEDUP_BUCKET 4096u
#define FQ_DEDUP_WAYS 63u
#define FQ_DEDUP_MAX_BUCKETS (1u << 16)     /* 256 MiB of table at most */
struct fq_dedup_entry_shm {
    _Atomic uint32_t e_state;
    _Atomic uint32_t e_klen;
    _Atomic uint64_t e_h1;
    _Atomic uint64_t e_h2;
    _Atomic uint64_t e_seq;
    _Atomic int64_t e_expiry;
    _Atomic int64_t e_set_ns;
    _Atomic int64_t e_window;
    uint8_t e_reserved[8];
};
struct fq_dedup_bucket_shm {
    _Atomic uint32_t b_lock;
    uint32_t b_pad;
    _Atomic uint64_t b_hits;
    uint8_t b_reserved[48];
    struct fq_dedup_entry_shm b_e[FQ_DEDUP_WAYS];
};
FQ_STATIC_ASSERT(sizeof(struct fq_dedup_entry_shm) == 64, "dedup entry size");
FQ_STATIC_ASSERT(sizeof(struct fq_dedup_bucket_shm) == FQ_DEDUP_BUCKET, "dedup bucket size");

/* ------------------------------------------------------------------------ *
 * Frame header (32 B): identical in the ring arena and in segment files.
 *
 *   0 f_len (u32: header + payload) | 4 f_crc (u32, CRC32C or 0) | 8 f_seq (u64)
 *   16 f_ts_ns (i64, CLOCK_REALTIME) | 24 f_flags (u16) | 26 f_version (u16) | 28 f_type (u32)
 *
 * Written by the producer between WRITING and COMMITTED (plain stores, then
 * f_flags |= COMMITTED with release, published again by the release store of
 * d_cw); read by a consumer only while it
 * holds a lease on f_seq (so the bytes cannot be reclaimed under it), after
 * checking f_len == d_frame_len and f_seq == seq.
 * ------------------------------------------------------------------------ */
#define FQ_FRAME_VERSION 1u
#define FQ_FR_DATA 0x1u
/* f_flags bit 15: the frame is complete.  The producer stores f_flags with
 * this bit LAST (release, P4a), just before d_cw = COMMITTED, so a frame is
 * self-describing without its descriptor: the segment store reads frames by
 * header alone (DESIGN.md §2), and a ring consumer checks it too. */
#define FQ_FR_COMMITTED 0x8000u
struct fq_frame_hdr {
    uint32_t f_len;
    uint32_t f_crc;
    uint64_t f_seq;
    int64_t f_ts_ns;
    uint16_t f_flags;
    uint16_t f_version;
    uint32_t f_type;
};
FQ_STATIC_ASSERT(sizeof(struct fq_frame_hdr) == 32, "frame header size");
#define FQ_FRAME_HDR 32u

/* f_flags kinds.  A DATA frame is one record.  A GAP frame stands for
 * f_gap_count records a dead producer claimed but never wrote (recovery R2/R3
 * writes it over the dead extent); count 0 = the continuation of a gap into
 * the next segment.  A PAD frame fills the end of a segment before a frame
 * that did not fit (written by that frame's producer when >= 32 bytes are
 * left; fewer than 32 bytes left at a segment end are skipped by readers). */
#define FQ_FR_GAP 0x2u
#define FQ_FR_PAD 0x4u
#define FQ_FR_KIND (FQ_FR_DATA | FQ_FR_GAP | FQ_FR_PAD)
/* f_type: bits 16..31 = prefix length (the key, or with FQ_TYPE_META the
 * meta region, is the first bytes of the payload), bit 15 = the record has a
 * key (possibly empty), bit 14 = FQ_TYPE_META, bit 13 = FQ_TYPE_DELAYED, bits 0..12 =
 * record type (0).  A GAP frame keeps its record
 * count in f_ts_ns (it has no timestamp). */
#define FQ_KEY_MAX 4096u
#define FQ_TYPE_HAS_KEY 0x8000u
/* bit 14: the prefix is a meta region, not just the key (docs/messages.md):
 *   [u16 key_len (LE)][key: key_len bytes][headers: u16 n, n x (u8 name_len,
 *   name, u8 kind, u32 len (LE), value)]
 * HAS_KEY still says whether there is a key.  The core carries the region
 * opaquely (CRC'd with the payload); fastq._core parses it. */
#define FQ_TYPE_META 0x4000u
/* bit 13 (with META): a delayed record; its meta region starts with
 * [i64 not_before_ns, CLOCK_REALTIME, LE] before the key length.  No group
 * dispatches it earlier (docs/messages.md §2, D1). */
#define FQ_TYPE_DELAYED 0x2000u
/* d_flags: hints about the record a descriptor describes (set before commit) */
#define FQ_D_F_DELAYED 0x1u
static inline uint32_t fq_frame_key_len(const struct fq_frame_hdr *h) { return h->f_type >> 16; }

/* ======================================================================== *
 * The segment store (durable log): a directory
 *
 *   control                  the queue file above (superblock .. windows),
 *                            whose last section ("arena") is the store
 *                            section below instead of a byte ring
 *   <20-digit pos>.seg       segment k: 4 KiB header + S data bytes; log
 *                            position p lives in segment p / S at p % S
 *   <20-digit pos>.idx       its sparse offset + time index
 *
 * A segment is named by its first log position (k * S, in bytes), which is
 * known before any record lands in it, so the next segment can be created
 * ahead of time by any producer without a lock (DESIGN.md §2; Kafka names by
 * the first record offset, which is only known once a record is claimed).
 * The first record of segment k is the frame at data offset 0 (a frame never
 * spans two segments, so every segment starts with a frame header).
 * ======================================================================== */
#define FQ_SEG_MAGIC "FASTQSG"
#define FQ_IDX_MAGIC "FASTQIX"
#define FQ_SEG_HDR 4096u                /* data starts one page into the file */
#define FQ_IDX_BLOCK 4096u              /* one index entry per 4 KiB of segment */
#define FQ_IDX_SHIFT 12u
#define FQ_SEG_MIN (64u << 10)
#define FQ_SEG_MAX ((uint64_t)1 << 30)

/* ------------------------------------------------------------------------ *
 * Segment / index file header (first 128 bytes of page 0), written once by
 * the creator into a private temporary file, which is then link()ed to its
 * final name: a segment file is either absent or complete.
 *
 *   0 h_magic[8] | 8 h_major u16 | 10 h_minor u16 | 12 h_kind u32 (1 seg, 2 idx)
 *   16 h_uuid[16] (the queue's s_uuid) | 32 h_seg_no u64 | 40 h_seg_size u64 (S)
 *   48 h_data_len u64 (bytes after the header page) | 56 h_created_ns i64
 *   64 h_crc u32 (CRC32C of [0, 64)) | 68 h_pad[60]
 * ------------------------------------------------------------------------ */
enum { FQ_H_SEGMENT = 1, FQ_H_INDEX = 2 };
struct fq_file_hdr {
    char h_magic[8];
    uint16_t h_major;
    uint16_t h_minor;
    uint32_t h_kind;
    uint8_t h_uuid[16];
    uint64_t h_seg_no;
    uint64_t h_seg_size;
    uint64_t h_data_len;
    int64_t h_created_ns;
    uint32_t h_crc;
    uint8_t h_pad[60];
};
#define FQ_FILE_HDR_CRC_LEN 64u
FQ_STATIC_ASSERT(offsetof(struct fq_file_hdr, h_crc) == FQ_FILE_HDR_CRC_LEN, "file header layout");
FQ_STATIC_ASSERT(sizeof(struct fq_file_hdr) == 128, "file header size");

/* ------------------------------------------------------------------------ *
 * Index entry (32 B), entry b of segment k's index: written by the producer
 * whose claim extent [p, e) contains the first 4 KiB boundary X >= p of the
 * segment (X not the segment start): "record x_seq starts at data offset
 * x_off and was claimed at x_ts_ns".  Blocks covered by one large claim
 * after the first have no entry (x_mark 0).  An entry is a hint, never
 * trusted over the segment: readers check the frame at x_off shows x_seq.
 *
 *   0 x_seq u64 | 8 x_ts_ns i64 | 16 x_off u32 | 20 x_mark u32 (stored last,
 *   release; FQ_IDX_MARK = valid) | 24 x_pad u64
 * ------------------------------------------------------------------------ */
#define FQ_IDX_MARK 0x58444931u   /* "1IDX" */
struct fq_idx_entry {
    _Atomic uint64_t x_seq;
    _Atomic int64_t x_ts_ns;
    _Atomic uint32_t x_off;
    _Atomic uint32_t x_mark;
    uint64_t x_pad;
};
FQ_STATIC_ASSERT(sizeof(struct fq_idx_entry) == 32, "index entry size");

/* ------------------------------------------------------------------------ *
 * Store section of the control file (the "arena" section of a durable
 * queue, FQ_STORE_SECTION bytes):
 *
 *   +0x0000  fq_ckpt_shm  slot 0 (4 KiB)   checkpoints, written alternately
 *   +0x1000  fq_ckpt_shm  slot 1 (4 KiB)
 *   +0x2000  fq_store_shm (4 KiB)          dynamic store state, 128-byte blocks
 *
 * Checkpoint: "every record below k_seq (position k_pos) was on disk when
 * this was written; group lows were these; retention had deleted every
 * segment below k_retain_seg".  Written by the flusher after fdatasync of the
 * segments, into slot (k_gen & 1), CRC last, then msync'd.  Recovery after a
 * power loss takes the valid slot with the highest k_gen (a torn slot fails
 * its CRC and the other one is used).
 *
 *   0 k_magic u32 | 4 k_crc u32 (CRC32C of [8, 8 + 72 + 16 * k_ngroups))
 *   8 k_gen | 16 k_seq | 24 k_pos | 32 k_retain_seg | 40 k_retain_seq
 *   48 k_ts_ns | 56 k_tail_seq (diagnostic) | 64 k_ngroups u32 | 68 k_pad u32
 *   72 k_boot[8] (first 8 bytes of the boot id) | 80 k_groups[64] {gen u32, state u32, low u64}
 * ------------------------------------------------------------------------ */
#define FQ_CKPT_MAGIC 0x4B435146u   /* "FQCK" */
struct fq_ckpt_group {
    uint32_t kg_gen;
    uint32_t kg_state;
    uint64_t kg_low;
};
struct fq_ckpt_shm {
    uint32_t k_magic;
    uint32_t k_crc;
    uint64_t k_gen;
    uint64_t k_seq;
    uint64_t k_pos;
    uint64_t k_retain_seg;
    uint64_t k_retain_seq;
    int64_t k_ts_ns;
    uint64_t k_tail_seq;
    uint32_t k_ngroups;
    uint32_t k_pad;
    uint8_t k_boot[8];
    struct fq_ckpt_group k_groups[FQ_MAX_GROUPS];
    uint8_t k_reserved[FQ_PAGE - 80 - 16 * FQ_MAX_GROUPS];
};
FQ_STATIC_ASSERT(offsetof(struct fq_ckpt_shm, k_groups) == 80, "checkpoint layout");
FQ_STATIC_ASSERT(sizeof(struct fq_ckpt_shm) == FQ_PAGE, "checkpoint size");

/* ------------------------------------------------------------------------ *
 * Dynamic store state (page 2 of the store section):
 *
 *   block 0  st_retain_seg, st_retain_seq   first retained segment and the
 *            first seq in it (CAS-max, seq_cst; readers below it jump)
 *   block 1  st_flush_owner (member id + 1 of the flusher; 0 = free),
 *            st_flush_gen, st_durable_pos (fdatasync'd prefix; the seq is
 *            ctrl.c_durable_seq, its waiters ctrl.c_durable_ec)
 *   block 2  st_ckpt_gen, st_ckpt_ns, st_ckpt_seq (last checkpoint written)
 *   block 3  st_boot[40]: boot id of the machine that last opened the
 *            store (page cache trusted only within one boot), st_fsync,
 *            st_fsync_interval_us (settings of the creator, informational)
 *   block 4  st_seg_hwm (highest segment number known to exist; CAS-max),
 *            st_skipped (records dropped by recovery policy "skip"),
 *            st_recoveries (cold recoveries run)
 * ------------------------------------------------------------------------ */
struct fq_store_shm {
    _Atomic uint64_t st_retain_seg;
    _Atomic uint64_t st_retain_seq;
    uint8_t st_pad0[FQ_BLOCK - 16];
    _Atomic uint32_t st_flush_owner;
    _Atomic uint32_t st_flush_gen;
    _Atomic uint64_t st_durable_pos;
    uint8_t st_pad1[FQ_BLOCK - 16];
    _Atomic uint64_t st_ckpt_gen;
    _Atomic uint64_t st_ckpt_ns;
    _Atomic uint64_t st_ckpt_seq;
    uint8_t st_pad2[FQ_BLOCK - 24];
    char st_boot[40];
    uint32_t st_fsync;
    uint32_t st_fsync_interval_us;
    uint8_t st_pad3[FQ_BLOCK - 48];
    _Atomic uint64_t st_seg_hwm;
    _Atomic uint64_t st_skipped;
    _Atomic uint64_t st_recoveries;
    uint8_t st_pad4[FQ_BLOCK - 24];
};
FQ_STATIC_ASSERT(sizeof(struct fq_store_shm) == 5 * FQ_BLOCK, "store size");
#define FQ_STORE_SECTION (3u * FQ_PAGE)

FQ_STATIC_ASSERT(sizeof(_Atomic uint64_t) == 8, "8-byte atomics");

#endif /* FQ_LAYOUT_H */
