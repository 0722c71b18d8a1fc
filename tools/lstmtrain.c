/*
 * lstmtrain: train the sequence model of reference-method.md stage 5 over the slice
 * embeddings of each series, predict the validation fold and the test slices after every
 * epoch, and bag the last epochs' predictions. One checkpoint per epoch; --resume continues
 * from the newest complete one.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "dist.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "labels.h"
#include "log.h"
#include "metric.h"
#include "nn/checkpoint.h"
#include "nn/nn.h"
#include "nn/seqmodel.h"
#include "opt.h"
#include "predfile.h"
#include "seqfile.h"
#include "slicelist.h"

#define MODEL_NAME "seqmodel"

enum { SPLIT_TRAIN = 0, SPLIT_VAL = 1, SPLIT_TEST = 2, SPLITS = 3 };
static const char *const split_names[SPLITS] = {"train", "val", "test"};

typedef struct {
    const char *out_dir, *precision, *device;
    int fold, hidden, epochs, bag, batch, predict_batch, pad_like_original, resume, force;
    int threads;
    double lr, lr_decay;
    long long seed;
} options_t;

/* ---- embeddings: the union of the EMB files by slice ID ---- */

typedef struct {
    int width;
    size_t count;
    char **ids;    /* sorted by strcmp */
    float *values; /* count x width; a slice in several files: the mean */
    uint64_t fingerprint; /* of the IDs and values: a resumed run must read the same */
} embeddings_t;

typedef struct {
    const char *id;
    int file;
    size_t row;
} emb_entry_t;

static int compare_entries(const void *a, const void *b)
{
    const emb_entry_t *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    if (c)
        return c;
    if (x->file != y->file)
        return x->file < y->file ? -1 : 1;
    return x->row < y->row ? -1 : x->row > y->row;
}

/* Rows and width of /embedding, which must be a floating-point N x D matrix. */
static void embedding_shape(hid_t f, const char *path, size_t n_ids, size_t *width)
{
    hsize_t dims[8];
    if (!h5_exists(f, "embedding"))
        die(EXIT_BAD_INPUT, "%s: no /embedding dataset (not an embdump output?)", path);
    int rank = h5_dims(f, "embedding", dims);
    if (rank != 2 || dims[0] != n_ids || dims[1] < 1) {
        char shape[160];
        h5_shape_text(rank, dims, shape, sizeof shape);
        die(EXIT_BAD_INPUT, "%s: /embedding must be %zu x D (one row per /id), it is %s%s",
            path, n_ids, rank == 2 ? "" : "not 2-D: ", shape);
    }
    hid_t ds = H5Dopen2(f, "embedding", H5P_DEFAULT), type = H5Dget_type(ds);
    int is_float = H5Tget_class(type) == H5T_FLOAT;
    H5Tclose(type);
    H5Dclose(ds);
    if (!is_float)
        die(EXIT_BAD_INPUT, "%s: /embedding is not floating point (float32 or float16)", path);
    *width = (size_t)dims[1];
}

/* Rows read at a time: the union alone holds every embedding, not each file again. */
#define EMB_READ_ROWS ((size_t)4096)

/* Rows first..first+n of the N x width /embedding of ds into rows, as float32. */
static void read_rows(hid_t ds, hid_t space, size_t first, size_t n, size_t width, float *rows,
                      const char *path)
{
    hsize_t start[2] = {first, 0}, count[2] = {n, width};
    hid_t memspace = H5Screate_simple(2, count, NULL);
    if (H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(ds, H5T_NATIVE_FLOAT, memspace, space, H5P_DEFAULT, rows) < 0)
        die(EXIT_BAD_INPUT, "%s: cannot read /embedding rows %zu..%zu", path, first,
            first + n - 1);
    H5Sclose(memspace);
}

/* An input inside OUTDIR could be one of the files this run writes there (val.h5, test.h5). */
static void refuse_inputs_in_out_dir(const char *out_dir, char *const *inputs, int n)
{
    for (int i = 0; i < n; i++) {
        char *dir = xstrdup(inputs[i]);
        char *slash = strrchr(dir, '/');
        if (slash)
            slash[slash == dir ? 1 : 0] = 0;
        if (path_same_file(slash ? dir : ".", out_dir))
            die(EXIT_USAGE, "input %s lies in the output folder %s, whose files (epoch*.h5, "
                "val.h5, test.h5, ...) would overwrite it: give another -o", inputs[i],
                out_dir);
        free(dir);
    }
}

/*
 * Embeddings made by different classifiers, or by a classifier that trained on this run's
 * validation fold, give a run that looks fine and means nothing: say so.
 */
static void check_embedding_sources(char *const *paths, int n_files, int held)
{
    char *first_checkpoint = NULL;
    int fold_warned = 0;
    for (int i = 0; i < n_files; i++) {
        hid_t f = h5_open_read(paths[i]);
        char *checkpoint = h5_attr_read_str(f, "checkpoint");
        int64_t fold;
        if (h5_attr_read_i64(f, "fold", &fold) && held >= 0 && fold >= 0 && fold != held &&
            !fold_warned++)
            log_warn("%s: embeddings of a classifier that held out fold %lld, validating on "
                     "fold %d: the classifier has seen these validation slices", paths[i],
                     (long long)fold, held);
        h5_close(f);
        if (!checkpoint)
            continue;
        if (!first_checkpoint)
            first_checkpoint = checkpoint;
        else if (strcmp(checkpoint, first_checkpoint) != 0) {
            log_warn("%s: embeddings of checkpoint %s, those of %s of %s", paths[i], checkpoint,
                     paths[0], first_checkpoint);
            free(checkpoint);
        } else {
            free(checkpoint);
        }
    }
    free(first_checkpoint);
}

