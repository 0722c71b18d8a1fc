/* Checked wrappers: on failure print file:line, the call and the reason, then exit. */
#ifndef ICH_CHECK_H
#define ICH_CHECK_H

#include <stddef.h>
#include <stdio.h>

/* Print "program: error: message" and exit with code. */
void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

void *malloc_check(size_t n, const char *file, int line);
void *calloc_check(size_t count, size_t size, const char *file, int line);
void *realloc_check(void *p, size_t n, const char *file, int line);
char *strdup_check(const char *s, const char *file, int line);
FILE *fopen_check(const char *path, const char *mode, const char *file, int line);
void fwrite_check(const void *p, size_t size, size_t n, FILE *f, const char *path,
                  const char *file, int line);
void fclose_check(FILE *f, const char *path, const char *file, int line);

#define xmalloc(n) malloc_check((n), __FILE__, __LINE__)
#define xcalloc(c, s) calloc_check((c), (s), __FILE__, __LINE__)
#define xrealloc(p, n) realloc_check((p), (n), __FILE__, __LINE__)
#define xstrdup(s) strdup_check((s), __FILE__, __LINE__)
#define xfopen(path, mode) fopen_check((path), (mode), __FILE__, __LINE__)
#define xfwrite(p, s, n, f, path) fwrite_check((p), (s), (n), (f), (path), __FILE__, __LINE__)
#define xfclose(f, path) fclose_check((f), (path), __FILE__, __LINE__)

/* printf into a fresh heap string. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable array of strings. */
typedef struct {
    char **items;
    size_t count, cap;
} strlist_t;
void strlist_push(strlist_t *l, const char *s); /* copies s */
void strlist_free(strlist_t *l);
/* qsort / bsearch comparator over char * elements, in strcmp order. */
int compare_strings(const void *a, const void *b);

#endif
