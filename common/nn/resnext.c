/* ResNeXt forward and backward over the backend interface (see resnext.h). */
#include "nn/resnext.h"

#include "check.h"
#include "exitcodes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rx_block {
    rx_convbn_t c1, c2, c3, down;
    int has_down;
    nn_relu_t relu_out;
    nn_tensor_t in;  /* the previous stage's output (not owned) */
    nn_tensor_t out; /* relu(bn3 + shortcut) */
    /* What c1 and the shortcut convolution read: `in`, or with half_training its 16-bit
     * copy. */
    nn_tensor_t in_conv;
};

static void release_activations(resnext_t *m);

static const resnext_config_t CONFIGS[] = {
    {"resnext50_32x4d", {3, 4, 6, 3}, 32, 4, 64},
    {"resnext101_32x8d", {3, 4, 23, 3}, 32, 8, 64},
    {"tiny", {2, 2, 2, 2}, 4, 8, 16},
};

const resnext_config_t *resnext_config(const char *name)
{
    for (size_t i = 0; i < sizeof(CONFIGS) / sizeof(CONFIGS[0]); i++)
        if (strcmp(CONFIGS[i].name, name) == 0)
            return &CONFIGS[i];
    return NULL;
}

/* ---- building ------------------------------------------------------------------------------ */

static void declare_convbn(nn_paramset_t *ps, rx_convbn_t *cb, const char *conv_name,
                           const char *bn_prefix, int in, int out, int kernel, int stride,
                           int groups)
{
    char name[NN_NAME_MAX];
    cb->conv = (nn_conv_t){in, out, kernel, stride, kernel / 2, groups, NULL, 0, 0};
    cb->bn = (nn_bnorm_t){out, 1e-5f, 0.1f, NULL};

    int64_t wdims[4] = {out, in / groups, kernel, kernel}, vdims[1] = {out};
    cb->w = nn_params_declare(ps, conv_name, NN_ENTRY_PARAM, 4, wdims);
    snprintf(name, sizeof(name), "%s.weight", bn_prefix);
    cb->gamma = nn_params_declare(ps, name, NN_ENTRY_PARAM, 1, vdims);
    snprintf(name, sizeof(name), "%s.bias", bn_prefix);
    cb->beta = nn_params_declare(ps, name, NN_ENTRY_PARAM, 1, vdims);
    snprintf(name, sizeof(name), "%s.running_mean", bn_prefix);
    cb->running_mean = nn_params_declare(ps, name, NN_ENTRY_BUFFER, 1, vdims);
    snprintf(name, sizeof(name), "%s.running_var", bn_prefix);
    cb->running_var = nn_params_declare(ps, name, NN_ENTRY_BUFFER, 1, vdims);
    snprintf(name, sizeof(name), "%s.num_batches_tracked", bn_prefix);
    cb->batches = nn_params_declare(ps, name, NN_ENTRY_COUNTER, 0, NULL);
}

static void alloc_bn_stats(nn_backend_t *be, rx_convbn_t *cb)
{
    cb->save_mean = be->alloc(be, cb->bn.ch * sizeof(float));
    cb->save_var = be->alloc(be, cb->bn.ch * sizeof(float));
}

