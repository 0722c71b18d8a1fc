/*
 * GPU checks of the NN engine, run by tests/gpu/run.sh on a machine with a GPU:
 *   --ops           every op of the CUDA backend against the CPU backend, same inputs
 *   --model NAME    a ResNeXt's training forward, backward and eval forward, GPU vs CPU
 *   --train STEPS   a short training run (tiny model, Adam) on both; the losses compare
 *                   (--precision bf16 or fp16: the GPU in mixed precision, fp16 with dynamic
 *                   loss scaling, against the CPU in fp32)
 *   --bench NAME    images/s of training and eval steps on the GPU
 *   --seq           the sequence model (seqmodel.h) on the GPU's seq_* ops against the CPU:
 *                   logits, loss, every gradient in both paddings, fp32 and bf16, 5 Adam steps
 *   --seq-bench     its training and inference slices/s at the method's shapes
 * and one check that needs no GPU (tests/t_cuda_build.sh):
 *   --host-math     the CUDA kernels' element arithmetic (nn/math_cuda.h) against the host
 *                   loss and Adam of host_ops.c, compiled here for the CPU; the 16-bit
 *                   rounding against checkpoint.h's bf16 and the compiler's _Float16, the
 *                   NHWC index map, the overflow check, index math past 2^32 elements;
 *                   the sequence model's kernels (seq_math.h) replayed on the host against
 *                   lstm.c and seqmodel.c
 * Errors are normalised: max |gpu - cpu| / max |cpu| per output, against a stated limit.
 * A device that cannot start exits 2 (EXIT_USAGE) with the reason, as the programs do.
 */
#include "check.h"
#include "exitcodes.h"
#include "log.h"
#include "opt.h"
#include "nn/backend_cuda.h"
#include "nn/checkpoint.h"
#include "nn/lossscale.h"
#include "nn/math_cuda.h"
#include "nn/mixed.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/resnext.h"
#include "nn/seq_math.h"
#include "nn/seqmodel.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

/* ---- comparison ------------------------------------------------------------------------- */

/* max |got - want| / max |want| (absolute when want is all zero); NaN anywhere gives inf. */
static double normalised_error(const float *got, const float *want, size_t count)
{
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(got[i]) || !isfinite(want[i]))
            return INFINITY;
        double d = fabs((double)got[i] - want[i]);
        diff = d > diff ? d : diff;
        scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    }
    return scale > 0.0 ? diff / scale : diff;
}

/* Same float, NaN matching any NaN (payloads differ: the GPU returns its
 * canonical NaN, C does not specify one). */
static int same_float(float a, float b)
{
    if (a != a || b != b)
        return a != a && b != b;
    return memcmp(&a, &b, sizeof a) == 0;
}

static void report(const char *what, double err, double limit)
{
    int ok = err <= limit;
    printf("%-4s %-44s err %9.2e  limit %7.1e\n", ok ? "ok" : "FAIL", what, err, limit);
    failures += !ok;
}

/* ---- backend memory ---------------------------------------------------------------------- */

static float *upload(nn_backend_t *be, const float *host, size_t count)
{
    float *dev = be->alloc(be, count * sizeof(float));
    be->to_device(be, dev, host, count * sizeof(float));
    return dev;
}

static float *download(nn_backend_t *be, const float *dev, size_t count)
{
    float *host = xmalloc(count * sizeof(float));
    be->to_host(be, host, dev, count * sizeof(float));
    return host;
}

static float *hashed(size_t count, const char *name, float scale, float offset)
{
    float *v = xmalloc(count * sizeof(float));
    nn_fill_hashed(v, count, nn_name_seed(name), scale, offset);
    return v;
}

static void release_all(nn_backend_t *be, float *const *bufs, size_t count)
{
    for (size_t i = 0; i < count; i++)
        be->release(be, bufs[i]);
}

static void free_all(float *const *bufs, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(bufs[i]);
}

/* Release (free) every buffer of a list. */
#define LIST_OF(...)                                                                          \
    (float *const[]){__VA_ARGS__}, sizeof((float *[]){__VA_ARGS__}) / sizeof(float *)
#define RELEASE_ALL(be, ...) release_all((be), LIST_OF(__VA_ARGS__))
#define FREE_ALL(...) free_all(LIST_OF(__VA_ARGS__))

/* Up to this many outputs per op run; each is downloaded to host memory. */
#define MAX_OUTS 12

typedef struct {
    int count;
    const char *name[MAX_OUTS];
    float *value[MAX_OUTS];
    size_t size[MAX_OUTS];
} outputs_t;

static void keep(outputs_t *o, nn_backend_t *be, const char *name, const float *dev,
                 size_t count)
{
    o->name[o->count] = name;
    o->value[o->count] = download(be, dev, count);
    o->size[o->count] = count;
    o->count++;
}

static void outputs_free(outputs_t *o)
{
    for (int i = 0; i < o->count; i++)
        free(o->value[i]);
}

typedef void (*op_run_t)(nn_backend_t *be, const void *arg, outputs_t *out);

/* Run an op on both backends and compare each output. */
static void check_op(nn_backend_t *cpu, nn_backend_t *gpu, const char *what, op_run_t run,
                     const void *arg, double limit)
{
    outputs_t want = {0}, got = {0};
    run(cpu, arg, &want);
    run(gpu, arg, &got);
    for (int i = 0; i < want.count; i++) {
        char label[160];
        snprintf(label, sizeof label, "%s: %s", what, want.name[i]);
        report(label, normalised_error(got.value[i], want.value[i], want.size[i]), limit);
    }
    outputs_free(&want);
    outputs_free(&got);
}

static int is_cpu(const nn_backend_t *be)
{
    return strcmp(be->name, "cpu") == 0;
}

/*
 * A GPU in 16-bit against the CPU in fp32: each output within `limit`, and, so that a
 * silent fall back to fp32 (cuDNN without a 16-bit algorithm for the shape) does not pass
 * for mixed precision, each one's error at least limit / 100 (the formats' expected error
 * is about limit / 3; fp32 sums differ by about 1e-6). must_be_16bit 0: the floor is only
 * noted, for shapes where cuDNN may lack 16-bit kernels (few channels per group).
 */
static void check_op_mixed(nn_backend_t *cpu, nn_backend_t *gpu, const char *what,
                           op_run_t run, const void *arg, double limit, int must_be_16bit)
{
    outputs_t want = {0}, got = {0};
    run(cpu, arg, &want);
    run(gpu, arg, &got);
    double least = INFINITY, floor = limit / 100.0;
    for (int i = 0; i < want.count; i++) {
        char label[160];
        snprintf(label, sizeof label, "%s: %s", what, want.name[i]);
        double err = normalised_error(got.value[i], want.value[i], want.size[i]);
        report(label, err, limit);
        least = err < least ? err : least;
    }
    if (is_cpu(gpu)) {
        /* --device cpu: both sides compute in fp32 (the CPU has no fp16); nothing to see. */
    } else if (must_be_16bit) {
        int ok = least >= floor;
        printf("%-4s %-44s err %9.2e  floor %7.1e\n", ok ? "ok" : "FAIL",
               "  computed in 16 bits (not fp32)", least, floor);
        failures += !ok;
    } else if (least < floor) {
        printf("note: %s: smallest error %.2e is below %.1e: computed in fp32 (cuDNN has no "
               "16-bit algorithm for this shape?)\n", what, least, floor);
    }
    outputs_free(&want);
    outputs_free(&got);
}

/* A plain NCHW tensor of hashed values in backend memory. */
static nn_tensor_t tensor_hashed(nn_backend_t *be, int n, int c, int h, int w, const char *name,
                                 float scale, float offset)
{
    nn_tensor_t t = {NULL, n, c, h, w, NN_LAYOUT_NCHW};
    float *host = hashed(nn_numel(&t), name, scale, offset);
    t.data = upload(be, host, nn_numel(&t));
    free(host);
    return t;
}

static nn_tensor_t tensor_zero(nn_backend_t *be, int n, int c, int h, int w)
{
    nn_tensor_t t = {NULL, n, c, h, w, NN_LAYOUT_NCHW};
    t.data = be->alloc(be, nn_numel(&t) * sizeof(float));
    return t;
}

/* ---- the ops ----------------------------------------------------------------------------- */

typedef struct {
    int n, in_ch, out_ch, size, kernel, stride, pad, groups, precision;
} conv_case_t;

static int out_size(int in, int kernel, int stride, int pad)
{
    return (in + 2 * pad - kernel) / stride + 1;
}

/* Hashed weights of a convolution (variance 1 / fan-in) in backend memory; *count values. */
static float *conv_weights(nn_backend_t *be, const conv_case_t *cc, const char *name,
                           size_t *count)
{
    size_t fan_in = (size_t)(cc->in_ch / cc->groups) * cc->kernel * cc->kernel;
    *count = fan_in * cc->out_ch;
    float *host = hashed(*count, name, sqrtf(3.0f / fan_in), 0);
    float *dev = upload(be, host, *count);
    free(host);
    return dev;
}

/*
 * Forward, both backwards. With `recache` the weights are first used, then overwritten
 * through to_device (a new weights generation) before the forward that is kept, so that a
 * stale 16-bit copy of the first weights would show.
 */
static void conv_pass(nn_backend_t *be, const conv_case_t *cc, int precision, int recache,
                      outputs_t *out)
{
    nn_conv_t op = {.in_ch = cc->in_ch, .out_ch = cc->out_ch, .kernel = cc->kernel,
                    .stride = cc->stride, .pad = cc->pad, .groups = cc->groups,
                    .cache_weights = recache, .precision = precision};
    int oh = out_size(cc->size, cc->kernel, cc->stride, cc->pad);
    size_t wcount;
    nn_tensor_t x = tensor_hashed(be, cc->n, cc->in_ch, cc->size, cc->size, "conv.x", 1, 0);
    nn_tensor_t dy = tensor_hashed(be, cc->n, cc->out_ch, oh, oh, "conv.dy", 1, 0);
    float *w = conv_weights(be, cc, recache ? "conv.w0" : "conv.w", &wcount);
    nn_tensor_t y = tensor_zero(be, cc->n, cc->out_ch, oh, oh);
    nn_tensor_t dx = tensor_zero(be, cc->n, cc->in_ch, cc->size, cc->size);
    float *dw = be->alloc(be, wcount * sizeof(float));

    if (recache) {
        be->conv_forward(be, &op, &x, w, &y);
        float *fresh = conv_weights(be, cc, "conv.w", &wcount);
        float *host = download(be, fresh, wcount);
        be->to_device(be, w, host, wcount * sizeof(float));
        free(host);
        be->release(be, fresh);
    }
    be->conv_forward(be, &op, &x, w, &y);
    be->conv_backward_data(be, &op, &dy, w, &dx);
    be->conv_backward_weights(be, &op, &x, &dy, dw);
    keep(out, be, recache ? "forward (new weights)" : "forward", y.data, nn_numel(&y));
    keep(out, be, "backward data", dx.data, nn_numel(&dx));
    keep(out, be, "backward weights", dw, wcount);

    be->release_plan(be, &op.plan);
    RELEASE_ALL(be, x.data, dy.data, w, y.data, dx.data, dw);
}

static void run_conv(nn_backend_t *be, const void *arg, outputs_t *out)
{
    const conv_case_t *cc = arg;
    conv_pass(be, cc, cc->precision, 0, out);
}

/* The GPU in the case's 16-bit precision, the CPU in fp32: mixed precision's own error. */
static void run_conv_mixed(nn_backend_t *be, const void *arg, outputs_t *out)
{
    const conv_case_t *cc = arg;
    conv_pass(be, cc, is_cpu(be) ? NN_PRECISION_FP32 : cc->precision, 1, out);
}

typedef struct {
    int n, ch, size, relu;
} bn_case_t;

/* Per-channel parameters: gamma ~1, beta, running mean ~0, running var ~1. */
static float *channel_values(nn_backend_t *be, int ch, const char *name, float scale,
                             float offset)
{
    float *host = hashed(ch, name, scale, offset);
    float *dev = upload(be, host, ch);
    free(host);
    return dev;
}

static void run_bnorm_train(nn_backend_t *be, const void *arg, outputs_t *out)
{
    const bn_case_t *bc = arg;
    nn_bnorm_t op = {bc->ch, 1e-5f, 0.1f, NULL};
    /* An offset and a spread per value, so that the mean matters to the variance. */
    nn_tensor_t x = tensor_hashed(be, bc->n, bc->ch, bc->size, bc->size, "bn.x", 2, 0.5f);
    nn_tensor_t dy = tensor_hashed(be, bc->n, bc->ch, bc->size, bc->size, "bn.dy", 1, 0);
    nn_tensor_t y = tensor_zero(be, bc->n, bc->ch, bc->size, bc->size);
    nn_tensor_t dx = tensor_zero(be, bc->n, bc->ch, bc->size, bc->size);
    float *gamma = channel_values(be, bc->ch, "bn.gamma", 0.1f, 1.0f);
    float *beta = channel_values(be, bc->ch, "bn.beta", 0.1f, 0.0f);
    float *rmean = channel_values(be, bc->ch, "bn.rmean", 0.1f, 0.0f);
    float *rvar = channel_values(be, bc->ch, "bn.rvar", 0.5f, 1.0f);
    float *smean = be->alloc(be, bc->ch * sizeof(float));
    float *svar = be->alloc(be, bc->ch * sizeof(float));
    float *dgamma = be->alloc(be, bc->ch * sizeof(float));
    float *dbeta = be->alloc(be, bc->ch * sizeof(float));

    if (bc->relu) {
        be->bnorm_relu_forward_train(be, &op, &x, gamma, beta, rmean, rvar, smean, svar, &y);
        be->bnorm_relu_backward(be, &op, &x, &dy, gamma, smean, svar, &dx, dgamma, dbeta);
    } else {
        be->bnorm_forward_train(be, &op, &x, gamma, beta, rmean, rvar, smean, svar, &y);
        be->bnorm_backward(be, &op, &x, &dy, gamma, smean, svar, &dx, dgamma, dbeta);
    }
    keep(out, be, "y", y.data, nn_numel(&y));
    keep(out, be, "batch mean", smean, bc->ch);
    keep(out, be, "batch var", svar, bc->ch);
    keep(out, be, "running mean", rmean, bc->ch);
    keep(out, be, "running var", rvar, bc->ch);
    keep(out, be, "dx", dx.data, nn_numel(&dx));
    keep(out, be, "dgamma", dgamma, bc->ch);
    keep(out, be, "dbeta", dbeta, bc->ch);

    /* Inference with the updated running statistics. */
    nn_tensor_t yi = tensor_zero(be, bc->n, bc->ch, bc->size, bc->size);
    be->bnorm_forward_infer(be, &op, &x, gamma, beta, rmean, rvar, &yi);
    keep(out, be, "inference y", yi.data, nn_numel(&yi));

    be->release_plan(be, &op.plan);
    RELEASE_ALL(be,  x.data, dy.data, y.data, dx.data, yi.data, gamma, beta, rmean, rvar, smean,
                svar, dgamma, dbeta);
}

