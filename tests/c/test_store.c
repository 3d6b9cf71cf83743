/*
 * test_store.c — the segment store (durable log): appends across segment
 * rolls, replay by offset and time, groups reading behind the descriptor
 * ring, dead producers (gap frames), reopen and cold recovery of torn and
 * corrupt segments, retention, flush, and concurrent producers.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "fq_test.h"

#define SEG (64u << 10)

static char g_dir[256];

static void fresh_dir(const char *tag)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/fqstore-%s-%d-%lld", tag, (int)getpid(), (long long)(fq_now_ns() % 1000003));
    fqt_rm_rf(g_dir);
}

static int mk(fq_queue *q, uint32_t ndesc, uint32_t fsync_mode)
{
    fq_params p = fqt_params(SEG);
    p.desc_count = ndesc;
    p.window = 64;
    p.max_groups = 4;
    int rc = fq_create_dir(q, g_dir, &p, fsync_mode);
    if (rc == FQ_OK)
        rc = fq_join(q, 3);
    return rc;
}

static int reopen(fq_queue *q, int recover, int policy, fq_recovery_report *r)
{
    int rc = fq_open_dir(q, g_dir, 0, recover, policy, r);
    if (rc == FQ_OK)
        rc = fq_join(q, 3);
    return rc;
}

static uint32_t len_of(uint64_t key) { return 1 + (uint32_t)(fqt_mix(key) % 3000); }

static int64_t g_ts[4096];

static void append_n(fq_queue *q, uint64_t from, uint64_t n)
{
    for (uint64_t i = from; i < from + n; i++) {
        uint64_t seq;
        FQT_REQUIRE_ST(fqt_put(q, len_of(i), i, &seq), FQ_OK);
        FQT_EQ(seq, i);
        if (i < 4096)
            g_ts[i] = fq_realtime_ns();
    }
}

/* Read [from, to) with the cursor API; every payload verified. */
static uint64_t read_all(fq_queue *q, uint64_t from, uint64_t expect_to)
{
    fq_cursor c;
    FQT_ST(fq_seek_seq(q, from, &c), FQ_OK);
    fq_msg m;
    uint64_t n = 0, want = from;
    int rc;
    while ((rc = fq_read_next(q, &c, &m)) == FQ_OK) {
        FQT_EQ(m.seq, want);
        FQT_EQ(m.len, len_of(m.seq));
        FQT_CHECK(fqt_verify(m.data, m.len, m.seq));
        want = m.seq + 1;
        n++;
    }
    FQT_ST(rc, FQ_EMPTY);
    FQT_EQ(want, expect_to);
    return n;
}

static void test_roll_and_replay(void)
{
    fresh_dir("roll");
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 64, FQ_FSYNC_NEVER), FQ_OK);
    append_n(&q, 0, 600); /* ~900 KiB: 14+ segments of 64 KiB */
    FQT_CHECK(atomic_load(&q.store->st_seg_hwm) >= 12);
    FQT_EQ(read_all(&q, 0, 600), 600);
    /* random seeks land exactly */
    fqt_rng r;
    fqt_seed(&r, 7);
    for (int i = 0; i < 200; i++) {
        uint64_t s = fqt_below(&r, 600);
        fq_cursor c;
        fq_msg m;
        FQT_ST(fq_seek_seq(&q, s, &c), FQ_OK);
        FQT_ST(fq_read_next(&q, &c, &m), FQ_OK);
        FQT_EQ(m.seq, s);
        FQT_CHECK(fqt_verify(m.data, m.len, m.seq));
    }
    /* by time: the first record claimed at or after a recorded instant */
    for (int i = 0; i < 50; i++) {
        uint64_t s = 1 + fqt_below(&r, 598);
        fq_cursor c;
        fq_msg m;
        FQT_ST(fq_seek_time(&q, g_ts[s - 1] + 1, &c), FQ_OK);
        FQT_ST(fq_read_next(&q, &c, &m), FQ_OK);
        FQT_CHECK(m.seq <= s && m.ts_ns > g_ts[s - 1]);
    }
    uint64_t recs, bad;
    FQT_ST(fq_verify(&q, &recs, &bad), FQ_OK);
    FQT_EQ(recs, 600);
    fq_close(&q);
    /* reopen in the same boot: nothing to recover, everything there */
    fq_recovery_report rep;
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_AUTO, FQ_CORRUPT_REFUSE, &rep), FQ_OK);
    FQT_EQ(rep.ran, 0);
    FQT_EQ(read_all(&q, 0, 600), 600);
    append_n(&q, 600, 10);
    fq_close(&q);
    /* forced cold recovery from the checkpoint: same records, same tail */
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_FORCE, FQ_CORRUPT_REFUSE, &rep), FQ_OK);
    FQT_EQ(rep.ran, 1);
    FQT_EQ(rep.tail_seq, 610);
    FQT_EQ(rep.truncated_bytes, 0);
    FQT_EQ(read_all(&q, 0, 610), 610);
    fq_close(&q);
    fqt_rm_rf(g_dir);
}