resnext_t *resnext_create(nn_backend_t *be, const char *name, int num_outputs)
{
    const resnext_config_t *cfg = resnext_config(name);
    if (!cfg)
        die(EXIT_USAGE, "unknown model %s (known: resnext50_32x4d, resnext101_32x8d, tiny)",
            name);
    resnext_t *m = xcalloc(1, sizeof(*m));
    m->config = *cfg;
    m->num_outputs = num_outputs;
    m->be = be;
    nn_params_init(&m->ps, be);
    nn_paramset_t *ps = &m->ps;

    declare_convbn(ps, &m->stem, "conv1.weight", "bn1", 3, cfg->base, 7, 2, 1);
    m->maxpool = (nn_pool_t){3, 2, 1, NULL};

    for (int s = 0; s < 4; s++)
        m->n_blocks += cfg->layers[s];
    m->blocks = xcalloc(m->n_blocks, sizeof(*m->blocks));

    /* torchvision's _make_layer: the first block of a stage strides (except stage 1) and
     * gets a downsample whenever the stride or the width changes. */
    int in_ch = cfg->base, b = 0;
    for (int s = 0; s < 4; s++) {
        int planes = cfg->base << s;
        int width = planes * cfg->width_per_group / 64 * cfg->groups;
        int out_ch = planes * 4;
        for (int i = 0; i < cfg->layers[s]; i++, b++) {
            rx_block_t *blk = &m->blocks[b];
            int stride = (i == 0 && s > 0) ? 2 : 1;
            char conv[NN_NAME_MAX], bn[NN_NAME_MAX];
#define RX_NAMES(c, n)                                                                         \
    snprintf(conv, sizeof(conv), "layer%d.%d." c ".weight", s + 1, i);                         \
    snprintf(bn, sizeof(bn), "layer%d.%d." n, s + 1, i)
            RX_NAMES("conv1", "bn1");
            declare_convbn(ps, &blk->c1, conv, bn, in_ch, width, 1, 1, 1);
            RX_NAMES("conv2", "bn2");
            declare_convbn(ps, &blk->c2, conv, bn, width, width, 3, stride, cfg->groups);
            RX_NAMES("conv3", "bn3");
            declare_convbn(ps, &blk->c3, conv, bn, width, out_ch, 1, 1, 1);
            if (stride != 1 || in_ch != out_ch) {
                blk->has_down = 1;
                RX_NAMES("downsample.0", "downsample.1");
                declare_convbn(ps, &blk->down, conv, bn, in_ch, out_ch, 1, stride, 1);
            }
#undef RX_NAMES
            in_ch = out_ch;
        }
    }

    m->embed_dim = in_ch;
    m->fc = (nn_linear_t){in_ch, num_outputs, NULL};
    int64_t fc_wdims[2] = {num_outputs, in_ch}, fc_bdims[1] = {num_outputs};
    m->fc_w = nn_params_declare(ps, "fc.weight", NN_ENTRY_PARAM, 2, fc_wdims);
    m->fc_b = nn_params_declare(ps, "fc.bias", NN_ENTRY_PARAM, 1, fc_bdims);
    nn_params_alloc(ps);

    alloc_bn_stats(be, &m->stem);
    for (int i = 0; i < m->n_blocks; i++) {
        rx_block_t *blk = &m->blocks[i];
        alloc_bn_stats(be, &blk->c1);
        alloc_bn_stats(be, &blk->c2);
        alloc_bn_stats(be, &blk->c3);
        if (blk->has_down)
            alloc_bn_stats(be, &blk->down);
    }
    return m;
}

static void free_convbn(nn_backend_t *be, rx_convbn_t *cb)
{
    be->release_plan(be, &cb->conv.plan);
    be->release_plan(be, &cb->bn.plan);
    be->release_plan(be, &cb->relu.plan);
    be->release(be, cb->save_mean);
    be->release(be, cb->save_var);
}

void resnext_free(resnext_t *m)
{
    if (!m)
        return;
    nn_backend_t *be = m->be;
    free_convbn(be, &m->stem);
    be->release_plan(be, &m->maxpool.plan);
    for (int i = 0; i < m->n_blocks; i++) {
        rx_block_t *blk = &m->blocks[i];
        free_convbn(be, &blk->c1);
        free_convbn(be, &blk->c2);
        free_convbn(be, &blk->c3);
        if (blk->has_down)
            free_convbn(be, &blk->down);
        be->release_plan(be, &blk->relu_out.plan);
    }
    be->release_plan(be, &m->fc.plan);
    release_activations(m);
    free(m->blocks);
    nn_params_free(&m->ps);
    free(m);
}

/* ---- activation storage ---------------------------------------------------------------- */

/*
 * Training keeps every activation its backward reads, in one arena. Inference needs only the
 * block being computed: four buffers of the largest activation, reused block after block.
 * Both are made on first use for a batch shape. Activations are in the backend's native
 * layout; the input, the embedding and the logits are plain.
 */
