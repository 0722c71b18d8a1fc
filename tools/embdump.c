/*
 * embdump: slice embeddings of a trained classifier (reference-method.md stage 4). For every
 * slice of a split, the pooled feature (the input of the last linear layer) and the six sigmoid
 * outputs, averaged over the test-time augmentation variants, in eval mode.
 */
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
#include "loader.h"
#include "log.h"
#include "nn/checkpoint.h"
#include "nn/mixed.h"
#include "nn/nn.h"
#include "nn/resnext.h"
#include "opt.h"
#include "predfile.h"
#include "slicelist.h"

/* The variant names of --tta and of the output (orig is imgproc's "original"). */
static const char *const VARIANT_NAMES[IMG_TTA_COUNT] = {"orig", "hflip", "transpose"};

/* Upper bound of the default batch: its four image buffers (two in the loader, the variant,
 * the model's input) take 4 x 88 MiB at 480 px with 32 images. */
#define DEFAULT_BATCH_MAX 32

typedef struct {
    const char *out, *split, *tta, *fold_text, *crop, *device, *precision;
    int per_variant, fp16, batch, size, threads;
} embdump_options_t;

/* What the checkpoint says about the model and the run that trained it. */
typedef struct {
    nn_ckpt_meta_t meta;
    int has_fold;
    int64_t fold, size;
    char *crop; /* NULL when absent */
} ckpt_info_t;

/* The chosen TTA variants, in the order given. */
typedef struct {
    img_tta_t list[IMG_TTA_COUNT];
    int count;
    char names[64]; /* "orig,hflip,transpose" */
} tta_set_t;

static void parse_tta(const char *text, tta_set_t *set)
{
    char *copy = xstrdup(text), *save = NULL;
    set->count = 0;
    set->names[0] = 0;
    for (char *word = strtok_r(copy, ",", &save); word; word = strtok_r(NULL, ",", &save)) {
        int variant = -1;
        for (int k = 0; k < IMG_TTA_COUNT; k++)
            if (!strcmp(word, VARIANT_NAMES[k]))
                variant = k;
        if (variant < 0)
            die(EXIT_USAGE, "--tta: unknown variant '%s' (orig, hflip, transpose)", word);
        for (int k = 0; k < set->count; k++)
            if (set->list[k] == (img_tta_t)variant)
                die(EXIT_USAGE, "--tta: '%s' given twice", word);
        set->list[set->count++] = (img_tta_t)variant;
        size_t used = strlen(set->names);
        snprintf(set->names + used, sizeof set->names - used, "%s%s", used ? "," : "", word);
    }
    free(copy);
    if (!set->count)
        die(EXIT_USAGE, "--tta: no variant given");
}

/* Model name, architecture and the cnntrain attributes; dies with EXIT_BAD_INPUT when the
 * file is not a checkpoint of a ResNeXt with six outputs. */
static void read_checkpoint_info(const char *path, ckpt_info_t *info)
{
    char *message = NULL;
    if (nn_ckpt_read_meta(path, &info->meta, &message) != 0)
        die(EXIT_BAD_INPUT, "%s", message);
    if (!resnext_config(info->meta.model))
        die(EXIT_BAD_INPUT,
            "%s: a checkpoint of model '%s', not of a ResNeXt classifier "
            "(tiny, resnext50_32x4d, resnext101_32x8d)",
            path, info->meta.model);
    const nn_ckpt_arch_t *outputs = nn_ckpt_meta_get_arch(&info->meta, "num_outputs");
    if (outputs && outputs->count == 1 && outputs->values[0] != N_SUBTYPES)
        die(EXIT_BAD_INPUT, "%s: the model has %lld output%s, not the %d subtypes", path,
            (long long)outputs->values[0], outputs->values[0] == 1 ? "" : "s", N_SUBTYPES);

    hid_t f = h5_open_read(path);
    info->has_fold = h5_attr_read_i64(f, "train_fold", &info->fold);
    if (!h5_attr_read_i64(f, "train_size", &info->size))
        info->size = 0;
    info->crop = h5_attr_read_str(f, "train_crop");
    h5_close(f);
}

/* An integer option given as text (so that "absent" needs no sentinel value in --help). */
static int parse_fold(const char *text)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (end == text || *end || errno || value < -1 || value > 99)
        die(EXIT_USAGE, "--fold: '%s' is not a fold number (-1..99)", text);
    return (int)value;
}

/*
 * The rows of list in the split, in list order, into rows (count returned). train: fold >= 0
 * and != held; val: fold == held; test: fold -1; all: every row.
 */
