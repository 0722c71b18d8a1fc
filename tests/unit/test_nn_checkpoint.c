/*
 * HDF5 checkpoints (common/nn/checkpoint.c) and the engine RNG (common/nn/rng.c), on the
 * "tiny" ResNeXt:
 *   - save -> load round trip, bit-exact in fp32 (parameters, buffers, counters, Adam
 *     moments, step, epoch, RNG state, architecture);
 *   - bf16 storage: every loaded value equals the fp32 value rounded to nearest even, checked
 *     against hand-made bit patterns (ties both ways, overflow to inf, NaN, zeros), and the
 *     HDF5 type (sign 15, exponent 7/8, mantissa 0/7, bias 127) converts to the same numbers
 *     through HDF5's own conversion;
 *   - mismatches: wrong model name, missing key, unexpected key, wrong shape, wrong type,
 *     asserted verbatim; strict loading leaves the model untouched, non-strict loads the rest;
 *     nn_ckpt_load_or_die exits with EXIT_BAD_INPUT (--load, in a new process);
 *   - damaged files (missing, not HDF5, truncated at several lengths, a flipped data byte, an
 *     HDF5 file that is no checkpoint): a message naming the file, never a crash or a load;
 *   - resume: 2 training steps, save, load into a new model, 2 more steps equals 4 straight
 *     steps bit for bit (same process, same thread count), RNG-drawn batches included.
 *
 * Modes for tests/py/test_nn_checkpoint_torch.py (a checkpoint written here, read by torch):
 *   --export DIR                       DIR/tiny.h5 (fp32, after 2 Adam steps), tiny_bf16.h5,
 *                                      expect.h5 (the batches, eval logits, an RNG stream)
 *   --eval CKPT IN OUT [--nonstrict]   load CKPT into tiny (6 outputs), eval forward of IN's
 *                                      "input", write logits and embedding to OUT
 *   --load CKPT                        nn_ckpt_load_or_die into tiny (strict)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "log.h"
#include "nn/checkpoint.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/resnext.h"
#include "nn/rng.h"

#define SIZE 64  /* input pixels */
#define BATCH 2  /* images per step */
#define OUTPUTS 6

#include "expect.h"

static const nn_adam_t HP = {1e-3, 0.9, 0.999, 1e-8, 1e-4};

/* ---- training helpers ---------------------------------------------------------------------- */

typedef struct {
    float *input, *labels; /* backend memory */
    float *host_input, *host_labels;
} batch_t;

static void batch_init(batch_t *b, nn_backend_t *be)
{
    size_t pixels = (size_t)BATCH * 3 * SIZE * SIZE;
    b->input = be->alloc(be, pixels * sizeof(float));
    b->labels = be->alloc(be, BATCH * OUTPUTS * sizeof(float));
    b->host_input = xmalloc(pixels * sizeof(float));
    b->host_labels = xmalloc(BATCH * OUTPUTS * sizeof(float));
}

static void batch_free(batch_t *b, nn_backend_t *be)
{
    be->release(be, b->input);
    be->release(be, b->labels);
    free(b->host_input);
    free(b->host_labels);
}

/* A batch drawn from the RNG, as a data loader would (so that resuming must restore it). */
static void batch_draw(batch_t *b, nn_backend_t *be, nn_rng_t *rng)
{
    size_t pixels = (size_t)BATCH * 3 * SIZE * SIZE;
    for (size_t i = 0; i < pixels; i++)
        b->host_input[i] = (float)(2.0 * nn_rng_uniform(rng) - 1.0);
    for (size_t i = 0; i < BATCH * OUTPUTS; i++)
        b->host_labels[i] = nn_rng_below(rng, 10) < 4 ? 1.0f : 0.0f;
    be->to_device(be, b->input, b->host_input, pixels * sizeof(float));
    be->to_device(be, b->labels, b->host_labels, BATCH * OUTPUTS * sizeof(float));
}

/* One training step: batch from the RNG, forward, loss, backward, Adam step *step + 1. */
static double train_step(resnext_t *m, batch_t *b, nn_rng_t *rng, int64_t *step)
{
    nn_backend_t *be = m->be;
    batch_draw(b, be, rng);
    nn_tensor_t x = {.data = b->input, .n = BATCH, .c = 3, .h = SIZE, .w = SIZE};
    resnext_forward(m, &x, 1);
    double loss = be->bce_loss(be, m->logits.data, b->labels, BATCH, m->dlogits.data);
    resnext_backward(m, m->dlogits.data);
    *step += 1;
    be->adam_step(be, &HP, *step, m->ps.params, m->ps.grads, m->ps.adam_m, m->ps.adam_v,
                  m->ps.param_count);
    return loss;
}

static resnext_t *new_tiny(nn_backend_t *be)
{
    return resnext_create(be, "tiny", OUTPUTS);
}

/* A tiny model with the hashed initial weights and Adam moments, ready to train. */
static resnext_t *new_tiny_trainable(nn_backend_t *be)
{
    resnext_t *m = new_tiny(be);
    nn_params_fill_hashed(&m->ps);
    nn_params_alloc_adam(&m->ps);
    return m;
}

