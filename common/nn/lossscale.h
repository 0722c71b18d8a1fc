/*
 * Dynamic loss scaling for fp16 mixed precision, with the rule of PyTorch's GradScaler
 * (torch.cuda.amp; the original trained with apex's equivalent): the loss gradient is
 * multiplied by S before the backward, so that small gradients survive fp16; after the
 * backward the gradients are multiplied by 1 / S and checked for inf or NaN. An overflow skips
 * the optimizer step and multiplies S by the backoff factor; growth_interval clean steps in a
 * row multiply it by the growth factor (kept only when the result is finite in fp32).
 * S lives in fp32, as GradScaler's scale tensor.
 *
 * In cnntrain (--precision fp16) the check runs on the gradients summed over ranks, so every
 * rank skips the same steps; a loss that is already inf or NaN counts as an overflow too.
 * Adam's step count is that of the steps taken (as torch's), and S, its counter and the
 * skipped steps are saved in the checkpoint (nn_ckpt_meta_t) so that --resume goes on
 * with them. missing: a run of this logic on a GPU (the CPU backend has no fp16).
 */
#ifndef ICH_NN_LOSSSCALE_H
#define ICH_NN_LOSSSCALE_H

#include "nn/nn.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float scale;           /* S */
    float growth_factor;   /* 2 */
    float backoff_factor;  /* 0.5 */
    int growth_interval;   /* 2000 */
    int clean_steps;       /* since the last change of S (GradScaler's growth tracker) */
    int64_t skipped_steps; /* overflows so far */
} nn_lossscale_t;

/* GradScaler's defaults: S = 65536, growth 2 every 2000 clean steps, backoff 0.5. */
void nn_lossscale_init(nn_lossscale_t *ls);

/* After a step whose gradients had an inf or NaN (found_nonfinite 1) or not: update S and
 * the counters. Returns 1 when the optimizer step is to be taken, 0 when it is skipped. */
int nn_lossscale_update(nn_lossscale_t *ls, int found_nonfinite);

/*
 * Unscale count gradients of backend memory in place (times 1 / S) and update as above;
 * returns 1 when the optimizer step is to be taken. Uses the backend's scale_check_finite,
 * or a host copy where the backend has none.
 */
int nn_lossscale_unscale(nn_lossscale_t *ls, nn_backend_t *be, float *grads, size_t count);

/* The host form of scale_check_finite (host memory): x[i] *= factor; 1 when all were finite,
 * with the kernel's element arithmetic (nn/math_cuda.h). */
int nn_scale_check_finite_host(float *x, size_t count, float factor);

#endif
