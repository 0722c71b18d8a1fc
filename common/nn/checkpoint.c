/* HDF5 checkpoints of a paramset (see checkpoint.h and notes/layout-checkpoint.md). */
#include "nn/checkpoint.h"

#include "check.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_GROUP "state_dict"
#define ADAM_GROUP "adam"
#define ARCH_GROUP "architecture"
#define RNG_DATASET "rng_state"
/* Names listed per kind of mismatch before "... and N more". */
#define LIST_MAX 30

/* ---- small helpers ------------------------------------------------------------------------- */

/* A growing message. */
typedef struct {
    char *s;
    size_t len, cap;
} text_t;

static void text_add(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_add(text_t *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (t->len + (size_t)need + 1 > t->cap) {
        t->cap = 2 * (t->len + (size_t)need + 1) + 256;
        t->s = xrealloc(t->s, t->cap);
    }
    va_start(ap, fmt);
    vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)need;
}

static void text_shape(text_t *t, int rank, const int64_t *dims)
{
    text_add(t, "[");
    for (int i = 0; i < rank; i++)
        text_add(t, "%s%lld", i ? ", " : "", (long long)dims[i]);
    text_add(t, "]");
}

/* Our messages replace HDF5's own error stack printing. */
static void h5_silence(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

hid_t nn_h5_bf16_type(void)
{
    return h5_float16_type(8, 7, 127);
}

static int is_bf16_type(hid_t type)
{
    size_t spos, epos, esize, mpos, msize;
    if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 2 ||
        H5Tget_order(type) != H5T_ORDER_LE)
        return 0;
    if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0)
        return 0;
    return spos == 15 && epos == 7 && esize == 8 && mpos == 0 && msize == 7 &&
           H5Tget_ebias(type) == 127;
}

/* ---- metadata ------------------------------------------------------------------------------ */

void nn_ckpt_meta_init(nn_ckpt_meta_t *meta, const char *model)
{
    memset(meta, 0, sizeof(*meta));
    snprintf(meta->model, sizeof(meta->model), "%s", model ? model : "");
    snprintf(meta->precision, sizeof(meta->precision), "fp32");
    meta->adam = (nn_adam_t){1e-3, 0.9, 0.999, 1e-8, 0.0};
}

void nn_ckpt_meta_set_arch(nn_ckpt_meta_t *meta, const char *name, int count,
                           const int64_t *values)
{
    if (strlen(name) >= sizeof(meta->arch[0].name) || count < 1 || count > NN_CKPT_ARCH_VALUES)
        die(EXIT_INTERNAL, "architecture parameter %s: name too long or %d values", name,
            count);
    nn_ckpt_arch_t *a = (nn_ckpt_arch_t *)nn_ckpt_meta_get_arch(meta, name);
    if (!a) {
        if (meta->n_arch == NN_CKPT_ARCH_MAX)
            die(EXIT_INTERNAL, "more than %d architecture parameters", NN_CKPT_ARCH_MAX);
        a = &meta->arch[meta->n_arch++];
    }
    snprintf(a->name, sizeof(a->name), "%s", name);
    a->count = count;
    memcpy(a->values, values, (size_t)count * sizeof(int64_t));
}

const nn_ckpt_arch_t *nn_ckpt_meta_get_arch(const nn_ckpt_meta_t *meta, const char *name)
{
    for (int i = 0; i < meta->n_arch; i++)
        if (strcmp(meta->arch[i].name, name) == 0)
            return &meta->arch[i];
    return NULL;
}