static void test_group_behind_ring(void)
{
    fresh_dir("group");
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 64, FQ_FSYNC_NEVER), FQ_OK);
    fq_group_cfg c;
    memset(&c, 0, sizeof c);
    c.name = "g";
    c.window = 16;
    uint32_t g;
    int created;
    FQT_REQUIRE_ST(fq_group_open(&q, &c, &g, &created), FQ_OK);
    append_n(&q, 0, 500); /* far more than the 64 descriptors */
    uint64_t want = 0;
    for (int rounds = 0; rounds < 1000 && want < 500; rounds++) {
        fq_msg m[8];
        uint32_t n;
        int rc = fq_take(&q, g, m, 8, 0, &n);
        FQT_CHECK(rc == FQ_OK);
        for (uint32_t i = 0; i < n; i++) {
            FQT_EQ(m[i].seq, want);
            FQT_CHECK(fqt_verify(m[i].data, m[i].len, m[i].seq));
            want++;
        }
        FQT_ST(fq_ack(&q, g, m, n), FQ_OK);
    }
    FQT_EQ(want, 500);
    FQT_EQ(fq_qsize(&q, g), 0);
    fq_close(&q);
    fqt_rm_rf(g_dir);
}

/* A child claims and dies at a crash point; recovery turns its claim into a
 * gap frame, so readers and groups both go on past it. */
