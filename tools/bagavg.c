/*
 * bagavg: prediction files -> submission CSV. Averages the files (optionally weighted), checks
 * that they cover the same slices, clips, writes the challenge's "ID,Label" CSV and, given a
 * labels CSV, prints the challenge metric.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "check.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "labels.h"
#include "log.h"
#include "metric.h"
#include "opt.h"
#include "predfile.h"
#include "slicelist.h"

typedef struct {
    const char *out, *weights, *labels, *scores, *h5_out, *baseline;
    double clip;
    int require_labels, baseline_holdout;
} bagavg_options_t;

/* One input: its path and weight (before normalising). */
typedef struct {
    char *path;
    double weight;
    int has_weight; /* given as FILE:WEIGHT */
} bag_input_t;

/* "s" after a count other than one: "1 slice", "2 slices". */
static const char *plural(size_t count)
{
    return count == 1 ? "" : "s";
}

static void usage_fail(const char *fmt, const char *arg)
{
    fprintf(stderr, "bagavg: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'bagavg --help'.\n");
    exit(EXIT_USAGE);
}

/* A whole string as a weight: finite and not negative. Returns 0 when it is not one. */
static int parse_weight(const char *text, double *weight)
{
    char *end;
    double w = strtod(text, &end);
    if (end == text || *end || !isfinite(w) || w < 0)
        return 0;
    *weight = w;
    return 1;
}

/*
 * An existing file is always a file, so paths with ':' still work; otherwise "FILE:WEIGHT"
 * when the part after the last ':' is a weight.
 */
static bag_input_t parse_input(const char *arg)
{
    bag_input_t in = {.path = xstrdup(arg), .weight = 1};
    if (path_is_file(arg))
        return in;
    char *colon = strrchr(in.path, ':');
    if (colon && colon != in.path && parse_weight(colon + 1, &in.weight)) {
        *colon = 0;
        in.has_weight = 1;
    }
    return in;
}

/* --weights W1,W2,...: one per input, in order. */
static void apply_weight_list(const char *list, bag_input_t *inputs, int n)
{
    char *copy = xstrdup(list);
    int count = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        double w;
        if (!parse_weight(tok, &w))
            usage_fail("--weights: '%s' is not a weight (a number >= 0)", tok);
        if (count < n)
            inputs[count].weight = w;
        count++;
    }
    free(copy);
    if (count != n) {
        char msg[160];
        snprintf(msg, sizeof msg, "--weights gives %d weight%s for %d prediction file%s",
                 count, plural((size_t)count), n, plural((size_t)n));
        usage_fail("%s", msg);
    }
}

/* Weights normalised to sum 1; usage errors for mixed forms or an all-zero list. */
static void settle_weights(const bagavg_options_t *o, bag_input_t *inputs, int n)
{
    int with_weight = 0;
    for (int i = 0; i < n; i++)
        with_weight += inputs[i].has_weight;
    if (with_weight && o->weights)
        usage_fail("%s", "give weights either with --weights or as FILE:WEIGHT, not both");
    if (with_weight && with_weight != n)
        usage_fail("%s", "FILE:WEIGHT given for some prediction files only: give all a weight");
    if (o->weights)
        apply_weight_list(o->weights, inputs, n);

    /* Each weight over the largest first: the sum of weights near DBL_MAX would overflow
     * (and every normalised weight become 0). */
    double largest = 0, total = 0;
    for (int i = 0; i < n; i++)
        if (inputs[i].weight > largest)
            largest = inputs[i].weight;
    if (!(largest > 0))
        usage_fail("%s", "the weights sum to 0");
    for (int i = 0; i < n; i++)
        total += inputs[i].weight / largest;
    for (int i = 0; i < n; i++)
        inputs[i].weight = inputs[i].weight / largest / total;
}

static void refuse_overwriting_inputs(const char *output, const char *what,
                                      const bag_input_t *inputs, int n, const char *labels,
                                      const char *baseline)
{
    for (int i = 0; i < n; i++)
        if (path_same_file(output, inputs[i].path)) {
            fprintf(stderr, "bagavg: error: %s %s is the input %s: it would be overwritten\n",
                    what, output, inputs[i].path);
            exit(EXIT_USAGE);
        }
    if (labels && path_same_file(output, labels)) {
        fprintf(stderr, "bagavg: error: %s %s is the labels file: it would be overwritten\n",
                what, output);
        exit(EXIT_USAGE);
    }
    if (baseline && path_same_file(output, baseline)) {
        fprintf(stderr, "bagavg: error: %s %s is the --baseline folds file: it would be "
                "overwritten\n", what, output);
        exit(EXIT_USAGE);
    }
}

