/*
 * The sequence model (nn/seqmodel.h) on the CUDA backend: nn_backend_t's seq_* ops.
 *
 * The same computation as seqmodel.c and lstm.c, in the same order, on the backend's stream:
 * - each LSTM direction: the input projections of every step as one GEMM, the biases added
 *   by a kernel; per step (in the direction's order) the recurrent product over the batch as
 *   one GEMM into that step's gate rows, then one kernel for the cells (seq_math.h);
 * - the backward per step: one kernel for the gate gradients and the cell carry, one GEMM for
 *   the carry into h of the step before; then the weight gradients as large GEMMs over all
 *   rows, the bias gradients as column sums (double, as the host), dx as one GEMM;
 * - the linear layers as GEMMs with a bias (and relu) kernel; features, relu mask and the
 *   branches' sum as kernels of seq_math.h's element functions.
 * Padding as lstm.c: by default each series' recurrence starts at its own first (reverse:
 * last) slice and padded rows hold zeros; with pad_like_original every row runs.
 *
 * Products: cuBLAS on an own handle on the backend's stream (its math mode stays ours). fp32
 * in CUBLAS_COMPUTE_32F_PEDANTIC (no TF32), so results match the host to summation order.
 * bf16 (NN_PRECISION_BF16): cublasGemmEx on bf16 operands with fp32 sums, rounded where the
 * host rounds them (lstm.h, seqmodel.h): weights (rounded once per forward, kept for the
 * backward), each product's activation input, the gate gradients, the linear layers' output
 * gradients; everything else fp32.
 *
 * Memory comes from the backend's allocator (be->alloc), grown on demand with the batch.
 */
#include "nn/cuda_internal.h"
#include "nn/seq_math.h"

extern "C" {
#include "check.h"
#include "exitcodes.h"
#include "log.h"
}

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <string.h>

#define SEQ_THREADS NN_CUDA_THREADS
#define SEQ_OUT 6

/* One LSTM layer's state kept from the forward for the backward. */
typedef struct {
    int in;
    float *gates[2], *cells[2]; /* per direction [rows][4H], [rows][H] */
} seq_lstm_t;

typedef struct {
    nn_backend_t *be;
    cudaStream_t stream;
    cublasHandle_t blas;
    int emb, hidden, pad_like_original;

    /* The last forward's batch. */
    int precision, batch, steps;
    size_t cap_rows, cap_batch;
    int *lengths;                 /* [batch] */
    float *carry_h, *carry_c;     /* [batch][H] */
    char *arena;                  /* the buffers below sized by rows (lay_out) */
    float *embeddings;            /* [rows][emb] */
    float *x;                     /* [rows][3 emb] */
    float *h[2], *relu_out[2];    /* [rows][2H]: LSTM outputs, relu(linear) outputs */
    float *summed;                /* [rows][2H] */
    float *logits;                /* [rows][6]; the backward's dlogits */
    float *dhidden, *dh[2], *dpre; /* [rows][2H] */
    float *dgates, *h_prev;       /* [rows][4H], [rows][H] scratch */
    seq_lstm_t lstm[2];
    /* bf16: the operands rounded (x, the LSTM outputs, the sum, the backward's) */
    uint16_t *x_half, *h_half[2], *summed_half, *dy_half, *dgates_half, *h_prev_half;

    /* bf16: the weights, per LSTM and direction W_ih and W_hh, then the linear layers. */
    uint16_t *w_ih_half[2][2], *w_hh_half[2][2], *lin_w_half[3];
} seq_plan_t;

/* ---- memory ------------------------------------------------------------------------------ */

static void *dev_alloc(seq_plan_t *p, size_t bytes)
{
    return p->be->alloc(p->be, bytes);
}

static void dev_free(seq_plan_t *p, void *ptr)
{
    if (ptr)
        p->be->release(p->be, ptr);
}

/* Place count values of T at *at bytes into base (NULL: only count the bytes), in blocks
 * aligned for any kernel or cuBLAS operand. */
template <typename T> static void place(char *base, size_t *at, T **ptr, size_t count)
{
    *ptr = base ? (T *)(base + *at) : NULL;
    *at += (count * sizeof(T) + 255) & ~(size_t)255;
}

