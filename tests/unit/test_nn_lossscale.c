/*
 * Dynamic loss scaling (nn/lossscale.h) against PyTorch GradScaler's update rule, written
 * out here (torch 1.13 has no CPU kernel for torch._amp_update_scale_ to call instead):
 *
 *   found_inf:  scale *= backoff; tracker = 0; the optimizer step is skipped
 *   else:       tracker += 1; if tracker == interval: grown = scale * growth,
 *               scale = grown if finite(grown) (fp32), tracker = 0
 *
 * 1. the defaults (65536, 2, 0.5, 2000), and 2000 clean steps double the scale, 1999 do not;
 * 2. a scripted run of overflows and clean steps (interval 3) against the sequence of scales
 *    the rule gives, step by step;
 * 3. growth stops where fp32 would overflow;
 * 4. unscaling through the CPU backend (host fallback of scale_check_finite): exact
 *    division by a power of two, an inf or a NaN anywhere skips the step and halves S, a
 *    gradient left untouched by the skip check is still scaled (as torch does);
 * 5. nn/mixed.h on the CPU backend: fp32 and bf16 map to the model's precisions, fp16 and
 *    an unknown name are refused with exit 2 (EXIT_USAGE), and nn_upload_batch copies.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "exitcodes.h"
#include "nn/lossscale.h"
#include "nn/mixed.h"
#include "nn/nn.h"

static int failures;

static void expect(int ok, const char *what)
{
    printf("  %-4s %s\n", ok ? "ok" : "FAIL", what);
    failures += !ok;
}

static void check_defaults(void)
{
    nn_lossscale_t ls;
    nn_lossscale_init(&ls);
    expect(ls.scale == 65536.0f && ls.growth_factor == 2.0f && ls.backoff_factor == 0.5f &&
               ls.growth_interval == 2000,
           "defaults: 65536, growth 2 every 2000 steps, backoff 0.5");
    for (int i = 0; i < 1999; i++)
        nn_lossscale_update(&ls, 0);
    printf("       after 1999 clean steps: scale %g, clean %d\n", ls.scale, ls.clean_steps);
    expect(ls.scale == 65536.0f && ls.clean_steps == 1999, "1999 clean steps keep the scale");
    int taken = nn_lossscale_update(&ls, 0);
    printf("       after 2000: scale %g, clean %d\n", ls.scale, ls.clean_steps);
    expect(taken && ls.scale == 131072.0f && ls.clean_steps == 0,
           "the 2000th clean step doubles it and restarts the count");
}

static void check_script(void)
{
    /* 1 = overflow. Interval 3. Expected scale after each step and whether it was taken. */
    static const int overflow[] = {1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1};
    static const float want[] = {32768, 16384, 16384, 16384, 32768, 32768, 32768, 16384,
                                 16384, 16384, 32768, 32768, 32768, 65536, 32768, 32768,
                                 32768, 16384};
    nn_lossscale_t ls;
    nn_lossscale_init(&ls);
    ls.growth_interval = 3;
    int n = (int)(sizeof overflow / sizeof overflow[0]), same = 1, skipped = 0;
    printf("       scales:");
    for (int i = 0; i < n; i++) {
        int taken = nn_lossscale_update(&ls, overflow[i]);
        printf(" %g%s", ls.scale, taken ? "" : "*");
        same &= ls.scale == want[i] && taken == !overflow[i];
        skipped += overflow[i];
    }
    printf("  (* skipped)\n");
    expect(same, "scripted run (interval 3): every scale and skip as the rule gives");
    expect(ls.skipped_steps == skipped, "skipped steps counted");
}

static void check_ceiling(void)
{
    nn_lossscale_t ls;
    nn_lossscale_init(&ls);
    ls.growth_interval = 1;
    ls.scale = 0x1p126f;
    nn_lossscale_update(&ls, 0);
    expect(ls.scale == 0x1p127f, "2^126 grows to 2^127");
    nn_lossscale_update(&ls, 0);
    printf("       at the top: scale %g (FLT_MAX %g), clean %d\n", ls.scale, FLT_MAX,
           ls.clean_steps);
    expect(ls.scale == 0x1p127f && ls.clean_steps == 0,
           "2^127 does not grow to infinity; the count restarts");
}

