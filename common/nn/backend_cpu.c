/*
 * The CPU backend on oneDNN (C API, version 2.6).
 *
 * Each op keeps, in its plan field, a short list of prepared primitives keyed by what they
 * were built for (kind of call and input shape). A prepared primitive binds every argument to
 * a memory object in the caller's plain layout; where oneDNN prefers another layout (blocked
 * activations and weights for convolutions) the argument also gets an inner memory object and
 * a reorder that runs before (inputs) or after (outputs) the primitive. Inner memory lives in
 * one scratch arena shared by all ops, since it is only alive during one call.
 *
 * Threads: oneDNN uses OpenMP here; OMP_NUM_THREADS sets the count.
 * missing: weights are reordered on every call (once per step would do); no fusion of batch
 * norm with relu; bf16 compute.
 */
#include "nn/nn.h"

#include "check.h"
#include "exitcodes.h"

#include <dnnl.h>
#include <dnnl_debug.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ARGS 10

/* Die naming the oneDNN call and its status. */
#define DNNL_CHECK(call)                                                                      \
    do {                                                                                      \
        dnnl_status_t status_ = (call);                                                       \
        if (status_ != dnnl_success)                                                          \
            die(EXIT_INTERNAL, "%s:%d: %s failed: %s", __FILE__, __LINE__, #call,             \
                dnnl_status2str(status_));                                                    \
    } while (0)

typedef struct {
    int arg;                  /* DNNL_ARG_* */
    int is_output;
    dnnl_memory_t user;       /* plain layout; handle set on every call */
    dnnl_memory_t inner;      /* primitive's layout, or NULL when it is the plain one */
    dnnl_primitive_t reorder; /* user -> inner (input) or inner -> user (output) */
    size_t inner_bytes, inner_offset;
} bound_arg_t;

/* What a prepared primitive was built for. */
enum {
    CALL_CONV_FWD = 1,
    CALL_CONV_BWD_DATA,
    CALL_CONV_BWD_WEIGHTS,
    CALL_BN_TRAIN,
    CALL_BN_INFER,
    CALL_BN_BWD,
    CALL_RELU_FWD,
    CALL_RELU_BWD,
    CALL_POOL_TRAIN,
    CALL_POOL_INFER,
    CALL_POOL_BWD,
    CALL_LINEAR_FWD,
    CALL_LINEAR_BWD_DATA,
    CALL_LINEAR_BWD_WEIGHTS,
};

typedef struct prepared {
    int call, n, c, h, w;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    bound_arg_t args[MAX_ARGS];
    int nargs;
    size_t inner_total;      /* bytes of scratch arena the inner memories need */
    dnnl_memory_t workspace; /* owned, kept between a forward and its backward */
    struct prepared *next;
} prepared_t;

typedef struct {
    nn_backend_t base;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    void *arena;
    size_t arena_bytes;
} cpu_backend_t;

static cpu_backend_t *cpu_of(nn_backend_t *be)
{
    return (cpu_backend_t *)be;
}

/* ---- memory ---------------------------------------------------------------------------- */

static void *cpu_alloc(nn_backend_t *be, size_t bytes)
{
    (void)be;
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p)
        die(EXIT_INTERNAL, "out of memory allocating %zu bytes for tensors", bytes);
    memset(p, 0, rounded);
    return p;
}

static void cpu_release(nn_backend_t *be, void *p)
{
    (void)be;
    free(p);
}

static void cpu_copy(nn_backend_t *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memmove(dst, src, bytes);
}

static void cpu_synchronize(nn_backend_t *be)
{
    DNNL_CHECK(dnnl_stream_wait(cpu_of(be)->stream));
}

static void *arena_get(cpu_backend_t *cpu, size_t bytes)
{
    if (bytes > cpu->arena_bytes) {
        free(cpu->arena);
        cpu->arena = cpu_alloc(&cpu->base, bytes);
        cpu->arena_bytes = bytes;
    }
    return cpu->arena;
}

/* ---- memory descriptors ---------------------------------------------------------------- */

static dnnl_memory_desc_t md_plain(int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag)
{
    dnnl_memory_desc_t md;
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&md, ndims, dims, dnnl_f32, tag));
    return md;
}

static dnnl_memory_desc_t md_nchw(int n, int c, int h, int w)
{
    dnnl_dims_t dims = {n, c, h, w};
    return md_plain(4, dims, dnnl_nchw);
}

static dnnl_memory_desc_t md_any4(int n, int c, int h, int w)
{
    dnnl_dims_t dims = {n, c, h, w};
    return md_plain(4, dims, dnnl_format_tag_any);
}

static dnnl_memory_desc_t md_vec(int n)
{
    dnnl_dims_t dims = {n};
    return md_plain(1, dims, dnnl_a);
}

static dnnl_memory_desc_t md_matrix(int rows, int cols)
{
    dnnl_dims_t dims = {rows, cols};
    return md_plain(2, dims, dnnl_ab);
}

