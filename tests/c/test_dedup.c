/*
 * test_dedup.c — producer-side deduplication (fq_dedup.c): SipHash vectors,
 * duplicates within and outside the window, a full bucket refusing (never a
 * silent duplicate), racing producers (exactly one append per key, every
 * racer told the same offset; TSan), and producers killed at every step of
 * an append with a dedup key, on a ring and on a segment store, with hot
 * (liveness) and cold recovery.
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "fq_test.h"

static double g_secs = 2.0;
static char g_dir[256];

static int mkring(fq_queue *q, uint32_t slots, uint32_t window_ms)
{
    fq_params p = fqt_params(1 << 20);
    p.flags = FQ_P_NO_QUEUE_GROUP;
    p.dedup_slots = slots;
    p.dedup_window_ms = window_ms;
    int rc = fq_create(q, NULL, &p);
    if (rc == FQ_OK)
        rc = fq_join(q, FQ_M_KIND_PRODUCER | FQ_M_KIND_CONSUMER);
    return rc;
}

static int mkstore(fq_queue *q, uint32_t slots, uint32_t window_ms)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/fqdedup-%d-%lld", (int)getpid(), (long long)(fq_now_ns() % 1000003));
    fqt_rm_rf(g_dir);
    fq_params p = fqt_params(1 << 16);
    p.flags = FQ_P_NO_QUEUE_GROUP;
    p.dedup_slots = slots;
    p.dedup_window_ms = window_ms;
    int rc = fq_create_dir(q, g_dir, &p, FQ_FSYNC_NEVER);
    if (rc == FQ_OK)
        rc = fq_join(q, FQ_M_KIND_PRODUCER | FQ_M_KIND_CONSUMER);
    return rc;
}

/* One append with a dedup key, as fastq._core does it; retries FQ_STALLED
 * for at most 10 s.  *seq = the new record, or the original (FQ_DUPLICATE). */
static int dappend(fq_queue *q, const char *key, uint64_t tag, uint64_t *seq, int64_t window_ns)
{
    int64_t until = fq_now_ns() + 10000000000LL;
    for (;;) {
        uint32_t slot;
        uint64_t orig = 0;
        int rc = fq_dedup_begin(q, key, (uint32_t)strlen(key), window_ns, &orig, &slot);
        if (rc == FQ_DUPLICATE) {
            *seq = orig;
            return rc;
        }
        if (rc == FQ_STALLED) {
            if (fq_now_ns() > until)
                return FQ_TIMEOUT;
            sched_yield();
            continue;
        }
        if (rc != FQ_OK)
            return rc;
        uint32_t len = 16;
        uint64_t s;
        rc = fq_claim(q, &len, 1, &s);
        if (rc != FQ_OK) {
            fq_dedup_end(q, slot, 0);
            return rc;
        }
        fq_dedup_bind(q, slot, s);
        uint8_t *dst = fq_payload(q, s);
        memcpy(dst, &tag, 8);
        uint64_t kh = fqt_mix(strlen(key) + (uint64_t)key[0]);
        memcpy(dst + 8, &kh, 8);
        fq_commit(q, s, 1);
        fq_dedup_end(q, slot, 1);
        *seq = s;
        return FQ_OK;
    }
}

static void test_siphash_vectors(void)
{
    /* the reference vectors of the SipHash paper (key 00..0f) */
    uint8_t kb[16], msg[64];
    for (int i = 0; i < 16; i++)
        kb[i] = (uint8_t)i;
    for (int i = 0; i < 64; i++)
        msg[i] = (uint8_t)i;
    uint64_t k[2];
    memcpy(&k[0], kb, 8);
    memcpy(&k[1], kb + 8, 8);
    FQT_CHECK(fq_siphash24(k, msg, 0) == 0x726fdb47dd0e0e31ull);
    FQT_CHECK(fq_siphash24(k, msg, 15) == 0xa129ca6149be45e5ull);
}

