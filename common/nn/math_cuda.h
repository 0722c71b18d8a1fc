/*
 * Element arithmetic of the CUDA backend's kernels (loss, Adam, batch norm, max pooling,
 * mixed precision's 16-bit rounding and layout transposes, loss scaling's overflow check),
 * compiled both for the GPU (backend_cuda.cu) and for the host, so that a CPU test
 * (tests/gpu/gpu_parity --host-math, run by tests/t_cuda_build.sh) checks it against the host
 * code: nn_host_bce_loss / nn_host_adam_step in host_ops.c, checkpoint.h's bf16, the
 * compiler's _Float16, isfinite. Same operations in the same order: with contraction into
 * FMA off on both sides (nvcc -fmad=false; gcc in ISO C mode) Adam agrees bit for bit.
 */
#ifndef ICH_NN_MATH_CUDA_H
#define ICH_NN_MATH_CUDA_H

#include "nn/nn.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define NN_HOST_DEVICE __host__ __device__ static inline
#else
#define NN_HOST_DEVICE static inline
#endif

#define NN_LOSS_CLASSES 6
#define NN_LOSS_ANY_COLUMN 5

/* One BCE-with-logits term, log(1 + exp(-|z|)) + max(z, 0) - z y, without overflow. */
NN_HOST_DEVICE double nn_bce_term(double z, double y)
{
    return fmax(z, 0.0) - z * y + log1p(exp(-fabs(z)));
}

/* The loss's weights per term: the mean over all terms (6/7) and over column 5 (1/7). */
typedef struct {
    double all, any;
} nn_bce_weights_t;

NN_HOST_DEVICE nn_bce_weights_t nn_bce_weights(int rows)
{
    nn_bce_weights_t w = {6.0 / 7.0 / (rows * NN_LOSS_CLASSES), 1.0 / 7.0 / rows};
    return w;
}

/* d loss / d z for the term in column k: (sigmoid(z) - y) weighted by the means it is in. */
NN_HOST_DEVICE float nn_bce_dlogit(double z, double y, int k, nn_bce_weights_t w)
{
    double diff = 1.0 / (1.0 + exp(-z)) - y;
    double weight = w.all + (k == NN_LOSS_ANY_COLUMN ? w.any : 0.0);
    return (float)(weight * diff);
}

/* The loss from the sums of all terms and of column 5's terms. */
NN_HOST_DEVICE double nn_bce_combine(double all_sum, double any_sum, int rows)
{
    return (6.0 * all_sum / (rows * NN_LOSS_CLASSES) + any_sum / rows) / 7.0;
}

/* Adam's per-step scalars, rounded to float as PyTorch passes them to its kernels. */
typedef struct {
    float beta1, beta2, keep1, keep2, decay, eps, neg_step_size, bias2_sqrt;
} nn_adam_scalars_t;

static inline nn_adam_scalars_t nn_adam_scalars(const nn_adam_t *hp, int64_t step)
{
    double bias1 = 1.0 - pow(hp->beta1, (double)step);
    double bias2 = 1.0 - pow(hp->beta2, (double)step);
    nn_adam_scalars_t s;
    s.beta1 = (float)hp->beta1;
    s.beta2 = (float)hp->beta2;
    s.keep1 = (float)(1.0 - hp->beta1);
    s.keep2 = (float)(1.0 - hp->beta2);
    s.decay = (float)hp->weight_decay;
    s.eps = (float)hp->eps;
    s.neg_step_size = (float)(-hp->lr / bias1);
    s.bias2_sqrt = (float)sqrt(bias2);
    return s;
}

/* One element's Adam update (L2 decay added to the gradient, as torch.optim.Adam). */
NN_HOST_DEVICE void nn_adam_update(const nn_adam_scalars_t *s, float *w, float g, float *m,
                                   float *v)
{
    float grad = g;
    if (s->decay != 0.0f)
        grad += s->decay * *w;
    *m = *m * s->beta1 + s->keep1 * grad;
    *v = *v * s->beta2 + s->keep2 * grad * grad;
    float denom = sqrtf(*v) / s->bias2_sqrt + s->eps;
    *w += s->neg_step_size * (*m / denom);
}

