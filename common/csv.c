#include "csv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "check.h"

struct csv_reader {
    gzFile gz;
    char *path;
    long line;        /* lines consumed so far */
    long record_line; /* where the last record began */
    int started;      /* a record was read: a byte-order mark can only come before it */
    char *buf;        /* the current record's text, unescaped in place */
    size_t cap;
    char **fields;
    size_t fields_cap;
    char chunk[65536];
};

csv_reader_t *csv_open(const char *path, char *err, size_t errlen)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno ? errno : EIO));
        return NULL;
    }
    gzbuffer(gz, 1 << 17);
    csv_reader_t *r = xcalloc(1, sizeof *r);
    r->gz = gz;
    r->path = xstrdup(path);
    return r;
}

/* Append one physical line (without its newline) to r->buf at *len; 0 at end of file. */
static int read_line(csv_reader_t *r, size_t *len)
{
    int got = 0;
    for (;;) {
        if (!gzgets(r->gz, r->chunk, sizeof r->chunk))
            return got;
        got = 1;
        size_t n = strlen(r->chunk);
        if (*len + n + 1 > r->cap) {
            r->cap = 2 * (*len + n + 1);
            r->buf = xrealloc(r->buf, r->cap);
        }
        memcpy(r->buf + *len, r->chunk, n + 1);
        *len += n;
        if (n > 0 && r->chunk[n - 1] == '\n') {
            r->buf[--*len] = 0;
            if (*len > 0 && r->buf[*len - 1] == '\r')
                r->buf[--*len] = 0;
            r->line++;
            return 1;
        }
        if (gzeof(r->gz)) {
            r->line++;
            return 1;
        }
    }
}

static int quotes_balanced(const char *s)
{
    int open = 0;
    for (; *s; s++)
        if (*s == '"')
            open = !open;
    return !open;
}

int csv_next(csv_reader_t *r, char ***fields, size_t *nfields, char *err, size_t errlen)
{
    size_t len = 0;
    do {
        len = 0;
        if (!read_line(r, &len)) {
            int gzerr;
            const char *msg = gzerror(r->gz, &gzerr);
            if (gzerr != Z_OK && gzerr != Z_STREAM_END) {
                snprintf(err, errlen, "%s: read error after line %ld: %s", r->path, r->line,
                         msg);
                return -1;
            }
            return 0;
        }
        r->record_line = r->line;
    } while (len == 0); /* skip blank lines */

    /* Spreadsheet programs start UTF-8 files with a byte-order mark; it is not data. */
    if (!r->started && len >= 3 && memcmp(r->buf, "\xEF\xBB\xBF", 3) == 0) {
        memmove(r->buf, r->buf + 3, len - 2);
        len -= 3;
    }
    r->started = 1;

    /* A quoted field may span lines: keep reading until the quotes balance. */
    while (!quotes_balanced(r->buf)) {
        if (len + 2 > r->cap) {
            r->cap = 2 * (len + 2);
            r->buf = xrealloc(r->buf, r->cap);
        }
        r->buf[len++] = '\n';
        r->buf[len] = 0;
        if (!read_line(r, &len)) {
            snprintf(err, errlen, "%s:%ld: unterminated quoted field", r->path, r->record_line);
            return -1;
        }
    }

    /* Split in place, removing quotes. */
    size_t n = 0;
    char *src = r->buf, *dst = r->buf;
    for (;;) {
        if (n == r->fields_cap) {
            r->fields_cap = r->fields_cap ? 2 * r->fields_cap : 16;
            r->fields = xrealloc(r->fields, r->fields_cap * sizeof *r->fields);
        }
        r->fields[n++] = dst;
        if (*src == '"') {
            src++;
            for (;;) {
                if (*src == '"' && src[1] == '"') {
                    *dst++ = '"';
                    src += 2;
                } else if (*src == '"') {
                    src++;
                    break;
                } else {
                    *dst++ = *src++;
                }
            }
            if (*src && *src != ',') {
                snprintf(err, errlen, "%s:%ld: text after a closing quote", r->path,
                         r->record_line);
                return -1;
            }
        } else {
            while (*src && *src != ',')
                *dst++ = *src++;
        }
        if (*src == ',') {
            *dst++ = 0;
            src++;
            continue;
        }
        *dst = 0;
        break;
    }
    *fields = r->fields;
    *nfields = n;
    return 1;
}

long csv_line(const csv_reader_t *r) { return r->record_line; }

void csv_close(csv_reader_t *r)
{
    if (!r)
        return;
    gzclose(r->gz);
    free(r->path);
    free(r->buf);
    free(r->fields);
    free(r);
}

void csv_write_row(FILE *f, const char *const *fields, size_t nfields)
{
    for (size_t i = 0; i < nfields; i++) {
        const char *s = fields[i] ? fields[i] : "";
        if (i)
            fputc(',', f);
        if (strpbrk(s, ",\"\n\r")) {
            fputc('"', f);
            for (; *s; s++) {
                if (*s == '"')
                    fputc('"', f);
                fputc(*s, f);
            }
            fputc('"', f);
        } else {
            fputs(s, f);
        }
    }
    fputc('\n', f);
}