void nn_ckpt_meta_resnext(nn_ckpt_meta_t *meta, const resnext_t *model)
{
    const resnext_config_t *cfg = &model->config;
    snprintf(meta->model, sizeof(meta->model), "%s", cfg->name);
    int64_t layers[4];
    for (int i = 0; i < 4; i++)
        layers[i] = cfg->layers[i];
    int64_t groups = cfg->groups, width = cfg->width_per_group, base = cfg->base;
    int64_t outputs = model->num_outputs, embed = model->embed_dim;
    nn_ckpt_meta_set_arch(meta, "layers", 4, layers);
    nn_ckpt_meta_set_arch(meta, "groups", 1, &groups);
    nn_ckpt_meta_set_arch(meta, "width_per_group", 1, &width);
    nn_ckpt_meta_set_arch(meta, "base", 1, &base);
    nn_ckpt_meta_set_arch(meta, "num_outputs", 1, &outputs);
    nn_ckpt_meta_set_arch(meta, "embed_dim", 1, &embed);
}

/* ---- saving -------------------------------------------------------------------------------- */

static void write_failed(hid_t loc, const char *what)
{
    die(EXIT_IO, "%s: cannot write '%s'", h5_filename(loc), what);
}

/* An int64 attribute: a scalar for one value, else a vector. */
static void attr_i64_vector(hid_t obj, const char *name, const int64_t *values, int count)
{
    hsize_t n = (hsize_t)count;
    hid_t space = count == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, NULL);
    hid_t attr = H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_INT64, values) < 0)
        write_failed(obj, name);
    H5Aclose(attr);
    H5Sclose(space);
}

/*
 * One tensor. Non-scalar tensors are chunked (about 1 MiB along the first axis) with a
 * Fletcher-32 checksum per chunk, so that a damaged file is refused rather than loaded.
 */
static void write_dataset(hid_t group, const char *name, hid_t file_type, hid_t mem_type,
                          const void *data, int rank, const int64_t *dims)
{
    hsize_t hdims[NN_RANK_MAX] = {0}, chunk[NN_RANK_MAX] = {0};
    hsize_t total = 1;
    for (int i = 0; i < rank; i++) {
        hdims[i] = (hsize_t)dims[i];
        total *= hdims[i];
    }
    hid_t space = rank ? H5Screate_simple(rank, hdims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (rank > 0 && total > 0) {
        hsize_t row_bytes = total / hdims[0] * H5Tget_size(file_type);
        hsize_t rows = ((hsize_t)1 << 20) / row_bytes;
        chunk[0] = rows < 1 ? 1 : rows > hdims[0] ? hdims[0] : rows;
        for (int i = 1; i < rank; i++)
            chunk[i] = hdims[i];
        H5Pset_chunk(dcpl, rank, chunk);
        H5Pset_fletcher32(dcpl);
    }

    hid_t ds = H5Dcreate2(group, name, file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0 || (total > 0 && H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0))
        write_failed(group, name);
    H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(space);
}

typedef struct {
    hid_t bf16_type; /* < 0: store float32 */
    float *host;     /* staging, the largest tensor */
    uint16_t *half;
} writer_t;

/* Entry i of a slab, in plain order whatever order the backend keeps it in. */
static void write_floats(writer_t *w, hid_t group, nn_paramset_t *ps, const float *slab,
                         size_t i)
{
    const nn_entry_t *e = &ps->entries[i];
    nn_params_read_plain(ps, slab, i, w->host);
    if (w->bf16_type < 0) {
        write_dataset(group, e->name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, w->host, e->rank,
                      e->dims);
        return;
    }
    for (size_t i = 0; i < e->count; i++)
        w->half[i] = nn_bf16_from_f32(w->host[i]);
    write_dataset(group, e->name, w->bf16_type, w->bf16_type, w->half, e->rank, e->dims);
}

static void write_meta(hid_t file, const nn_ckpt_meta_t *meta, int bf16)
{
    h5_attr_str(file, "format", NN_CKPT_FORMAT);
    h5_attr_i64(file, "format_version", NN_CKPT_FORMAT_VERSION);
    h5_attr_str(file, "model", meta->model);
    h5_attr_str(file, "precision", meta->precision[0] ? meta->precision : "fp32");
    h5_attr_str(file, "storage", bf16 ? "bf16" : "fp32");
    h5_attr_i64(file, "step", meta->step);
    h5_attr_i64(file, "epoch", meta->epoch);
    h5_attr_provenance(file);

    hid_t arch = h5_create_group_ordered(file, ARCH_GROUP);
    for (int i = 0; i < meta->n_arch; i++)
        attr_i64_vector(arch, meta->arch[i].name, meta->arch[i].values, meta->arch[i].count);
    H5Gclose(arch);

    hsize_t n = 4;
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t ds = H5Dcreate2(file, RNG_DATASET, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT,
                          H5P_DEFAULT);
    if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                           meta->rng.s) < 0)
        write_failed(file, RNG_DATASET);
    h5_attr_str(ds, "algorithm", NN_RNG_ALGORITHM);
    H5Dclose(ds);
    H5Sclose(space);
}

