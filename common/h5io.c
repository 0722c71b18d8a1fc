#include "h5io.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "log.h"
#include "opt.h"

#ifndef ICH_VERSION
#define ICH_VERSION "unknown"
#endif

/*
 * HDF5's own error stack printing is replaced by our messages naming file and object. Its
 * exit handler is turned off: every file is closed explicitly, and after a failed close (a full
 * disk) the handler would touch the broken file again and crash instead of letting die() exit.
 */
static pthread_once_t h5_once = PTHREAD_ONCE_INIT;
static void h5_quiet(void)
{
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}
static void h5_init(void) { pthread_once(&h5_once, h5_quiet); }

const char *h5_filename(hid_t obj)
{
    static _Thread_local char name[1024];
    if (H5Fget_name(obj, name, sizeof name) < 0)
        snprintf(name, sizeof name, "(HDF5 object)");
    return name;
}

static void h5_fail(hid_t loc, const char *call, const char *object, int code)
{
    die(code, "%s: %s failed for '%s'", h5_filename(loc), call, object);
}

void h5out_create(h5out_t *out, const char *final_path)
{
    h5_init();
    out->final_path = xstrdup(final_path);
    out->tmp_path = tmp_path_for(final_path);
    out->file = H5Fcreate(out->tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (out->file < 0)
        die(EXIT_IO, "cannot create %s (as %s)", final_path, out->tmp_path);
}

void h5out_commit(h5out_t *out)
{
    if (H5Fclose(out->file) < 0) {
        tmp_discard(out->tmp_path);
        die(EXIT_IO, "cannot finish writing %s", out->final_path);
    }
    if (tmp_commit(out->tmp_path, out->final_path) != 0)
        die(EXIT_IO, "cannot move %s into place: %s", out->final_path, strerror(errno));
    free(out->final_path);
    free(out->tmp_path);
    memset(out, 0, sizeof *out);
}

void h5out_discard(h5out_t *out)
{
    H5Fclose(out->file);
    tmp_discard(out->tmp_path);
    free(out->final_path);
    free(out->tmp_path);
    memset(out, 0, sizeof *out);
}

hid_t h5_open_read(const char *path)
{
    h5_init();
    if (!path_is_file(path))
        die(EXIT_BAD_INPUT, "%s: no such file", path);
    if (H5Fis_hdf5(path) <= 0)
        die(EXIT_BAD_INPUT, "%s: not an HDF5 file", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        die(EXIT_BAD_INPUT, "%s: cannot open as HDF5 (damaged or incomplete?)", path);
    return f;
}

void h5_close(hid_t file)
{
    if (file >= 0)
        H5Fclose(file);
}

static hid_t link_props(void)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    return lcpl;
}

void h5_write(hid_t loc, const char *name, hid_t memtype, const void *data, int rank,
              const hsize_t *dims)
{
    h5_init();
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t total = 1;
    for (int i = 0; i < rank; i++)
        total *= dims[i];

    /* Compress what is large; chunks of about 1 MiB along the first axis. */
    size_t elem = H5Tget_size(memtype);
    if (rank > 0 && total * elem > (1u << 20) && dims[0] > 0) {
        hsize_t chunk[8];
        hsize_t row = total / dims[0] * elem;
        hsize_t rows = (1u << 20) / (row ? row : 1);
        chunk[0] = rows < 1 ? 1 : rows > dims[0] ? dims[0] : rows;
        for (int i = 1; i < rank; i++)
            chunk[i] = dims[i];
        H5Pset_chunk(dcpl, rank, chunk);
        H5Pset_deflate(dcpl, 1);
    }

    hid_t lcpl = link_props();
    hid_t ds = H5Dcreate2(loc, name, memtype, space, lcpl, dcpl, H5P_DEFAULT);
    if (ds < 0)
        h5_fail(loc, "H5Dcreate2", name, EXIT_IO);
    if (total > 0 && H5Dwrite(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        h5_fail(loc, "H5Dwrite", name, EXIT_IO);
    H5Dclose(ds);
    H5Pclose(lcpl);
    H5Pclose(dcpl);
    H5Sclose(space);
}

void h5_write_f64(hid_t loc, const char *name, const double *data, int rank, const hsize_t *dims)
{
    h5_write(loc, name, H5T_NATIVE_DOUBLE, data, rank, dims);
}

void h5_write_f32(hid_t loc, const char *name, const float *data, int rank, const hsize_t *dims)
{
    h5_write(loc, name, H5T_NATIVE_FLOAT, data, rank, dims);
}

void h5_write_i32(hid_t loc, const char *name, const int32_t *data, int rank, const hsize_t *dims)
{
    h5_write(loc, name, H5T_NATIVE_INT32, data, rank, dims);
}

void h5_write_i64(hid_t loc, const char *name, const int64_t *data, int rank, const hsize_t *dims)
{
    h5_write(loc, name, H5T_NATIVE_INT64, data, rank, dims);
}

void h5_write_i8(hid_t loc, const char *name, const int8_t *data, int rank, const hsize_t *dims)
{
    h5_write(loc, name, H5T_NATIVE_INT8, data, rank, dims);
}

void h5_write_strings(hid_t loc, const char *name, const char *const *strings, size_t n)
{
    size_t width = 1;
    for (size_t i = 0; i < n; i++) {
        size_t len = strings[i] ? strlen(strings[i]) : 0;
        if (len > width)
            width = len;
    }
    char *packed = xcalloc(n ? n : 1, width);
    for (size_t i = 0; i < n; i++)
        if (strings[i])
            memcpy(packed + i * width, strings[i], strlen(strings[i]));

    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, width);
    H5Tset_strpad(type, H5T_STR_NULLPAD);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hsize_t dims[1] = {n};
    h5_write(loc, name, type, packed, 1, dims);
    H5Tclose(type);
    free(packed);
}

hid_t h5_create_group_ordered(hid_t loc, const char *name)
{
    h5_init();
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    H5Pset_attr_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    hid_t group = H5Gcreate2(loc, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    if (group < 0)
        h5_fail(loc, "H5Gcreate2", name, EXIT_IO);
    return group;
}

int h5_exists(hid_t loc, const char *name)
{
    h5_init();
    /* Check each level so that a missing group is not an error. */
    char *path = xstrdup(name);
    int found = 1;
    for (char *s = path;; s++) {
        if (*s == '/' || *s == 0) {
            char saved = *s;
            *s = 0;
            if (*path && H5Lexists(loc, path, H5P_DEFAULT) <= 0) {
                found = 0;
                break;
            }
            *s = saved;
            if (!saved)
                break;
        }
    }
    free(path);
    return found;
}

static hid_t open_dataset(hid_t loc, const char *name)
{
    if (!h5_exists(loc, name))
        die(EXIT_BAD_INPUT, "%s: dataset '%s' is missing", h5_filename(loc), name);
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    if (ds < 0)
        die(EXIT_BAD_INPUT, "%s: '%s' is not a readable dataset", h5_filename(loc), name);
    return ds;
}

int h5_dims(hid_t loc, const char *name, hsize_t *dims)
{
    hid_t ds = open_dataset(loc, name);
    hid_t space = H5Dget_space(ds);
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank > 8)
        die(EXIT_BAD_INPUT, "%s: '%s' has rank %d", h5_filename(loc), name, rank);
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    H5Dclose(ds);
    return rank;
}

void *h5_read(hid_t loc, const char *name, hid_t memtype, int expect_rank, hsize_t *dims)
{
    hid_t ds = open_dataset(loc, name);
    hid_t space = H5Dget_space(ds);
    int rank = H5Sget_simple_extent_ndims(space);
    hsize_t local[8];
    hsize_t *d = dims ? dims : local;
    if (rank < 0 || rank > 8 || (expect_rank >= 0 && rank != expect_rank))
        die(EXIT_BAD_INPUT, "%s: '%s' has rank %d, expected %d", h5_filename(loc), name, rank,
            expect_rank);
    H5Sget_simple_extent_dims(space, d, NULL);
    hsize_t total = 1;
    for (int i = 0; i < rank; i++)
        total *= d[i];

    /* Refuse a type that cannot convert (a string column read as numbers, say). */
    hid_t ftype = H5Dget_type(ds);
    H5T_class_t fclass = H5Tget_class(ftype), mclass = H5Tget_class(memtype);
    int numeric_f = fclass == H5T_INTEGER || fclass == H5T_FLOAT;
    int numeric_m = mclass == H5T_INTEGER || mclass == H5T_FLOAT;
    if (numeric_f != numeric_m)
        die(EXIT_BAD_INPUT, "%s: '%s' has the wrong type", h5_filename(loc), name);
    H5Tclose(ftype);

    void *buf = xmalloc(total * H5Tget_size(memtype));
    if (total > 0 && H5Dread(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        die(EXIT_BAD_INPUT, "%s: cannot read '%s' (damaged file?)", h5_filename(loc), name);
    H5Sclose(space);
    H5Dclose(ds);
    return buf;
}

char **h5_read_strings(hid_t loc, const char *name, size_t *n)
{
    hid_t ds = open_dataset(loc, name);
    hid_t ftype = H5Dget_type(ds);
    if (H5Tget_class(ftype) != H5T_STRING)
        die(EXIT_BAD_INPUT, "%s: '%s' is not a string column", h5_filename(loc), name);
    hid_t space = H5Dget_space(ds);
    if (H5Sget_simple_extent_ndims(space) != 1)
        die(EXIT_BAD_INPUT, "%s: '%s' is not one-dimensional", h5_filename(loc), name);
    hsize_t count;
    H5Sget_simple_extent_dims(space, &count, NULL);
    char **out = xcalloc(count ? count : 1, sizeof *out);

    if (H5Tis_variable_str(ftype) > 0) {
        hid_t mtype = H5Tcopy(H5T_C_S1);
        H5Tset_size(mtype, H5T_VARIABLE);
        H5Tset_cset(mtype, H5Tget_cset(ftype));
        char **raw = xcalloc(count ? count : 1, sizeof *raw);
        if (count && H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) < 0)
            die(EXIT_BAD_INPUT, "%s: cannot read '%s'", h5_filename(loc), name);
        for (hsize_t i = 0; i < count; i++)
            out[i] = xstrdup(raw[i] ? raw[i] : "");
        H5Dvlen_reclaim(mtype, space, H5P_DEFAULT, raw);
        free(raw);
        H5Tclose(mtype);
    } else {
        size_t width = H5Tget_size(ftype);
        hid_t mtype = H5Tcopy(H5T_C_S1);
        H5Tset_size(mtype, width);
        H5Tset_strpad(mtype, H5T_STR_NULLPAD);
        H5Tset_cset(mtype, H5Tget_cset(ftype));
        char *packed = xcalloc(count ? count : 1, width);
        if (count && H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, packed) < 0)
            die(EXIT_BAD_INPUT, "%s: cannot read '%s'", h5_filename(loc), name);
        for (hsize_t i = 0; i < count; i++) {
            out[i] = xcalloc(width + 1, 1);
            memcpy(out[i], packed + i * width, width);
        }
        free(packed);
        H5Tclose(mtype);
    }
    H5Sclose(space);
    H5Tclose(ftype);
    H5Dclose(ds);
    *n = count;
    return out;
}

void h5_free_strings(char **strings, size_t n)
{
    if (!strings)
        return;
    for (size_t i = 0; i < n; i++)
        free(strings[i]);
    free(strings);
}

static void attr_write(hid_t obj, const char *name, hid_t type, const void *value)
{
    h5_init();
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, type, value) < 0)
        h5_fail(obj, "writing attribute", name, EXIT_IO);
    H5Aclose(attr);
    H5Sclose(space);
}