/* The per-batch buffers for `rows` rows laid out from base; returns the bytes they take. */
static size_t lay_out(seq_plan_t *p, size_t rows, char *base)
{
    const size_t E = (size_t)p->emb, H = (size_t)p->hidden, W = 2 * H;
    const size_t dy_wide = W > SEQ_OUT ? W : SEQ_OUT;
    size_t at = 0;

    place(base, &at, &p->embeddings, rows * E);
    place(base, &at, &p->x, rows * 3 * E);
    for (int k = 0; k < 2; k++) {
        place(base, &at, &p->h[k], rows * W);
        place(base, &at, &p->relu_out[k], rows * W);
        place(base, &at, &p->dh[k], rows * W);
        place(base, &at, &p->h_half[k], rows * W);
        for (int d = 0; d < 2; d++) {
            place(base, &at, &p->lstm[k].gates[d], rows * 4 * H);
            place(base, &at, &p->lstm[k].cells[d], rows * H);
        }
    }
    place(base, &at, &p->summed, rows * W);
    place(base, &at, &p->dhidden, rows * W);
    place(base, &at, &p->dpre, rows * W);
    place(base, &at, &p->logits, rows * SEQ_OUT);
    place(base, &at, &p->dgates, rows * 4 * H);
    place(base, &at, &p->h_prev, rows * H);
    place(base, &at, &p->x_half, rows * 3 * E);
    place(base, &at, &p->summed_half, rows * W);
    place(base, &at, &p->dy_half, rows * dy_wide);
    place(base, &at, &p->dgates_half, rows * 4 * H);
    place(base, &at, &p->h_prev_half, rows * H);
    return at;
}

static void reserve(seq_plan_t *p, int batch, int steps)
{
    const size_t rows = (size_t)batch * steps, H = (size_t)p->hidden;

    if ((size_t)batch > p->cap_batch) {
        dev_free(p, p->lengths);
        dev_free(p, p->carry_h);
        dev_free(p, p->carry_c);
        p->lengths = (int *)dev_alloc(p, (size_t)batch * sizeof(int));
        p->carry_h = (float *)dev_alloc(p, (size_t)batch * H * sizeof(float));
        p->carry_c = (float *)dev_alloc(p, (size_t)batch * H * sizeof(float));
        p->cap_batch = (size_t)batch;
    }
    if (rows <= p->cap_rows)
        return;
    /* One block for all: release waits for the work still reading the old one. */
    dev_free(p, p->arena);
    p->arena = (char *)dev_alloc(p, lay_out(p, rows, NULL));
    lay_out(p, rows, p->arena);
    p->cap_rows = rows;
}

/* The bf16 copies of the weights, made once per plan (refilled each bf16 forward). */
static void reserve_half_weights(seq_plan_t *p)
{
    const size_t H = (size_t)p->hidden, W = 2 * H, half = sizeof(uint16_t);
    if (p->lin_w_half[0])
        return;
    for (int l = 0; l < 2; l++)
        for (int d = 0; d < 2; d++) {
            p->w_ih_half[l][d] = (uint16_t *)dev_alloc(p, 4 * H * p->lstm[l].in * half);
            p->w_hh_half[l][d] = (uint16_t *)dev_alloc(p, 4 * H * H * half);
        }
    p->lin_w_half[NN_SEQ_LINEAR1] = (uint16_t *)dev_alloc(p, W * W * half);
    p->lin_w_half[NN_SEQ_LINEAR2] = (uint16_t *)dev_alloc(p, W * W * half);
    p->lin_w_half[NN_SEQ_HEAD] = (uint16_t *)dev_alloc(p, SEQ_OUT * W * half);
}

/* ---- kernels: seq_math.h's element functions over grid-stride loops ---------------------- */

#define GRID_LOOP(i, count)                                                                   \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (count);              \
         i += (size_t)gridDim.x * blockDim.x)

__global__ static void round_kernel(const float *src, size_t count, uint16_t *dst)
{
    GRID_LOOP(i, count)
    dst[i] = nn_bf16_bits(src[i]);
}

/* y[r][j] = act(bias[j] + y[r][j]) (bias2 NULL: one bias; else bias + bias2, as lstm.c's
 * bias_sum); relu when relu is 1. */