/* Both tables sorted by ID: the first slice (in ID order) that one has and the other lacks. */
static void require_same_slices(const pred_table_t *a, const pred_table_t *b)
{
    size_t i = 0, j = 0;
    while (i < a->count || j < b->count) {
        int c = i == a->count ? 1 : j == b->count ? -1 : strcmp(a->ids[i], b->ids[j]);
        if (c < 0)
            die(EXIT_BAD_INPUT, "slice %s of %s is missing from %s (%zu and %zu slices)",
                a->ids[i], a->path, b->path, a->count, b->count);
        if (c > 0)
            die(EXIT_BAD_INPUT, "slice %s of %s is missing from %s (%zu and %zu slices)",
                b->ids[j], b->path, a->path, b->count, a->count);
        i++;
        j++;
    }
}

/* A row key is "<slice>_<subtype>": IDs that would need CSV quoting are not slice IDs. */
static void require_plain_ids(const pred_table_t *t)
{
    for (size_t i = 0; i < t->count; i++)
        if (strpbrk(t->ids[i], ",\"\r\n"))
            die(EXIT_BAD_INPUT, "%s: slice ID \"%s\" holds a comma, quote or line break",
                t->path, t->ids[i]);
}

/* Weighted mean of the tables (same slices, same order), then clipped: count x 6 doubles. */
static double *average(const pred_table_t *tables, const bag_input_t *inputs, int n,
                       double clip)
{
    size_t values = tables[0].count * N_SUBTYPES;
    double *mean = xcalloc(values ? values : 1, sizeof *mean);
    for (int k = 0; k < n; k++)
        for (size_t v = 0; v < values; v++)
            mean[v] += inputs[k].weight * (double)tables[k].prob[v];
    for (size_t v = 0; v < values; v++)
        mean[v] = metric_clip(mean[v], clip);
    return mean;
}

/* Where the CSV goes: a plain file or a gzip stream. */
typedef struct {
    const char *path;
    FILE *plain;
    gzFile gz;
} sink_t;

static void sink_open(sink_t *s, const char *tmp, const char *final_path, int gzip)
{
    *s = (sink_t){.path = tmp};
    int fd = tmp_create(tmp, final_path);
    if (gzip)
        s->gz = gzdopen(fd, "wb6");
    else
        s->plain = fdopen(fd, "wb");
    if (!s->gz && !s->plain)
        die(EXIT_IO, "cannot create %s: out of memory", final_path);
}

static void sink_write(sink_t *s, const char *buf, size_t len)
{
    if (s->gz) {
        if (len && gzwrite(s->gz, buf, (unsigned)len) != (int)len)
            die(EXIT_IO, "%s: write failed (disk full?)", s->path);
    } else if (fwrite(buf, 1, len, s->plain) != len) {
        die(EXIT_IO, "%s: write failed (disk full?)", s->path);
    }
}

static void sink_close(sink_t *s)
{
    int failed = s->gz ? gzclose(s->gz) != Z_OK : fclose(s->plain) != 0;
    if (failed)
        die(EXIT_IO, "%s: write failed (disk full?)", s->path);
}

/* The submission, six rows per slice, into a temporary file; returns its path. */
static char *write_submission_tmp(const char *out, const pred_table_t *t, const double *mean)
{
    char *tmp = tmp_path_for(out);
    sink_t sink;
    sink_open(&sink, tmp, out, path_has_ext(out, ".gz"));

    const char header[] = "ID,Label\n";
    sink_write(&sink, header, sizeof header - 1);
    char line[1024];
    for (size_t i = 0; i < t->count; i++)
        for (int s = 0; s < N_SUBTYPES; s++) {
            /* 9 significant digits: the mean to better than 1e-9, shorter than %.17g. */
            int len = snprintf(line, sizeof line, "%s_%s,%.9g\n", t->ids[i], SUBTYPE_NAMES[s],
                               mean[i * N_SUBTYPES + s]);
            if (len < 0 || (size_t)len >= sizeof line)
                die(EXIT_BAD_INPUT, "%s: slice ID too long: %.60s...", t->path, t->ids[i]);
            sink_write(&sink, line, (size_t)len);
        }
    sink_close(&sink);
    return tmp;
}

