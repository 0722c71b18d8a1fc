/*
 * Element arithmetic of the sequence model (nn/seqmodel.h) and its LSTM cell (nn/lstm.h),
 * shared by the host code (lstm.c, seqmodel.c) and the CUDA kernels (seqmodel_cuda.cu), so
 * that the CPU tests that compare with PyTorch (test_nn_lstm, test_nn_seqmodel) cover the
 * very operations the GPU runs. Each function is one element (one unit j of one row); the
 * caller chooses the rows (padding, the step before) and the layout.
 *
 * Gate blocks are PyTorch's: a row holds 4H values, i, f, g, o, each H wide; the functions
 * take a pointer to unit j of gate i and reach the others at +H, +2H, +3H.
 */
#ifndef ICH_NN_SEQ_MATH_H
#define ICH_NN_SEQ_MATH_H

#include "nn/math_cuda.h"

#include <math.h>
#include <stddef.h>

NN_HOST_DEVICE float nn_sigmoidf(float z)
{
    return 1.0f / (1.0f + expf(-z));
}

/*
 * One unit's step of the LSTM cell: the pre-activations at a (i, f, g, o at stride H) are
 * replaced by the activations; c = f c_prev + i g (c_prev NULL: the recurrence starts here),
 * h = o tanh(c).
 */
NN_HOST_DEVICE void nn_lstm_unit_forward(float *a, size_t H, const float *c_prev, float *c,
                                         float *h)
{
    float gi = nn_sigmoidf(a[0]), gf = nn_sigmoidf(a[H]);
    float gg = tanhf(a[2 * H]), go = nn_sigmoidf(a[3 * H]);
    float cell = gi * gg + (c_prev ? gf * *c_prev : 0.0f);
    a[0] = gi;
    a[H] = gf;
    a[2 * H] = gg;
    a[3 * H] = go;
    *c = cell;
    *h = go * tanhf(cell);
}

/*
 * One unit's backward through the cell: the activated gates a (stride H), its cell c, the
 * cell before (NULL: none), the gradient reaching h from the output (dh_out) and from the
 * next step's recurrence (carry_h); carry_c holds the next step's cell gradient and receives
 * this step's for the step before. Writes the four pre-activation gradients at da.
 */
NN_HOST_DEVICE void nn_lstm_unit_backward(const float *a, size_t H, float c,
                                          const float *c_prev, float dh_out, float carry_h,
                                          float *carry_c, float *da)
{
    float gi = a[0], gf = a[H], gg = a[2 * H], go = a[3 * H];
    float tc = tanhf(c);
    float dh = dh_out + carry_h;
    float dc = dh * go * (1.0f - tc * tc) + *carry_c;
    float cp = c_prev ? *c_prev : 0.0f;
    da[0] = dc * gg * gi * (1.0f - gi);
    da[H] = dc * cp * gf * (1.0f - gf);
    da[2 * H] = dc * gi * (1.0f - gg * gg);
    da[3 * H] = dh * tc * go * (1.0f - go);
    *carry_c = dc * gf;
}

/*
 * Element j of a row of the model's input X = [E, E - E_prev, E - E_next]: e points at
 * E[row][j], x at X[row][j] (the three features at stride emb); a difference with no
 * neighbour in the series (its first or last slice) is zero.
 */
NN_HOST_DEVICE void nn_seq_features(const float *e, int has_prev, int has_next, size_t emb,
                                    float *x)
{
    x[0] = e[0];
    x[emb] = has_prev ? e[0] - e[-(ptrdiff_t)emb] : 0.0f;
    x[2 * emb] = has_next ? e[0] - e[emb] : 0.0f;
}

/* relu as the module takes it, NaN included (a value not above zero becomes zero). */
NN_HOST_DEVICE float nn_seq_relu(float v)
{
    return v > 0.0f ? v : 0.0f;
}

/* The relu's backward from its output: dy where it passed, else zero. */
NN_HOST_DEVICE float nn_seq_relu_grad(float relu_out, float dy)
{
    return relu_out > 0.0f ? dy : 0.0f;
}

/* hidden = h1 + h2 + relu1 + relu2 + e, added left to right as the PyTorch module does. */
NN_HOST_DEVICE float nn_seq_hidden_sum(float h1, float h2, float a1, float a2, float e)
{
    float sum = h1 + h2;
    sum += a1;
    sum += a2;
    return sum + e;
}

/* ---- one thread's share of the GPU's kernels (seqmodel_cuda.cu; replayed on the host by
 * tests/gpu/gpu_parity --host-math against lstm.c) ------------------------------------- */

/* The step at position s of direction dir's processing order, and the step before it. */
NN_HOST_DEVICE int nn_seq_step_at(int steps, int dir, int s)
{
    return dir == 0 ? s : steps - 1 - s;
}

NN_HOST_DEVICE int nn_seq_step_before(int dir, int t)
{
    return dir == 0 ? t - 1 : t + 1;
}

/* Whether the recurrence runs at step t of a series of `length` front-padded to steps. */
NN_HOST_DEVICE int nn_seq_active(int pad_like_original, int steps, int length, int t)
{
    return pad_like_original || t >= steps - length;
}

/* One step of one LSTM direction over a batch (rows [batch][steps], series b at row b steps
 * + t). The recurrent product for the step is already in gates. */
