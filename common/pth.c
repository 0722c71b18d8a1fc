/* PyTorch checkpoint files without Python (see pth.h). */
#include "pth.h"

#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* Module trees deeper than this are refused (a cycle, or not a model). */
#define DEPTH_MAX 200
/* Module visits allowed: a shared submodule is walked under each of its names, as torch's
 * state_dict does, so a hostile file could repeat one exponentially. */
#define MODULES_MAX 1000000
/* A tensor may repeat storage elements (stride 0); its copy is then capped at this size. */
#define EXPANDED_BYTES_MAX ((uint64_t)1 << 28)
/* The magic number opening the older format, as LONG1's little-endian bytes. */
static const uint8_t LEGACY_MAGIC[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50,
                                       0x19};
#define LEGACY_PROTOCOL 1001

static int fail(pth_file_t *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(pth_file_t *f, const char *fmt, ...)
{
    char what[sizeof(f->error) - 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    /* Names in the message come from the file: show only printable ASCII. */
    for (char *c = what; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
            *c = '?';
    snprintf(f->error, sizeof(f->error), "%s: %s", f->path, what);
    return -1;
}

const char *pth_dtype_name(pth_dtype_t dtype)
{
    static const char *names[] = {"float32", "float64", "float16", "bfloat16", "int64",
                                  "int32",   "int16",   "int8",    "uint8",    "bool"};
    return names[dtype];
}

size_t pth_dtype_size(pth_dtype_t dtype)
{
    static const size_t sizes[] = {4, 8, 2, 2, 8, 4, 2, 1, 1, 1};
    return sizes[dtype];
}

/* The dtype of a storage class (torch.FloatStorage, torch.cuda.HalfStorage, ...). */
static int storage_dtype(const pk_value_t *type, pth_dtype_t *dtype)
{
    static const struct {
        const char *name;
        pth_dtype_t dtype;
    } known[] = {{"FloatStorage", PTH_F32},  {"DoubleStorage", PTH_F64},
                 {"HalfStorage", PTH_F16},   {"BFloat16Storage", PTH_BF16},
                 {"LongStorage", PTH_I64},   {"IntStorage", PTH_I32},
                 {"ShortStorage", PTH_I16},  {"CharStorage", PTH_I8},
                 {"ByteStorage", PTH_U8},    {"BoolStorage", PTH_BOOL}};
    if (!type || type->kind != PK_GLOBAL ||
        (strcmp(type->module, "torch") != 0 && strcmp(type->module, "torch.cuda") != 0))
        return -1;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(type->name, known[i].name) == 0) {
            *dtype = known[i].dtype;
            return 0;
        }
    return -1;
}

static const char *describe(const pk_value_t *v, char *buf, size_t size)
{
    if (v && v->kind == PK_GLOBAL)
        snprintf(buf, size, "%s.%s", v->module, v->name);
    else if (v && v->kind == PK_OBJECT && v->callable->kind == PK_GLOBAL)
        snprintf(buf, size, "an object of %s.%s", v->callable->module, v->callable->name);
    else
        snprintf(buf, size, "a %s", v ? pk_kind_name(v->kind) : "nothing");
    return buf;
}

/* ---- storages ------------------------------------------------------------------------------ */

/* The storage a persistent id names, added on first sight. */
static long persid_storage(pth_file_t *f, const pk_value_t *persid, const char *tensor)
{
    const pk_value_t *id = persid->args;
    char what[160];
    if (id->kind != PK_TUPLE || id->n < 5 || !pk_is_str(id->items[0], "storage"))
        return fail(f, "tensor %s: persistent id is %s, not a storage tuple", tensor,
                    describe(id, what, sizeof(what)));
    const pk_value_t *type = id->items[1], *key = id->items[2], *numel = id->items[4];
    pth_dtype_t dtype;
    if (storage_dtype(type, &dtype) < 0)
        return fail(f, "tensor %s: storage type %s is not supported", tensor,
                    describe(type, what, sizeof(what)));
    if (key->kind != PK_STR || numel->kind != PK_INT || numel->i < 0)
        return fail(f, "tensor %s: storage id without a key or size", tensor);
    if (id->n > 5 && id->items[5]->kind != PK_NONE)
        return fail(f, "tensor %s: storage views (files of PyTorch before 0.4) are not "
                    "supported", tensor);
    const char *name = pk_cstr(f->pk, key);
    for (size_t i = 0; i < f->n_storages; i++) {
        pth_storage_t *s = &f->storages[i];
        if (strcmp(s->key, name) != 0)
            continue;
        if (s->dtype != dtype || s->numel != (uint64_t)numel->i)
            return fail(f, "storage %s is used as %s [%lld] and as %s [%llu]", name,
                        pth_dtype_name(dtype), (long long)numel->i, pth_dtype_name(s->dtype),
                        (unsigned long long)s->numel);
        return (long)i;
    }
    /* The bytes must fit in the file; a deflated zip entry may expand up to about 1032
     * times its size. */
    uint64_t bytes, room = f->is_zip ? (uint64_t)f->size * 1100 + 4096 : f->size;
    if (__builtin_mul_overflow((uint64_t)numel->i, pth_dtype_size(dtype), &bytes) ||
        bytes > room)
        return fail(f, "storage %s declares %lld elements, more than the file holds", name,
                    (long long)numel->i);
    if (f->n_storages == f->cap_storages) {
        f->cap_storages = f->cap_storages ? 2 * f->cap_storages : 64;
        f->storages = xrealloc(f->storages, f->cap_storages * sizeof(*f->storages));
    }
    f->storages[f->n_storages] = (pth_storage_t){.key = xstrdup(name), .dtype = dtype,
                                                 .numel = (uint64_t)numel->i};
    return (long)f->n_storages++;
}

/* ---- tensors ------------------------------------------------------------------------------- */

static int is_torch_global(const pk_value_t *g)
{
    return g && g->kind == PK_GLOBAL && strncmp(g->module, "torch", 5) == 0;
}

/* Does this value claim to be a tensor (made by one of torch's rebuild functions)? */
static int looks_like_tensor(const pk_value_t *v)
{
    if (!v || v->kind != PK_OBJECT || !is_torch_global(v->callable))
        return 0;
    const char *name = v->callable->name;
    return strncmp(name, "_rebuild", 8) == 0 || strcmp(name, "Parameter") == 0;
}

static int int_tuple(const pk_value_t *v, int64_t *out, int *count)
{
    if (!v || (v->kind != PK_TUPLE && v->kind != PK_LIST) || v->n > PTH_RANK_MAX)
        return -1;
    for (size_t i = 0; i < v->n; i++) {
        if (v->items[i]->kind != PK_INT)
            return -1;
        out[i] = v->items[i]->i;
    }
    *count = (int)v->n;
    return 0;
}

/* Shape, strides and offset must stay inside the storage. */
static int check_bounds(pth_file_t *f, pth_tensor_t *t)
{
    const pth_storage_t *s = &f->storages[t->storage];
    uint64_t numel = 1, last = (uint64_t)t->offset;
    if (t->offset < 0)
        return fail(f, "tensor %s: negative storage offset %lld", t->name,
                    (long long)t->offset);
    for (int d = 0; d < t->rank; d++) {
        if (t->shape[d] < 0 || t->stride[d] < 0)
            return fail(f, "tensor %s: negative size or stride in dimension %d", t->name, d);
        if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel))
            return fail(f, "tensor %s: element count overflows", t->name);
    }
    t->numel = numel;
    if (numel == 0)
        return 0;
    for (int d = 0; d < t->rank; d++) {
        uint64_t reach;
        if (__builtin_mul_overflow((uint64_t)(t->shape[d] - 1), (uint64_t)t->stride[d],
                                   &reach) ||
            __builtin_add_overflow(last, reach, &last))
            return fail(f, "tensor %s: strides overflow", t->name);
    }
    if (last >= s->numel)
        return fail(f, "tensor %s: size mismatch: reaches element %llu of storage %s, which "
                    "holds %llu", t->name, (unsigned long long)last, s->key,
                    (unsigned long long)s->numel);
    uint64_t bytes = numel * pth_dtype_size(t->dtype);
    if (numel > s->numel && bytes > EXPANDED_BYTES_MAX)
        return fail(f, "tensor %s: %llu elements expanded from a storage of %llu", t->name,
                    (unsigned long long)numel, (unsigned long long)s->numel);
    return 0;
}

