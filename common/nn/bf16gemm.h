/*
 * Matrix products on bf16 operands with fp32 sums, for the sequence model's mixed precision
 * (nn/lstm.c). Two kinds:
 * - nn_bf16_gemm_packed, an own AVX512-BF16 kernel for a few rows (the series of a batch)
 *   against a large weight matrix, the LSTM recurrence: there the weights are read once per
 *   call and their bytes set the time, so bf16 weights halve it. It broadcasts pairs of A
 *   against 16-column panels of W (vdpbf16ps), reading W once, in order, whatever the rows
 *   of A. It, the packing and large roundings split the work over OMP_NUM_THREADS threads
 *   (all online CPUs when unset); each output column is one thread's, so the result does
 *   not depend on the count.
 * - nn_bf16_matmul, oneDNN's matmul primitive on bf16 operands, for compute-bound products.
 *
 * A bf16 value is the upper half of an fp32; nn_bf16_from_f32 (nn/checkpoint.h) rounds to
 * nearest even, as torch's .to(torch.bfloat16) does, and so does nn_bf16_round_rows, except
 * that it flushes subnormals to zero (vcvtne2ps2bf16), as the products read them anyway.
 * The product of two bf16 values is exact in fp32 and the sums are fp32, so a product equals
 * the fp32 product of the rounded operands up to the order of the additions.
 * Everything here needs AVX512-BF16 (nn_bf16_available); the callers fall back to fp32.
 */
#ifndef ICH_NN_BF16GEMM_H
#define ICH_NN_BF16GEMM_H

#include <stddef.h>
#include <stdint.h>

/* The bits of a bf16 value; nn/checkpoint.h converts (nn_bf16_from_f32, nn_bf16_to_f32). */
typedef uint16_t nn_bf16_t;

/* 1 when this CPU runs the kernels below (AVX512-BF16). */
int nn_bf16_available(void);

/* dst[r][c] = bf16(src[r][c]) for rows x cols, row strides in elements. */
void nn_bf16_round_rows(const float *src, long rows, long cols, long src_stride,
                        nn_bf16_t *dst, long dst_stride);

/*
 * A K x N matrix W rounded into the layout of nn_bf16_gemm_packed: panels of 16 columns, each
 * K/2 (rounded up) rows of 16 pairs (rows 2i and 2i + 1 of one column side by side),
 * zero-padded; nn_bf16_packed_count gives its size in elements. W[r][c] is w[r * ldw + c],
 * or w[c * ldw + r] when transposed (w then holds W^T, row-major).
 */
size_t nn_bf16_packed_count(long k, long n);
void nn_bf16_pack(const float *w, long ldw, int transposed, long k, long n,
                  nn_bf16_t *packed);

/* C[m][n] = sum_k A[m][k] W[k][n] + beta C[m][n], W packed by nn_bf16_pack. Not thread-safe
 * from 5 rows on (its scratch is kept from call to call): one caller thread at a time. */
void nn_bf16_gemm_packed(long m, long n, long k, const nn_bf16_t *a, long lda,
                         const nn_bf16_t *packed, float beta, float *c, long ldc);

/*
 * C = op(A) op(B) (+ bias[n] broadcast over rows) (+ C when accumulate): A, B bf16 row-major,
 * op 'N' or 'T' as nn_sgemm, C fp32 [m][ldc]. Through oneDNN's matmul primitive (its brgemm
 * AVX512-BF16 kernels), for the compute-bound products: a primitive per shape, made on first
 * use and kept (at most 64 shapes, then the oldest goes). Not thread-safe: one caller thread
 * at a time.
 */
void nn_bf16_matmul(char trans_a, char trans_b, long m, long n, long k, const nn_bf16_t *a,
                    long lda, const nn_bf16_t *b, long ldb, const float *bias, int accumulate,
                    float *c, long ldc);

/*
 * A weight matrix W (n x k, fp32, row-major with rows ldw apart) rounded to bf16 in oneDNN's
 * own blocked layout for products with W^T, so that nn_bf16_matmul_weights skips the copy of
 * B that nn_bf16_matmul makes into that layout on every call (at m 640 against a 8192 x 6144
 * W: 150 against 160 ms a call; packing takes about half a call, once). For inference, where
 * the same weights serve many batches. The layout does not depend on m.
 * A cache holds one weight's packed copy: nn_bf16_weights_cached packs w when the copy was
 * made from another tensor or `from` was reset to NULL (the weights changed in place);
 * nn_bf16_weights_cache_free drops it (an all-zero cache is empty).
 */
typedef struct nn_bf16_weights nn_bf16_weights_t;
typedef struct {
    nn_bf16_weights_t *packed;
    const float *from; /* the weight packed; NULL: none, or stale */
} nn_bf16_weights_cache_t;
const nn_bf16_weights_t *nn_bf16_weights_cached(nn_bf16_weights_cache_t *cache,
                                                const float *w, long n, long k, long ldw);
void nn_bf16_weights_cache_free(nn_bf16_weights_cache_t *cache);

/* C[m][n] = A W^T (+ bias[n] broadcast over rows), A bf16 [m][lda], C fp32 [m][ldc], W packed
 * by nn_bf16_weights_cached with this n and k. Thread safety as nn_bf16_matmul. */
void nn_bf16_matmul_weights(long m, long n, long k, const nn_bf16_t *a, long lda,
                            const nn_bf16_weights_t *weights, const float *bias, float *c,
                            long ldc);

#endif