static size_t select_split(const slicelist_t *list, const char *split, int held, size_t *rows)
{
    size_t n = 0;
    for (size_t i = 0; i < list->count; i++) {
        int fold = list->fold[i];
        int take = !strcmp(split, "all") ||
                   (!strcmp(split, "train") && fold >= 0 && fold != held) ||
                   (!strcmp(split, "val") && fold == held) ||
                   (!strcmp(split, "test") && fold == -1);
        if (take)
            rows[n++] = i;
    }
    return n;
}

/* A fold value of the list's slices: does any slice have it? */
static int fold_present(const slicelist_t *list, int fold)
{
    for (size_t i = 0; i < list->count; i++)
        if (list->fold[i] == fold)
            return 1;
    return 0;
}

/* Default batch: the images whose eval activations fit in an eighth of the memory. */
static int default_batch(int size)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double memory = pages > 0 && page > 0 ? (double)pages * (double)page : 4e9;
    /* The widest activation of these models is 16 x size^2 floats per image (stem and first
     * stage); the engine's eval arena keeps a few of them plus the variant inputs. */
    double per_image = 8.0 * 16.0 * (double)size * size * sizeof(float);
    double fit = memory / 8.0 / per_image;
    return fit < 1 ? 1 : fit > DEFAULT_BATCH_MAX ? DEFAULT_BATCH_MAX : (int)fit;
}

/* ---- the output file ---- */

typedef struct {
    hid_t embedding, prob; /* datasets written a batch of rows at a time */
} row_datasets_t;

/* An N x cols dataset of file type ftype, chunked by rows when it has any (a zero-row dataset
 * cannot be chunked). */
static hid_t create_rows(hid_t loc, const char *name, hid_t ftype, size_t rows, size_t cols)
{
    hsize_t dims[2] = {rows, cols};
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (rows) {
        hsize_t per_chunk = (1u << 20) / (cols * sizeof(float));
        hsize_t chunk[2] = {per_chunk < 1 ? 1 : per_chunk > rows ? rows : per_chunk, cols};
        H5Pset_chunk(dcpl, 2, chunk);
    }
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t ds = H5Dcreate2(loc, name, ftype, space, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(lcpl);
    H5Pclose(dcpl);
    H5Sclose(space);
    if (ds < 0)
        die(EXIT_IO, "%s: cannot create /%s", h5_filename(loc), name);
    return ds;
}

/* Rows [first, first + n) of an N x cols dataset from host values of memtype (none when
 * ds < 0). */
static void write_rows(hid_t ds, hid_t memtype, size_t first, size_t n, size_t cols,
                       const void *data)
{
    if (ds < 0 || !n)
        return;
    hid_t space = H5Dget_space(ds);
    hsize_t start[2] = {first, 0}, count[2] = {n, cols};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    hid_t mem = H5Screate_simple(2, count, NULL);
    herr_t status = H5Dwrite(ds, memtype, mem, space, H5P_DEFAULT, data);
    H5Sclose(mem);
    H5Sclose(space);
    if (status < 0)
        die(EXIT_IO, "%s: cannot write rows %zu..%zu", h5_filename(ds), first, first + n);
}

/*
 * IEEE binary16 bits of a float, rounded to nearest, ties to even (as numpy's float16).
 * Done here rather than by HDF5: HDF5 1.10's float conversion drops the carry when rounding
 * up overflows the mantissa (0.249983 became 0.125).
 */
static uint16_t half_from_float(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t magnitude = bits & 0x7FFFFFFFu;
    if (magnitude > 0x7F800000u)
        return sign | 0x7E00u; /* NaN */
    if (magnitude >= 0x477FF000u)
        return sign | 0x7C00u; /* 65520 and above round to infinity */
    if (magnitude < 0x38800000u) {
        /* Below 2^-14: a subnormal, in units of 2^-24 (the scaling is exact). */
        float units = fabsf(value) * 16777216.0f;
        return sign | (uint16_t)lrintf(units);
    }
    uint32_t rounded = magnitude + 0xFFFu + ((magnitude >> 13) & 1u);
    return sign | (uint16_t)((rounded >> 13) - ((127u - 15u) << 10));
}

/* An embedding block in the storage type: floats as they are, or converted to float16. */
static void write_embedding(hid_t ds, hid_t f16, size_t first, size_t n, size_t cols,
                            const float *data, uint16_t *scratch)
{
    if (ds < 0 || !n)
        return;
    if (f16 < 0) {
        write_rows(ds, H5T_NATIVE_FLOAT, first, n, cols, data);
        return;
    }
    for (size_t k = 0; k < n * cols; k++)
        scratch[k] = half_from_float(data[k]);
    write_rows(ds, f16, first, n, cols, scratch);
}

static void close_rows(row_datasets_t *r)
{
    if (r->embedding >= 0)
        H5Dclose(r->embedding);
    if (r->prob >= 0)
        H5Dclose(r->prob);
}

/* ---- the model ---- */

/* The first of n values that is NaN or infinite, or n. */
static size_t first_non_finite(const float *values, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(values[i]))
            return i;
    return n;
}