static void check_unscale(void)
{
    nn_backend_t *be = nn_backend_create("cpu");
    if (!be)
        die(1, "cpu backend: %s", nn_backend_create_error());
    enum { COUNT = 1003 };
    float host[COUNT], back[COUNT];
    for (int i = 0; i < COUNT; i++)
        host[i] = (float)((i * 7919) % 2001 - 1000) * 3.0f; /* scaled gradients */
    float *grads = be->alloc(be, sizeof host);

    nn_lossscale_t ls;
    nn_lossscale_init(&ls);
    be->to_device(be, grads, host, sizeof host);
    int taken = nn_lossscale_unscale(&ls, be, grads, COUNT);
    be->to_host(be, back, grads, sizeof back);
    int exact = 1;
    for (int i = 0; i < COUNT; i++)
        exact &= back[i] == host[i] / 65536.0f;
    expect(taken && exact && ls.scale == 65536.0f, "finite gradients: divided by S exactly");

    static const float bad[] = {INFINITY, -INFINITY, NAN};
    static const char *const names[] = {"+inf", "-inf", "NaN"};
    for (int k = 0; k < 3; k++) {
        host[COUNT - 1 - k * 400] = bad[k];
        be->to_device(be, grads, host, sizeof host);
        float before = ls.scale;
        taken = nn_lossscale_unscale(&ls, be, grads, COUNT);
        be->to_host(be, back, grads, sizeof back);
        char what[96];
        snprintf(what, sizeof what, "a %s: step skipped, S %g -> %g, the rest scaled", names[k],
                 before, ls.scale);
        expect(!taken && ls.scale == before * 0.5f && back[0] == host[0] / before, what);
        host[COUNT - 1 - k * 400] = 1.0f;
    }

    /* The host arithmetic on its own: every special value is flagged, finite ones pass. */
    float specials[] = {FLT_MAX, -FLT_MAX, FLT_MIN, 0x1p-149f, -0.0f, 1.0f};
    expect(nn_scale_check_finite_host(specials, 6, 0.5f), "largest, smallest, -0: finite");
    expect(specials[0] == FLT_MAX * 0.5f && specials[3] == 0.0f, "scaled as fp32 multiplies");
    float one_nan[] = {1.0f, NAN, 2.0f};
    expect(!nn_scale_check_finite_host(one_nan, 3, 1.0f) && one_nan[2] == 2.0f,
           "a NaN in the middle is flagged and the rest still scaled");

    be->release(be, grads);
    be->destroy(be);
}

/* The exit status of nn_mixed_precision_setup(be, name) run in a child (0: it returned). */
static int setup_exit(nn_backend_t *be, const char *name)
{
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        nn_mixed_precision_setup(be, name, "--precision");
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    printf("       %s on the cpu: child exit %d\n", name, code);
    return code;
}

static void check_mixed_setup(void)
{
    nn_backend_t *be = nn_backend_create("cpu");
    if (!be)
        die(1, "cpu backend: %s", nn_backend_create_error());
    expect(nn_mixed_precision_setup(be, "fp32", "--precision") == NN_PRECISION_FP32,
           "fp32 -> NN_PRECISION_FP32");
    expect(nn_mixed_precision_setup(be, "bf16", "--precision") == NN_PRECISION_BF16,
           "bf16 -> NN_PRECISION_BF16 (mixed)");

    expect(setup_exit(be, "fp16") == EXIT_USAGE, "fp16 on the cpu backend: refused with exit 2");
    expect(setup_exit(be, "fp8") == EXIT_USAGE, "an unknown precision: refused with exit 2");

    float host[5] = {1, -2, 3.5f, 0, 7}, back[5];
    float *dev = be->alloc(be, sizeof host);
    nn_upload_batch(be, dev, host, sizeof host);
    be->to_host(be, back, dev, sizeof back);
    expect(memcmp(host, back, sizeof host) == 0, "nn_upload_batch copies (cpu: to_device)");
    be->release(be, dev);
    be->destroy(be);
}

int main(void)
{
    check_defaults();
    check_script();
    check_ceiling();
    check_unscale();
    check_mixed_setup();
    if (failures)
        printf("%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
