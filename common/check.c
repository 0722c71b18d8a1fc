#include "check.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "log.h"

void die(int code, const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_error("%s", msg);
    exit(code);
}

static void out_of_memory(size_t n, const char *file, int line)
{
    die(EXIT_INTERNAL, "out of memory allocating %zu bytes (%s:%d)", n, file, line);
}

void *malloc_check(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        out_of_memory(n, file, line);
    return p;
}

void *calloc_check(size_t count, size_t size, const char *file, int line)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        out_of_memory(count * size, file, line);
    return p;
}

void *realloc_check(void *p, size_t n, const char *file, int line)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        out_of_memory(n, file, line);
    return q;
}

char *strdup_check(const char *s, const char *file, int line)
{
    size_t n = strlen(s) + 1;
    char *d = malloc_check(n, file, line);
    memcpy(d, s, n);
    return d;
}

FILE *fopen_check(const char *path, const char *mode, const char *file, int line)
{
    FILE *f = fopen(path, mode);
    if (!f) {
        int reading = mode[0] == 'r';
        die(reading ? EXIT_BAD_INPUT : EXIT_IO, "cannot open %s for %s: %s (%s:%d)", path,
            reading ? "reading" : "writing", strerror(errno), file, line);
    }
    return f;
}

void fwrite_check(const void *p, size_t size, size_t n, FILE *f, const char *path,
                  const char *file, int line)
{
    if (fwrite(p, size, n, f) != n)
        die(EXIT_IO, "cannot write %s: %s (%s:%d)", path, strerror(errno), file, line);
}

void fclose_check(FILE *f, const char *path, const char *file, int line)
{
    if (fclose(f) != 0)
        die(EXIT_IO, "cannot finish writing %s: %s (%s:%d)", path, strerror(errno), file, line);
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

void strlist_push(strlist_t *l, const char *s)
{
    if (l->count == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->items = xrealloc(l->items, l->cap * sizeof *l->items);
    }
    l->items[l->count++] = xstrdup(s);
}

void strlist_free(strlist_t *l)
{
    for (size_t i = 0; i < l->count; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = l->cap = 0;
}

int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}
