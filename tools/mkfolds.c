/*
 * mkfolds: labels CSV + meta.h5 -> folds.h5. Every converted slice with its six labels and its
 * cross-validation fold, grouped by patient; slices without labels form the test set (fold -1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "labels.h"
#include "log.h"
#include "opt.h"
#include "pool.h"
#include "series.h"

#define MAX_FOLDS 100
#define ANY (N_SUBTYPES - 1)

typedef struct {
    const char *out;
    const char *method;
    int folds, threads;
    long long seed;
} mkfolds_options_t;

/* One usable row of meta.h5 with its labels. Rows are kept in slice ID order. */
typedef struct {
    size_t meta_row;
    const char *id, *patient;
    const slice_labels_t *labels; /* NULL: test slice */
    int fold;
} fold_slice_t;

static int compare_slices_by_id(const void *a, const void *b)
{
    return strcmp(((const fold_slice_t *)a)->id, ((const fold_slice_t *)b)->id);
}

/* Patient of each labelled slice with the slice's position in ID order. */
typedef struct {
    const char *patient;
    size_t position;
    int positive;
} patient_row_t;

static int compare_patient_rows(const void *a, const void *b)
{
    const patient_row_t *x = a, *y = b;
    int c = strcmp(x->patient, y->patient);
    return c ? c : (x->position > y->position) - (x->position < y->position);
}

/* A patient: its first row in ID order, its slices and 'any' positives. */
typedef struct {
    const char *patient;
    size_t first, slices, positives;
    int fold;
    size_t shuffle_rank;
} patient_t;

static patient_t *collect_patients(const fold_slice_t *slices, size_t n, size_t *npatients)
{
    patient_row_t *rows = xmalloc((n ? n : 1) * sizeof *rows);
    size_t nrows = 0;
    for (size_t i = 0; i < n; i++) {
        if (!slices[i].labels)
            continue;
        rows[nrows].patient = slices[i].patient;
        rows[nrows].position = nrows;
        rows[nrows].positive = slices[i].labels->label[ANY] == 1;
        nrows++;
    }
    qsort(rows, nrows, sizeof *rows, compare_patient_rows);

    patient_t *patients = xmalloc((nrows ? nrows : 1) * sizeof *patients);
    size_t np = 0;
    for (size_t i = 0; i < nrows; i++) {
        if (i == 0 || strcmp(rows[i].patient, rows[i - 1].patient) != 0) {
            patients[np] = (patient_t){.patient = rows[i].patient, .first = rows[i].position};
            np++;
        }
        patients[np - 1].slices++;
        patients[np - 1].positives += (size_t)rows[i].positive;
    }
    free(rows);
    *npatients = np;
    return patients;
}

/*
 * The original rule: labelled slices sorted by ID (joined with the metadata, so slices without
 * metadata are not counted); a patient's fold is the position of its first row modulo k.
 */
static void assign_original(patient_t *patients, size_t np, int k)
{
    for (size_t p = 0; p < np; p++)
        patients[p].fold = (int)(patients[p].first % (size_t)k);
}

/*
 * The original rule can leave a fold without patients even when K does not exceed them
 * (patients whose first slices lie a multiple of K positions apart share a fold). The rule
 * must stay as it is, so such a split is refused: an empty validation fold would only fail
 * later in the pipeline.
 */