/* The metric on the predicted slices that have labels, with the counts of unmatched slices. */
typedef struct {
    metric_result_t result;
    size_t labelled_without_prediction, predicted_without_labels;
    int has_baseline;
    metric_result_t baseline; /* predicting each label's prevalence, same slices */
    double prevalence[N_SUBTYPES];
    size_t prevalence_slices;
} bag_score_t;

static int compare_id_key(const void *key, const void *elem)
{
    return strcmp((const char *)key, *(char *const *)elem);
}

/* The prevalence baseline: each label's prevalence among the labelled slices of the folds
 * file (outside the held-out fold), predicted for every scored slice. */
static void score_baseline(const bagavg_options_t *o, const int8_t *label, size_t n,
                           bag_score_t *score)
{
    slicelist_t folds;
    slicelist_read_folds(&folds, o->baseline);
    size_t *rows = xmalloc((folds.count ? folds.count : 1) * sizeof *rows), n_rows = 0;
    for (size_t i = 0; i < folds.count; i++)
        if (folds.fold[i] >= 0 && folds.fold[i] != o->baseline_holdout)
            rows[n_rows++] = i;
    if (!n_rows)
        die(EXIT_BAD_INPUT, "%s: no labelled slices outside fold %d for the baseline",
            o->baseline, o->baseline_holdout);
    metric_prevalence(folds.labels, rows, n_rows, score->prevalence);
    metric_score_constant(score->prevalence, label, n, &score->baseline);
    score->prevalence_slices = n_rows;
    score->has_baseline = 1;
    free(rows);
    slicelist_free(&folds);
}

static void score_predictions(const bagavg_options_t *o, const pred_table_t *t,
                              const double *mean, bag_score_t *score)
{
    label_table_t labels;
    char err[1024];
    if (labels_read(o->labels, &labels, err, sizeof err) != 0)
        die(EXIT_BAD_INPUT, "%s", err);
    *score = (bag_score_t){0};

    /* Labelled slices the predictions lack: usually fine (held-out predictions scored
     * against the whole label file), an error with --require-labels. */
    const char *first_missing = NULL;
    for (size_t i = 0; i < labels.count; i++) {
        if (bsearch(labels.slices[i].id, t->ids, t->count, sizeof *t->ids, compare_id_key))
            continue;
        if (!score->labelled_without_prediction++)
            first_missing = labels.slices[i].id;
    }
    if (score->labelled_without_prediction) {
        if (o->require_labels)
            die(EXIT_BAD_INPUT, "labelled slice %s of %s is missing from the predictions "
                "(%zu such slice%s)", first_missing, o->labels,
                score->labelled_without_prediction, plural(score->labelled_without_prediction));
        log_warn("%zu labelled slice%s of %s %s no prediction (first: %s); scored without "
                 "them", score->labelled_without_prediction,
                 plural(score->labelled_without_prediction), o->labels,
                 score->labelled_without_prediction == 1 ? "has" : "have", first_missing);
    }

    double *prob = xmalloc((t->count ? t->count : 1) * N_SUBTYPES * sizeof *prob);
    int8_t *label = xmalloc((t->count ? t->count : 1) * N_SUBTYPES);
    size_t n = 0;
    for (size_t i = 0; i < t->count; i++) {
        const slice_labels_t *l = labels_find(&labels, t->ids[i]);
        if (!l) {
            score->predicted_without_labels++;
            continue;
        }
        memcpy(&prob[n * N_SUBTYPES], &mean[i * N_SUBTYPES], N_SUBTYPES * sizeof *prob);
        memcpy(&label[n * N_SUBTYPES], l->label, N_SUBTYPES);
        n++;
    }
    if (!n)
        die(EXIT_BAD_INPUT, "none of the %zu predicted slices has labels in %s (%zu labelled "
            "slices): nothing to score; first predicted %s, first labelled %s", t->count,
            o->labels, labels.count, t->count ? t->ids[0] : "-",
            labels.count ? labels.slices[0].id : "-");
    metric_score(prob, label, n, &score->result);
    if (o->baseline)
        score_baseline(o, label, n, score);
    free(prob);
    free(label);
    labels_free(&labels);
}

