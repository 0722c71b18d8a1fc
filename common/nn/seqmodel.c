/* The stage-5 sequence model: two bidirectional LSTMs, relu branches, embedding skip. */
#include "nn/seqmodel.h"

#include "check.h"
#include "exitcodes.h"
#include "nn/seq_math.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const lstm_tensor_names[8] = {
    "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
    "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse",
};

/* Declare an LSTM's 8 tensors in state_dict order; returns the first entry. */
static size_t declare_lstm(nn_paramset_t *ps, const char *prefix, int in, int hidden)
{
    size_t first = 0;

    for (int k = 0; k < 8; k++) {
        char name[NN_NAME_MAX];
        int64_t dims[2] = {4 * (int64_t)hidden, k % 4 == 0 ? in : hidden};
        snprintf(name, sizeof(name), "%s.%s", prefix, lstm_tensor_names[k]);
        size_t e = nn_params_declare(ps, name, NN_ENTRY_PARAM, k % 4 < 2 ? 2 : 1, dims);
        if (k == 0)
            first = e;
    }
    return first;
}

static size_t declare_linear(nn_paramset_t *ps, const char *prefix, int in, int out,
                             size_t *bias)
{
    char name[NN_NAME_MAX];
    int64_t dims[2] = {out, in};

    snprintf(name, sizeof(name), "%s.weight", prefix);
    size_t w = nn_params_declare(ps, name, NN_ENTRY_PARAM, 2, dims);
    snprintf(name, sizeof(name), "%s.bias", prefix);
    *bias = nn_params_declare(ps, name, NN_ENTRY_PARAM, 1, dims);
    return w;
}

/* Entry `entry`'s values, or its gradients when grads is 1. */
static float *tensor_of(seqmodel_t *m, size_t entry, int grads)
{
    return grads ? nn_params_grad(&m->ps, entry) : nn_params_value(&m->ps, entry);
}

/* The LSTM tensors (values or gradients) starting at entry first. */
static nn_lstm_weights_t lstm_view(seqmodel_t *m, size_t first, int grads)
{
    nn_lstm_weights_t w;
    float *p[8];

    for (int k = 0; k < 8; k++)
        p[k] = tensor_of(m, first + k, grads);
    for (int d = 0; d < 2; d++) {
        w.dir[d].w_ih = p[4 * d];
        w.dir[d].w_hh = p[4 * d + 1];
        w.dir[d].b_ih = p[4 * d + 2];
        w.dir[d].b_hh = p[4 * d + 3];
    }
    return w;
}

/* Every tensor (values or gradients) for the backend's seq_* ops. */
static nn_seq_tensors_t seq_tensors(seqmodel_t *m, int grads)
{
    nn_seq_tensors_t t;
    size_t linears[3][2] = {{m->lin1_w, m->lin1_b}, {m->lin2_w, m->lin2_b},
                            {m->lin_w, m->lin_b}};

    for (int k = 0; k < 8; k++) {
        t.lstm[0][k] = tensor_of(m, m->lstm1_first + k, grads);
        t.lstm[1][k] = tensor_of(m, m->lstm2_first + k, grads);
    }
    for (int k = 0; k < 3; k++) {
        t.linear_w[k] = tensor_of(m, linears[k][0], grads);
        t.linear_b[k] = tensor_of(m, linears[k][1], grads);
    }
    return t;
}

