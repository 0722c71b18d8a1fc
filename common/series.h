/*
 * Slice metadata as dcm2jpg writes it (meta.h5), and series: slices grouped by (PatientID,
 * StudyInstanceUID, SeriesInstanceUID) and ordered along the slice normal.
 */
#ifndef ICH_SERIES_H
#define ICH_SERIES_H

#include <stddef.h>
#include <stdint.h>

/* The columns of meta.h5 that grouping and folds need; one row per input file. */
typedef struct {
    char *file; /* the meta.h5 path, for messages */
    size_t count;
    char **id, **patient_id, **study_uid, **series_uid, **path, **status;
    double *position;    /* count x 3 (ImagePositionPatient), NaN when absent */
    double *orientation; /* count x 6 (ImageOrientationPatient), NaN when absent */
} meta_table_t;

/* Load meta.h5; dies with EXIT_BAD_INPUT naming the file and column when one is missing. */
void meta_load(const char *path, meta_table_t *meta);
/* A row that describes a converted slice (status "ok" or "exists"). */
int meta_usable(const meta_table_t *meta, size_t row);
/* Number of usable rows; dies with EXIT_BAD_INPUT, counting the rows by status, when none. */
size_t meta_require_usable(const meta_table_t *meta);
/* An empty or all-blank text field (a PatientID or UID that tells nothing apart). */
int meta_blank(const char *text);
/* Two usable rows with the same slice ID: returns 1 and their rows (by ID order), else 0. */
int meta_find_duplicate(const meta_table_t *meta, size_t *first, size_t *second);
void meta_free(meta_table_t *meta);

/* What was unusual about a series; none of it is fatal. */
enum {
    SERIES_SINGLE_SLICE = 1 << 0,
    SERIES_DUPLICATE_POSITION = 1 << 1, /* two slices within 0.01 mm along the normal */
    SERIES_NO_ORIENTATION = 1 << 2,     /* a slice lacks orientation: ordered by z instead */
    SERIES_MIXED_ORIENTATION = 1 << 3,  /* orientations differ: the majority's normal is used */
    SERIES_NO_POSITION = 1 << 4,        /* a slice lacks a position: placed last, by ID */
    SERIES_UNEVEN_SPACING = 1 << 5,     /* a gap over 1.5x or under 0.5x the median spacing */
};
#define SERIES_FLAG_COUNT 6
/* Name of flag bit k ("single_slice", ...). */
const char *series_flag_name(int bit);

typedef struct {
    size_t start, length; /* range of the series' slices in series_set_t's slice arrays */
    unsigned flags;
    double normal[3]; /* unit slice normal the slices were ordered along */
} series_t;

typedef struct {
    size_t nseries, nslices;
    series_t *series;   /* sorted by patient, study, series ID */
    size_t *meta_index; /* per slice: its row in meta.h5, in scan order within each series */
    double *position;   /* per slice: position projected on the normal (mm), NaN if unknown */
    double *spacing;    /* per slice: position minus the previous slice's; NaN for the first */
} series_set_t;

/*
 * Group the usable rows of meta into series and order each along its slice normal, the series
 * on nthreads threads (the result does not depend on nthreads).
 */
void series_build(const meta_table_t *meta, series_set_t *set, int nthreads);
void series_free(series_set_t *set);

#endif
