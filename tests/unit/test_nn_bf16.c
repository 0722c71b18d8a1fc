/*
 * ResNeXt in bf16 mixed precision against torchvision in fp32, and determinism.
 *
 * Part 1, bf16: the fp32 reference dump of tests/ref/resnext_ref.py (same hashed weights,
 * input and labels as test_nn_resnext), against the engine with resnext_set_precision(BF16):
 * eval logits and embedding, training logits and embedding, every parameter gradient.
 * Cases: "tiny" (64 px, batch 3, every tensor whole) and "resnext101_32x8d" (64 px, batch 2,
 * gradients as norm, max and 2048 sampled values). NN_TEST_MODELS=NAME runs only the cases
 * whose model contains NAME.
 *
 * Tolerances, from bf16's precision. bf16 keeps 8 significant bits: rounding a value costs
 * a relative error up to u = 2^-8 = 3.9e-3, about u / sqrt(3) = 2.3e-3 in RMS. A convolution
 * rounds both its input and its weights and sums in fp32, so each output carries an
 * independent relative error of about sqrt(2) * 2.3e-3 = 3.2e-3 (RMS), the sum adding nothing
 * systematic. Single convolutions (forward, backward data, backward weights, in the layouts
 * the model uses) are therefore held to 1e-2 against fp32.
 * Batch norm renormalises after every convolution, so errors neither grow nor shrink in
 * scale from layer to layer; independent errors from the d convolutions on the path to an
 * output add in quadrature: relative L2 about 3.2e-3 * sqrt(d). Paths: tiny 2 + 3 * 8 = 26
 * convs deep, ResNeXt-101 2 + 3 * 33 = 101: expected at most 1.6e-2 and 3.2e-2 (the residual
 * branches enter with bn3 gains near 0.1, which damps them). Outputs and loss are allowed 3x
 * that: tiny 5e-2, ResNeXt-101 1e-1.
 * Gradients in training mode at this init are ill-conditioned: batch statistics over few
 * values per channel and relu kinks turn tiny forward changes into large gradient changes.
 * The test measures that sensitivity S itself: the fp32 engine's gradients with only the
 * input image rounded to bf16, against torch's with the exact input (median over tensors;
 * 0.06 for tiny and 0.18 for ResNeXt-101). bf16 compute rounds the inputs of all d
 * convolutions, each roughly as harmful as rounding the image, so the median gradient error
 * against torch may reach sqrt(d) * S in quadrature; it is held to 5 S (sqrt(d) is 5.1
 * and 10; measured 3.5 S and 1.7 S), and every tensor to a relative L2 of 1 (a lost or
 * sign-flipped gradient reaches 1 and more).
 *
 * Part 2, determinism: the same seed and thread count must give bit-identical results.
 * Two fresh models of "tiny" (64 px, batch 3), in fp32 and in bf16, each take two training
 * steps (forward, loss, backward, Adam); every gradient and weight must match bit for bit.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "h5io.h"
#include "log.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/resnext.h"
#include "refdump.h"

typedef struct {
    const char *model;
    int size, batch, full;
    double tol_out, tol_loss;
} bf16_case_t;

#define TOL_CONV 1e-2       /* one convolution in bf16 against fp32 */
#define SENSITIVITY_MULT 5.0 /* median gradient error over the measured sensitivity */
#define TOL_GRAD_TENSOR 1.0 /* any one gradient tensor */

static int failures;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double rel_l2(const float *a, const float *ref, size_t n)
{
    double err2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        err2 += d * d;
        ref2 += (double)ref[i] * ref[i];
    }
    return err2 == 0.0 ? 0.0 : sqrt(err2) / fmax(sqrt(ref2), 1e-30);
}

/* ---- single convolutions ---------------------------------------------------------------- */

typedef struct {
    const char *what;
    int in_ch, out_ch, kernel, stride, groups, size;
} conv_case_t;

