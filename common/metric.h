/*
 * The challenge metric: weighted multi-label log loss. Every (slice, subtype) row's log loss
 * is weighted 2 for 'any' and 1 for the five subtypes, predictions clipped to
 * [METRIC_CLIP, 1 - METRIC_CLIP]; the score is the weighted mean over the rows.
 */
#ifndef ICH_METRIC_H
#define ICH_METRIC_H

#include <stddef.h>
#include <stdint.h>

#include "labels.h"

#define METRIC_CLIP 1e-5

/* Row weights in the label order (epidural, ..., subdural, any). */
extern const double METRIC_WEIGHTS[N_SUBTYPES];

typedef struct {
    double score;                /* weighted mean log loss over every scored row */
    double subtype[N_SUBTYPES];  /* mean log loss of one subtype's rows (NaN: no rows) */
    size_t rows[N_SUBTYPES];     /* scored rows per subtype */
    size_t slices;               /* slices with at least one scored row */
} metric_result_t;

/* p clipped to [eps, 1 - eps]; NaN stays NaN. */
double metric_clip(double p, double eps);

/* Log loss of one row after clipping with METRIC_CLIP; label 0 or 1. */
double metric_row_loss(double p, int label);

/*
 * Score n slices: prob and label are n x N_SUBTYPES, row-major. A label of -1 (no CSV row)
 * leaves that row out. With no scored row at all, score and subtypes are NaN.
 */
void metric_score(const double *prob, const int8_t *label, size_t n, metric_result_t *out);

/*
 * Each label's prevalence over the rows listed in rows (n_rows of them; every row when rows
 * is NULL, n_rows then the row count), labels -1 left out; NaN where no row has the label.
 */
void metric_prevalence(const int8_t *label, const size_t *rows, size_t n_rows,
                       double prevalence[N_SUBTYPES]);

/* The score of predicting prevalence[t] for every row of subtype t (the prevalence baseline). */
void metric_score_constant(const double prevalence[N_SUBTYPES], const int8_t *label, size_t n,
                           metric_result_t *out);

#endif
