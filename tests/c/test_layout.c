/*
 * test_layout.c — static layout facts, the pack/unpack helpers of fq_pvt.h,
 * and validation on open: every corrupted superblock is refused with the
 * right status and never crashes the opener.
 */
#include "fq_test.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
static void test_struct_sizes(void)
{
    FQT_EQ(sizeof(struct fq_super_shm), 176);
    FQT_EQ(sizeof(struct fq_ctrl_shm), 8 * FQ_BLOCK);
    FQT_EQ(sizeof(struct fq_member_shm), 128);
    FQT_EQ(sizeof(struct fq_group_shm), 1024);
    FQT_EQ(sizeof(struct fq_desc_shm), 32);
    FQT_EQ(sizeof(struct fq_lease_shm), 16);
    FQT_EQ(sizeof(struct fq_frame_hdr), FQ_FRAME_HDR);
    FQT_EQ(FQ_FRAME_HDR, 32);
    FQT_EQ(sizeof(FQ_MAGIC), 8);
    FQT_EQ(_Alignof(_Atomic uint64_t), 8);
    FQT_CHECK(FQ_LOCK_BASE > ((long long)1 << 33)); /* lock bytes lie beyond any queue file */
}

static void test_struct_offsets(void)
{
#define OFF(T, f, v) FQT_EQ(offsetof(struct T, f), v)
    /* superblock: the diagram in fq_layout.h */
    OFF(fq_super_shm, s_magic, 0);
    OFF(fq_super_shm, s_layout_major, 8);
    OFF(fq_super_shm, s_layout_minor, 10);
    OFF(fq_super_shm, s_state, 12);
    OFF(fq_super_shm, s_flags, 16);
    OFF(fq_super_shm, s_fingerprint, 20);
    OFF(fq_super_shm, s_total_size, 24);
    OFF(fq_super_shm, s_arena_cap, 32);
    OFF(fq_super_shm, s_desc_count, 40);
    OFF(fq_super_shm, s_max_frame, 44);
    OFF(fq_super_shm, s_max_members, 48);
    OFF(fq_super_shm, s_max_groups, 52);
    OFF(fq_super_shm, s_window_max, 56);
    OFF(fq_super_shm, s_uid, 60);
    OFF(fq_super_shm, s_off_ctrl, 64);
    OFF(fq_super_shm, s_off_members, 72);
    OFF(fq_super_shm, s_off_groups, 80);
    OFF(fq_super_shm, s_off_desc, 88);
    OFF(fq_super_shm, s_off_windows, 96);
    OFF(fq_super_shm, s_off_arena, 104);
    OFF(fq_super_shm, s_base_seq, 112);
    OFF(fq_super_shm, s_base_pos, 120);
    OFF(fq_super_shm, s_uuid, 128);
    OFF(fq_super_shm, s_created_ns, 144);
    OFF(fq_super_shm, s_creator_pid, 152);
    OFF(fq_super_shm, s_pad0, 156);
    OFF(fq_super_shm, s_maxsize, 160);
    OFF(fq_super_shm, s_crc, 168);
    FQT_EQ(FQ_SUPER_CRC_LEN, 168);
    /* control block: one 128-byte block per independently written word */
    OFF(fq_ctrl_shm, c_tail, 0);
    OFF(fq_ctrl_shm, c_floor_seq, 0x80);
    OFF(fq_ctrl_shm, c_floor_pos, 0x88);
    OFF(fq_ctrl_shm, c_data_ec, 0x100);
    OFF(fq_ctrl_shm, c_space_ec, 0x180);
    OFF(fq_ctrl_shm, c_done_ec, 0x200);
    OFF(fq_ctrl_shm, c_tasks_done, 0x208);
    OFF(fq_ctrl_shm, c_recovery_owner, 0x280);
    OFF(fq_ctrl_shm, c_last_scan_ns, 0x288);
    OFF(fq_ctrl_shm, c_aborted, 0x290);
    OFF(fq_ctrl_shm, c_recovered, 0x298);
    OFF(fq_ctrl_shm, c_durable_seq, 0x300);
    OFF(fq_ctrl_shm, c_durable_ec, 0x308);
    OFF(fq_ctrl_shm, c_admin_owner, 0x380);
    OFF(fq_ctrl_shm, c_groups_epoch, 0x384);
    /* member */
    OFF(fq_member_shm, m_state, 0);
    OFF(fq_member_shm, m_kind, 4);
    OFF(fq_member_shm, m_pid, 8);
    OFF(fq_member_shm, m_waiting, 12);
    OFF(fq_member_shm, m_intent, 16);
    OFF(fq_member_shm, m_heartbeat_ns, 24);
    OFF(fq_member_shm, m_started_ns, 32);
    OFF(fq_member_shm, m_name, 40);
    OFF(fq_member_shm, m_puts, 72);
    OFF(fq_member_shm, m_gets, 80);
    /* group */
    OFF(fq_group_shm, g_state, 0);
    OFF(fq_group_shm, g_start_seq, 24);
    OFF(fq_group_shm, g_name, 32);
    OFF(fq_group_shm, g_low, 0x80);
    OFF(fq_group_shm, g_acked, 0x88);
    OFF(fq_group_shm, g_dispatch, 0x100);
    OFF(fq_group_shm, g_retry_pending, 0x180);
    OFF(fq_group_shm, g_ec, 0x188);
    OFF(fq_group_shm, g_delivered, 0x200);
    OFF(fq_group_shm, g_dead, 0x218);
    OFF(fq_group_shm, g_dlq, 0x280);
    OFF(fq_group_shm, g_backoff, 0x2C0);
    OFF(fq_group_shm, g_reserved, 0x2D0);
    /* descriptor */
    OFF(fq_desc_shm, d_cw, 0);
    OFF(fq_desc_shm, d_ext_start, 8);
    OFF(fq_desc_shm, d_ext_len, 16);
    OFF(fq_desc_shm, d_frame_off, 20);
    OFF(fq_desc_shm, d_frame_len, 24);
    OFF(fq_desc_shm, d_producer, 28);
    OFF(fq_desc_shm, d_flags, 30);
    /* lease, frame */
    OFF(fq_lease_shm, l_w, 0);
    OFF(fq_lease_shm, l_deadline_ns, 8);
    OFF(fq_frame_hdr, f_len, 0);
    OFF(fq_frame_hdr, f_crc, 4);
    OFF(fq_frame_hdr, f_seq, 8);
    OFF(fq_frame_hdr, f_ts_ns, 16);
    OFF(fq_frame_hdr, f_flags, 24);
    OFF(fq_frame_hdr, f_version, 26);
    OFF(fq_frame_hdr, f_type, 28);
#undef OFF
}