void nn_ckpt_save(const char *path, nn_paramset_t *ps, const nn_ckpt_meta_t *meta,
                  unsigned flags)
{
    if (!ps->params)
        die(EXIT_INTERNAL, "saving %s: the parameters are not allocated", path);
    h5_silence();
    h5out_t out;
    h5out_create(&out, path);
    /* Objects of the 1.8 format: checksummed headers and creation-order links, readable by
     * any HDF5 from 1.8 on. */
    if (H5Fset_libver_bounds(out.file, H5F_LIBVER_V18, H5F_LIBVER_V18) < 0)
        die(EXIT_IO, "%s: cannot set the HDF5 format version", path);

    int bf16 = (flags & NN_CKPT_BF16) != 0;
    write_meta(out.file, meta, bf16);

    size_t largest = 1;
    for (size_t i = 0; i < ps->n_entries; i++)
        if (ps->entries[i].count > largest)
            largest = ps->entries[i].count;
    writer_t w = {bf16 ? nn_h5_bf16_type() : -1, xmalloc(largest * sizeof(float)),
                  bf16 ? xmalloc(largest * sizeof(uint16_t)) : NULL};

    hid_t state = h5_create_group_ordered(out.file, STATE_GROUP);
    for (size_t i = 0; i < ps->n_entries; i++) {
        const nn_entry_t *e = &ps->entries[i];
        if (e->kind == NN_ENTRY_COUNTER)
            write_dataset(state, e->name, H5T_STD_I64LE, H5T_NATIVE_INT64,
                          ps->counters + e->offset, e->rank, e->dims);
        else
            write_floats(&w, state, ps, e->kind == NN_ENTRY_PARAM ? ps->params : ps->buffers,
                         i);
    }
    H5Gclose(state);

    if (ps->adam_m && ps->adam_v && !(flags & NN_CKPT_NO_ADAM)) {
        hid_t adam = h5_create_group_ordered(out.file, ADAM_GROUP);
        h5_attr_f64(adam, "lr", meta->adam.lr);
        h5_attr_f64(adam, "beta1", meta->adam.beta1);
        h5_attr_f64(adam, "beta2", meta->adam.beta2);
        h5_attr_f64(adam, "eps", meta->adam.eps);
        h5_attr_f64(adam, "weight_decay", meta->adam.weight_decay);
        if (meta->loss_scale > 0) {
            h5_attr_f64(adam, "loss_scale", meta->loss_scale);
            h5_attr_i64(adam, "loss_scale_clean_steps", meta->loss_scale_clean_steps);
            h5_attr_i64(adam, "skipped_steps", meta->skipped_steps);
        }
        const char *names[2] = {"m", "v"};
        float *slabs[2] = {ps->adam_m, ps->adam_v};
        for (int k = 0; k < 2; k++) {
            hid_t group = h5_create_group_ordered(adam, names[k]);
            for (size_t i = 0; i < ps->n_entries; i++) {
                const nn_entry_t *e = &ps->entries[i];
                if (e->kind == NN_ENTRY_PARAM)
                    write_floats(&w, group, ps, slabs[k], i);
            }
            H5Gclose(group);
        }
        H5Gclose(adam);
    }

    if (w.bf16_type >= 0)
        H5Tclose(w.bf16_type);
    free(w.host);
    free(w.half);
    h5out_commit(&out);
}