/* Forward, backward data and backward weights in bf16 against the same in fp32. */
static void check_conv(nn_backend_t *be, const conv_case_t *k)
{
    const int n = 2;
    int out = (k->size + 2 * (k->kernel / 2) - k->kernel) / k->stride + 1;
    int layout = k->in_ch % 16 == 0 ? NN_LAYOUT_NATIVE : NN_LAYOUT_NCHW;
    nn_tensor_t x = {.n = n, .c = k->in_ch, .h = k->size, .w = k->size, .layout = layout};
    nn_tensor_t y = {.n = n, .c = k->out_ch, .h = out, .w = out, .layout = NN_LAYOUT_NATIVE};
    size_t wcount = (size_t)k->out_ch * (k->in_ch / k->groups) * k->kernel * k->kernel;
    x.data = be->alloc(be, nn_numel(&x) * sizeof(float));
    nn_tensor_t dy = y, dx[2] = {x, x}, yy[2] = {y, y};
    dy.data = be->alloc(be, nn_numel(&y) * sizeof(float));
    float *w = be->alloc(be, wcount * sizeof(float)), *dw[2];
    nn_fill_hashed(x.data, nn_numel(&x), 11, 1.0f, 0.0f);
    nn_fill_hashed(dy.data, nn_numel(&y), 12, 1.0f, 0.0f);
    nn_fill_hashed(w, wcount, 13, 0.1f, 0.0f);

    for (int p = 0; p < 2; p++) {
        nn_conv_t op = {.in_ch = k->in_ch, .out_ch = k->out_ch, .kernel = k->kernel,
                        .stride = k->stride, .pad = k->kernel / 2, .groups = k->groups,
                        .precision = p ? NN_PRECISION_BF16 : NN_PRECISION_FP32};
        yy[p].data = be->alloc(be, nn_numel(&y) * sizeof(float));
        dx[p].data = be->alloc(be, nn_numel(&x) * sizeof(float));
        dw[p] = be->alloc(be, wcount * sizeof(float));
        be->conv_forward(be, &op, &x, w, &yy[p]);
        be->conv_backward_data(be, &op, &dy, w, &dx[p]);
        be->conv_backward_weights(be, &op, &x, &dy, dw[p]);
        be->release_plan(be, &op.plan);
    }
    double e[3] = {rel_l2(yy[1].data, yy[0].data, nn_numel(&y)),
                   rel_l2(dx[1].data, dx[0].data, nn_numel(&x)), rel_l2(dw[1], dw[0], wcount)};
    int ok = e[0] <= TOL_CONV && e[1] <= TOL_CONV && e[2] <= TOL_CONV;
    failures += !ok;
    printf("%-4s conv %-22s bf16 vs fp32 rel_l2: forward %.1e, backward data %.1e, "
           "backward weights %.1e (tol %.0e)\n", ok ? "ok" : "FAIL", k->what, e[0], e[1], e[2],
           TOL_CONV);
    for (int p = 0; p < 2; p++) {
        be->release(be, yy[p].data);
        be->release(be, dx[p].data);
        be->release(be, dw[p]);
    }
    be->release(be, x.data);
    be->release(be, dy.data);
    be->release(be, w);
}

/* n values at a and b are the same bits. */
static int same_bits(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/*
 * A conv's two backward calls share one conversion of dy to bf16 when they run back to back
 * on the same dy (the second reads the first's copy), and only they: each result bit for bit
 * what the call gives on an op of its own, also for a dy at another address, a dy the host
 * rewrote between two data gradients, and an op made anew at a released op's address.
 */
static void check_shared_dy(nn_backend_t *be)
{
    const int n = 2, in_ch = 64, out_ch = 128, size = 14;
    nn_tensor_t x = {.n = n, .c = in_ch, .h = size, .w = size, .layout = NN_LAYOUT_NATIVE};
    nn_tensor_t dy[3] = {{.n = n, .c = out_ch, .h = size, .w = size,
                          .layout = NN_LAYOUT_NATIVE}};
    dy[1] = dy[2] = dy[0];
    const size_t xs = nn_numel(&x), ys = nn_numel(&dy[0]), ws = (size_t)out_ch * in_ch;
    x.data = be->alloc(be, xs * sizeof(float));
    nn_fill_hashed(x.data, xs, 21, 1.0f, 0.0f);
    for (int k = 0; k < 3; k++) {
        dy[k].data = be->alloc(be, ys * sizeof(float));
        nn_fill_hashed(dy[k].data, ys, 22 + k % 2, 1.0f, 0.0f); /* dy 2 starts as dy 0 */
    }
    float *w = be->alloc(be, ws * sizeof(float));
    nn_fill_hashed(w, ws, 24, 0.1f, 0.0f);
    nn_conv_t proto = {.in_ch = in_ch, .out_ch = out_ch, .kernel = 1, .stride = 1,
                       .groups = 1, .precision = NN_PRECISION_BF16};

    /* Alone: every call on an op of its own. */
    nn_tensor_t dx_alone[2] = {x, x}, dx = x;
    float *dw_alone[2], *dw = be->alloc(be, ws * sizeof(float));
    dx.data = be->alloc(be, xs * sizeof(float));
    for (int k = 0; k < 2; k++) {
        nn_conv_t a = proto, b = proto;
        dx_alone[k].data = be->alloc(be, xs * sizeof(float));
        dw_alone[k] = be->alloc(be, ws * sizeof(float));
        be->conv_backward_data(be, &a, &dy[k], w, &dx_alone[k]);
        be->conv_backward_weights(be, &b, &x, &dy[k], dw_alone[k]);
        be->release_plan(be, &a.plan);
        be->release_plan(be, &b.plan);
    }

    /* Weights then data on dy 0 (shared), data again, weights on dy 0 then data on dy 1. */
    nn_conv_t op = proto;
    int bad = 0, checks = 0;
    be->conv_backward_weights(be, &op, &x, &dy[0], dw);
    bad += !same_bits(dw, dw_alone[0], ws);
    be->conv_backward_data(be, &op, &dy[0], w, &dx);
    bad += !same_bits(dx.data, dx_alone[0].data, xs);
    be->conv_backward_data(be, &op, &dy[0], w, &dx);
    bad += !same_bits(dx.data, dx_alone[0].data, xs);
    be->conv_backward_weights(be, &op, &x, &dy[0], dw);
    be->conv_backward_data(be, &op, &dy[1], w, &dx);
    bad += !same_bits(dx.data, dx_alone[1].data, xs);
    be->conv_backward_weights(be, &op, &x, &dy[1], dw);
    bad += !same_bits(dw, dw_alone[1], ws);
    checks += 5;

    /* dy 2 holds dy 0, then the host writes dy 1 into it between two data gradients. */
    be->conv_backward_data(be, &op, &dy[2], w, &dx);
    memcpy(dy[2].data, dy[1].data, ys * sizeof(float));
    be->conv_backward_data(be, &op, &dy[2], w, &dx);
    bad += !same_bits(dx.data, dx_alone[1].data, xs);

    /* A weight gradient on dy 2 (after a call on dy 1, so that it converts), the op released
     * and made anew in place, dy 0 written into dy 2: the new op's data gradient is dy 0's. */
    be->conv_backward_data(be, &op, &dy[1], w, &dx);
    be->conv_backward_weights(be, &op, &x, &dy[2], dw);
    be->release_plan(be, &op.plan);
    op = proto;
    memcpy(dy[2].data, dy[0].data, ys * sizeof(float));
    be->conv_backward_data(be, &op, &dy[2], w, &dx);
    bad += !same_bits(dx.data, dx_alone[0].data, xs);
    checks += 2;
    be->release_plan(be, &op.plan);

    printf("%-4s conv backward in bf16, dy converted once for both calls: %d of %d results "
           "differ from the calls alone\n", bad ? "FAIL" : "ok", bad, checks);
    failures += bad != 0;
    for (int k = 0; k < 2; k++) {
        be->release(be, dx_alone[k].data);
        be->release(be, dw_alone[k]);
    }
    for (int k = 0; k < 3; k++)
        be->release(be, dy[k].data);
    be->release(be, dx.data);
    be->release(be, dw);
    be->release(be, w);
    be->release(be, x.data);
}

static float round_bf16(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&v, &u, sizeof(v));
    return v;
}

