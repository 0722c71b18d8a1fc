/*
 * seqbuild: meta.h5 -> sequences.h5. Every series (PatientID, StudyInstanceUID,
 * SeriesInstanceUID) with its slices in scan order along the slice normal, their projected
 * positions and the spacing between neighbours. Unusual series are flagged, never fatal.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "log.h"
#include "opt.h"
#include "series.h"

#define MAX_REPORTED_PER_FLAG 10

typedef struct {
    const char *out;
    int threads;
} seqbuild_options_t;

/*
 * Rows that would be grouped wrongly: without a study or series UID, slices of different
 * series would merge into one and be ordered as one (exit 3). A blank PatientID only loses
 * the patient's name, as the UIDs still keep series apart: a warning.
 */
static void check_identities(const meta_table_t *meta)
{
    size_t blank_patients = 0, first_blank = 0;
    for (size_t i = 0; i < meta->count; i++) {
        if (!meta_usable(meta, i))
            continue;
        const char *missing = meta_blank(meta->series_uid[i])  ? "SeriesInstanceUID"
                              : meta_blank(meta->study_uid[i]) ? "StudyInstanceUID"
                                                               : NULL;
        if (missing)
            die(EXIT_BAD_INPUT, "%s: slice %s (%s) has no %s: it cannot be told apart from "
                "other series", meta->file, meta->id[i], meta->path[i], missing);
        if (meta_blank(meta->patient_id[i]) && blank_patients++ == 0)
            first_blank = i;
    }
    if (blank_patients)
        log_warn("%s: %zu usable slices have no PatientID (first: %s, %s); their series keep "
                 "an empty patient_id", meta->file, blank_patients, meta->id[first_blank],
                 meta->path[first_blank]);
}

static void write_sequences(const char *out_path, const meta_table_t *meta,
                            const series_set_t *set)
{
    size_t ns = set->nseries, n = set->nslices;
    const char **patient = xmalloc((ns ? ns : 1) * sizeof *patient);
    const char **study = xmalloc((ns ? ns : 1) * sizeof *study);
    const char **series_uid = xmalloc((ns ? ns : 1) * sizeof *series_uid);
    int64_t *start = xmalloc((ns ? ns : 1) * sizeof *start);
    int64_t *length = xmalloc((ns ? ns : 1) * sizeof *length);
    int32_t *flags = xmalloc((ns ? ns : 1) * sizeof *flags);
    double *normal = xmalloc((ns ? ns : 1) * 3 * sizeof *normal);
    for (size_t s = 0; s < ns; s++) {
        const series_t *sr = &set->series[s];
        size_t row = set->meta_index[sr->start];
        patient[s] = meta->patient_id[row];
        study[s] = meta->study_uid[row];
        series_uid[s] = meta->series_uid[row];
        start[s] = (int64_t)sr->start;
        length[s] = (int64_t)sr->length;
        flags[s] = (int32_t)sr->flags;
        memcpy(&normal[3 * s], sr->normal, sizeof sr->normal);
    }

    const char **ids = xmalloc((n ? n : 1) * sizeof *ids);
    int64_t *meta_index = xmalloc((n ? n : 1) * sizeof *meta_index);
    int32_t *series_of = xmalloc((n ? n : 1) * sizeof *series_of);
    for (size_t s = 0; s < ns; s++)
        for (size_t i = 0; i < set->series[s].length; i++)
            series_of[set->series[s].start + i] = (int32_t)s;
    for (size_t i = 0; i < n; i++) {
        ids[i] = meta->id[set->meta_index[i]];
        meta_index[i] = (int64_t)set->meta_index[i];
    }

    h5out_t out;
    h5out_create(&out, out_path);
    hsize_t dims_s[2] = {ns, 3}, dims_n[1] = {n};
    h5_write_strings(out.file, "series/patient_id", patient, ns);
    h5_write_strings(out.file, "series/study_uid", study, ns);
    h5_write_strings(out.file, "series/series_uid", series_uid, ns);
    h5_write_i64(out.file, "series/start", start, 1, dims_s);
    h5_write_i64(out.file, "series/length", length, 1, dims_s);
    h5_write_i32(out.file, "series/flags", flags, 1, dims_s);
    h5_write_f64(out.file, "series/normal", normal, 2, dims_s);
    h5_write_strings(out.file, "slices/id", ids, n);
    h5_write_i64(out.file, "slices/meta_index", meta_index, 1, dims_n);
    h5_write_i32(out.file, "slices/series", series_of, 1, dims_n);
    h5_write_f64(out.file, "slices/position", set->position, 1, dims_n);
    h5_write_f64(out.file, "slices/spacing", set->spacing, 1, dims_n);

    char flag_doc[256] = "";
    for (int b = 0; b < SERIES_FLAG_COUNT; b++) {
        size_t len = strlen(flag_doc);
        snprintf(flag_doc + len, sizeof flag_doc - len, "%s%d=%s", b ? "," : "", 1 << b,
                 series_flag_name(b));
    }
    h5_attr_str(out.file, "series_flags", flag_doc);
    h5_attr_str(out.file, "meta_file", meta->file);
    h5_attr_i64(out.file, "series_count", (int64_t)ns);
    h5_attr_i64(out.file, "slice_count", (int64_t)n);
    h5_attr_provenance(out.file);
    h5out_commit(&out);

    free(patient);
    free(study);
    free(series_uid);
    free(start);
    free(length);
    free(flags);
    free(normal);
    free(ids);
    free(meta_index);
    free(series_of);
}

