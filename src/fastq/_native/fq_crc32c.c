/*
 * fq_crc32c.c — CRC32C (Castagnoli), used for the superblock now and for every
 * frame of the segment store.  SSE4.2 `crc32` instructions when the CPU has
 * them (checked once with cpuid), else a portable table (slicing-by-1).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fq_crc32c.h"

static uint32_t fq__crc_table[256];
static int fq__crc_init_done;
static int fq__crc_hw = -1;

static void fq__crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        fq__crc_table[i] = c;
    }
    fq__crc_init_done = 1;
}

uint32_t fq_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    if (!fq__crc_init_done)
        fq__crc_init();
    const uint8_t *p = buf;
    crc = ~crc;
    while (len--)
        crc = fq__crc_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t fq__crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t fq_crc32c(uint32_t crc, const void *buf, size_t len)
{
#if defined(__x86_64__)
    if (fq__crc_hw < 0)
        fq__crc_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    if (fq__crc_hw)
        return fq__crc32c_hw(crc, buf, len);
#endif
    return fq_crc32c_sw(crc, buf, len);
}