/* ---- reading ------------------------------------------------------------------------------- */

static int fail(char **message, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(char **message, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    *message = xmalloc((size_t)need + 1);
    va_start(ap, fmt);
    vsnprintf(*message, (size_t)need + 1, fmt, ap);
    va_end(ap);
    return -1;
}

static int open_checkpoint(const char *path, hid_t *file, char **message)
{
    h5_silence();
    *file = -1;
    if (!path_is_file(path))
        return fail(message, "%s: no such file", path);
    htri_t is_hdf5 = H5Fis_hdf5(path);
    if (is_hdf5 <= 0)
        return fail(message, "%s: not an HDF5 file", path);
    *file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (*file < 0)
        return fail(message, "%s: cannot open the checkpoint (truncated or damaged HDF5 file)",
                    path);
    return 0;
}

static int read_string_attr(hid_t obj, const char *name, char *out, size_t size)
{
    char *value = h5_attr_read_str(obj, name);
    if (!value)
        return 0;
    snprintf(out, size, "%s", value);
    free(value);
    return 1;
}

/* An int64 attribute of 1 to NN_CKPT_ARCH_VALUES values, for H5Aiterate2. */
static herr_t read_arch_attr(hid_t obj, const char *name, const H5A_info_t *info, void *data)
{
    (void)info;
    nn_ckpt_meta_t *meta = data;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t space = H5Aget_space(attr);
    hid_t type = H5Aget_type(attr);
    hssize_t count = H5Sget_simple_extent_npoints(space);
    int64_t values[NN_CKPT_ARCH_VALUES];
    int ok = attr >= 0 && H5Tget_class(type) == H5T_INTEGER && count >= 1 &&
             count <= NN_CKPT_ARCH_VALUES && strlen(name) < sizeof(meta->arch[0].name) &&
             meta->n_arch < NN_CKPT_ARCH_MAX &&
             H5Aread(attr, H5T_NATIVE_INT64, values) >= 0;
    if (ok)
        nn_ckpt_meta_set_arch(meta, name, (int)count, values);
    H5Tclose(type);
    H5Sclose(space);
    H5Aclose(attr);
    return 0; /* an attribute of another shape is not ours: skip it */
}

static int read_meta(hid_t file, const char *path, nn_ckpt_meta_t *meta, char **message)
{
    nn_ckpt_meta_init(meta, NULL);
    char format[64] = "";
    if (!read_string_attr(file, "format", format, sizeof(format)) ||
        strcmp(format, NN_CKPT_FORMAT) != 0)
        return fail(message, "%s: not a model checkpoint (root attribute 'format' is not '%s')",
                    path, NN_CKPT_FORMAT);
    int64_t version = 0;
    if (!h5_attr_read_i64(file, "format_version", &version) || version < 1 ||
        version > NN_CKPT_FORMAT_VERSION)
        return fail(message, "%s: checkpoint format_version %lld, this program reads 1 to %d",
                    path, (long long)version, NN_CKPT_FORMAT_VERSION);
    if (!read_string_attr(file, "model", meta->model, sizeof(meta->model)) || !meta->model[0])
        return fail(message, "%s: checkpoint without a model name (root attribute 'model')",
                    path);
    read_string_attr(file, "precision", meta->precision, sizeof(meta->precision));
    h5_attr_read_i64(file, "step", &meta->step);
    h5_attr_read_i64(file, "epoch", &meta->epoch);

    if (H5Lexists(file, ARCH_GROUP, H5P_DEFAULT) > 0) {
        hid_t arch = H5Gopen2(file, ARCH_GROUP, H5P_DEFAULT);
        hsize_t index = 0;
        if (arch < 0 || H5Aiterate2(arch, H5_INDEX_NAME, H5_ITER_INC, &index, read_arch_attr,
                                    meta) < 0) {
            if (arch >= 0)
                H5Gclose(arch);
            return fail(message, "%s: cannot read group '%s' (damaged file?)", path,
                        ARCH_GROUP);
        }
        H5Gclose(arch);
    }

    if (H5Lexists(file, RNG_DATASET, H5P_DEFAULT) > 0) {
        hid_t ds = H5Dopen2(file, RNG_DATASET, H5P_DEFAULT);
        hid_t space = ds >= 0 ? H5Dget_space(ds) : -1;
        int ok = space >= 0 && H5Sget_simple_extent_npoints(space) == 4 &&
                 H5Dread(ds, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                         meta->rng.s) >= 0;
        if (space >= 0)
            H5Sclose(space);
        if (ds >= 0)
            H5Dclose(ds);
        if (!ok)
            return fail(message, "%s: '%s' is not 4 readable 64-bit words", path, RNG_DATASET);
        meta->has_rng = 1;
    }

    if (H5Lexists(file, ADAM_GROUP, H5P_DEFAULT) > 0) {
        hid_t adam = H5Gopen2(file, ADAM_GROUP, H5P_DEFAULT);
        if (adam >= 0) {
            meta->has_adam = 1;
            h5_attr_read_f64(adam, "lr", &meta->adam.lr);
            h5_attr_read_f64(adam, "beta1", &meta->adam.beta1);
            h5_attr_read_f64(adam, "beta2", &meta->adam.beta2);
            h5_attr_read_f64(adam, "eps", &meta->adam.eps);
            h5_attr_read_f64(adam, "weight_decay", &meta->adam.weight_decay);
            meta->has_loss_scale = h5_attr_read_f64(adam, "loss_scale", &meta->loss_scale) &&
                h5_attr_read_i64(adam, "loss_scale_clean_steps",
                                 &meta->loss_scale_clean_steps) &&
                h5_attr_read_i64(adam, "skipped_steps", &meta->skipped_steps);
            H5Gclose(adam);
        }
    }
    return 0;
}

int nn_ckpt_read_meta(const char *path, nn_ckpt_meta_t *meta, char **message)
{
    hid_t file;
    *message = NULL;
    if (open_checkpoint(path, &file, message) < 0)
        return -1;
    int rc = read_meta(file, path, meta, message);
    H5Fclose(file);
    return rc;
}

/* ---- loading ------------------------------------------------------------------------------- */

typedef enum { MATCH, MISSING, SIZE_MISMATCH, TYPE_MISMATCH } fit_t;

/* One group of tensors to load: state_dict, adam/m or adam/v. */
typedef struct {
    const char *group_path; /* in the file */
    const char *prefix;     /* before names in messages: "" or "adam/m/" */
    int params_only;        /* moments exist for parameters only */
    float *slab;            /* moments; NULL: the entry's own value */
    hid_t group;
    fit_t *fit; /* per entry */
} part_t;

/* The mismatches found, as lists of lines. */
typedef struct {
    text_t missing, unexpected, sizes;
    size_t n_missing, n_unexpected, n_sizes;
} findings_t;

static void list_name(text_t *list, size_t *n, const char *prefix, const char *name)
{
    if (*n < LIST_MAX)
        text_add(list, "%s\"%s%s\"", *n ? ", " : "", prefix, name);
    (*n)++;
}

/* Class, rank and dims of a dataset; class H5T_NO_CLASS if it is not a readable dataset. */
static H5T_class_t dataset_shape(hid_t group, const char *name, int *rank, int64_t *dims)
{
    H5T_class_t cls = H5T_NO_CLASS;
    *rank = 0;
    hid_t ds = H5Dopen2(group, name, H5P_DEFAULT);
    if (ds < 0)
        return cls;
    hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
    hsize_t hdims[H5S_MAX_RANK];
    int n = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (type >= 0 && n >= 0 && H5Sget_simple_extent_dims(space, hdims, NULL) >= 0) {
        cls = H5Tget_class(type);
        *rank = n;
        for (int d = 0; d < n; d++)
            dims[d] = (int64_t)hdims[d];
    }
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    H5Dclose(ds);
    return cls;
}

static void check_entry(part_t *part, const nn_paramset_t *ps, size_t i, findings_t *found)
{
    const nn_entry_t *e = &ps->entries[i];
    if (H5Lexists(part->group, e->name, H5P_DEFAULT) <= 0) {
        part->fit[i] = MISSING;
        list_name(&found->missing, &found->n_missing, part->prefix, e->name);
        return;
    }
    int rank;
    int64_t dims[H5S_MAX_RANK];
    H5T_class_t cls = dataset_shape(part->group, e->name, &rank, dims);
    H5T_class_t want = e->kind == NN_ENTRY_COUNTER ? H5T_INTEGER : H5T_FLOAT;
    int same_shape = rank == e->rank;
    for (int d = 0; same_shape && d < rank; d++)
        same_shape = dims[d] == e->dims[d];
    part->fit[i] = cls != want ? TYPE_MISMATCH : same_shape ? MATCH : SIZE_MISMATCH;
    if (part->fit[i] == MATCH)
        return;

    if (found->n_sizes++ >= LIST_MAX)
        return;
    text_t *t = &found->sizes;
    if (part->fit[i] == SIZE_MISMATCH) {
        text_add(t, "  size mismatch for %s%s: shape ", part->prefix, e->name);
        text_shape(t, rank, dims);
        text_add(t, " in the checkpoint, ");
        text_shape(t, e->rank, e->dims);
        text_add(t, " in the model\n");
    } else {
        const char *have = cls == H5T_INTEGER ? "integer"
                           : cls == H5T_FLOAT ? "float"
                                              : "not a numeric dataset";
        text_add(t, "  type mismatch for %s%s: %s in the checkpoint, %s in the model\n",
                 part->prefix, e->name, have, want == H5T_INTEGER ? "int64" : "float");
    }
}

typedef struct {
    const nn_paramset_t *ps;
    const part_t *part;
    findings_t *found;
} unexpected_ctx_t;

static herr_t note_unexpected(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)group;
    (void)info;
    unexpected_ctx_t *ctx = data;
    long i = nn_params_find(ctx->ps, name);
    int known = i >= 0 && (!ctx->part->params_only ||
                           ctx->ps->entries[i].kind == NN_ENTRY_PARAM);
    if (!known)
        list_name(&ctx->found->unexpected, &ctx->found->n_unexpected, ctx->part->prefix, name);
    return 0;
}

