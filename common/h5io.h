/*
 * HDF5 helpers: typed datasets, string columns, attributes, and files that are written under a
 * temporary name and renamed into place only when complete. Every failure dies with a message
 * naming the file, the object and the failing call.
 */
#ifndef ICH_H5IO_H
#define ICH_H5IO_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    hid_t file;
    char *final_path;
    char *tmp_path;
} h5out_t;

/* Create a new file under a temporary name beside final_path, making missing folders above it
 * (tmp_path_for). Dies with EXIT_IO naming final_path and the reason on failure. */
void h5out_create(h5out_t *out, const char *final_path);
/* Close and rename into place. Dies with EXIT_IO on failure. */
void h5out_commit(h5out_t *out);
/* Close and delete the temporary file. */
void h5out_discard(h5out_t *out);

/* Open an existing file read-only; dies with EXIT_BAD_INPUT naming the path if it is not HDF5. */
hid_t h5_open_read(const char *path);
void h5_close(hid_t file);

/*
 * Datasets. name may contain '/': missing groups are created. dims has rank entries.
 * Small datasets are stored contiguous; large ones chunked and compressed.
 */
void h5_write(hid_t loc, const char *name, hid_t memtype, const void *data, int rank,
              const hsize_t *dims);
void h5_write_f64(hid_t loc, const char *name, const double *data, int rank, const hsize_t *dims);
void h5_write_f32(hid_t loc, const char *name, const float *data, int rank, const hsize_t *dims);
void h5_write_i32(hid_t loc, const char *name, const int32_t *data, int rank, const hsize_t *dims);
void h5_write_i64(hid_t loc, const char *name, const int64_t *data, int rank, const hsize_t *dims);
void h5_write_i8(hid_t loc, const char *name, const int8_t *data, int rank, const hsize_t *dims);
/* A 1-D column of n strings, stored as fixed-length, null-padded ASCII/UTF-8. */
void h5_write_strings(hid_t loc, const char *name, const char *const *strings, size_t n);

/*
 * A 2-byte IEEE-style float type: sign in bit 15, exponent_bits above mantissa_bits, the
 * given exponent bias (float16: 5, 10, 15; bfloat16: 8, 7, 127). Readers such as h5py see
 * real numbers. Close with H5Tclose.
 */
hid_t h5_float16_type(int exponent_bits, int mantissa_bits, int bias);

/* A group whose links and attributes list in creation order (as written, not alphabetical). */
hid_t h5_create_group_ordered(hid_t loc, const char *name);

int h5_exists(hid_t loc, const char *name); /* dataset or group, nested paths allowed */
/* Rank and dims of a dataset (dims must hold 8). Dies if missing. */
int h5_dims(hid_t loc, const char *name, hsize_t *dims);
/* A shape for messages, into buf (returned): "35", "35x2048", "scalar" for rank 0. */
const char *h5_shape_text(int rank, const hsize_t *dims, char *buf, size_t len);
/*
 * Read a whole dataset converted to memtype into a new buffer. Dies with EXIT_BAD_INPUT naming
 * the file and dataset if it is missing or its rank differs from expect_rank (-1: any).
 */
void *h5_read(hid_t loc, const char *name, hid_t memtype, int expect_rank, hsize_t *dims);
/* A string column (fixed-length or variable-length); free with h5_free_strings. */
char **h5_read_strings(hid_t loc, const char *name, size_t *n);
void h5_free_strings(char **strings, size_t n);

void h5_attr_str(hid_t obj, const char *name, const char *value);
void h5_attr_f64(hid_t obj, const char *name, double value);
void h5_attr_i64(hid_t obj, const char *name, int64_t value);
/* Attribute on a named object below loc ("." for loc itself). */
char *h5_attr_read_str(hid_t obj, const char *name);         /* NULL if absent */
int h5_attr_read_f64(hid_t obj, const char *name, double *value); /* 0 if absent */
int h5_attr_read_i64(hid_t obj, const char *name, int64_t *value);

/* Standard provenance attributes on the root: program, version, command line, created. */
void h5_attr_provenance(hid_t file);

/* The path of the file an object belongs to, for messages (static buffer per thread). */
const char *h5_filename(hid_t obj);

#endif
