#include "pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <unistd.h>

#include "check.h"

typedef struct {
    pool_fn fn;
    void *ctx;
    size_t n;
    atomic_size_t next;
} pool_job_t;

typedef struct {
    pool_job_t *job;
    int thread;
} pool_worker_t;

static void *pool_worker(void *arg)
{
    pool_worker_t *w = arg;
    pool_job_t *job = w->job;
    for (;;) {
        size_t i = atomic_fetch_add(&job->next, 1);
        if (i >= job->n)
            break;
        job->fn(i, w->thread, job->ctx);
    }
    return NULL;
}

void parallel_for(int nthreads, size_t n, pool_fn fn, void *ctx)
{
    if (nthreads <= 1 || n <= 1) {
        for (size_t i = 0; i < n; i++)
            fn(i, 0, ctx);
        return;
    }
    if ((size_t)nthreads > n)
        nthreads = (int)n;

    pool_job_t job = {.fn = fn, .ctx = ctx, .n = n};
    atomic_init(&job.next, 0);
    pthread_t *threads = xcalloc((size_t)nthreads, sizeof *threads);
    pool_worker_t *workers = xcalloc((size_t)nthreads, sizeof *workers);

    /* The caller's thread is worker 0. */
    for (int t = 1; t < nthreads; t++) {
        workers[t] = (pool_worker_t){.job = &job, .thread = t};
        if (pthread_create(&threads[t], NULL, pool_worker, &workers[t]) != 0)
            die(1, "cannot start worker thread %d", t);
    }
    workers[0] = (pool_worker_t){.job = &job, .thread = 0};
    pool_worker(&workers[0]);
    for (int t = 1; t < nthreads; t++)
        pthread_join(threads[t], NULL);
    free(threads);
    free(workers);
}

int cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
