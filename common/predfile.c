/* Prediction files (predfile.h). */
#include "predfile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "exitcodes.h"

/* Sorting rows by ID: an index array, then the columns permuted through it. */
static int compare_rows_by_id(const void *a, const void *b, void *ids)
{
    char *const *id = ids;
    return strcmp(id[*(const size_t *)a], id[*(const size_t *)b]);
}

static void sort_by_id(pred_table_t *t)
{
    size_t n = t->count;
    size_t *order = xmalloc((n ? n : 1) * sizeof *order);
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    qsort_r(order, n, sizeof *order, compare_rows_by_id, t->ids);

    char **ids = xmalloc((n ? n : 1) * sizeof *ids);
    float *prob = xmalloc((n ? n : 1) * N_SUBTYPES * sizeof *prob);
    for (size_t i = 0; i < n; i++) {
        ids[i] = t->ids[order[i]];
        memcpy(&prob[i * N_SUBTYPES], &t->prob[order[i] * N_SUBTYPES],
               N_SUBTYPES * sizeof *prob);
    }
    free(t->ids);
    free(t->prob);
    t->ids = ids;
    t->prob = prob;
    free(order);
}

/* Integer probabilities would pass through conversion silently; a wrong file more likely. */
static void require_float_type(hid_t file, const char *path)
{
    hid_t ds = H5Dopen2(file, "prob", H5P_DEFAULT);
    if (ds < 0)
        die(EXIT_BAD_INPUT, "%s: no dataset /prob", path);
    hid_t type = H5Dget_type(ds);
    H5T_class_t cls = H5Tget_class(type);
    H5Tclose(type);
    H5Dclose(ds);
    if (cls != H5T_FLOAT)
        die(EXIT_BAD_INPUT, "%s: /prob is not floating point", path);
}

static void check_subtypes_attribute(hid_t file, const char *path)
{
    char *subtypes = h5_attr_read_str(file, "subtypes");
    if (!subtypes)
        die(EXIT_BAD_INPUT, "%s: no 'subtypes' attribute (expected \"%s\")", path,
            PRED_SUBTYPES);
    char found[256];
    snprintf(found, sizeof found, "%s", subtypes);
    int same = strcmp(subtypes, PRED_SUBTYPES) == 0;
    free(subtypes);
    if (!same)
        die(EXIT_BAD_INPUT, "%s: subtypes attribute is \"%s\", expected \"%s\"", path, found,
            PRED_SUBTYPES);
}

void predfile_read(const char *path, pred_table_t *t)
{
    hid_t file = h5_open_read(path);
    if (!h5_exists(file, "id"))
        die(EXIT_BAD_INPUT, "%s: no dataset /id", path);
    if (!h5_exists(file, "prob"))
        die(EXIT_BAD_INPUT, "%s: no dataset /prob", path);
    check_subtypes_attribute(file, path);
    require_float_type(file, path);

    /* Shapes first, so that a mismatch stops before anything is read. */
    hsize_t id_dims[8], dims[8];
    if (h5_dims(file, "id", id_dims) != 1)
        die(EXIT_BAD_INPUT, "%s: /id is not one-dimensional", path);
    size_t n = (size_t)id_dims[0];
    int rank = h5_dims(file, "prob", dims);
    if (rank != 2 || dims[0] != n || dims[1] != N_SUBTYPES) {
        char shape[128] = "";
        for (int i = 0; i < rank && i < 4; i++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%llu",
                     i ? " x " : "", (unsigned long long)dims[i]);
        die(EXIT_BAD_INPUT, "%s: /prob must be %zu x %d (one row per /id), it is %s", path,
            n, N_SUBTYPES, rank ? shape : "a scalar");
    }
    char **ids = h5_read_strings(file, "id", &n);
    float *prob = h5_read(file, "prob", H5T_NATIVE_FLOAT, 2, dims);
    h5_close(file);

    *t = (pred_table_t){.path = xstrdup(path), .ids = ids, .prob = prob, .count = n};
    for (size_t i = 0; i < n; i++) {
        if (!ids[i][0])
            die(EXIT_BAD_INPUT, "%s: row %zu has an empty slice ID", path, i);
        for (int s = 0; s < N_SUBTYPES; s++) {
            float p = prob[i * N_SUBTYPES + s];
            if (!isfinite(p) || p < 0 || p > 1)
                die(EXIT_BAD_INPUT, "%s: slice %s: %s probability %g is %s", path, ids[i],
                    SUBTYPE_NAMES[s], (double)p, isfinite(p) ? "outside [0, 1]"
                    : "not finite");
        }
    }
    sort_by_id(t);
    for (size_t i = 1; i < n; i++)
        if (strcmp(t->ids[i - 1], t->ids[i]) == 0)
            die(EXIT_BAD_INPUT, "%s: slice %s appears twice", path, t->ids[i]);
}

void predfile_free(pred_table_t *t)
{
    h5_free_strings(t->ids, t->count);
    free(t->prob);
    free(t->path);
    *t = (pred_table_t){0};
}

void predfile_write_begin(h5out_t *out, const char *path, const char *const *ids,
                          const float *prob, size_t count)
{
    h5out_create(out, path);
    hsize_t dims[2] = {count, N_SUBTYPES};
    h5_write_strings(out->file, "id", ids, count);
    h5_write_f32(out->file, "prob", prob, 2, dims);
    h5_attr_str(out->file, "subtypes", PRED_SUBTYPES);
    h5_attr_provenance(out->file);
}

void predfile_write(const char *path, const char *const *ids, const float *prob, size_t count)
{
    h5out_t out;
    predfile_write_begin(&out, path, ids, prob, count);
    h5out_commit(&out);
}
