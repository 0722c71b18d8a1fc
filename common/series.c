#include "series.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "exitcodes.h"
#include "h5io.h"
#include "pool.h"

/* ---- meta.h5 ---- */

static double *read_f64_columns(hid_t file, const char *path, const char *name, size_t rows,
                                size_t columns)
{
    hsize_t dims[8];
    double *v = h5_read(file, name, H5T_NATIVE_DOUBLE, 2, dims);
    if (dims[0] != rows || dims[1] != columns)
        die(EXIT_BAD_INPUT, "%s: '%s' has shape %llux%llu, expected %zux%zu", path, name,
            (unsigned long long)dims[0], (unsigned long long)dims[1], rows, columns);
    return v;
}

static char **read_string_column(hid_t file, const char *path, const char *name, size_t rows)
{
    size_t n;
    char **v = h5_read_strings(file, name, &n);
    if (n != rows)
        die(EXIT_BAD_INPUT, "%s: '%s' has %zu rows, 'id' has %zu", path, name, n, rows);
    return v;
}

void meta_load(const char *path, meta_table_t *meta)
{
    memset(meta, 0, sizeof *meta);
    hid_t file = h5_open_read(path);
    meta->file = xstrdup(path);
    meta->id = h5_read_strings(file, "id", &meta->count);
    size_t n = meta->count;
    meta->patient_id = read_string_column(file, path, "patient_id", n);
    meta->study_uid = read_string_column(file, path, "study_uid", n);
    meta->series_uid = read_string_column(file, path, "series_uid", n);
    meta->path = read_string_column(file, path, "path", n);
    meta->status = read_string_column(file, path, "status", n);
    meta->position = read_f64_columns(file, path, "position", n, 3);
    meta->orientation = read_f64_columns(file, path, "orientation", n, 6);
    h5_close(file);
}

int meta_usable(const meta_table_t *meta, size_t row)
{
    const char *s = meta->status[row];
    return strcmp(s, "ok") == 0 || strcmp(s, "exists") == 0;
}

int meta_blank(const char *text)
{
    while (*text == ' ' || *text == '\t')
        text++;
    return *text == 0;
}

/* "3 error, 1 skipped": the rows of each status, in order of first appearance (a few). */
static void describe_statuses(const meta_table_t *meta, char *out, size_t outlen)
{
    enum { MAX_KINDS = 6 };
    const char *kinds[MAX_KINDS];
    size_t counts[MAX_KINDS] = {0}, nkinds = 0, other = 0;
    for (size_t i = 0; i < meta->count; i++) {
        size_t k = 0;
        while (k < nkinds && strcmp(kinds[k], meta->status[i]) != 0)
            k++;
        if (k == nkinds && nkinds < MAX_KINDS)
            kinds[nkinds++] = meta->status[i];
        if (k < nkinds)
            counts[k]++;
        else
            other++;
    }
    size_t len = 0;
    out[0] = 0;
    for (size_t k = 0; k < nkinds && len < outlen; k++)
        len += (size_t)snprintf(out + len, outlen - len, "%s%zu '%s'", k ? ", " : "",
                                counts[k], kinds[k]);
    if (other && len < outlen)
        snprintf(out + len, outlen - len, ", %zu other", other);
}

size_t meta_require_usable(const meta_table_t *meta)
{
    size_t usable = 0;
    for (size_t i = 0; i < meta->count; i++)
        usable += (size_t)meta_usable(meta, i);
    if (usable)
        return usable;
    if (!meta->count)
        die(EXIT_BAD_INPUT, "%s: no rows at all: nothing was converted into it", meta->file);
    char statuses[256];
    describe_statuses(meta, statuses, sizeof statuses);
    die(EXIT_BAD_INPUT, "%s: no usable rows (status ok or exists) among its %zu: %s",
        meta->file, meta->count, statuses);
}

static int compare_rows_by_id(const void *a, const void *b, void *ctx)
{
    const meta_table_t *m = ctx;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int c = strcmp(m->id[i], m->id[j]);
    return c ? c : (i > j) - (i < j);
}

int meta_find_duplicate(const meta_table_t *meta, size_t *first, size_t *second)
{
    size_t *rows = xmalloc((meta->count ? meta->count : 1) * sizeof *rows);
    size_t n = 0;
    for (size_t i = 0; i < meta->count; i++)
        if (meta_usable(meta, i))
            rows[n++] = i;
    qsort_r(rows, n, sizeof *rows, compare_rows_by_id, (void *)meta);
    int found = 0;
    for (size_t i = 1; i < n && !found; i++)
        if (strcmp(meta->id[rows[i - 1]], meta->id[rows[i]]) == 0) {
            *first = rows[i - 1];
            *second = rows[i];
            found = 1;
        }
    free(rows);
    return found;
}

