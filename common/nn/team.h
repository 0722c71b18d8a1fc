/*
 * Parallel loops for the NN engine's own CPU kernels (Adam, the bf16 products and roundings,
 * weight-gradient transposes), run on the OpenMP team that oneDNN computes on (GNU OpenMP).
 * Workers of a second thread pool would compete for the cores with oneDNN's, which keep
 * spinning for a while after each of its calls: the bf16 recurrence at 16 rows took 3.2 ms a
 * call on two pool threads next to spinning oneDNN workers, 2.0 ms with them asleep.
 */
#ifndef ICH_NN_TEAM_H
#define ICH_NN_TEAM_H

#include "pool.h"

#include <stddef.h>

/* fn(index, thread, ctx) for every index in [0, n) on up to nthreads threads of the team,
 * handed out one index at a time; nthreads <= 1 runs in order on the caller's thread. */
void nn_team_for(int nthreads, size_t n, pool_fn fn, void *ctx);

/* The engine's thread count: OMP_NUM_THREADS, else every online CPU (at least 1). */
int nn_team_threads(void);

#endif
