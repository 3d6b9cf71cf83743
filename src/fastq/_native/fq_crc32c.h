/* fq_crc32c.h — CRC32C (Castagnoli polynomial 0x1EDC6F41, reflected 0x82F63B78). */
#ifndef FQ_CRC32C_H
#define FQ_CRC32C_H
#include <stddef.h>
#include <stdint.h>
/* crc = 0 to start; chain by passing the previous result. */
uint32_t fq_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t fq_crc32c_sw(uint32_t crc, const void *buf, size_t len);
#endif
