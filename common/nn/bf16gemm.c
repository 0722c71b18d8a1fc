/* bf16 products with fp32 sums on AVX512-BF16 (see bf16gemm.h). */
#include "nn/bf16gemm.h"

#include "check.h"
#include "exitcodes.h"
#include "log.h"
#include "nn/checkpoint.h"
#include "nn/team.h"

#include <dnnl.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define DNNL_OK(call)                                                                         \
    do {                                                                                      \
        dnnl_status_t status_ = (call);                                                       \
        if (status_ != dnnl_success)                                                          \
            die(EXIT_INTERNAL, "%s:%d: %s failed (oneDNN status %d)", __FILE__, __LINE__,      \
                #call, (int)status_);                                                         \
    } while (0)

#define BF16_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl")))

/* Register blocking: BLOCK_ROWS rows of A by BLOCK_COLS panels of 16 columns of C at once,
 * 16 accumulators of the 32 vector registers. */
enum { BLOCK_ROWS = 4, BLOCK_COLS = 4, PANEL = 16 };

/* Panels of one task of the product. */
enum { PACKED_TASK_PANELS = 4 };

int nn_bf16_available(void)
{
    return __builtin_cpu_supports("avx512bf16") != 0;
}

static void require_kernels(void)
{
    if (!nn_bf16_available())
        die(EXIT_INTERNAL, "bf16 products need AVX512-BF16, which this CPU lacks");
}

typedef struct {
    const float *src;
    long rows, cols, src_stride, dst_stride;
    nn_bf16_t *dst;
} round_job_t;

enum { ROUND_TASK_ROWS = 64 };

/* Rows of one task: 32 values at a time by vcvtne2ps2bf16 (nearest even, as
 * nn_bf16_from_f32, subnormals flushed: the products read them as zero anyway), the rest
 * one by one. */
BF16_TARGET static void round_task(size_t task, int thread, void *ctx)
{
    (void)thread;
    const round_job_t *job = ctx;
    long r_to = ((long)task + 1) * ROUND_TASK_ROWS < job->rows
                    ? ((long)task + 1) * ROUND_TASK_ROWS : job->rows;
    for (long r = (long)task * ROUND_TASK_ROWS; r < r_to; r++) {
        const float *src = job->src + r * job->src_stride;
        nn_bf16_t *dst = job->dst + r * job->dst_stride;
        long c = 0;
        for (; c + 32 <= job->cols; c += 32)
            _mm512_storeu_si512(dst + c, (__m512i)_mm512_cvtne2ps_pbh(
                                             _mm512_loadu_ps(src + c + 16),
                                             _mm512_loadu_ps(src + c)));
        for (; c < job->cols; c++)
            dst[c] = nn_bf16_from_f32(src[c]);
    }
}

void nn_bf16_round_rows(const float *src, long rows, long cols, long src_stride,
                        nn_bf16_t *dst, long dst_stride)
{
    require_kernels();
    round_job_t job = {src, rows, cols, src_stride, dst_stride, dst};
    size_t tasks = (size_t)((rows + ROUND_TASK_ROWS - 1) / ROUND_TASK_ROWS);
    /* Threads only pay for large matrices (weights); a step's activations stay on one. */
    int threads = (double)rows * cols >= 1 << 20 ? nn_team_threads() : 1;
    nn_team_for(threads, tasks, round_task, &job);
}

static inline float store_value(float sum, float beta, const float *c)
{
    return beta == 0.0f ? sum : sum + beta * *c;
}

/* ---- C = A W with W packed in column panels: pairs of A broadcast against a panel row ---- */

static long panels_of(long n)
{
    return (n + PANEL - 1) / PANEL;
}

static long pairs_of(long k)
{
    return (k + 1) / 2;
}

size_t nn_bf16_packed_count(long k, long n)
{
    return (size_t)panels_of(n) * (size_t)pairs_of(k) * PANEL * 2;
}

typedef struct {
    const float *w;
    long k, n, ldw;
    int transposed;
    nn_bf16_t *packed;
} pack_job_t;

/* Element (row, column) of W in the packed layout's rounding, zero outside k x n. */
static nn_bf16_t packed_value(const pack_job_t *job, long row, long column)
{
    if (row >= job->k || column >= job->n)
        return 0;
    return nn_bf16_from_f32(job->transposed ? job->w[column * job->ldw + row]
                                            : job->w[row * job->ldw + column]);
}

enum { PACK_TASK_PAIRS = 32 };

/*
 * The pairs of one task of a row-major W into every full panel: the two rows of a pair read
 * in order, 16 values of each at a time rounded together (vcvtne2ps2bf16 rounds to nearest
 * even as nn_bf16_from_f32 does; it flushes subnormals, which the product's vdpbf16ps reads
 * as zero anyway) and interleaved.
 */
BF16_TARGET static void pack_rows_task(size_t task, int thread, void *ctx)
{
    (void)thread;
    static const uint16_t order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30,
                                       15, 31};
    const pack_job_t *job = ctx;
    const __m512i interleave = _mm512_loadu_si512(order);
    const long pairs = pairs_of(job->k), full_pairs = job->k / 2, panels = job->n / PANEL;
    long from = (long)task * PACK_TASK_PAIRS;
    long to = from + PACK_TASK_PAIRS < full_pairs ? from + PACK_TASK_PAIRS : full_pairs;

    for (long pair = from; pair < to; pair++) {
        const float *even = job->w + 2 * pair * job->ldw;
        for (long p = 0; p < panels; p++) {
            __m512i both = (__m512i)_mm512_cvtne2ps_pbh(
                _mm512_loadu_ps(even + job->ldw + p * PANEL), _mm512_loadu_ps(even + p * PANEL));
            _mm512_storeu_si512(job->packed + ((size_t)p * pairs + pair) * PANEL * 2,
                                _mm512_permutexvar_epi16(interleave, both));
        }
    }
}