typedef struct {
    conv_case_t conv;
    int residual, relu;
    int cpu_fp32; /* the CPU computes in fp32 whatever the case's precision */
} conv_bn_case_t;

static void run_conv_bn_infer(nn_backend_t *be, const void *arg, outputs_t *out)
{
    const conv_bn_case_t *cb = arg;
    const conv_case_t *cc = &cb->conv;
    nn_conv_t op = {.in_ch = cc->in_ch, .out_ch = cc->out_ch, .kernel = cc->kernel,
                    .stride = cc->stride, .pad = cc->pad, .groups = cc->groups,
                    .cache_weights = 1,
                    .precision = is_cpu(be) && cb->cpu_fp32 ? NN_PRECISION_FP32 : cc->precision};
    nn_bnorm_t bn = {cc->out_ch, 1e-5f, 0.1f, NULL};
    int oh = out_size(cc->size, cc->kernel, cc->stride, cc->pad);
    size_t wcount;
    nn_tensor_t x = tensor_hashed(be, cc->n, cc->in_ch, cc->size, cc->size, "cbn.x", 1, 0);
    nn_tensor_t res = tensor_hashed(be, cc->n, cc->out_ch, oh, oh, "cbn.res", 1, 0);
    float *w = conv_weights(be, cc, "cbn.w", &wcount);
    float *gamma = channel_values(be, cc->out_ch, "cbn.gamma", 0.1f, 1.0f);
    float *beta = channel_values(be, cc->out_ch, "cbn.beta", 0.1f, 0.0f);
    float *rmean = channel_values(be, cc->out_ch, "cbn.rmean", 0.1f, 0.0f);
    float *rvar = channel_values(be, cc->out_ch, "cbn.rvar", 0.5f, 1.0f);
    nn_tensor_t y = tensor_zero(be, cc->n, cc->out_ch, oh, oh);

    be->conv_bn_forward_infer(be, &op, &bn, &x, w, gamma, beta, rmean, rvar,
                              cb->residual ? &res : NULL, cb->relu, &y);
    keep(out, be, "y", y.data, nn_numel(&y));

    be->release_plan(be, &op.plan);
    be->release_plan(be, &bn.plan);
    RELEASE_ALL(be, x.data, res.data, w, gamma, beta, rmean, rvar, y.data);
}

typedef struct {
    int n, ch, size;
} shape_t;

/* relu, add, add + relu, max pool (3x3/2 pad 1, training), global average pool. */
static void run_elementwise(nn_backend_t *be, const void *arg, outputs_t *out)
{
    const shape_t *s = arg;
    nn_relu_t relu = {NULL};
    nn_pool_t pool = {3, 2, 1, NULL};
    int ph = out_size(s->size, 3, 2, 1);
    nn_tensor_t a = tensor_hashed(be, s->n, s->ch, s->size, s->size, "ew.a", 1, 0);
    nn_tensor_t b = tensor_hashed(be, s->n, s->ch, s->size, s->size, "ew.b", 1, 0);
    nn_tensor_t y = tensor_zero(be, s->n, s->ch, s->size, s->size);
    nn_tensor_t dx = tensor_zero(be, s->n, s->ch, s->size, s->size);

    be->relu_forward(be, &relu, &a, &y);
    be->relu_backward(be, &relu, &y, &b, &dx);
    keep(out, be, "relu forward", y.data, nn_numel(&y));
    keep(out, be, "relu backward", dx.data, nn_numel(&dx));
    be->add(be, &a, &b, &y);
    keep(out, be, "add", y.data, nn_numel(&y));
    be->add_relu(be, &a, &b, &y);
    keep(out, be, "add + relu", y.data, nn_numel(&y));

    nn_tensor_t py = tensor_zero(be, s->n, s->ch, ph, ph);
    nn_tensor_t pdy = tensor_hashed(be, s->n, s->ch, ph, ph, "ew.pdy", 1, 0);
    be->maxpool_forward(be, &pool, &a, &py, 1);
    be->maxpool_backward(be, &pool, &a, &py, &pdy, &dx);
    keep(out, be, "max pool forward", py.data, nn_numel(&py));
    keep(out, be, "max pool backward", dx.data, nn_numel(&dx));

    nn_tensor_t g = tensor_zero(be, s->n, s->ch, 1, 1);
    nn_tensor_t gdy = tensor_hashed(be, s->n, s->ch, 1, 1, "ew.gdy", 1, 0);
    be->avgpool_forward(be, &a, &g);
    be->avgpool_backward(be, &gdy, &dx);
    keep(out, be, "average pool forward", g.data, nn_numel(&g));
    keep(out, be, "average pool backward", dx.data, nn_numel(&dx));

    be->release_plan(be, &relu.plan);
    be->release_plan(be, &pool.plan);
    RELEASE_ALL(be, a.data, b.data, y.data, dx.data, py.data, pdy.data, g.data, gdy.data);
}

typedef struct {
    int rows, in, out;
} linear_case_t;

static void run_linear(nn_backend_t *be, const void *arg, outputs_t *out)
{
    const linear_case_t *lc = arg;
    nn_linear_t op = {lc->in, lc->out, NULL};
    nn_tensor_t x = tensor_hashed(be, lc->rows, lc->in, 1, 1, "lin.x", 1, 0);
    nn_tensor_t dy = tensor_hashed(be, lc->rows, lc->out, 1, 1, "lin.dy", 1, 0);
    float *host_w = hashed((size_t)lc->in * lc->out, "lin.w", sqrtf(3.0f / lc->in), 0);
    float *w = upload(be, host_w, (size_t)lc->in * lc->out);
    float *b = channel_values(be, lc->out, "lin.b", 0.1f, 0);
    nn_tensor_t y = tensor_zero(be, lc->rows, lc->out, 1, 1);
    nn_tensor_t dx = tensor_zero(be, lc->rows, lc->in, 1, 1);
    float *dw = be->alloc(be, (size_t)lc->in * lc->out * sizeof(float));
    float *db = be->alloc(be, lc->out * sizeof(float));

    be->linear_forward(be, &op, &x, w, b, &y);
    be->linear_backward(be, &op, &x, &dy, w, &dx, dw, db);
    keep(out, be, "forward", y.data, nn_numel(&y));
    keep(out, be, "dx", dx.data, nn_numel(&dx));
    keep(out, be, "dw", dw, (size_t)lc->in * lc->out);
    keep(out, be, "db", db, lc->out);

    be->release_plan(be, &op.plan);
    RELEASE_ALL(be, x.data, dy.data, w, b, y.data, dx.data, dw, db);
    free(host_w);
}

/* Logits over a wide range (saturated sigmoids included) and 0/1 labels. */
static void loss_inputs(int rows, float **logits, float **labels)
{
    *logits = hashed((size_t)rows * NN_LOSS_CLASSES, "loss.z", 30.0f, 0);
    *labels = hashed((size_t)rows * NN_LOSS_CLASSES, "loss.y", 0.5f, 0.5f);
    for (int i = 0; i < rows * NN_LOSS_CLASSES; i++)
        (*labels)[i] = (*labels)[i] >= 0.5f ? 1.0f : 0.0f;
}

static double loss_on_gpu_as_host; /* the loss of the last run_loss, for the report */

static void run_loss(nn_backend_t *be, const void *arg, outputs_t *out)
{
    int rows = *(const int *)arg;
    float *logits, *labels;
    loss_inputs(rows, &logits, &labels);
    size_t count = (size_t)rows * NN_LOSS_CLASSES;
    float *dz = upload(be, logits, count), *dl = upload(be, labels, count);
    float *dd = be->alloc(be, count * sizeof(float));
    loss_on_gpu_as_host = be->bce_loss(be, dz, dl, rows, dd);
    keep(out, be, "dlogits", dd, count);
    be->release(be, dz);
    be->release(be, dl);
    be->release(be, dd);
    free(logits);
    free(labels);
}

static void run_adam(nn_backend_t *be, const void *arg, outputs_t *out)
{
    size_t count = *(const size_t *)arg;
    float *w = hashed(count, "adam.w", 1, 0), *g = hashed(count, "adam.g", 1e-3f, 0);
    float *dw = upload(be, w, count), *dg = upload(be, g, count);
    float *m = be->alloc(be, count * sizeof(float)), *v = be->alloc(be, count * sizeof(float));
    nn_adam_t hp = {1e-3, 0.9, 0.999, 1e-8, 1e-4};
    for (int step = 1; step <= 3; step++)
        be->adam_step(be, &hp, step, dw, dg, m, v, count);
    keep(out, be, "weights after 3 steps", dw, count);
    keep(out, be, "first moment", m, count);
    keep(out, be, "second moment", v, count);
    RELEASE_ALL(be, dw, dg, m, v);
    free(w);
    free(g);
}

/*
 * Limits: fp32 results differ by summation order only (cuDNN's algorithms, double sums in
 * batch norm): 1e-5 of the output's scale. bf16 on both sides (the CPU's oneDNN, cuDNN):
 * the same rounded inputs, different sums, and a weight gradient the GPU rounds to bf16
 * (2^-9 of its value): 1e-2.
 * 16-bit on the GPU against fp32 on the CPU: rounding input and weights to p significant
 * bits costs each product a relative error of RMS sqrt(2) * 2^-p / sqrt(3), independent from
 * product to product, so an output's error is that fraction of its own RMS (the fp32 sums add
 * nothing systematic): 3.2e-3 for bf16 (p = 8), 4e-4 for fp16 (p = 11). The normalised error
 * is the largest one (about 4 RMS) over the largest output (about 3.5 RMS), plus the
 * output's own rounding (2^-(p+1): y, dx and dw all leave cuDNN in 16 bits): bf16 about
 * 6e-3, fp16 about 7e-4. Limits 2.5 times that: bf16 1.6e-2, fp16 2e-3 (the same 8x apart
 * as the two formats). check_op_mixed also wants at least limit / 100 (16-bit arithmetic
 * did run).
 */
#define LIMIT_FP32 1e-5
#define LIMIT_BF16_BOTH 1e-2
#define LIMIT_BF16_VS_FP32 1.6e-2
#define LIMIT_FP16_VS_FP32 2e-3

static double mixed_limit(int precision)
{
    return precision == NN_PRECISION_FP16 ? LIMIT_FP16_VS_FP32 : LIMIT_BF16_VS_FP32;
}

/*
 * scale_check_finite against the host arithmetic: the values bit for bit, and the flag. A
 * clean buffer follows the bad ones, so that a flag left set by an earlier call shows; the
 * bad values sit at the first, the middle and the last element (the grid-stride loop's
 * first and last passes).
 */
static void check_scale_finite(nn_backend_t *gpu)
{
    const size_t count = 3000017; /* past one pass of the grid (an H200: 132 x 32 x 256) */
    const float factor = 1.0f / 65536.0f;
    float *host = hashed(count, "scale.g", 3e4f, 0);
    float *want = xmalloc(count * sizeof(float));
    static const struct {
        const char *name;
        float value;
        int where; /* 0 first, 1 middle, 2 last; -1: none */
    } cases[] = {{"all finite", 0.0f, -1}, {"+inf in the middle", INFINITY, 1},
                 {"-inf last", -INFINITY, 2}, {"NaN first", NAN, 0},
                 {"all finite after overflows", 0.0f, -1}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t at = cases[k].where == 0 ? 0 : cases[k].where == 1 ? count / 2 : count - 1;
        float saved = host[at];
        if (cases[k].where >= 0)
            host[at] = cases[k].value;
        float *dev = upload(gpu, host, count);
        memcpy(want, host, count * sizeof(float));
        int want_ok = nn_scale_check_finite_host(want, count, factor);
        int got_ok = gpu->scale_check_finite(gpu, dev, count, factor);
        float *got = download(gpu, dev, count);
        int same = 1;
        for (size_t i = 0; i < count; i++)
            same &= same_float(got[i], want[i]);
        char label[96];
        snprintf(label, sizeof label, "loss scaling: unscale + check (%s)", cases[k].name);
        printf("     %s: finite %d (host %d), values %s\n", cases[k].name, got_ok, want_ok,
               same ? "same" : "differ");
        report(label, (got_ok != want_ok) + !same, 0.0);
        free(got);
        gpu->release(gpu, dev);
        host[at] = saved;
    }
    free(host);
    free(want);
}

/*
 * to_device_async: an upload must wait for the ops submitted before it that read its
 * buffer, later ops must see it, and the host buffer is free on return (overwritten here at
 * once). Large buffers and repeats make a missing wait likely to show.
 */