/* Conv weights: oihw, or goihw ([g][out/g][in/g][k][k], same bytes as PyTorch's) if grouped. */
static dnnl_memory_desc_t md_conv_weights(const nn_conv_t *op, int any)
{
    int g = op->groups, k = op->kernel;
    if (g == 1) {
        dnnl_dims_t dims = {op->out_ch, op->in_ch, k, k};
        return md_plain(4, dims, any ? dnnl_format_tag_any : dnnl_oihw);
    }
    dnnl_dims_t dims = {g, op->out_ch / g, op->in_ch / g, k, k};
    return md_plain(5, dims, any ? dnnl_format_tag_any : dnnl_goihw);
}

/* ---- prepared primitives ----------------------------------------------------------------- */

static prepared_t *plan_find(void **plan, int call, const nn_tensor_t *x)
{
    for (prepared_t *p = *plan; p; p = p->next)
        if (p->call == call && p->n == x->n && p->c == x->c && p->h == x->h && p->w == x->w)
            return p;
    return NULL;
}

/* Create the primitive for op_desc and add it to the plan, keyed by call and x's shape. */
static prepared_t *plan_add(cpu_backend_t *cpu, void **plan, int call, const nn_tensor_t *x,
                            const void *op_desc, const_dnnl_primitive_desc_t hint)
{
    prepared_t *p = xcalloc(1, sizeof(*p));
    p->call = call;
    p->n = x->n;
    p->c = x->c;
    p->h = x->h;
    p->w = x->w;
    DNNL_CHECK(dnnl_primitive_desc_create(&p->pd, op_desc, NULL, cpu->engine, hint));
    DNNL_CHECK(dnnl_primitive_create(&p->prim, p->pd));
    p->next = *plan;
    *plan = p;
    return p;
}

static int md_is_empty(const dnnl_memory_desc_t *md)
{
    return md == NULL || md->ndims == 0;
}

/* Bind an argument given in the caller's layout user_md; adds a reorder when needed. */
static void bind(cpu_backend_t *cpu, prepared_t *p, int arg, dnnl_memory_desc_t user_md,
                 int is_output)
{
    const dnnl_memory_desc_t *prim_md =
        dnnl_primitive_desc_query_md(p->pd, dnnl_query_exec_arg_md, arg);
    if (md_is_empty(prim_md))
        die(EXIT_INTERNAL, "oneDNN primitive has no argument %d", arg);
    if (p->nargs == MAX_ARGS)
        die(EXIT_INTERNAL, "too many arguments for a oneDNN primitive");

    bound_arg_t *b = &p->args[p->nargs++];
    b->arg = arg;
    b->is_output = is_output;
    DNNL_CHECK(dnnl_memory_create(&b->user, &user_md, cpu->engine, DNNL_MEMORY_NONE));
    if (dnnl_memory_desc_equal(prim_md, &user_md))
        return;

    DNNL_CHECK(dnnl_memory_create(&b->inner, prim_md, cpu->engine, DNNL_MEMORY_NONE));
    b->inner_bytes = (dnnl_memory_desc_get_size(prim_md) + 63) / 64 * 64;
    b->inner_offset = p->inner_total;
    p->inner_total += b->inner_bytes;

    dnnl_primitive_desc_t reorder_pd;
    const dnnl_memory_desc_t *from = is_output ? prim_md : &user_md;
    const dnnl_memory_desc_t *to = is_output ? &user_md : prim_md;
    DNNL_CHECK(dnnl_reorder_primitive_desc_create(&reorder_pd, from, cpu->engine, to,
                                                  cpu->engine, NULL));
    DNNL_CHECK(dnnl_primitive_create(&b->reorder, reorder_pd));
    DNNL_CHECK(dnnl_primitive_desc_destroy(reorder_pd));
}

/* The primitive's workspace (max pool), owned by the prepared primitive. */
static void bind_workspace(cpu_backend_t *cpu, prepared_t *p, const prepared_t *forward)
{
    if (forward) {
        p->workspace = NULL; /* borrowed from the forward at run time */
        return;
    }
    const dnnl_memory_desc_t *ws = dnnl_primitive_desc_query_md(p->pd, dnnl_query_workspace_md,
                                                                0);
    if (!md_is_empty(ws))
        DNNL_CHECK(dnnl_memory_create(&p->workspace, ws, cpu->engine, DNNL_MEMORY_ALLOCATE));
}

static void run_reorder(cpu_backend_t *cpu, dnnl_primitive_t reorder, dnnl_memory_t from,
                        dnnl_memory_t to)
{
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    DNNL_CHECK(dnnl_primitive_execute(reorder, cpu->stream, 2, args));
}