static void require_no_empty_fold(const patient_t *patients, size_t np, int k,
                                  const char *method, const char *labels_path,
                                  const char *meta_path)
{
    size_t per_fold[MAX_FOLDS] = {0};
    for (size_t p = 0; p < np; p++)
        per_fold[patients[p].fold]++;
    int empty = -1, empty_count = 0;
    char counts[MAX_FOLDS * 8] = "";
    size_t used = 0;
    for (int f = 0; f < k; f++) {
        if (!per_fold[f] && empty_count++ == 0)
            empty = f;
        if (used < sizeof counts)
            used += (size_t)snprintf(counts + used, sizeof counts - used, "%s%zu",
                                     f ? " " : "", per_fold[f]);
    }
    if (empty < 0)
        return;
    die(EXIT_BAD_INPUT, "-k %d --method %s: %d of the %d folds would be empty (first: fold %d) "
        "for the %zu labelled patients of %s and %s (patients per fold: %s): the rule puts "
        "a patient in the fold of its first slice's position in ID order modulo %d; give a "
        "smaller -k or --method stratified", k, method, empty_count, k, empty, np,
        labels_path, meta_path, counts, k);
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int compare_for_stratified(const void *a, const void *b)
{
    const patient_t *x = *(patient_t *const *)a, *y = *(patient_t *const *)b;
    if (x->positives != y->positives)
        return x->positives > y->positives ? -1 : 1;
    return (x->shuffle_rank > y->shuffle_rank) - (x->shuffle_rank < y->shuffle_rank);
}

/*
 * Seeded and balanced: patients in a seeded random order, those with the most positive slices
 * first. A patient with positives goes to the fold with the fewest positives so far (then the
 * fewest slices); one without to the fold with the fewest slices, which evens out the sizes.
 */
static void assign_stratified(patient_t *patients, size_t np, int k, uint64_t seed)
{
    patient_t **order = xmalloc((np ? np : 1) * sizeof *order);
    for (size_t p = 0; p < np; p++)
        order[p] = &patients[p];
    uint64_t state = seed ^ 0x6d6b666f6c647321ULL;
    for (size_t p = np; p > 1; p--) {
        size_t j = (size_t)(splitmix64(&state) % p);
        patient_t *t = order[p - 1];
        order[p - 1] = order[j];
        order[j] = t;
    }
    for (size_t p = 0; p < np; p++)
        order[p]->shuffle_rank = p;
    qsort(order, np, sizeof *order, compare_for_stratified);

    size_t positives[MAX_FOLDS] = {0}, slices[MAX_FOLDS] = {0};
    for (size_t p = 0; p < np; p++) {
        int best = 0;
        for (int f = 1; f < k; f++) {
            int fewer_positives = positives[f] < positives[best] ||
                                  (positives[f] == positives[best] && slices[f] < slices[best]);
            int fewer_slices = slices[f] < slices[best];
            if (order[p]->positives ? fewer_positives : fewer_slices)
                best = f;
        }
        order[p]->fold = best;
        positives[best] += order[p]->positives;
        slices[best] += order[p]->slices;
    }
    free(order);
}

static int compare_patient_names(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const patient_t *)elem)->patient);
}

typedef struct {
    int64_t slices[MAX_FOLDS + 1], patients[MAX_FOLDS + 1];
    int64_t positives[MAX_FOLDS + 1][N_SUBTYPES]; /* last index: the test set */
} fold_summary_t;

static void summarise(const fold_slice_t *slices, size_t n, const patient_t *patients,
                      size_t np, int k, fold_summary_t *sum)
{
    memset(sum, 0, sizeof *sum);
    for (size_t i = 0; i < n; i++) {
        int f = slices[i].fold < 0 ? k : slices[i].fold;
        sum->slices[f]++;
        if (slices[i].labels)
            for (int t = 0; t < N_SUBTYPES; t++)
                sum->positives[f][t] += slices[i].labels->label[t] == 1;
    }
    for (size_t p = 0; p < np; p++)
        sum->patients[patients[p].fold]++;
}