/* Decode a tensor value into t (name already set). */
static int decode_tensor(pth_file_t *f, const pk_value_t *v, pth_tensor_t *t, int depth)
{
    char what[160];
    if (depth > 8 || !looks_like_tensor(v))
        return fail(f, "%s: expected a tensor, found %s", t->name,
                    describe(v, what, sizeof(what)));
    const char *fn = v->callable->name;
    const pk_value_t *args = v->args;

    /* Wrappers: a Parameter, a tensor subclass, around the tensor itself. */
    if (strcmp(fn, "_rebuild_parameter") == 0 || strcmp(fn, "Parameter") == 0 ||
        strcmp(fn, "_rebuild_parameter_with_state") == 0) {
        if (args->n < 1)
            return fail(f, "%s: %s without arguments", t->name, fn);
        return decode_tensor(f, args->items[0], t, depth + 1);
    }
    if (strcmp(fn, "_rebuild_from_type_v2") == 0) {
        /* (function, type, args, state): the function applied to args builds the tensor */
        if (args->n < 3 || args->items[0]->kind != PK_GLOBAL ||
            args->items[2]->kind != PK_TUPLE)
            return fail(f, "%s: malformed _rebuild_from_type_v2", t->name);
        pk_value_t inner = {.kind = PK_OBJECT, .callable = args->items[0],
                            .args = args->items[2]};
        return decode_tensor(f, &inner, t, depth + 1);
    }
    if (strcmp(fn, "_rebuild_tensor_v2") != 0 && strcmp(fn, "_rebuild_tensor") != 0)
        return fail(f, "%s: tensor built by %s.%s, which cannot be represented "
                    "(quantized, sparse or another special tensor?)", t->name,
                    v->callable->module, fn);

    /* (storage, storage_offset, size, stride, ...) */
    if (args->n < 4 || args->items[0]->kind != PK_PERSID || args->items[1]->kind != PK_INT)
        return fail(f, "%s: malformed %s arguments", t->name, fn);
    long storage = persid_storage(f, args->items[0], t->name);
    if (storage < 0)
        return -1;
    int rank_shape, rank_stride;
    if (int_tuple(args->items[2], t->shape, &rank_shape) < 0 ||
        int_tuple(args->items[3], t->stride, &rank_stride) < 0 || rank_shape != rank_stride)
        return fail(f, "%s: shape and strides are not two integer tuples of the same rank "
                    "(at most %d)", t->name, PTH_RANK_MAX);
    t->rank = rank_shape;
    t->offset = args->items[1]->i;
    t->storage = (size_t)storage;
    t->dtype = f->storages[storage].dtype;
    return check_bounds(f, t);
}