typedef struct {
    int batch, steps, hidden, dir, s, pad_like_original;
    const int *lengths;
    float *gates;       /* [rows][4H]: pre-activations in, activations out */
    float *cells;       /* [rows][H] */
    float *y;           /* [rows][2H]: this direction's half receives h */
    uint16_t *y_half;   /* bf16 copy of y (the recurrent product's operand), or NULL */
} nn_lstm_step_t;

/* Thread i in [0, batch H): unit i % H of series i / H; inactive rows get zeros, as lstm.c. */
NN_HOST_DEVICE void nn_lstm_step_forward_at(const nn_lstm_step_t *p, size_t i)
{
    const size_t H = (size_t)p->hidden;
    const int b = (int)(i / H), t = nn_seq_step_at(p->steps, p->dir, p->s);
    const size_t j = i % H, row = (size_t)b * p->steps + t;
    float *a = p->gates + row * 4 * H + j, *c = p->cells + row * H + j;
    float h = 0.0f;

    if (nn_seq_active(p->pad_like_original, p->steps, p->lengths[b], t)) {
        size_t prev_row = (size_t)b * p->steps + nn_seq_step_before(p->dir, t);
        const float *c_prev = p->s > 0 ? p->cells + prev_row * H + j : NULL;
        nn_lstm_unit_forward(a, H, c_prev, c, &h);
    } else {
        a[0] = a[H] = a[2 * H] = a[3 * H] = 0.0f;
        *c = 0.0f;
    }
    size_t at = row * 2 * H + (size_t)p->dir * H + j;
    p->y[at] = h;
    if (p->y_half)
        p->y_half[at] = nn_bf16_bits(h);
}

/* The same step backward; carry_h holds the recurrent product of the step after. */
typedef struct {
    int batch, steps, hidden, dir, s, pad_like_original;
    const int *lengths;
    const float *gates, *cells; /* the forward's */
    const float *dy;            /* [rows][2H] */
    const float *carry_h;       /* [batch][H] */
    float *carry_c;             /* [batch][H] */
    float *dgates;              /* [rows][4H] */
    uint16_t *dgates_half;      /* bf16 copy of dgates, or NULL */
} nn_lstm_step_back_t;

NN_HOST_DEVICE void nn_lstm_step_backward_at(const nn_lstm_step_back_t *p, size_t i)
{
    const size_t H = (size_t)p->hidden;
    const int b = (int)(i / H), t = nn_seq_step_at(p->steps, p->dir, p->s);
    const size_t j = i % H, row = (size_t)b * p->steps + t, unit = (size_t)b * H + j;
    float *da = p->dgates + row * 4 * H + j;

    if (nn_seq_active(p->pad_like_original, p->steps, p->lengths[b], t)) {
        size_t prev_row = (size_t)b * p->steps + nn_seq_step_before(p->dir, t);
        const float *c_prev = p->s > 0 ? p->cells + prev_row * H + j : NULL;
        float dh_out = p->dy[row * 2 * H + (size_t)p->dir * H + j];
        nn_lstm_unit_backward(p->gates + row * 4 * H + j, H, p->cells[row * H + j], c_prev,
                              dh_out, p->carry_h[unit], &p->carry_c[unit], da);
    } else {
        da[0] = da[H] = da[2 * H] = da[3 * H] = 0.0f;
        p->carry_c[unit] = 0.0f;
    }
    if (p->dgates_half)
        for (int k = 0; k < 4; k++)
            p->dgates_half[row * 4 * H + (size_t)k * H + j] = nn_bf16_bits(da[(size_t)k * H]);
}

/*
 * Element i of direction dir's recurrent inputs [rows][H] (the weight gradient's operand):
 * the index into y [rows][2H] of h at the step before in its order, or -1 where the order
 * starts (the input is zero there).
 */
NN_HOST_DEVICE long long nn_lstm_h_prev_source(int steps, size_t H, int dir, size_t i)
{
    size_t row = i / H, j = i % H;
    int t = (int)(row % (size_t)steps);
    if (t == nn_seq_step_at(steps, dir, 0))
        return -1;
    size_t prev_row = row - (size_t)t + (size_t)nn_seq_step_before(dir, t);
    return (long long)(prev_row * 2 * H + (size_t)dir * H + j);
}

/* Element i in [0, rows emb) of X (rows [batch][steps], x [rows][3 emb]): padding zero. */
NN_HOST_DEVICE void nn_seq_features_at(const float *embeddings, const int *lengths, int steps,
                                       size_t emb, float *x, size_t i)
{
    size_t row = i / emb, j = i % emb;
    int b = (int)(row / (size_t)steps), t = (int)(row % (size_t)steps);
    int first = steps - lengths[b];
    float *out = x + row * 3 * emb + j;
    if (t < first) {
        out[0] = out[emb] = out[2 * emb] = 0.0f;
        return;
    }
    nn_seq_features(embeddings + row * emb + j, t > first, t < steps - 1, emb, out);
}

/* Element i in [0, rows 2H) of the hidden sum (the embedding's first H columns twice). */
NN_HOST_DEVICE float nn_seq_hidden_sum_at(const float *h1, const float *h2, const float *a1,
                                          const float *a2, const float *embeddings,
                                          size_t emb, size_t hidden, size_t i)
{
    size_t row = i / (2 * hidden), j = i % (2 * hidden);
    return nn_seq_hidden_sum(h1[i], h2[i], a1[i], a2[i], embeddings[row * emb + j % hidden]);
}

#endif
