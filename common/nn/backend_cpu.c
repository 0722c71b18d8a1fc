/*
 * The CPU backend on oneDNN (C API, version 2.6).
 *
 * Each op keeps, in its plan field, a short list of prepared primitives keyed by what they
 * were built for (kind of call, input shape, layouts, precision). A prepared primitive binds
 * every argument to a memory object in the caller's layout (plain NCHW, or oneDNN's 16-channel
 * blocks for NN_LAYOUT_NATIVE tensors); where the primitive wants another layout or data
 * type (blocked weights, bf16 inputs) the argument also gets an inner memory object and a
 * reorder that runs before (inputs) or after (outputs) the primitive. Inner memory lives in
 * one scratch arena shared by all ops, since it is only alive during one call, except for
 * weights of inference primitives with nn_conv_t.cache_weights: those keep their reordered
 * copy until the weights generation changes (adam_step, to_device, weights_changed) or the
 * batch norm folded into them does.
 * Training changes the weights every step, so its primitives reorder once per call (= once
 * per step) into the arena and hold no second copy of the weights; unless the model keeps a
 * conv's weights in the order the forward and weight-gradient kernels use
 * (conv_set_native_weights): then only the backward data reorders them.
 *
 * Threads: oneDNN uses OpenMP here; OMP_NUM_THREADS sets the count. The plain loops here
 * (Adam, a weight-gradient transpose) run on the same OpenMP team (nn/team.h) with the same
 * arithmetic per element however it is split, so results do not depend on the thread count.
 */
#include "nn/nn.h"

#include "check.h"
#include "exitcodes.h"
#include "nn/math_cuda.h"
#include "nn/team.h"

#include <dnnl.h>
#include <dnnl_debug.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_ARGS 12

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
    dnnl_memory_t user;       /* caller's layout; handle set on every call */
    dnnl_memory_t inner;      /* primitive's layout, or NULL when it is the caller's */
    dnnl_primitive_t reorder; /* user -> inner (input) or inner -> user (output) */
    size_t inner_bytes, inner_offset;
    void *owned;              /* a cached input's inner memory (outside the arena) */
    const void *cached_from;  /* the user pointer and generation the owned copy holds */
    uint64_t cached_generation;
    int blocked_1x1_out; /* an output reordered by blocked_1x1_to_plain */
    dnnl_memory_t scales; /* per output channel factors the input reorder applies, or NULL */
    int shared;          /* a conv backward's dy: converted once for both of its calls */
} bound_arg_t;

/* What a prepared primitive was built for. */
enum {
    CALL_CONV_FWD = 1,
    CALL_CONV_BWD_DATA,
    CALL_CONV_BWD_WEIGHTS,
    CALL_CONV_BN_INFER,
    CALL_BN_TRAIN,
    CALL_BN_INFER,
    CALL_BN_BWD,
    CALL_BN_RELU_TRAIN,
    CALL_BN_RELU_BWD,
    CALL_RELU_FWD,
    CALL_RELU_BWD,
    CALL_POOL_TRAIN,
    CALL_POOL_INFER,
    CALL_POOL_BWD,
    CALL_LINEAR_FWD,
    CALL_LINEAR_BWD_DATA,
    CALL_LINEAR_BWD_WEIGHTS,
    CALL_ADD,
    CALL_TO_HALF,
    CALL_NATIVE_WEIGHTS, /* a marker, not a primitive (conv_is_native) */
};

typedef struct prepared {
    int call, n, c, h, w, extra; /* extra: layouts, precision, fused parts */
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    bound_arg_t args[MAX_ARGS];
    int nargs;
    size_t inner_total;      /* bytes of scratch arena the inner memories need */
    dnnl_memory_t workspace; /* owned, kept between a forward and its backward */
    const void *owner;       /* the op whose plan list holds it */
    float *aux;              /* owned per-channel values (inference's folded batch norm) */
    struct prepared *next;
} prepared_t;

typedef struct {
    nn_backend_t base;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    void *arena;
    size_t arena_bytes;
    uint64_t generation; /* of the weights, for cached reorders */
    void *add_plan;      /* prepared adds (add has no op struct) */
    void *half_plan;     /* prepared to_half reorders */

    /*
     * A conv backward's dy reordered (converted to bf16, or into blocks) at the start of the
     * arena by the run before, which the op's other backward call may read instead of
     * reordering again: whether it may still be read (not after a new arena or a released
     * plan), the op and the call kind, the caller's pointer and the layout reordered to, the
     * run that made it.
     */
    uint64_t runs;
    struct {
        int valid, call;
        const void *owner, *from;
        dnnl_memory_desc_t md;
        uint64_t run;
    } converted_dy;
} cpu_backend_t;

static cpu_backend_t *cpu_of(nn_backend_t *be)
{
    return (cpu_backend_t *)be;
}

/* ---- memory ---------------------------------------------------------------------------- */

/*
 * Large blocks come straight from mmap: zero pages that become resident only when written,
 * so slabs a run never touches (gradients in inference) cost no memory. They start on a
 * 2 MiB boundary and ask for transparent huge pages: a 480 px training step streams
 * gigabytes of activations, weights and moments, and with 4 KiB pages the convolutions'
 * strided channel-block reads miss the TLB. A 64-byte header in front of every block says
 * how it was made.
 */
#define ALLOC_HEADER 64
#define ALLOC_MMAP_MIN (1u << 20)
#define HUGE_PAGE ((size_t)2 << 20)

typedef struct {
    size_t total;
    int mapped;
} alloc_header_t;

/* The whole pages a mapped block of `bytes` takes. */
static size_t mapped_bytes(size_t bytes)
{
    return (bytes + 4095) / 4096 * 4096;
}

/* A mapping of at least `bytes` starting on a 2 MiB boundary (the slack is unmapped). */
static char *map_huge_aligned(size_t bytes)
{
    size_t padded = bytes + HUGE_PAGE;
    char *raw = mmap(NULL, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    char *aligned = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    size_t used = mapped_bytes(bytes);
    if (aligned > raw)
        munmap(raw, (size_t)(aligned - raw));
    if (raw + padded > aligned + used)
        munmap(aligned + used, (size_t)(raw + padded - (aligned + used)));
#ifdef MADV_HUGEPAGE
    madvise(aligned, used, MADV_HUGEPAGE); /* only a hint: 4 KiB pages work too */
#endif
    return aligned;
}

static void *cpu_alloc(nn_backend_t *be, size_t bytes)
{
    (void)be;
    size_t total = ALLOC_HEADER + (bytes + 63) / 64 * 64;
    char *base;
    int mapped = total >= ALLOC_MMAP_MIN;
    if (mapped) {
        base = map_huge_aligned(total);
    } else {
        base = aligned_alloc(64, total);
        if (base)
            memset(base, 0, total);
    }
    if (!base)
        die(EXIT_INTERNAL, "out of memory allocating %zu bytes for tensors", bytes);
    alloc_header_t *h = (alloc_header_t *)base;
    h->total = total;
    h->mapped = mapped;
    return base + ALLOC_HEADER;
}

static void cpu_release(nn_backend_t *be, void *p)
{
    (void)be;
    if (!p)
        return;
    char *base = (char *)p - ALLOC_HEADER;
    alloc_header_t *h = (alloc_header_t *)base;
    if (h->mapped)
        munmap(base, mapped_bytes(h->total));
    else
        free(base);
}

static void cpu_copy(nn_backend_t *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memmove(dst, src, bytes);
}

static void cpu_to_device(nn_backend_t *be, void *dst, const void *src, size_t bytes)
{
    cpu_of(be)->generation++; /* may be weights */
    cpu_copy(be, dst, src, bytes);
}

static void cpu_synchronize(nn_backend_t *be)
{
    DNNL_CHECK(dnnl_stream_wait(cpu_of(be)->stream));
}

static void cpu_weights_changed(nn_backend_t *be)
{
    cpu_of(be)->generation++;
}

static void *arena_get(cpu_backend_t *cpu, size_t bytes)
{
    if (bytes > cpu->arena_bytes) {
        cpu_release(&cpu->base, cpu->arena);
        cpu->arena = cpu_alloc(&cpu->base, bytes);
        cpu->arena_bytes = bytes;
        cpu->converted_dy.valid = 0;
    }
    return cpu->arena;
}

/* ---- memory descriptors ---------------------------------------------------------------- */

static dnnl_memory_desc_t md_typed(int ndims, const dnnl_dims_t dims, dnnl_data_type_t dt,
                                   dnnl_format_tag_t tag)
{
    dnnl_memory_desc_t md;
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&md, ndims, dims, dt, tag));
    return md;
}

static dnnl_memory_desc_t md_plain(int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag)
{
    return md_typed(ndims, dims, dnnl_f32, tag);
}