/* The same for W given transposed: 16 rows of w give 16 pairs of each of the 16 columns,
 * a 16 x 16 transpose of 32-bit pairs. groups counts 16 pairs. */
BF16_TARGET static void pack_columns_fast(const pack_job_t *job, long p, long groups,
                                          nn_bf16_t *panel)
{
    uint32_t block[PANEL][PANEL], out[PANEL];
    for (long g = 0; g < groups; g++) {
        for (int col = 0; col < PANEL; col++) {
            const float *src = job->w + (p * PANEL + col) * job->ldw + g * 2 * PANEL;
            __m512i pairs = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + PANEL),
                                                         _mm512_loadu_ps(src));
            _mm512_storeu_si512(block[col], pairs);
        }
        for (int i = 0; i < PANEL; i++) {
            for (int col = 0; col < PANEL; col++)
                out[col] = block[col][i];
            memcpy(panel + (g * PANEL + i) * PANEL * 2, out, sizeof(out));
        }
    }
}

static void pack_panel(size_t panel_index, int thread, void *ctx)
{
    (void)thread;
    const pack_job_t *job = ctx;
    const long pairs = pairs_of(job->k), p = (long)panel_index;
    nn_bf16_t *panel = job->packed + (size_t)p * pairs * PANEL * 2;

    /* Full panels went (row-major W: pack_rows_task) or go through the vector code; what
     * it leaves, element by element. */
    long done = 0;
    if ((p + 1) * PANEL <= job->n) {
        if (job->transposed) {
            done = job->k / (2 * PANEL) * PANEL;
            pack_columns_fast(job, p, done / PANEL, panel);
        } else {
            done = job->k / 2;
        }
    }
    for (long pair = done; pair < pairs; pair++)
        for (int col = 0; col < PANEL; col++)
            for (int half = 0; half < 2; half++)
                panel[(pair * PANEL + col) * 2 + half] =
                    packed_value(job, 2 * pair + half, p * PANEL + col);
}

void nn_bf16_pack(const float *w, long ldw, int transposed, long k, long n,
                  nn_bf16_t *packed)
{
    require_kernels();
    pack_job_t job = {w, k, n, ldw, transposed, packed};
    if (!transposed)
        nn_team_for(nn_team_threads(), (size_t)((k / 2 + PACK_TASK_PAIRS - 1) / PACK_TASK_PAIRS),
                    pack_rows_task, &job);
    nn_team_for(nn_team_threads(), (size_t)panels_of(n), pack_panel, &job);
}

