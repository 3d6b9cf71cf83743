/*
 * fq_store.c — the segment store: a durable log in a directory.
 *
 * The control file is an ordinary queue file (fq_shm.c) whose last section
 * is the store section (checkpoints + store state) instead of a byte ring;
 * every other part of the protocol — the claim word, descriptors, intents,
 * groups, windows, liveness, recovery — is the same code as the ring.  What
 * differs is where a byte position lives and who gates the descriptor ring:
 *
 *   position p  -> segment p >> seg_shift, data offset p & (S-1)
 *                  (fq__place pads at segment ends exactly as at the ring's
 *                  wrap, so a frame never spans two segments)
 *   floor       -> the commit frontier: every record below it is COMMITTED
 *                  or a gap.  Groups never gate producers (DESIGN.md §2):
 *                  a group that falls behind the descriptor ring reads its
 *                  records from the segments, by header alone.
 *
 * Edges (docs/protocol.md, segment store):
 *   S1  producer: before the claim CAS, the segments its extent touches exist
 *       and are mapped (a claim never needs a file it cannot get).
 *   S2  producer: after the CAS, the index entry of the first 4 KiB boundary
 *       in its extent (fields relaxed, x_mark release), and a PAD header in
 *       front of a frame that moved to the next segment.
 *   S3  producer: fills the frame, then f_crc, then f_flags |= COMMITTED
 *       (release, P4a) before d_cw = COMMITTED (P4).
 *   S4  frontier refresh: walks descriptors with acquire loads from the
 *       floor while COMMITTED/ABORTED, then CAS-max floor_pos, then
 *       floor_seq (seq_cst).  A reader that loads floor_seq then floor_pos
 *       (acquire) sees every frame header, PAD and gap below them, and a
 *       position that covers every record below that seq.
 *   S5  recovery: writes gap frames over a dead extent before publishing
 *       ABORTED (release), so S4 never passes a hole.
 *   S6  flusher: msync(MS_SYNC) of [durable_pos, frontier) then
 *       st_durable_pos, c_durable_seq (seq_cst), then wakes waiters.
 *   S7  retention: CAS-max st_retain_*, checkpoint (msync), jump group lows,
 *       then unlink: no reader ever looks for a file below st_retain_seg.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fq_crc32c.h"
#include "fq_pvt.h"

#define FQ_SEG_MASK(q) ((q)->cap_mask)
#define FQ_NBLOCKS(q) ((q)->cap >> FQ_IDX_SHIFT)
#define FQ_IDX_BYTES(q) (FQ_NBLOCKS(q) * sizeof(struct fq_idx_entry))

static void fq__seg_name(char *out, size_t cap, uint64_t first_pos, int kind)
{
    snprintf(out, cap, "%020llu.%s", (unsigned long long)first_pos, kind == FQ_H_SEGMENT ? "seg" : "idx");
}

static uint32_t fq__file_hdr_crc(const struct fq_file_hdr *h) { return fq_crc32c(0, h, FQ_FILE_HDR_CRC_LEN); }

static void fq__file_hdr_fill(fq_queue *q, struct fq_file_hdr *h, uint64_t k, int kind)
{
    memset(h, 0, sizeof *h);
    memcpy(h->h_magic, kind == FQ_H_SEGMENT ? FQ_SEG_MAGIC : FQ_IDX_MAGIC, 8);
    h->h_major = FQ_LAYOUT_MAJOR;
    h->h_minor = FQ_LAYOUT_MINOR;
    h->h_kind = (uint32_t)kind;
    memcpy(h->h_uuid, q->uuid, 16);
    h->h_seg_no = k;
    h->h_seg_size = q->cap;
    h->h_data_len = kind == FQ_H_SEGMENT ? q->cap : FQ_IDX_BYTES(q);
    h->h_created_ns = fq_realtime_ns();
    h->h_crc = fq__file_hdr_crc(h);
}

/* Validate a segment/index file before mapping it: owner, mode, size, then
 * the header (magic, version, kind, queue identity, number, size, CRC). */
static int fq__file_check(fq_queue *q, int fd, uint64_t k, int kind)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
        return 0;
    uint64_t want = FQ_SEG_HDR + (kind == FQ_H_SEGMENT ? q->cap : FQ_IDX_BYTES(q));
    if ((uint64_t)st.st_size != want)
        return 0;
    struct fq_file_hdr h;
    if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
        return 0;
    return memcmp(h.h_magic, kind == FQ_H_SEGMENT ? FQ_SEG_MAGIC : FQ_IDX_MAGIC, 8) == 0 &&
           h.h_major == FQ_LAYOUT_MAJOR && h.h_kind == (uint32_t)kind && memcmp(h.h_uuid, q->uuid, 16) == 0 &&
           h.h_seg_no == k && h.h_seg_size == q->cap && h.h_data_len == want - FQ_SEG_HDR &&
           h.h_crc == fq__file_hdr_crc(&h);
}

/* Create segment k's file of one kind: a private temporary file, complete
 * (size reserved, header written), then link()ed to its final name — a file
 * is either absent or whole, and two creators race harmlessly (EEXIST). */
static int fq__file_create(fq_queue *q, uint64_t k, int kind)
{
    char name[64], tmp[96];
    fq__seg_name(name, sizeof name, k << q->seg_shift, kind);
    if (faccessat(q->dirfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
        return FQ_OK;
    static _Atomic uint32_t counter;
    snprintf(tmp, sizeof tmp, "tmp.%d.%u.%s", (int)getpid(), atomic_fetch_add_explicit(&counter, 1, FQ_RELAXED), name);
    int fd = openat(q->dirfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        fq__set_err("cannot create %s: %s", tmp, strerror(errno));
        return FQ_ERR_SYS;
    }
    uint64_t len = FQ_SEG_HDR + (kind == FQ_H_SEGMENT ? q->cap : FQ_IDX_BYTES(q));
    struct fq_file_hdr h;
    fq__file_hdr_fill(q, &h, k, kind);
    int err = 0;
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)len) != 0)
        err = errno;
    if (!err)
        err = posix_fallocate(fd, 0, (off_t)len);
    if (!err && pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
        err = errno ? errno : EIO;
    if (!err && q->fsync_mode != FQ_FSYNC_NEVER && fdatasync(fd) != 0)
        err = errno;
    close(fd);
    if (!err) {
        FQ_CRASHPOINT("store.roll");
        if (linkat(q->dirfd, tmp, q->dirfd, name, 0) != 0 && errno != EEXIST)
            err = errno;
    }
    unlinkat(q->dirfd, tmp, 0);
    if (err) {
        fq__set_err("cannot create segment file %s (%llu bytes): %s", name, (unsigned long long)len, strerror(err));
        errno = err;
        return err == ENOSPC ? FQ_ERR_NOMEM : FQ_ERR_SYS;
    }
    if (q->fsync_mode != FQ_FSYNC_NEVER)
        fsync(q->dirfd);
    return FQ_OK;
}

static void *fq__file_map(fq_queue *q, uint64_t k, int kind, size_t *len)
{
    char name[64];
    fq__seg_name(name, sizeof name, k << q->seg_shift, kind);
    int fd = openat(q->dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    void *m = NULL;
    if (fq__file_check(q, fd, k, kind)) {
        *len = FQ_SEG_HDR + (kind == FQ_H_SEGMENT ? q->cap : FQ_IDX_BYTES(q));
        m = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED)
            m = NULL;
    } else {
        errno = EINVAL;
        fq__set_err("segment file %s failed validation (header, size, owner or mode)", name);
    }
    close(fd);
    return m;
}

static void fq__segmap_drop(struct fq_segmap *e)
{
    if (e->seg)
        munmap(e->seg, e->seg_len);
    if (e->idx)
        munmap(e->idx, e->idx_len);
    memset(e, 0, sizeof *e);
}

/* Segment k mapped in this process (creating its files if create). */
static struct fq_segmap *fq__seg(fq_queue *q, uint64_t k, int create)
{
    struct fq_segmap *e = &q->segmap[k & (FQ_SEGMAP - 1)];
    if (fq__likely(e->tag == k + 1))
        return e;
    if (create) {
        /* index first: a segment never exists without its index (unless a
         * creator died in between; readers then walk the segment). */
        if (fq__file_create(q, k, FQ_H_INDEX) != FQ_OK || fq__file_create(q, k, FQ_H_SEGMENT) != FQ_OK)
            return NULL;
        fq__cas_max(&q->store->st_seg_hwm, k, FQ_RELAXED);
    }
    size_t sl = 0, il = 0;
    uint8_t *seg = fq__file_map(q, k, FQ_H_SEGMENT, &sl);
    if (!seg)
        return NULL;
    uint8_t *idx = fq__file_map(q, k, FQ_H_INDEX, &il);
    fq__segmap_drop(e);
    e->seg = seg;
    e->seg_len = sl;
    e->idx = idx;
    e->idx_len = il;
    e->tag = k + 1;
    return e;
}

uint8_t *fq__store_ptr(fq_queue *q, uint64_t pos, int create)
{
    struct fq_segmap *e = fq__seg(q, pos >> q->seg_shift, create);
    return e ? e->seg + FQ_SEG_HDR + (pos & FQ_SEG_MASK(q)) : NULL;
}

static struct fq_idx_entry *fq__idx(fq_queue *q, uint64_t k, uint64_t b)
{
    struct fq_segmap *e = fq__seg(q, k, 0);
    if (!e || !e->idx || b >= FQ_NBLOCKS(q))
        return NULL;
    return (struct fq_idx_entry *)(e->idx + FQ_SEG_HDR) + b;
}

void fq__store_close(fq_queue *q)
{
    if (q->segmap) {
        for (uint32_t i = 0; i < FQ_SEGMAP; i++)
            fq__segmap_drop(&q->segmap[i]);
        free(q->segmap);
        q->segmap = NULL;
    }
    if (q->dirfd >= 0)
        close(q->dirfd);
    if (q->open_fd >= 0)
        close(q->open_fd);
    q->dirfd = q->open_fd = -1;
}

/* ---- producer side ------------------------------------------------------ */

/* S1: every segment [p, e) touches exists and is mapped; when the extent
 * passes the middle of a segment the next one is created ahead of time, so a
 * roll rarely waits for a file. */
int fq__store_prepare(fq_queue *q, uint64_t p, uint64_t e)
{
    uint64_t k0 = p >> q->seg_shift, k1 = (e - 1) >> q->seg_shift;
    for (uint64_t k = k0; k <= k1; k++)
        if (!fq__seg(q, k, 1))
            return errno == ENOSPC ? FQ_ERR_NOMEM : FQ_ERR_SYS;
    uint64_t half = q->cap >> 1;
    if ((p & FQ_SEG_MASK(q)) < half && ((e - 1) & FQ_SEG_MASK(q)) >= half &&
        atomic_load_explicit(&q->store->st_seg_hwm, FQ_RELAXED) <= k1) {
        struct fq_segmap *cur = fq__seg(q, k1, 0);
        (void)cur;
        fq__seg(q, k1 + 1, 1); /* best effort: the claim that needs it retries */
    }
    return FQ_OK;
}

