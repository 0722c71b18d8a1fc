/*
 * The gradient all-reduce of data-parallel training, timed: run under `mpirun -np N`.
 *   mpi_bench allreduce MODEL ITERS [DEVICE]
 * sums the gradient slab of MODEL (its real size, 6 outputs) over the ranks with
 * dist_allreduce_backend, as cnntrain does once per optimizer step, one untimed round first;
 * DEVICE "cuda" (a GPU per local rank: NCCL) or "cpu" (default: MPI).
 * Rank 0 prints one line "result side=ours ..." with the best and median seconds per call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist.h"
#include "log.h"
#include "nn/resnext.h"

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    log_init("mpi_bench", LOG_WARN);
    dist_init(&argc, &argv);
    if (argc < 4 || argc > 5 || strcmp(argv[1], "allreduce") != 0) {
        fprintf(stderr, "usage: mpirun -np N mpi_bench allreduce MODEL ITERS [DEVICE]\n");
        return 2;
    }
    const char *model_name = argv[2];
    int iters = atoi(argv[3]);
    if (iters < 1)
        iters = 1;

    const char *device = dist_device_for_rank(argc == 5 ? argv[4] : "cpu");
    nn_backend_t *be = nn_backend_create(device);
    if (!be) {
        fprintf(stderr, "mpi_bench: %s: %s\n", device, nn_backend_create_error());
        return 2;
    }
    resnext_t *model = resnext_create(be, model_name, 6);
    nn_paramset_t *ps = &model->ps;
    float *host = malloc(ps->param_count * sizeof *host);
    for (size_t i = 0; i < ps->param_count; i++)
        host[i] = (float)((i + (size_t)dist_rank()) % 97) * 1e-3f;
    be->to_device(be, ps->grads, host, ps->param_count * sizeof *host);
    free(host);

    double *seconds = calloc((size_t)iters, sizeof *seconds);
    for (int it = -1; it < iters; it++) {
        dist_barrier();
        double start = time_now();
        dist_allreduce_backend(be, ps->grads, ps->param_count);
        double took = time_now() - start;
        if (it >= 0)
            seconds[it] = took;
    }
    qsort(seconds, (size_t)iters, sizeof *seconds, by_value);
    /* A step waits for the slowest rank: report the largest over ranks. */
    int64_t micro[2] = {(int64_t)(seconds[0] * 1e6), (int64_t)(seconds[iters / 2] * 1e6)};
    dist_allreduce_max_i64(micro, 2);
    if (dist_is_root()) {
        double best = micro[0] * 1e-6, median = micro[1] * 1e-6;
        double mib = ps->param_count * sizeof(float) / 1048576.0;
        printf("result side=ours ranks=%d model=%s device=%s floats=%zu mib=%.1f path=%s "
               "best_s=%.4f median_s=%.4f bucket_mib=%zu\n",
               dist_size(), model_name, be->name, ps->param_count, mib,
               dist_allreduce_path(be), best, median, dist_bucket_bytes() >> 20);
    }
    free(seconds);
    resnext_free(model);
    be->destroy(be);
    dist_finalize();
    return 0;
}