typedef struct {
    long m, n, k, lda, ldc;
    const nn_bf16_t *a, *packed;
    float beta;
    float *c;
    const uint32_t *a_pairs; /* A by pairs, [pair][m], when it has several blocks of rows */
    float *partial;          /* per thread: m x BLOCK_COLS panels of sums between chunks */
} packed_job_t;

/* A[i][2 pair], A[i][2 pair + 1] as one 32-bit lane (zero past k). */
static inline uint32_t a_pair(const packed_job_t *job, long i, long pair)
{
    const nn_bf16_t *row = job->a + i * job->lda + 2 * pair;
    uint32_t high = 2 * pair + 1 < job->k ? row[1] : 0;
    return (uint32_t)row[0] | high << 16;
}

/* The mask of the columns of panel p inside n. */
static inline __mmask16 panel_mask(const packed_job_t *job, long p)
{
    long left = job->n - p * PANEL;
    return left >= PANEL ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* Where a block's sums start from (src, times scale; scale 0: from zero) and go (dst); both
 * address row m0 and panel p0's first column, ld apart. */
typedef struct {
    const float *src;
    float *dst;
    long src_ld, dst_ld;
    float scale;
} sums_t;

/*
 * Rows m0.. by panels p0.. over pairs [from, to), starting from and ending in `sums`. The
 * loops are unrolled so that the accumulators stay in registers (GCC -O2 keeps them in
 * memory otherwise: 3x slower when compute-bound).
 */
BF16_TARGET static inline __attribute__((always_inline)) void
packed_block(int rows, int panels, const packed_job_t *job, long m0, long p0, long from,
             long to, const sums_t *sums)
{
    const long pairs = pairs_of(job->k), full_pairs = job->k / 2;
    const size_t panel_size = (size_t)pairs * PANEL * 2;
    const nn_bf16_t *w = job->packed + (size_t)p0 * panel_size;
    __m512 acc[BLOCK_ROWS][BLOCK_COLS] = {{_mm512_setzero_ps()}}; /* all set: no warnings */
#pragma GCC unroll 4
    for (int i = 0; i < rows; i++)
#pragma GCC unroll 4
        for (int j = 0; j < panels; j++) {
            const float *c = sums->src + i * sums->src_ld + j * PANEL;
            acc[i][j] = sums->scale == 0.0f
                            ? _mm512_setzero_ps()
                            : _mm512_mul_ps(_mm512_set1_ps(sums->scale),
                                            _mm512_maskz_loadu_ps(panel_mask(job, p0 + j), c));
        }

    for (long pair = from; pair < to; pair++) {
        __m512i wv[BLOCK_COLS] = {_mm512_setzero_si512()};
#pragma GCC unroll 4
        for (int j = 0; j < panels; j++)
            wv[j] = _mm512_loadu_si512(w + j * panel_size + (size_t)pair * PANEL * 2);
#pragma GCC unroll 4
        for (int i = 0; i < rows; i++) {
            uint32_t lane;
            if (job->a_pairs)
                lane = job->a_pairs[pair * job->m + m0 + i];
            else if (pair < full_pairs)
                memcpy(&lane, job->a + (m0 + i) * job->lda + 2 * pair, sizeof(lane));
            else
                lane = a_pair(job, m0 + i, pair);
            __m512i av = _mm512_set1_epi32((int)lane);
#pragma GCC unroll 4
            for (int j = 0; j < panels; j++)
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)av, (__m512bh)wv[j]);
        }
    }

#pragma GCC unroll 4
    for (int j = 0; j < panels; j++)
#pragma GCC unroll 4
        for (int i = 0; i < rows; i++)
            _mm512_mask_storeu_ps(sums->dst + i * sums->dst_ld + j * PANEL,
                                  panel_mask(job, p0 + j), acc[i][j]);
}