static void embeddings_read(embeddings_t *e, char *const *paths, int n_files)
{
    char ***file_ids = xcalloc((size_t)n_files, sizeof *file_ids);
    size_t *file_rows = xcalloc((size_t)n_files, sizeof *file_rows), total = 0, width = 0;

    /* IDs and shapes first: a width mismatch is found before any matrix is read. */
    for (int i = 0; i < n_files; i++) {
        hid_t f = h5_open_read(paths[i]);
        size_t w;
        file_ids[i] = h5_read_strings(f, "id", &file_rows[i]);
        embedding_shape(f, paths[i], file_rows[i], &w);
        h5_close(f);
        if (i > 0 && w != width)
            die(EXIT_BAD_INPUT, "%s: embeddings are %zu wide, those of %s %zu", paths[i], w,
                paths[0], width);
        width = w;
        total += file_rows[i];
    }
    if (width > 1 << 20)
        die(EXIT_BAD_INPUT, "%s: embedding width %zu is implausible", paths[0], width);

    emb_entry_t *entries = xmalloc((total ? total : 1) * sizeof *entries);
    size_t k = 0;
    for (int i = 0; i < n_files; i++)
        for (size_t r = 0; r < file_rows[i]; r++) {
            if (!file_ids[i][r][0])
                die(EXIT_BAD_INPUT, "%s: /id row %zu is empty", paths[i], r);
            entries[k++] = (emb_entry_t){file_ids[i][r], i, r};
        }
    qsort(entries, total, sizeof *entries, compare_entries);

    /* Union slots in ID order; each file row learns its slot. */
    size_t **slot_of = xcalloc((size_t)n_files, sizeof *slot_of);
    for (int i = 0; i < n_files; i++)
        slot_of[i] = xmalloc((file_rows[i] ? file_rows[i] : 1) * sizeof **slot_of);
    e->ids = xmalloc((total ? total : 1) * sizeof *e->ids);
    int *copies = xcalloc(total ? total : 1, sizeof *copies);
    e->count = 0;
    for (size_t j = 0; j < total; j++) {
        const emb_entry_t *en = &entries[j];
        int same_id = j > 0 && !strcmp(entries[j - 1].id, en->id);
        if (same_id && entries[j - 1].file == en->file)
            die(EXIT_BAD_INPUT, "%s: slice %s appears twice in /id", paths[en->file], en->id);
        if (!same_id)
            e->ids[e->count++] = xstrdup(en->id);
        slot_of[en->file][en->row] = e->count - 1;
        copies[e->count - 1]++;
    }
    free(entries);

    e->width = (int)width;
    e->values = xcalloc(e->count ? e->count * width : 1, sizeof *e->values);
    size_t shared = 0;
    float *rows = xmalloc(EMB_READ_ROWS * width * sizeof *rows);
    for (int i = 0; i < n_files; i++) {
        hid_t f = h5_open_read(paths[i]);
        hid_t ds = H5Dopen2(f, "embedding", H5P_DEFAULT), space = H5Dget_space(ds);
        for (size_t first = 0; first < file_rows[i]; first += EMB_READ_ROWS) {
            size_t n = file_rows[i] - first < EMB_READ_ROWS ? file_rows[i] - first
                                                            : EMB_READ_ROWS;
            read_rows(ds, space, first, n, width, rows, paths[i]);
            for (size_t r = 0; r < n; r++) {
                float *dst = e->values + slot_of[i][first + r] * width;
                const float *src = rows + r * width;
                for (size_t c = 0; c < width; c++) {
                    if (!isfinite(src[c]))
                        die(EXIT_BAD_INPUT, "%s: the embedding of slice %s is not finite",
                            paths[i], file_ids[i][first + r]);
                    dst[c] += src[c];
                }
            }
        }
        H5Sclose(space);
        H5Dclose(ds);
        h5_close(f);
        h5_free_strings(file_ids[i], file_rows[i]);
        free(slot_of[i]);
    }
    free(rows);
    for (size_t s = 0; s < e->count; s++)
        if (copies[s] > 1) {
            shared++;
            for (size_t c = 0; c < width; c++)
                e->values[s * width + c] /= (float)copies[s];
        }
    if (shared)
        log_info("%zu slices appear in more than one embeddings file: their mean is used",
                 shared);
    e->fingerprint = dist_fingerprint_add_strings(0, e->ids, e->count);
    e->fingerprint = dist_fingerprint_add(e->fingerprint, e->values,
                                          e->count * width * sizeof *e->values);
    log_info("embeddings: %zu slices, %zu wide, from %d file(s)", e->count, width, n_files);
    free(copies);
    free(slot_of);
    free(file_ids);
    free(file_rows);
}

static void embeddings_free(embeddings_t *e)
{
    for (size_t i = 0; i < e->count; i++)
        free(e->ids[i]);
    free(e->ids);
    free(e->values);
}

static int compare_id_key(const void *key, const void *item)
{
    return strcmp(key, *(char *const *)item);
}

/* Row of id in a strcmp-sorted ID column, or -1. */
static long find_id(char *const *sorted, size_t n, const char *id)
{
    char *const *hit = bsearch(id, sorted, n, sizeof *sorted, compare_id_key);
    return hit ? (long)(hit - sorted) : -1;
}

/* ---- the series and their splits ---- */

typedef struct {
    size_t first; /* into dataset_t.slot / fold_row */
    int length;
    int split;
} series_t;

typedef struct {
    embeddings_t emb;
    slicelist_t folds;
    series_t *series;
    size_t n_series;
    size_t *slot, *fold_row; /* per kept slice: its embedding row, its folds.h5 row */
    size_t n_kept;
    size_t split_series[SPLITS], split_slices[SPLITS];
    int max_length;
    uint64_t sequences_fingerprint, folds_fingerprint; /* as embeddings_t.fingerprint */
} dataset_t;

static int split_of_fold(int fold, int held)
{
    if (fold < 0)
        return SPLIT_TEST;
    return held >= 0 && fold == held ? SPLIT_VAL : SPLIT_TRAIN;
}

/*
 * The series of sequences.h5 with the slices that have an embedding and a folds.h5 row, in
 * scan order. Every kept slice of a series must fall in one split.
 */
static void dataset_build(dataset_t *d, const char *seq_path, const char *folds_path, int held)
{
    /* Series inside /slices, disjoint, every slice ID once (seqfile_read checks). */
    seqfile_t seq;
    seqfile_read(&seq, seq_path);
    char **ids = seq.ids;
    size_t n_ids = seq.n_slices, n_series = seq.n_series;
    const int64_t *start = seq.start, *length = seq.length;

    slicelist_read_folds(&d->folds, folds_path);
    d->sequences_fingerprint = seqfile_fingerprint(&seq);
    d->folds_fingerprint = slicelist_fingerprint(&d->folds);

    d->series = xmalloc((n_series ? n_series : 1) * sizeof *d->series);
    d->slot = xmalloc((n_ids ? n_ids : 1) * sizeof *d->slot);
    d->fold_row = xmalloc((n_ids ? n_ids : 1) * sizeof *d->fold_row);
    char *used = xcalloc(d->emb.count ? d->emb.count : 1, 1);
    size_t no_embedding = 0, no_folds = 0, emptied = 0;
    for (size_t s = 0; s < n_series; s++) {
        series_t se = {d->n_kept, 0, -1};
        const char *split_from = NULL;
        for (int64_t i = start[s]; i < start[s] + length[s]; i++) {
            long slot = find_id(d->emb.ids, d->emb.count, ids[i]);
            if (slot < 0) {
                no_embedding++;
                continue;
            }
            used[slot] = 1;
            long row = find_id(d->folds.ids, d->folds.count, ids[i]);
            if (row < 0) {
                no_folds++;
                continue;
            }
            int split = split_of_fold(d->folds.fold[row], held);
            if (se.split >= 0 && split != se.split)
                die(EXIT_BAD_INPUT,
                    "%s: series %zu mixes splits: slice %s is %s, slice %s is %s (fold %d); "
                    "a series must lie in one fold or be all test slices",
                    seq_path, s, split_from, split_names[se.split], ids[i], split_names[split],
                    held);
            se.split = split;
            split_from = ids[i];
            d->slot[d->n_kept] = (size_t)slot;
            d->fold_row[d->n_kept] = (size_t)row;
            d->n_kept++;
            se.length++;
        }
        if (!se.length) {
            emptied++;
            continue;
        }
        d->series[d->n_series++] = se;
        d->split_series[se.split]++;
        d->split_slices[se.split] += (size_t)se.length;
        if (se.length > d->max_length)
            d->max_length = se.length;
    }
    size_t unused = 0;
    for (size_t i = 0; i < d->emb.count; i++)
        unused += !used[i];

    if (no_embedding)
        log_warn("%zu slices of %s have no embedding: left out of their series", no_embedding,
                 seq_path);
    if (no_folds)
        log_warn("%zu slices with an embedding are not in %s: left out of their series",
                 no_folds, folds_path);
    if (emptied)
        log_warn("%zu series kept no slice: left out", emptied);
    if (unused)
        log_warn("%zu embeddings belong to no series of %s: unused", unused, seq_path);
    for (int k = 0; k < SPLITS; k++)
        log_info("%s: %zu series, %zu slices", split_names[k], d->split_series[k],
                 d->split_slices[k]);
    free(used);
    seqfile_free(&seq);
}