seqmodel_t *seqmodel_create(nn_backend_t *be, int emb, int hidden, int pad_like_original,
                            char *err, size_t err_len)
{
    if (emb < 1 || hidden < 1) {
        snprintf(err, err_len, "embedding width %d and hidden size %d must be positive", emb,
                 hidden);
        return NULL;
    }
    /* The skip connection adds E[:, :H] to each direction's half of the hidden state. */
    if (emb < hidden) {
        snprintf(err, err_len,
                 "the hidden size %d exceeds the embedding width %d: the model adds the "
                 "embedding's first %d columns to each LSTM direction",
                 hidden, emb, hidden);
        return NULL;
    }

    seqmodel_t *m = xcalloc(1, sizeof(*m));
    m->emb = emb;
    m->hidden = hidden;
    m->pad_like_original = pad_like_original;
    m->be = be;
    nn_lstm_init(&m->lstm1, 3 * emb, hidden, pad_like_original);
    nn_lstm_init(&m->lstm2, 2 * hidden, hidden, pad_like_original);

    nn_params_init(&m->ps, be);
    m->lstm1_first = declare_lstm(&m->ps, "lstm1", 3 * emb, hidden);
    m->lstm2_first = declare_lstm(&m->ps, "lstm2", 2 * hidden, hidden);
    m->lin1_w = declare_linear(&m->ps, "linear1", 2 * hidden, 2 * hidden, &m->lin1_b);
    m->lin2_w = declare_linear(&m->ps, "linear2", 2 * hidden, 2 * hidden, &m->lin2_b);
    m->lin_w = declare_linear(&m->ps, "linear", 2 * hidden, SEQ_OUTPUTS, &m->lin_b);
    nn_params_alloc(&m->ps);
    /* A backend with the whole model computes it in its own memory. */
    if (be->seq_create)
        m->plan = be->seq_create(be, emb, hidden, pad_like_original);
    return m;
}

/* Uniform values in +-bound into one tensor (host memory, then the backend's). */
static void fill_uniform(seqmodel_t *m, size_t entry, double bound, nn_rng_t *rng)
{
    size_t count = m->ps.entries[entry].count;
    float *host = xmalloc(count * sizeof(float));

    for (size_t i = 0; i < count; i++)
        host[i] = (float)((2.0 * nn_rng_uniform(rng) - 1.0) * bound);
    m->be->to_device(m->be, nn_params_value(&m->ps, entry), host, count * sizeof(float));
    free(host);
}

int seqmodel_set_precision(seqmodel_t *m, int precision)
{
    if (m->plan) {
        m->precision = precision == NN_PRECISION_BF16 ? NN_PRECISION_BF16 : NN_PRECISION_FP32;
        return m->precision;
    }
    nn_lstm_set_precision(&m->lstm1, precision);
    m->precision = nn_lstm_set_precision(&m->lstm2, precision);
    return m->precision;
}

void seqmodel_weights_changed(seqmodel_t *m)
{
    nn_lstm_weights_changed(&m->lstm1);
    nn_lstm_weights_changed(&m->lstm2);
    for (int k = 0; k < SEQ_LINEARS; k++)
        m->lin_w_bf16_of[k] = m->lin_w_packed[k].from = NULL;
}

void seqmodel_set_inference(seqmodel_t *m, int inference)
{
    m->inference = inference != 0;
    nn_lstm_set_inference(&m->lstm1, inference);
    nn_lstm_set_inference(&m->lstm2, inference);

    /* Only one of the two copies of each linear weight is read in each mode. */
    for (int k = 0; k < SEQ_LINEARS; k++) {
        if (inference) {
            free(m->lin_w_bf16[k]);
            m->lin_w_bf16[k] = NULL;
            m->lin_w_bf16_of[k] = NULL;
        } else {
            nn_bf16_weights_cache_free(&m->lin_w_packed[k]);
        }
    }
}

void seqmodel_init_default(seqmodel_t *m, nn_rng_t *rng)
{
    seqmodel_weights_changed(m);
    double lstm_bound = 1.0 / sqrt((double)m->hidden);
    double wide_bound = 1.0 / sqrt(2.0 * m->hidden);
    size_t linears[3][2] = {{m->lin1_w, m->lin1_b}, {m->lin2_w, m->lin2_b},
                            {m->lin_w, m->lin_b}};

    for (int k = 0; k < 8; k++) {
        fill_uniform(m, m->lstm1_first + k, lstm_bound, rng);
        fill_uniform(m, m->lstm2_first + k, lstm_bound, rng);
    }
    /* Every linear layer here reads the 2H-wide hidden state. */
    for (int k = 0; k < 3; k++) {
        fill_uniform(m, linears[k][0], wide_bound, rng);
        fill_uniform(m, linears[k][1], wide_bound, rng);
    }
}