/* A host copy of a backend slab. */
static float *host_copy(nn_backend_t *be, const float *dev, size_t count)
{
    float *host = xmalloc((count ? count : 1) * sizeof(float));
    be->to_host(be, host, dev, count * sizeof(float));
    return host;
}

/* Count of values whose bits differ between two slabs. */
static size_t bits_differ(nn_backend_t *be, const float *dev_a, const float *dev_b, size_t n)
{
    float *a = host_copy(be, dev_a, n), *b = host_copy(be, dev_b, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    free(a);
    free(b);
    return differ;
}

static char *work_path(const char *dir, const char *name)
{
    return xasprintf("%s/%s", dir, name);
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* ---- RNG ----------------------------------------------------------------------------------- */

static void test_rng(void)
{
    nn_rng_t a, b;
    nn_rng_seed(&a, 0);
    /* splitmix64 from state 0: its first output is a published constant. */
    EXPECT(a.s[0] == 0xE220A8397B1DCDAFull);
    nn_rng_seed(&b, 0);
    int same = 1;
    for (int i = 0; i < 1000; i++)
        same &= nn_rng_next(&a) == nn_rng_next(&b);
    EXPECT(same);

    nn_rng_seed(&a, 7);
    double lo = 1.0, hi = 0.0, sum = 0.0;
    int counts[5] = {0};
    const int draws = 100000;
    for (int i = 0; i < draws; i++) {
        double u = nn_rng_uniform(&a);
        lo = fmin(lo, u);
        hi = fmax(hi, u);
        sum += u;
        counts[nn_rng_below(&a, 5)]++;
    }
    EXPECT(lo >= 0.0 && hi < 1.0);
    EXPECT(fabs(sum / draws - 0.5) < 0.01);
    for (int k = 0; k < 5; k++)
        EXPECT(abs(counts[k] - draws / 5) < draws / 50);
    printf("rng: mean of %d uniforms %.4f, below(5) counts %d %d %d %d %d\n", draws,
           sum / draws, counts[0], counts[1], counts[2], counts[3], counts[4]);
}

/* ---- fp32 round trip ----------------------------------------------------------------------- */

static void train_tiny(resnext_t *m, nn_rng_t *rng, int64_t *step, int steps)
{
    batch_t b;
    batch_init(&b, m->be);
    for (int i = 0; i < steps; i++)
        train_step(m, &b, rng, step);
    batch_free(&b, m->be);
}

static void expect_same_state(resnext_t *a, resnext_t *b, int with_adam, const char *what)
{
    nn_backend_t *be = a->be;
    nn_paramset_t *pa = &a->ps, *pb = &b->ps;
    size_t params = bits_differ(be, pa->params, pb->params, pa->param_count);
    size_t buffers = bits_differ(be, pa->buffers, pb->buffers, pa->buffer_count);
    size_t counters = 0;
    for (size_t i = 0; i < pa->counter_count; i++)
        counters += pa->counters[i] != pb->counters[i];
    size_t m = 0, v = 0;
    if (with_adam) {
        m = bits_differ(be, pa->adam_m, pb->adam_m, pa->param_count);
        v = bits_differ(be, pa->adam_v, pb->adam_v, pa->param_count);
    }
    printf("%s: values differing in bits: params %zu/%zu, buffers %zu/%zu, counters %zu/%zu, "
           "adam m %zu, v %zu\n", what, params, pa->param_count, buffers, pa->buffer_count,
           counters, pa->counter_count, m, v);
    EXPECT(params == 0 && buffers == 0 && counters == 0 && m == 0 && v == 0);
}

static char *test_roundtrip_fp32(nn_backend_t *be, const char *dir)
{
    resnext_t *a = new_tiny_trainable(be);
    nn_rng_t rng;
    nn_rng_seed(&rng, 11);
    int64_t step = 0;
    train_tiny(a, &rng, &step, 2);

    nn_ckpt_meta_t meta;
    nn_ckpt_meta_init(&meta, NULL);
    nn_ckpt_meta_resnext(&meta, a);
    meta.step = step;
    meta.epoch = 5;
    meta.rng = rng;
    meta.adam = HP;
    snprintf(meta.precision, sizeof(meta.precision), "bf16");
    char *path = work_path(dir, "tiny_fp32.h5");
    double t0 = time_now();
    nn_ckpt_save(path, &a->ps, &meta, 0);
    double t_save = time_now() - t0;

    resnext_t *b = new_tiny(be);
    nn_ckpt_meta_t got;
    nn_ckpt_report_t report;
    t0 = time_now();
    int rc = nn_ckpt_load(path, &b->ps, "tiny", NN_CKPT_ADAM, &got, &report);
    double t_load = time_now() - t0;
    EXPECT(rc == 0 && report.message == NULL);
    if (report.message)
        printf("unexpected message: %s\n", report.message);
    printf("fp32 checkpoint: %ld bytes for %zu params + %zu buffer values, save %.3f s, "
           "load %.3f s, %zu tensors loaded\n", file_size(path), a->ps.param_count,
           a->ps.buffer_count, t_save, t_load, report.loaded);
    nn_ckpt_report_free(&report);
    expect_same_state(a, b, 1, "fp32 round trip");

    EXPECT(strcmp(got.model, "tiny") == 0 && strcmp(got.precision, "bf16") == 0);
    EXPECT(got.step == 2 && got.epoch == 5 && got.has_rng && got.has_adam);
    EXPECT(memcmp(got.rng.s, rng.s, sizeof(rng.s)) == 0);
    EXPECT(got.adam.lr == HP.lr && got.adam.beta1 == HP.beta1 && got.adam.beta2 == HP.beta2 &&
           got.adam.eps == HP.eps && got.adam.weight_decay == HP.weight_decay);
    EXPECT(got.n_arch == meta.n_arch);
    for (int i = 0; i < meta.n_arch; i++) {
        const nn_ckpt_arch_t *want = &meta.arch[i];
        const nn_ckpt_arch_t *have = nn_ckpt_meta_get_arch(&got, want->name);
        EXPECT(have && have->count == want->count &&
               memcmp(have->values, want->values, want->count * sizeof(int64_t)) == 0);
    }
    const nn_ckpt_arch_t *layers = nn_ckpt_meta_get_arch(&got, "layers");
    const nn_ckpt_arch_t *outputs = nn_ckpt_meta_get_arch(&got, "num_outputs");
    EXPECT(layers && layers->count == 4 && layers->values[0] == 2);
    EXPECT(outputs && outputs->count == 1 && outputs->values[0] == OUTPUTS);

    /* The metadata alone, as a program choosing the model would read it. */
    nn_ckpt_meta_t only;
    char *message = NULL;
    EXPECT(nn_ckpt_read_meta(path, &only, &message) == 0 && strcmp(only.model, "tiny") == 0);
    free(message);
    EXPECT(!got.has_loss_scale && !only.has_loss_scale);

    /* An fp16 run's loss scaling state goes with the moments and comes back. */
    meta.loss_scale = 1024.0;
    meta.loss_scale_clean_steps = 7;
    meta.skipped_steps = 3;
    char *scaled_path = work_path(dir, "tiny_scaled.h5");
    nn_ckpt_save(scaled_path, &a->ps, &meta, 0);
    message = NULL;
    EXPECT(nn_ckpt_read_meta(scaled_path, &only, &message) == 0);
    free(message);
    EXPECT(only.has_loss_scale && only.loss_scale == 1024.0 &&
           only.loss_scale_clean_steps == 7 && only.skipped_steps == 3);
    free(scaled_path);

    resnext_free(a);
    resnext_free(b);
    return path;
}

/* ---- bf16 storage -------------------------------------------------------------------------- */

typedef struct {
    uint32_t in;
    uint16_t out;
    const char *what;
} bf16_case_t;

static const bf16_case_t BF16_CASES[] = {
    {0x3F800000u, 0x3F80u, "1.0 exact"},
    {0x3F808000u, 0x3F80u, "tie, even below"},
    {0x3F818000u, 0x3F82u, "tie, even above"},
    {0x3F808001u, 0x3F81u, "just above a tie"},
    {0x3F807FFFu, 0x3F80u, "just below a tie"},
    {0xC0490FDBu, 0xC049u, "-pi"},
    {0x7F7FFFFFu, 0x7F80u, "largest float rounds to inf"},
    {0x7F7F7FFFu, 0x7F7Fu, "largest bf16 stays"},
    {0x7F800000u, 0x7F80u, "inf"},
    {0xFF800000u, 0xFF80u, "-inf"},
    {0x80000000u, 0x8000u, "-0"},
    {0x00000001u, 0x0000u, "smallest subnormal rounds to 0"},
    {0x00408000u, 0x0040u, "subnormal tie, even below"},
    {0x7FC00000u, 0x7FC0u, "quiet NaN"},
    {0x7F800001u, 0x7FC0u, "signalling NaN becomes quiet"},
};
#define N_BF16_CASES (sizeof(BF16_CASES) / sizeof(BF16_CASES[0]))

static void test_bf16(nn_backend_t *be, const char *dir, const char *fp32_path)
{
    resnext_t *a = new_tiny_trainable(be);
    nn_rng_t rng;
    nn_rng_seed(&rng, 12);
    int64_t step = 0;
    train_tiny(a, &rng, &step, 1);

    /* Hand-made bit patterns at the start of fc.weight. */
    long fc = nn_params_find(&a->ps, "fc.weight");
    float *fc_w = nn_params_value(&a->ps, (size_t)fc);
    float *host = host_copy(be, fc_w, N_BF16_CASES);
    for (size_t i = 0; i < N_BF16_CASES; i++)
        memcpy(&host[i], &BF16_CASES[i].in, sizeof(float));
    be->to_device(be, fc_w, host, N_BF16_CASES * sizeof(float));
    free(host);

    nn_ckpt_meta_t meta;
    nn_ckpt_meta_init(&meta, NULL);
    nn_ckpt_meta_resnext(&meta, a);
    char *path = work_path(dir, "tiny_bf16.h5");
    nn_ckpt_save(path, &a->ps, &meta, NN_CKPT_BF16);

    resnext_t *b = new_tiny(be);
    nn_ckpt_report_t report;
    EXPECT(nn_ckpt_load(path, &b->ps, "tiny", NN_CKPT_ADAM, NULL, &report) == 0);
    nn_ckpt_report_free(&report);

    /* The hand-made cases against their expected bits. */
    float *loaded_fc = host_copy(be, nn_params_value(&b->ps, (size_t)fc), N_BF16_CASES);
    int case_failures = 0;
    for (size_t i = 0; i < N_BF16_CASES; i++) {
        uint32_t bits;
        memcpy(&bits, &loaded_fc[i], sizeof bits);
        if (bits != (uint32_t)BF16_CASES[i].out << 16) {
            printf("FAIL bf16 %s: 0x%08X stored as 0x%08X, expected 0x%04X0000\n",
                   BF16_CASES[i].what, BF16_CASES[i].in, bits, BF16_CASES[i].out);
            case_failures++;
        }
    }
    failures += case_failures;
    printf("bf16 rounding: %zu hand-made cases, %d wrong\n", N_BF16_CASES, case_failures);
    free(loaded_fc);

    /* Every other value equals its fp32 value rounded; count the ties met on the way. */
    float *slabs_a[3] = {a->ps.params, a->ps.adam_m, a->ps.adam_v};
    float *slabs_b[3] = {b->ps.params, b->ps.adam_m, b->ps.adam_v};
    size_t counts[3] = {a->ps.param_count, a->ps.param_count, a->ps.param_count};
    size_t wrong = 0, ties = 0, values = 0;
    for (int k = 0; k < 4; k++) {
        const float *dev_a = k < 3 ? slabs_a[k] : a->ps.buffers;
        const float *dev_b = k < 3 ? slabs_b[k] : b->ps.buffers;
        size_t n = k < 3 ? counts[k] : a->ps.buffer_count;
        float *va = host_copy(be, dev_a, n), *vb = host_copy(be, dev_b, n);
        for (size_t i = (k == 0 ? N_BF16_CASES : 0); i < n; i++) {
            uint32_t in;
            memcpy(&in, &va[i], sizeof in);
            ties += (in & 0xFFFFu) == 0x8000u;
            float want = nn_bf16_to_f32(nn_bf16_from_f32(va[i]));
            wrong += memcmp(&want, &vb[i], sizeof(float)) != 0;
            values++;
        }
        free(va);
        free(vb);
    }
    printf("bf16 checkpoint: %ld bytes (fp32: %ld), %zu values, %zu not the rounded value, "
           "%zu exact ties among them\n", file_size(path), file_size(fp32_path), values, wrong,
           ties);
    EXPECT(wrong == 0);
    EXPECT(file_size(path) < file_size(fp32_path) * 6 / 10);

    /* The stored type, and HDF5's own conversion to float (what other readers get). */
    hid_t f = h5_open_read(path);
    hid_t ds = H5Dopen2(f, "state_dict/layer3.1.conv1.weight", H5P_DEFAULT);
    hid_t type = H5Dget_type(ds);
    size_t spos, epos, esize, mpos, msize;
    H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
    printf("bf16 HDF5 type: size %zu, sign %zu, exponent %zu+%zu, mantissa %zu+%zu, bias %zu\n",
           H5Tget_size(type), spos, epos, esize, mpos, msize, H5Tget_ebias(type));
    EXPECT(H5Tget_class(type) == H5T_FLOAT && H5Tget_size(type) == 2 && spos == 15 &&
           epos == 7 && esize == 8 && mpos == 0 && msize == 7 && H5Tget_ebias(type) == 127);
    H5Tclose(type);
    H5Dclose(ds);
    long conv = nn_params_find(&a->ps, "layer3.1.conv1.weight");
    size_t n = a->ps.entries[conv].count;
    float *by_hdf5 = h5_read(f, "state_dict/layer3.1.conv1.weight", H5T_NATIVE_FLOAT, 4, NULL);
    float *orig = host_copy(be, nn_params_value(&a->ps, (size_t)conv), n);
    size_t hdf5_wrong = 0;
    for (size_t i = 0; i < n; i++) {
        float want = nn_bf16_to_f32(nn_bf16_from_f32(orig[i]));
        hdf5_wrong += memcmp(&want, &by_hdf5[i], sizeof(float)) != 0;
    }
    printf("HDF5's conversion of %zu bf16 values to float: %zu differ from the rounded values\n",
           n, hdf5_wrong);
    EXPECT(hdf5_wrong == 0);
    free(by_hdf5);
    free(orig);
    h5_close(f);

    resnext_free(a);
    resnext_free(b);
    free(path);
}

/* ---- mismatches ---------------------------------------------------------------------------- */

/*
 * A paramset like tiny's but: fc.bias left out, fc.scale added, fc.weight [5, 512], and
 * bn1.running_mean declared as an int64 counter.
 */
static void build_variant(nn_paramset_t *ps, nn_backend_t *be, const nn_paramset_t *tiny)
{
    nn_params_init(ps, be);
    for (size_t i = 0; i < tiny->n_entries; i++) {
        const nn_entry_t *e = &tiny->entries[i];
        int64_t dims[NN_RANK_MAX];
        memcpy(dims, e->dims, sizeof(dims));
        nn_entry_kind_t kind = e->kind;
        if (strcmp(e->name, "fc.bias") == 0)
            continue;
        if (strcmp(e->name, "fc.weight") == 0)
            dims[0] = 5;
        if (strcmp(e->name, "bn1.running_mean") == 0)
            kind = NN_ENTRY_COUNTER;
        nn_params_declare(ps, e->name, kind, e->rank, dims);
    }
    int64_t scale_dims[1] = {OUTPUTS};
    nn_params_declare(ps, "fc.scale", NN_ENTRY_PARAM, 1, scale_dims);
    nn_params_alloc(ps);
}

static int all_zero(nn_backend_t *be, const float *dev, size_t n)
{
    float *h = host_copy(be, dev, n);
    int zero = 1;
    for (size_t i = 0; i < n && zero; i++)
        zero = h[i] == 0.0f;
    free(h);
    return zero;
}

/*
 * Run this program's --load mode on path (a fresh process: nn_ckpt_load_or_die into tiny);
 * expect exit code EXIT_BAD_INPUT and `expect` in its stderr.
 */
static void expect_exit(const char *dir, const char *path, const char *expect)
{
    char *err_path = work_path(dir, "child_stderr.txt");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(err_path, "w", stderr))
            _exit(99);
        execl("/proc/self/exe", "test_nn_checkpoint", "--load", path, (char *)NULL);
        _exit(98);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    FILE *f = fopen(err_path, "r");
    char text[8192] = "";
    size_t got = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
    text[got] = 0;
    if (f)
        fclose(f);
    int found = strstr(text, expect) != NULL;
    printf("load_or_die(%s) in a new process: exit %d (want %d), message %s\n",
           path_basename(path), code, EXIT_BAD_INPUT, found ? "as expected" : "WRONG");
    if (!found || code != EXIT_BAD_INPUT)
        printf("  stderr was: %s\n", text);
    EXPECT(code == EXIT_BAD_INPUT && found);
    free(err_path);
}

static void test_mismatch(nn_backend_t *be, const char *dir, const char *path)
{
    resnext_t *tiny = new_tiny(be);
    nn_ckpt_report_t report;

    /* Wrong model name: said first and alone, in both modes. */
    int rc = nn_ckpt_load(path, &tiny->ps, "resnext50_32x4d", 0, NULL, &report);
    char *want = xasprintf("%s: checkpoint is for model 'tiny', not 'resnext50_32x4d'", path);
    EXPECT(rc == -1 && report.message && strcmp(report.message, want) == 0);
    printf("wrong model: %s\n", report.message ? report.message : "(no message)");
    nn_ckpt_report_free(&report);
    rc = nn_ckpt_load(path, &tiny->ps, "resnext50_32x4d", NN_CKPT_NONSTRICT, NULL, &report);
    EXPECT(rc == -1 && report.message && strcmp(report.message, want) == 0);
    nn_ckpt_report_free(&report);
    free(want);
    EXPECT(all_zero(be, tiny->ps.params, tiny->ps.param_count));

    /* Missing, unexpected, wrong shape, wrong type: every one listed. */
    nn_paramset_t variant;
    build_variant(&variant, be, &tiny->ps);
    rc = nn_ckpt_load(path, &variant, "tiny", 0, NULL, &report);
    want = xasprintf("%s: checkpoint does not match model 'tiny':\n"
                     "  missing keys (1): \"fc.scale\"\n"
                     "  unexpected keys (1): \"fc.bias\"\n"
                     "  type mismatch for bn1.running_mean: float in the checkpoint, int64 in "
                     "the model\n"
                     "  size mismatch for fc.weight: shape [6, 512] in the checkpoint, [5, 512] "
                     "in the model", path);
    int same = rc == -1 && report.message && strcmp(report.message, want) == 0;
    printf("strict mismatch message %s:\n%s\n", same ? "as expected" : "WRONG",
           report.message ? report.message : "(none)");
    if (!same)
        printf("expected:\n%s\n", want);
    EXPECT(same);
    free(want);
    EXPECT(report.missing == 1 && report.unexpected == 1 && report.mismatched == 2);
    nn_ckpt_report_free(&report);
    EXPECT(all_zero(be, variant.params, variant.param_count));
    EXPECT(all_zero(be, variant.buffers, variant.buffer_count));

    /* The same differences seen from the other side, by a program. */
    char *variant_path = work_path(dir, "variant.h5");
    nn_ckpt_meta_t variant_meta;
    nn_ckpt_meta_init(&variant_meta, "tiny");
    nn_ckpt_save(variant_path, &variant, &variant_meta, 0);
    expect_exit(dir, variant_path, "size mismatch for fc.weight: shape [5, 512] in the "
                "checkpoint, [6, 512] in the model");
    free(variant_path);

    /* Moments asked for but absent. */
    char *no_adam = work_path(dir, "tiny_no_adam.h5");
    {
        resnext_t *src = new_tiny_trainable(be);
        nn_ckpt_meta_t meta;
        nn_ckpt_meta_init(&meta, NULL);
        nn_ckpt_meta_resnext(&meta, src);
        nn_ckpt_save(no_adam, &src->ps, &meta, NN_CKPT_NO_ADAM);
        resnext_free(src);
    }
    rc = nn_ckpt_load(no_adam, &tiny->ps, "tiny", NN_CKPT_ADAM, NULL, &report);
    EXPECT(rc == -1 && report.message &&
           strstr(report.message, "no Adam moments (group 'adam') in the checkpoint"));
    nn_ckpt_report_free(&report);
    rc = nn_ckpt_load(no_adam, &tiny->ps, "tiny", 0, NULL, &report);
    EXPECT(rc == 0 && !report.message);
    nn_ckpt_report_free(&report);
    free(no_adam);

    /* Non-strict: what matches is loaded, the rest left as it was and listed. */
    rc = nn_ckpt_load(path, &variant, "tiny", NN_CKPT_NONSTRICT | NN_CKPT_ADAM, NULL, &report);
    EXPECT(rc == 0 && report.message && strstr(report.message, "left as they were") &&
           strstr(report.message, "size mismatch for adam/m/fc.weight"));
    printf("non-strict: rc %d, %zu tensors loaded, message:\n%s\n", rc, report.loaded,
           report.message ? report.message : "(none)");
    /* tiny's entries minus fc.bias, fc.weight, bn1.running_mean; its parameters minus fc.*
     * twice more for the moments. */
    size_t params = 0;
    for (size_t i = 0; i < tiny->ps.n_entries; i++)
        params += tiny->ps.entries[i].kind == NN_ENTRY_PARAM;
    EXPECT(report.loaded == (tiny->ps.n_entries - 3) + 2 * (params - 2));
    nn_ckpt_report_free(&report);

    nn_ckpt_load_or_die(path, &tiny->ps, "tiny", 0, NULL); /* the reference values */
    const char *same_names[] = {"conv1.weight", "layer2.1.conv2.weight", "layer4.1.bn3.bias",
                                "bn1.running_var"};
    for (size_t k = 0; k < sizeof(same_names) / sizeof(same_names[0]); k++) {
        long i = nn_params_find(&tiny->ps, same_names[k]);
        long j = nn_params_find(&variant, same_names[k]);
        EXPECT(bits_differ(be, nn_params_value(&tiny->ps, i), nn_params_value(&variant, j),
                           tiny->ps.entries[i].count) == 0);
    }
    long fc = nn_params_find(&variant, "fc.weight"), scale = nn_params_find(&variant, "fc.scale");
    EXPECT(all_zero(be, nn_params_value(&variant, fc), variant.entries[fc].count));
    EXPECT(all_zero(be, nn_params_value(&variant, scale), variant.entries[scale].count));
    EXPECT(all_zero(be, variant.adam_m + variant.entries[fc].offset, variant.entries[fc].count));

    nn_params_free(&variant);
    resnext_free(tiny);
}

/* ---- damaged files ------------------------------------------------------------------------- */

static void copy_prefix(const char *from, const char *to, long bytes)
{
    FILE *in = xfopen(from, "rb");
    FILE *out = xfopen(to, "wb");
    char buf[65536];
    long left = bytes;
    while (left > 0) {
        size_t want = left < (long)sizeof(buf) ? (size_t)left : sizeof(buf);
        size_t got = fread(buf, 1, want, in);
        if (got == 0)
            break;
        xfwrite(buf, 1, got, out, to);
        left -= (long)got;
    }
    fclose(in);
    xfclose(out, to);
}

static void expect_refused(nn_backend_t *be, const char *path, const char *expect)
{
    resnext_t *m = new_tiny(be);
    nn_ckpt_report_t report;
    int rc = nn_ckpt_load(path, &m->ps, "tiny", NN_CKPT_ADAM, NULL, &report);
    int named = report.message && strncmp(report.message, path, strlen(path)) == 0;
    int said = report.message && strstr(report.message, expect);
    printf("%-4s %s -> %s\n", rc == -1 && named && said ? "ok" : "FAIL", path_basename(path),
           report.message ? report.message : "(loaded without complaint)");
    EXPECT(rc == -1 && named && said);
    nn_ckpt_report_free(&report);
    resnext_free(m);
}

static void test_damaged(nn_backend_t *be, const char *dir, const char *good)
{
    char *path = work_path(dir, "absent.h5");
    expect_refused(be, path, "no such file");
    free(path);

    path = work_path(dir, "text.h5");
    FILE *f = xfopen(path, "w");
    fputs("this is not HDF5\n", f);
    xfclose(f, path);
    expect_refused(be, path, "not an HDF5 file");
    free(path);

    path = work_path(dir, "other.h5");
    h5out_t out;
    h5out_create(&out, path);
    double one = 1.0;
    hsize_t dims[1] = {1};
    h5_write_f64(out.file, "values", &one, 1, dims);
    h5out_commit(&out);
    expect_refused(be, path, "not a model checkpoint");
    free(path);

    /* Truncations anywhere: a missing tail never loads. */
    long size = file_size(good);
    const long cuts[] = {0, 100, 4096, size / 4, size / 2, size - 4096, size - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        path = xasprintf("%s/truncated_%ld.h5", dir, cuts[i]);
        copy_prefix(good, path, cuts[i]);
        expect_refused(be, path, cuts[i] < 8 ? "not an HDF5 file" : "");
        free(path);
    }

    /* A flipped byte inside a tensor's data: the chunk checksum catches it. */
    hid_t file = h5_open_read(good);
    hid_t ds = H5Dopen2(file, "state_dict/layer4.1.conv3.weight", H5P_DEFAULT);
    hid_t space = H5Dget_space(ds);
    haddr_t addr = HADDR_UNDEF;
    hsize_t chunk_bytes = 0;
    unsigned filter_mask = 0;
    hsize_t offset[4];
    EXPECT(H5Dget_chunk_info(ds, space, 0, offset, &filter_mask, &addr, &chunk_bytes) >= 0);
    H5Sclose(space);
    H5Dclose(ds);
    h5_close(file);
    path = work_path(dir, "flipped.h5");
    copy_prefix(good, path, size);
    f = xfopen(path, "r+b");
    long at = (long)addr + (long)chunk_bytes / 2;
    fseek(f, at, SEEK_SET);
    int byte = fgetc(f);
    fseek(f, at, SEEK_SET);
    fputc(byte ^ 0x10, f);
    xfclose(f, path);
    expect_refused(be, path, "cannot read 'state_dict/layer4.1.conv3.weight' (damaged file");
    expect_exit(dir, path, "damaged file");
    free(path);
}

/* ---- resume -------------------------------------------------------------------------------- */

static void test_resume(nn_backend_t *be, const char *dir)
{
    /* Straight: 4 steps. */
    resnext_t *a = new_tiny_trainable(be);
    nn_rng_t rng_a;
    nn_rng_seed(&rng_a, 2024);
    int64_t step_a = 0;
    batch_t b;
    batch_init(&b, be);
    double losses_a[4], losses_b[4];
    for (int i = 0; i < 4; i++)
        losses_a[i] = train_step(a, &b, &rng_a, &step_a);

    /* Interrupted: 2 steps, save, a new model loads it, 2 more steps. */
    resnext_t *first = new_tiny_trainable(be);
    nn_rng_t rng;
    nn_rng_seed(&rng, 2024);
    int64_t step = 0;
    for (int i = 0; i < 2; i++)
        losses_b[i] = train_step(first, &b, &rng, &step);
    nn_ckpt_meta_t meta;
    nn_ckpt_meta_init(&meta, NULL);
    nn_ckpt_meta_resnext(&meta, first);
    meta.step = step;
    meta.rng = rng;
    meta.adam = HP;
    char *path = work_path(dir, "resume.h5");
    nn_ckpt_save(path, &first->ps, &meta, 0);
    resnext_free(first);

    resnext_t *second = new_tiny(be);
    nn_ckpt_meta_t got;
    nn_ckpt_load_or_die(path, &second->ps, "tiny", NN_CKPT_ADAM, &got);
    EXPECT(got.has_rng && got.step == 2);
    rng = got.rng;
    step = got.step;
    for (int i = 2; i < 4; i++)
        losses_b[i] = train_step(second, &b, &rng, &step);

    int losses_same = memcmp(losses_a, losses_b, sizeof(losses_a)) == 0;
    printf("resume: losses straight %.9f %.9f %.9f %.9f, resumed %.9f %.9f %.9f %.9f (%s)\n",
           losses_a[0], losses_a[1], losses_a[2], losses_a[3], losses_b[0], losses_b[1],
           losses_b[2], losses_b[3], losses_same ? "identical" : "DIFFERENT");
    EXPECT(losses_same);
    EXPECT(step == step_a && memcmp(rng.s, rng_a.s, sizeof(rng.s)) == 0);
    expect_same_state(a, second, 1, "resume after 2+2 steps vs 4");

    batch_free(&b, be);
    resnext_free(a);
    resnext_free(second);
    free(path);
}

/* ---- modes for the Python test ------------------------------------------------------------- */

static int export_for_python(const char *dir)
{
    mkdir_p(dir);
    nn_backend_t *be = nn_backend_create("cpu");
    resnext_t *m = new_tiny_trainable(be);
    nn_rng_t rng;
    nn_rng_seed(&rng, 1234);

    char *expect_path = work_path(dir, "expect.h5");
    h5out_t out;
    h5out_create(&out, expect_path);
    h5_attr_f64(out.file, "lr", HP.lr);
    h5_attr_f64(out.file, "beta1", HP.beta1);
    h5_attr_f64(out.file, "beta2", HP.beta2);
    h5_attr_f64(out.file, "eps", HP.eps);
    h5_attr_f64(out.file, "weight_decay", HP.weight_decay);

    /* The engine RNG's first outputs, for an independent implementation to reproduce. */
    nn_rng_t probe;
    nn_rng_seed(&probe, 1234);
    int64_t stream[16];
    for (int i = 0; i < 16; i++)
        stream[i] = (int64_t)nn_rng_next(&probe);
    hsize_t n16[1] = {16};
    h5_write(out.file, "rng/seed_1234", H5T_NATIVE_UINT64, stream, 1, n16);

    batch_t b;
    batch_init(&b, be);
    int64_t step = 0;
    hsize_t in_dims[4] = {BATCH, 3, SIZE, SIZE}, label_dims[2] = {BATCH, OUTPUTS};
    for (int i = 0; i < 2; i++) {
        double loss = train_step(m, &b, &rng, &step);
        char *name = xasprintf("train/input_%d", i);
        h5_write_f32(out.file, name, b.host_input, 4, in_dims);
        free(name);
        name = xasprintf("train/labels_%d", i);
        h5_write_f32(out.file, name, b.host_labels, 2, label_dims);
        free(name);
        name = xasprintf("train/loss_%d", i);
        hsize_t one[1] = {1};
        h5_write_f64(out.file, name, &loss, 1, one);
        free(name);
    }

    /* Eval outputs of the checkpointed weights. */
    size_t pixels = (size_t)BATCH * 3 * SIZE * SIZE;
    float *input = xmalloc(pixels * sizeof(float));
    nn_fill_hashed(input, pixels, nn_name_seed("input"), 1.0f, 0.0f);
    be->to_device(be, b.input, input, pixels * sizeof(float));
    nn_tensor_t x = {.data = b.input, .n = BATCH, .c = 3, .h = SIZE, .w = SIZE};
    resnext_forward(m, &x, 0);
    float *logits = host_copy(be, m->logits.data, nn_numel(&m->logits));
    float *embedding = host_copy(be, m->embedding.data, nn_numel(&m->embedding));
    hsize_t logit_dims[2] = {BATCH, OUTPUTS}, embed_dims[2] = {BATCH, m->embed_dim};
    h5_write_f32(out.file, "eval/input", input, 4, in_dims);
    h5_write_f32(out.file, "eval/logits", logits, 2, logit_dims);
    h5_write_f32(out.file, "eval/embedding", embedding, 2, embed_dims);
    h5out_commit(&out);

    nn_ckpt_meta_t meta;
    nn_ckpt_meta_init(&meta, NULL);
    nn_ckpt_meta_resnext(&meta, m);
    meta.step = step;
    meta.epoch = 1;
    meta.rng = rng;
    meta.adam = HP;
    char *fp32 = work_path(dir, "tiny.h5"), *bf16 = work_path(dir, "tiny_bf16.h5");
    nn_ckpt_save(fp32, &m->ps, &meta, 0);
    nn_ckpt_save(bf16, &m->ps, &meta, NN_CKPT_BF16);
    printf("wrote %s, %s, %s\n", fp32, bf16, expect_path);

    free(input);
    free(logits);
    free(embedding);
    free(fp32);
    free(bf16);
    free(expect_path);
    batch_free(&b, be);
    resnext_free(m);
    be->destroy(be);
    return 0;
}

static int eval_checkpoint(const char *ckpt, const char *in_path, const char *out_path,
                           unsigned flags)
{
    nn_backend_t *be = nn_backend_create("cpu");
    resnext_t *m = new_tiny(be);
    nn_ckpt_load_or_die(ckpt, &m->ps, "tiny", flags, NULL);

    hid_t in = h5_open_read(in_path);
    hsize_t dims[8];
    float *input = h5_read(in, "input", H5T_NATIVE_FLOAT, 4, dims);
    h5_close(in);
    size_t count = (size_t)(dims[0] * dims[1] * dims[2] * dims[3]);
    float *dev = be->alloc(be, count * sizeof(float));
    be->to_device(be, dev, input, count * sizeof(float));
    nn_tensor_t x = {.data = dev, .n = (int)dims[0], .c = (int)dims[1], .h = (int)dims[2],
                     .w = (int)dims[3]};
    resnext_forward(m, &x, 0);

    float *logits = host_copy(be, m->logits.data, nn_numel(&m->logits));
    float *embedding = host_copy(be, m->embedding.data, nn_numel(&m->embedding));
    h5out_t out;
    h5out_create(&out, out_path);
    hsize_t logit_dims[2] = {dims[0], OUTPUTS}, embed_dims[2] = {dims[0], m->embed_dim};
    h5_write_f32(out.file, "logits", logits, 2, logit_dims);
    h5_write_f32(out.file, "embedding", embedding, 2, embed_dims);
    h5out_commit(&out);

    free(logits);
    free(embedding);
    free(input);
    be->release(be, dev);
    resnext_free(m);
    be->destroy(be);
    return 0;
}

int main(int argc, char **argv)
{
    log_init("test_nn_checkpoint", LOG_INFO);
    if (argc == 3 && strcmp(argv[1], "--export") == 0)
        return export_for_python(argv[2]);
    if (argc == 3 && strcmp(argv[1], "--load") == 0) {
        nn_backend_t *be = nn_backend_create("cpu");
        resnext_t *m = new_tiny(be);
        nn_ckpt_load_or_die(argv[2], &m->ps, "tiny", 0, NULL);
        resnext_free(m);
        be->destroy(be);
        return 0;
    }
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "--eval") == 0) {
        unsigned flags = argc == 6 && strcmp(argv[5], "--nonstrict") == 0 ? NN_CKPT_NONSTRICT
                                                                             : 0;
        return eval_checkpoint(argv[2], argv[3], argv[4], flags);
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--export DIR | --eval CKPT IN OUT [--nonstrict] | "
                "--load CKPT]\n", argv[0]);
        return EXIT_USAGE;
    }

    const char *work = getenv("WORK");
    char *dir = xasprintf("%s/test_nn_checkpoint", work && *work ? work : "/tmp");
    mkdir_p(dir);
    nn_backend_t *be = nn_backend_create("cpu");
    double t0 = time_now();

    test_rng();
    char *fp32_path = test_roundtrip_fp32(be, dir);
    test_bf16(be, dir, fp32_path);
    test_mismatch(be, dir, fp32_path);
    test_damaged(be, dir, fp32_path);
    test_resume(be, dir);

    free(fp32_path);
    free(dir);
    be->destroy(be);
    printf("%.1f s\n", time_now() - t0);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all checkpoint checks passed\n");
    return 0;
}
