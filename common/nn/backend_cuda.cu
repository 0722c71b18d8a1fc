/*
 * The CUDA backend: cuDNN for convolutions, cuBLAS for linear layers, own kernels for the
 * rest (batch norm, relu, pooling, add, loss, Adam). The sequence model's seq_* ops are in
 * seqmodel_cuda.cu (the error checks and the stream are shared through nn/cuda_internal.h).
 *
 * Memory: every tensor, parameter and gradient is device memory (cudaMalloc); to_host and
 * to_device copy. NN_LAYOUT_NATIVE is plain NCHW here (fp32 computes as fast in it), so
 * to_plain is a copy. All work goes to one stream in call order; only to_host, bce_loss and
 * synchronize wait for it.
 *
 * Convolutions use cuDNN's legacy convolution API (deprecated in cuDNN 9 but still shipped,
 * and enough for plain and grouped convolutions; the graph API would be the way to fusions).
 * Each nn_conv_t keeps, per input shape and precision, its descriptors; the algorithms
 * cudnnFind*AlgorithmEx measured fastest on the first call of each direction (PyTorch's
 * cudnn.benchmark) are kept by the backend per convolution shape, shared by alike layers.
 * One workspace serves every op, grown on demand. NN_PRECISION_FP32 forbids tensor-core math
 * (TF32) so that results match the CPU backend (a shape without such an algorithm falls back
 * to TF32, with a warning).
 *
 * Mixed precision (NN_PRECISION_BF16, or NN_PRECISION_FP16, or BF16 after set_mixed_format
 * chose fp16): cuDNN convolves 16-bit NHWC tensors on tensor cores with fp32 sums. The
 * activations between layers stay fp32 NCHW: each convolution converts its inputs into
 * 16-bit NHWC scratch and its output back (math_cuda.h's rounding, checked on the host), and
 * keeps its weights' 16-bit copy while the weights generation lasts (cache_weights). The
 * caller's weights and weight gradients stay fp32 (the gradient is computed in 16 bits and
 * widened), as do batch norm and Adam. A 16-bit activation path (no conversions) is not done.
 * A 16-bit convolution cuDNN offers no algorithm for computes in fp32, with a warning.
 *
 * Batches in: to_device_async stages host data in pinned memory and copies it on a second
 * stream, so that the caller's thread (and the JPEG loader behind it) does not wait for the
 * GPU. scale_check_finite is loss scaling's unscale and overflow check (nn/lossscale.h).
 *
 * Batch norm is own kernels with double sums (the reference loops of host_ops.c, in
 * parallel): partial sums per (channel, slice of the batch) then one pass per channel, so the
 * result does not depend on timing. The normalised value uses the float save_mean / save_var
 * the caller gets, so the fused relu's backward recomputes its mask from x exactly as the
 * forward decided it, with no mask stored.
 *
 * Built as a plugin (libichpipe_cuda.so, loaded by backend_select.c on the first "cuda"
 * device); die() and the log are the program's.
 *
 * Errors: a failing CUDA, cuDNN or cuBLAS call dies naming the call, file:line and the
 * library's message; out of memory says what was being allocated and how much was free.
 * NN_CUDA_SYNC=1 waits after every kernel and library call, so that an asynchronous fault is
 * reported at the op that caused it.
 */
#include "nn/backend_cuda.h"
#include "nn/cuda_internal.h"
#include "nn/math_cuda.h"

extern "C" {
#include "check.h"
#include "exitcodes.h"
#include "log.h"
}

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <unordered_map>

#define THREADS NN_CUDA_THREADS
#define MIB (1024.0 * 1024.0)

/* ---- error reporting ------------------------------------------------------------------- */

static int sync_every_call = -1; /* NN_CUDA_SYNC, read once */

void cuda_die(cudaError_t status, const char *call, const char *file, int line)
{
    die(EXIT_INTERNAL, "%s:%d: %s failed: %s (%s)", file, line, call, cudaGetErrorString(status),
        cudaGetErrorName(status));
}

static void cudnn_die(cudnnStatus_t status, const char *call, const char *file, int line)
{
    char detail[512] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    die(EXIT_INTERNAL, "%s:%d: %s failed: %s%s%s", file, line, call, cudnnGetErrorString(status),
        detail[0] ? ": " : "", detail);
}

void cublas_die(cublasStatus_t status, const char *call, const char *file, int line)
{
    die(EXIT_INTERNAL, "%s:%d: %s failed: %s", file, line, call, cublasGetStatusString(status));
}

#define CUDNN_CHECK(call)                                                                     \
    do {                                                                                      \
        NN_STATUS_CHECK(call, CUDNN_STATUS_SUCCESS, cudnn_die);                               \
        debug_sync(#call, __FILE__, __LINE__);                                                \
    } while (0)

void debug_sync(const char *what, const char *file, int line)
{
    if (sync_every_call < 0) {
        const char *env = getenv("NN_CUDA_SYNC");
        sync_every_call = env && *env && strcmp(env, "0") != 0;
    }
    if (!sync_every_call)
        return;
    cudaError_t status = cudaDeviceSynchronize();
    if (status != cudaSuccess)
        cuda_die(status, what, file, line);
}

/* ---- the backend's state --------------------------------------------------------------- */

#define MAX_ALGOS 16 /* results asked of cuDNN's algorithm searches */

/* The algorithms measured for one convolution shape, by direction. */
struct conv_algos {
    int have_fwd, have_bwd_data, have_bwd_filter;
    cudnnConvolutionFwdAlgoPerf_t fwd;
    cudnnConvolutionBwdDataAlgoPerf_t bwd_data;
    cudnnConvolutionBwdFilterAlgoPerf_t bwd_filter;
};

typedef struct {
    nn_backend_t base;
    int device, sm_count;
    cudaStream_t stream;
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    void *workspace; /* cuDNN workspace and kernels' partial sums, grown on demand */
    size_t workspace_bytes;
    size_t find_limit; /* workspace allowed to algorithms while measuring them */
    double *host_sums; /* pinned: the loss's two sums */
    std::unordered_map<void *, size_t> *sizes;
    /* Measured algorithms by convolution and shape, shared by ops of the same shape (the 23
     * alike blocks of ResNeXt-101's third stage measure once). */
    std::unordered_map<std::string, struct conv_algos> *algos;
    size_t in_use, peak;
    uint64_t generation; /* of the weights: half copies are kept while it stays the same */

    /* Mixed precision: what NN_PRECISION_BF16 convolutions compute in (set_mixed_format),
     * and the 16-bit NHWC copies of a convolution's input, output and weights (or weight
     * gradient), grown on demand. */
    int mixed_format;
    uint16_t *half_buf[3];
    size_t half_count[3];
    int *nonfinite; /* device: set by scale_check_kernel */

    /* Batches on their way in (to_device_async): pinned staging slots used in turn, each
     * with the event of its last copy, on a copy stream of its own. */
    cudaStream_t copy_stream;
    cudaEvent_t compute_mark, copy_done[2];
    void *staging[2];
    size_t staging_bytes[2];
    int staging_used[2], staging_next;
} cuda_backend_t;

static cuda_backend_t *cuda_of(nn_backend_t *be)
{
    return (cuda_backend_t *)be;
}

static void *device_alloc(cuda_backend_t *gpu, size_t bytes, const char *what)
{
    void *p = NULL;
    cudaError_t status = cudaMalloc(&p, bytes ? bytes : 1);
    if (status == cudaErrorMemoryAllocation) {
        size_t free_bytes = 0, total = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_bytes, &total);
        die(EXIT_INTERNAL,
            "out of GPU memory allocating %s: %.1f MiB requested, %.1f MiB free of %.1f MiB "
            "on GPU %d (this backend holds %.1f MiB)",
            what, bytes / MIB, free_bytes / MIB, total / MIB, gpu->device,
            (gpu->in_use + gpu->workspace_bytes) / MIB);
    }
    if (status != cudaSuccess)
        cuda_die(status, "cudaMalloc", __FILE__, __LINE__);
    (*gpu->sizes)[p] = bytes;
    gpu->in_use += bytes;
    if (gpu->in_use + gpu->workspace_bytes > gpu->peak)
        gpu->peak = gpu->in_use + gpu->workspace_bytes;
    return p;
}

static void device_free(cuda_backend_t *gpu, void *p)
{
    if (!p)
        return;
    auto it = gpu->sizes->find(p);
    if (it != gpu->sizes->end()) {
        gpu->in_use -= it->second;
        gpu->sizes->erase(it);
    }
    CUDA_CHECK(cudaFree(p));
}

/* The shared workspace, at least `bytes` large. */
static void *workspace_get(cuda_backend_t *gpu, size_t bytes, const char *what)
{
    if (bytes <= gpu->workspace_bytes)
        return gpu->workspace;
    /* cudaFree waits for the work that may still use the old block. */
    if (gpu->workspace) {
        gpu->sizes->erase(gpu->workspace);
        CUDA_CHECK(cudaFree(gpu->workspace));
    }
    gpu->workspace = NULL;
    gpu->workspace_bytes = 0;
    bytes = (bytes + 0xFFFFF) & ~(size_t)0xFFFFF;
    void *p = device_alloc(gpu, bytes, what);
    gpu->in_use -= bytes; /* counted as workspace, not as the caller's memory */
    gpu->workspace = p;
    gpu->workspace_bytes = bytes;
    return p;
}

static void *gpu_alloc(nn_backend_t *be, size_t bytes)
{
    cuda_backend_t *gpu = cuda_of(be);
    void *p = device_alloc(gpu, bytes, "a tensor (nn_backend_t.alloc)");
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, gpu->stream));
    return p;
}

static void gpu_release(nn_backend_t *be, void *p)
{
    device_free(cuda_of(be), p);
}

static void gpu_to_host(nn_backend_t *be, void *host, const void *dev, size_t bytes)
{
    cuda_backend_t *gpu = cuda_of(be);
    CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, gpu->stream));
    CUDA_CHECK(cudaStreamSynchronize(gpu->stream));
}