static void print_summary(const fold_summary_t *sum, int k)
{
    char line[512];
    int len = snprintf(line, sizeof line, "%-5s %8s %8s", "fold", "slices", "patients");
    for (int t = 0; t < N_SUBTYPES; t++)
        len += snprintf(line + len, sizeof line - (size_t)len, " %8.8s", SUBTYPE_NAMES[t]);
    log_info("%s", line);
    for (int f = 0; f <= k; f++) {
        char name[16];
        snprintf(name, sizeof name, f == k ? "test" : "%d", f);
        if (f == k)
            len = snprintf(line, sizeof line, "%-5s %8lld %8s", name,
                           (long long)sum->slices[f], "-");
        else
            len = snprintf(line, sizeof line, "%-5s %8lld %8lld", name,
                           (long long)sum->slices[f], (long long)sum->patients[f]);
        for (int t = 0; t < N_SUBTYPES && f < k; t++)
            len += snprintf(line + len, sizeof line - (size_t)len, " %8lld",
                            (long long)sum->positives[f][t]);
        log_info("%s", line);
    }
}

static void write_folds(const mkfolds_options_t *o, const char *labels_path,
                        const meta_table_t *meta, const fold_slice_t *slices, size_t n,
                        const fold_summary_t *sum, int64_t labels_without_meta,
                        int64_t partial_label_slices, const label_table_t *labels)
{
    const char **ids = xmalloc((n ? n : 1) * sizeof *ids);
    const char **patients = xmalloc((n ? n : 1) * sizeof *patients);
    int8_t *label = xmalloc((n ? n : 1) * N_SUBTYPES);
    int32_t *fold = xmalloc((n ? n : 1) * sizeof *fold);
    int64_t *meta_index = xmalloc((n ? n : 1) * sizeof *meta_index);
    for (size_t i = 0; i < n; i++) {
        ids[i] = slices[i].id;
        patients[i] = slices[i].patient;
        fold[i] = slices[i].fold;
        meta_index[i] = (int64_t)slices[i].meta_row;
        for (int t = 0; t < N_SUBTYPES; t++)
            label[i * N_SUBTYPES + t] = slices[i].labels ? slices[i].labels->label[t] : -1;
    }

    h5out_t out;
    h5out_create(&out, o->out);
    hsize_t dims[2] = {n, N_SUBTYPES};
    h5_write_strings(out.file, "id", ids, n);
    h5_write_strings(out.file, "patient_id", patients, n);
    h5_write_i8(out.file, "label", label, 2, dims);
    h5_write_i32(out.file, "fold", fold, 1, dims);
    h5_write_i64(out.file, "meta_index", meta_index, 1, dims);

    int k = o->folds;
    int64_t positives[MAX_FOLDS * N_SUBTYPES];
    for (int f = 0; f < k; f++)
        memcpy(&positives[f * N_SUBTYPES], sum->positives[f], sizeof sum->positives[f]);
    hsize_t fdims[2] = {(hsize_t)k, N_SUBTYPES};
    h5_write_i64(out.file, "summary/slices", sum->slices, 1, fdims);
    h5_write_i64(out.file, "summary/patients", sum->patients, 1, fdims);
    h5_write_i64(out.file, "summary/positives", positives, 2, fdims);

    char subtypes[256] = "";
    for (int t = 0; t < N_SUBTYPES; t++) {
        strcat(subtypes, SUBTYPE_NAMES[t]);
        if (t + 1 < N_SUBTYPES)
            strcat(subtypes, ",");
    }
    h5_attr_str(out.file, "subtypes", subtypes);
    h5_attr_i64(out.file, "folds", k);
    h5_attr_str(out.file, "method", o->method);
    h5_attr_i64(out.file, "seed", o->seed);
    h5_attr_str(out.file, "labels_file", labels_path);
    h5_attr_str(out.file, "meta_file", meta->file);
    h5_attr_i64(out.file, "test_slices", sum->slices[k]);
    h5_attr_i64(out.file, "labelled_slices", (int64_t)n - sum->slices[k]);
    h5_attr_i64(out.file, "labels_without_meta", labels_without_meta);
    h5_attr_i64(out.file, "duplicate_label_rows", (int64_t)labels->duplicate_rows);
    h5_attr_i64(out.file, "partial_label_slices", partial_label_slices);
    h5_attr_provenance(out.file);
    h5out_commit(&out);

    free(ids);
    free(patients);
    free(label);
    free(fold);
    free(meta_index);
}