static void dataset_free(dataset_t *d)
{
    embeddings_free(&d->emb);
    slicelist_free(&d->folds);
    free(d->series);
    free(d->slot);
    free(d->fold_row);
}

/* The indexes of the series of one split, in file order. */
static size_t *split_list(const dataset_t *d, int split, size_t *n)
{
    size_t *list = xmalloc((d->split_series[split] ? d->split_series[split] : 1) * sizeof *list);
    *n = 0;
    for (size_t s = 0; s < d->n_series; s++)
        if (d->series[s].split == split)
            list[(*n)++] = s;
    return list;
}

/* ---- batches ---- */

typedef struct {
    float *emb, *labels; /* [max batch][max length][width], [..][..][6] */
    int *lengths;
} batch_t;

static void batch_init(batch_t *b, const dataset_t *d, int max_batch)
{
    size_t rows = (size_t)max_batch * (size_t)d->max_length;
    b->emb = xmalloc((rows ? rows : 1) * (size_t)d->emb.width * sizeof(float));
    b->labels = xmalloc((rows ? rows : 1) * SEQ_OUTPUTS * sizeof(float));
    b->lengths = xmalloc((size_t)max_batch * sizeof(int));
}

static void batch_free(batch_t *b)
{
    free(b->emb);
    free(b->labels);
    free(b->lengths);
}

/* Series list[0..n) front-padded with zero rows to the longest; returns the steps. */
static int batch_fill(batch_t *b, const dataset_t *d, const size_t *list, int n)
{
    const size_t width = (size_t)d->emb.width;
    int steps = 0;

    for (int k = 0; k < n; k++)
        if (d->series[list[k]].length > steps)
            steps = d->series[list[k]].length;
    for (int k = 0; k < n; k++) {
        const series_t *se = &d->series[list[k]];
        int pad = steps - se->length;
        size_t row0 = (size_t)k * (size_t)steps;
        b->lengths[k] = se->length;
        memset(b->emb + row0 * width, 0, (size_t)pad * width * sizeof(float));
        for (int t = 0; t < steps * SEQ_OUTPUTS; t++)
            b->labels[row0 * SEQ_OUTPUTS + (size_t)t] = -1.0f;
        for (int t = 0; t < se->length; t++) {
            size_t kept = se->first + (size_t)t, row = row0 + (size_t)(pad + t);
            memcpy(b->emb + row * width, d->emb.values + d->slot[kept] * width,
                   width * sizeof(float));
            const int8_t *label = d->folds.labels + d->fold_row[kept] * N_SUBTYPES;
            for (int j = 0; j < SEQ_OUTPUTS; j++)
                b->labels[row * SEQ_OUTPUTS + (size_t)j] = label[j] < 0 ? -1.0f : label[j];
        }
    }
    return steps;
}

/* ---- prediction ---- */

typedef struct {
    size_t n;     /* slices */
    char **ids;   /* borrowed from the folds table */
    float *prob;  /* n x 6 */
    int8_t *labels;
} split_pred_t;