void meta_free(meta_table_t *meta)
{
    if (!meta->file)
        return;
    char **columns[] = {meta->id,         meta->patient_id, meta->study_uid,
                        meta->series_uid, meta->path,       meta->status};
    for (size_t c = 0; c < sizeof columns / sizeof *columns; c++)
        if (columns[c])
            h5_free_strings(columns[c], meta->count);
    free(meta->position);
    free(meta->orientation);
    free(meta->file);
    memset(meta, 0, sizeof *meta);
}

/* ---- series ---- */

#define SAME_DIRECTION_TOLERANCE 1e-3 /* per direction cosine: about 0.06 degrees */
#define SAME_POSITION_MM 0.01

static const char *const FLAG_NAMES[SERIES_FLAG_COUNT] = {
    "single_slice", "duplicate_position", "no_orientation",
    "mixed_orientation", "no_position", "uneven_spacing",
};

const char *series_flag_name(int bit)
{
    return bit >= 0 && bit < SERIES_FLAG_COUNT ? FLAG_NAMES[bit] : "unknown";
}

static int compare_series_keys(const void *a, const void *b, void *ctx)
{
    const meta_table_t *m = ctx;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int c = strcmp(m->patient_id[i], m->patient_id[j]);
    if (!c)
        c = strcmp(m->study_uid[i], m->study_uid[j]);
    if (!c)
        c = strcmp(m->series_uid[i], m->series_uid[j]);
    if (!c)
        c = strcmp(m->id[i], m->id[j]);
    return c;
}

static int same_series(const meta_table_t *m, size_t i, size_t j)
{
    return !strcmp(m->patient_id[i], m->patient_id[j]) &&
           !strcmp(m->study_uid[i], m->study_uid[j]) &&
           !strcmp(m->series_uid[i], m->series_uid[j]);
}

static int finite_all(const double *v, int n)
{
    for (int k = 0; k < n; k++)
        if (!isfinite(v[k]))
            return 0;
    return 1;
}

static int same_orientation(const double *a, const double *b)
{
    for (int k = 0; k < 6; k++)
        if (fabs(a[k] - b[k]) > SAME_DIRECTION_TOLERANCE)
            return 0;
    return 1;
}

/* Unit normal of an orientation (row x column direction); 0 when degenerate. */
static int orientation_normal(const double *o, double *n)
{
    n[0] = o[1] * o[5] - o[2] * o[4];
    n[1] = o[2] * o[3] - o[0] * o[5];
    n[2] = o[0] * o[4] - o[1] * o[3];
    double len = sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
    if (!(len > 1e-6))
        return 0;
    for (int k = 0; k < 3; k++)
        n[k] /= len;
    return 1;
}

/*
 * Choose the normal of a series: the orientation most of its slices share (the first one met
 * wins a tie), or z when any slice has none. Sets the orientation flags.
 */
static void choose_normal(const meta_table_t *m, const size_t *rows, size_t n, series_t *s)
{
    const double **distinct = xmalloc(n * sizeof *distinct);
    size_t *votes = xcalloc(n, sizeof *votes);
    size_t ndistinct = 0;
    int missing = 0;
    for (size_t i = 0; i < n; i++) {
        const double *o = &m->orientation[6 * rows[i]];
        double unused[3];
        if (!finite_all(o, 6) || !orientation_normal(o, unused)) {
            missing = 1;
            continue;
        }
        size_t d = 0;
        while (d < ndistinct && !same_orientation(distinct[d], o))
            d++;
        if (d == ndistinct)
            distinct[ndistinct++] = o;
        votes[d]++;
    }

    s->normal[0] = s->normal[1] = 0;
    s->normal[2] = 1;
    if (ndistinct > 1)
        s->flags |= SERIES_MIXED_ORIENTATION;
    if (missing || ndistinct == 0) {
        s->flags |= SERIES_NO_ORIENTATION;
    } else {
        size_t best = 0;
        for (size_t d = 1; d < ndistinct; d++)
            if (votes[d] > votes[best])
                best = d;
        orientation_normal(distinct[best], s->normal);
    }
    free(distinct);
    free(votes);
}

