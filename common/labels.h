/* The challenge's label CSV ("ID,Label", one row per slice and subtype) and its subtypes. */
#ifndef ICH_LABELS_H
#define ICH_LABELS_H

#include <stddef.h>
#include <stdint.h>

#define N_SUBTYPES 6
/* epidural, intraparenchymal, intraventricular, subarachnoid, subdural, any */
extern const char *const SUBTYPE_NAMES[N_SUBTYPES];

typedef struct {
    char *id;                  /* slice ID (SOPInstanceUID) */
    int8_t label[N_SUBTYPES];  /* 0/1, or -1 when the CSV has no row for that subtype */
} slice_labels_t;

typedef struct {
    slice_labels_t *slices; /* sorted by id (strcmp) */
    size_t count;
    size_t duplicate_rows;  /* identical rows dropped */
} label_table_t;

/*
 * Read a labels CSV. Identical duplicate rows are dropped and counted; conflicting values for
 * the same (slice, subtype) are an error naming the ID and line. Returns 0 or -1 with err set.
 */
int labels_read(const char *path, label_table_t *table, char *err, size_t errlen);
/* Binary search; NULL when the slice has no labels. */
const slice_labels_t *labels_find(const label_table_t *table, const char *id);
void labels_free(label_table_t *table);

#endif
