/*
 * Bidirectional LSTM layer with PyTorch's arithmetic (torch.nn.LSTM, one layer,
 * bidirectional, batch_first), forward and backward, fp32 on the host.
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
 * Arithmetic: one oneDNN sgemm for the input projections of all steps, one small sgemm
 * over the batch per step for the recurrence (from 8 series on, against a transposed copy of
 * W_hh kept until the weights change: oneDNN's sgemm is slow on a transposed operand at
 * those sizes),
 * gate loops in plain C.
 * missing: speed in training. The per-step products re-read W_hh (64 MiB fp32 per direction
 * at hidden 2048) for 4 series and are bound by memory bandwidth: 40 steps x 2 directions x
 * 2 layers x (forward + backward) read about 20 GB per batch of 4 series of 40 slices
 * (bench/README.md). Only fewer bytes help there: bf16 weights for the recurrence (not done);
 * no GPU version.
 */
#ifndef ICH_NN_LSTM_H
#define ICH_NN_LSTM_H

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

    /* What the forward keeps for the backward (host memory, grown on demand). */
    int batch, steps;
    size_t cap_rows;          /* batch x steps the buffers hold */
    const int *lengths;       /* the caller's, valid until the backward */
    float *gates[2];          /* [batch][steps][4H] activated i, f, g, o */
    float *cells[2];          /* [batch][steps][H] */
    float *dgates;            /* [batch][steps][4H] scratch */
    float *h_prev;            /* [batch][steps][H] scratch */
    float *carry_h, *carry_c; /* [batch][H] scratch */
    size_t cap_batch;
    float *w_hh_t[2];         /* per direction [H][4H]: W_hh transposed, for wide batches */
    const float *w_hh_t_of[2]; /* the W_hh each copy was made from; NULL: none or stale */
} nn_lstm_t;

void nn_lstm_init(nn_lstm_t *l, int in, int hidden, int pad_like_original);
void nn_lstm_free(nn_lstm_t *l);

/*
 * The weights were written (an optimizer step, a load): drop the transposed copies of W_hh
 * that forwards of 8 series or more keep between calls. nn_lstm_backward calls it itself,
 * since an optimizer step follows it.
 */
void nn_lstm_weights_changed(nn_lstm_t *l);

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

#endif