static dnnl_memory_desc_t md_any4(int n, int c, int h, int w, dnnl_data_type_t dt)
{
    dnnl_dims_t dims = {n, c, h, w};
    return md_typed(4, dims, dt, dnnl_format_tag_any);
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

/* Native tensors are in 16-channel blocks (nChw16c) when their channels fill the blocks, so
 * that they take the same bytes as plain ones; otherwise plain. Half ones the same in bf16. */
static int is_blocked(const nn_tensor_t *t)
{
    return t->layout != NN_LAYOUT_NCHW && t->c % 16 == 0;
}

static int is_half(const nn_tensor_t *t)
{
    return t->layout == NN_LAYOUT_NATIVE_HALF;
}

static dnnl_memory_desc_t md_of(const nn_tensor_t *t)
{
    dnnl_dims_t dims = {t->n, t->c, t->h, t->w};
    return md_typed(4, dims, is_half(t) ? dnnl_bf16 : dnnl_f32,
                    is_blocked(t) ? dnnl_nChw16c : dnnl_nchw);
}

/* The layouts of up to three tensors as bits of a plan key (bits 0-2 and 6-8). */
static int layout_bits(const nn_tensor_t *a, const nn_tensor_t *b, const nn_tensor_t *c)
{
    int blocked = (a && is_blocked(a)) | (b && is_blocked(b)) << 1 | (c && is_blocked(c)) << 2;
    int half = (a && is_half(a)) | (b && is_half(b)) << 1 | (c && is_half(c)) << 2;
    return blocked | half << 6;
}

/*
 * The order the fp32 forward and weight-gradient primitives of oneDNN 2.6 (AVX-512) take a
 * conv's weights in (DNNL_VERBOSE on ResNeXt's shapes): 1x1 OIhw16i16o, grouped 3x3
 * gOIhw16i16o (8i8o with 8 channels per group). Only the backward data then reorders them.
 * undef where no such order is fixed (stem, odd channel counts).
 */
static dnnl_format_tag_t native_weights_tag(const nn_conv_t *op)
{
    int per_in = op->in_ch / op->groups, per_out = op->out_ch / op->groups;
    if (op->groups == 1 && op->kernel == 1 && per_in % 16 == 0 && per_out % 16 == 0)
        return dnnl_OIhw16i16o;
    if (op->groups > 1 && per_in % 16 == 0 && per_out % 16 == 0)
        return dnnl_gOIhw16i16o;
    if (op->groups > 1 && per_in == 8 && per_out == 8)
        return dnnl_gOIhw8i8o;
    return dnnl_format_tag_undef;
}

/* How a conv's weights are laid out: left to oneDNN, PyTorch's, or native_weights_tag. */
enum { WEIGHTS_ANY, WEIGHTS_PLAIN, WEIGHTS_NATIVE };

/* Conv weights: oihw, or goihw ([g][out/g][in/g][k][k], same bytes as PyTorch's) if grouped;
 * or any, or native. */
static dnnl_memory_desc_t md_conv_weights(const nn_conv_t *op, int order, dnnl_data_type_t dt)
{
    int g = op->groups, k = op->kernel;
    dnnl_format_tag_t tag = order == WEIGHTS_ANY ? dnnl_format_tag_any
                            : g == 1             ? dnnl_oihw
                                                 : dnnl_goihw;
    if (order == WEIGHTS_NATIVE)
        tag = native_weights_tag(op);
    if (tag == dnnl_format_tag_undef)
        die(EXIT_INTERNAL, "conv %d -> %d (groups %d) has no native weight order", op->in_ch,
            op->out_ch, g);
    if (g == 1) {
        dnnl_dims_t dims = {op->out_ch, op->in_ch, k, k};
        return md_typed(4, dims, dt, tag);
    }
    dnnl_dims_t dims = {g, op->out_ch / g, op->in_ch / g, k, k};
    return md_typed(5, dims, dt, tag);
}

/* ---- prepared primitives ----------------------------------------------------------------- */

static prepared_t *plan_find(void **plan, int call, const nn_tensor_t *x, int extra)
{
    for (prepared_t *p = *plan; p; p = p->next)
        if (p->call == call && p->n == x->n && p->c == x->c && p->h == x->h && p->w == x->w &&
            p->extra == extra)
            return p;
    return NULL;
}

/* A prepared primitive made from pd (which it takes over), added to the plan. */
static prepared_t *plan_push(void **plan, int call, const nn_tensor_t *x, int extra,
                             dnnl_primitive_desc_t pd)
{
    prepared_t *p = xcalloc(1, sizeof(*p));
    p->call = call;
    p->n = x->n;
    p->c = x->c;
    p->h = x->h;
    p->w = x->w;
    p->extra = extra;
    p->owner = plan;
    p->pd = pd;
    DNNL_CHECK(dnnl_primitive_create(&p->prim, p->pd));
    p->next = *plan;
    *plan = p;
    return p;
}

/* Create the primitive for op_desc (with attr, may be NULL) and add it to the plan; NULL when
 * oneDNN has no implementation for it and may_fail is set. */
static prepared_t *plan_try_add(cpu_backend_t *cpu, void **plan, int call, const nn_tensor_t *x,
                                int extra, const void *op_desc, const_dnnl_primitive_attr_t attr,
                                const_dnnl_primitive_desc_t hint, int may_fail)
{
    dnnl_primitive_desc_t pd;
    dnnl_status_t status = dnnl_primitive_desc_create(&pd, op_desc, attr, cpu->engine, hint);
    if (status != dnnl_success && may_fail)
        return NULL;
    DNNL_CHECK(status);
    return plan_push(plan, call, x, extra, pd);
}

static prepared_t *plan_add(cpu_backend_t *cpu, void **plan, int call, const nn_tensor_t *x,
                            int extra, const void *op_desc, const_dnnl_primitive_desc_t hint)
{
    return plan_try_add(cpu, plan, call, x, extra, op_desc, NULL, hint, 0);
}

static int md_is_empty(const dnnl_memory_desc_t *md)
{
    return md == NULL || md->ndims == 0;
}

/*
 * 1x1 weight gradients from OIhw16i16o to PyTorch's oihw. oneDNN 2.6's own reorder for this
 * direction runs at 1.7 GB/s out of cache here (the opposite one at 50): this plain copy,
 * a 16x16 transpose per block, does 13 GB/s on one thread. Every 1x1 conv's weight gradient
 * goes through it once per training step.
 */
typedef struct {
    const float *src;
    float *dst;
    int in; /* in channels */
} blocked_job_t;

/* One 16-wide block of out channels. */
static void blocked_1x1_block(size_t ob, int thread, void *ctx)
{
    (void)thread;
    const blocked_job_t *job = ctx;
    int in_blocks = job->in / 16;
    for (int ib = 0; ib < in_blocks; ib++) {
        const float *block = job->src + (ob * in_blocks + ib) * 256;
        float *dst = job->dst + ob * 16 * job->in + (size_t)ib * 16;
        for (int oi = 0; oi < 16; oi++)
            for (int ii = 0; ii < 16; ii++)
                dst[(size_t)oi * job->in + ii] = block[ii * 16 + oi];
    }
}

static void blocked_1x1_to_plain(const dnnl_memory_desc_t *md, const float *src, float *dst)
{
    blocked_job_t job = {src, dst, (int)md->dims[1]};
    nn_team_for(nn_team_threads(), (size_t)md->dims[0] / 16, blocked_1x1_block, &job);
}

/* Whether prim (to) and user (from) are 1x1 fp32 weights in OIhw16i16o and oihw. */
static int is_blocked_1x1_pair(const dnnl_memory_desc_t *prim, const dnnl_memory_desc_t *user)
{
    if (prim->ndims != 4 || prim->dims[2] != 1 || prim->dims[3] != 1 ||
        prim->data_type != dnnl_f32 || prim->dims[0] % 16 || prim->dims[1] % 16)
        return 0;
    dnnl_memory_desc_t blocked, plain;
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&blocked, 4, prim->dims, dnnl_f32,
                                            dnnl_OIhw16i16o));
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&plain, 4, prim->dims, dnnl_f32, dnnl_oihw));
    return dnnl_memory_desc_equal(prim, &blocked) && dnnl_memory_desc_equal(user, &plain);
}

/*
 * Bind an argument given in the caller's layout user_md; adds a reorder when needed. cached:
 * an input whose reordered copy may be kept between calls (weights of inference primitives).
 * scale_mask: an input whose reorder also multiplies it by scales (one per index of the
 * dimensions in the mask, read at each reorder), so always reordered, even into its layout.
 */