static void check_async_upload(nn_backend_t *gpu)
{
    const size_t count = (size_t)16 << 20;
    nn_tensor_t a = tensor_zero(gpu, 1, (int)count, 1, 1), doubled = a;
    doubled.data = gpu->alloc(gpu, count * sizeof(float));
    float *host = xmalloc(count * sizeof(float));
    int wrong = 0;
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < count; i++)
            host[i] = (float)(round * 7 + (int)(i % 1001));
        gpu->to_device_async(gpu, a.data, host, count * sizeof(float));
        for (size_t i = 0; i < count; i++)
            host[i] = -1.0f; /* staged: must not reach the device */
        gpu->add(gpu, &a, &a, &doubled);
        for (size_t i = 0; i < count; i++)
            host[i] = (float)(round * 7 + 1000 + (int)(i % 13));
        gpu->to_device_async(gpu, a.data, host, count * sizeof(float)); /* after the add */
        float *sum = download(gpu, doubled.data, count);
        float *now = download(gpu, a.data, count);
        for (size_t i = 0; i < count; i++) {
            wrong += sum[i] != 2.0f * (float)(round * 7 + (int)(i % 1001));
            wrong += now[i] != (float)(round * 7 + 1000 + (int)(i % 13));
        }
        free(sum);
        free(now);
    }
    printf("     async uploads: 8 of %zu MiB, %d wrong values\n", count * 4 >> 20, wrong);
    report("async upload: ordered with the ops around it", wrong, 0.0);

    /*
     * The staging slots' reuse: with the GPU kept busy (a few hundred adds, tens of ms), three
     * uploads in a row find their copies still waiting, so the third reuses the first's slot
     * before that copy ran unless it waits for it. Each destination must hold its own data.
     */
    const size_t small = (size_t)1 << 20;
    float *dest[3];
    for (int k = 0; k < 3; k++)
        dest[k] = gpu->alloc(gpu, small * sizeof(float));
    for (int busy = 0; busy < 400; busy++)
        gpu->add(gpu, &a, &a, &doubled);
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < small; i++)
            host[i] = (float)(k * 100000 + (int)(i % 4099));
        gpu->to_device_async(gpu, dest[k], host, small * sizeof(float));
    }
    int reuse_wrong = 0;
    for (int k = 0; k < 3; k++) {
        float *got = download(gpu, dest[k], small);
        for (size_t i = 0; i < small; i++)
            reuse_wrong += got[i] != (float)(k * 100000 + (int)(i % 4099));
        free(got);
        gpu->release(gpu, dest[k]);
    }
    printf("     3 uploads of %zu MiB behind a busy GPU: %d wrong values\n", small * 4 >> 20,
           reuse_wrong);
    report("async upload: a staging slot waits for its copy", reuse_wrong, 0.0);
    free(host);
    gpu->release(gpu, a.data);
    gpu->release(gpu, doubled.data);
}

static void check_ops(nn_backend_t *cpu, nn_backend_t *gpu)
{
    /* mixed 1: the GPU in the case's 16-bit precision (NHWC, cached weights) against the
     * CPU in fp32; 2: the same, and the GPU must have computed in 16 bits (8 channels per
     * group or more, which cuDNN's tensor-core kernels take); 0: both in the case's
     * precision. */
    static const struct {
        const char *name;
        conv_case_t c;
        int mixed;
    } convs[] = {
        {"conv 7x7/2 stem 3->16", {2, 3, 16, 37, 7, 2, 3, 1, NN_PRECISION_FP32}, 0},
        {"conv 1x1 32->64", {2, 32, 64, 14, 1, 1, 0, 1, NN_PRECISION_FP32}, 0},
        {"conv 1x1/2 32->64 (downsample)", {2, 32, 64, 14, 1, 2, 0, 1, NN_PRECISION_FP32}, 0},
        {"conv 3x3 grouped 64->64 g8", {2, 64, 64, 14, 3, 1, 1, 8, NN_PRECISION_FP32}, 0},
        {"conv 3x3/2 grouped 64->64 g32", {2, 64, 64, 15, 3, 2, 1, 32, NN_PRECISION_FP32}, 0},
        {"conv 3x3 grouped g8 (bf16 both)", {2, 64, 64, 14, 3, 1, 1, 8, NN_PRECISION_BF16}, 0},
        {"conv 1x1 32->64 (bf16 both)", {2, 32, 64, 14, 1, 1, 0, 1, NN_PRECISION_BF16}, 0},
        {"bf16 conv 7x7/2 stem 3->16 vs fp32", {2, 3, 16, 37, 7, 2, 3, 1, NN_PRECISION_BF16},
         1},
        {"bf16 conv 1x1/2 32->64 vs fp32", {2, 32, 64, 14, 1, 2, 0, 1, NN_PRECISION_BF16}, 2},
        {"bf16 conv 3x3 g32 64->64 vs fp32", {2, 64, 64, 15, 3, 2, 1, 32, NN_PRECISION_BF16},
         1},
        {"bf16 conv 3x3 g32 256->256 vs fp32", {2, 256, 256, 15, 3, 1, 1, 32,
                                                NN_PRECISION_BF16}, 2},
        {"fp16 conv 7x7/2 stem 3->16 vs fp32", {2, 3, 16, 37, 7, 2, 3, 1, NN_PRECISION_FP16},
         1},
        {"fp16 conv 1x1/2 32->64 vs fp32", {2, 32, 64, 14, 1, 2, 0, 1, NN_PRECISION_FP16}, 2},
        {"fp16 conv 3x3 g32 64->64 vs fp32", {2, 64, 64, 15, 3, 2, 1, 32, NN_PRECISION_FP16},
         1},
        {"fp16 conv 3x3 g32 256->256 vs fp32", {2, 256, 256, 15, 3, 1, 1, 32,
                                                NN_PRECISION_FP16}, 2},
    };
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) {
        int precision = convs[i].c.precision, mixed = convs[i].mixed;
        double limit = mixed ? mixed_limit(precision)
                       : precision == NN_PRECISION_FP32 ? LIMIT_FP32
                                                        : LIMIT_BF16_BOTH;
        if (mixed)
            check_op_mixed(cpu, gpu, convs[i].name, run_conv_mixed, &convs[i].c, limit,
                           mixed == 2);
        else
            check_op(cpu, gpu, convs[i].name, run_conv, &convs[i].c, limit);
    }
    conv_bn_case_t mixed_cbn[] = {
        {{2, 64, 64, 14, 3, 1, 1, 8, NN_PRECISION_BF16}, 1, 1, 1},
        {{2, 64, 64, 14, 3, 1, 1, 8, NN_PRECISION_FP16}, 1, 1, 1},
    };
    check_op_mixed(cpu, gpu, "bf16 grouped conv + bn + res + relu vs fp32", run_conv_bn_infer,
                   &mixed_cbn[0], LIMIT_BF16_VS_FP32, 1);
    check_op_mixed(cpu, gpu, "fp16 grouped conv + bn + res + relu vs fp32", run_conv_bn_infer,
                   &mixed_cbn[1], LIMIT_FP16_VS_FP32, 1);
    if (gpu->scale_check_finite)
        check_scale_finite(gpu);
    if (gpu->to_device_async)
        check_async_upload(gpu);

    bn_case_t bn = {3, 24, 11, 0}, bn_relu = {3, 24, 11, 1}, bn_big = {8, 8, 64, 1};
    check_op(cpu, gpu, "batch norm", run_bnorm_train, &bn, LIMIT_FP32);
    check_op(cpu, gpu, "batch norm + relu", run_bnorm_train, &bn_relu, LIMIT_FP32);
    check_op(cpu, gpu, "batch norm + relu 8x8x64x64", run_bnorm_train, &bn_big, LIMIT_FP32);

    conv_bn_case_t cbn[] = {
        {{2, 32, 64, 14, 1, 1, 0, 1, NN_PRECISION_FP32}, 1, 1, 0},
        {{2, 64, 64, 14, 3, 1, 1, 8, NN_PRECISION_FP32}, 0, 1, 0},
        {{2, 32, 64, 14, 1, 2, 0, 1, NN_PRECISION_FP32}, 0, 0, 0},
    };
    check_op(cpu, gpu, "conv + bn + residual + relu (infer)", run_conv_bn_infer, &cbn[0],
             LIMIT_FP32);
    check_op(cpu, gpu, "grouped conv + bn + relu (infer)", run_conv_bn_infer, &cbn[1],
             LIMIT_FP32);
    check_op(cpu, gpu, "conv/2 + bn (infer)", run_conv_bn_infer, &cbn[2], LIMIT_FP32);

    shape_t ew = {2, 16, 17};
    check_op(cpu, gpu, "elementwise", run_elementwise, &ew, LIMIT_FP32);
    linear_case_t lin = {5, 96, 6};
    check_op(cpu, gpu, "linear", run_linear, &lin, LIMIT_FP32);

    int rows = 37;
    /* exp and log1p of the GPU and of glibc may differ in the last bit of a double. */
    check_op(cpu, gpu, "loss", run_loss, &rows, 1e-6);
    double gpu_loss = loss_on_gpu_as_host;
    float *logits, *labels;
    loss_inputs(rows, &logits, &labels);
    double host_loss = nn_host_bce_loss(logits, labels, rows, NULL);
    report("loss: value vs nn_host_bce_loss", fabs(gpu_loss - host_loss) / fabs(host_loss),
           1e-12);
    free(logits);
    free(labels);

    /* Adam is the same float arithmetic in the same order: bit for bit. */
    size_t count = 100003;
    check_op(cpu, gpu, "adam", run_adam, &count, 0.0);
}

/* ---- models ------------------------------------------------------------------------------ */

typedef struct {
    nn_backend_t *be;
    resnext_t *m;
    nn_tensor_t x;
    float *labels;
} model_run_t;

static void model_start(model_run_t *r, nn_backend_t *be, const char *name, int batch,
                        int size)
{
    r->be = be;
    r->m = resnext_create(be, name, 6);
    nn_params_fill_hashed(&r->m->ps);
    be->weights_changed(be);
    r->x = tensor_hashed(be, batch, 3, size, size, "model.x", 1, 0);
    float *labels = xmalloc((size_t)batch * 6 * sizeof(float));
    for (int i = 0; i < batch * 6; i++)
        labels[i] = (float)(i % 3 == 0);
    r->labels = upload(be, labels, (size_t)batch * 6);
    free(labels);
}

static void model_end(model_run_t *r)
{
    r->be->release(r->be, r->x.data);
    r->be->release(r->be, r->labels);
    resnext_free(r->m);
}

/* Worst normalised error over a slab's tensors (each against its own scale). */
static double worst_entry(const nn_paramset_t *ps, const float *got, const float *want,
                          nn_entry_kind_t kind, const char **where)
{
    double worst = 0.0;
    for (size_t i = 0; i < ps->n_entries; i++) {
        const nn_entry_t *e = &ps->entries[i];
        if (e->kind != kind)
            continue;
        double err = normalised_error(got + e->offset, want + e->offset, e->count);
        if (err >= worst) {
            worst = err;
            *where = e->name;
        }
    }
    return worst;
}

static void check_model(nn_backend_t *cpu, nn_backend_t *gpu, const char *name, int batch,
                        int size, double limit_forward, double limit_grads)
{
    model_run_t runs[2];
    model_start(&runs[0], cpu, name, batch, size);
    model_start(&runs[1], gpu, name, batch, size);
    float *logits[2], *embedding[2], *grads[2], *buffers[2], *eval[2];
    double loss[2];
    size_t n_params = runs[0].m->ps.param_count, n_buffers = runs[0].m->ps.buffer_count;

    for (int k = 0; k < 2; k++) {
        model_run_t *r = &runs[k];
        resnext_forward(r->m, &r->x, 1);
        loss[k] = r->be->bce_loss(r->be, r->m->logits.data, r->labels, batch,
                                  r->m->dlogits.data);
        resnext_backward(r->m, r->m->dlogits.data);
        logits[k] = download(r->be, r->m->logits.data, (size_t)batch * 6);
        embedding[k] = download(r->be, r->m->embedding.data, nn_numel(&r->m->embedding));
        grads[k] = download(r->be, r->m->ps.grads, n_params);
        buffers[k] = download(r->be, r->m->ps.buffers, n_buffers);
        resnext_forward(r->m, &r->x, 0);
        eval[k] = download(r->be, r->m->logits.data, (size_t)batch * 6);
    }

    char label[160];
    const char *where = "";
    snprintf(label, sizeof label, "%s %dpx b%d: train logits", name, size, batch);
    report(label, normalised_error(logits[1], logits[0], (size_t)batch * 6), limit_forward);
    snprintf(label, sizeof label, "%s %dpx b%d: train embedding", name, size, batch);
    report(label, normalised_error(embedding[1], embedding[0], nn_numel(&runs[0].m->embedding)),
           limit_forward);
    snprintf(label, sizeof label, "%s %dpx b%d: loss", name, size, batch);
    report(label, fabs(loss[1] - loss[0]) / fabs(loss[0]), limit_forward);
    double err = worst_entry(&runs[0].m->ps, grads[1], grads[0], NN_ENTRY_PARAM, &where);
    snprintf(label, sizeof label, "%s: gradients (worst: %.40s)", name, where);
    report(label, err, limit_grads);
    err = worst_entry(&runs[0].m->ps, buffers[1], buffers[0], NN_ENTRY_BUFFER, &where);
    snprintf(label, sizeof label, "%s: running stats (worst: %.40s)", name, where);
    report(label, err, limit_forward);
    snprintf(label, sizeof label, "%s %dpx b%d: eval logits", name, size, batch);
    report(label, normalised_error(eval[1], eval[0], (size_t)batch * 6), limit_forward);

    for (int k = 0; k < 2; k++) {
        free(logits[k]);
        free(embedding[k]);
        free(grads[k]);
        free(buffers[k]);
        free(eval[k]);
        model_end(&runs[k]);
    }
}