__global__ static void bias_kernel(float *y, size_t count, int cols, const float *bias,
                                   const float *bias2, int relu)
{
    GRID_LOOP(i, count) {
        int j = (int)(i % (size_t)cols);
        float b = bias2 ? bias[j] + bias2[j] : bias[j];
        float v = b + y[i];
        y[i] = relu ? nn_seq_relu(v) : v;
    }
}

__global__ static void features_kernel(const float *embeddings, const int *lengths, int steps,
                                       size_t emb, size_t count, float *x)
{
    GRID_LOOP(i, count)
    nn_seq_features_at(embeddings, lengths, steps, emb, x, i);
}

__global__ static void step_forward_kernel(nn_lstm_step_t step, size_t count)
{
    GRID_LOOP(i, count)
    nn_lstm_step_forward_at(&step, i);
}

__global__ static void step_backward_kernel(nn_lstm_step_back_t step, size_t count)
{
    GRID_LOOP(i, count)
    nn_lstm_step_backward_at(&step, i);
}

/* The recurrent inputs of direction dir (fp32 or, from y_half, bf16). */
__global__ static void h_prev_kernel(const float *y, const uint16_t *y_half, int steps,
                                     size_t hidden, int dir, size_t count, float *h_prev,
                                     uint16_t *h_prev_half)
{
    GRID_LOOP(i, count) {
        long long src = nn_lstm_h_prev_source(steps, hidden, dir, i);
        if (h_prev_half)
            h_prev_half[i] = src < 0 ? 0 : y_half[src];
        else
            h_prev[i] = src < 0 ? 0.0f : y[src];
    }
}

__global__ static void hidden_sum_kernel(const float *h1, const float *h2, const float *a1,
                                         const float *a2, const float *embeddings, size_t emb,
                                         size_t hidden, size_t count, float *summed,
                                         uint16_t *summed_half)
{
    GRID_LOOP(i, count) {
        float v = nn_seq_hidden_sum_at(h1, h2, a1, a2, embeddings, emb, hidden, i);
        summed[i] = v;
        if (summed_half)
            summed_half[i] = nn_bf16_bits(v);
    }
}

/* dpre = dy where the relu passed (and its bf16 copy when dpre_half is not NULL). */
__global__ static void relu_grad_kernel(const float *relu_out, const float *dy, size_t count,
                                        float *dpre, uint16_t *dpre_half)
{
    GRID_LOOP(i, count) {
        float v = nn_seq_relu_grad(relu_out[i], dy[i]);
        dpre[i] = v;
        if (dpre_half)
            dpre_half[i] = nn_bf16_bits(v);
    }
}

__global__ static void add_kernel(float *y, const float *x, size_t count)
{
    GRID_LOOP(i, count)
    y[i] += x[i];
}

/* ---- launches ---------------------------------------------------------------------------- */

/* The backend's grid for count elements (grid-stride loops take the rest). */
static unsigned blocks(const seq_plan_t *p, size_t count)
{
    return nn_cuda_blocks(p->be, count);
}

static void round_half(seq_plan_t *p, const float *src, size_t count, uint16_t *dst)
{
    round_kernel<<<blocks(p, count), SEQ_THREADS, 0, p->stream>>>(src, count, dst);
    KERNEL_CHECK("round_kernel");
}

static void add_bias(seq_plan_t *p, float *y, size_t rows, int cols, const float *bias,
                     const float *bias2, int relu)
{
    size_t count = rows * (size_t)cols;
    bias_kernel<<<blocks(p, count), SEQ_THREADS, 0, p->stream>>>(y, count, cols, bias, bias2,
                                                              relu);
    KERNEL_CHECK("bias_kernel");
}

/* Column sums of m [rows][cols] into sums, and into copy as well unless NULL. */
static void column_sums(seq_plan_t *p, const float *m, long rows, int cols, float *sums,
                        float *copy)
{
    nn_cuda_column_sums(p->be, m, (int)rows, cols, sums);
    if (copy)
        CUDA_CHECK(cudaMemcpyAsync(copy, sums, (size_t)cols * sizeof(float),
                                   cudaMemcpyDeviceToDevice, p->stream));
}

