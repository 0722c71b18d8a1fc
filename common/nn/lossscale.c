/* Dynamic loss scaling (nn/lossscale.h): GradScaler's update rule in host C. */
#include "nn/lossscale.h"

#include "check.h"
#include "nn/math_cuda.h"

#include <stdlib.h>

void nn_lossscale_init(nn_lossscale_t *ls)
{
    ls->scale = 65536.0f;
    ls->growth_factor = 2.0f;
    ls->backoff_factor = 0.5f;
    ls->growth_interval = 2000;
    ls->clean_steps = 0;
    ls->skipped_steps = 0;
}

int nn_lossscale_update(nn_lossscale_t *ls, int found_nonfinite)
{
    if (found_nonfinite) {
        ls->scale *= ls->backoff_factor;
        ls->clean_steps = 0;
        ls->skipped_steps++;
        return 0;
    }

    ls->clean_steps++;
    if (ls->clean_steps == ls->growth_interval) {
        /* A scale that would overflow fp32 stays where it is (GradScaler does the same). */
        float grown = ls->scale * ls->growth_factor;
        if (nn_is_finite(grown))
            ls->scale = grown;
        ls->clean_steps = 0;
    }
    return 1;
}

int nn_scale_check_finite_host(float *x, size_t count, float factor)
{
    int finite = 1;
    for (size_t i = 0; i < count; i++)
        finite &= nn_scale_check(&x[i], factor);
    return finite;
}

int nn_lossscale_unscale(nn_lossscale_t *ls, nn_backend_t *be, float *grads, size_t count)
{
    float inverse = 1.0f / ls->scale;
    int finite;
    if (be->scale_check_finite) {
        finite = be->scale_check_finite(be, grads, count, inverse);
    } else {
        float *host = xmalloc(count ? count * sizeof *host : 1);
        be->to_host(be, host, grads, count * sizeof *host);
        finite = nn_scale_check_finite_host(host, count, inverse);
        be->to_device(be, grads, host, count * sizeof *host);
        free(host);
    }
    return nn_lossscale_update(ls, !finite);
}