static void free_batch(seqmodel_t *m)
{
    float **bufs[] = {&m->x, &m->h1, &m->h2, &m->a1, &m->a2, &m->summed, &m->logits,
                      &m->dlogits, &m->dhidden, &m->dh1, &m->dh2, &m->dpre,
                      &m->valid_logits, &m->valid_labels, &m->valid_dlogits};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
        free(*bufs[i]);
        *bufs[i] = NULL;
    }
}

void seqmodel_destroy(seqmodel_t *m)
{
    if (!m)
        return;
    free_batch(m);
    free(m->lengths);
    for (int k = 0; k < SEQ_LINEARS; k++) {
        free(m->lin_w_bf16[k]);
        free(m->lin_x_bf16[k]);
        nn_bf16_weights_cache_free(&m->lin_w_packed[k]);
    }
    free(m->dy_bf16);
    if (m->plan)
        m->be->seq_destroy(m->be, m->plan);
    nn_lstm_free(&m->lstm1);
    nn_lstm_free(&m->lstm2);
    nn_params_free(&m->ps);
    free(m);
}

static void reserve(seqmodel_t *m, int batch, int steps)
{
    size_t rows = (size_t)batch * steps, wide = 2 * (size_t)m->hidden;

    free(m->lengths);
    m->lengths = xmalloc((size_t)batch * sizeof(int));
    if (rows <= m->cap_rows)
        return;
    free_batch(m);
    /* The activations live where the model is computed: here without a backend plan. */
    if (!m->plan) {
        m->x = xmalloc(rows * 3 * (size_t)m->emb * sizeof(float));
        float **wide_bufs[] = {&m->h1, &m->h2, &m->a1, &m->a2, &m->summed,
                               &m->dhidden, &m->dh1, &m->dh2, &m->dpre};
        for (size_t i = 0; i < sizeof(wide_bufs) / sizeof(wide_bufs[0]); i++)
            *wide_bufs[i] = xmalloc(rows * wide * sizeof(float));
    }
    float **out_bufs[] = {&m->logits, &m->dlogits, &m->valid_logits, &m->valid_labels,
                          &m->valid_dlogits};
    for (size_t i = 0; i < sizeof(out_bufs) / sizeof(out_bufs[0]); i++)
        *out_bufs[i] = xmalloc(rows * SEQ_OUTPUTS * sizeof(float));
    m->cap_rows = rows;
}

/* The bf16 operands of the linear layers (mixed precision), grown to batch x steps rows. */
static void reserve_bf16(seqmodel_t *m, int batch, int steps)
{
    size_t rows = (size_t)batch * steps, wide = 2 * (size_t)m->hidden;
    if (m->plan || m->precision != NN_PRECISION_BF16 || rows <= m->cap_rows_bf16)
        return;
    for (int k = 0; k < SEQ_LINEARS; k++) {
        free(m->lin_x_bf16[k]);
        m->lin_x_bf16[k] = xmalloc(rows * wide * sizeof(nn_bf16_t));
    }
    /* dy of every linear layer: 2H wide, or the head's outputs where H < 3. */
    size_t dy_wide = wide > SEQ_OUTPUTS ? wide : SEQ_OUTPUTS;
    free(m->dy_bf16);
    m->dy_bf16 = xmalloc(rows * dy_wide * sizeof(nn_bf16_t));
    m->cap_rows_bf16 = rows;
}

/* X = [E, E - E_prev, E - E_next] per series; differences zero at its ends, padding zero. */
static void build_input(seqmodel_t *m, const float *embeddings)
{
    const int E = m->emb, steps = m->steps;

    for (int b = 0; b < m->batch; b++) {
        int first = steps - m->lengths[b];
        for (int t = 0; t < steps; t++) {
            size_t row = (size_t)b * steps + t;
            float *x = m->x + row * 3 * E;
            if (t < first) {
                memset(x, 0, 3 * (size_t)E * sizeof(float));
                continue;
            }
            const float *e = embeddings + row * E;
            int has_prev = t > first, has_next = t < steps - 1;
            for (int j = 0; j < E; j++)
                nn_seq_features(e + j, has_prev, has_next, (size_t)E, x + j);
        }
    }
}