/*
 * Row-major C[m][n] = op(A) op(B) + beta C, A and B fp32 (half 0) or bf16 (half 1), C fp32;
 * trans 'T' reads the stored matrix transposed. cuBLAS is column-major: it computes C^T =
 * op(B)^T op(A)^T, which reads the row-major storage as it is.
 */
static void gemm(seq_plan_t *p, char trans_a, char trans_b, long m, long n, long k,
                 const void *a, long lda, const void *b, long ldb, float beta, float *c,
                 long ldc, int half)
{
    static const float one = 1.0f;
    if (m == 0 || n == 0)
        return;
    cublasOperation_t op_a = trans_a == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = trans_b == 'T' ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType_t type = half ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t compute = half ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC;
    CUBLAS_CHECK(cublasGemmEx(p->blas, op_b, op_a, (int)n, (int)m, (int)k, &one, b, type,
                              (int)ldb, a, type, (int)lda, &beta, c, CUDA_R_32F, (int)ldc,
                              compute, CUBLAS_GEMM_DEFAULT));
}

/* ---- the LSTM ---------------------------------------------------------------------------- */

/* One direction's tensors: weight_ih, weight_hh, bias_ih, bias_hh. */
static float *const *dir_tensors(const nn_seq_tensors_t *t, int layer, int d)
{
    return &t->lstm[layer][4 * d];
}

/* Layer `layer` over x [rows][in] (x_half: its bf16 copy) into y [rows][2H] (y_half). */
static void lstm_forward(seq_plan_t *p, int layer, const nn_seq_tensors_t *w, const float *x,
                         const uint16_t *x_half, float *y, uint16_t *y_half)
{
    seq_lstm_t *l = &p->lstm[layer];
    const int batch = p->batch, steps = p->steps, H = p->hidden, G4 = 4 * H;
    const long rows = (long)batch * steps, y_row = 2L * H;
    const int mixed = p->precision == NN_PRECISION_BF16;

    for (int d = 0; d < 2; d++) {
        float *const *t = dir_tensors(w, layer, d);
        const void *w_ih = mixed ? (const void *)p->w_ih_half[layer][d] : t[0];
        const void *w_hh = mixed ? (const void *)p->w_hh_half[layer][d] : t[1];
        float *gates = l->gates[d];

        /* Input projections of every step, then both biases. */
        gemm(p, 'N', 'T', rows, G4, l->in, mixed ? (const void *)x_half : x, l->in, w_ih,
             l->in, 0.0f, gates, G4, mixed);
        add_bias(p, gates, (size_t)rows, G4, t[2], t[3], 0);

        nn_lstm_step_t step = {batch, steps, H, d, 0, p->pad_like_original, p->lengths,
                               gates, l->cells[d], y, mixed ? y_half : NULL};
        for (int s = 0; s < steps; s++) {
            int at = nn_seq_step_at(steps, d, s), before = nn_seq_step_before(d, at);
            if (s > 0) {
                /* The whole batch's recurrent term; inactive rows are cleared by the kernel. */
                const void *h_prev = mixed ? (const void *)(y_half + before * y_row + d * H)
                                           : (const void *)(y + before * y_row + d * H);
                gemm(p, 'N', 'T', batch, G4, H, h_prev, steps * y_row, w_hh, H, 1.0f,
                     gates + (size_t)at * G4, (long)steps * G4, mixed);
            }
            step.s = s;
            size_t count = (size_t)batch * H;
            step_forward_kernel<<<blocks(p, count), SEQ_THREADS, 0, p->stream>>>(step, count);
            KERNEL_CHECK("step_forward_kernel");
        }
    }
}

