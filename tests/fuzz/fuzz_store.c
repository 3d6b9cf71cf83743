/*
 * fuzz_store.c — fuzz the segment-store parsers: frames (fq__walk /
 * fq__store_check), segment and index file headers (fq__file_check), index
 * entries (fq__anchor), checkpoints and the control file's store state
 * (fq__cold_recover, fq_open_dir).
 *
 * A store is built once per process (in /dev/shm: msync is free there):
 * 64 KiB segments, ~430 records over 3 segments (every 5th keyed), one
 * group that acked some records, an early checkpoint (record 100) saved
 * aside, then a clean close.  Every input restores those files byte for byte,
 * overwrites one region with the input, then runs
 *
 *     fq_open_dir(FORCE or AUTO, refuse or skip)
 *     and if it opened: fq_verify, a full fq_read_next scan (every payload
 *     byte touched), seeks by offset and time, join, group takes + acks
 *     (reads behind the descriptor ring), one append, fq_close
 *
 * which must never crash, leak (ASan/LSan; open fds and mappings of the store
 * files are checked after every close) or read out of bounds.
 *
 * Input: byte 0 = mode, byte 1 = aux, bytes 2..3 = offset (LE), rest = data.
 *   mode bits 0..2  target
 *       0 newest segment's data area at data offset 8*offset (mod S)
 *       1 an older segment's data area (segment aux % newest), same
 *       2 a segment file's header page (aux bit 0: of the index file)
 *       3 an index file (segment aux % nsegs), file offset offset
 *       4 checkpoint slot aux & 1 (control file, store section)
 *       5 store-state page (control file)
 *       6 control block page (c_tail, floor, ...)
 *       7 groups section
 *   bit 3  on_corrupt = skip
 *   bit 4  put the early checkpoint back (recovery walks ~330 records)
 *   bit 5  fix checksums after writing: seal frames in the written range,
 *          recompute the file header / checkpoint CRC (gets past the CRCs)
 *   bit 6  FQ_RECOVER_AUTO instead of FQ_RECOVER_FORCE (same boot: the
 *          shared state is trusted if consistent — readers meet the damage)
 *   bit 7  truncate the target file at the end of the written range
 *   aux bit 7  another boot id in the control file (a power cut is a
 *          reboot: the page-cache state is not trusted, damage after the
 *          checkpoint is a torn tail); the other aux bits select as above
 *
 * Builds:
 *   libFuzzer:  clang -fsanitize=fuzzer,address,undefined -DFQ_LIBFUZZER ...
 *               (CMake: -DFASTQ_FUZZ=ON -DCMAKE_C_COMPILER=clang, target fuzz_store)
 *   standalone: any C11 compiler; main() replays corpus files/directories
 *               (CMake target fuzz_store_replay, ctest fuzz_corpus_replay);
 *               "--gen DIR" writes the seed corpus.
 *
 * The bugs it found (untrusted loop bounds and positions in the control file,
 * unaligned index hints, crafted gap counts and checkpoints) are fixed; their
 * inputs are in corpus/ as regression seeds.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "fq.h"
#include "fq_crc32c.h"
#include "fq_pvt.h"

#define SEG (64u << 10)
#define N_EARLY 100u
#define N_RECORDS 430u
#define MAX_FILES 16

enum { T_SEG_NEW, T_SEG_OLD, T_SEG_HDR, T_IDX, T_CKPT, T_STORE, T_CTRL, T_GROUP };
#define M_SKIP 0x08u
#define M_EARLY 0x10u
#define M_FIX 0x20u
#define M_AUTO 0x40u
#define M_TRUNC 0x80u

struct tfile {
    char name[40];
    uint8_t *data;
    size_t len;
};

static struct tfile g_files[MAX_FILES];
static int g_nfiles;
static char g_root[128], g_dir[160];
static uint8_t g_early_ckpt[2 * FQ_PAGE];
static uint64_t g_off_ctrl, g_off_groups, g_off_store, g_groups_len;
static uint64_t g_newest, g_nsegs, g_newest_first, g_tail_pos, g_tail_seq;
static int64_t g_ts_mid;
static int g_ready;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_store: %s: %s (%s)\n", what, fq_last_error(), strerror(errno));
    abort();
}

/* dir + "/" + name into out (checked: -Wformat-truncation, and no silent cut) */
static void join_path(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        die("path too long");
}