static void test_window(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mkring(&q, 1000, 150), FQ_OK);
    uint64_t a, b, c, d;
    FQT_ST(dappend(&q, "order-1", 1, &a, 0), FQ_OK);
    FQT_ST(dappend(&q, "order-1", 2, &b, 0), FQ_DUPLICATE);
    FQT_EQ(b, a);
    FQT_ST(dappend(&q, "order-2", 3, &c, 0), FQ_OK);
    FQT_EQ(c, a + 1);
    FQT_ST(dappend(&q, "", 4, &d, 0), FQ_OK); /* the empty key is a key */
    FQT_ST(dappend(&q, "", 5, &b, 0), FQ_DUPLICATE);
    FQT_EQ(b, d);
    /* a per-append window longer than the default */
    uint64_t e, f;
    FQT_ST(dappend(&q, "long", 6, &e, 2000000000LL), FQ_OK);
    fq_dedup_stats st;
    fq_dedup_get_stats(&q, &st);
    FQT_EQ(st.set, 4);
    FQT_EQ(st.hits, 2);
    FQT_EQ(st.window_ms, 150);
    FQT_CHECK(st.slots >= 1000);
    struct timespec ts = {0, 200000000};
    nanosleep(&ts, NULL);
    FQT_ST(dappend(&q, "order-1", 7, &b, 0), FQ_OK); /* outside the window: appended again */
    FQT_CHECK(b > d);
    FQT_ST(dappend(&q, "long", 8, &f, 0), FQ_DUPLICATE);
    FQT_EQ(f, e);
    fq_dedup_get_stats(&q, &st);
    FQT_EQ(st.set, 2); /* order-1 (again), long */
    FQT_CHECK(st.expired == 2 || st.expired == 3); /* order-2, "", and order-1's old entry unless reused */
    FQT_EQ(fq_tail_seq(&q), 5);
    /* an append that claimed nothing releases the key */
    uint32_t slot;
    uint64_t orig;
    FQT_ST(fq_dedup_begin(&q, "x", 1, 0, &orig, &slot), FQ_OK);
    fq_dedup_end(&q, slot, 0);
    FQT_ST(dappend(&q, "x", 9, &b, 0), FQ_OK);
    fq_close(&q);
}

static void test_refusals(void)
{
    fq_queue q;
    uint64_t s;
    uint32_t slot;
    FQT_REQUIRE_ST(mkring(&q, 0, 0), FQ_OK);
    FQT_ST(fq_dedup_begin(&q, "k", 1, 0, &s, &slot), FQ_ERR_INVAL); /* no table */
    FQT_CHECK(strstr(fq_last_error(), "dedup_slots") != NULL);
    fq_close(&q);
    /* one bucket: 63 unexpired keys fill it; the 64th is refused and nothing is appended */
    FQT_REQUIRE_ST(mkring(&q, 1, 100), FQ_OK);
    FQT_EQ(q.dedup_buckets, 1);
    char key[32];
    for (int i = 0; i < (int)FQ_DEDUP_WAYS; i++) {
        snprintf(key, sizeof key, "k%d", i);
        FQT_ST(dappend(&q, key, (uint64_t)i, &s, 0), FQ_OK);
    }
    uint64_t tail = fq_tail_seq(&q);
    FQT_ST(dappend(&q, "one-more", 99, &s, 0), FQ_ERR_DEDUP_FULL);
    FQT_CHECK(strstr(fq_last_error(), "dedup table full") != NULL);
    FQT_EQ(fq_tail_seq(&q), tail);
    FQT_ST(dappend(&q, "k5", 5, &s, 0), FQ_DUPLICATE); /* the accepted ones still count */
    FQT_EQ(s, 5);
    struct timespec ts = {0, 150000000};
    nanosleep(&ts, NULL);
    FQT_ST(dappend(&q, "one-more", 99, &s, 0), FQ_OK); /* expired entries are reused */
    /* not joined */
    fq_leave(&q);
    FQT_ST(fq_dedup_begin(&q, "k", 1, 0, &s, &slot), FQ_ERR_INVAL);
    fq_close(&q);
}

