/*
 * What the CUDA backend's source files share inside the plugin (C++ only): the error checks
 * (a failing call dies naming the call, file:line and the library's message; NN_CUDA_SYNC=1
 * waits after each call), the backend's stream and column sums, and the sequence model's ops
 * (seqmodel_cuda.cu) that backend_cuda.cu installs.
 */
#ifndef ICH_NN_CUDA_INTERNAL_H
#define ICH_NN_CUDA_INTERNAL_H

#include "nn/nn.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#define NN_CUDA_HIDDEN __attribute__((visibility("hidden")))

NN_CUDA_HIDDEN void cuda_die(cudaError_t status, const char *call, const char *file, int line);
NN_CUDA_HIDDEN void cublas_die(cublasStatus_t status, const char *call, const char *file,
                               int line);
NN_CUDA_HIDDEN void debug_sync(const char *what, const char *file, int line);

/* A library call whose status must be `ok`; otherwise die_fn names it and the status. */
#define NN_STATUS_CHECK(call, ok, die_fn)                                                     \
    do {                                                                                      \
        auto status_ = (call);                                                                \
        if (status_ != (ok))                                                                  \
            die_fn(status_, #call, __FILE__, __LINE__);                                       \
    } while (0)

#define CUDA_CHECK(call) NN_STATUS_CHECK(call, cudaSuccess, cuda_die)

/* cuBLAS calls also wait and check when NN_CUDA_SYNC=1. */
#define CUBLAS_CHECK(call)                                                                    \
    do {                                                                                      \
        NN_STATUS_CHECK(call, CUBLAS_STATUS_SUCCESS, cublas_die);                             \
        debug_sync(#call, __FILE__, __LINE__);                                                \
    } while (0)

/* After a kernel launch: a bad launch now, a fault in the kernel when NN_CUDA_SYNC=1. */
#define KERNEL_CHECK(name)                                                                    \
    do {                                                                                      \
        cudaError_t status_ = cudaGetLastError();                                             \
        if (status_ != cudaSuccess)                                                           \
            cuda_die(status_, "launch of " name, __FILE__, __LINE__);                         \
        debug_sync(name, __FILE__, __LINE__);                                                 \
    } while (0)

/* Threads per block of the element kernels, and the blocks for count elements (at most 32
 * per multiprocessor: the kernels loop over the rest with a grid stride). */
#define NN_CUDA_THREADS 256
NN_CUDA_HIDDEN unsigned nn_cuda_blocks(nn_backend_t *be, size_t count);

/* The stream every op of the backend runs on, in call order. */
NN_CUDA_HIDDEN cudaStream_t nn_cuda_stream(nn_backend_t *be);

/* sums[j] = the sum over rows of m[r][j] (m [rows][cols]), in double and in row order as the
 * host sums a bias gradient; on the stream. */
NN_CUDA_HIDDEN void nn_cuda_column_sums(nn_backend_t *be, const float *m, int rows, int cols,
                                        float *sums);

/* Set be's seq_* ops (seqmodel_cuda.cu). */
NN_CUDA_HIDDEN void nn_cuda_seq_install(nn_backend_t *be);

#endif