/* Run with the callers' pointers, one per bound argument in bind order. */
static void run(cpu_backend_t *cpu, prepared_t *p, void *const *ptrs, dnnl_memory_t workspace)
{
    char *arena = p->inner_total ? arena_get(cpu, p->inner_total) : NULL;
    dnnl_exec_arg_t args[MAX_ARGS + 1];
    int nargs = 0;

    for (int i = 0; i < p->nargs; i++) {
        bound_arg_t *b = &p->args[i];
        DNNL_CHECK(dnnl_memory_set_data_handle(b->user, ptrs[i]));
        if (b->inner) {
            DNNL_CHECK(dnnl_memory_set_data_handle(b->inner, arena + b->inner_offset));
            if (!b->is_output)
                run_reorder(cpu, b->reorder, b->user, b->inner);
        }
        args[nargs].arg = b->arg;
        args[nargs].memory = b->inner ? b->inner : b->user;
        nargs++;
    }
    if (workspace) {
        args[nargs].arg = DNNL_ARG_WORKSPACE;
        args[nargs].memory = workspace;
        nargs++;
    }
    DNNL_CHECK(dnnl_primitive_execute(p->prim, cpu->stream, nargs, args));

    for (int i = 0; i < p->nargs; i++) {
        bound_arg_t *b = &p->args[i];
        if (b->inner && b->is_output)
            run_reorder(cpu, b->reorder, b->inner, b->user);
    }
    DNNL_CHECK(dnnl_stream_wait(cpu->stream));
}

static void cpu_release_plan(nn_backend_t *be, void **plan)
{
    (void)be;
    prepared_t *p = *plan;
    while (p) {
        prepared_t *next = p->next;
        for (int i = 0; i < p->nargs; i++) {
            dnnl_memory_destroy(p->args[i].user);
            if (p->args[i].inner) {
                dnnl_memory_destroy(p->args[i].inner);
                dnnl_primitive_destroy(p->args[i].reorder);
            }
        }
        if (p->workspace)
            dnnl_memory_destroy(p->workspace);
        dnnl_primitive_destroy(p->prim);
        dnnl_primitive_desc_destroy(p->pd);
        free(p);
        p = next;
    }
    *plan = NULL;
}

/* ---- convolution --------------------------------------------------------------------------- */

static int out_size(int in, int kernel, int stride, int pad)
{
    return (in + 2 * pad - kernel) / stride + 1;
}

static void check_shape(const char *what, const nn_tensor_t *t, int n, int c, int h, int w)
{
    if (t->n != n || t->c != c || t->h != h || t->w != w)
        die(EXIT_INTERNAL, "%s: tensor is %dx%dx%dx%d, expected %dx%dx%dx%d", what, t->n, t->c,
            t->h, t->w, n, c, h, w);
}

/* The forward descriptor; x is the input shape. Right padding makes PyTorch's floor rule. */
static dnnl_convolution_desc_t conv_desc_forward(const nn_conv_t *op, const nn_tensor_t *x)
{
    int oh = out_size(x->h, op->kernel, op->stride, op->pad);
    int ow = out_size(x->w, op->kernel, op->stride, op->pad);
    dnnl_dims_t strides = {op->stride, op->stride}, pad_l = {op->pad, op->pad};
    dnnl_dims_t pad_r = {(oh - 1) * op->stride + op->kernel - x->h - op->pad,
                         (ow - 1) * op->stride + op->kernel - x->w - op->pad};
    dnnl_memory_desc_t src = md_any4(x->n, op->in_ch, x->h, x->w);
    dnnl_memory_desc_t dst = md_any4(x->n, op->out_ch, oh, ow);
    dnnl_memory_desc_t wei = md_conv_weights(op, 1);
    dnnl_convolution_desc_t d;
    DNNL_CHECK(dnnl_convolution_forward_desc_init(&d, dnnl_forward_training,
                                                  dnnl_convolution_direct, &src, &wei, NULL,
                                                  &dst, strides, pad_l, pad_r));
    return d;
}

/* A forward primitive descriptor to serve as the hint of the backward ones. */
static prepared_t *conv_forward_prepared(cpu_backend_t *cpu, nn_conv_t *op, const nn_tensor_t *x)
{
    prepared_t *p = plan_find(&op->plan, CALL_CONV_FWD, x);
    if (p)
        return p;
    int oh = out_size(x->h, op->kernel, op->stride, op->pad);
    int ow = out_size(x->w, op->kernel, op->stride, op->pad);
    dnnl_convolution_desc_t d = conv_desc_forward(op, x);
    p = plan_add(cpu, &op->plan, CALL_CONV_FWD, x, &d, NULL);
    bind(cpu, p, DNNL_ARG_SRC, md_nchw(x->n, op->in_ch, x->h, x->w), 0);
    bind(cpu, p, DNNL_ARG_WEIGHTS, md_conv_weights(op, 0), 0);
    bind(cpu, p, DNNL_ARG_DST, md_nchw(x->n, op->out_ch, oh, ow), 1);
    return p;
}

