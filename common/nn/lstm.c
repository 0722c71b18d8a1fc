/* Bidirectional LSTM, forward and backward, fp32 or bf16 products on the host (lstm.h). */
#include "nn/lstm.h"

#include "check.h"
#include "exitcodes.h"
#include "log.h"
#include "nn/nn.h"
#include "nn/seq_math.h"
#include "nn/team.h"

#include <dnnl.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

/* The own fp32 recurrence kernels (below): up to REC_MAX_ROWS series, W_hh read 4 rows at a
 * time; the backward in REC_BWD_TASKS row ranges whose partial sums are then added in order. */
enum { REC_MAX_ROWS = 4, REC_QUAD = 4, REC_TASK_QUADS = 16, REC_BWD_TASKS = 16 };

/*
 * Products under this many multiply-adds run on one thread: under CPU contention each
 * parallel call waits out a descheduled thread's timeslice at its barrier (the demo's
 * sequence model, both cores busy: 1.8-1.9 s for 3 epochs against 2.3-3.0 with every
 * product threaded; idle: 0.66-0.68 s against 0.64-0.72). oneDNN's sgemm reads the thread
 * count at each call; on those shapes it gave the same predictions, bit for bit, either way.
 */
#define SGEMM_PARALLEL_MIN (1L << 22)

void nn_sgemm(char trans_a, char trans_b, long m, long n, long k, float alpha, const float *a,
              long lda, const float *b, long ldb, float beta, float *c, long ldc)
{
    if (m == 0 || n == 0)
        return;
    int one = (double)m * n * k < (double)SGEMM_PARALLEL_MIN;
    int threads = omp_get_max_threads();
    if (one)
        omp_set_num_threads(1);
    dnnl_status_t st = dnnl_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                                  ldc);
    if (one)
        omp_set_num_threads(threads);
    if (st != dnnl_success)
        die(EXIT_INTERNAL, "oneDNN sgemm %ldx%ldx%ld failed (status %d)", m, n, k, (int)st);
}

/*
 * dst[c * ldd + r] = src[r][c] (+ bias[r] unless NULL) for src [rows][cols], in tiles that
 * stay in cache.
 */
static void transpose(const float *src, long rows, long cols, const float *bias, float *dst,
                      long ldd)
{
    enum { TILE = 32 };
    for (long r0 = 0; r0 < rows; r0 += TILE)
        for (long c0 = 0; c0 < cols; c0 += TILE) {
            long r1 = r0 + TILE < rows ? r0 + TILE : rows;
            long c1 = c0 + TILE < cols ? c0 + TILE : cols;
            for (long r = r0; r < r1; r++) {
                float add = bias ? bias[r] : 0.0f;
                for (long c = c0; c < c1; c++)
                    dst[c * ldd + r] = bias ? add + src[r * cols + c] : src[r * cols + c];
            }
        }
}

void nn_sgemm_bias_nt(long m, long n, long k, const float *a, long lda, const float *b,
                      long ldb, const float *bias, float *c, long ldc, float *scratch)
{
    if (m == 0 || n == 0)
        return;

    /* C^T = B A^T: the large weight matrix B is then oneDNN's plain 'N' operand. */
    nn_sgemm('N', 'T', n, m, k, 1.0f, b, ldb, a, lda, 0.0f, scratch, m);

    /* Back to C's layout, adding the bias on the way. */
    transpose(scratch, n, m, bias, c, ldc);
}

void nn_lstm_init(nn_lstm_t *l, int in, int hidden, int pad_like_original)
{
    memset(l, 0, sizeof(*l));
    l->in = in;
    l->hidden = hidden;
    l->pad_like_original = pad_like_original;
    l->gate_task_units = 512;
    l->vector_kernels = __builtin_cpu_supports("avx512f") != 0;
    l->gate_parallel_min = 1 << 14;
    l->rec_parallel_min = 1 << 19;
}

/* Threads for one call of the recurrence kernels over rows series (rec_parallel_min). */
static int rec_threads(const nn_lstm_t *l, int rows)
{
    size_t macs = 4 * (size_t)l->hidden * (size_t)l->hidden * (size_t)rows;
    return macs >= l->rec_parallel_min ? nn_team_threads() : 1;
}

void nn_lstm_free(nn_lstm_t *l)
{
    for (int d = 0; d < 2; d++) {
        free(l->gates[d]);
        free(l->cells[d]);
    }
    free(l->dgates);
    free(l->h_prev);
    free(l->carry_h);
    free(l->carry_c);
    free(l->rec_partial);
    free(l->rec_pad);
    free(l->rec_bf16);
    free(l->x_bf16);
    free(l->dgates_bf16);
    free(l->h_prev_bf16);
    free(l->bias_sum);
    for (int d = 0; d < 2; d++) {
        free(l->w_hh_t[d]);
        free(l->w_hh_fwd_bf16[d]);
        free(l->w_hh_bwd_bf16[d]);
        free(l->w_ih_bf16[d]);
        nn_bf16_weights_cache_free(&l->w_ih_packed[d]);
    }
    memset(l, 0, sizeof(*l));
}