/* From pageable memory the copy returns once the source is staged: host may be reused. */
static void gpu_to_device(nn_backend_t *be, void *dev, const void *host, size_t bytes)
{
    cuda_backend_t *gpu = cuda_of(be);
    gpu->generation++;
    CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, gpu->stream));
}

cudaStream_t nn_cuda_stream(nn_backend_t *be)
{
    return cuda_of(be)->stream;
}

static void gpu_synchronize(nn_backend_t *be)
{
    CUDA_CHECK(cudaStreamSynchronize(cuda_of(be)->stream));
}

static void gpu_weights_changed(nn_backend_t *be)
{
    cuda_of(be)->generation++;
}

static void gpu_to_plain(nn_backend_t *be, const nn_tensor_t *src, float *dst)
{
    if (dst == src->data)
        return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src->data, nn_numel(src) * sizeof(float),
                               cudaMemcpyDeviceToDevice, cuda_of(be)->stream));
}

/* Blocks for an elementwise kernel over count values (grid-stride loops cover the rest). */
static unsigned blocks_for(const cuda_backend_t *gpu, size_t count)
{
    size_t blocks = (count + THREADS - 1) / THREADS;
    size_t most = (size_t)gpu->sm_count * 32;
    if (blocks > most)
        blocks = most;
    return blocks ? (unsigned)blocks : 1;
}

unsigned nn_cuda_blocks(nn_backend_t *be, size_t count)
{
    return blocks_for(cuda_of(be), count);
}

static void check_shape(const char *what, const nn_tensor_t *t, int n, int c, int h, int w)
{
    if (t->n != n || t->c != c || t->h != h || t->w != w)
        die(EXIT_INTERNAL, "cuda: %s is %dx%dx%dx%d, expected %dx%dx%dx%d", what, t->n, t->c,
            t->h, t->w, n, c, h, w);
}

/* ---- plans ----------------------------------------------------------------------------- */

enum { PLAN_CONV = 1, PLAN_POOL, PLAN_BN_RELU };

/* One convolution shape: descriptors and the algorithms chosen for it. */
typedef struct conv_entry {
    int n, c, h, w;
    int asked, precision; /* asked for; computed in (fp32 where cuDNN lacks the 16-bit one) */
    cudnnTensorDescriptor_t x_desc, y_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    struct conv_algos *algos; /* in the backend's table, made with the entry */
    struct conv_entry *next;
} conv_entry_t;

static void conv_undescribe(conv_entry_t *e);

typedef struct {
    int kind; /* PLAN_CONV */
    conv_entry_t *entries;
    /* The weights' 16-bit NHWC copy (cache_weights): from which pointer, weights
     * generation and format it was made. */
    uint16_t *w_half;
    size_t w_count;
    const float *w_from;
    uint64_t w_generation;
    int w_format;
} conv_plan_t;

/* Max pooling keeps the position of each output's maximum for the backward. */
typedef struct {
    int kind; /* PLAN_POOL */
    int32_t *argmax;
    size_t capacity;
} pool_plan_t;

static void gpu_release_plan(nn_backend_t *be, void **plan)
{
    if (!*plan)
        return;
    int kind = *(int *)*plan;
    if (kind == PLAN_CONV) {
        conv_plan_t *cp = (conv_plan_t *)*plan;
        for (conv_entry_t *e = cp->entries, *next; e; e = next) {
            next = e->next;
            conv_undescribe(e);
            free(e);
        }
        device_free(cuda_of(be), cp->w_half);
    } else if (kind == PLAN_POOL) {
        device_free(cuda_of(be), ((pool_plan_t *)*plan)->argmax);
    }
    free(*plan);
    *plan = NULL;
}

/* ---- convolution ----------------------------------------------------------------------- */

static int out_size(int in, int kernel, int stride, int pad)
{
    return (in + 2 * pad - kernel) / stride + 1;
}

static int is_half(int precision)
{
    return precision == NN_PRECISION_BF16 || precision == NN_PRECISION_FP16;
}

/* What a convolution computes in: its precision, with the backend's mixed format for bf16. */
static int conv_precision(const cuda_backend_t *gpu, const nn_conv_t *op)
{
    return op->precision == NN_PRECISION_BF16 ? gpu->mixed_format : op->precision;
}

/* fp32 tensors are NCHW (as the callers keep them); 16-bit copies NHWC for tensor cores. */
static cudnnDataType_t data_type(int precision)
{
    if (precision == NN_PRECISION_FP16)
        return CUDNN_DATA_HALF;
    return precision == NN_PRECISION_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

static cudnnTensorFormat_t data_format(int precision)
{
    return is_half(precision) ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
}

static cudnnTensorDescriptor_t tensor_desc(int n, int c, int h, int w, int precision)
{
    cudnnTensorDescriptor_t d;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&d));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, data_format(precision), data_type(precision), n,
                                           c, h, w));
    return d;
}

/* fp32 parity with the CPU forbids TF32; 16-bit data runs on tensor cores, sums in fp32. */
static cudnnMathType_t base_math(int precision)
{
    return is_half(precision) ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
}

/* The entry for x's shape (n, c, h, w of the convolution's input), made on first use. */
/* The entry's descriptors for computing in `precision`. */
static void conv_describe(conv_entry_t *e, const nn_conv_t *op, int precision)
{
    int n = e->n, c = e->c, h = e->h, w = e->w;
    e->precision = precision;
    e->x_desc = tensor_desc(n, c, h, w, precision);
    e->y_desc = tensor_desc(n, op->out_ch, out_size(h, op->kernel, op->stride, op->pad),
                            out_size(w, op->kernel, op->stride, op->pad), precision);
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&e->w_desc));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(e->w_desc, data_type(precision),
                                           data_format(precision), op->out_ch,
                                           op->in_ch / op->groups, op->kernel, op->kernel));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&e->conv_desc));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(e->conv_desc, op->pad, op->pad, op->stride,
                                                op->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(e->conv_desc, op->groups));
    CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, base_math(precision)));
}

static void conv_undescribe(conv_entry_t *e)
{
    cudnnDestroyTensorDescriptor(e->x_desc);
    cudnnDestroyTensorDescriptor(e->y_desc);
    cudnnDestroyFilterDescriptor(e->w_desc);
    cudnnDestroyConvolutionDescriptor(e->conv_desc);
}

/* Whether cuDNN's heuristics offer an algorithm for each direction (any that the status
 * says is supported; the fastest is measured later). */
static int conv_supported(cuda_backend_t *gpu, const conv_entry_t *e)
{
    int count = 0, fwd_ok = 0, data_ok = 0, filter_ok = 0;
    cudnnConvolutionFwdAlgoPerf_t fwd[MAX_ALGOS];
    cudnnConvolutionBwdDataAlgoPerf_t data[MAX_ALGOS];
    cudnnConvolutionBwdFilterAlgoPerf_t filter[MAX_ALGOS];
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(gpu->cudnn, e->x_desc, e->w_desc,
                                                       e->conv_desc, e->y_desc, MAX_ALGOS,
                                                       &count, fwd));
    for (int i = 0; i < count; i++)
        fwd_ok |= fwd[i].status == CUDNN_STATUS_SUCCESS;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(gpu->cudnn, e->w_desc, e->y_desc,
                                                            e->conv_desc, e->x_desc, MAX_ALGOS,
                                                            &count, data));
    for (int i = 0; i < count; i++)
        data_ok |= data[i].status == CUDNN_STATUS_SUCCESS;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(gpu->cudnn, e->x_desc,
                                                              e->y_desc, e->conv_desc,
                                                              e->w_desc, MAX_ALGOS, &count,
                                                              filter));
    for (int i = 0; i < count; i++)
        filter_ok |= filter[i].status == CUDNN_STATUS_SUCCESS;
    return fwd_ok && data_ok && filter_ok;
}

/* The entry's measured algorithms: those of every convolution of its shape and precision. */
static void conv_share_algos(cuda_backend_t *gpu, const nn_conv_t *op, conv_entry_t *e)
{
    char key[160];
    snprintf(key, sizeof key, "%d %d %d %d %d %d %d %d %d %d %d", op->in_ch, op->out_ch,
             op->kernel, op->stride, op->pad, op->groups, e->precision, e->n, e->c, e->h, e->w);
    e->algos = &(*gpu->algos)[key]; /* references stay valid as the table grows */
}

/*
 * A 16-bit entry whose measurement found no algorithm that runs (cuDNN's heuristics offered
 * one, conv_supported, but none ran within the workspace): computed in fp32 from now on, as
 * conv_entry does when the heuristics offer none.
 */
static void conv_demote(cuda_backend_t *gpu, const nn_conv_t *op, conv_entry_t *e,
                        const char *what)
{
    log_warn("cuda: no %s algorithm ran for the %s of a %dx%d/%d convolution %d->%d "
             "(groups %d) on %dx%dx%dx%d; computing it in fp32",
             e->precision == NN_PRECISION_FP16 ? "fp16" : "bf16", what, op->kernel, op->kernel,
             op->stride, op->in_ch, op->out_ch, op->groups, e->n, e->c, e->h, e->w);
    conv_undescribe(e);
    conv_describe(e, op, NN_PRECISION_FP32);
    conv_share_algos(gpu, op, e);
}

/*
 * The entry for x's shape (n, c, h, w of the convolution's input) and the precision asked
 * for, made on first use. A 16-bit convolution cuDNN has no algorithm for computes in fp32,
 * with a warning, rather than stopping the run.
 */