/*
 * A few Adam steps of the tiny model on fixed data; the loss of every step compares. The GPU
 * computes in `precision` ("fp32", "bf16", "fp16"), the CPU in fp32; fp16 scales the loss
 * gradient with nn/lossscale.h as cnntrain does, and a step it skips (overflow) is skipped on
 * the CPU too, so that both stay on the same path.
 */
static void check_training(nn_backend_t *cpu, nn_backend_t *gpu, int steps, double limit,
                           const char *precision)
{
    const int batch = 4, size = 64;
    model_run_t runs[2];
    model_start(&runs[0], cpu, "tiny", batch, size);
    model_start(&runs[1], gpu, "tiny", batch, size);
    resnext_set_precision(runs[1].m, nn_mixed_precision_setup(gpu, precision, "--precision"));
    int scaling = strcmp(precision, "fp16") == 0;
    nn_lossscale_t scaler;
    nn_lossscale_init(&scaler);
    nn_adam_t hp = {1e-3, 0.9, 0.999, 1e-8, 1e-4};
    double worst = 0.0, first = 0.0, last[2] = {0, 0};

    for (int k = 0; k < 2; k++)
        nn_params_alloc_adam(&runs[k].m->ps);
    for (int step = 1; step <= steps; step++) {
        double loss[2];
        int take = 1;
        for (int k = 1; k >= 0; k--) { /* the GPU first: it decides a skip */
            model_run_t *r = &runs[k];
            nn_paramset_t *ps = &r->m->ps;
            resnext_forward(r->m, &r->x, 1);
            float *dlogits = r->m->dlogits.data;
            loss[k] = r->be->bce_loss(r->be, r->m->logits.data, r->labels, batch, dlogits);
            if (k == 1 && scaling)
                r->be->scale_check_finite(r->be, dlogits, (size_t)batch * 6, scaler.scale);
            resnext_backward(r->m, dlogits);
            if (k == 1 && scaling)
                take = nn_lossscale_unscale(&scaler, r->be, ps->grads, ps->param_count);
            if (take)
                r->be->adam_step(r->be, &hp, step, ps->params, ps->grads, ps->adam_m,
                                 ps->adam_v, ps->param_count);
            last[k] = loss[k];
        }
        if (step == 1)
            first = loss[0];
        double err = fabs(loss[1] - loss[0]) / fabs(loss[0]);
        worst = err > worst ? err : worst;
    }
    printf("     training tiny %dpx b%d, %d Adam steps, gpu %s: loss %.6f -> cpu %.6f, "
           "gpu %.6f\n",
           size, batch, steps, precision, first, last[0], last[1]);
    if (scaling)
        printf("     loss scale %g, %lld step(s) skipped for overflow\n", scaler.scale,
               (long long)scaler.skipped_steps);
    char label[96];
    snprintf(label, sizeof label, "training: loss per step, gpu %s vs cpu fp32", precision);
    report(label, worst, limit);
    if (strcmp(precision, "fp32") != 0)
        report("training: the gpu's loss fell", !(last[1] < first), 0.0);
    if (!(last[0] < first))
        printf("note: the loss did not fall over %d steps\n", steps);
    model_end(&runs[0]);
    model_end(&runs[1]);
}

/* ---- the sequence model ---------------------------------------------------------------- */

/* The checks' sizes: embeddings wider than the hidden size (the skip takes E[:, :H]),
 * series of several lengths front-padded to 7 steps, one of a single slice. */
enum { SEQ_EMB = 24, SEQ_HIDDEN = 16, SEQ_BATCH = 4, SEQ_STEPS = 7 };
static const int seq_lengths[SEQ_BATCH] = {7, 3, 1, 5};

/* sqrt(sum (got - want)^2 / sum want^2) (absolute when want is all zero); NaN gives inf. */
static double relative_l2(const float *got, const float *want, size_t count)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(got[i]) || !isfinite(want[i]))
            return INFINITY;
        double d = (double)got[i] - want[i];
        diff += d * d;
        norm += (double)want[i] * want[i];
    }
    return norm > 0.0 ? sqrt(diff / norm) : sqrt(diff);
}

/* A model of the checks' sizes with the hashed weights of tests/ref/nn_hashinit.py. */
static seqmodel_t *seq_start(nn_backend_t *be, int emb, int hidden, int pad_like_original,
                             int precision)
{
    char err[256];
    seqmodel_t *m = seqmodel_create(be, emb, hidden, pad_like_original, err, sizeof err);
    if (!m)
        die(EXIT_INTERNAL, "seqmodel: %s", err);
    nn_params_fill_hashed(&m->ps);
    seqmodel_weights_changed(m);
    seqmodel_set_precision(m, precision);
    return m;
}

/* Hashed embeddings with zero padding rows, and labels 0/1 with a few unknown (-1). */
static void seq_batch(int batch, int steps, int emb, const int *lengths, float **embeddings,
                      float **labels)
{
    size_t rows = (size_t)batch * steps;
    *embeddings = hashed(rows * emb, "seq.embeddings", 1, 0);
    *labels = xmalloc(rows * SEQ_OUTPUTS * sizeof(float));
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < steps; t++) {
            size_t row = (size_t)b * steps + t;
            if (t < steps - lengths[b])
                memset(*embeddings + row * emb, 0, (size_t)emb * sizeof(float));
            for (int k = 0; k < SEQ_OUTPUTS; k++) {
                size_t i = row * SEQ_OUTPUTS + k;
                (*labels)[i] = i % 17 == 3 ? -1.0f : (float)((i * 7 + row) % 3 == 0);
            }
        }
}

/* The logits of the real slices only (padded rows hold unused values). */
static float *seq_valid_logits(const seqmodel_t *m, size_t *count)
{
    float *out = xmalloc((size_t)m->batch * m->steps * SEQ_OUTPUTS * sizeof(float));
    size_t n = 0;
    for (int b = 0; b < m->batch; b++)
        for (int t = m->steps - m->lengths[b]; t < m->steps; t++, n += SEQ_OUTPUTS)
            memcpy(out + n, m->logits + ((size_t)b * m->steps + t) * SEQ_OUTPUTS,
                   SEQ_OUTPUTS * sizeof(float));
    *count = n;
    return out;
}

/*
 * Limits (relative L2 per tensor; the loss relative). fp32: summation order only; one LSTM
 * layer replayed with double sums (--host-math) differs from lstm.c by 2e-7 at most, so
 * 5e-6 for the outputs through both layers and 5e-5 for the gradients. bf16: the device's
 * mixed precision against the CPU's fp32; the CPU's own bf16 differs from its fp32 by 2.6e-3
 * (logits) and 6.3e-3 (worst gradient) here (--device cpu --seq), so about 5x that.
 */
static double seq_limit(int precision, int grads)
{
    if (precision == NN_PRECISION_BF16)
        return grads ? 3e-2 : 1.5e-2;
    return grads ? 5e-5 : 5e-6;
}

/* Forward, loss and every gradient of one batch, the device's model against the CPU's fp32. */
static void check_seq(nn_backend_t *cpu, nn_backend_t *dev, int pad_like_original,
                      int precision)
{
    seqmodel_t *m[2];
    float *embeddings, *labels, *logits[2], *grads[2];
    double loss[2];
    size_t count = 0;

    seq_batch(SEQ_BATCH, SEQ_STEPS, SEQ_EMB, seq_lengths, &embeddings, &labels);
    for (int k = 0; k < 2; k++) {
        m[k] = seq_start(k ? dev : cpu, SEQ_EMB, SEQ_HIDDEN, pad_like_original,
                         k ? precision : NN_PRECISION_FP32);
        /* A smaller batch first: the checked one then grows the buffers, as lstmtrain's
         * prediction batches do after its training batches. */
        static const int small_lengths[2] = {3, 1};
        seqmodel_forward(m[k], embeddings, 2, 3, small_lengths);
        seqmodel_forward(m[k], embeddings, SEQ_BATCH, SEQ_STEPS, seq_lengths);
        loss[k] = seqmodel_loss(m[k], labels, 1);
        seqmodel_backward(m[k]);
        logits[k] = seq_valid_logits(m[k], &count);
        grads[k] = download(m[k]->be, m[k]->ps.grads, m[k]->ps.param_count);
    }

    char label[160];
    const char *mode = pad_like_original ? "padded" : "exact", *where = "";
    const char *name = precision == NN_PRECISION_BF16 ? "bf16" : "fp32";
    double worst = 0.0;
    for (size_t i = 0; i < m[0]->ps.n_entries; i++) {
        const nn_entry_t *e = &m[0]->ps.entries[i];
        double err = relative_l2(grads[1] + e->offset, grads[0] + e->offset, e->count);
        if (err >= worst) {
            worst = err;
            where = e->name;
        }
    }
    printf("     seq %s %s: loss cpu %.9f, device %.9f\n", mode, name, loss[0], loss[1]);
    snprintf(label, sizeof label, "seq %s %s: logits", mode, name);
    double logits_err = relative_l2(logits[1], logits[0], count);
    report(label, logits_err, seq_limit(precision, 0));
    if (m[1]->precision == NN_PRECISION_BF16) {
        /* Products left in fp32 would also pass the limit above: they stay under 5e-6. */
        snprintf(label, sizeof label, "seq %s bf16: differs from fp32 (> 1e-5)", mode);
        report(label, logits_err > 1e-5 ? 0.0 : 1.0, 0.0);
    }
    snprintf(label, sizeof label, "seq %s %s: loss", mode, name);
    report(label, fabs(loss[1] - loss[0]) / fabs(loss[0]), seq_limit(precision, 0));
    snprintf(label, sizeof label, "seq %s %s: gradients (worst %.24s)", mode, name, where);
    report(label, worst, seq_limit(precision, 1));

    for (int k = 0; k < 2; k++) {
        free(logits[k]);
        free(grads[k]);
        seqmodel_destroy(m[k]);
    }
    FREE_ALL(embeddings, labels);
}

/* Five Adam steps on one batch: the loss of every step, device against the CPU's fp32. */
static void check_seq_training(nn_backend_t *cpu, nn_backend_t *dev, int precision)
{
    const int steps = 5;
    nn_adam_t hp = {1e-3, 0.9, 0.999, 1e-8, 0.0};
    seqmodel_t *m[2];
    float *embeddings, *labels;
    double worst = 0.0, loss[2][5];

    seq_batch(SEQ_BATCH, SEQ_STEPS, SEQ_EMB, seq_lengths, &embeddings, &labels);
    for (int k = 0; k < 2; k++) {
        m[k] = seq_start(k ? dev : cpu, SEQ_EMB, SEQ_HIDDEN, 0,
                         k ? precision : NN_PRECISION_FP32);
        nn_params_alloc_adam(&m[k]->ps);
        for (int step = 1; step <= steps; step++) {
            nn_paramset_t *ps = &m[k]->ps;
            seqmodel_forward(m[k], embeddings, SEQ_BATCH, SEQ_STEPS, seq_lengths);
            loss[k][step - 1] = seqmodel_loss(m[k], labels, 1);
            seqmodel_backward(m[k]);
            m[k]->be->adam_step(m[k]->be, &hp, step, ps->params, ps->grads, ps->adam_m,
                                ps->adam_v, ps->param_count);
        }
    }
    for (int step = 0; step < steps; step++) {
        double err = fabs(loss[1][step] - loss[0][step]) / fabs(loss[0][step]);
        worst = err > worst ? err : worst;
    }
    const char *name = precision == NN_PRECISION_BF16 ? "bf16" : "fp32";
    printf("     seq training, %d Adam steps, device %s: loss %.6f -> cpu %.6f, device %.6f\n",
           steps, name, loss[0][0], loss[0][steps - 1], loss[1][steps - 1]);
    char label[96];
    snprintf(label, sizeof label, "seq training %s: loss per step", name);
    /* Measured with --device cpu: bf16 2e-4 from fp32 over the 5 steps. */
    report(label, worst, precision == NN_PRECISION_BF16 ? 5e-3 : 1e-5);
    report("seq training: the loss fell", !(loss[1][steps - 1] < loss[1][0]), 0.0);
    for (int k = 0; k < 2; k++)
        seqmodel_destroy(m[k]);
    FREE_ALL(embeddings, labels);
}

static void check_seq_all(nn_backend_t *cpu, nn_backend_t *dev)
{
    if (!dev->seq_forward)
        printf("note: %s has no seq_* ops: the model runs on the host code\n", dev->name);
    for (int precision = NN_PRECISION_FP32; precision <= NN_PRECISION_BF16; precision++) {
        check_seq(cpu, dev, 0, precision);
        check_seq(cpu, dev, 1, precision);
        check_seq_training(cpu, dev, precision);
    }
}

/*
 * Slices/s of the method's shapes (embeddings 2048, hidden 2048, series of 40 slices):
 * training at batch 4 (forward, loss, backward, Adam), inference at batch 16 (forward).
 */