static void bind_arg_scaled(cpu_backend_t *cpu, prepared_t *p, int arg,
                            dnnl_memory_desc_t user_md, int is_output, int cached,
                            int scale_mask, float *scales)
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
    if (dnnl_memory_desc_equal(prim_md, &user_md) && !scale_mask)
        return;

    DNNL_CHECK(dnnl_memory_create(&b->inner, prim_md, cpu->engine, DNNL_MEMORY_NONE));
    b->inner_bytes = (dnnl_memory_desc_get_size(prim_md) + 63) / 64 * 64;
    if (cached && !is_output) {
        b->owned = cpu_alloc(&cpu->base, b->inner_bytes);
    } else {
        b->inner_offset = p->inner_total;
        p->inner_total += b->inner_bytes;
    }

    dnnl_primitive_desc_t reorder_pd;
    dnnl_primitive_attr_t attr = NULL;
    const dnnl_memory_desc_t *from = is_output ? prim_md : &user_md;
    const dnnl_memory_desc_t *to = is_output ? &user_md : prim_md;
    if (scale_mask) {
        if (is_output)
            die(EXIT_INTERNAL, "only an input's reorder takes scales");
        const float runtime = DNNL_RUNTIME_F32_VAL;
        dnnl_dim_t count = 1;
        for (int d = 0; d < prim_md->ndims; d++)
            if (scale_mask >> d & 1)
                count *= prim_md->dims[d];
        dnnl_dims_t dims = {count};
        dnnl_memory_desc_t scales_md;
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(&scales_md, 1, dims, dnnl_f32, dnnl_a));
        DNNL_CHECK(dnnl_memory_create(&b->scales, &scales_md, cpu->engine, scales));
        DNNL_CHECK(dnnl_primitive_attr_create(&attr));
        DNNL_CHECK(dnnl_primitive_attr_set_output_scales(attr, 1, scale_mask, &runtime));
    }
    DNNL_CHECK(dnnl_reorder_primitive_desc_create(&reorder_pd, from, cpu->engine, to,
                                                  cpu->engine, attr));
    DNNL_CHECK(dnnl_primitive_create(&b->reorder, reorder_pd));
    DNNL_CHECK(dnnl_primitive_desc_destroy(reorder_pd));
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    b->blocked_1x1_out = is_output && is_blocked_1x1_pair(prim_md, &user_md);
}

static void bind_arg(cpu_backend_t *cpu, prepared_t *p, int arg, dnnl_memory_desc_t user_md,
                     int is_output, int cached)
{
    bind_arg_scaled(cpu, p, arg, user_md, is_output, cached, 0, NULL);
}

static void bind(cpu_backend_t *cpu, prepared_t *p, int arg, dnnl_memory_desc_t user_md,
                 int is_output)
{
    bind_arg(cpu, p, arg, user_md, is_output, 0);
}

/* The argument bound as arg (DNNL_ARG_*). */
static bound_arg_t *bound_arg(prepared_t *p, int arg)
{
    for (int i = 0; i < p->nargs; i++)
        if (p->args[i].arg == arg)
            return &p->args[i];
    die(EXIT_INTERNAL, "oneDNN argument %d was never bound", arg);
}

/* The primitive's workspace (max pool, fused batch norm + relu), owned by the forward. */
static void bind_workspace(cpu_backend_t *cpu, prepared_t *p)
{
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

/* An input argument's reorder into the primitive's layout, with its scales if it has any. */
static void reorder_input(cpu_backend_t *cpu, const bound_arg_t *b)
{
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, b->user}, {DNNL_ARG_TO, b->inner},
                               {DNNL_ARG_ATTR_OUTPUT_SCALES, b->scales}};
    DNNL_CHECK(dnnl_primitive_execute(b->reorder, cpu->stream, b->scales ? 3 : 2, args));
}

/*
 * A conv backward's dy, bound first so that its conversion starts the arena in both calls:
 * the one that runs second reads the first one's copy when nothing ran between them and the
 * layouts agree (in mixed precision: one conversion to bf16 of each dy instead of two).
 */
static void bind_shared_dy(cpu_backend_t *cpu, prepared_t *p, const nn_tensor_t *dy)
{
    if (p->nargs != 0)
        die(EXIT_INTERNAL, "a conv backward's dy is bound first");
    bind(cpu, p, DNNL_ARG_DIFF_DST, md_of(dy), 0);
    p->args[0].shared = 1;
}

/*
 * The shared argument b (bind_shared_dy) from `from` into the arena: read as the other
 * backward call of the same op left it in the run just before, once; else reordered, and
 * left for that other call.
 */
static void share_dy(cpu_backend_t *cpu, const prepared_t *p, const bound_arg_t *b,
                     const void *from)
{
    const dnnl_memory_desc_t *md;
    DNNL_CHECK(dnnl_memory_get_memory_desc(b->inner, &md));
    int there = cpu->converted_dy.valid && cpu->converted_dy.owner == p->owner &&
                cpu->converted_dy.call != p->call && cpu->converted_dy.from == from &&
                cpu->converted_dy.run + 1 == cpu->runs &&
                dnnl_memory_desc_equal(md, &cpu->converted_dy.md);
    if (there) {
        cpu->converted_dy.valid = 0;
        return;
    }
    run_reorder(cpu, b->reorder, b->user, b->inner);
    cpu->converted_dy.valid = 1;
    cpu->converted_dy.call = p->call;
    cpu->converted_dy.owner = p->owner;
    cpu->converted_dy.from = from;
    cpu->converted_dy.md = *md;
    cpu->converted_dy.run = cpu->runs;
}

