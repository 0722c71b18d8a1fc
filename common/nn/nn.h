/*
 * The NN engine's core: tensors, op descriptors and the backend interface.
 *
 * A backend (CPU on oneDNN, GPU on cuDNN/cuBLAS) implements every op as a
 * function in nn_backend_t. Ops are described by small structs (nn_conv_t, nn_bnorm_t, ...)
 * that also carry a backend-owned plan: whatever the backend builds on the first call for a
 * given input shape (primitives, algorithm choices, workspaces) and reuses afterwards.
 *
 * Conventions, the same for every backend:
 * - Activations are 4-D float tensors; a vector per image is N x C x 1 x 1. A tensor is in
 *   plain NCHW order unless its layout says NN_LAYOUT_NATIVE: then it is in the order the
 *   backend computes fastest in (oneDNN's channel blocks on the CPU), takes the same bytes,
 *   and only backend ops read it (nn_backend_t.to_plain converts). Ops accept inputs in
 *   either layout and write outputs in the layout their output tensor names.
 * - NN_LAYOUT_NATIVE_HALF: the backend's order in 16-bit values (bf16), half the bytes (data
 *   stays typed float * as storage). Only inference takes it: conv_bn_forward_infer,
 *   maxpool_forward with training 0, avgpool_forward and to_plain, on a backend whose
 *   half_activations is 1. Mixed-precision inference keeps its activations so, and each
 *   convolution reads them as they are instead of converting fp32 at its input.
 * - Tensor data lives in the backend's memory (host memory for the CPU backend); move data
 *   with nn_backend_t.to_host / to_device.
 * - Backward functions assign (never accumulate) both activation and parameter gradients:
 *   the models use every parameter once, and sum branch gradients explicitly with add.
 * - The backward of an op with a plan (max pool, batch norm) must follow the forward of the
 *   same op object for the same batch.
 *
 * Backends: "cpu" (backend_cpu.c, oneDNN) and "cuda" (backend_cuda.cu: cuDNN, cuBLAS and own
 * kernels, device memory; built when mk/probe.sh finds CUDA).
 * missing: concat; the LSTM alone (common/nn/lstm.c) behind this interface (the CUDA backend
 * has the whole sequence model, seq_*, instead).
 */
#ifndef ICH_NN_H
#define ICH_NN_H

#include <stddef.h>
#include <stdint.h>

enum { NN_LAYOUT_NCHW = 0, NN_LAYOUT_NATIVE = 1, NN_LAYOUT_NATIVE_HALF = 2 };

typedef struct {
    float *data; /* backend memory */
    int n, c, h, w;
    int layout; /* NN_LAYOUT_*; 0 (plain) when left out of an initializer */
} nn_tensor_t;

static inline size_t nn_numel(const nn_tensor_t *t)
{
    return (size_t)t->n * (size_t)t->c * (size_t)t->h * (size_t)t->w;
}

/* Arithmetic of an op: fp32 throughout, or bf16 products with fp32 sums (mixed precision:
 * the caller's tensors, weights and gradients stay fp32). NN_PRECISION_FP16 is the same with
 * IEEE half products, on the CUDA backend only (the CPU computes it in fp32); training in it
 * needs loss scaling (nn/lossscale.h), as fp16 gradients underflow. */
enum { NN_PRECISION_FP32 = 0, NN_PRECISION_BF16 = 1, NN_PRECISION_FP16 = 2 };

/*
 * 2-D convolution without bias; weights [out_ch][in_ch / groups][kernel][kernel].
 * cache_weights = 1 lets the backend keep what it derives from the weights (a reordered or
 * converted copy) for as long as the weights pointer and the backend's weights generation stay
 * the same: adam_step, to_device and weights_changed start a new generation. Leave it 0 for
 * weights written by other means between calls.
 */
typedef struct {
    int in_ch, out_ch, kernel, stride, pad, groups;
    void *plan;
    int cache_weights;
    int precision; /* NN_PRECISION_* */
} nn_conv_t;

/* Batch norm over N, H, W per channel; gamma, beta, running stats have ch entries. */
typedef struct {
    int ch;
    float eps;      /* 1e-5 as PyTorch */
    float momentum; /* 0.1 as PyTorch: running = (1 - m) * running + m * batch */
    void *plan;
} nn_bnorm_t;

/* Max pooling, square window; output size floor((H + 2 pad - kernel) / stride) + 1. */
typedef struct {
    int kernel, stride, pad;
    void *plan;
} nn_pool_t;

