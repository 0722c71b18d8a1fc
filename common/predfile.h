/*
 * Prediction files (predictions.h5): one row per slice, /id (strings) and /prob (float32
 * N x N_SUBTYPES, label order), root attribute 'subtypes'. Layout: data-layout.md.
 */
#ifndef ICH_PREDFILE_H
#define ICH_PREDFILE_H

#include <stddef.h>

#include "h5io.h"
#include "labels.h"

/* The subtypes attribute every prediction file carries: the names, comma-separated. */
#define PRED_SUBTYPES "epidural,intraparenchymal,intraventricular,subarachnoid,subdural,any"

typedef struct {
    char *path;
    char **ids;   /* slice IDs, sorted by strcmp after predfile_read */
    float *prob;  /* count x N_SUBTYPES, row i belongs to ids[i] */
    size_t count;
} pred_table_t;

/*
 * Read and check a prediction file; rows come back sorted by slice ID. Dies with
 * EXIT_BAD_INPUT naming the file (and the slice where there is one) when it is missing or not
 * HDF5, lacks /id or /prob, /prob is not floating point or not N x 6 with N the length of /id,
 * the subtypes attribute is missing or names another order, a slice ID is empty or appears
 * twice, or a probability is not finite or outside [0, 1].
 */
void predfile_read(const char *path, pred_table_t *table);
void predfile_free(pred_table_t *table);

/*
 * Write /id, /prob, 'subtypes' and the provenance attributes into a new file under a
 * temporary name; the caller may add its own attributes (h5_attr_*) on out->file, then
 * h5out_commit. Rows are written in the given order.
 */
void predfile_write_begin(h5out_t *out, const char *path, const char *const *ids,
                          const float *prob, size_t count);
/* The same, committed at once. */
void predfile_write(const char *path, const char *const *ids, const float *prob, size_t count);

#endif