int nn_lstm_set_precision(nn_lstm_t *l, int precision)
{
    static int told;
    if (precision == NN_PRECISION_BF16 && !nn_bf16_available()) {
        if (!told)
            log_warn("this CPU has no AVX512-BF16: the LSTM's products stay fp32");
        told = 1;
        precision = NN_PRECISION_FP32;
    }
    l->precision = precision;
    return precision;
}

void nn_lstm_weights_changed(nn_lstm_t *l)
{
    for (int d = 0; d < 2; d++)
        l->w_hh_t_of[d] = l->w_hh_fwd_of[d] = l->w_hh_bwd_of[d] = l->w_ih_of[d] =
            l->w_ih_packed[d].from = NULL;
}

void nn_lstm_set_inference(nn_lstm_t *l, int inference)
{
    l->inference = inference != 0;
    for (int d = 0; d < 2; d++) {
        if (inference) {
            free(l->w_ih_bf16[d]);
            free(l->w_hh_bwd_bf16[d]);
            l->w_ih_bf16[d] = l->w_hh_bwd_bf16[d] = NULL;
            l->w_ih_of[d] = l->w_hh_bwd_of[d] = NULL;
        } else {
            nn_bf16_weights_cache_free(&l->w_ih_packed[d]);
        }
    }
}

/* Grow the kept buffers to batch x steps rows. */
static void reserve(nn_lstm_t *l, int batch, int steps)
{
    size_t rows = (size_t)batch * steps, h = (size_t)l->hidden;

    if (rows > l->cap_rows) {
        for (int d = 0; d < 2; d++) {
            free(l->gates[d]);
            free(l->cells[d]);
            l->gates[d] = xmalloc(rows * 4 * h * sizeof(float));
            l->cells[d] = xmalloc(rows * h * sizeof(float));
        }
        free(l->dgates);
        free(l->h_prev);
        l->dgates = xmalloc(rows * 4 * h * sizeof(float));
        l->h_prev = xmalloc(rows * h * sizeof(float));
        l->cap_rows = rows;
    }
    if ((size_t)batch > l->cap_batch) {
        free(l->carry_h);
        free(l->carry_c);
        l->carry_h = xmalloc((size_t)batch * h * sizeof(float));
        l->carry_c = xmalloc((size_t)batch * h * sizeof(float));
        free(l->rec_bf16);
        l->rec_bf16 = xmalloc((size_t)batch * 4 * h * sizeof(nn_bf16_t));
        l->cap_batch = (size_t)batch;
    }
    if (l->precision == NN_PRECISION_BF16 && rows > l->cap_rows_bf16) {
        free(l->x_bf16);
        free(l->dgates_bf16);
        free(l->h_prev_bf16);
        l->x_bf16 = xmalloc(rows * (size_t)l->in * sizeof(nn_bf16_t));
        l->dgates_bf16 = xmalloc(rows * 4 * h * sizeof(nn_bf16_t));
        l->h_prev_bf16 = xmalloc(rows * h * sizeof(nn_bf16_t));
        l->cap_rows_bf16 = rows;
    }
    if (!l->bias_sum)
        l->bias_sum = xmalloc(4 * h * sizeof(float));
    if (!l->rec_partial) {
        l->rec_partial = xmalloc((size_t)REC_BWD_TASKS * REC_MAX_ROWS * h * sizeof(float));
        l->rec_pad = xcalloc((size_t)REC_MAX_ROWS * 4 * h, sizeof(float));
    }
}

static int active(const nn_lstm_t *l, int b, int t)
{
    return l->pad_like_original || t >= l->steps - l->lengths[b];
}

/* The step at position s of direction d's processing order, and the one before it. */
static int step_at(const nn_lstm_t *l, int d, int s)
{
    return d == 0 ? s : l->steps - 1 - s;
}

static int step_before(int d, int t)
{
    return d == 0 ? t - 1 : t + 1;
}

/*
 * From this many series on, the recurrence reads a transposed copy of W_hh: oneDNN's sgemm
 * with the weights transposed ('T') slows down sharply beyond a few rows (measured at 16 rows:
 * 84 ms a step against 24 ms untransposed), while at 4 rows both are memory bound alike and
 * the copy would only cost time.
 */
#define TRANSPOSED_RECURRENCE_MIN_BATCH 8