/* Fully connected: y[n][out] = x[n][in] . w[out][in] + b[out]. */
typedef struct {
    int in, out;
    void *plan;
} nn_linear_t;

/* One relu call site (its plan is cached per shape). */
typedef struct {
    void *plan;
} nn_relu_t;

/* Adam with torch.optim.Adam's semantics (L2 weight decay added to the gradient). */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
} nn_adam_t;

/*
 * The sequence model's tensors (nn/seqmodel.h) in backend memory, for the seq_* ops: each
 * LSTM's 8 tensors in state_dict order (weight_ih, weight_hh, bias_ih, bias_hh, then the
 * same _reverse), the linear layers' weights [out][in] and biases.
 */
enum { NN_SEQ_LINEAR1 = 0, NN_SEQ_LINEAR2 = 1, NN_SEQ_HEAD = 2 };
typedef struct {
    float *lstm[2][8];                   /* lstm1, lstm2 */
    float *linear_w[3], *linear_b[3];    /* NN_SEQ_* */
} nn_seq_tensors_t;

typedef struct nn_backend nn_backend_t;

struct nn_backend {
    const char *name;
    int half_activations; /* 1: takes NN_LAYOUT_NATIVE_HALF tensors where that says */

    /* Memory: alloc returns zeroed memory aligned to 64 bytes; dies when out of memory. */
    void *(*alloc)(nn_backend_t *be, size_t bytes);
    void (*release)(nn_backend_t *be, void *p);
    void (*to_host)(nn_backend_t *be, void *host, const void *dev, size_t bytes);
    void (*to_device)(nn_backend_t *be, void *dev, const void *host, size_t bytes);
    /* Free what the backend built for one op (any op struct's plan field). */
    void (*release_plan)(nn_backend_t *be, void **plan);
    /* Wait until every submitted op has finished. */
    void (*synchronize)(nn_backend_t *be);
    /* Weights were written by other means than adam_step / to_device: drop cached copies. */
    void (*weights_changed)(nn_backend_t *be);
    /* Copy a tensor in any layout into plain NCHW order (dst: backend memory, numel floats). */
    void (*to_plain)(nn_backend_t *be, const nn_tensor_t *src, float *dst);
    /* An NN_LAYOUT_NATIVE tensor into the same in 16 bits (NN_LAYOUT_NATIVE_HALF), rounded to
     * nearest even; NULL on backends without half_activations. */
    void (*to_half)(nn_backend_t *be, const nn_tensor_t *src, nn_tensor_t *dst);

    void (*conv_forward)(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x, const float *w,
                         nn_tensor_t *y);
    /*
     * The two backward calls of one op, run back to back on the same dy (either order), may
     * share the reorder of dy (into bf16, or into the kernel's layout; the CPU backend does):
     * nothing may write dy between them, on the host either.
     */
    void (*conv_backward_data)(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *dy,
                               const float *w, nn_tensor_t *dx);
    void (*conv_backward_weights)(nn_backend_t *be, nn_conv_t *op, const nn_tensor_t *x,
                                  const nn_tensor_t *dy, float *dw);

    /*
     * Training: normalise with the batch statistics, store them (biased variance) in
     * save_mean / save_var for the backward, and update the running statistics (unbiased
     * variance, as PyTorch).
     */
    void (*bnorm_forward_train)(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                const float *gamma, const float *beta, float *running_mean,
                                float *running_var, float *save_mean, float *save_var,
                                nn_tensor_t *y);
    void (*bnorm_forward_infer)(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                const float *gamma, const float *beta, const float *running_mean,
                                const float *running_var, nn_tensor_t *y);
    void (*bnorm_backward)(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                           const nn_tensor_t *dy, const float *gamma, const float *save_mean,
                           const float *save_var, nn_tensor_t *dx, float *dgamma, float *dbeta);

    /* Batch norm in training followed by relu, in one pass; y = relu(bn(x)). The backward
     * (dy: the gradient at y) applies the relu's mask kept by the forward of the same op. */
    void (*bnorm_relu_forward_train)(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                     const float *gamma, const float *beta,
                                     float *running_mean, float *running_var, float *save_mean,
                                     float *save_var, nn_tensor_t *y);
    void (*bnorm_relu_backward)(nn_backend_t *be, nn_bnorm_t *op, const nn_tensor_t *x,
                                const nn_tensor_t *dy, const float *gamma,
                                const float *save_mean, const float *save_var, nn_tensor_t *dx,
                                float *dgamma, float *dbeta);