/* ---- batch norm ------------------------------------------------------------------------ */

/*
 * One thread's share of a channel's batch * plane values: index `first` of them, then every
 * `step`-th, as (image n, offset k in the plane), with no division inside the loop.
 */
typedef struct {
    int n;
    size_t k, step_n, step_k;
} nn_channel_walk_t;

NN_HOST_DEVICE nn_channel_walk_t nn_channel_walk(size_t first, size_t step, size_t plane)
{
    nn_channel_walk_t walk = {(int)(first / plane), first % plane, step / plane, step % plane};
    return walk;
}

NN_HOST_DEVICE void nn_channel_walk_next(nn_channel_walk_t *walk, size_t plane)
{
    walk->n += (int)walk->step_n;
    walk->k += walk->step_k;
    if (walk->k >= plane) {
        walk->k -= plane;
        walk->n++;
    }
}

/* Where value (n, k) of channel c lies in an NCHW tensor. */
NN_HOST_DEVICE size_t nn_nchw_at(int n, int c, int channels, size_t plane, size_t k)
{
    return ((size_t)n * channels + c) * plane + k;
}

/* A thread's sum over its share of channel c: of x, or of (x - mean)^2 when centred. */
NN_HOST_DEVICE double nn_bn_thread_moment(const float *x, int batch, int channels, size_t plane,
                                          int c, size_t first, size_t step, double mean,
                                          int centred)
{
    double sum = 0.0;
    nn_channel_walk_t walk = nn_channel_walk(first, step, plane);
    for (; walk.n < batch; nn_channel_walk_next(&walk, plane)) {
        double v = x[nn_nchw_at(walk.n, c, channels, plane, walk.k)];
        sum += centred ? (v - mean) * (v - mean) : v;
    }
    return sum;
}

NN_HOST_DEVICE double nn_bn_inv_std(float var, float eps)
{
    return 1.0 / sqrt((double)var + eps);
}

/* The normalised, scaled value before any relu, in double as the host reference; from the
 * float batch statistics the caller keeps, so that a backward recomputes it exactly. */
NN_HOST_DEVICE double nn_bn_value(float x, float mean, double inv, float gamma, float beta)
{
    return gamma * ((double)x - mean) * inv + beta;
}

/* Whether a relu passes value v (and its gradient): one test for the output and the mask. */
NN_HOST_DEVICE int nn_relu_passes(float v)
{
    return v > 0.0f;
}

NN_HOST_DEVICE float nn_bn_output(double value, int relu)
{
    float v = (float)value;
    return relu && !nn_relu_passes(v) ? 0.0f : v;
}

/* Running statistics as PyTorch keeps them (the variance unbiased), in float as the CPU. */
NN_HOST_DEVICE void nn_bn_running_update(float *running_mean, float *running_var, float mean,
                                         float var, float momentum, double count)
{
    float keep = 1.0f - momentum, unbias = (float)(count / (count - 1.0));
    *running_mean = keep * *running_mean + momentum * mean;
    *running_var = keep * *running_var + momentum * (var * unbias);
}

/* The gradient at the batch norm output: dy, or 0 where the fused relu blocked it. */
NN_HOST_DEVICE double nn_bn_masked_dy(float x, float dy, float mean, double inv, float gamma,
                                      float beta, int relu)
{
    if (relu && !nn_relu_passes((float)nn_bn_value(x, mean, inv, gamma, beta)))
        return 0.0;
    return dy;
}

