/*
 * The stage-5 sequence model through the engine (common/nn/seqmodel.h) at given shapes:
 *   lstm_bench train|eval EMB HIDDEN BATCH STEPS ITERS [fp32|bf16]
 * train: forward, loss, backward and Adam per iteration; eval: forward only. Every series has
 * STEPS slices. After one warm-up iteration, ITERS are timed; prints one line
 *   engine MODE slices_per_s=R peak_rss_mib=M forward_s=F backward_s=B adam_s=A precision=P
 *   load=L
 * (per-phase seconds per iteration, for profiling).
 *
 *   lstm_bench products BATCH HIDDEN REPS
 * The LSTM's products alone, each call timed REPS times after a warm-up call, the median in
 * ms: the recurrence's forward (BATCH x 4H x H against W_hh) and backward (BATCH x H x 4H) in
 * fp32 (oneDNN sgemm) and bf16 (nn/bf16gemm.h), the bf16 copies' conversions, then lstm1's
 * input projection (BATCH x 40 rows x 4H x 3H) and its weight gradient (4H x 3H x the rows)
 * as sgemm and as the bf16 matmul, and the projection as the swapped sgemm of
 * nn_sgemm_bias_nt (W_ih x^T, then transposed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "check.h"
#include "log.h"
#include "nn/bf16gemm.h"
#include "nn/nn.h"
#include "nn/seqmodel.h"

enum { MAX_REPS = 1000 };

/* The 1-minute load average (the machine is shared: numbers go with it). */
static double load_average(void)
{
    double load = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &load) != 1)
            load = -1.0;
        fclose(f);
    }
    return load;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { PRODUCT_STEPS = 40 }; /* the method's series length, for the compute-bound rows */

typedef struct {
    long batch, hidden;
    float *w, *w_t, *h, *dg, *out;
    nn_bf16_t *w_bf16, *w_packed, *h_bf16, *dg_bf16;
    float *x, *w_ih, *gates, *scratch;   /* [rows][3H], [4H][3H], [rows][4H] twice */
    nn_bf16_t *x_bf16, *w_ih_bf16, *gates_bf16;
} products_t;

/* Median milliseconds of reps calls of one product (after one untimed call). */
static double median_ms(products_t *p, int which, int reps)
{
    double times[MAX_REPS];
    const long b = p->batch, H = p->hidden, G4 = 4 * H, rows = b * PRODUCT_STEPS, in = 3 * H;
    for (int r = 0; r <= reps; r++) {
        double t0 = time_now();
        switch (which) {
        case 0:
            nn_sgemm('N', 'T', b, G4, H, 1.0f, p->h, H, p->w, H, 0.0f, p->out, G4);
            break;
        case 1:
            nn_sgemm('N', 'N', b, G4, H, 1.0f, p->h, H, p->w_t, G4, 0.0f, p->out, G4);
            break;
        case 2:
            nn_bf16_round_rows(p->h, b, H, H, p->h_bf16, H);
            nn_bf16_gemm_packed(b, G4, H, p->h_bf16, H, p->w_bf16, 0.0f, p->out, G4);
            break;
        case 3:
            nn_sgemm('N', 'N', b, H, G4, 1.0f, p->dg, G4, p->w, H, 0.0f, p->out, H);
            break;
        case 4:
            nn_bf16_round_rows(p->dg, b, G4, G4, p->dg_bf16, G4);
            nn_bf16_gemm_packed(b, H, G4, p->dg_bf16, G4, p->w_packed, 0.0f, p->out, H);
            break;
        case 5:
            nn_bf16_pack(p->w, H, 1, H, G4, p->w_bf16);
            break;
        case 6:
            nn_bf16_pack(p->w, H, 0, G4, H, p->w_packed);
            break;
        case 7:
            nn_sgemm('N', 'T', rows, G4, in, 1.0f, p->x, in, p->w_ih, in, 0.0f, p->gates, G4);
            break;
        case 8:
            nn_bf16_round_rows(p->x, rows, in, in, p->x_bf16, in);
            nn_bf16_matmul('N', 'T', rows, G4, in, p->x_bf16, in, p->w_ih_bf16, in, NULL, 0,
                           p->gates, G4);
            break;
        case 9:
            nn_sgemm('T', 'N', G4, in, rows, 1.0f, p->gates, G4, p->x, in, 0.0f, p->w_ih, in);
            break;
        case 10:
            nn_bf16_round_rows(p->gates, rows, G4, G4, p->gates_bf16, G4);
            nn_bf16_matmul('T', 'N', G4, in, rows, p->gates_bf16, G4, p->x_bf16, in, NULL, 0,
                           p->w_ih, in);
            break;
        default:
            nn_sgemm_bias_nt(rows, G4, in, p->x, in, p->w_ih, in, p->dg, p->gates, G4,
                             p->scratch);
            break;
        }
        if (r > 0)
            times[r - 1] = (time_now() - t0) * 1e3;
    }
    qsort(times, (size_t)reps, sizeof(double), by_value);
    return times[reps / 2];
}

