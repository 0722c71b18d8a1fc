/*
 * What the programs share for running a model on a device: the --precision option's choice
 * (fp32, bf16, fp16) applied to a backend, and batch uploads that do not wait for the GPU.
 */
#ifndef ICH_NN_MIXED_H
#define ICH_NN_MIXED_H

#include "nn/nn.h"

#include <stddef.h>

/* The choices of a --precision option. */
#define NN_PRECISION_CHOICES "fp32|bf16|fp16"

/*
 * Prepare be for the precision named ("fp32", "bf16" or "fp16") and return the precision to
 * give the model (resnext_set_precision): NN_PRECISION_FP32, or NN_PRECISION_BF16 for either
 * mixed format, the 16-bit format being the backend's (set_mixed_format). fp16 on a backend
 * without it (the CPU) dies with EXIT_USAGE, naming `option`.
 */
int nn_mixed_precision_setup(nn_backend_t *be, const char *name, const char *option);

/* The same refusal before any work, from the option values alone: fp16 on a --device that is
 * not a cuda one. */
void nn_mixed_precision_check(const char *name, const char *device, const char *option);

/* Copy a batch (data, not weights) to the device: without waiting for the ops already
 * submitted where the backend can (to_device_async), else with to_device. host may be reused
 * on return. */
void nn_upload_batch(nn_backend_t *be, void *dev, const void *host, size_t bytes);

#endif