/* ---- 16-bit activations (NN_LAYOUT_NATIVE_HALF) ------------------------------------------ */

/* A tensor's values in plain fp32 order (a copy, owned by the caller). */
static float *plain_copy(nn_backend_t *be, const nn_tensor_t *t)
{
    float *out = xmalloc(nn_numel(t) * sizeof(float));
    be->to_plain(be, t, out);
    return out;
}

/*
 * Inference's fused conv + batch norm + residual + relu, against a host reference in double,
 * with the residual in 16-channel blocks and a convolution whose output layout oneDNN picks
 * itself (8 channels a group): the residual must be read in that layout. Each value within
 * `rel` of the sum of its terms' magnitudes (fp32: sums' rounding; bf16: 2^-6, twice the
 * rounding of a product of two bf16 values).
 */
static void check_fused_residual(nn_backend_t *be, int in_ch, int out_ch, int groups,
                                 int kernel)
{
    const int n = 1, h = 11, w = 7, pad = kernel / 2;
    nn_tensor_t x = {.n = n, .c = in_ch, .h = h, .w = w, .layout = NN_LAYOUT_NCHW};
    nn_tensor_t src = {.n = n, .c = 16, .h = h, .w = w, .layout = NN_LAYOUT_NCHW};
    nn_tensor_t res = {.n = n, .c = out_ch, .h = h, .w = w, .layout = NN_LAYOUT_NATIVE};
    nn_tensor_t y = res;
    int per_in = in_ch / groups, per_out = out_ch / groups;
    size_t wcount = (size_t)out_ch * per_in * kernel * kernel, ycount = nn_numel(&y);
    x.data = be->alloc(be, nn_numel(&x) * sizeof(float));
    src.data = be->alloc(be, nn_numel(&src) * sizeof(float));
    res.data = be->alloc(be, ycount * sizeof(float));
    y.data = be->alloc(be, ycount * sizeof(float));
    float *wt = be->alloc(be, wcount * sizeof(float));
    float *wsrc = be->alloc(be, (size_t)out_ch * 16 * sizeof(float));
    float *bn = be->alloc(be, 4 * (size_t)out_ch * sizeof(float));
    nn_fill_hashed(x.data, nn_numel(&x), 31, 1.0f, 0.0f);
    nn_fill_hashed(src.data, nn_numel(&src), 32, 1.0f, 0.0f);
    nn_fill_hashed(wt, wcount, 33, 0.3f, 0.0f);
    nn_fill_hashed(wsrc, (size_t)out_ch * 16, 34, 0.3f, 0.0f);
    nn_fill_hashed(bn, 2 * (size_t)out_ch, 35, 0.5f, 0.5f);         /* gamma, beta */
    nn_fill_hashed(bn + 2 * out_ch, (size_t)out_ch, 36, 0.1f, 0.0f); /* running mean */
    nn_fill_hashed(bn + 3 * out_ch, (size_t)out_ch, 37, 0.5f, 1.0f); /* running var */
    nn_bnorm_t norm = {out_ch, 1e-5f, 0.1f, NULL};
    const float *gamma = bn, *beta = bn + out_ch, *mean = bn + 2 * out_ch;
    const float *var = bn + 3 * out_ch;

    /* A residual in 16-channel blocks, from a 1x1 convolution of other values. */
    nn_conv_t make = {16, out_ch, 1, 1, 0, 1, NULL, 0, NN_PRECISION_FP32};
    be->conv_bn_forward_infer(be, &make, &norm, &src, wsrc, gamma, beta, mean, var, NULL, 0,
                              &res);
    float *r = plain_copy(be, &res);

    for (int bf16 = 0; bf16 < 2; bf16++) {
        nn_conv_t op = {in_ch, out_ch, kernel, 1, pad, groups, NULL, 0,
                        bf16 ? NN_PRECISION_BF16 : NN_PRECISION_FP32};
        be->conv_bn_forward_infer(be, &op, &norm, &x, wt, gamma, beta, mean, var, &res, 1, &y);
        float *got = plain_copy(be, &y);
        double rel = bf16 ? ldexp(1.0, -6) : 1e-5, worst = 0.0;
        for (int o = 0; o < out_ch; o++) {
            int g = o / per_out;
            double scale = gamma[o] / sqrt((double)var[o] + 1e-5);
            double shift = beta[o] - mean[o] * scale;
            for (int oy = 0; oy < h; oy++)
                for (int ox = 0; ox < w; ox++) {
                    double sum = 0.0, size = 0.0;
                    for (int i = 0; i < per_in; i++)
                        for (int ky = 0; ky < kernel; ky++)
                            for (int kx = 0; kx < kernel; kx++) {
                                int iy = oy + ky - pad, ix = ox + kx - pad;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                                    continue;
                                double term =
                                    (double)x.data[((size_t)(g * per_in + i) * h + iy) * w + ix] *
                                    wt[(((size_t)o * per_in + i) * kernel + ky) * kernel + kx];
                                sum += term;
                                size += fabs(term);
                            }
                    size_t at = ((size_t)o * h + oy) * w + ox;
                    double want = fmax(sum * scale + shift + r[at], 0.0);
                    double allowed = rel * (size * fabs(scale) + fabs(shift) + fabs(r[at]));
                    worst = fmax(worst, fabs(got[at] - want) / fmax(allowed, 1e-12));
                }
        }
        int ok = worst <= 1.0;
        failures += !ok;
        printf("%-4s conv %d->%d groups %d %dx%d + bn + blocked residual + relu, %s: worst "
               "%.2f of the allowed\n", ok ? "ok" : "FAIL", in_ch, out_ch, groups, kernel,
               kernel, bf16 ? "bf16" : "fp32", worst);
        free(got);
        be->release_plan(be, &op.plan);
    }
    be->release_plan(be, &make.plan);
    free(r);
    be->release(be, x.data);
    be->release(be, src.data);
    be->release(be, res.data);
    be->release(be, y.data);
    be->release(be, wt);
    be->release(be, wsrc);
    be->release(be, bn);
}