/* Check one part against the paramset; -1 if its group cannot be read. */
static int check_part(part_t *part, const nn_paramset_t *ps, findings_t *found)
{
    for (size_t i = 0; i < ps->n_entries; i++) {
        if (part->params_only && ps->entries[i].kind != NN_ENTRY_PARAM)
            continue;
        check_entry(part, ps, i, found);
    }
    unexpected_ctx_t ctx = {ps, part, found};
    hsize_t index = 0;
    if (H5Literate(part->group, H5_INDEX_NAME, H5_ITER_INC, &index, note_unexpected, &ctx) < 0)
        return -1;
    return 0;
}

static void finish_list(text_t *out, const char *what, const text_t *list, size_t n)
{
    if (!n)
        return;
    text_add(out, "  %s (%zu): %s", what, n, list->s);
    if (n > LIST_MAX)
        text_add(out, ", ... and %zu more", n - LIST_MAX);
    text_add(out, "\n");
}

/* Read one matched tensor into the paramset; -1 on a read error. */
static int load_entry(part_t *part, nn_paramset_t *ps, size_t i, float *host, uint16_t *half)
{
    const nn_entry_t *e = &ps->entries[i];
    hid_t ds = H5Dopen2(part->group, e->name, H5P_DEFAULT);
    if (ds < 0)
        return -1;
    int ok;
    if (e->kind == NN_ENTRY_COUNTER) {
        ok = H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                     ps->counters + e->offset) >= 0;
    } else {
        hid_t type = H5Dget_type(ds);
        if (is_bf16_type(type)) {
            /* Widen ourselves: exact, and much faster than HDF5's soft conversion. */
            ok = e->count == 0 ||
                 H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, half) >= 0;
            for (size_t k = 0; ok && k < e->count; k++)
                host[k] = nn_bf16_to_f32(half[k]);
        } else {
            ok = e->count == 0 ||
                 H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, host) >= 0;
        }
        H5Tclose(type);
        if (ok) {
            float *slab = part->slab                       ? part->slab
                          : e->kind == NN_ENTRY_PARAM ? ps->params
                                                      : ps->buffers;
            nn_params_write_plain(ps, slab, i, host);
        }
    }
    H5Dclose(ds);
    return ok ? 0 : -1;
}