static int compare_series_longest_first(const void *a, const void *b, void *arg)
{
    const dataset_t *d = arg;
    int la = d->series[*(const size_t *)a].length, lb = d->series[*(const size_t *)b].length;
    if (la != lb)
        return la > lb ? -1 : 1;
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

/*
 * Sigmoid probabilities for every slice of a split, rows in series file order. In the default
 * mode a prediction does not depend on its batch, so series of similar length share one;
 * with --pad-like-original the batches are consecutive series in file order, as the original.
 * The batches are shared over the ranks, whole, and the probabilities gathered on rank 0
 * (zeros on the others).
 */
static void predict_split(seqmodel_t *m, const dataset_t *d, int split, batch_t *b,
                          int batch_size, split_pred_t *out)
{
    size_t n_list;
    size_t *list = split_list(d, split, &n_list);
    size_t *offset = xmalloc((d->n_series ? d->n_series : 1) * sizeof *offset);

    out->n = d->split_slices[split];
    out->ids = xmalloc((out->n ? out->n : 1) * sizeof *out->ids);
    out->prob = xcalloc((out->n ? out->n : 1) * SEQ_OUTPUTS, sizeof *out->prob);
    out->labels = xmalloc((out->n ? out->n : 1) * SEQ_OUTPUTS);
    size_t at = 0;
    for (size_t k = 0; k < n_list; k++) {
        const series_t *se = &d->series[list[k]];
        offset[list[k]] = at;
        for (int t = 0; t < se->length; t++, at++) {
            size_t row = d->fold_row[se->first + (size_t)t];
            out->ids[at] = d->folds.ids[row];
            memcpy(out->labels + at * SEQ_OUTPUTS, d->folds.labels + row * N_SUBTYPES,
                   SEQ_OUTPUTS);
        }
    }
    if (!m->pad_like_original)
        qsort_r(list, n_list, sizeof *list, compare_series_longest_first, (void *)d);

    /* Each rank predicts a run of whole batches; a series' row holds its slices' outputs. */
    size_t row_floats = (size_t)d->max_length * SEQ_OUTPUTS;
    dist_range_t own = dist_share(n_list, (size_t)batch_size);
    size_t mine = own.end - own.begin;
    float *rows = xcalloc((mine ? mine : 1) * row_floats, sizeof *rows);
    seqmodel_set_inference(m, 1);
    for (size_t first = own.begin; first < own.end; first += (size_t)batch_size) {
        int n = own.end - first < (size_t)batch_size ? (int)(own.end - first) : batch_size;
        int steps = batch_fill(b, d, list + first, n);
        seqmodel_forward(m, b->emb, n, steps, b->lengths);
        for (int k = 0; k < n; k++) {
            int len = b->lengths[k];
            float *dst = rows + (first - own.begin + (size_t)k) * row_floats;
            const float *logits = m->logits + ((size_t)k * steps + (size_t)(steps - len)) *
                                                  SEQ_OUTPUTS;
            for (int j = 0; j < len * SEQ_OUTPUTS; j++)
                dst[j] = (float)(1.0 / (1.0 + exp(-(double)logits[j])));
        }
    }

    /* Rank 0 puts every series' rows in place; the others keep zeros. */
    seqmodel_set_inference(m, 0);
    float *all = dist_is_root() ? xmalloc((n_list ? n_list : 1) * row_floats * sizeof *all)
                                : NULL;
    dist_gather_rows(rows, all, row_floats * sizeof *rows, n_list, (size_t)batch_size);
    for (size_t k = 0; all && k < n_list; k++)
        memcpy(out->prob + offset[list[k]] * SEQ_OUTPUTS, all + k * row_floats,
               (size_t)d->series[list[k]].length * SEQ_OUTPUTS * sizeof *all);
    free(all);
    free(rows);
    free(list);
    free(offset);
}

static void split_pred_free(split_pred_t *p)
{
    free(p->ids);
    free(p->prob);
    free(p->labels);
}

/* The challenge metric of n rows of float probabilities; NaN without a scored row. */
static double score(const float *prob, const int8_t *labels, size_t n)
{
    double *p = xmalloc((n ? n : 1) * N_SUBTYPES * sizeof *p);
    for (size_t i = 0; i < n * N_SUBTYPES; i++)
        p[i] = prob[i];
    metric_result_t r;
    metric_score(p, labels, n, &r);
    free(p);
    return n ? r.score : NAN;
}

/* ---- outputs ---- */

typedef struct {
    const options_t *o;
    const char *precision; /* in effect: "fp32", or "bf16" where the CPU has AVX512-BF16 */
    const char *seq_path, *folds_path;
    char *emb_list; /* the EMB files, comma-separated */
    const dataset_t *d;
} run_t;

/* The three inputs as the outputs record them: the paths given and their fingerprints. */
typedef struct {
    const char *what, *path_attr, *fingerprint_attr, *path;
    char fingerprint[17]; /* 16 hex digits */
} run_input_t;

enum { RUN_INPUTS = 3 };

static void run_inputs(const run_t *run, run_input_t inputs[RUN_INPUTS])
{
    const dataset_t *d = run->d;
    inputs[0] = (run_input_t){"embeddings", "embeddings", "embeddings_fingerprint",
                              run->emb_list, ""};
    inputs[1] = (run_input_t){"SEQUENCES.h5", "sequences_file", "sequences_fingerprint",
                              run->seq_path, ""};
    inputs[2] = (run_input_t){"FOLDS.h5", "folds_file", "folds_fingerprint", run->folds_path,
                              ""};
    const uint64_t fingerprints[RUN_INPUTS] = {d->emb.fingerprint, d->sequences_fingerprint,
                                               d->folds_fingerprint};
    for (int i = 0; i < RUN_INPUTS; i++)
        snprintf(inputs[i].fingerprint, sizeof inputs[i].fingerprint, "%016llx",
                 (unsigned long long)fingerprints[i]);
}

static void attr_inputs(hid_t f, const run_t *run)
{
    run_input_t inputs[RUN_INPUTS];
    run_inputs(run, inputs);
    for (int i = 0; i < RUN_INPUTS; i++) {
        h5_attr_str(f, inputs[i].path_attr, inputs[i].path);
        h5_attr_str(f, inputs[i].fingerprint_attr, inputs[i].fingerprint);
    }
    h5_attr_i64(f, "fold", run->o->fold);
    h5_attr_str(f, "precision", run->precision);
}

static char *epoch_file(const char *dir, const char *prefix, int epoch)
{
    return xasprintf("%s/%s%d.h5", dir, prefix, epoch);
}

static void write_epoch_predictions(const run_t *run, int split, int epoch,
                                    const split_pred_t *p, double val_loss)
{
    char *path = epoch_file(run->o->out_dir, split == SPLIT_VAL ? "val_epoch" : "test_epoch",
                            epoch);
    h5out_t out;
    predfile_write_begin(&out, path, (const char *const *)p->ids, p->prob, p->n);
    attr_inputs(out.file, run);
    h5_attr_str(out.file, "split", split == SPLIT_VAL ? "valid" : "test");
    h5_attr_i64(out.file, "lstm_epoch", epoch);
    if (split == SPLIT_VAL)
        h5_attr_f64(out.file, "val_loss", val_loss);
    h5out_commit(&out);
    free(path);
}

/* The settings a resumed run must share with the checkpoint it continues. */
typedef struct {
    const char *name;
    int64_t value;
} run_setting_t;

static size_t run_settings(const run_t *run, run_setting_t *s)
{
    const options_t *o = run->o;
    size_t n = 0;
    s[n++] = (run_setting_t){"lstm_fold", o->fold};
    s[n++] = (run_setting_t){"lstm_batch", o->batch};
    s[n++] = (run_setting_t){"lstm_seed", o->seed};
    s[n++] = (run_setting_t){"lstm_train_series", (int64_t)run->d->split_series[SPLIT_TRAIN]};
    s[n++] = (run_setting_t){"lstm_train_slices", (int64_t)run->d->split_slices[SPLIT_TRAIN]};
    return n;
}

static void save_checkpoint(seqmodel_t *m, const run_t *run, const nn_ckpt_meta_t *meta,
                            double val_loss)
{
    char *path = epoch_file(run->o->out_dir, "epoch", (int)meta->epoch);
    char *tmp = tmp_path_for(path);
    nn_ckpt_save(tmp, &m->ps, meta, 0);

    /* The run's settings go in before the rename: a visible checkpoint always has them. */
    hid_t f = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0)
        die(EXIT_IO, "%s: cannot reopen the checkpoint to add attributes", tmp);
    run_setting_t settings[8];
    size_t n = run_settings(run, settings);
    for (size_t i = 0; i < n; i++)
        h5_attr_i64(f, settings[i].name, settings[i].value);
    h5_attr_f64(f, "lstm_lr", run->o->lr);
    h5_attr_i64(f, "lstm_ranks", dist_size());
    h5_attr_f64(f, "lstm_lr_decay", run->o->lr_decay);
    attr_inputs(f, run);
    if (!isnan(val_loss))
        h5_attr_f64(f, "val_loss", val_loss);
    if (H5Fclose(f) < 0)
        die(EXIT_IO, "%s: cannot close the checkpoint", tmp);
    if (tmp_commit(tmp, path) != 0)
        die(EXIT_IO, "%s: cannot rename into place", path);
    log_info("saved %s", path);
    free(tmp);
    free(path);
}

/* The complete epoch<E>.h5 of dir with the highest E, or NULL. A checkpoint of another
 * model kind there (cnntrain's) is refused: this program would overwrite it. */
static char *newest_epoch_checkpoint(const char *dir)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return NULL;
    char *best = NULL;
    int64_t best_epoch = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (!nn_ckpt_numbered_name(e->d_name, "epoch"))
            continue;
        char *path = path_join(dir, e->d_name), *message = NULL;
        nn_ckpt_meta_t meta;
        if (nn_ckpt_read_meta(path, &meta, &message) != 0) {
            log_warn("%s", message);
            free(message);
            free(path);
            continue;
        }
        if (strcmp(meta.model, MODEL_NAME) != 0)
            die(EXIT_USAGE, "%s is a checkpoint of %s, not of the sequence model: give "
                "lstmtrain another -o", path, meta.model);
        if (meta.epoch > best_epoch) {
            free(best);
            best = path;
            best_epoch = meta.epoch;
        } else {
            free(path);
        }
    }
    closedir(dp);
    return best;
}

/*
 * The inputs the checkpoint's run read against this run's: another content (fingerprint) is
 * refused. A checkpoint made before fingerprints were recorded cannot be checked: said.
 */
static void check_resume_inputs(hid_t f, const char *path, const run_t *run)
{
    run_input_t inputs[RUN_INPUTS];
    run_inputs(run, inputs);
    for (int i = 0; i < RUN_INPUTS; i++) {
        const run_input_t *in = &inputs[i];
        char *read_path = h5_attr_read_str(f, in->path_attr);
        char *read_fingerprint = h5_attr_read_str(f, in->fingerprint_attr);
        int other_path = read_path && strcmp(read_path, in->path) != 0;
        if (!read_fingerprint)
            log_warn("%s: made without input fingerprints: cannot check that its run read "
                     "the same %s as %s", path, in->what, in->path);
        else if (strcmp(read_fingerprint, in->fingerprint) != 0)
            die(EXIT_USAGE, "%s: --resume with other %s than the checkpoint's run: %s "
                "(fingerprint %s), it read %s (fingerprint %s); give those, or --force to "
                "start over", path, in->what, in->path, in->fingerprint,
                read_path ? read_path : "?", read_fingerprint);
        else if (other_path)
            log_info("%s: %s now read from %s (the checkpoint's run: %s), same content",
                     path, in->what, in->path, read_path);
        free(read_path);
        free(read_fingerprint);
    }
}