static void test_dead_producer_gap(void)
{
    static const char *points[] = {"prod.after_cas", "store.index", "prod.after_desc", "prod.before_commit"};
    for (size_t pi = 0; pi < sizeof points / sizeof *points; pi++) {
        fresh_dir("dead");
        fq_queue q;
        FQT_REQUIRE_ST(mk(&q, 64, FQ_FSYNC_NEVER), FQ_OK);
        fq_group_cfg c;
        memset(&c, 0, sizeof c);
        c.name = "g";
        uint32_t g;
        int created;
        FQT_REQUIRE_ST(fq_group_open(&q, &c, &g, &created), FQ_OK);
        append_n(&q, 0, 30);
        /* place the dead claim across a segment end for odd points */
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            fq_after_fork_child(&q);
            if (fq_join(&q, 3) != FQ_OK)
                _exit(3);
            uint32_t lens[3] = {4000, 5000, 100};
            fq_crash_arm(points[pi]);
            uint64_t first;
            if (fq_claim(&q, lens, 3, &first) != FQ_OK)
                _exit(4);
            fq_commit(&q, first, 3);
            _exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        int died = WIFSIGNALED(st);
        FQT_CHECKM(died || !strcmp(points[pi], "store.index"), "%s", points[pi]);
        fq_maintain(&q, 1);
        uint64_t t0 = fq_tail_seq(&q);
        for (uint64_t i = t0; i < t0 + 300; i++)
            FQT_REQUIRE_ST(fqt_put(&q, len_of(i), i, NULL), FQ_OK);
        FQT_CHECK(fq_frontier(&q) == t0 + 300);
        /* replay skips the gap */
        fq_cursor cur;
        fq_msg m;
        uint64_t n = 0;
        FQT_ST(fq_seek_seq(&q, 0, &cur), FQ_OK);
        while (fq_read_next(&q, &cur, &m) == FQ_OK) {
            FQT_CHECK(m.seq < 30 || m.seq >= t0);
            if (m.seq < 30 || m.seq >= t0)
                FQT_CHECK(fqt_verify(m.data, m.len, m.seq));
            n++;
        }
        FQT_EQ(n, died ? 330 : 333);
        /* the group too, from the segments */
        uint64_t got = 0;
        for (int rounds = 0; rounds < 2000; rounds++) {
            fq_msg mm[16];
            uint32_t k;
            if (fq_take(&q, g, mm, 16, 0, &k) != FQ_OK)
                break;
            got += k;
            fq_ack(&q, g, mm, k);
        }
        FQT_EQ(got, died ? 330 : 333);
        uint64_t recs, bad;
        FQT_ST(fq_verify(&q, &recs, &bad), FQ_OK);
        FQT_EQ(recs, died ? 330 : 333);
        fq_close(&q);
        /* and after a cold recovery the gap is still a gap */
        fq_recovery_report rep;
        FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_FORCE, FQ_CORRUPT_REFUSE, &rep), FQ_OK);
        FQT_EQ(rep.tail_seq, t0 + 300);
        FQT_ST(fq_verify(&q, &recs, &bad), FQ_OK);
        FQT_EQ(recs, died ? 330 : 333);
        fq_close(&q);
        fqt_rm_rf(g_dir);
    }
}

static void seg_path(char *out, size_t cap, uint64_t k)
{
    snprintf(out, cap, "%s/%020llu.seg", g_dir, (unsigned long long)(k * SEG));
}

static void poke(const char *path, off_t off, const void *b, size_t n)
{
    int fd = open(path, O_RDWR);
    FQT_REQUIRE(fd >= 0);
    FQT_CHECK(pwrite(fd, b, n, off) == (ssize_t)n);
    close(fd);
}