/* A NaN or infinite weight or statistic gives outputs that mean nothing, even where a relu
 * happens to hide it: refuse the checkpoint. */
static void refuse_non_finite_weights(nn_paramset_t *ps, const char *path)
{
    for (size_t i = 0; i < ps->n_entries; i++) {
        const nn_entry_t *entry = &ps->entries[i];
        if (entry->kind == NN_ENTRY_COUNTER)
            continue;
        float *host = xmalloc((entry->count ? entry->count : 1) * sizeof *host);
        nn_params_read_plain(ps, entry->kind == NN_ENTRY_PARAM ? ps->params : ps->buffers, i,
                             host);
        size_t bad = first_non_finite(host, entry->count);
        free(host);
        if (bad < entry->count)
            die(EXIT_BAD_INPUT, "%s: %s holds a non-finite value (element %zu): nothing written",
                path, entry->name, bad);
    }
}

typedef struct {
    nn_backend_t *be;
    resnext_t *model;
    float *input;       /* backend: one variant of a batch */
    float *variant;     /* host: one variant of a batch */
    float *host_embed;  /* host: batch x embed_dim */
    float *host_logits; /* host: batch x N_SUBTYPES */
    int size, batch;
} embedder_t;

static void embedder_init(embedder_t *e, const embdump_options_t *o, const char *ckpt_path,
                          const char *model_name, int size, int batch)
{
    const char *device = dist_device_for_rank(o->device);
    char why[512];
    e->be = nn_backend_open(device, why, sizeof why);
    if (!e->be)
        die(EXIT_USAGE, "--device %s: %s", device, why);
    e->model = resnext_create(e->be, model_name, N_SUBTYPES);
    nn_ckpt_load_or_die(ckpt_path, &e->model->ps, model_name, 0, NULL);
    refuse_non_finite_weights(&e->model->ps, ckpt_path);
    /* Inference only: keep the weights in the backend's own layout (measured 10% faster). */
    resnext_set_weight_cache(e->model, RESNEXT_WEIGHT_CACHE_ON);
    resnext_set_precision(e->model,
                          nn_mixed_precision_setup(e->be, o->precision, "--precision"));
    e->be->weights_changed(e->be);

    size_t image = (size_t)IMG_CHANNELS * size * size;
    e->size = size;
    e->batch = batch;
    e->input = e->be->alloc(e->be, (size_t)batch * image * sizeof(float));
    e->variant = xmalloc((size_t)batch * image * sizeof(float));
    e->host_embed = xmalloc((size_t)batch * e->model->embed_dim * sizeof(float));
    e->host_logits = xmalloc((size_t)batch * N_SUBTYPES * sizeof(float));
}

static void embedder_free(embedder_t *e)
{
    e->be->release(e->be, e->input);
    free(e->variant);
    free(e->host_embed);
    free(e->host_logits);
    resnext_free(e->model);
    e->be->destroy(e->be);
}

/*
 * One TTA variant of n prepared images (normalised CHW planes, square): the flip and the
 * transpose commute with the per-pixel normalisation, so applying them to the floats equals
 * applying them to the prepared image first.
 */
static void make_variant(const float *images, int n, int size, img_tta_t variant, float *out)
{
    size_t side = (size_t)size, plane = side * side;
    for (size_t p = 0; p < (size_t)n * IMG_CHANNELS; p++) {
        const float *src = images + p * plane;
        float *dst = out + p * plane;
        if (variant == IMG_TTA_ORIGINAL) {
            memcpy(dst, src, plane * sizeof *dst);
            continue;
        }
        for (size_t y = 0; y < side; y++)
            for (size_t x = 0; x < side; x++)
                dst[y * side + x] = variant == IMG_TTA_HFLIP ? src[y * side + (side - 1 - x)]
                                                             : src[x * side + y];
    }
}