/*
 * The bf16 copy of W_hh a recurrent product reads (packed for nn_bf16_gemm_packed), made
 * when missing or stale: W_hh^T (H x 4H) for the forward's h_prev W_hh^T, W_hh (4H x H)
 * for the backward's dgates W_hh.
 */
static const nn_bf16_t *w_hh_bf16(nn_lstm_t *l, int d, const float *w_hh, int backward)
{
    const long H = l->hidden, G4 = 4L * H;
    nn_bf16_t **copy = backward ? &l->w_hh_bwd_bf16[d] : &l->w_hh_fwd_bf16[d];
    const float **of = backward ? &l->w_hh_bwd_of[d] : &l->w_hh_fwd_of[d];

    if (*of == w_hh)
        return *copy;

    /* Forward: products over H into 4H columns; backward: over 4H into H. The panels pad
     * the column count to whole panels, so the two sizes differ for some H. */
    long k = backward ? G4 : H, n = backward ? H : G4;
    if (!*copy)
        *copy = xmalloc(nn_bf16_packed_count(k, n) * sizeof(nn_bf16_t));
    nn_bf16_pack(w_hh, H, !backward, k, n, *copy);
    *of = w_hh;
    return *copy;
}

/* W_ih rounded to bf16 (made when missing or stale). */
static const nn_bf16_t *w_ih_bf16(nn_lstm_t *l, int d, const float *w_ih)
{
    if (l->w_ih_of[d] == w_ih)
        return l->w_ih_bf16[d];
    if (!l->w_ih_bf16[d])
        l->w_ih_bf16[d] = xmalloc(nn_lstm_w_ih_count(l) * sizeof(nn_bf16_t));
    nn_bf16_round_rows(w_ih, 4L * l->hidden, l->in, l->in, l->w_ih_bf16[d], l->in);
    l->w_ih_of[d] = w_ih;
    return l->w_ih_bf16[d];
}

/*
 * The gate arithmetic of one step for every series of the batch, in tasks of one series by
 * l->gate_task_units units on the engine's threads once the step has gate_parallel_min
 * units (the transcendentals of a step at batch 16 and hidden 2048 take about a millisecond
 * on one thread). Each unit is one task's, with the arithmetic of nn/seq_math.h, so the split
 * changes no result.
 */

typedef struct {
    nn_lstm_t *l;
    int d, s, t, tp; /* direction, position in its order, step, the step before */
    float *y;        /* forward: written; backward: read */
    const float *dy; /* backward only */
    int chunks;      /* tasks per series */
} gate_job_t;

/* What task `task` works on: series b's units [from, to) at step t (row), the row's gates and
 * cell, the cell of the step before (NULL where the recurrence starts), whether t is real. */
typedef struct {
    int b, from, to, active;
    size_t row;
    float *gates, *cell;
    const float *cell_prev;
} gate_span_t;

static gate_span_t gate_span(const gate_job_t *job, size_t task)
{
    nn_lstm_t *l = job->l;
    const int H = l->hidden, units = l->gate_task_units;
    gate_span_t span;
    span.b = (int)(task / (size_t)job->chunks);
    span.from = (int)(task % (size_t)job->chunks) * units;
    span.to = span.from + units < H ? span.from + units : H;
    span.active = active(l, span.b, job->t);
    span.row = (size_t)span.b * l->steps + job->t;
    span.gates = l->gates[job->d] + span.row * 4 * H;
    span.cell = l->cells[job->d] + span.row * H;
    span.cell_prev =
        job->s > 0 ? l->cells[job->d] + ((size_t)span.b * l->steps + job->tp) * H : NULL;
    return span;
}

/* Zero units [from, to) of a vector, or of each of the four gate blocks (blocks 4) of a row. */
static void zero_units(float *v, int blocks, int H, const gate_span_t *span)
{
    for (int k = 0; k < blocks; k++)
        memset(v + (size_t)k * H + span->from, 0, (size_t)(span->to - span->from) * sizeof(float));
}

/*
 * nn_lstm_unit_forward / _backward (nn/seq_math.h) 16 units at a time on AVX-512, the same
 * formulas with glibc's vector expf and tanhf (libmvec: within 4 ulp of the scalar ones).
 * The last lanes of a span are masked, not left to the scalar code, so each unit's result
 * does not depend on how the units are split into tasks.
 */
#define AVX512_TARGET __attribute__((target("avx512f")))

AVX512_TARGET __m512 _ZGVeN16v_expf(__m512 x);
AVX512_TARGET __m512 _ZGVeN16v_tanhf(__m512 x);

AVX512_TARGET static inline __m512 sigmoid16(__m512 z)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, _ZGVeN16v_expf(_mm512_sub_ps(
                                                     _mm512_setzero_ps(), z))));
}

