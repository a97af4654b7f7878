/* A dynamic parallel-for over POSIX threads with reusable worker scratch. */
#ifndef BH_THREADS_H
#define BH_THREADS_H

#include "common.h"

typedef void (*task_fn)(void *ctx, int64_t lo, int64_t hi, void *scratch);

/* fn over [0, n) in grains of `grain` items on `threads` threads (the caller counts as one); each worker
 * gets `scratch` bytes of reusable scratch (64-byte aligned) */
void bh_par_for(int threads, int64_t n, int64_t grain, task_fn fn, void *ctx, size_t scratch);
/* a grain giving each thread about four pieces of n, at most cap */
int64_t bh_grain_for(int64_t n, int threads, int64_t cap);

#endif