typedef struct {
    char *base; /* NULL while counting */
    size_t used, largest;
} act_layout_t;

static void act_place(act_layout_t *lay, nn_tensor_t *t, int n, int c, int h, int w, int layout)
{
    *t = (nn_tensor_t){NULL, n, c, h, w, layout};
    size_t value_bytes = layout == NN_LAYOUT_NATIVE_HALF ? sizeof(uint16_t) : sizeof(float);
    size_t bytes = (nn_numel(t) * value_bytes + 63) / 64 * 64;
    if (lay->base)
        t->data = (float *)(lay->base + lay->used);
    lay->used += bytes;
    if (nn_numel(t) > lay->largest)
        lay->largest = nn_numel(t);
}

static int conv_out(const nn_conv_t *c, int in)
{
    return (in + 2 * c->pad - c->kernel) / c->stride + 1;
}

/* half_out: bn_out in 16 bits, for a unit whose output only a bf16 convolution reads. */
static void place_convbn(act_layout_t *lay, rx_convbn_t *cb, int n, int *h, int *w,
                         int half_out)
{
    *h = conv_out(&cb->conv, *h);
    *w = conv_out(&cb->conv, *w);
    act_place(lay, &cb->conv_out, n, cb->conv.out_ch, *h, *w, NN_LAYOUT_NATIVE);
    act_place(lay, &cb->bn_out, n, cb->conv.out_ch, *h, *w,
              half_out ? NN_LAYOUT_NATIVE_HALF : NN_LAYOUT_NATIVE);
}

/* Lay out the activations for batch shape n x h x w; with lay->base NULL only measures. */
static void layout_activations(resnext_t *m, act_layout_t *lay, int n, int h, int w)
{
    place_convbn(lay, &m->stem, n, &h, &w, 0);
    h = (h + 2 - 3) / 2 + 1;
    w = (w + 2 - 3) / 2 + 1;
    act_place(lay, &m->pooled, n, m->config.base, h, w, NN_LAYOUT_NATIVE);

    nn_tensor_t prev = m->pooled;
    for (int i = 0; i < m->n_blocks; i++) {
        rx_block_t *blk = &m->blocks[i];
        int bh = h, bw = w;
        blk->in = blk->in_conv = prev;
        if (m->act_half)
            act_place(lay, &blk->in_conv, n, prev.c, h, w, NN_LAYOUT_NATIVE_HALF);
        place_convbn(lay, &blk->c1, n, &bh, &bw, m->act_half);
        place_convbn(lay, &blk->c2, n, &bh, &bw, m->act_half);
        place_convbn(lay, &blk->c3, n, &bh, &bw, 0);
        if (blk->has_down) {
            int dh = h, dw = w;
            place_convbn(lay, &blk->down, n, &dh, &dw, 0);
        }
        act_place(lay, &blk->out, n, blk->c3.conv.out_ch, bh, bw, NN_LAYOUT_NATIVE);
        h = bh;
        w = bw;
        prev = blk->out;
    }
}

static void release_activations(resnext_t *m)
{
    nn_backend_t *be = m->be;
    void **owned[] = {&m->act_arena, &m->out_arena, &m->eval_arena};
    for (size_t i = 0; i < sizeof(owned) / sizeof(owned[0]); i++) {
        if (*owned[i])
            be->release(be, *owned[i]);
        *owned[i] = NULL;
    }
    for (int i = 0; i < 6; i++) {
        if (m->grad_scratch[i])
            be->release(be, m->grad_scratch[i]);
        m->grad_scratch[i] = NULL;
    }
}

/*
 * Whether training keeps the outputs of each block's c1 and c2 units in 16 bits: they feed
 * only c2's and c3's convolutions (forward and weight gradient), which in bf16 would round
 * them anyway, so each is rounded once, after its batch norm, instead of at every use. The
 * results are the same bits; the memory of those activations halves. Each block's input,
 * which the residual path reads in fp32, gets a 16-bit copy for c1 and the shortcut.
 */