static inline __mmask16 lanes_left(int left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

AVX512_TARGET static void forward_units16(float *a, size_t H, const float *c_prev, float *c,
                                          float *h, int from, int to)
{
    for (int j = from; j < to; j += 16) {
        const __mmask16 m = lanes_left(to - j);
        __m512 gi = sigmoid16(_mm512_maskz_loadu_ps(m, a + j));
        __m512 gf = sigmoid16(_mm512_maskz_loadu_ps(m, a + H + j));
        __m512 gg = _ZGVeN16v_tanhf(_mm512_maskz_loadu_ps(m, a + 2 * H + j));
        __m512 go = sigmoid16(_mm512_maskz_loadu_ps(m, a + 3 * H + j));
        __m512 carried = c_prev ? _mm512_mul_ps(gf, _mm512_maskz_loadu_ps(m, c_prev + j))
                                : _mm512_setzero_ps();
        __m512 cell = _mm512_add_ps(_mm512_mul_ps(gi, gg), carried);
        _mm512_mask_storeu_ps(a + j, m, gi);
        _mm512_mask_storeu_ps(a + H + j, m, gf);
        _mm512_mask_storeu_ps(a + 2 * H + j, m, gg);
        _mm512_mask_storeu_ps(a + 3 * H + j, m, go);
        _mm512_mask_storeu_ps(c + j, m, cell);
        _mm512_mask_storeu_ps(h + j, m, _mm512_mul_ps(go, _ZGVeN16v_tanhf(cell)));
    }
}

AVX512_TARGET static void backward_units16(const float *a, size_t H, const float *c,
                                           const float *c_prev, const float *dh_out,
                                           const float *carry_h, float *carry_c, float *da,
                                           int from, int to)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int j = from; j < to; j += 16) {
        const __mmask16 m = lanes_left(to - j);
        __m512 gi = _mm512_maskz_loadu_ps(m, a + j), gf = _mm512_maskz_loadu_ps(m, a + H + j);
        __m512 gg = _mm512_maskz_loadu_ps(m, a + 2 * H + j);
        __m512 go = _mm512_maskz_loadu_ps(m, a + 3 * H + j);
        __m512 tc = _ZGVeN16v_tanhf(_mm512_maskz_loadu_ps(m, c + j));
        __m512 dh = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dh_out + j),
                                  _mm512_maskz_loadu_ps(m, carry_h + j));
        __m512 dc = _mm512_add_ps(
            _mm512_mul_ps(_mm512_mul_ps(dh, go), _mm512_sub_ps(one, _mm512_mul_ps(tc, tc))),
            _mm512_maskz_loadu_ps(m, carry_c + j));
        __m512 cp = c_prev ? _mm512_maskz_loadu_ps(m, c_prev + j) : _mm512_setzero_ps();
        __m512 di = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dc, gg), gi),
                                  _mm512_sub_ps(one, gi));
        __m512 df = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dc, cp), gf),
                                  _mm512_sub_ps(one, gf));
        __m512 dg = _mm512_mul_ps(_mm512_mul_ps(dc, gi),
                                  _mm512_sub_ps(one, _mm512_mul_ps(gg, gg)));
        __m512 dout = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dh, tc), go),
                                    _mm512_sub_ps(one, go));
        _mm512_mask_storeu_ps(da + j, m, di);
        _mm512_mask_storeu_ps(da + H + j, m, df);
        _mm512_mask_storeu_ps(da + 2 * H + j, m, dg);
        _mm512_mask_storeu_ps(da + 3 * H + j, m, dout);
        _mm512_mask_storeu_ps(carry_c + j, m, _mm512_mul_ps(dc, gf));
    }
}

static void forward_gates(size_t task, int thread, void *ctx)
{
    (void)thread;
    const gate_job_t *job = ctx;
    const int H = job->l->hidden;
    const gate_span_t span = gate_span(job, task);
    float *h = job->y + span.row * 2 * (size_t)H + (size_t)job->d * H;

    if (!span.active) {
        zero_units(span.gates, 4, H, &span);
        zero_units(span.cell, 1, H, &span);
        zero_units(h, 1, H, &span);
        return;
    }
    if (job->l->vector_kernels) {
        forward_units16(span.gates, (size_t)H, span.cell_prev, span.cell, h, span.from,
                        span.to);
        return;
    }
    for (int j = span.from; j < span.to; j++)
        nn_lstm_unit_forward(span.gates + j, (size_t)H,
                             span.cell_prev ? span.cell_prev + j : NULL, span.cell + j, h + j);
}

