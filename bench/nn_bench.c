/*
 * Speed and memory of the NN engine (common/nn/), the C side of bench/nn_bench.sh.
 *
 *   nn_bench model MODEL SIZE BATCH eval|train ITERS [fp32|bf16][+cache][+native][+f32act]
 *       one warm-up then ITERS timed iterations of a forward (eval) or a training step
 *       (forward, loss, backward, Adam); prints one "result" line with images/s and the
 *       process's peak resident memory. +cache: inference keeps reordered weights
 *       (resnext_set_weight_cache ON; the default caches bf16 weights only).
 *   nn_bench convs MODEL SIZE BATCH ITERS [fp32|bf16][+native]
 *       every distinct convolution shape of the model at that input size: the forward, the
 *       backward data and the backward weights through the engine's backend, and the
 *       inference forward (conv + batch norm + relu in one call, on 16-bit activations in
 *       bf16), against the same oneDNN primitive run standalone (layouts of its own choice,
 *       no reorders timed). The engine's training directions include their weight reorders
 *       (once per call, as in training); inference keeps its weights (as the model does).
 *       The weight gradient is timed with its conversion of dy (in mixed precision), the
 *       data gradient right after a weight gradient, whose copy of dy it reads, as in the
 *       model. In bf16 every direction but the data gradient reads a 16-bit input, as in the
 *       model, but for the stem ("input=half"). +native: weights (and weight gradients) in
 *       the backend's order where it has one, as cnntrain keeps them ("weights=native").
 *       One "conv" line per shape and direction, best of ITERS.
 *
 * FLOPs count 2 per multiply-add. Threads: OMP_NUM_THREADS (set by nn_bench.sh).
 */
#include <dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "check.h"
#include "log.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/resnext.h"

static double peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

/* An engine variant: "fp32" or "bf16", optionally with "+cache" (inference keeps reordered
 * weights), "+native" (weights kept in the backend's order, resnext_set_native_weights) and
 * "+f32act" (bf16 keeps fp32 activations in inference and training,
 * resnext_set_half_activations 0). */
typedef struct {
    int precision, cache, native, fp32_activations;
} variant_t;

static variant_t parse_variant(const char *s)
{
    variant_t v = {NN_PRECISION_FP32, RESNEXT_WEIGHT_CACHE_AUTO, 0, 0};
    if (!s)
        return v;
    size_t len = strcspn(s, "+");
    for (const char *opt = s + len; *opt;) {
        size_t n = strcspn(opt + 1, "+");
        if (n == 5 && strncmp(opt + 1, "cache", 5) == 0)
            v.cache = RESNEXT_WEIGHT_CACHE_ON;
        else if (n == 6 && strncmp(opt + 1, "native", 6) == 0)
            v.native = 1;
        else if (n == 6 && strncmp(opt + 1, "f32act", 6) == 0)
            v.fp32_activations = 1;
        else
            die(2, "unknown option %s (fp32, bf16, with +cache, +native, +f32act)", opt);
        opt += 1 + n;
    }
    if (len == 4 && strncmp(s, "fp32", 4) == 0)
        return v;
    if (len == 4 && strncmp(s, "bf16", 4) == 0) {
        v.precision = NN_PRECISION_BF16;
        return v;
    }
    die(2, "unknown precision %s (fp32 or bf16)", s);
}

/* ---- whole model ------------------------------------------------------------------------ */