static uint32_t len_of(uint32_t i) { return 1 + (i * 7919u) % 700u; }

static void fill(uint8_t *p, uint32_t len, uint32_t i)
{
    for (uint32_t j = 0; j < len; j++)
        p[j] = (uint8_t)(i * 31u + j * 7u);
}

static int put(fq_queue *q, uint32_t i)
{
    uint32_t len = len_of(i);
    uint64_t seq;
    int rc = fq_claim(q, &len, 1, &seq);
    if (rc != FQ_OK)
        return rc;
    fill(fq_payload(q, seq), len, i);
    if (i % 5 == 0 && len >= 4)
        fq_set_key_len(q, seq, 4);
    fq_commit(q, seq, 1);
    return FQ_OK;
}

static void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        join_path(p, sizeof p, dir, de->d_name);
        if (de->d_type == DT_DIR)
            rm_rf(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static void cleanup(void)
{
    if (g_root[0])
        rm_rf(g_root);
}

static struct tfile *tfile(const char *name)
{
    for (int i = 0; i < g_nfiles; i++)
        if (strcmp(g_files[i].name, name) == 0)
            return &g_files[i];
    return NULL;
}

static void seg_file(char *out, size_t cap, uint64_t k, int idx)
{
    snprintf(out, cap, "%020llu.%s", (unsigned long long)(k * SEG), idx ? "idx" : "seg");
}

static void load_template(void)
{
    DIR *d = opendir(g_dir);
    if (!d)
        die("opendir");
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (g_nfiles == MAX_FILES)
            die("too many template files");
        if (strlen(de->d_name) >= sizeof g_files[0].name)
            die("template file name too long");
        struct tfile *f = &g_files[g_nfiles++];
        memcpy(f->name, de->d_name, strlen(de->d_name) + 1);
        char p[512];
        join_path(p, sizeof p, g_dir, de->d_name);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0)
            die("open template file");
        f->len = (size_t)st.st_size;
        f->data = malloc(f->len);
        if (!f->data || pread(fd, f->data, f->len, 0) != (ssize_t)f->len)
            die("read template file");
        close(fd);
    }
    closedir(d);
}

static void build_template(void)
{
    snprintf(g_root, sizeof g_root, "/dev/shm/fqfuzz.%d", (int)getpid());
    rm_rf(g_root);
    if (mkdir(g_root, 0700) != 0)
        die("mkdir");
    atexit(cleanup);
    snprintf(g_dir, sizeof g_dir, "%s/log", g_root);
    fq_params p;
    memset(&p, 0, sizeof p);
    p.capacity = SEG;
    p.desc_count = 64;
    p.window = 64;
    p.max_groups = 4;
    p.max_members = 8;
    fq_queue q;
    if (fq_create_dir(&q, g_dir, &p, FQ_FSYNC_NEVER) != FQ_OK || fq_join(&q, 3) != FQ_OK)
        die("create");
    fq_group_cfg c;
    memset(&c, 0, sizeof c);
    c.name = "g";
    c.window = 16;
    uint32_t g;
    int created;
    if (fq_group_open(&q, &c, &g, &created) != FQ_OK)
        die("group");
    for (uint32_t i = 0; i < N_EARLY; i++)
        if (put(&q, i) != FQ_OK)
            die("append");
    if (fq_checkpoint(&q) != FQ_OK)
        die("checkpoint");
    memcpy(g_early_ckpt, (const void *)q.ckpt, sizeof g_early_ckpt);
    g_off_ctrl = (uint64_t)((uint8_t *)q.ctrl - q.base);
    g_off_groups = (uint64_t)((uint8_t *)q.groups - q.base);
    g_groups_len = (uint64_t)q.max_groups * sizeof(struct fq_group_shm);
    g_off_store = (uint64_t)((uint8_t *)q.ckpt - q.base);
    for (uint32_t i = N_EARLY; i < N_RECORDS; i++) {
        if (i == N_RECORDS / 2)
            g_ts_mid = fq_realtime_ns();
        if (put(&q, i) != FQ_OK)
            die("append");
    }
    /* the group finishes some records (its checkpointed low is restored) */
    for (int r = 0; r < 8; r++) {
        fq_msg m[8];
        uint32_t n = 0;
        if (fq_take(&q, g, m, 8, 0, &n) == FQ_OK && n)
            fq_ack(&q, g, m, n);
    }
    fq_frontier(&q);
    g_tail_pos = atomic_load(&q.ctrl->c_floor_pos);
    g_tail_seq = atomic_load(&q.ctrl->c_floor_seq);
    g_newest = g_tail_pos / SEG;
    fq_close(&q);
    load_template();
    for (g_nsegs = 0;; g_nsegs++) {
        char n[40];
        seg_file(n, sizeof n, g_nsegs, 0);
        if (!tfile(n))
            break;
    }
    /* first record of the newest segment: walk its headers */
    char n[40];
    seg_file(n, sizeof n, g_newest, 0);
    struct fq_frame_hdr h;
    memcpy(&h, tfile(n)->data + FQ_SEG_HDR, sizeof h);
    g_newest_first = h.f_seq;
    if (g_tail_seq != N_RECORDS || g_newest < 1 || g_nsegs <= g_newest)
        die("unexpected template geometry");
    g_ready = 1;
}