/* Linear layer `which`'s weight rounded to bf16 (made when missing or stale). */
static const nn_bf16_t *linear_weight_bf16(seqmodel_t *m, int which, const float *w,
                                           size_t count, int in)
{
    if (m->lin_w_bf16_of[which] == w)
        return m->lin_w_bf16[which];
    if (!m->lin_w_bf16[which])
        m->lin_w_bf16[which] = xmalloc(count * sizeof(nn_bf16_t));
    nn_bf16_round_rows(w, (long)(count / (size_t)in), in, in, m->lin_w_bf16[which], in);
    m->lin_w_bf16_of[which] = w;
    return m->lin_w_bf16[which];
}

/* y[rows][out] = x[rows][in] W^T + b; in mixed precision on x and W rounded to bf16 (x's
 * rounding kept for the backward). */
static void linear_forward(seqmodel_t *m, int which, long rows, int in, int out,
                           const float *x, const float *w, const float *b, float *y)
{
    if (m->precision == NN_PRECISION_BF16) {
        nn_bf16_round_rows(x, rows, in, in, m->lin_x_bf16[which], in);
        if (m->inference) {
            nn_bf16_matmul_weights(rows, out, in, m->lin_x_bf16[which], in,
                                   nn_bf16_weights_cached(&m->lin_w_packed[which], w, out,
                                                          in, in),
                                   b, y, out);
        } else {
            nn_bf16_matmul('N', 'T', rows, out, in, m->lin_x_bf16[which], in,
                           linear_weight_bf16(m, which, w, (size_t)out * in, in), in, b, 0,
                           y, out);
        }
        return;
    }
    /* The 2H-wide layers through the swapped product (lstm.h), dpre (the backward's) as its
     * scratch; the narrow head as it is. */
    if (out == 2 * m->hidden) {
        nn_sgemm_bias_nt(rows, out, in, x, in, w, in, b, y, out, m->dpre);
        return;
    }
    for (long r = 0; r < rows; r++)
        memcpy(y + r * out, b, (size_t)out * sizeof(float));
    nn_sgemm('N', 'T', rows, out, in, 1.0f, x, in, w, in, 1.0f, y, out);
}

/* dW = dy^T x, db = column sums of dy, dx (+)= dy W (accumulate when add_dx); in mixed
 * precision the products on dy, x and W rounded to bf16. */
static void linear_backward(seqmodel_t *m, int which, long rows, int in, int out,
                            const float *x, const float *w, const float *dy, float *dw,
                            float *db, float *dx, int add_dx)
{
    for (int j = 0; j < out; j++) {
        double sum = 0.0;
        for (long r = 0; r < rows; r++)
            sum += dy[r * out + j];
        db[j] = (float)sum;
    }
    if (m->precision == NN_PRECISION_BF16) {
        nn_bf16_round_rows(dy, rows, out, out, m->dy_bf16, out);
        nn_bf16_matmul('T', 'N', out, in, rows, m->dy_bf16, out, m->lin_x_bf16[which], in,
                       NULL, 0, dw, in);
        nn_bf16_matmul('N', 'N', rows, in, out, m->dy_bf16, out,
                       linear_weight_bf16(m, which, w, (size_t)out * in, in), in, NULL,
                       add_dx, dx, in);
        return;
    }
    nn_sgemm('T', 'N', out, in, rows, 1.0f, dy, out, x, in, 0.0f, dw, in);
    nn_sgemm('N', 'N', rows, in, out, 1.0f, dy, out, w, in, add_dx ? 1.0f : 0.0f, dx, in);
}

static void relu(size_t n, float *v)
{
    for (size_t i = 0; i < n; i++)
        v[i] = nn_seq_relu(v[i]);
}