static int products(long batch, long hidden, int reps)
{
    const long G4 = 4 * hidden;
    const size_t weights = (size_t)G4 * hidden;
    products_t p = {.batch = batch, .hidden = hidden};
    p.w = xmalloc(weights * sizeof(float));
    p.w_t = xmalloc(weights * sizeof(float));
    p.h = xmalloc((size_t)batch * G4 * sizeof(float));
    p.dg = xmalloc((size_t)batch * G4 * sizeof(float));
    p.out = xmalloc((size_t)batch * G4 * sizeof(float));
    p.w_bf16 = xmalloc(nn_bf16_packed_count(hidden, G4) * sizeof(nn_bf16_t));
    p.w_packed = xmalloc(nn_bf16_packed_count(G4, hidden) * sizeof(nn_bf16_t));
    p.h_bf16 = xmalloc((size_t)batch * G4 * sizeof(nn_bf16_t));
    p.dg_bf16 = xmalloc((size_t)batch * G4 * sizeof(nn_bf16_t));
    const size_t rows = (size_t)batch * PRODUCT_STEPS, in = 3 * (size_t)hidden;
    p.x = xmalloc(rows * in * sizeof(float));
    p.w_ih = xmalloc((size_t)G4 * in * sizeof(float));
    p.gates = xmalloc(rows * G4 * sizeof(float));
    p.scratch = xmalloc(rows * G4 * sizeof(float));
    p.x_bf16 = xmalloc(rows * in * sizeof(nn_bf16_t));
    p.w_ih_bf16 = xmalloc((size_t)G4 * in * sizeof(nn_bf16_t));
    p.gates_bf16 = xmalloc(rows * G4 * sizeof(nn_bf16_t));
    nn_fill_hashed(p.x, rows * in, 5, 1.0f, 0.0f);
    nn_fill_hashed(p.w_ih, (size_t)G4 * in, 6, 0.02f, 0.0f);
    nn_fill_hashed(p.w, weights, 1, 0.02f, 0.0f);
    nn_fill_hashed(p.w_t, weights, 2, 0.02f, 0.0f);
    nn_fill_hashed(p.h, (size_t)batch * G4, 3, 1.0f, 0.0f);
    nn_fill_hashed(p.dg, (size_t)batch * G4, 4, 1.0f, 0.0f);
    if (reps > MAX_REPS)
        reps = MAX_REPS;

    static const char *const names[] = {
        "forward fp32 sgemm (W_hh)",   "forward fp32 sgemm (W_hh^T)", "forward bf16 kernel",
        "backward fp32 sgemm",         "backward bf16 kernel",        "pack W_hh^T (forward)",
        "pack W_hh (backward)",        "input projection sgemm",      "input projection bf16",
        "dW_ih sgemm",                 "dW_ih bf16",                  "input projection swapped",
    };
    int have_bf16 = nn_bf16_available();
    printf("products batch %ld hidden %ld: median of %d calls, load %.2f\n", batch, hidden,
           reps, load_average());
    if (have_bf16)
        nn_bf16_round_rows(p.w_ih, G4, (long)in, (long)in, p.w_ih_bf16, (long)in);
    for (int which = 0; which < 12; which++) {
        if (!have_bf16 && (which == 2 || (which >= 4 && which % 2 == 0) || which == 5))
            continue;
        double ms = median_ms(&p, which, which >= 7 ? (reps + 3) / 4 : reps);
        if (which >= 7) {
            double flop = 2.0 * rows * G4 * in;
            printf("  %-28s %8.3f ms  %6.1f GFLOP/s\n", names[which], ms, flop / (ms * 1e6));
            continue;
        }
        double bytes = which >= 5 ? weights * 6.0 : which == 2 || which == 4 ? weights * 2.0
                                                                             : weights * 4.0;
        printf("  %-28s %8.3f ms  %6.1f GB/s of weights\n", names[which], ms,
               bytes / (ms * 1e6));
    }
    free(p.w);
    free(p.w_t);
    free(p.h);
    free(p.dg);
    free(p.out);
    free(p.w_bf16);
    free(p.w_packed);
    free(p.h_bf16);
    free(p.dg_bf16);
    free(p.x);
    free(p.w_ih);
    free(p.gates);
    free(p.scratch);
    free(p.x_bf16);
    free(p.w_ih_bf16);
    free(p.gates_bf16);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "products") == 0)
        return products(atol(argv[2]), atol(argv[3]), atoi(argv[4]));
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: lstm_bench train|eval EMB HIDDEN BATCH STEPS ITERS [fp32|bf16]"
                        "\n       lstm_bench products BATCH HIDDEN REPS\n");
        return 2;
    }
    int training = argv[1][0] == 't';
    int emb = atoi(argv[2]), hidden = atoi(argv[3]), batch = atoi(argv[4]);
    int steps = atoi(argv[5]), iters = atoi(argv[6]);
    int bf16 = argc == 8 && strcmp(argv[7], "bf16") == 0;
    log_init("lstm_bench", LOG_WARN);

    nn_backend_t *be = nn_backend_create("cpu");
    char err[256];
    seqmodel_t *m = seqmodel_create(be, emb, hidden, 0, err, sizeof err);
    if (!m)
        die(2, "%s", err);
    int precision = seqmodel_set_precision(m, bf16 ? NN_PRECISION_BF16 : NN_PRECISION_FP32);
    nn_rng_t rng;
    nn_rng_seed(&rng, 1);
    seqmodel_init_default(m, &rng);
    if (training)
        nn_params_alloc_adam(&m->ps);
    else
        seqmodel_set_inference(m, 1);

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
           "adam_s=%.3f precision=%s load=%.2f\n",
           training ? "train" : "eval", (double)rows * iters / seconds, ru.ru_maxrss / 1024.0,
           phase[0] / iters, phase[1] / iters, phase[2] / iters,
           precision == NN_PRECISION_BF16 ? "bf16" : "fp32", load_average());
    seqmodel_destroy(m);
    be->destroy(be);
    free(embeddings);
    free(labels);
    free(lengths);
    return 0;
}