static int half_training(const resnext_t *m)
{
    return m->be->half_activations && m->be->to_half && m->all_convs_bf16 &&
           !m->keep_fp32_activations;
}

/* Shapes for a batch shape, and the outputs (embedding, logits, dlogits). */
static void ensure_shapes(resnext_t *m, int n, int h, int w)
{
    if (m->out_arena && m->act_n == n && m->act_h == h && m->act_w == w &&
        m->act_half == half_training(m))
        return;
    nn_backend_t *be = m->be;
    release_activations(m);
    m->act_half = half_training(m);
    act_layout_t lay = {0};
    layout_activations(m, &lay, n, h, w);
    m->act_bytes = lay.used;
    m->act_largest = lay.largest;

    act_layout_t outs = {0};
    for (int pass = 0; pass < 2; pass++) {
        act_place(&outs, &m->embedding, n, m->embed_dim, 1, 1, NN_LAYOUT_NCHW);
        act_place(&outs, &m->logits, n, m->num_outputs, 1, 1, NN_LAYOUT_NCHW);
        act_place(&outs, &m->dlogits, n, m->num_outputs, 1, 1, NN_LAYOUT_NCHW);
        if (pass == 0)
            outs = (act_layout_t){m->out_arena = be->alloc(be, outs.used), 0, 0};
    }
    m->act_n = n;
    m->act_h = h;
    m->act_w = w;
}

static void ensure_training_arena(resnext_t *m)
{
    if (m->act_arena)
        return;
    nn_backend_t *be = m->be;
    m->act_arena = be->alloc(be, m->act_bytes);
    act_layout_t lay = {m->act_arena, 0, 0};
    layout_activations(m, &lay, m->act_n, m->act_h, m->act_w);
    for (int i = 0; i < 6; i++)
        m->grad_scratch[i] = be->alloc(be, m->act_largest * sizeof(float));
}

#define EVAL_BUFFERS 4

/* Bytes of one eval buffer: the largest activation in fp32, in whole cache lines. */
static size_t eval_buffer_bytes(const resnext_t *m)
{
    return (m->act_largest * sizeof(float) + 63) / 64 * 64;
}

static void ensure_eval_arena(resnext_t *m)
{
    if (m->eval_arena)
        return;
    m->eval_arena = m->be->alloc(m->be, EVAL_BUFFERS * eval_buffer_bytes(m));
}

static nn_tensor_t shaped(float *data, const nn_tensor_t *like)
{
    nn_tensor_t t = *like;
    t.data = data;
    return t;
}

/* A gradient (or other fp32 tensor) at data shaped like `like`, which may be in 16 bits. */
static nn_tensor_t grad_tensor(float *data, const nn_tensor_t *like)
{
    nn_tensor_t t = shaped(data, like);
    if (t.layout == NN_LAYOUT_NATIVE_HALF)
        t.layout = NN_LAYOUT_NATIVE;
    return t;
}

/* Eval buffer k holding a tensor shaped like `like`, in 16 bits when half is set (the
 * buffers keep their fp32 size: the unused half of the pages is never touched, so never
 * resident). */
static nn_tensor_t eval_tensor(resnext_t *m, int k, const nn_tensor_t *like, int half)
{
    nn_tensor_t t = shaped((float *)((char *)m->eval_arena + k * eval_buffer_bytes(m)), like);
    if (half)
        t.layout = NN_LAYOUT_NATIVE_HALF;
    return t;
}

/* ---- forward ------------------------------------------------------------------------------- */

/* The conv + batch norm units of the model in order (stem first); returns the count. */
static int all_convbns(resnext_t *m, rx_convbn_t **all)
{
    int count = 0;
    all[count++] = &m->stem;
    for (int i = 0; i < m->n_blocks; i++) {
        rx_block_t *blk = &m->blocks[i];
        all[count++] = &blk->c1;
        all[count++] = &blk->c2;
        all[count++] = &blk->c3;
        if (blk->has_down)
            all[count++] = &blk->down;
    }
    return count;
}