/* Restore every template file (recovery rewrites, creates and removes them),
 * and remove what is not part of the template. */
static void restore(void)
{
    DIR *d = opendir(g_dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] != '.' && !tfile(de->d_name))
                unlinkat(dirfd(d), de->d_name, 0);
        }
        closedir(d);
    }
    for (int i = 0; i < g_nfiles; i++) {
        char p[512];
        join_path(p, sizeof p, g_dir, g_files[i].name);
        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, g_files[i].data, g_files[i].len) != (ssize_t)g_files[i].len)
            die("restore");
        close(fd);
    }
}

static void write_file(const char *name, const uint8_t *b, size_t len)
{
    char p[512];
    join_path(p, sizeof p, g_dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (len && write(fd, b, len) != (ssize_t)len))
        die("write");
    close(fd);
}

/* ---- checksum helpers (the formats of fq_layout.h) ---------------------- */

static uint32_t frame_crc(const uint8_t *f, size_t avail)
{
    struct fq_frame_hdr h;
    memcpy(&h, f, sizeof h);
    uint16_t kind = h.f_flags & FQ_FR_KIND;
    h.f_crc = 0;
    uint32_t crc = fq_crc32c(0, &h, sizeof h);
    if (kind == FQ_FR_DATA && h.f_len > FQ_FRAME_HDR && h.f_len <= avail)
        crc = fq_crc32c(crc, f + FQ_FRAME_HDR, h.f_len - FQ_FRAME_HDR);
    return crc;
}

/* Seal every plausible frame in data[from, to) of a segment's data area. */
static void seal_frames(uint8_t *data, size_t from, size_t to)
{
    size_t pos = from & ~(size_t)7;
    while (pos < to && SEG - pos >= FQ_FRAME_HDR) {
        struct fq_frame_hdr h;
        memcpy(&h, data + pos, sizeof h);
        uint64_t a = ((uint64_t)h.f_len + 7) & ~(uint64_t)7;
        if (h.f_len < FQ_FRAME_HDR || a > SEG - pos)
            break;
        h.f_crc = frame_crc(data + pos, SEG - pos);
        memcpy(data + pos, &h, sizeof h);
        pos += (h.f_flags & FQ_FR_KIND) == FQ_FR_PAD ? h.f_len : a;
    }
}

static void fix_file_hdr(uint8_t *b)
{
    uint32_t crc = fq_crc32c(0, b, FQ_FILE_HDR_CRC_LEN);
    memcpy(b + FQ_FILE_HDR_CRC_LEN, &crc, 4);
}

static void fix_ckpt(uint8_t *k)
{
    uint32_t ng;
    memcpy(&ng, k + offsetof(struct fq_ckpt_shm, k_ngroups), 4);
    if (ng > FQ_MAX_GROUPS)
        ng = FQ_MAX_GROUPS;
    uint32_t crc = fq_crc32c(0, k + 8, 72 + 16 * (size_t)ng);
    memcpy(k + offsetof(struct fq_ckpt_shm, k_crc), &crc, 4);
}

/* ---- one input ----------------------------------------------------------- */

