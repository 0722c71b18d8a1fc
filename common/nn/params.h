/*
 * A model's named tensors, in PyTorch state_dict order, over contiguous slabs:
 * trainable parameters (and their gradients and Adam moments, one slab each, same offsets),
 * float buffers (batch norm running statistics) and int64 counters (num_batches_tracked).
 * The float slabs are backend memory; counters stay on the host.
 */
#ifndef ICH_NN_PARAMS_H
#define ICH_NN_PARAMS_H

#include "nn/nn.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    NN_ENTRY_PARAM,   /* float, trained */
    NN_ENTRY_BUFFER,  /* float, not trained */
    NN_ENTRY_COUNTER, /* int64 scalar (rank 0) */
} nn_entry_kind_t;

#define NN_NAME_MAX 96
#define NN_RANK_MAX 4

typedef struct {
    char name[NN_NAME_MAX];
    nn_entry_kind_t kind;
    int rank;
    int64_t dims[NN_RANK_MAX];
    size_t offset; /* elements into the slab of its kind */
    size_t count;  /* elements */
    /* Non-NULL: a conv weight kept (with its gradient and Adam moments) in the backend's
     * order for this conv (conv_set_native_weights); nn_params_read_plain converts. */
    nn_conv_t *native_conv;
} nn_entry_t;

typedef struct {
    nn_backend_t *be;
    nn_entry_t *entries;
    size_t n_entries, cap;
    size_t param_count, buffer_count, counter_count; /* elements per slab */
    float *params, *grads, *adam_m, *adam_v;           /* backend memory; m, v on demand */
    float *buffers;                                    /* backend memory */
    int64_t *counters;                                 /* host memory */
} nn_paramset_t;

void nn_params_init(nn_paramset_t *ps, nn_backend_t *be);
/* Declare a tensor (before nn_params_alloc); returns its entry index. */
size_t nn_params_declare(nn_paramset_t *ps, const char *name, nn_entry_kind_t kind, int rank,
                         const int64_t *dims);
/* Allocate the slabs (zeroed) once every tensor is declared. */
void nn_params_alloc(nn_paramset_t *ps);
/* Allocate the Adam moment slabs (zeroed) if not yet there. */
void nn_params_alloc_adam(nn_paramset_t *ps);
void nn_params_free(nn_paramset_t *ps);

/* Pointers into the slabs for an entry. */
float *nn_params_value(nn_paramset_t *ps, size_t entry);
float *nn_params_grad(nn_paramset_t *ps, size_t entry);
int64_t *nn_params_counter(nn_paramset_t *ps, size_t entry);
/*
 * An entry of a parameter-sized slab (params, grads, adam_m, adam_v; or buffers) to host
 * memory in PyTorch's plain order, and back: what checkpoints, tests and anything reading a
 * value by position use, whatever order the backend keeps the entry in.
 */
void nn_params_read_plain(nn_paramset_t *ps, const float *slab, size_t entry, float *host);
void nn_params_write_plain(nn_paramset_t *ps, float *slab, size_t entry, const float *host);
/* Keep entry (a conv weight) in conv's native order (conv NULL: plain), converting what the
 * params and Adam slabs hold; the caller has switched the backend's conv to match. */
void nn_params_set_native(nn_paramset_t *ps, size_t entry, nn_conv_t *conv);

/* Entry index by name, or -1. */
long nn_params_find(const nn_paramset_t *ps, const char *name);

/*
 * Fill every float tensor with the hashed formula of tests/ref/nn_hashinit.py:
 * conv and linear weights scale sqrt(3 / fan_in) (variance 1 / fan_in), linear bias 0.1,
 * batch norm weight 1 +- 0.1 (bn3 of each block 0.1 +- 0.1), bias +- 0.1,
 * running_mean +- 0.1, running_var 1 +- 0.5,
 * counters 0. Each tensor's seed is nn_name_seed(name).
 */
void nn_params_fill_hashed(nn_paramset_t *ps);

#endif