static int bench_model(const char *model, int size, int batch, const char *mode, int iters,
                       const char *variant)
{
    variant_t v = parse_variant(variant);
    int training = strcmp(mode, "train") == 0;
    nn_backend_t *be = nn_backend_create("cpu");
    resnext_t *m = resnext_create(be, model, 6);
    resnext_set_precision(m, v.precision);
    resnext_set_weight_cache(m, v.cache);
    resnext_set_native_weights(m, v.native);
    resnext_set_half_activations(m, !v.fp32_activations);
    nn_params_fill_hashed(&m->ps);
    if (training)
        nn_params_alloc_adam(&m->ps);

    size_t in_count = (size_t)batch * 3 * size * size;
    float *input = be->alloc(be, in_count * sizeof(float));
    float *labels = be->alloc(be, (size_t)batch * 6 * sizeof(float));
    nn_fill_hashed(input, in_count, nn_name_seed("input"), 1.0f, 0.0f);
    for (int i = 0; i < batch * 6; i++)
        labels[i] = (float)(i % 3 == 0);
    nn_tensor_t x = {.data = input, .n = batch, .c = 3, .h = size, .w = size};
    nn_adam_t hp = {1e-4, 0.9, 0.999, 1e-8, 1e-4};

    /* Phases (forward, backward with the loss, Adam): of the best iteration, and each
     * phase's own best over the iterations (on a shared machine a phase is often
     * undisturbed in an iteration that is not). */
    double best = 1e30, total = 0.0, phases[3] = {0}, best_phases[3] = {0};
    double min_phases[3] = {1e30, 1e30, 1e30};
    for (int it = 0; it <= iters; it++) {
        double t0 = time_now();
        resnext_forward(m, &x, training);
        be->synchronize(be);
        double t1 = time_now(), t2 = t1;
        if (training) {
            be->bce_loss(be, m->logits.data, labels, batch, m->dlogits.data);
            resnext_backward(m, m->dlogits.data);
            be->synchronize(be);
            t2 = time_now();
            be->adam_step(be, &hp, it + 1, m->ps.params, m->ps.grads, m->ps.adam_m,
                          m->ps.adam_v, m->ps.param_count);
        }
        be->synchronize(be);
        double t3 = time_now(), dt = t3 - t0;
        phases[0] = t1 - t0;
        phases[1] = t2 - t1;
        phases[2] = t3 - t2;
        if (it == 0)
            continue; /* warm-up: primitives are built on the first call */
        total += dt;
        for (int k = 0; k < 3; k++)
            if (phases[k] < min_phases[k])
                min_phases[k] = phases[k];
        if (dt < best) {
            best = dt;
            memcpy(best_phases, phases, sizeof(phases));
        }
    }
    printf("result side=ours model=%s size=%d batch=%d mode=%s precision=%s iters=%d "
           "mean_s=%.4f best_s=%.4f images_per_s=%.4f peak_rss_mib=%.0f forward_s=%.4f "
           "backward_s=%.4f adam_s=%.4f min_forward_s=%.4f min_backward_s=%.4f "
           "min_adam_s=%.4f\n",
           model, size, batch, mode, variant ? variant : "fp32", iters,
           total / iters, best, batch / best, peak_rss_mib(), best_phases[0], best_phases[1],
           best_phases[2], min_phases[0], min_phases[1], min_phases[2]);
    be->release(be, input);
    be->release(be, labels);
    resnext_free(m);
    be->destroy(be);
    return 0;
}

/* ---- convolution shapes ------------------------------------------------------------------ */

typedef struct {
    int in_ch, out_ch, kernel, stride, groups, h, w;
} conv_shape_t;

static int add_shape(conv_shape_t *shapes, int n, const nn_conv_t *c, int h, int w)
{
    conv_shape_t s = {c->in_ch, c->out_ch, c->kernel, c->stride, c->groups, h, w};
    for (int i = 0; i < n; i++)
        if (memcmp(&shapes[i], &s, sizeof(s)) == 0)
            return n;
    shapes[n] = s;
    return n + 1;
}

static int conv_out(int in, int kernel, int stride)
{
    return (in + 2 * (kernel / 2) - kernel) / stride + 1;
}

/* The distinct convolution shapes of the model for an input of size x size. */
static int model_shapes(const char *model, int size, conv_shape_t *shapes)
{
    const resnext_config_t *cfg = resnext_config(model);
    if (!cfg)
        die(2, "unknown model %s", model);
    int n = 0, h = size, in_ch = cfg->base;
    nn_conv_t stem = {.in_ch = 3, .out_ch = cfg->base, .kernel = 7, .stride = 2, .groups = 1};
    n = add_shape(shapes, n, &stem, h, h);
    h = conv_out(h, 7, 2);
    h = (h + 2 - 3) / 2 + 1;
    for (int s = 0; s < 4; s++) {
        int planes = cfg->base << s;
        int width = planes * cfg->width_per_group / 64 * cfg->groups, out_ch = planes * 4;
        for (int i = 0; i < cfg->layers[s]; i++) {
            int stride = (i == 0 && s > 0) ? 2 : 1;
            nn_conv_t c1 = {.in_ch = in_ch, .out_ch = width, .kernel = 1, .stride = 1,
                            .groups = 1};
            nn_conv_t c2 = {.in_ch = width, .out_ch = width, .kernel = 3, .stride = stride,
                            .groups = cfg->groups};
            nn_conv_t c3 = {.in_ch = width, .out_ch = out_ch, .kernel = 1, .stride = 1,
                            .groups = 1};
            n = add_shape(shapes, n, &c1, h, h);
            n = add_shape(shapes, n, &c2, h, h);
            int oh = conv_out(h, 3, stride);
            n = add_shape(shapes, n, &c3, oh, oh);
            if (stride != 1 || in_ch != out_ch) {
                nn_conv_t down = {.in_ch = in_ch, .out_ch = out_ch, .kernel = 1,
                                  .stride = stride, .groups = 1};
                n = add_shape(shapes, n, &down, h, h);
            }
            h = oh;
            in_ch = out_ch;
        }
    }
    return n;
}