/* --force: one file of an earlier run, removed (dies when it is there and stays). */
static void remove_run_file(char *file)
{
    if (unlink(file) != 0 && errno != ENOENT)
        die(EXIT_IO, "%s: cannot remove (--force): %s", file, strerror(errno));
    free(file);
}

/*
 * --force: the files of an earlier run in dir: each epoch's checkpoint and predictions up to
 * the one after its newest checkpoint (predictions are written first), and the bags.
 */
static void remove_earlier_run(const char *dir)
{
    char *newest = newest_epoch_checkpoint(dir);
    if (!newest)
        return;
    nn_ckpt_meta_t meta;
    char *message = NULL;
    if (nn_ckpt_read_meta(newest, &meta, &message) != 0)
        die(EXIT_BAD_INPUT, "%s", message);
    static const char *const prefixes[] = {"epoch", "val_epoch", "test_epoch"};
    for (int e = 1; e <= (int)meta.epoch + 1; e++)
        for (int k = 0; k < 3; k++)
            remove_run_file(epoch_file(dir, prefixes[k], e));
    for (int split = SPLIT_VAL; split <= SPLIT_TEST; split++)
        remove_run_file(xasprintf("%s/%s.h5", dir, split_names[split]));
    log_info("--force: removed the earlier run in %s (%lld epochs)", dir, (long long)meta.epoch);
    free(newest);
}

static void check_resume(const char *path, const run_t *run, const nn_ckpt_meta_t *meta)
{
    const options_t *o = run->o;
    const nn_ckpt_arch_t *emb = nn_ckpt_meta_get_arch(meta, "emb");
    const nn_ckpt_arch_t *hidden = nn_ckpt_meta_get_arch(meta, "hidden");
    const nn_ckpt_arch_t *pad = nn_ckpt_meta_get_arch(meta, "pad_like_original");
    if (!emb || !hidden || !pad || emb->values[0] != run->d->emb.width ||
        hidden->values[0] != o->hidden || pad->values[0] != o->pad_like_original)
        die(EXIT_USAGE,
            "%s: --resume of another model (checkpoint: emb %lld, hidden %lld, pad mode %lld; "
            "this run: %d, %d, %d)",
            path, emb ? (long long)emb->values[0] : -1LL,
            hidden ? (long long)hidden->values[0] : -1LL, pad ? (long long)pad->values[0] : -1LL,
            run->d->emb.width, o->hidden, o->pad_like_original);

    hid_t f = h5_open_read(path);
    run_setting_t settings[8];
    size_t n = run_settings(run, settings);
    for (size_t i = 0; i < n; i++) {
        int64_t value;
        if (h5_attr_read_i64(f, settings[i].name, &value) && value != settings[i].value)
            die(EXIT_USAGE, "%s: --resume with %s %lld, the checkpoint has %lld", path,
                settings[i].name, (long long)settings[i].value, (long long)value);
    }
    double lr, decay;
    if ((h5_attr_read_f64(f, "lstm_lr", &lr) && lr != o->lr) ||
        (h5_attr_read_f64(f, "lstm_lr_decay", &decay) && decay != o->lr_decay))
        die(EXIT_USAGE, "%s: --resume with another --lr or --lr-decay than the checkpoint's",
            path);
    check_resume_inputs(f, path, run);
    h5_close(f);
}

/* Append item to a comma-separated list (NULL: empty). */
static void append_item(char **list, const char *item)
{
    char *grown = xasprintf("%s%s%s", *list ? *list : "", *list ? "," : "", item);
    free(*list);
    *list = grown;
}

/*
 * val.h5 / test.h5: the mean of the per-epoch prediction files of epochs first..last (read
 * back, so a resumed run bags exactly what an uninterrupted one does), slices sorted by ID.
 */
static void write_bag(const run_t *run, int split, int first, int last)
{
    const char *prefix = split == SPLIT_VAL ? "val_epoch" : "test_epoch";
    pred_table_t base = {0};
    double *sum = NULL;
    char *epochs = NULL, *losses = NULL, *precisions = NULL;
    int mixed = 0; /* epochs of a resumed run made in another precision than this run's */

    for (int e = first; e <= last; e++) {
        char *path = epoch_file(run->o->out_dir, prefix, e);
        pred_table_t t;
        predfile_read(path, &t);
        if (e == first) {
            base = t;
            sum = xcalloc(t.count ? t.count * N_SUBTYPES : 1, sizeof *sum);
        } else if (t.count != base.count) {
            die(EXIT_BAD_INPUT, "%s: %zu slices, %s has %zu", path, t.count, base.path,
                base.count);
        }
        for (size_t i = 0; i < t.count; i++) {
            if (strcmp(t.ids[i], base.ids[i]) != 0)
                die(EXIT_BAD_INPUT, "%s: slice %s where %s has %s", path, t.ids[i], base.path,
                    base.ids[i]);
            for (int j = 0; j < N_SUBTYPES; j++)
                sum[i * N_SUBTYPES + j] += t.prob[i * N_SUBTYPES + j];
        }
        hid_t f = h5_open_read(path);
        char item[64];
        if (split == SPLIT_VAL) {
            double loss = NAN;
            h5_attr_read_f64(f, "val_loss", &loss);
            snprintf(item, sizeof item, "%.9g", loss);
            append_item(&losses, item);
        }
        snprintf(item, sizeof item, "%d", e);
        append_item(&epochs, item);
        char *precision = h5_attr_read_str(f, "precision");
        h5_close(f);
        const char *made_in = precision ? precision : "fp32";
        mixed |= strcmp(made_in, run->precision) != 0;
        append_item(&precisions, made_in);
        free(precision);
        free(path);
        if (e != first)
            predfile_free(&t);
    }

    size_t n = base.count;
    float *prob = xmalloc((n ? n : 1) * N_SUBTYPES * sizeof *prob);
    for (size_t i = 0; i < n * N_SUBTYPES; i++)
        prob[i] = (float)(sum[i] / (last - first + 1));
    char *path = xasprintf("%s/%s.h5", run->o->out_dir, split_names[split]);
    h5out_t out;
    predfile_write_begin(&out, path, (const char *const *)base.ids, prob, n);
    run_t as_bagged = *run;
    if (mixed)
        as_bagged.precision = "mixed";
    attr_inputs(out.file, &as_bagged);
    if (mixed)
        h5_attr_str(out.file, "epoch_precisions", precisions);
    h5_attr_str(out.file, "split", split == SPLIT_VAL ? "valid" : "test");
    h5_attr_str(out.file, "lstm_epochs", epochs);
    h5_attr_i64(out.file, "epochs_bagged", last - first + 1);
    if (losses)
        h5_attr_str(out.file, "val_losses", losses);

    /* The bag's own validation score, with the labels of folds.h5. */
    if (split == SPLIT_VAL && n) {
        const slicelist_t *folds = &run->d->folds;
        int8_t *labels = xmalloc(n * N_SUBTYPES);
        for (size_t i = 0; i < n; i++) {
            long row = find_id(folds->ids, folds->count, base.ids[i]);
            for (int j = 0; j < N_SUBTYPES; j++)
                labels[i * N_SUBTYPES + j] = row < 0 ? -1 : folds->labels[row * N_SUBTYPES + j];
        }
        double loss = score(prob, labels, n);
        h5_attr_f64(out.file, "val_loss", loss);
        log_info("bag of epochs %s: validation weighted log loss %.6f", epochs, loss);
        free(labels);
    }
    h5out_commit(&out);
    log_info("wrote %s (%zu slices%s)", path, n, n ? "" : ": the split is empty");
    free(path);
    free(prob);
    free(sum);
    free(epochs);
    free(precisions);
    free(losses);
    predfile_free(&base);
}

