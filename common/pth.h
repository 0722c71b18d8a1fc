/*
 * PyTorch checkpoint files (torch.save) read without Python: the zip archive of PyTorch >= 1.6
 * (ARCHIVE/data.pkl with storages in ARCHIVE/data/KEY) and the older stream (magic number,
 * protocol version, system info, the pickled object, the storage keys, then each storage's
 * element count and bytes). The pickled object is read by the safe reader of pickle.h;
 * tensors are recognised by torch's rebuild functions (_rebuild_tensor_v2, _rebuild_tensor,
 * _rebuild_parameter, _rebuild_from_type_v2) and found either in a state_dict (a dict of
 * name -> tensor, possibly nested under a key) or by walking a pickled module's tree
 * (_parameters, _buffers, _modules in each module's state) without importing any class.
 */
#ifndef ICH_PTH_H
#define ICH_PTH_H

#include "pickle.h"
#include "zipread.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PTH_RANK_MAX 8

typedef enum {
    PTH_F32, PTH_F64, PTH_F16, PTH_BF16, PTH_I64, PTH_I32, PTH_I16, PTH_I8, PTH_U8, PTH_BOOL,
} pth_dtype_t;

typedef struct {
    char *key;
    pth_dtype_t dtype;
    uint64_t numel;
    const uint8_t *bytes; /* after loading: into the file's mapping or owned */
    int owned, loaded;
    const zip_entry_t *entry; /* zip archives: where the bytes are */
} pth_storage_t;

typedef struct {
    char *name;
    pth_dtype_t dtype;
    int rank;
    int64_t shape[PTH_RANK_MAX], stride[PTH_RANK_MAX];
    int64_t offset; /* elements into the storage */
    size_t storage;
    uint64_t numel;
} pth_tensor_t;

typedef struct {
    const char *path;
    const uint8_t *map;
    size_t size;
    int is_zip;
    zip_t zip;
    char *prefix; /* zip: the archive's folder, with its '/' */
    size_t legacy_pos; /* legacy: where the storage keys start */
    uint8_t *pickle_copy; /* zip: an inflated data.pkl */
    long modules_walked;
    pk_reader_t *pk;
    pth_storage_t *storages;
    size_t n_storages, cap_storages;
    pth_tensor_t *tensors;
    size_t n_tensors, cap_tensors;
    const char *format;   /* "zip" or "legacy" */
    const char *kind;     /* "state_dict" or "module" */
    char key[128];        /* the key the tensors were found under ("" at the top) */
    char error[1024];     /* names the file and what was found */
} pth_file_t;

typedef struct {
    const char *key;  /* pick this entry of a top-level dict; NULL: detect */
    int keep_prefix;  /* keep a leading "module." (DataParallel) */
} pth_options_t;

/*
 * Open and decode path: every tensor named and checked against its storage (dtype, bounds,
 * sizes). Returns 0, or -1 with f->error set; pth_close either way.
 */
int pth_open(pth_file_t *f, const char *path, const pth_options_t *options);
void pth_close(pth_file_t *f);

/* A tensor's elements, contiguous in row-major order (strides and offset applied), in a new
 * buffer of numel * element size bytes; NULL with f->error set when the data is damaged. */
void *pth_tensor_data(pth_file_t *f, const pth_tensor_t *t);

/*
 * Writing: a state_dict (an OrderedDict of name -> tensor) as the zip archive torch.save
 * writes, which torch.load (also with weights_only=True) reads. Tensors are added one by one
 * (their bytes go to the file at once); finishing writes the pickle and the directory.
 * Archives are limited to 4 GiB (no zip64). Functions return 0, or -1 with the writer's
 * error set; the caller writes to a temporary file and renames it when complete.
 */
typedef struct pth_writer pth_writer_t;
pth_writer_t *pth_writer_open(FILE *out, const char *path);
int pth_writer_add(pth_writer_t *w, const char *name, pth_dtype_t dtype, int rank,
                   const int64_t *shape, const void *data);
int pth_writer_finish(pth_writer_t *w);
const char *pth_writer_error(const pth_writer_t *w);
void pth_writer_free(pth_writer_t *w);

const char *pth_dtype_name(pth_dtype_t dtype); /* torch's: "float32", "bfloat16", ... */
size_t pth_dtype_size(pth_dtype_t dtype);

#endif