/* ---- racing producers: every thread appends the same keys ---- */
#define MT_KEYS 300
#define MT_THREADS 4
struct mt_arg {
    fq_queue h;
    int idx;
    uint64_t seq[MT_KEYS];
    int rc[MT_KEYS];
};
static void *mt_run(void *p)
{
    struct mt_arg *a = p;
    char key[32];
    for (int j = 0; j < MT_KEYS; j++) {
        int k = (a->idx & 1) ? MT_KEYS - 1 - j : (j * 7) % MT_KEYS; /* different orders */
        snprintf(key, sizeof key, "job-%d", k);
        a->rc[k] = dappend(&a->h, key, (uint64_t)k, &a->seq[k], 0);
    }
    return NULL;
}

static void test_mt_race(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mkring(&q, 4096, 60000), FQ_OK);
    int64_t until = fq_now_ns() + (int64_t)(g_secs * 1e9);
    int rounds = 0;
    static struct mt_arg args[MT_THREADS];
    do {
        uint64_t base = fq_tail_seq(&q);
        pthread_t th[MT_THREADS];
        for (int t = 0; t < MT_THREADS; t++) {
            args[t].idx = t;
            FQT_REQUIRE_ST(fqt_clone(&args[t].h, &q, FQ_M_KIND_PRODUCER), FQ_OK);
        }
        for (int t = 0; t < MT_THREADS; t++)
            pthread_create(&th[t], NULL, mt_run, &args[t]);
        for (int t = 0; t < MT_THREADS; t++)
            pthread_join(th[t], NULL);
        for (int k = 0; k < MT_KEYS; k++) {
            int oks = 0;
            for (int t = 0; t < MT_THREADS; t++) {
                FQT_CHECKM(args[t].rc[k] == FQ_OK || args[t].rc[k] == FQ_DUPLICATE, "rc %d", args[t].rc[k]);
                oks += args[t].rc[k] == FQ_OK;
                FQT_EQ(args[t].seq[k], args[0].seq[k]); /* everyone is told the one offset */
            }
            FQT_EQ(oks, 1); /* exactly one append per key */
            if (rounds == 0) { /* the record at that offset is that key's */
                uint8_t buf[64];
                fq_msg m;
                uint64_t floor;
                FQT_ST(fq_peek(&q, args[0].seq[k], buf, sizeof buf, &m, &floor), FQ_OK);
                uint64_t tag;
                memcpy(&tag, buf, 8);
                FQT_EQ(tag, k);
            }
        }
        FQT_EQ(fq_tail_seq(&q) - base, MT_KEYS);
        for (int t = 0; t < MT_THREADS; t++)
            fqt_unclone(&args[t].h);
        /* next round: a fresh table generation of keys (the window is long) */
        fq_close(&q);
        FQT_REQUIRE_ST(mkring(&q, 4096, 60000), FQ_OK);
        rounds++;
    } while (fq_now_ns() < until && rounds < 50);
    fq_close(&q);
}

/* ---- producers killed mid-append ---- */
static int run_child(fq_queue *q, const char *crash, const char *key, int reopen_store)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        fq_queue own;
        fq_queue *h = q;
        if (reopen_store) { /* its own handle of the store (the parent closed its own) */
            fq_recovery_report r;
            if (fq_open_dir(&own, g_dir, 0, FQ_RECOVER_AUTO, FQ_CORRUPT_REFUSE, &r) != FQ_OK)
                _exit(5);
            h = &own;
        } else {
            fq_after_fork_child(q);
        }
        if (fq_join(h, 3) != FQ_OK)
            _exit(3);
        fq_crash_arm(crash);
        uint64_t s;
        dappend(h, key, 1000, &s, 0);
        _exit(0); /* the crash point was not reached */
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        ;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

static const struct {
    const char *point;
    int appended; /* the child's record was committed */
} g_points[] = {
    {"dedup.after_claim", 0},  /* holds the bucket lock, entry CLAIMING, nothing claimed */
    {"prod.after_cas", 0},     /* record claimed, not bound */
    {"prod.before_commit", 0}, /* bound, written, not committed */
    {"prod.after_commit", 1},  /* committed, entry CLAIMING */
    {"dedup.after_commit", 1},
    {"dedup.mid_finish", 1},   /* expiry written, CAS to SET not done */
};

