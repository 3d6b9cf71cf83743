/* stress_spsc.c — 1 producer x 1 consumer on a 16 KiB ring; each thread maps
 * the queue itself (fq_open_fd on a dup of the memfd, as another process
 * would), single-record claims. */
#define STRESS_NAME "stress_spsc"
#define STRESS_PRODUCERS 1
#define STRESS_CONSUMERS 1
#define STRESS_CAPACITY (16u * 1024u)
#define STRESS_MAX_LEN 0
#define STRESS_MAX_BATCH 1
#define STRESS_TAKE_MAX 8
#define STRESS_SEPARATE_MAPS 1
#define STRESS_MAINTAIN 0
#include "stress_impl.h"
