/* Reading and checking sequences.h5 (seqfile.h). */
#include "seqfile.h"

#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "dist.h"
#include "exitcodes.h"
#include "h5io.h"

typedef struct {
    int64_t start;
    size_t series;
} series_start_t;

static int compare_starts(const void *a, const void *b)
{
    const series_start_t *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->series < y->series ? -1 : x->series > y->series;
}

/* Series ranges inside the slice rows and disjoint. */
static void check_series(const seqfile_t *seq, const char *path)
{
    for (size_t s = 0; s < seq->n_series; s++) {
        int64_t start = seq->start[s], length = seq->length[s];
        if (start < 0 || length < 1 || (uint64_t)start > seq->n_slices ||
            (uint64_t)length > seq->n_slices - (uint64_t)start)
            die(EXIT_BAD_INPUT, "%s: series %zu covers slice rows %lld..+%lld, outside the %zu "
                "rows of /slices", path, s, (long long)start, (long long)length,
                seq->n_slices);
    }

    /* In order of their first row, each series must end before the next one starts. */
    series_start_t *order = xmalloc((seq->n_series ? seq->n_series : 1) * sizeof *order);
    for (size_t s = 0; s < seq->n_series; s++)
        order[s] = (series_start_t){seq->start[s], s};
    qsort(order, seq->n_series, sizeof *order, compare_starts);
    for (size_t k = 1; k < seq->n_series; k++) {
        size_t before = order[k - 1].series, s = order[k].series;
        if (seq->start[before] + seq->length[before] > seq->start[s])
            die(EXIT_BAD_INPUT, "%s: series %zu (slice rows %lld..%lld) and series %zu (rows "
                "%lld..%lld) overlap; each slice belongs to one series", path, before,
                (long long)seq->start[before],
                (long long)(seq->start[before] + seq->length[before] - 1), s,
                (long long)seq->start[s], (long long)(seq->start[s] + seq->length[s] - 1));
    }
    free(order);
}

static void check_unique_ids(const seqfile_t *seq, const char *path)
{
    char **sorted = xmalloc((seq->n_slices ? seq->n_slices : 1) * sizeof *sorted);
    memcpy(sorted, seq->ids, seq->n_slices * sizeof *sorted);
    qsort(sorted, seq->n_slices, sizeof *sorted, compare_strings);
    for (size_t i = 1; i < seq->n_slices; i++)
        if (!strcmp(sorted[i - 1], sorted[i]))
            die(EXIT_BAD_INPUT, "%s: slice %s is on two rows of /slices/id", path, sorted[i]);
    free(sorted);
}

void seqfile_read(seqfile_t *seq, const char *path)
{
    hid_t f = h5_open_read(path);
    hsize_t dims[8];
    seq->ids = h5_read_strings(f, "slices/id", &seq->n_slices);
    seq->start = h5_read(f, "series/start", H5T_NATIVE_INT64, 1, dims);
    seq->n_series = (size_t)dims[0];
    seq->length = h5_read(f, "series/length", H5T_NATIVE_INT64, 1, dims);
    h5_close(f);
    if ((size_t)dims[0] != seq->n_series)
        die(EXIT_BAD_INPUT, "%s: /series/length has %llu rows, /series/start %zu", path,
            (unsigned long long)dims[0], seq->n_series);

    check_series(seq, path);
    check_unique_ids(seq, path);
}

uint64_t seqfile_fingerprint(const seqfile_t *seq)
{
    uint64_t fingerprint = dist_fingerprint_add_strings(0, seq->ids, seq->n_slices);
    size_t series_bytes = seq->n_series * sizeof *seq->start;
    fingerprint = dist_fingerprint_add(fingerprint, seq->start, series_bytes);
    return dist_fingerprint_add(fingerprint, seq->length, series_bytes);
}

void seqfile_free(seqfile_t *seq)
{
    h5_free_strings(seq->ids, seq->n_slices);
    free(seq->start);
    free(seq->length);
    memset(seq, 0, sizeof *seq);
}