static void test_torn_tail_and_corruption(void)
{
    fresh_dir("torn");
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 64, FQ_FSYNC_NEVER), FQ_OK);
    append_n(&q, 0, 400);
    fq_checkpoint(&q);
    uint64_t tail_pos = atomic_load(&q.ctrl->c_floor_pos);
    fq_close(&q);
    /* A torn tail: garbage right after the last record (a half-written
     * frame) and the last record's payload flipped: recovery keeps 399. */
    char p[512];
    uint64_t k = tail_pos / SEG;
    seg_path(p, sizeof p, k);
    uint8_t junk[64];
    memset(junk, 0xAB, sizeof junk);
    poke(p, (off_t)(FQ_SEG_HDR + tail_pos % SEG), junk, sizeof junk);
    fq_recovery_report rep;
    /* the last record: find its position */
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_AUTO, FQ_CORRUPT_REFUSE, &rep), FQ_OK);
    uint64_t lpos;
    FQT_EQ(fq__store_find(&q, 399, &lpos), 1);
    fq_close(&q);
    uint8_t x = 0x5A;
    seg_path(p, sizeof p, lpos / SEG);
    poke(p, (off_t)(FQ_SEG_HDR + lpos % SEG + FQ_FRAME_HDR), &x, 1);
    /* the checkpoint says 400 were on disk: make recovery scan from an older one */
    FQT_REQUIRE_ST(fq_open_dir(&q, g_dir, 0, FQ_RECOVER_AUTO, 0, NULL), FQ_OK);
    memset((void *)q.ckpt, 0, 2 * sizeof *q.ckpt);
    fq_close(&q);
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_FORCE, FQ_CORRUPT_REFUSE, &rep), FQ_OK);
    FQT_EQ(rep.ran, 1);
    FQT_EQ(rep.tail_seq, 399);
    FQT_CHECK(rep.truncated_bytes > 0);
    FQT_EQ(rep.corrupt, 0);
    FQT_EQ(read_all(&q, 0, 399), 399);
    append_n(&q, 399, 1); /* the log goes on at the cut */
    FQT_EQ(read_all(&q, 0, 400), 400);
    fq_close(&q);

    /* Corruption below the checkpoint (a sealed segment, valid records after
     * it): refused by default, skipped with a count on request.  A forced
     * recovery verifies every retained record. */
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_AUTO, FQ_CORRUPT_REFUSE, NULL), FQ_OK);
    uint64_t fpos;
    FQT_EQ(fq__store_find(&q, 100, &fpos), 1); /* the frame (the cursor may point at a segment's padding) */
    fq_close(&q); /* checkpoint at the tail: record 100 lies in the promised (sealed) part */
    seg_path(p, sizeof p, fpos / SEG);
    poke(p, (off_t)(FQ_SEG_HDR + fpos % SEG + FQ_FRAME_HDR), &x, 1);
    FQT_ST(fq_open_dir(&q, g_dir, 0, FQ_RECOVER_FORCE, FQ_CORRUPT_REFUSE, &rep), FQ_ERR_DATA);
    FQT_EQ(rep.corrupt, 1);
    FQT_EQ(rep.corrupt_seq, 100);
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_FORCE, FQ_CORRUPT_SKIP, &rep), FQ_OK);
    FQT_EQ(rep.corrupt_seq, 100);
    FQT_CHECK(rep.skipped >= 1 && rep.skipped < 60);
    FQT_EQ(rep.tail_seq, 400);
    uint64_t recs, bad;
    FQT_ST(fq_verify(&q, &recs, &bad), FQ_OK);
    FQT_EQ(recs, 400 - rep.skipped);
    fq_close(&q);
    fqt_rm_rf(g_dir);
}

static void test_retention(void)
{
    fresh_dir("retain");
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 64, FQ_FSYNC_INTERVAL), FQ_OK);
    fq_group_cfg c;
    memset(&c, 0, sizeof c);
    c.name = "slow";
    uint32_t g;
    int created;
    FQT_REQUIRE_ST(fq_group_open(&q, &c, &g, &created), FQ_OK);
    append_n(&q, 0, 600);
    /* consumed-only: the group has read nothing, nothing goes */
    FQT_EQ(fq_retain(&q, 0, 0, 1), 0);
    /* by bytes: keep about 4 segments */
    int del = fq_retain(&q, 4 * (SEG + SEG / 128 + 2 * FQ_SEG_HDR), 0, 0);
    FQT_CHECK(del >= 8);
    uint64_t first = fq_first_seq(&q);
    FQT_CHECK(first > 0 && first < 600);
    char p[512];
    seg_path(p, sizeof p, 0);
    FQT_CHECK(access(p, F_OK) != 0);
    /* the group jumped and counted what it lost */
    fq_stats st;
    fq_get_stats(&q, g, &st);
    FQT_EQ(st.low, first);
    FQT_EQ(atomic_load(&q.groups[g].g_skipped), first);
    fq_msg m[4];
    uint32_t n;
    FQT_ST(fq_take(&q, g, m, 4, 0, &n), FQ_OK);
    FQT_EQ(m[0].seq, first);
    fq_ack(&q, g, m, n);
    /* replay starts at the retention start; earlier asks are clamped */
    FQT_EQ(read_all(&q, first, 600), 600 - first);
    fq_cursor c0;
    fq_msg m0;
    FQT_ST(fq_seek_seq(&q, 0, &c0), FQ_OK);
    FQT_ST(fq_read_next(&q, &c0, &m0), FQ_OK);
    FQT_EQ(m0.seq, first);
    /* a flush makes everything durable */
    FQT_ST(fq_flush(&q, 600, fq_now_ns() + 5000000000LL), FQ_OK);
    FQT_EQ(fq_durable_seq(&q), 600);
    fq_close(&q);
    fq_recovery_report rep;
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_FORCE, FQ_CORRUPT_REFUSE, &rep), FQ_OK);
    FQT_EQ(fq_first_seq(&q), first);
    FQT_EQ(rep.tail_seq, 600);
    FQT_EQ(read_all(&q, first, 600), 600 - first);
    fq_get_stats(&q, g, &st);
    FQT_CHECK(st.low >= first && st.low <= first + n); /* the checkpoint's low (<= what was acked) */
    fq_close(&q);
    fqt_rm_rf(g_dir);
}

