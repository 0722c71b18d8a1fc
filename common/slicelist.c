/* Slice lists of folds.h5 and meta.h5, and image lookup in a dcm2jpg folder. */
#include "slicelist.h"

#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "dist.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"

void slicelist_read_folds(slicelist_t *list, const char *folds_path)
{
    hid_t f = h5_open_read(folds_path);
    hsize_t dims[8];
    list->ids = h5_read_strings(f, "id", &list->count);
    list->labels = h5_read(f, "label", H5T_NATIVE_INT8, 2, dims);
    if (dims[0] != list->count || dims[1] != N_SUBTYPES)
        die(EXIT_BAD_INPUT, "%s: /label is %llux%llu, expected %zux%d", folds_path,
            (unsigned long long)dims[0], (unsigned long long)dims[1], list->count,
            N_SUBTYPES);
    list->fold = h5_read(f, "fold", H5T_NATIVE_INT32, 1, dims);
    if (dims[0] != list->count)
        die(EXIT_BAD_INPUT, "%s: /fold has %llu rows, /id %zu", folds_path,
            (unsigned long long)dims[0], list->count);
    h5_close(f);

    /* Every reader trusts these: a label is a loss target, fold -1 means test, and a slice
     * is looked up by binary search over the IDs. */
    for (size_t i = 0; i < list->count; i++) {
        if (i > 0 && strcmp(list->ids[i - 1], list->ids[i]) >= 0)
            die(EXIT_BAD_INPUT, "%s: /id is not sorted and unique at row %zu (%s, then %s)",
                folds_path, i, list->ids[i - 1], list->ids[i]);
        if (list->fold[i] < -1)
            die(EXIT_BAD_INPUT, "%s: /fold of slice %s (row %zu) is %d; folds are 0..K-1, "
                "or -1 for test slices", folds_path, list->ids[i], i, (int)list->fold[i]);
        for (int k = 0; k < N_SUBTYPES; k++) {
            int label = list->labels[i * N_SUBTYPES + k];
            if (label < -1 || label > 1)
                die(EXIT_BAD_INPUT, "%s: /label of slice %s (row %zu) is %d for %s; labels "
                    "are 0, 1, or -1 where unknown", folds_path, list->ids[i], i, label,
                    SUBTYPE_NAMES[k]);
        }
    }
}

void slicelist_read_meta(slicelist_t *list, const char *meta_path)
{
    hid_t f = h5_open_read(meta_path);
    size_t rows, status_rows;
    char **ids = h5_read_strings(f, "id", &rows);
    char **status = h5_read_strings(f, "status", &status_rows);
    h5_close(f);
    if (status_rows != rows)
        die(EXIT_BAD_INPUT, "%s: /status has %zu rows, /id %zu", meta_path, status_rows, rows);

    list->ids = xmalloc((rows ? rows : 1) * sizeof *list->ids);
    list->count = 0;
    for (size_t i = 0; i < rows; i++)
        if ((!strcmp(status[i], "ok") || !strcmp(status[i], "exists")) && ids[i][0])
            list->ids[list->count++] = xstrdup(ids[i]);
    h5_free_strings(ids, rows);
    h5_free_strings(status, rows);

    qsort(list->ids, list->count, sizeof *list->ids, compare_strings);
    for (size_t i = 1; i < list->count; i++)
        if (!strcmp(list->ids[i - 1], list->ids[i]))
            die(EXIT_BAD_INPUT, "%s: slice %s is on two usable rows", meta_path, list->ids[i]);

    size_t n = list->count ? list->count : 1;
    list->labels = xmalloc(n * N_SUBTYPES);
    memset(list->labels, -1, n * N_SUBTYPES);
    list->fold = xmalloc(n * sizeof *list->fold);
    for (size_t i = 0; i < list->count; i++)
        list->fold[i] = -1;
}

void slicelist_free(slicelist_t *list)
{
    h5_free_strings(list->ids, list->count);
    free(list->labels);
    free(list->fold);
    memset(list, 0, sizeof *list);
}

int slicelist_fully_labelled(const int8_t *label)
{
    for (int k = 0; k < N_SUBTYPES; k++)
        if (label[k] != 0 && label[k] != 1)
            return 0;
    return 1;
}

char *slicelist_image_path(const char *dir, const char *id)
{
    char *path = xasprintf("%s/%s.jpg", dir, id);
    if (path_is_file(path))
        return path;
    free(path);
    path = xasprintf("%s/%s.ppm", dir, id);
    if (path_is_file(path))
        return path;
    die(EXIT_BAD_INPUT, "%s: no image %s.jpg or %s.ppm", dir, id, id);
}

int slicelist_parse_crop(const char *name)
{
    if (!strcmp(name, "intended"))
        return IMG_CROP_MINFILTER;
    if (!strcmp(name, "plain"))
        return IMG_CROP_PLAIN;
    if (!strcmp(name, "none"))
        return IMG_CROP_NONE;
    return -1;
}

void slicelist_require_fold(const char *folds_path, const char *option, int fold)
{
    hid_t f = h5_open_read(folds_path);
    int64_t folds;
    int known = h5_attr_read_i64(f, "folds", &folds);
    h5_close(f);
    if (known && fold >= folds)
        die(EXIT_USAGE, "%s %d: %s has folds 0 to %lld (-1: none held out)", option, fold,
            folds_path, (long long)folds - 1);
}

uint64_t slicelist_fingerprint(const slicelist_t *list)
{
    uint64_t fingerprint = dist_fingerprint_add_strings(0, list->ids, list->count);
    fingerprint = dist_fingerprint_add(fingerprint, list->labels, list->count * N_SUBTYPES);
    return dist_fingerprint_add(fingerprint, list->fold, list->count * sizeof *list->fold);
}