/* The record at seq carries tag 1000 (the child's) or not. */
static int child_record(fq_queue *q, uint64_t seq)
{
    uint8_t buf[64];
    fq_msg m;
    uint64_t floor;
    if (q->durable) {
        fq_cursor c;
        if (fq_seek_seq(q, seq, &c) != FQ_OK || fq_read_next(q, &c, &m) != FQ_OK || m.seq != seq)
            return -1;
        memcpy(buf, m.data, 8);
    } else if (fq_peek(q, seq, buf, sizeof buf, &m, &floor) != FQ_OK) {
        return -1;
    }
    uint64_t tag;
    memcpy(&tag, buf, 8);
    return tag == 1000;
}

static void check_after_crash(fq_queue *q, int appended, const char *what)
{
    uint64_t s;
    int rc = dappend(q, "the-key", 2000, &s, 0);
    FQT_CHECKM(rc == (appended ? FQ_DUPLICATE : FQ_OK), "%s: rc %d (%s)", what, rc, fq_strerror(rc));
    if (appended)
        FQT_CHECKM(child_record(q, s) == 1, "%s: the original is not the child's record", what);
    /* the table is usable afterwards, the bucket lock free */
    uint64_t s2;
    FQT_ST(dappend(q, "the-key", 3000, &s2, 0), FQ_DUPLICATE);
    FQT_EQ(s2, s);
    FQT_ST(dappend(q, "other-key", 4000, &s2, 0), FQ_OK);
    fq_dedup_stats st;
    fq_dedup_get_stats(q, &st);
    FQT_EQ(st.claiming, 0);
}

static void test_fork_crash_ring(void)
{
    for (size_t i = 0; i < sizeof g_points / sizeof g_points[0]; i++) {
        fq_queue q;
        FQT_REQUIRE_ST(mkring(&q, 1000, 60000), FQ_OK);
        uint64_t s;
        FQT_ST(dappend(&q, "before", 1, &s, 0), FQ_OK);
        FQT_CHECKM(run_child(&q, g_points[i].point, "the-key", 0) == 1, "%s did not fire", g_points[i].point);
        check_after_crash(&q, g_points[i].appended, g_points[i].point);
        fq_close(&q);
    }
}

static void test_fork_crash_store(void)
{
    for (int cold = 0; cold < 2; cold++) {
        for (size_t i = 0; i < sizeof g_points / sizeof g_points[0]; i++) {
            fq_queue q;
            FQT_REQUIRE_ST(mkstore(&q, 1000, 60000), FQ_OK);
            uint64_t s;
            FQT_ST(dappend(&q, "before", 1, &s, 0), FQ_OK);
            if (cold)
                fq_close(&q); /* the child is the only one attached when it dies */
            FQT_CHECKM(run_child(&q, g_points[i].point, "the-key", cold) == 1, "%s did not fire",
                       g_points[i].point);
            if (cold) {
                fq_recovery_report r;
                FQT_REQUIRE_ST(fq_open_dir(&q, g_dir, 0, FQ_RECOVER_FORCE, FQ_CORRUPT_REFUSE, &r), FQ_OK);
                FQT_CHECK(r.ran);
                FQT_REQUIRE_ST(fq_join(&q, 3), FQ_OK);
            }
            char what[96];
            snprintf(what, sizeof what, "%s (%s)", g_points[i].point, cold ? "cold" : "hot");
            check_after_crash(&q, g_points[i].appended, what);
            FQT_ST(dappend(&q, "before", 5, &s, 0), FQ_DUPLICATE); /* survived the recovery */
            FQT_EQ(s, 0);
            fq_close(&q);
            fqt_rm_rf(g_dir);
        }
    }
}

/* A finisher killed between writing the expiry and the CAS to SET: the
 * recoverer redoes the finish from the kept window, so the key expires on
 * time (found by review: the window was kept in e_expiry, which the first
 * try had overwritten with an absolute time: "expires in 57 years"). */