/* S2: index entry for the first 4 KiB boundary X >= p inside [p, e), unless
 * X starts a segment (every segment starts with a frame anyway). */
void fq__store_index(fq_queue *q, uint64_t seq, uint64_t p, uint64_t e, int64_t ts)
{
    uint64_t X = (p + FQ_IDX_BLOCK - 1) & ~(uint64_t)(FQ_IDX_BLOCK - 1);
    if (X >= e || (X & FQ_SEG_MASK(q)) == 0)
        return;
    struct fq_idx_entry *x = fq__idx(q, X >> q->seg_shift, (X & FQ_SEG_MASK(q)) >> FQ_IDX_SHIFT);
    if (!x)
        return;
    atomic_store_explicit(&x->x_mark, 0, FQ_RELAXED);
    atomic_store_explicit(&x->x_seq, seq, FQ_RELAXED);
    atomic_store_explicit(&x->x_ts_ns, ts, FQ_RELAXED);
    atomic_store_explicit(&x->x_off, (uint32_t)(p & FQ_SEG_MASK(q)), FQ_RELAXED);
    atomic_store_explicit(&x->x_mark, FQ_IDX_MARK, FQ_RELEASE);
    FQ_CRASHPOINT("store.index");
}

/* CRC32C of a frame: header with f_crc = 0 and its final flags, then the
 * payload.  Seal = compute it, store f_crc, then f_flags (release, last). */
static uint32_t fq__frame_crc(const struct fq_frame_hdr *h, uint16_t flags, const uint8_t *payload, uint32_t plen)
{
    struct fq_frame_hdr c;
    memcpy(&c, h, sizeof c);
    c.f_crc = 0;
    c.f_flags = flags;
    uint32_t crc = fq_crc32c(0, &c, sizeof c);
    return plen ? fq_crc32c(crc, payload, plen) : crc;
}

void fq__store_seal(struct fq_frame_hdr *h, uint16_t flags)
{
    uint32_t plen = (flags & FQ_FR_DATA) ? h->f_len - FQ_FRAME_HDR : 0;
    h->f_crc = fq__frame_crc(h, flags, (const uint8_t *)(h + 1), plen);
    __atomic_store_n(&h->f_flags, flags, __ATOMIC_RELEASE);
}

void fq__store_pad(fq_queue *q, uint64_t seq, uint64_t pos, uint32_t len)
{
    if (len < FQ_FRAME_HDR)
        return;
    struct fq_frame_hdr *h = (struct fq_frame_hdr *)fq__store_ptr(q, pos, 0);
    if (!h)
        return;
    h->f_len = len;
    h->f_seq = seq;
    h->f_ts_ns = 0;
    h->f_version = FQ_FRAME_VERSION;
    h->f_type = 0;
    fq__store_seal(h, FQ_FR_PAD | FQ_FR_COMMITTED);
}

/* Validate a frame header read at a position with `room` bytes left in its
 * segment; for DATA frames also the CRC.  1 = valid, 0 = not. */
int fq__store_check(const struct fq_frame_hdr *h, const uint8_t *frame, uint64_t room)
{
    uint16_t fl = __atomic_load_n(&h->f_flags, __ATOMIC_ACQUIRE);
    uint16_t kind = fl & FQ_FR_KIND;
    if (fl != (kind | FQ_FR_COMMITTED) || (kind != FQ_FR_DATA && kind != FQ_FR_GAP && kind != FQ_FR_PAD))
        return 0; /* exactly one kind and the commit mark: no unknown bits */
    if (kind == FQ_FR_GAP && (uint64_t)h->f_ts_ns > ((uint64_t)1 << 32))
        return 0; /* a gap stands for at most one claim's records */
    if (h->f_len < FQ_FRAME_HDR || fq__align8(h->f_len) > room || h->f_version != FQ_FRAME_VERSION)
        return 0;
    uint32_t plen = kind == FQ_FR_DATA ? h->f_len - FQ_FRAME_HDR : 0;
    if (kind == FQ_FR_DATA && (h->f_type >> 16) > plen)
        return 0;
    return fq__frame_crc(h, fl, frame + FQ_FRAME_HDR, plen) == h->f_crc;
}

/* S5: gap frames over the dead extent [start, end) of records
 * [seq, seq+count): the first readable header declares the run, a part in
 * the next segment is a continuation (count 0).  Caller: recovery, before
 * it publishes ABORTED. */
int fq__store_gap(fq_queue *q, uint64_t seq, uint64_t count, uint64_t start, uint64_t end)
{
    /* Written with pwrite through a descriptor of its own, never through the
     * handle's segment map: liveness recovery also runs inside fq_flush,
     * without the GIL, while other threads use the map.  The page cache is
     * shared with every mapping; the caller publishes ABORTED (release) only
     * after these writes returned. */
    uint64_t p = start;
    int first = 1;
    while ((int64_t)(end - p) > 0) {
        uint64_t seg_end = (p | FQ_SEG_MASK(q)) + 1, room = seg_end - p;
        if (room < FQ_FRAME_HDR) {
            p = seg_end;
            continue;
        }
        uint64_t len = (end < seg_end ? end : seg_end) - p;
        if (len < FQ_FRAME_HDR)
            return FQ_ERR_CORRUPT;
        uint64_t k = p >> q->seg_shift;
        char name[64];
        fq__seg_name(name, sizeof name, k << q->seg_shift, FQ_H_SEGMENT);
        int fd = openat(q->dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT && fq__file_create(q, k, FQ_H_INDEX) == FQ_OK &&
            fq__file_create(q, k, FQ_H_SEGMENT) == FQ_OK)
            fd = openat(q->dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return FQ_ERR_SYS;
        if (!fq__file_check(q, fd, k, FQ_H_SEGMENT)) {
            close(fd);
            return FQ_ERR_CORRUPT;
        }
        struct fq_frame_hdr h;
        memset(&h, 0, sizeof h);
        h.f_len = (uint32_t)len;
        h.f_seq = first ? seq : seq + count;
        h.f_ts_ns = first ? (int64_t)count : 0;
        h.f_version = FQ_FRAME_VERSION;
        h.f_crc = fq__frame_crc(&h, FQ_FR_GAP | FQ_FR_COMMITTED, NULL, 0);
        h.f_flags = FQ_FR_GAP | FQ_FR_COMMITTED;
        ssize_t w = pwrite(fd, &h, sizeof h, (off_t)(FQ_SEG_HDR + (p & FQ_SEG_MASK(q))));
        close(fd);
        if (w != (ssize_t)sizeof h)
            return FQ_ERR_SYS;
        first = 0;
        p += len;
    }
    return FQ_OK;
}

/* The record's payload starts with a prefix of prefix_len bytes: its key
 * (FQ_PREFIX_KEY), or its meta region (FQ_PREFIX_META, docs/messages.md),
 * which for a delayed record (FQ_PREFIX_DELAYED) starts with its not-before
 * time; the descriptor gets a hint so takers read that time only then. */
void fq_set_prefix(fq_queue *q, uint64_t seq, uint32_t prefix_len, unsigned pf)
{
    struct fq_desc_shm *d = fq__desc(q, seq);
    uint64_t pos = atomic_load_explicit(&d->d_ext_start, FQ_RELAXED) + atomic_load_explicit(&d->d_frame_off, FQ_RELAXED);
    struct fq_frame_hdr *h = (struct fq_frame_hdr *)fq__at(q, pos);
    int delayed = (pf & FQ_PREFIX_DELAYED) && (pf & FQ_PREFIX_META) && prefix_len >= 8;
    if (h)
        h->f_type = (h->f_type & 0x1FFFu) | ((pf & FQ_PREFIX_KEY) ? FQ_TYPE_HAS_KEY : 0) |
                    ((pf & FQ_PREFIX_META) ? FQ_TYPE_META : 0) | (delayed ? FQ_TYPE_DELAYED : 0) | (prefix_len << 16);
    if (delayed) /* published by the commit's release store of d_cw (P4) */
        atomic_store_explicit(&d->d_flags, FQ_D_F_DELAYED, FQ_RELAXED);
}

void fq_set_key_len(fq_queue *q, uint64_t seq, uint32_t key_len) { fq_set_prefix(q, seq, key_len, FQ_PREFIX_KEY); }

/* ---- the commit frontier (S4) ------------------------------------------- */

int fq__refresh_frontier(fq_queue *q)
{
    uint64_t t = atomic_load_explicit(&q->ctrl->c_tail, FQ_ACQUIRE);
    uint64_t fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
    uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    uint64_t ts = fq__tail_seq(t, fs);
    if ((int64_t)(ts - fs) <= 0 || ts - fs > q->n_desc)
        return 0;
    uint64_t L = fs, P = fp;
    while ((int64_t)(ts - L) > 0) {
        struct fq_desc_shm *d = fq__desc(q, L);
        uint64_t cw = atomic_load_explicit(&d->d_cw, FQ_ACQUIRE);
        if (!fq__cw_published(cw, L) || fq__cw_st(cw) == FQ_D_WRITING)
            break;
        /* seqlock read (P2a writer): acquire loads keep the re-check after them */
        uint64_t P2 = atomic_load_explicit(&d->d_ext_start, FQ_ACQUIRE) + atomic_load_explicit(&d->d_ext_len, FQ_ACQUIRE);
        if (atomic_load_explicit(&d->d_cw, FQ_RELAXED) != cw)
            break; /* recycled: another refresher moved the floor past L */
        /* floor_pos may already be past L's end (another refresher published
         * its position and not yet its seq, S4): keep the larger bound */
        if ((int64_t)(P2 - P) > 0)
            P = P2;
        L++;
    }
    if (L == fs)
        return 0;
    /* Position FIRST, then seq (the ring's floor does the opposite): a reader
     * that loads floor_seq then floor_pos (acquire) sees a position at least
     * as far as the records below that seq, so it can walk to any of them
     * (found by the TSan run of test_concurrent_clones: with seq first, a
     * reader between the two CASes walked into the old position limit and
     * took complete records for corrupt). */
    fq__cas_max(&q->ctrl->c_floor_pos, P, FQ_SEQCST);
    fq__cas_max(&q->ctrl->c_floor_seq, L, FQ_SEQCST);
    return 1;
}

/* The store's dynamic state is plausible (fq__check_dynamic): retention
 * start below the frontier, the frontier inside segments that were created,
 * a flush-lock owner a member can be.  Else the opener runs cold recovery. */
int fq__store_dynamic_ok(fq_queue *q)
{
    uint64_t fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
    uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    uint64_t rseg = atomic_load_explicit(&q->store->st_retain_seg, FQ_ACQUIRE);
    uint64_t rseq = atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE);
    uint64_t hwm = atomic_load_explicit(&q->store->st_seg_hwm, FQ_ACQUIRE);
    uint64_t dp = atomic_load_explicit(&q->store->st_durable_pos, FQ_ACQUIRE);
    uint32_t fo = atomic_load_explicit(&q->store->st_flush_owner, FQ_ACQUIRE);
    if (rseg > (fp >> q->seg_shift) || (int64_t)(rseq - fs) > 0 || (fp >> q->seg_shift) > hwm + 1 ||
        hwm - rseg > ((uint64_t)1 << 20) || (int64_t)(dp - fp) > 0 || (fo && fo - 1 >= q->max_members))
        return 0;
    return 1;
}