static void backward_gates(size_t task, int thread, void *ctx)
{
    (void)thread;
    const gate_job_t *job = ctx;
    nn_lstm_t *l = job->l;
    const int H = l->hidden;
    const gate_span_t span = gate_span(job, task);
    float *da = l->dgates + span.row * 4 * H;
    const float *carry_h = l->carry_h + (size_t)span.b * H;
    float *carry_c = l->carry_c + (size_t)span.b * H;

    if (!span.active) {
        zero_units(da, 4, H, &span);
        zero_units(carry_c, 1, H, &span);
        return;
    }
    const float *dh_out = job->dy + span.row * 2 * (size_t)H + (size_t)job->d * H;
    if (l->vector_kernels) {
        backward_units16(span.gates, (size_t)H, span.cell, span.cell_prev, dh_out, carry_h,
                         carry_c, da, span.from, span.to);
        return;
    }
    for (int j = span.from; j < span.to; j++)
        nn_lstm_unit_backward(span.gates + j, (size_t)H, span.cell[j],
                              span.cell_prev ? span.cell_prev + j : NULL, dh_out[j],
                              carry_h[j], carry_c + j, da + j);
}

static void run_gates(gate_job_t *job, pool_fn gates)
{
    const nn_lstm_t *l = job->l;
    job->chunks = (l->hidden + l->gate_task_units - 1) / l->gate_task_units;
    size_t units = (size_t)l->batch * l->hidden;
    int threads = units >= l->gate_parallel_min ? nn_team_threads() : 1;
    nn_team_for(threads, (size_t)l->batch * job->chunks, gates, job);
}

/*
 * The fp32 recurrent product of the forward for up to REC_MAX_ROWS series: acc[b][j] +=
 * h_prev[b] . W_hh[j], dot products along 4 rows of W_hh at a time, so that each thread reads
 * W_hh in 4 streams (on this machine one stream per thread reads memory at about 31 GB/s, two
 * to four at about 60; oneDNN's sgemm reads W_hh at 22-30 GB/s at these shapes). Each output
 * is one task's sum, in a fixed order: the result does not depend on the threads.
 */

/* W[r][k .. k + 16) of 4 consecutive rows r of a row-major W with H columns, lanes past H
 * zero; returns the mask of the lanes inside. */
AVX512_TARGET static inline __attribute__((always_inline)) __mmask16
load_quad(const float *w, int H, int k, __m512 wv[REC_QUAD])
{
    const __mmask16 m = lanes_left(H - k);
#pragma GCC unroll 4
    for (int r = 0; r < REC_QUAD; r++)
        wv[r] = _mm512_maskz_loadu_ps(m, w + (long)r * H + k);
    return m;
}

/* A recurrent product: the series' operand a (h_prev forward, the gate gradients backward,
 * REC_MAX_ROWS rows of stride lda), W_hh, and where the sums go. */
typedef struct {
    const float *a;
    long lda;
    const float *w;
    int hidden, rows; /* rows: the batch's series (the rest of a is zeros) */
    float *out;
    long ldout;
} rec_job_t;

AVX512_TARGET static inline __attribute__((always_inline)) void
rec_quad(const rec_job_t *job, long j0)
{
    const int H = job->hidden;
    const float *w = job->w + j0 * H;
    __m512 sum[REC_MAX_ROWS][REC_QUAD] = {{_mm512_setzero_ps()}}; /* the rest zero too */

    for (int k = 0; k < H; k += 16) {
        __m512 wv[REC_QUAD];
        const __mmask16 m = load_quad(w, H, k, wv);
#pragma GCC unroll 4
        for (int b = 0; b < REC_MAX_ROWS; b++) {
            __m512 hv = _mm512_maskz_loadu_ps(m, job->a + b * job->lda + k);
#pragma GCC unroll 4
            for (int r = 0; r < REC_QUAD; r++)
                sum[b][r] = _mm512_fmadd_ps(hv, wv[r], sum[b][r]);
        }
    }
#pragma GCC unroll 4
    for (int b = 0; b < REC_MAX_ROWS; b++)
#pragma GCC unroll 4
        for (int r = 0; r < REC_QUAD; r++)
            if (b < job->rows) /* rows past the batch are the padding's zeros */
                job->out[b * job->ldout + j0 + r] += _mm512_reduce_add_ps(sum[b][r]);
}

AVX512_TARGET static void rec_task(size_t task, int thread, void *ctx)
{
    (void)thread;
    const rec_job_t *job = ctx;
    const long G4 = 4L * job->hidden, from = (long)task * REC_TASK_QUADS * REC_QUAD;
    const long to = from + REC_TASK_QUADS * REC_QUAD < G4 ? from + REC_TASK_QUADS * REC_QUAD
                                                           : G4;
    for (long j = from; j < to; j += REC_QUAD)
        rec_quad(job, j);
}

/* Whether the fp32 recurrent products of this batch run on the own kernels below. */
static int own_recurrence(const nn_lstm_t *l)
{
    return l->batch <= REC_MAX_ROWS && l->vector_kernels;
}