#define DCHECK(call)                                                                          \
    do {                                                                                      \
        if ((call) != dnnl_success)                                                           \
            die(1, "%s failed", #call);                                                       \
    } while (0)

typedef struct {
    dnnl_primitive_t prim;
    dnnl_exec_arg_t args[3];
    dnnl_memory_t mem[3];
} standalone_t;

static dnnl_memory_desc_t md_any(int nd, const dnnl_dims_t dims, dnnl_data_type_t dt)
{
    dnnl_memory_desc_t md;
    DCHECK(dnnl_memory_desc_init_by_tag(&md, nd, dims, dt, dnnl_format_tag_any));
    return md;
}

/* Directions of a convolution: training forward, backward data, backward weights, and the
 * inference forward (the engine's conv + batch norm + relu in one call, on the activations
 * bf16 inference keeps in 16 bits). */
enum { DIR_FWD, DIR_BWD_DATA, DIR_BWD_WEIGHTS, DIR_INFER, DIRS };

/*
 * The oneDNN primitive for one direction with every layout left to oneDNN, its memories
 * allocated and filled with ones.
 */
static void standalone_make(dnnl_engine_t eng, const conv_shape_t *s, int n, int dir,
                            dnnl_data_type_t dt, standalone_t *out)
{
    int k = s->kernel, pad = k / 2;
    int oh = conv_out(s->h, k, s->stride), ow = conv_out(s->w, k, s->stride);
    dnnl_dims_t src_d = {n, s->in_ch, s->h, s->w}, dst_d = {n, s->out_ch, oh, ow};
    dnnl_dims_t wei_g = {s->groups, s->out_ch / s->groups, s->in_ch / s->groups, k, k};
    dnnl_dims_t wei_p = {s->out_ch, s->in_ch, k, k};
    dnnl_dims_t strides = {s->stride, s->stride}, pad_l = {pad, pad};
    dnnl_dims_t pad_r = {(oh - 1) * s->stride + k - s->h - pad,
                         (ow - 1) * s->stride + k - s->w - pad};
    /* Training computes weight gradients in fp32 whatever the data type. */
    dnnl_data_type_t wdiff_dt = dir == DIR_BWD_WEIGHTS ? dnnl_f32 : dt;
    dnnl_memory_desc_t src = md_any(4, src_d, dt), dst = md_any(4, dst_d, dt);
    dnnl_memory_desc_t wei = s->groups > 1 ? md_any(5, wei_g, dt) : md_any(4, wei_p, dt);
    dnnl_memory_desc_t dwei =
        s->groups > 1 ? md_any(5, wei_g, wdiff_dt) : md_any(4, wei_p, wdiff_dt);

    dnnl_convolution_desc_t fd, d;
    dnnl_prop_kind_t prop = dir == DIR_INFER ? dnnl_forward_inference : dnnl_forward_training;
    DCHECK(dnnl_convolution_forward_desc_init(&fd, prop, dnnl_convolution_direct, &src, &wei,
                                              NULL, &dst, strides, pad_l, pad_r));
    dnnl_primitive_desc_t fpd, pd;
    DCHECK(dnnl_primitive_desc_create(&fpd, &fd, NULL, eng, NULL));
    int args[3];
    if (dir == DIR_FWD || dir == DIR_INFER) {
        pd = fpd;
        fpd = NULL;
        args[0] = DNNL_ARG_SRC, args[1] = DNNL_ARG_WEIGHTS, args[2] = DNNL_ARG_DST;
    } else if (dir == DIR_BWD_DATA) {
        DCHECK(dnnl_convolution_backward_data_desc_init(&d, dnnl_convolution_direct, &src, &wei,
                                                        &dst, strides, pad_l, pad_r));
        DCHECK(dnnl_primitive_desc_create(&pd, &d, NULL, eng, fpd));
        args[0] = DNNL_ARG_DIFF_DST, args[1] = DNNL_ARG_WEIGHTS, args[2] = DNNL_ARG_DIFF_SRC;
    } else {
        DCHECK(dnnl_convolution_backward_weights_desc_init(&d, dnnl_convolution_direct, &src,
                                                           &dwei, NULL, &dst, strides, pad_l,
                                                           pad_r));
        DCHECK(dnnl_primitive_desc_create(&pd, &d, NULL, eng, fpd));
        args[0] = DNNL_ARG_SRC, args[1] = DNNL_ARG_DIFF_DST, args[2] = DNNL_ARG_DIFF_WEIGHTS;
    }
    DCHECK(dnnl_primitive_create(&out->prim, pd));
    for (int i = 0; i < 3; i++) {
        const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md,
                                                                    args[i]);
        DCHECK(dnnl_memory_create(&out->mem[i], md, eng, DNNL_MEMORY_ALLOCATE));
        void *p;
        DCHECK(dnnl_memory_get_data_handle(out->mem[i], &p));
        memset(p, 0, dnnl_memory_desc_get_size(md));
        out->args[i].arg = args[i];
        out->args[i].memory = out->mem[i];
    }
    dnnl_primitive_desc_destroy(pd);
    if (fpd)
        dnnl_primitive_desc_destroy(fpd);
}