uint64_t fq_frontier(fq_queue *q)
{
    if (q->durable)
        fq__refresh_frontier(q);
    return atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
}

/* ---- walking segments ---------------------------------------------------- */

/* The frame at or after *cp below limit, skipping segment tails and PAD
 * frames.  1 = a DATA/GAP frame at *cp (header copied to *h, *fr points to
 * it); 0 = reached limit; -1 = its segment is gone (retention); -2 = corrupt. */
static int fq__walk(fq_queue *q, uint64_t *cp, uint64_t limit, struct fq_frame_hdr *h, const uint8_t **fr)
{
    for (;;) {
        if ((int64_t)(limit - *cp) <= 0)
            return 0;
        uint64_t room = q->cap - (*cp & FQ_SEG_MASK(q));
        if (room < FQ_FRAME_HDR) {
            *cp += room;
            continue;
        }
        const uint8_t *b = fq__store_ptr(q, *cp, 0);
        if (!b)
            return -1;
        if (!fq__store_read_hdr(b, room, h))
            return -2;
        if ((h->f_flags & FQ_FR_KIND) == FQ_FR_PAD) {
            if (h->f_len != room)
                return -2;
            *cp += room;
            continue;
        }
        *fr = b;
        return 1;
    }
}

static uint64_t fq__frame_count(const struct fq_frame_hdr *h)
{
    return (h->f_flags & FQ_FR_KIND) == FQ_FR_DATA ? 1 : (uint64_t)h->f_ts_ns;
}

/* First seq of segment k (its frame at offset 0), or 0 with *ok = 0. */
static uint64_t fq__seg_first(fq_queue *q, uint64_t k, uint64_t limit, int *ok)
{
    uint64_t cp = k << q->seg_shift;
    struct fq_frame_hdr h;
    const uint8_t *fr;
    *ok = fq__walk(q, &cp, limit, &h, &fr) == 1 && cp == (k << q->seg_shift);
    return *ok ? h.f_seq : 0;
}

/* An anchor (aseq, apos) with aseq <= seq: the frame at apos starts record
 * aseq.  Binary search over segments by their first record, then over the
 * segment's index entries (holes skipped), each hint checked on the frame. */
static int fq__anchor(fq_queue *q, uint64_t seq, uint64_t limit, uint64_t *aseq, uint64_t *apos)
{
    if (limit == 0)
        return 0;
    uint64_t lo = atomic_load_explicit(&q->store->st_retain_seg, FQ_ACQUIRE), hi = (limit - 1) >> q->seg_shift;
    uint64_t best = UINT64_MAX, best_seq = 0;
    while ((int64_t)(hi - lo) >= 0) {
        uint64_t mid = lo + (hi - lo) / 2;
        int ok;
        uint64_t f = fq__seg_first(q, mid, limit, &ok);
        if (!ok) {
            lo = mid + 1; /* deleted under us (retention) or unreadable: look later */
            continue;
        }
        if ((int64_t)(f - seq) <= 0) {
            best = mid;
            best_seq = f;
            lo = mid + 1;
        } else {
            if (mid == 0)
                break;
            hi = mid - 1;
        }
    }
    if (best == UINT64_MAX)
        return 0;
    *aseq = best_seq;
    *apos = best << q->seg_shift;
    /* index entries of segment `best` below the limit */
    uint64_t nb = FQ_NBLOCKS(q), seg0 = best << q->seg_shift;
    if ((int64_t)(limit - (seg0 + q->cap)) < 0)
        nb = (limit - seg0) >> FQ_IDX_SHIFT;
    uint64_t blo = 1, bhi = nb ? nb - 1 : 0, xs = 0, xo = 0;
    int found = 0;
    while (blo <= bhi && nb > 1) {
        uint64_t mid = blo + (bhi - blo) / 2, j = mid;
        struct fq_idx_entry *x = NULL;
        for (; j >= blo; j--) {
            x = fq__idx(q, best, j);
            if (!x)
                break;
            if (atomic_load_explicit(&x->x_mark, FQ_ACQUIRE) == FQ_IDX_MARK)
                break;
            x = NULL;
            if (j == 0)
                break;
        }
        if (!x) {
            blo = mid + 1;
            continue;
        }
        uint64_t s = atomic_load_explicit(&x->x_seq, FQ_RELAXED);
        uint32_t off = atomic_load_explicit(&x->x_off, FQ_RELAXED);
        if ((int64_t)(s - seq) <= 0 && off < q->cap && !(off & 7u)) {
            xs = s;
            xo = off;
            found = 1;
            blo = mid + 1;
        } else {
            if (j == 0)
                break;
            bhi = j - 1;
        }
    }
    if (found && (int64_t)(xs - best_seq) >= 0) {
        uint64_t cp = seg0 + xo;
        struct fq_frame_hdr h;
        const uint8_t *fr;
        if (fq__walk(q, &cp, limit, &h, &fr) == 1 && cp == seg0 + xo && h.f_seq == xs) {
            *aseq = xs;
            *apos = cp;
        }
    }
    return 1;
}

static int fq__resync(fq_queue *q, uint64_t at, uint64_t cs, uint64_t limit, int use_index, uint64_t *ns,
                      uint64_t *np);

int fq__store_find(fq_queue *q, uint64_t seq, uint64_t *pos)
{
    uint64_t fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
    uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    if ((int64_t)(seq - fs) >= 0)
        return 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        if ((int64_t)(seq - atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE)) < 0)
            return -1;
        uint64_t cs, cp;
        int use_cache = attempt == 0 && q->rd_pos && (int64_t)(seq - q->rd_seq) >= 0 && seq - q->rd_seq < 256;
        if (use_cache) {
            cs = q->rd_seq;
            cp = q->rd_pos;
        } else if (!fq__anchor(q, seq, fp, &cs, &cp)) {
            break;
        }
        for (;;) {
            struct fq_frame_hdr h;
            const uint8_t *fr;
            int w = fq__walk(q, &cp, fp, &h, &fr);
            uint64_t n = w == 1 ? fq__frame_count(&h) : 0;
            if (w == -2 || (w == 1 && (h.f_seq != cs || n > q->n_desc * 2))) {
                /* a damaged frame on the way: resynchronise past it; only the
                 * records it hides are lost (reported corrupt) */
                uint64_t ns, np;
                if (seq == cs || !fq__resync(q, cp, cs, fp, 1, &ns, &np) || (int64_t)(ns - seq) > 0)
                    break;
                cs = ns;
                cp = np;
                continue;
            }
            if (w <= 0)
                break;
            uint64_t next = cp + fq__align8(h.f_len);
            if (seq - cs < n) {
                *pos = cp;
                q->rd_seq = cs + n;
                q->rd_pos = next;
                if ((h.f_flags & FQ_FR_KIND) != FQ_FR_DATA)
                    return 2;
                q->rf_seq = seq; /* fq__fill_store takes it from here, already checked */
                q->rf_pos = cp;
                q->rf_hdr = h;
                return 1;
            }
            cs += n;
            cp = next;
        }
        q->rd_pos = 0;
        if (!use_cache)
            break; /* the anchor walk failed: no retry would do better */
        /* the cached cursor may point into a segment retention removed: retry from an anchor */
    }
    /* A missing or invalid segment above the retention start, or a frame that
     * fails its checks below the frontier: corrupt (never "deleted"). */
    if ((int64_t)(seq - atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE)) < 0)
        return -1;
    return -2;
}

/* ---- replay without a group --------------------------------------------- */

uint64_t fq_first_seq(fq_queue *q)
{
    if (!q->durable)
        return atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
    return atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE);
}

int fq_seek_seq(fq_queue *q, uint64_t seq, fq_cursor *c)
{
    if (!q->durable)
        return FQ_ERR_INVAL;
    fq__refresh_frontier(q);
    uint64_t rs = atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE);
    uint64_t fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
    uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    if ((int64_t)(seq - rs) < 0)
        seq = rs;
    if ((int64_t)(seq - fs) >= 0)
        seq = fs; /* the head: where record fs starts (fp may already lie past it, S4) */
    if (seq == rs && (int64_t)(fs - rs) >= 0 && (seq == fs || !fp)) {
        /* nothing retained below seq: the retention start is a segment start */
        c->seq = rs;
        c->pos = atomic_load_explicit(&q->store->st_retain_seg, FQ_ACQUIRE) << q->seg_shift;
        if (rs == q->base_seq && c->pos < q->base_pos)
            c->pos = q->base_pos;
        return FQ_OK;
    }
    uint64_t cs, cp;
    if (!fq__anchor(q, seq, fp, &cs, &cp)) {
        fq__set_err("no readable segment holds record %llu (segment files missing or failed validation)",
                    (unsigned long long)seq);
        return FQ_ERR_DATA;
    }
    while ((int64_t)(seq - cs) > 0) {
        struct fq_frame_hdr h;
        const uint8_t *fr;
        uint64_t at = cp;
        int r = fq__walk(q, &at, fp, &h, &fr);
        if (r <= 0 || h.f_seq != cs) {
            /* a damaged frame before the target: resynchronise past it */
            uint64_t ns, np;
            if (r != 0 && fq__resync(q, at, cs, fp, 1, &ns, &np) && (int64_t)(ns - seq) <= 0) {
                cs = ns;
                cp = np;
                continue;
            }
            fq__set_err("record %llu at log position %llu (segment %020llu.seg) failed its checksum or header "
                        "check; record %llu cannot be located past it",
                        (unsigned long long)cs, (unsigned long long)at,
                        (unsigned long long)((at >> q->seg_shift) << q->seg_shift), (unsigned long long)seq);
            return FQ_ERR_DATA;
        }
        uint64_t n = fq__frame_count(&h);
        if (seq - cs < n)
            break; /* inside a gap: start at the gap, read_next skips it */
        cs += n;
        cp = at + fq__align8(h.f_len);
    }
    c->seq = cs;
    c->pos = cp;
    return FQ_OK;
}