/* The kernels always take REC_MAX_ROWS rows of the operand: fewer series are copied into
 * l->rec_pad (width values a row) and followed by rows of zeros. */
static void pad_operand(nn_lstm_t *l, rec_job_t *job, long width)
{
    if (job->rows >= REC_MAX_ROWS)
        return;
    for (int b = 0; b < job->rows; b++)
        memcpy(l->rec_pad + b * width, job->a + b * job->lda, (size_t)width * sizeof(float));
    memset(l->rec_pad + job->rows * width, 0,
           (size_t)(REC_MAX_ROWS - job->rows) * width * sizeof(float));
    job->a = l->rec_pad;
    job->lda = width;
}

/* acc[b][j] += h_prev[b] . W_hh[j] for rows series (1 to REC_MAX_ROWS). */
static void recurrent_fp32(nn_lstm_t *l, const float *h_prev, long ldh, const float *w_hh,
                           int rows, float *acc, long ldacc)
{
    rec_job_t job = {h_prev, ldh, w_hh, l->hidden, rows, acc, ldacc};
    pad_operand(l, &job, l->hidden);
    long quads = l->hidden; /* 4H rows of W_hh in quads */
    size_t tasks = (size_t)((quads + REC_TASK_QUADS - 1) / REC_TASK_QUADS);
    nn_team_for(rec_threads(l, rows), tasks, rec_task, &job);
}

/*
 * The fp32 recurrent product of the backward for up to REC_MAX_ROWS series: carry[b][k] =
 * sum_j dgates[b][j] W_hh[j][k]. Task i takes rows [i 4H / REC_BWD_TASKS, ...) of W_hh,
 * 4 rows (4 read streams) at a time against every column, into its own partial sums; the
 * partial sums are then added in task order, so the result does not depend on the threads.
 */
AVX512_TARGET static inline __attribute__((always_inline)) void
rec_bwd_rows(const rec_job_t *job, float *partial, long j0, long j1)
{
    const int H = job->hidden;
    for (long j = j0; j < j1; j += REC_QUAD) {
        __m512 coef[REC_MAX_ROWS][REC_QUAD];
#pragma GCC unroll 4
        for (int b = 0; b < REC_MAX_ROWS; b++)
#pragma GCC unroll 4
            for (int r = 0; r < REC_QUAD; r++)
                coef[b][r] = _mm512_set1_ps(job->a[b * job->lda + j + r]);
        const float *w = job->w + j * H;
        for (int k = 0; k < H; k += 16) {
            __m512 wv[REC_QUAD];
            const __mmask16 m = load_quad(w, H, k, wv);
#pragma GCC unroll 4
            for (int b = 0; b < REC_MAX_ROWS; b++) {
                __m512 sum = _mm512_maskz_loadu_ps(m, partial + (long)b * H + k);
#pragma GCC unroll 4
                for (int r = 0; r < REC_QUAD; r++)
                    sum = _mm512_fmadd_ps(coef[b][r], wv[r], sum);
                _mm512_mask_storeu_ps(partial + (long)b * H + k, m, sum);
            }
        }
    }
}

AVX512_TARGET static void rec_bwd_task(size_t task, int thread, void *ctx)
{
    (void)thread;
    const rec_job_t *job = ctx;
    const long quads = job->hidden; /* 4H rows */
    const long j0 = quads * (long)task / REC_BWD_TASKS * REC_QUAD;
    const long j1 = quads * (long)(task + 1) / REC_BWD_TASKS * REC_QUAD;
    float *partial = job->out + task * (size_t)REC_MAX_ROWS * job->hidden;

    memset(partial, 0, (size_t)REC_MAX_ROWS * job->hidden * sizeof(float));
    rec_bwd_rows(job, partial, j0, j1);
}

/* carry[b][k] = sum_j dgates[b][j] W_hh[j][k] for rows series (1 to REC_MAX_ROWS). */
static void recurrent_fp32_backward(nn_lstm_t *l, const float *dg, long lddg,
                                    const float *w_hh, int rows, float *carry)
{
    rec_job_t job = {dg, lddg, w_hh, l->hidden, rows, l->rec_partial, 0};
    pad_operand(l, &job, 4L * l->hidden);
    nn_team_for(rec_threads(l, rows), REC_BWD_TASKS, rec_bwd_task, &job);

    /* The batch's rows lead each task's REC_MAX_ROWS rows of partial sums. */
    const size_t n = (size_t)rows * l->hidden, stride = (size_t)REC_MAX_ROWS * l->hidden;
    memcpy(carry, l->rec_partial, n * sizeof(float));
    for (int task = 1; task < REC_BWD_TASKS; task++) {
        const float *part = l->rec_partial + task * stride;
        for (size_t i = 0; i < n; i++)
            carry[i] += part[i];
    }
}

