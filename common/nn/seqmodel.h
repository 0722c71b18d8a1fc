/*
 * The sequence model of reference-method.md stage 5 over slice embeddings, as the PyTorch
 * module in tests/ref/lstm_ref.py (SeqModel) defines it:
 *
 *   X = [E, E - E_prev, E - E_next]      (differences zero at the ends of each series)
 *   h1 = lstm1(X), h2 = lstm2(h1)        (bidirectional, H per direction: 2H wide)
 *   hidden = h1 + h2 + relu(linear1(h1)) + relu(linear2(h2)) + [E[:, :H], E[:, :H]]
 *   logits = linear(hidden)              (6 outputs)
 *
 * The embedding added back is the first H columns of E, repeated for both directions, so the
 * embedding width must be at least H (seqmodel_create rejects it otherwise).
 * Tensor names are the module's state_dict keys: lstm1.weight_ih_l0, lstm1.weight_hh_l0,
 * lstm1.bias_ih_l0, lstm1.bias_hh_l0, the same with _reverse, lstm2.*, linear1.weight,
 * linear1.bias, linear2.*, linear.*.
 *
 * Batches: embeddings [batch][steps][emb], series front-padded to steps, lengths[b] real
 * slices at the end; padded rows of E are ignored (X is built per series). The loss is the
 * method's weighted BCE with its means over the valid slices only; a negative label (unknown)
 * is left out of both means.
 *
 * Mixed precision (seqmodel_set_precision NN_PRECISION_BF16): every matrix product takes
 * bf16 operands with fp32 sums, the LSTMs' (nn/lstm.h) and the linear layers' (oneDNN's
 * bf16 matmul: input and weight rounded in the forward, output gradient, input and weight in
 * the backward); parameters, gradients, Adam, biases, gates, cell states, the sums of the
 * branches and the loss stay fp32.
 *
 * Backends: parameters, gradients and Adam moments are the backend's memory (nn_paramset_t).
 * On the CPU backend the model runs here, on nn/lstm.h; a backend with the seq_* ops (nn.h:
 * the CUDA backend, seqmodel_cuda.cu) computes it whole in its memory, with the same element
 * arithmetic (nn/seq_math.h), padding and rounding points. Either way the embeddings,
 * logits, dlogits and the loss are host memory.
 */
#ifndef ICH_NN_SEQMODEL_H
#define ICH_NN_SEQMODEL_H

#include "nn/lstm.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/rng.h"

#include <stddef.h>

#define SEQ_OUTPUTS 6

/* The linear layers (numbered as nn_seq_tensors_t's). */
enum {
    SEQ_LINEAR1 = NN_SEQ_LINEAR1,
    SEQ_LINEAR2 = NN_SEQ_LINEAR2,
    SEQ_HEAD = NN_SEQ_HEAD,
    SEQ_LINEARS = 3
};

typedef struct {
    int emb, hidden;
    int pad_like_original;
    int precision; /* NN_PRECISION_* in effect (seqmodel_set_precision) */
    nn_backend_t *be;
    void *plan; /* the backend's seq_create, or NULL: computed here */
    nn_paramset_t ps;
    nn_lstm_t lstm1, lstm2;
    size_t lstm1_first, lstm2_first; /* entry of weight_ih_l0; the 8 tensors follow */
    size_t lin1_w, lin1_b, lin2_w, lin2_b, lin_w, lin_b;

    /* The current batch (host memory, grown on demand; with a plan only lengths, logits,
     * dlogits and the valid_* rows). */
    int batch, steps, n_valid;
    int *lengths;
    size_t cap_rows;
    float *x;                 /* [rows][3 emb] */
    float *h1, *h2, *a1, *a2; /* [rows][2H]: LSTM outputs, relu(linear) outputs */
    float *summed;            /* [rows][2H]: the sum fed to linear */
    float *logits, *dlogits;  /* [rows][6]; dlogits zero at padded rows */
    float *dhidden, *dh1, *dh2, *dpre; /* [rows][2H] backward scratch */
    float *valid_logits, *valid_labels, *valid_dlogits; /* [n_valid][6] */

    /* Mixed precision, per linear layer (SEQ_LINEAR1, SEQ_LINEAR2, SEQ_HEAD): its weight
     * rounded to bf16 with the weight it was made from, its input as the forward rounded it;
     * the output gradient of the layer in the backward, rounded. */
    nn_bf16_t *lin_w_bf16[3];
    const float *lin_w_bf16_of[3];
    nn_bf16_t *lin_x_bf16[3]; /* [rows][2H] */
    nn_bf16_t *dy_bf16;       /* [rows][2H] */
    size_t cap_rows_bf16;

    /* seqmodel_set_inference: the linear layers' weights packed for inference. */
    int inference;
    nn_bf16_weights_cache_t lin_w_packed[3];
} seqmodel_t;

/*
 * A model with zeroed parameters (nn_params_fill_hashed or a checkpoint fills them).
 * Sizes that cannot work together give NULL with the reason in err.
 */
seqmodel_t *seqmodel_create(nn_backend_t *be, int emb, int hidden, int pad_like_original,
                            char *err, size_t err_len);
void seqmodel_destroy(seqmodel_t *m);

/*
 * The arithmetic of the products that follow (fp32 after seqmodel_create); returns the one
 * in effect: NN_PRECISION_FP32 with a notice on a CPU without AVX512-BF16 (a backend with
 * the seq_* ops always has bf16).
 */
int seqmodel_set_precision(seqmodel_t *m, int precision);

/*
 * 1: the forwards that follow serve predictions only (seqmodel_backward then is an internal
 * error); in mixed precision the weights of every large product are then kept in oneDNN's
 * own layout, packed once instead of at every product (nn_bf16_weights_cached). 0, the
 * default: training. The results are the same either way.
 */
void seqmodel_set_inference(seqmodel_t *m, int inference);

/*
 * PyTorch's default initialisation, drawn from rng: every LSTM tensor uniform in
 * +-1/sqrt(hidden) (torch.nn.LSTM), each linear weight and bias uniform in +-1/sqrt(in)
 * (torch.nn.Linear). The draws differ from torch's; the distributions are the same.
 */
void seqmodel_init_default(seqmodel_t *m, nn_rng_t *rng);

/*
 * The parameter values were written by other means than a training step (a checkpoint
 * load, a fill): drop what the forward keeps derived from them (nn_lstm_weights_changed).
 * seqmodel_init_default and seqmodel_backward call it themselves.
 */
void seqmodel_weights_changed(seqmodel_t *m);

/* Forward over a front-padded batch; fills m->logits (padded rows hold unused values). */
void seqmodel_forward(seqmodel_t *m, const float *embeddings, int batch, int steps,
                      const int *lengths);

/*
 * The loss over the valid slices of the last forward, labels [batch][steps][6] (0, 1, or
 * negative for unknown: left out of the means, zero gradient); when with_grad is 1 also
 * m->dlogits (zero at padded rows). With every label unknown the loss is 0.
 */
double seqmodel_loss(seqmodel_t *m, const float *labels, int with_grad);

/* Every parameter gradient (assigned) from m->dlogits, after seqmodel_forward. */
void seqmodel_backward(seqmodel_t *m);

/* Whether row t of series b (front-padded) holds a real slice. */
static inline int seqmodel_valid(const seqmodel_t *m, int b, int t)
{
    return t >= m->steps - m->lengths[b];
}

#endif
