# _capi.pxd — declarations of the C core (src/fastq/_native/fq.h).  Only declarations.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, int32_t

cdef extern from "fq.h" nogil:
    ctypedef enum fq_status:
        FQ_OK
        FQ_EMPTY
        FQ_FULL
        FQ_TIMEOUT
        FQ_STALLED
        FQ_DUPLICATE
        FQ_ERR_SYS
        FQ_ERR_INVAL
        FQ_ERR_TOO_BIG
        FQ_ERR_CORRUPT
        FQ_ERR_FORMAT
        FQ_ERR_PERM
        FQ_ERR_EXISTS
        FQ_ERR_NOENT
        FQ_ERR_NOMEM
        FQ_ERR_MEMBERS
        FQ_ERR_LOST
        FQ_ERR_SIZE
        FQ_ERR_CONFLICT
        FQ_ERR_GROUPS
        FQ_ERR_RANGE
        FQ_ERR_DATA
        FQ_ERR_BUSY
        FQ_ERR_DEDUP_FULL

    ctypedef struct fq_params:
        uint64_t capacity
        uint64_t maxsize
        uint32_t desc_count
        uint32_t window
        uint32_t max_members
        uint32_t max_groups
        uint32_t flags
        uint32_t dedup_slots
        uint32_t dedup_window_ms

    ctypedef struct fq_dedup_stats:
        uint64_t slots, set, claiming, expired, hits
        uint32_t window_ms
    int fq_dedup_begin(fq_queue *q, const void *key, uint32_t klen, int64_t window_ns, uint64_t *orig_seq,
                       uint32_t *slot)
    void fq_dedup_bind(fq_queue *q, uint32_t slot, uint64_t seq)
    void fq_dedup_end(fq_queue *q, uint32_t slot, int committed)
    void fq_dedup_get_stats(fq_queue *q, fq_dedup_stats *st)

    enum: FQ_P_NO_QUEUE_GROUP
    enum: FQ_MSG_DEADLETTER
    enum: FQ_MSG_KEY
    enum: FQ_MSG_META
    enum: FQ_MSG_DELAYED
    enum: FQ_START_EARLIEST
    enum: FQ_START_LATEST
    enum: FQ_START_SEQ

    ctypedef struct fq_group_cfg:
        const char *name
        uint32_t window
        uint32_t max_deliveries
        uint32_t visibility_ms
        uint32_t start
        uint64_t start_seq
        const char *dlq
        uint32_t backoff[4]

    ctypedef struct fq_queue:
        uint8_t *base
        int fd
        int member
        int anonymous
        uint64_t cap
        uint32_t n_desc
        uint32_t max_frame
        uint32_t max_members
        uint32_t max_groups
        uint32_t window
        uint64_t maxsize
        uint64_t limit_records
        int durable
        uint32_t fsync_mode

    ctypedef struct fq_msg:
        uint64_t seq
        const uint8_t *data
        uint32_t len
        uint32_t deliveries
        int64_t ts_ns
        uint32_t flags
        uint32_t key_len

    ctypedef struct fq_stats:
        uint64_t tail_seq, tail_pos, floor_seq, floor_pos
        uint64_t low, dispatch, acked, delivered, redelivered, dead, expired, nacked
        uint64_t pending, lag_bytes, oldest_ts_ns
        int64_t retry_pending
        uint64_t aborted, recovered, tasks_done
        uint64_t skipped, first_seq, durable_seq
        uint32_t data_waiters, space_waiters, members_alive, recovery_owner, consumers
    void fq_get_stats(fq_queue *q, uint32_t g, fq_stats *st)

    int fq_name_valid(const char *name)
    int fq_create(fq_queue *q, const char *name, const fq_params *p)
    int fq_open(fq_queue *q, const char *name, int64_t wait_ns)
    int fq_open_fd(fq_queue *q, int fd)
    void fq_close(fq_queue *q)
    int fq_unlink(const char *name)
    int fq_after_fork_child(fq_queue *q)
    int fq_join(fq_queue *q, uint32_t kind)
    void fq_leave(fq_queue *q)

    int fq_claim(fq_queue *q, const uint32_t *lens, uint32_t n, uint64_t *first_seq)
    uint8_t *fq_payload(fq_queue *q, uint64_t seq)
    void fq_commit(fq_queue *q, uint64_t first_seq, uint32_t n)
    uint32_t fq_max_payload(const fq_queue *q)
    uint64_t fq_batch_limit(const fq_queue *q)
    uint64_t fq_frame_bytes(uint32_t len)

    int fq_take(fq_queue *q, uint32_t g, fq_msg *out, uint32_t max, uint32_t only_len, uint32_t *n_out)
    int fq_ack(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n)
    int fq_dead(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n)
    int fq_ack_n(fq_queue *q, uint32_t g, const fq_msg *msgs, uint32_t n, uint32_t *acked)
    int fq_group_open(fq_queue *q, const fq_group_cfg *cfg, uint32_t *g_out, int *created)
    int fq_group_find(fq_queue *q, const char *name, uint32_t *g_out)
    int fq_group_delete(fq_queue *q, const char *name)
    int fq_nack(fq_queue *q, uint32_t g, const fq_msg *m, uint64_t delay_ns)
    int fq_extend(fq_queue *q, uint32_t g, const fq_msg *m, uint64_t ms)
    int fq_member_group(fq_queue *q, uint32_t g)
    int fq_group_info(fq_queue *q, uint32_t g, fq_group_cfg *out, char *name, char *dlq)
    int fq_peek(fq_queue *q, uint64_t seq, uint8_t *buf, uint32_t cap, fq_msg *out, uint64_t *floor)
    int fq_finished(fq_queue *q, uint32_t g, uint64_t seq)
    int fq_lease_state(fq_queue *q, uint32_t g, uint64_t seq, uint32_t *deliveries)
    uint32_t fq_leases_held(fq_queue *q, uint32_t g, uint32_t member)
    int fq_group_reset(fq_queue *q, const char *name, uint32_t start, uint64_t start_seq, int force, uint32_t *live)
    ctypedef struct fq_member_info:
        int32_t pid
        uint32_t kind
        uint32_t group
        int bound
        int alive
        int64_t started_ns
        int64_t heartbeat_ns
        uint64_t puts
        uint64_t gets
        uint64_t acked
        char name[32]
    int fq_member_peek(fq_queue *q, uint32_t i, fq_member_info *out)
    void fq_member_set_name(fq_queue *q, const char *name)

    uint64_t fq_tail_seq(fq_queue *q)
    uint64_t fq_qsize(fq_queue *q, uint32_t g)
    int fq_task_done(fq_queue *q, uint64_t n)
    uint64_t fq_unfinished(fq_queue *q)

    int fq_wait_data(fq_queue *q, uint32_t g, int64_t deadline_ns, uint32_t spin_ns)
    int fq_wait_space(fq_queue *q, uint64_t n_records, uint64_t n_bytes, int64_t deadline_ns)
    int fq_wait_done(fq_queue *q, int64_t deadline_ns)
    void fq_wake_all(fq_queue *q)
    int64_t fq_now_ns()
    int64_t fq_clock_skew_ns

    int fq_maintain(fq_queue *q, int force)
    int fq_member_alive(fq_queue *q, uint32_t id)

    enum: FQ_FSYNC_NEVER
    enum: FQ_FSYNC_INTERVAL
    enum: FQ_FSYNC_ALWAYS
    enum: FQ_RECOVER_AUTO
    enum: FQ_RECOVER_FORCE
    enum: FQ_CORRUPT_REFUSE
    enum: FQ_CORRUPT_SKIP
    ctypedef struct fq_recovery_report:
        int ran, reason
        uint64_t ckpt_seq, ckpt_pos, tail_seq, tail_pos, scanned, truncated_bytes, corrupt_seq, skipped
        uint64_t leases_reset
        uint32_t groups, segments_removed, index_rebuilt
        int corrupt
    ctypedef struct fq_cursor:
        uint64_t seq, pos
    int fq_create_dir(fq_queue *q, const char *dir, const fq_params *p, uint32_t fsync_mode)
    int fq_open_dir(fq_queue *q, const char *dir, int64_t wait_ns, int recover, int corrupt_policy,
                    fq_recovery_report *rep)
    int fq_flush(fq_queue *q, uint64_t upto_seq, int64_t deadline_ns)
    int fq_checkpoint(fq_queue *q)
    uint64_t fq_durable_seq(fq_queue *q)
    int fq_retain(fq_queue *q, uint64_t max_bytes, int64_t max_age_ns, int consumed)
    uint64_t fq_first_seq(fq_queue *q)
    int fq_seek_seq(fq_queue *q, uint64_t seq, fq_cursor *c)
    int fq_seek_time(fq_queue *q, int64_t ts_ns, fq_cursor *c)
    int fq_read_next(fq_queue *q, fq_cursor *c, fq_msg *out)
    uint64_t fq_frontier(fq_queue *q)
    void fq_set_key_len(fq_queue *q, uint64_t seq, uint32_t key_len)
    void fq_set_prefix(fq_queue *q, uint64_t seq, uint32_t prefix_len, unsigned prefix_flags)
    int fq_verify(fq_queue *q, uint64_t *records, uint64_t *bad_seq)
    int64_t fq_realtime_ns()

    void FQ_CRASHPOINT(const char *name)
    void fq_crash_arm(const char *spec)
    const char *fq_strerror(int status)
    const char *fq_last_error()