/* The geometry a freshly created queue records: page-aligned ordered
 * sections, exact sizes, and the handle's local copy agrees. */
static void test_created_geometry(void)
{
    static const struct { uint64_t cap, maxsize; uint32_t members, groups, window; } cases[] = {
        {0, 0, 0, 0, 0},         {4096, 0, 0, 0, 0},   {5000, 0, 3, 2, 0},
        {1 << 20, 0, 0, 4, 16}, {4096, 1000, 1, 1, 0}, {65536, 7, 8191, 64, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fq_params p = fqt_params(cases[i].cap);
        p.maxsize = cases[i].maxsize;
        p.max_members = cases[i].members;
        p.max_groups = cases[i].groups;
        p.window = cases[i].window;
        fq_queue q;
        int rc = fq_create(&q, NULL, &p);
        FQT_ST(rc, FQ_OK);
        if (rc)
            continue;
        const struct fq_super_shm *s = q.sup;
        FQT_CHECK(memcmp(s->s_magic, FQ_MAGIC, 8) == 0);
        FQT_EQ(atomic_load(&((struct fq_super_shm *)s)->s_state), FQ_S_READY);
        FQT_EQ(s->s_layout_major, FQ_LAYOUT_MAJOR);
        uint64_t want_cap = 4096;
        while (want_cap < cases[i].cap)
            want_cap <<= 1;
        FQT_EQ(s->s_arena_cap, want_cap);
        FQT_EQ(q.cap, want_cap);
        FQT_EQ(s->s_max_frame, want_cap / 4);
        FQT_EQ(fq_max_payload(&q), want_cap / 4 - FQ_FRAME_HDR);
        FQT_CHECK(s->s_desc_count >= 64 && (s->s_desc_count & (s->s_desc_count - 1)) == 0);
        FQT_CHECK(s->s_desc_count >= cases[i].maxsize + 1);
        FQT_EQ(s->s_max_members, cases[i].members ? cases[i].members : 256);
        FQT_EQ(s->s_max_groups, cases[i].groups ? cases[i].groups : 1);
        FQT_CHECK(s->s_window_max <= s->s_desc_count);
        FQT_EQ(q.limit_records, cases[i].maxsize ? cases[i].maxsize : s->s_desc_count - 1);
        uint64_t off[6] = {s->s_off_ctrl, s->s_off_members, s->s_off_groups,
                           s->s_off_desc, s->s_off_windows, s->s_off_arena};
        uint64_t len[6] = {FQ_PAGE, (uint64_t)s->s_max_members * 128, (uint64_t)s->s_max_groups * 1024,
                           (uint64_t)s->s_desc_count * 32, (uint64_t)s->s_max_groups * s->s_window_max * 16,
                           s->s_arena_cap};
        uint64_t prev = FQ_PAGE;
        for (int k = 0; k < 6; k++) {
            FQT_CHECKM(off[k] % FQ_PAGE == 0, "case %zu section %d not aligned", i, k);
            FQT_CHECKM(off[k] >= prev, "case %zu section %d overlaps", i, k);
            prev = off[k] + len[k];
        }
        FQT_EQ(s->s_total_size, prev);
        FQT_EQ(q.map_size, s->s_total_size);
        struct stat st;
        FQT_CHECK(fstat(q.fd, &st) == 0 && (uint64_t)st.st_size == s->s_total_size);
        FQT_EQ(st.st_mode & 0777, 0600);
        /* the CRC covers [0,168) with s_state read as 0 */
        struct fq_super_shm c;
        memcpy(&c, s, sizeof c);
        atomic_store(&c.s_state, 0);
        FQT_EQ(fq_crc32c(0, &c, FQ_SUPER_CRC_LEN), s->s_crc);
        FQT_EQ(fq_crc32c(0, "123456789", 9), 0xE3069283u); /* the CRC32C check value */
        FQT_EQ(fq_crc32c_sw(0, "123456789", 9), 0xE3069283u);
        /* group 0 exists and gates */
        FQT_EQ(atomic_load(&q.groups[0].g_state), FQ_G_ACTIVE);
        FQT_CHECK(q.groups[0].g_flags & FQ_G_GATING);
        FQT_EQ(fq_tail_seq(&q), s->s_base_seq);
        FQT_EQ(fq_qsize(&q, 0), 0);
        fq_close(&q);
    }
}

static void test_create_params(void)
{
    fq_queue q;
    fq_params p = fqt_params(((uint64_t)1 << 32) + 1);
    FQT_ST(fq_create(&q, NULL, &p), FQ_ERR_INVAL);
    p = fqt_params(4096);
    p.max_members = FQ_MAX_MEMBERS + 1;
    FQT_ST(fq_create(&q, NULL, &p), FQ_ERR_INVAL);
    p = fqt_params(4096);
    p.max_groups = FQ_MAX_GROUPS + 1;
    FQT_ST(fq_create(&q, NULL, &p), FQ_ERR_INVAL);
    p = fqt_params(4096);
    p.maxsize = (uint64_t)1 << 24; /* needs 2^25 descriptors */
    FQT_ST(fq_create(&q, NULL, &p), FQ_ERR_INVAL);
    p = fqt_params(4096);
    p.desc_count = (1u << 24) + 1;
    FQT_ST(fq_create(&q, NULL, &p), FQ_ERR_INVAL);
}

/* ------------------------------------------------------------------------ */
static void test_tail_word(void)
{
    /* exact round trip around the floor, including wrap of both 32-bit halves */
    static const uint64_t floors[] = {0, 1, 0x7FFFFFFFull, 0x80000000ull, 0xFFFFFFF0ull, 0xFFFFFFFFull,
                                      0x100000000ull, 0x1234567890ull, ((uint64_t)1 << 60) - 5};
    static const uint64_t deltas[] = {0, 1, 7, 0x10, 0xFFFF, 0x7FFFFFFEull, 0x7FFFFFFFull};
    for (size_t i = 0; i < sizeof floors / sizeof floors[0]; i++) {
        for (size_t j = 0; j < sizeof deltas / sizeof deltas[0]; j++) {
            uint64_t fs = floors[i], fp = floors[i] * 8, seq = fs + deltas[j], pos = fp + 8 * deltas[j];
            uint64_t t = fq__tail_pack(seq, pos);
            FQT_EQ(t >> 32, seq & 0xFFFFFFFFu);
            FQT_EQ(t & 0xFFFFFFFFu, (pos >> 3) & 0xFFFFFFFFu);
            FQT_CHECKM(fq__tail_seq(t, fs) == seq, "seq floor=%" PRIx64 " d=%" PRIx64, fs, deltas[j]);
            FQT_CHECKM(fq__tail_pos(t, fp) == pos, "pos floor=%" PRIx64 " d=%" PRIx64, fp, deltas[j]);
        }
    }
    /* the documented wrap: floor just below 2^32, tail just above */
    {
        uint64_t fs = 0xFFFFFFF0ull, seq = 0x100000010ull;
        uint64_t fp = 0x7FFFFFFF8ull /* (2^32-1)*8 */, pos = fp + 0x200;
        uint64_t t = fq__tail_pack(seq, pos);
        FQT_EQ(t >> 32, 0x10);
        FQT_EQ(fq__tail_seq(t, fs), seq);
        FQT_EQ(fq__tail_pos(t, fp), pos);
    }
    /* a stale tail (below a newer floor) reconstructs below the floor: detectable */
    {
        uint64_t fs = 0x100000005ull, seq = 0x100000001ull;
        uint64_t t = fq__tail_pack(seq, seq * 8);
        FQT_EQ(fq__tail_seq(t, fs), seq);
        FQT_CHECK((int64_t)(fq__tail_seq(t, fs) - fs) < 0);
        FQT_CHECK((int64_t)(fq__tail_pos(t, fs * 8) - fs * 8) < 0);
    }
    /* random: any delta in [-2^31, 2^31) around any floor is exact */
    fqt_rng r;
    fqt_seed(&r, 42);
    for (int i = 0; i < 200000; i++) {
        uint64_t fs = fqt_next(&r) >> 4, fp = (fqt_next(&r) >> 4) & ~(uint64_t)7;
        int64_t ds = (int64_t)(int32_t)(uint32_t)fqt_next(&r), dp = (int64_t)(int32_t)(uint32_t)fqt_next(&r);
        uint64_t seq = fs + (uint64_t)ds, pos = fp + 8 * (uint64_t)dp;
        uint64_t t = fq__tail_pack(seq, pos);
        if (fq__tail_seq(t, fs) != seq || fq__tail_pos(t, fp) != pos) {
            FQT_CHECKM(0, "tail round trip fs=%" PRIx64 " ds=%" PRId64 " fp=%" PRIx64 " dp=%" PRId64, fs, ds, fp,
                       dp);
            break;
        }
    }
}

static void test_cw_and_lease_word(void)
{
    static const uint64_t seqs[] = {0, 1, 63, 64, 0xFFFFFFFFull, 0x100000000ull, FQ_TAG_MASK, FQ_TAG_MASK + 1,
                                    ((uint64_t)1 << 60) + 3, FQ_SEQ_MASK};
    for (size_t i = 0; i < sizeof seqs / sizeof seqs[0]; i++) {
        uint64_t s = seqs[i];
        for (unsigned st = 0; st < 4; st++) {
            uint64_t cw = fq__cw(s, st);
            FQT_EQ(fq__cw_st(cw), st);
            FQT_CHECK(fq__cw_seq(cw) == (s & FQ_SEQ_MASK));
        }
        static const unsigned dl[] = {0, 1, 2, 254, 255, 256, 65535, 65536 /* masked to 0 */};
        static const unsigned ow[] = {0, 1, 255, FQ_MAX_MEMBERS - 1, FQ_OWNER_NONE};
        for (size_t d = 0; d < 6; d++)
            for (size_t o = 0; o < 5; o++)
                for (unsigned st = 0; st <= FQ_L_SKIPPED; st++) {
                    uint64_t w = fq__lw(s, dl[d], ow[o], st);
                    FQT_CHECK(fq__lw_tag(w) == (s & FQ_TAG_MASK));
                    FQT_EQ(fq__lw_deliv(w), dl[d] & 0xFFFF);
                    FQT_EQ(fq__lw_owner(w), ow[o]);
                    FQT_EQ(fq__lw_st(w), st);
                    FQT_CHECK(fq__lw_is(w, s));
                    FQT_CHECK(!fq__lw_is(w, s + 1));
                    FQT_CHECK(fq__lw_is(w, s + ((uint64_t)1 << 32))); /* tag is 32 bits */
                }
    }
    /* zero-initialised entry means "FRESH for seq 0" only */
    FQT_CHECK(fq__lw_is(0, 0) && fq__lw_st(0) == FQ_L_FRESH);
    FQT_CHECK(!fq__lw_is(0, 1));
    FQT_EQ(FQ_MAX_MEMBERS, 8191);
    FQT_CHECK(FQ_OWNER_NONE > FQ_MAX_MEMBERS - 1);
    FQT_CHECK(fq__lst_terminal(FQ_L_ACKED) && fq__lst_terminal(FQ_L_DEAD) && fq__lst_terminal(FQ_L_SKIPPED));
    FQT_CHECK(!fq__lst_terminal(FQ_L_FRESH) && !fq__lst_terminal(FQ_L_LEASED) && !fq__lst_terminal(FQ_L_RETRY));
    FQT_EQ(fq_frame_bytes(0), 32);
    FQT_EQ(fq_frame_bytes(1), 40);
    FQT_EQ(fq_frame_bytes(8), 40);
    FQT_EQ(fq_frame_bytes(9), 48);
    FQT_EQ(fq__align8(0), 0);
    FQT_EQ(fq__align8(13), 16);
}

static void test_intent_word(void)
{
    static const uint64_t seqs[] = {0, 5, 0xFFFFFFFFull, 0x100000000ull, 0x1FFFFFFF0ull};
    static const uint32_t ns[] = {1, 2, 1000, 0x7FFFFFFFu};
    for (size_t i = 0; i < 5; i++)
        for (size_t j = 0; j < 4; j++) {
            uint64_t it = fq__intent(seqs[i], ns[j]);
            FQT_EQ(it & 1u, 1);
            FQT_EQ((it >> 1) & 0x7FFFFFFFu, ns[j]);
            FQT_EQ(it >> 32, seqs[i] & 0xFFFFFFFFu);
            /* the recoverer rebuilds the seq against the floor (fq_live.c) */
            uint64_t fs = seqs[i] > 3 ? seqs[i] - 3 : 0;
            uint64_t rebuilt = fs + (uint64_t)(int64_t)(int32_t)((uint32_t)(it >> 32) - (uint32_t)fs);
            FQT_EQ(rebuilt, seqs[i]);
        }
    FQT_EQ(fq__intent(7, 0) & 1u, 1); /* even an empty intent is "set" */
}

/* ------------------------------------------------------------------------ */
/* Superblock corruption: create a named queue, mutate its page 0 in place. */

static char g_name[128], g_path[300];
static uint8_t *g_file_copy;
static size_t g_file_size;

static void crc_fix(struct fq_super_shm *s)
{
    struct fq_super_shm c;
    memcpy(&c, s, sizeof c);
    atomic_store(&c.s_state, 0);
    s->s_crc = fq_crc32c(0, &c, FQ_SUPER_CRC_LEN);
}

/* Save / restore the whole file so that every mutation starts clean. */
static int snapshot(void)
{
    int fd = open(g_path, O_RDWR);
    if (fd < 0)
        return -1;
    struct stat st;
    fstat(fd, &st);
    g_file_size = (size_t)st.st_size;
    g_file_copy = malloc(g_file_size);
    ssize_t r = pread(fd, g_file_copy, g_file_size, 0);
    close(fd);
    return r == (ssize_t)g_file_size ? 0 : -1;
}
static void restore(void)
{
    int fd = open(g_path, O_RDWR);
    if (fd < 0)
        return;
    if (ftruncate(fd, (off_t)g_file_size) != 0 || pwrite(fd, g_file_copy, g_file_size, 0) != (ssize_t)g_file_size)
        fqt_fail(__FILE__, __LINE__, "restore failed: %s", strerror(errno));
    fchmod(fd, 0600);
    close(fd);
}

typedef void (*mutator)(struct fq_super_shm *s);
#define MUT(name, body)                                                                                               \
    static void name(struct fq_super_shm *s) { body; }

MUT(m_magic, s->s_magic[0] = 'X')
MUT(m_magic_nul, s->s_magic[7] = '!')
MUT(m_major, s->s_layout_major = FQ_LAYOUT_MAJOR + 1)
MUT(m_major0, s->s_layout_major = 0)
MUT(m_state_init, atomic_store(&s->s_state, FQ_S_INIT))
MUT(m_state_empty, atomic_store(&s->s_state, FQ_S_EMPTY))
MUT(m_state_poison, atomic_store(&s->s_state, FQ_S_POISONED))
MUT(m_crc, s->s_crc ^= 1)
MUT(m_nocrc_cap, s->s_arena_cap *= 2)
MUT(m_nocrc_pid, s->s_creator_pid ^= 1)
MUT(m_fingerprint, s->s_fingerprint ^= 0x10)
MUT(m_total_plus, s->s_total_size += FQ_PAGE)
MUT(m_total_minus, s->s_total_size -= FQ_PAGE)
MUT(m_cap_npow2, s->s_arena_cap += 8)
MUT(m_cap_double, s->s_arena_cap *= 2)
MUT(m_cap_small, s->s_arena_cap = 2048)
MUT(m_cap_zero, s->s_arena_cap = 0)
MUT(m_cap_huge, s->s_arena_cap = (uint64_t)1 << 40)
MUT(m_desc_zero, s->s_desc_count = 0)
MUT(m_desc_npow2, s->s_desc_count = 100)
MUT(m_desc_small, s->s_desc_count = 32)
MUT(m_desc_huge, s->s_desc_count = 1u << 25)
MUT(m_desc_double, s->s_desc_count *= 4) /* 256 x 32 B = 2 pages: runs into windows */
MUT(m_window_zero, s->s_window_max = 0)
MUT(m_window_big, s->s_window_max = s->s_desc_count * 2)
MUT(m_window_npow2, s->s_window_max = 3)
MUT(m_members_zero, s->s_max_members = 0)
MUT(m_members_huge, s->s_max_members = FQ_MAX_MEMBERS + 1)
MUT(m_members_overlap, s->s_max_members = FQ_MAX_MEMBERS)
MUT(m_groups_zero, s->s_max_groups = 0)
MUT(m_groups_huge, s->s_max_groups = FQ_MAX_GROUPS + 1)
MUT(m_groups_overlap, s->s_max_groups = FQ_MAX_GROUPS)
MUT(m_frame_small, s->s_max_frame = 63)
MUT(m_frame_big, s->s_max_frame = (uint32_t)(s->s_arena_cap / 4 + 8))
MUT(m_frame_max, s->s_max_frame = 0xFFFFFFFFu)
MUT(m_maxsize, s->s_maxsize = s->s_desc_count)
MUT(m_maxsize_huge, s->s_maxsize = UINT64_MAX)
MUT(m_base_pos, s->s_base_pos = 4)
MUT(m_base_seq, s->s_base_seq = ((uint64_t)1 << 60) + 1)
MUT(m_ctrl_zero, s->s_off_ctrl = 0)
MUT(m_ctrl_unaligned, s->s_off_ctrl = FQ_PAGE + 8)
MUT(m_members_eq_ctrl, s->s_off_members = s->s_off_ctrl)
MUT(m_groups_before, s->s_off_groups = s->s_off_members)
MUT(m_desc_before, s->s_off_desc = s->s_off_groups)
MUT(m_windows_into_desc, s->s_off_windows = s->s_off_desc)
MUT(m_arena_past_end, s->s_off_arena = s->s_total_size)
MUT(m_arena_last_page, s->s_off_arena += FQ_PAGE)
MUT(m_arena_wrap, s->s_off_arena = (UINT64_MAX & ~(uint64_t)(FQ_PAGE - 1)))
MUT(m_arena_2_63, s->s_off_arena = (uint64_t)1 << 63)
MUT(m_desc_past_end, s->s_off_desc = s->s_total_size + FQ_PAGE)
MUT(m_windows_huge, s->s_off_windows = UINT64_MAX - FQ_PAGE + 1)
MUT(m_sections_swapped, {
    uint64_t t = s->s_off_desc;
    s->s_off_desc = s->s_off_groups;
    s->s_off_groups = t;
})
/* benign: not covered by any check but the CRC; with the CRC fixed, opens */
MUT(m_benign_uuid, s->s_uuid[3] ^= 0xFF)
MUT(m_benign_pid, s->s_creator_pid += 1)
MUT(m_benign_pad1, s->s_pad1 = 0xDEADBEEF) /* outside the CRC range */

static struct {
    const char *name;
    mutator fn;
    int fix_crc;
    int want;
} g_mutations[] = {
    {"magic", m_magic, 0, FQ_ERR_FORMAT},
    {"magic nul", m_magic_nul, 0, FQ_ERR_FORMAT},
    {"major+1", m_major, 0, FQ_ERR_FORMAT},
    {"major+1 crc", m_major, 1, FQ_ERR_FORMAT},
    {"major 0", m_major0, 1, FQ_ERR_FORMAT},
    {"state INIT", m_state_init, 0, FQ_ERR_FORMAT},
    {"state EMPTY", m_state_empty, 0, FQ_ERR_FORMAT},
    {"state POISONED", m_state_poison, 0, FQ_ERR_FORMAT},
    {"crc", m_crc, 0, FQ_ERR_CORRUPT},
    {"cap without crc", m_nocrc_cap, 0, FQ_ERR_CORRUPT},
    {"pid without crc", m_nocrc_pid, 0, FQ_ERR_CORRUPT},
    {"fingerprint", m_fingerprint, 1, FQ_ERR_FORMAT},
    {"total+page", m_total_plus, 1, FQ_ERR_CORRUPT},
    {"total-page", m_total_minus, 1, FQ_ERR_CORRUPT},
    {"cap not pow2", m_cap_npow2, 1, FQ_ERR_CORRUPT},
    {"cap x2 (past end)", m_cap_double, 1, FQ_ERR_CORRUPT},
    {"cap < page", m_cap_small, 1, FQ_ERR_CORRUPT},
    {"cap 0", m_cap_zero, 1, FQ_ERR_CORRUPT},
    {"cap 2^40", m_cap_huge, 1, FQ_ERR_CORRUPT},
    {"desc 0", m_desc_zero, 1, FQ_ERR_CORRUPT},
    {"desc not pow2", m_desc_npow2, 1, FQ_ERR_CORRUPT},
    {"desc < 64", m_desc_small, 1, FQ_ERR_CORRUPT},
    {"desc 2^25", m_desc_huge, 1, FQ_ERR_CORRUPT},
    {"desc x4 (overlap)", m_desc_double, 1, FQ_ERR_CORRUPT},
    {"window 0", m_window_zero, 1, FQ_ERR_CORRUPT},
    {"window > desc", m_window_big, 1, FQ_ERR_CORRUPT},
    {"window not pow2", m_window_npow2, 1, FQ_ERR_CORRUPT},
    {"members 0", m_members_zero, 1, FQ_ERR_CORRUPT},
    {"members > max", m_members_huge, 1, FQ_ERR_CORRUPT},
    {"members overlap groups", m_members_overlap, 1, FQ_ERR_CORRUPT},
    {"groups 0", m_groups_zero, 1, FQ_ERR_CORRUPT},
    {"groups > max", m_groups_huge, 1, FQ_ERR_CORRUPT},
    {"groups overlap desc", m_groups_overlap, 1, FQ_ERR_CORRUPT},
    {"max_frame < 64", m_frame_small, 1, FQ_ERR_CORRUPT},
    {"max_frame > cap/4", m_frame_big, 1, FQ_ERR_CORRUPT},
    {"max_frame 2^32-1", m_frame_max, 1, FQ_ERR_CORRUPT},
    {"maxsize = N", m_maxsize, 1, FQ_ERR_CORRUPT},
    {"maxsize huge", m_maxsize_huge, 1, FQ_ERR_CORRUPT},
    {"base_pos unaligned", m_base_pos, 1, FQ_ERR_CORRUPT},
    {"base_seq > 2^60", m_base_seq, 1, FQ_ERR_CORRUPT},
    {"ctrl at 0 (overlaps super)", m_ctrl_zero, 1, FQ_ERR_CORRUPT},
    {"ctrl unaligned", m_ctrl_unaligned, 1, FQ_ERR_CORRUPT},
    {"members = ctrl", m_members_eq_ctrl, 1, FQ_ERR_CORRUPT},
    {"groups = members", m_groups_before, 1, FQ_ERR_CORRUPT},
    {"desc = groups", m_desc_before, 1, FQ_ERR_CORRUPT},
    {"windows inside desc", m_windows_into_desc, 1, FQ_ERR_CORRUPT},
    {"arena at EOF", m_arena_past_end, 1, FQ_ERR_CORRUPT},
    {"arena shifted a page", m_arena_last_page, 1, FQ_ERR_CORRUPT},
    {"arena offset wraps 2^64", m_arena_wrap, 1, FQ_ERR_CORRUPT},
    {"arena offset 2^63", m_arena_2_63, 1, FQ_ERR_CORRUPT},
    {"desc past EOF", m_desc_past_end, 1, FQ_ERR_CORRUPT},
    {"windows offset wraps", m_windows_huge, 1, FQ_ERR_CORRUPT},
    {"sections swapped", m_sections_swapped, 1, FQ_ERR_CORRUPT},
    {"benign uuid", m_benign_uuid, 1, FQ_OK},
    {"benign pid", m_benign_pid, 1, FQ_OK},
    {"pad1 (outside crc)", m_benign_pad1, 0, FQ_OK},
};

/* Mutate page 0 of the file through a private writable mapping. */
static int mutate(mutator fn, int fix)
{
    int fd = open(g_path, O_RDWR);
    if (fd < 0)
        return -1;
    struct fq_super_shm *s = mmap(NULL, FQ_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (s == MAP_FAILED)
        return -1;
    fn(s);
    if (fix)
        crc_fix(s);
    munmap(s, FQ_PAGE);
    return 0;
}

/* A successful open must give a working queue (round trip one record). */
static void roundtrip(fq_queue *q, const char *what)
{
    FQT_ST(fq_join(q, 3), FQ_OK);
    uint64_t seq;
    int rc = fqt_put(q, 24, 99, &seq);
    FQT_CHECKM(rc == FQ_OK, "%s: put -> %s", what, fq_strerror(rc));
    fq_msg m;
    uint32_t n = 0;
    rc = fq_take(q, 0, &m, 1, 0, &n);
    FQT_CHECKM(rc == FQ_OK && n == 1, "%s: take -> %s n=%u", what, fq_strerror(rc), n);
    if (rc == FQ_OK && n == 1) {
        FQT_CHECK(m.len == 24 && fqt_verify(m.data, m.len, 99));
        FQT_ST(fq_ack(q, 0, &m, 1), FQ_OK);
    }
}

static int setup_named(const char *tag)
{
    fqt_name(g_name, sizeof g_name, tag);
    snprintf(g_path, sizeof g_path, "/dev/shm/fastq.%s", g_name);
    fq_queue q;
    fq_params p = fqt_params(4096);
    p.max_members = 8;
    int rc = fq_create(&q, g_name, &p);
    if (rc != FQ_OK)
        return rc;
    fq_close(&q);
    return snapshot();
}
static void teardown_named(void)
{
    fq_unlink(g_name);
    free(g_file_copy);
    g_file_copy = NULL;
}

static void test_open_corrupt_superblock(void)
{
    FQT_REQUIRE(setup_named("corrupt") == 0);
    fq_queue q;
    FQT_ST(fq_open(&q, g_name, 0), FQ_OK);
    fq_close(&q);
    for (size_t i = 0; i < sizeof g_mutations / sizeof g_mutations[0]; i++) {
        restore();
        if (mutate(g_mutations[i].fn, g_mutations[i].fix_crc) != 0) {
            FQT_CHECKM(0, "cannot mutate %s", g_mutations[i].name);
            continue;
        }
        int64_t wait = 2000000; /* 2 ms: a not-READY state must time out, not hang */
        int64_t t0 = fq_now_ns();
        int rc = fq_open(&q, g_name, wait);
        int64_t dt = fq_now_ns() - t0;
        FQT_CHECKM(rc == g_mutations[i].want, "mutation '%s': fq_open -> %d (%s), want %d (%s) [%s]",
                   g_mutations[i].name, rc, fq_strerror(rc), g_mutations[i].want, fq_strerror(g_mutations[i].want),
                   fq_last_error());
        FQT_CHECKM(dt < 1000000000, "mutation '%s': fq_open took %lld ns", g_mutations[i].name, (long long)dt);
        if (rc != FQ_OK)
            FQT_CHECKM(fq_last_error()[0] != 0, "mutation '%s': no error detail", g_mutations[i].name);
        if (rc == FQ_OK) {
            roundtrip(&q, g_mutations[i].name);
            fq_close(&q);
        }
    }
    restore();
    FQT_ST(fq_open(&q, g_name, 0), FQ_OK);
    fq_close(&q);
    teardown_named();
}

/* Random corruption of the superblock (with and without a fixed CRC) and of
 * the file size: any status is fine as long as nothing crashes, a refusal is
 * FORMAT/CORRUPT, and an accepted queue works. */
static void test_open_fuzz_superblock(void)
{
    FQT_REQUIRE(setup_named("fuzz") == 0);
    fqt_rng r;
    fqt_seed(&r, 7);
    int accepted = 0, refused = 0;
    for (int it = 0; it < 3000; it++) {
        restore();
        int fd = open(g_path, O_RDWR);
        FQT_REQUIRE(fd >= 0);
        struct fq_super_shm *s = mmap(NULL, FQ_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        FQT_REQUIRE(s != MAP_FAILED);
        uint8_t *b = (uint8_t *)s;
        int nflip = 1 + (int)fqt_below(&r, 3);
        for (int k = 0; k < nflip; k++) {
            uint32_t at = fqt_below(&r, sizeof *s);
            if (fqt_below(&r, 2))
                b[at] ^= (uint8_t)(1u << fqt_below(&r, 8));
            else
                b[at] = (uint8_t)fqt_next(&r);
        }
        int fixed = (int)fqt_below(&r, 4) != 0; /* mostly with a valid CRC: reach the geometry checks */
        if (fixed)
            crc_fix(s);
        munmap(s, FQ_PAGE);
        if (fqt_below(&r, 16) == 0) /* sometimes the file size changes too */
            FQT_CHECK(ftruncate(fd, (off_t)(g_file_size + ((int64_t)fqt_below(&r, 5) - 2) * FQ_PAGE)) == 0);
        close(fd);
        fq_queue q;
        int rc = fq_open(&q, g_name, 0);
        if (rc == FQ_OK) {
            accepted++;
            roundtrip(&q, "fuzz");
            fq_close(&q);
        } else {
            refused++;
            FQT_CHECKM(rc == FQ_ERR_FORMAT || rc == FQ_ERR_CORRUPT, "fuzz %d: unexpected %d (%s) [%s]", it, rc,
                       fq_strerror(rc), fq_last_error());
        }
    }
    FQT_CHECK(refused > 0);
    printf("  fuzz: %d accepted, %d refused\n", accepted, refused);
    teardown_named();
}

static void test_open_bad_files(void)
{
    FQT_REQUIRE(setup_named("files") == 0);
    fq_queue q;
    /* mode: group/other bits are refused */
    static const mode_t modes[] = {0644, 0640, 0604, 0660, 0606, 0601};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        FQT_REQUIRE(chmod(g_path, modes[i]) == 0);
        int rc = fq_open(&q, g_name, 0);
        FQT_CHECKM(rc == FQ_ERR_PERM, "mode %03o -> %d (%s)", (unsigned)modes[i], rc, fq_strerror(rc));
        if (rc == FQ_OK)
            fq_close(&q);
    }
    FQT_REQUIRE(chmod(g_path, 0600) == 0);
    FQT_ST(fq_open(&q, g_name, 0), FQ_OK);
    fq_close(&q);
    /* too small, empty */
    FQT_REQUIRE(truncate(g_path, 2 * FQ_PAGE) == 0);
    FQT_ST(fq_open(&q, g_name, 0), FQ_ERR_FORMAT);
    FQT_REQUIRE(truncate(g_path, 0) == 0);
    FQT_ST(fq_open(&q, g_name, 0), FQ_ERR_FORMAT);
    /* zeros of the right size: no magic */
    FQT_REQUIRE(truncate(g_path, (off_t)g_file_size) == 0);
    FQT_ST(fq_open(&q, g_name, 0), FQ_ERR_FORMAT);
    restore();
    FQT_ST(fq_open(&q, g_name, 0), FQ_OK);
    fq_close(&q);
    /* a symlink under the queue name is never followed */
    char lname[128], lpath[300];
    fqt_name(lname, sizeof lname, "link");
    snprintf(lpath, sizeof lpath, "/dev/shm/fastq.%s", lname);
    FQT_REQUIRE(symlink(g_path, lpath) == 0);
    FQT_ST(fq_open(&q, lname, 0), FQ_ERR_PERM);
    FQT_ST(fq_create(&q, lname, &(fq_params){.capacity = 4096}), FQ_ERR_EXISTS);
    unlink(lpath);
    /* a directory under the queue name */
    FQT_REQUIRE(mkdir(lpath, 0700) == 0);
    {
        int rc = fq_open(&q, lname, 0);
        FQT_CHECKM(rc < 0, "directory opened: %d", rc);
        if (rc == FQ_OK)
            fq_close(&q);
    }
    rmdir(lpath);
    /* existing / missing */
    FQT_ST(fq_create(&q, g_name, &(fq_params){.capacity = 4096}), FQ_ERR_EXISTS);
    FQT_ST(fq_open(&q, lname, 0), FQ_ERR_NOENT);
    FQT_ST(fq_unlink(lname), FQ_ERR_NOENT);
    teardown_named();
    FQT_ST(fq_open(&q, g_name, 0), FQ_ERR_NOENT);
    /* fq_open_fd on things that are not queues */
    {
        int fd = memfd_create("notq", MFD_CLOEXEC);
        FQT_REQUIRE(fd >= 0);
        FQT_REQUIRE(fchmod(fd, 0600) == 0 && ftruncate(fd, 1 << 20) == 0);
        FQT_ST(fq_open_fd(&q, fd), FQ_ERR_FORMAT); /* zeros */
        FQT_REQUIRE(ftruncate(fd, 100) == 0);
        FQT_ST(fq_open_fd(&q, fd), FQ_ERR_FORMAT); /* too small */
        close(fd);
        int pfd[2];
        FQT_REQUIRE(pipe(pfd) == 0);
        FQT_ST(fq_open_fd(&q, pfd[0]), FQ_ERR_FORMAT); /* not a regular file */
        close(pfd[0]);
        close(pfd[1]);
    }
    /* an anonymous queue reopened through its descriptor works */
    {
        fq_queue a, b;
        FQT_REQUIRE_ST(fq_create(&a, NULL, &(fq_params){.capacity = 4096}), FQ_OK);
        FQT_ST(fqt_open_dup(&b, &a), FQ_OK);
        FQT_EQ(b.cap, a.cap);
        FQT_EQ(b.n_desc, a.n_desc);
        roundtrip(&b, "open_fd");
        fq_close(&b);
        fq_close(&a);
    }
}

static void test_names(void)
{
    char longname[260];
    memset(longname, 'a', sizeof longname);
    longname[200] = 0;
    FQT_EQ(fq_name_valid(longname), 1);
    longname[200] = 'a';
    longname[201] = 0;
    FQT_EQ(fq_name_valid(longname), 0);
    static const char *bad[] = {"", "/", "a/b", "/abs", "..", ".", ".hidden", "../x", "a b", "tab\t", "q\n",
                                "caf\xc3\xa9", "x:y", "a\\b", "*", "$HOME", "semi;colon"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        FQT_CHECKM(fq_name_valid(bad[i]) == 0, "name '%s' accepted", bad[i]);
    static const char *good[] = {"q", "Q-1", "a.b", "a..b", "x_y.z-0", "A"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        FQT_CHECKM(fq_name_valid(good[i]) == 1, "name '%s' refused", good[i]);
    fq_queue q;
    fq_params p = fqt_params(4096);
    static const char *bad_api[] = {"", "..", "../etc", "a/b", "/x"};
    for (size_t i = 0; i < sizeof bad_api / sizeof bad_api[0]; i++) {
        FQT_ST(fq_create(&q, bad_api[i], &p), FQ_ERR_INVAL);
        FQT_ST(fq_open(&q, bad_api[i], 0), FQ_ERR_INVAL);
        FQT_ST(fq_unlink(bad_api[i]), FQ_ERR_INVAL);
    }
    FQT_ST(fq_create(&q, longname, &p), FQ_ERR_INVAL);
    FQT_ST(fq_open(&q, longname, 0), FQ_ERR_INVAL);
    /* the longest valid name works end to end */
    char name[201];
    memset(name, 'z', 200);
    name[200] = 0;
    snprintf(name, 40, "fqtest-long-%d-", (int)getpid());
    name[strlen(name)] = 'z'; /* undo snprintf's terminator inside the run of z */
    FQT_EQ(strlen(name), 200);
    fq_unlink(name);
    FQT_ST(fq_create(&q, name, &p), FQ_OK);
    fq_close(&q);
    FQT_ST(fq_open(&q, name, 0), FQ_OK);
    fq_close(&q);
    FQT_ST(fq_unlink(name), FQ_OK);
}

int main(int argc, char **argv)
{
    fqt_prog = "test_layout";
    FQT_RUN(test_struct_sizes);
    FQT_RUN(test_struct_offsets);
    FQT_RUN(test_created_geometry);
    FQT_RUN(test_create_params);
    FQT_RUN(test_tail_word);
    FQT_RUN(test_cw_and_lease_word);
    FQT_RUN(test_intent_word);
    FQT_RUN(test_open_corrupt_superblock);
    FQT_RUN(test_open_fuzz_superblock);
    FQT_RUN(test_open_bad_files);
    FQT_RUN(test_names);
    return fqt_summary();
}