static void cpu_conv_forward(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x,
                             const float *w, nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    int oh = out_size(x->h, op->kernel, op->stride, op->pad);
    int ow = out_size(x->w, op->kernel, op->stride, op->pad);
    check_shape("conv input", x, x->n, op->in_ch, x->h, x->w);
    check_shape("conv output", y, x->n, op->out_ch, oh, ow);
    prepared_t *p = conv_forward_prepared(cpu, op, x);
    void *ptrs[] = {x->data, (void *)w, y->data};
    run(cpu, p, ptrs, NULL);
}

/* The input shape of a conv whose output gradient is dy (kept in the forward's key). */
static nn_tensor_t conv_input_shape(const nn_conv_t *op, const nn_tensor_t *dx_like)
{
    nn_tensor_t x = *dx_like;
    x.c = op->in_ch;
    return x;
}

static void cpu_conv_backward_data(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *dy,
                                   const float *w, nn_tensor_t *dx)
{
    cpu_backend_t *cpu = cpu_of(be);
    nn_tensor_t x = conv_input_shape(op, dx);
    check_shape("conv output gradient", dy, x.n, op->out_ch,
                out_size(x.h, op->kernel, op->stride, op->pad),
                out_size(x.w, op->kernel, op->stride, op->pad));
    prepared_t *p = plan_find(&op->plan, CALL_CONV_BWD_DATA, &x);
    if (!p) {
        prepared_t *fwd = conv_forward_prepared(cpu, op, &x);
        dnnl_convolution_desc_t f = conv_desc_forward(op, &x);
        dnnl_convolution_desc_t d;
        DNNL_CHECK(dnnl_convolution_backward_data_desc_init(
            &d, dnnl_convolution_direct, &f.src_desc, &f.weights_desc, &f.dst_desc,
            f.strides, f.padding[0], f.padding[1]));
        p = plan_add(cpu, &op->plan, CALL_CONV_BWD_DATA, &x, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_DIFF_DST, md_nchw(dy->n, dy->c, dy->h, dy->w), 0);
        bind(cpu, p, DNNL_ARG_WEIGHTS, md_conv_weights(op, 0), 0);
        bind(cpu, p, DNNL_ARG_DIFF_SRC, md_nchw(x.n, x.c, x.h, x.w), 1);
    }
    void *ptrs[] = {dy->data, (void *)w, dx->data};
    run(cpu, p, ptrs, NULL);
}

static void cpu_conv_backward_weights(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x,
                                      const nn_tensor_t *dy, float *dw)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("conv output gradient", dy, x->n, op->out_ch,
                out_size(x->h, op->kernel, op->stride, op->pad),
                out_size(x->w, op->kernel, op->stride, op->pad));
    prepared_t *p = plan_find(&op->plan, CALL_CONV_BWD_WEIGHTS, x);
    if (!p) {
        prepared_t *fwd = conv_forward_prepared(cpu, op, x);
        dnnl_convolution_desc_t f = conv_desc_forward(op, x);
        dnnl_convolution_desc_t d;
        DNNL_CHECK(dnnl_convolution_backward_weights_desc_init(
            &d, dnnl_convolution_direct, &f.src_desc, &f.weights_desc, NULL, &f.dst_desc,
            f.strides, f.padding[0], f.padding[1]));
        p = plan_add(cpu, &op->plan, CALL_CONV_BWD_WEIGHTS, x, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_SRC, md_nchw(x->n, x->c, x->h, x->w), 0);
        bind(cpu, p, DNNL_ARG_DIFF_DST, md_nchw(dy->n, dy->c, dy->h, dy->w), 0);
        bind(cpu, p, DNNL_ARG_DIFF_WEIGHTS, md_conv_weights(op, 0), 1);
    }
    void *ptrs[] = {x->data, dy->data, dw};
    run(cpu, p, ptrs, NULL);
}

/* ---- batch norm ---------------------------------------------------------------------------- */

static const unsigned BN_AFFINE = dnnl_use_scale | dnnl_use_shift;

static dnnl_batch_normalization_desc_t bn_desc_train(const nn_bnorm_t *op, const nn_tensor_t *x)
{
    dnnl_memory_desc_t data = md_nchw(x->n, x->c, x->h, x->w);
    dnnl_batch_normalization_desc_t d;
    DNNL_CHECK(dnnl_batch_normalization_forward_desc_init(&d, dnnl_forward_training, &data,
                                                          op->eps, BN_AFFINE));
    return d;
}

static prepared_t *bn_train_prepared(cpu_backend_t *cpu, nn_bnorm_t *op, const nn_tensor_t *x)
{
    prepared_t *p = plan_find(&op->plan, CALL_BN_TRAIN, x);
    if (p)
        return p;
    dnnl_batch_normalization_desc_t d = bn_desc_train(op, x);
    dnnl_memory_desc_t data = md_nchw(x->n, x->c, x->h, x->w), vec = md_vec(x->c);
    p = plan_add(cpu, &op->plan, CALL_BN_TRAIN, x, &d, NULL);
    bind(cpu, p, DNNL_ARG_SRC, data, 0);
    bind(cpu, p, DNNL_ARG_SCALE, vec, 0);
    bind(cpu, p, DNNL_ARG_SHIFT, vec, 0);
    bind(cpu, p, DNNL_ARG_DST, data, 1);
    bind(cpu, p, DNNL_ARG_MEAN, vec, 1);
    bind(cpu, p, DNNL_ARG_VARIANCE, vec, 1);
    return p;
}