/* conv (bf16 products) + batch norm (+ residual) + relu into y, fp32 or half y. */
static void conv_bn_relu(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x, const float *w,
                         const float *bn, const nn_tensor_t *residual, nn_tensor_t *y)
{
    nn_bnorm_t norm = {op->out_ch, 1e-5f, 0.1f, NULL};
    const float *gamma = bn, *beta = bn + op->out_ch, *mean = bn + 2 * op->out_ch;
    const float *var = bn + 3 * op->out_ch;
    be->conv_bn_forward_infer(be, op, &norm, x, w, gamma, beta, mean, var, residual, 1, y);
}

/*
 * The ops bf16 inference runs on half tensors, against the same ops on fp32 tensors (all
 * convolutions in bf16 products either way). Channel counts 32 (16-channel blocks) and 24
 * (plain order); a grouped convolution of 16 and of 8 channels a group.
 * - conv + batch norm + relu writing half: each value is the fp32 path's rounded once to
 *   bf16 (|h - f| <= 2^-8 |f| per value, plus 1e-5 of the largest for the sums' order);
 * - a second conv reading half, with a half residual: only the residual's rounding is new
 *   (relative L2 within TOL_CONV, and not 0: the half path ran);
 * - max pool on half: exactly the max of the half input's values (rounding is monotonic);
 * - average pool on half: exactly the mean, summed in order, of the half values.
 */