static conv_entry_t *conv_entry(cuda_backend_t *gpu, nn_conv_t *op, int n, int c, int h,
                               int w)
{
    conv_plan_t *cp = (conv_plan_t *)op->plan;
    if (!cp) {
        cp = (conv_plan_t *)xcalloc(1, sizeof *cp);
        cp->kind = PLAN_CONV;
        op->plan = cp;
    }
    int asked = conv_precision(gpu, op);
    for (conv_entry_t *e = cp->entries; e; e = e->next)
        if (e->n == n && e->c == c && e->h == h && e->w == w && e->asked == asked)
            return e;

    if (c != op->in_ch)
        die(EXIT_INTERNAL, "cuda: convolution input has %d channels, expected %d", c,
            op->in_ch);
    conv_entry_t *e = (conv_entry_t *)xcalloc(1, sizeof *e);
    e->n = n, e->c = c, e->h = h, e->w = w, e->asked = asked;
    conv_describe(e, op, asked);
    if (is_half(asked) && !conv_supported(gpu, e)) {
        log_warn("cuda: cuDNN has no %s algorithm for a %dx%d/%d convolution %d->%d "
                 "(groups %d) on %dx%dx%dx%d; computing it in fp32",
                 asked == NN_PRECISION_FP16 ? "fp16" : "bf16", op->kernel, op->kernel,
                 op->stride, op->in_ch, op->out_ch, op->groups, n, c, h, w);
        conv_undescribe(e);
        conv_describe(e, op, NN_PRECISION_FP32);
    }
    conv_share_algos(gpu, op, e);
    e->next = cp->entries;
    cp->entries = e;
    return e;
}

static void conv_check_output(const nn_conv_t *op, const nn_tensor_t *x, const nn_tensor_t *y,
                              const char *what)
{
    check_shape(what, y, x->n, op->out_ch, out_size(x->h, op->kernel, op->stride, op->pad),
                out_size(x->w, op->kernel, op->stride, op->pad));
}

/*
 * Measure one direction's algorithms (`find` runs cudnnFind*AlgorithmEx into results) and
 * keep the fastest that ran within the memory allowed into *chosen. fp32 measures and runs
 * with FMA math only (no TF32), so that it matches the CPU; a shape with no such algorithm
 * falls back to TF32, with a warning, rather than stopping the run. Returns 0 for a 16-bit
 * entry none of whose algorithms ran (the caller demotes it to fp32); fp32 with none dies.
 */
template <typename Perf, typename Find>
static int choose_algo(cuda_backend_t *gpu, const nn_conv_t *op, const conv_entry_t *e,
                       const char *what, Find find, Perf *chosen)
{
    void *ws = workspace_get(gpu, gpu->find_limit, "cuDNN workspace (measuring algorithms)");
    int fp32 = e->precision == NN_PRECISION_FP32;
    for (int attempt = 0; attempt < 2; attempt++) {
        int fma_only = fp32 && attempt == 0;
        cudnnMathType_t math = fma_only ? CUDNN_FMA_MATH
                               : fp32   ? CUDNN_DEFAULT_MATH
                                        : base_math(e->precision);
        CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, math));
        Perf results[MAX_ALGOS];
        int count = 0;
        find(ws, results, &count);
        for (int i = 0; i < count; i++) {
            Perf r = results[i];
            int tensor_math = r.mathType != CUDNN_FMA_MATH && r.mathType != CUDNN_DEFAULT_MATH;
            if (r.status != CUDNN_STATUS_SUCCESS || r.memory > gpu->find_limit ||
                (fma_only && tensor_math))
                continue;
            if (fma_only)
                r.mathType = CUDNN_FMA_MATH;
            else if (fp32)
                log_warn("cuda: %s of a %dx%d/%d convolution %d->%d (groups %d) on %dx%dx%dx%d: "
                         "no fp32 algorithm without tensor cores; using TF32",
                         what, op->kernel, op->kernel, op->stride, op->in_ch, op->out_ch,
                         op->groups, e->n, e->c, e->h, e->w);
            *chosen = r;
            return 1;
        }
        if (!fp32)
            return 0;
    }
    die(EXIT_INTERNAL, "cuda: no cuDNN algorithm computes the %s of a %dx%d/%d convolution "
        "%d->%d (groups %d) on %dx%dx%dx%d within %.0f MiB of workspace",
        what, op->kernel, op->kernel, op->stride, op->in_ch, op->out_ch, op->groups, e->n, e->c,
        e->h, e->w, gpu->find_limit / MIB);
}

/*
 * One direction's algorithm for the entry, measured on first use. Returns 0 when a 16-bit
 * entry had none that ran: it is then computed in fp32 (conv_demote), and the caller
 * prepares its buffers again and asks once more.
 */
template <typename Perf, typename Find>
static int conv_algo_ready(cuda_backend_t *gpu, const nn_conv_t *op, conv_entry_t *e,
                           const char *what, int *have, Perf *perf, Find find)
{
    if (!*have)
        *have = choose_algo<Perf>(gpu, op, e, what, find, perf);
    if (!*have)
        conv_demote(gpu, op, e, what);
    return *have;
}

static const float ONE = 1.0f, ZERO = 0.0f;

/* ---- mixed precision: 16-bit NHWC copies around each convolution ------------------------ */

/* fp32 NCHW <-> 16-bit NHWC: a transpose through shared-memory tiles (math_cuda.h, which
 * the host check runs block by block). Grid (plane tiles, channel tiles, images). */
__global__ static void to_half_kernel(const float *src, int channels, size_t plane, int format,
                                      uint16_t *dst)
{
    __shared__ uint16_t tile[NN_TILE][NN_TILE + 1];
    nn_to_half_load(src, blockIdx.z, channels, plane, format, blockIdx.y, blockIdx.x,
                    threadIdx.x, threadIdx.y, tile);
    __syncthreads();
    nn_to_half_store(tile, blockIdx.z, channels, plane, blockIdx.y, blockIdx.x, threadIdx.x,
                     threadIdx.y, dst);
}

__global__ static void from_half_kernel(const uint16_t *src, int channels, size_t plane,
                                        int format, float *dst)
{
    __shared__ float tile[NN_TILE][NN_TILE + 1];
    nn_from_half_load(src, blockIdx.z, channels, plane, format, blockIdx.y, blockIdx.x,
                      threadIdx.x, threadIdx.y, tile);
    __syncthreads();
    nn_from_half_store(tile, blockIdx.z, channels, plane, blockIdx.y, blockIdx.x, threadIdx.x,
                       threadIdx.y, dst);
}

static dim3 transpose_grid(size_t n, int channels, size_t plane)
{
    size_t plane_tiles = (plane + NN_TILE - 1) / NN_TILE;
    size_t channel_tiles = (channels + NN_TILE - 1) / NN_TILE;
    if (n > 65535 || channel_tiles > 65535 || plane_tiles > 0x7FFFFFFF)
        die(EXIT_INTERNAL, "cuda: a %zu x %d x %zu tensor is too large for the layout kernels",
            n, channels, plane);
    return dim3((unsigned)plane_tiles, (unsigned)channel_tiles, (unsigned)n);
}

/* Scratch slots for the 16-bit copies: one per role, so a call never overlaps itself. */
enum { HALF_IN = 0, HALF_OUT = 1, HALF_WEIGHTS = 2 };

static uint16_t *half_scratch(cuda_backend_t *gpu, int slot, size_t count)
{
    if (count > gpu->half_count[slot]) {
        device_free(gpu, gpu->half_buf[slot]);
        gpu->half_buf[slot] = (uint16_t *)device_alloc(gpu, count * sizeof(uint16_t),
                                                       "a 16-bit copy for mixed precision");
        gpu->half_count[slot] = count;
    }
    return gpu->half_buf[slot];
}

/* A 4-D tensor [n][channels][plane]: fp32 NCHW into 16-bit NHWC (to_half 1), or back. */
static void convert_layout(cuda_backend_t *gpu, const void *src, size_t n, int channels,
                           size_t plane, int format, void *dst, int to_half)
{
    if (n == 0 || channels == 0 || plane == 0)
        return; /* an empty grid is a launch error */
    dim3 grid = transpose_grid(n, channels, plane), block(NN_TILE, NN_TILE_ROWS);
    if (to_half)
        to_half_kernel<<<grid, block, 0, gpu->stream>>>((const float *)src, channels, plane,
                                                        format, (uint16_t *)dst);
    else
        from_half_kernel<<<grid, block, 0, gpu->stream>>>((const uint16_t *)src, channels,
                                                          plane, format, (float *)dst);
    KERNEL_CHECK("to_half_kernel / from_half_kernel");
}

static size_t weight_count(const nn_conv_t *op)
{
    return (size_t)op->out_ch * (op->in_ch / op->groups) * op->kernel * op->kernel;
}

/* The weights in the convolution's 16-bit format: with cache_weights converted once per
 * weights generation (and kept in the plan), else into scratch on every call. */
static const uint16_t *half_weights(cuda_backend_t *gpu, nn_conv_t *op, const float *w,
                                    int format)
{
    size_t count = weight_count(op);
    int channels = op->in_ch / op->groups;
    size_t plane = (size_t)op->kernel * op->kernel;
    if (!op->cache_weights) {
        uint16_t *dst = half_scratch(gpu, HALF_WEIGHTS, count);
        convert_layout(gpu, w, op->out_ch, channels, plane, format, dst, 1);
        return dst;
    }
    conv_plan_t *cp = (conv_plan_t *)op->plan; /* made by conv_entry */
    if (cp->w_half && cp->w_from == w && cp->w_generation == gpu->generation &&
        cp->w_format == format)
        return cp->w_half;
    if (cp->w_count < count) {
        device_free(gpu, cp->w_half);
        cp->w_half = (uint16_t *)device_alloc(gpu, count * sizeof(uint16_t),
                                              "a convolution's 16-bit weights");
        cp->w_count = count;
    }
    convert_layout(gpu, w, op->out_ch, channels, plane, format, cp->w_half, 1);
    cp->w_from = w;
    cp->w_generation = gpu->generation;
    cp->w_format = format;
    return cp->w_half;
}

/*
 * What cuDNN reads and writes for one call: the caller's fp32 NCHW buffers themselves, or in
 * mixed precision 16-bit NHWC copies (inputs converted now; outputs converted back by
 * conv_finish).
 */
typedef struct {
    const void *x, *w, *dy;
    void *y, *dx, *dw;
} conv_io_t;