    /*
     * Inference in one pass: y = act(bn(conv(x, w)) + residual), batch norm with the running
     * statistics, residual optional (NULL), act relu when relu is 1, else identity.
     */
    void (*conv_bn_forward_infer)(nn_backend_t *be, nn_conv_t *op, const nn_bnorm_t *bn,
                                  const nn_tensor_t *x, const float *w, const float *gamma,
                                  const float *beta, const float *running_mean,
                                  const float *running_var, const nn_tensor_t *residual,
                                  int relu, nn_tensor_t *y);

    /* y may be x (in place); dx may be dy. The backward reads the forward's output y. */
    void (*relu_forward)(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *x, nn_tensor_t *y);
    void (*relu_backward)(nn_backend_t *be, nn_relu_t *op, const nn_tensor_t *y,
                          const nn_tensor_t *dy, nn_tensor_t *dx);

    /* training = 1 keeps what the backward needs. */
    void (*maxpool_forward)(nn_backend_t *be, nn_pool_t *op, const nn_tensor_t *x, nn_tensor_t *y,
                            int training);
    void (*maxpool_backward)(nn_backend_t *be, nn_pool_t *op, const nn_tensor_t *x,
                             const nn_tensor_t *y, const nn_tensor_t *dy, nn_tensor_t *dx);

    /* Global average pool: y is N x C x 1 x 1. */
    void (*avgpool_forward)(nn_backend_t *be, const nn_tensor_t *x, nn_tensor_t *y);
    void (*avgpool_backward)(nn_backend_t *be, const nn_tensor_t *dy, nn_tensor_t *dx);

    /* x, y, dx, dy are N x features x 1 x 1. b, db may be NULL (no bias). */
    void (*linear_forward)(nn_backend_t *be, nn_linear_t *op, const nn_tensor_t *x,
                           const float *w, const float *b, nn_tensor_t *y);
    void (*linear_backward)(nn_backend_t *be, nn_linear_t *op, const nn_tensor_t *x,
                            const nn_tensor_t *dy, const float *w, nn_tensor_t *dx, float *dw,
                            float *db);

    /* y = a + b elementwise (y may be a or b). */
    void (*add)(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b, nn_tensor_t *y);
    /* y = relu(a + b) (y may be a or b). */
    void (*add_relu)(nn_backend_t *be, const nn_tensor_t *a, const nn_tensor_t *b,
                     nn_tensor_t *y);

    /*
     * The method's loss (reference-method.md stage 3) over n rows of 6 logits, labels in
     * {0, 1}: (6 * BCE_mean(all) + BCE_mean(column 5)) / 7. Writes dloss/dlogits when dlogits
     * is not NULL; returns the loss. logits, labels, dlogits are backend memory.
     */
    double (*bce_loss)(nn_backend_t *be, const float *logits, const float *labels, int n,
                       float *dlogits);

    /* One Adam step over count values; step counts from 1. */
    void (*adam_step)(nn_backend_t *be, const nn_adam_t *hp, int64_t step, float *w,
                      const float *g, float *m, float *v, size_t count);

    void (*destroy)(nn_backend_t *be);

    /* Optional ops: NULL where a backend does not have them (the CPU backend: the first
     * three and the seq_* ones; the CUDA backend, whose weights are in plain order:
     * conv_set_native_weights and conv_weights_convert). */

    /* Convolutions asking for NN_PRECISION_BF16 compute in `format` (NN_PRECISION_BF16 or
     * NN_PRECISION_FP16) from the next call on, so that a model's mixed precision can be fp16
     * without changing its layers' choice. Returns 0 when the backend lacks the format. */
    int (*set_mixed_format)(nn_backend_t *be, int format);
    /* x[i] *= factor over count floats of backend memory; returns 1 when every x[i] was
     * finite before (loss scaling's unscale and overflow check in one pass). Waits. */
    int (*scale_check_finite)(nn_backend_t *be, float *x, size_t count, float factor);
    /* to_device that does not wait for the ops already submitted: host (any memory) is staged
     * in pinned memory before the call returns, and may be reused; the copy runs on a copy
     * stream after the ops submitted so far, and ops submitted after the call see it. For
     * data only: unlike to_device it does not start a new weights generation. */
    void (*to_device_async)(nn_backend_t *be, void *dev, const void *host, size_t bytes);

    /* From now on this conv's w and dw are in an order of the backend's own, fixed by the
     * conv's shape, that its kernels take without a reorder (on = 1), or in plain order (0,
     * the default; release_plan also returns to it). Returns 0, changing nothing, where the
     * backend has no such order for the conv. */
    int (*conv_set_native_weights)(nn_backend_t *be, nn_conv_t *op, int on);
    /* Weights of such a conv from plain order into that order (to_native 1) or back (0);
     * src and dst are distinct backend memory of the weights' size. Waits. */
    void (*conv_weights_convert)(nn_backend_t *be, const nn_conv_t *op, const float *src,
                                 float *dst, int to_native);