static void cpu_bnorm_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                    const float *gamma, const float *beta, float *running_mean,
                                    float *running_var, float *save_mean, float *save_var,
                                    nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("batch norm input", x, x->n, op->ch, x->h, x->w);
    check_shape("batch norm output", y, x->n, op->ch, x->h, x->w);
    double count = (double)x->n * x->h * x->w;
    if (count < 2)
        die(EXIT_INTERNAL, "batch norm in training needs more than 1 value per channel");

    prepared_t *p = bn_train_prepared(cpu, op, x);
    void *ptrs[] = {x->data, (void *)gamma, (void *)beta, y->data, save_mean, save_var};
    run(cpu, p, ptrs, NULL);

    /* Running statistics as PyTorch keeps them: the variance unbiased. */
    float keep = 1.0f - op->momentum, unbias = (float)(count / (count - 1));
    for (int c = 0; c < op->ch; c++) {
        running_mean[c] = keep * running_mean[c] + op->momentum * save_mean[c];
        running_var[c] = keep * running_var[c] + op->momentum * (save_var[c] * unbias);
    }
}

static void cpu_bnorm_forward_infer(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                    const float *gamma, const float *beta,
                                    const float *running_mean, const float *running_var,
                                    nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("batch norm input", x, x->n, op->ch, x->h, x->w);
    check_shape("batch norm output", y, x->n, op->ch, x->h, x->w);
    prepared_t *p = plan_find(&op->plan, CALL_BN_INFER, x);
    if (!p) {
        dnnl_memory_desc_t data = md_nchw(x->n, x->c, x->h, x->w), vec = md_vec(x->c);
        dnnl_batch_normalization_desc_t d;
        DNNL_CHECK(dnnl_batch_normalization_forward_desc_init(
            &d, dnnl_forward_inference, &data, op->eps, BN_AFFINE | dnnl_use_global_stats));
        p = plan_add(cpu, &op->plan, CALL_BN_INFER, x, &d, NULL);
        bind(cpu, p, DNNL_ARG_SRC, data, 0);
        bind(cpu, p, DNNL_ARG_SCALE, vec, 0);
        bind(cpu, p, DNNL_ARG_SHIFT, vec, 0);
        bind(cpu, p, DNNL_ARG_MEAN, vec, 0);
        bind(cpu, p, DNNL_ARG_VARIANCE, vec, 0);
        bind(cpu, p, DNNL_ARG_DST, data, 1);
    }
    void *ptrs[] = {x->data, (void *)gamma, (void *)beta, (void *)running_mean,
                    (void *)running_var, y->data};
    run(cpu, p, ptrs, NULL);
}

static void cpu_bnorm_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                               const nn_tensor_t *dy, const float *gamma, const float *save_mean,
                               const float *save_var, nn_tensor_t *dx, float *dgamma,
                               float *dbeta)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("batch norm output gradient", dy, x->n, op->ch, x->h, x->w);
    check_shape("batch norm input gradient", dx, x->n, op->ch, x->h, x->w);
    prepared_t *p = plan_find(&op->plan, CALL_BN_BWD, x);
    if (!p) {
        prepared_t *fwd = bn_train_prepared(cpu, op, x);
        dnnl_memory_desc_t data = md_nchw(x->n, x->c, x->h, x->w), vec = md_vec(x->c);
        dnnl_batch_normalization_desc_t d;
        DNNL_CHECK(dnnl_batch_normalization_backward_desc_init(&d, dnnl_backward, &data, &data,
                                                               op->eps, BN_AFFINE));
        p = plan_add(cpu, &op->plan, CALL_BN_BWD, x, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_SRC, data, 0);
        bind(cpu, p, DNNL_ARG_DIFF_DST, data, 0);
        bind(cpu, p, DNNL_ARG_SCALE, vec, 0);
        bind(cpu, p, DNNL_ARG_SHIFT, vec, 0); /* oneDNN 2.6 asks for it, unused */
        bind(cpu, p, DNNL_ARG_MEAN, vec, 0);
        bind(cpu, p, DNNL_ARG_VARIANCE, vec, 0);
        bind(cpu, p, DNNL_ARG_DIFF_SRC, data, 1);
        bind(cpu, p, DNNL_ARG_DIFF_SCALE, vec, 1);
        bind(cpu, p, DNNL_ARG_DIFF_SHIFT, vec, 1);
    }
    void *ptrs[] = {x->data,         dy->data, (void *)gamma, (void *)gamma,
                    (void *)save_mean, (void *)save_var, dx->data, dgamma, dbeta};
    run(cpu, p, ptrs, NULL);
}

/* ---- relu ---------------------------------------------------------------------------------- */