static int add_tensor(pth_file_t *f, const char *name, const pk_value_t *v)
{
    if (f->n_tensors == f->cap_tensors) {
        f->cap_tensors = f->cap_tensors ? 2 * f->cap_tensors : 256;
        f->tensors = xrealloc(f->tensors, f->cap_tensors * sizeof(*f->tensors));
    }
    pth_tensor_t *t = &f->tensors[f->n_tensors];
    memset(t, 0, sizeof(*t));
    t->name = xstrdup(name);
    f->n_tensors++;
    return decode_tensor(f, v, t, 0);
}

/* ---- finding the tensors ------------------------------------------------------------------- */

static int is_module(const pk_value_t *v)
{
    return v && v->kind == PK_OBJECT && v->state && v->state->kind == PK_DICT &&
           pk_dict_get(v->state, "_parameters") && pk_dict_get(v->state, "_modules");
}

/* A dict whose values are all tensors (None allowed), with at least one. */
static int is_state_dict(const pk_value_t *v)
{
    if (!v || v->kind != PK_DICT || v->n == 0)
        return 0;
    for (size_t i = 0; i + 1 < v->n; i += 2)
        if (v->items[i]->kind != PK_STR ||
            (!looks_like_tensor(v->items[i + 1]) && v->items[i + 1]->kind != PK_NONE))
            return 0;
    return 1;
}

static int in_set(const pk_value_t *set, const pk_value_t *name)
{
    if (!set || (set->kind != PK_SET && set->kind != PK_LIST && set->kind != PK_TUPLE))
        return 0;
    for (size_t i = 0; i < set->n; i++)
        if (set->items[i]->kind == PK_STR && set->items[i]->len == name->len &&
            memcmp(set->items[i]->s, name->s, name->len) == 0)
            return 1;
    return 0;
}