/* A thread's share of the backward sums: dy and dy * xhat (dy masked by the fused relu). */
NN_HOST_DEVICE void nn_bn_thread_backward(const float *x, const float *dy, int batch,
                                          int channels, size_t plane, int c, size_t first,
                                          size_t step, float mean, float var, float gamma,
                                          float beta, float eps, int relu, double *sum_dy,
                                          double *sum_dy_xhat)
{
    double inv = nn_bn_inv_std(var, eps), s_dy = 0.0, s_dy_xhat = 0.0;
    nn_channel_walk_t walk = nn_channel_walk(first, step, plane);
    for (; walk.n < batch; nn_channel_walk_next(&walk, plane)) {
        size_t at = nn_nchw_at(walk.n, c, channels, plane, walk.k);
        double g = nn_bn_masked_dy(x[at], dy[at], mean, inv, gamma, beta, relu);
        s_dy += g;
        s_dy_xhat += g * (((double)x[at] - mean) * inv);
    }
    *sum_dy = s_dy;
    *sum_dy_xhat = s_dy_xhat;
}

/* One value's input gradient from the channel's means of dy and dy * xhat. */
NN_HOST_DEVICE float nn_bn_dx(float x, float dy, float mean, float var, float gamma, float beta,
                              float eps, int relu, double mean_dy, double mean_dy_xhat)
{
    double inv = nn_bn_inv_std(var, eps);
    double g = nn_bn_masked_dy(x, dy, mean, inv, gamma, beta, relu);
    double xhat = ((double)x - mean) * inv;
    return (float)(gamma * inv * (g - mean_dy - xhat * mean_dy_xhat));
}

/* Inference: act(x * scale + shift + residual), scale and shift from the running stats. */
NN_HOST_DEVICE float nn_bn_infer_value(float x, float mean, float var, float gamma, float beta,
                                       float eps, float residual, int relu)
{
    float scale = gamma / sqrtf(var + eps);
    float v = (x - mean) * scale + beta + residual;
    return relu && !nn_relu_passes(v) ? 0.0f : v;
}

/* ---- max pooling ----------------------------------------------------------------------- */

/* Output (oy, ox) of one plane: the window's maximum (padding never wins; the first maximum
 * in scan order; NaN wins), its position in the plane into *argmax. */
NN_HOST_DEVICE float nn_maxpool_one(const float *x, int h, int w, int oy, int ox, int kernel,
                                    int stride, int pad, int32_t *argmax)
{
    float best = 0.0f;
    int best_at = -1;
    for (int ky = 0; ky < kernel; ky++) {
        int iy = oy * stride - pad + ky;
        if (iy < 0 || iy >= h)
            continue;
        for (int kx = 0; kx < kernel; kx++) {
            int ix = ox * stride - pad + kx;
            if (ix < 0 || ix >= w)
                continue;
            float v = x[iy * w + ix];
            if (best_at < 0 || v > best || v != v) {
                best = v;
                best_at = iy * w + ix;
            }
        }
    }
    *argmax = best_at;
    return best;
}

/* The first and last window (along one axis) that covers input position i. */
NN_HOST_DEVICE void nn_pool_windows(int i, int kernel, int stride, int pad, int out, int *lo,
                                    int *hi)
{
    int from = i + pad - kernel + 1; /* window o starts at o * stride - pad */
    *lo = from <= 0 ? 0 : (from + stride - 1) / stride;
    *hi = (i + pad) / stride;
    if (*hi > out - 1)
        *hi = out - 1;
}

/* Input (iy, ix)'s gradient: the sum of dy over the windows whose maximum it was, in a fixed
 * order (no atomics: the same result on every run). */
NN_HOST_DEVICE float nn_maxpool_grad_one(const float *dy, const int32_t *argmax, int out_h,
                                         int out_w, int w, int iy, int ix, int kernel,
                                         int stride, int pad)
{
    int oy_lo, oy_hi, ox_lo, ox_hi;
    nn_pool_windows(iy, kernel, stride, pad, out_h, &oy_lo, &oy_hi);
    nn_pool_windows(ix, kernel, stride, pad, out_w, &ox_lo, &ox_hi);
    int here = iy * w + ix;
    float sum = 0.0f;
    for (int oy = oy_lo; oy <= oy_hi; oy++)
        for (int ox = ox_lo; ox <= ox_hi; ox++)
            if (argmax[oy * out_w + ox] == here)
                sum += dy[oy * out_w + ox];
    return sum;
}