static const void *conv_input(cuda_backend_t *gpu, const conv_entry_t *e, int slot,
                              const float *src, size_t n, int channels, size_t plane)
{
    if (!is_half(e->precision))
        return src;
    uint16_t *dst = half_scratch(gpu, slot, n * channels * plane);
    convert_layout(gpu, src, n, channels, plane, e->precision, dst, 1);
    return dst;
}

static void *conv_output(cuda_backend_t *gpu, const conv_entry_t *e, int slot, float *dst,
                         size_t count)
{
    return is_half(e->precision) ? (void *)half_scratch(gpu, slot, count) : (void *)dst;
}

static void conv_finish(cuda_backend_t *gpu, const conv_entry_t *e, const void *out, size_t n,
                        int channels, size_t plane, float *dst)
{
    if (is_half(e->precision))
        convert_layout(gpu, out, n, channels, plane, e->precision, dst, 0);
}

static const void *conv_weights(cuda_backend_t *gpu, nn_conv_t *op, const conv_entry_t *e,
                                const float *w)
{
    return is_half(e->precision) ? (const void *)half_weights(gpu, op, w, e->precision) : w;
}

static size_t plane_of(int h, int w)
{
    return (size_t)h * w;
}

static void conv_forward_into(cuda_backend_t *gpu, nn_conv_t *op, const nn_tensor_t *x,
                              const float *w, float *y)
{
    conv_entry_t *e = conv_entry(gpu, op, x->n, x->c, x->h, x->w);
    int out_h = out_size(x->h, op->kernel, op->stride, op->pad);
    int out_w = out_size(x->w, op->kernel, op->stride, op->pad);
    size_t out_plane = plane_of(out_h, out_w);
    conv_io_t io;
    struct conv_algos *a;
    auto find = [&](void *ws, cudnnConvolutionFwdAlgoPerf_t *r, int *n) {
        CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
            gpu->cudnn, e->x_desc, io.x, e->w_desc, io.w, e->conv_desc, e->y_desc, io.y,
            MAX_ALGOS, n, r, ws, gpu->find_limit));
    };
    do { /* twice at most: a 16-bit entry without a working algorithm, then fp32 */
        io.x = conv_input(gpu, e, HALF_IN, x->data, x->n, x->c, plane_of(x->h, x->w));
        io.w = conv_weights(gpu, op, e, w);
        io.y = conv_output(gpu, e, HALF_OUT, y, (size_t)x->n * op->out_ch * out_plane);
        a = e->algos;
    } while (!conv_algo_ready(gpu, op, e, "forward", &a->have_fwd, &a->fwd, find));
    void *ws = workspace_get(gpu, a->fwd.memory, "cuDNN workspace (convolution forward)");
    CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, a->fwd.mathType));
    CUDNN_CHECK(cudnnConvolutionForward(gpu->cudnn, &ONE, e->x_desc, io.x, e->w_desc, io.w,
                                        e->conv_desc, a->fwd.algo, ws, a->fwd.memory, &ZERO,
                                        e->y_desc, io.y));
    conv_finish(gpu, e, io.y, x->n, op->out_ch, out_plane, y);
}

static void gpu_conv_forward(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x,
                             const float *w, nn_tensor_t *y)
{
    conv_check_output(op, x, y, "convolution output");
    conv_forward_into(cuda_of(be), op, x, w, y->data);
}

static void gpu_conv_backward_data(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *dy,
                                   const float *w, nn_tensor_t *dx)
{
    cuda_backend_t *gpu = cuda_of(be);
    conv_check_output(op, dx, dy, "convolution output gradient");
    conv_entry_t *e = conv_entry(gpu, op, dx->n, dx->c, dx->h, dx->w);
    conv_io_t io;
    struct conv_algos *a;
    auto find = [&](void *ws, cudnnConvolutionBwdDataAlgoPerf_t *r, int *n) {
        CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
            gpu->cudnn, e->w_desc, io.w, e->y_desc, io.dy, e->conv_desc, e->x_desc, io.dx,
            MAX_ALGOS, n, r, ws, gpu->find_limit));
    };
    do { /* as in conv_forward_into */
        io.dy = conv_input(gpu, e, HALF_OUT, dy->data, dy->n, dy->c, plane_of(dy->h, dy->w));
        io.w = conv_weights(gpu, op, e, w);
        io.dx = conv_output(gpu, e, HALF_IN, dx->data, nn_numel(dx));
        a = e->algos;
    } while (!conv_algo_ready(gpu, op, e, "data gradient", &a->have_bwd_data, &a->bwd_data,
                              find));
    void *ws = workspace_get(gpu, a->bwd_data.memory, "cuDNN workspace (convolution backward)");
    CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, a->bwd_data.mathType));
    CUDNN_CHECK(cudnnConvolutionBackwardData(gpu->cudnn, &ONE, e->w_desc, io.w, e->y_desc,
                                             io.dy, e->conv_desc, a->bwd_data.algo, ws,
                                             a->bwd_data.memory, &ZERO, e->x_desc, io.dx));
    conv_finish(gpu, e, io.dx, dx->n, dx->c, plane_of(dx->h, dx->w), dx->data);
}

/* In mixed precision the weight gradient comes out in 16 bits (as with PyTorch's autocast)
 * and is widened into the caller's fp32 gradient. */
static void gpu_conv_backward_weights(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x,
                                      const nn_tensor_t *dy, float *dw)
{
    cuda_backend_t *gpu = cuda_of(be);
    conv_check_output(op, x, dy, "convolution output gradient");
    conv_entry_t *e = conv_entry(gpu, op, x->n, x->c, x->h, x->w);
    conv_io_t io;
    struct conv_algos *a;
    auto find = [&](void *ws, cudnnConvolutionBwdFilterAlgoPerf_t *r, int *n) {
        CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
            gpu->cudnn, e->x_desc, io.x, e->y_desc, io.dy, e->conv_desc, e->w_desc, io.dw,
            MAX_ALGOS, n, r, ws, gpu->find_limit));
    };
    do { /* as in conv_forward_into */
        io.x = conv_input(gpu, e, HALF_IN, x->data, x->n, x->c, plane_of(x->h, x->w));
        io.dy = conv_input(gpu, e, HALF_OUT, dy->data, dy->n, dy->c, plane_of(dy->h, dy->w));
        io.dw = conv_output(gpu, e, HALF_WEIGHTS, dw, weight_count(op));
        a = e->algos;
    } while (!conv_algo_ready(gpu, op, e, "weight gradient", &a->have_bwd_filter,
                              &a->bwd_filter, find));
    void *ws = workspace_get(gpu, a->bwd_filter.memory, "cuDNN workspace (weight gradient)");
    CUDNN_CHECK(cudnnSetConvolutionMathType(e->conv_desc, a->bwd_filter.mathType));
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(gpu->cudnn, &ONE, e->x_desc, io.x, e->y_desc,
                                               io.dy, e->conv_desc, a->bwd_filter.algo, ws,
                                               a->bwd_filter.memory, &ZERO, e->w_desc, io.dw));
    conv_finish(gpu, e, io.dw, op->out_ch, op->in_ch / op->groups,
                plane_of(op->kernel, op->kernel), dw);
}

/* ---- batch norm ------------------------------------------------------------------------ */

/*
 * Per-channel elementwise kernels run on a grid of (image x channel planes, chunks of a
 * plane): the channel comes from blockIdx.x once, with no division per value.
 */
#define FOR_PLANE_VALUES(row, channels, c, plane, i)                                          \
    for (size_t row = blockIdx.x, c = row % (channels),                                       \
                i_ = (size_t)blockIdx.y * blockDim.x + threadIdx.x, i = row * (plane) + i_;   \
         i_ < (plane); i_ += (size_t)gridDim.y * blockDim.x, i = row * (plane) + i_)

static dim3 plane_grid(const nn_tensor_t *t)
{
    size_t plane = (size_t)t->h * t->w, chunks = (plane + THREADS - 1) / THREADS;
    return dim3((unsigned)((size_t)t->n * t->c), (unsigned)(chunks > 65535 ? 65535 : chunks));
}

/* A thread's share of its block's channel slice (math_cuda.h walks it). */
#define SLICE_FIRST ((size_t)blockIdx.y * THREADS + threadIdx.x)
#define SLICE_STEP ((size_t)gridDim.y * THREADS)

/* Sum of a double over the block (THREADS threads); every thread gets the total. */
__device__ static double block_sum(double value, double *shared)
{
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half)
            shared[threadIdx.x] += shared[threadIdx.x + half];
        __syncthreads();
    }
    double total = shared[0];
    __syncthreads();
    return total;
}

/*
 * Partial sums over channel blockIdx.x, slice blockIdx.y of its n * plane values:
 * sum x, or sum (x - mean)^2 with mean = stats[c] when centred; into partial[c][slice].
 */
__global__ static void bn_partial_moment(const float *x, int batch, int channels, size_t plane,
                                         const double *stats, int centred, double *partial)
{
    __shared__ double shared[THREADS];
    int c = blockIdx.x;
    double sum = nn_bn_thread_moment(x, batch, channels, plane, c, SLICE_FIRST, SLICE_STEP,
                                     centred ? stats[c] : 0.0, centred);
    double total = block_sum(sum, shared);
    if (threadIdx.x == 0)
        partial[(size_t)c * gridDim.y + blockIdx.y] = total;
}

/* Per channel: the mean of the partial sums into mean[c] (double). */
__global__ static void bn_finish_mean(const double *partial, int slices, double count,
                                      int channels, double *mean)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels)
        return;
    double sum = 0.0;
    for (int s = 0; s < slices; s++)
        sum += partial[(size_t)c * slices + s];
    mean[c] = sum / count;
}

