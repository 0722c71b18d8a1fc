/*
 * GPU checks of the NN engine, run by tests/gpu/run.sh on a machine with a GPU:
 *   --ops           every op of the CUDA backend against the CPU backend, same inputs
 *   --model NAME    a ResNeXt's training forward, backward and eval forward, GPU vs CPU
 *   --train STEPS   a short training run (tiny model, Adam) on both; the losses compare
 *   --bench NAME    images/s of training and eval steps on the GPU
 * and one check that needs no GPU (tests/t_cuda_build.sh):
 *   --host-math     the CUDA kernels' element arithmetic (nn/math_cuda.h) against the host
 *                   loss and Adam of host_ops.c, compiled here for the CPU
 * Errors are normalised: max |gpu - cpu| / max |cpu| per output, against a stated limit.
 * A device that cannot start exits 2 (EXIT_USAGE) with the reason, as the programs do.
 */
#include "check.h"
#include "exitcodes.h"
#include "log.h"
#include "opt.h"
#include "nn/backend_cuda.h"
#include "nn/math_cuda.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/resnext.h"

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

static void run_conv(nn_backend_t *be, const void *arg, outputs_t *out)
{
    const conv_case_t *cc = arg;
    nn_conv_t op = {cc->in_ch, cc->out_ch, cc->kernel, cc->stride, cc->pad, cc->groups,
                    NULL, 0, cc->precision};
    int oh = out_size(cc->size, cc->kernel, cc->stride, cc->pad);
    size_t wcount;
    nn_tensor_t x = tensor_hashed(be, cc->n, cc->in_ch, cc->size, cc->size, "conv.x", 1, 0);
    nn_tensor_t dy = tensor_hashed(be, cc->n, cc->out_ch, oh, oh, "conv.dy", 1, 0);
    float *w = conv_weights(be, cc, "conv.w", &wcount);
    nn_tensor_t y = tensor_zero(be, cc->n, cc->out_ch, oh, oh);
    nn_tensor_t dx = tensor_zero(be, cc->n, cc->in_ch, cc->size, cc->size);
    float *dw = be->alloc(be, wcount * sizeof(float));

    be->conv_forward(be, &op, &x, w, &y);
    be->conv_backward_data(be, &op, &dy, w, &dx);
    be->conv_backward_weights(be, &op, &x, &dy, dw);
    keep(out, be, "forward", y.data, nn_numel(&y));
    keep(out, be, "backward data", dx.data, nn_numel(&dx));
    keep(out, be, "backward weights", dw, wcount);

    be->release_plan(be, &op.plan);
    RELEASE_ALL(be, x.data, dy.data, w, y.data, dx.data, dw);
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
} conv_bn_case_t;