/* Tensors of one dict of a module (its _parameters or _buffers) under prefix. */
static int add_entries(pth_file_t *f, const char *prefix, const pk_value_t *dict,
                       const pk_value_t *skip, const char *what)
{
    if (!dict || dict->kind == PK_NONE)
        return 0;
    if (dict->kind != PK_DICT)
        return fail(f, "module %s: %s is a %s, not a dict", prefix[0] ? prefix : "(top)", what,
                    pk_kind_name(dict->kind));
    for (size_t i = 0; i + 1 < dict->n; i += 2) {
        const pk_value_t *key = dict->items[i], *value = dict->items[i + 1];
        if (key->kind != PK_STR)
            return fail(f, "module %s: a %s key in %s", prefix, pk_kind_name(key->kind), what);
        if (value->kind == PK_NONE || in_set(skip, key))
            continue;
        char *name = xasprintf("%s%.*s", prefix, (int)key->len, key->s);
        int rc = add_tensor(f, name, value);
        free(name);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* A module's own parameters and persistent buffers, then its children's, in the order of
 * torch's state_dict. */
static int walk_module(pth_file_t *f, const char *prefix, const pk_value_t *module, int depth)
{
    if (depth > DEPTH_MAX)
        return fail(f, "module tree deeper than %d (a cycle?) at %.200s", DEPTH_MAX, prefix);
    if (++f->modules_walked > MODULES_MAX)
        return fail(f, "more than %d modules in the tree (one shared many times?)",
                    MODULES_MAX);
    const pk_value_t *state = module->state;
    if (add_entries(f, prefix, pk_dict_get(state, "_parameters"), NULL, "_parameters") < 0 ||
        add_entries(f, prefix, pk_dict_get(state, "_buffers"),
                    pk_dict_get(state, "_non_persistent_buffers_set"), "_buffers") < 0)
        return -1;
    const pk_value_t *children = pk_dict_get(state, "_modules");
    if (!children || children->kind == PK_NONE)
        return 0;
    if (children->kind != PK_DICT)
        return fail(f, "module %s: _modules is a %s", prefix, pk_kind_name(children->kind));
    char what[160];
    for (size_t i = 0; i + 1 < children->n; i += 2) {
        const pk_value_t *key = children->items[i], *child = children->items[i + 1];
        if (child->kind == PK_NONE)
            continue;
        if (key->kind != PK_STR || !is_module(child))
            return fail(f, "module %s: child %s is %s, not a module", prefix,
                        key->kind == PK_STR ? pk_cstr(f->pk, key) : "?",
                        describe(child, what, sizeof(what)));
        char *sub = xasprintf("%s%.*s.", prefix, (int)key->len, key->s);
        int rc = walk_module(f, sub, child, depth + 1);
        free(sub);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static int collect(pth_file_t *f, const pk_value_t *v)
{
    if (is_module(v)) {
        f->kind = "module";
        return walk_module(f, "", v, 0);
    }
    f->kind = "state_dict";
    for (size_t i = 0; i + 1 < v->n; i += 2) {
        if (v->items[i + 1]->kind == PK_NONE)
            continue;
        if (add_tensor(f, pk_cstr(f->pk, v->items[i]), v->items[i + 1]) < 0)
            return -1;
    }
    return 0;
}

/* The keys of a dict, for messages. */
static void list_keys(pth_file_t *f, const pk_value_t *dict, char *out, size_t size)
{
    size_t len = 0;
    out[0] = 0;
    for (size_t i = 0; dict && dict->kind == PK_DICT && i + 1 < dict->n && len < size; i += 2) {
        const char *key = dict->items[i]->kind == PK_STR ? pk_cstr(f->pk, dict->items[i]) : "?";
        len += (size_t)snprintf(out + len, size - len, "%s'%s'", len ? ", " : "", key);
    }
}

static int find_tensors(pth_file_t *f, const pk_value_t *root, const pth_options_t *opt)
{
    char keys[400], what[160];
    if (opt->key) {
        const pk_value_t *v = pk_dict_get(root, opt->key);
        if (!v) {
            list_keys(f, root, keys, sizeof(keys));
            return fail(f, "no key '%s' at the top (keys: %s)", opt->key,
                        keys[0] ? keys : "none: the top is not a dict");
        }
        if (!is_module(v) && !is_state_dict(v))
            return fail(f, "'%s' is %s, neither a state_dict nor a module", opt->key,
                        describe(v, what, sizeof(what)));
        snprintf(f->key, sizeof(f->key), "%s", opt->key);
        return collect(f, v);
    }
    if (is_module(root) || is_state_dict(root))
        return collect(f, root);
    static const char *usual[] = {"state_dict", "model_state_dict", "model", "module",
                                  "net", "network", "model_state", "weights", "params"};
    for (size_t i = 0; i < sizeof(usual) / sizeof(usual[0]); i++) {
        const pk_value_t *v = pk_dict_get(root, usual[i]);
        if (v && (is_module(v) || is_state_dict(v))) {
            snprintf(f->key, sizeof(f->key), "%s", usual[i]);
            return collect(f, v);
        }
    }
    list_keys(f, root, keys, sizeof(keys));
    return fail(f, "no state_dict or module found: the top is %s%s%s%s",
                describe(root, what, sizeof(what)), keys[0] ? " with keys " : "", keys,
                keys[0] ? " (choose one with --key)" : "");
}

/* Strip DataParallel's "module." and refuse names that then collide. */
static int finish_names(pth_file_t *f, const pth_options_t *opt)
{
    for (size_t i = 0; i < f->n_tensors && !opt->keep_prefix; i++) {
        char *name = f->tensors[i].name;
        if (strncmp(name, "module.", 7) == 0)
            memmove(name, name + 7, strlen(name + 7) + 1);
    }
    for (size_t i = 0; i < f->n_tensors; i++) {
        const char *name = f->tensors[i].name;
        if (!name[0] || strcmp(name, ".") == 0 || strchr(name, '/'))
            return fail(f, "tensor name '%s' cannot name a dataset (empty, '.' or with '/')",
                        name);
    }
    /* Repeated names, found by sorting (the file may hold very many tensors). */
    const char **sorted = xmalloc((f->n_tensors ? f->n_tensors : 1) * sizeof(*sorted));
    for (size_t i = 0; i < f->n_tensors; i++)
        sorted[i] = f->tensors[i].name;
    qsort(sorted, f->n_tensors, sizeof(*sorted), compare_strings);
    int rc = 0;
    for (size_t i = 1; i < f->n_tensors && rc == 0; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            rc = fail(f, "two tensors named %s", sorted[i]);
    free(sorted);
    return rc;
}

/* ---- the two formats ----------------------------------------------------------------------- */

static int open_zip(pth_file_t *f, const pk_value_t **root)
{
    if (zip_open(&f->zip, f->map, f->size) < 0)
        return fail(f, "%s", f->zip.error);
    const zip_entry_t *pkl = NULL;
    for (size_t i = 0; i < f->zip.n_entries && !pkl; i++) {
        const char *name = f->zip.entries[i].name, *slash = strchr(name, '/');
        if (slash && strcmp(slash, "/data.pkl") == 0)
            pkl = &f->zip.entries[i];
    }
    if (!pkl)
        return fail(f, "zip archive without a data.pkl: not a PyTorch checkpoint");
    size_t prefix_len = strlen(pkl->name) - strlen("data.pkl");
    f->prefix = xmalloc(prefix_len + 1);
    memcpy(f->prefix, pkl->name, prefix_len);
    f->prefix[prefix_len] = 0;

    char *name = xasprintf("%sbyteorder", f->prefix);
    const zip_entry_t *order = zip_find(&f->zip, name);
    free(name);
    int owned;
    if (order) {
        const uint8_t *bytes = zip_read(&f->zip, order, 64, &owned);
        if (!bytes)
            return fail(f, "%s", f->zip.error);
        int little = order->usize == 6 && memcmp(bytes, "little", 6) == 0;
        if (owned)
            free((void *)(uintptr_t)bytes);
        if (!little)
            return fail(f, "big-endian checkpoint: not supported");
    }

    uint64_t limit = pkl->csize > (UINT64_MAX >> 11) ? UINT64_MAX : pkl->csize * 1100 + 4096;
    const uint8_t *bytes = zip_read(&f->zip, pkl, limit, &owned);
    if (!bytes)
        return fail(f, "%s", f->zip.error);
    size_t pos = 0;
    *root = pk_load(f->pk, bytes, pkl->usize, &pos);
    /* Strings in the values point into the pickle: an inflated one is kept until close. */
    if (owned)
        f->pickle_copy = (uint8_t *)(uintptr_t)bytes;
    if (!*root)
        return fail(f, "%sdata.pkl: %s", f->prefix, pk_error(f->pk));
    return 0;
}

/* Zip storages: every one referenced is present with the size its id declares. */
static int check_zip_storages(pth_file_t *f)
{
    for (size_t i = 0; i < f->n_storages; i++) {
        pth_storage_t *s = &f->storages[i];
        if (s->loaded)
            continue;
        char *name = xasprintf("%sdata/%s", f->prefix, s->key);
        s->entry = zip_find(&f->zip, name);
        free(name);
        if (!s->entry)
            return fail(f, "storage %s is missing from the archive (truncated?)", s->key);
        if (s->entry->usize != s->numel * pth_dtype_size(s->dtype))
            return fail(f, "size mismatch: storage %s holds %llu bytes, its id declares %llu "
                        "%s elements", s->key, (unsigned long long)s->entry->usize,
                        (unsigned long long)s->numel, pth_dtype_name(s->dtype));
    }
    return 0;
}

static int open_legacy(pth_file_t *f, const pk_value_t **root)
{
    size_t pos = 0;
    const pk_value_t *magic = pk_load(f->pk, f->map, f->size, &pos);
    if (!magic || magic->kind != PK_BIGINT || magic->len != sizeof(LEGACY_MAGIC) ||
        memcmp(magic->s, LEGACY_MAGIC, sizeof(LEGACY_MAGIC)) != 0) {
        if (f->size > 262 && memcmp(f->map + 257, "ustar", 5) == 0)
            return fail(f, "tar checkpoint (PyTorch before 0.4): not supported");
        return fail(f, "not a PyTorch checkpoint (neither a zip archive nor the magic number "
                    "of the older format%s%s)", magic ? "" : ": ", magic ? "" : pk_error(f->pk));
    }
    const pk_value_t *protocol = pk_load(f->pk, f->map, f->size, &pos);
    if (!protocol)
        return fail(f, "protocol version: %s", pk_error(f->pk));
    if (protocol->kind != PK_INT || protocol->i != LEGACY_PROTOCOL)
        return fail(f, "format version %lld, expected %d", (long long)protocol->i,
                    LEGACY_PROTOCOL);
    const pk_value_t *info = pk_load(f->pk, f->map, f->size, &pos);
    if (!info)
        return fail(f, "system information: %s", pk_error(f->pk));
    const pk_value_t *little = pk_dict_get(info, "little_endian");
    if (little && little->kind == PK_BOOL && !little->i)
        return fail(f, "big-endian checkpoint: not supported");
    *root = pk_load(f->pk, f->map, f->size, &pos);
    if (!*root)
        return fail(f, "the pickled object: %s", pk_error(f->pk));
    f->legacy_pos = pos;
    return 0;
}

/* The storages after the pickled object: the sorted keys, then each one's element count
 * (int64) and bytes. Needs the storages the tensors referenced. */
static int read_legacy_storages(pth_file_t *f)
{
    size_t pos = f->legacy_pos;
    const pk_value_t *keys = pk_load(f->pk, f->map, f->size, &pos);
    if (!keys)
        return fail(f, "storage keys: %s", pk_error(f->pk));
    if (keys->kind != PK_LIST)
        return fail(f, "storage keys are a %s, not a list", pk_kind_name(keys->kind));
    /* Storages of objects besides the tensors taken (an optimizer's state) are in the file
     * too: learn their types from every persistent id seen, to step over their bytes. */
    size_t n_values;
    pk_value_t *const *values = pk_values(f->pk, &n_values);
    for (size_t i = 0; i < n_values; i++)
        if (values[i]->kind == PK_PERSID && values[i]->args->kind == PK_TUPLE &&
            values[i]->args->n >= 1 && pk_is_str(values[i]->args->items[0], "storage") &&
            persid_storage(f, values[i], "(not taken)") < 0)
            return -1;
    for (size_t k = 0; k < keys->n; k++) {
        if (keys->items[k]->kind != PK_STR)
            return fail(f, "storage key %zu is a %s", k, pk_kind_name(keys->items[k]->kind));
        const char *key = pk_cstr(f->pk, keys->items[k]);
        pth_storage_t *s = NULL;
        for (size_t i = 0; i < f->n_storages && !s; i++)
            if (strcmp(f->storages[i].key, key) == 0)
                s = &f->storages[i];
        if (!s)
            return fail(f, "storage %s is listed but never referenced", key);
        if (f->size - pos < 8)
            return fail(f, "truncated: storage %s's size is cut", key);
        uint64_t count = 0;
        for (int i = 0; i < 8; i++)
            count |= (uint64_t)f->map[pos + (size_t)i] << (8 * i);
        pos += 8;
        if (count != s->numel)
            return fail(f, "size mismatch: storage %s holds %llu elements, its id declares %llu",
                        key, (unsigned long long)count, (unsigned long long)s->numel);
        uint64_t bytes = count * pth_dtype_size(s->dtype); /* bounded by the id check */
        if (bytes > f->size - pos)
            return fail(f, "truncated: storage %s needs %llu bytes, %zu left", key,
                        (unsigned long long)bytes, f->size - pos);
        s->bytes = f->map + pos;
        s->loaded = 1;
        pos += (size_t)bytes;
    }
    for (size_t i = 0; i < f->n_storages; i++)
        if (!f->storages[i].loaded)
            return fail(f, "storage %s is used but not in the file", f->storages[i].key);
    return 0;
}

int pth_open(pth_file_t *f, const char *path, const pth_options_t *options)
{
    memset(f, 0, sizeof(*f));
    f->path = path;
    f->pk = pk_new();
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail(f, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(f, "not a regular file");
    }
    f->size = (size_t)st.st_size;
    if (f->size == 0) {
        close(fd);
        return fail(f, "empty file");
    }
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return fail(f, "cannot map: %s", strerror(errno));
    f->map = map;

    const pk_value_t *root = NULL;
    f->is_zip = zip_is_zip(f->map, f->size);
    f->format = f->is_zip ? "zip" : "legacy";
    if ((f->is_zip ? open_zip(f, &root) : open_legacy(f, &root)) < 0)
        return -1;
    if (find_tensors(f, root, options) < 0 || finish_names(f, options) < 0)
        return -1;
    return f->is_zip ? check_zip_storages(f) : read_legacy_storages(f);
}

void pth_close(pth_file_t *f)
{
    for (size_t i = 0; i < f->n_storages; i++) {
        free(f->storages[i].key);
        if (f->storages[i].owned)
            free((void *)(uintptr_t)f->storages[i].bytes);
    }
    for (size_t i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->storages);
    free(f->tensors);
    free(f->prefix);
    free(f->pickle_copy);
    if (f->is_zip)
        zip_close(&f->zip);
    pk_free(f->pk);
    if (f->map)
        munmap((void *)(uintptr_t)f->map, f->size);
    f->map = NULL;
    f->pk = NULL;
    f->storages = NULL;
    f->tensors = NULL;
}

static int load_storage(pth_file_t *f, pth_storage_t *s)
{
    if (s->loaded)
        return 0;
    uint64_t bytes = s->numel * pth_dtype_size(s->dtype);
    s->bytes = zip_read(&f->zip, s->entry, bytes, &s->owned);
    if (!s->bytes)
        return fail(f, "storage %s: %s", s->key, f->zip.error);
    s->loaded = 1;
    return 0;
}

void *pth_tensor_data(pth_file_t *f, const pth_tensor_t *t)
{
    pth_storage_t *s = &f->storages[t->storage];
    if (load_storage(f, s) < 0)
        return NULL;
    size_t elem = pth_dtype_size(t->dtype);
    uint8_t *out = xmalloc(t->numel ? t->numel * elem : 1);
    if (t->numel == 0)
        return out;

    /* Walk the index space row by row; rows along a unit stride are copied at once. */
    int rank = t->rank;
    int64_t inner = rank ? t->shape[rank - 1] : 1, inner_stride = rank ? t->stride[rank - 1] : 1;
    int64_t index[PTH_RANK_MAX] = {0};
    uint8_t *dst = out;
    for (uint64_t done = 0; done < t->numel; done += (uint64_t)inner) {
        int64_t at = t->offset;
        for (int d = 0; d + 1 < rank; d++)
            at += index[d] * t->stride[d];
        const uint8_t *src = s->bytes + (size_t)at * elem;
        if (inner_stride == 1) {
            memcpy(dst, src, (size_t)inner * elem);
        } else {
            for (int64_t k = 0; k < inner; k++)
                memcpy(dst + (size_t)k * elem, src + (size_t)(k * inner_stride) * elem, elem);
        }
        dst += (size_t)inner * elem;
        for (int d = rank - 2; d >= 0; d--) {
            if (++index[d] < t->shape[d])
                break;
            index[d] = 0;
        }
    }
    return out;
}

/* ---- writing the zip archive --------------------------------------------------------------- */

#define ARCHIVE "archive/"
#define ZIP_LIMIT 0xFFFFFFFFull

typedef struct {
    char *name;
    uint32_t crc, size, offset;
} written_t;

/* A growing byte buffer (the pickle, the central directory). */
typedef struct {
    uint8_t *bytes;
    size_t len, cap;
} bytes_t;

struct pth_writer {
    FILE *out;
    const char *path;
    uint64_t offset;
    written_t *entries;
    size_t n_entries, cap_entries;
    bytes_t pickle;
    size_t n_tensors;
    char error[512];
};

static void put(bytes_t *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = 2 * (b->len + n) + 4096;
        b->bytes = xrealloc(b->bytes, b->cap);
    }
    memcpy(b->bytes + b->len, data, n);
    b->len += n;
}

static void put_le(bytes_t *b, uint64_t value, int n)
{
    uint8_t le[8];
    for (int i = 0; i < n; i++)
        le[i] = (uint8_t)(value >> (8 * i));
    put(b, le, (size_t)n);
}

static void put_op(bytes_t *b, int opcode)
{
    uint8_t op = (uint8_t)opcode;
    put(b, &op, 1);
}

/* Pickle pieces, protocol 2. */
static void pickle_str(bytes_t *b, const char *s)
{
    put_op(b, 'X'); /* BINUNICODE */
    put_le(b, strlen(s), 4);
    put(b, s, strlen(s));
}

static void pickle_int(bytes_t *b, int64_t value)
{
    put_op(b, 0x8a); /* LONG1 of 8 bytes: any int64 */
    put_op(b, 8);
    put_le(b, (uint64_t)value, 8);
}

static void pickle_global(bytes_t *b, const char *module, const char *name)
{
    put_op(b, 'c');
    put(b, module, strlen(module));
    put_op(b, '\n');
    put(b, name, strlen(name));
    put_op(b, '\n');
}

static void pickle_empty_ordered_dict(bytes_t *b)
{
    pickle_global(b, "collections", "OrderedDict");
    put_op(b, ')');
    put_op(b, 'R');
}

static int writer_fail(pth_writer_t *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int writer_fail(pth_writer_t *w, const char *fmt, ...)
{
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(w->error, sizeof(w->error), "%s: %s", w->path, what);
    return -1;
}

/* One stored entry: local header, then the bytes. */
static int write_entry(pth_writer_t *w, const char *name, const void *data, uint64_t size)
{
    if (size > ZIP_LIMIT || w->offset + size + 4096 > ZIP_LIMIT)
        return writer_fail(w, "more than 4 GiB: not supported");
    uLong crc = crc32(0L, Z_NULL, 0);
    for (uint64_t done = 0; done < size;) {
        uInt chunk = size - done > (1u << 30) ? (1u << 30) : (uInt)(size - done);
        crc = crc32(crc, (const Bytef *)data + done, chunk);
        done += chunk;
    }
    bytes_t h = {0};
    put_le(&h, 0x04034b50u, 4);
    put_le(&h, 20, 2); /* version needed */
    put_le(&h, 0, 2);  /* flags */
    put_le(&h, 0, 2);  /* stored */
    put_le(&h, 0, 4);  /* time, date */
    put_le(&h, (uint32_t)crc, 4);
    put_le(&h, size, 4);
    put_le(&h, size, 4);
    put_le(&h, strlen(name), 2);
    put_le(&h, 0, 2);
    put(&h, name, strlen(name));
    int ok = fwrite(h.bytes, 1, h.len, w->out) == h.len &&
             (size == 0 || fwrite(data, 1, (size_t)size, w->out) == size);
    if (w->n_entries == w->cap_entries) {
        w->cap_entries = w->cap_entries ? 2 * w->cap_entries : 64;
        w->entries = xrealloc(w->entries, w->cap_entries * sizeof(*w->entries));
    }
    w->entries[w->n_entries++] =
        (written_t){xstrdup(name), (uint32_t)crc, (uint32_t)size, (uint32_t)w->offset};
    w->offset += h.len + size;
    free(h.bytes);
    return ok ? 0 : writer_fail(w, "cannot write: %s", strerror(errno));
}

pth_writer_t *pth_writer_open(FILE *out, const char *path)
{
    pth_writer_t *w = xcalloc(1, sizeof(*w));
    w->out = out;
    w->path = path;
    /* OrderedDict() then MARK: the items follow, SETITEMS closes them. */
    put_op(&w->pickle, 0x80);
    put_op(&w->pickle, 2);
    pickle_empty_ordered_dict(&w->pickle);
    put_op(&w->pickle, '(');
    return w;
}

int pth_writer_add(pth_writer_t *w, const char *name, pth_dtype_t dtype, int rank,
                   const int64_t *shape, const void *data)
{
    static const char *storage_names[] = {"FloatStorage", "DoubleStorage", "HalfStorage",
                                          "BFloat16Storage", "LongStorage", "IntStorage",
                                          "ShortStorage", "CharStorage", "ByteStorage",
                                          "BoolStorage"};
    if (rank < 0 || rank > PTH_RANK_MAX)
        return writer_fail(w, "%s: rank %d", name, rank);
    uint64_t numel = 1;
    int64_t stride[PTH_RANK_MAX];
    for (int d = rank - 1; d >= 0; d--) {
        stride[d] = (int64_t)numel;
        if (shape[d] < 0 || __builtin_mul_overflow(numel, (uint64_t)shape[d], &numel))
            return writer_fail(w, "%s: bad shape", name);
    }
    uint64_t bytes;
    if (__builtin_mul_overflow(numel, pth_dtype_size(dtype), &bytes))
        return writer_fail(w, "%s: too large", name);

    char key[32], entry[64];
    snprintf(key, sizeof(key), "%zu", w->n_tensors++);
    snprintf(entry, sizeof(entry), ARCHIVE "data/%s", key);
    if (write_entry(w, entry, data, bytes) < 0)
        return -1;

    /* name: _rebuild_tensor_v2(persistent storage id, 0, shape, stride, False, {}) */
    bytes_t *b = &w->pickle;
    pickle_str(b, name);
    pickle_global(b, "torch._utils", "_rebuild_tensor_v2");
    put_op(b, '(');
    put_op(b, '(');
    pickle_str(b, "storage");
    pickle_global(b, "torch", storage_names[dtype]);
    pickle_str(b, key);
    pickle_str(b, "cpu");
    pickle_int(b, (int64_t)numel);
    put_op(b, 't');
    put_op(b, 'Q'); /* BINPERSID */
    pickle_int(b, 0);
    put_op(b, '(');
    for (int d = 0; d < rank; d++)
        pickle_int(b, shape[d]);
    put_op(b, 't');
    put_op(b, '(');
    for (int d = 0; d < rank; d++)
        pickle_int(b, stride[d]);
    put_op(b, 't');
    put_op(b, 0x89); /* requires_grad False */
    pickle_empty_ordered_dict(b);
    put_op(b, 't');
    put_op(b, 'R');
    return 0;
}

int pth_writer_finish(pth_writer_t *w)
{
    put_op(&w->pickle, 'u'); /* SETITEMS */
    put_op(&w->pickle, '.');
    size_t first = w->n_entries;
    if (write_entry(w, ARCHIVE "data.pkl", w->pickle.bytes, w->pickle.len) < 0 ||
        write_entry(w, ARCHIVE "version", "3\n", 2) < 0)
        return -1;

    /* The central directory, data.pkl first: readers take the archive's folder name from
     * the first record. */
    bytes_t cd = {0};
    for (size_t k = 0; k < w->n_entries; k++) {
        const written_t *e = &w->entries[(first + k) % w->n_entries];
        put_le(&cd, 0x02014b50u, 4);
        put_le(&cd, 20, 2); /* made by */
        put_le(&cd, 20, 2); /* needed */
        put_le(&cd, 0, 2);
        put_le(&cd, 0, 2);
        put_le(&cd, 0, 4);
        put_le(&cd, e->crc, 4);
        put_le(&cd, e->size, 4);
        put_le(&cd, e->size, 4);
        put_le(&cd, strlen(e->name), 2);
        put_le(&cd, 0, 2); /* extra */
        put_le(&cd, 0, 2); /* comment */
        put_le(&cd, 0, 2); /* disk */
        put_le(&cd, 0, 2); /* internal attributes */
        put_le(&cd, 0, 4); /* external attributes */
        put_le(&cd, e->offset, 4);
        put(&cd, e->name, strlen(e->name));
    }
    if (w->n_entries > 0xFFFF || w->offset + cd.len > ZIP_LIMIT) {
        free(cd.bytes);
        return writer_fail(w, "too many tensors or too large for a zip without zip64");
    }
    size_t cd_size = cd.len;
    put_le(&cd, 0x06054b50u, 4);
    put_le(&cd, 0, 2);
    put_le(&cd, 0, 2);
    put_le(&cd, w->n_entries, 2);
    put_le(&cd, w->n_entries, 2);
    put_le(&cd, cd_size, 4);
    put_le(&cd, w->offset, 4);
    put_le(&cd, 0, 2);
    int ok = fwrite(cd.bytes, 1, cd.len, w->out) == cd.len;
    free(cd.bytes);
    return ok ? 0 : writer_fail(w, "cannot write: %s", strerror(errno));
}

const char *pth_writer_error(const pth_writer_t *w)
{
    return w->error;
}

void pth_writer_free(pth_writer_t *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_entries; i++)
        free(w->entries[i].name);
    free(w->entries);
    free(w->pickle.bytes);
    free(w);
}
