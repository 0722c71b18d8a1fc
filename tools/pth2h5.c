/*
 * pth2h5: PyTorch checkpoint (torch.save, either serialization) -> the engine's HDF5
 * checkpoint (data-layout.md, "Model checkpoints"), without Python. Takes a state_dict (at
 * the top or nested under a key) or a whole pickled model, whose tensors are found by walking
 * its module tree; keeps every tensor's name, shape and dtype.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "log.h"
#include "nn/checkpoint.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/resnext.h"
#include "opt.h"
#include "pth.h"

/* Names listed per kind of difference before "... and N more". */
#define LIST_MAX 30

typedef struct {
    const char *out, *arch, *key, *model;
    int list, keep_prefix, allow_missing, allow_unexpected, to_pth;
} pth2h5_options_t;

static void shape_text(char *buf, size_t size, int rank, const int64_t *dims)
{
    size_t len = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < rank && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", i ? ", " : "",
                                (long long)dims[i]);
    if (len < size)
        snprintf(buf + len, size - len, "]");
}

static void print_list(const pth_file_t *f)
{
    char shape[160];
    for (size_t i = 0; i < f->n_tensors; i++) {
        const pth_tensor_t *t = &f->tensors[i];
        shape_text(shape, sizeof(shape), t->rank, t->shape);
        printf("%s\t%s\t%s\n", t->name, pth_dtype_name(t->dtype), shape);
    }
}