static void check_half_ops(nn_backend_t *be, int ch, int groups)
{
    const int n = 2, size = 9;
    if (!be->half_activations)
        die(1, "the CPU backend should take half tensors");
    nn_conv_t c1 = {ch, ch, 1, 1, 0, 1, NULL, 0, NN_PRECISION_BF16};
    nn_conv_t c2 = {ch, ch, 3, 1, 1, groups, NULL, 0, NN_PRECISION_BF16};
    nn_conv_t c1h = c1, c2h = c2;
    nn_pool_t pool = {3, 2, 1, NULL}, poolh = pool;
    nn_tensor_t x = {.n = n, .c = ch, .h = size, .w = size};
    size_t count = nn_numel(&x), w1n = (size_t)ch * ch, w2n = (size_t)ch * (ch / groups) * 9;
    x.data = be->alloc(be, count * sizeof(float));
    float *w1 = be->alloc(be, w1n * sizeof(float)), *w2 = be->alloc(be, w2n * sizeof(float));
    float *bn = be->alloc(be, 4 * (size_t)ch * sizeof(float));
    nn_fill_hashed(x.data, count, 21, 1.0f, 0.0f);
    nn_fill_hashed(w1, w1n, 22, 0.2f, 0.0f);
    nn_fill_hashed(w2, w2n, 23, 0.2f, 0.0f);
    nn_fill_hashed(bn, 2 * (size_t)ch, 24, 0.5f, 0.5f);            /* gamma, beta */
    nn_fill_hashed(bn + 2 * ch, (size_t)ch, 25, 0.1f, 0.0f);        /* running mean */
    nn_fill_hashed(bn + 3 * ch, (size_t)ch, 26, 0.5f, 1.0f);        /* running var */

    /* [0]: fp32 native tensors, [1]: half ones. */
    nn_tensor_t y[2], z[2], p[2], e[2];
    for (int h = 0; h < 2; h++) {
        int layout = h ? NN_LAYOUT_NATIVE_HALF : NN_LAYOUT_NATIVE;
        y[h] = (nn_tensor_t){be->alloc(be, count * sizeof(float)), n, ch, size, size, layout};
        z[h] = y[h];
        z[h].data = be->alloc(be, count * sizeof(float));
        p[h] = (nn_tensor_t){be->alloc(be, count * sizeof(float)), n, ch, 5, 5, layout};
        e[h] = (nn_tensor_t){be->alloc(be, (size_t)n * ch * sizeof(float)), n, ch, 1, 1, 0};
        conv_bn_relu(be, h ? &c1h : &c1, &x, w1, bn, NULL, &y[h]);
        conv_bn_relu(be, h ? &c2h : &c2, &y[h], w2, bn, &y[h], &z[h]);
        be->maxpool_forward(be, h ? &poolh : &pool, &z[h], &p[h], 0);
        be->avgpool_forward(be, &z[h], &e[h]);
    }

    float *yf = plain_copy(be, &y[0]), *yh = plain_copy(be, &y[1]);
    double largest = 0.0, worst = 0.0;
    for (size_t i = 0; i < count; i++)
        largest = fmax(largest, fabs(yf[i]));
    for (size_t i = 0; i < count; i++) {
        double allowed = ldexp(fabs(yf[i]), -8) + 1e-5 * largest;
        worst = fmax(worst, fabs(yh[i] - yf[i]) / allowed);
    }
    int ok = worst <= 1.0;
    failures += !ok;
    printf("%-4s half %d ch, groups %d: conv output rounded once (worst %.2f of the allowed)\n",
           ok ? "ok" : "FAIL", ch, groups, worst);

    float *zf = plain_copy(be, &z[0]), *zh = plain_copy(be, &z[1]);
    double rel = rel_l2(zh, zf, count);
    ok = rel > 0.0 && rel <= TOL_CONV;
    failures += !ok;
    printf("%-4s half %d ch: conv on half input + half residual vs fp32: rel_l2 %.1e "
           "(0 < it <= %.0e)\n", ok ? "ok" : "FAIL", ch, rel, TOL_CONV);

    /* Max pool 3x3/2 pad 1 and the mean over the plane, on the half values themselves. */
    float *ph = plain_copy(be, &p[1]);
    size_t pool_diffs = 0, mean_diffs = 0;
    for (int b = 0; b < n * ch; b++) {
        const float *plane = zh + (size_t)b * size * size;
        for (int oy = 0; oy < 5; oy++)
            for (int ox = 0; ox < 5; ox++) {
                float best = -INFINITY;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int iy = 2 * oy + dy, ix = 2 * ox + dx;
                        if (iy >= 0 && iy < size && ix >= 0 && ix < size)
                            best = fmaxf(best, plane[iy * size + ix]);
                    }
                pool_diffs += ph[(size_t)b * 25 + oy * 5 + ox] != best;
            }
        float sum = 0.0f;
        for (int k = 0; k < size * size; k++)
            sum += plane[k];
        mean_diffs += e[1].data[b] != sum / (float)(size * size);
    }
    ok = pool_diffs == 0 && mean_diffs == 0;
    failures += !ok;
    printf("%-4s half %d ch: max pool %zu and average pool %zu values differ from the half "
           "input's own (of %d and %d)\n", ok ? "ok" : "FAIL", ch, pool_diffs, mean_diffs,
           n * ch * 25, n * ch);

    free(yf);
    free(yh);
    free(zf);
    free(zh);
    free(ph);
    nn_conv_t *convs[] = {&c1, &c2, &c1h, &c2h};
    for (int k = 0; k < 4; k++)
        be->release_plan(be, &convs[k]->plan);
    be->release_plan(be, &pool.plan);
    be->release_plan(be, &poolh.plan);
    for (int h = 0; h < 2; h++) {
        be->release(be, y[h].data);
        be->release(be, z[h].data);
        be->release(be, p[h].data);
        be->release(be, e[h].data);
    }
    be->release(be, x.data);
    be->release(be, w1);
    be->release(be, w2);
    be->release(be, bn);
}

/* ---- the model against torch ------------------------------------------------------------- */

