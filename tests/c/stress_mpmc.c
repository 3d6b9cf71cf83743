/* stress_mpmc.c — 2 producers x 2 consumers on a 64 KiB ring, shared mapping
 * (TSan sees every access), batches of up to 4, a concurrent maintainer. */
#define STRESS_NAME "stress_mpmc"
#define STRESS_PRODUCERS 2
#define STRESS_CONSUMERS 2
#define STRESS_CAPACITY (64u * 1024u)
#define STRESS_MAX_LEN 4096
#define STRESS_MAX_BATCH 4
#define STRESS_TAKE_MAX 16
#define STRESS_SEPARATE_MAPS 0
#define STRESS_MAINTAIN 1
#include "stress_impl.h"