/* ---- training ---- */

/* The epoch's order of the training series: a seeded Fisher-Yates shuffle. */
static void shuffle_series(size_t *order, size_t n, uint64_t seed, int epoch)
{
    nn_rng_t rng;
    nn_rng_seed(&rng, seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(epoch + 1)));
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)nn_rng_below(&rng, i), keep = order[i - 1];
        order[i - 1] = order[j];
        order[j] = keep;
    }
}

/* Known label entries among the n x steps rows of b (padding is -1): all, and 'any' ones. */
static void count_known(const batch_t *b, int n, int steps, double counts[2])
{
    counts[0] = counts[1] = 0;
    for (size_t i = 0; i < (size_t)n * (size_t)steps * SEQ_OUTPUTS; i++)
        if (b->labels[i] >= 0.0f) {
            counts[0]++;
            counts[1] += i % SEQ_OUTPUTS == SEQ_OUTPUTS - 1;
        }
}

/*
 * The weight of a known entry of column j in the loss with its two means over counts
 * entries: seqmodel_loss's definition (6/7 of the mean over all known entries plus 1/7 of
 * the mean over the known 'any' ones); t_mpi_lstmtrain.sh fails if the two part ways.
 */
static double entry_weight(const double counts[2], int j)
{
    double w = counts[0] > 0 ? 6.0 / 7.0 / counts[0] : 0.0;
    if (j == SEQ_OUTPUTS - 1 && counts[1] > 0)
        w += 1.0 / 7.0 / counts[1];
    return w;
}

/*
 * This rank's part of a batch shared over ranks: the loss gradient seqmodel_loss gave with
 * the means over the rank's own entries (local), rescaled to the means over the whole
 * batch's entries (global). The parts then sum to the gradient of the whole batch's loss.
 * Returns the factor of the non-'any' columns, which also turns the rank's loss into its
 * share of the batch's loss (exactly when every label is known).
 */
static double rescale_to_batch(seqmodel_t *m, const double local[2], const double global[2])
{
    double scale[SEQ_OUTPUTS];
    for (int j = 0; j < SEQ_OUTPUTS; j++) {
        double w = entry_weight(local, j);
        scale[j] = w > 0 ? entry_weight(global, j) / w : 0.0;
    }
    size_t values = (size_t)m->batch * (size_t)m->steps * SEQ_OUTPUTS;
    for (size_t i = 0; i < values; i++)
        m->dlogits[i] = (float)(m->dlogits[i] * scale[i % SEQ_OUTPUTS]);
    return scale[0];
}

/* Gradients of zero, in the backend's memory (a rank without series this step). */
static void zero_grads(nn_backend_t *be, nn_paramset_t *ps)
{
    size_t bytes = ps->param_count * sizeof *ps->grads;
    if (strcmp(be->name, "cpu") == 0) {
        memset(ps->grads, 0, bytes);
        return;
    }
    float *zeros = xcalloc(ps->param_count, sizeof *zeros);
    be->to_device(be, ps->grads, zeros, bytes);
    be->synchronize(be); /* the copy may read the host buffer until then */
    free(zeros);
}

/*
 * One epoch over the training series; returns the mean batch loss. With several ranks each
 * global batch of --batch series is split over them (dist_share_of with batches of 1
 * series), the gradient parts summed over ranks, and every rank takes the same Adam step.
 */
static double train_epoch(seqmodel_t *m, const dataset_t *d, const options_t *o, batch_t *b,
                          int epoch, nn_ckpt_meta_t *meta, double *slices_per_s)
{
    nn_backend_t *be = m->be;
    nn_paramset_t *ps = &m->ps;
    size_t n_train;
    size_t *order = split_list(d, SPLIT_TRAIN, &n_train);
    shuffle_series(order, n_train, (uint64_t)o->seed, epoch);
    nn_adam_t adam = meta->adam;
    adam.lr = o->lr * pow(o->lr_decay, epoch);
    int ranks = dist_size();

    double loss_sum = 0.0, start = time_now();
    size_t batches = 0, slices = 0;
    progress_t *progress = progress_begin("train", (int64_t)n_train);
    for (size_t first = 0; first < n_train; first += (size_t)o->batch) {
        int n = n_train - first < (size_t)o->batch ? (int)(n_train - first) : o->batch;
        dist_range_t own = dist_share_of(dist_rank(), ranks, (size_t)n, 1);
        int mine = (int)(own.end - own.begin);
        double loss = 0.0;
        if (mine) {
            int steps = batch_fill(b, d, order + first + own.begin, mine);
            seqmodel_forward(m, b->emb, mine, steps, b->lengths);
            loss = seqmodel_loss(m, b->labels, 1);
            if (ranks > 1) {
                double local[2], global[2];
                count_known(b, mine, steps, local);
                global[0] = local[0];
                global[1] = local[1];
                dist_allreduce_sum_f64(global, 2);
                loss *= rescale_to_batch(m, local, global);
            }
            seqmodel_backward(m);
        } else {
            double nothing[2] = {0, 0}; /* a rank without series still joins the sums */
            dist_allreduce_sum_f64(nothing, 2);
            zero_grads(be, ps);
        }
        if (!isfinite(loss))
            die(EXIT_INTERNAL,
                "loss is %g at step %lld (epoch %d): stopped; the checkpoints in %s are those "
                "of the last good epochs",
                loss, (long long)meta->step + 1, epoch + 1, o->out_dir);
        dist_allreduce_backend(be, ps->grads, ps->param_count);
        meta->step++;
        be->adam_step(be, &adam, meta->step, ps->params, ps->grads, ps->adam_m, ps->adam_v,
                      ps->param_count);
        loss_sum += loss;
        batches++;
        for (int k = 0; k < n; k++)
            slices += (size_t)d->series[order[first + (size_t)k]].length;
        progress_add(progress, n);
        log_debug("step %lld: loss %.6f", (long long)meta->step, loss);
    }
    progress_end(progress);
    dist_allreduce_sum_f64(&loss_sum, 1);
    *slices_per_s = (double)slices / (time_now() - start);
    free(order);
    return batches ? loss_sum / (double)batches : NAN;
}

/*
 * Every rank must hold the same weights and Adam moments after the same steps: compare a
 * hash of the three slabs (read through a host copy on a backend with its own memory).
 */
static void check_ranks_agree(nn_paramset_t *ps)
{
    if (dist_size() < 2)
        return;
    nn_backend_t *be = ps->be;
    const float *slabs[3] = {ps->params, ps->adam_m, ps->adam_v};
    size_t bytes = ps->param_count * sizeof(float);
    float *host = strcmp(be->name, "cpu") == 0 ? NULL : xmalloc(bytes);
    uint64_t hash = 0;
    for (int k = 0; k < 3; k++) {
        const float *slab = slabs[k];
        if (host) {
            be->to_host(be, host, slab, bytes);
            slab = host;
        }
        hash = hash * 0x100000001b3ull ^ dist_hash_bytes(slab, bytes);
    }
    free(host);
    int differs = dist_check_same(hash);
    if (differs >= 0)
        die(EXIT_INTERNAL, "rank %d's weights differ from rank 0's after the same steps",
            differs);
    log_info("parameters identical on all %d ranks (hash %016llx)", dist_size(),
             (unsigned long long)hash);
}

