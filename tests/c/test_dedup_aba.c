/*
 * test_dedup_aba.c — recovery must never take a live member for a dead one.
 *
 * The ABA of R1 (fq_live.c): the recoverer loads a member ALIVE, probes its
 * lock byte; in between the member leaves (FREE, unlocked: the probe says
 * "dead") and a new process joins the same slot (locks, ALIVE) and starts
 * an append with a dedup key.  Without the second probe after the CAS, the
 * recoverer marked the live member RECOVERING and resolved its in-flight
 * key (R1b): a second producer then appended the same key again.  fcntl is
 * interposed to run the leave / rejoin / begin exactly inside the probe
 * (found by review; this file is that reviewer's reproduction, kept).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/syscall.h>

#include "fq_test.h"

static fq_queue g_v; /* the victim: leaves and rejoins its slot inside the probe */
static int g_armed, g_vid;
static uint32_t g_vslot;
static uint64_t g_vseq;
static int g_steps;

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (g_armed && cmd == F_OFD_GETLK && ((struct flock *)arg)->l_start == FQ_LOCK_BASE + g_vid) {
        g_armed = 0;
        fq_leave(&g_v);                              /* the old incarnation leaves: FREE, unlocked */
        long r = syscall(SYS_fcntl, fd, cmd, arg);   /* the probe sees the byte free */
        uint64_t orig;
        uint32_t len = 16;
        if (fq_join(&g_v, 3) == FQ_OK && g_v.member == g_vid &&
            fq_dedup_begin(&g_v, "k", 1, 0, &orig, &g_vslot) == FQ_OK && fq_claim(&g_v, &len, 1, &g_vseq) == FQ_OK) {
            fq_dedup_bind(&g_v, g_vslot, g_vseq);
            g_steps = 1;
        }
        return (int)r;
    }
    return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

static void test_r1_aba(void)
{
    fq_params p = fqt_params(1 << 20);
    p.flags = FQ_P_NO_QUEUE_GROUP;
    p.dedup_slots = 1000;
    p.dedup_window_ms = 60000;
    fq_queue r, other;
    FQT_REQUIRE_ST(fq_create(&r, NULL, &p), FQ_OK);
    FQT_REQUIRE_ST(fq_join(&r, 3), FQ_OK);                 /* the recoverer */
    FQT_REQUIRE_ST(fqt_clone(&g_v, &r, 3), FQ_OK);         /* the victim */
    FQT_REQUIRE_ST(fqt_clone(&other, &r, 3), FQ_OK);       /* another producer */
    g_vid = g_v.member;
    g_armed = 1;
    fq_maintain(&r, 1);
    FQT_CHECK(!g_armed);
    FQT_REQUIRE(g_steps == 1);
    FQT_EQ(atomic_load(&r.members[g_vid].m_state), FQ_M_ALIVE); /* not taken for dead */
    memset(fq_payload(&g_v, g_vseq), 7, 16);
    fq_commit(&g_v, g_vseq, 1);
    fq_dedup_end(&g_v, g_vslot, 1);
    uint32_t slot;
    uint64_t orig = 0;
    FQT_ST(fq_dedup_begin(&other, "k", 1, 0, &orig, &slot), FQ_DUPLICATE);
    FQT_EQ(orig, g_vseq);
    FQT_EQ(fq_tail_seq(&r), 1);
    fqt_unclone(&other);
    fqt_unclone(&g_v);
    fq_close(&r);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fqt_prog = "test_dedup_aba";
    FQT_RUN(test_r1_aba);
    return fqt_summary();
}