/*
 * Pairs per chunk when A has several blocks of rows: the chunk of BLOCK_COLS panels (16 KiB)
 * stays in L1 while every block reads it. Between chunks the sums wait in the thread's own
 * partial buffer, and A is read by pairs from one interleaved copy: C's rows (a step apart
 * in the sequence model's layout) and A's (H apart) lie a multiple of 4 KiB apart, which
 * maps them all onto the same few L1 sets, where they evicted the chunk (16 rows at H 2048:
 * 3.1 ms a call in some processes, 1.95 in others; 1.6-1.75 with the copies).
 */
enum { CHUNK_PAIRS = 64, PARTIAL_COLS = BLOCK_COLS * PANEL };

BF16_TARGET static void packed_task(size_t task, int thread, void *ctx)
{
    const packed_job_t *job = ctx;
    long p_from = (long)task * PACKED_TASK_PANELS, all = panels_of(job->n);
    long p_to = p_from + PACKED_TASK_PANELS < all ? p_from + PACKED_TASK_PANELS : all;

    const int chunked = job->m > BLOCK_ROWS;
    const long pairs = pairs_of(job->k), chunk = chunked ? CHUNK_PAIRS : pairs;
    float *partial = chunked ? job->partial + (size_t)thread * job->m * PARTIAL_COLS : NULL;
    for (long p0 = p_from; p0 < p_to; p0 += BLOCK_COLS) {
        int panels = p_to - p0 < BLOCK_COLS ? (int)(p_to - p0) : BLOCK_COLS;
        for (long from = 0; from < pairs; from += chunk) {
            long to = from + chunk < pairs ? from + chunk : pairs;
            for (long m0 = 0; m0 < job->m; m0 += BLOCK_ROWS) {
                int rows = job->m - m0 < BLOCK_ROWS ? (int)(job->m - m0) : BLOCK_ROWS;
                float *c = job->c + m0 * job->ldc + p0 * PANEL;
                float *mine = chunked ? partial + m0 * PARTIAL_COLS : c;
                long mine_ld = chunked ? PARTIAL_COLS : job->ldc;
                sums_t sums = {mine, mine, mine_ld, mine_ld, 1.0f};
                if (from == 0)
                    sums = (sums_t){c, sums.dst, job->ldc, mine_ld, job->beta};
                if (to == pairs)
                    sums.dst = c, sums.dst_ld = job->ldc;
                if (rows == BLOCK_ROWS && panels == BLOCK_COLS)
                    packed_block(BLOCK_ROWS, BLOCK_COLS, job, m0, p0, from, to, &sums);
                else if (panels == BLOCK_COLS)
                    packed_block(rows, BLOCK_COLS, job, m0, p0, from, to, &sums);
                else
                    packed_block(rows, panels, job, m0, p0, from, to, &sums);
            }
        }
    }
}

/* The interleaved A and the partial sums, kept from call to call (the calls come from one
 * thread at a time). */
static struct {
    void *memory;
    size_t bytes;
} chunk_scratch;

void nn_bf16_gemm_packed(long m, long n, long k, const nn_bf16_t *a, long lda,
                         const nn_bf16_t *packed, float beta, float *c, long ldc)
{
    if (m <= 0 || n <= 0)
        return;
    require_kernels();
    packed_job_t job = {m, n, k, lda, ldc, a, packed, beta, c, NULL, NULL};
    int threads = nn_team_threads();
    if (m > BLOCK_ROWS) {
        long pairs = pairs_of(k), full_pairs = k / 2;
        size_t pair_bytes = (size_t)pairs * m * sizeof(uint32_t);
        size_t bytes = pair_bytes + (size_t)threads * m * PARTIAL_COLS * sizeof(float);
        if (bytes > chunk_scratch.bytes) {
            free(chunk_scratch.memory);
            chunk_scratch.memory = xmalloc(bytes);
            chunk_scratch.bytes = bytes;
        }
        uint32_t *a_pairs = chunk_scratch.memory;
        for (long i = 0; i < m; i++) {
            const nn_bf16_t *row = a + i * lda;
            for (long pair = 0; pair < full_pairs; pair++)
                memcpy(&a_pairs[pair * m + i], row + 2 * pair, sizeof(uint32_t));
            if (full_pairs < pairs)
                a_pairs[full_pairs * m + i] = a_pair(&job, i, full_pairs);
        }
        job.a_pairs = a_pairs;
        job.partial = (float *)((char *)chunk_scratch.memory + pair_bytes);
    }
    size_t tasks = (size_t)((panels_of(n) + PACKED_TASK_PANELS - 1) / PACKED_TASK_PANELS);
    /* On the engine's threads (measured with 2 on the quiet machine: at 4 rows 0.40-0.45 ms
     * a call against 0.68 on one thread, at 16 rows 1.6-1.75 ms against 2.9). */
    nn_team_for(threads, tasks, packed_task, &job);
}