static void apply(const uint8_t *in, size_t n, int *recover, int *policy)
{
    uint8_t mode = n > 0 ? in[0] : 0, aux = n > 1 ? in[1] : 0;
    uint32_t off = n > 3 ? (uint32_t)in[2] | (uint32_t)in[3] << 8 : 0;
    const uint8_t *d = n > 4 ? in + 4 : NULL;
    size_t len = n > 4 ? n - 4 : 0;
    int new_boot = aux & 0x80;
    aux &= 0x7F;
    *recover = (mode & M_AUTO) ? FQ_RECOVER_AUTO : FQ_RECOVER_FORCE;
    *policy = (mode & M_SKIP) ? FQ_CORRUPT_SKIP : FQ_CORRUPT_REFUSE;
    struct tfile *ctl = tfile("control");
    uint8_t *cb = malloc(ctl->len);
    if (!cb)
        die("malloc");
    memcpy(cb, ctl->data, ctl->len);
    if (mode & M_EARLY)
        memcpy(cb + g_off_store, g_early_ckpt, sizeof g_early_ckpt);
    if (new_boot)
        memcpy(cb + g_off_store + 2 * FQ_PAGE + offsetof(struct fq_store_shm, st_boot), "fuzz-power-cut-boot", 20);
    int target = mode & 7;
    char name[40] = "control";
    uint8_t *buf = cb;
    size_t blen = ctl->len, at = 0, end = 0;
    if (target == T_SEG_NEW || target == T_SEG_OLD || target == T_SEG_HDR || target == T_IDX) {
        uint64_t k = target == T_SEG_NEW ? g_newest : target == T_SEG_OLD ? aux % g_newest
                   : target == T_SEG_HDR ? g_newest : aux % g_nsegs;
        seg_file(name, sizeof name, k, target == T_IDX || (target == T_SEG_HDR && (aux & 1)));
        struct tfile *f = tfile(name);
        buf = malloc(f->len);
        if (!buf)
            die("malloc");
        memcpy(buf, f->data, f->len);
        blen = f->len;
        write_file("control", cb, ctl->len);
        if (target == T_SEG_NEW || target == T_SEG_OLD) {
            at = FQ_SEG_HDR + ((size_t)off * 8) % SEG;
            end = at + (len < blen - at ? len : blen - at);
            if (d)
                memcpy(buf + at, d, end - at);
            if (mode & M_FIX)
                seal_frames(buf + FQ_SEG_HDR, at - FQ_SEG_HDR, end - FQ_SEG_HDR);
        } else {
            at = target == T_SEG_HDR ? off % FQ_PAGE : off % blen;
            end = at + (len < blen - at ? len : blen - at);
            if (d)
                memcpy(buf + at, d, end - at);
            if ((mode & M_FIX) && at < FQ_FILE_HDR_CRC_LEN + 4)
                fix_file_hdr(buf);
        }
    } else {
        size_t base = target == T_CKPT ? g_off_store + (aux & 1) * FQ_PAGE
                    : target == T_STORE ? g_off_store + 2 * FQ_PAGE
                    : target == T_CTRL ? g_off_ctrl : g_off_groups;
        size_t span = target == T_GROUP ? g_groups_len : FQ_PAGE;
        at = base + off % span;
        size_t room = base + span - at;
        end = at + (len < room ? len : room);
        if (d)
            memcpy(buf + at, d, end - at);
        if (target == T_CKPT && (mode & M_FIX))
            fix_ckpt(buf + base);
    }
    if (mode & M_TRUNC)
        blen = end;
    write_file(name, buf, blen);
    if (buf != cb)
        free(buf);
    free(cb);
}

static uint64_t g_sink;
static int g_verbose = -1; /* FQ_FUZZ_VERBOSE=1: one line per input (replay/debugging) */