/* Layer `layer` backward: dy [rows][2H] -> dx [rows][in] (NULL: not needed), gradients. */
static void lstm_backward(seq_plan_t *p, int layer, const nn_seq_tensors_t *w,
                          const nn_seq_tensors_t *g, const float *x, const uint16_t *x_half,
                          const float *y, const uint16_t *y_half, const float *dy, float *dx)
{
    seq_lstm_t *l = &p->lstm[layer];
    const int batch = p->batch, steps = p->steps, H = p->hidden, G4 = 4 * H;
    const long rows = (long)batch * steps;
    const int mixed = p->precision == NN_PRECISION_BF16;
    const size_t unit_count = (size_t)batch * H, row_count = (size_t)rows * H;

    for (int d = 0; d < 2; d++) {
        float *const *t = dir_tensors(w, layer, d), *const *grad = dir_tensors(g, layer, d);
        const void *w_ih = mixed ? (const void *)p->w_ih_half[layer][d] : t[0];
        const void *w_hh = mixed ? (const void *)p->w_hh_half[layer][d] : t[1];
        const void *dgates = mixed ? (const void *)p->dgates_half : p->dgates;

        CUDA_CHECK(cudaMemsetAsync(p->carry_h, 0, unit_count * sizeof(float), p->stream));
        CUDA_CHECK(cudaMemsetAsync(p->carry_c, 0, unit_count * sizeof(float), p->stream));
        nn_lstm_step_back_t step = {batch, steps, H, d, 0, p->pad_like_original, p->lengths,
                                    l->gates[d], l->cells[d], dy, p->carry_h, p->carry_c,
                                    p->dgates, mixed ? p->dgates_half : NULL};
        for (int s = steps - 1; s >= 0; s--) {
            step.s = s;
            step_backward_kernel<<<blocks(p, unit_count), SEQ_THREADS, 0, p->stream>>>(
                step, unit_count);
            KERNEL_CHECK("step_backward_kernel");
            if (s == 0)
                continue;
            int at = nn_seq_step_at(steps, d, s);
            const void *da = mixed ? (const void *)(p->dgates_half + (size_t)at * G4)
                                   : (const void *)(p->dgates + (size_t)at * G4);
            gemm(p, 'N', 'N', batch, H, G4, da, (long)steps * G4, w_hh, H, 0.0f, p->carry_h, H,
                 mixed);
        }

        /* The recurrent inputs of every step, then the weight gradients over all rows. */
        h_prev_kernel<<<blocks(p, row_count), SEQ_THREADS, 0, p->stream>>>(
            y, mixed ? y_half : NULL, steps, (size_t)H, d, row_count, p->h_prev,
            mixed ? p->h_prev_half : NULL);
        KERNEL_CHECK("h_prev_kernel");
        const void *h_prev = mixed ? (const void *)p->h_prev_half : p->h_prev;
        gemm(p, 'T', 'N', G4, H, rows, dgates, G4, h_prev, H, 0.0f, grad[1], H, mixed);
        gemm(p, 'T', 'N', G4, l->in, rows, dgates, G4, mixed ? (const void *)x_half : x, l->in,
             0.0f, grad[0], l->in, mixed);
        column_sums(p, p->dgates, rows, G4, grad[2], grad[3]);
        if (dx)
            gemm(p, 'N', 'N', rows, l->in, G4, dgates, G4, w_ih, l->in, d == 0 ? 0.0f : 1.0f,
                 dx, l->in, mixed);
    }
}

/* ---- the model --------------------------------------------------------------------------- */

/* Linear layer `which`: y [rows][out] = x W^T + b, relu when asked. */
static void linear_forward(seq_plan_t *p, int which, const nn_seq_tensors_t *w, long rows,
                           int in, int out, const float *x, const uint16_t *x_half, float *y,
                           int relu)
{
    int mixed = p->precision == NN_PRECISION_BF16;
    const void *weight = mixed ? (const void *)p->lin_w_half[which] : w->linear_w[which];
    gemm(p, 'N', 'T', rows, out, in, mixed ? (const void *)x_half : x, in, weight, in, 0.0f, y,
         out, mixed);
    add_bias(p, y, (size_t)rows, out, w->linear_b[which], NULL, relu);
}

/* dW = dy^T x, db = column sums of dy, dx (+)= dy W; dy_half is dy rounded (bf16). */
static void linear_backward(seq_plan_t *p, int which, const nn_seq_tensors_t *w,
                            const nn_seq_tensors_t *g, long rows, int in, int out,
                            const float *x, const uint16_t *x_half, const float *dy,
                            float *dx, int add_dx)
{
    int mixed = p->precision == NN_PRECISION_BF16;
    const void *weight = mixed ? (const void *)p->lin_w_half[which] : w->linear_w[which];
    const void *grad_out = mixed ? (const void *)p->dy_half : dy;
    column_sums(p, dy, rows, out, g->linear_b[which], NULL);
    gemm(p, 'T', 'N', out, in, rows, grad_out, out, mixed ? (const void *)x_half : x, in, 0.0f,
         g->linear_w[which], in, mixed);
    gemm(p, 'N', 'N', rows, in, out, grad_out, out, weight, in, add_dx ? 1.0f : 0.0f, dx, in,
         mixed);
}