static const dnnl_alg_kind_t RELU = dnnl_eltwise_relu_use_dst_for_bwd;

static prepared_t *relu_forward_prepared(cpu_backend_t *cpu, nn_relu_t *op, const nn_tensor_t *x)
{
    prepared_t *p = plan_find(&op->plan, CALL_RELU_FWD, x);
    if (p)
        return p;
    dnnl_memory_desc_t data = md_nchw(x->n, x->c, x->h, x->w);
    dnnl_eltwise_desc_t d;
    DNNL_CHECK(dnnl_eltwise_forward_desc_init(&d, dnnl_forward_training, RELU, &data, 0, 0));
    p = plan_add(cpu, &op->plan, CALL_RELU_FWD, x, &d, NULL);
    bind(cpu, p, DNNL_ARG_SRC, data, 0);
    bind(cpu, p, DNNL_ARG_DST, data, 1);
    return p;
}

static void cpu_relu_forward(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *x,
                             nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("relu output", y, x->n, x->c, x->h, x->w);
    prepared_t *p = relu_forward_prepared(cpu, op, x);
    void *ptrs[] = {x->data, y->data};
    run(cpu, p, ptrs, NULL);
}

static void cpu_relu_backward(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *y,
                              const nn_tensor_t *dy, nn_tensor_t *dx)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("relu output gradient", dy, y->n, y->c, y->h, y->w);
    check_shape("relu input gradient", dx, y->n, y->c, y->h, y->w);
    prepared_t *p = plan_find(&op->plan, CALL_RELU_BWD, y);
    if (!p) {
        prepared_t *fwd = relu_forward_prepared(cpu, op, y);
        dnnl_memory_desc_t data = md_nchw(y->n, y->c, y->h, y->w);
        dnnl_eltwise_desc_t d;
        DNNL_CHECK(dnnl_eltwise_backward_desc_init(&d, RELU, &data, &data, 0, 0));
        p = plan_add(cpu, &op->plan, CALL_RELU_BWD, y, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_DST, data, 0);
        bind(cpu, p, DNNL_ARG_DIFF_DST, data, 0);
        bind(cpu, p, DNNL_ARG_DIFF_SRC, data, 1);
    }
    void *ptrs[] = {y->data, dy->data, dx->data};
    run(cpu, p, ptrs, NULL);
}

/* ---- max pool ------------------------------------------------------------------------------ */

static dnnl_pooling_v2_desc_t pool_desc(const nn_pool_t *op, const nn_tensor_t *x,
                                        dnnl_prop_kind_t prop)
{
    int oh = out_size(x->h, op->kernel, op->stride, op->pad);
    int ow = out_size(x->w, op->kernel, op->stride, op->pad);
    dnnl_dims_t strides = {op->stride, op->stride}, kernel = {op->kernel, op->kernel};
    dnnl_dims_t dilation = {0, 0}, pad_l = {op->pad, op->pad};
    dnnl_dims_t pad_r = {(oh - 1) * op->stride + op->kernel - x->h - op->pad,
                         (ow - 1) * op->stride + op->kernel - x->w - op->pad};
    dnnl_memory_desc_t src = md_nchw(x->n, x->c, x->h, x->w);
    dnnl_memory_desc_t dst = md_nchw(x->n, x->c, oh, ow);
    dnnl_pooling_v2_desc_t d;
    DNNL_CHECK(dnnl_pooling_v2_forward_desc_init(&d, prop, dnnl_pooling_max, &src, &dst, strides,
                                                 kernel, dilation, pad_l, pad_r));
    return d;
}

static void cpu_maxpool_forward(nn_backend_t *be, nn_pool_t *op, const nn_tensor_t *x,
                                nn_tensor_t *y, int training)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("max pool output", y, x->n, x->c, out_size(x->h, op->kernel, op->stride, op->pad),
                out_size(x->w, op->kernel, op->stride, op->pad));
    int call = training ? CALL_POOL_TRAIN : CALL_POOL_INFER;
    prepared_t *p = plan_find(&op->plan, call, x);
    if (!p) {
        dnnl_pooling_v2_desc_t d =
            pool_desc(op, x, training ? dnnl_forward_training : dnnl_forward_inference);
        p = plan_add(cpu, &op->plan, call, x, &d, NULL);
        bind(cpu, p, DNNL_ARG_SRC, md_nchw(x->n, x->c, x->h, x->w), 0);
        bind(cpu, p, DNNL_ARG_DST, md_nchw(y->n, y->c, y->h, y->w), 1);
        bind_workspace(cpu, p, NULL);
    }
    void *ptrs[] = {x->data, y->data};
    run(cpu, p, ptrs, p->workspace);
}