static void free_parts(part_t *parts, int n)
{
    for (int k = 0; k < n; k++) {
        if (parts[k].group >= 0)
            H5Gclose(parts[k].group);
        free(parts[k].fit);
    }
}

int nn_ckpt_load(const char *path, nn_paramset_t *ps, const char *model, unsigned flags,
                 nn_ckpt_meta_t *meta, nn_ckpt_report_t *report)
{
    memset(report, 0, sizeof(*report));
    if (!ps->params)
        die(EXIT_INTERNAL, "loading %s: the parameters are not allocated", path);
    int strict = !(flags & NN_CKPT_NONSTRICT);
    int want_adam = (flags & NN_CKPT_ADAM) != 0;
    nn_ckpt_meta_t local_meta;
    if (!meta)
        meta = &local_meta;

    hid_t file;
    if (open_checkpoint(path, &file, &report->message) < 0)
        return -1;
    if (read_meta(file, path, meta, &report->message) < 0) {
        H5Fclose(file);
        return -1;
    }
    if (model && strcmp(model, meta->model) != 0) {
        H5Fclose(file);
        return fail(&report->message, "%s: checkpoint is for model '%s', not '%s'", path,
                    meta->model, model);
    }
    if (H5Lexists(file, STATE_GROUP, H5P_DEFAULT) <= 0) {
        H5Fclose(file);
        return fail(&report->message, "%s: checkpoint without a '%s' group", path,
                    STATE_GROUP);
    }

    part_t parts[3];
    int n_parts = want_adam && meta->has_adam ? 3 : 1;
    const char *paths[3] = {STATE_GROUP, ADAM_GROUP "/m", ADAM_GROUP "/v"};
    const char *prefixes[3] = {"", ADAM_GROUP "/m/", ADAM_GROUP "/v/"};
    if (want_adam)
        nn_params_alloc_adam(ps);
    float *slabs[3] = {NULL, ps->adam_m, ps->adam_v};
    size_t n = ps->n_entries ? ps->n_entries : 1;
    for (int k = 0; k < n_parts; k++)
        parts[k] = (part_t){paths[k], prefixes[k], k > 0, slabs[k], -1, xcalloc(n, sizeof(fit_t))};

    /* First check everything, so that a mismatch in strict mode loads nothing. */
    findings_t found = {0};
    text_t listing = {0};
    int rc = 0;
    for (int k = 0; k < n_parts && rc == 0; k++) {
        parts[k].group = H5Gopen2(file, parts[k].group_path, H5P_DEFAULT);
        if (parts[k].group < 0 || check_part(&parts[k], ps, &found) < 0)
            rc = fail(&report->message, "%s: cannot read group '%s' (damaged file?)", path,
                      parts[k].group_path);
    }
    if (rc == 0) {
        if (want_adam && !meta->has_adam)
            text_add(&listing, "  no Adam moments (group '%s') in the checkpoint\n",
                     ADAM_GROUP);
        finish_list(&listing, "missing keys", &found.missing, found.n_missing);
        finish_list(&listing, "unexpected keys", &found.unexpected, found.n_unexpected);
        if (found.n_sizes)
            text_add(&listing, "%s", found.sizes.s);
        if (found.n_sizes > LIST_MAX)
            text_add(&listing, "  ... and %zu more size or type mismatches\n",
                     found.n_sizes - LIST_MAX);
        report->missing = found.n_missing;
        report->unexpected = found.n_unexpected;
        report->mismatched = found.n_sizes;
        if (strict && listing.len)
            rc = fail(&report->message, "%s: checkpoint does not match model '%s':\n%s", path,
                      meta->model, listing.s);
    }

    /* Then read what matched. */
    if (rc == 0) {
        size_t largest = 1;
        for (size_t i = 0; i < ps->n_entries; i++)
            if (ps->entries[i].count > largest)
                largest = ps->entries[i].count;
        float *host = xmalloc(largest * sizeof(float));
        uint16_t *half = xmalloc(largest * sizeof(uint16_t));
        size_t total = 0;
        for (int k = 0; k < n_parts && rc == 0; k++) {
            for (size_t i = 0; i < ps->n_entries && rc == 0; i++) {
                if (parts[k].params_only && ps->entries[i].kind != NN_ENTRY_PARAM)
                    continue;
                total++;
                if (parts[k].fit[i] != MATCH)
                    continue;
                if (load_entry(&parts[k], ps, i, host, half) < 0)
                    rc = fail(&report->message,
                              "%s: cannot read '%s/%s' (damaged file: checksum or read error)",
                              path, parts[k].group_path, ps->entries[i].name);
                else
                    report->loaded++;
            }
        }
        free(host);
        free(half);
        if (rc == 0 && listing.len) {
            text_t note = {0};
            text_add(&note, "%s: loaded %zu of %zu tensors into model '%s'; "
                     "left as they were:\n%s", path, report->loaded, total, meta->model,
                     listing.s);
            report->message = note.s;
        }
    }

    /* The lists end in a newline; the message does not. */
    size_t len = report->message ? strlen(report->message) : 0;
    if (len && report->message[len - 1] == '\n')
        report->message[len - 1] = 0;

    free_parts(parts, n_parts);
    free(found.missing.s);
    free(found.unexpected.s);
    free(found.sizes.s);
    free(listing.s);
    H5Fclose(file);
    return rc;
}

void nn_ckpt_report_free(nn_ckpt_report_t *report)
{
    free(report->message);
    report->message = NULL;
}

void nn_ckpt_load_or_die(const char *path, nn_paramset_t *ps, const char *model, unsigned flags,
                         nn_ckpt_meta_t *meta)
{
    nn_ckpt_report_t report;
    if (nn_ckpt_load(path, ps, model, flags, meta, &report) < 0) {
        /* Not die(): its message buffer would cut a long list of mismatches. */
        log_error("%s", report.message);
        exit(EXIT_BAD_INPUT);
    }
    if (report.message)
        log_warn("%s", report.message);
    nn_ckpt_report_free(&report);
}

int nn_ckpt_numbered_name(const char *name, const char *prefix)
{
    size_t prefix_len = strlen(prefix), len = strlen(name);
    if (len <= prefix_len + 3 || strncmp(name, prefix, prefix_len) != 0 ||
        strcmp(name + len - 3, ".h5") != 0)
        return 0;
    size_t digits = len - prefix_len - 3;
    return strspn(name + prefix_len, "0123456789") == digits;
}