/* Run with the callers' pointers, one per bound argument in bind order. */
static void run(cpu_backend_t *cpu, prepared_t *p, void *const *ptrs, dnnl_memory_t workspace)
{
    char *arena = p->inner_total ? arena_get(cpu, p->inner_total) : NULL;
    dnnl_exec_arg_t args[MAX_ARGS + 1];
    int nargs = 0;
    cpu->runs++;

    for (int i = 0; i < p->nargs; i++) {
        bound_arg_t *b = &p->args[i];
        DNNL_CHECK(dnnl_memory_set_data_handle(b->user, ptrs[i]));
        if (b->owned) {
            /* A cached copy: reorder only when the weights are not the ones it holds. */
            if (b->cached_from != ptrs[i] || b->cached_generation != cpu->generation) {
                DNNL_CHECK(dnnl_memory_set_data_handle(b->inner, b->owned));
                reorder_input(cpu, b);
                b->cached_from = ptrs[i];
                b->cached_generation = cpu->generation;
            }
        } else if (b->inner) {
            DNNL_CHECK(dnnl_memory_set_data_handle(b->inner, arena + b->inner_offset));
            if (b->shared)
                share_dy(cpu, p, b, ptrs[i]);
            else if (!b->is_output)
                reorder_input(cpu, b);
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
        if (b->blocked_1x1_out) {
            const dnnl_memory_desc_t *md;
            DNNL_CHECK(dnnl_memory_get_memory_desc(b->inner, &md));
            DNNL_CHECK(dnnl_stream_wait(cpu->stream));
            blocked_1x1_to_plain(md, (const float *)(arena + b->inner_offset), ptrs[i]);
        } else if (b->inner && b->is_output) {
            run_reorder(cpu, b->reorder, b->inner, b->user);
        }
    }
    DNNL_CHECK(dnnl_stream_wait(cpu->stream));
}

static void cpu_release_plan(nn_backend_t *be, void **plan)
{
    cpu_of(be)->converted_dy.valid = 0; /* a new op may take the old one's address */
    prepared_t *p = *plan;
    while (p) {
        prepared_t *next = p->next;
        for (int i = 0; i < p->nargs; i++) {
            dnnl_memory_destroy(p->args[i].user);
            if (p->args[i].inner) {
                dnnl_memory_destroy(p->args[i].inner);
                dnnl_primitive_destroy(p->args[i].reorder);
            }
            if (p->args[i].scales)
                dnnl_memory_destroy(p->args[i].scales);
            cpu_release(be, p->args[i].owned);
        }
        if (p->workspace)
            dnnl_memory_destroy(p->workspace);
        free(p->aux);
        if (p->prim) { /* not for a marker */
            dnnl_primitive_destroy(p->prim);
            dnnl_primitive_desc_destroy(p->pd);
        }
        free(p);
        p = next;
    }
    *plan = NULL;
}

/* One reorder with a primitive made for it (conversions outside the training loop). */
static void reorder_once(cpu_backend_t *cpu, const dnnl_memory_desc_t *from_md,
                         const void *src, const dnnl_memory_desc_t *to_md, void *dst)
{
    dnnl_memory_t from, to;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t reorder;
    DNNL_CHECK(dnnl_memory_create(&from, from_md, cpu->engine, (void *)src));
    DNNL_CHECK(dnnl_memory_create(&to, to_md, cpu->engine, dst));
    DNNL_CHECK(dnnl_reorder_primitive_desc_create(&pd, from_md, cpu->engine, to_md,
                                                  cpu->engine, NULL));
    DNNL_CHECK(dnnl_primitive_create(&reorder, pd));
    run_reorder(cpu, reorder, from, to);
    DNNL_CHECK(dnnl_stream_wait(cpu->stream));
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(pd);
    dnnl_memory_destroy(from);
    dnnl_memory_destroy(to);
}

/* A tensor in any layout copied into plain NCHW order. */
static void cpu_to_plain(nn_backend_t *be, const nn_tensor_t *src, float *dst)
{
    cpu_backend_t *cpu = cpu_of(be);
    if (!is_blocked(src) && !is_half(src)) {
        cpu_copy(be, dst, src->data, nn_numel(src) * sizeof(float));
        return;
    }
    nn_tensor_t plain = *src;
    plain.layout = NN_LAYOUT_NCHW;
    dnnl_memory_desc_t from_md = md_of(src), to_md = md_of(&plain);
    reorder_once(cpu, &from_md, src->data, &to_md, dst);
}

static void cpu_to_half(nn_backend_t *be, const nn_tensor_t *src, nn_tensor_t *dst)
{
    if (src->layout != NN_LAYOUT_NATIVE || !is_half(dst) || src->n != dst->n ||
        src->c != dst->c || src->h != dst->h || src->w != dst->w)
        die(EXIT_INTERNAL, "to_half takes a native fp32 tensor and a half one of its shape");
    cpu_backend_t *cpu = cpu_of(be);
    prepared_t *p = plan_find(&cpu->half_plan, CALL_TO_HALF, src, 0);
    if (!p) {
        dnnl_memory_desc_t from_md = md_of(src), to_md = md_of(dst);
        dnnl_primitive_desc_t pd;
        DNNL_CHECK(dnnl_reorder_primitive_desc_create(&pd, &from_md, cpu->engine, &to_md,
                                                      cpu->engine, NULL));
        p = plan_push(&cpu->half_plan, CALL_TO_HALF, src, 0, pd);
        bind(cpu, p, DNNL_ARG_FROM, from_md, 0);
        bind(cpu, p, DNNL_ARG_TO, to_md, 1);
    }
    void *ptrs[] = {src->data, dst->data};
    run(cpu, p, ptrs, NULL);
}

/* ---- convolution --------------------------------------------------------------------------- */

/*
 * A conv whose weights are in native order says so by a marker entry in its plan (ops have
 * no field for it); plan_find never matches the marker, and release_plan removes it.
 */
static int conv_is_native(const nn_conv_t *op)
{
    for (const prepared_t *p = op->plan; p; p = p->next)
        if (p->call == CALL_NATIVE_WEIGHTS)
            return 1;
    return 0;
}

/* The weights as the caller holds them (fp32 whatever the precision). */
static dnnl_memory_desc_t user_weights_md(const nn_conv_t *op)
{
    return md_conv_weights(op, conv_is_native(op) ? WEIGHTS_NATIVE : WEIGHTS_PLAIN, dnnl_f32);
}

static int cpu_conv_set_native_weights(nn_backend_t *be, nn_conv_t *op, int on)
{
    if (native_weights_tag(op) == dnnl_format_tag_undef)
        return 0;
    cpu_release_plan(be, &op->plan); /* its primitives take the other order */
    if (on) {
        prepared_t *marker = xcalloc(1, sizeof(*marker));
        marker->call = CALL_NATIVE_WEIGHTS;
        op->plan = marker;
    }
    return 1;
}

static void cpu_conv_weights_convert(nn_backend_t *be, const nn_conv_t *op, const float *src,
                                     float *dst, int to_native)
{
    cpu_backend_t *cpu = cpu_of(be);
    dnnl_memory_desc_t plain_md = md_conv_weights(op, WEIGHTS_PLAIN, dnnl_f32);
    dnnl_memory_desc_t native_md = md_conv_weights(op, WEIGHTS_NATIVE, dnnl_f32);
    if (to_native)
        reorder_once(cpu, &plain_md, src, &native_md, dst);
    else
        reorder_once(cpu, &native_md, src, &plain_md, dst);
}

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

/* The data type of a convolution's products: bf16 inputs and weights in mixed precision. */
static dnnl_data_type_t conv_dt(const nn_conv_t *op)
{
    return op->precision == NN_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
}

/*
 * The forward descriptor; x is the input shape, bias whether there is one. Layouts are left
 * to oneDNN (the caller's are reached by reorders where they differ), except for half tensors
 * (y: the output, or NULL) and the fp32 blocked ones of inference, which go in and out as
 * they are: oneDNN 2.6's kernels run 16-channel blocks at their full rate here, but for
 * grouped convolutions of 8 channels a group (which get their 8-channel blocks by a reorder).
 * Left to itself, the fp32 inference forward would pick NHWC for most shapes, at the cost of
 * two activation reorders a call. Other outputs are fp32 whatever the precision: oneDNN sums
 * in fp32 and rounds bf16 products' sums only if asked to. Right padding makes PyTorch's
 * floor rule.
 */
static dnnl_convolution_desc_t conv_desc_forward(const nn_conv_t *op, const nn_tensor_t *x,
                                                 dnnl_prop_kind_t prop, dnnl_data_type_t dt,
                                                 const nn_tensor_t *y, int bias)
{
    int oh = out_size(x->h, op->kernel, op->stride, op->pad);
    int ow = out_size(x->w, op->kernel, op->stride, op->pad);
    dnnl_dims_t strides = {op->stride, op->stride}, pad_l = {op->pad, op->pad};
    dnnl_dims_t pad_r = {(oh - 1) * op->stride + op->kernel - x->h - op->pad,
                         (ow - 1) * op->stride + op->kernel - x->w - op->pad};
    dnnl_memory_desc_t src = md_any4(x->n, op->in_ch, x->h, x->w, dt);
    dnnl_memory_desc_t dst = md_any4(x->n, op->out_ch, oh, ow, dnnl_f32);
    int sixteens = op->in_ch / op->groups % 16 == 0 && op->out_ch / op->groups % 16 == 0;
    int fp32_infer = prop == dnnl_forward_inference && dt == dnnl_f32 && sixteens;
    if (sixteens && is_half(x) && dt == dnnl_bf16)
        src = md_of(x);
    if (fp32_infer && is_blocked(x) && !is_half(x))
        src = md_of(x);
    if (y && is_half(y))
        dst = sixteens ? md_of(y) : md_any4(x->n, op->out_ch, oh, ow, dnnl_bf16);
    else if (y && fp32_infer && is_blocked(y))
        dst = md_of(y);
    dnnl_memory_desc_t wei = md_conv_weights(op, WEIGHTS_ANY, dt), bias_md = md_vec(op->out_ch);
    dnnl_convolution_desc_t d;
    DNNL_CHECK(dnnl_convolution_forward_desc_init(&d, prop, dnnl_convolution_direct, &src, &wei,
                                                  bias ? &bias_md : NULL, &dst, strides, pad_l,
                                                  pad_r));
    return d;
}

/* Plan key bits beyond the shape: the layouts of three tensors and the precision. */
static int conv_key(const nn_conv_t *op, const nn_tensor_t *a, const nn_tensor_t *b,
                    const nn_tensor_t *c)
{
    return layout_bits(a, b, c) | (op->precision == NN_PRECISION_BF16) << 3;
}

/* The training forward, also the hint of the backward ones; y gives the output layout. */
static prepared_t *conv_forward_prepared(cpu_backend_t *cpu, nn_conv_t *op, const nn_tensor_t *x,
                                         const nn_tensor_t *y)
{
    int key = conv_key(op, x, y, NULL);
    prepared_t *p = plan_find(&op->plan, CALL_CONV_FWD, x, key);
    if (p)
        return p;
    dnnl_convolution_desc_t d =
        conv_desc_forward(op, x, dnnl_forward_training, conv_dt(op), NULL, 0);
    p = plan_add(cpu, &op->plan, CALL_CONV_FWD, x, key, &d, NULL);
    bind(cpu, p, DNNL_ARG_SRC, md_of(x), 0);
    bind(cpu, p, DNNL_ARG_WEIGHTS, user_weights_md(op), 0);
    bind(cpu, p, DNNL_ARG_DST, md_of(y), 1);
    return p;
}

static nn_tensor_t conv_output_like(const nn_conv_t *op, const nn_tensor_t *x, int layout)
{
    nn_tensor_t y = {NULL, x->n, op->out_ch, out_size(x->h, op->kernel, op->stride, op->pad),
                     out_size(x->w, op->kernel, op->stride, op->pad), layout};
    return y;
}

static void cpu_conv_forward(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x,
                             const float *w, nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    nn_tensor_t shape = conv_output_like(op, x, y->layout);
    check_shape("conv input", x, x->n, op->in_ch, x->h, x->w);
    check_shape("conv output", y, shape.n, shape.c, shape.h, shape.w);
    if (is_half(y) || (is_half(x) && op->precision != NN_PRECISION_BF16))
        die(EXIT_INTERNAL, "conv forward in training: a half input needs a bf16 conv, and "
                           "the output is never half");
    prepared_t *p = conv_forward_prepared(cpu, op, x, y);
    void *ptrs[] = {x->data, (void *)w, y->data};
    run(cpu, p, ptrs, NULL);
}

static void cpu_conv_backward_data(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *dy,
                                   const float *w, nn_tensor_t *dx)
{
    cpu_backend_t *cpu = cpu_of(be);
    nn_tensor_t x = *dx;
    x.c = op->in_ch;
    check_shape("conv output gradient", dy, x.n, op->out_ch,
                out_size(x.h, op->kernel, op->stride, op->pad),
                out_size(x.w, op->kernel, op->stride, op->pad));
    int key = conv_key(op, dy, dx, NULL);
    prepared_t *p = plan_find(&op->plan, CALL_CONV_BWD_DATA, &x, key);
    if (!p) {
        /* The forward's descriptor as the hint (the forward itself may read a half input,
         * a plan of its own that this one need not match). */
        dnnl_data_type_t dt = conv_dt(op);
        dnnl_convolution_desc_t f = conv_desc_forward(op, &x, dnnl_forward_training, dt, NULL, 0);
        dnnl_primitive_desc_t hint;
        DNNL_CHECK(dnnl_primitive_desc_create(&hint, &f, NULL, cpu->engine, NULL));
        dnnl_memory_desc_t diff_src = md_any4(x.n, x.c, x.h, x.w, dnnl_f32);
        dnnl_memory_desc_t diff_dst = md_any4(dy->n, dy->c, dy->h, dy->w, dt);
        dnnl_convolution_desc_t d;
        DNNL_CHECK(dnnl_convolution_backward_data_desc_init(
            &d, dnnl_convolution_direct, &diff_src, &f.weights_desc, &diff_dst, f.strides,
            f.padding[0], f.padding[1]));
        p = plan_add(cpu, &op->plan, CALL_CONV_BWD_DATA, &x, key, &d, hint);
        DNNL_CHECK(dnnl_primitive_desc_destroy(hint));
        bind_shared_dy(cpu, p, dy);
        bind(cpu, p, DNNL_ARG_WEIGHTS, user_weights_md(op), 0);
        bind(cpu, p, DNNL_ARG_DIFF_SRC, md_of(dx), 1);
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
    int key = conv_key(op, x, dy, NULL);
    prepared_t *p = plan_find(&op->plan, CALL_CONV_BWD_WEIGHTS, x, key);
    if (!p) {
        prepared_t *fwd = conv_forward_prepared(cpu, op, x, dy);
        dnnl_data_type_t dt = conv_dt(op);
        dnnl_convolution_desc_t f = conv_desc_forward(op, x, dnnl_forward_training, dt, NULL, 0);
        dnnl_memory_desc_t diff_dst = md_any4(dy->n, dy->c, dy->h, dy->w, dt);
        dnnl_memory_desc_t diff_w = md_conv_weights(op, WEIGHTS_ANY, dnnl_f32);
        dnnl_convolution_desc_t d;
        DNNL_CHECK(dnnl_convolution_backward_weights_desc_init(
            &d, dnnl_convolution_direct, &f.src_desc, &diff_w, NULL, &diff_dst, f.strides,
            f.padding[0], f.padding[1]));
        p = plan_add(cpu, &op->plan, CALL_CONV_BWD_WEIGHTS, x, key, &d, fwd->pd);
        bind_shared_dy(cpu, p, dy);
        bind(cpu, p, DNNL_ARG_SRC, md_of(x), 0);
        bind(cpu, p, DNNL_ARG_DIFF_WEIGHTS, user_weights_md(op), 1);
    }
    void *ptrs[] = {dy->data, x->data, dw};
    run(cpu, p, ptrs, NULL);
}

/*
 * Inference: convolution, batch norm with the running statistics, the residual and the relu
 * in one oneDNN convolution, the output written once. The batch norm is folded: its
 * per-channel scale into the weights by the reorder into the kernel's layout (a copy, for
 * weights already in it: native order uncached) and its shift into the convolution's bias; a
 * per-channel multiply and add as post-ops added up to 55% to a convolution's time (stage 1's
 * grouped ones: 2.23 ms a call against 1.44). Weights are cached when op->cache_weights is
 * set, and folded again when the weights or the scale change.
 */
enum { FUSED_RESIDUAL = 1 << 4, FUSED_RELU = 1 << 5 };

/* The inference convolution d with its post-ops: + residual (res_md, or none), relu. */
static dnnl_primitive_desc_t conv_infer_pd(cpu_backend_t *cpu,
                                           const dnnl_convolution_desc_t *d,
                                           const dnnl_memory_desc_t *res_md, int relu)
{
    dnnl_post_ops_t ops;
    dnnl_primitive_attr_t attr;
    dnnl_primitive_desc_t pd;
    DNNL_CHECK(dnnl_post_ops_create(&ops));
    if (res_md)
        DNNL_CHECK(dnnl_post_ops_append_binary(ops, dnnl_binary_add, res_md));
    if (relu)
        DNNL_CHECK(dnnl_post_ops_append_eltwise(ops, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
    DNNL_CHECK(dnnl_primitive_attr_create(&attr));
    DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, ops));
    DNNL_CHECK(dnnl_primitive_desc_create(&pd, d, attr, cpu->engine, NULL));
    dnnl_primitive_attr_destroy(attr);
    dnnl_post_ops_destroy(ops);
    return pd;
}

static void cpu_conv_bn_forward_infer(nn_backend_t *be, nn_conv_t *op, const nn_bnorm_t *bn,
                                      const nn_tensor_t *x, const float *w, const float *gamma,
                                      const float *beta, const float *running_mean,
                                      const float *running_var, const nn_tensor_t *residual,
                                      int relu, nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    nn_tensor_t shape = conv_output_like(op, x, y->layout);
    check_shape("conv input", x, x->n, op->in_ch, x->h, x->w);
    check_shape("conv output", y, shape.n, shape.c, shape.h, shape.w);
    if (bn->ch != op->out_ch)
        die(EXIT_INTERNAL, "batch norm of %d channels after a conv of %d", bn->ch, op->out_ch);
    if (residual)
        check_shape("residual", residual, y->n, y->c, y->h, y->w);
    if (is_half(y) && conv_dt(op) != dnnl_bf16)
        die(EXIT_INTERNAL, "conv %d -> %d writes a 16-bit output only with bf16 products",
            op->in_ch, op->out_ch);
    int key = conv_key(op, x, y, residual) | (residual ? FUSED_RESIDUAL : 0) |
              (relu ? FUSED_RELU : 0);
    prepared_t *p = plan_find(&op->plan, CALL_CONV_BN_INFER, x, key);
    if (!p) {
        dnnl_convolution_desc_t d = conv_desc_forward(op, x, dnnl_forward_inference,
                                                      conv_dt(op), y, 1);
        dnnl_memory_desc_t res_md = residual ? md_of(residual) : (dnnl_memory_desc_t){0};
        dnnl_primitive_desc_t pd = conv_infer_pd(cpu, &d, residual ? &res_md : NULL, relu);

        /* The residual in the output's layout where oneDNN chose another (it misreads one
         * in a layout of its own in bf16: the 8-channel blocks of small groups). */
        const dnnl_memory_desc_t *dst_md = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md,
                                                                         0);
        if (residual && !dnnl_memory_desc_equal(dst_md, &res_md)) {
            res_md = *dst_md;
            res_md.data_type = dnnl_f32;
            dnnl_primitive_desc_destroy(pd);
            pd = conv_infer_pd(cpu, &d, &res_md, relu);
        }
        p = plan_push(&op->plan, CALL_CONV_BN_INFER, x, key, pd);

        /* aux: the scale the weights are folded with, the shift. No copy is folded yet. */
        p->aux = xcalloc(2 * (size_t)op->out_ch, sizeof(float));
        int out_dims = op->groups > 1 ? (1 << 0) | (1 << 1) : 1 << 0; /* [g][o/g] or [o] */
        bind(cpu, p, DNNL_ARG_SRC, md_of(x), 0);
        bind_arg_scaled(cpu, p, DNNL_ARG_WEIGHTS, user_weights_md(op), 0, op->cache_weights,
                        out_dims, p->aux);
        bind(cpu, p, DNNL_ARG_BIAS, md_vec(op->out_ch), 0);
        if (residual)
            bind(cpu, p, DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, md_of(residual), 0);
        bind(cpu, p, DNNL_ARG_DST, md_of(y), 1);
    }

    /* y = gamma (conv - mean) / sqrt(var + eps) + beta = conv(x, scale w) + shift. */
    float *scale = p->aux, *shift = p->aux + op->out_ch;
    int new_scale = 0;
    for (int c = 0; c < op->out_ch; c++) {
        float now = gamma[c] / sqrtf(running_var[c] + bn->eps);
        new_scale |= memcmp(&now, &scale[c], sizeof now) != 0;
        scale[c] = now;
        shift[c] = beta[c] - running_mean[c] * now;
    }
    if (new_scale) /* a cached copy was folded with another scale */
        bound_arg(p, DNNL_ARG_WEIGHTS)->cached_from = NULL;
    void *ptrs[5] = {x->data, (void *)w, shift};
    int k = 3;
    if (residual)
        ptrs[k++] = residual->data;
    ptrs[k] = y->data;
    run(cpu, p, ptrs, NULL);
}

/* ---- batch norm ---------------------------------------------------------------------------- */

static const unsigned BN_AFFINE = dnnl_use_scale | dnnl_use_shift;

/* Training forward (relu: fused, with a workspace for the backward). */
static prepared_t *bn_train_prepared(cpu_backend_t *cpu, nn_bnorm_t *op, const nn_tensor_t *x,
                                     const nn_tensor_t *y, int relu)
{
    int call = relu ? CALL_BN_RELU_TRAIN : CALL_BN_TRAIN, key = layout_bits(x, y, NULL);
    prepared_t *p = plan_find(&op->plan, call, x, key);
    if (p)
        return p;
    dnnl_memory_desc_t data = md_of(x), vec = md_vec(x->c);
    dnnl_batch_normalization_desc_t d;
    DNNL_CHECK(dnnl_batch_normalization_forward_desc_init(
        &d, dnnl_forward_training, &data, op->eps, BN_AFFINE | (relu ? dnnl_fuse_norm_relu : 0)));
    p = plan_add(cpu, &op->plan, call, x, key, &d, NULL);
    bind(cpu, p, DNNL_ARG_SRC, data, 0);
    bind(cpu, p, DNNL_ARG_SCALE, vec, 0);
    bind(cpu, p, DNNL_ARG_SHIFT, vec, 0);
    bind(cpu, p, DNNL_ARG_DST, md_of(y), 1);
    bind(cpu, p, DNNL_ARG_MEAN, vec, 1);
    bind(cpu, p, DNNL_ARG_VARIANCE, vec, 1);
    if (relu)
        bind_workspace(cpu, p);
    return p;
}

static void bn_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                             const float *gamma, const float *beta, float *running_mean,
                             float *running_var, float *save_mean, float *save_var,
                             nn_tensor_t *y, int relu)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("batch norm input", x, x->n, op->ch, x->h, x->w);
    check_shape("batch norm output", y, x->n, op->ch, x->h, x->w);
    double count = (double)x->n * x->h * x->w;
    if (count < 2)
        die(EXIT_INTERNAL, "batch norm in training needs more than 1 value per channel");

    prepared_t *p = bn_train_prepared(cpu, op, x, y, relu);
    void *ptrs[] = {x->data, (void *)gamma, (void *)beta, y->data, save_mean, save_var};
    run(cpu, p, ptrs, p->workspace);

    /* Running statistics as PyTorch keeps them: the variance unbiased. */
    float keep = 1.0f - op->momentum, unbias = (float)(count / (count - 1));
    for (int c = 0; c < op->ch; c++) {
        running_mean[c] = keep * running_mean[c] + op->momentum * save_mean[c];
        running_var[c] = keep * running_var[c] + op->momentum * (save_var[c] * unbias);
    }
}