static void round_weights(seq_plan_t *p, const nn_seq_tensors_t *w)
{
    const size_t H = (size_t)p->hidden, W = 2 * H;
    reserve_half_weights(p);
    for (int l = 0; l < 2; l++)
        for (int d = 0; d < 2; d++) {
            float *const *t = dir_tensors(w, l, d);
            round_half(p, t[0], 4 * H * p->lstm[l].in, p->w_ih_half[l][d]);
            round_half(p, t[1], 4 * H * H, p->w_hh_half[l][d]);
        }
    round_half(p, w->linear_w[NN_SEQ_LINEAR1], W * W, p->lin_w_half[NN_SEQ_LINEAR1]);
    round_half(p, w->linear_w[NN_SEQ_LINEAR2], W * W, p->lin_w_half[NN_SEQ_LINEAR2]);
    round_half(p, w->linear_w[NN_SEQ_HEAD], SEQ_OUT * W, p->lin_w_half[NN_SEQ_HEAD]);
}

static void *seq_create(nn_backend_t *be, int emb, int hidden, int pad_like_original)
{
    seq_plan_t *p = (seq_plan_t *)xcalloc(1, sizeof *p);
    p->be = be;
    p->stream = nn_cuda_stream(be);
    p->emb = emb;
    p->hidden = hidden;
    p->pad_like_original = pad_like_original;
    p->lstm[0].in = 3 * emb;
    p->lstm[1].in = 2 * hidden;
    CUBLAS_CHECK(cublasCreate(&p->blas));
    CUBLAS_CHECK(cublasSetStream(p->blas, p->stream));
    /* The compute type of each product decides; no TF32 anywhere (gemm). */
    CUBLAS_CHECK(cublasSetMathMode(p->blas, CUBLAS_DEFAULT_MATH));
    return p;
}

static void seq_forward(nn_backend_t *be, void *plan, int precision,
                        const nn_seq_tensors_t *w, const float *embeddings, int batch,
                        int steps, const int *lengths, float *logits)
{
    (void)be;
    seq_plan_t *p = (seq_plan_t *)plan;
    const size_t E = (size_t)p->emb, H = (size_t)p->hidden, W = 2 * H;
    const long rows = (long)batch * steps;
    const int mixed = precision == NN_PRECISION_BF16;

    reserve(p, batch, steps);
    p->precision = mixed ? NN_PRECISION_BF16 : NN_PRECISION_FP32;
    p->batch = batch;
    p->steps = steps;
    CUDA_CHECK(cudaMemcpyAsync(p->lengths, lengths, (size_t)batch * sizeof(int),
                               cudaMemcpyHostToDevice, p->stream));
    CUDA_CHECK(cudaMemcpyAsync(p->embeddings, embeddings, (size_t)rows * E * sizeof(float),
                               cudaMemcpyHostToDevice, p->stream));

    size_t count = (size_t)rows * E;
    features_kernel<<<blocks(p, count), SEQ_THREADS, 0, p->stream>>>(p->embeddings, p->lengths,
                                                                  steps, E, count, p->x);
    KERNEL_CHECK("features_kernel");
    if (mixed) {
        round_weights(p, w);
        round_half(p, p->x, (size_t)rows * 3 * E, p->x_half);
    }

    lstm_forward(p, 0, w, p->x, p->x_half, p->h[0], p->h_half[0]);
    lstm_forward(p, 1, w, p->h[0], p->h_half[0], p->h[1], p->h_half[1]);
    linear_forward(p, NN_SEQ_LINEAR1, w, rows, (int)W, (int)W, p->h[0], p->h_half[0],
                   p->relu_out[0], 1);
    linear_forward(p, NN_SEQ_LINEAR2, w, rows, (int)W, (int)W, p->h[1], p->h_half[1],
                   p->relu_out[1], 1);

    count = (size_t)rows * W;
    hidden_sum_kernel<<<blocks(p, count), SEQ_THREADS, 0, p->stream>>>(
        p->h[0], p->h[1], p->relu_out[0], p->relu_out[1], p->embeddings, E, H, count,
        p->summed, mixed ? p->summed_half : NULL);
    KERNEL_CHECK("hidden_sum_kernel");
    linear_forward(p, NN_SEQ_HEAD, w, rows, (int)W, SEQ_OUT, p->summed, p->summed_half,
                   p->logits, 0);

    CUDA_CHECK(cudaMemcpyAsync(logits, p->logits, (size_t)rows * SEQ_OUT * sizeof(float),
                               cudaMemcpyDeviceToHost, p->stream));
    CUDA_CHECK(cudaStreamSynchronize(p->stream));
}