/* Labelled slices that no usable metadata row has (both lists sorted by ID). */
static int64_t count_labels_without_meta(const label_table_t *labels, const fold_slice_t *slices,
                                         size_t n)
{
    int64_t missing = 0;
    size_t j = 0;
    for (size_t i = 0; i < labels->count; i++) {
        const char *id = labels->slices[i].id;
        while (j < n && strcmp(slices[j].id, id) < 0)
            j++;
        if (j < n && strcmp(slices[j].id, id) == 0)
            continue;
        if (missing < 5)
            log_debug("labelled slice without metadata: %s", id);
        missing++;
    }
    return missing;
}

typedef struct {
    fold_slice_t *slices;
    const label_table_t *labels;
} join_job_t;

static void join_one_slice(size_t index, int thread, void *ctx)
{
    (void)thread;
    join_job_t *job = ctx;
    job->slices[index].labels = labels_find(job->labels, job->slices[index].id);
}

/* Append ", ID" to a short list that shows what a file's IDs look like. */
static void append_id(char *list, size_t len, const char *id)
{
    size_t used = strlen(list);
    snprintf(list + used, len - used, "%s%s", used ? ", " : "", id);
}

/* No labelled slice has metadata: almost always labels and images of different datasets. */
static void die_no_match(const char *labels_path, const label_table_t *labels,
                         const char *meta_path, const fold_slice_t *slices, size_t n)
{
    char label_ids[256] = "", meta_ids[256] = "";
    for (size_t i = 0; i < 3 && i < labels->count; i++)
        append_id(label_ids, sizeof label_ids, labels->slices[i].id);
    for (size_t i = 0; i < 3 && i < n; i++)
        append_id(meta_ids, sizeof meta_ids, slices[i].id);
    die(EXIT_BAD_INPUT, "none of the %zu labelled slices of %s is among the %zu usable slices "
        "of %s: are they from the same dataset? Labels: %s%s; metadata: %s%s",
        labels->count, labels_path, n, meta_path, label_ids, labels->count > 3 ? ", ..." : "",
        meta_ids, n > 3 ? ", ..." : "");
}

/*
 * Every labelled slice needs a PatientID: an empty one would make all such slices one
 * "patient", putting different patients in one fold. Test slices only carry it along.
 */
static void check_patient_ids(const char *meta_path, const meta_table_t *meta,
                              const fold_slice_t *slices, size_t n)
{
    size_t blank_test = 0, first_test = 0;
    for (size_t i = 0; i < n; i++) {
        if (!meta_blank(slices[i].patient))
            continue;
        if (slices[i].labels)
            die(EXIT_BAD_INPUT, "%s: labelled slice %s (%s) has no PatientID: its patient "
                "cannot be kept in one fold", meta_path, slices[i].id,
                meta->path[slices[i].meta_row]);
        if (blank_test++ == 0)
            first_test = i;
    }
    if (blank_test)
        log_warn("%s: %zu test slices (no labels) have no PatientID (first: %s)", meta_path,
                 blank_test, slices[first_test].id);
}

/* The first subtype without a CSV row, or -1 when the slice has all six. */
static int first_missing_subtype(const slice_labels_t *labels)
{
    for (int t = 0; t < N_SUBTYPES; t++)
        if (labels->label[t] < 0)
            return t;
    return -1;
}

/* Labelled slices with fewer than six subtype rows: kept, -1 where a row is missing. */
static int64_t count_partial_labels(const char *labels_path, const fold_slice_t *slices,
                                    size_t n)
{
    int64_t partial = 0;
    const fold_slice_t *first = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!slices[i].labels || first_missing_subtype(slices[i].labels) < 0)
            continue;
        if (partial++ == 0)
            first = &slices[i];
    }
    if (partial)
        log_warn("%s: %lld labelled slice%s lack%s some of the six subtype rows (first: %s, "
                 "no %s row); their missing labels are -1", labels_path, (long long)partial,
                 partial == 1 ? "" : "s", partial == 1 ? "s" : "", first->id,
                 SUBTYPE_NAMES[first_missing_subtype(first->labels)]);
    return partial;
}

