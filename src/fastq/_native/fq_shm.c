/*
 * fq_shm.c — creating, validating, mapping and removing queue files.
 *
 * Create: named queues are /dev/shm/fastq.<name>, opened O_CREAT|O_EXCL|
 * O_NOFOLLOW with mode 0600 (and fchmod against the umask); anonymous queues
 * are a sealed memfd.  The whole size is reserved with posix_fallocate, so a
 * full /dev/shm fails here with ENOSPC instead of SIGBUS on first touch.  The
 * superblock is published last (s_state = READY, release).
 *
 * Open: fstat first (regular file, owned by our euid, no group/other
 * permission bits, plausible size), then the superblock is mapped read-only,
 * copied to local memory and validated there (magic, layout version, CRC32C,
 * powers of two, limits, page-aligned non-overlapping sections inside the
 * file, with overflow-checked arithmetic).  Only then is the whole file mapped
 * and the geometry kept in the process-local handle; nothing derived from the
 * shared superblock is re-read afterwards.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fq_crc32c.h"
#include "fq_pvt.h"

#define FQ_SHM_DIR "/dev/shm/"
#define FQ_SHM_PREFIX "fastq."

static __thread char fq__errmsg[256];

void fq__set_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fq__errmsg, sizeof fq__errmsg, fmt, ap);
    va_end(ap);
}
#define fq__err fq__set_err

const char *fq_last_error(void) { return fq__errmsg; }

const char *fq_strerror(int st)
{
    switch (st) {
    case FQ_OK: return "ok";
    case FQ_EMPTY: return "empty";
    case FQ_FULL: return "full";
    case FQ_TIMEOUT: return "timed out";
    case FQ_STALLED: return "stalled";
    case FQ_ERR_SYS: return "system error";
    case FQ_ERR_INVAL: return "invalid argument";
    case FQ_ERR_TOO_BIG: return "record too large";
    case FQ_ERR_CORRUPT: return "corrupt shared state";
    case FQ_ERR_FORMAT: return "not a fastq queue";
    case FQ_ERR_PERM: return "permission";
    case FQ_ERR_EXISTS: return "exists";
    case FQ_ERR_NOENT: return "no such queue";
    case FQ_ERR_NOMEM: return "out of shared memory";
    case FQ_ERR_MEMBERS: return "member table full";
    case FQ_ERR_LOST: return "lease lost";
    case FQ_ERR_SIZE: return "record size differs";
    case FQ_ERR_CONFLICT: return "group exists with other settings";
    case FQ_ERR_GROUPS: return "group table full";
    case FQ_ERR_RANGE: return "offset out of range";
    case FQ_ERR_DATA: return "record checksum mismatch";
    case FQ_ERR_BUSY: return "busy";
    case FQ_ERR_DEDUP_FULL: return "dedup table full";
    case FQ_DUPLICATE: return "duplicate";
    default: return "unknown error";
    }
}

int fq_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 200 || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    return 1;
}

static int fq__path(char *out, size_t cap, const char *name)
{
    if (!fq_name_valid(name)) {
        fq__err("invalid queue name %.80s: use 1-200 characters from [A-Za-z0-9._-], not starting with '.'", name);
        return FQ_ERR_INVAL;
    }
    snprintf(out, cap, "%s%s%s", FQ_SHM_DIR, FQ_SHM_PREFIX, name);
    return FQ_OK;
}

static uint64_t fq__pow2(uint64_t x)
{
    uint64_t p = 1;
    while (p < x)
        p <<= 1;
    return p;
}
static int fq__is_pow2(uint64_t x) { return x && !(x & (x - 1)); }
static uint64_t fq__page_up(uint64_t x) { return (x + FQ_PAGE - 1) & ~(uint64_t)(FQ_PAGE - 1); }

static uint32_t fq__fingerprint(void)
{
    /* Sizes and alignments of everything shared (LMDB MDB_LOCK_FORMAT idea). */
    uint32_t v[] = {(uint32_t)sizeof(struct fq_super_shm), (uint32_t)sizeof(struct fq_ctrl_shm),
                    (uint32_t)sizeof(struct fq_member_shm), (uint32_t)sizeof(struct fq_group_shm),
                    (uint32_t)sizeof(struct fq_desc_shm), (uint32_t)sizeof(struct fq_lease_shm),
                    (uint32_t)sizeof(struct fq_frame_hdr), (uint32_t)_Alignof(_Atomic uint64_t),
                    FQ_BLOCK, FQ_LAYOUT_MAJOR, (uint32_t)sizeof(struct fq_file_hdr),
                    (uint32_t)sizeof(struct fq_idx_entry), (uint32_t)sizeof(struct fq_ckpt_shm),
                    (uint32_t)sizeof(struct fq_store_shm)};
    return fq_crc32c(0, v, sizeof v);
}