void seqmodel_forward(seqmodel_t *m, const float *embeddings, int batch, int steps,
                      const int *lengths)
{
    const int H = m->hidden, W = 2 * H, E = m->emb;
    const long rows = (long)batch * steps;
    nn_paramset_t *ps = &m->ps;

    reserve(m, batch, steps);
    reserve_bf16(m, batch, steps);
    m->batch = batch;
    m->steps = steps;
    m->n_valid = 0;
    for (int b = 0; b < batch; b++) {
        if (lengths[b] < 1 || lengths[b] > steps)
            die(EXIT_INTERNAL, "seqmodel: series %d has length %d outside [1, %d]", b,
                lengths[b], steps);
        m->lengths[b] = lengths[b];
        m->n_valid += lengths[b];
    }
    if (m->plan) {
        nn_seq_tensors_t w = seq_tensors(m, 0);
        m->be->seq_forward(m->be, m->plan, m->precision, &w, embeddings, batch, steps,
                           m->lengths, m->logits);
        return;
    }
    build_input(m, embeddings);

    nn_lstm_weights_t w1 = lstm_view(m, m->lstm1_first, 0);
    nn_lstm_weights_t w2 = lstm_view(m, m->lstm2_first, 0);
    nn_lstm_forward(&m->lstm1, &w1, m->x, batch, steps, m->lengths, m->h1);
    nn_lstm_forward(&m->lstm2, &w2, m->h1, batch, steps, m->lengths, m->h2);

    linear_forward(m, SEQ_LINEAR1, rows, W, W, m->h1, nn_params_value(ps, m->lin1_w),
                   nn_params_value(ps, m->lin1_b), m->a1);
    relu((size_t)rows * W, m->a1);
    linear_forward(m, SEQ_LINEAR2, rows, W, W, m->h2, nn_params_value(ps, m->lin2_w),
                   nn_params_value(ps, m->lin2_b), m->a2);
    relu((size_t)rows * W, m->a2);

    /* The same order of additions as the PyTorch module, left to right. */
    for (long r = 0; r < rows; r++) {
        const float *e = embeddings + r * E;
        size_t at = (size_t)r * W;
        for (int j = 0; j < W; j++)
            m->summed[at + j] = nn_seq_hidden_sum(m->h1[at + j], m->h2[at + j], m->a1[at + j],
                                                  m->a2[at + j], e[j % H]);
    }
    linear_forward(m, SEQ_HEAD, rows, W, SEQ_OUTPUTS, m->summed, nn_params_value(ps, m->lin_w),
                   nn_params_value(ps, m->lin_b), m->logits);
}

/*
 * The method's loss over n rows leaving out negative (unknown) labels: each of its two means
 * is taken over the known entries only; a mean without entries contributes nothing.
 */
static double masked_bce_loss(const float *logits, const float *labels, int n, float *dlogits)
{
    const int k = SEQ_OUTPUTS, any = SEQ_OUTPUTS - 1;
    double all_sum = 0.0, any_sum = 0.0;
    long all_count = 0, any_count = 0;

    for (int i = 0; i < n * k; i++) {
        if (labels[i] < 0.0f)
            continue;
        double z = logits[i], y = labels[i];
        double term = fmax(z, 0.0) - z * y + log1p(exp(-fabs(z)));
        all_sum += term;
        all_count++;
        if (i % k == any) {
            any_sum += term;
            any_count++;
        }
    }
    double w_all = all_count ? 6.0 / 7.0 / (double)all_count : 0.0;
    double w_any = any_count ? 1.0 / 7.0 / (double)any_count : 0.0;

    if (dlogits)
        for (int i = 0; i < n * k; i++) {
            if (labels[i] < 0.0f) {
                dlogits[i] = 0.0f;
                continue;
            }
            double diff = 1.0 / (1.0 + exp(-(double)logits[i])) - labels[i];
            dlogits[i] = (float)((w_all + (i % k == any ? w_any : 0.0)) * diff);
        }
    return w_all * all_sum + w_any * any_sum;
}