static int64_t fq__seg_first_ts(fq_queue *q, uint64_t k, uint64_t limit, int *ok)
{
    uint64_t cp = k << q->seg_shift, end = cp + q->cap;
    if ((int64_t)(limit - end) < 0)
        end = limit;
    for (int i = 0; i < 64; i++) {
        struct fq_frame_hdr h;
        const uint8_t *fr;
        if (fq__walk(q, &cp, end, &h, &fr) != 1)
            break;
        if ((h.f_flags & FQ_FR_KIND) == FQ_FR_DATA) {
            *ok = 1;
            return h.f_ts_ns;
        }
        cp += fq__align8(h.f_len);
    }
    *ok = 0;
    return 0;
}

/* First record appended at or after ts_ns (CLOCK_REALTIME of its claim; to
 * within the clock order of concurrent producers, microseconds). */
int fq_seek_time(fq_queue *q, int64_t ts_ns, fq_cursor *c)
{
    if (!q->durable)
        return FQ_ERR_INVAL;
    fq__refresh_frontier(q);
    uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    uint64_t lo = atomic_load_explicit(&q->store->st_retain_seg, FQ_ACQUIRE);
    uint64_t hi = fp ? (fp - 1) >> q->seg_shift : 0, best = lo;
    if (fp == 0)
        return fq_seek_seq(q, 0, c);
    while ((int64_t)(hi - lo) >= 0) {
        uint64_t mid = lo + (hi - lo) / 2;
        int ok;
        int64_t t = fq__seg_first_ts(q, mid, fp, &ok);
        if (ok && t <= ts_ns) {
            best = mid;
            lo = mid + 1;
        } else if (!ok) {
            lo = mid + 1;
        } else {
            if (mid == 0)
                break;
            hi = mid - 1;
        }
    }
    /* inside segment `best`: the last index entry claimed before ts_ns */
    uint64_t seg0 = best << q->seg_shift, cp = seg0;
    uint64_t nb = FQ_NBLOCKS(q);
    if ((int64_t)(fp - (seg0 + q->cap)) < 0)
        nb = (fp - seg0) >> FQ_IDX_SHIFT;
    uint64_t blo = 1, bhi = nb ? nb - 1 : 0;
    while (blo <= bhi && nb > 1) {
        uint64_t mid = blo + (bhi - blo) / 2;
        struct fq_idx_entry *x = fq__idx(q, best, mid);
        if (!x || atomic_load_explicit(&x->x_mark, FQ_ACQUIRE) != FQ_IDX_MARK) {
            bhi = mid - 1; /* a hole: stay left (correct, maybe slower) */
            continue;
        }
        if (atomic_load_explicit(&x->x_ts_ns, FQ_RELAXED) < ts_ns) {
            uint32_t off = atomic_load_explicit(&x->x_off, FQ_RELAXED);
            uint64_t at = seg0 + (off < q->cap && !(off & 7u) ? off : 0);
            struct fq_frame_hdr h;
            const uint8_t *fr;
            if (off < q->cap && !(off & 7u) && fq__walk(q, &at, fp, &h, &fr) == 1 && at == seg0 + off &&
                h.f_seq == atomic_load_explicit(&x->x_seq, FQ_RELAXED))
                cp = at;
            blo = mid + 1;
        } else {
            bhi = mid - 1;
        }
    }
    /* walk to the first data record with f_ts_ns >= ts_ns */
    for (;;) {
        struct fq_frame_hdr h;
        const uint8_t *fr;
        uint64_t at = cp;
        int r = fq__walk(q, &at, fp, &h, &fr);
        if (r == 0) /* nothing appended at or after ts_ns yet: the head */
            return fq_seek_seq(q, atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE), c);
        if (r < 0) {
            fq__set_err("the frame at log position %llu failed its checksum or header check", (unsigned long long)at);
            return FQ_ERR_DATA;
        }
        if ((h.f_flags & FQ_FR_KIND) == FQ_FR_DATA && h.f_ts_ns >= ts_ns) {
            c->seq = h.f_seq;
            c->pos = at;
            return FQ_OK;
        }
        cp = at + fq__align8(h.f_len);
    }
}

int fq_read_next(fq_queue *q, fq_cursor *c, fq_msg *out)
{
    if (!q->durable)
        return FQ_ERR_INVAL;
    for (int refreshed = 0;;) {
        uint64_t rs = atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE);
        if ((int64_t)(c->seq - rs) < 0) {
            int rc = fq_seek_seq(q, rs, c); /* retention deleted our position: jump */
            if (rc)
                return rc;
        }
        uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
        struct fq_frame_hdr h;
        const uint8_t *fr;
        uint64_t at = c->pos;
        int r = fq__walk(q, &at, fp, &h, &fr);
        if (r == 0) {
            if (refreshed || !fq__refresh_frontier(q))
                return FQ_EMPTY;
            refreshed = 1;
            continue;
        }
        if (r == -1 && (int64_t)(c->seq - atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE)) < 0)
            continue; /* deleted under us by retention: the check above jumps */
        if (r == -1) {
            fq__set_err("segment %020llu.seg holding record %llu is missing or failed validation",
                        (unsigned long long)((at >> q->seg_shift) << q->seg_shift), (unsigned long long)c->seq);
            return FQ_ERR_DATA;
        }
        if (r < 0 || h.f_seq != c->seq) {
            fq__set_err("record %llu at log position %llu failed validation (checksum or header)",
                        (unsigned long long)c->seq, (unsigned long long)at);
            return FQ_ERR_DATA;
        }
        c->pos = at + fq__align8(h.f_len);
        if ((h.f_flags & FQ_FR_KIND) != FQ_FR_DATA) {
            c->seq += fq__frame_count(&h);
            continue;
        }
        c->seq += 1;
        fq__msg_from_frame(out, &h, fr, 0);
        return FQ_OK;
    }
}

/* ---- flushing (S6) and checkpoints --------------------------------------- */

uint64_t fq_durable_seq(fq_queue *q) { return atomic_load_explicit(&q->ctrl->c_durable_seq, FQ_ACQUIRE); }

/* Write [from, to) of the log to disk: fdatasync of each segment file it
 * touches, through a descriptor of its own.  It never touches the handle's
 * segment map, so a flush may run without the GIL while other threads use
 * the same handle (fq_flush, fq_checkpoint). */
static int fq__sync_range(fq_queue *q, uint64_t from, uint64_t to)
{
    if ((int64_t)(to - from) > 0 && ((to - from) >> q->seg_shift) > ((uint64_t)1 << 24)) {
        fq__set_err("flush range of %llu bytes is impossible: the control state is corrupt",
                    (unsigned long long)(to - from));
        return FQ_ERR_CORRUPT;
    }
    while ((int64_t)(to - from) > 0) {
        uint64_t k = from >> q->seg_shift, seg_end = (k + 1) << q->seg_shift;
        uint64_t end = (int64_t)(to - seg_end) < 0 ? to : seg_end;
        char name[64];
        fq__seg_name(name, sizeof name, k << q->seg_shift, FQ_H_SEGMENT);
        int fd = openat(q->dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            int rc = fdatasync(fd);
            int e = errno;
            close(fd);
            if (rc != 0) {
                fq__set_err("fdatasync of %s: %s", name, strerror(e));
                return FQ_ERR_SYS;
            }
        } else if (errno != ENOENT) { /* a segment retention already deleted needs no flush */
            fq__set_err("cannot open %s to flush it: %s", name, strerror(errno));
            return FQ_ERR_SYS;
        }
        from = end;
    }
    return FQ_OK;
}

static void fq__boot_id(char out[40])
{
    memset(out, 0, 40);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, out, 39);
        close(fd);
        while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == 0))
            out[--n] = 0;
    }
}

/* CLOCK_MONOTONIC without the test skew (fq_clock_skew_ns is per process;
 * st_ckpt_ns is compared across processes). */
static int64_t fq__mono_raw(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint32_t fq__ckpt_crc(const struct fq_ckpt_shm *k)
{
    uint32_t ng = k->k_ngroups > FQ_MAX_GROUPS ? FQ_MAX_GROUPS : k->k_ngroups;
    return fq_crc32c(0, (const uint8_t *)k + 8, 72 + 16 * (size_t)ng);
}

/* Write checkpoint (seq, pos) into the next slot and msync it.  Caller
 * holds the flush lock (or is the exclusive recoverer). */
static int fq__ckpt_write(fq_queue *q, uint64_t seq, uint64_t pos)
{
    uint64_t gen = atomic_load_explicit(&q->store->st_ckpt_gen, FQ_ACQUIRE) + 1;
    struct fq_ckpt_shm *k = &q->ckpt[gen & 1];
    struct fq_ckpt_shm c;
    memset(&c, 0, sizeof c);
    c.k_magic = FQ_CKPT_MAGIC;
    c.k_gen = gen;
    c.k_seq = seq;
    c.k_pos = pos;
    c.k_retain_seg = atomic_load_explicit(&q->store->st_retain_seg, FQ_ACQUIRE);
    c.k_retain_seq = atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE);
    c.k_ts_ns = fq_realtime_ns();
    c.k_tail_seq = fq_tail_seq(q);
    c.k_ngroups = q->max_groups;
    memcpy(c.k_boot, q->store->st_boot, 8);
    for (uint32_t g = 0; g < q->max_groups; g++) {
        struct fq_group_shm *G = fq__group(q, g);
        uint32_t st = atomic_load_explicit(&G->g_state, FQ_ACQUIRE);
        c.k_groups[g].kg_state = st;
        c.k_groups[g].kg_gen = atomic_load_explicit(&G->g_gen, FQ_ACQUIRE);
        uint64_t low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE);
        /* never past what is on disk: after a power loss the group resumes
         * at or below the recovered tail (at-least-once) */
        c.k_groups[g].kg_low = (int64_t)(low - seq) > 0 ? seq : low;
    }
    c.k_crc = fq__ckpt_crc(&c);
    memcpy(k, &c, sizeof c);
    FQ_CRASHPOINT("store.checkpoint");
    if (msync((void *)((uintptr_t)k & ~(uintptr_t)(FQ_PAGE - 1)), FQ_PAGE, MS_SYNC) != 0) {
        fq__set_err("msync of the checkpoint: %s", strerror(errno));
        return FQ_ERR_SYS;
    }
    atomic_store_explicit(&q->store->st_ckpt_seq, seq, FQ_RELAXED);
    atomic_store_explicit(&q->store->st_ckpt_ns, (uint64_t)fq__mono_raw(), FQ_RELAXED);
    atomic_store_explicit(&q->store->st_ckpt_gen, gen, FQ_RELEASE);
    return FQ_OK;
}

static int fq__ckpt_valid(fq_queue *q, const struct fq_ckpt_shm *k);

