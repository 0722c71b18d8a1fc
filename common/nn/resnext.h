/*
 * ResNeXt as torchvision defines it (Bottleneck blocks: 1x1, grouped 3x3 carrying the
 * stride, 1x1 expanding 4x; 1x1 conv + batch norm downsample; 7x7/2 stem with max pool),
 * with a replaceable linear head and the pooled feature (the embedding) as a second output.
 * Tensor names equal torchvision's state_dict keys.
 *
 * Models by name:
 *   resnext50_32x4d    layers 3,4,6,3   groups 32, width 4, base 64 (embedding 2048)
 *   resnext101_32x8d   layers 3,4,23,3  groups 32, width 8, base 64 (embedding 2048)
 *   tiny               layers 2,2,2,2   groups 4,  width 8, base 16 (embedding 512)
 * where base is the stem width (torchvision: 64) and stage s has base * 2^s planes.
 */
#ifndef ICH_NN_RESNEXT_H
#define ICH_NN_RESNEXT_H

#include "nn/nn.h"
#include "nn/params.h"

typedef struct {
    const char *name;
    int layers[4];
    int groups, width_per_group, base;
} resnext_config_t;

typedef struct rx_block rx_block_t;

/* A convolution followed by batch norm, with what its backward needs. */
typedef struct {
    nn_conv_t conv;
    nn_bnorm_t bn;
    nn_relu_t relu; /* used when a relu follows */
    size_t w, gamma, beta, running_mean, running_var, batches; /* entry indices */
    float *save_mean, *save_var;                                /* backend memory */
    nn_tensor_t conv_out, bn_out; /* bn_out holds the relu's output where one follows */
} rx_convbn_t;

typedef struct {
    resnext_config_t config;
    int num_outputs, embed_dim;
    nn_backend_t *be;
    nn_paramset_t ps;

    rx_convbn_t stem;
    nn_pool_t maxpool;
    rx_block_t *blocks;
    int n_blocks;
    nn_linear_t fc;
    size_t fc_w, fc_b;

    /* Activations for the current batch shape (allocated on the first forward of a mode). */
    int act_n, act_h, act_w;
    int act_half; /* training keeps c1's and c2's bn_out in 16 bits (half_training) */
    size_t act_bytes, act_largest; /* training arena bytes; largest activation (values) */
    void *act_arena;               /* training: every activation */
    void *eval_arena;              /* inference: a few reused buffers */
    void *out_arena;               /* embedding, logits, dlogits */
    nn_tensor_t input, pooled, embedding, logits;
    float *grad_scratch[6];
    nn_tensor_t dlogits;
    int last_training; /* the mode of the last forward */
    int precision;     /* NN_PRECISION_* of resnext_set_precision */
    int weight_cache;  /* RESNEXT_WEIGHT_CACHE_* */
    int all_convs_bf16;        /* every convolution computes in bf16 */
    int keep_fp32_activations; /* resnext_set_half_activations(m, 0) */
} resnext_t;

/* The configuration for a name, or NULL. */
const resnext_config_t *resnext_config(const char *name);

/* Build the model (parameters zeroed); dies naming the model if it is unknown. */
resnext_t *resnext_create(nn_backend_t *be, const char *name, int num_outputs);
void resnext_free(resnext_t *m);

/*
 * Forward a batch x (N x 3 x H x W, backend memory; copied in). training = 1 uses batch
 * statistics, updates the running ones and keeps what the backward needs. Results are
 * m->logits (N x num_outputs) and m->embedding (N x embed_dim), in backend memory.
 */
void resnext_forward(resnext_t *m, const nn_tensor_t *x, int training);

/*
 * Arithmetic of the convolutions: NN_PRECISION_FP32 (default) or NN_PRECISION_BF16 (mixed:
 * bf16 products with fp32 sums for the layer kinds where that was measured faster, fp32
 * weights, batch norm, gradients and Adam). Takes effect from the next forward.
 */
void resnext_set_precision(resnext_t *m, int precision);

/*
 * Inference keeps a copy of each convolution's weights in the layout (and precision) the
 * backend computes in, until the weights change: RESNEXT_WEIGHT_CACHE_ON always,
 * RESNEXT_WEIGHT_CACHE_OFF never, RESNEXT_WEIGHT_CACHE_AUTO (default) for convolutions in
 * bf16 only, whose copy takes half the weights' size. Measured (bench/README.md): the copy
 * speeds inference up by 10% in fp32 and 25% in bf16, and an fp32 copy doubles the weights'
 * memory (ResNeXt-101: +330 MiB, above PyTorch's peak). Weights written other than through
 * the backend's adam_step or to_device (nn_params_fill_hashed, direct host writes on the
 * CPU) need be->weights_changed(be) before the next forward, or the copy goes stale.
 */
enum { RESNEXT_WEIGHT_CACHE_AUTO = 0, RESNEXT_WEIGHT_CACHE_ON, RESNEXT_WEIGHT_CACHE_OFF };
void resnext_set_weight_cache(resnext_t *m, int mode);

/*
 * Inference in mixed precision keeps its activations in 16 bits (NN_LAYOUT_NATIVE_HALF) when
 * every convolution computes in bf16 and the backend takes such tensors: each convolution
 * then reads its input as it is instead of converting fp32 (bench/README.md), and the only
 * extra rounding is the residual's. Training then keeps each block's c1 and c2 outputs in 16
 * bits (read only by bf16 convolutions: the same bits as fp32). on = 0 keeps fp32
 * activations, for comparison; on = 1 (default) goes back.
 */
void resnext_set_half_activations(resnext_t *m, int on);

/*
 * Keep the convolution weights (their gradients and Adam moments too) in the order the
 * backend computes in, where it has one (nn_backend_t.conv_native_weights): on = 1 saves
 * two weight reorders per convolution and training step (bench/README.md); 0 (default):
 * PyTorch's plain order. The current values are converted; Adam is elementwise and does
 * not care. Code that reads a weight or gradient by position then goes through
 * nn_params_read_plain / nn_params_write_plain (checkpoints and nn_params_fill_hashed do).
 */
void resnext_set_native_weights(resnext_t *m, int on);

/* Backward from dlogits (N x num_outputs, backend memory) after a training forward: fills
 * m->ps.grads (assigned, not accumulated). */
void resnext_backward(resnext_t *m, const float *dlogits);

#endif