/* Per channel: the biased variance; save the statistics, update the running ones. */
__global__ static void bn_finish_var(const double *partial, int slices, double count,
                                     int channels, const double *mean, float momentum,
                                     float *save_mean, float *save_var, float *running_mean,
                                     float *running_var)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels)
        return;
    double sq = 0.0;
    for (int s = 0; s < slices; s++)
        sq += partial[(size_t)c * slices + s];
    save_mean[c] = (float)mean[c];
    save_var[c] = (float)(sq / count);
    nn_bn_running_update(&running_mean[c], &running_var[c], save_mean[c], save_var[c],
                         momentum, count);
}

__global__ static void bn_apply(const float *x, int channels, size_t plane,
                                const float *gamma, const float *beta, const float *mean,
                                const float *var, float eps, int relu, float *y)
{
    FOR_PLANE_VALUES(row, channels, c, plane, i) {
        double inv = nn_bn_inv_std(var[c], eps);
        y[i] = nn_bn_output(nn_bn_value(x[i], mean[c], inv, gamma[c], beta[c]), relu);
    }
}

/* Slices per channel for the partial sums: enough blocks for every SM, 8+ values a thread. */
static int bn_slices(const cuda_backend_t *gpu, int channels, size_t per_channel)
{
    size_t want = ((size_t)gpu->sm_count * 4 + channels - 1) / channels;
    size_t most = (per_channel + THREADS * 8 - 1) / (THREADS * 8);
    if (want > most)
        want = most;
    if (want > 65535)
        want = 65535;
    return want ? (int)want : 1;
}

static void bn_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                             const float *gamma, const float *beta, float *running_mean,
                             float *running_var, float *save_mean, float *save_var,
                             nn_tensor_t *y, int relu)
{
    cuda_backend_t *gpu = cuda_of(be);
    check_shape("batch norm input", x, x->n, op->ch, x->h, x->w);
    check_shape("batch norm output", y, x->n, op->ch, x->h, x->w);
    size_t plane = (size_t)x->h * x->w, per_channel = plane * x->n;
    if (per_channel < 2)
        die(EXIT_INTERNAL, "batch norm in training needs more than 1 value per channel");

    int slices = bn_slices(gpu, x->c, per_channel);
    size_t partial_bytes = (size_t)x->c * slices * sizeof(double);
    double *partial = (double *)workspace_get(gpu, partial_bytes + x->c * sizeof(double),
                                              "batch norm partial sums");
    double *mean = partial + (size_t)x->c * slices;
    dim3 grid(x->c, slices);
    unsigned channel_blocks = (x->c + THREADS - 1) / THREADS;

    /* Two passes as the host reference: the mean, then the centred second moment. */
    bn_partial_moment<<<grid, THREADS, 0, gpu->stream>>>(x->data, x->n, x->c, plane, NULL, 0,
                                                         partial);
    KERNEL_CHECK("bn_partial_moment");
    bn_finish_mean<<<channel_blocks, THREADS, 0, gpu->stream>>>(partial, slices,
                                                                (double)per_channel, x->c, mean);
    KERNEL_CHECK("bn_finish_mean");
    bn_partial_moment<<<grid, THREADS, 0, gpu->stream>>>(x->data, x->n, x->c, plane, mean, 1,
                                                         partial);
    KERNEL_CHECK("bn_partial_moment");
    bn_finish_var<<<channel_blocks, THREADS, 0, gpu->stream>>>(
        partial, slices, (double)per_channel, x->c, mean, op->momentum, save_mean, save_var,
        running_mean, running_var);
    KERNEL_CHECK("bn_finish_var");

    bn_apply<<<plane_grid(x), THREADS, 0, gpu->stream>>>(
        x->data, x->c, plane, gamma, beta, save_mean, save_var, op->eps, relu, y->data);
    KERNEL_CHECK("bn_apply");
}

static void gpu_bnorm_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                    const float *gamma, const float *beta, float *running_mean,
                                    float *running_var, float *save_mean, float *save_var,
                                    nn_tensor_t *y)
{
    bn_forward_train(be, op, x, gamma, beta, running_mean, running_var, save_mean, save_var, y,
                     0);
}

static void gpu_bnorm_relu_forward_train(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                         const float *gamma, const float *beta,
                                         float *running_mean, float *running_var,
                                         float *save_mean, float *save_var, nn_tensor_t *y)
{
    bn_forward_train(be, op, x, gamma, beta, running_mean, running_var, save_mean, save_var, y,
                     1);
}

/* Inference: y = act(x * scale + shift + residual), scale and shift from the running stats. */
__global__ static void bn_infer_apply(const float *x, int channels, size_t plane,
                                      const float *gamma, const float *beta, const float *mean,
                                      const float *var, float eps, const float *residual,
                                      int relu, float *y)
{
    FOR_PLANE_VALUES(row, channels, c, plane, i) {
        y[i] = nn_bn_infer_value(x[i], mean[c], var[c], gamma[c], beta[c], eps,
                                 residual ? residual[i] : 0.0f, relu);
    }
}

static void bn_infer(cuda_backend_t *gpu, const nn_bnorm_t *op, const nn_tensor_t *x,
                     const float *gamma, const float *beta, const float *running_mean,
                     const float *running_var, const float *residual, int relu, float *y)
{
    size_t plane = (size_t)x->h * x->w;
    bn_infer_apply<<<plane_grid(x), THREADS, 0, gpu->stream>>>(
        x->data, x->c, plane, gamma, beta, running_mean, running_var, op->eps, residual,
        relu, y);
    KERNEL_CHECK("bn_infer_apply");
}

static void gpu_bnorm_forward_infer(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                    const float *gamma, const float *beta,
                                    const float *running_mean, const float *running_var,
                                    nn_tensor_t *y)
{
    check_shape("batch norm input", x, x->n, op->ch, x->h, x->w);
    check_shape("batch norm output", y, x->n, op->ch, x->h, x->w);
    bn_infer(cuda_of(be), op, x, gamma, beta, running_mean, running_var, NULL, 0, y->data);
}

static void gpu_conv_bn_forward_infer(nn_backend_t *be, nn_conv_t *op, const nn_bnorm_t *bn,
                                      const nn_tensor_t *x, const float *w, const float *gamma,
                                      const float *beta, const float *running_mean,
                                      const float *running_var, const nn_tensor_t *residual,
                                      int relu, nn_tensor_t *y)
{
    cuda_backend_t *gpu = cuda_of(be);
    conv_check_output(op, x, y, "convolution output");
    if (residual)
        check_shape("residual", residual, y->n, y->c, y->h, y->w);

    /* The convolution lands in y and batch norm runs in place, unless y is an input. */
    nn_tensor_t conv_out = *y;
    float *scratch = NULL;
    if (y->data == x->data || (residual && y->data == residual->data)) {
        scratch = (float *)device_alloc(gpu, nn_numel(y) * sizeof(float), "a convolution output");
        conv_out.data = scratch;
    }
    conv_forward_into(gpu, op, x, w, conv_out.data);
    bn_infer(gpu, bn, &conv_out, gamma, beta, running_mean, running_var,
             residual ? residual->data : NULL, relu, y->data);
    if (scratch)
        device_free(gpu, scratch);
}

/* Backward partial sums per (channel, slice): sum dy and sum dy * xhat, dy masked by the
 * fused relu when relu is set. */
__global__ static void bn_partial_backward(const float *x, const float *dy, int batch,
                                           int channels, size_t plane, const float *gamma,
                                           const float *beta, const float *mean,
                                           const float *var, float eps, int relu,
                                           double *partial)
{
    __shared__ double shared[THREADS];
    int c = blockIdx.x;
    double sum_dy, sum_dy_xhat;
    nn_bn_thread_backward(x, dy, batch, channels, plane, c, SLICE_FIRST, SLICE_STEP, mean[c],
                          var[c], gamma[c], beta[c], eps, relu, &sum_dy, &sum_dy_xhat);
    double total_dy = block_sum(sum_dy, shared);
    double total_dy_xhat = block_sum(sum_dy_xhat, shared);
    if (threadIdx.x == 0) {
        size_t slot = ((size_t)c * gridDim.y + blockIdx.y) * 2;
        partial[slot] = total_dy;
        partial[slot + 1] = total_dy_xhat;
    }
}

/* Per channel: dgamma, dbeta, and the two means the data gradient needs (into means). */
__global__ static void bn_finish_backward(const double *partial, int slices, double count,
                                          int channels, float *dgamma, float *dbeta,
                                          double *means)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels)
        return;
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int s = 0; s < slices; s++) {
        sum_dy += partial[((size_t)c * slices + s) * 2];
        sum_dy_xhat += partial[((size_t)c * slices + s) * 2 + 1];
    }
    dgamma[c] = (float)sum_dy_xhat;
    dbeta[c] = (float)sum_dy;
    means[2 * c] = sum_dy / count;
    means[2 * c + 1] = sum_dy_xhat / count;
}

__global__ static void bn_apply_backward(const float *x, const float *dy, int channels,
                                         size_t plane, const float *gamma, const float *beta,
                                         const float *mean, const float *var, float eps,
                                         int relu, const double *means, float *dx)
{
    FOR_PLANE_VALUES(row, channels, c, plane, i) {
        dx[i] = nn_bn_dx(x[i], dy[i], mean[c], var[c], gamma[c], beta[c], eps, relu,
                         means[2 * c], means[2 * c + 1]);
    }
}