static void bench_seq(nn_backend_t *dev, int iters, const char *precision_name)
{
    const int emb = 2048, hidden = 2048, steps = 40, batches[2] = {16, 4};
    int precision = strcmp(precision_name, "bf16") == 0 ? NN_PRECISION_BF16 : NN_PRECISION_FP32;
    seqmodel_t *m = seq_start(dev, emb, hidden, 0, precision);
    nn_params_alloc_adam(&m->ps);
    nn_adam_t hp = {1e-4, 0.9, 0.999, 1e-8, 0.0};

    for (int training = 0; training <= 1; training++) {
        int batch = batches[training], lengths[16];
        float *embeddings, *labels;
        for (int b = 0; b < batch; b++)
            lengths[b] = steps;
        seq_batch(batch, steps, emb, lengths, &embeddings, &labels);
        double total = 0.0;
        for (int it = 0; it <= iters; it++) { /* the first step allocates */
            dev->synchronize(dev);
            double t0 = time_now();
            seqmodel_forward(m, embeddings, batch, steps, lengths);
            if (training) {
                seqmodel_loss(m, labels, 1);
                seqmodel_backward(m);
                dev->adam_step(dev, &hp, it + 1, m->ps.params, m->ps.grads, m->ps.adam_m,
                               m->ps.adam_v, m->ps.param_count);
            }
            dev->synchronize(dev);
            if (it > 0)
                total += time_now() - t0;
        }
        printf("seqresult side=ours precision=%s batch=%d steps=%d iters=%d "
               "%s_slices_per_s=%.1f\n",
               precision_name, batch, steps, iters, training ? "train" : "eval",
               (double)batch * steps * iters / total);
        /* A speed of garbage is no result: the last forward's loss must be finite. */
        double loss = seqmodel_loss(m, labels, 0);
        printf("     seq bench %s: loss %.6f\n", training ? "train" : "eval", loss);
        report("seq bench: finite loss", isfinite(loss) ? 0.0 : 1.0, 0.0);
        FREE_ALL(embeddings, labels);
    }
    size_t in_use = 0, peak = 0;
    if (strcmp(dev->name, "cuda") == 0)
        nn_backend_cuda_memory(dev, &in_use, &peak);
    printf("memory seqmodel precision=%s peak_mib=%.0f\n", precision_name, peak / 1048576.0);
    seqmodel_destroy(m);
}

/* ---- where the time goes ------------------------------------------------------------------ */

/*
 * A backend that forwards every call to another and, for the compute ops, waits for the GPU
 * before and after, adding the time to the op's kind: a profile of a model step by kind of
 * op, without touching the model (the waits cost a little throughput; the step total is
 * printed beside the sum).
 */
enum {
    P_CONV_FWD, P_CONV_BWD_DATA, P_CONV_BWD_WEIGHTS, P_CONV_BN_INFER, P_BN_TRAIN, P_BN_INFER,
    P_BN_BWD, P_RELU, P_MAXPOOL, P_AVGPOOL, P_LINEAR, P_ADD, P_LOSS, P_ADAM, P_KINDS
};
static const char *const kind_names[P_KINDS] = {
    "conv forward", "conv backward data", "conv backward weights", "conv + bn (eval)",
    "batch norm (+relu) train", "batch norm eval", "batch norm (+relu) backward", "relu",
    "max pool", "average pool", "linear", "add (+relu)", "loss", "adam"};

typedef struct {
    nn_backend_t base;
    nn_backend_t *inner;
    double seconds[P_KINDS];
    long calls[P_KINDS];
} prof_backend_t;

#define INNER(be) (((prof_backend_t *)(be))->inner)

static double prof_begin(nn_backend_t *be)
{
    INNER(be)->synchronize(INNER(be));
    return time_now();
}

static void prof_end(nn_backend_t *be, int kind, double t0)
{
    prof_backend_t *p = (prof_backend_t *)be;
    p->inner->synchronize(p->inner);
    p->seconds[kind] += time_now() - t0;
    p->calls[kind]++;
}

/* A timed call of the inner backend's `fn` with the arguments after be. */
#define TIMED(kind, fn, ...)                                                                  \
    do {                                                                                      \
        double t0_ = prof_begin(be);                                                          \
        INNER(be)->fn(INNER(be), __VA_ARGS__);                                                \
        prof_end(be, kind, t0_);                                                              \
    } while (0)

static void *p_alloc(nn_backend_t *be, size_t bytes)
{
    return INNER(be)->alloc(INNER(be), bytes);
}
static void p_release(nn_backend_t *be, void *p)
{
    INNER(be)->release(INNER(be), p);
}
static void p_to_host(nn_backend_t *be, void *host, const void *dev, size_t bytes)
{
    INNER(be)->to_host(INNER(be), host, dev, bytes);
}
static void p_to_device(nn_backend_t *be, void *dev, const void *host, size_t bytes)
{
    INNER(be)->to_device(INNER(be), dev, host, bytes);
}
static void p_release_plan(nn_backend_t *be, void **plan)
{
    INNER(be)->release_plan(INNER(be), plan);
}
static void p_synchronize(nn_backend_t *be)
{
    INNER(be)->synchronize(INNER(be));
}
static void p_weights_changed(nn_backend_t *be)
{
    INNER(be)->weights_changed(INNER(be));
}
static void p_to_plain(nn_backend_t *be, const nn_tensor_t *src, float *dst)
{
    INNER(be)->to_plain(INNER(be), src, dst);
}
static void p_conv_forward(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x,
                           const float *w, nn_tensor_t *y)
{
    TIMED(P_CONV_FWD, conv_forward, op, x, w, y);
}
static void p_conv_backward_data(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *dy,
                                 const float *w, nn_tensor_t *dx)
{
    TIMED(P_CONV_BWD_DATA, conv_backward_data, op, dy, w, dx);
}
static void p_conv_backward_weights(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x,
                                    const nn_tensor_t *dy, float *dw)
{
    TIMED(P_CONV_BWD_WEIGHTS, conv_backward_weights, op, x, dy, dw);
}
static void p_bnorm_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                  const float *gamma, const float *beta, float *rm, float *rv,
                                  float *sm, float *sv, nn_tensor_t *y)
{
    TIMED(P_BN_TRAIN, bnorm_forward_train, op, x, gamma, beta, rm, rv, sm, sv, y);
}
static void p_bnorm_relu_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                       const float *gamma, const float *beta, float *rm,
                                       float *rv, float *sm, float *sv, nn_tensor_t *y)
{
    TIMED(P_BN_TRAIN, bnorm_relu_forward_train, op, x, gamma, beta, rm, rv, sm, sv, y);
}
static void p_bnorm_forward_infer(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                  const float *gamma, const float *beta, const float *rm,
                                  const float *rv, nn_tensor_t *y)
{
    TIMED(P_BN_INFER, bnorm_forward_infer, op, x, gamma, beta, rm, rv, y);
}
static void p_bnorm_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                             const nn_tensor_t *dy, const float *gamma, const float *sm,
                             const float *sv, nn_tensor_t *dx, float *dgamma, float *dbeta)
{
    TIMED(P_BN_BWD, bnorm_backward, op, x, dy, gamma, sm, sv, dx, dgamma, dbeta);
}
static void p_bnorm_relu_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                  const nn_tensor_t *dy, const float *gamma, const float *sm,
                                  const float *sv, nn_tensor_t *dx, float *dgamma, float *dbeta)
{
    TIMED(P_BN_BWD, bnorm_relu_backward, op, x, dy, gamma, sm, sv, dx, dgamma, dbeta);
}
static void p_conv_bn_forward_infer(nn_backend_t *be, nn_conv_t *op, const nn_bnorm_t *bn,
                                    const nn_tensor_t *x, const float *w, const float *gamma,
                                    const float *beta, const float *rm, const float *rv,
                                    const nn_tensor_t *residual, int relu, nn_tensor_t *y)
{
    TIMED(P_CONV_BN_INFER, conv_bn_forward_infer, op, bn, x, w, gamma, beta, rm, rv, residual,
          relu, y);
}
static void p_relu_forward(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *x,
                           nn_tensor_t *y)
{
    TIMED(P_RELU, relu_forward, op, x, y);
}
static void p_relu_backward(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *y,
                            const nn_tensor_t *dy, nn_tensor_t *dx)
{
    TIMED(P_RELU, relu_backward, op, y, dy, dx);
}
static void p_maxpool_forward(nn_backend_t *be, nn_pool_t *op, const nn_tensor_t *x,
                              nn_tensor_t *y, int training)
{
    TIMED(P_MAXPOOL, maxpool_forward, op, x, y, training);
}
static void p_maxpool_backward(nn_backend_t *be, nn_pool_t *op, const nn_tensor_t *x,
                               const nn_tensor_t *y, const nn_tensor_t *dy, nn_tensor_t *dx)
{
    TIMED(P_MAXPOOL, maxpool_backward, op, x, y, dy, dx);
}
static void p_avgpool_forward(nn_backend_t *be, const nn_tensor_t *x, nn_tensor_t *y)
{
    TIMED(P_AVGPOOL, avgpool_forward, x, y);
}
static void p_avgpool_backward(nn_backend_t *be, const nn_tensor_t *dy, nn_tensor_t *dx)
{
    TIMED(P_AVGPOOL, avgpool_backward, dy, dx);
}
static void p_linear_forward(nn_backend_t *be, nn_linear_t *op, const nn_tensor_t *x,
                             const float *w, const float *b, nn_tensor_t *y)
{
    TIMED(P_LINEAR, linear_forward, op, x, w, b, y);
}
static void p_linear_backward(nn_backend_t *be, nn_linear_t *op, const nn_tensor_t *x,
                              const nn_tensor_t *dy, const float *w, nn_tensor_t *dx, float *dw,
                              float *db)
{
    TIMED(P_LINEAR, linear_backward, op, x, dy, w, dx, dw, db);
}
static void p_add(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b, nn_tensor_t *y)
{
    TIMED(P_ADD, add, a, b, y);
}
static void p_add_relu(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b,
                       nn_tensor_t *y)
{
    TIMED(P_ADD, add_relu, a, b, y);
}
static double p_bce_loss(nn_backend_t *be, const float *logits, const float *labels, int n,
                         float *dlogits)
{
    double t0 = prof_begin(be);
    double loss = INNER(be)->bce_loss(INNER(be), logits, labels, n, dlogits);
    prof_end(be, P_LOSS, t0);
    return loss;
}
static void p_adam_step(nn_backend_t *be, const nn_adam_t *hp, int64_t step, float *w,
                        const float *g, float *m, float *v, size_t count)
{
    TIMED(P_ADAM, adam_step, hp, step, w, g, m, v, count);
}
static void p_destroy(nn_backend_t *be)
{
    free(be);
}

static prof_backend_t *profiler_wrap(nn_backend_t *inner)
{
    prof_backend_t *p = xcalloc(1, sizeof *p);
    p->inner = inner;
    nn_backend_t *be = &p->base;
    be->name = inner->name;
    be->alloc = p_alloc;
    be->release = p_release;
    be->to_host = p_to_host;
    be->to_device = p_to_device;
    be->release_plan = p_release_plan;
    be->synchronize = p_synchronize;
    be->weights_changed = p_weights_changed;
    be->to_plain = p_to_plain;
    be->conv_forward = p_conv_forward;
    be->conv_backward_data = p_conv_backward_data;
    be->conv_backward_weights = p_conv_backward_weights;
    be->bnorm_forward_train = p_bnorm_forward_train;
    be->bnorm_forward_infer = p_bnorm_forward_infer;
    be->bnorm_backward = p_bnorm_backward;
    be->bnorm_relu_forward_train = p_bnorm_relu_forward_train;
    be->bnorm_relu_backward = p_bnorm_relu_backward;
    be->conv_bn_forward_infer = p_conv_bn_forward_infer;
    be->relu_forward = p_relu_forward;
    be->relu_backward = p_relu_backward;
    be->maxpool_forward = p_maxpool_forward;
    be->maxpool_backward = p_maxpool_backward;
    be->avgpool_forward = p_avgpool_forward;
    be->avgpool_backward = p_avgpool_backward;
    be->linear_forward = p_linear_forward;
    be->linear_backward = p_linear_backward;
    be->add = p_add;
    be->add_relu = p_add_relu;
    be->bce_loss = p_bce_loss;
    be->adam_step = p_adam_step;
    be->destroy = p_destroy;
    return p;
}

static void profiler_reset(prof_backend_t *p)
{
    memset(p->seconds, 0, sizeof p->seconds);
    memset(p->calls, 0, sizeof p->calls);
}

static void profiler_print(const prof_backend_t *p, const char *what, double step_seconds,
                           int steps)
{
    double sum = 0.0;
    for (int k = 0; k < P_KINDS; k++)
        sum += p->seconds[k];
    printf("profile %s: %.1f ms a step (%.1f ms in ops, timed one by one)\n", what,
           1e3 * step_seconds, 1e3 * sum / steps);
    for (int k = 0; k < P_KINDS; k++)
        if (p->calls[k])
            printf("  %-30s %8.2f ms %5.1f%%  %5ld calls\n", kind_names[k],
                   1e3 * p->seconds[k] / steps, 100 * p->seconds[k] / sum, p->calls[k] / steps);
}

/* ---- throughput -------------------------------------------------------------------------- */

static double seconds_per_step(nn_backend_t *be, resnext_t *m, model_run_t *r, int training,
                               int iters)
{
    nn_adam_t hp = {1e-4, 0.9, 0.999, 1e-8, 1e-4};
    double total = 0.0;
    for (int it = 0; it <= iters; it++) {
        be->synchronize(be);
        double t0 = time_now();
        resnext_forward(m, &r->x, training);
        if (training) {
            be->bce_loss(be, m->logits.data, r->labels, r->x.n, m->dlogits.data);
            resnext_backward(m, m->dlogits.data);
            be->adam_step(be, &hp, it + 1, m->ps.params, m->ps.grads, m->ps.adam_m,
                          m->ps.adam_v, m->ps.param_count);
        }
        be->synchronize(be);
        if (it > 0) /* the first step measures the algorithms */
            total += time_now() - t0;
    }
    return total / iters;
}