static void standalone_free(standalone_t *s)
{
    for (int i = 0; i < 3; i++)
        dnnl_memory_destroy(s->mem[i]);
    dnnl_primitive_destroy(s->prim);
}

static double time_standalone(dnnl_engine_t eng, dnnl_stream_t stream, const conv_shape_t *s,
                              int n, int dir, dnnl_data_type_t dt, int iters)
{
    standalone_t st;
    standalone_make(eng, s, n, dir, dt, &st);
    double best = 1e30;
    for (int it = 0; it <= iters; it++) {
        double t0 = time_now();
        DCHECK(dnnl_primitive_execute(st.prim, stream, 3, st.args));
        DCHECK(dnnl_stream_wait(stream));
        double dt_s = time_now() - t0;
        if (it > 0 && dt_s < best)
            best = dt_s;
    }
    standalone_free(&st);
    return best;
}

/* The same shape through the engine's backend, with tensors laid out as the model keeps
 * its activations (in inference: 16 bits in bf16, but for the stem's input image). */
static int time_engine(nn_backend_t *be, const conv_shape_t *s, int n, int precision,
                       int native, int iters, double best[DIRS])
{
    nn_conv_t op = {.in_ch = s->in_ch, .out_ch = s->out_ch, .kernel = s->kernel,
                    .stride = s->stride, .pad = s->kernel / 2, .groups = s->groups,
                    .cache_weights = 1, .precision = precision};
    native = native && be->conv_set_native_weights &&
             be->conv_set_native_weights(be, &op, 1); /* the weights are zeros either way */
    int oh = conv_out(s->h, s->kernel, s->stride), ow = conv_out(s->w, s->kernel, s->stride);
    int layout = s->in_ch == 3 ? NN_LAYOUT_NCHW : NN_LAYOUT_NATIVE;
    nn_tensor_t x = {NULL, n, s->in_ch, s->h, s->w, layout};
    nn_tensor_t y = {NULL, n, s->out_ch, oh, ow, NN_LAYOUT_NATIVE};
    nn_tensor_t dx = x;
    x.data = be->alloc(be, nn_numel(&x) * sizeof(float));
    y.data = be->alloc(be, nn_numel(&y) * sizeof(float));
    dx.data = be->alloc(be, nn_numel(&x) * sizeof(float));
    size_t wcount = (size_t)s->out_ch * (s->in_ch / s->groups) * s->kernel * s->kernel;
    float *w = be->alloc(be, wcount * sizeof(float));
    float *dw = be->alloc(be, wcount * sizeof(float));
    float *bn = be->alloc(be, 4 * (size_t)s->out_ch * sizeof(float));
    nn_fill_hashed(bn, 4 * (size_t)s->out_ch, 1, 0.5f, 1.0f); /* positive variances */
    nn_bnorm_t norm = {s->out_ch, 1e-5f, 0.1f, NULL};
    int half = precision == NN_PRECISION_BF16;
    nn_tensor_t xi = x, yi = y;
    if (half && x.layout == NN_LAYOUT_NATIVE)
        xi.layout = NN_LAYOUT_NATIVE_HALF;
    if (half)
        yi.layout = NN_LAYOUT_NATIVE_HALF;
    /* bf16 training keeps every convolution's input but the image in 16 bits too. */
    const nn_tensor_t *x_train = &xi;

    for (int dir = 0; dir < DIRS; dir++) {
        best[dir] = 1e30;
        if (dir == DIR_BWD_DATA && s->in_ch == 3)
            continue; /* the stem's input gradient is never computed */
        for (int it = 0; it <= iters; it++) {
            /* As in the model's backward: the weight gradient converts dy, then the data
             * gradient reads its copy (nn.h); without the call before, a repeated call
             * would find its own copy from the last iteration. */
            if (dir == DIR_BWD_WEIGHTS)
                be->conv_forward(be, &op, x_train, w, &y);
            else if (dir == DIR_BWD_DATA)
                be->conv_backward_weights(be, &op, x_train, &y, dw);
            be->synchronize(be);
            double t0 = time_now();
            if (dir == DIR_FWD)
                be->conv_forward(be, &op, x_train, w, &y);
            else if (dir == DIR_BWD_DATA)
                be->conv_backward_data(be, &op, &y, w, &dx);
            else if (dir == DIR_BWD_WEIGHTS)
                be->conv_backward_weights(be, &op, x_train, &y, dw);
            else
                be->conv_bn_forward_infer(be, &op, &norm, &xi, w, bn, bn + s->out_ch,
                                          bn + 2 * s->out_ch, bn + 3 * s->out_ch, NULL, 1,
                                          &yi);
            be->synchronize(be);
            double dt = time_now() - t0;
            if (it > 0 && dt < best[dir])
                best[dir] = dt;
        }
    }
    be->release_plan(be, &op.plan);
    be->release(be, x.data);
    be->release(be, y.data);
    be->release(be, dx.data);
    be->release(be, w);
    be->release(be, dw);
    be->release(be, bn);
    return native;
}

