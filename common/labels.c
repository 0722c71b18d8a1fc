#include "labels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "check.h"
#include "csv.h"

const char *const SUBTYPE_NAMES[N_SUBTYPES] = {
    "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any",
};

/*
 * The real file has six consecutive rows per slice, so rows are first gathered into one record
 * per run of equal IDs; sorting those (not the rows) keeps the work six times smaller.
 */
typedef struct {
    size_t id_offset;          /* into the ID arena */
    int8_t label[N_SUBTYPES];  /* -1: no row yet */
    long line[N_SUBTYPES];     /* where each label was read, for conflict messages */
} label_record_t;

typedef struct {
    char *arena; /* NUL-terminated IDs, back to back */
    size_t arena_len, arena_cap;
    label_record_t *records;
    size_t count, cap;
    size_t duplicate_rows;
    const char *path;
} label_reader_t;

static int subtype_index(const char *name)
{
    for (int k = 0; k < N_SUBTYPES; k++)
        if (strcmp(name, SUBTYPE_NAMES[k]) == 0)
            return k;
    return -1;
}

static size_t arena_add(label_reader_t *rd, const char *s, size_t len)
{
    if (rd->arena_len + len + 1 > rd->arena_cap) {
        rd->arena_cap = 2 * (rd->arena_len + len + 1) + 4096;
        rd->arena = xrealloc(rd->arena, rd->arena_cap);
    }
    size_t offset = rd->arena_len;
    memcpy(rd->arena + offset, s, len);
    rd->arena[offset + len] = 0;
    rd->arena_len += len + 1;
    return offset;
}

static label_record_t *record_for(label_reader_t *rd, const char *id, size_t len)
{
    if (rd->count > 0) {
        label_record_t *last = &rd->records[rd->count - 1];
        const char *last_id = rd->arena + last->id_offset;
        if (strlen(last_id) == len && memcmp(last_id, id, len) == 0)
            return last;
    }
    if (rd->count == rd->cap) {
        rd->cap = rd->cap ? 2 * rd->cap : 4096;
        rd->records = xrealloc(rd->records, rd->cap * sizeof *rd->records);
    }
    label_record_t *r = &rd->records[rd->count++];
    r->id_offset = arena_add(rd, id, len);
    for (int k = 0; k < N_SUBTYPES; k++) {
        r->label[k] = -1;
        r->line[k] = 0;
    }
    return r;
}

/* Store one label; identical repeats are counted, different values are an error. */
static int record_set(label_reader_t *rd, label_record_t *r, int subtype, int value, long line,
                      char *err, size_t errlen)
{
    if (r->label[subtype] < 0) {
        r->label[subtype] = (int8_t)value;
        r->line[subtype] = line;
        return 0;
    }
    if (r->label[subtype] == value) {
        rd->duplicate_rows++;
        return 0;
    }
    snprintf(err, errlen, "%s: conflicting labels for %s_%s: line %ld says %d, line %ld says %d",
             rd->path, rd->arena + r->id_offset, SUBTYPE_NAMES[subtype], r->line[subtype],
             r->label[subtype], line, value);
    return -1;
}

static int parse_label_value(const char *s, int *value)
{
    while (*s == ' ')
        s++;
    if ((s[0] == '0' || s[0] == '1') && (s[1] == 0 || s[1] == ' ')) {
        *value = s[0] - '0';
        return 0;
    }
    return -1;
}

static int parse_row(label_reader_t *rd, char **fields, size_t nfields, long line, char *err,
                     size_t errlen)
{
    if (nfields != 2) {
        snprintf(err, errlen, "%s:%ld: expected 2 fields (ID,Label), found %zu", rd->path, line,
                 nfields);
        return -1;
    }
    const char *key = fields[0];
    const char *sep = strrchr(key, '_');
    int subtype = sep ? subtype_index(sep + 1) : -1;
    if (subtype < 0 || sep == key) {
        snprintf(err, errlen, "%s:%ld: '%s' is not <slice ID>_<subtype> with a known subtype",
                 rd->path, line, key);
        return -1;
    }
    int value;
    if (parse_label_value(fields[1], &value) != 0) {
        snprintf(err, errlen, "%s:%ld: label of %s is '%s', expected 0 or 1", rd->path, line,
                 key, fields[1]);
        return -1;
    }
    label_record_t *r = record_for(rd, key, (size_t)(sep - key));
    return record_set(rd, r, subtype, value, line, err, errlen);
}

