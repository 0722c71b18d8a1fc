/*
 * HDF5 checkpoints of a model's paramset: every parameter and buffer under its torchvision
 * state_dict name and shape, the Adam moments under the same names, step, epoch, the RNG
 * state, the model name and architecture, and provenance. The layout is documented in
 * notes/layout-checkpoint.md; in short (h5py view):
 *
 *   attrs: format, format_version, model, precision, storage, step, epoch, provenance
 *   architecture           group; attrs: layers, groups, width_per_group, ... (int64)
 *   state_dict/NAME        every parameter and buffer (torch shapes; float32 or bfloat16;
 *                          num_batches_tracked int64 scalars), in state_dict order
 *   adam/m/NAME, adam/v/NAME   Adam moments of each parameter (optional); attrs: lr, ...
 *   rng_state              uint64[4], the engine RNG (nn/rng.h)
 *
 * Saving writes under a temporary name and renames into place when complete. Loading checks
 * the model name, every name, shape and type, and says precisely what does not match.
 */
#ifndef ICH_NN_CHECKPOINT_H
#define ICH_NN_CHECKPOINT_H

#include "nn/nn.h"
#include "nn/params.h"
#include "nn/resnext.h"
#include "nn/rng.h"

#include <hdf5.h>
#include <stdint.h>
#include <string.h>

#define NN_CKPT_FORMAT "ichpipe-nn-checkpoint"
#define NN_CKPT_FORMAT_VERSION 1
#define NN_CKPT_ARCH_MAX 16
#define NN_CKPT_ARCH_VALUES 8

/* Saving: store float tensors (parameters, buffers, moments) as bfloat16, rounded to nearest
 * even. Halves the file; a resumed run is then no longer bit-identical. */
#define NN_CKPT_BF16 0x1u
/* Saving: leave the Adam moments out (weights for inference or transfer). */
#define NN_CKPT_NO_ADAM 0x2u
/* Loading: restore the Adam moments too, allocating them (nn_params_alloc_adam). */
#define NN_CKPT_ADAM 0x4u
/* Loading: load what matches and leave the rest as it was (missing keys, size or type
 * mismatches), ignoring unexpected keys; the report lists what was left. */
#define NN_CKPT_NONSTRICT 0x8u

/* One architecture parameter: a named vector of integers ("layers" = 3, 4, 23, 3). */
typedef struct {
    char name[32];
    int count;
    int64_t values[NN_CKPT_ARCH_VALUES];
} nn_ckpt_arch_t;

/* Everything in a checkpoint besides the tensors. */
typedef struct {
    char model[64];     /* model name, e.g. "resnext101_32x8d" */
    char precision[16]; /* compute precision of the run: "fp32" or "bf16" */
    int64_t step;       /* optimizer steps taken: the next Adam step is step + 1 */
    int64_t epoch;      /* epochs finished */
    nn_adam_t adam;     /* the run's Adam hyperparameters (saved with the moments) */
    /* fp16 dynamic loss scaling (nn/lossscale.h), saved with the moments when loss_scale > 0:
     * S, clean steps since S last changed, optimizer steps skipped so far (Adam's own step
     * count is step - skipped_steps). has_loss_scale after loading: the file held them. */
    double loss_scale;
    int64_t loss_scale_clean_steps, skipped_steps;
    int has_loss_scale;
    nn_rng_t rng;
    int has_rng, has_adam; /* after loading: whether the file held an RNG state, moments */
    int n_arch;
    nn_ckpt_arch_t arch[NN_CKPT_ARCH_MAX];
} nn_ckpt_meta_t;

/* What a load did (message is NULL when everything matched; free with nn_ckpt_report_free). */
typedef struct {
    size_t loaded;                        /* tensors loaded, moments included */
    size_t missing, unexpected, mismatched; /* keys, moments included */
    char *message;
} nn_ckpt_report_t;

/* Metadata for a model: precision "fp32", step and epoch 0, no architecture, zero RNG
 * state, torch.optim.Adam's default hyperparameters (lr 1e-3, betas 0.9 0.999, eps 1e-8). */
void nn_ckpt_meta_init(nn_ckpt_meta_t *meta, const char *model);
/* Add (or replace) an architecture parameter of count values. */
void nn_ckpt_meta_set_arch(nn_ckpt_meta_t *meta, const char *name, int count,
                           const int64_t *values);
/* An architecture parameter by name, or NULL. */
const nn_ckpt_arch_t *nn_ckpt_meta_get_arch(const nn_ckpt_meta_t *meta, const char *name);
/* Model name and architecture of a ResNeXt: layers, groups, width_per_group, base,
 * num_outputs, embed_dim. Other fields are left as they are. */
void nn_ckpt_meta_resnext(nn_ckpt_meta_t *meta, const resnext_t *model);

/*
 * Write the paramset and meta to path (flags: NN_CKPT_BF16, NN_CKPT_NO_ADAM). The Adam
 * moments are written when allocated. Dies with EXIT_IO if the file cannot be written;
 * nothing appears at path unless it is complete.
 */
void nn_ckpt_save(const char *path, nn_paramset_t *ps, const nn_ckpt_meta_t *meta,
                  unsigned flags);

/*
 * Read the metadata only (to choose and build the model before loading). Returns 0, or -1
 * with *message (heap) naming the file and the problem.
 */
int nn_ckpt_read_meta(const char *path, nn_ckpt_meta_t *meta, char **message);

/* 1 when a file name is PREFIX<digits>.h5 (epoch12.h5): the names the trainers give their
 * checkpoints, and the only files they count as theirs or remove. */
int nn_ckpt_numbered_name(const char *name, const char *prefix);

/*
 * Load path into an allocated paramset (flags: NN_CKPT_ADAM, NN_CKPT_NONSTRICT). model,
 * unless NULL, must equal the checkpoint's model name (in both modes). meta (may be NULL)
 * receives the checkpoint's metadata.
 * Returns 0 when loaded: in strict mode every name, shape and type matched; in non-strict
 * mode report->message lists what was left as it was (NULL if nothing). Returns -1 when not
 * loaded: report->message names the file and says what is wrong (unreadable, not a
 * checkpoint, wrong model, or every mismatch); a mismatch leaves the paramset untouched, a
 * damaged tensor found while reading may leave it partly loaded.
 */
int nn_ckpt_load(const char *path, nn_paramset_t *ps, const char *model, unsigned flags,
                 nn_ckpt_meta_t *meta, nn_ckpt_report_t *report);
void nn_ckpt_report_free(nn_ckpt_report_t *report);

/* nn_ckpt_load for programs: exits with EXIT_BAD_INPUT and the message when it fails; logs
 * a warning listing what was left in non-strict mode. */
void nn_ckpt_load_or_die(const char *path, nn_paramset_t *ps, const char *model, unsigned flags,
                         nn_ckpt_meta_t *meta);

/*
 * bfloat16 in HDF5: a custom float type (sign bit 15, 8 exponent bits at 7, 7 mantissa bits
 * at 0, bias 127, 2 bytes little-endian) that HDF5 readers convert to ordinary floats
 * (h5py 3.7 presents it as float32). The caller closes it with H5Tclose.
 */
hid_t nn_h5_bf16_type(void);

/* fp32 -> bf16, rounding to nearest, ties to even; NaN stays a (quiet) NaN. */
static inline uint16_t nn_bf16_from_f32(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((bits >> 16) | 0x0040u);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* bf16 -> fp32, exact. */
static inline float nn_bf16_to_f32(uint16_t half)
{
    uint32_t bits = (uint32_t)half << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#endif
