/*
 * The stage-5 sequence model through the engine (common/nn/seqmodel.h) at given shapes:
 *   lstm_bench train|eval EMB HIDDEN BATCH STEPS ITERS
 * train: forward, loss, backward and Adam per iteration; eval: forward only. Every series has
 * STEPS slices. After one warm-up iteration, ITERS are timed; prints one line
 *   engine MODE slices_per_s=R peak_rss_mib=M forward_s=F backward_s=B adam_s=A
 * (per-phase seconds per iteration, for profiling).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "check.h"
#include "log.h"
#include "nn/nn.h"
#include "nn/seqmodel.h"

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: lstm_bench train|eval EMB HIDDEN BATCH STEPS ITERS\n");
        return 2;
    }
    int training = argv[1][0] == 't';
    int emb = atoi(argv[2]), hidden = atoi(argv[3]), batch = atoi(argv[4]);
    int steps = atoi(argv[5]), iters = atoi(argv[6]);
    log_init("lstm_bench", LOG_WARN);

    nn_backend_t *be = nn_backend_create("cpu");
    char err[256];
    seqmodel_t *m = seqmodel_create(be, emb, hidden, 0, err, sizeof err);
    if (!m)
        die(2, "%s", err);
    nn_rng_t rng;
    nn_rng_seed(&rng, 1);
    seqmodel_init_default(m, &rng);
    if (training)
        nn_params_alloc_adam(&m->ps);

    size_t rows = (size_t)batch * steps;
    float *embeddings = xmalloc(rows * emb * sizeof(float));
    float *labels = xmalloc(rows * SEQ_OUTPUTS * sizeof(float));
    int *lengths = xmalloc((size_t)batch * sizeof(int));
    for (size_t i = 0; i < rows * emb; i++)
        embeddings[i] = (float)nn_rng_uniform(&rng);
    for (size_t i = 0; i < rows * SEQ_OUTPUTS; i++)
        labels[i] = nn_rng_uniform(&rng) < 0.1 ? 1.0f : 0.0f;
    for (int b = 0; b < batch; b++)
        lengths[b] = steps;

    nn_adam_t adam = {1e-5, 0.9, 0.999, 1e-8, 0.0};
    double phase[3] = {0}, start = 0;
    for (int it = 0; it <= iters; it++) {
        if (it == 1) {
            start = time_now();
            phase[0] = phase[1] = phase[2] = 0;
        }
        double t0 = time_now();
        seqmodel_forward(m, embeddings, batch, steps, lengths);
        double t1 = time_now();
        phase[0] += t1 - t0;
        if (!training)
            continue;
        seqmodel_loss(m, labels, 1);
        seqmodel_backward(m);
        double t2 = time_now();
        nn_paramset_t *ps = &m->ps;
        be->adam_step(be, &adam, it + 1, ps->params, ps->grads, ps->adam_m, ps->adam_v,
                      ps->param_count);
        phase[1] += t2 - t1;
        phase[2] += time_now() - t2;
    }
    double seconds = time_now() - start;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("engine %s slices_per_s=%.2f peak_rss_mib=%.0f forward_s=%.3f backward_s=%.3f "
           "adam_s=%.3f\n",
           training ? "train" : "eval", (double)rows * iters / seconds, ru.ru_maxrss / 1024.0,
           phase[0] / iters, phase[1] / iters, phase[2] / iters);
    seqmodel_destroy(m);
    be->destroy(be);
    free(embeddings);
    free(labels);
    free(lengths);
    return 0;
}