/* Relative L2 error of n engine values against the reference (whole, or sampled). */
static double rel_error(hid_t f, const char *path, const float *c, size_t n)
{
    char sub[512];
    double err2 = 0.0, ref2 = 0.0;
    snprintf(sub, sizeof(sub), "%s/pos", path);
    if (h5_exists(f, sub)) {
        hsize_t dims[8];
        int64_t *pos = h5_read(f, sub, H5T_NATIVE_INT64, 1, dims);
        snprintf(sub, sizeof(sub), "%s/val", path);
        float *val = h5_read(f, sub, H5T_NATIVE_FLOAT, 1, NULL);
        for (hsize_t i = 0; i < dims[0]; i++) {
            if ((size_t)pos[i] >= n)
                die(1, "%s: position outside the tensor", path);
            double d = (double)c[pos[i]] - val[i];
            err2 += d * d;
            ref2 += (double)val[i] * val[i];
        }
        free(pos);
        free(val);
    } else {
        float *ref = read_ref_exact(f, path, n);
        for (size_t i = 0; i < n; i++) {
            double d = (double)c[i] - ref[i];
            err2 += d * d;
            ref2 += (double)ref[i] * ref[i];
        }
        free(ref);
    }
    if (err2 == 0.0)
        return 0.0;
    return sqrt(err2) / fmax(sqrt(ref2), 1e-30);
}

static void check_output(hid_t f, const char *path, const float *c, size_t n, double tol)
{
    double rel = rel_error(f, path, c, n);
    int ok = rel <= tol;
    failures += !ok;
    printf("  %-4s %-20s rel_l2 %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", path, rel, tol);
}

/* Gradients of one training forward and backward (a copy), fp32 or bf16 compute. */
static float *model_grads(const char *model, const nn_tensor_t *x, const float *labels,
                          int precision)
{
    nn_backend_t *be = nn_backend_create("cpu");
    resnext_t *m = resnext_create(be, model, 6);
    resnext_set_precision(m, precision);
    nn_params_fill_hashed(&m->ps);
    resnext_forward(m, x, 1);
    be->bce_loss(be, m->logits.data, labels, x->n, m->dlogits.data);
    resnext_backward(m, m->dlogits.data);
    float *g = xmalloc(m->ps.param_count * sizeof(float));
    memcpy(g, m->ps.grads, m->ps.param_count * sizeof(float));
    resnext_free(m);
    be->destroy(be);
    return g;
}

/* The median over gradient tensors of the change that rounding only the input image to
 * bf16 makes to fp32 gradients: the fp32 engine on the rounded input against torch on the
 * exact one (the fp32 engine and torch agree to 1e-5 for tiny, 7e-3 for ResNeXt-101, far
 * below what the rounding moves). */
static double gradient_sensitivity(hid_t f, const char *model, const nn_paramset_t *ps,
                                   const nn_tensor_t *x, const float *labels)
{
    size_t count = nn_numel(x);
    nn_tensor_t rounded = *x;
    rounded.data = xmalloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++)
        rounded.data[i] = round_bf16(x->data[i]);
    float *moved = model_grads(model, &rounded, labels, NN_PRECISION_FP32);
    double *rels = xmalloc(ps->n_entries * sizeof(double));
    int n = 0;
    for (size_t i = 0; i < ps->n_entries; i++) {
        const nn_entry_t *e = &ps->entries[i];
        if (e->kind != NN_ENTRY_PARAM)
            continue;
        char *name = xasprintf("grad/%s", e->name);
        rels[n++] = rel_error(f, name, moved + e->offset, e->count);
        free(name);
    }
    qsort(rels, n, sizeof(double), cmp_double);
    double median = rels[n / 2];
    free(rels);
    free(moved);
    free(rounded.data);
    return median;
}

/*
 * Inference above kept its activations in 16 bits; the same with fp32 activations must give
 * a different embedding (the half path ran), within TOL_CONV of it (the residuals' rounding
 * is all that differs).
 */
static void check_half_against_fp32_activations(resnext_t *m, const nn_tensor_t *x)
{
    size_t count = nn_numel(&m->embedding);
    float *half = xmalloc(count * sizeof(float));
    memcpy(half, m->embedding.data, count * sizeof(float));
    resnext_set_half_activations(m, 0);
    resnext_forward(m, x, 0);
    resnext_set_half_activations(m, 1);
    double rel = rel_l2(half, m->embedding.data, count);
    int ok = rel > 0.0 && rel <= TOL_CONV;
    failures += !ok;
    printf("  %-4s eval/embedding with 16-bit against fp32 activations: rel_l2 %.2e "
           "(0 < it <= %.0e)\n", ok ? "ok" : "FAIL", rel, TOL_CONV);
    free(half);
}

/*
 * Training keeps some activations in 16 bits (those only bf16 convolutions read): the same
 * bits as with every activation in fp32 (logits, loss and every gradient), since each is
 * rounded once instead of at each use.
 */