static void cpu_maxpool_backward(nn_backend_t *be, nn_pool_t *op, const nn_tensor_t *x,
                                 const nn_tensor_t *y, const nn_tensor_t *dy, nn_tensor_t *dx)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("max pool output gradient", dy, y->n, y->c, y->h, y->w);
    check_shape("max pool input gradient", dx, x->n, x->c, x->h, x->w);
    prepared_t *fwd = plan_find(&op->plan, CALL_POOL_TRAIN, x);
    if (!fwd || !fwd->workspace)
        die(EXIT_INTERNAL, "max pool backward without a training forward for this shape");
    prepared_t *p = plan_find(&op->plan, CALL_POOL_BWD, x);
    if (!p) {
        dnnl_pooling_v2_desc_t f = pool_desc(op, x, dnnl_forward_training);
        dnnl_pooling_v2_desc_t d;
        DNNL_CHECK(dnnl_pooling_v2_backward_desc_init(&d, dnnl_pooling_max, &f.src_desc,
                                                      &f.dst_desc, f.strides, f.kernel,
                                                      f.dilation, f.padding[0], f.padding[1]));
        p = plan_add(cpu, &op->plan, CALL_POOL_BWD, x, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_DIFF_DST, md_nchw(dy->n, dy->c, dy->h, dy->w), 0);
        bind(cpu, p, DNNL_ARG_DIFF_SRC, md_nchw(x->n, x->c, x->h, x->w), 1);
    }
    void *ptrs[] = {dy->data, dx->data};
    run(cpu, p, ptrs, fwd->workspace);
}

/* ---- global average pool, add (plain loops: memory bound) ------------------------------ */

static void cpu_avgpool_forward(nn_backend_t *be, const nn_tensor_t *x, nn_tensor_t *y)
{
    (void)be;
    check_shape("average pool output", y, x->n, x->c, 1, 1);
    size_t plane = (size_t)x->h * x->w;
    for (size_t i = 0; i < (size_t)x->n * x->c; i++) {
        const float *src = x->data + i * plane;
        float sum = 0.0f;
        for (size_t k = 0; k < plane; k++)
            sum += src[k];
        y->data[i] = sum / (float)plane;
    }
}

static void cpu_avgpool_backward(nn_backend_t *be, const nn_tensor_t *dy, nn_tensor_t *dx)
{
    (void)be;
    check_shape("average pool output gradient", dy, dx->n, dx->c, 1, 1);
    size_t plane = (size_t)dx->h * dx->w;
    for (size_t i = 0; i < (size_t)dx->n * dx->c; i++) {
        float g = dy->data[i] / (float)plane;
        float *dst = dx->data + i * plane;
        for (size_t k = 0; k < plane; k++)
            dst[k] = g;
    }
}

static void cpu_add(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b, nn_tensor_t *y)
{
    (void)be;
    check_shape("add operand", b, a->n, a->c, a->h, a->w);
    check_shape("add output", y, a->n, a->c, a->h, a->w);
    size_t count = nn_numel(a);
    for (size_t i = 0; i < count; i++)
        y->data[i] = a->data[i] + b->data[i];
}

/* ---- linear -------------------------------------------------------------------------------- */

static dnnl_inner_product_desc_t linear_desc_forward(const nn_linear_t *op, int n)
{
    dnnl_memory_desc_t src = md_matrix(n, op->in), wei = md_matrix(op->out, op->in);
    dnnl_memory_desc_t bias = md_vec(op->out), dst = md_matrix(n, op->out);
    dnnl_inner_product_desc_t d;
    DNNL_CHECK(dnnl_inner_product_forward_desc_init(&d, dnnl_forward_training, &src, &wei, &bias,
                                                    &dst));
    return d;
}

static prepared_t *linear_forward_prepared(cpu_backend_t *cpu, nn_linear_t *op,
                                           const nn_tensor_t *x)
{
    prepared_t *p = plan_find(&op->plan, CALL_LINEAR_FWD, x);
    if (p)
        return p;
    dnnl_inner_product_desc_t d = linear_desc_forward(op, x->n);
    p = plan_add(cpu, &op->plan, CALL_LINEAR_FWD, x, &d, NULL);
    bind(cpu, p, DNNL_ARG_SRC, md_matrix(x->n, op->in), 0);
    bind(cpu, p, DNNL_ARG_WEIGHTS, md_matrix(op->out, op->in), 0);
    bind(cpu, p, DNNL_ARG_BIAS, md_vec(op->out), 0);
    bind(cpu, p, DNNL_ARG_DST, md_matrix(x->n, op->out), 1);
    return p;
}

static void cpu_linear_forward(nn_backend_t *be, nn_linear_t *op, const nn_tensor_t *x,
                               const float *w, const float *b, nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("linear input", x, x->n, op->in, 1, 1);
    check_shape("linear output", y, x->n, op->out, 1, 1);
    if (!b)
        die(EXIT_INTERNAL, "missing: linear layers without bias");
    prepared_t *p = linear_forward_prepared(cpu, op, x);
    void *ptrs[] = {x->data, (void *)w, (void *)b, y->data};
    run(cpu, p, ptrs, NULL);
}