static const pth_tensor_t *find_tensor(const pth_file_t *f, const char *name)
{
    for (size_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

/* A list of names with its count, capped at LIST_MAX. */
typedef struct {
    char *text;
    size_t count;
} names_t;

static void names_add(names_t *l, const char *name)
{
    if (l->count < LIST_MAX) {
        char *prev = l->text;
        l->text = xasprintf("%s%s\"%s\"", prev ? prev : "", prev ? ", " : "", name);
        free(prev);
    }
    l->count++;
}

static char *names_line(const char *what, const names_t *l)
{
    if (!l->count)
        return xstrdup("");
    if (l->count > LIST_MAX)
        return xasprintf("  %s (%zu): %s, ... and %zu more\n", what, l->count, l->text,
                         l->count - LIST_MAX);
    return xasprintf("  %s (%zu): %s\n", what, l->count, l->text);
}

/*
 * The head's output count: the rows of fc.weight, else the length of fc.bias (with
 * --allow-missing a file may lack either); torchvision's 1000 when neither says.
 */
static int head_outputs(const pth_file_t *f)
{
    const pth_tensor_t *weight = find_tensor(f, "fc.weight"), *bias = find_tensor(f, "fc.bias");
    const pth_tensor_t *head = weight && weight->rank == 2 ? weight
                               : bias && bias->rank == 1   ? bias
                                                           : NULL;
    if (head && head->shape[0] > 0 && head->shape[0] < (1 << 24))
        return (int)head->shape[0];
    return 1000;
}

/*
 * Compare the tensors with the named architecture's parameter table (built by the engine):
 * missing and unexpected keys, shape and type mismatches. Returns 0 when the import may go
 * on (differences allowed by the options are warned about), -1 when it may not.
 */
static int check_arch(const pth_file_t *f, const pth2h5_options_t *o, int *num_outputs)
{
    *num_outputs = head_outputs(f);
    nn_backend_t *be = nn_backend_create("cpu");
    if (!be)
        die(EXIT_INTERNAL, "no CPU backend");
    resnext_t *model = resnext_create(be, o->arch, *num_outputs);
    const nn_paramset_t *ps = &model->ps;

    names_t missing = {0}, unexpected = {0};
    char *sizes = xstrdup("");
    size_t n_sizes = 0;
    for (size_t i = 0; i < ps->n_entries; i++) {
        const nn_entry_t *e = &ps->entries[i];
        const pth_tensor_t *t = find_tensor(f, e->name);
        if (!t) {
            names_add(&missing, e->name);
            continue;
        }
        int same = t->rank == e->rank;
        for (int d = 0; same && d < t->rank; d++)
            same = t->shape[d] == e->dims[d];
        int is_int = t->dtype == PTH_I64 || t->dtype == PTH_I32 || t->dtype == PTH_I16 ||
                     t->dtype == PTH_I8 || t->dtype == PTH_U8 || t->dtype == PTH_BOOL;
        int want_int = e->kind == NN_ENTRY_COUNTER;
        char line[640] = "", have[160], want[160];
        if (!same) {
            shape_text(have, sizeof(have), t->rank, t->shape);
            shape_text(want, sizeof(want), e->rank, e->dims);
            snprintf(line, sizeof(line), "  size mismatch for %s: shape %s in the checkpoint, "
                     "%s in the model\n", e->name, have, want);
        } else if (is_int != want_int) {
            snprintf(line, sizeof(line), "  type mismatch for %s: %s in the checkpoint, %s "
                     "in the model\n", e->name, pth_dtype_name(t->dtype),
                     want_int ? "int64" : "float");
        }
        if (line[0] && n_sizes++ < LIST_MAX) {
            char *prev = sizes;
            sizes = xasprintf("%s%s", prev, line);
            free(prev);
        }
    }
    for (size_t i = 0; i < f->n_tensors; i++) {
        if (nn_params_find(ps, f->tensors[i].name) >= 0)
            continue;
        /* The name comes from the file: printable ASCII only in the message. */
        char *shown = xstrdup(f->tensors[i].name);
        for (char *c = shown; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
                *c = '?';
        names_add(&unexpected, shown);
        free(shown);
    }

    char *miss_line = names_line("missing keys", &missing);
    char *unexp_line = names_line("unexpected keys", &unexpected);
    int fatal = n_sizes || (missing.count && !o->allow_missing) ||
                (unexpected.count && !o->allow_unexpected);
    if (n_sizes > LIST_MAX) {
        char *prev = sizes;
        sizes = xasprintf("%s  ... and %zu more size or type mismatch%s\n", prev,
                          n_sizes - LIST_MAX, n_sizes - LIST_MAX == 1 ? "" : "es");
        free(prev);
    }
    if (missing.count || unexpected.count || n_sizes) {
        char *all = xasprintf("%s%s%s", miss_line, unexp_line, sizes);
        all[strlen(all) - 1] = 0;
        if (fatal)
            log_error("%s: checkpoint does not match model '%s':\n%s", f->path, o->arch, all);
        else
            log_warn("%s: importing although it differs from model '%s':\n%s", f->path,
                     o->arch, all);
        free(all);
    }
    free(miss_line);
    free(unexp_line);
    free(sizes);
    free(missing.text);
    free(unexpected.text);
    resnext_free(model);
    be->destroy(be);
    return fatal ? -1 : 0;
}

/* float16 in HDF5: IEEE binary16, little-endian (h5py reads it as numpy float16). */
static hid_t f16_type(void)
{
    return h5_float16_type(5, 10, 15);
}

typedef struct {
    hid_t f16, bf16;
} types_t;

/* The file type of a dtype; the bytes are written as they are (little-endian host). */
static hid_t file_type(const types_t *types, pth_dtype_t dtype)
{
    switch (dtype) {
    case PTH_F32: return H5T_IEEE_F32LE;
    case PTH_F64: return H5T_IEEE_F64LE;
    case PTH_F16: return types->f16;
    case PTH_BF16: return types->bf16;
    case PTH_I64: return H5T_STD_I64LE;
    case PTH_I32: return H5T_STD_I32LE;
    case PTH_I16: return H5T_STD_I16LE;
    case PTH_I8: return H5T_STD_I8LE;
    case PTH_U8: return H5T_STD_U8LE;
    case PTH_BOOL: return H5T_STD_U8LE;
    }
    return H5T_STD_U8LE;
}

/* One tensor, chunked about 1 MiB along the first axis with a Fletcher-32 checksum per
 * chunk, as the engine's own checkpoints. */
static void write_tensor(hid_t group, const pth_tensor_t *t, hid_t type, const void *data)
{
    hsize_t dims[PTH_RANK_MAX], chunk[PTH_RANK_MAX];
    for (int i = 0; i < t->rank; i++)
        dims[i] = chunk[i] = (hsize_t)t->shape[i];
    hid_t space = t->rank ? H5Screate_simple(t->rank, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (t->rank > 0 && t->numel > 0) {
        hsize_t row_bytes = t->numel / dims[0] * H5Tget_size(type);
        hsize_t rows = ((hsize_t)1 << 20) / row_bytes;
        chunk[0] = rows < 1 ? 1 : rows > dims[0] ? dims[0] : rows;
        H5Pset_chunk(dcpl, t->rank, chunk);
        H5Pset_fletcher32(dcpl);
    }
    hid_t ds = H5Dcreate2(group, t->name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0 ||
        (t->numel > 0 && H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0))
        die(EXIT_IO, "%s: cannot write state_dict/%s", h5_filename(group), t->name);
    if (t->dtype == PTH_BOOL)
        h5_attr_str(ds, "torch_dtype", "bool");
    H5Dclose(ds);
    H5Pclose(dcpl);
    H5Sclose(space);
}

/* How the float tensors are stored: "fp32", "bf16", or "mixed". */
static const char *storage_kind(const pth_file_t *f)
{
    int f32 = 0, bf16 = 0, other = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        pth_dtype_t d = f->tensors[i].dtype;
        f32 += d == PTH_F32;
        bf16 += d == PTH_BF16;
        other += d == PTH_F16 || d == PTH_F64;
    }
    return other || (f32 && bf16) ? "mixed" : bf16 ? "bf16" : "fp32";
}

static void write_arch(hid_t file, const char *arch, int num_outputs)
{
    const resnext_config_t *cfg = resnext_config(arch);
    int64_t layers[4];
    for (int i = 0; i < 4; i++)
        layers[i] = cfg->layers[i];
    int64_t values[5] = {cfg->groups, cfg->width_per_group, cfg->base, num_outputs,
                         (int64_t)cfg->base * 8 * 4};
    const char *names[5] = {"groups", "width_per_group", "base", "num_outputs", "embed_dim"};
    hid_t group = h5_create_group_ordered(file, "architecture");
    hsize_t four = 4;
    hid_t space = H5Screate_simple(1, &four, NULL);
    hid_t attr = H5Acreate2(group, "layers", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_INT64, layers) < 0)
        die(EXIT_IO, "%s: cannot write architecture", h5_filename(file));
    H5Aclose(attr);
    H5Sclose(space);
    for (int i = 0; i < 5; i++)
        h5_attr_i64(group, names[i], values[i]);
    H5Gclose(group);
}

static void write_output(pth_file_t *f, const pth2h5_options_t *o, int num_outputs)
{
    h5out_t out;
    h5out_create(&out, o->out);
    if (H5Fset_libver_bounds(out.file, H5F_LIBVER_V18, H5F_LIBVER_V18) < 0)
        die(EXIT_IO, "%s: cannot set the HDF5 format version", o->out);
    h5_attr_str(out.file, "format", NN_CKPT_FORMAT);
    h5_attr_i64(out.file, "format_version", NN_CKPT_FORMAT_VERSION);
    h5_attr_str(out.file, "model", o->arch ? o->arch : o->model ? o->model : "unknown");
    h5_attr_str(out.file, "storage", storage_kind(f));
    h5_attr_str(out.file, "source_file", f->path);
    h5_attr_str(out.file, "source_format", f->format);
    h5_attr_str(out.file, "source_kind", f->kind);
    h5_attr_str(out.file, "source_key", f->key);
    h5_attr_provenance(out.file);
    if (o->arch)
        write_arch(out.file, o->arch, num_outputs);

    types_t types = {f16_type(), nn_h5_bf16_type()};
    hid_t group = h5_create_group_ordered(out.file, "state_dict");
    for (size_t i = 0; i < f->n_tensors; i++) {
        const pth_tensor_t *t = &f->tensors[i];
        void *data = pth_tensor_data(f, t);
        if (!data) {
            H5Gclose(group);
            h5out_discard(&out);
            log_error("%s", f->error);
            exit(EXIT_BAD_INPUT);
        }
        write_tensor(group, t, file_type(&types, t->dtype), data);
        free(data);
    }
    H5Gclose(group);
    H5Tclose(types.f16);
    H5Tclose(types.bf16);
    h5out_commit(&out);
}

/* ---- the reverse: HDF5 checkpoint -> a file torch.load reads ------------------------------- */

/* The torch dtype of a dataset's HDF5 type, or -1. */
static int dtype_of(hid_t ds, hid_t type)
{
    size_t size = H5Tget_size(type), spos, epos, esize, mpos, msize;
    H5T_class_t cls = H5Tget_class(type);
    if (H5Tget_order(type) != H5T_ORDER_LE && size > 1)
        return -1;
    if (cls == H5T_FLOAT) {
        if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0)
            return -1;
        if (size == 4 && esize == 8 && msize == 23)
            return PTH_F32;
        if (size == 8 && esize == 11 && msize == 52)
            return PTH_F64;
        if (size == 2 && esize == 5 && msize == 10 && spos == 15 && epos == 10 && mpos == 0)
            return PTH_F16;
        if (size == 2 && esize == 8 && msize == 7 && spos == 15 && epos == 7 && mpos == 0)
            return PTH_BF16;
        return -1;
    }
    if (cls != H5T_INTEGER)
        return -1;
    int is_signed = H5Tget_sign(type) == H5T_SGN_2;
    if (!is_signed && size == 1) {
        char *marked = h5_attr_read_str(ds, "torch_dtype");
        int is_bool = marked && strcmp(marked, "bool") == 0;
        free(marked);
        return is_bool ? PTH_BOOL : PTH_U8;
    }
    if (!is_signed)
        return -1;
    return size == 8 ? PTH_I64 : size == 4 ? PTH_I32 : size == 2 ? PTH_I16 : size == 1 ? PTH_I8
                                                                                      : -1;
}

typedef struct {
    pth_writer_t *writer;
    const char *path;
    int failed;
} export_t;

static herr_t export_dataset(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    export_t *x = data;
    hid_t ds = H5Dopen2(group, name, H5P_DEFAULT);
    if (ds < 0) {
        log_error("%s: state_dict/%s is not a dataset", x->path, name);
        x->failed = EXIT_BAD_INPUT;
        return -1;
    }
    hid_t type = H5Dget_type(ds), space = H5Dget_space(ds);
    int dtype = dtype_of(ds, type);
    int rank = H5Sget_simple_extent_ndims(space);
    hsize_t dims[PTH_RANK_MAX];
    int64_t shape[PTH_RANK_MAX];
    size_t count = 1;
    int ok = dtype >= 0 && rank >= 0 && rank <= PTH_RANK_MAX &&
             H5Sget_simple_extent_dims(space, dims, NULL) >= 0;
    for (int d = 0; ok && d < rank; d++) {
        shape[d] = (int64_t)dims[d];
        count *= (size_t)dims[d];
    }
    if (!ok) {
        log_error("%s: state_dict/%s: a type or rank torch cannot take", x->path, name);
        x->failed = EXIT_BAD_INPUT;
    } else {
        void *values = xmalloc(count ? count * pth_dtype_size(dtype) : 1);
        /* Read in the file's own type: the bytes as they are, no conversion. */
        if (count && H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) < 0) {
            log_error("%s: cannot read state_dict/%s (damaged file?)", x->path, name);
            x->failed = EXIT_BAD_INPUT;
        } else if (pth_writer_add(x->writer, name, dtype, rank, shape, values) < 0) {
            log_error("%s", pth_writer_error(x->writer));
            x->failed = EXIT_IO;
        }
        free(values);
    }
    H5Sclose(space);
    H5Tclose(type);
    H5Dclose(ds);
    return x->failed ? -1 : 0;
}

