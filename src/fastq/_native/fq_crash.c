/*
 * fq_crash.c — named crash points for tests.  FASTQ_CRASHPOINT=name[:n] in the
 * environment (read when the library loads) or fq_crash_arm("name[:n]") arms
 * one point: the n-th time (default 1st) the process passes it, it kills
 * itself with SIGKILL — exactly what a `kill -9` at that instruction does.
 * Unarmed, a crash point costs one predictable branch on a global.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fq.h"

volatile int fq_crash_armed = 0;
static char fq__crash_name[64];
static long fq__crash_count;

void fq_crash_arm(const char *spec)
{
    if (!spec || !*spec) {
        fq_crash_armed = 0;
        return;
    }
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n >= sizeof fq__crash_name)
        n = sizeof fq__crash_name - 1;
    memcpy(fq__crash_name, spec, n);
    fq__crash_name[n] = 0;
    fq__crash_count = colon ? strtol(colon + 1, NULL, 10) : 1;
    if (fq__crash_count < 1)
        fq__crash_count = 1;
    fq_crash_armed = 1;
}

void fq_crashpoint_slow(const char *name)
{
    if (strcmp(name, fq__crash_name) != 0)
        return;
    if (__atomic_sub_fetch(&fq__crash_count, 1, __ATOMIC_RELAXED) > 0)
        return;
    kill(getpid(), SIGKILL);
    for (;;)
        pause();
}

__attribute__((constructor)) static void fq__crash_init(void) { fq_crash_arm(getenv("FASTQ_CRASHPOINT")); }