static void forward_direction(nn_lstm_t *l, int d, const nn_lstm_dir_t *w, const float *x,
                              float *y)
{
    const int batch = l->batch, steps = l->steps, H = l->hidden, G4 = 4 * H;
    const long rows = (long)batch * steps, y_row = 2L * H;
    float *gates = l->gates[d];
    const int mixed = l->precision == NN_PRECISION_BF16;

    /* Input projections of every step in one GEMM, with both biases. */
    if (mixed) {
        for (int j = 0; j < G4; j++)
            l->bias_sum[j] = w->b_ih[j] + w->b_hh[j];
        if (l->inference)
            nn_bf16_matmul_weights(rows, G4, l->in, l->x_bf16, l->in,
                                   nn_bf16_weights_cached(&l->w_ih_packed[d], w->w_ih, G4,
                                                          l->in, l->in),
                                   l->bias_sum, gates, G4);
        else
            nn_bf16_matmul('N', 'T', rows, G4, l->in, l->x_bf16, l->in,
                           w_ih_bf16(l, d, w->w_ih), l->in, l->bias_sum, 0, gates, G4);
    } else {
        /* dgates is the backward's: free scratch here. */
        for (int j = 0; j < G4; j++)
            l->bias_sum[j] = w->b_ih[j] + w->b_hh[j];
        nn_sgemm_bias_nt(rows, G4, l->in, x, l->in, w->w_ih, l->in, l->bias_sum, gates, G4,
                         l->dgates);
    }

    /* The copy is made once for many prediction batches (64 MiB take ~0.2 s at H 2048). */
    int bf16 = mixed && steps > 1;
    int transposed = !bf16 && batch >= TRANSPOSED_RECURRENCE_MIN_BATCH && steps > 1;
    const nn_bf16_t *w_hh_packed = bf16 ? w_hh_bf16(l, d, w->w_hh, 0) : NULL;
    if (transposed && l->w_hh_t_of[d] != w->w_hh) {
        if (!l->w_hh_t[d])
            l->w_hh_t[d] = xmalloc((size_t)G4 * H * sizeof(float));
        transpose(w->w_hh, G4, H, NULL, l->w_hh_t[d], G4);
        l->w_hh_t_of[d] = w->w_hh;
    }

    for (int s = 0; s < steps; s++) {
        int t = step_at(l, d, s), tp = step_before(d, t);

        /* Recurrent term over the whole batch; inactive rows are cleared below. */
        if (s > 0) {
            const float *h_prev = y + (size_t)tp * y_row + (size_t)d * H;
            float *acc = gates + (size_t)t * G4;
            if (bf16) {
                /* h_prev rounded to bf16 at the product's input, as the weights are. */
                nn_bf16_round_rows(h_prev, batch, H, (long)steps * y_row, l->rec_bf16, H);
                nn_bf16_gemm_packed(batch, G4, H, l->rec_bf16, H, w_hh_packed, 1.0f, acc,
                                    (long)steps * G4);
            } else if (transposed)
                nn_sgemm('N', 'N', batch, G4, H, 1.0f, h_prev, (long)steps * y_row,
                         l->w_hh_t[d], G4, 1.0f, acc, (long)steps * G4);
            else if (own_recurrence(l))
                recurrent_fp32(l, h_prev, (long)steps * y_row, w->w_hh, batch, acc,
                               (long)steps * G4);
            else
                nn_sgemm('N', 'T', batch, G4, H, 1.0f, h_prev, (long)steps * y_row, w->w_hh,
                         H, 1.0f, acc, (long)steps * G4);
        }

        gate_job_t job = {l, d, s, t, tp, y, NULL, 0};
        run_gates(&job, forward_gates);
    }
}

void nn_lstm_forward(nn_lstm_t *l, const nn_lstm_weights_t *w, const float *x, int batch,
                     int steps, const int *lengths, float *y)
{
    for (int b = 0; b < batch; b++)
        if (lengths[b] < 1 || lengths[b] > steps)
            die(EXIT_INTERNAL, "lstm: series %d has length %d outside [1, %d]", b, lengths[b],
                steps);
    reserve(l, batch, steps);
    l->batch = batch;
    l->steps = steps;
    l->lengths = lengths;
    /* Rounded once for both directions' input projections and the backward's dW_ih. */
    if (l->precision == NN_PRECISION_BF16)
        nn_bf16_round_rows(x, (long)batch * steps, l->in, l->in, l->x_bf16, l->in);
    for (int d = 0; d < 2; d++)
        forward_direction(l, d, &w->dir[d], x, y);
}