    /*
     * The sequence model of nn/seqmodel.h computed whole by the backend (the CUDA backend;
     * NULL on the CPU, where seqmodel.c computes it on the host with nn/lstm.h), with
     * seqmodel.c's arithmetic and padding. seq_create makes a plan for the sizes (released
     * by seq_destroy). seq_forward: embeddings [batch][steps][emb] and lengths (host memory,
     * series front-padded) -> logits [batch][steps][6] (host memory; waits), in precision
     * NN_PRECISION_FP32 or _BF16 (bf16 products, fp32 sums), keeping what the backward
     * needs. seq_backward, after a forward with the same weights: dlogits (host memory) ->
     * every gradient in grads, assigned.
     */
    void *(*seq_create)(nn_backend_t *be, int emb, int hidden, int pad_like_original);
    void (*seq_forward)(nn_backend_t *be, void *plan, int precision,
                        const nn_seq_tensors_t *weights, const float *embeddings, int batch,
                        int steps, const int *lengths, float *logits);
    void (*seq_backward)(nn_backend_t *be, void *plan, const nn_seq_tensors_t *weights,
                         const float *dlogits, const nn_seq_tensors_t *grads);
    void (*seq_destroy)(nn_backend_t *be, void *plan);
};

/*
 * The backend for a name: "cpu", "cuda" (GPU 0) or "cuda:N" (GPU N, as nvidia-smi numbers
 * them under CUDA_VISIBLE_DEVICES). On failure returns NULL and says why in err (when not
 * NULL; err_size bytes, truncated): an unknown name, a build without the CUDA backend, no
 * usable GPU or driver, an N past the GPUs present, a cuDNN or cuBLAS that does not load.
 * Programs print that reason and exit EXIT_USAGE (2): the option names a device this machine
 * or build does not have.
 */
nn_backend_t *nn_backend_open(const char *name, char *err, size_t err_size);
/* nn_backend_open without the buffer; the reason for its last NULL (in this thread) is
 * nn_backend_create_error(), "" after a success. */
nn_backend_t *nn_backend_create(const char *name);
const char *nn_backend_create_error(void);
nn_backend_t *nn_backend_cpu_create(void);
/* 1 when the build has the CUDA backend (nvcc, cuDNN, cuBLAS found by mk/probe.sh). */
int nn_backend_cuda_compiled(void);

/* Host reference arithmetic shared by the backends (and checked by the tests). */
double nn_host_bce_loss(const float *logits, const float *labels, int n, float *dlogits);
void nn_host_adam_step(const nn_adam_t *hp, int64_t step, float *w, const float *g, float *m,
                       float *v, size_t count);

/* Batch norm in training mode, plain loops with double sums: a reference for the backends. */
void nn_host_bnorm_forward_train(const nn_tensor_t *x, const float *gamma, const float *beta,
                                 float eps, float *save_mean, float *save_var, nn_tensor_t *y);
void nn_host_bnorm_backward(const nn_tensor_t *x, const nn_tensor_t *dy, const float *gamma,
                            const float *save_mean, const float *save_var, float eps,
                            nn_tensor_t *dx, float *dgamma, float *dbeta);

/*
 * The arithmetic a convolution gets when a model asks for `precision`: in NN_PRECISION_BF16
 * only the layer kinds measured faster in bf16 on this backend (bench/README.md) get bf16;
 * the others stay fp32. NN_BF16_KINDS (a comma list of "1x1", "grouped", "stem", or "all",
 * "none") overrides the measured choice, for measuring.
 */
int nn_conv_precision(int precision, const nn_conv_t *conv);

/* Step schedule: base_lr * gamma ^ floor(epoch / step_size) (torch StepLR). */
double nn_lr_step(double base_lr, int epoch, int step_size, double gamma);

/*
 * Deterministic values from a seeded integer hash, identical in the Python reference
 * (tests/ref/nn_hashinit.py): out[i] = offset + scale * (2 u - 1), u = hash(seed, i) in [0, 1)
 * with 24 bits. Every step is exact in float32, so both sides agree bit for bit.
 */
void nn_fill_hashed(float *out, size_t count, uint32_t seed, float scale, float offset);
uint32_t nn_name_seed(const char *name); /* FNV-1a of a tensor name */

#endif