/* ---- concurrent producers + a group consumer ---- */

#define NPROD 3
#define PER 4000
static _Atomic int g_go;

struct prod_arg {
    int id;
    fq_queue *base;
};

/* PER records of producer id (key = id << 32 | i, first 8 payload bytes),
 * once every thread is ready; flush: fq_flush every 256 records. */
static void produce(fq_queue *q, int id, int flush)
{
    while (!atomic_load(&g_go))
        ;
    for (uint64_t i = 0; i < PER; i++) {
        uint64_t key = ((uint64_t)id << 32) | i;
        uint32_t len = 8 + (uint32_t)(fqt_mix(key) % 700);
        uint64_t seq;
        int rc;
        while ((rc = fq_claim(q, &len, 1, &seq)) == FQ_FULL)
            ;
        if (rc != FQ_OK) {
            FQT_ST(rc, FQ_OK);
            break;
        }
        uint8_t *d = fq_payload(q, seq);
        memcpy(d, &key, 8);
        fqt_fill(d + 8, len - 8, key);
        fq_commit(q, seq, 1);
        if (flush && (i & 255) == 0)
            FQT_ST(fq_flush(q, seq + 1, fq_now_ns() + 10000000000LL), FQ_OK);
    }
}

/* Take and ack until every producer's PER records came (or 60 s): each one
 * intact, in order per producer.  Returns how many came. */
static uint64_t consume_all(fq_queue *q, uint32_t g)
{
    uint64_t next[NPROD] = {0}, got = 0;
    int64_t until = fq_now_ns() + 60000000000LL;
    while (got < (uint64_t)NPROD * PER && fq_now_ns() < until) {
        fq_msg m[32];
        uint32_t n;
        int rc = fq_take(q, g, m, 32, 0, &n);
        if (rc != FQ_OK) {
            FQT_CHECK(rc == FQ_EMPTY || rc == FQ_STALLED);
            continue;
        }
        for (uint32_t i = 0; i < n; i++) {
            uint64_t key;
            memcpy(&key, m[i].data, 8);
            int id = (int)(key >> 32);
            if (id < 0 || id >= NPROD) {
                FQT_CHECKM(0, "record %llu from unknown producer %d", (unsigned long long)m[i].seq, id);
                return got;
            }
            FQT_EQ(key & 0xFFFFFFFFu, next[id]); /* per-producer FIFO */
            next[id] = (key & 0xFFFFFFFFu) + 1;
            FQT_CHECK(fqt_verify(m[i].data + 8, m[i].len - 8, key));
        }
        got += n;
        FQT_ST(fq_ack(q, g, m, n), FQ_OK);
    }
    return got;
}

static void *producer(void *p)
{
    struct prod_arg *a = p;
    fq_queue q;
    if (fq_open_dir(&q, g_dir, 0, FQ_RECOVER_AUTO, 0, NULL) != FQ_OK || fq_join(&q, 3) != FQ_OK) {
        FQT_CHECK(!"open");
        return NULL;
    }
    produce(&q, a->id, 0);
    fq_close(&q);
    return NULL;
}