static uint32_t fq__super_crc(const struct fq_super_shm *s)
{
    struct fq_super_shm c;
    memcpy(&c, s, sizeof c);
    atomic_store_explicit(&c.s_state, 0, FQ_RELAXED);
    return fq_crc32c(0, &c, FQ_SUPER_CRC_LEN);
}

/* Geometry check on a local copy: every section page-aligned, in order,
 * non-overlapping, inside total_size.  All counts are bounded first, so the
 * products below cannot overflow 64 bits. */
static int fq__check_geometry(const struct fq_super_shm *s, uint64_t file_size)
{
#define FQ_BAD(...)                                                                                                   \
    do {                                                                                                              \
        fq__err(__VA_ARGS__);                                                                                         \
        return FQ_ERR_CORRUPT;                                                                                        \
    } while (0)
    if (s->s_total_size != file_size)
        FQ_BAD("queue file size %llu does not match its header (%llu)", (unsigned long long)file_size,
               (unsigned long long)s->s_total_size);
    int durable = (s->s_flags & FQ_F_DURABLE) != 0;
    if (!fq__is_pow2(s->s_arena_cap) || s->s_arena_cap < FQ_PAGE || s->s_arena_cap > ((uint64_t)1 << 32) ||
        (durable && (s->s_arena_cap < FQ_SEG_MIN || s->s_arena_cap > FQ_SEG_MAX)))
        FQ_BAD("bad arena capacity %llu", (unsigned long long)s->s_arena_cap);
    if (s->s_flags & ~(uint32_t)(FQ_F_DURABLE | FQ_F_FRAME_CRC))
        FQ_BAD("unknown queue flags %#x", s->s_flags);
    if (!fq__is_pow2(s->s_desc_count) || s->s_desc_count < 64 || s->s_desc_count > (1u << 24))
        FQ_BAD("bad descriptor count %u", s->s_desc_count);
    if (!fq__is_pow2(s->s_window_max) || s->s_window_max > s->s_desc_count)
        FQ_BAD("bad window %u", s->s_window_max);
    if (s->s_max_members < 1 || s->s_max_members > FQ_MAX_MEMBERS)
        FQ_BAD("bad member count %u", s->s_max_members);
    if (s->s_max_groups < 1 || s->s_max_groups > FQ_MAX_GROUPS)
        FQ_BAD("bad group count %u", s->s_max_groups);
    if (s->s_max_frame < 64 || s->s_max_frame > s->s_arena_cap / 4)
        FQ_BAD("bad max frame %u", s->s_max_frame);
    if (s->s_maxsize > s->s_desc_count - 1)
        FQ_BAD("bad maxsize %llu", (unsigned long long)s->s_maxsize);
    if (s->s_base_seq > ((uint64_t)1 << 60) || (s->s_base_pos & 7u))
        FQ_BAD("bad base position");
    uint64_t offs[6] = {s->s_off_ctrl, s->s_off_members, s->s_off_groups, s->s_off_desc, s->s_off_windows,
                        s->s_off_arena};
    uint64_t lens[6] = {FQ_PAGE, (uint64_t)s->s_max_members * sizeof(struct fq_member_shm),
                        (uint64_t)s->s_max_groups * sizeof(struct fq_group_shm),
                        (uint64_t)s->s_desc_count * sizeof(struct fq_desc_shm),
                        (uint64_t)s->s_max_groups * s->s_window_max * sizeof(struct fq_lease_shm),
                        durable ? (uint64_t)FQ_STORE_SECTION : s->s_arena_cap};
    uint64_t prev_end = FQ_PAGE;
    for (int i = 0; i < 6; i++) {
        if (offs[i] % FQ_PAGE)
            FQ_BAD("section %d not page-aligned", i);
        if (offs[i] < prev_end)
            FQ_BAD("section %d overlaps the previous one", i);
        if (offs[i] > file_size || lens[i] > file_size - offs[i])
            FQ_BAD("section %d extends past the end of the file", i);
        prev_end = offs[i] + lens[i];
    }
    return FQ_OK;
#undef FQ_BAD
}