static int compare_records(const void *a, const void *b, void *arena_ptr)
{
    const char *arena = arena_ptr;
    const label_record_t *ra = a, *rb = b;
    int c = strcmp(arena + ra->id_offset, arena + rb->id_offset);
    if (c)
        return c;
    /* Equal IDs: keep file order so that conflict messages name the earlier line first. */
    long la = ra->line[0], lb = rb->line[0];
    for (int k = 1; k < N_SUBTYPES; k++) {
        if (!la || (ra->line[k] && ra->line[k] < la))
            la = ra->line[k];
        if (!lb || (rb->line[k] && rb->line[k] < lb))
            lb = rb->line[k];
    }
    return (la > lb) - (la < lb);
}

/* Sort the records and fold records of the same ID (rows of one slice far apart) into one. */
static int merge_records(label_reader_t *rd, label_table_t *table, char *err, size_t errlen)
{
    if (rd->count) /* an empty file has no records array at all */
        qsort_r(rd->records, rd->count, sizeof *rd->records, compare_records, rd->arena);

    table->slices = xcalloc(rd->count ? rd->count : 1, sizeof *table->slices);
    table->count = 0;
    for (size_t i = 0; i < rd->count;) {
        label_record_t *first = &rd->records[i];
        const char *id = rd->arena + first->id_offset;
        size_t j = i + 1;
        for (; j < rd->count && strcmp(rd->arena + rd->records[j].id_offset, id) == 0; j++)
            for (int k = 0; k < N_SUBTYPES; k++) {
                if (rd->records[j].label[k] < 0)
                    continue;
                if (record_set(rd, first, k, rd->records[j].label[k], rd->records[j].line[k],
                               err, errlen) != 0)
                    return -1;
            }
        slice_labels_t *s = &table->slices[table->count++];
        s->id = xstrdup(id);
        memcpy(s->label, first->label, sizeof s->label);
        i = j;
    }
    table->duplicate_rows = rd->duplicate_rows;
    return 0;
}

int labels_read(const char *path, label_table_t *table, char *err, size_t errlen)
{
    memset(table, 0, sizeof *table);
    csv_reader_t *csv = csv_open(path, err, errlen);
    if (!csv)
        return -1;

    label_reader_t rd = {.path = path};
    char **fields;
    size_t nfields;
    int rc, first = 1;
    while ((rc = csv_next(csv, &fields, &nfields, err, errlen)) == 1) {
        long line = csv_line(csv);
        /* The header is optional, but when present it is the first record. */
        if (first && nfields == 2 && strcasecmp(fields[0], "ID") == 0 &&
            strcasecmp(fields[1], "Label") == 0) {
            first = 0;
            continue;
        }
        first = 0;
        if (parse_row(&rd, fields, nfields, line, err, errlen) != 0) {
            rc = -1;
            break;
        }
    }
    csv_close(csv);
    if (rc == 0)
        rc = merge_records(&rd, table, err, errlen);
    free(rd.records);
    free(rd.arena);
    if (rc != 0) {
        labels_free(table);
        return -1;
    }
    return 0;
}

static int compare_id_to_slice(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const slice_labels_t *)elem)->id);
}

const slice_labels_t *labels_find(const label_table_t *table, const char *id)
{
    if (!table->count)
        return NULL;
    return bsearch(id, table->slices, table->count, sizeof *table->slices, compare_id_to_slice);
}

void labels_free(label_table_t *table)
{
    if (table->slices)
        for (size_t i = 0; i < table->count; i++)
            free(table->slices[i].id);
    free(table->slices);
    memset(table, 0, sizeof *table);
}