static void test_fork_killed_mid_finish_expires(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mkring(&q, 1000, 100), FQ_OK);
    FQT_REQUIRE(run_child(&q, "dedup.mid_finish", "k", 0) == 1);
    uint64_t a, b;
    FQT_ST(dappend(&q, "k", 2, &a, 0), FQ_DUPLICATE);
    fq_dedup_stats st;
    fq_dedup_get_stats(&q, &st);
    FQT_EQ(st.set, 1);
    struct timespec ts = {0, 250000000};
    nanosleep(&ts, NULL);
    FQT_ST(dappend(&q, "k", 3, &b, 0), FQ_OK); /* expired after its 100 ms */
    FQT_CHECK(b > a);
    fq_close(&q);
}

/* A damaged file: a CLAIMING entry whose owner slot is FREE (or out of
 * range) and a bucket lock "held" by a FREE member: neither wedges the key
 * or the bucket. */
static void test_stale_owner_and_lock(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mkring(&q, 63, 60000), FQ_OK);
    uint64_t s;
    FQT_ST(dappend(&q, "k", 1, &s, 0), FQ_OK);
    struct fq_dedup_bucket_shm *B = &q.dedup[0];
    struct fq_dedup_entry_shm *e = NULL;
    for (uint32_t i = 0; i < FQ_DEDUP_WAYS; i++)
        if ((atomic_load(&B->b_e[i].e_state) & 3) == FQ_X_SET)
            e = &B->b_e[i];
    FQT_REQUIRE(e != NULL);
    atomic_store(&e->e_state, 1u | (200u << 8));            /* CLAIMING(member 200): a FREE slot */
    atomic_store(&B->b_lock, 201u);                         /* "held" by member 200 */
    int64_t t0 = fq_now_ns();
    uint64_t s2;
    FQT_ST(dappend(&q, "k", 2, &s2, 0), FQ_DUPLICATE);      /* committed record: resolved as SET */
    FQT_EQ(s2, s);
    FQT_CHECK(fq_now_ns() - t0 < 2000000000LL);
    atomic_store(&e->e_state, 1u | (9000u << 8));           /* an owner id out of range */
    atomic_store(&e->e_seq, FQ_DEDUP_NOSEQ);                /* ... with nothing bound: FREE */
    FQT_ST(dappend(&q, "k", 3, &s2, 0), FQ_OK);
    FQT_CHECK(s2 > s);
    fq_close(&q);
}

/* The table of a store survives a clean close and reopen. */
static void test_store_reopen(void)
{
    fq_queue q;
    FQT_REQUIRE_ST(mkstore(&q, 200, 60000), FQ_OK);
    uint64_t a, b;
    FQT_ST(dappend(&q, "persist", 1, &a, 0), FQ_OK);
    fq_close(&q);
    fq_recovery_report r;
    FQT_REQUIRE_ST(fq_open_dir(&q, g_dir, 0, FQ_RECOVER_AUTO, FQ_CORRUPT_REFUSE, &r), FQ_OK);
    FQT_REQUIRE_ST(fq_join(&q, 3), FQ_OK);
    FQT_ST(dappend(&q, "persist", 2, &b, 0), FQ_DUPLICATE);
    FQT_EQ(b, a);
    fq_close(&q);
    fqt_rm_rf(g_dir);
}

int main(int argc, char **argv)
{
    fqt_prog = "test_dedup";
    g_secs = fqt_seconds(argc, argv);
    FQT_RUN(test_siphash_vectors);
    FQT_RUN(test_window);
    FQT_RUN(test_refusals);
    FQT_RUN(test_mt_race);
    FQT_RUN(test_store_reopen);
    FQT_RUN(test_stale_owner_and_lock);
    if (getenv("FQT_NO_FORK")) {
        fqt_skip("test_fork_*", "FQT_NO_FORK is set");
    } else {
        FQT_RUN(test_fork_crash_ring);
        FQT_RUN(test_fork_killed_mid_finish_expires);
        FQT_RUN(test_fork_crash_store);
    }
    return fqt_summary();
}