typedef struct {
    size_t row;
    double key;
    const char *id;
} slice_key_t;

/* Along the normal; slices without a position last; ties by ID so the order is stable. */
static int compare_slice_keys(const void *a, const void *b)
{
    const slice_key_t *x = a, *y = b;
    int xn = isnan(x->key), yn = isnan(y->key);
    if (xn != yn)
        return xn - yn;
    if (!xn && x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return strcmp(x->id, y->id);
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Spacing flags: duplicates, and gaps far from the median step. */
static void check_spacing(const double *spacing, size_t n, series_t *s)
{
    double *steps = xmalloc((n ? n : 1) * sizeof *steps);
    size_t nsteps = 0;
    for (size_t i = 1; i < n; i++) {
        if (isnan(spacing[i]))
            continue;
        if (spacing[i] < SAME_POSITION_MM)
            s->flags |= SERIES_DUPLICATE_POSITION;
        else
            steps[nsteps++] = spacing[i];
    }
    if (nsteps >= 2) {
        qsort(steps, nsteps, sizeof *steps, compare_doubles);
        double median = steps[nsteps / 2];
        if (steps[nsteps - 1] > 1.5 * median || steps[0] < 0.5 * median)
            s->flags |= SERIES_UNEVEN_SPACING;
    }
    free(steps);
}

static void order_series(const meta_table_t *m, const size_t *rows, series_set_t *set,
                         series_t *s)
{
    size_t n = s->length;
    if (n == 1)
        s->flags |= SERIES_SINGLE_SLICE;
    choose_normal(m, rows, n, s);

    slice_key_t *keys = xmalloc(n * sizeof *keys);
    for (size_t i = 0; i < n; i++) {
        const double *p = &m->position[3 * rows[i]];
        keys[i].row = rows[i];
        keys[i].id = m->id[rows[i]];
        if (finite_all(p, 3)) {
            keys[i].key = p[0] * s->normal[0] + p[1] * s->normal[1] + p[2] * s->normal[2];
        } else {
            keys[i].key = NAN;
            s->flags |= SERIES_NO_POSITION;
        }
    }
    qsort(keys, n, sizeof *keys, compare_slice_keys);

    for (size_t i = 0; i < n; i++) {
        size_t at = s->start + i;
        set->meta_index[at] = keys[i].row;
        set->position[at] = keys[i].key;
        set->spacing[at] = i ? keys[i].key - keys[i - 1].key : NAN;
    }
    check_spacing(&set->spacing[s->start], n, s);
    free(keys);
}

typedef struct {
    const meta_table_t *meta;
    const size_t *rows; /* usable rows in series order */
    series_set_t *set;
} order_job_t;

/* Each series writes only its own range of the set's arrays: no locking needed. */
static void order_one_series(size_t index, int thread, void *ctx)
{
    (void)thread;
    order_job_t *job = ctx;
    series_t *s = &job->set->series[index];
    order_series(job->meta, &job->rows[s->start], job->set, s);
}

void series_build(const meta_table_t *meta, series_set_t *set, int nthreads)
{
    memset(set, 0, sizeof *set);
    size_t *rows = xmalloc((meta->count ? meta->count : 1) * sizeof *rows);
    size_t n = 0;
    for (size_t i = 0; i < meta->count; i++)
        if (meta_usable(meta, i))
            rows[n++] = i;
    qsort_r(rows, n, sizeof *rows, compare_series_keys, (void *)meta);

    set->nslices = n;
    set->meta_index = xmalloc((n ? n : 1) * sizeof *set->meta_index);
    set->position = xmalloc((n ? n : 1) * sizeof *set->position);
    set->spacing = xmalloc((n ? n : 1) * sizeof *set->spacing);
    set->series = xmalloc((n ? n : 1) * sizeof *set->series);

    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && same_series(meta, rows[i], rows[j]))
            j++;
        series_t *s = &set->series[set->nseries++];
        memset(s, 0, sizeof *s);
        s->start = i;
        s->length = j - i;
        i = j;
    }
    order_job_t job = {.meta = meta, .rows = rows, .set = set};
    parallel_for(nthreads, set->nseries, order_one_series, &job);
    free(rows);
}

void series_free(series_set_t *set)
{
    free(set->series);
    free(set->meta_index);
    free(set->position);
    free(set->spacing);
    memset(set, 0, sizeof *set);
}