static uint32_t fq__ext_crc(const struct fq_super_ext_shm *x) { return fq_crc32c(0, x, FQ_SUPER_EXT_CRC_LEN); }

/* The extension of a minor >= 1 superblock, checked on a local copy: its
 * CRC, and a dedup section that lies page-aligned between the lease
 * windows and the arena.  A minor-0 file has no extension (no table). */
static int fq__check_ext(const struct fq_super_shm *s, const struct fq_super_ext_shm *x)
{
    if (s->s_layout_minor < 1)
        return FQ_OK;
    if (fq__ext_crc(x) != x->x_crc) {
        fq__err("queue header extension checksum mismatch: the file is corrupt");
        return FQ_ERR_CORRUPT;
    }
    if (!x->x_dedup_buckets)
        return FQ_OK;
    uint64_t win_end = s->s_off_windows + (uint64_t)s->s_max_groups * s->s_window_max * sizeof(struct fq_lease_shm);
    if (!fq__is_pow2(x->x_dedup_buckets) || x->x_dedup_buckets > FQ_DEDUP_MAX_BUCKETS || !x->x_dedup_window_ms ||
        x->x_off_dedup % FQ_PAGE || x->x_off_dedup < win_end || x->x_off_dedup > s->s_off_arena ||
        (uint64_t)x->x_dedup_buckets * FQ_DEDUP_BUCKET > s->s_off_arena - x->x_off_dedup) {
        fq__err("bad dedup table geometry in the queue header: the file is corrupt");
        return FQ_ERR_CORRUPT;
    }
    return FQ_OK;
}

static void fq__bind_ext(fq_queue *q, const struct fq_super_shm *s, const struct fq_super_ext_shm *x)
{
    if (s->s_layout_minor < 1 || !x->x_dedup_buckets)
        return;
    q->dedup = (struct fq_dedup_bucket_shm *)(q->base + x->x_off_dedup);
    q->dedup_buckets = x->x_dedup_buckets;
    q->dedup_window_ms = x->x_dedup_window_ms;
    memcpy(q->dedup_key, x->x_dedup_key, 16);
    /* h2's key: the same 128 bits, halves swapped and whitened, so h1 and h2
     * are independent functions of the key for anyone without x_dedup_key */
    q->dedup_key[2] = q->dedup_key[1] ^ 0x9E3779B97F4A7C15ull;
    q->dedup_key[3] = q->dedup_key[0] ^ 0xC2B2AE3D27D4EB4Full;
}

static void fq__bind(fq_queue *q, const struct fq_super_shm *s)
{
    q->cap = s->s_arena_cap;
    q->cap_mask = s->s_arena_cap - 1;
    q->n_desc = s->s_desc_count;
    q->desc_mask = s->s_desc_count - 1;
    q->max_frame = s->s_max_frame;
    q->max_members = s->s_max_members;
    q->max_groups = s->s_max_groups;
    q->window = s->s_window_max;
    q->window_mask = s->s_window_max - 1;
    q->maxsize = s->s_maxsize;
    q->limit_records = s->s_maxsize ? s->s_maxsize : (uint64_t)s->s_desc_count - 1;
    q->base_seq = s->s_base_seq;
    q->base_pos = s->s_base_pos;
    q->sup = (struct fq_super_shm *)q->base;
    q->ctrl = (struct fq_ctrl_shm *)(q->base + s->s_off_ctrl);
    q->members = (struct fq_member_shm *)(q->base + s->s_off_members);
    q->groups = (struct fq_group_shm *)(q->base + s->s_off_groups);
    q->desc = (struct fq_desc_shm *)(q->base + s->s_off_desc);
    q->windows = (struct fq_lease_shm *)(q->base + s->s_off_windows);
    q->durable = (s->s_flags & FQ_F_DURABLE) != 0;
    q->seg_shift = (uint32_t)__builtin_ctzll(s->s_arena_cap);
    memcpy(q->uuid, s->s_uuid, 16);
    if (q->durable) {
        q->arena = NULL; /* positions map to segments (fq__at) */
        q->span = (uint64_t)1 << 32;
        q->ckpt = (struct fq_ckpt_shm *)(q->base + s->s_off_arena);
        q->store = (struct fq_store_shm *)(q->base + s->s_off_arena + 2 * FQ_PAGE);
    } else {
        q->arena = q->base + s->s_off_arena;
        q->span = s->s_arena_cap;
    }
}