static void run_conv_bn_infer(nn_backend_t *be, const void *arg, outputs_t *out)
{
    const conv_bn_case_t *cb = arg;
    const conv_case_t *cc = &cb->conv;
    nn_conv_t op = {cc->in_ch, cc->out_ch, cc->kernel, cc->stride, cc->pad, cc->groups,
                    NULL, 1, cc->precision};
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

/* Limits: fp32 results differ by summation order only (cuDNN's algorithms, double sums in
 * batch norm): 1e-5 of the output's scale; TF32 products (bf16 requested): 1e-2. */
#define LIMIT_FP32 1e-5
#define LIMIT_TF32 1e-2

static void check_ops(nn_backend_t *cpu, nn_backend_t *gpu)
{
    static const struct {
        const char *name;
        conv_case_t c;
    } convs[] = {
        {"conv 7x7/2 stem 3->16", {2, 3, 16, 37, 7, 2, 3, 1, NN_PRECISION_FP32}},
        {"conv 1x1 32->64", {2, 32, 64, 14, 1, 1, 0, 1, NN_PRECISION_FP32}},
        {"conv 1x1/2 32->64 (downsample)", {2, 32, 64, 14, 1, 2, 0, 1, NN_PRECISION_FP32}},
        {"conv 3x3 grouped 64->64 g8", {2, 64, 64, 14, 3, 1, 1, 8, NN_PRECISION_FP32}},
        {"conv 3x3/2 grouped 64->64 g32", {2, 64, 64, 15, 3, 2, 1, 32, NN_PRECISION_FP32}},
        {"conv 3x3 grouped g8 (bf16: tf32)", {2, 64, 64, 14, 3, 1, 1, 8, NN_PRECISION_BF16}},
        {"conv 1x1 32->64 (bf16: tf32)", {2, 32, 64, 14, 1, 1, 0, 1, NN_PRECISION_BF16}},
    };
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++)
        check_op(cpu, gpu, convs[i].name, run_conv, &convs[i].c,
                 convs[i].c.precision == NN_PRECISION_FP32 ? LIMIT_FP32 : LIMIT_TF32);

    bn_case_t bn = {3, 24, 11, 0}, bn_relu = {3, 24, 11, 1}, bn_big = {8, 8, 64, 1};
    check_op(cpu, gpu, "batch norm", run_bnorm_train, &bn, LIMIT_FP32);
    check_op(cpu, gpu, "batch norm + relu", run_bnorm_train, &bn_relu, LIMIT_FP32);
    check_op(cpu, gpu, "batch norm + relu 8x8x64x64", run_bnorm_train, &bn_big, LIMIT_FP32);

    conv_bn_case_t cbn[] = {
        {{2, 32, 64, 14, 1, 1, 0, 1, NN_PRECISION_FP32}, 1, 1},
        {{2, 64, 64, 14, 3, 1, 1, 8, NN_PRECISION_FP32}, 0, 1},
        {{2, 32, 64, 14, 1, 2, 0, 1, NN_PRECISION_FP32}, 0, 0},
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

/* A few Adam steps of the tiny model on fixed data; the loss of every step compares. */
static void check_training(nn_backend_t *cpu, nn_backend_t *gpu, int steps, double limit)
{
    const int batch = 4, size = 64;
    model_run_t runs[2];
    model_start(&runs[0], cpu, "tiny", batch, size);
    model_start(&runs[1], gpu, "tiny", batch, size);
    nn_adam_t hp = {1e-3, 0.9, 0.999, 1e-8, 1e-4};
    double worst = 0.0, first = 0.0, last[2] = {0, 0};

    for (int k = 0; k < 2; k++)
        nn_params_alloc_adam(&runs[k].m->ps);
    for (int step = 1; step <= steps; step++) {
        double loss[2];
        for (int k = 0; k < 2; k++) {
            model_run_t *r = &runs[k];
            nn_paramset_t *ps = &r->m->ps;
            resnext_forward(r->m, &r->x, 1);
            loss[k] = r->be->bce_loss(r->be, r->m->logits.data, r->labels, batch,
                                      r->m->dlogits.data);
            resnext_backward(r->m, r->m->dlogits.data);
            r->be->adam_step(r->be, &hp, step, ps->params, ps->grads, ps->adam_m, ps->adam_v,
                             ps->param_count);
            last[k] = loss[k];
        }
        if (step == 1)
            first = loss[0];
        double err = fabs(loss[1] - loss[0]) / fabs(loss[0]);
        worst = err > worst ? err : worst;
    }
    printf("     training tiny %dpx b%d, %d Adam steps: loss %.6f -> cpu %.6f, gpu %.6f\n",
           size, batch, steps, first, last[0], last[1]);
    report("training: loss per step, gpu vs cpu", worst, limit);
    if (!(last[0] < first))
        printf("note: the loss did not fall over %d steps\n", steps);
    model_end(&runs[0]);
    model_end(&runs[1]);
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
    resnext_set_precision(r.m, strcmp(precision, "bf16") == 0 ? NN_PRECISION_BF16
                                                               : NN_PRECISION_FP32);
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

static int check_host_math(void)
{
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

int main(int argc, char **argv)
{
    const char *device = "cuda", *model = NULL, *bench_model = NULL, *precision = "fp32";
    int ops = 0, host_math = 0, train_steps = 0, batch = 2, size = 64, iters = 3, profile = 0;
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
        {0, "batch", OPT_INT, &batch, "N", "batch for --model and --bench", 1, 4096, NULL},
        {0, "size", OPT_INT, &size, "PX", "image size for --model and --bench", 32, 4096, NULL},
        {0, "iters", OPT_INT, &iters, "N", "timed steps for --bench", 1, 1000, NULL},
        {0, "precision", OPT_CHOICE, &precision, "P", "--bench arithmetic", 1, 0, "fp32|bf16"},
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
        check_training(cpu, gpu, train_steps, 1e-4);
    if (bench_model)
        bench(gpu, bench_model, batch, size, iters, precision, profile);

    gpu->destroy(gpu);
    cpu->destroy(cpu);
    if (failures)
        printf("%d check(s) failed\n", failures);
    return failures ? EXIT_INTERNAL : EXIT_OK;
}