double seqmodel_loss(seqmodel_t *m, const float *labels, int with_grad)
{
    const size_t k = SEQ_OUTPUTS;
    int n = 0, unknown = 0;

    /* Gather the valid rows, take the method's loss over them, scatter the gradient back. */
    for (int b = 0; b < m->batch; b++)
        for (int t = m->steps - m->lengths[b]; t < m->steps; t++, n++) {
            size_t row = (size_t)b * m->steps + t;
            memcpy(m->valid_logits + n * k, m->logits + row * k, k * sizeof(float));
            memcpy(m->valid_labels + n * k, labels + row * k, k * sizeof(float));
            for (size_t j = 0; j < k; j++)
                unknown |= labels[row * k + j] < 0.0f;
        }
    float *dvalid = with_grad ? m->valid_dlogits : NULL;
    double loss = unknown ? masked_bce_loss(m->valid_logits, m->valid_labels, n, dvalid)
                          : nn_host_bce_loss(m->valid_logits, m->valid_labels, n, dvalid);
    if (!with_grad)
        return loss;

    memset(m->dlogits, 0, (size_t)m->batch * m->steps * k * sizeof(float));
    n = 0;
    for (int b = 0; b < m->batch; b++)
        for (int t = m->steps - m->lengths[b]; t < m->steps; t++, n++) {
            size_t row = (size_t)b * m->steps + t;
            memcpy(m->dlogits + row * k, m->valid_dlogits + n * k, k * sizeof(float));
        }
    return loss;
}

/* dpre = dhidden where the relu passed, else 0. */
static void relu_mask(size_t n, const float *relu_out, const float *dy, float *dpre)
{
    for (size_t i = 0; i < n; i++)
        dpre[i] = nn_seq_relu_grad(relu_out[i], dy[i]);
}

void seqmodel_backward(seqmodel_t *m)
{
    const int W = 2 * m->hidden;
    const long rows = (long)m->batch * m->steps;
    const size_t n = (size_t)rows * W;
    nn_paramset_t *ps = &m->ps;

    if (m->inference)
        die(EXIT_INTERNAL, "sequence model: a backward after forwards for inference only");
    if (m->plan) {
        nn_seq_tensors_t w = seq_tensors(m, 0), g = seq_tensors(m, 1);
        m->be->seq_backward(m->be, m->plan, &w, m->dlogits, &g);
        return;
    }
    linear_backward(m, SEQ_HEAD, rows, W, SEQ_OUTPUTS, m->summed, nn_params_value(ps, m->lin_w),
                    m->dlogits, nn_params_grad(ps, m->lin_w), nn_params_grad(ps, m->lin_b),
                    m->dhidden, 0);

    /* Each LSTM output feeds the sum directly and through its relu branch. */
    memcpy(m->dh1, m->dhidden, n * sizeof(float));
    relu_mask(n, m->a1, m->dhidden, m->dpre);
    linear_backward(m, SEQ_LINEAR1, rows, W, W, m->h1, nn_params_value(ps, m->lin1_w), m->dpre,
                    nn_params_grad(ps, m->lin1_w), nn_params_grad(ps, m->lin1_b), m->dh1, 1);
    memcpy(m->dh2, m->dhidden, n * sizeof(float));
    relu_mask(n, m->a2, m->dhidden, m->dpre);
    linear_backward(m, SEQ_LINEAR2, rows, W, W, m->h2, nn_params_value(ps, m->lin2_w), m->dpre,
                    nn_params_grad(ps, m->lin2_w), nn_params_grad(ps, m->lin2_b), m->dh2, 1);

    /* lstm2's input gradient joins h1's; the embeddings need none. */
    nn_lstm_weights_t w1 = lstm_view(m, m->lstm1_first, 0);
    nn_lstm_weights_t w2 = lstm_view(m, m->lstm2_first, 0);
    nn_lstm_weights_t g1 = lstm_view(m, m->lstm1_first, 1);
    nn_lstm_weights_t g2 = lstm_view(m, m->lstm2_first, 1);
    nn_lstm_backward(&m->lstm2, &w2, m->h1, m->h2, m->dh2, m->dpre, &g2);
    for (size_t i = 0; i < n; i++)
        m->dh1[i] += m->dpre[i];
    nn_lstm_backward(&m->lstm1, &w1, m->x, m->h1, m->dh1, NULL, &g1);
    /* The linear layers' bf16 weights served this batch; a step follows (as the LSTMs'). */
    seqmodel_weights_changed(m);
}