/* One warning per flagged series (a few per flag; all with -v), then one count per flag. */
static void report_flags(const meta_table_t *meta, const series_set_t *set)
{
    for (int b = 0; b < SERIES_FLAG_COUNT; b++) {
        size_t count = 0;
        for (size_t s = 0; s < set->nseries; s++) {
            const series_t *sr = &set->series[s];
            if (!(sr->flags & (1u << b)))
                continue;
            count++;
            size_t row = set->meta_index[sr->start];
            if (count <= MAX_REPORTED_PER_FLAG || log_get_level() >= LOG_DEBUG)
                log_info("series %s (patient %s, study %s, %zu slice%s): %s",
                         meta->series_uid[row], meta->patient_id[row], meta->study_uid[row],
                         sr->length, sr->length == 1 ? "" : "s", series_flag_name(b));
        }
        if (count > MAX_REPORTED_PER_FLAG && log_get_level() < LOG_DEBUG)
            log_info("... and %zu more series flagged %s (-v lists all)",
                     count - MAX_REPORTED_PER_FLAG, series_flag_name(b));
        /* Single slices and uneven steps are common in real data: worth a note only. */
        int routine = (1u << b) == SERIES_SINGLE_SLICE || (1u << b) == SERIES_UNEVEN_SPACING;
        if (count && routine)
            log_info("%zu series flagged %s", count, series_flag_name(b));
        else if (count)
            log_warn("%zu series flagged %s", count, series_flag_name(b));
    }
}

int main(int argc, char **argv)
{
    log_init("seqbuild", LOG_INFO);
    seqbuild_options_t o = {.out = NULL, .threads = 1};
    const opt_t options[] = {
        {'o', "out", OPT_STRING, &o.out, "FILE",
         "sequences file to write (required; missing folders above it are created)", 1, 0,
         NULL},
        {'j', "threads", OPT_INT, &o.threads, "N",
         "worker threads ordering the series (the output is the same for any N)", 1, 256, NULL},
        {0},
    };
    const opt_spec_t spec = {
        .program = "seqbuild",
        .usage = "[options] -o SEQUENCES.h5 META.h5",
        .summary =
            "Groups the slices of a dcm2jpg metadata table (rows with status ok or exists)\n"
            "into series by (PatientID, StudyInstanceUID, SeriesInstanceUID) and orders\n"
            "each series along its slice normal (the cross product of the two\n"
            "ImageOrientationPatient vectors, with ImagePositionPatient projected on it).",
        .details = "Unusual series are written, flagged and reported, never fatal:\n"
                   "  single_slice        only one slice\n"
                   "  duplicate_position  two slices less than 0.01 mm apart (ties by ID)\n"
                   "  no_orientation      a slice lacks orientation: the series is ordered by z\n"
                   "  mixed_orientation   orientations differ: the majority's normal is used\n"
                   "  no_position         a slice lacks a position: placed last, by ID\n"
                   "  uneven_spacing      a step over 1.5x or under 0.5x the median step\n"
                   "A slice without a StudyInstanceUID or SeriesInstanceUID stops the run\n"
                   "(exit 3), as does a META.h5 without usable rows; a slice without a\n"
                   "PatientID is a warning.\n"
                   "Layout of the output: data-layout.md.",
        .exit_codes =
            "  seqbuild: 2 also when -o names the input META.h5 (it would be overwritten)\n"
            "            or a folder;\n"
            "            3 also when META.h5 has no usable row, or a usable row has no\n"
            "            StudyInstanceUID or SeriesInstanceUID.\n",
        .options = options,
        .min_positional = 1,
        .max_positional = 1,
    };
    char **inputs;
    opt_parse(&spec, argc, argv, &inputs);
    if (!o.out) {
        fprintf(stderr, "seqbuild: error: -o SEQUENCES.h5 is required\nTry 'seqbuild --help'.\n");
        free(inputs);
        return EXIT_USAGE;
    }
    output_path_check("-o", o.out, "sequences.h5");
    if (path_same_file(o.out, inputs[0])) {
        fprintf(stderr, "seqbuild: error: -o %s is the input META.h5 (%s): it would be "
                        "overwritten; give another output file\n", o.out, inputs[0]);
        free(inputs);
        return EXIT_USAGE;
    }

    double t0 = time_now();
    meta_table_t meta;
    meta_load(inputs[0], &meta);
    meta_require_usable(&meta);
    size_t dup_a, dup_b;
    if (meta_find_duplicate(&meta, &dup_a, &dup_b))
        die(EXIT_BAD_INPUT, "%s: slice ID %s appears twice: %s and %s", meta.file,
            meta.id[dup_a], meta.path[dup_a], meta.path[dup_b]);
    check_identities(&meta);

    series_set_t set;
    series_build(&meta, &set, o.threads);
    report_flags(&meta, &set);
    write_sequences(o.out, &meta, &set);

    size_t flagged = 0;
    for (size_t s = 0; s < set.nseries; s++)
        flagged += set.series[s].flags != 0;
    log_info("%zu slice%s (of %zu row%s) in %zu series, %zu flagged -> %s (%.2f s)",
             set.nslices, set.nslices == 1 ? "" : "s", meta.count, meta.count == 1 ? "" : "s",
             set.nseries, flagged, o.out, time_now() - t0);
    series_free(&set);
    meta_free(&meta);
    free(inputs);
    return EXIT_OK;
}