static void bench(nn_backend_t *gpu, const char *name, int batch, int size, int iters,
                  const char *precision, int profile)
{
    /* Profiled: the model calls the profiler, which calls the GPU. */
    prof_backend_t *prof = profile ? profiler_wrap(gpu) : NULL;
    nn_backend_t *be = prof ? &prof->base : gpu;
    model_run_t r;
    model_start(&r, be, name, batch, size);
    resnext_set_precision(r.m, nn_mixed_precision_setup(gpu, precision, "--precision"));
    nn_params_alloc_adam(&r.m->ps);
    for (int training = 1; training >= 0; training--) {
        double step = seconds_per_step(be, r.m, &r, training, 1); /* measures algorithms */
        if (prof)
            profiler_reset(prof);
        step = seconds_per_step(be, r.m, &r, training, iters);
        if (prof) {
            /* The first step of seconds_per_step is not timed, but it is profiled. */
            profiler_print(prof, training ? "train" : "eval", step, iters + 1);
            continue;
        }
        printf("result side=ours model=%s size=%d batch=%d precision=%s iters=%d "
               "%s_images_per_s=%.2f\n",
               name, size, batch, precision, iters, training ? "train" : "eval", batch / step);
    }
    size_t in_use = 0, peak = 0;
    if (strcmp(gpu->name, "cuda") == 0)
        nn_backend_cuda_memory(gpu, &in_use, &peak);
    printf("memory model=%s size=%d batch=%d precision=%s peak_mib=%.0f\n", name, size, batch,
           precision, peak / 1048576.0);
    model_end(&r);
    if (prof)
        be->destroy(be);
}

/* ---- host check of the kernels' arithmetic --------------------------------------------- */

/*
 * The kernels' decomposition run on the host: every (slice, thread) of a channel's partial
 * sums as the GPU grid has them, the same math_cuda.h functions per value.
 */
typedef struct {
    int slices, threads;
} grid_t;

static double emulate_moment(const nn_tensor_t *x, int c, grid_t g, double mean, int centred)
{
    size_t plane = (size_t)x->h * x->w, step = (size_t)g.slices * g.threads;
    double sum = 0.0;
    for (int s = 0; s < g.slices; s++)
        for (int t = 0; t < g.threads; t++)
            sum += nn_bn_thread_moment(x->data, x->n, x->c, plane, c, (size_t)s * g.threads + t,
                                       step, mean, centred);
    return sum;
}

static void emulate_bn_train(const nn_tensor_t *x, const float *gamma, const float *beta,
                             float eps, int relu, grid_t g, float *save_mean, float *save_var,
                             float *running_mean, float *running_var, nn_tensor_t *y)
{
    size_t plane = (size_t)x->h * x->w;
    double count = (double)plane * x->n;
    for (int c = 0; c < x->c; c++) {
        double mean = emulate_moment(x, c, g, 0.0, 0) / count;
        save_mean[c] = (float)mean;
        save_var[c] = (float)(emulate_moment(x, c, g, mean, 1) / count);
        nn_bn_running_update(&running_mean[c], &running_var[c], save_mean[c], save_var[c], 0.1f,
                             count);
    }
    for (size_t i = 0; i < nn_numel(x); i++) {
        int c = (int)(i / plane % x->c);
        double inv = nn_bn_inv_std(save_var[c], eps);
        y->data[i] = nn_bn_output(nn_bn_value(x->data[i], save_mean[c], inv, gamma[c], beta[c]),
                                  relu);
    }
}

static void emulate_bn_backward(const nn_tensor_t *x, const nn_tensor_t *dy, const float *gamma,
                                const float *beta, const float *mean, const float *var,
                                float eps, int relu, grid_t g, nn_tensor_t *dx, float *dgamma,
                                float *dbeta)
{
    size_t plane = (size_t)x->h * x->w, step = (size_t)g.slices * g.threads;
    double count = (double)plane * x->n;
    double *means = xmalloc(2 * x->c * sizeof(double));
    for (int c = 0; c < x->c; c++) {
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int s = 0; s < g.slices; s++)
            for (int t = 0; t < g.threads; t++) {
                double a, b;
                nn_bn_thread_backward(x->data, dy->data, x->n, x->c, plane, c,
                                      (size_t)s * g.threads + t, step, mean[c], var[c],
                                      gamma[c], beta[c], eps, relu, &a, &b);
                sum_dy += a;
                sum_dy_xhat += b;
            }
        dgamma[c] = (float)sum_dy_xhat;
        dbeta[c] = (float)sum_dy;
        means[2 * c] = sum_dy / count;
        means[2 * c + 1] = sum_dy_xhat / count;
    }
    for (size_t i = 0; i < nn_numel(x); i++) {
        int c = (int)(i / plane % x->c);
        dx->data[i] = nn_bn_dx(x->data[i], dy->data[i], mean[c], var[c], gamma[c], beta[c], eps,
                               relu, means[2 * c], means[2 * c + 1]);
    }
    free(means);
}

/* The walk visits each value of a channel exactly once, whatever the grid. */
static int walk_covers(int batch, size_t plane, grid_t g)
{
    size_t count = plane * batch, step = (size_t)g.slices * g.threads;
    int *visits = xcalloc(count, sizeof(int));
    for (size_t first = 0; first < step; first++) {
        nn_channel_walk_t w = nn_channel_walk(first, step, plane);
        for (; w.n < batch; nn_channel_walk_next(&w, plane))
            visits[(size_t)w.n * plane + w.k]++;
    }
    int ok = 1;
    for (size_t i = 0; i < count; i++)
        ok &= visits[i] == 1;
    free(visits);
    return ok;
}

static nn_tensor_t host_tensor(int n, int c, int h, int w, const char *name, float scale,
                               float offset)
{
    nn_tensor_t t = {NULL, n, c, h, w, NN_LAYOUT_NCHW};
    t.data = hashed(nn_numel(&t), name, scale, offset);
    return t;
}

static void check_host_bnorm(int n, int ch, int size, grid_t g)
{
    const float eps = 1e-5f;
    nn_tensor_t x = host_tensor(n, ch, size, size, "hbn.x", 2, 0.5f);
    nn_tensor_t dy = host_tensor(n, ch, size, size, "hbn.dy", 1, 0);
    nn_tensor_t y = host_tensor(n, ch, size, size, "hbn.y", 0, 0);
    nn_tensor_t want = host_tensor(n, ch, size, size, "hbn.w", 0, 0);
    nn_tensor_t dx = host_tensor(n, ch, size, size, "hbn.dx", 0, 0);
    nn_tensor_t dx_want = host_tensor(n, ch, size, size, "hbn.dxw", 0, 0);
    float *gamma = hashed(ch, "hbn.gamma", 0.1f, 1), *beta = hashed(ch, "hbn.beta", 0.5f, 0);
    float *stats = xcalloc(12 * ch, sizeof(float));
    float *mean = stats, *var = stats + ch, *mean_want = stats + 2 * ch;
    float *var_want = stats + 3 * ch, *rm = stats + 4 * ch, *rv = stats + 5 * ch;
    float *dgamma = stats + 6 * ch, *dbeta = stats + 7 * ch, *dgamma_want = stats + 8 * ch;
    float *dbeta_want = stats + 9 * ch;
    char label[128];

    for (int relu = 0; relu <= 1; relu++) {
        emulate_bn_train(&x, gamma, beta, eps, relu, g, mean, var, rm, rv, &y);
        nn_host_bnorm_forward_train(&x, gamma, beta, eps, mean_want, var_want, &want);
        /* The reference output through the same relu; the gradient masked where it blocks. */
        size_t masked = 0, mask_differs = 0, plane = (size_t)size * size;
        nn_tensor_t dy_masked = host_tensor(n, ch, size, size, "hbn.dym", 0, 0);
        for (size_t i = 0; i < nn_numel(&x); i++) {
            int c = (int)(i / plane % ch);
            if (relu && want.data[i] <= 0.0f)
                want.data[i] = 0.0f;
            int blocked = relu && !(y.data[i] > 0.0f);
            double inv = nn_bn_inv_std(var[c], eps);
            mask_differs += (nn_bn_masked_dy(x.data[i], 1.0f, mean[c], inv, gamma[c], beta[c],
                                             relu) == 0.0) != blocked;
            masked += blocked;
            dy_masked.data[i] = blocked ? 0.0f : dy.data[i];
        }
        snprintf(label, sizeof label, "host bn%s %dx%dx%d grid %dx%d: y", relu ? "+relu" : "",
                 n, ch, size, g.slices, g.threads);
        report(label, normalised_error(y.data, want.data, nn_numel(&x)), 1e-6);
        report("  batch mean / var", fmax(normalised_error(mean, mean_want, ch),
                                          normalised_error(var, var_want, ch)), 1e-6);
        printf("     relu blocks %zu of %zu values; backward mask differs at %zu\n", masked,
               nn_numel(&x), mask_differs);
        report("  backward mask = forward mask", (double)mask_differs, 0.0);

        emulate_bn_backward(&x, &dy, gamma, beta, mean, var, eps, relu, g, &dx, dgamma, dbeta);
        nn_host_bnorm_backward(&x, &dy_masked, gamma, mean, var, eps, &dx_want, dgamma_want,
                               dbeta_want);
        report("  dx", normalised_error(dx.data, dx_want.data, nn_numel(&x)), 1e-6);
        report("  dgamma / dbeta", fmax(normalised_error(dgamma, dgamma_want, ch),
                                        normalised_error(dbeta, dbeta_want, ch)), 1e-6);
        free(dy_masked.data);
    }

    /* Inference: the fused value against the formula in double. */
    double worst = 0.0;
    for (size_t i = 0; i < nn_numel(&x); i++) {
        int c = (int)(i / ((size_t)size * size) % ch);
        float v = nn_bn_infer_value(x.data[i], mean[c], var[c] + 0.5f, gamma[c], beta[c], eps,
                                    dy.data[i], 0);
        double ref = (x.data[i] - (double)mean[c]) * gamma[c] / sqrt((double)var[c] + 0.5 + eps) +
                     beta[c] + dy.data[i];
        worst = fmax(worst, fabs(v - ref) / (fabs(ref) + 1.0));
    }
    report("  inference value (+ residual)", worst, 1e-6);

    FREE_ALL(x.data, dy.data, y.data, want.data, dx.data, dx_want.data, gamma, beta, stats);
}

/* Max pooling: the kernels' per-value functions against a plain forward with a scatter
 * backward, on values with ties (quantised, as after a relu). */
static void check_host_maxpool(int size, int kernel, int stride, int pad)
{
    int planes = 3, out = (size + 2 * pad - kernel) / stride + 1;
    size_t in_count = (size_t)planes * size * size, out_count = (size_t)planes * out * out;
    float *x = hashed(in_count, "hmp.x", 2, 0), *dy = hashed(out_count, "hmp.dy", 1, 0);
    for (size_t i = 0; i < in_count; i++)
        x[i] = x[i] > 0.0f ? floorf(x[i] * 4.0f) : 0.0f;
    float *y = xmalloc(out_count * sizeof(float)), *y_want = xmalloc(out_count * sizeof(float));
    float *dx = xmalloc(in_count * sizeof(float)), *dx_want = xcalloc(in_count, sizeof(float));
    int32_t *argmax = xmalloc(out_count * sizeof(int32_t));

    for (int p = 0; p < planes; p++) {
        const float *xp = x + (size_t)p * size * size;
        for (int oy = 0; oy < out; oy++)
            for (int ox = 0; ox < out; ox++) {
                size_t o = ((size_t)p * out + oy) * out + ox;
                y[o] = nn_maxpool_one(xp, size, size, oy, ox, kernel, stride, pad, &argmax[o]);
                /* Reference: the first strict maximum over the window's valid positions. */
                int best = -1;
                for (int iy = oy * stride - pad; iy < oy * stride - pad + kernel; iy++)
                    for (int ix = ox * stride - pad; ix < ox * stride - pad + kernel; ix++)
                        if (iy >= 0 && iy < size && ix >= 0 && ix < size &&
                            (best < 0 || xp[iy * size + ix] > xp[best]))
                            best = iy * size + ix;
                y_want[o] = xp[best];
                dx_want[(size_t)p * size * size + best] += dy[o];
            }
        for (int iy = 0; iy < size; iy++)
            for (int ix = 0; ix < size; ix++)
                dx[((size_t)p * size + iy) * size + ix] = nn_maxpool_grad_one(
                    dy + (size_t)p * out * out, argmax + (size_t)p * out * out, out, out, size,
                    iy, ix, kernel, stride, pad);
    }
    char label[128];
    snprintf(label, sizeof label, "host max pool %dx%d k%d s%d p%d: forward", size, size, kernel,
             stride, pad);
    report(label, normalised_error(y, y_want, out_count), 0.0);
    report("  backward (gather = scatter)", normalised_error(dx, dx_want, in_count), 0.0);
    FREE_ALL(x, dy, y, y_want, dx, dx_want);
    free(argmax);
}

/* The compiler's IEEE half (GCC's _Float16, libgcc's rounding) as bits, and back. */
typedef union {
    _Float16 half;
    uint16_t bits;
} compiler_fp16_t;

static uint16_t compiler_fp16_bits(float value)
{
    return ((compiler_fp16_t){.half = (_Float16)value}).bits;
}

static float compiler_fp16_value(uint16_t bits)
{
    return (float)((compiler_fp16_t){.bits = bits}).half;
}

/*
 * The layout kernels run block by block as the GPU would (every thread's load, the barrier,
 * every thread's store) against the element-wise map: values written where they belong,
 * every destination written, and back again exactly. Returns the number of wrong values.
 */