static void check_half_training(resnext_t *m, const nn_tensor_t *x, const float *labels)
{
    nn_backend_t *be = m->be;
    nn_paramset_t *ps = &m->ps;
    size_t n_logits = nn_numel(&m->logits);
    float *kept[2][2];
    double loss[2];
    int in_effect = 0;
    for (int half = 1; half >= 0; half--) {
        resnext_set_half_activations(m, half);
        resnext_forward(m, x, 1);
        if (half)
            in_effect = m->act_half;
        loss[half] = be->bce_loss(be, m->logits.data, labels, x->n, m->dlogits.data);
        resnext_backward(m, m->dlogits.data);
        kept[half][0] = xmalloc(n_logits * sizeof(float));
        memcpy(kept[half][0], m->logits.data, n_logits * sizeof(float));
        kept[half][1] = xmalloc(ps->param_count * sizeof(float));
        memcpy(kept[half][1], ps->grads, ps->param_count * sizeof(float));
    }
    resnext_set_half_activations(m, 1);
    size_t differ = 0;
    for (size_t i = 0; i < n_logits; i++)
        differ += memcmp(&kept[0][0][i], &kept[1][0][i], sizeof(float)) != 0;
    for (size_t i = 0; i < ps->param_count; i++)
        differ += memcmp(&kept[0][1][i], &kept[1][1][i], sizeof(float)) != 0;
    int ok = in_effect && differ == 0 && loss[0] == loss[1];
    failures += !ok;
    printf("  %-4s training with 16-bit activations where only bf16 convolutions read them "
           "(%s): loss %s, %zu of %zu logits and gradients differ in any bit from fp32 "
           "activations\n", ok ? "ok" : "FAIL", in_effect ? "in effect" : "NOT in effect",
           loss[0] == loss[1] ? "equal" : "differs", differ, n_logits + ps->param_count);
    for (int half = 0; half < 2; half++) {
        free(kept[half][0]);
        free(kept[half][1]);
    }
}

static void run_bf16_case(const bf16_case_t *tc, const char *dir)
{
    char *path = xasprintf("%s/bf16_ref_%s.h5", dir, tc->model);
    char *args = xasprintf("resnext_ref.py --model %s --size %d --batch %d --steps 1 --out '%s'%s",
                           tc->model, tc->size, tc->batch, path, tc->full ? " --full" : "");
    run_ref_script(args);
    free(args);

    hid_t f = h5_open_read(path);
    nn_backend_t *be = nn_backend_create("cpu");
    resnext_t *m = resnext_create(be, tc->model, 6);
    resnext_set_precision(m, NN_PRECISION_BF16);
    nn_paramset_t *ps = &m->ps;
    nn_params_fill_hashed(ps);
    hsize_t dims[8];
    float *input = h5_read(f, "input", H5T_NATIVE_FLOAT, 4, dims);
    float *labels = h5_read(f, "labels", H5T_NATIVE_FLOAT, 2, NULL);
    nn_tensor_t x = {.data = input, .n = (int)dims[0], .c = (int)dims[1], .h = (int)dims[2],
                     .w = (int)dims[3]};
    printf("%s bf16: %dx%dx%dx%d input\n", tc->model, x.n, x.c, x.h, x.w);

    double t0 = time_now();
    resnext_forward(m, &x, 0);
    check_output(f, "eval/logits", m->logits.data, nn_numel(&m->logits), tc->tol_out);
    check_output(f, "eval/embedding", m->embedding.data, nn_numel(&m->embedding), tc->tol_out);
    check_half_against_fp32_activations(m, &x);

    resnext_forward(m, &x, 1);
    double loss = be->bce_loss(be, m->logits.data, labels, x.n, m->dlogits.data);
    resnext_backward(m, m->dlogits.data);
    check_output(f, "train/logits", m->logits.data, nn_numel(&m->logits), tc->tol_out);
    check_output(f, "train/embedding", m->embedding.data, nn_numel(&m->embedding),
                 tc->tol_out);
    double *ref_losses = h5_read(f, "train/losses", H5T_NATIVE_DOUBLE, 1, NULL);
    double loss_rel = fabs(loss - ref_losses[0]) / fabs(ref_losses[0]);
    int loss_ok = loss_rel <= tc->tol_loss;
    failures += !loss_ok;
    printf("  %-4s loss: engine %.6f torch %.6f rel %.1e (tol %.0e)\n", loss_ok ? "ok" : "FAIL",
           loss, ref_losses[0], loss_rel, tc->tol_loss);

    double sensitivity = gradient_sensitivity(f, tc->model, ps, &x, labels);
    double tol_median = SENSITIVITY_MULT * sensitivity;
    printf("  gradient sensitivity: rounding only the input to bf16 moves the fp32 gradients "
           "by %.2e (median rel_l2)\n", sensitivity);
    double *rels = xmalloc(ps->n_entries * sizeof(double));
    int count = 0, over = 0;
    double worst = 0.0;
    const char *worst_name = "";
    for (size_t i = 0; i < ps->n_entries; i++) {
        nn_entry_t *e = &ps->entries[i];
        if (e->kind != NN_ENTRY_PARAM)
            continue;
        char *name = xasprintf("grad/%s", e->name);
        double rel = rel_error(f, name, ps->grads + e->offset, e->count);
        free(name);
        rels[count++] = rel;
        if (rel > TOL_GRAD_TENSOR) {
            over++;
            printf("  FAIL grad/%s rel_l2 %.2e (tol %.0e)\n", e->name, rel, TOL_GRAD_TENSOR);
        }
        if (rel > worst) {
            worst = rel;
            worst_name = e->name;
        }
    }
    qsort(rels, count, sizeof(double), cmp_double);
    double median = rels[count / 2];
    int median_ok = median <= tol_median;
    failures += over + !median_ok;
    printf("  %-4s gradients, %d tensors: median rel_l2 %.2e (tol %.1f x sensitivity = %.2e), "
           "worst %.2e (%s, tol %.0e)\n", over || !median_ok ? "FAIL" : "ok", count, median,
           SENSITIVITY_MULT, tol_median, worst, worst_name, TOL_GRAD_TENSOR);
    check_half_training(m, &x, labels);
    printf("%s bf16: engine %.1f s\n", tc->model, time_now() - t0);

    free(rels);
    free(ref_losses);
    free(input);
    free(labels);
    resnext_free(m);
    be->destroy(be);
    h5_close(f);
    remove(path);
    free(path);
}