static void print_score(const bag_score_t *s)
{
    const metric_result_t *r = &s->result;
    printf("score %.6f  (weighted log loss, %zu slice%s scored; %zu predicted slice%s without "
           "labels, %zu labelled slice%s without predictions)\n", r->score, r->slices,
           plural(r->slices), s->predicted_without_labels, plural(s->predicted_without_labels),
           s->labelled_without_prediction, plural(s->labelled_without_prediction));
    for (int t = 0; t < N_SUBTYPES; t++)
        printf("  %-17s %.6f  (%zu row%s, weight %g)\n", SUBTYPE_NAMES[t], r->subtype[t],
               r->rows[t], plural(r->rows[t]), METRIC_WEIGHTS[t]);
    if (s->has_baseline)
        printf("prevalence baseline %.6f  (each label's prevalence among %zu labelled slice%s, "
               "predicted for every slice); score / baseline = %.3f: %s\n",
               s->baseline.score, s->prevalence_slices, plural(s->prevalence_slices),
               r->score / s->baseline.score,
               r->score < s->baseline.score ? "better than the baseline"
                                            : "NOT better than the baseline");
    fflush(stdout);
}

/* key=value lines with every digit, into a temporary file; returns its path. */
static char *write_scores_tmp(const char *path, const bag_score_t *s, int files)
{
    char *tmp = tmp_path_for(path);
    FILE *f = fdopen(tmp_create(tmp, path), "w");
    if (!f)
        die(EXIT_IO, "cannot create %s: out of memory", path);
    const metric_result_t *r = &s->result;
    fprintf(f, "score=%.17g\n", r->score);
    for (int t = 0; t < N_SUBTYPES; t++)
        fprintf(f, "loss_%s=%.17g\n", SUBTYPE_NAMES[t], r->subtype[t]);
    for (int t = 0; t < N_SUBTYPES; t++)
        fprintf(f, "rows_%s=%zu\n", SUBTYPE_NAMES[t], r->rows[t]);
    fprintf(f, "scored_slices=%zu\n", r->slices);
    fprintf(f, "predicted_without_labels=%zu\n", s->predicted_without_labels);
    fprintf(f, "labelled_without_prediction=%zu\n", s->labelled_without_prediction);
    fprintf(f, "prediction_files=%d\n", files);
    if (s->has_baseline) {
        fprintf(f, "baseline=%.17g\n", s->baseline.score);
        fprintf(f, "baseline_slices=%zu\n", s->prevalence_slices);
        for (int t = 0; t < N_SUBTYPES; t++)
            fprintf(f, "prevalence_%s=%.17g\n", SUBTYPE_NAMES[t], s->prevalence[t]);
    }
    if (ferror(f) | (fclose(f) != 0))
        die(EXIT_IO, "%s: write failed (disk full?)", tmp);
    return tmp;
}

/* The mean as a prediction file, left uncommitted; attributes say how it was made. */
static void write_mean_h5_begin(h5out_t *out, const char *path, const pred_table_t *t,
                                const double *mean, const bag_input_t *inputs, int n,
                                double clip)
{
    size_t values = t->count * N_SUBTYPES;
    float *prob = xmalloc(values * sizeof *prob);
    for (size_t v = 0; v < values; v++)
        prob[v] = (float)mean[v];
    predfile_write_begin(out, path, (const char *const *)t->ids, prob, t->count);
    free(prob);

    strlist_t paths = {0}, weights = {0};
    size_t len = 1;
    for (int i = 0; i < n; i++) {
        char w[64];
        snprintf(w, sizeof w, "%.17g", inputs[i].weight);
        strlist_push(&paths, inputs[i].path);
        strlist_push(&weights, w);
        len += strlen(inputs[i].path) + strlen(w) + 2;
    }
    char *joined_paths = xcalloc(len, 1), *joined_weights = xcalloc(len, 1);
    for (int i = 0; i < n; i++) {
        strcat(joined_paths, i ? "," : "");
        strcat(joined_paths, paths.items[i]);
        strcat(joined_weights, i ? "," : "");
        strcat(joined_weights, weights.items[i]);
    }
    h5_attr_str(out->file, "bagged_files", joined_paths);
    h5_attr_str(out->file, "bagged_weights", joined_weights);
    h5_attr_f64(out->file, "clip", clip);
    free(joined_paths);
    free(joined_weights);
    strlist_free(&paths);
    strlist_free(&weights);
}