static size_t check_host_tiles(int n, int channels, size_t plane, int format)
{
    size_t total = (size_t)n * channels * plane;
    float *src = hashed(total, "tiles.x", 100.0f, 0), *back = xmalloc(total * sizeof(float));
    uint16_t *half = xmalloc(total * sizeof(uint16_t));
    memset(half, 0xFF, total * sizeof(uint16_t)); /* NaN: an unwritten value shows */
    size_t plane_tiles = (plane + NN_TILE - 1) / NN_TILE;
    int channel_tiles = (channels + NN_TILE - 1) / NN_TILE;
    uint16_t tile16[NN_TILE][NN_TILE + 1];
    float tile32[NN_TILE][NN_TILE + 1];
    for (int in = 0; in < n; in++)
        for (int tc = 0; tc < channel_tiles; tc++)
            for (size_t tk = 0; tk < plane_tiles; tk++) {
                for (int y = 0; y < NN_TILE_ROWS; y++)
                    for (int x = 0; x < NN_TILE; x++)
                        nn_to_half_load(src, in, channels, plane, format, tc, tk, x, y, tile16);
                for (int y = 0; y < NN_TILE_ROWS; y++)
                    for (int x = 0; x < NN_TILE; x++)
                        nn_to_half_store(tile16, in, channels, plane, tc, tk, x, y, half);
            }
    size_t wrong = 0;
    for (size_t i = 0; i < total; i++)
        wrong += half[nn_nhwc_of_nchw(i, channels, plane)] != nn_half_bits(src[i], format);
    for (int in = 0; in < n; in++)
        for (int tc = 0; tc < channel_tiles; tc++)
            for (size_t tk = 0; tk < plane_tiles; tk++) {
                for (int y = 0; y < NN_TILE_ROWS; y++)
                    for (int x = 0; x < NN_TILE; x++)
                        nn_from_half_load(half, in, channels, plane, format, tc, tk, x, y,
                                          tile32);
                for (int y = 0; y < NN_TILE_ROWS; y++)
                    for (int x = 0; x < NN_TILE; x++)
                        nn_from_half_store(tile32, in, channels, plane, tc, tk, x, y, back);
            }
    for (size_t i = 0; i < total; i++)
        wrong += !same_float(back[i], nn_half_value(nn_half_bits(src[i], format), format));
    free(src);
    free(back);
    free(half);
    return wrong;
}

/* One float rounded both ways; a mismatch counted in wrong[0] (bf16) or wrong[1] (fp16). */
static void round_both(float v, size_t *checked, size_t wrong[2])
{
    (*checked)++;
    wrong[0] += nn_bf16_bits(v) != nn_bf16_from_f32(v);
    uint16_t got = nn_fp16_bits(v), want = compiler_fp16_bits(v);
    int nan_both = v != v && (got & 0x7C00u) == 0x7C00u && (got & 0x3FFu) &&
                   (want & 0x7C00u) == 0x7C00u && (want & 0x3FFu);
    wrong[1] += got != want && !nan_both;
}

/*
 * The 16-bit formats of the mixed-precision kernels: rounding every 257th float bit pattern
 * (16.7 M of them, both signs, every exponent) plus the edges, against checkpoint.h's bf16
 * (the CPU's) and the compiler's fp16; decoding every 16-bit pattern; the NHWC map.
 */
static void check_host_half(void)
{
    static const float edges[] = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.996f, 65520.0f,
                                  65536.0f, 0x1p-14f, 0x1.ff8p-15f, 0x1p-24f, 0x1p-25f,
                                  0x1.000002p-25f, 0x1.8p-24f, 0x1.4p-24f, 0x1p-26f, FLT_MAX,
                                  FLT_MIN, 0x1p-149f, INFINITY, -INFINITY, NAN};
    size_t checked = 0, wrong[2] = {0, 0};
    size_t n_edges = sizeof edges / sizeof edges[0];
    for (uint64_t pattern = 0; pattern <= 0xFFFFFFFFu; pattern += 257)
        round_both(nn_bits_float((uint32_t)pattern), &checked, wrong);
    for (size_t i = 0; i < n_edges; i++)
        round_both(edges[i], &checked, wrong);
    size_t bf16_wrong = wrong[0], fp16_wrong = wrong[1];
    printf("16-bit rounding of %zu floats: bf16 %zu differ from checkpoint.h, fp16 %zu from "
           "_Float16\n", checked, bf16_wrong, fp16_wrong);
    report("host half: bf16 rounding", (double)bf16_wrong, 0.0);
    report("host half: fp16 rounding", (double)fp16_wrong, 0.0);

    size_t decode_wrong = 0;
    for (uint32_t h = 0; h <= 0xFFFFu; h++) {
        decode_wrong += !same_float(nn_fp16_value((uint16_t)h), compiler_fp16_value((uint16_t)h));
        decode_wrong += !same_float(nn_bf16_value((uint16_t)h), nn_bf16_to_f32((uint16_t)h));
        /* Decoding then rounding gives the pattern back (NaNs aside). */
        float f16 = nn_fp16_value((uint16_t)h), b16 = nn_bf16_value((uint16_t)h);
        decode_wrong += f16 == f16 && nn_fp16_bits(f16) != h;
        decode_wrong += b16 == b16 && nn_bf16_bits(b16) != h;
    }
    report("host half: decoding all 65536 patterns", (double)decode_wrong, 0.0);

    /* NHWC: a permutation, and element (n, c, k) lands at (n * plane + k) * C + c. */
    static const int shapes[][3] = {{2, 3, 37 * 37}, {3, 64, 1}, {1, 1, 49}, {4, 5, 9}};
    size_t map_wrong = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int n = shapes[s][0], c = shapes[s][1];
        size_t plane = (size_t)shapes[s][2], total = (size_t)n * c * plane;
        unsigned char *seen = xcalloc(total, 1);
        for (int in = 0; in < n; in++)
            for (int ic = 0; ic < c; ic++)
                for (size_t k = 0; k < plane; k++) {
                    size_t at = nn_nhwc_of_nchw(((size_t)in * c + ic) * plane + k, c, plane);
                    map_wrong += at != ((size_t)in * plane + k) * c + ic || seen[at]++;
                }
        free(seen);
    }
    report("host half: NCHW -> NHWC map", (double)map_wrong, 0.0);
    size_t tiles_wrong = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int format = NN_PRECISION_BF16; format <= NN_PRECISION_FP16; format++)
            tiles_wrong += check_host_tiles(shapes[s][0], shapes[s][1], (size_t)shapes[s][2],
                                            format);
    tiles_wrong += check_host_tiles(2, 70, 45, NN_PRECISION_FP16);
    report("host half: tiled layout kernels, both ways", (double)tiles_wrong, 0.0);

    /* The overflow check's element test against isfinite, on the edges. */
    size_t finite_wrong = 0;
    for (size_t i = 0; i < n_edges; i++) {
        float v = edges[i];
        finite_wrong += nn_scale_check(&v, 0.5f) != isfinite(edges[i]);
        finite_wrong += !same_float(v, edges[i] * 0.5f);
    }
    report("host half: overflow check vs isfinite", (double)finite_wrong, 0.0);
}

/*
 * The kernels' index math past 2^32 elements (a 16 x 2048 x 480 x 480 activation has 7.5e9),
 * without the memory: the last element, a channel's first element of the last image, and
 * the last tile map where they belong in both layouts, and the batch norm walk steps across
 * images of a plane past 2^32 values. An int anywhere in the chain would wrap.
 */
static void check_host_big_index(void)
{
    size_t wrong = 0;
    static const struct {
        int n, channels;
        size_t plane;
    } big[] = {{16, 2048, 480 * 480}, {65535, 2048, 240 * 240}, {3, 3, ((size_t)1 << 33) + 7}};
    for (size_t s = 0; s < sizeof big / sizeof big[0]; s++) {
        int n = big[s].n, channels = big[s].channels;
        size_t plane = big[s].plane, total = (size_t)n * channels * plane;
        wrong += nn_nchw_at(n - 1, channels - 1, channels, plane, plane - 1) != total - 1;
        wrong += nn_nhwc_at(n - 1, channels - 1, channels, plane, plane - 1) != total - 1;
        wrong += nn_nhwc_of_nchw(total - 1, channels, plane) != total - 1;
        /* (last image, channel 1, position 0) */
        size_t at = ((size_t)(n - 1) * channels + 1) * plane;
        wrong += nn_nhwc_of_nchw(at, channels, plane) != (size_t)(n - 1) * plane * channels + 1;
        /* The last tile's corner lies inside; one tile further along the plane does not. */
        int tile_c = (channels - 1) / NN_TILE, c;
        size_t tile_k = (plane - 1) / NN_TILE, k;
        int x = (int)((plane - 1) % NN_TILE), row = (channels - 1) % NN_TILE;
        wrong += !nn_tile_at(tile_c, tile_k, row, x, 1, channels, plane, &c, &k) ||
                 c != channels - 1 || k != plane - 1;
        wrong += nn_tile_at(tile_c, tile_k + 1, 0, 0, 1, channels, plane, &c, &k);
        /* A thread whose first value is in image 1 and whose step crosses one image. */
        nn_channel_walk_t walk = nn_channel_walk(plane + 7, plane + 1, plane);
        wrong += walk.n != 1 || walk.k != 7;
        nn_channel_walk_next(&walk, plane);
        wrong += walk.n != 2 || walk.k != 8;
    }
    printf("index math past 2^32 elements: %zu wrong\n", wrong);
    report("host index: layouts, tiles, walk past 2^32", (double)wrong, 0.0);
}

/* ---- host replay of the sequence model's kernels (seq_math.h) -------------------------- */

/* Row-major C[m][n] = op(A) op(B) + beta C with double sums: cuBLAS's part in the replay. */
static void replay_gemm(char trans_a, char trans_b, long m, long n, long k, const float *a,
                        long lda, const float *b, long ldb, float beta, float *c, long ldc)
{
    for (long i = 0; i < m; i++)
        for (long j = 0; j < n; j++) {
            double sum = 0.0;
            for (long p = 0; p < k; p++)
                sum += (double)(trans_a == 'T' ? a[p * lda + i] : a[i * lda + p]) *
                       (trans_b == 'T' ? b[j * ldb + p] : b[p * ldb + j]);
            float *out = &c[i * ldc + j];
            *out = beta != 0.0f ? (float)sum + beta * *out : (float)sum;
        }
}

/* One LSTM layer as seqmodel_cuda.cu sequences it (its kernels' per-thread functions, the
 * products in between), forward and backward. */
static void replay_lstm(int in, int H, int pad, int batch, int steps, const int *lengths,
                        const nn_lstm_weights_t *w, const float *x, const float *dy, float *y,
                        float *dx, nn_lstm_weights_t *g)
{
    const int G4 = 4 * H;
    const long rows = (long)batch * steps, y_row = 2L * H;
    float *gates[2], *cells[2];
    const size_t f = sizeof(float), units = (size_t)batch * H;
    float *dgates = xmalloc(rows * G4 * f), *h_prev = xmalloc(rows * H * f);
    float *carry_h = xmalloc(units * f), *carry_c = xmalloc(units * f);

    for (int d = 0; d < 2; d++) {
        const nn_lstm_dir_t *wd = &w->dir[d];
        gates[d] = xmalloc(rows * G4 * sizeof(float));
        cells[d] = xmalloc(rows * H * sizeof(float));
        replay_gemm('N', 'T', rows, G4, in, x, in, wd->w_ih, in, 0.0f, gates[d], G4);
        for (long i = 0; i < rows * G4; i++)
            gates[d][i] = (wd->b_ih[i % G4] + wd->b_hh[i % G4]) + gates[d][i];
        nn_lstm_step_t step = {batch, steps, H, d, 0, pad, lengths, gates[d], cells[d], y,
                               NULL};
        for (int s = 0; s < steps; s++) {
            int at = nn_seq_step_at(steps, d, s), before = nn_seq_step_before(d, at);
            if (s > 0)
                replay_gemm('N', 'T', batch, G4, H, y + before * y_row + d * H, steps * y_row,
                            wd->w_hh, H, 1.0f, gates[d] + (size_t)at * G4, (long)steps * G4);
            step.s = s;
            for (size_t i = 0; i < units; i++)
                nn_lstm_step_forward_at(&step, i);
        }
    }
    for (int d = 0; d < 2; d++) {
        const nn_lstm_dir_t *wd = &w->dir[d];
        nn_lstm_dir_t *gd = &g->dir[d];
        memset(carry_h, 0, units * f);
        memset(carry_c, 0, units * f);
        nn_lstm_step_back_t step = {batch, steps, H, d, 0, pad, lengths, gates[d], cells[d],
                                    dy, carry_h, carry_c, dgates, NULL};
        for (int s = steps - 1; s >= 0; s--) {
            step.s = s;
            for (size_t i = 0; i < units; i++)
                nn_lstm_step_backward_at(&step, i);
            if (s > 0)
                replay_gemm('N', 'N', batch, H, G4,
                            dgates + (size_t)nn_seq_step_at(steps, d, s) * G4,
                            (long)steps * G4, wd->w_hh, H, 0.0f, carry_h, H);
        }
        for (size_t i = 0; i < (size_t)rows * H; i++) {
            long long src = nn_lstm_h_prev_source(steps, (size_t)H, d, i);
            h_prev[i] = src < 0 ? 0.0f : y[src];
        }
        replay_gemm('T', 'N', G4, H, rows, dgates, G4, h_prev, H, 0.0f, gd->w_hh, H);
        replay_gemm('T', 'N', G4, in, rows, dgates, G4, x, in, 0.0f, gd->w_ih, in);
        for (int j = 0; j < G4; j++) {
            double sum = 0.0;
            for (long r = 0; r < rows; r++)
                sum += dgates[r * G4 + j];
            gd->b_ih[j] = gd->b_hh[j] = (float)sum;
        }
        replay_gemm('N', 'N', rows, in, G4, dgates, G4, wd->w_ih, in, d ? 1.0f : 0.0f, dx, in);
    }
    FREE_ALL(gates[0], gates[1], cells[0], cells[1], dgates, h_prev, carry_h, carry_c);
}

