/* A parallel loop over [0, n) on worker threads with dynamic scheduling. */
#ifndef ICH_POOL_H
#define ICH_POOL_H

#include <stddef.h>

typedef void (*pool_fn)(size_t index, int thread, void *ctx);

/* Runs fn for every index; nthreads <= 1 runs in the caller's thread, in order. */
void parallel_for(int nthreads, size_t n, pool_fn fn, void *ctx);

/* Number of online CPUs (at least 1). */
int cpu_count(void);

#endif