static void seq_backward(nn_backend_t *be, void *plan, const nn_seq_tensors_t *w,
                         const float *dlogits, const nn_seq_tensors_t *g)
{
    (void)be;
    seq_plan_t *p = (seq_plan_t *)plan;
    const int W = 2 * p->hidden;
    const long rows = (long)p->batch * p->steps;
    const size_t n = (size_t)rows * W;
    const int mixed = p->precision == NN_PRECISION_BF16;
    if (!p->batch)
        die(EXIT_INTERNAL, "cuda: the sequence model's backward came before a forward");

    /* The logits' buffer takes their gradient: the forward's values are not needed. */
    CUDA_CHECK(cudaMemcpyAsync(p->logits, dlogits, (size_t)rows * SEQ_OUT * sizeof(float),
                               cudaMemcpyHostToDevice, p->stream));
    if (mixed)
        round_half(p, p->logits, (size_t)rows * SEQ_OUT, p->dy_half);
    linear_backward(p, NN_SEQ_HEAD, w, g, rows, W, SEQ_OUT, p->summed, p->summed_half,
                    p->logits, p->dhidden, 0);

    /* Each LSTM output feeds the sum directly and through its relu branch. */
    for (int k = 0; k < 2; k++) {
        CUDA_CHECK(cudaMemcpyAsync(p->dh[k], p->dhidden, n * sizeof(float),
                                   cudaMemcpyDeviceToDevice, p->stream));
        relu_grad_kernel<<<blocks(p, n), SEQ_THREADS, 0, p->stream>>>(
            p->relu_out[k], p->dhidden, n, p->dpre, mixed ? p->dy_half : NULL);
        KERNEL_CHECK("relu_grad_kernel");
        linear_backward(p, k == 0 ? NN_SEQ_LINEAR1 : NN_SEQ_LINEAR2, w, g, rows, W, W, p->h[k],
                        p->h_half[k], p->dpre, p->dh[k], 1);
    }

    /* lstm2's input gradient joins h1's; the embeddings need none. */
    lstm_backward(p, 1, w, g, p->h[0], p->h_half[0], p->h[1], p->h_half[1], p->dh[1],
                  p->dpre);
    add_kernel<<<blocks(p, n), SEQ_THREADS, 0, p->stream>>>(p->dh[0], p->dpre, n);
    KERNEL_CHECK("add_kernel");
    lstm_backward(p, 0, w, g, p->x, p->x_half, p->h[0], p->h_half[0], p->dh[0], NULL);
}

static void seq_destroy(nn_backend_t *be, void *plan)
{
    (void)be;
    seq_plan_t *p = (seq_plan_t *)plan;
    if (!p)
        return;
    CUDA_CHECK(cudaStreamSynchronize(p->stream));
    dev_free(p, p->arena);
    dev_free(p, p->lengths);
    dev_free(p, p->carry_h);
    dev_free(p, p->carry_c);
    for (int l = 0; l < 2; l++)
        for (int d = 0; d < 2; d++) {
            dev_free(p, p->w_ih_half[l][d]);
            dev_free(p, p->w_hh_half[l][d]);
        }
    for (int k = 0; k < 3; k++)
        dev_free(p, p->lin_w_half[k]);
    CUBLAS_CHECK(cublasDestroy(p->blas));
    free(p);
}

void nn_cuda_seq_install(nn_backend_t *be)
{
    be->seq_create = seq_create;
    be->seq_forward = seq_forward;
    be->seq_backward = seq_backward;
    be->seq_destroy = seq_destroy;
}