/* Would a checkpoint at seq change a group's recorded low-watermark? */
static int fq__lows_moved(fq_queue *q, const struct fq_ckpt_shm *last, uint64_t seq)
{
    for (uint32_t g = 0; g < q->max_groups && g < FQ_MAX_GROUPS; g++) {
        struct fq_group_shm *G = fq__group(q, g);
        uint32_t st = atomic_load_explicit(&G->g_state, FQ_ACQUIRE);
        uint64_t low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE);
        if ((int64_t)(low - seq) > 0)
            low = seq;
        if (g >= last->k_ngroups || last->k_groups[g].kg_state != st ||
            last->k_groups[g].kg_gen != atomic_load_explicit(&G->g_gen, FQ_ACQUIRE) ||
            (st == FQ_G_ACTIVE && last->k_groups[g].kg_low != low))
            return 1;
    }
    return 0;
}

/* The flush lock: member id + 1 in st_flush_owner; a dead holder is replaced. */
static int fq__flush_lock(fq_queue *q)
{
    if (q->member < 0)
        return 0;
    uint32_t me = (uint32_t)q->member + 1, cur = 0;
    if (atomic_compare_exchange_strong_explicit(&q->store->st_flush_owner, &cur, me, FQ_ACQUIRE, FQ_RELAXED))
        return 1;
    if (cur == me)
        return 0; /* another thread of this handle flushes: wait for it */
    /* a holder that is dead — or a value no member can have (a damaged
     * control file) — is taken over */
    if ((cur - 1 >= q->max_members || fq__probe_lock(q, cur - 1) == 0) &&
        atomic_compare_exchange_strong_explicit(&q->store->st_flush_owner, &cur, me, FQ_ACQUIRE, FQ_RELAXED))
        return 1;
    return 0;
}

static int fq__flush_locked(fq_queue *q, int checkpoint)
{
    fq__refresh_frontier(q);
    /* (fs, where record fs starts): read right away, before producers
     * recycle the descriptor of fs-1 (the sync below takes milliseconds) */
    uint64_t fs = 0, fp = 0, fs_pos = 0;
    int fs_ok = 0;
    for (int i = 0; i < 8 && !fs_ok; i++) {
        fs = atomic_load_explicit(&q->ctrl->c_floor_seq, FQ_ACQUIRE);
        fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
        fs_ok = fs == q->base_seq;
        fs_pos = fs_ok ? q->base_pos : fq__pos_after(q, fs - 1, &fs_ok);
        if (fs_ok && (int64_t)(fp - fs_pos) < 0)
            fs_ok = 0;
    }
    uint64_t dp = atomic_load_explicit(&q->store->st_durable_pos, FQ_ACQUIRE);
    uint64_t ds0 = atomic_load_explicit(&q->ctrl->c_durable_seq, FQ_ACQUIRE);
    int rc = FQ_OK;
    if ((int64_t)(fp - dp) > 0)
        rc = fq__sync_range(q, dp, fp);
    FQ_CRASHPOINT("store.after_sync");
    if (rc == FQ_OK) {
        fq__cas_max(&q->store->st_durable_pos, fp, FQ_SEQCST);
        fq__cas_max(&q->ctrl->c_durable_seq, fs, FQ_SEQCST);
        /* The checkpoint needs the position where record fs starts: fp may
         * already lie past it (S4), so take it from the descriptor of fs-1
         * (kept alive by the N-1 slack).  Not known (a fresh cold recovery,
         * no descriptor yet): keep the previous checkpoint.  Only when
         * something new became durable. */
        if (checkpoint) {
            int ok = fs_ok;
            uint64_t pos = fs_pos;
            const struct fq_ckpt_shm *last = &q->ckpt[atomic_load_explicit(&q->store->st_ckpt_gen, FQ_ACQUIRE) & 1];
            int last_ok = fq__ckpt_valid(q, last);
            if (!ok && last_ok) {
                fs = last->k_seq; /* keep the last consistent pair; the group lows may still be new */
                pos = last->k_pos;
                ok = 1;
            }
            if (ok && (checkpoint > 1 || (int64_t)(fs - ds0) > 0 || !last_ok || fq__lows_moved(q, last, fs)))
                rc = fq__ckpt_write(q, fs, pos);
        }
    }
    return rc;
}

static void fq__flush_unlock(fq_queue *q)
{
    atomic_store_explicit(&q->store->st_flush_owner, 0, FQ_RELEASE);
    fq__ec_wake_all(&q->ctrl->c_durable_ec);
}