static void fq__init_handle(fq_queue *q)
{
    memset(q, 0, sizeof *q);
    q->fd = -1;
    q->lock_fd = -1;
    q->member = -1;
    q->dirfd = -1;
    q->open_fd = -1;
    q->pid = getpid();
}

/* Create a queue file: a named /dev/shm object (name), an anonymous memfd
 * (name NULL, dirfd < 0) or the control file of a segment store (dirfd >= 0:
 * "control" in that directory, durable layout). */
int fq__create(fq_queue *q, const char *name, int dirfd, const fq_params *p)
{
    int durable = dirfd >= 0;
    uint64_t cap = fq__pow2(p->capacity < FQ_PAGE ? FQ_PAGE : p->capacity);
    if (durable && (cap < FQ_SEG_MIN || cap > FQ_SEG_MAX)) {
        fq__err("segment_size must be a power of two from %u to %llu bytes", FQ_SEG_MIN,
                (unsigned long long)FQ_SEG_MAX);
        return FQ_ERR_INVAL;
    }
    if (cap > ((uint64_t)1 << 32)) {
        fq__err("capacity %llu is larger than the 4 GiB limit", (unsigned long long)p->capacity);
        return FQ_ERR_INVAL;
    }
    uint64_t n = p->desc_count ? fq__pow2(p->desc_count) : fq__pow2(cap / 128);
    if (p->maxsize && p->maxsize + 1 > n)
        n = fq__pow2(p->maxsize + 1);
    if (n < 64)
        n = 64;
    if (n > (1u << 22) && !p->desc_count && !p->maxsize)
        n = 1u << 22;
    if (durable && !p->desc_count && n > (1u << 16))
        n = 1u << 16; /* the store's descriptors only cover records in flight near the tail */
    if (n > (1u << 24)) {
        fq__err("maxsize/desc_count %llu is larger than the limit of %u records", (unsigned long long)n, 1u << 24);
        return FQ_ERR_INVAL;
    }
    uint64_t w = p->window ? fq__pow2(p->window) : n;
    if (w > n)
        w = n;
    uint32_t m = p->max_members ? p->max_members : 256;
    uint32_t g = p->max_groups ? p->max_groups : 1;
    if (m > FQ_MAX_MEMBERS || g > FQ_MAX_GROUPS) {
        fq__err("max_members <= %u and max_groups <= %u", FQ_MAX_MEMBERS, FQ_MAX_GROUPS);
        return FQ_ERR_INVAL;
    }
    struct fq_super_shm s;
    memset(&s, 0, sizeof s);
    memcpy(s.s_magic, FQ_MAGIC, 8);
    s.s_layout_major = FQ_LAYOUT_MAJOR;
    s.s_layout_minor = FQ_LAYOUT_MINOR;
    s.s_fingerprint = fq__fingerprint();
    s.s_arena_cap = cap;
    s.s_desc_count = (uint32_t)n;
    s.s_max_frame = (uint32_t)((cap / 4) > 0xFFFFFFF0u ? 0xFFFFFFF0u : cap / 4);
    s.s_max_members = m;
    s.s_max_groups = g;
    s.s_window_max = (uint32_t)w;
    s.s_uid = (uint32_t)geteuid();
    s.s_maxsize = p->maxsize;
    s.s_off_ctrl = FQ_PAGE;
    s.s_off_members = 2 * FQ_PAGE;
    s.s_off_groups = s.s_off_members + fq__page_up((uint64_t)m * sizeof(struct fq_member_shm));
    s.s_off_desc = s.s_off_groups + fq__page_up((uint64_t)g * sizeof(struct fq_group_shm));
    s.s_off_windows = s.s_off_desc + fq__page_up(n * sizeof(struct fq_desc_shm));
    struct fq_super_ext_shm x;
    memset(&x, 0, sizeof x);
    if (p->dedup_slots) {
        uint64_t b = fq__pow2(((uint64_t)p->dedup_slots + FQ_DEDUP_WAYS - 1) / FQ_DEDUP_WAYS);
        if (b > FQ_DEDUP_MAX_BUCKETS) {
            fq__err("dedup_slots %u is larger than the limit of %u", p->dedup_slots,
                    FQ_DEDUP_MAX_BUCKETS * FQ_DEDUP_WAYS);
            return FQ_ERR_INVAL;
        }
        x.x_dedup_buckets = (uint32_t)b;
        x.x_dedup_window_ms = p->dedup_window_ms ? p->dedup_window_ms : 300000u;
        if (getrandom(x.x_dedup_key, sizeof x.x_dedup_key, 0) != (ssize_t)sizeof x.x_dedup_key) {
            fq__err("getrandom: %s", strerror(errno));
            return FQ_ERR_SYS;
        }
    }
    x.x_off_dedup = s.s_off_windows + fq__page_up((uint64_t)g * w * sizeof(struct fq_lease_shm));
    s.s_off_arena = x.x_off_dedup + (uint64_t)x.x_dedup_buckets * FQ_DEDUP_BUCKET;
    if (!x.x_dedup_buckets)
        x.x_off_dedup = 0;
    x.x_crc = fq__ext_crc(&x);
    s.s_total_size = s.s_off_arena + (durable ? (uint64_t)FQ_STORE_SECTION : cap);
    s.s_flags = durable ? FQ_F_DURABLE | FQ_F_FRAME_CRC : 0;
    s.s_created_ns = fq_realtime_ns();
    s.s_creator_pid = (int32_t)getpid();
    {
        uint64_t a = (uint64_t)s.s_created_ns ^ ((uint64_t)getpid() << 32), b = (uintptr_t)q;
        memcpy(s.s_uuid, &a, 8);
        memcpy(s.s_uuid + 8, &b, 8);
    }

    int fd;
    if (durable) {
        snprintf(q->path, sizeof q->path, "%s", name);
        fd = openat(dirfd, "control", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            if (errno == EEXIST) {
                fq__err("log %s already exists", name);
                return FQ_ERR_EXISTS;
            }
            fq__err("cannot create %s/control: %s", name, strerror(errno));
            return FQ_ERR_SYS;
        }
    } else if (name) {
        int rc = fq__path(q->path, sizeof q->path, name);
        if (rc)
            return rc;
        fd = open(q->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            if (errno == EEXIST) {
                fq__err("queue %s already exists", name);
                return FQ_ERR_EXISTS;
            }
            fq__err("cannot create %s: %s", q->path, strerror(errno));
            return FQ_ERR_SYS;
        }
    } else {
        fd = memfd_create("fastq", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0) {
            fq__err("memfd_create: %s", strerror(errno));
            return FQ_ERR_SYS;
        }
        q->anonymous = 1;
    }
    int err = 0;
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)s.s_total_size) != 0)
        err = errno;
    if (!err)
        err = posix_fallocate(fd, 0, (off_t)s.s_total_size);
    if (err) {
        if (durable)
            unlinkat(dirfd, "control", 0);
        else if (name)
            unlink(q->path);
        close(fd);
        fq__err("cannot reserve %llu bytes of shared memory: %s", (unsigned long long)s.s_total_size,
                strerror(err));
        return (err == ENOSPC || err == ENOMEM) ? FQ_ERR_NOMEM : FQ_ERR_SYS;
    }
    if (!name)
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    void *base = mmap(NULL, s.s_total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        err = errno;
        if (durable)
            unlinkat(dirfd, "control", 0);
        else if (name)
            unlink(q->path);
        close(fd);
        fq__err("mmap: %s", strerror(err));
        return FQ_ERR_SYS;
    }
    q->base = base;
    q->map_size = s.s_total_size;
    q->fd = fd;
    struct fq_super_shm *sup = (struct fq_super_shm *)q->base;
    atomic_store_explicit(&sup->s_state, FQ_S_INIT, FQ_RELAXED);
    fq__bind(q, &s);
    fq__bind_ext(q, &s, &x);
    /* group 0: the implicit group of fastq.Queue, gating the ring */
    struct fq_group_shm *g0 = &q->groups[0];
    for (uint32_t i = 0; i < g; i++)
        atomic_store_explicit(&q->groups[i].g_next_deadline, (uint64_t)INT64_MAX, FQ_RELAXED);
    if (p->flags & FQ_P_NO_QUEUE_GROUP)
        goto publish;
    FQ_CFG_STORE(g0->g_flags, FQ_G_GATING);
    FQ_CFG_STORE(g0->g_window_log2, (uint32_t)__builtin_ctzll(w));
    g0->g_start_seq = s.s_base_seq;
    memcpy(g0->g_name, "queue", 6);
    atomic_store_explicit(&g0->g_low, s.s_base_seq, FQ_RELAXED);
    atomic_store_explicit(&g0->g_dispatch, s.s_base_seq, FQ_RELAXED);
    atomic_store_explicit(&g0->g_next_deadline, (uint64_t)INT64_MAX, FQ_RELAXED);
    atomic_store_explicit(&g0->g_state, FQ_G_ACTIVE, FQ_RELAXED);