static void cpu_linear_backward(nn_backend_t *be, nn_linear_t *op, const nn_tensor_t *x,
                                const nn_tensor_t *dy, const float *w, nn_tensor_t *dx,
                                float *dw, float *db)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("linear output gradient", dy, x->n, op->out, 1, 1);
    if (!db)
        die(EXIT_INTERNAL, "missing: linear layers without bias");
    prepared_t *fwd = linear_forward_prepared(cpu, op, x);
    dnnl_memory_desc_t src = md_matrix(x->n, op->in), wei = md_matrix(op->out, op->in);
    dnnl_memory_desc_t bias = md_vec(op->out), dst = md_matrix(x->n, op->out);

    if (dx) {
        check_shape("linear input gradient", dx, x->n, op->in, 1, 1);
        prepared_t *p = plan_find(&op->plan, CALL_LINEAR_BWD_DATA, x);
        if (!p) {
            dnnl_inner_product_desc_t d;
            DNNL_CHECK(dnnl_inner_product_backward_data_desc_init(&d, &src, &wei, &dst));
            p = plan_add(cpu, &op->plan, CALL_LINEAR_BWD_DATA, x, &d, fwd->pd);
            bind(cpu, p, DNNL_ARG_DIFF_DST, dst, 0);
            bind(cpu, p, DNNL_ARG_WEIGHTS, wei, 0);
            bind(cpu, p, DNNL_ARG_DIFF_SRC, src, 1);
        }
        void *ptrs[] = {dy->data, (void *)w, dx->data};
        run(cpu, p, ptrs, NULL);
    }

    prepared_t *p = plan_find(&op->plan, CALL_LINEAR_BWD_WEIGHTS, x);
    if (!p) {
        dnnl_inner_product_desc_t d;
        DNNL_CHECK(dnnl_inner_product_backward_weights_desc_init(&d, &src, &wei, &bias, &dst));
        p = plan_add(cpu, &op->plan, CALL_LINEAR_BWD_WEIGHTS, x, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_SRC, src, 0);
        bind(cpu, p, DNNL_ARG_DIFF_DST, dst, 0);
        bind(cpu, p, DNNL_ARG_DIFF_WEIGHTS, wei, 1);
        bind(cpu, p, DNNL_ARG_DIFF_BIAS, bias, 1);
    }
    void *ptrs[] = {x->data, dy->data, dw, db};
    run(cpu, p, ptrs, NULL);
}

/* ---- loss and optimizer: host arithmetic on host memory ------------------------------------ */

static double cpu_bce_loss(nn_backend_t *be, const float *logits, const float *labels, int n,
                           float *dlogits)
{
    (void)be;
    return nn_host_bce_loss(logits, labels, n, dlogits);
}

static void cpu_adam_step(nn_backend_t *be, const nn_adam_t *hp, int64_t step, float *w,
                          const float *g, float *m, float *v, size_t count)
{
    (void)be;
    nn_host_adam_step(hp, step, w, g, m, v, count);
}

static void cpu_destroy(nn_backend_t *be)
{
    cpu_backend_t *cpu = cpu_of(be);
    free(cpu->arena);
    dnnl_stream_destroy(cpu->stream);
    dnnl_engine_destroy(cpu->engine);
    free(cpu);
}

nn_backend_t *nn_backend_cpu_create(void)
{
    cpu_backend_t *cpu = xcalloc(1, sizeof(*cpu));
    DNNL_CHECK(dnnl_engine_create(&cpu->engine, dnnl_cpu, 0));
    DNNL_CHECK(dnnl_stream_create(&cpu->stream, cpu->engine, dnnl_stream_default_flags));

    nn_backend_t *be = &cpu->base;
    be->name = "cpu";
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->to_host = cpu_copy;
    be->to_device = cpu_copy;
    be->release_plan = cpu_release_plan;
    be->synchronize = cpu_synchronize;
    be->conv_forward = cpu_conv_forward;
    be->conv_backward_data = cpu_conv_backward_data;
    be->conv_backward_weights = cpu_conv_backward_weights;
    be->bnorm_forward_train = cpu_bnorm_forward_train;
    be->bnorm_forward_infer = cpu_bnorm_forward_infer;
    be->bnorm_backward = cpu_bnorm_backward;
    be->relu_forward = cpu_relu_forward;
    be->relu_backward = cpu_relu_backward;
    be->maxpool_forward = cpu_maxpool_forward;
    be->maxpool_backward = cpu_maxpool_backward;
    be->avgpool_forward = cpu_avgpool_forward;
    be->avgpool_backward = cpu_avgpool_backward;
    be->linear_forward = cpu_linear_forward;
    be->linear_backward = cpu_linear_backward;
    be->add = cpu_add;
    be->bce_loss = cpu_bce_loss;
    be->adam_step = cpu_adam_step;
    be->destroy = cpu_destroy;
    return be;
}

nn_backend_t *nn_backend_create(const char *name)
{
    if (strcmp(name, "cpu") == 0)
        return nn_backend_cpu_create();
    return NULL;
}