static int bench_convs(const char *model, int size, int batch, int iters, int precision,
                       int native)
{
    conv_shape_t shapes[128];
    int count = model_shapes(model, size, shapes);
    nn_backend_t *be = nn_backend_create("cpu");
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    DCHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    DCHECK(dnnl_stream_create(&stream, eng, dnnl_stream_default_flags));
    static const char *dirs[DIRS] = {"fwd", "bwd_data", "bwd_weights", "infer"};

    int bf16 = precision == NN_PRECISION_BF16;
    for (int i = 0; i < count; i++) {
        const conv_shape_t *s = &shapes[i];
        int oh = conv_out(s->h, s->kernel, s->stride), ow = conv_out(s->w, s->kernel, s->stride);
        double flops = 2.0 * batch * s->out_ch * oh * ow * (s->in_ch / s->groups) * s->kernel *
                       s->kernel;
        double engine[DIRS];
        int native_here = time_engine(be, s, batch, precision, native, iters, engine);
        for (int dir = 0; dir < DIRS; dir++) {
            if (engine[dir] > 1e29)
                continue;
            dnnl_data_type_t dt = bf16 ? dnnl_bf16 : dnnl_f32;
            double alone = time_standalone(eng, stream, s, batch, dir, dt, iters);
            int half_read = bf16 && s->in_ch != 3 && dir != DIR_BWD_DATA;
            printf("conv size=%d shape=%dx%d_k%d_s%d_g%d_in%dx%d dir=%s compute=%s "
                   "engine_gflops=%.1f standalone_gflops=%.1f ratio=%.2f input=%s "
                   "weights=%s\n",
                   size, s->in_ch, s->out_ch, s->kernel, s->stride, s->groups, s->h, s->w,
                   dirs[dir], bf16 ? "bf16" : "fp32", flops / engine[dir] * 1e-9,
                   flops / alone * 1e-9, alone / engine[dir], half_read ? "half" : "fp32",
                   native_here ? "native" : "plain");
            fflush(stdout);
        }
    }
    dnnl_stream_destroy(stream);
    dnnl_engine_destroy(eng);
    be->destroy(be);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 7 && strcmp(argv[1], "model") == 0)
        return bench_model(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5], atoi(argv[6]),
                           argc > 7 ? argv[7] : NULL);
    if (argc >= 6 && strcmp(argv[1], "convs") == 0) {
        variant_t v = parse_variant(argc > 6 ? argv[6] : NULL);
        return bench_convs(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), v.precision,
                           v.native);
    }
    fprintf(stderr, "usage: nn_bench model MODEL SIZE BATCH eval|train ITERS "
                    "[fp32|bf16][+cache][+native][+f32act]\n"
                    "       nn_bench convs MODEL SIZE BATCH ITERS [fp32|bf16][+native]\n");
    return 2;
}