publish:
    atomic_store_explicit(&q->ctrl->c_tail, fq__tail_pack(s.s_base_seq, s.s_base_pos), FQ_RELAXED);
    atomic_store_explicit(&q->ctrl->c_floor_seq, s.s_base_seq, FQ_RELAXED);
    atomic_store_explicit(&q->ctrl->c_floor_pos, s.s_base_pos, FQ_RELAXED);
    /* superblock last; s_state = READY with release publishes everything */
    s.s_crc = fq__super_crc(&s);
    memcpy((char *)sup + 16, (char *)&s + 16, sizeof s - 16);
    memcpy(sup->s_magic, s.s_magic, 8);
    sup->s_layout_major = s.s_layout_major;
    sup->s_layout_minor = s.s_layout_minor;
    memcpy((char *)sup + FQ_SUPER_EXT_OFF, &x, sizeof x);
    FQ_CRASHPOINT("create.before_ready");
    if (durable)
        return FQ_OK; /* fq_create_dir publishes READY once the store is complete (its open lock held) */
    atomic_store_explicit(&sup->s_state, FQ_S_READY, FQ_RELEASE);
    return FQ_OK;
}

int fq_create(fq_queue *q, const char *name, const fq_params *p)
{
    fq__init_handle(q);
    fq__errmsg[0] = 0;
    return fq__create(q, name, -1, p);
}