/* Apply the precision and the weight cache choices to every convolution. */
static void configure_convs(resnext_t *m)
{
    rx_convbn_t **all = xmalloc((4 * (size_t)m->n_blocks + 1) * sizeof(*all));
    int count = all_convbns(m, all);
    m->all_convs_bf16 = 1;
    for (int k = 0; k < count; k++) {
        nn_conv_t *conv = &all[k]->conv;
        conv->precision = nn_conv_precision(m->precision, conv);
        m->all_convs_bf16 &= conv->precision == NN_PRECISION_BF16;
        conv->cache_weights = m->weight_cache == RESNEXT_WEIGHT_CACHE_ON ||
                              (m->weight_cache == RESNEXT_WEIGHT_CACHE_AUTO &&
                               conv->precision == NN_PRECISION_BF16);
    }
    free(all);
}

void resnext_set_native_weights(resnext_t *m, int on)
{
    nn_backend_t *be = m->be;
    if (!be->conv_set_native_weights)
        return; /* the backend computes on plain weights */
    rx_convbn_t **all = xmalloc((4 * (size_t)m->n_blocks + 1) * sizeof(*all));
    int count = all_convbns(m, all);
    for (int k = 0; k < count; k++) {
        nn_conv_t *conv = &all[k]->conv;
        if (be->conv_set_native_weights(be, conv, on))
            nn_params_set_native(&m->ps, all[k]->w, on ? conv : NULL);
    }
    free(all);
}

void resnext_set_precision(resnext_t *m, int precision)
{
    m->precision = precision;
    configure_convs(m);
}

void resnext_set_half_activations(resnext_t *m, int on)
{
    m->keep_fp32_activations = !on;
}

void resnext_set_weight_cache(resnext_t *m, int mode)
{
    m->weight_cache = mode;
    configure_convs(m);
}

/* copy: src itself, or its 16-bit copy, rounded now. */
static void round_into(nn_backend_t *be, const nn_tensor_t *src, nn_tensor_t *copy)
{
    if (copy->data != src->data)
        be->to_half(be, src, copy);
}

static void convbn_forward_train(resnext_t *m, rx_convbn_t *cb, const nn_tensor_t *x, int relu)
{
    nn_backend_t *be = m->be;
    nn_paramset_t *ps = &m->ps;
    const float *gamma = nn_params_value(ps, cb->gamma), *beta = nn_params_value(ps, cb->beta);
    float *mean = nn_params_value(ps, cb->running_mean);
    float *var = nn_params_value(ps, cb->running_var);

    be->conv_forward(be, &cb->conv, x, nn_params_value(ps, cb->w), &cb->conv_out);

    /* A 16-bit output is normalised in fp32 into scratch (the backward's, free now), then
     * rounded into place. */
    nn_tensor_t out = cb->bn_out;
    if (out.layout == NN_LAYOUT_NATIVE_HALF)
        out = grad_tensor(m->grad_scratch[0], &cb->bn_out);
    if (relu)
        be->bnorm_relu_forward_train(be, &cb->bn, &cb->conv_out, gamma, beta, mean, var,
                                     cb->save_mean, cb->save_var, &out);
    else
        be->bnorm_forward_train(be, &cb->bn, &cb->conv_out, gamma, beta, mean, var,
                                cb->save_mean, cb->save_var, &out);
    round_into(be, &out, &cb->bn_out);
    (*nn_params_counter(ps, cb->batches))++;
}

/* Inference: conv, batch norm, residual and relu in one backend call, into y. */
static void convbn_forward_infer(resnext_t *m, rx_convbn_t *cb, const nn_tensor_t *x,
                                 const nn_tensor_t *residual, int relu, nn_tensor_t *y)
{
    nn_backend_t *be = m->be;
    nn_paramset_t *ps = &m->ps;
    be->conv_bn_forward_infer(be, &cb->conv, &cb->bn, x, nn_params_value(ps, cb->w),
                              nn_params_value(ps, cb->gamma), nn_params_value(ps, cb->beta),
                              nn_params_value(ps, cb->running_mean),
                              nn_params_value(ps, cb->running_var), residual, relu, y);
}

