/*
 * The challenge metric (metric.h). Sums in long double: a million rows summed in double lose
 * digits, and constant predictions then score their row loss exactly.
 */
#include "metric.h"

#include <math.h>
#include <stdlib.h>

#include "check.h"

const double METRIC_WEIGHTS[N_SUBTYPES] = {1, 1, 1, 1, 1, 2};

double metric_clip(double p, double eps)
{
    if (p < eps)
        return eps;
    if (p > 1 - eps)
        return 1 - eps;
    return p;
}

double metric_row_loss(double p, int label)
{
    double q = metric_clip(p, METRIC_CLIP);
    /* log1p keeps the precision of 1 - q when q is close to 0. */
    return label ? -log(q) : -log1p(-q);
}

void metric_score(const double *prob, const int8_t *label, size_t n, metric_result_t *out)
{
    long double sums[N_SUBTYPES] = {0};
    *out = (metric_result_t){0};

    for (size_t i = 0; i < n; i++) {
        int scored = 0;
        for (int t = 0; t < N_SUBTYPES; t++) {
            int8_t y = label[i * N_SUBTYPES + t];
            if (y < 0)
                continue;
            sums[t] += metric_row_loss(prob[i * N_SUBTYPES + t], y);
            out->rows[t]++;
            scored = 1;
        }
        out->slices += (size_t)scored;
    }

    long double weighted = 0, weight_total = 0;
    for (int t = 0; t < N_SUBTYPES; t++) {
        out->subtype[t] = out->rows[t] ? (double)(sums[t] / out->rows[t]) : NAN;
        weighted += METRIC_WEIGHTS[t] * sums[t];
        weight_total += METRIC_WEIGHTS[t] * out->rows[t];
    }
    out->score = weight_total > 0 ? (double)(weighted / weight_total) : NAN;
}

void metric_prevalence(const int8_t *label, const size_t *rows, size_t n_rows,
                       double prevalence[N_SUBTYPES])
{
    size_t positives[N_SUBTYPES] = {0}, known[N_SUBTYPES] = {0};
    for (size_t k = 0; k < n_rows; k++) {
        const int8_t *row = &label[(rows ? rows[k] : k) * N_SUBTYPES];
        for (int t = 0; t < N_SUBTYPES; t++) {
            if (row[t] < 0)
                continue;
            positives[t] += row[t] == 1;
            known[t]++;
        }
    }
    for (int t = 0; t < N_SUBTYPES; t++)
        prevalence[t] = known[t] ? (double)positives[t] / (double)known[t] : NAN;
}

void metric_score_constant(const double prevalence[N_SUBTYPES], const int8_t *label, size_t n,
                           metric_result_t *out)
{
    double *prob = xmalloc((n ? n : 1) * N_SUBTYPES * sizeof *prob);
    for (size_t i = 0; i < n; i++)
        for (int t = 0; t < N_SUBTYPES; t++)
            prob[i * N_SUBTYPES + t] = prevalence[t];
    metric_score(prob, label, n, out);
    free(prob);
}