int fq_flush(fq_queue *q, uint64_t upto, int64_t deadline_ns)
{
    if (!q->durable)
        return FQ_OK;
    if (q->member < 0)
        return FQ_ERR_INVAL; /* the flush lock names a member */
    for (;;) {
        uint32_t key = (uint32_t)(atomic_load_explicit(&q->ctrl->c_durable_ec, FQ_SEQCST) >> 32);
        if ((int64_t)(atomic_load_explicit(&q->ctrl->c_durable_seq, FQ_ACQUIRE) - upto) >= 0)
            return FQ_OK;
        if (fq__flush_lock(q)) {
            /* The checkpoint marks what was promised durable (recovery after a
             * power cut treats damage below it as corruption, above it as a
             * torn tail): written at every flush, except with fsync "always"
             * (a flush per append) at most every 100 ms. */
            int64_t last = (int64_t)atomic_load_explicit(&q->store->st_ckpt_ns, FQ_RELAXED);
            int rc = fq__flush_locked(q, q->fsync_mode != FQ_FSYNC_ALWAYS || fq__mono_raw() - last > 100000000);
            fq__flush_unlock(q);
            if (rc)
                return rc;
            if ((int64_t)(atomic_load_explicit(&q->ctrl->c_durable_seq, FQ_ACQUIRE) - upto) < 0) {
                /* records below upto are still being written — or their
                 * producer died: the liveness scan turns a dead claim into a
                 * gap (rate-limited), else the frontier never passes it */
                if (fq_now_ns() >= deadline_ns)
                    return FQ_TIMEOUT;
                fq_maintain(q, 0);
                struct timespec ts = {0, 20000};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        if (fq_now_ns() >= deadline_ns)
            return FQ_TIMEOUT;
        fq_maintain(q, 0); /* a dead flush-lock holder is released by recovery */
        int64_t until = fq_now_ns() + 10000000;
        fq__ec_park(&q->ctrl->c_durable_ec, key, until < deadline_ns ? until : deadline_ns);
    }
}

int fq_checkpoint(fq_queue *q)
{
    if (!q->durable)
        return FQ_OK;
    if (q->member < 0)
        return FQ_ERR_INVAL;
    for (int i = 0; i < 20000; i++) {
        if (fq__flush_lock(q)) {
            int rc = fq__flush_locked(q, 2);
            fq__flush_unlock(q);
            return rc;
        }
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return FQ_TIMEOUT;
}

/* ---- retention (S7) ------------------------------------------------------ */

static void fq__unlink_seg(fq_queue *q, uint64_t k)
{
    char name[64];
    fq__seg_name(name, sizeof name, k << q->seg_shift, FQ_H_SEGMENT);
    unlinkat(q->dirfd, name, 0);
    fq__seg_name(name, sizeof name, k << q->seg_shift, FQ_H_INDEX);
    unlinkat(q->dirfd, name, 0);
    struct fq_segmap *e = &q->segmap[k & (FQ_SEGMAP - 1)];
    if (e->tag == k + 1)
        fq__segmap_drop(e);
}

/* Jump group g past records retention deleted (its low-watermark below
 * seq) and count what it skipped. */
static void fq__jump_group(fq_queue *q, uint32_t g, uint64_t seq)
{
    struct fq_group_shm *G = fq__group(q, g);
    if (atomic_load_explicit(&G->g_state, FQ_ACQUIRE) != FQ_G_ACTIVE)
        return;
    uint64_t low = atomic_load_explicit(&G->g_low, FQ_SEQCST);
    while ((int64_t)(seq - low) > 0) {
        if (atomic_compare_exchange_weak_explicit(&G->g_low, &low, seq, FQ_SEQCST, FQ_SEQCST)) {
            atomic_fetch_add_explicit(&G->g_skipped, seq - low, FQ_RELAXED);
            atomic_fetch_add_explicit(&G->g_acked, seq - low, FQ_RELAXED); /* finished, for qsize */
            break;
        }
    }
    fq__cas_max(&G->g_dispatch, seq, FQ_RELAXED);
}

void fq__retention_jump(fq_queue *q, uint32_t g)
{
    fq__jump_group(q, g, atomic_load_explicit(&q->store->st_retain_seq, FQ_ACQUIRE));
}

static void fq__jump_groups(fq_queue *q, uint64_t seq)
{
    for (uint32_t g = 0; g < q->max_groups; g++)
        fq__jump_group(q, g, seq);
}

int fq_retain(fq_queue *q, uint64_t max_bytes, int64_t max_age_ns, int consumed)
{
    if (!q->durable || q->member < 0)
        return FQ_ERR_INVAL;
    fq__refresh_frontier(q);
    uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    uint64_t active = fp >> q->seg_shift; /* never deleted: producers may still write in it */
    uint64_t k0 = atomic_load_explicit(&q->store->st_retain_seg, FQ_ACQUIRE), k = k0;
    uint64_t hwm = atomic_load_explicit(&q->store->st_seg_hwm, FQ_ACQUIRE);
    if ((int64_t)(hwm - active) < 0)
        hwm = active;
    uint64_t min_low = UINT64_MAX;
    int any_group = 0;
    for (uint32_t g = 0; g < q->max_groups; g++) {
        struct fq_group_shm *G = fq__group(q, g);
        if (atomic_load_explicit(&G->g_state, FQ_ACQUIRE) != FQ_G_ACTIVE)
            continue;
        any_group = 1;
        uint64_t low = atomic_load_explicit(&G->g_low, FQ_ACQUIRE);
        if (low < min_low)
            min_low = low;
    }
    int64_t now = fq_realtime_ns();
    uint64_t per_seg = q->cap + FQ_IDX_BYTES(q) + 2 * FQ_SEG_HDR;
    while ((int64_t)(active - k) > 0) {
        int ok;
        uint64_t next_first = fq__seg_first(q, k + 1, fp, &ok);
        if (!ok)
            break; /* k + 1 has no complete first record yet: the new start would be unknown */
        int del = 0;
        if (max_bytes && (hwm + 1 - k) * per_seg > max_bytes)
            del = 1;
        if (!del && max_age_ns) {
            int tok;
            int64_t t = fq__seg_first_ts(q, k + 1, fp, &tok);
            if (tok && now - t > max_age_ns)
                del = 1; /* everything in k is older than the first record of k+1 */
        }
        if (!del && consumed && any_group && (int64_t)(next_first - min_low) <= 0)
            del = 1;
        if (!del)
            break;
        k++;
    }
    if (k == k0)
        return 0;
    int ok;
    uint64_t rseq = fq__seg_first(q, k, fp, &ok);
    if (!ok)
        return 0; /* (the loop only stops at a segment whose first record is complete) */
    fq__cas_max(&q->store->st_retain_seq, rseq, FQ_SEQCST);
    fq__cas_max(&q->store->st_retain_seg, k, FQ_SEQCST);
    int rc = fq_checkpoint(q); /* the checkpoint moves before any file goes */
    if (rc)
        return rc;
    fq__jump_groups(q, rseq);
    FQ_CRASHPOINT("store.before_unlink");
    for (uint64_t j = k0; j != k; j++)
        fq__unlink_seg(q, j);
    if (q->fsync_mode != FQ_FSYNC_NEVER)
        fsync(q->dirfd);
    return (int)(k - k0);
}

/* ---- create / open -------------------------------------------------------- */

#define FQ_OPEN_BYTE (FQ_LOCK_BASE - 1)   /* shared by every open handle; cold recovery takes it exclusively */

static int fq__open_lock(int fd, short type, int wait)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = FQ_OPEN_BYTE;
    fl.l_len = 1;
    for (;;) {
        if (fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl) == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

static int fq__store_init_handle(fq_queue *q, int dirfd, uint32_t fsync_mode)
{
    q->dirfd = dirfd;
    q->fsync_mode = fsync_mode;
    q->segmap = calloc(FQ_SEGMAP, sizeof *q->segmap);
    if (!q->segmap) {
        fq__set_err("out of memory");
        return FQ_ERR_SYS;
    }
    q->open_fd = fq__open_lock_fd(q);
    if (q->open_fd < 0) {
        fq__set_err("cannot reopen the control file: %s", strerror(errno));
        return FQ_ERR_SYS;
    }
    return FQ_OK;
}

static int fq__open_dirfd(const char *dir, int create)
{
    if (create && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fq__set_err("cannot create directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        fq__set_err("cannot open directory %s: %s", dir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(dfd, &st) != 0 || st.st_uid != geteuid()) {
        fq__set_err("directory %s is not owned by us (uid %u)", dir, (unsigned)geteuid());
        close(dfd);
        errno = EPERM;
        return -1;
    }
    return dfd;
}

int fq_create_dir(fq_queue *q, const char *dir, const fq_params *p, uint32_t fsync_mode)
{
    memset(q, 0, sizeof *q);
    q->fd = q->lock_fd = q->dirfd = q->open_fd = -1;
    q->member = -1;
    q->pid = getpid();
    if (fsync_mode > FQ_FSYNC_ALWAYS)
        return FQ_ERR_INVAL;
    int dfd = fq__open_dirfd(dir, 1);
    if (dfd < 0)
        return errno == EPERM ? FQ_ERR_PERM : FQ_ERR_SYS;
    fq_params pp = *p;
    pp.flags |= FQ_P_NO_QUEUE_GROUP;
    int rc = fq__create(q, dir, dfd, &pp);
    if (rc) {
        close(dfd);
        return rc;
    }
    rc = fq__store_init_handle(q, dfd, fsync_mode);
    if (rc == FQ_OK && fq__open_lock(q->open_fd, F_RDLCK, 0) != 0)
        rc = FQ_ERR_SYS;
    if (rc == FQ_OK) {
        fq__boot_id(q->store->st_boot);
        q->store->st_fsync = fsync_mode;
        if (!fq__seg(q, 0, 1)) /* an empty log has its first segment */
            rc = errno == ENOSPC ? FQ_ERR_NOMEM : FQ_ERR_SYS;
    }
    if (rc == FQ_OK)
        rc = fq__ckpt_write(q, 0, 0);
    if (rc == FQ_OK && (msync(q->base, q->map_size, MS_SYNC) != 0 || fsync(dfd) != 0))
        rc = FQ_ERR_SYS;
    if (rc) {
        fq_close(q);
        return rc;
    }
    /* Published last, with our shared open lock held: an opener racing with
     * the creation waits for READY (fq__attach) and never sees a store
     * without its first segment and checkpoint, nor takes the open lock
     * exclusively for a "cold recovery" of a half-made store. */
    atomic_store_explicit(&q->sup->s_state, FQ_S_READY, FQ_RELEASE);
    return FQ_OK;
}

static int fq__ckpt_valid(fq_queue *q, const struct fq_ckpt_shm *k)
{
    return k->k_magic == FQ_CKPT_MAGIC && k->k_ngroups <= FQ_MAX_GROUPS && k->k_crc == fq__ckpt_crc(k) &&
           !(k->k_pos & 7u) && (int64_t)(k->k_seq - k->k_retain_seq) >= 0 &&
           (int64_t)((k->k_pos >> q->seg_shift) - k->k_retain_seg) >= 0;
}

/* Segments present in the directory: lowest and highest number; removes
 * temporary files of dead creators.  0 if none. */
static int fq__scan_dir(fq_queue *q, uint64_t *lo, uint64_t *hi)
{
    /* Two passes: the files that pass validation give the range; names of
     * files that fail it count only near that range (a damaged segment is
     * still a segment), so a stray name can never make the loops over
     * segment numbers that follow run for 2^44 iterations. */
    int any = 0;
    for (int pass = 0; pass < 2; pass++) {
        int dfd = dup(q->dirfd);
        if (dfd < 0)
            return any;
        DIR *d = fdopendir(dfd);
        if (!d) {
            close(dfd);
            return any;
        }
        rewinddir(d);
        uint64_t vlo = *lo, vhi = *hi;
        int vany = any;
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (pass == 0 && strncmp(de->d_name, "tmp.", 4) == 0) {
                unlinkat(q->dirfd, de->d_name, 0);
                continue;
            }
            unsigned long long pos;
            char ext[8];
            if (strlen(de->d_name) != 24 || sscanf(de->d_name, "%20llu.%3s", &pos, ext) != 2 ||
                strcmp(ext, "seg") != 0 || (pos & FQ_SEG_MASK(q)))
                continue;
            uint64_t k = pos >> q->seg_shift;
            int fd = openat(q->dirfd, de->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
            int valid = fd >= 0 && fq__file_check(q, fd, k, FQ_H_SEGMENT);
            if (fd >= 0)
                close(fd);
            if (pass == 0 ? !valid : (valid || !vany || k > vhi + 1 || k + ((uint64_t)1 << 20) < vlo))
                continue;
            if (!any || k < *lo)
                *lo = k;
            if (!any || k > *hi)
                *hi = k;
            any = 1;
        }
        closedir(d);
    }
    return any;
}

/* Segments an interrupted retention left below its start (S7: the start and
 * the checkpoint moved first).  Only below what BOTH the store state and the
 * newest valid checkpoint say, and only files that exist. */
static void fq__unlink_leftovers(fq_queue *q)
{
    const struct fq_ckpt_shm *ck = NULL;
    for (int i = 0; i < 2; i++)
        if (fq__ckpt_valid(q, &q->ckpt[i]) && (!ck || q->ckpt[i].k_gen > ck->k_gen))
            ck = &q->ckpt[i];
    if (!ck)
        return;
    uint64_t below = atomic_load_explicit(&q->store->st_retain_seg, FQ_RELAXED);
    if (ck->k_retain_seg < below)
        below = ck->k_retain_seg;
    uint64_t lo = 0, hi = 0;
    if (!fq__scan_dir(q, &lo, &hi))
        return;
    for (uint64_t k = lo; k < below && k <= hi; k++)
        fq__unlink_seg(q, k);
}

/* Zero the data of segment k from offset off to its end; returns how many of
 * those bytes were not already zero (the torn tail). */
static uint64_t fq__zero_tail(fq_queue *q, uint64_t k, uint64_t off)
{
    struct fq_segmap *e = fq__seg(q, k, 0);
    if (!e)
        return 0;
    uint8_t *b = e->seg + FQ_SEG_HDR;
    uint64_t last = q->cap;
    while (last > off && b[last - 1] == 0)
        last--;
    if (last > off) {
        memset(b + off, 0, last - off);
        msync(e->seg + ((FQ_SEG_HDR + off) & ~(uint64_t)(FQ_PAGE - 1)), e->seg_len - ((FQ_SEG_HDR + off) & ~(uint64_t)(FQ_PAGE - 1)), MS_SYNC);
    }
    return last - off;
}

static void fq__idx_clear(fq_queue *q, uint64_t k, uint64_t from_block)
{
    for (uint64_t b = from_block; b < FQ_NBLOCKS(q); b++) {
        struct fq_idx_entry *x = fq__idx(q, k, b);
        if (!x)
            return;
        if (atomic_load_explicit(&x->x_mark, FQ_RELAXED) || atomic_load_explicit(&x->x_seq, FQ_RELAXED))
            memset((void *)x, 0, sizeof *x);
    }
}

/* Segment k's files fail validation (or are missing): move them aside and
 * create fresh ones (recovery with on_corrupt="skip" writes a gap there). */
static struct fq_segmap *fq__seg_replace(fq_queue *q, uint64_t k)
{
    for (int kind = FQ_H_SEGMENT; kind <= FQ_H_INDEX; kind++) {
        char name[64], aside[80];
        fq__seg_name(name, sizeof name, k << q->seg_shift, kind);
        snprintf(aside, sizeof aside, "%s.corrupt", name);
        renameat(q->dirfd, name, q->dirfd, aside);
    }
    struct fq_segmap *e = &q->segmap[k & (FQ_SEGMAP - 1)];
    if (e->tag == k + 1)
        fq__segmap_drop(e);
    return fq__seg(q, k, 1);
}

/* After a bad frame at `at` (expected record cs): the next readable record
 * — an index entry of the same segment whose frame checks out (when
 * use_index), else the first record of a later segment.  1 + (*ns, *np). */
static int fq__resync(fq_queue *q, uint64_t at, uint64_t cs, uint64_t limit, int use_index, uint64_t *ns,
                      uint64_t *np)
{
    uint64_t k = at >> q->seg_shift, seg0 = k << q->seg_shift, seg_end = seg0 + q->cap;
    uint64_t xs = 0, xp = 0;
    int have_x = 0;
    for (uint64_t b = ((at & FQ_SEG_MASK(q)) >> FQ_IDX_SHIFT) + 1; use_index && b < FQ_NBLOCKS(q); b++) {
        struct fq_idx_entry *x = fq__idx(q, k, b);
        if (!x)
            break;
        if (atomic_load_explicit(&x->x_mark, FQ_ACQUIRE) != FQ_IDX_MARK)
            continue;
        uint64_t s = atomic_load_explicit(&x->x_seq, FQ_RELAXED);
        uint32_t off = atomic_load_explicit(&x->x_off, FQ_RELAXED);
        if (off >= q->cap || seg0 + off <= at || (int64_t)(s - cs) < 0 || (off & 7u))
            continue;
        uint64_t c = seg0 + off;
        struct fq_frame_hdr h;
        const uint8_t *fr;
        if (fq__walk(q, &c, limit, &h, &fr) == 1 && c == seg0 + off && h.f_seq == s) {
            xs = s;
            xp = c;
            have_x = 1;
            break;
        }
    }
    /* Between the damage and that entry (or the segment end): the next frame
     * header, looked for 8 bytes at a time; a CRC-valid header of a plausible
     * record is the resynchronisation point (frames are written once and
     * never move). */
    uint64_t scan_end = have_x ? xp : seg_end;
    uint32_t crc_tries = 0; /* crafted data could make every position look like a header */
    for (uint64_t c = at + 8; c + FQ_FRAME_HDR <= scan_end && (int64_t)(limit - c) > 0 && crc_tries < 4096; c += 8) {
        const uint8_t *bp = fq__store_ptr(q, c, 0);
        if (!bp)
            break;
        const struct fq_frame_hdr *h = (const struct fq_frame_hdr *)bp;
        uint16_t kind = h->f_flags & FQ_FR_KIND;
        if (!(h->f_flags & FQ_FR_COMMITTED) || (kind != FQ_FR_DATA && kind != FQ_FR_GAP) ||
            (int64_t)(h->f_seq - cs) <= 0 || h->f_seq - cs > ((uint64_t)1 << 24))
            continue;
        crc_tries++;
        if (fq__store_check(h, bp, seg_end - c)) {
            *ns = h->f_seq;
            *np = c;
            return 1;
        }
    }
    if (have_x) {
        *ns = xs;
        *np = xp;
        return 1;
    }
    uint64_t hi = limit >> q->seg_shift;
    for (uint64_t j = k + 1; j < hi; j++) {
        int ok;
        uint64_t f = fq__seg_first(q, j, limit, &ok);
        if (ok && (int64_t)(f - cs) >= 0) {
            *ns = f;
            *np = j << q->seg_shift;
            return 1;
        }
    }
    return 0;
}

/* Cold recovery (exclusive: nobody else has the store open).  Trusts only
 * the superblock, the group configuration, the checkpoints (CRC) and the
 * segments (CRC per record); rebuilds everything else.  See docs/store.md. */
static int fq__cold_recover(fq_queue *q, int policy, int full, fq_recovery_report *r)
{
    const struct fq_ckpt_shm *ck = NULL;
    for (int i = 0; i < 2; i++)
        if (fq__ckpt_valid(q, &q->ckpt[i]) && (!ck || q->ckpt[i].k_gen > ck->k_gen))
            ck = &q->ckpt[i];
    uint64_t lo = 0, hi = 0;
    int any = fq__scan_dir(q, &lo, &hi);
    uint64_t cs = q->base_seq, cp = q->base_pos, rseg = 0, rseq = q->base_seq;
    if (ck) {
        cs = ck->k_seq;
        cp = ck->k_pos;
        rseg = ck->k_retain_seg;
        rseq = ck->k_retain_seq;
        if (any && (int64_t)(rseg - lo) < 0)
            ck = NULL; /* files the checkpoint counts on are gone: rescan what exists */
        else if ((any && (cp >> q->seg_shift) > hi + 1) || (!any && cp != q->base_pos) ||
                 (int64_t)((cp >> q->seg_shift) - rseg) < 0)
            ck = NULL; /* it names positions no segment file holds: not trusted */
    }
    if (!ck) {
        r->reason = 3;
        if (any) {
            int ok;
            rseg = lo;
            cp = lo << q->seg_shift;
            atomic_store_explicit(&q->store->st_retain_seg, lo, FQ_RELAXED);
            cs = fq__seg_first(q, lo, (hi + 1) << q->seg_shift, &ok);
            if (!ok) {
                if (lo != 0) {
                    fq__set_err("recovery: the oldest segment (%llu) has no valid first record and no checkpoint "
                                "says where the log starts", (unsigned long long)lo);
                    return FQ_ERR_DATA;
                }
                cs = q->base_seq;
            }
            rseq = cs;
        }
    }
    atomic_store_explicit(&q->store->st_retain_seg, rseg, FQ_RELAXED);
    atomic_store_explicit(&q->store->st_retain_seq, rseq, FQ_RELAXED);
    r->ckpt_seq = cs;
    r->ckpt_pos = cp;
    uint64_t limit = any ? (hi + 1) << q->seg_shift : cp;
    /* What was promised durable ends at the checkpoint: damage below it is
     * corruption (refused, or skipped with a count), damage above it a torn
     * tail (cut).  The scan starts at the beginning of the checkpoint's
     * segment, so the most recently sealed records are verified too. */
    uint64_t promised = ck ? cp : 0;
    if (ck && full && (int64_t)(cs - rseq) > 0) {
        cs = rseq; /* asked for (recover=True): verify every retained record */
        cp = rseg << q->seg_shift;
    } else if (ck && (cp & FQ_SEG_MASK(q)) && (int64_t)((cp >> q->seg_shift) - rseg) >= 0) {
        int ok;
        uint64_t f = fq__seg_first(q, cp >> q->seg_shift, limit, &ok);
        if (ok && (int64_t)(f - rseq) >= 0 && (int64_t)(cs - f) >= 0) {
            cs = f;
            cp = (cp >> q->seg_shift) << q->seg_shift;
        }
    }
    /* index entries after the scan start are rewritten by the walk (the old
     * ones stay usable for resynchronising past damage; all are hints) */
    for (;;) {
        struct fq_frame_hdr h;
        const uint8_t *fr;
        uint64_t at = cp;
        int w = fq__walk(q, &at, limit, &h, &fr);
        uint64_t n = w == 1 ? fq__frame_count(&h) : 0;
        if (w == 1 && h.f_seq == cs && n <= ((uint64_t)1 << 32)) {
            uint64_t fb = fq__align8(h.f_len);
            uint64_t X = (at + FQ_IDX_BLOCK - 1) & ~(uint64_t)(FQ_IDX_BLOCK - 1);
            if (X < at + fb && (X & FQ_SEG_MASK(q))) {
                struct fq_idx_entry *x = fq__idx(q, X >> q->seg_shift, (X & FQ_SEG_MASK(q)) >> FQ_IDX_SHIFT);
                if (x) {
                    atomic_store_explicit(&x->x_seq, cs, FQ_RELAXED);
                    atomic_store_explicit(&x->x_ts_ns, (h.f_flags & FQ_FR_KIND) == FQ_FR_DATA ? h.f_ts_ns : 0, FQ_RELAXED);
                    atomic_store_explicit(&x->x_off, (uint32_t)(at & FQ_SEG_MASK(q)), FQ_RELAXED);
                    atomic_store_explicit(&x->x_mark, FQ_IDX_MARK, FQ_RELEASE);
                    r->index_rebuilt++;
                }
            }
            if ((h.f_flags & FQ_FR_KIND) == FQ_FR_DATA)
                r->scanned++;
            cs += n;
            cp = at + fb;
            continue;
        }
        if (w == 0)
            break;
        /* A bad or missing frame at (cs, at).  At or above the checkpoint: a
         * torn tail.  Below it (a sealed, flushed part): corruption. */
        uint64_t kb = at >> q->seg_shift, np = 0, ns = 0;
        if ((int64_t)(at - promised) >= 0)
            break; /* not promised durable: the torn tail (Kafka truncates there too) */
        int later = fq__resync(q, at, cs, limit, 1, &ns, &np);
        r->corrupt = 1;
        if (!r->corrupt_seq)
            r->corrupt_seq = cs;
        if (policy != FQ_CORRUPT_SKIP) {
            if (later)
                fq__set_err("record %llu (log position %llu, segment %020llu.seg) is corrupt and valid records "
                            "follow it; open with on_corrupt=\"skip\" to drop records %llu..%llu and go on",
                            (unsigned long long)cs, (unsigned long long)at, (unsigned long long)(kb << q->seg_shift),
                            (unsigned long long)cs, (unsigned long long)(ns - 1));
            else
                fq__set_err("record %llu (log position %llu, segment %020llu.seg) is corrupt although a checkpoint "
                            "says it was on disk; open with on_corrupt=\"skip\" to cut the log there",
                            (unsigned long long)cs, (unsigned long long)at, (unsigned long long)(kb << q->seg_shift));
            return FQ_ERR_DATA;
        }
        if (!later)
            break; /* skip, but nothing readable follows: cut here */
        /* skip: the damaged stretch becomes one counted gap; a segment file
         * that is missing or fails validation is replaced by a fresh one (the
         * bad file is kept beside it as <name>.corrupt) */
        for (uint64_t k = kb; (int64_t)((np >> q->seg_shift) - k) > 0 || k == kb; k++)
            if (!fq__seg(q, k, 0) && !fq__seg_replace(q, k))
                return errno == ENOSPC ? FQ_ERR_NOMEM : FQ_ERR_SYS;
        if (ns != cs || np != at) {
            for (uint64_t b = ((at & FQ_SEG_MASK(q)) >> FQ_IDX_SHIFT) + 1;
                 b < FQ_NBLOCKS(q) && (kb << q->seg_shift) + (b << FQ_IDX_SHIFT) < np; b++) {
                struct fq_idx_entry *x = fq__idx(q, kb, b); /* no hint may point into the gap */
                if (x)
                    memset((void *)x, 0, sizeof *x);
            }
            int grc = fq__store_gap(q, cs, ns - cs, at, np);
            if (grc)
                return grc;
            r->skipped += ns - cs;
            atomic_fetch_add_explicit(&q->store->st_skipped, ns - cs, FQ_RELAXED);
        }
        cs = ns;
        cp = np;
    }
    /* torn tail: zero the rest of cp's segment, remove later segments */
    uint64_t kc = cp >> q->seg_shift;
    r->tail_seq = cs;
    r->tail_pos = cp;
    if (!fq__seg(q, kc, 1))
        return errno == ENOSPC ? FQ_ERR_NOMEM : FQ_ERR_SYS;
    r->truncated_bytes += fq__zero_tail(q, kc, cp & FQ_SEG_MASK(q));
    fq__idx_clear(q, kc, ((cp & FQ_SEG_MASK(q)) + FQ_IDX_BLOCK - 1) >> FQ_IDX_SHIFT);
    for (uint64_t k = kc + 1; any && (int64_t)(hi - k) >= 0; k++) {
        char name[64];
        fq__seg_name(name, sizeof name, k << q->seg_shift, FQ_H_SEGMENT);
        if (faccessat(q->dirfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
            r->truncated_bytes += fq__zero_tail(q, k, 0);
            r->segments_removed++;
        }
        fq__unlink_seg(q, k);
    }
    FQ_CRASHPOINT("store.recover_cut");
    /* the control state, rebuilt */
    struct fq_ctrl_shm *c = q->ctrl;
    atomic_store_explicit(&c->c_tail, fq__tail_pack(cs, cp), FQ_RELAXED);
    atomic_store_explicit(&c->c_floor_seq, cs, FQ_RELAXED);
    atomic_store_explicit(&c->c_floor_pos, cp, FQ_RELAXED);
    atomic_store_explicit(&c->c_floor_proposal, cs, FQ_RELAXED);
    atomic_store_explicit(&c->c_data_ec, atomic_load_explicit(&c->c_data_ec, FQ_RELAXED) & ~(uint64_t)0xFFFFFFFFu, FQ_RELAXED);
    atomic_store_explicit(&c->c_space_ec, atomic_load_explicit(&c->c_space_ec, FQ_RELAXED) & ~(uint64_t)0xFFFFFFFFu, FQ_RELAXED);
    atomic_store_explicit(&c->c_done_ec, atomic_load_explicit(&c->c_done_ec, FQ_RELAXED) & ~(uint64_t)0xFFFFFFFFu, FQ_RELAXED);
    atomic_store_explicit(&c->c_durable_ec, atomic_load_explicit(&c->c_durable_ec, FQ_RELAXED) & ~(uint64_t)0xFFFFFFFFu, FQ_RELAXED);
    atomic_store_explicit(&c->c_recovery_owner, 0, FQ_RELAXED);
    atomic_store_explicit(&c->c_admin_owner, 0, FQ_RELAXED);
    atomic_store_explicit(&c->c_last_scan_ns, 0, FQ_RELAXED);
    atomic_store_explicit(&c->c_aborted, 0, FQ_RELAXED);
    atomic_store_explicit(&c->c_abort_seq, 0, FQ_RELAXED);
    atomic_store_explicit(&c->c_abort_len, 0, FQ_RELAXED);
    atomic_store_explicit(&c->c_member_hwm, 0, FQ_RELAXED);
    atomic_store_explicit(&c->c_durable_seq, cs, FQ_RELAXED);
    memset((void *)q->members, 0, (size_t)q->max_members * sizeof *q->members);
    memset((void *)q->desc, 0, (size_t)q->n_desc * sizeof *q->desc);
    atomic_store_explicit(&q->store->st_flush_owner, 0, FQ_RELAXED);
    atomic_store_explicit(&q->store->st_durable_pos, cp, FQ_RELAXED);
    atomic_store_explicit(&q->store->st_seg_hwm, kc, FQ_RELAXED);
    for (uint32_t g = 0; g < q->max_groups; g++) {
        struct fq_group_shm *G = fq__group(q, g);
        uint32_t st = atomic_load_explicit(&G->g_state, FQ_RELAXED);
        int sane = st == FQ_G_ACTIVE && memchr(G->g_name, 0, sizeof G->g_name) && G->g_name[0] &&
                   memchr(G->g_dlq, 0, sizeof G->g_dlq) && ((uint64_t)1 << (G->g_window_log2 & 31)) <= q->window;
        struct fq_lease_shm *win = &q->windows[(uint64_t)g * q->window];
        if (!sane) {
            if (st != FQ_G_FREE)
                atomic_store_explicit(&G->g_state, FQ_G_FREE, FQ_RELAXED);
            continue;
        }
        uint64_t low = G->g_start_seq;
        uint32_t gen = atomic_load_explicit(&G->g_gen, FQ_RELAXED);
        if (ck && g < ck->k_ngroups && ck->k_groups[g].kg_state == FQ_G_ACTIVE && ck->k_groups[g].kg_gen == gen)
            low = ck->k_groups[g].kg_low;
        if ((int64_t)(low - cs) > 0)
            low = cs;
        if ((int64_t)(low - rseq) < 0)
            low = rseq;
        for (uint64_t i = 0; i < q->window; i++) {
            unsigned lst = fq__lw_st(atomic_load_explicit(&win[i].l_w, FQ_RELAXED));
            if (lst == FQ_L_LEASED || lst == FQ_L_RETRY)
                r->leases_reset++;
        }
        memset((void *)win, 0, (size_t)q->window * sizeof *win);
        /* everything below low counts as finished (qsize = tail - low) */
        if ((int64_t)(G->g_start_seq - low) > 0)
            G->g_start_seq = low;
        atomic_store_explicit(&G->g_low, low, FQ_RELAXED);
        atomic_store_explicit(&G->g_dispatch, low, FQ_RELAXED);
        atomic_store_explicit(&G->g_acked, low - G->g_start_seq, FQ_RELAXED);
        atomic_store_explicit(&G->g_retry_pending, 0, FQ_RELAXED);
        atomic_store_explicit(&G->g_next_deadline, (uint64_t)INT64_MAX, FQ_RELAXED);
        r->groups++;
    }
    fq__dedup_cold(q, cs); /* after the floor is cs: fq__store_find answers for every seq below it */
    int rc = fq__sync_range(q, r->ckpt_pos, cp);
    if (rc == FQ_OK)
        rc = fq__ckpt_write(q, cs, cp);
    if (rc == FQ_OK && msync(q->base, q->map_size, MS_SYNC) != 0)
        rc = FQ_ERR_SYS;
    atomic_fetch_add_explicit(&q->store->st_recoveries, 1, FQ_RELAXED);
    r->ran = 1;
    return rc;
}

int fq_open_dir(fq_queue *q, const char *dir, int64_t wait_ns, int recover, int corrupt_policy,
                fq_recovery_report *rep)
{
    fq_recovery_report dummy;
    if (!rep)
        rep = &dummy;
    memset(rep, 0, sizeof *rep);
    memset(q, 0, sizeof *q);
    q->fd = q->lock_fd = q->dirfd = q->open_fd = -1;
    q->member = -1;
    q->pid = getpid();
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        fq__set_err("no log at %s: %s", dir, strerror(errno));
        return errno == ENOENT ? FQ_ERR_NOENT : errno == EACCES ? FQ_ERR_PERM : FQ_ERR_SYS;
    }
    int fd = openat(dfd, "control", O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        close(dfd);
        fq__set_err("no log at %s (no control file: %s)", dir, strerror(e));
        return e == ENOENT ? FQ_ERR_NOENT : e == EACCES || e == ELOOP ? FQ_ERR_PERM : FQ_ERR_SYS;
    }
    snprintf(q->path, sizeof q->path, "%.240s/control", dir); /* names the file in attach's errors */
    int rc = fq__attach(q, fd, wait_ns);
    snprintf(q->path, sizeof q->path, "%s", dir);
    if (rc == FQ_OK && !q->durable) {
        fq__set_err("%s/control is not the control file of a durable log", dir);
        rc = FQ_ERR_FORMAT;
        munmap(q->base, q->map_size);
        q->base = NULL;
    }
    if (rc) {
        close(fd);
        close(dfd);
        q->fd = -1;
        return rc;
    }
    rc = fq__store_init_handle(q, dfd, q->store->st_fsync <= FQ_FSYNC_ALWAYS ? q->store->st_fsync : FQ_FSYNC_NEVER);
    if (rc) {
        fq_close(q);
        return rc;
    }
    if (fq__open_lock(q->open_fd, F_WRLCK, 0) == 0) {
        /* Nobody else has the store open: decide whether its shared state
         * can be trusted.  Within one boot the page cache holds exactly what
         * the processes left (a process crash loses nothing; the liveness
         * recovery of the ring handles dead members).  After a reboot — or
         * when asked, or when the state is inconsistent — rebuild it. */
        char boot[40];
        fq__boot_id(boot);
        int reason = recover == FQ_RECOVER_FORCE ? 2 : strncmp(boot, q->store->st_boot, 40) != 0 ? 1
                   : !fq__check_dynamic(q) ? 4 : 0;
        uint64_t lo, hi;
        fq__scan_dir(q, &lo, &hi); /* temporary files of dead creators */
        if (!reason)
            fq__unlink_leftovers(q);
        if (reason == 2 && strncmp(boot, q->store->st_boot, 40) == 0 && fq__check_dynamic(q) &&
            fq_join(q, 0) == FQ_OK) {
            /* Forced, within one boot: first let the ring's liveness recovery
             * turn dead members' claims into gap frames, as a plain open would
             * (else the scan would take a dead claim for the torn end and cut
             * records other producers appended after it). */
            fq_maintain(q, 1);
            fq_leave(q);
        }
        if (reason) {
            rep->reason = reason;
            rc = fq__cold_recover(q, corrupt_policy, reason == 2, rep);
            if (rep->reason == 3 && reason != 3)
                rep->reason = reason;
            if (rc == FQ_OK)
                fq__unlink_leftovers(q);
        }
        if (rc == FQ_OK) {
            memcpy(q->store->st_boot, boot, 40);
            if (fq__open_lock(q->open_fd, F_RDLCK, 0) != 0)
                rc = FQ_ERR_SYS;
        }
    } else if (recover == FQ_RECOVER_FORCE) {
        fq__set_err("log %s is open in another process: recovery needs it closed everywhere", dir);
        rc = FQ_ERR_EXISTS;
    } else if (fq__open_lock(q->open_fd, F_RDLCK, 1) != 0) {
        fq__set_err("cannot lock %s/control: %s", dir, strerror(errno));
        rc = FQ_ERR_SYS;
    } else if (!fq__check_dynamic(q)) {
        fq__set_err("log %s: control state is inconsistent (tail, floor or group positions out of bounds)", dir);
        rc = FQ_ERR_CORRUPT;
    }
    if (rc) {
        fq_close(q);
        return rc;
    }
    return FQ_OK;
}

int fq_verify(fq_queue *q, uint64_t *records, uint64_t *bad_seq)
{
    *records = 0;
    *bad_seq = 0;
    fq_cursor c;
    int rc = fq_seek_seq(q, fq_first_seq(q), &c);
    if (rc)
        return rc;
    uint64_t fp = atomic_load_explicit(&q->ctrl->c_floor_pos, FQ_ACQUIRE);
    for (;;) {
        struct fq_frame_hdr h;
        const uint8_t *fr;
        uint64_t at = c.pos;
        int w = fq__walk(q, &at, fp, &h, &fr);
        if (w == 0)
            return FQ_OK;
        if (w < 0 || h.f_seq != c.seq) {
            *bad_seq = c.seq;
            fq__set_err("record %llu at log position %llu (segment %020llu.seg) failed its checksum or header check",
                        (unsigned long long)c.seq, (unsigned long long)at,
                        (unsigned long long)((at >> q->seg_shift) << q->seg_shift));
            return FQ_ERR_DATA;
        }
        if ((h.f_flags & FQ_FR_KIND) == FQ_FR_DATA)
            (*records)++;
        c.seq += fq__frame_count(&h);
        c.pos = at + fq__align8(h.f_len);
    }
}
