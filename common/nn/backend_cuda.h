/*
 * Entry points of the CUDA backend (backend_cuda.cu), callable from C.
 * Programs choose a backend by name through nn_backend_open / nn_backend_create (nn.h);
 * this header is for the dispatch and for tests that need the GPU's own numbers.
 */
#ifndef ICH_NN_BACKEND_CUDA_H
#define ICH_NN_BACKEND_CUDA_H

#include "nn/nn.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The CUDA backend on GPU `device`. NULL when it cannot run here, with the reason in err
 * (err_size bytes): built without CUDA, the plugin or a CUDA library not found, no driver,
 * no GPU, device out of range, a library that fails to start. Once created, failures of CUDA,
 * cuDNN and cuBLAS calls die with the call, file:line and the library's message (out of
 * memory: what, how much, how much free).
 */
nn_backend_t *nn_backend_cuda_create(int device, char *err, size_t err_size);

/* Bytes of device memory the backend holds now and at most so far (allocations and
 * workspace), for benchmarks. */
void nn_backend_cuda_memory(nn_backend_t *be, size_t *in_use, size_t *peak);

/*
 * The backend lives in a plugin, libichpipe_cuda.so, that the two functions above load on
 * first use (backend_select.c): from $ICH_CUDA_PLUGIN if set, else beside the program or one
 * folder up (bin/, build/tests/ -> build/). These are its entry points.
 */
#define NN_CUDA_PLUGIN "libichpipe_cuda.so"
nn_backend_t *nn_cuda_plugin_create(int device, char *err, size_t err_size);
void nn_cuda_plugin_memory(nn_backend_t *be, size_t *in_use, size_t *peak);

#ifdef __cplusplus
}
#endif

#endif
