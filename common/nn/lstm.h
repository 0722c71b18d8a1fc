/*
 * Bidirectional LSTM layer with PyTorch's arithmetic (torch.nn.LSTM, one layer,
 * bidirectional, batch_first), forward and backward on the host, fp32 or bf16 mixed precision.
 *
 * Gates in PyTorch's order i, f, g, o; each direction has weight_ih [4H][in],
 * weight_hh [4H][H], bias_ih [4H], bias_hh [4H]:
 *   a = W_ih x_t + b_ih + W_hh h_prev + b_hh,  i, f, o = sigmoid, g = tanh,
 *   c_t = f c_prev + i g,  h_t = o tanh(c_t).
 * Output y[b][t] = [h_forward, h_reverse] (2H values).
 *
 * A batch holds series of different lengths, padded at the front to the longest (steps):
 * series b occupies steps [steps - lengths[b], steps). By default padding never touches the
 * recurrent state: the forward direction starts from zero state at the series' first real
 * step, the reverse direction at its last, and padded steps output zeros and pass no
 * gradient (the same as PyTorch on packed sequences). With pad_like_original both directions
 * run over every step, padding included, as an unpacked torch.nn.LSTM does.
 *
 * Arithmetic: one oneDNN sgemm for the input projections of all steps (as W_ih x^T, then
 * transposed: nn_sgemm_bias_nt), one small sgemm over the batch per step for the recurrence
 * (from 8 series on, against a transposed copy of W_hh kept until the weights change:
 * oneDNN's sgemm is slow on a transposed operand at those sizes), gate loops in plain C over
 * nn/seq_math.h's per-unit functions, which the CUDA kernels (seqmodel_cuda.cu) share, split
 * over the engine's threads (nn/team.h) from 1 << 14 units a step on.
 *
 * Mixed precision (nn_lstm_set_precision NN_PRECISION_BF16): every matrix product takes
 * bf16 operands and sums in fp32 (nn/bf16gemm.h); weights, gradients, gates, cell states stay
 * fp32. The weights are rounded into bf16 copies once per weight change (W_ih plain; W_hh
 * packed twice, as W_hh^T for the forward and W_hh for the backward); the activations at each
 * product's input: x at the input projections, h_prev at each recurrent product (forward) and
 * in dW_hh, the gate gradients at each recurrent product (backward) and in dW_ih, dW_hh, dx.
 * The recurrent products, a few series against W_hh each step and bound by memory bandwidth,
 * run on an own AVX512-BF16 kernel that reads half the bytes; the compute-bound ones (input
 * projections, weight gradients, dx) on oneDNN's bf16 matmul primitive (bench/README.md).
 * The copies cost memory (at hidden 2048 and 6144 inputs: 0.6 GB for both layers) and, in
 * training, a rounding pass over the weights per step.
 * For up to 4 series (training batches) the fp32 recurrent products run on own AVX-512
 * kernels that read W_hh 4 rows at a time (memory in 4 streams per thread: about 60 GB/s here
 * against 22-30 for oneDNN's sgemm at these shapes).
 * missing: fp32 training stays bound by the recurrence's memory traffic (about 20 GB a batch
 * of 4 series of 40 slices); the packing of W_hh for the backward is slower than a plain
 * copy (strided reads). On the GPU the sequence model runs whole (nn/seqmodel.h, the
 * backend's seq_* ops) rather than this layer.
 */
#ifndef ICH_NN_LSTM_H
#define ICH_NN_LSTM_H

#include "nn/bf16gemm.h"

#include <stddef.h>

/* One direction's tensors (values or gradients), in state_dict order. */
typedef struct {
    float *w_ih, *w_hh, *b_ih, *b_hh;
} nn_lstm_dir_t;

/* Both directions: dir[0] forward (suffix _l0), dir[1] reverse (_l0_reverse). */
typedef struct {
    nn_lstm_dir_t dir[2];
} nn_lstm_weights_t;