/* The replay against lstm.c (oneDNN's sums against double ones: 1e-5). */
static void check_host_lstm(int pad)
{
    enum { IN = 7, H = 6, BATCH = 3, STEPS = 5 };
    static const int lengths[BATCH] = {5, 1, 3};
    const size_t rows = (size_t)BATCH * STEPS;
    const size_t sizes[4] = {4 * H * IN, 4 * H * H, 4 * H, 4 * H};
    nn_lstm_weights_t w, g[2];
    float *tensors[3][8];
    for (int k = 0; k < 8; k++) {
        char name[32];
        snprintf(name, sizeof name, "replay.w%d", k);
        tensors[0][k] = hashed(sizes[k % 4], name, 0.4f, 0);
        tensors[1][k] = xcalloc(sizes[k % 4], sizeof(float));
        tensors[2][k] = xcalloc(sizes[k % 4], sizeof(float));
    }
    for (int d = 0; d < 2; d++) {
        nn_lstm_weights_t *views[3] = {&w, &g[0], &g[1]};
        for (int v = 0; v < 3; v++) {
            views[v]->dir[d].w_ih = tensors[v][4 * d];
            views[v]->dir[d].w_hh = tensors[v][4 * d + 1];
            views[v]->dir[d].b_ih = tensors[v][4 * d + 2];
            views[v]->dir[d].b_hh = tensors[v][4 * d + 3];
        }
    }
    float *x = hashed(rows * IN, "replay.x", 1, 0), *dy = hashed(rows * 2 * H, "replay.dy", 1, 0);
    float *y[2], *dx[2];
    for (int k = 0; k < 2; k++) {
        y[k] = xcalloc(rows * 2 * H, sizeof(float));
        dx[k] = xcalloc(rows * IN, sizeof(float));
    }
    nn_lstm_t lstm;
    nn_lstm_init(&lstm, IN, H, pad);
    nn_lstm_forward(&lstm, &w, x, BATCH, STEPS, lengths, y[0]);
    nn_lstm_backward(&lstm, &w, x, y[0], dy, dx[0], &g[0]);
    nn_lstm_free(&lstm);
    replay_lstm(IN, H, pad, BATCH, STEPS, lengths, &w, x, dy, y[1], dx[1], &g[1]);

    double worst = 0.0;
    for (int k = 0; k < 8; k++) {
        double err = normalised_error(tensors[2][k], tensors[1][k], sizes[k % 4]);
        worst = err > worst ? err : worst;
    }
    char label[96];
    const char *mode = pad ? "padded" : "exact";
    snprintf(label, sizeof label, "host replay lstm %s: outputs", mode);
    report(label, normalised_error(y[1], y[0], rows * 2 * H), 1e-5);
    snprintf(label, sizeof label, "host replay lstm %s: dx", mode);
    report(label, normalised_error(dx[1], dx[0], rows * IN), 1e-5);
    snprintf(label, sizeof label, "host replay lstm %s: 8 gradients (worst)", mode);
    report(label, worst, 1e-5);
    for (int v = 0; v < 3; v++)
        for (int k = 0; k < 8; k++)
            free(tensors[v][k]);
    FREE_ALL(x, dy, y[0], y[1], dx[0], dx[1]);
}

/* The model's per-element kernels against seqmodel.c's host buffers, bit for bit. */
static void check_host_seq_elements(void)
{
    enum { E = 12, H = 5, BATCH = 3, STEPS = 5 };
    static const int lengths[BATCH] = {5, 1, 3};
    const size_t rows = (size_t)BATCH * STEPS;
    nn_backend_t *cpu = nn_backend_cpu_create();
    seqmodel_t *m = seq_start(cpu, E, H, 0, NN_PRECISION_FP32);
    float *embeddings, *labels;
    seq_batch(BATCH, STEPS, E, lengths, &embeddings, &labels);
    seqmodel_forward(m, embeddings, BATCH, STEPS, lengths);

    float *x = xmalloc(rows * 3 * E * sizeof(float));
    float *sum = xmalloc(rows * 2 * H * sizeof(float));
    for (size_t i = 0; i < rows * E; i++)
        nn_seq_features_at(embeddings, lengths, STEPS, E, x, i);
    for (size_t i = 0; i < rows * 2 * H; i++)
        sum[i] = nn_seq_hidden_sum_at(m->h1, m->h2, m->a1, m->a2, embeddings, E, H, i);
    int same_x = memcmp(x, m->x, rows * 3 * E * sizeof(float)) == 0;
    int same_sum = memcmp(sum, m->summed, rows * 2 * H * sizeof(float)) == 0;
    report("host math: seq features (bit for bit)", !same_x, 0.0);
    report("host math: seq hidden sum (bit for bit)", !same_sum, 0.0);
    FREE_ALL(x, sum, embeddings, labels);
    seqmodel_destroy(m);
    cpu->destroy(cpu);
}

static int check_host_math(void)
{
    check_host_half();
    check_host_big_index();
    /* The batch norm walk covers each value once: planes smaller and larger than a step. */
    static const struct {
        int batch;
        size_t plane;
        grid_t g;
    } walks[] = {{3, 1, {1, 32}}, {5, 7, {3, 32}}, {2, 1000, {4, 32}}, {7, 225, {9, 256}},
                 {1, 50000, {2, 256}}, {4, 49, {1, 3}}};
    int covered = 1;
    for (size_t i = 0; i < sizeof walks / sizeof walks[0]; i++)
        covered &= walk_covers(walks[i].batch, walks[i].plane, walks[i].g);
    report("host walk: every value once, 6 grids", !covered, 0.0);
    check_host_bnorm(3, 5, 11, (grid_t){1, 32});
    check_host_bnorm(4, 3, 9, (grid_t){5, 16});
    check_host_bnorm(2, 2, 40, (grid_t){7, 64});
    check_host_maxpool(17, 3, 2, 1);
    check_host_maxpool(16, 3, 2, 1);
    check_host_maxpool(12, 2, 2, 0);
    check_host_maxpool(9, 3, 1, 1);
    check_host_lstm(0);
    check_host_lstm(1);
    check_host_seq_elements();

    /* Loss: the kernel's per-term arithmetic, summed in order, against host_ops.c. */
    const int rows = 53;
    float *logits, *labels;
    loss_inputs(rows, &logits, &labels);
    size_t count = (size_t)rows * NN_LOSS_CLASSES;
    float *want = xmalloc(count * sizeof(float)), *got = xmalloc(count * sizeof(float));
    double host_loss = nn_host_bce_loss(logits, labels, rows, want);
    nn_bce_weights_t weights = nn_bce_weights(rows);
    double all_sum = 0.0, any_sum = 0.0;
    for (size_t i = 0; i < count; i++) {
        int k = (int)(i % NN_LOSS_CLASSES);
        double term = nn_bce_term(logits[i], labels[i]);
        all_sum += term;
        any_sum += k == NN_LOSS_ANY_COLUMN ? term : 0.0;
        got[i] = nn_bce_dlogit(logits[i], labels[i], k, weights);
    }
    double loss = nn_bce_combine(all_sum, any_sum, rows);
    printf("loss %.17g vs host %.17g\n", loss, host_loss);
    report("host math: loss", fabs(loss - host_loss) / host_loss, 1e-15);
    report("host math: dlogits (bit for bit)", normalised_error(got, want, count), 0.0);
    free(logits);
    free(labels);
    free(want);
    free(got);

    /* Adam, with and without weight decay, over three steps. */
    size_t n = 4099;
    for (int decay = 0; decay <= 1; decay++) {
        nn_adam_t hp = {1e-3, 0.9, 0.999, 1e-8, decay ? 1e-2 : 0.0};
        float *w0 = hashed(n, "hm.w", 1, 0), *g = hashed(n, "hm.g", 1e-2f, 0);
        float *w1 = hashed(n, "hm.w", 1, 0);
        float *m0 = xcalloc(n, sizeof(float)), *v0 = xcalloc(n, sizeof(float));
        float *m1 = xcalloc(n, sizeof(float)), *v1 = xcalloc(n, sizeof(float));
        for (int step = 1; step <= 3; step++) {
            nn_host_adam_step(&hp, step, w0, g, m0, v0, n);
            nn_adam_scalars_t s = nn_adam_scalars(&hp, step);
            for (size_t i = 0; i < n; i++)
                nn_adam_update(&s, &w1[i], g[i], &m1[i], &v1[i]);
        }
        int same = memcmp(w0, w1, n * sizeof(float)) == 0 &&
                   memcmp(m0, m1, n * sizeof(float)) == 0 &&
                   memcmp(v0, v1, n * sizeof(float)) == 0;
        printf("adam (decay %g): max |w diff| %.3g, bit for bit: %s\n", hp.weight_decay,
               normalised_error(w1, w0, n), same ? "yes" : "no");
        report(decay ? "host math: adam with decay" : "host math: adam", !same, 0.0);
        FREE_ALL(w0, g, w1, m0, v0, m1, v1);
    }
    return failures ? EXIT_INTERNAL : EXIT_OK;
}

/* ---- main -------------------------------------------------------------------------------- */

/*
 * The loss per step, GPU vs CPU fp32: fp32 differs by summation order (1e-4 over the steps).
 * Mixed precision: test_nn_bf16 holds the tiny model's outputs and loss in bf16 to 5e-2
 * (26 convolutions deep, each adding 3.2e-3 in quadrature, times 3); fp16 rounds 8x finer:
 * 1e-2 (rounded up from 6e-3, since Adam's first steps amplify small gradient differences).
 */
static double training_limit(const char *precision)
{
    if (strcmp(precision, "bf16") == 0)
        return 5e-2;
    return strcmp(precision, "fp16") == 0 ? 1e-2 : 1e-4;
}

int main(int argc, char **argv)
{
    const char *device = "cuda", *model = NULL, *bench_model = NULL, *precision = "fp32";
    int ops = 0, host_math = 0, train_steps = 0, batch = 2, size = 64, iters = 3, profile = 0;
    int seq = 0, seq_bench = 0;
    double limit_forward = 1e-4, limit_grads = 1e-3;
    const opt_t options[] = {
        {0, "device", OPT_STRING, &device, "NAME",
         "GPU to check: cuda or cuda:N (cpu runs the same code on the CPU)", 1, 0, NULL},
        {0, "host-math", OPT_FLAG, &host_math, NULL,
         "check the kernels' loss and Adam arithmetic on the host (no GPU)", 1, 0, NULL},
        {0, "ops", OPT_FLAG, &ops, NULL, "every op, GPU vs CPU", 1, 0, NULL},
        {0, "model", OPT_STRING, &model, "NAME", "ResNeXt parity (tiny, resnext50_32x4d, ...)",
         1, 0, NULL},
        {0, "train", OPT_INT, &train_steps, "STEPS", "training run of the tiny model", 1, 1000,
         NULL},
        {0, "bench", OPT_STRING, &bench_model, "NAME", "images/s on the GPU", 1, 0, NULL},
        {0, "seq", OPT_FLAG, &seq, NULL,
         "the sequence model, GPU vs CPU: both paddings, fp32 and bf16, 5 Adam steps", 1, 0,
         NULL},
        {0, "seq-bench", OPT_FLAG, &seq_bench, NULL,
         "sequence model slices/s at the method's shapes (--precision, --iters)", 1, 0, NULL},
        {0, "batch", OPT_INT, &batch, "N", "batch for --model and --bench", 1, 4096, NULL},
        {0, "size", OPT_INT, &size, "PX", "image size for --model and --bench", 32, 4096, NULL},
        {0, "iters", OPT_INT, &iters, "N", "timed steps for --bench", 1, 1000, NULL},
        {0, "precision", OPT_CHOICE, &precision, "P",
         "--bench and --train arithmetic on the GPU (--train: the CPU stays fp32)", 1, 0,
         NN_PRECISION_CHOICES},
        {0, "profile", OPT_FLAG, &profile, NULL,
         "--bench: time by kind of op instead (waits after each op)", 1, 0, NULL},
        {0, "limit-forward", OPT_DOUBLE, &limit_forward, "E",
         "--model limit for outputs, loss, running stats", 0, 1, NULL},
        {0, "limit-grads", OPT_DOUBLE, &limit_grads, "E", "--model limit for gradients", 0, 1,
         NULL},
        {0},
    };
    const opt_spec_t spec = {
        "gpu_parity", "[options]",
        "Checks the CUDA backend of the NN engine against the CPU backend, and measures it.",
        "Each check prints 'ok' or 'FAIL', the normalised error max|gpu - cpu| / max|cpu| and "
        "its limit.",
        "  2  the device cannot start here (the reason is printed)\n"
        "  1  a check failed\n",
        options, 0, 0};
    char **positional;
    log_init("gpu_parity", LOG_INFO);
    opt_parse(&spec, argc, argv, &positional);
    free(positional); /* no positional arguments */

    if (host_math)
        return check_host_math();

    char reason[512];
    nn_backend_t *gpu = nn_backend_open(device, reason, sizeof reason);
    if (!gpu)
        die(EXIT_USAGE, "%s: %s", device, reason);
    nn_backend_t *cpu = nn_backend_open("cpu", reason, sizeof reason);
    if (!cpu)
        die(EXIT_INTERNAL, "cpu: %s", reason);

    if (ops)
        check_ops(cpu, gpu);
    if (model)
        check_model(cpu, gpu, model, batch, size, limit_forward, limit_grads);
    if (train_steps)
        check_training(cpu, gpu, train_steps, training_limit(precision), precision);
    if (bench_model)
        bench(gpu, bench_model, batch, size, iters, precision, profile);
    if (seq)
        check_seq_all(cpu, gpu);
    if (seq_bench)
        bench_seq(gpu, iters, precision);

    gpu->destroy(gpu);
    cpu->destroy(cpu);
    if (failures)
        printf("%d check(s) failed\n", failures);
    return failures ? EXIT_INTERNAL : EXIT_OK;
}