static void test_concurrent_producers(void)
{
    fresh_dir("mp");
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 256, FQ_FSYNC_NEVER), FQ_OK);
    fq_group_cfg c;
    memset(&c, 0, sizeof c);
    c.name = "g";
    c.window = 64;
    uint32_t g;
    int created;
    FQT_REQUIRE_ST(fq_group_open(&q, &c, &g, &created), FQ_OK);
    pthread_t th[NPROD];
    struct prod_arg args[NPROD];
    for (int i = 0; i < NPROD; i++) {
        args[i].id = i;
        args[i].base = &q;
        pthread_create(&th[i], NULL, producer, &args[i]);
    }
    atomic_store(&g_go, 1);
    uint64_t got = consume_all(&q, g);
    for (int i = 0; i < NPROD; i++)
        pthread_join(th[i], NULL);
    FQT_EQ(got, (uint64_t)NPROD * PER);
    uint64_t recs, bad;
    FQT_ST(fq_verify(&q, &recs, &bad), FQ_OK);
    FQT_EQ(recs, (uint64_t)NPROD * PER);
    fq_close(&q);
    fqt_rm_rf(g_dir);
}

/* The same with every producer a clone of the consumer's handle: one mapping
 * of the control file, so ThreadSanitizer relates every access to the claim
 * word, descriptors, intents, lease windows and the frontier across threads
 * (each clone has its own segment map, as separate handles have). */
static fq_queue g_base;
static fq_queue g_snap[NPROD]; /* copied by the main thread before the consumer runs (a copy taken
                                * in the producer thread would race with the consumer's walker cache) */

static void *clone_producer(void *p)
{
    struct prod_arg *a = p;
    fq_queue q = g_snap[a->id];
    q.member = -1;
    q.lock_fd = -1;
    q.rd_pos = q.rf_pos = 0;
    q.segmap = calloc(FQ_SEGMAP, sizeof *q.segmap);
    if (!q.segmap || fq_join(&q, FQ_M_KIND_PRODUCER) != FQ_OK) {
        FQT_CHECK(!"clone");
        return NULL;
    }
    produce(&q, a->id, 1); /* with flushes: the flush lock is shared too */
    fq_leave(&q);
    close(q.lock_fd);
    for (uint32_t k = 0; k < FQ_SEGMAP; k++)
        if (q.segmap[k].tag) {
            munmap(q.segmap[k].seg, q.segmap[k].seg_len);
            if (q.segmap[k].idx)
                munmap(q.segmap[k].idx, q.segmap[k].idx_len);
        }
    free(q.segmap);
    return NULL;
}

static void test_concurrent_clones(void)
{
    fresh_dir("clones");
    FQT_REQUIRE_ST(mk(&g_base, 128, FQ_FSYNC_NEVER), FQ_OK);
    fq_group_cfg c;
    memset(&c, 0, sizeof c);
    c.name = "g";
    c.window = 64;
    uint32_t g;
    int created;
    FQT_REQUIRE_ST(fq_group_open(&g_base, &c, &g, &created), FQ_OK);
    atomic_store(&g_go, 0);
    pthread_t th[NPROD];
    struct prod_arg args[NPROD];
    for (int i = 0; i < NPROD; i++) {
        args[i].id = i;
        args[i].base = &g_base;
        g_snap[i] = g_base;
        pthread_create(&th[i], NULL, clone_producer, &args[i]);
    }
    atomic_store(&g_go, 1);
    uint64_t got = consume_all(&g_base, g);
    for (int i = 0; i < NPROD; i++)
        pthread_join(th[i], NULL);
    FQT_EQ(got, (uint64_t)NPROD * PER);
    if (got != (uint64_t)NPROD * PER) {
        fq_stats st;
        fq_get_stats(&g_base, g, &st);
        fprintf(stderr, "  tail %llu low %llu delivered %llu dead %llu aborted %llu recovered %llu\n",
                (unsigned long long)st.tail_seq, (unsigned long long)st.low, (unsigned long long)st.delivered,
                (unsigned long long)st.dead, (unsigned long long)st.aborted, (unsigned long long)st.recovered);
    }
    fq_close(&g_base);
    fqt_rm_rf(g_dir);
}

/* A refresher stopped between publishing the frontier's position and its
 * seq (S4) leaves floor_pos ahead of floor_seq: the next refresh must still
 * advance (it once took that for a recycled descriptor and never moved), and
 * a checkpoint must pair a seq with the position where that record starts. */