static void cpu_bnorm_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                    const float *gamma, const float *beta, float *running_mean,
                                    float *running_var, float *save_mean, float *save_var,
                                    nn_tensor_t *y)
{
    bn_forward_train(be, op, x, gamma, beta, running_mean, running_var, save_mean, save_var, y,
                     0);
}

static void cpu_bnorm_relu_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                         const float *gamma, const float *beta,
                                         float *running_mean, float *running_var,
                                         float *save_mean, float *save_var, nn_tensor_t *y)
{
    bn_forward_train(be, op, x, gamma, beta, running_mean, running_var, save_mean, save_var, y,
                     1);
}

static void cpu_bnorm_forward_infer(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                    const float *gamma, const float *beta,
                                    const float *running_mean, const float *running_var,
                                    nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("batch norm input", x, x->n, op->ch, x->h, x->w);
    check_shape("batch norm output", y, x->n, op->ch, x->h, x->w);
    int key = layout_bits(x, y, NULL);
    prepared_t *p = plan_find(&op->plan, CALL_BN_INFER, x, key);
    if (!p) {
        dnnl_memory_desc_t data = md_of(x), vec = md_vec(x->c);
        dnnl_batch_normalization_desc_t d;
        DNNL_CHECK(dnnl_batch_normalization_forward_desc_init(
            &d, dnnl_forward_inference, &data, op->eps, BN_AFFINE | dnnl_use_global_stats));
        p = plan_add(cpu, &op->plan, CALL_BN_INFER, x, key, &d, NULL);
        bind(cpu, p, DNNL_ARG_SRC, data, 0);
        bind(cpu, p, DNNL_ARG_SCALE, vec, 0);
        bind(cpu, p, DNNL_ARG_SHIFT, vec, 0);
        bind(cpu, p, DNNL_ARG_MEAN, vec, 0);
        bind(cpu, p, DNNL_ARG_VARIANCE, vec, 0);
        bind(cpu, p, DNNL_ARG_DST, md_of(y), 1);
    }
    void *ptrs[] = {x->data, (void *)gamma, (void *)beta, (void *)running_mean,
                    (void *)running_var, y->data};
    run(cpu, p, ptrs, NULL);
}

