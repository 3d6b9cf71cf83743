/* stress_tiny.c — 3 producers x 3 consumers on the smallest ring (4 KiB,
 * 64 descriptors): random sizes up to fq_max_payload, constant wrap padding,
 * FULL and STALLED all the time; shared mapping, concurrent maintainer. */
#define STRESS_NAME "stress_tiny"
#define STRESS_PRODUCERS 3
#define STRESS_CONSUMERS 3
#define STRESS_CAPACITY 4096u
#define STRESS_MAX_LEN 0
#define STRESS_MAX_BATCH 3
#define STRESS_TAKE_MAX 8
#define STRESS_SEPARATE_MAPS 0
#define STRESS_MAINTAIN 1
#include "stress_impl.h"
