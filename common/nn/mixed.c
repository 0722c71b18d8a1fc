/* The programs' device helpers (nn/mixed.h). */
#include "nn/mixed.h"

#include "check.h"
#include "exitcodes.h"

#include <string.h>

static void refuse_fp16(const char *option, const char *backend)
{
    die(EXIT_USAGE, "%s fp16: the %s backend has no fp16 arithmetic (use bf16, or a cuda "
        "device)", option, backend);
}

int nn_mixed_precision_setup(nn_backend_t *be, const char *name, const char *option)
{
    if (!strcmp(name, "fp32"))
        return NN_PRECISION_FP32;
    if (strcmp(name, "bf16") && strcmp(name, "fp16"))
        die(EXIT_USAGE, "%s %s: expected one of " NN_PRECISION_CHOICES, option, name);
    int format = !strcmp(name, "fp16") ? NN_PRECISION_FP16 : NN_PRECISION_BF16;
    if (be->set_mixed_format && be->set_mixed_format(be, format))
        return NN_PRECISION_BF16;
    if (format == NN_PRECISION_FP16)
        refuse_fp16(option, be->name);
    return NN_PRECISION_BF16; /* bf16 is every backend's mixed format */
}

void nn_mixed_precision_check(const char *name, const char *device, const char *option)
{
    if (!strcmp(name, "fp16") && strncmp(device, "cuda", 4) != 0)
        refuse_fp16(option, device);
}

void nn_upload_batch(nn_backend_t *be, void *dev, const void *host, size_t bytes)
{
    if (be->to_device_async)
        be->to_device_async(be, dev, host, bytes);
    else
        be->to_device(be, dev, host, bytes);
}