/* ---- compute-bound products: oneDNN's matmul primitive on bf16 operands ---- */

/* The shape, strides and options a primitive was made for. */
typedef struct {
    long m, n, k, lda, ldb, ldc;
    char trans_a, trans_b;
    int bias, accumulate;
    int packed_b; /* B in the primitive's own layout (nn_bf16_weights_t): ldb, trans_b unused */
} matmul_key_t;

typedef struct {
    matmul_key_t key;
    dnnl_primitive_t primitive;
    dnnl_memory_t a, b, c, bias;
} matmul_plan_t;

/* The shapes of a model's products are few (per LSTM layer: forward, three backward). */
enum { MATMUL_PLANS = 64 };

static struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    matmul_plan_t plans[MATMUL_PLANS];
    int count, next_evicted;
} matmuls;

/* A 2-D descriptor for op(X) with dims rows x cols of the product, X stored row-major with
 * leading dimension ld: 'N' X [rows][ld], 'T' X [cols][ld]. */
static void operand_desc(dnnl_memory_desc_t *md, long rows, long cols, char trans, long ld,
                         dnnl_data_type_t type)
{
    dnnl_dims_t dims = {rows, cols};
    dnnl_dims_t strides = {ld, 1};
    if (trans == 'T') {
        strides[0] = 1;
        strides[1] = ld;
    }
    DNNL_OK(dnnl_memory_desc_init_by_strides(md, 2, dims, type, strides));
}

/*
 * The plan for key, made on first use. With packed_b, B's layout is b_layout, or (NULL) the
 * one the primitive chooses for these n and k.
 */
static matmul_plan_t *matmul_plan(const matmul_key_t *key, const dnnl_memory_desc_t *b_layout)
{
    for (int i = 0; i < matmuls.count; i++)
        if (memcmp(&matmuls.plans[i].key, key, sizeof(*key)) == 0)
            return &matmuls.plans[i];
    if (!matmuls.engine) {
        DNNL_OK(dnnl_engine_create(&matmuls.engine, dnnl_cpu, 0));
        DNNL_OK(dnnl_stream_create(&matmuls.stream, matmuls.engine, dnnl_stream_default_flags));
    }
    matmul_plan_t *plan;
    if (matmuls.count < MATMUL_PLANS) {
        plan = &matmuls.plans[matmuls.count++];
    } else {
        plan = &matmuls.plans[matmuls.next_evicted];
        matmuls.next_evicted = (matmuls.next_evicted + 1) % MATMUL_PLANS;
        dnnl_primitive_destroy(plan->primitive);
        dnnl_memory_destroy(plan->a);
        dnnl_memory_destroy(plan->b);
        dnnl_memory_destroy(plan->c);
        if (plan->bias)
            dnnl_memory_destroy(plan->bias);
    }
    memset(plan, 0, sizeof(*plan));
    plan->key = *key;

    dnnl_memory_desc_t a, b, c, bias;
    operand_desc(&a, key->m, key->k, key->trans_a, key->lda, dnnl_bf16);
    if (key->packed_b && b_layout) {
        b = *b_layout;
    } else if (key->packed_b) {
        dnnl_dims_t dims = {key->k, key->n};
        DNNL_OK(dnnl_memory_desc_init_by_tag(&b, 2, dims, dnnl_bf16, dnnl_format_tag_any));
    } else {
        operand_desc(&b, key->k, key->n, key->trans_b, key->ldb, dnnl_bf16);
    }
    operand_desc(&c, key->m, key->n, 'N', key->ldc, dnnl_f32);
    operand_desc(&bias, 1, key->n, 'N', key->n, dnnl_f32);
    dnnl_matmul_desc_t desc;
    DNNL_OK(dnnl_matmul_desc_init(&desc, &a, &b, key->bias ? &bias : NULL, &c));
    dnnl_primitive_attr_t attr;
    DNNL_OK(dnnl_primitive_attr_create(&attr));
    if (key->accumulate) {
        dnnl_post_ops_t ops;
        DNNL_OK(dnnl_post_ops_create(&ops));
        DNNL_OK(dnnl_post_ops_append_sum(ops, 1.0f));
        DNNL_OK(dnnl_primitive_attr_set_post_ops(attr, ops));
        dnnl_post_ops_destroy(ops);
    }
    dnnl_primitive_desc_t pd;
    DNNL_OK(dnnl_primitive_desc_create(&pd, &desc, attr, matmuls.engine, NULL));
    if (key->packed_b)
        b = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const char *impl = "";
    DNNL_OK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    static int told;
    if (strncmp(impl, "ref", 3) == 0 && !told++)
        log_warn("bf16 matmul: oneDNN has only its reference implementation for %ld x %ld x "
                 "%ld products here (%s): correct, but slow", key->m, key->n, key->k, impl);
    DNNL_OK(dnnl_primitive_create(&plan->primitive, pd));
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    DNNL_OK(dnnl_memory_create(&plan->a, &a, matmuls.engine, DNNL_MEMORY_NONE));
    DNNL_OK(dnnl_memory_create(&plan->b, &b, matmuls.engine, DNNL_MEMORY_NONE));
    DNNL_OK(dnnl_memory_create(&plan->c, &c, matmuls.engine, DNNL_MEMORY_NONE));
    if (key->bias)
        DNNL_OK(dnnl_memory_create(&plan->bias, &bias, matmuls.engine, DNNL_MEMORY_NONE));
    return plan;
}