/* The state_dict of an HDF5 checkpoint as a zip archive torch.load reads. */
static int export_pth(const char *in, const char *out)
{
    hid_t file = h5_open_read(in);
    if (H5Lexists(file, "state_dict", H5P_DEFAULT) <= 0) {
        log_error("%s: no state_dict group: not a model checkpoint", in);
        h5_close(file);
        return EXIT_BAD_INPUT;
    }
    hid_t group = H5Gopen2(file, "state_dict", H5P_DEFAULT);
    char *tmp = tmp_path_for(out);
    FILE *fp = fopen(tmp, "wb");
    if (!fp)
        die(EXIT_IO, "%s: cannot create: %s", tmp, strerror(errno));
    export_t x = {pth_writer_open(fp, out), in, 0};
    /* Creation order is torch's state_dict order; a group that does not track it is read
     * by name. */
    hid_t gcpl = H5Gget_create_plist(group);
    unsigned order_flags = 0;
    H5Pget_link_creation_order(gcpl, &order_flags);
    H5Pclose(gcpl);
    H5_index_t index = (order_flags & H5P_CRT_ORDER_INDEXED) ? H5_INDEX_CRT_ORDER
                                                              : H5_INDEX_NAME;
    hsize_t at = 0;
    herr_t rc = H5Literate(group, index, H5_ITER_INC, &at, export_dataset, &x);
    if (rc < 0 && !x.failed) {
        log_error("%s: cannot list state_dict (damaged file?)", in);
        x.failed = EXIT_BAD_INPUT;
    }
    if (!x.failed && pth_writer_finish(x.writer) < 0) {
        log_error("%s", pth_writer_error(x.writer));
        x.failed = EXIT_IO;
    }
    if (fclose(fp) != 0 && !x.failed) {
        log_error("%s: cannot write: %s", out, strerror(errno));
        x.failed = EXIT_IO;
    }
    pth_writer_free(x.writer);
    H5Gclose(group);
    h5_close(file);
    if (x.failed) {
        tmp_discard(tmp);
        free(tmp);
        return x.failed;
    }
    if (tmp_commit(tmp, out) < 0)
        die(EXIT_IO, "%s: cannot rename into place: %s", out, strerror(errno));
    free(tmp);
    return EXIT_OK;
}

