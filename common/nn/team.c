/* The engine's parallel loops on oneDNN's OpenMP team (team.h); built with -fopenmp. */
#include "nn/team.h"

#include <omp.h>
#include <stdlib.h>

int nn_team_threads(void)
{
    static int threads;
    if (!threads) {
        const char *env = getenv("OMP_NUM_THREADS");
        long n = env && *env ? strtol(env, NULL, 10) : cpu_count();
        threads = n < 1 ? 1 : (int)n;
    }
    return threads;
}

void nn_team_for(int nthreads, size_t n, pool_fn fn, void *ctx)
{
    if (nthreads <= 1 || n <= 1) {
        parallel_for(1, n, fn, ctx); /* in order on this thread */
        return;
    }

    /* OpenMP starts no more threads than it needs for n iterations of chunk 1.
     * Known shortcoming: this region, like each oneDNN primitive on the same team, ends in
     * a barrier, and only the sequence model's recurrence, gate loops and sgemm calls keep
     * short calls on one thread (lstm.[ch]): a small model's other short regions run far
     * slower than on one thread when other processes hold the cores (README, THREADS). */
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (size_t i = 0; i < n; i++)
        fn(i, omp_get_thread_num(), ctx);
}