/* Runs the product of `key` on these operands (the plan made on first use; b_layout as
 * matmul_plan's). */
static void matmul_run(const matmul_key_t *key, const dnnl_memory_desc_t *b_layout,
                       const nn_bf16_t *a, const void *b, const float *bias, float *c)
{
    matmul_plan_t *plan = matmul_plan(key, b_layout);

    DNNL_OK(dnnl_memory_set_data_handle(plan->a, (void *)a));
    DNNL_OK(dnnl_memory_set_data_handle(plan->b, (void *)b));
    DNNL_OK(dnnl_memory_set_data_handle(plan->c, c));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, plan->a}, {DNNL_ARG_WEIGHTS, plan->b},
                               {DNNL_ARG_DST, plan->c}, {DNNL_ARG_BIAS, plan->bias}};
    if (bias)
        DNNL_OK(dnnl_memory_set_data_handle(plan->bias, (void *)bias));
    DNNL_OK(dnnl_primitive_execute(plan->primitive, matmuls.stream, bias ? 4 : 3, args));
    DNNL_OK(dnnl_stream_wait(matmuls.stream));
}

static matmul_key_t matmul_key(long m, long n, long k, long lda, long ldc, const float *bias)
{
    matmul_key_t key;
    memset(&key, 0, sizeof(key)); /* compared with memcmp: no stray padding bytes */
    key.m = m;
    key.n = n;
    key.k = k;
    key.lda = lda;
    key.ldc = ldc;
    key.trans_a = 'N';
    key.bias = bias != NULL;
    return key;
}

void nn_bf16_matmul(char trans_a, char trans_b, long m, long n, long k, const nn_bf16_t *a,
                    long lda, const nn_bf16_t *b, long ldb, const float *bias, int accumulate,
                    float *c, long ldc)
{
    if (m <= 0 || n <= 0)
        return;
    if (k <= 0) {
        for (long i = 0; i < m && !accumulate; i++)
            for (long j = 0; j < n; j++)
                c[i * ldc + j] = bias ? bias[j] : 0.0f;
        return;
    }
    matmul_key_t key = matmul_key(m, n, k, lda, ldc, bias);
    key.ldb = ldb;
    key.trans_a = trans_a;
    key.trans_b = trans_b;
    key.accumulate = accumulate != 0;
    matmul_run(&key, NULL, a, b, bias, c);
}