static void test_frontier_pos_ahead_of_seq(void)
{
    fresh_dir("ahead");
    fq_queue q;
    FQT_REQUIRE_ST(mk(&q, 64, FQ_FSYNC_INTERVAL), FQ_OK);
    append_n(&q, 0, 15);
    FQT_EQ(fq_frontier(&q), 15);
    int ok;
    uint64_t end12 = fq__pos_after(&q, 12, &ok);
    FQT_REQUIRE(ok);
    atomic_store(&q.ctrl->c_floor_seq, 10); /* as seen between the two CASes */
    atomic_store(&q.ctrl->c_floor_pos, end12);
    FQT_EQ(fq_frontier(&q), 15);
    append_n(&q, 15, 100); /* more than the 64 descriptors: claims need the frontier */
    FQT_EQ(fq_frontier(&q), 115);
    FQT_ST(fq_checkpoint(&q), FQ_OK);
    fq_close(&q);
    fq_recovery_report rep;
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_FORCE, FQ_CORRUPT_REFUSE, &rep), FQ_OK);
    FQT_EQ(rep.tail_seq, 115);
    FQT_EQ(read_all(&q, 0, 115), 115);
    fq_close(&q);
    fqt_rm_rf(g_dir);
}

static void test_bad_files(void)
{
    fresh_dir("bad");
    fq_queue q;
    FQT_ST(fq_open_dir(&q, g_dir, 0, 0, 0, NULL), FQ_ERR_NOENT);
    FQT_REQUIRE_ST(mk(&q, 64, FQ_FSYNC_NEVER), FQ_OK);
    append_n(&q, 0, 100);
    fq_queue q2;
    FQT_ST(fq_create_dir(&q2, g_dir, &(fq_params){.capacity = SEG}, 0), FQ_ERR_EXISTS);
    FQT_ST(fq_open_dir(&q2, g_dir, 0, FQ_RECOVER_FORCE, 0, NULL), FQ_ERR_EXISTS); /* open elsewhere */
    fq_close(&q);
    /* a segment file with a wrong header is refused, never mapped */
    char p[512];
    seg_path(p, sizeof p, 1);
    char bad[8] = "XXXXXXX";
    poke(p, 0, bad, 8);
    FQT_REQUIRE_ST(reopen(&q, FQ_RECOVER_AUTO, 0, NULL), FQ_OK);
    fq_cursor c;
    FQT_CHECK(fq_seek_seq(&q, 90, &c) != FQ_OK || 1); /* either refused or read past */
    uint64_t recs, bad_seq;
    FQT_CHECK(fq_verify(&q, &recs, &bad_seq) != FQ_OK);
    fq_close(&q);
    /* group/other permission bits on the control file: refused */
    snprintf(p, sizeof p, "%s/control", g_dir);
    chmod(p, 0644);
    FQT_ST(fq_open_dir(&q, g_dir, 0, 0, 0, NULL), FQ_ERR_PERM);
    chmod(p, 0600);
    /* bad segment size */
    fresh_dir("bad2");
    FQT_ST(fq_create_dir(&q, g_dir, &(fq_params){.capacity = 1u << 31}, 0), FQ_ERR_INVAL);
    fqt_rm_rf(g_dir);
    fresh_dir("bad");
}

int main(int argc, char **argv)
{
    fqt_prog = "test_store";
    (void)argc;
    (void)argv;
    FQT_RUN(test_roll_and_replay);
    FQT_RUN(test_group_behind_ring);
    FQT_RUN(test_dead_producer_gap);
    FQT_RUN(test_torn_tail_and_corruption);
    FQT_RUN(test_retention);
    FQT_RUN(test_concurrent_producers);
    FQT_RUN(test_concurrent_clones);
    FQT_RUN(test_frontier_pos_ahead_of_seq);
    FQT_RUN(test_bad_files);
    return fqt_summary();
}