/* Forward one variant of n images: embeddings and sigmoid outputs into the host buffers. */
static void embed_variant(embedder_t *e, const float *images, int n, img_tta_t variant)
{
    nn_backend_t *be = e->be;
    size_t floats = (size_t)n * IMG_CHANNELS * e->size * e->size;
    const float *source = images;
    if (variant != IMG_TTA_ORIGINAL) {
        make_variant(images, n, e->size, variant, e->variant);
        source = e->variant;
    }
    /* Not to_device: images are data, and the weights' converted copies stay valid. */
    nn_upload_batch(be, e->input, source, floats * sizeof(float));
    nn_tensor_t x = {.data = e->input, .n = n, .c = IMG_CHANNELS, .h = e->size, .w = e->size};
    resnext_forward(e->model, &x, 0);
    be->to_host(be, e->host_embed, e->model->embedding.data,
                (size_t)n * e->model->embed_dim * sizeof(float));
    be->to_host(be, e->host_logits, e->model->logits.data,
                (size_t)n * N_SUBTYPES * sizeof(float));
    for (int k = 0; k < n * N_SUBTYPES; k++)
        e->host_logits[k] = (float)(1.0 / (1.0 + exp(-(double)e->host_logits[k])));
}

/* ---- writing the output, batch by batch ---- */

/* The output while it is written: its row datasets and the float16 type when used. */
typedef struct {
    h5out_t h5;
    hid_t f16; /* -1: float32 storage */
    row_datasets_t mean, per[IMG_TTA_COUNT];
    uint16_t *half_rows; /* batch x dim, for the float16 conversion */
    size_t dim;
} output_t;

/* /id and /prob (zeros until output_close_datasets) first, then empty row datasets. */
static void output_open(output_t *out, const char *path, const char *const *ids,
                        const float *prob, size_t n, size_t dim, const tta_set_t *tta,
                        const embdump_options_t *o, int batch)
{
    predfile_write_begin(&out->h5, path, ids, prob, n);
    hid_t file = out->h5.file;
    out->dim = dim;
    out->f16 = o->fp16 ? h5_float16_type(5, 10, 15) : -1;
    out->half_rows = o->fp16 ? xmalloc((size_t)batch * dim * sizeof *out->half_rows) : NULL;
    hid_t store_type = o->fp16 ? out->f16 : H5T_IEEE_F32LE;
    out->mean.embedding = create_rows(file, "embedding", store_type, n, dim);
    out->mean.prob = -1;
    for (int v = 0; v < tta->count; v++) {
        row_datasets_t *per = &out->per[v];
        per->embedding = per->prob = -1;
        if (!o->per_variant)
            continue;
        char *name = xasprintf("variants/%s/embedding", VARIANT_NAMES[tta->list[v]]);
        per->embedding = create_rows(file, name, store_type, n, dim);
        free(name);
        name = xasprintf("variants/%s/prob", VARIANT_NAMES[tta->list[v]]);
        per->prob = create_rows(file, name, H5T_IEEE_F32LE, n, N_SUBTYPES);
        free(name);
    }
}

/* The mean outputs replace the zeros of /prob; the row datasets are closed. */
static void output_close_datasets(output_t *out, const float *prob, size_t n,
                                  const tta_set_t *tta)
{
    hid_t prob_ds = H5Dopen2(out->h5.file, "prob", H5P_DEFAULT);
    if (prob_ds < 0 || (n && H5Dwrite(prob_ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL,
                                      H5P_DEFAULT, prob) < 0))
        die(EXIT_IO, "%s: cannot write /prob", out->h5.tmp_path);
    H5Dclose(prob_ds);
    close_rows(&out->mean);
    for (int v = 0; v < tta->count; v++)
        close_rows(&out->per[v]);
    if (out->f16 >= 0)
        H5Tclose(out->f16);
    free(out->half_rows);
}

/*
 * What one slice sends to rank 0: its mean embedding, with --per-variant each variant's
 * embedding and outputs, and its mean outputs (floats, in that order).
 */
typedef struct {
    size_t dim;
    int variants; /* 0 without --per-variant */
    size_t floats;
} slice_row_t;

static slice_row_t slice_row_layout(size_t dim, const tta_set_t *tta, int per_variant)
{
    slice_row_t r = {dim, per_variant ? tta->count : 0, 0};
    r.floats = dim + (size_t)r.variants * (dim + N_SUBTYPES) + N_SUBTYPES;
    return r;
}