int main(int argc, char **argv)
{
    log_init("mkfolds", LOG_INFO);
    mkfolds_options_t o = {.out = NULL, .method = "original", .folds = 5, .threads = 1,
                           .seed = 0};
    const opt_t options[] = {
        {'o', "out", OPT_STRING, &o.out, "FILE",
         "folds file to write (required; missing folders above it are created)", 1, 0, NULL},
        {'k', "folds", OPT_INT, &o.folds, "K", "number of folds", 2, MAX_FOLDS, NULL},
        {0, "method", OPT_CHOICE, &o.method, "METHOD",
         "original: the reference rule; stratified: seeded, balances 'any' positives", 1, 0,
         "original|stratified"},
        {0, "seed", OPT_INT64, &o.seed, "S", "seed of --method stratified", 1, 0, NULL},
        {'j', "threads", OPT_INT, &o.threads, "N",
         "worker threads joining slices with their labels (same output for any N)", 1, 256,
         NULL},
        {0},
    };
    const opt_spec_t spec = {
        .program = "mkfolds",
        .usage = "[options] -o FOLDS.h5 LABELS.csv META.h5",
        .summary =
            "Assigns every converted slice of a dcm2jpg metadata table (status ok or exists)\n"
            "to a cross-validation fold, grouped by PatientID, and stores its six labels\n"
            "(int8, -1 where the CSV has none). Slices without labels form the test set\n"
            "(fold -1). The labels CSV is the challenge's 'ID,Label' format (plain or .gz);\n"
            "identical duplicate rows are dropped, conflicting rows are an error.",
        .details =
            "--method original reproduces the reference exactly: the labelled slices sorted by\n"
            "ID, those without metadata dropped; a patient's fold is the 0-based position of\n"
            "its first slice in that list, modulo K.\n"
            "--method stratified: patients in a seeded random order, most positive slices\n"
            "first; each with positives to the fold with the fewest 'any' positives so far,\n"
            "each without to the fold with the fewest slices.\n"
            "Useless inputs stop the run (exit 3): a labels CSV without rows, a META.h5\n"
            "without usable rows, labels that match none of its slices, fewer labelled\n"
            "patients than K (or than 2), a fold left without patients (the original\n"
            "rule can leave one: a smaller K or the stratified method then helps), a\n"
            "labelled slice without PatientID. Labelled slices lacking some of the six\n"
            "subtype rows are kept (-1 there), with a warning.\n"
            "Layout of the output: data-layout.md.",
        .exit_codes =
            "  mkfolds: 2 also when -o names one of the inputs (it would be overwritten)\n"
            "           or a folder;\n"
            "           3 also for the useless inputs above.\n",
        .options = options,
        .min_positional = 2,
        .max_positional = 2,
    };
    char **inputs;
    opt_parse(&spec, argc, argv, &inputs);
    if (!o.out) {
        fprintf(stderr, "mkfolds: error: -o FOLDS.h5 is required\nTry 'mkfolds --help'.\n");
        free(inputs);
        return EXIT_USAGE;
    }
    output_path_check("-o", o.out, "folds.h5");
    const char *labels_path = inputs[0], *meta_path = inputs[1];
    for (int i = 0; i < 2; i++)
        if (path_same_file(o.out, inputs[i])) {
            fprintf(stderr, "mkfolds: error: -o %s is the input %s (%s): it would be "
                            "overwritten; give another output file\n", o.out,
                    i ? "META.h5" : "LABELS.csv", inputs[i]);
            free(inputs);
            return EXIT_USAGE;
        }

    double t0 = time_now();
    label_table_t labels;
    char err[1024];
    if (labels_read(labels_path, &labels, err, sizeof err) != 0)
        die(EXIT_BAD_INPUT, "%s", err);
    if (!labels.count)
        die(EXIT_BAD_INPUT, "%s: no label rows (the file is empty or holds only its header)",
            labels_path);
    if (labels.duplicate_rows)
        log_info("%s: %zu identical duplicate rows dropped", labels_path, labels.duplicate_rows);
    meta_table_t meta;
    meta_load(meta_path, &meta);
    meta_require_usable(&meta);
    size_t dup_a, dup_b;
    if (meta_find_duplicate(&meta, &dup_a, &dup_b))
        die(EXIT_BAD_INPUT, "%s: slice ID %s appears twice: %s and %s", meta_path,
            meta.id[dup_a], meta.path[dup_a], meta.path[dup_b]);

    /* Usable slices in ID order, each with its labels or none. */
    fold_slice_t *slices = xmalloc((meta.count ? meta.count : 1) * sizeof *slices);
    size_t n = 0;
    for (size_t i = 0; i < meta.count; i++)
        if (meta_usable(&meta, i))
            slices[n++] = (fold_slice_t){.meta_row = i, .id = meta.id[i],
                                         .patient = meta.patient_id[i], .fold = -1};
    qsort(slices, n, sizeof *slices, compare_slices_by_id);
    join_job_t join = {.slices = slices, .labels = &labels};
    parallel_for(o.threads, n, join_one_slice, &join);
    size_t labelled = 0;
    for (size_t i = 0; i < n; i++)
        labelled += slices[i].labels != NULL;
    if (!labelled)
        die_no_match(labels_path, &labels, meta_path, slices, n);
    check_patient_ids(meta_path, &meta, slices, n);
    int64_t partial = count_partial_labels(labels_path, slices, n);
    int64_t without_meta = count_labels_without_meta(&labels, slices, n);
    if (without_meta)
        log_warn("%lld labelled slice%s of %s %s no usable metadata in %s (ignored)",
                 (long long)without_meta, without_meta == 1 ? "" : "s", labels_path,
                 without_meta == 1 ? "has" : "have", meta_path);

    size_t np;
    patient_t *patients = collect_patients(slices, n, &np);
    if (np < 2)
        die(EXIT_BAD_INPUT, "%s and %s have only %zu labelled patient: cross-validation needs "
            "at least 2", labels_path, meta_path, np);
    if ((size_t)o.folds > np)
        die(EXIT_BAD_INPUT, "-k %d: %s and %s have only %zu labelled patients, so some folds "
            "would be empty; give -k %zu or fewer", o.folds, labels_path, meta_path, np, np);
    if (strcmp(o.method, "stratified") == 0)
        assign_stratified(patients, np, o.folds, (uint64_t)o.seed);
    else
        assign_original(patients, np, o.folds);
    require_no_empty_fold(patients, np, o.folds, o.method, labels_path, meta_path);
    for (size_t i = 0; i < n; i++) {
        if (!slices[i].labels)
            continue;
        const patient_t *p = bsearch(slices[i].patient, patients, np, sizeof *patients,
                                     compare_patient_names);
        slices[i].fold = p->fold;
    }

    fold_summary_t sum;
    summarise(slices, n, patients, np, o.folds, &sum);
    write_folds(&o, labels_path, &meta, slices, n, &sum, without_meta, partial, &labels);
    print_summary(&sum, o.folds);
    log_info("%zu slices (%lld labelled, %lld test), %zu patients in %d folds (%s) -> %s "
             "(%.2f s)",
             n, (long long)(n - (size_t)sum.slices[o.folds]), (long long)sum.slices[o.folds], np,
             o.folds, o.method, o.out, time_now() - t0);

    free(patients);
    free(slices);
    labels_free(&labels);
    meta_free(&meta);
    free(inputs);
    return EXIT_OK;
}