typedef struct {
    int in, hidden;
    int pad_like_original;
    /* The gate loops' split over the engine's threads: tasks of this many units of one
     * series, threads from this many units a step (1 << 14) on; tests shrink both. */
    int gate_task_units;
    size_t gate_parallel_min;
    /* The own fp32 recurrence kernels run on the engine's threads from this many multiply-adds
     * a call (4 hidden^2 a series; 1 << 19) on, below on one: a small model's call takes
     * microseconds, less than a barrier costs when other processes hold the cores. Tests
     * set 0. */
    size_t rec_parallel_min;
    /* 1 (on CPUs with AVX-512): the gate loops 16 units at a time with glibc's vector expf
     * and tanhf, and the fp32 recurrence (forward and backward) of up to 4 series on own
     * kernels; 0: one unit at a time with the scalar ones and oneDNN's sgemm (the test's
     * reference). */
    int vector_kernels;

    /* What the forward keeps for the backward (host memory, grown on demand). */
    int batch, steps;
    size_t cap_rows;          /* batch x steps the buffers hold */
    const int *lengths;       /* the caller's, valid until the backward */
    float *gates[2];          /* [batch][steps][4H] activated i, f, g, o */
    float *cells[2];          /* [batch][steps][H] */
    float *dgates;            /* [batch][steps][4H] scratch */
    float *h_prev;            /* [batch][steps][H] scratch */
    float *carry_h, *carry_c; /* [batch][H] scratch */
    float *rec_partial; /* [16 tasks][4][H]: the fp32 backward recurrence's partial sums */
    float *rec_pad;     /* [4][4H]: its operand padded to 4 series */
    size_t cap_batch;
    float *w_hh_t[2];         /* per direction [H][4H]: W_hh transposed, for wide batches */
    const float *w_hh_t_of[2]; /* the W_hh each copy was made from; NULL: none or stale */

    /* Mixed precision: NN_PRECISION_* of the products; the bf16 copies of the weights per
     * direction (W_hh packed twice, W_ih plain) with the tensor each was made from; the
     * rounded operands. */
    int precision;
    nn_bf16_t *w_hh_fwd_bf16[2], *w_hh_bwd_bf16[2], *w_ih_bf16[2];
    const float *w_hh_fwd_of[2], *w_hh_bwd_of[2], *w_ih_of[2];
    nn_bf16_t *rec_bf16;    /* [batch][4H] one step's recurrent operand */
    size_t cap_rows_bf16;   /* rows of the three below */
    nn_bf16_t *x_bf16;      /* [batch][steps][in] the forward's input */
    nn_bf16_t *dgates_bf16; /* [batch][steps][4H] */
    nn_bf16_t *h_prev_bf16; /* [batch][steps][H] */
    float *bias_sum;        /* [4H] b_ih + b_hh */

    /* nn_lstm_set_inference: in mixed precision the input projections read W_ih packed in
     * oneDNN's own layout, made once for all the batches that follow. */
    int inference;
    nn_bf16_weights_cache_t w_ih_packed[2];
} nn_lstm_t;

/* fp32 products until nn_lstm_set_precision says otherwise. */
void nn_lstm_init(nn_lstm_t *l, int in, int hidden, int pad_like_original);
void nn_lstm_free(nn_lstm_t *l);

/*
 * NN_PRECISION_FP32 or NN_PRECISION_BF16 for the products that follow; returns the one in
 * effect: fp32 (with a one-line notice, once) on a CPU without AVX512-BF16.
 */
int nn_lstm_set_precision(nn_lstm_t *l, int precision);

/*
 * The weights were written (an optimizer step, a load): drop the weight copies kept between
 * calls (W_hh transposed for forwards of 8 series or more; in mixed precision the bf16 copies
 * of W_ih and W_hh).
 * nn_lstm_backward calls it itself at its end, since an optimizer step follows it.
 */
void nn_lstm_weights_changed(nn_lstm_t *l);

/*
 * 1: the forwards that follow are for inference only, and nn_lstm_backward refuses to run
 * (an internal error); 0 (the default): training. Each mode frees the weight copies only the
 * other one reads, so that switching keeps the memory of one set.
 */
void nn_lstm_set_inference(nn_lstm_t *l, int inference);

/* Sizes of the tensors of one direction, for declaring parameters. */
static inline size_t nn_lstm_w_ih_count(const nn_lstm_t *l)
{
    return (size_t)4 * l->hidden * l->in;
}

/*
 * x [batch][steps][in] -> y [batch][steps][2H]. lengths[b] in [1, steps]; lengths must stay
 * valid until nn_lstm_backward.
 */
void nn_lstm_forward(nn_lstm_t *l, const nn_lstm_weights_t *w, const float *x, int batch,
                     int steps, const int *lengths, float *y);

/*
 * After nn_lstm_forward with the same x, y: dy [batch][steps][2H] -> dx (NULL: not needed)
 * and the weight gradients, assigned (not accumulated).
 */
void nn_lstm_backward(nn_lstm_t *l, const nn_lstm_weights_t *w, const float *x,
                      const float *y, const float *dy, float *dx, nn_lstm_weights_t *grad);

/* Row-major C = alpha op(A) op(B) + beta C through oneDNN's sgemm; dies on failure. */
void nn_sgemm(char trans_a, char trans_b, long m, long n, long k, float alpha, const float *a,
              long lda, const float *b, long ldb, float beta, float *c, long ldc);

/*
 * Row-major C[m][n] = bias[n] + A[m][k] B[n][k]^T for a large B (weights) and few rows m:
 * computed as B A^T into scratch [n][m], then transposed into C. oneDNN's sgemm runs the
 * swapped product 15-30% faster at these shapes (bench/README.md).
 */
void nn_sgemm_bias_nt(long m, long n, long k, const float *a, long lda, const float *b,
                      long ldb, const float *bias, float *c, long ldc, float *scratch);

#endif