/* Embed m images through each variant into m rows of packed (layout above). */
static void embed_batch(embedder_t *e, const float *images, int m, const tta_set_t *tta,
                        const slice_row_t *layout, float *packed)
{
    size_t dim = layout->dim, stride = layout->floats;
    memset(packed, 0, (size_t)m * stride * sizeof *packed);
    for (int v = 0; v < tta->count; v++) {
        embed_variant(e, images, m, tta->list[v]);
        for (int i = 0; i < m; i++) {
            float *row = packed + (size_t)i * stride;
            const float *embed = e->host_embed + (size_t)i * dim;
            const float *prob = e->host_logits + (size_t)i * N_SUBTYPES;
            float *mean_prob = row + stride - N_SUBTYPES;
            for (size_t k = 0; k < dim; k++)
                row[k] += embed[k];
            for (int k = 0; k < N_SUBTYPES; k++)
                mean_prob[k] += prob[k];
            if (!layout->variants)
                continue;
            float *own = row + dim + (size_t)v * (dim + N_SUBTYPES);
            memcpy(own, embed, dim * sizeof *own);
            memcpy(own + dim, prob, N_SUBTYPES * sizeof *own);
        }
    }
    for (int i = 0; i < m; i++) {
        float *row = packed + (size_t)i * stride;
        for (size_t k = 0; k < dim; k++)
            row[k] /= (float)tta->count;
        for (int k = 0; k < N_SUBTYPES; k++)
            row[stride - N_SUBTYPES + (size_t)k] /= (float)tta->count;
    }
}

/* Rows [first, first + m) of the output from m packed rows; their mean outputs into prob. */
static void write_packed(output_t *out, const slice_row_t *layout, size_t first, size_t m,
                         const float *packed, float *prob, float *column)
{
    size_t dim = layout->dim, stride = layout->floats;
    for (size_t i = 0; i < m; i++)
        memcpy(prob + (first + i) * N_SUBTYPES, packed + i * stride + stride - N_SUBTYPES,
               N_SUBTYPES * sizeof *prob);
    /* column: m rows of one part of the packed rows, contiguous as the datasets want. */
    for (int v = -1; v < layout->variants; v++) {
        size_t at = v < 0 ? 0 : dim + (size_t)v * (dim + N_SUBTYPES);
        for (size_t i = 0; i < m; i++)
            memcpy(column + i * dim, packed + i * stride + at, dim * sizeof *column);
        row_datasets_t *target = v < 0 ? &out->mean : &out->per[v];
        write_embedding(target->embedding, out->f16, first, m, dim, column, out->half_rows);
        if (v < 0)
            continue;
        for (size_t i = 0; i < m; i++)
            memcpy(column + i * N_SUBTYPES, packed + i * stride + at + dim,
                   N_SUBTYPES * sizeof *column);
        write_rows(target->prob, H5T_NATIVE_FLOAT, first, m, N_SUBTYPES, column);
    }
}

/*
 * Every slice through each variant, the work shared over the ranks in whole batches (the
 * batches one process forms; dist_share): in round k every rank embeds the k-th batch of its
 * share, and rank 0 gathers them and writes their rows in place (out and prob: rank 0 only,
 * NULL elsewhere). The loader of each rank holds only its share. Logs the rate and the wait.
 */
static void embed_all(embedder_t *e, loader_t *loader, size_t n, const tta_set_t *tta,
                      int per_variant, size_t dim, output_t *out, float *prob,
                      char *const *ids, const char *ckpt_path)
{
    size_t batch = (size_t)e->batch;
    slice_row_t layout = slice_row_layout(dim, tta, per_variant);
    int ranks = dist_size();
    dist_range_t own = dist_share(n, batch);
    size_t mine = own.end - own.begin, rounds = dist_share_of(0, ranks, n, batch).end;
    rounds = (rounds + batch - 1) / batch; /* rank 0 has the most batches */
    size_t *indices = xmalloc((mine ? mine : 1) * sizeof *indices);
    for (size_t i = 0; i < mine; i++)
        indices[i] = i;
    float *packed = xmalloc(batch * layout.floats * sizeof *packed);
    size_t *counts = xmalloc((size_t)ranks * sizeof *counts);
    float *gathered = NULL, *column = NULL;
    if (out) {
        gathered = xmalloc((size_t)ranks * batch * layout.floats * sizeof *gathered);
        column = xmalloc(batch * (dim > N_SUBTYPES ? dim : N_SUBTYPES) * sizeof *column);
    }
    double start = time_now(), waited_total = 0;
    progress_t *progress = out ? progress_begin("embdump", (int64_t)n) : NULL;

    /* The loader prepares batch k + 1 while the model runs on batch k. */
    size_t my_batches = (mine + batch - 1) / batch;
    if (my_batches)
        loader_submit(loader, indices, (int)(mine < batch ? mine : batch), 0);
    for (size_t k = 0; k < rounds; k++) {
        int m = 0;
        if (k < my_batches) {
            double waited;
            const float *images = loader_wait(loader, &m, &waited);
            waited_total += waited;
            size_t next = (k + 1) * batch;
            if (next < mine)
                loader_submit(loader, indices + next,
                              (int)(mine - next < batch ? mine - next : batch), 0);
            embed_batch(e, images, m, tta, &layout, packed);
        }

        /* Every rank's k-th batch, in rank order: rank r's starts at its share's k-th. */
        for (int r = 0; r < ranks; r++) {
            dist_range_t share = dist_share_of(r, ranks, n, batch);
            size_t first = share.begin + k * batch;
            counts[r] = first < share.end ? (share.end - first < batch ? share.end - first
                                                                       : batch)
                                          : 0;
        }
        dist_gather_counts(packed, gathered, layout.floats * sizeof *packed, counts);
        if (!out)
            continue;
        const float *block = gathered;
        for (int r = 0; r < ranks; r++) {
            size_t first = dist_share_of(r, ranks, n, batch).begin + k * batch;
            size_t values = counts[r] * layout.floats;
            size_t bad = first_non_finite(block, values);
            if (bad < values)
                die(EXIT_BAD_INPUT, "%s: the model's output for slice %s is not finite (the "
                    "weights overflow it): nothing written", ckpt_path,
                    ids[first + bad / layout.floats]);
            write_packed(out, &layout, first, counts[r], block, prob, column);
            block += counts[r] * layout.floats;
            progress_add(progress, (int64_t)counts[r]);
        }
    }
    if (progress)
        progress_end(progress);

    double seconds = time_now() - start;
    if (n && out)
        log_info("%zu image%s x %d variant%s in %.1f s: %.3g images/s on %d rank%s, rank 0's "
                 "data wait %.1f s (%.0f%%)", n, n == 1 ? "" : "s", tta->count,
                 tta->count == 1 ? "" : "s", seconds, (double)n / seconds, ranks,
                 ranks == 1 ? "" : "s", waited_total, 100.0 * waited_total / seconds);
    free(indices);
    free(packed);
    free(counts);
    free(gathered);
    free(column);
}