static void commit(char *tmp, const char *final_path)
{
    if (tmp_commit(tmp, final_path) != 0)
        die(EXIT_IO, "cannot move %s into place: %s", final_path, strerror(errno));
    free(tmp);
}

int main(int argc, char **argv)
{
    log_init("bagavg", LOG_INFO);
    bagavg_options_t o = {.clip = METRIC_CLIP, .baseline_holdout = -1};
    const opt_t options[] = {
        {'o', "out", OPT_STRING, &o.out, "FILE",
         "submission CSV to write, gzip when it ends in .gz (required; missing folders "
         "above it are created, as for every output)", 1, 0, NULL},
        {'w', "weights", OPT_STRING, &o.weights, "W1,W2,...",
         "one weight per prediction file, in order (default: equal)", 1, 0, NULL},
        {0, "clip", OPT_DOUBLE, &o.clip, "EPS",
         "clip the written probabilities to [EPS, 1 - EPS]; 0: no clipping", 0, 0.49, NULL},
        {'l', "labels", OPT_STRING, &o.labels, "FILE",
         "challenge-format labels CSV: print the metric on the slices it labels", 1, 0, NULL},
        {0, "scores", OPT_STRING, &o.scores, "FILE",
         "also write the metric as key=value lines (needs --labels)", 1, 0, NULL},
        {0, "h5-out", OPT_STRING, &o.h5_out, "FILE",
         "also write the mean as a predictions.h5 (the CSV's values, float32)", 1, 0, NULL},
        {0, "baseline", OPT_STRING, &o.baseline, "FOLDS.h5",
         "also score predicting each label's prevalence among the labelled slices of this "
         "folds.h5 (needs --labels)", 1, 0, NULL},
        {0, "baseline-holdout", OPT_INT, &o.baseline_holdout, "F",
         "leave fold F out of --baseline's prevalence (-1: none)", -1, 1000, NULL},
        {0, "require-labels", OPT_FLAG, &o.require_labels, NULL,
         "every slice of --labels must have a prediction (exit 3 otherwise)", 1, 0, NULL},
        {0},
    };
    const opt_spec_t spec = {
        .program = "bagavg",
        .usage = "[options] -o SUBMISSION.csv[.gz] PRED.h5[:WEIGHT]...",
        .summary =
            "Averages prediction files (predictions.h5: /id, /prob N x 6), optionally\n"
            "weighted, clips, and writes the challenge submission: header ID,Label, then\n"
            "<slice>_<subtype>,<probability>, six rows per slice, slices sorted by ID,\n"
            "subtypes in the order epidural, intraparenchymal, intraventricular,\n"
            "subarachnoid, subdural, any. With --labels it prints the challenge metric\n"
            "(weighted multi-label log loss, weight 2 for any, predictions clipped to\n"
            "[1e-5, 1 - 1e-5]) overall and per subtype.",
        .details =
            "Weights: --weights 0.95,0.05 or A.h5:0.95 B.h5:0.05 (not both; all files or\n"
            "none); they are normalised to sum 1. A path that exists is never split at ':'.\n"
            "Every file must hold the same slices; the first slice (in ID order) one file\n"
            "has and another lacks is named (exit 3).\n"
            "--labels: slices with predictions but no labels are left out of the score;\n"
            "labelled slices without predictions give a warning with their count (an error\n"
            "with --require-labels); no labelled slice among the predictions is exit 3.\n"
            "The score is that of the probabilities written (after --clip), clipped again\n"
            "to [1e-5, 1 - 1e-5] as the challenge does. Rows without a label are skipped.\n"
            "Outputs are written under a temporary name and renamed once complete; on any\n"
            "error nothing is written. Layout of the inputs: data-layout.md.",
        .exit_codes =
            "  bagavg: 2 also for a weight count that does not match the files, -o,\n"
            "          --scores or --h5-out naming an input or a folder, a\n"
            "          --baseline-holdout fold the --baseline file lacks or without\n"
            "          --baseline; 3 for a prediction file that is\n"
            "          missing, not HDF5, of the wrong shape, holds a non-finite or out-of-range\n"
            "          probability, or covers other slices than the first file.\n",
        .options = options,
        .min_positional = 1,
        .max_positional = -1,
    };
    char **positional;
    int n = opt_parse(&spec, argc, argv, &positional);
    if (!o.out)
        usage_fail("%s", "-o SUBMISSION.csv is required");
    if (o.scores && !o.labels)
        usage_fail("%s", "--scores needs --labels");
    if (o.baseline && !o.labels)
        usage_fail("%s", "--baseline needs --labels");
    /* The held-out fold only shapes the baseline: alone it would be ignored unnoticed. */
    if (!o.baseline && o.baseline_holdout != -1)
        usage_fail("%s", "--baseline-holdout needs --baseline");
    if (o.baseline)
        slicelist_require_fold(o.baseline, "--baseline-holdout", o.baseline_holdout);
    output_path_check("-o", o.out, "submission.csv");
    if (o.scores)
        output_path_check("--scores", o.scores, "scores.txt");
    if (o.h5_out)
        output_path_check("--h5-out", o.h5_out, "predictions.h5");

    bag_input_t *inputs = xmalloc((size_t)n * sizeof *inputs);
    for (int i = 0; i < n; i++)
        inputs[i] = parse_input(positional[i]);
    settle_weights(&o, inputs, n);
    refuse_overwriting_inputs(o.out, "-o", inputs, n, o.labels, o.baseline);
    if (o.scores)
        refuse_overwriting_inputs(o.scores, "--scores", inputs, n, o.labels, o.baseline);
    if (o.h5_out)
        refuse_overwriting_inputs(o.h5_out, "--h5-out", inputs, n, o.labels, o.baseline);
    if ((o.scores && strcmp(o.scores, o.out) == 0) || (o.h5_out && strcmp(o.h5_out, o.out) == 0)
        || (o.scores && o.h5_out && strcmp(o.scores, o.h5_out) == 0))
        usage_fail("%s", "-o, --scores and --h5-out must name different files");

    double t0 = time_now();
    pred_table_t *tables = xmalloc((size_t)n * sizeof *tables);
    for (int i = 0; i < n; i++) {
        predfile_read(inputs[i].path, &tables[i]);
        if (i > 0)
            require_same_slices(&tables[0], &tables[i]);
        log_debug("%s: %zu slices, weight %.6g", inputs[i].path, tables[i].count,
                  inputs[i].weight);
    }
    /* No slices at all (a dataset without test slices): the submission is its header only. */
    if (!tables[0].count)
        log_warn("the prediction files hold no slices: %s will have its header only", o.out);
    require_plain_ids(&tables[0]);
    double *mean = average(tables, inputs, n, o.clip);

    bag_score_t score;
    if (o.labels)
        score_predictions(&o, &tables[0], mean, &score);

    /* Every output complete before any appears. */
    char *csv_tmp = write_submission_tmp(o.out, &tables[0], mean);
    char *scores_tmp = o.scores ? write_scores_tmp(o.scores, &score, n) : NULL;
    h5out_t mean_h5;
    if (o.h5_out)
        write_mean_h5_begin(&mean_h5, o.h5_out, &tables[0], mean, inputs, n, o.clip);
    commit(csv_tmp, o.out);
    if (scores_tmp)
        commit(scores_tmp, o.scores);
    if (o.h5_out)
        h5out_commit(&mean_h5);
    if (o.labels)
        print_score(&score);
    log_info("%d prediction file%s, %zu slice%s -> %s (%zu rows, %.2f s)", n, plural((size_t)n),
             tables[0].count, plural(tables[0].count), o.out, tables[0].count * N_SUBTYPES,
             time_now() - t0);

    for (int i = 0; i < n; i++) {
        predfile_free(&tables[i]);
        free(inputs[i].path);
    }
    free(tables);
    free(inputs);
    free(mean);
    free(positional);
    return EXIT_OK;
}