static void forward_train(resnext_t *m, const nn_tensor_t *x)
{
    nn_backend_t *be = m->be;
    ensure_training_arena(m);
    convbn_forward_train(m, &m->stem, x, 1);
    be->maxpool_forward(be, &m->maxpool, &m->stem.bn_out, &m->pooled, 1);

    for (int i = 0; i < m->n_blocks; i++) {
        rx_block_t *blk = &m->blocks[i];
        round_into(be, &blk->in, &blk->in_conv);
        convbn_forward_train(m, &blk->c1, &blk->in_conv, 1);
        convbn_forward_train(m, &blk->c2, &blk->c1.bn_out, 1);
        convbn_forward_train(m, &blk->c3, &blk->c2.bn_out, 0);
        const nn_tensor_t *shortcut = &blk->in;
        if (blk->has_down) {
            convbn_forward_train(m, &blk->down, &blk->in_conv, 0);
            shortcut = &blk->down.bn_out;
        }
        be->add_relu(be, &blk->c3.bn_out, shortcut, &blk->out);
    }
    be->avgpool_forward(be, &m->blocks[m->n_blocks - 1].out, &m->embedding);
}

/* Inference through four rotating buffers: a block's input, two inner results and the
 * downsampled shortcut; the block's output overwrites its first inner result. */
static void forward_infer(resnext_t *m, const nn_tensor_t *x)
{
    nn_backend_t *be = m->be;
    ensure_eval_arena(m);
    /* In 16 bits only when every convolution computes in bf16 and so rounds its input
     * anyway: then the only extra rounding is the residual's. */
    int half = be->half_activations && m->all_convs_bf16 && !m->keep_fp32_activations;
    nn_tensor_t stem = eval_tensor(m, 0, &m->stem.bn_out, half);
    convbn_forward_infer(m, &m->stem, x, NULL, 1, &stem);
    nn_tensor_t cur = eval_tensor(m, 1, &m->pooled, half);
    be->maxpool_forward(be, &m->maxpool, &stem, &cur, 0);
    int cur_k = 1;

    for (int i = 0; i < m->n_blocks; i++) {
        rx_block_t *blk = &m->blocks[i];
        int free_k[EVAL_BUFFERS - 1], nf = 0;
        for (int k = 0; k < EVAL_BUFFERS; k++)
            if (k != cur_k)
                free_k[nf++] = k;
        nn_tensor_t t1 = eval_tensor(m, free_k[0], &blk->c1.bn_out, half);
        nn_tensor_t t2 = eval_tensor(m, free_k[1], &blk->c2.bn_out, half);
        convbn_forward_infer(m, &blk->c1, &cur, NULL, 1, &t1);
        convbn_forward_infer(m, &blk->c2, &t1, NULL, 1, &t2);
        nn_tensor_t shortcut = cur;
        if (blk->has_down) {
            shortcut = eval_tensor(m, free_k[2], &blk->down.bn_out, half);
            convbn_forward_infer(m, &blk->down, &cur, NULL, 0, &shortcut);
        }
        nn_tensor_t out = eval_tensor(m, free_k[0], &blk->out, half);
        convbn_forward_infer(m, &blk->c3, &t2, &shortcut, 1, &out);
        cur = out;
        cur_k = free_k[0];
    }
    be->avgpool_forward(be, &cur, &m->embedding);
}

void resnext_forward(resnext_t *m, const nn_tensor_t *x, int training)
{
    nn_backend_t *be = m->be;
    if (x->c != 3)
        die(EXIT_INTERNAL, "model input has %d channels, expected 3", x->c);
    ensure_shapes(m, x->n, x->h, x->w);
    m->input = *x;
    m->last_training = training;
    if (training)
        forward_train(m, x);
    else
        forward_infer(m, x);
    be->linear_forward(be, &m->fc, &m->embedding, nn_params_value(&m->ps, m->fc_w),
                       nn_params_value(&m->ps, m->fc_b), &m->logits);
}

/* ---- backward ------------------------------------------------------------------------------ */

