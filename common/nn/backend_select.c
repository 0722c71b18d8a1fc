/* Choosing a backend by name; loading the CUDA backend's plugin, or saying why there is none. */
#include "nn/backend_cuda.h"
#include "nn/nn.h"

#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local char last_error[512];

#ifndef ICH_HAVE_CUDA
nn_backend_t *nn_backend_cuda_create(int device, char *err, size_t err_size)
{
    (void)device;
    snprintf(err, err_size, "this build has no CUDA backend (mk/probe.sh found no nvcc, cuDNN "
                            "or cuBLAS; see build/config.mk)");
    return NULL;
}

void nn_backend_cuda_memory(nn_backend_t *be, size_t *in_use, size_t *peak)
{
    (void)be;
    *in_use = *peak = 0;
}

int nn_backend_cuda_compiled(void)
{
    return 0;
}
#else
int nn_backend_cuda_compiled(void)
{
    return 1;
}

/* The plugin's entry points once loaded (the process keeps it loaded). */
static nn_backend_t *(*plugin_create)(int, char *, size_t);
static void (*plugin_memory)(nn_backend_t *, size_t *, size_t *);

/* Try one path; on failure append dlerror's reason to tried. */
static int plugin_try(const char *path, char *tried, size_t tried_size)
{
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        size_t used = strlen(tried);
        snprintf(tried + used, tried_size - used, "%s%s", used ? "; " : "", dlerror());
        return 0;
    }
    plugin_create = (nn_backend_t * (*)(int, char *, size_t)) dlsym(lib, "nn_cuda_plugin_create");
    plugin_memory = (void (*)(nn_backend_t *, size_t *, size_t *))dlsym(lib,
                                                                        "nn_cuda_plugin_memory");
    if (!plugin_create || !plugin_memory) {
        snprintf(tried, tried_size, "%s: not the CUDA backend plugin", path);
        plugin_create = NULL;
        return 0;
    }
    return 1;
}

/* Load the plugin: $ICH_CUDA_PLUGIN, else beside the program, else one folder up. */
static int plugin_load(char *err, size_t err_size)
{
    if (plugin_create)
        return 1;
    char tried[1024] = "";
    const char *env = getenv("ICH_CUDA_PLUGIN");
    if (env && *env) {
        if (plugin_try(env, tried, sizeof tried))
            return 1;
    } else {
        char exe[PATH_MAX], path[PATH_MAX + 32];
        ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (len > 0) {
            exe[len] = '\0';
            char *dir = dirname(exe);
            snprintf(path, sizeof path, "%s/%s", dir, NN_CUDA_PLUGIN);
            if (access(path, F_OK) == 0 && plugin_try(path, tried, sizeof tried))
                return 1;
            snprintf(path, sizeof path, "%s/../%s", dir, NN_CUDA_PLUGIN);
            if (access(path, F_OK) == 0 && plugin_try(path, tried, sizeof tried))
                return 1;
            if (!tried[0])
                snprintf(tried, sizeof tried, "no %s in %s or its parent (ICH_CUDA_PLUGIN "
                         "names another)", NN_CUDA_PLUGIN, dir);
        }
    }
    snprintf(err, err_size, "the CUDA backend cannot be loaded: %s", tried);
    return 0;
}

nn_backend_t *nn_backend_cuda_create(int device, char *err, size_t err_size)
{
    if (!plugin_load(err, err_size))
        return NULL;
    return plugin_create(device, err, err_size);
}

void nn_backend_cuda_memory(nn_backend_t *be, size_t *in_use, size_t *peak)
{
    *in_use = *peak = 0;
    if (plugin_memory && strcmp(be->name, "cuda") == 0)
        plugin_memory(be, in_use, peak);
}
#endif

/* The GPU number of "cuda" (0) or "cuda:N"; -1 when the suffix is not a number. */
static int cuda_ordinal(const char *suffix)
{
    if (*suffix == '\0')
        return 0;
    if (*suffix != ':' || suffix[1] < '0' || suffix[1] > '9')
        return -1;
    char *end;
    errno = 0;
    long n = strtol(suffix + 1, &end, 10);
    if (*end != '\0' || errno != 0 || n > 1024)
        return -1;
    return (int)n;
}

nn_backend_t *nn_backend_open(const char *name, char *err, size_t err_size)
{
    char reason[sizeof last_error] = "";
    nn_backend_t *be = NULL;

    if (strcmp(name, "cpu") == 0) {
        be = nn_backend_cpu_create();
    } else if (strncmp(name, "cuda", 4) == 0) {
        int device = cuda_ordinal(name + 4);
        if (device < 0)
            snprintf(reason, sizeof reason, "device '%s': expected cuda or cuda:N", name);
        else
            be = nn_backend_cuda_create(device, reason, sizeof reason);
    } else {
        snprintf(reason, sizeof reason, "unknown device '%s' (cpu, cuda, cuda:N)", name);
    }

    /* A failure with no reason would leave the caller nothing to print. */
    if (!be && !reason[0])
        snprintf(reason, sizeof reason, "device '%s' could not be started", name);
    memcpy(last_error, reason, sizeof last_error);
    if (err && err_size)
        snprintf(err, err_size, "%s", reason);
    return be;
}

nn_backend_t *nn_backend_create(const char *name)
{
    return nn_backend_open(name, NULL, 0);
}

const char *nn_backend_create_error(void)
{
    return last_error;
}