static void bn_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                        const nn_tensor_t *dy, const float *gamma, const float *beta,
                        const float *save_mean, const float *save_var, nn_tensor_t *dx,
                        float *dgamma, float *dbeta, int relu)
{
    cuda_backend_t *gpu = cuda_of(be);
    check_shape("batch norm input", x, x->n, op->ch, x->h, x->w);
    check_shape("batch norm output gradient", dy, x->n, op->ch, x->h, x->w);
    check_shape("batch norm input gradient", dx, x->n, op->ch, x->h, x->w);
    size_t plane = (size_t)x->h * x->w, per_channel = plane * x->n;

    int slices = bn_slices(gpu, x->c, per_channel);
    size_t partial_values = (size_t)x->c * slices * 2;
    double *partial = (double *)workspace_get(
        gpu, (partial_values + 2 * (size_t)x->c) * sizeof(double), "batch norm partial sums");
    double *means = partial + partial_values;
    dim3 grid(x->c, slices);
    unsigned channel_blocks = (x->c + THREADS - 1) / THREADS;

    bn_partial_backward<<<grid, THREADS, 0, gpu->stream>>>(x->data, dy->data, x->n, x->c, plane,
                                                           gamma, beta, save_mean, save_var,
                                                           op->eps, relu, partial);
    KERNEL_CHECK("bn_partial_backward");
    bn_finish_backward<<<channel_blocks, THREADS, 0, gpu->stream>>>(
        partial, slices, (double)per_channel, x->c, dgamma, dbeta, means);
    KERNEL_CHECK("bn_finish_backward");
    bn_apply_backward<<<plane_grid(x), THREADS, 0, gpu->stream>>>(
        x->data, dy->data, x->c, plane, gamma, beta, save_mean, save_var, op->eps, relu,
        means, dx->data);
    KERNEL_CHECK("bn_apply_backward");
}

/* The plain backward has no beta: the mask is not needed, so any pointer does. */
static void gpu_bnorm_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                               const nn_tensor_t *dy, const float *gamma, const float *save_mean,
                               const float *save_var, nn_tensor_t *dx, float *dgamma,
                               float *dbeta)
{
    bn_backward(be, op, x, dy, gamma, gamma, save_mean, save_var, dx, dgamma, dbeta, 0);
}

/*
 * The relu's mask is recomputed from x with the same expression and the same float
 * statistics as the forward. The interface passes no beta to the backward, so the forward
 * keeps a pointer to it: the op's beta pointer is the one of its forward (rule of nn.h: the
 * backward follows the forward of the same op).
 */
typedef struct {
    int kind; /* PLAN_BN_RELU */
    const float *beta;
} bn_relu_plan_t;

static void gpu_bnorm_relu_forward_train_keep(nn_backend_t *be, nn_bnorm_t *op,
                                              const nn_tensor_t *x, const float *gamma,
                                              const float *beta, float *running_mean,
                                              float *running_var, float *save_mean,
                                              float *save_var, nn_tensor_t *y)
{
    bn_relu_plan_t *plan = (bn_relu_plan_t *)op->plan;
    if (!plan) {
        plan = (bn_relu_plan_t *)xcalloc(1, sizeof *plan);
        plan->kind = PLAN_BN_RELU;
        op->plan = plan;
    }
    plan->beta = beta;
    gpu_bnorm_relu_forward_train(be, op, x, gamma, beta, running_mean, running_var, save_mean,
                                 save_var, y);
}

static void gpu_bnorm_relu_backward(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                    const nn_tensor_t *dy, const float *gamma,
                                    const float *save_mean, const float *save_var,
                                    nn_tensor_t *dx, float *dgamma, float *dbeta)
{
    bn_relu_plan_t *plan = (bn_relu_plan_t *)op->plan;
    if (!plan || plan->kind != PLAN_BN_RELU)
        die(EXIT_INTERNAL, "cuda: batch norm + relu backward without its forward");
    bn_backward(be, op, x, dy, gamma, plan->beta, save_mean, save_var, dx, dgamma, dbeta, 1);
}

/* ---- relu, add ------------------------------------------------------------------------- */

__global__ static void relu_kernel(const float *x, size_t total, float *y)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__global__ static void relu_backward_kernel(const float *y, const float *dy, size_t total,
                                            float *dx)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

static void gpu_relu_forward(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *x,
                             nn_tensor_t *y)
{
    (void)op;
    cuda_backend_t *gpu = cuda_of(be);
    check_shape("relu output", y, x->n, x->c, x->h, x->w);
    size_t total = nn_numel(x);
    relu_kernel<<<blocks_for(gpu, total), THREADS, 0, gpu->stream>>>(x->data, total, y->data);
    KERNEL_CHECK("relu_kernel");
}

static void gpu_relu_backward(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *y,
                              const nn_tensor_t *dy, nn_tensor_t *dx)
{
    (void)op;
    cuda_backend_t *gpu = cuda_of(be);
    check_shape("relu gradient", dy, y->n, y->c, y->h, y->w);
    size_t total = nn_numel(y);
    relu_backward_kernel<<<blocks_for(gpu, total), THREADS, 0, gpu->stream>>>(
        y->data, dy->data, total, dx->data);
    KERNEL_CHECK("relu_backward_kernel");
}

__global__ static void add_kernel(const float *a, const float *b, size_t total, int relu,
                                  float *y)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = a[i] + b[i];
        y[i] = relu && !(v > 0.0f) ? 0.0f : v;
    }
}

static void add_maybe_relu(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b,
                           nn_tensor_t *y, int relu)
{
    cuda_backend_t *gpu = cuda_of(be);
    check_shape("add operand", b, a->n, a->c, a->h, a->w);
    check_shape("add output", y, a->n, a->c, a->h, a->w);
    size_t total = nn_numel(a);
    add_kernel<<<blocks_for(gpu, total), THREADS, 0, gpu->stream>>>(a->data, b->data, total,
                                                                    relu, y->data);
    KERNEL_CHECK("add_kernel");
}

static void gpu_add(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b, nn_tensor_t *y)
{
    add_maybe_relu(be, a, b, y, 0);
}

static void gpu_add_relu(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b,
                         nn_tensor_t *y)
{
    add_maybe_relu(be, a, b, y, 1);
}

/* ---- pooling --------------------------------------------------------------------------- */

/* One thread per output: nn_maxpool_one over its plane. */
__global__ static void maxpool_kernel(const float *x, int h, int w, int out_h, int out_w,
                                      int kernel, int stride, int pad, size_t total, float *y,
                                      int32_t *argmax)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int ox = (int)(i % out_w), oy = (int)(i / out_w % out_h);
        size_t plane = i / ((size_t)out_w * out_h);
        int32_t at;
        y[i] = nn_maxpool_one(x + plane * h * w, h, w, oy, ox, kernel, stride, pad, &at);
        if (argmax)
            argmax[i] = at;
    }
}

/* One thread per input value: the gradients of the windows whose maximum it was. */
__global__ static void maxpool_backward_kernel(const float *dy, const int32_t *argmax, int h,
                                               int w, int out_h, int out_w, int kernel,
                                               int stride, int pad, size_t total, float *dx)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int ix = (int)(i % w), iy = (int)(i / w % h);
        size_t plane = i / ((size_t)w * h), out_at = plane * out_h * out_w;
        dx[i] = nn_maxpool_grad_one(dy + out_at, argmax + out_at, out_h, out_w, w, iy, ix,
                                    kernel, stride, pad);
    }
}

static void gpu_maxpool_forward(nn_backend_t *be, nn_pool_t *op, const nn_tensor_t *x,
                                nn_tensor_t *y, int training)
{
    cuda_backend_t *gpu = cuda_of(be);
    int out_h = out_size(x->h, op->kernel, op->stride, op->pad);
    int out_w = out_size(x->w, op->kernel, op->stride, op->pad);
    check_shape("max pool output", y, x->n, x->c, out_h, out_w);
    size_t total = nn_numel(y);

    int32_t *argmax = NULL;
    if (training) {
        pool_plan_t *plan = (pool_plan_t *)op->plan;
        if (!plan) {
            plan = (pool_plan_t *)xcalloc(1, sizeof *plan);
            plan->kind = PLAN_POOL;
            op->plan = plan;
        }
        if (plan->capacity < total) {
            device_free(gpu, plan->argmax);
            plan->argmax = (int32_t *)device_alloc(gpu, total * sizeof(int32_t),
                                                   "max pool positions");
            plan->capacity = total;
        }
        argmax = plan->argmax;
    }
    maxpool_kernel<<<blocks_for(gpu, total), THREADS, 0, gpu->stream>>>(
        x->data, x->h, x->w, out_h, out_w, op->kernel, op->stride, op->pad, total, y->data,
        argmax);
    KERNEL_CHECK("maxpool_kernel");
}

static void gpu_maxpool_backward(nn_backend_t *be, nn_pool_t *op, const nn_tensor_t *x,
                                 const nn_tensor_t *y, const nn_tensor_t *dy, nn_tensor_t *dx)
{
    cuda_backend_t *gpu = cuda_of(be);
    pool_plan_t *plan = (pool_plan_t *)op->plan;
    if (!plan || plan->kind != PLAN_POOL || plan->capacity < nn_numel(y))
        die(EXIT_INTERNAL, "cuda: max pool backward without a training forward");
    check_shape("max pool output gradient", dy, y->n, y->c, y->h, y->w);
    check_shape("max pool input gradient", dx, x->n, x->c, x->h, x->w);
    size_t total = nn_numel(x);
    maxpool_backward_kernel<<<blocks_for(gpu, total), THREADS, 0, gpu->stream>>>(
        dy->data, plan->argmax, x->h, x->w, y->h, y->w, op->kernel, op->stride, op->pad, total,
        dx->data);
    KERNEL_CHECK("maxpool_backward_kernel");
}

/* Global average pool: one warp per (image, channel) plane. */
__global__ static void avgpool_kernel(const float *x, size_t planes, size_t plane, float *y)
{
    size_t warp = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= planes)
        return;
    const float *src = x + warp * plane;
    double sum = 0.0;
    for (size_t k = lane; k < plane; k += 32)
        sum += src[k];
    for (int offset = 16; offset > 0; offset /= 2)
        sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0)
        y[warp] = (float)(sum / plane);
}

__global__ static void avgpool_backward_kernel(const float *dy, size_t plane, size_t total,
                                               float *dx)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        dx[i] = dy[i / plane] / (float)plane;
}

static void gpu_avgpool_forward(nn_backend_t *be, const nn_tensor_t *x, nn_tensor_t *y)
{
    cuda_backend_t *gpu = cuda_of(be);
    check_shape("average pool output", y, x->n, x->c, 1, 1);
    size_t planes = (size_t)x->n * x->c, plane = (size_t)x->h * x->w;
    unsigned blocks = (unsigned)((planes * 32 + THREADS - 1) / THREADS);
    avgpool_kernel<<<blocks, THREADS, 0, gpu->stream>>>(x->data, planes, plane, y->data);
    KERNEL_CHECK("avgpool_kernel");
}

