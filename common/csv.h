/* CSV reading (plain or gzip, RFC 4180 quoting) and writing. */
#ifndef ICH_CSV_H
#define ICH_CSV_H

#include <stddef.h>
#include <stdio.h>

typedef struct csv_reader csv_reader_t;

/* NULL with a message in err when the file cannot be opened. Reads .gz transparently. */
csv_reader_t *csv_open(const char *path, char *err, size_t errlen);
/*
 * Next record. Returns 1 and sets *fields / *nfields (valid until the next call), 0 at end of
 * file, -1 on a malformed record (message in err, naming the file and line).
 */
int csv_next(csv_reader_t *r, char ***fields, size_t *nfields, char *err, size_t errlen);
/* Line number where the last record began (1-based). */
long csv_line(const csv_reader_t *r);
void csv_close(csv_reader_t *r);

/* Write one record, quoting fields that need it. */
void csv_write_row(FILE *f, const char *const *fields, size_t nfields);

#endif