/* oneDNN computes on OpenMP threads: set their count through the runtime loaded with it. */
static void set_threads(int threads)
{
    if (threads < 1)
        return;
    char value[16];
    snprintf(value, sizeof value, "%d", threads);
    setenv("OMP_NUM_THREADS", value, 1); /* read by the engine's own thread pool */
    void (*set_num_threads)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (set_num_threads)
        set_num_threads(threads);
    else
        log_warn("-j %d: no OpenMP runtime found; the thread count is the library's", threads);
}

int main(int argc, char **argv)
{
    options_t o = {.fold = 0, .hidden = 2048, .epochs = 12, .bag = 12, .batch = 4,
                   .predict_batch = 16, .lr = 1e-5, .lr_decay = 0.95, .seed = 1,
                   .precision = "fp32", .device = "cpu"};
    const opt_t options[] = {
        {'o', "out", OPT_STRING, &o.out_dir, "DIR", "output folder (created; required)", 1, 0,
         NULL},
        {0, "fold", OPT_INT, &o.fold, "F", "validation fold; -1: no validation", -1, 999, NULL},
        {0, "hidden", OPT_INT, &o.hidden, "H",
         "LSTM units per direction (at most the embedding width)", 1, 65536, NULL},
        {0, "epochs", OPT_INT, &o.epochs, "N", "epochs (in all, resumed ones included)", 1, 10000,
         NULL},
        {0, "bag", OPT_INT, &o.bag, "N", "average the predictions of the last N epochs", 1,
         10000, NULL},
        {0, "lr", OPT_DOUBLE, &o.lr, "LR", "Adam learning rate of the first epoch", 0, 1, NULL},
        {0, "lr-decay", OPT_DOUBLE, &o.lr_decay, "G", "learning rate factor per epoch", 0, 1,
         NULL},
        {0, "batch", OPT_INT, &o.batch, "N", "series per optimizer step", 1, 4096, NULL},
        {0, "predict-batch", OPT_INT, &o.predict_batch, "N", "series per prediction batch", 1,
         4096, NULL},
        {0, "seed", OPT_INT64, &o.seed, "S", "seed of the initial weights and the shuffles", 0,
         9e15, NULL},
        {0, "pad-like-original", OPT_FLAG, &o.pad_like_original, NULL,
         "run the front padding through the LSTMs as the original did", 1, 0, NULL},
        {0, "precision", OPT_CHOICE, &o.precision, "P",
         "arithmetic; bf16: the model's matrix products on bf16 operands with fp32 sums, "
         "weights and Adam fp32 (fp32 on a CPU without AVX512-BF16)", 1, 0, "fp32|bf16"},
        {0, "device", OPT_STRING, &o.device, "NAME",
         "NN backend: cpu, cuda or cuda:N (the whole model on that GPU)", 1, 0, NULL},
        {'j', "threads", OPT_INT, &o.threads, "N",
         "compute threads (0: OMP_NUM_THREADS, else every core)", 0, 1024, NULL},
        {0, "resume", OPT_FLAG, &o.resume, NULL,
         "continue from the newest complete epoch checkpoint in DIR", 1, 0, NULL},
        {0, "force", OPT_FLAG, &o.force, NULL,
         "start over in an OUTDIR that holds checkpoints, removing the earlier run's files", 1,
         0, NULL},
        {0},
    };
    const opt_spec_t spec = {
        .program = "lstmtrain",
        .usage = "[options] -o OUTDIR SEQUENCES.h5 FOLDS.h5 EMB.h5 [EMB.h5 ...]",
        .summary =
            "Trains the stage-5 sequence model (two bidirectional LSTMs over each series'\n"
            "slice embeddings, Adam, weighted BCE) on the training folds, predicts the\n"
            "validation fold and the test slices after every epoch, and averages the last\n"
            "--bag epochs' predictions into val.h5 and test.h5.",
        .details =
            "Inputs: SEQUENCES.h5 of seqbuild (series in scan order), FOLDS.h5 of mkfolds,\n"
            "and embdump outputs (/id, /embedding N x D float32 or float16), unioned by slice\n"
            "ID; a slice in several files gets the mean of its embeddings. A series is\n"
            "training (fold >= 0, not --fold), validation (--fold) or test (fold -1); all its\n"
            "slices must agree (exit 3 otherwise). Slices without an embedding or a FOLDS.h5\n"
            "row are left out of their series, embeddings of no series unused (counted).\n"
            "Unknown labels (-1) are left out of the loss.\n"
            "Outputs in OUTDIR, each written whole under a temporary name:\n"
            "  epoch<E>.h5        checkpoint: weights, Adam moments, step, RNG, settings\n"
            "  val_epoch<E>.h5    validation predictions of epoch E (attribute val_loss)\n"
            "  test_epoch<E>.h5   test predictions of epoch E\n"
            "  val.h5, test.h5    after the last epoch: the mean of the last --bag epochs\n"
            "A split without slices still gets its files, with no rows. --bag larger than\n"
            "--epochs bags every epoch (said once; attribute epochs_bagged).\n"
            "--resume continues from the newest epoch<E>.h5 and gives the result of an\n"
            "uninterrupted run (with the same thread count); it refuses other model sizes,\n"
            "--fold, --batch, --seed, --lr, --lr-decay, training series or inputs than the\n"
            "checkpoint's (each input's content fingerprint: attributes\n"
            "embeddings_fingerprint, sequences_fingerprint, folds_fingerprint). An OUTDIR\n"
            "that holds checkpoints needs --resume (a killed run: the same command with\n"
            "--resume) or --force (removes that run's files, starts over): exit 2 otherwise,\n"
            "and whatever the options for an OUTDIR holding another model's checkpoints\n"
            "(cnntrain's). A checkpoint without input fingerprints (older) resumes with a\n"
            "warning that its inputs cannot be checked.\n"
            "--fold must exist in FOLDS.h5.\n"
            "Under `mpirun -np N` each --batch of series is split over the ranks, the\n"
            "gradients summed so that the step is the whole batch's (equal to one process\n"
            "but for the order of the sums), and the prediction batches shared; rank 0\n"
            "alone logs and writes (attribute lstm_ranks; --resume accepts another N). A\n"
            "rank that dies ends the job; one that hangs is given up after ICH_DIST_TIMEOUT\n"
            "seconds (default 1800), exit 1.",
        .exit_codes =
            "  lstmtrain: 2 also for --hidden larger than the embedding width, or a\n"
            "             --device that cannot be created here.\n",
        .options = options,
        .min_positional = 3,
        .max_positional = -1,
    };
    log_init("lstmtrain", LOG_INFO);
    char **pos;
    int n_pos = opt_parse(&spec, argc, argv, &pos);
    dist_init(&argc, &argv);
    if (!o.out_dir)
        die(EXIT_USAGE, "-o OUTDIR is required");
    output_dir_check("-o", o.out_dir);
    refuse_inputs_in_out_dir(o.out_dir, pos, n_pos);
    if (o.resume && o.force)
        die(EXIT_USAGE, "--resume continues the run in %s, --force removes it: give one",
            o.out_dir);
    char *earlier = o.resume || o.force ? NULL : newest_epoch_checkpoint(o.out_dir);
    if (earlier)
        die(EXIT_USAGE, "%s holds an earlier run (newest checkpoint %s): add --resume to "
            "continue it, or --force to remove its files and start over", o.out_dir, earlier);
    slicelist_require_fold(pos[1], "--fold", o.fold);
    if (o.bag > o.epochs)
        log_warn("--bag %d with --epochs %d: val.h5 and test.h5 average all the epochs (%d)",
                 o.bag, o.epochs, o.epochs);
    set_threads(o.threads);
    char why[512];
    nn_backend_t *be = nn_backend_open(dist_device_for_rank(o.device), why, sizeof why);
    if (!be)
        die(EXIT_USAGE, "--device %s: %s", o.device, why);

    run_t run = {.o = &o, .seq_path = pos[0], .folds_path = pos[1]};
    dataset_t d = {0};
    check_embedding_sources(pos + 2, n_pos - 2, o.fold);
    embeddings_read(&d.emb, pos + 2, n_pos - 2);
    dataset_build(&d, pos[0], pos[1], o.fold);
    run.d = &d;
    run.emb_list = xstrdup(pos[2]);
    for (int i = 3; i < n_pos; i++) {
        char *joined = xasprintf("%s,%s", run.emb_list, pos[i]);
        free(run.emb_list);
        run.emb_list = joined;
    }
    if (!d.split_series[SPLIT_TRAIN])
        die(EXIT_BAD_INPUT, "%s: no training series (fold >= 0 and not %d) with embeddings",
            pos[1], o.fold);
    if (o.fold >= 0 && !d.split_series[SPLIT_VAL])
        log_warn("fold %d has no series: no validation (val files have no rows)", o.fold);
    if (!d.split_series[SPLIT_TEST])
        log_warn("no test series: the test files have no rows");

    char err[256];
    seqmodel_t *m = seqmodel_create(be, d.emb.width, o.hidden, o.pad_like_original, err,
                                    sizeof err);
    if (!m)
        die(EXIT_USAGE, "--hidden %d with embeddings %d wide (%s): %s", o.hidden, d.emb.width,
            pos[2], err);
    nn_params_alloc_adam(&m->ps);
    int bf16 = strcmp(o.precision, "bf16") == 0;
    bf16 = seqmodel_set_precision(m, bf16 ? NN_PRECISION_BF16 : NN_PRECISION_FP32) ==
           NN_PRECISION_BF16;
    run.precision = bf16 ? "bf16" : "fp32";

    nn_ckpt_meta_t meta;
    nn_ckpt_meta_init(&meta, MODEL_NAME);
    int64_t arch[3] = {d.emb.width, o.hidden, o.pad_like_original};
    nn_ckpt_meta_set_arch(&meta, "emb", 1, &arch[0]);
    nn_ckpt_meta_set_arch(&meta, "hidden", 1, &arch[1]);
    nn_ckpt_meta_set_arch(&meta, "pad_like_original", 1, &arch[2]);
    meta.adam.lr = o.lr;
    snprintf(meta.precision, sizeof meta.precision, "%s", run.precision);
    nn_rng_seed(&meta.rng, (uint64_t)o.seed);
    seqmodel_init_default(m, &meta.rng);

    /* Rank 0 picks the checkpoint; every rank reads it (the folder is shared). */
    char *resume_from = o.resume && dist_is_root() ? newest_epoch_checkpoint(o.out_dir) : NULL;
    if (o.resume)
        resume_from = dist_broadcast_path(resume_from);
    if (resume_from) {
        nn_ckpt_meta_t saved;
        char *message = NULL;
        if (nn_ckpt_read_meta(resume_from, &saved, &message) != 0)
            die(EXIT_BAD_INPUT, "%s", message);
        check_resume(resume_from, &run, &saved);
        nn_ckpt_load_or_die(resume_from, &m->ps, MODEL_NAME, NN_CKPT_ADAM, &meta);
        seqmodel_weights_changed(m);
        meta.adam.lr = o.lr;
        /* The checkpoint holds fp32 master weights: a run may go on in another precision. */
        if (strcmp(meta.precision, run.precision) != 0)
            log_info("resuming a %s run in %s", meta.precision, run.precision);
        snprintf(meta.precision, sizeof meta.precision, "%s", run.precision);
        log_info("resuming from %s (epoch %lld, step %lld)", resume_from, (long long)meta.epoch,
                 (long long)meta.step);
        hid_t f = h5_open_read(resume_from);
        int64_t ranks_before = 1;
        h5_attr_read_i64(f, "lstm_ranks", &ranks_before);
        h5_close(f);
        if (ranks_before != dist_size())
            log_info("resuming with %d ranks a run made with %lld: the same batches and "
                     "steps (sums in another order)", dist_size(), (long long)ranks_before);
        free(resume_from);
    } else if (o.resume) {
        log_info("nothing to resume in %s: starting afresh", o.out_dir);
    }

    /* Created only now: a rejected input leaves nothing behind. Rank 0 alone writes. */
    int writer = dist_is_root();
    if (writer) {
        mkdir_p(o.out_dir);
        tmp_sweep(o.out_dir);
        if (o.force)
            remove_earlier_run(o.out_dir);
    }
    if (meta.epoch >= o.epochs)
        log_info("%s: already %lld epochs of %d; bagging only", o.out_dir,
                 (long long)meta.epoch, o.epochs);

    batch_t b;
    batch_init(&b, &d, o.batch > o.predict_batch ? o.batch : o.predict_batch);
    for (int epoch = (int)meta.epoch; epoch < o.epochs; epoch++) {
        double train_rate, lr = o.lr * pow(o.lr_decay, epoch);
        double train_loss = train_epoch(m, &d, &o, &b, epoch, &meta, &train_rate);

        double start = time_now();
        split_pred_t val, test;
        predict_split(m, &d, SPLIT_VAL, &b, o.predict_batch, &val);
        predict_split(m, &d, SPLIT_TEST, &b, o.predict_batch, &test);
        double predict_rate = (double)(val.n + test.n) / (time_now() - start);
        double val_loss = writer ? score(val.prob, val.labels, val.n) : NAN;
        check_ranks_agree(&m->ps);
        log_info("epoch %d/%d: train loss %.6f, val weighted log loss %.6f, lr %.4g, "
                 "train %.1f slices/s, predict %.1f slices/s",
                 epoch + 1, o.epochs, train_loss, val_loss, lr, train_rate,
                 val.n + test.n ? predict_rate : 0.0);

        /* Predictions before the checkpoint: a checkpoint's epoch always has its files. */
        meta.epoch = epoch + 1;
        if (writer) {
            write_epoch_predictions(&run, SPLIT_VAL, epoch + 1, &val, val_loss);
            write_epoch_predictions(&run, SPLIT_TEST, epoch + 1, &test, NAN);
            save_checkpoint(m, &run, &meta, val_loss);
        }
        split_pred_free(&val);
        split_pred_free(&test);
    }

    int first_bagged = o.epochs - o.bag + 1 > 1 ? o.epochs - o.bag + 1 : 1;
    if (writer) {
        write_bag(&run, SPLIT_VAL, first_bagged, o.epochs);
        write_bag(&run, SPLIT_TEST, first_bagged, o.epochs);
    }

    batch_free(&b);
    seqmodel_destroy(m);
    be->destroy(be);
    dataset_free(&d);
    free(run.emb_list);
    free(pos);
    dist_finalize();
    return EXIT_OK;
}