int fq__attach(fq_queue *q, int fd, int64_t wait_ns)
{
    struct stat st;
    struct fq_super_shm *sup;
    int64_t until = fq_now_ns() + wait_ns;
    static const char zero8[8];
    for (;;) {
        if (fstat(fd, &st) != 0) {
            fq__err("fstat: %s", strerror(errno));
            return FQ_ERR_SYS;
        }
        if (!S_ISREG(st.st_mode)) {
            fq__err("%s is not a regular file", q->path[0] ? q->path : "queue");
            return FQ_ERR_FORMAT;
        }
        if (st.st_uid != geteuid()) {
            fq__err("%s is owned by uid %u, not by us (uid %u)", q->path[0] ? q->path : "queue",
                    (unsigned)st.st_uid, (unsigned)geteuid());
            return FQ_ERR_PERM;
        }
        if (st.st_mode & 077) {
            fq__err("%s has group/other permissions (mode %03o); fastq requires 0600",
                    q->path[0] ? q->path : "queue", (unsigned)(st.st_mode & 0777));
            return FQ_ERR_PERM;
        }
        int small = (uint64_t)st.st_size < 3 * FQ_PAGE, blank = 0;
        sup = NULL;
        if (!small) {
            sup = mmap(NULL, FQ_PAGE, PROT_READ, MAP_SHARED, fd, 0);
            if (sup == MAP_FAILED) {
                fq__err("mmap: %s", strerror(errno));
                return FQ_ERR_SYS;
            }
            blank = memcmp(sup->s_magic, zero8, 8) == 0;
            if (!blank)
                break;
        }
        /* A file created a moment ago may still be empty or without its magic
         * (the creator truncates, then fills, then writes the magic): wait
         * for it like for READY below.  An old one is refused at once. */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        int young = now.tv_sec - st.st_mtim.tv_sec < 5;
        if (sup)
            munmap(sup, FQ_PAGE);
        if (!young || fq_now_ns() >= until) {
            if (small)
                fq__err("%s is too small to be a fastq queue (%lld bytes)", q->path[0] ? q->path : "queue",
                        (long long)st.st_size);
            else
                fq__err("%s is not a fastq queue (bad magic)", q->path[0] ? q->path : "queue");
            return FQ_ERR_FORMAT;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    int rc = FQ_OK;
    struct fq_super_shm s;
    struct fq_super_ext_shm x;
    if (memcmp(sup->s_magic, FQ_MAGIC, 8) != 0) {
        fq__err("%s is not a fastq queue (bad magic)", q->path[0] ? q->path : "queue");
        rc = FQ_ERR_FORMAT;
        goto out;
    }
    if (sup->s_layout_major != FQ_LAYOUT_MAJOR) {
        fq__err("queue layout version %u is not supported (this fastq reads %u)", sup->s_layout_major,
                FQ_LAYOUT_MAJOR);
        rc = FQ_ERR_FORMAT;
        goto out;
    }
    uint32_t state;
    while ((state = atomic_load_explicit(&sup->s_state, FQ_ACQUIRE)) != FQ_S_READY) {
        if (state == FQ_S_POISONED || fq_now_ns() >= until)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (state != FQ_S_READY) {
        fq__err("queue %s is not initialised (its creator died or is still creating it)",
                q->path[0] ? q->path : "");
        rc = FQ_ERR_FORMAT;
        goto out;
    }
    memcpy(&s, sup, sizeof s);
    if (fq__super_crc(&s) != s.s_crc) {
        fq__err("queue header checksum mismatch: the file is corrupt");
        rc = FQ_ERR_CORRUPT;
        goto out;
    }
    if (s.s_fingerprint != fq__fingerprint()) {
        fq__err("queue was created by an incompatible build of fastq (layout fingerprint differs)");
        rc = FQ_ERR_FORMAT;
        goto out;
    }
    rc = fq__check_geometry(&s, (uint64_t)st.st_size);
    memcpy(&x, (const char *)sup + FQ_SUPER_EXT_OFF, sizeof x);
    if (rc == FQ_OK)
        rc = fq__check_ext(&s, &x);
out:
    munmap(sup, FQ_PAGE);
    if (rc)
        return rc;
    void *base = mmap(NULL, s.s_total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        fq__err("mmap: %s", strerror(errno));
        return FQ_ERR_SYS;
    }
    q->base = base;
    q->map_size = s.s_total_size;
    q->fd = fd;
    fq__bind(q, &s);
    fq__bind_ext(q, &s, &x);
    if (!q->durable && !fq__check_dynamic(q)) {
        fq__err("queue control state is inconsistent (tail, floor or group positions out of bounds): "
                "the file is corrupt");
        munmap(q->base, q->map_size);
        q->base = NULL;
        q->fd = -1;
        return FQ_ERR_CORRUPT;
    }
    return FQ_OK;
}

int fq_open(fq_queue *q, const char *name, int64_t wait_ns)
{
    fq__init_handle(q);
    fq__errmsg[0] = 0;
    int rc = fq__path(q->path, sizeof q->path, name);
    if (rc)
        return rc;
    int fd = open(q->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            fq__err("no queue named %s", name);
            return FQ_ERR_NOENT;
        }
        if (errno == EACCES || errno == ELOOP) {
            fq__err("cannot open %s: %s", q->path, strerror(errno));
            return FQ_ERR_PERM;
        }
        fq__err("cannot open %s: %s", q->path, strerror(errno));
        return FQ_ERR_SYS;
    }
    rc = fq__attach(q, fd, wait_ns);
    if (rc)
        close(fd);
    return rc;
}

int fq_open_fd(fq_queue *q, int fd)
{
    fq__init_handle(q);
    fq__errmsg[0] = 0;
    q->anonymous = 1;
    int rc = fq__attach(q, fd, 0);
    if (rc)
        return rc;
    return FQ_OK;
}

void fq_close(fq_queue *q)
{
    if (!q->base)
        return;
    if (q->durable && q->member >= 0 && q->pid == getpid() &&
        (q->members[q->member].m_kind & FQ_M_KIND_PRODUCER))
        fq_checkpoint(q); /* best effort: a producer's clean close leaves a short recovery scan */
    fq_leave(q);
    if (q->durable)
        fq__store_close(q);
    munmap(q->base, q->map_size);
    q->base = NULL;
    if (q->lock_fd >= 0)
        close(q->lock_fd);
    if (q->fd >= 0)
        close(q->fd);
    q->fd = q->lock_fd = -1;
}

int fq_unlink(const char *name)
{
    char path[256];
    int rc = fq__path(path, sizeof path, name);
    if (rc)
        return rc;
    if (unlink(path) != 0) {
        if (errno == ENOENT) {
            fq__err("no queue named %s", name);
            return FQ_ERR_NOENT;
        }
        fq__err("cannot unlink %s: %s", path, strerror(errno));
        return FQ_ERR_SYS;
    }
    return FQ_OK;
}