static void bn_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                        const nn_tensor_t *dy, const float *gamma, const float *save_mean,
                        const float *save_var, nn_tensor_t *dx, float *dgamma, float *dbeta,
                        int relu)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("batch norm output gradient", dy, x->n, op->ch, x->h, x->w);
    check_shape("batch norm input gradient", dx, x->n, op->ch, x->h, x->w);
    int call = relu ? CALL_BN_RELU_BWD : CALL_BN_BWD, key = layout_bits(x, dy, dx);
    prepared_t *fwd = bn_train_prepared(cpu, op, x, dy, relu);
    if (relu && !fwd->workspace)
        die(EXIT_INTERNAL, "batch norm + relu backward without a training forward");
    prepared_t *p = plan_find(&op->plan, call, x, key);
    if (!p) {
        dnnl_memory_desc_t data = md_of(x), diff = md_of(dy), vec = md_vec(x->c);
        dnnl_batch_normalization_desc_t d;
        DNNL_CHECK(dnnl_batch_normalization_backward_desc_init(
            &d, dnnl_backward, &diff, &data, op->eps,
            BN_AFFINE | (relu ? dnnl_fuse_norm_relu : 0)));
        p = plan_add(cpu, &op->plan, call, x, key, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_SRC, data, 0);
        bind(cpu, p, DNNL_ARG_DIFF_DST, diff, 0);
        bind(cpu, p, DNNL_ARG_SCALE, vec, 0);
        bind(cpu, p, DNNL_ARG_SHIFT, vec, 0); /* oneDNN 2.6 asks for it, unused */
        bind(cpu, p, DNNL_ARG_MEAN, vec, 0);
        bind(cpu, p, DNNL_ARG_VARIANCE, vec, 0);
        bind(cpu, p, DNNL_ARG_DIFF_SRC, md_of(dx), 1);
        bind(cpu, p, DNNL_ARG_DIFF_SCALE, vec, 1);
        bind(cpu, p, DNNL_ARG_DIFF_SHIFT, vec, 1);
    }
    void *ptrs[] = {x->data,         dy->data, (void *)gamma, (void *)gamma,
                    (void *)save_mean, (void *)save_var, dx->data, dgamma, dbeta};
    run(cpu, p, ptrs, relu ? fwd->workspace : NULL);
}

static void cpu_bnorm_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                               const nn_tensor_t *dy, const float *gamma, const float *save_mean,
                               const float *save_var, nn_tensor_t *dx, float *dgamma,
                               float *dbeta)
{
    bn_backward(be, op, x, dy, gamma, save_mean, save_var, dx, dgamma, dbeta, 0);
}