static void exercise(fq_queue *q, const uint8_t *in, size_t n)
{
    uint64_t recs = 0, bad = 0;
    int vrc = fq_verify(q, &recs, &bad);
    fq_cursor c;
    fq_msg m;
    uint64_t sum = 0;
    int nread = 0, rrc = FQ_OK;
    if (fq_seek_seq(q, fq_first_seq(q), &c) == FQ_OK) {
        for (; nread < 4 * (int)N_RECORDS && (rrc = fq_read_next(q, &c, &m)) == FQ_OK; nread++) {
            for (uint32_t j = 0; j < m.len; j++) /* every payload byte: ASan checks the bounds */
                sum += m.data[j];
            sum += m.key_len <= m.len ? 0 : 1u << 20;
        }
    }
    if (g_verbose)
        printf("  verify %s (%llu records, bad %llu); read %d records, then %s\n", fq_strerror(vrc),
               (unsigned long long)recs, (unsigned long long)bad, nread, fq_strerror(rrc));
    if (g_verbose)
        fflush(stdout);
    /* seeks: by offset (binary search over segments and index entries) and time */
    uint64_t s = n > 5 ? (uint64_t)in[4] | (uint64_t)in[5] << 8 : N_RECORDS / 3;
    if (fq_seek_seq(q, s % (N_RECORDS + 8), &c) == FQ_OK && fq_read_next(q, &c, &m) == FQ_OK)
        sum += m.len ? m.data[m.len - 1] : 0;
    if (fq_seek_time(q, g_ts_mid, &c) == FQ_OK && fq_read_next(q, &c, &m) == FQ_OK)
        sum += m.len ? m.data[0] : 0;
    /* a group reading behind the descriptor ring, then an append */
    if (fq_join(q, 3) == FQ_OK) {
        uint32_t g;
        if (fq_group_find(q, "g", &g) == FQ_OK) {
            for (int r = 0; r < 80; r++) {
                fq_msg ms[8];
                uint32_t got = 0;
                if (fq_take(q, g, ms, 8, 0, &got) != FQ_OK || !got)
                    break;
                for (uint32_t i = 0; i < got; i++)
                    sum += ms[i].len ? ms[i].data[ms[i].len - 1] : 0;
                fq_ack(q, g, ms, got);
            }
        }
        if (put(q, 7) == FQ_OK && fq_seek_seq(q, fq_first_seq(q), &c) == FQ_OK)
            for (int i = 0; i < 4 * (int)N_RECORDS && fq_read_next(q, &c, &m) == FQ_OK; i++)
                sum += m.len;
    }
    g_sink += sum + recs + bad;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* After fq_close nothing of the store may stay open or mapped. */
static void check_no_leak(int fds_before)
{
    int fds = count_fds();
    if (fds != fds_before) {
        fprintf(stderr, "fuzz_store: file descriptor leak (%d open before the input, %d after)\n", fds_before, fds);
        char cmd[64];
        snprintf(cmd, sizeof cmd, "ls -l /proc/%d/fd >&2", (int)getpid());
        if (system(cmd) != 0)
            fprintf(stderr, "(cannot list the descriptors)\n");
        abort();
    }
    static unsigned calls;
    if (++calls % 64)
        return;
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    char line[1024];
    while (fgets(line, sizeof line, f))
        if (strstr(line, g_root)) {
            fprintf(stderr, "fuzz_store: mapping leak: %s", line);
            abort();
        }
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *in, size_t n)
{
    if (!g_ready)
        build_template();
    restore();
    int fds_before = count_fds();
    int recover, policy;
    apply(in, n, &recover, &policy);
    fq_queue q;
    fq_recovery_report rep;
    int rc = fq_open_dir(&q, g_dir, 0, recover, policy, &rep);
    if (g_verbose < 0)
        g_verbose = getenv("FQ_FUZZ_VERBOSE") && *getenv("FQ_FUZZ_VERBOSE") == '1';
    if (g_verbose)
        printf("mode %#x: open %s%s%s; recovery ran %d tail %llu scanned %llu truncated %llu corrupt %d@%llu "
               "skipped %llu removed %u\n", n ? in[0] : 0, fq_strerror(rc), rc ? ": " : "", rc ? fq_last_error() : "",
               rep.ran, (unsigned long long)rep.tail_seq, (unsigned long long)rep.scanned,
               (unsigned long long)rep.truncated_bytes, rep.corrupt, (unsigned long long)rep.corrupt_seq,
               (unsigned long long)rep.skipped, rep.segments_removed);
    if (g_verbose)
        fflush(stdout);
    if (rc == FQ_OK) {
        exercise(&q, in, n);
        fq_close(&q);
    }
    check_no_leak(fds_before);
    return 0;
}

#ifndef FQ_LIBFUZZER
/* ---- standalone driver: replay files / directories; --gen writes seeds -- */

static void put_seed(const char *dir, const char *name, uint8_t mode, uint8_t aux, uint16_t off, const void *data,
                     size_t len)
{
    char p[512];
    join_path(p, sizeof p, dir, name);
    FILE *f = fopen(p, "wb");
    if (!f)
        die("seed");
    uint8_t h[4] = {mode, aux, (uint8_t)off, (uint8_t)(off >> 8)};
    fwrite(h, 1, 4, f);
    if (len)
        fwrite(data, 1, len, f);
    fclose(f);
}

static void frame(uint8_t *b, uint32_t len, uint64_t seq, int64_t ts, uint16_t flags, uint32_t type, size_t avail)
{
    struct fq_frame_hdr h = {len, 0, seq, ts, flags, FQ_FRAME_VERSION, type};
    memcpy(b, &h, sizeof h);
    h.f_crc = frame_crc(b, avail);
    memcpy(b, &h, sizeof h);
}

static int gen(const char *dir)
{
    build_template();
    mkdir(dir, 0755);
    char n[40];
    seg_file(n, sizeof n, g_newest, 0);
    const uint8_t *newest = tfile(n)->data + FQ_SEG_HDR;
    size_t tail = g_tail_pos % SEG;
    uint8_t b[2048];
    /* a valid segment head: the newest segment's first 2 KiB, as written */
    put_seed(dir, "seg-head-valid", T_SEG_NEW | M_EARLY, 0, 0, newest, 2048);
    /* the same, sealed by the harness (M_FIX) */
    put_seed(dir, "seg-head-fix", T_SEG_NEW | M_EARLY | M_FIX, 0, 0, newest, 512);
    /* a gap frame standing for the first two records of the newest segment */
    struct fq_frame_hdr h0, h1;
    memcpy(&h0, newest, sizeof h0);
    memcpy(&h1, newest + ((h0.f_len + 7) & ~7u), sizeof h1);
    uint32_t ext = ((h0.f_len + 7) & ~7u) + ((h1.f_len + 7) & ~7u);
    memset(b, 0, sizeof b);
    frame(b, ext, g_newest_first, 2, FQ_FR_GAP | FQ_FR_COMMITTED, 0, sizeof b);
    put_seed(dir, "gap-frame", T_SEG_NEW | M_EARLY, 0, 0, b, 32);
    put_seed(dir, "gap-frame-skip", T_SEG_NEW | M_EARLY | M_SKIP, 0, 0, b, 32);
    /* a continuation gap (count 0) at the tail */
    frame(b, 64, g_tail_seq, 0, FQ_FR_GAP | FQ_FR_COMMITTED, 0, sizeof b);
    put_seed(dir, "gap-continuation", T_SEG_NEW | M_EARLY, 0, (uint16_t)(tail / 8), b, 64);
    /* a pad filling the newest segment from the tail to its end */
    frame(b, (uint32_t)(SEG - tail), g_tail_seq, 0, FQ_FR_PAD | FQ_FR_COMMITTED, 0, sizeof b);
    put_seed(dir, "pad-to-end", T_SEG_NEW | M_EARLY, 0, (uint16_t)(tail / 8), b, 32);
    /* a torn frame at the tail: committed flag, right seq, payload half written */
    memset(b, 0, sizeof b);
    frame(b, 200, g_tail_seq, 1, FQ_FR_DATA | FQ_FR_COMMITTED, 0, sizeof b);
    memset(b + 32, 0xAB, 80);
    put_seed(dir, "torn-frame-tail", T_SEG_NEW | M_EARLY, 0, (uint16_t)(tail / 8), b, 232);
    /* the same after a power cut (another boot: a torn tail, cut) */
    put_seed(dir, "torn-frame-tail-new-boot", T_SEG_NEW | M_EARLY, 0x80, (uint16_t)(tail / 8), b, 232);
    /* the same record sealed: a valid extra record after a crash */
    put_seed(dir, "extra-frame-fix", T_SEG_NEW | M_EARLY | M_FIX, 0, (uint16_t)(tail / 8), b, 232);
    /* a torn frame in the middle of a sealed segment (valid records follow) */
    seg_file(n, sizeof n, 1, 0);
    memcpy(b, tfile(n)->data + FQ_SEG_HDR + 4096, 256);
    b[40] ^= 0x55;
    put_seed(dir, "torn-mid-refuse", T_SEG_OLD | M_EARLY, 1, 4096 / 8, b, 256);
    put_seed(dir, "torn-mid-skip", T_SEG_OLD | M_EARLY | M_SKIP, 1, 4096 / 8, b, 256);
    put_seed(dir, "torn-mid-new-boot", T_SEG_OLD | M_EARLY, 0x81, 4096 / 8, b, 256);
    /* frames with big lengths (bounds) */
    frame(b, 0xFFFFFFF9u, g_tail_seq, 1, FQ_FR_DATA | FQ_FR_COMMITTED, 0, 0);
    put_seed(dir, "huge-len", T_SEG_NEW | M_EARLY | M_FIX, 0, (uint16_t)(tail / 8), b, 32);
    /* checkpoints: the early one (valid CRC), and one with every group slot */
    put_seed(dir, "ckpt-early", T_CKPT, 0, 0, g_early_ckpt, 80 + 16 * 4);
    put_seed(dir, "ckpt-early-slot1", T_CKPT, 1, 0, g_early_ckpt, 80 + 16 * 4);
    struct fq_ckpt_shm k;
    memcpy(&k, g_early_ckpt, sizeof k);
    k.k_ngroups = FQ_MAX_GROUPS;
    k.k_gen = 1000;
    k.k_pos = (uint64_t)(g_nsegs + 3) * SEG;
    put_seed(dir, "ckpt-future-fix", T_CKPT | M_FIX, 0, 0, &k, sizeof k);
    /* file headers: the newest segment's, its index's, a wrong segment number */
    const uint8_t *hdr = tfile(n)->data;
    put_seed(dir, "seg-header", T_SEG_HDR | M_EARLY, 0, 0, hdr, 128);
    struct fq_file_hdr fh;
    memcpy(&fh, hdr, sizeof fh);
    fh.h_seg_no += 1;
    put_seed(dir, "seg-header-wrong-no-fix", T_SEG_HDR | M_EARLY | M_FIX, 0, 0, &fh, sizeof fh);
    /* index entries of segment 1 (aux 1), as written */
    seg_file(n, sizeof n, 1, 1);
    put_seed(dir, "idx-entries", T_IDX | M_EARLY, 1, FQ_PAGE, tfile(n)->data + FQ_PAGE, 512);
    struct fq_idx_entry x;
    memset(&x, 0, sizeof x);
    x.x_seq = 150;
    x.x_off = SEG - 8;
    x.x_mark = FQ_IDX_MARK;
    put_seed(dir, "idx-bad-hint", T_IDX | M_AUTO, 1, FQ_PAGE + 32 * 5, &x, sizeof x);
    /* control file: store state, control block, groups (as written; AUTO = trusted) */
    const uint8_t *cf = tfile("control")->data;
    put_seed(dir, "store-state", T_STORE, 0, 0, cf + g_off_store + 2 * FQ_PAGE, 640);
    put_seed(dir, "ctrl-auto", T_CTRL | M_AUTO, 0, 0, cf + g_off_ctrl, 1024);
    put_seed(dir, "groups", T_GROUP | M_EARLY, 0, 0, cf + g_off_groups, 1024);
    put_seed(dir, "truncated-newest", T_SEG_NEW | M_EARLY | M_TRUNC, 0, 1024, NULL, 0);
    put_seed(dir, "empty", 0, 0, 0, NULL, 0);
    printf("seeds written to %s\n", dir);
    return 0;
}

static int run_file(const char *p)
{
    FILE *f = fopen(p, "rb");
    if (!f) {
        perror(p);
        return 1;
    }
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--gen") == 0)
        return gen(argv[2]);
    int files = 0, errs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            struct dirent **ents;
            int m = scandir(argv[i], &ents, NULL, alphasort);
            for (int j = 0; j < m; j++) {
                if (ents[j]->d_name[0] != '.') {
                    char p[1024];
                    join_path(p, sizeof p, argv[i], ents[j]->d_name);
                    if (g_verbose == 1 || (g_verbose < 0 && getenv("FQ_FUZZ_VERBOSE")))
                        printf("%s\n", p);
                    errs += run_file(p);
                    files++;
                }
                free(ents[j]);
            }
            if (m >= 0)
                free(ents);
        } else {
            errs += run_file(argv[i]);
            files++;
        }
    }
    printf("fuzz_store: replayed %d inputs (%d unreadable)\n", files, errs);
    return errs || files == 0;
}
#endif