static void gpu_avgpool_backward(nn_backend_t *be, const nn_tensor_t *dy, nn_tensor_t *dx)
{
    cuda_backend_t *gpu = cuda_of(be);
    check_shape("average pool gradient", dy, dx->n, dx->c, 1, 1);
    size_t total = nn_numel(dx), plane = (size_t)dx->h * dx->w;
    avgpool_backward_kernel<<<blocks_for(gpu, total), THREADS, 0, gpu->stream>>>(
        dy->data, plane, total, dx->data);
    KERNEL_CHECK("avgpool_backward_kernel");
}

/* ---- linear (cuBLAS; row-major matrices seen as transposed column-major ones) ---------- */

__global__ static void add_bias_kernel(const float *b, int out, size_t total, float *y)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += b[i % out];
}

__global__ static void bias_grad_kernel(const float *dy, int rows, int out, float *db)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out)
        return;
    double sum = 0.0;
    for (int r = 0; r < rows; r++)
        sum += dy[(size_t)r * out + o];
    db[o] = (float)sum;
}

void nn_cuda_column_sums(nn_backend_t *be, const float *m, int rows, int cols, float *sums)
{
    bias_grad_kernel<<<(cols + THREADS - 1) / THREADS, THREADS, 0, cuda_of(be)->stream>>>(
        m, rows, cols, sums);
    KERNEL_CHECK("bias_grad_kernel");
}

static void gpu_linear_forward(nn_backend_t *be, nn_linear_t *op, const nn_tensor_t *x,
                               const float *w, const float *b, nn_tensor_t *y)
{
    cuda_backend_t *gpu = cuda_of(be);
    int rows = x->n;
    if ((size_t)op->in * rows != nn_numel(x))
        die(EXIT_INTERNAL, "cuda: linear input has %zu values, expected %d x %d", nn_numel(x),
            rows, op->in);
    check_shape("linear output", y, rows, op->out, 1, 1);

    /* y^T (out x rows) = w (out x in) . x^T (in x rows). */
    CUBLAS_CHECK(cublasSgemm(gpu->cublas, CUBLAS_OP_T, CUBLAS_OP_N, op->out, rows, op->in, &ONE,
                             w, op->in, x->data, op->in, &ZERO, y->data, op->out));
    if (b) {
        size_t total = (size_t)rows * op->out;
        add_bias_kernel<<<blocks_for(gpu, total), THREADS, 0, gpu->stream>>>(b, op->out, total,
                                                                             y->data);
        KERNEL_CHECK("add_bias_kernel");
    }
}

static void gpu_linear_backward(nn_backend_t *be, nn_linear_t *op, const nn_tensor_t *x,
                                const nn_tensor_t *dy, const float *w, nn_tensor_t *dx,
                                float *dw, float *db)
{
    cuda_backend_t *gpu = cuda_of(be);
    int rows = x->n;
    check_shape("linear output gradient", dy, rows, op->out, 1, 1);

    if (dx) {
        /* dx^T (in x rows) = w^T (in x out) . dy^T (out x rows). */
        CUBLAS_CHECK(cublasSgemm(gpu->cublas, CUBLAS_OP_N, CUBLAS_OP_N, op->in, rows, op->out,
                                 &ONE, w, op->in, dy->data, op->out, &ZERO, dx->data, op->in));
    }
    /* dw^T (in x out) = x^T (in x rows) . dy (rows x out). */
    CUBLAS_CHECK(cublasSgemm(gpu->cublas, CUBLAS_OP_N, CUBLAS_OP_T, op->in, op->out, rows, &ONE,
                             x->data, op->in, dy->data, op->out, &ZERO, dw, op->in));
    if (db)
        nn_cuda_column_sums(be, dy->data, rows, op->out, db);
}

/* ---- loss and optimizer: math_cuda.h's arithmetic, the same as host_ops.c ---------------- */

/* One block: each thread takes rows, writes their gradients, and sums the loss terms. */
__global__ static void bce_kernel(const float *logits, const float *labels, int rows,
                                  float *dlogits, double *sums)
{
    __shared__ double shared[THREADS];
    nn_bce_weights_t weights = nn_bce_weights(rows);
    double all_sum = 0.0, any_sum = 0.0;
    for (int i = threadIdx.x; i < rows * NN_LOSS_CLASSES; i += THREADS) {
        int k = i % NN_LOSS_CLASSES;
        double term = nn_bce_term(logits[i], labels[i]);
        all_sum += term;
        if (k == NN_LOSS_ANY_COLUMN)
            any_sum += term;
        if (dlogits)
            dlogits[i] = nn_bce_dlogit(logits[i], labels[i], k, weights);
    }
    double all_total = block_sum(all_sum, shared);
    double any_total = block_sum(any_sum, shared);
    if (threadIdx.x == 0) {
        sums[0] = all_total;
        sums[1] = any_total;
    }
}

static double gpu_bce_loss(nn_backend_t *be, const float *logits, const float *labels, int n,
                           float *dlogits)
{
    cuda_backend_t *gpu = cuda_of(be);
    double *sums = (double *)workspace_get(gpu, 2 * sizeof(double), "loss sums");
    bce_kernel<<<1, THREADS, 0, gpu->stream>>>(logits, labels, n, dlogits, sums);
    KERNEL_CHECK("bce_kernel");
    CUDA_CHECK(cudaMemcpyAsync(gpu->host_sums, sums, 2 * sizeof(double), cudaMemcpyDeviceToHost,
                               gpu->stream));
    CUDA_CHECK(cudaStreamSynchronize(gpu->stream));
    return nn_bce_combine(gpu->host_sums[0], gpu->host_sums[1], n);
}

__global__ static void adam_kernel(nn_adam_scalars_t s, float *w, const float *g, float *m,
                                   float *v, size_t count)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        nn_adam_update(&s, &w[i], g[i], &m[i], &v[i]);
}

static void gpu_adam_step(nn_backend_t *be, const nn_adam_t *hp, int64_t step, float *w,
                          const float *g, float *m, float *v, size_t count)
{
    cuda_backend_t *gpu = cuda_of(be);
    gpu->generation++;
    nn_adam_scalars_t s = nn_adam_scalars(hp, step);
    adam_kernel<<<blocks_for(gpu, count), THREADS, 0, gpu->stream>>>(s, w, g, m, v, count);
    KERNEL_CHECK("adam_kernel");
}

/* ---- loss scaling and mixed formats ---------------------------------------------------- */

/* x *= factor; one flag for the whole buffer: any block that saw a non-finite value sets it. */
__global__ static void scale_check_kernel(float *x, size_t count, float factor, int *nonfinite)
{
    int bad = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        bad |= !nn_scale_check(&x[i], factor);
    if (__syncthreads_or(bad) && threadIdx.x == 0)
        *nonfinite = 1;
}

static int gpu_scale_check_finite(nn_backend_t *be, float *x, size_t count, float factor)
{
    cuda_backend_t *gpu = cuda_of(be);
    if (!gpu->nonfinite)
        gpu->nonfinite = (int *)device_alloc(gpu, sizeof(int), "the overflow flag");
    CUDA_CHECK(cudaMemsetAsync(gpu->nonfinite, 0, sizeof(int), gpu->stream));
    scale_check_kernel<<<blocks_for(gpu, count), THREADS, 0, gpu->stream>>>(x, count, factor,
                                                                            gpu->nonfinite);
    KERNEL_CHECK("scale_check_kernel");
    int *host_flag = (int *)gpu->host_sums; /* pinned, free between losses */
    CUDA_CHECK(cudaMemcpyAsync(host_flag, gpu->nonfinite, sizeof(int), cudaMemcpyDeviceToHost,
                               gpu->stream));
    CUDA_CHECK(cudaStreamSynchronize(gpu->stream));
    return *host_flag == 0;
}

static int gpu_set_mixed_format(nn_backend_t *be, int format)
{
    if (format != NN_PRECISION_BF16 && format != NN_PRECISION_FP16)
        return 0;
    cuda_of(be)->mixed_format = format;
    return 1;
}

/* ---- batches in: pinned staging and a copy stream ---------------------------------------- */

static void *pinned_alloc(cuda_backend_t *gpu, size_t bytes)
{
    void *p = NULL;
    cudaError_t status = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        die(EXIT_INTERNAL, "out of pinned host memory allocating a %.1f MiB staging buffer for "
            "GPU %d", bytes / MIB, gpu->device);
    }
    if (status != cudaSuccess)
        cuda_die(status, "cudaHostAlloc", __FILE__, __LINE__);
    return p;
}

/*
 * Two staging slots in turn: while the GPU copies one batch, the caller may stage the next.
 * A slot is refilled once its previous copy finished. The copy waits for the ops submitted
 * before it (they may still read dev), and the ops submitted after it wait for the copy;
 * the caller's thread waits for neither. Data only: no new weights generation.
 */
static void gpu_to_device_async(nn_backend_t *be, void *dev, const void *host, size_t bytes)
{
    cuda_backend_t *gpu = cuda_of(be);
    if (bytes == 0)
        return;
    int slot = gpu->staging_next;
    gpu->staging_next ^= 1;
    if (gpu->staging_used[slot])
        CUDA_CHECK(cudaEventSynchronize(gpu->copy_done[slot]));
    if (bytes > gpu->staging_bytes[slot]) {
        if (gpu->staging[slot])
            CUDA_CHECK(cudaFreeHost(gpu->staging[slot]));
        gpu->staging[slot] = pinned_alloc(gpu, bytes);
        gpu->staging_bytes[slot] = bytes;
    }
    memcpy(gpu->staging[slot], host, bytes);

    CUDA_CHECK(cudaEventRecord(gpu->compute_mark, gpu->stream));
    CUDA_CHECK(cudaStreamWaitEvent(gpu->copy_stream, gpu->compute_mark, 0));
    CUDA_CHECK(cudaMemcpyAsync(dev, gpu->staging[slot], bytes, cudaMemcpyHostToDevice,
                               gpu->copy_stream));
    CUDA_CHECK(cudaEventRecord(gpu->copy_done[slot], gpu->copy_stream));
    CUDA_CHECK(cudaStreamWaitEvent(gpu->stream, gpu->copy_done[slot], 0));
    gpu->staging_used[slot] = 1;
}

