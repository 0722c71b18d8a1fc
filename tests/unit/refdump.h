/*
 * The NN tests' side of the Python references in tests/ref/: whether they can run, running
 * one, and reading the tensors of the dump it writes.
 */
#ifndef ICH_TEST_REFDUMP_H
#define ICH_TEST_REFDUMP_H

#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "h5io.h"
#include "log.h"

/* Does Debian's python3 (or $PY) import these modules ("torch, h5py")? */
static inline int python_has(const char *modules)
{
    char *cmd = xasprintf("cd tests/ref && ${PY:-/usr/bin/python3} -c 'import %s' 2>/dev/null",
                          modules);
    int ok = system(cmd) == 0;
    free(cmd);
    return ok;
}

/* Run "SCRIPT ARGS" in tests/ref with $PY; dies when it fails; prints how long it took. */
static inline void run_ref_script(const char *script_and_args)
{
    char *cmd = xasprintf("cd tests/ref && ${PY:-/usr/bin/python3} %s", script_and_args);
    double t0 = time_now();
    fflush(stdout);
    if (system(cmd) != 0)
        die(1, "tests/ref/%s failed", script_and_args);
    printf("reference: %.1f s\n", time_now() - t0);
    free(cmd);
}

/*
 * Run "SCRIPT ARGS --out $WORK/NAME" (/tmp without WORK) and open the dump it wrote; *path
 * receives the file's name (heap).
 */
static inline hid_t open_ref_dump(const char *script_and_args, const char *name, char **path)
{
    const char *work = getenv("WORK") ? getenv("WORK") : "/tmp";
    *path = xasprintf("%s/%s", work, name);
    char *cmd = xasprintf("%s --out '%s'", script_and_args, *path);
    run_ref_script(cmd);
    free(cmd);
    return h5_open_read(*path);
}

/* A whole reference tensor, which must hold exactly n values (any shape). */
static inline float *read_ref_exact(hid_t f, const char *path, size_t n)
{
    hsize_t dims[8];
    int rank = h5_dims(f, path, dims);
    size_t total = 1;
    for (int i = 0; i < rank; i++)
        total *= dims[i];
    if (total != n)
        die(1, "%s: reference has %zu values, engine %zu", path, total, n);
    return h5_read(f, path, H5T_NATIVE_FLOAT, -1, NULL);
}

#endif