/* ---- mixed precision: 16-bit formats, layouts, the overflow check ----------------------- */

/* A float's bits, and back, without aliasing (memcpy is free on both sides). */
NN_HOST_DEVICE uint32_t nn_float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

NN_HOST_DEVICE float nn_bits_float(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* fp32 -> bf16 bits, to nearest, ties to even; NaN stays a quiet NaN (checkpoint.h's rule). */
NN_HOST_DEVICE uint16_t nn_bf16_bits(float value)
{
    uint32_t bits = nn_float_bits(value);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((bits >> 16) | 0x0040u);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

NN_HOST_DEVICE float nn_bf16_value(uint16_t half)
{
    return nn_bits_float((uint32_t)half << 16);
}

/*
 * fp32 -> IEEE binary16 bits, to nearest, ties to even: past 65520 (the midpoint above the
 * largest half, 65504) to infinity, below 2^-14 to subnormals, NaN to a quiet NaN. The same
 * result as a C _Float16 cast (checked by gpu_parity --host-math).
 */
NN_HOST_DEVICE uint16_t nn_fp16_bits(float value)
{
    uint32_t bits = nn_float_bits(value), magnitude = bits & 0x7FFFFFFFu;
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    if (magnitude > 0x7F800000u)
        return (uint16_t)(sign | 0x7E00u);
    if (magnitude >= 0x477FF000u) /* 65520 and above, infinity included */
        return (uint16_t)(sign | 0x7C00u);
    if (magnitude >= 0x38800000u) { /* 2^-14 and above: normal */
        /* Round away the 13 extra mantissa bits, then rebias the exponent (127 -> 15). */
        uint32_t rounded = magnitude + 0xFFFu + ((magnitude >> 13) & 1u);
        return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
    }
    if (magnitude < 0x33000000u) /* below 2^-25: rounds to zero */
        return sign;
    /* Subnormal: the value in units of 2^-24, rounded to nearest even. */
    uint32_t exponent = magnitude >> 23, mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - exponent; /* 14 .. 24 */
    uint32_t units = mantissa >> shift, rest = mantissa & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (units & 1u)))
        units++;
    return (uint16_t)(sign | units);
}

NN_HOST_DEVICE float nn_fp16_value(uint16_t half)
{
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16;
    uint32_t exponent = (half >> 10) & 0x1Fu, mantissa = half & 0x3FFu;
    if (exponent == 0x1Fu)
        return nn_bits_float(sign | 0x7F800000u | (mantissa << 13));
    if (exponent != 0)
        return nn_bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    float magnitude = (float)mantissa * 5.9604644775390625e-8f; /* 2^-24, exact */
    return sign ? -magnitude : magnitude;
}

/* A 16-bit format by NN_PRECISION_* (BF16 or FP16). */
NN_HOST_DEVICE uint16_t nn_half_bits(float value, int format)
{
    return format == NN_PRECISION_FP16 ? nn_fp16_bits(value) : nn_bf16_bits(value);
}

NN_HOST_DEVICE float nn_half_value(uint16_t half, int format)
{
    return format == NN_PRECISION_FP16 ? nn_fp16_value(half) : nn_bf16_value(half);
}

/* Where value (n, k) of channel c lies in an NHWC tensor (channels innermost, what tensor
 * cores read). Weights [out][in/groups][k][k] map the same way, out as n. */
NN_HOST_DEVICE size_t nn_nhwc_at(int n, int c, int channels, size_t plane, size_t k)
{
    return ((size_t)n * plane + k) * channels + c;
}

/* Where NCHW element i lies in the same tensor in NHWC order. */
NN_HOST_DEVICE size_t nn_nhwc_of_nchw(size_t i, int channels, size_t plane)
{
    size_t k = i % plane, rest = i / plane;
    return nn_nhwc_at((int)(rest / (size_t)channels), (int)(rest % (size_t)channels), channels,
                      plane, k);
}

/*
 * The layout kernels transpose each image's channels x plane matrix through 32 x 32 tiles in
 * shared memory, so that a warp reads and writes contiguous memory. Block (tile_k, tile_c) of
 * image n has 32 x 8 threads; thread (x, y) loads rows y, y + 8, ... of its tile (a row: one
 * channel, 32 plane positions), and after a barrier stores columns (one plane position, 32
 * channels). fp32 NCHW -> 16-bit NHWC:
 */
#define NN_TILE 32
#define NN_TILE_ROWS 8

/* Where lane x of row `row` of a tile lies: rows run along the plane (along_plane 1: a row is
 * one channel) or along the channels; 0 when the position is past the tensor's edge. */
NN_HOST_DEVICE int nn_tile_at(int tile_c, size_t tile_k, int row, int x, int along_plane,
                              int channels, size_t plane, int *c, size_t *k)
{
    *c = tile_c * NN_TILE + (along_plane ? row : x);
    *k = tile_k * NN_TILE + (along_plane ? x : row);
    return *c < channels && *k < plane;
}

NN_HOST_DEVICE void nn_to_half_load(const float *src, int n, int channels, size_t plane,
                                    int format, int tile_c, size_t tile_k, int x, int y,
                                    uint16_t tile[NN_TILE][NN_TILE + 1])
{
    int c;
    size_t k;
    for (int row = y; row < NN_TILE; row += NN_TILE_ROWS)
        if (nn_tile_at(tile_c, tile_k, row, x, 1, channels, plane, &c, &k))
            tile[row][x] = nn_half_bits(src[nn_nchw_at(n, c, channels, plane, k)], format);
}

NN_HOST_DEVICE void nn_to_half_store(uint16_t tile[NN_TILE][NN_TILE + 1], int n, int channels,
                                     size_t plane, int tile_c, size_t tile_k, int x, int y,
                                     uint16_t *dst)
{
    int c;
    size_t k;
    for (int row = y; row < NN_TILE; row += NN_TILE_ROWS)
        if (nn_tile_at(tile_c, tile_k, row, x, 0, channels, plane, &c, &k))
            dst[nn_nhwc_at(n, c, channels, plane, k)] = tile[x][row];
}

/* And back, 16-bit NHWC -> fp32 NCHW (exact). */
NN_HOST_DEVICE void nn_from_half_load(const uint16_t *src, int n, int channels, size_t plane,
                                      int format, int tile_c, size_t tile_k, int x, int y,
                                      float tile[NN_TILE][NN_TILE + 1])
{
    int c;
    size_t k;
    for (int row = y; row < NN_TILE; row += NN_TILE_ROWS)
        if (nn_tile_at(tile_c, tile_k, row, x, 0, channels, plane, &c, &k))
            tile[row][x] = nn_half_value(src[nn_nhwc_at(n, c, channels, plane, k)], format);
}

NN_HOST_DEVICE void nn_from_half_store(float tile[NN_TILE][NN_TILE + 1], int n, int channels,
                                       size_t plane, int tile_c, size_t tile_k, int x, int y,
                                       float *dst)
{
    int c;
    size_t k;
    for (int row = y; row < NN_TILE; row += NN_TILE_ROWS)
        if (nn_tile_at(tile_c, tile_k, row, x, 1, channels, plane, &c, &k))
            dst[nn_nchw_at(n, c, channels, plane, k)] = tile[x][row];
}

/* Whether a float is neither infinite nor NaN, from its exponent bits alone (fast-math safe). */
NN_HOST_DEVICE int nn_is_finite(float value)
{
    return (nn_float_bits(value) & 0x7F800000u) != 0x7F800000u;
}

/*
 * One gradient value of the loss-scaling step: x * factor (unscaling with 1 / S), and whether
 * x was finite before, as torch's non-finite check tests the scaled gradient it is given.
 */
NN_HOST_DEVICE int nn_scale_check(float *x, float factor)
{
    int finite = nn_is_finite(*x);
    *x *= factor;
    return finite;
}

#endif