/* ---- creation -------------------------------------------------------------------------- */

static void gpu_destroy(nn_backend_t *be)
{
    cuda_backend_t *gpu = cuda_of(be);
    /* A fault of the last ops that nothing waited for is reported, not dropped. */
    CUDA_CHECK(cudaStreamSynchronize(gpu->stream));
    CUDA_CHECK(cudaStreamSynchronize(gpu->copy_stream));
    if (gpu->workspace)
        cudaFree(gpu->workspace);
    for (int i = 0; i < 3; i++)
        cudaFree(gpu->half_buf[i]);
    cudaFree(gpu->nonfinite);
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(gpu->staging[i]);
        cudaEventDestroy(gpu->copy_done[i]);
    }
    cudaEventDestroy(gpu->compute_mark);
    cudaStreamDestroy(gpu->copy_stream);
    cudaFreeHost(gpu->host_sums);
    cublasDestroy(gpu->cublas);
    cudnnDestroy(gpu->cudnn);
    cudaStreamDestroy(gpu->stream);
    delete gpu->sizes;
    delete gpu->algos;
    free(gpu);
}

void nn_cuda_plugin_memory(nn_backend_t *be, size_t *in_use, size_t *peak)
{
    cuda_backend_t *gpu = cuda_of(be);
    *in_use = gpu->in_use + gpu->workspace_bytes;
    *peak = gpu->peak;
}

/* The memory algorithms may use while being measured: NN_CUDA_WORKSPACE_MB, else a quarter
 * of what is free, at most 1 GiB (measured algorithms that need more are passed over). */
static size_t find_limit(void)
{
    const char *env = getenv("NN_CUDA_WORKSPACE_MB");
    if (env && *env)
        return (size_t)strtoull(env, NULL, 10) << 20;
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess)
        return (size_t)256 << 20;
    size_t limit = free_bytes / 4;
    return limit > ((size_t)1 << 30) ? (size_t)1 << 30 : limit;
}

/* Report a failure to start in err (the caller prints it) and clear CUDA's error state. */
static nn_backend_t *start_failed(char *err, size_t err_size, const char *fmt, const char *a,
                                  const char *b)
{
    snprintf(err, err_size, fmt, a, b);
    cudaGetLastError();
    return NULL;
}

/* Undo a start that failed part way: what was made is non-null (the struct is zeroed). */
static void start_cleanup(cuda_backend_t *gpu)
{
    if (gpu->host_sums)
        cudaFreeHost(gpu->host_sums);
    for (int i = 0; i < 2; i++)
        if (gpu->copy_done[i])
            cudaEventDestroy(gpu->copy_done[i]);
    if (gpu->compute_mark)
        cudaEventDestroy(gpu->compute_mark);
    if (gpu->copy_stream)
        cudaStreamDestroy(gpu->copy_stream);
    if (gpu->stream)
        cudaStreamDestroy(gpu->stream);
    delete gpu->sizes;
    delete gpu->algos;
    free(gpu);
}

nn_backend_t *nn_cuda_plugin_create(int device, char *err, size_t err_size)
{
    char what[64];
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status == cudaErrorInsufficientDriver)
        return start_failed(err, err_size,
                            "no usable NVIDIA GPU: no NVIDIA driver is loaded, or it is older "
                            "than this build's CUDA runtime needs (cudaGetDeviceCount: %s, %s)",
                            cudaGetErrorString(status), cudaGetErrorName(status));
    if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0))
        return start_failed(err, err_size, "no NVIDIA GPU found%s%s (CUDA_VISIBLE_DEVICES?)",
                            "", "");
    if (status != cudaSuccess)
        return start_failed(err, err_size, "no usable NVIDIA GPU: cudaGetDeviceCount: %s (%s)",
                            cudaGetErrorString(status), cudaGetErrorName(status));
    if (device >= count) {
        snprintf(what, sizeof what, "%d", count);
        snprintf(err, err_size, "cuda:%d: only %s GPU(s) visible (cuda:0 .. cuda:%d)", device,
                 what, count - 1);
        return NULL;
    }

    cudaDeviceProp prop;
    if ((status = cudaSetDevice(device)) != cudaSuccess ||
        (status = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
        return start_failed(err, err_size, "GPU cannot be opened: %s (%s)",
                            cudaGetErrorString(status), cudaGetErrorName(status));
    if (prop.major < 8) {
        snprintf(err, err_size,
                 "GPU %d (%s) is sm_%d%d; this build has kernels for sm_80 and newer (CUDA 13 "
                 "dropped sm_70)",
                 device, prop.name, prop.major, prop.minor);
        return NULL;
    }

    cuda_backend_t *gpu = (cuda_backend_t *)xcalloc(1, sizeof *gpu);
    gpu->device = device;
    gpu->sm_count = prop.multiProcessorCount;
    gpu->sizes = new std::unordered_map<void *, size_t>();
    gpu->algos = new std::unordered_map<std::string, struct conv_algos>();
    gpu->mixed_format = NN_PRECISION_BF16;
    unsigned no_timing = cudaEventDisableTiming;
    if ((status = cudaStreamCreateWithFlags(&gpu->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (status = cudaStreamCreateWithFlags(&gpu->copy_stream, cudaStreamNonBlocking)) !=
            cudaSuccess ||
        (status = cudaEventCreateWithFlags(&gpu->compute_mark, no_timing)) != cudaSuccess ||
        (status = cudaEventCreateWithFlags(&gpu->copy_done[0], no_timing)) != cudaSuccess ||
        (status = cudaEventCreateWithFlags(&gpu->copy_done[1], no_timing)) != cudaSuccess ||
        (status = cudaMallocHost((void **)&gpu->host_sums, 2 * sizeof(double))) != cudaSuccess) {
        start_cleanup(gpu);
        return start_failed(err, err_size, "CUDA stream or pinned memory: %s (%s)",
                            cudaGetErrorString(status), cudaGetErrorName(status));
    }
    cudnnStatus_t dnn = cudnnCreate(&gpu->cudnn);
    cublasStatus_t blas = dnn == CUDNN_STATUS_SUCCESS ? cublasCreate(&gpu->cublas)
                                                      : CUBLAS_STATUS_NOT_INITIALIZED;
    if (dnn != CUDNN_STATUS_SUCCESS || blas != CUBLAS_STATUS_SUCCESS) {
        if (dnn != CUDNN_STATUS_SUCCESS)
            snprintf(err, err_size, "cuDNN does not start on GPU %d: %s", device,
                     cudnnGetErrorString(dnn));
        else
            snprintf(err, err_size, "cuBLAS does not start on GPU %d: %s", device,
                     cublasGetStatusString(blas));
        if (dnn == CUDNN_STATUS_SUCCESS)
            cudnnDestroy(gpu->cudnn);
        start_cleanup(gpu);
        return NULL;
    }
    CUDNN_CHECK(cudnnSetStream(gpu->cudnn, gpu->stream));
    CUBLAS_CHECK(cublasSetStream(gpu->cublas, gpu->stream));
    /* fp32 linear layers without TF32, for parity with the CPU backend. */
    CUBLAS_CHECK(cublasSetMathMode(gpu->cublas, CUBLAS_PEDANTIC_MATH));
    gpu->find_limit = find_limit();
    log_debug("cuda: GPU %d %s (sm_%d%d, %d SMs, %.0f MiB), cuDNN %zu, algorithm search "
              "within %.0f MiB",
              device, prop.name, prop.major, prop.minor, prop.multiProcessorCount,
              prop.totalGlobalMem / MIB, cudnnGetVersion(), gpu->find_limit / MIB);

    nn_backend_t *be = &gpu->base;
    be->name = "cuda";
    be->alloc = gpu_alloc;
    be->release = gpu_release;
    be->to_host = gpu_to_host;
    be->to_device = gpu_to_device;
    be->release_plan = gpu_release_plan;
    be->synchronize = gpu_synchronize;
    be->weights_changed = gpu_weights_changed;
    be->to_plain = gpu_to_plain;
    be->conv_forward = gpu_conv_forward;
    be->conv_backward_data = gpu_conv_backward_data;
    be->conv_backward_weights = gpu_conv_backward_weights;
    be->bnorm_forward_train = gpu_bnorm_forward_train;
    be->bnorm_forward_infer = gpu_bnorm_forward_infer;
    be->bnorm_backward = gpu_bnorm_backward;
    be->bnorm_relu_forward_train = gpu_bnorm_relu_forward_train_keep;
    be->bnorm_relu_backward = gpu_bnorm_relu_backward;
    be->conv_bn_forward_infer = gpu_conv_bn_forward_infer;
    be->relu_forward = gpu_relu_forward;
    be->relu_backward = gpu_relu_backward;
    be->maxpool_forward = gpu_maxpool_forward;
    be->maxpool_backward = gpu_maxpool_backward;
    be->avgpool_forward = gpu_avgpool_forward;
    be->avgpool_backward = gpu_avgpool_backward;
    be->linear_forward = gpu_linear_forward;
    be->linear_backward = gpu_linear_backward;
    be->add = gpu_add;
    be->add_relu = gpu_add_relu;
    be->bce_loss = gpu_bce_loss;
    be->adam_step = gpu_adam_step;
    be->destroy = gpu_destroy;
    be->set_mixed_format = gpu_set_mixed_format;
    be->scale_check_finite = gpu_scale_check_finite;
    be->to_device_async = gpu_to_device_async;
    nn_cuda_seq_install(be);
    return be;
}