void h5_attr_str(hid_t obj, const char *name, const char *value)
{
    /* Variable-length UTF-8, so that h5py and other readers see text, not bytes. */
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    attr_write(obj, name, type, &value);
    H5Tclose(type);
}

void h5_attr_f64(hid_t obj, const char *name, double value)
{
    attr_write(obj, name, H5T_NATIVE_DOUBLE, &value);
}

void h5_attr_i64(hid_t obj, const char *name, int64_t value)
{
    attr_write(obj, name, H5T_NATIVE_INT64, &value);
}

char *h5_attr_read_str(hid_t obj, const char *name)
{
    h5_init();
    if (H5Aexists(obj, name) <= 0)
        return NULL;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t ftype = H5Aget_type(attr);
    char *out = NULL;
    if (H5Tget_class(ftype) == H5T_STRING) {
        if (H5Tis_variable_str(ftype) > 0) {
            hid_t mtype = H5Tcopy(H5T_C_S1);
            H5Tset_size(mtype, H5T_VARIABLE);
            H5Tset_cset(mtype, H5Tget_cset(ftype));
            char *raw = NULL;
            if (H5Aread(attr, mtype, &raw) >= 0 && raw) {
                out = xstrdup(raw);
                H5free_memory(raw);
            }
            H5Tclose(mtype);
        } else {
            size_t width = H5Tget_size(ftype);
            out = xcalloc(width + 1, 1);
            hid_t mtype = H5Tcopy(H5T_C_S1);
            H5Tset_size(mtype, width);
            H5Tset_cset(mtype, H5Tget_cset(ftype));
            if (H5Aread(attr, mtype, out) < 0) {
                free(out);
                out = NULL;
            }
            H5Tclose(mtype);
        }
    }
    H5Tclose(ftype);
    H5Aclose(attr);
    return out;
}

static int attr_read_number(hid_t obj, const char *name, hid_t memtype, void *value)
{
    h5_init();
    if (H5Aexists(obj, name) <= 0)
        return 0;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    int ok = H5Aread(attr, memtype, value) >= 0;
    H5Aclose(attr);
    return ok;
}

int h5_attr_read_f64(hid_t obj, const char *name, double *value)
{
    return attr_read_number(obj, name, H5T_NATIVE_DOUBLE, value);
}

int h5_attr_read_i64(hid_t obj, const char *name, int64_t *value)
{
    return attr_read_number(obj, name, H5T_NATIVE_INT64, value);
}

void h5_attr_provenance(hid_t file)
{
    char when[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    h5_attr_str(file, "program", log_program());
    h5_attr_str(file, "version", ICH_VERSION);
    h5_attr_str(file, "command_line", opt_command_line());
    h5_attr_str(file, "created", when);
}