static void cpu_bnorm_relu_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                    const nn_tensor_t *dy, const float *gamma,
                                    const float *save_mean, const float *save_var,
                                    nn_tensor_t *dx, float *dgamma, float *dbeta)
{
    bn_backward(be, op, x, dy, gamma, save_mean, save_var, dx, dgamma, dbeta, 1);
}

/* ---- relu ---------------------------------------------------------------------------------- */

static const dnnl_alg_kind_t RELU = dnnl_eltwise_relu_use_dst_for_bwd;

static prepared_t *relu_forward_prepared(cpu_backend_t *cpu, nn_relu_t *op, const nn_tensor_t *x,
                                         const nn_tensor_t *y)
{
    int key = layout_bits(x, y, NULL);
    prepared_t *p = plan_find(&op->plan, CALL_RELU_FWD, x, key);
    if (p)
        return p;
    dnnl_memory_desc_t data = md_of(x);
    dnnl_eltwise_desc_t d;
    DNNL_CHECK(dnnl_eltwise_forward_desc_init(&d, dnnl_forward_training, RELU, &data, 0, 0));
    p = plan_add(cpu, &op->plan, CALL_RELU_FWD, x, key, &d, NULL);
    bind(cpu, p, DNNL_ARG_SRC, data, 0);
    bind(cpu, p, DNNL_ARG_DST, md_of(y), 1);
    return p;
}

static void cpu_relu_forward(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *x,
                             nn_tensor_t *y)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("relu output", y, x->n, x->c, x->h, x->w);
    prepared_t *p = relu_forward_prepared(cpu, op, x, y);
    void *ptrs[] = {x->data, y->data};
    run(cpu, p, ptrs, NULL);
}

static void cpu_relu_backward(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *y,
                              const nn_tensor_t *dy, nn_tensor_t *dx)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("relu output gradient", dy, y->n, y->c, y->h, y->w);
    check_shape("relu input gradient", dx, y->n, y->c, y->h, y->w);
    int key = layout_bits(y, dy, dx);
    prepared_t *p = plan_find(&op->plan, CALL_RELU_BWD, y, key);
    if (!p) {
        prepared_t *fwd = relu_forward_prepared(cpu, op, y, y);
        dnnl_memory_desc_t data = md_of(y), diff = md_of(dy);
        dnnl_eltwise_desc_t d;
        DNNL_CHECK(dnnl_eltwise_backward_desc_init(&d, RELU, &diff, &data, 0, 0));
        p = plan_add(cpu, &op->plan, CALL_RELU_BWD, y, key, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_DST, data, 0);
        bind(cpu, p, DNNL_ARG_DIFF_DST, diff, 0);
        bind(cpu, p, DNNL_ARG_DIFF_SRC, md_of(dx), 1);
    }
    void *ptrs[] = {y->data, dy->data, dx->data};
    run(cpu, p, ptrs, NULL);
}

/* ---- max pool ------------------------------------------------------------------------------ */

static dnnl_pooling_v2_desc_t pool_desc(const nn_pool_t *op, const nn_tensor_t *x,
                                        const nn_tensor_t *y, dnnl_prop_kind_t prop)
{
    dnnl_dims_t strides = {op->stride, op->stride}, kernel = {op->kernel, op->kernel};
    dnnl_dims_t dilation = {0, 0}, pad_l = {op->pad, op->pad};
    dnnl_dims_t pad_r = {(y->h - 1) * op->stride + op->kernel - x->h - op->pad,
                         (y->w - 1) * op->stride + op->kernel - x->w - op->pad};
    dnnl_memory_desc_t src = md_of(x), dst = md_of(y);
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
    if (training && (is_half(x) || is_half(y)))
        die(EXIT_INTERNAL, "max pool in training takes no half tensors");
    int call = training ? CALL_POOL_TRAIN : CALL_POOL_INFER, key = layout_bits(x, y, NULL);
    prepared_t *p = plan_find(&op->plan, call, x, key);
    if (!p) {
        dnnl_pooling_v2_desc_t d =
            pool_desc(op, x, y, training ? dnnl_forward_training : dnnl_forward_inference);
        p = plan_add(cpu, &op->plan, call, x, key, &d, NULL);
        bind(cpu, p, DNNL_ARG_SRC, md_of(x), 0);
        bind(cpu, p, DNNL_ARG_DST, md_of(y), 1);
        bind_workspace(cpu, p);
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
    prepared_t *fwd = plan_find(&op->plan, CALL_POOL_TRAIN, x, layout_bits(x, y, NULL));
    if (!fwd || !fwd->workspace)
        die(EXIT_INTERNAL, "max pool backward without a training forward for this shape");
    int key = layout_bits(x, dy, dx);
    prepared_t *p = plan_find(&op->plan, CALL_POOL_BWD, x, key);
    if (!p) {
        dnnl_pooling_v2_desc_t f = pool_desc(op, x, y, dnnl_forward_training);
        dnnl_memory_desc_t diff_src = md_of(dx), diff_dst = md_of(dy);
        dnnl_pooling_v2_desc_t d;
        DNNL_CHECK(dnnl_pooling_v2_backward_desc_init(&d, dnnl_pooling_max, &diff_src,
                                                      &diff_dst, f.strides, f.kernel,
                                                      f.dilation, f.padding[0], f.padding[1]));
        p = plan_add(cpu, &op->plan, CALL_POOL_BWD, x, key, &d, fwd->pd);
        bind(cpu, p, DNNL_ARG_DIFF_DST, diff_dst, 0);
        bind(cpu, p, DNNL_ARG_DIFF_SRC, diff_src, 1);
    }
    void *ptrs[] = {dy->data, dx->data};
    run(cpu, p, ptrs, fwd->workspace);
}

/* ---- global average pool (plain loops over either layout) ------------------------------ */

/* Where channel c of image n starts, and the step between its positions. */
static size_t channel_start(const nn_tensor_t *t, int n, int c, size_t *step)
{
    size_t plane = (size_t)t->h * t->w;
    if (!is_blocked(t)) {
        *step = 1;
        return ((size_t)n * t->c + c) * plane;
    }
    *step = 16;
    return (((size_t)n * (t->c / 16) + c / 16) * plane) * 16 + c % 16;
}

/* Element i of a tensor's storage as fp32 (a half tensor's bf16 is the top of an fp32). */
static inline float stored_value(const nn_tensor_t *t, size_t i)
{
    if (!is_half(t))
        return t->data[i];
    uint32_t bits = (uint32_t)((const uint16_t *)t->data)[i] << 16;
    float value;
    memcpy(&value, &bits, sizeof(value));
    return value;
}

static void cpu_avgpool_forward(nn_backend_t *be, const nn_tensor_t *x, nn_tensor_t *y)
{
    (void)be;
    check_shape("average pool output", y, x->n, x->c, 1, 1);
    if (is_half(y))
        die(EXIT_INTERNAL, "average pool writes fp32 only");
    size_t plane = (size_t)x->h * x->w;
    for (int n = 0; n < x->n; n++) {
        for (int c = 0; c < x->c; c++) {
            size_t step, at = channel_start(x, n, c, &step);
            float sum = 0.0f;
            for (size_t k = 0; k < plane; k++)
                sum += stored_value(x, at + k * step);
            y->data[(size_t)n * x->c + c] = sum / (float)plane; /* 1x1: the same either way */
        }
    }
}

static void cpu_avgpool_backward(nn_backend_t *be, const nn_tensor_t *dy, nn_tensor_t *dx)
{
    (void)be;
    check_shape("average pool output gradient", dy, dx->n, dx->c, 1, 1);
    size_t plane = (size_t)dx->h * dx->w;
    for (int n = 0; n < dx->n; n++) {
        for (int c = 0; c < dx->c; c++) {
            float g = dy->data[(size_t)n * dx->c + c] / (float)plane;
            size_t step, at = channel_start(dx, n, c, &step);
            for (size_t k = 0; k < plane; k++)
                dx->data[at + k * step] = g;
        }
    }
}

/* ---- add (oneDNN binary: threaded, any layout, optionally with relu) ------------------- */

static void add_maybe_relu(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b,
                           nn_tensor_t *y, int relu)
{
    cpu_backend_t *cpu = cpu_of(be);
    check_shape("add operand", b, a->n, a->c, a->h, a->w);
    check_shape("add output", y, a->n, a->c, a->h, a->w);
    int key = layout_bits(a, b, y) | (relu ? FUSED_RELU : 0);
    prepared_t *p = plan_find(&cpu->add_plan, CALL_ADD, a, key);
    if (!p) {
        dnnl_memory_desc_t ma = md_of(a), mb = md_of(b), my = md_of(y);
        dnnl_binary_desc_t d;
        DNNL_CHECK(dnnl_binary_desc_init(&d, dnnl_binary_add, &ma, &mb, &my));
        dnnl_primitive_attr_t attr = NULL;
        dnnl_post_ops_t ops = NULL;
        if (relu) {
            DNNL_CHECK(dnnl_post_ops_create(&ops));
            DNNL_CHECK(dnnl_post_ops_append_eltwise(ops, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
            DNNL_CHECK(dnnl_primitive_attr_create(&attr));
            DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, ops));
        }
        p = plan_try_add(cpu, &cpu->add_plan, CALL_ADD, a, key, &d, attr, NULL, 0);
        if (attr) {
            dnnl_primitive_attr_destroy(attr);
            dnnl_post_ops_destroy(ops);
        }
        bind(cpu, p, DNNL_ARG_SRC_0, ma, 0);
        bind(cpu, p, DNNL_ARG_SRC_1, mb, 0);
        bind(cpu, p, DNNL_ARG_DST, my, 1);
    }
    void *ptrs[] = {a->data, b->data, y->data};
    run(cpu, p, ptrs, NULL);
}

static void cpu_add(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b, nn_tensor_t *y)
{
    add_maybe_relu(be, a, b, y, 0);
}

static void cpu_add_relu(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b,
                         nn_tensor_t *y)
{
    add_maybe_relu(be, a, b, y, 1);
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
    prepared_t *p = plan_find(&op->plan, CALL_LINEAR_FWD, x, 0);
    if (p)
        return p;
    dnnl_inner_product_desc_t d = linear_desc_forward(op, x->n);
    p = plan_add(cpu, &op->plan, CALL_LINEAR_FWD, x, 0, &d, NULL);
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
        prepared_t *p = plan_find(&op->plan, CALL_LINEAR_BWD_DATA, x, 0);
        if (!p) {
            dnnl_inner_product_desc_t d;
            DNNL_CHECK(dnnl_inner_product_backward_data_desc_init(&d, &src, &wei, &dst));
            p = plan_add(cpu, &op->plan, CALL_LINEAR_BWD_DATA, x, 0, &d, fwd->pd);
            bind(cpu, p, DNNL_ARG_DIFF_DST, dst, 0);
            bind(cpu, p, DNNL_ARG_WEIGHTS, wei, 0);
            bind(cpu, p, DNNL_ARG_DIFF_SRC, src, 1);
        }
        void *ptrs[] = {dy->data, (void *)w, dx->data};
        run(cpu, p, ptrs, NULL);
    }

    prepared_t *p = plan_find(&op->plan, CALL_LINEAR_BWD_WEIGHTS, x, 0);
    if (!p) {
        dnnl_inner_product_desc_t d;
        DNNL_CHECK(dnnl_inner_product_backward_weights_desc_init(&d, &src, &wei, &bias, &dst));
        p = plan_add(cpu, &op->plan, CALL_LINEAR_BWD_WEIGHTS, x, 0, &d, fwd->pd);
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

/*
 * Adam over count values with the arithmetic of nn_host_adam_step element for element: 16
 * lanes at a time with AVX-512 (the same multiplies and adds in the same order, nothing fused,
 * IEEE division and square root: the same bits), the rest one by one. The plain loop is bound
 * by its divisions and square roots, not by memory: 4x slower on this machine's Zen 4 cores.
 */
__attribute__((target("avx512f"))) static void adam_avx512(const nn_adam_scalars_t *s,
                                                           float *w, const float *g, float *m,
                                                           float *v, size_t count)
{
    const __m512 beta1 = _mm512_set1_ps(s->beta1), beta2 = _mm512_set1_ps(s->beta2);
    const __m512 keep1 = _mm512_set1_ps(s->keep1), keep2 = _mm512_set1_ps(s->keep2);
    const __m512 decay = _mm512_set1_ps(s->decay), eps = _mm512_set1_ps(s->eps);
    const __m512 neg_step_size = _mm512_set1_ps(s->neg_step_size);
    const __m512 bias2_sqrt = _mm512_set1_ps(s->bias2_sqrt);
    const int decays = s->decay != 0.0f;
    size_t i = 0;

    for (; i + 16 <= count; i += 16) {
        __m512 grad = _mm512_loadu_ps(g + i), weight = _mm512_loadu_ps(w + i);
        if (decays)
            grad = _mm512_add_ps(grad, _mm512_mul_ps(decay, weight));
        __m512 mean = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(m + i), beta1),
                                    _mm512_mul_ps(keep1, grad));
        __m512 var = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(v + i), beta2),
                                   _mm512_mul_ps(_mm512_mul_ps(keep2, grad), grad));
        __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(var), bias2_sqrt), eps);
        weight = _mm512_add_ps(weight, _mm512_mul_ps(neg_step_size, _mm512_div_ps(mean, denom)));
        _mm512_storeu_ps(m + i, mean);
        _mm512_storeu_ps(v + i, var);
        _mm512_storeu_ps(w + i, weight);
    }
    for (; i < count; i++)
        nn_adam_update(s, &w[i], g[i], &m[i], &v[i]);
}