/* ---- determinism ------------------------------------------------------------------------ */

/* Two training steps from the hashed init; returns a copy of params then grads. */
static float *train_twice(const char *model, int precision, size_t *count)
{
    const int n = 3, size = 64;
    nn_backend_t *be = nn_backend_create("cpu");
    resnext_t *m = resnext_create(be, model, 6);
    resnext_set_precision(m, precision);
    nn_paramset_t *ps = &m->ps;
    nn_params_fill_hashed(ps);
    nn_params_alloc_adam(ps);
    size_t pixels = (size_t)n * 3 * size * size;
    float *input = be->alloc(be, pixels * sizeof(float));
    float *labels = be->alloc(be, (size_t)n * 6 * sizeof(float));
    nn_fill_hashed(input, pixels, nn_name_seed("input"), 1.0f, 0.0f);
    for (int i = 0; i < n * 6; i++)
        labels[i] = (float)(i % 4 == 1);
    nn_tensor_t x = {.data = input, .n = n, .c = 3, .h = size, .w = size};
    nn_adam_t hp = {1e-3, 0.9, 0.999, 1e-8, 1e-4};
    for (int step = 1; step <= 2; step++) {
        resnext_forward(m, &x, 1);
        be->bce_loss(be, m->logits.data, labels, n, m->dlogits.data);
        resnext_backward(m, m->dlogits.data);
        be->adam_step(be, &hp, step, ps->params, ps->grads, ps->adam_m, ps->adam_v,
                      ps->param_count);
    }
    *count = ps->param_count;
    float *out = xmalloc(2 * ps->param_count * sizeof(float));
    memcpy(out, ps->params, ps->param_count * sizeof(float));
    memcpy(out + ps->param_count, ps->grads, ps->param_count * sizeof(float));
    be->release(be, input);
    be->release(be, labels);
    resnext_free(m);
    be->destroy(be);
    return out;
}

static void check_determinism(int precision)
{
    const char *what = precision == NN_PRECISION_BF16 ? "bf16" : "fp32";
    size_t count, count2;
    float *a = train_twice("tiny", precision, &count);
    float *b = train_twice("tiny", precision, &count2);
    size_t differ = 0;
    for (size_t i = 0; i < 2 * count; i++)
        differ += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    int ok = count == count2 && differ == 0;
    failures += !ok;
    printf("%-4s determinism %s: two runs of 2 training steps, %zu weights + %zu gradients, "
           "%zu differ in any bit\n", ok ? "ok" : "FAIL", what, count, count, differ);
    free(a);
    free(b);
}

int main(void)
{
    nn_backend_t *be = nn_backend_create("cpu");
    const conv_case_t convs[] = {
        {"1x1 64->128", 64, 128, 1, 1, 1, 14},
        {"1x1 64->128 stride 2", 64, 128, 1, 2, 1, 14},
        {"3x3 128 groups 8", 128, 128, 3, 1, 8, 14},
        {"3x3 128 groups 8 s2", 128, 128, 3, 2, 8, 14},
        {"7x7 3->64 stride 2", 3, 64, 7, 2, 1, 32},
    };
    for (size_t i = 0; i < sizeof(convs) / sizeof(convs[0]); i++)
        check_conv(be, &convs[i]);
    check_shared_dy(be);
    check_half_ops(be, 32, 2);
    check_half_ops(be, 256, 32);
    check_half_ops(be, 24, 3);
    check_fused_residual(be, 16, 16, 2, 3);
    check_fused_residual(be, 32, 16, 2, 1);
    check_fused_residual(be, 32, 32, 2, 3);
    be->destroy(be);

    check_determinism(NN_PRECISION_FP32);
    check_determinism(NN_PRECISION_BF16);

    if (!python_has("torch, torchvision, h5py")) {
        if (failures)
            return 1;
        printf("skip: python3 with torch, torchvision and h5py is not available (determinism "
               "checks passed)\n");
        return 77;
    }
    const char *work = getenv("WORK");
    const char *dir = work && *work ? work : "/tmp";
    const char *only = getenv("NN_TEST_MODELS");
    const bf16_case_t cases[] = {
        /* model  px  batch full  out  loss */
        {"tiny", 64, 3, 1, 5e-2, 2e-2},
        {"resnext101_32x8d", 64, 2, 0, 1e-1, 2e-2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (only && !strstr(cases[i].model, only))
            continue;
        run_bf16_case(&cases[i], dir);
    }
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all bf16 and determinism checks passed\n");
    return 0;
}