static void backward_direction(nn_lstm_t *l, int d, const nn_lstm_dir_t *w, const float *x,
                               const float *y, const float *dy, float *dx, nn_lstm_dir_t *g)
{
    const int batch = l->batch, steps = l->steps, H = l->hidden, G4 = 4 * H;
    const long rows = (long)batch * steps, y_row = 2L * H;
    float *dgates = l->dgates, *carry_h = l->carry_h, *carry_c = l->carry_c;

    memset(carry_h, 0, (size_t)batch * H * sizeof(float));
    memset(carry_c, 0, (size_t)batch * H * sizeof(float));
    int bf16 = l->precision == NN_PRECISION_BF16 && steps > 1;
    const nn_bf16_t *w_hh_packed = bf16 ? w_hh_bf16(l, d, w->w_hh, 1) : NULL;

    /* Back through the processing order: gate gradients per step, carries to the step before. */
    for (int s = steps - 1; s >= 0; s--) {
        int t = step_at(l, d, s), tp = step_before(d, t);
        gate_job_t job = {l, d, s, t, tp, (float *)y, dy, 0};
        run_gates(&job, backward_gates);
        if (s == 0)
            continue;
        const float *da_t = dgates + (size_t)t * G4;
        if (bf16) {
            nn_bf16_round_rows(da_t, batch, G4, (long)steps * G4, l->rec_bf16, G4);
            nn_bf16_gemm_packed(batch, H, G4, l->rec_bf16, G4, w_hh_packed, 0.0f, carry_h, H);
        } else if (own_recurrence(l)) {
            recurrent_fp32_backward(l, da_t, (long)steps * G4, w->w_hh, batch, carry_h);
        } else {
            nn_sgemm('N', 'N', batch, H, G4, 1.0f, da_t, (long)steps * G4, w->w_hh, H, 0.0f,
                     carry_h, H);
        }
    }

    /* The recurrent input of every step (zero where a series' recurrence starts). */
    float *h_prev = l->h_prev;
    for (int b = 0; b < batch; b++) {
        for (int s = 0; s < steps; s++) {
            int t = step_at(l, d, s);
            float *dst = h_prev + ((size_t)b * steps + t) * H;
            if (s == 0)
                memset(dst, 0, (size_t)H * sizeof(float));
            else
                memcpy(dst, y + ((size_t)b * steps + step_before(d, t)) * y_row +
                                (size_t)d * H,
                       (size_t)H * sizeof(float));
        }
    }

    if (l->precision == NN_PRECISION_BF16) {
        nn_bf16_round_rows(dgates, rows, G4, G4, l->dgates_bf16, G4);
        nn_bf16_round_rows(h_prev, rows, H, H, l->h_prev_bf16, H);
        nn_bf16_matmul('T', 'N', G4, H, rows, l->dgates_bf16, G4, l->h_prev_bf16, H, NULL, 0,
                       g->w_hh, H);
        nn_bf16_matmul('T', 'N', G4, l->in, rows, l->dgates_bf16, G4, l->x_bf16, l->in, NULL,
                       0, g->w_ih, l->in);
    } else {
        nn_sgemm('T', 'N', G4, H, rows, 1.0f, dgates, G4, h_prev, H, 0.0f, g->w_hh, H);
        nn_sgemm('T', 'N', G4, l->in, rows, 1.0f, dgates, G4, x, l->in, 0.0f, g->w_ih, l->in);
    }
    for (int j = 0; j < G4; j++) {
        double sum = 0.0;
        for (long r = 0; r < rows; r++)
            sum += dgates[r * G4 + j];
        g->b_ih[j] = (float)sum;
        g->b_hh[j] = (float)sum;
    }
    if (dx && l->precision == NN_PRECISION_BF16)
        nn_bf16_matmul('N', 'N', rows, l->in, G4, l->dgates_bf16, G4,
                       w_ih_bf16(l, d, w->w_ih), l->in, NULL, d == 1, dx, l->in);
    else if (dx)
        nn_sgemm('N', 'N', rows, l->in, G4, 1.0f, dgates, G4, w->w_ih, l->in,
                 d == 0 ? 0.0f : 1.0f, dx, l->in);
}

void nn_lstm_backward(nn_lstm_t *l, const nn_lstm_weights_t *w, const float *x,
                      const float *y, const float *dy, float *dx, nn_lstm_weights_t *grad)
{
    if (l->inference)
        die(EXIT_INTERNAL, "lstm: a backward after forwards for inference only");
    for (int d = 0; d < 2; d++)
        backward_direction(l, d, &w->dir[d], x, y, dy, dx, &grad->dir[d]);
    /* After the copies of this batch's weights served the backward: a step follows. */
    nn_lstm_weights_changed(l);
}