/* Adam's slabs cut into chunks of ADAM_CHUNK values, handed to the engine's threads. */
typedef struct {
    nn_adam_scalars_t scalars;
    float *w, *m, *v;
    const float *g;
    size_t count;
    int avx512;
} adam_job_t;

enum { ADAM_CHUNK = 1 << 16 };

static void adam_chunk(size_t chunk, int thread, void *ctx)
{
    (void)thread;
    const adam_job_t *job = ctx;
    size_t from = chunk * ADAM_CHUNK;
    size_t n = job->count - from < ADAM_CHUNK ? job->count - from : ADAM_CHUNK;
    float *w = job->w + from, *m = job->m + from, *v = job->v + from;
    const float *g = job->g + from;

    if (job->avx512) {
        adam_avx512(&job->scalars, w, g, m, v, n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        nn_adam_update(&job->scalars, &w[i], g[i], &m[i], &v[i]);
}

/* Element i's arithmetic does not depend on the chunks or threads, so neither does the
 * result. */
static void cpu_adam_step(nn_backend_t *be, const nn_adam_t *hp, int64_t step, float *w,
                          const float *g, float *m, float *v, size_t count)
{
    cpu_backend_t *cpu = cpu_of(be);
    cpu->generation++;
    static int avx512 = -1;
    if (avx512 < 0)
        avx512 = __builtin_cpu_supports("avx512f") != 0;

    adam_job_t job = {nn_adam_scalars(hp, step), w, m, v, g, count, avx512};
    nn_team_for(nn_team_threads(), (count + ADAM_CHUNK - 1) / ADAM_CHUNK, adam_chunk, &job);
}

static void cpu_destroy(nn_backend_t *be)
{
    cpu_backend_t *cpu = cpu_of(be);
    cpu_release_plan(be, &cpu->add_plan);
    cpu_release_plan(be, &cpu->half_plan);
    cpu_release(be, cpu->arena);
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
    be->half_activations = 1;
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->to_host = cpu_copy;
    be->to_device = cpu_to_device;
    be->release_plan = cpu_release_plan;
    be->synchronize = cpu_synchronize;
    be->weights_changed = cpu_weights_changed;
    be->to_plain = cpu_to_plain;
    be->to_half = cpu_to_half;
    be->conv_forward = cpu_conv_forward;
    be->conv_backward_data = cpu_conv_backward_data;
    be->conv_backward_weights = cpu_conv_backward_weights;
    be->bnorm_forward_train = cpu_bnorm_forward_train;
    be->bnorm_forward_infer = cpu_bnorm_forward_infer;
    be->bnorm_backward = cpu_bnorm_backward;
    be->bnorm_relu_forward_train = cpu_bnorm_relu_forward_train;
    be->bnorm_relu_backward = cpu_bnorm_relu_backward;
    be->conv_bn_forward_infer = cpu_conv_bn_forward_infer;
    be->relu_forward = cpu_relu_forward;
    be->relu_backward = cpu_relu_backward;
    be->maxpool_forward = cpu_maxpool_forward;
    be->maxpool_backward = cpu_maxpool_backward;
    be->avgpool_forward = cpu_avgpool_forward;
    be->avgpool_backward = cpu_avgpool_backward;
    be->linear_forward = cpu_linear_forward;
    be->linear_backward = cpu_linear_backward;
    be->add = cpu_add;
    be->add_relu = cpu_add_relu;
    be->bce_loss = cpu_bce_loss;
    be->adam_step = cpu_adam_step;
    be->destroy = cpu_destroy;
    be->conv_set_native_weights = cpu_conv_set_native_weights;
    be->conv_weights_convert = cpu_conv_weights_convert;
    return be;
}

/* nn_backend_create / nn_backend_open (the choice by name): backend_select.c. */