/*
 * Backward of conv + bn (+ relu) whose output gradient is in dy (overwritten). tmp holds the
 * gradient at the conv output; dx (may be NULL) receives the gradient at the input x.
 */
static void convbn_backward(resnext_t *m, rx_convbn_t *cb, const nn_tensor_t *x, float *dy,
                            float *tmp, float *dx, int relu)
{
    nn_backend_t *be = m->be;
    nn_paramset_t *ps = &m->ps;
    nn_tensor_t d_out = grad_tensor(dy, &cb->bn_out), d_conv = shaped(tmp, &cb->conv_out);

    if (relu)
        be->bnorm_relu_backward(be, &cb->bn, &cb->conv_out, &d_out,
                                nn_params_value(ps, cb->gamma), cb->save_mean, cb->save_var,
                                &d_conv, nn_params_grad(ps, cb->gamma),
                                nn_params_grad(ps, cb->beta));
    else
        be->bnorm_backward(be, &cb->bn, &cb->conv_out, &d_out, nn_params_value(ps, cb->gamma),
                           cb->save_mean, cb->save_var, &d_conv, nn_params_grad(ps, cb->gamma),
                           nn_params_grad(ps, cb->beta));
    be->conv_backward_weights(be, &cb->conv, x, &d_conv, nn_params_grad(ps, cb->w));
    if (dx) {
        nn_tensor_t d_in = grad_tensor(dx, x);
        be->conv_backward_data(be, &cb->conv, &d_conv, nn_params_value(ps, cb->w), &d_in);
    }
}

void resnext_backward(resnext_t *m, const float *dlogits)
{
    nn_backend_t *be = m->be;
    nn_paramset_t *ps = &m->ps;
    if (!m->last_training)
        die(EXIT_INTERNAL, "resnext_backward needs a training forward first");
    float **g = m->grad_scratch;
    float *gout = g[0], *gx = g[1], *tmp = g[2], *mid = g[3], *gdown = g[4], *gemb = g[5];

    /* Head: linear, then the average pool spreads the gradient over the last output. */
    nn_tensor_t d_logits = shaped((float *)dlogits, &m->logits);
    nn_tensor_t d_emb = shaped(gemb, &m->embedding);
    be->linear_backward(be, &m->fc, &m->embedding, &d_logits, nn_params_value(ps, m->fc_w),
                        &d_emb, nn_params_grad(ps, m->fc_w), nn_params_grad(ps, m->fc_b));
    nn_tensor_t d_last = shaped(gout, &m->blocks[m->n_blocks - 1].out);
    be->avgpool_backward(be, &d_emb, &d_last);

    for (int i = m->n_blocks - 1; i >= 0; i--) {
        rx_block_t *blk = &m->blocks[i];
        nn_tensor_t d_sum = shaped(gout, &blk->out);
        be->relu_backward(be, &blk->relu_out, &blk->out, &d_sum, &d_sum);

        /* Main branch: gout stays intact for the shortcut. */
        convbn_backward(m, &blk->c3, &blk->c2.bn_out, gout, tmp, mid, 0);
        convbn_backward(m, &blk->c2, &blk->c1.bn_out, mid, tmp, mid, 1);
        convbn_backward(m, &blk->c1, &blk->in_conv, mid, tmp, gx, 1);

        nn_tensor_t d_in = shaped(gx, &blk->in);
        if (blk->has_down) {
            convbn_backward(m, &blk->down, &blk->in_conv, gout, tmp, gdown, 0);
            nn_tensor_t d_short = shaped(gdown, &blk->in);
            be->add(be, &d_in, &d_short, &d_in);
        } else {
            be->add(be, &d_in, &d_sum, &d_in);
        }

        float *swap = gout;
        gout = gx;
        gx = swap;
    }

    nn_tensor_t d_pooled = shaped(gout, &m->pooled);
    nn_tensor_t d_stem = shaped(gx, &m->stem.bn_out);
    be->maxpool_backward(be, &m->maxpool, &m->stem.bn_out, &m->pooled, &d_pooled, &d_stem);
    convbn_backward(m, &m->stem, &m->input, gx, tmp, NULL, 1);
}