/* ---- the program ---- */

int main(int argc, char **argv)
{
    embdump_options_t o = {.split = "all", .tta = "orig,hflip,transpose", .device = "cpu",
                           .precision = "fp32", .threads = 2};
    const opt_t options[] = {
        {'o', "out", OPT_STRING, &o.out, "OUT.h5", "output file (required)", 1, 0, NULL},
        {0, "split", OPT_CHOICE, &o.split, "NAME",
         "which slices; train, val and test need FOLDS.h5", 1, 0, "all|train|val|test"},
        {0, "fold", OPT_STRING, &o.fold_text, "F",
         "held-out fold of train/val (default: the checkpoint's train_fold)", 1, 0, NULL},
        {0, "tta", OPT_STRING, &o.tta, "LIST", "comma list of orig, hflip, transpose", 1, 0,
         NULL},
        {0, "per-variant", OPT_FLAG, &o.per_variant, NULL,
         "also store each variant's embedding and outputs", 1, 0, NULL},
        {0, "fp16", OPT_FLAG, &o.fp16, NULL, "store the embeddings as float16", 1, 0, NULL},
        {0, "batch", OPT_INT, &o.batch, "N", "images per forward (0: sized to the machine)", 0,
         4096, NULL},
        {0, "size", OPT_INT, &o.size, "N", "image side (0: the checkpoint's train_size)", 0,
         2048, NULL},
        {0, "crop", OPT_CHOICE, &o.crop, "MODE",
         "black border crop (default: the checkpoint's train_crop)", 1, 0,
         SLICELIST_CROP_CHOICES},
        {0, "device", OPT_STRING, &o.device, "NAME", "NN backend: cpu, cuda, cuda:N", 1, 0,
         NULL},
        {0, "precision", OPT_CHOICE, &o.precision, "P",
         "convolution arithmetic (bf16, fp16: 16-bit products, fp32 sums; fp16 on cuda only; "
         "see common/nn/resnext.h)",
         1, 0, NN_PRECISION_CHOICES},
        {'j', "threads", OPT_INT, &o.threads, "N", "image loader threads", 1, 256, NULL},
        {0},
    };
    const opt_spec_t spec = {
        .program = "embdump",
        .usage = "[options] -o OUT.h5 CKPT JPEG_DIR [FOLDS.h5]",
        .summary =
            "Embeds slices with a trained classifier (a cnntrain checkpoint): for every slice\n"
            "of the split, the pooled feature (2048 wide for ResNeXt-50/101) and the six\n"
            "sigmoid outputs, each the mean over the test-time augmentation variants\n"
            "(original, horizontal flip, transpose), batch norm with its running statistics.",
        .details =
            "Slices: --split all is every slice of FOLDS.h5, or without it every usable row\n"
            "(status ok or exists) of JPEG_DIR/meta.h5; train is fold >= 0 other than F, val\n"
            "fold F, test fold -1 (unlabelled). Images are JPEG_DIR/<id>.jpg or .ppm,\n"
            "prepared as cnntrain's validation images (crop, pad, resize, normalise); every\n"
            "one is found before the model is loaded and read whole (decoded, on the -j\n"
            "threads) before the first is embedded: a missing or damaged one is exit 3\n"
            "naming it, and nothing is written.\n"
            "Output (data-layout.md): /id (sorted by strcmp, FOLDS.h5 order), /embedding\n"
            "(N x D, float32 or --fp16), /prob (float32 N x 6), root attribute subtypes, so\n"
            "the file is also a predictions file for bagavg; with --per-variant\n"
            "/variants/<name>/embedding and /variants/<name>/prob. Attributes: checkpoint,\n"
            "model, fold, epoch, split, size, crop, tta, embed_dim, storage, precision,\n"
            "folds_file, jpeg_dir.\n"
            "An empty split (e.g. no test slices) writes a file with N = 0 and says so.\n"
            "Written under a temporary name and renamed when complete; temporaries of\n"
            "killed runs in its folder are removed (not those of live processes).\n"
            "Under `mpirun -np N` each rank embeds a contiguous run of the batches one\n"
            "process forms, and rank 0 alone writes: the file equals one process's.",
        .exit_codes =
            "  embdump: 2 also for --device naming a backend this machine or build lacks,\n"
            "           -o naming an input or a folder, a train/val/test split without\n"
            "           FOLDS.h5, a train/val split without a fold (no --fold, no\n"
            "           train_fold) or with one FOLDS.h5 lacks (its folds attribute);\n"
            "           3 for a missing or damaged image, a checkpoint that is not a\n"
            "           six-output ResNeXt, does not load, holds a non-finite weight or\n"
            "           gives a non-finite output, a fold with no slices.\n",
        .options = options,
        .min_positional = 2,
        .max_positional = 3,
    };
    log_init("embdump", LOG_INFO);
    char **pos;
    int n_pos = opt_parse(&spec, argc, argv, &pos);
    dist_init(&argc, &argv);
    const char *ckpt_path = pos[0], *image_dir = pos[1];
    const char *folds_path = n_pos > 2 ? pos[2] : NULL;
    nn_mixed_precision_check(o.precision, o.device, "--precision");
    free(pos); /* the strings belong to argv */
    if (!o.out)
        die(EXIT_USAGE, "-o OUT.h5 is required");
    output_path_check("-o", o.out, "embeddings.h5");
    tta_set_t tta;
    parse_tta(o.tta, &tta);
    int split_all = !strcmp(o.split, "all");
    if (!split_all && !folds_path)
        die(EXIT_USAGE, "--split %s needs FOLDS.h5", o.split);
    char *meta_path = path_join(image_dir, "meta.h5");
    const char *inputs[3] = {ckpt_path, folds_path, meta_path};
    for (int k = 0; k < 3; k++)
        if (inputs[k] && path_same_file(o.out, inputs[k]))
            die(EXIT_USAGE, "-o %s is the input %s", o.out, inputs[k]);

    ckpt_info_t info = {0};
    read_checkpoint_info(ckpt_path, &info);
    int fold = o.fold_text ? parse_fold(o.fold_text) : info.has_fold ? (int)info.fold : -1;
    int size = o.size ? o.size : info.size > 0 ? (int)info.size : IMG_DEFAULT_SIZE;
    const char *crop = o.crop ? o.crop : info.crop ? info.crop : "intended";
    if (slicelist_parse_crop(crop) < 0)
        die(EXIT_BAD_INPUT, "%s: train_crop '%s' is not one of " SLICELIST_CROP_CHOICES,
            ckpt_path, crop);
    int needs_fold = !strcmp(o.split, "train") || !strcmp(o.split, "val");
    if (needs_fold && !o.fold_text && !info.has_fold)
        die(EXIT_USAGE, "--split %s: no --fold, and %s has no train_fold", o.split, ckpt_path);
    if (!strcmp(o.split, "val") && fold < 0)
        die(EXIT_USAGE, "--split val with fold -1 (trained on every fold): no validation "
                        "slices; give --fold");
    /* A fold FOLDS.h5 lacks is a usage error, as in cnntrain and lstmtrain. */
    if (needs_fold && folds_path) {
        char *source = o.fold_text ? xstrdup("--fold")
                                   : xasprintf("%s: train_fold", ckpt_path);
        slicelist_require_fold(folds_path, source, fold);
        free(source);
    }
    /* Validation embeddings of a classifier that trained on them look better than they are
     * (lstmtrain warns the same of its inputs). */
    if (!strcmp(o.split, "val") && info.has_fold && info.fold != fold)
        log_warn("%s: a classifier that held out fold %lld (-1: none), embedding validation "
                 "fold %d: it has trained on these slices", ckpt_path, (long long)info.fold,
                 fold);

    /* The slices, and every image found before anything heavy starts. */
    slicelist_t list = {0};
    if (folds_path)
        slicelist_read_folds(&list, folds_path);
    else
        slicelist_read_meta(&list, meta_path);
    if (needs_fold && fold >= 0 && !fold_present(&list, fold))
        die(EXIT_BAD_INPUT, "%s: fold %d has no slices", folds_path, fold);
    if (!folds_path && !list.count)
        die(EXIT_BAD_INPUT, "%s: no usable rows (status ok or exists)", meta_path);
    size_t *rows = xmalloc((list.count ? list.count : 1) * sizeof *rows);
    size_t n = select_split(&list, o.split, fold, rows);
    char **ids = xmalloc((n ? n : 1) * sizeof *ids);
    char **paths = xmalloc((n ? n : 1) * sizeof *paths);
    for (size_t i = 0; i < n; i++) {
        ids[i] = list.ids[rows[i]];
        paths[i] = slicelist_image_path(image_dir, ids[i]);
    }
    if (!n)
        log_warn("split %s of fold %d has no slices: writing an empty file", o.split, fold);

    int batch = o.batch ? o.batch : default_batch(size);
    embedder_t e;
    embedder_init(&e, &o, ckpt_path, info.meta.model, size, batch);
    size_t dim = (size_t)e.model->embed_dim;
    log_info("%zu slice%s (split %s, fold %d), %s at %d px, crop %s, tta %s, batch %d on %s, "
             "%s", n, n == 1 ? "" : "s", o.split, fold, info.meta.model, size, crop, tta.names,
             batch, e.be->name, o.precision);

    /* Rank 0 alone writes. The output's folder is made only now that every input has been
     * checked; leftovers of killed runs there go, those of live ones stay (tmp_sweep). */
    int writer = dist_is_root();
    if (writer) {
        const char *slash = strrchr(o.out, '/');
        char *out_dir = xstrdup(!slash ? "." : slash == o.out ? "/" : o.out);
        if (slash && slash != o.out)
            out_dir[slash - o.out] = 0;
        mkdir_p(out_dir);
        int swept = tmp_sweep(out_dir);
        if (swept)
            log_info("removed %d unfinished file%s of killed runs in %s", swept,
                     swept == 1 ? "" : "s", out_dir);
        free(out_dir);
    }

    float *prob = writer ? xcalloc((n ? n : 1) * N_SUBTYPES, sizeof *prob) : NULL;
    output_t out;
    if (writer)
        output_open(&out, o.out, (const char *const *)ids, prob, n, dim, &tta, &o, batch);
    dist_range_t own = dist_share(n, (size_t)batch);
    loader_config_t lc = {.paths = (const char *const *)paths + own.begin,
                          .count = own.end - own.begin, .size = size,
                          .crop = (img_crop_t)slicelist_parse_crop(crop), .augment = 0,
                          .threads = o.threads, .max_batch = batch};
    loader_t *loader = lc.count ? loader_create(&lc) : NULL;
    embed_all(&e, loader, n, &tta, o.per_variant, dim, writer ? &out : NULL, prob, ids,
              ckpt_path);
    loader_free(loader);
    embedder_free(&e);
    if (writer) {
        output_close_datasets(&out, prob, n, &tta);
        hid_t root = out.h5.file;
        h5_attr_str(root, "checkpoint", ckpt_path);
        h5_attr_str(root, "model", info.meta.model);
        h5_attr_i64(root, "fold", fold);
        h5_attr_i64(root, "epoch", info.meta.epoch);
        h5_attr_str(root, "split", o.split);
        h5_attr_i64(root, "size", size);
        h5_attr_str(root, "crop", crop);
        h5_attr_str(root, "tta", tta.names);
        h5_attr_i64(root, "embed_dim", (int64_t)dim);
        h5_attr_str(root, "storage", o.fp16 ? "float16" : "float32");
        h5_attr_str(root, "precision", o.precision);
        h5_attr_str(root, "folds_file", folds_path ? folds_path : "");
        h5_attr_str(root, "jpeg_dir", image_dir);
        h5out_commit(&out.h5);
        log_info("wrote %s: %zu slice%s x %zu", o.out, n, n == 1 ? "" : "s", dim);
    }

    free(prob);
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
    free(ids);
    free(rows);
    slicelist_free(&list);
    free(info.crop);
    free(meta_path);
    dist_finalize();
    return EXIT_OK;
}