/* Options that ask for two things at once, or for one the chosen direction cannot do. */
static void refuse_conflicting_options(const pth2h5_options_t *o)
{
    if (o->list && o->to_pth)
        die(EXIT_USAGE, "--list prints a .pth file's tensors, --to-pth writes a .pth file: "
            "give one");
    if (o->list && o->out)
        die(EXIT_USAGE, "--list writes nothing: -o %s would not be written; give one", o->out);
    if (!o->to_pth)
        return;
    const char *import_only = o->arch ? "--arch" : o->model ? "--model" : o->key ? "--key"
                              : o->keep_prefix ? "--keep-prefix"
                              : o->allow_missing ? "--allow-missing"
                              : o->allow_unexpected ? "--allow-unexpected" : NULL;
    if (import_only)
        die(EXIT_USAGE, "%s applies to the import (.pth -> HDF5), not to --to-pth: "
            "give one", import_only);
}

int main(int argc, char **argv)
{
    log_init("pth2h5", LOG_INFO);
    pth2h5_options_t o = {0};
    const opt_t options[] = {
        {'o', "out", OPT_STRING, &o.out, "FILE", "HDF5 checkpoint to write", 1, 0, NULL},
        {'l', "list", OPT_FLAG, &o.list, NULL,
         "print every tensor's name, dtype and shape; write nothing", 1, 0, NULL},
        {0, "arch", OPT_CHOICE, &o.arch, "NAME",
         "check the tensors against this model, record it as the model", 1, 0,
         "resnext101_32x8d|resnext50_32x4d|tiny"},
        {0, "model", OPT_STRING, &o.model, "NAME",
         "model name to record when --arch is not given (default: unknown)", 1, 0, NULL},
        {0, "key", OPT_STRING, &o.key, "KEY",
         "the state_dict or model under KEY of the top dict (default: detected)", 1, 0,
         NULL},
        {0, "keep-prefix", OPT_FLAG, &o.keep_prefix, NULL,
         "keep the 'module.' prefix of DataParallel names", 1, 0, NULL},
        {0, "allow-missing", OPT_FLAG, &o.allow_missing, NULL,
         "with --arch: import although model tensors are missing", 1, 0, NULL},
        {0, "to-pth", OPT_FLAG, &o.to_pth, NULL,
         "the reverse: IN is an HDF5 checkpoint, OUT a .pth file of its state_dict", 1, 0,
         NULL},
        {0, "allow-unexpected", OPT_FLAG, &o.allow_unexpected, NULL,
         "with --arch: import although tensors are not in the model", 1, 0, NULL},
        {0},
    };
    const opt_spec_t spec = {
        .program = "pth2h5",
        .usage = "[options] -o OUT.h5 IN.pth  |  --list IN.pth  |  --to-pth -o OUT.pth IN.h5",
        .summary =
            "Imports a PyTorch checkpoint (torch.save: the zip archive of PyTorch >= 1.6 or\n"
            "the older stream) into the engine's HDF5 checkpoint, without Python: a\n"
            "state_dict, possibly nested under a key, or a whole pickled model whose\n"
            "parameters and buffers are found by walking its module tree. Nothing in the\n"
            "file is executed; unknown classes are kept as inert placeholders.",
        .details =
            "Output: state_dict/NAME for every tensor in torch's order, with torch's shape and\n"
            "dtype (float32, float16, bfloat16 as the engine's bf16 type, float64, int64,\n"
            "int32, int16, int8, uint8; bool as uint8 with attribute torch_dtype=bool); root\n"
            "attributes format, format_version, model, storage (fp32, bf16 or mixed),\n"
            "source_file, source_format (zip, legacy), source_kind (state_dict, module),\n"
            "source_key, and provenance; with --arch the architecture group. A leading\n"
            "'module.' is stripped unless --keep-prefix. With --arch, missing and unexpected\n"
            "keys and shape or type mismatches are listed and stop the import (exit 3)\n"
            "unless allowed; a shape or type mismatch always stops it.\n"
            "Without --key the tensors are taken from the top object when it is a state_dict\n"
            "or a model, else from the first of its keys state_dict, model_state_dict, model,\n"
            "module, net, network, model_state, weights, params that holds one.\n"
            "--to-pth goes the other way: the state_dict group of an HDF5 checkpoint (this\n"
            "program's or the engine's) becomes a zip archive as torch.save writes it, an\n"
            "OrderedDict of contiguous tensors in the group's order, dtypes kept; torch.load\n"
            "reads it, also with weights_only=True. The import's options (--arch, --model,\n"
            "--key, --keep-prefix, --allow-*) and --list are refused with it (exit 2), as\n"
            "is -o with --list (which writes nothing).\n"
            "Layout: data-layout.md (Model checkpoints).",
        .exit_codes = "  pth2h5: 2 also for options that conflict (see above);\n"
                      "          3 also for an unknown opcode, a truncated or damaged file, a\n"
                      "          size mismatch, or a tensor that cannot be represented; nothing\n"
                      "          is written then.\n",
        .options = options,
        .min_positional = 1,
        .max_positional = 1,
    };
    char **positional;
    opt_parse(&spec, argc, argv, &positional);
    const char *input = positional[0]; /* points into argv */
    free(positional);
    refuse_conflicting_options(&o);
    if (!o.list && !o.out)
        die(EXIT_USAGE, "-o OUT.h5 is required (or --list)");
    if (o.out && path_same_file(o.out, input))
        die(EXIT_USAGE, "-o %s is the input %s: it would be overwritten", o.out, input);
    if (o.out)
        output_path_check("-o", o.out, o.to_pth ? "model.pth" : "model.h5");
    const uint16_t probe = 1;
    if (*(const uint8_t *)&probe != 1)
        die(EXIT_INTERNAL, "this program reads little-endian tensors on little-endian hosts");
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (o.to_pth) {
        if (!o.out)
            die(EXIT_USAGE, "--to-pth needs -o OUT.pth");
        return export_pth(input, o.out);
    }

    pth_file_t f;
    pth_options_t popt = {o.key, o.keep_prefix};
    if (pth_open(&f, input, &popt) < 0) {
        log_error("%s", f.error);
        pth_close(&f);
        return EXIT_BAD_INPUT;
    }
    if (f.n_tensors == 0) {
        log_error("%s: no tensors found", f.path);
        pth_close(&f);
        return EXIT_BAD_INPUT;
    }
    log_info("%s: %zu tensor%s (%s, %s format%s%s)", f.path, f.n_tensors,
             f.n_tensors == 1 ? "" : "s", f.kind, f.format, f.key[0] ? ", under key " : "",
             f.key);

    int num_outputs = 0;
    if (o.arch && check_arch(&f, &o, &num_outputs) < 0) {
        pth_close(&f);
        return EXIT_BAD_INPUT;
    }
    if (o.list)
        print_list(&f);
    else
        write_output(&f, &o, num_outputs);
    pth_close(&f);
    return EXIT_OK;
}