/* The layout a plan's primitive reads B in. */
static const dnnl_memory_desc_t *plan_weights_layout(const matmul_plan_t *plan)
{
    const_dnnl_primitive_desc_t pd;
    DNNL_OK(dnnl_primitive_get_primitive_desc(plan->primitive, &pd));
    return dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
}

struct nn_bf16_weights {
    long n, k;
    dnnl_memory_desc_t layout; /* the matmul primitive's choice for B = W^T */
    void *data;
};

/* W packed into reuse when its shape matches, else into a new one. */
static nn_bf16_weights_t *weights_pack(const float *w, long n, long k, long ldw,
                                       nn_bf16_weights_t *reuse)
{
    if (reuse && (reuse->n != n || reuse->k != k)) {
        free(reuse->data);
        free(reuse);
        reuse = NULL;
    }
    nn_bf16_weights_t *packed = reuse;
    if (!packed) {
        /* The layout the primitive asks for, read off one made for these n and k (every row
         * count's primitive is then made for it). */
        if (n <= 0 || k <= 0)
            die(EXIT_INTERNAL, "bf16 matmul: cannot pack %ld x %ld weights", n, k);
        matmul_key_t key = matmul_key(1, n, k, k, n, NULL);
        key.packed_b = 1;
        packed = xcalloc(1, sizeof(*packed));
        packed->n = n;
        packed->k = k;
        packed->layout = *plan_weights_layout(matmul_plan(&key, NULL));
        packed->data = xmalloc(dnnl_memory_desc_get_size(&packed->layout));
    }

    /* One oneDNN reorder: fp32 W^T, read through strides, into bf16 blocks. */
    dnnl_memory_desc_t plain;
    dnnl_dims_t dims = {k, n}, strides = {1, ldw};
    DNNL_OK(dnnl_memory_desc_init_by_strides(&plain, 2, dims, dnnl_f32, strides));
    dnnl_primitive_desc_t pd;
    DNNL_OK(dnnl_reorder_primitive_desc_create(&pd, &plain, matmuls.engine, &packed->layout,
                                               matmuls.engine, NULL));
    dnnl_primitive_t reorder;
    DNNL_OK(dnnl_primitive_create(&reorder, pd));
    dnnl_primitive_desc_destroy(pd);
    dnnl_memory_t from, to;
    DNNL_OK(dnnl_memory_create(&from, &plain, matmuls.engine, (void *)w));
    DNNL_OK(dnnl_memory_create(&to, &packed->layout, matmuls.engine, packed->data));
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    DNNL_OK(dnnl_primitive_execute(reorder, matmuls.stream, 2, args));
    DNNL_OK(dnnl_stream_wait(matmuls.stream));
    dnnl_memory_destroy(from);
    dnnl_memory_destroy(to);
    dnnl_primitive_destroy(reorder);
    return packed;
}

const nn_bf16_weights_t *nn_bf16_weights_cached(nn_bf16_weights_cache_t *cache,
                                                const float *w, long n, long k, long ldw)
{
    if (cache->from != w) {
        cache->packed = weights_pack(w, n, k, ldw, cache->packed);
        cache->from = w;
    }
    return cache->packed;
}

void nn_bf16_weights_cache_free(nn_bf16_weights_cache_t *cache)
{
    if (cache->packed)
        free(cache->packed->data);
    free(cache->packed);
    cache->packed = NULL;
    cache->from = NULL;
}

void nn_bf16_matmul_weights(long m, long n, long k, const nn_bf16_t *a, long lda,
                            const nn_bf16_weights_t *weights, const float *bias, float *c,
                            long ldc)
{
    if (weights->n != n || weights->k != k)
        die(EXIT_INTERNAL, "bf16 matmul: weights packed as %ld x %ld used as %ld x %ld",
            weights->n, weights->k, n, k);
    if (m <= 0)
        return; /* n and k are positive: packing refuses others */
    matmul_key_t key = matmul_key(m, n, k, lda, ldc, bias);
    key.packed_b = 1;
    /* The primitive made for these rows reads B in the layout it was packed in, which it
     * would choose anyway here (BA16a64b2a for every row count). */
    matmul_run(&key, &weights->layout, a, weights->data, bias, c);
}
