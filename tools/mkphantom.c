/*
 * mkphantom: synthetic head-CT series as real DICOM files (CT Image Storage, signed 16-bit,
 * intercept -1024), with hemorrhages of the five challenge subtypes and the matching labels
 * CSV. Seeded: the same options give byte-identical files, whatever the thread count.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "csv.h"
#include "dicom.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "labels.h"
#include "log.h"
#include "opt.h"
#include "phantom.h"
#include "pool.h"

#define PI 3.14159265358979323846
#define N_LESION_KINDS 5
#define SAME_PATIENT_RATE 0.15 /* a series is a later study of the previous patient */
#define TILT_RATE 0.3          /* series acquired with gantry tilt */

/* First lines of the CSVs written here: also how an earlier run's files are recognised. */
#define LABELS_HEADER "ID,Label"
#define MANIFEST_HEADER_V1                                                                   \
    "series_uid,patient_id,study_uid,folder,slices,split,tilt_deg,pixel_spacing,"             \
    "slice_spacing,lesions,positive_slices"
/* The slice IDs in InstanceNumber order, ';'-separated: the files --force may remove. */
#define MANIFEST_HEADER MANIFEST_HEADER_V1 ",slice_ids"
#define LABELS_NAME "labels.csv"
#define MANIFEST_NAME "series.csv"
#define TEST_LABELS_NAME "test_labels.csv"

/* Stream identifiers for phantom_hash, so every random choice has its own sequence. */
enum { STREAM_SERIES = 1, STREAM_NOISE, STREAM_ID, STREAM_SPLIT };
enum { ID_SLICE = 1, ID_PATIENT, ID_STUDY, ID_SERIES, ID_FRAME };

typedef struct {
    const char *out, *labels, *slices, *rates, *uids;
    int series, size, threads, force;
    long long seed;
    double prevalence, test_fraction;
} options_t;

typedef struct {
    char patient_id[DICOM_UID_MAX], study_uid[DICOM_UID_MAX], series_uid[DICOM_UID_MAX];
    char frame_uid[DICOM_UID_MAX], study_date[9], description[64];
    char *folder;
    int patient, nslices, first_slice, test;
    double tilt, pixel_spacing, slice_spacing;
    double row_dir[3], col_dir[3], normal[3], first_center[3];
    phantom_head_t head;
} series_plan_t;

typedef struct {
    char id[DICOM_UID_MAX];
    int series, index;
    int8_t label[N_SUBTYPES];
} slice_plan_t;

/* ---- IDs: deterministic for the seed, unique within the run ---- */

typedef struct {
    uint64_t *slots; /* 0 = empty */
    size_t cap;
} id_set_t;

static int id_set_add(id_set_t *set, uint64_t key)
{
    key |= 1; /* never 0 */
    size_t i = (size_t)(key * 0x9e3779b97f4a7c15ULL >> 20) & (set->cap - 1);
    while (set->slots[i]) {
        if (set->slots[i] == key)
            return 0;
        i = (i + 1) & (set->cap - 1);
    }
    set->slots[i] = key;
    return 1;
}

/*
 * "rsna" style: "ID_" and hex digits like the challenge data (9 for slices, 8 for patients,
 * 10 for studies and series). "dicom" style: UUID-derived UIDs under the 2.25 root.
 */
static void make_id(char *out, id_set_t *used, uint64_t seed, int kind, uint64_t index,
                    const char *style)
{
    static const int hex_digits[] = {0, 9, 8, 10, 10, 10};
    for (uint64_t attempt = 0;; attempt++) {
        uint64_t hi = phantom_hash(seed, STREAM_ID, ((uint64_t)kind << 40) | index, attempt);
        int digits = hex_digits[kind];
        uint64_t value = hi & ((1ULL << (4 * digits)) - 1);
        int dicom = strcmp(style, "dicom") == 0 && kind != ID_PATIENT;
        uint64_t key = dicom ? hi : value;
        if (!id_set_add(used, (key & ~(0xfULL << 60)) ^ ((uint64_t)kind << 60)))
            continue;
        if (!dicom) {
            snprintf(out, DICOM_UID_MAX, "ID_%0*llx", digits, (unsigned long long)value);
            return;
        }
        /* 2.25.<decimal of a 128-bit number>: at most 39 digits, so the UID fits in 64. */
        uint64_t lo = phantom_hash(seed, STREAM_ID, ((uint64_t)kind << 40) | index,
                                   attempt + (1ULL << 32));
        unsigned __int128 v = ((unsigned __int128)hi << 64) | lo;
        char digits_rev[48];
        int nd = 0;
        do {
            digits_rev[nd++] = (char)('0' + (int)(v % 10));
            v /= 10;
        } while (v);
        int len = snprintf(out, DICOM_UID_MAX, "2.25.");
        while (nd)
            out[len++] = digits_rev[--nd];
        out[len] = 0;
        return;
    }
}

/*
 * Each option that changes what is generated, written out canonically (numbers as parsed):
 * what IDs derive from, and what an unfinished run's marker records. Two runs that differ in
 * any of them therefore never reuse an ID for other pixels or labels; the output paths, -j and
 * --force change nothing generated and are left out, so the same options still give the same
 * bytes.
 */
static char *generation_settings(const options_t *o, int slices_lo, int slices_hi,
                                 const double rates[N_LESION_KINDS])
{
    return xasprintf("mkphantom ids 1; seed %lld; series %d; slices %d-%d; size %d; "
                     "prevalence %.17g; rates %.17g,%.17g,%.17g,%.17g,%.17g; "
                     "test-fraction %.17g; uids %s",
                     o->seed, o->series, slices_lo, slices_hi, o->size, o->prevalence,
                     rates[0], rates[1], rates[2], rates[3], rates[4], o->test_fraction,
                     o->uids);
}

static uint64_t ids_seed(const char *canonical, long long seed)
{
    uint64_t fnv = 0xcbf29ce484222325ULL; /* FNV-1a over the text, then mixed further */
    for (const unsigned char *c = (const unsigned char *)canonical; *c; c++)
        fnv = (fnv ^ *c) * 0x100000001b3ULL;
    log_debug("IDs derive from \"%s\"", canonical);
    return phantom_hash(fnv, (uint64_t)seed, STREAM_ID, 0);
}

/* ---- planning: every random choice, made in one thread in a fixed order ---- */

static int parse_slice_range(const char *text, int *lo, int *hi)
{
    char *end;
    long a = strtol(text, &end, 10), b = a;
    if (end == text)
        return -1;
    if (*end == '-') {
        const char *second = end + 1;
        b = strtol(second, &end, 10);
        if (end == second)
            return -1;
    }
    if (*end || a < 1 || b < a || b > 10000)
        return -1;
    *lo = (int)a;
    *hi = (int)b;
    return 0;
}

static int parse_rates(const char *text, double rates[N_LESION_KINDS])
{
    const char *s = text;
    double total = 0;
    for (int k = 0; k < N_LESION_KINDS; k++) {
        char *end;
        rates[k] = strtod(s, &end);
        if (end == s || rates[k] < 0 || !isfinite(rates[k]))
            return -1;
        total += rates[k];
        s = end;
        if (k + 1 < N_LESION_KINDS) {
            if (*s != ',')
                return -1;
            s++;
        }
    }
    return *s || total <= 0 ? -1 : 0;
}

static int pick_subtype(uint64_t *rng, const double rates[N_LESION_KINDS])
{
    double total = 0;
    for (int k = 0; k < N_LESION_KINDS; k++)
        total += rates[k];
    double u = phantom_rng_uniform(rng, 0, total);
    for (int k = 0; k < N_LESION_KINDS; k++) {
        if (u < rates[k])
            return k;
        u -= rates[k];
    }
    return N_LESION_KINDS - 1;
}

static void plan_geometry(series_plan_t *s, uint64_t *rng, int size)
{
    s->tilt = phantom_rng_uniform(rng, 0, 1) < TILT_RATE
                  ? phantom_rng_uniform(rng, 5, 20) * PI / 180
                  : 0;
    /* Gantry tilt turns the column direction about x, as real tilted head scans do. */
    double row[3] = {1, 0, 0}, col[3] = {0, cos(s->tilt), -sin(s->tilt)};
    memcpy(s->row_dir, row, sizeof row);
    memcpy(s->col_dir, col, sizeof col);
    s->normal[0] = row[1] * col[2] - row[2] * col[1];
    s->normal[1] = row[2] * col[0] - row[0] * col[2];
    s->normal[2] = row[0] * col[1] - row[1] * col[0];
    s->pixel_spacing = phantom_rng_uniform(rng, 215, 250) / size;

    /* Slices from the skull base to the vertex, through the head's centre. */
    double zc = phantom_rng_uniform(rng, -60, 140);
    double centre[3] = {0, 0, zc};
    phantom_head_random(&s->head, centre, rng);
    double c = s->head.axes[2], lo = -0.5 * c, span = 1.38 * c;
    s->slice_spacing = s->nslices > 1 ? span / (s->nslices - 1) : 5.0;
    double first = s->nslices > 1 ? lo : 0.2 * c;
    for (int k = 0; k < 3; k++)
        s->first_center[k] = centre[k] + first * s->normal[k];
}

static void plan_lesions(series_plan_t *s, uint64_t *rng, const options_t *o,
                         const double rates[N_LESION_KINDS])
{
    if (phantom_rng_uniform(rng, 0, 1) >= o->prevalence)
        return;
    double u = phantom_rng_uniform(rng, 0, 1);
    int count = 1 + (u < 0.35) + (u < 0.1);
    for (int i = 0; i < count; i++)
        phantom_add_lesion(&s->head, pick_subtype(rng, rates), rng);
}

/* Whole patients go to the test split, in a seeded order, until the fraction is reached. */
static void plan_test_split(series_plan_t *series, int nseries, int npatients,
                            const options_t *o)
{
    int want = (int)lround(o->test_fraction * nseries);
    if (want <= 0)
        return;
    int *order = xmalloc((size_t)npatients * sizeof *order);
    for (int p = 0; p < npatients; p++)
        order[p] = p;
    uint64_t rng = phantom_hash((uint64_t)o->seed, STREAM_SPLIT, 0, 0);
    for (int p = npatients - 1; p > 0; p--) {
        int j = (int)(phantom_rng_next(&rng) % (uint64_t)(p + 1));
        int t = order[p];
        order[p] = order[j];
        order[j] = t;
    }
    int chosen = 0;
    for (int p = 0; p < npatients && chosen < want; p++)
        for (int i = 0; i < nseries; i++)
            if (series[i].patient == order[p]) {
                series[i].test = 1;
                chosen++;
            }
    free(order);
}

static slice_plan_t *plan(series_plan_t *series, const options_t *o, int slices_lo,
                          int slices_hi, const double rates[N_LESION_KINDS], size_t *nslices)
{
    size_t total = 0;
    int npatients = 0;
    for (int i = 0; i < o->series; i++) {
        series_plan_t *s = &series[i];
        uint64_t rng = phantom_hash((uint64_t)o->seed, STREAM_SERIES, (uint64_t)i, 0);
        int same = i > 0 && phantom_rng_uniform(&rng, 0, 1) < SAME_PATIENT_RATE;
        s->patient = same ? series[i - 1].patient : npatients++;
        s->nslices = slices_lo + (int)(phantom_rng_next(&rng) % (uint64_t)(slices_hi -
                                                                            slices_lo + 1));
        s->first_slice = (int)total;
        total += (size_t)s->nslices;
        snprintf(s->study_date, sizeof s->study_date, "2019%02d%02d",
                 1 + (int)(phantom_rng_next(&rng) % 12), 1 + (int)(phantom_rng_next(&rng) % 28));
        plan_geometry(s, &rng, o->size);
        plan_lesions(s, &rng, o, rates);
        snprintf(s->description, sizeof s->description, "Phantom head CT%s",
                 s->tilt ? " (gantry tilt)" : "");
    }
    plan_test_split(series, o->series, npatients, o);

    /* IDs after all other choices, so that changing the ID style changes nothing else. */
    id_set_t used = {.cap = 64};
    while (used.cap < 4 * (total + 4 * (size_t)o->series))
        used.cap *= 2;
    used.slots = xcalloc(used.cap, sizeof *used.slots);
    char patient_id[DICOM_UID_MAX] = "";
    slice_plan_t *slices = xcalloc(total, sizeof *slices);
    char *settings = generation_settings(o, slices_lo, slices_hi, rates);
    uint64_t seed = ids_seed(settings, o->seed);
    free(settings);
    for (int i = 0; i < o->series; i++) {
        series_plan_t *s = &series[i];
        if (i == 0 || s->patient != series[i - 1].patient)
            make_id(patient_id, &used, seed, ID_PATIENT, (uint64_t)s->patient, o->uids);
        memcpy(s->patient_id, patient_id, sizeof s->patient_id);
        make_id(s->study_uid, &used, seed, ID_STUDY, (uint64_t)i, o->uids);
        make_id(s->series_uid, &used, seed, ID_SERIES, (uint64_t)i, o->uids);
        make_id(s->frame_uid, &used, seed, ID_FRAME, (uint64_t)i, o->uids);
        s->folder = path_join(o->out, s->series_uid);
        for (int k = 0; k < s->nslices; k++) {
            slice_plan_t *sl = &slices[s->first_slice + k];
            sl->series = i;
            sl->index = k;
            make_id(sl->id, &used, seed, ID_SLICE, (uint64_t)(s->first_slice + k), o->uids);
        }
    }
    free(used.slots);
    *nslices = total;
    return slices;
}

/* ---- rendering and writing, in parallel ---- */

typedef struct {
    const options_t *o;
    series_plan_t *series;
    slice_plan_t *slices;
    int16_t **buffers; /* one per thread */
    char **errors;     /* per slice, NULL when written */
    int resume;        /* keep the slices an unfinished run of these settings wrote */
    char *kept;        /* per slice: 1 when its file was kept */
    progress_t *progress;
} render_job_t;

static void render_one(size_t index, int thread, void *ctx_ptr)
{
    render_job_t *job = ctx_ptr;
    slice_plan_t *sl = &job->slices[index];
    const series_plan_t *s = &job->series[sl->series];
    int n = job->o->size;

    phantom_plane_t plane = {.spacing = s->pixel_spacing, .size = n};
    memcpy(plane.row_dir, s->row_dir, sizeof plane.row_dir);
    memcpy(plane.col_dir, s->col_dir, sizeof plane.col_dir);
    double half = 0.5 * (n - 1) * s->pixel_spacing;
    for (int k = 0; k < 3; k++)
        plane.origin[k] = s->first_center[k] + sl->index * s->slice_spacing * s->normal[k] -
                          half * (s->row_dir[k] + s->col_dir[k]);

    char name[DICOM_UID_MAX + 8], err[512];
    snprintf(name, sizeof name, "%s.dcm", sl->id);
    char *path = path_join(s->folder, name);
    /*
     * A file of an unfinished run with these settings is whole (renamed into place when
     * complete) and holds these very bytes. Its labels still need the rendering, unless no
     * lesion can give any.
     */
    int keep = job->resume && path_is_file(path);
    if (keep && s->head.nlesions == 0) {
        memset(sl->label, 0, sizeof sl->label);
        job->kept[index] = 1;
        free(path);
        progress_add(job->progress, 1);
        return;
    }

    int16_t *pixels = job->buffers[thread];
    uint64_t noise = phantom_hash((uint64_t)job->o->seed, STREAM_NOISE, (uint64_t)sl->series,
                                  (uint64_t)sl->index);
    phantom_render(&s->head, &plane, noise, pixels, sl->label);
    if (keep) {
        job->kept[index] = 1;
        free(path);
        progress_add(job->progress, 1);
        return;
    }

    char patient_name[DICOM_UID_MAX + 16];
    snprintf(patient_name, sizeof patient_name, "Phantom^%s", s->patient_id);
    dicom_ct_slice_t meta = {
        .sop_uid = sl->id,
        .study_uid = s->study_uid,
        .series_uid = s->series_uid,
        .frame_of_reference_uid = s->frame_uid,
        .patient_id = s->patient_id,
        .patient_name = patient_name,
        .study_date = s->study_date,
        .series_description = s->description,
        .instance_number = sl->index + 1,
        .pixel_spacing = {s->pixel_spacing, s->pixel_spacing},
        .slice_thickness = s->slice_spacing,
        .slope = 1,
        .intercept = PHANTOM_INTERCEPT,
        .window_center = 40,
        .window_width = 80,
        .rows = n,
        .columns = n,
    };
    memcpy(meta.position, plane.origin, sizeof meta.position);
    memcpy(meta.orientation, s->row_dir, sizeof s->row_dir);
    memcpy(meta.orientation + 3, s->col_dir, sizeof s->col_dir);

    char *tmp = tmp_path_for(path);
    if (dicom_write_ct(tmp, &meta, pixels, err, sizeof err) != 0) {
        job->errors[index] = xstrdup(err);
        tmp_discard(tmp);
    } else if (tmp_commit(tmp, path) != 0) {
        job->errors[index] = xasprintf("cannot move %s into place", path);
        tmp_discard(tmp);
    }
    free(tmp);
    free(path);
    progress_add(job->progress, 1);
}

/* ---- CSV outputs ---- */

static FILE *open_output(const char *path, char **tmp)
{
    *tmp = tmp_path_for(path);
    FILE *f = fdopen(tmp_create(*tmp, path), "w");
    if (!f)
        die(EXIT_IO, "cannot create %s: %s", path, strerror(errno));
    return f;
}

static void commit_output(FILE *f, const char *path, char *tmp)
{
    if (ferror(f) || fclose(f) != 0) {
        tmp_discard(tmp);
        die(EXIT_IO, "cannot write %s", path);
    }
    if (tmp_commit(tmp, path) != 0)
        die(EXIT_IO, "cannot move %s into place", path);
    free(tmp);
}

/* Challenge format: six rows per slice, subtypes in the official order. */
static void write_labels(const char *path, const series_plan_t *series, int nseries,
                         const slice_plan_t *slices, int test)
{
    char *tmp;
    FILE *f = open_output(path, &tmp);
    fprintf(f, LABELS_HEADER "\n");
    for (int i = 0; i < nseries; i++) {
        if (series[i].test != test)
            continue;
        for (int k = 0; k < series[i].nslices; k++) {
            const slice_plan_t *sl = &slices[series[i].first_slice + k];
            for (int t = 0; t < N_SUBTYPES; t++)
                fprintf(f, "%s_%s,%d\n", sl->id, SUBTYPE_NAMES[t], sl->label[t]);
        }
    }
    commit_output(f, path, tmp);
}

/* One row per series: what was generated where, for people and tests. */
static void write_manifest(const char *path, const series_plan_t *series, int nseries,
                           const slice_plan_t *slices)
{
    char *tmp;
    FILE *f = open_output(path, &tmp);
    fprintf(f, MANIFEST_HEADER "\n");
    for (int i = 0; i < nseries; i++) {
        const series_plan_t *s = &series[i];
        char lesions[256] = "";
        for (int l = 0; l < s->head.nlesions; l++) {
            size_t len = strlen(lesions);
            snprintf(lesions + len, sizeof lesions - len, "%s%s:%.0fHU", l ? ";" : "",
                     SUBTYPE_NAMES[s->head.lesions[l].subtype], s->head.lesions[l].hu);
        }
        int positive = 0;
        for (int k = 0; k < s->nslices; k++)
            positive += slices[s->first_slice + k].label[N_SUBTYPES - 1];
        fprintf(f, "%s,%s,%s,%s,%d,%s,%.2f,%.6f,%.4f,%s,%d,", s->series_uid, s->patient_id,
                s->study_uid, path_basename(s->folder), s->nslices, s->test ? "test" : "train",
                s->tilt * 180 / PI, s->pixel_spacing, s->slice_spacing, lesions, positive);
        for (int k = 0; k < s->nslices; k++)
            fprintf(f, "%s%s", k ? ";" : "", slices[s->first_slice + k].id);
        fputc('\n', f);
    }
    commit_output(f, path, tmp);
}

/* ---- OUTDIR: empty, or holding an earlier run that --force replaces ---- */

static int dir_is_empty(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        die(EXIT_IO, "cannot read folder %s: %s", dir, strerror(errno));
    int empty = 1;
    struct dirent *e;
    while (empty && (e = readdir(d)) != NULL)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return empty;
}

/* Is the first line of the file exactly `line`? That is how this program's CSVs are told. */
static int starts_with_line(const char *path, const char *line)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = strlen(line);
    char *head = xmalloc(n + 1);
    int same = fread(head, 1, n + 1, f) == n + 1 && memcmp(head, line, n) == 0 &&
               head[n] == '\n';
    fclose(f);
    free(head);
    return same;
}

static int is_our_manifest(const char *path)
{
    return starts_with_line(path, MANIFEST_HEADER) || starts_with_line(path, MANIFEST_HEADER_V1);
}

static void remove_file(const char *path)
{
    if (unlink(path) != 0)
        die(EXIT_IO, "cannot remove %s: %s", path, strerror(errno));
}

/* What an earlier run wrote, as its series.csv and labels CSVs tell it. */
typedef struct {
    strlist_t folders; /* series folder names */
    strlist_t ids;     /* slice IDs, sorted: their files are FOLDER/ID.dcm */
    size_t kept;       /* files in those folders that it did not write */
    strlist_t some_kept; /* the first few of them, for the warning */
} earlier_run_t;

#define KEPT_NAMED 3

static void add_ids(strlist_t *ids, const char *joined)
{
    const char *s = joined;
    while (*s) {
        size_t len = strcspn(s, ";");
        if (len) {
            char *id = xmalloc(len + 1);
            memcpy(id, s, len);
            id[len] = 0;
            strlist_push(ids, id);
            free(id);
        }
        s += len + (s[len] == ';');
    }
}

/* The folders and slice IDs of an earlier series.csv (IDs only from this version on). */
static void read_earlier_manifest(const char *manifest, earlier_run_t *run)
{
    char err[512];
    csv_reader_t *r = csv_open(manifest, err, sizeof err);
    if (!r)
        die(EXIT_BAD_INPUT, "%s", err);
    char **fields;
    size_t nfields;
    long folder_column = -1, ids_column = -1;
    int status, header = 1;
    while ((status = csv_next(r, &fields, &nfields, err, sizeof err)) == 1) {
        if (header) {
            for (size_t k = 0; k < nfields; k++) {
                if (strcmp(fields[k], "folder") == 0)
                    folder_column = (long)k;
                if (strcmp(fields[k], "slice_ids") == 0)
                    ids_column = (long)k;
            }
            header = 0;
            continue;
        }
        const char *folder = (size_t)folder_column < nfields ? fields[folder_column] : "";
        /* A plain name inside OUTDIR, whatever an edited series.csv says. */
        if (!folder[0] || folder[0] == '.' || strchr(folder, '/'))
            die(EXIT_BAD_INPUT, "%s:%ld: folder '%s' is not a series folder name", manifest,
                csv_line(r), folder);
        strlist_push(&run->folders, folder);
        if (ids_column >= 0 && (size_t)ids_column < nfields)
            add_ids(&run->ids, fields[ids_column]);
    }
    if (status < 0)
        die(EXIT_BAD_INPUT, "%s", err);
    csv_close(r);
}

/* The slice IDs of an earlier labels CSV in OUTDIR (for a series.csv without slice_ids). */
static void read_earlier_labels(const char *path, earlier_run_t *run)
{
    if (!starts_with_line(path, LABELS_HEADER))
        return;
    label_table_t labels;
    char err[512];
    if (labels_read(path, &labels, err, sizeof err) != 0) {
        log_warn("%s", err);
        return;
    }
    for (size_t i = 0; i < labels.count; i++)
        strlist_push(&run->ids, labels.slices[i].id);
    labels_free(&labels);
}

/* Did the earlier run write this file of a series folder: one of its slices, or one of its
 * unfinished temporaries (".NAME.tmp-PID-N")? */
static int written_earlier(const earlier_run_t *run, const char *name)
{
    if (name[0] == '.')
        return strstr(name, ".tmp-") != NULL;
    if (!path_has_ext(name, ".dcm") || !run->ids.count)
        return 0;
    char *id = path_stem(name);
    int found = bsearch(&id, run->ids.items, run->ids.count, sizeof *run->ids.items,
                        compare_strings) != NULL;
    free(id);
    return found;
}

/*
 * One series folder of an earlier run: the files it wrote, then the folder when nothing else
 * is left in it. Other files are kept and counted. Symbolic links are never followed.
 * Returns the number of files removed.
 */
static int remove_series_files(const char *dir, earlier_run_t *run)
{
    struct stat st;
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    DIR *d = opendir(dir);
    if (!d)
        die(EXIT_IO, "cannot read folder %s: %s", dir, strerror(errno));
    strlist_t ours = {0};
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        char *path = path_join(dir, name);
        if (written_earlier(run, name) && lstat(path, &st) == 0 && S_ISREG(st.st_mode))
            strlist_push(&ours, name);
        else if (run->kept++ < KEPT_NAMED)
            strlist_push(&run->some_kept, path);
        free(path);
    }
    closedir(d);

    for (size_t i = 0; i < ours.count; i++) {
        char *path = path_join(dir, ours.items[i]);
        remove_file(path);
        free(path);
    }
    int removed = (int)ours.count;
    strlist_free(&ours);
    if (rmdir(dir) != 0 && errno != ENOTEMPTY && errno != EEXIST)
        die(EXIT_IO, "cannot remove folder %s: %s", dir, strerror(errno));
    return removed;
}

static void warn_kept(const earlier_run_t *run)
{
    if (!run->kept)
        return;
    char named[1024] = "";
    for (size_t i = 0; i < run->some_kept.count; i++) {
        size_t len = strlen(named);
        snprintf(named + len, sizeof named - len, "%s%s", i ? ", " : "",
                 run->some_kept.items[i]);
    }
    log_warn("kept %zu files in the earlier run's series folders that mkphantom did not write: "
             "%s%s", run->kept, named, run->kept > KEPT_NAMED ? ", ..." : "");
}

static void free_earlier_run(earlier_run_t *run)
{
    strlist_free(&run->folders);
    strlist_free(&run->ids);
    strlist_free(&run->some_kept);
}

/* ---- OUTDIR/.mkphantom-unfinished: the marker of a run that has not finished ---- */

/*
 * Written before the first slice and removed after the last CSV, so that while it is there
 * OUTDIR holds an unfinished run. Its header names what the run generates and where its
 * labels go; then one line per series folder with its slice IDs ("FOLDER ID;ID;..."). A rerun
 * with the same header finishes the run; another run removes exactly the files it lists.
 */
#define UNFINISHED_NAME ".mkphantom-unfinished"
#define UNFINISHED_FIRST_LINE "mkphantom unfinished run 1"

typedef struct {
    char *header;      /* its first four lines; NULL when OUTDIR holds no marker */
    char *settings;    /* what it generates (generation_settings) */
    char *labels;      /* the labels CSV it writes: canonical path, "-" for OUTDIR's own */
    int test;          /* whether it writes OUTDIR/test_labels.csv */
    earlier_run_t run; /* its series folders and slice IDs */
} unfinished_run_t;

static char *unfinished_header(const char *settings, const char *labels, int test)
{
    return xasprintf(UNFINISHED_FIRST_LINE "\nsettings %s\nlabels %s\ntest_labels %d\n",
                     settings, labels, test);
}

static void write_unfinished_marker(const char *path, const char *header,
                                    const series_plan_t *series, int nseries,
                                    const slice_plan_t *slices)
{
    char *tmp;
    FILE *f = open_output(path, &tmp);
    fputs(header, f);
    for (int i = 0; i < nseries; i++) {
        fprintf(f, "%s ", path_basename(series[i].folder));
        for (int k = 0; k < series[i].nslices; k++)
            fprintf(f, "%s%s", k ? ";" : "", slices[series[i].first_slice + k].id);
        fputc('\n', f);
    }
    commit_output(f, path, tmp);
}

static void read_unfinished_marker(const char *path, unfinished_run_t *u)
{
    static const char *const keys[] = {"settings ", "labels ", "test_labels "};
    strlist_t lines = {0};
    read_list_file(path, &lines);
    if (lines.count < 4)
        die(EXIT_BAD_INPUT, "%s: cut short, not a marker of an unfinished mkphantom run", path);
    u->header = xstrdup("");
    for (size_t i = 0; i < lines.count; i++) {
        char *line = lines.items[i];
        if (i < 4) {
            const char *key = i ? keys[i - 1] : NULL;
            int known = key ? strncmp(line, key, strlen(key)) == 0
                            : strcmp(line, UNFINISHED_FIRST_LINE) == 0;
            if (!known)
                die(EXIT_BAD_INPUT, "%s:%zu: not a marker of an unfinished mkphantom run "
                                    "(remove it if no run is meant to finish there)",
                    path, i + 1);
            char *header = xasprintf("%s%s\n", u->header, line);
            free(u->header);
            u->header = header;
            if (i == 1)
                u->settings = xstrdup(line + strlen(key));
            else if (i == 2 && !line[strlen(key)])
                die(EXIT_BAD_INPUT, "%s:%zu: no labels CSV named (remove the marker if no "
                                    "run is meant to finish there)", path, i + 1);
            else if (i == 2)
                u->labels = xstrdup(line + strlen(key));
            else if (i == 3)
                u->test = strcmp(line + strlen(key), "1") == 0;
            continue;
        }
        char *space = strchr(line, ' ');
        if (space)
            *space = 0;
        /* A plain name inside OUTDIR, whatever an edited marker says. */
        if (!space || !line[0] || line[0] == '.' || strchr(line, '/'))
            die(EXIT_BAD_INPUT, "%s:%zu: '%s' is not a series folder name", path, i + 1, line);
        strlist_push(&u->run.folders, line);
        add_ids(&u->run.ids, space + 1);
    }
    strlist_free(&lines);
    if (u->run.ids.count)
        qsort(u->run.ids.items, u->run.ids.count, sizeof *u->run.ids.items, compare_strings);
}

static void free_unfinished(unfinished_run_t *u)
{
    free(u->header);
    free(u->settings);
    free(u->labels);
    free_earlier_run(&u->run);
}

/*
 * Where the unfinished run writes its labels CSV, as a new string: "-" is OUTDIR/labels.csv;
 * the run records any other as an absolute path, and a relative one (an edited marker) is
 * taken inside OUTDIR, as the marker's series folders are, whatever the current folder.
 */
static char *unfinished_labels_path(const char *out, const unfinished_run_t *u)
{
    if (strcmp(u->labels, "-") == 0)
        return path_join(out, LABELS_NAME);
    return u->labels[0] == '/' ? xstrdup(u->labels) : path_join(out, u->labels);
}

/*
 * Is the labels CSV at path provably written by a run with these slice IDs (sorted): its
 * first line "ID,Label" and every slice ID in it one of them? IDs derive from the generation
 * settings, so another dataset's labels never pass. One without rows passes only when
 * allow_empty (the run itself writes one without rows).
 */
static int labels_only_of(const char *path, const strlist_t *ids, int allow_empty)
{
    if (!starts_with_line(path, LABELS_HEADER))
        return 0;
    label_table_t labels;
    char err[512];
    if (labels_read(path, &labels, err, sizeof err) != 0)
        return 0;
    int own = labels.count > 0 || allow_empty;
    for (size_t i = 0; own && i < labels.count; i++)
        own = bsearch(&labels.slices[i].id, ids->items, ids->count, sizeof *ids->items,
                      compare_strings) != NULL;
    labels_free(&labels);
    return own;
}

/* Temporaries that killed writers left in OUTDIR, in the run's series folders (never through
 * a symbolic link) and of its labels CSV. */
static int sweep_unfinished_temporaries(const char *out, const unfinished_run_t *u)
{
    int removed = tmp_sweep(out);
    for (size_t f = 0; f < u->run.folders.count; f++) {
        char *dir = path_join(out, u->run.folders.items[f]);
        struct stat st;
        if (lstat(dir, &st) == 0 && S_ISDIR(st.st_mode))
            removed += tmp_sweep(dir);
        free(dir);
    }
    char *labels = unfinished_labels_path(out, u);
    removed += tmp_sweep_for(labels);
    free(labels);
    return removed;
}

/*
 * The files the unfinished run lists, its CSVs (there only when it stopped while writing
 * them) and its temporaries; files it did not write are kept. A labels CSV goes only when
 * every ID in it is one of the run's: whatever the marker names, no other dataset's labels
 * are removed. The marker goes last, so that a run stopped here is still recognised.
 */
static void remove_unfinished(const char *out, const char *marker, unfinished_run_t *u)
{
    int nfiles = 0;
    for (size_t f = 0; f < u->run.folders.count; f++) {
        char *dir = path_join(out, u->run.folders.items[f]);
        nfiles += remove_series_files(dir, &u->run);
        free(dir);
    }
    warn_kept(&u->run);
    char *manifest = path_join(out, MANIFEST_NAME);
    if (starts_with_line(manifest, MANIFEST_HEADER)) {
        remove_file(manifest);
        nfiles++;
    }
    free(manifest);
    char *csvs[] = {u->test ? path_join(out, TEST_LABELS_NAME) : NULL,
                    unfinished_labels_path(out, u)};
    for (size_t i = 0; i < sizeof csvs / sizeof *csvs; i++) {
        if (csvs[i] && labels_only_of(csvs[i], &u->run.ids, 0)) {
            remove_file(csvs[i]);
            nfiles++;
        } else if (csvs[i] && path_exists(csvs[i])) {
            log_warn("kept %s: it holds IDs the unfinished run did not make, so it is not "
                     "that run's", csvs[i]);
        }
        free(csvs[i]);
    }
    nfiles += sweep_unfinished_temporaries(out, u);
    remove_file(marker);
    log_info("removed the unfinished run of other settings in %s: the files of its %zu series "
             "folder%s (%d file%s)", out, u->run.folders.count,
             u->run.folders.count == 1 ? "" : "s", nfiles + 1, nfiles ? "s" : "");
}

/* Settings text with its numbers as people write them (0.9, not 0.90000000000000002). */
static char *readable_settings(const char *settings)
{
    size_t cap = strlen(settings) + 1, len = 0;
    char *out = xmalloc(cap);
    for (const char *s = settings; *s;) {
        char *end = (char *)s;
        double value = 0;
        if (*s >= '0' && *s <= '9' && (s == settings || s[-1] == ' ' || s[-1] == ','))
            value = strtod(s, &end);
        int span = (int)(end - s);
        int inexact = span > 0 && strcspn(s, ".eE") < (size_t)span;
        char number[40];
        const char *piece = number;
        if (inexact)
            snprintf(number, sizeof number, "%g", value);
        else
            snprintf(number, sizeof number, "%c", *s);
        if (!inexact)
            span = 1;
        size_t n = strlen(piece);
        if (len + n + 1 > cap) {
            cap = 2 * (len + n + 1);
            out = xrealloc(out, cap);
        }
        memcpy(out + len, piece, n);
        len += n;
        s += span;
    }
    out[len] = 0;
    return out;
}

/*
 * A non-empty OUTDIR would mix an earlier run's files with this one's (more series, a test
 * split that is no longer made), so it is refused unless --force. --force removes what the
 * earlier run wrote, as its series.csv (folders and slice IDs) and labels CSVs list it, and
 * nothing else; a file of someone else's at one of this run's CSV names stops the run before
 * anything is removed.
 */
static void prepare_outdir(const options_t *o, unfinished_run_t *unfinished, int resuming)
{
    if (resuming) {
        int swept = sweep_unfinished_temporaries(o->out, unfinished);
        log_info("%s holds an unfinished run of these settings: finishing it (%d temporar%s "
                 "of killed writers removed)", o->out, swept, swept == 1 ? "y" : "ies");
        return;
    }
    /* What a run killed while it wrote the marker or tried the folder leaves counts for
     * nothing. */
    tmp_sweep(o->out);
    if (dir_is_empty(o->out))
        return;
    if (unfinished->header) {
        char *marker = path_join(o->out, UNFINISHED_NAME);
        char *labels = unfinished_labels_path(o->out, unfinished);
        char *settings = readable_settings(unfinished->settings);
        if (!o->force)
            die(EXIT_BAD_INPUT, "%s holds an unfinished mkphantom run of other settings (%s; "
                                "labels %s): run its command again to finish it, or --force "
                                "to remove it", o->out, settings, labels);
        free(settings);
        free(labels);
        remove_unfinished(o->out, marker, unfinished);
        free(marker);
        if (dir_is_empty(o->out))
            return;
    }
    if (!o->force)
        die(EXIT_BAD_INPUT, "%s is not empty: give a new folder, or --force to replace "
                            "an earlier mkphantom run there", o->out);

    char *manifest = path_join(o->out, MANIFEST_NAME);
    int earlier = path_exists(manifest);
    if (earlier && !is_our_manifest(manifest))
        die(EXIT_BAD_INPUT, "%s was not written by mkphantom: not replacing it", manifest);
    const char *csv_names[] = {LABELS_NAME, TEST_LABELS_NAME};
    char *csv_paths[2];
    int earlier_csv[2];
    for (size_t i = 0; i < 2; i++) {
        csv_paths[i] = path_join(o->out, csv_names[i]);
        earlier_csv[i] = earlier && starts_with_line(csv_paths[i], LABELS_HEADER);
        int written_now = i == 0 ? o->labels == NULL : o->test_fraction > 0;
        if (written_now && !earlier_csv[i] && path_exists(csv_paths[i]))
            die(EXIT_BAD_INPUT, "%s was not written by an earlier mkphantom run: not "
                                "replacing it", csv_paths[i]);
    }

    int nfiles = 0;
    earlier_run_t run = {0};
    if (earlier) {
        read_earlier_manifest(manifest, &run);
        for (size_t i = 0; i < 2; i++)
            if (earlier_csv[i])
                read_earlier_labels(csv_paths[i], &run);
        if (run.ids.count)
            qsort(run.ids.items, run.ids.count, sizeof *run.ids.items, compare_strings);
        for (size_t f = 0; f < run.folders.count; f++) {
            char *dir = path_join(o->out, run.folders.items[f]);
            nfiles += remove_series_files(dir, &run);
            free(dir);
        }
        warn_kept(&run);
    }
    for (size_t i = 0; i < 2; i++) {
        if (earlier_csv[i]) {
            remove_file(csv_paths[i]);
            nfiles++;
        }
        free(csv_paths[i]);
    }
    if (earlier) {
        remove_file(manifest);
        nfiles++;
    }
    nfiles += tmp_sweep(o->out);
    if (earlier)
        log_info("replaced the earlier run in %s: removed the files of its %zu series "
                 "folder%s and its CSVs (%d files)", o->out, run.folders.count,
                 run.folders.count == 1 ? "" : "s", nfiles);
    else
        log_warn("%s holds no %s of an earlier run: writing beside its files", o->out,
                 MANIFEST_NAME);
    free_earlier_run(&run);
    free(manifest);
}

/* ---- --labels: a path that clashes with nothing ---- */

/* "a/./b//../c" -> "a/c" for an absolute path, in place. */
static void normalise_lexically(char *path)
{
    char *out = path;
    const char *in = path;
    while (*in) {
        while (*in == '/')
            in++;
        size_t len = strcspn(in, "/");
        if (len == 1 && in[0] == '.') {
            /* nothing */
        } else if (len == 2 && in[0] == '.' && in[1] == '.') {
            while (out > path && *--out != '/')
                ;
        } else if (len) {
            *out++ = '/';
            memmove(out, in, len);
            out += len;
        }
        in += len;
    }
    if (out == path)
        *out++ = '/';
    *out = 0;
}

/*
 * One spelling per file, whether it exists or not: absolute, lexically normalised, and with
 * symbolic links resolved in the longest part of it that exists.
 */
static char *canonical_path(const char *path)
{
    char cwd[4096];
    if (path[0] != '/' && !getcwd(cwd, sizeof cwd))
        die(EXIT_IO, "cannot get the current folder: %s", strerror(errno));
    char *full = path[0] == '/' ? xstrdup(path) : xasprintf("%s/%s", cwd, path);
    normalise_lexically(full);
    size_t cut = strlen(full);
    for (;;) {
        char saved = full[cut];
        full[cut] = 0;
        char *resolved = realpath(cut ? full : "/", NULL);
        full[cut] = saved;
        if (resolved) {
            char *result = xasprintf("%s%s", strcmp(resolved, "/") ? resolved : "", full + cut);
            free(resolved);
            free(full);
            return result;
        }
        while (cut > 0 && full[--cut] != '/')
            ;
    }
}

/*
 * An existing file at a labels CSV name of this run that is not the run's own: refused
 * without --force, and even with it unless it is a labels CSV; what is the option or path
 * as messages name it.
 */
static void check_replaceable(const char *what, const char *path, int force, int resuming)
{
    if (!force)
        die(EXIT_BAD_INPUT, "%s exists%s: not overwriting it (--force replaces a labels CSV an "
                            "earlier mkphantom run wrote)", what,
            resuming ? " and is not the unfinished run's (other IDs)" : "");
    if (!starts_with_line(path, LABELS_HEADER))
        die(EXIT_BAD_INPUT, "%s is not a labels CSV ('%s' first line): not replacing it, even "
                            "with --force", what, LABELS_HEADER);
}

/*
 * --labels must not be one of the files mkphantom writes in OUTDIR (it would lose one of
 * them) and must not replace a file it did not write: an existing one needs --force, and
 * then must be a labels CSV (first line "ID,Label"). own: the file there is the unfinished
 * run's, which a resumed run finishes; resuming: a run finishing an unfinished one.
 */
static void check_labels_path(const options_t *o, int own, int resuming)
{
    if (!o->labels)
        return;
    char *labels = canonical_path(o->labels), *out = canonical_path(o->out);
    const char *clashes[] = {MANIFEST_NAME, TEST_LABELS_NAME};
    for (size_t i = 0; i < sizeof clashes / sizeof *clashes; i++) {
        char *path = path_join(out, clashes[i]);
        int clash = strcmp(path, labels) == 0;
        free(path);
        if (clash) {
            fprintf(stderr, "mkphantom: error: --labels %s is OUTDIR/%s, which mkphantom "
                            "writes itself; give another file\n", o->labels, clashes[i]);
            exit(EXIT_USAGE);
        }
    }
    if (strcmp(labels, out) == 0) {
        fprintf(stderr, "mkphantom: error: --labels %s is OUTDIR, not a file\n", o->labels);
        exit(EXIT_USAGE);
    }
    free(labels);
    free(out);
    if (own || !path_exists(o->labels))
        return;
    char *what = xasprintf("--labels %s", o->labels);
    check_replaceable(what, o->labels, o->force, resuming);
    free(what);
}

/*
 * Before anything is generated or removed: files can be created where the outputs go (their
 * missing folders made, as every program makes them), so that a run never stops after its
 * slices for want of a folder, leaving a partial dataset.
 */
static void check_output_folders(const char *out, const char *labels_path)
{
    char *manifest = path_join(out, MANIFEST_NAME);
    const char *outputs[] = {labels_path, manifest};
    for (size_t i = 0; i < sizeof outputs / sizeof *outputs; i++) {
        char *tmp = tmp_path_for(outputs[i]);
        close(tmp_create(tmp, outputs[i]));
        tmp_discard(tmp);
        free(tmp);
    }
    free(manifest);
}

int main(int argc, char **argv)
{
    log_init("mkphantom", LOG_INFO);
    options_t o = {.out = NULL, .labels = NULL, .slices = "28-36", .rates = "1,1,1,1,1",
                   .uids = "rsna", .series = 10, .size = 512, .threads = 1, .seed = 1,
                   .prevalence = 0.5, .test_fraction = 0};
    const opt_t options[] = {
        {'o', "out", OPT_STRING, &o.out, "OUTDIR", "output folder (created; required)", 1, 0,
         NULL},
        {0, "series", OPT_INT, &o.series, "N", "number of series", 1, 100000, NULL},
        {0, "slices", OPT_STRING, &o.slices, "N|LO-HI", "slices per series (seeded choice)", 1,
         0, NULL},
        {0, "size", OPT_INT, &o.size, "N", "rows and columns", 16, 2048, NULL},
        {0, "seed", OPT_INT64, &o.seed, "S", "seed of every random choice", 1, 0, NULL},
        {0, "prevalence", OPT_DOUBLE, &o.prevalence, "P",
         "fraction of series with hemorrhage", 0, 1, NULL},
        {0, "rates", OPT_STRING, &o.rates, "E,IP,IV,SA,SD",
         "relative frequency of epidural, intraparenchymal, intraventricular, subarachnoid, "
         "subdural lesions",
         1, 0, NULL},
        {0, "labels", OPT_STRING, &o.labels, "FILE", "labels CSV (default OUTDIR/labels.csv)",
         1, 0, NULL},
        {0, "test-fraction", OPT_DOUBLE, &o.test_fraction, "F",
         "fraction of series (whole patients) left out of the labels as a test split", 0, 1,
         NULL},
        {0, "uids", OPT_CHOICE, &o.uids, "STYLE",
         "rsna: IDs like the challenge (ID_63eb1e259); dicom: 2.25.<number> UIDs", 1, 0,
         "rsna|dicom"},
        {'j', "threads", OPT_INT, &o.threads, "N", "worker threads", 1, 256, NULL},
        {0, "force", OPT_FLAG, &o.force, NULL,
         "replace an earlier mkphantom run in OUTDIR (only the files it wrote) and an "
         "earlier labels CSV at --labels",
         0, 0, NULL},
        {0},
    };
    const opt_spec_t spec = {
        .program = "mkphantom",
        .usage = "[options] -o OUTDIR",
        .summary =
            "Writes synthetic head-CT series as DICOM files (CT Image Storage, signed 16-bit,\n"
            "intercept -1024, HU: brain 25-41, CSF 4-10, blood 50-90, bone 600-1400) with\n"
            "hemorrhages of the five subtypes (epidural lens, subdural crescent,\n"
            "intraparenchymal blob, intraventricular blood, subarachnoid blood in the sulci).\n"
            "Lesions are 3-D and fade at the ends of their extent. A slice is labelled with a\n"
            "subtype when its lesions change at least 10 mm2 of it by 10 HU or more.",
        .details =
            "Outputs:\n"
            "  OUTDIR/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   one file per slice\n"
            "  labels CSV     ID,Label rows ID_<slice>_<subtype> (six per slice) for the\n"
            "                 training series\n"
            "  OUTDIR/test_labels.csv  the same for the test series (with --test-fraction)\n"
            "  OUTDIR/series.csv       one row per series: IDs, split, tilt, lesions, slices\n"
            "OUTDIR must be absent, empty, or hold an unfinished run of the same options\n"
            "(exit 3 otherwise), so that no file of an earlier run passes for one of this\n"
            "run's; one mkphantom at a time writes there (another is refused, exit 3). Until\n"
            "the run ends, OUTDIR/.mkphantom-unfinished lists its settings and files: the same\n"
            "options again (any -j) finish a killed run, keeping the slices it wrote, with\n"
            "the bytes of an uninterrupted one; another command refuses the folder (exit 3),\n"
            "or with --force first removes what the unfinished run wrote (its labels CSV only\n"
            "when every ID in it is one of that run's). --force replaces an earlier\n"
            "mkphantom run there: the slices its series.csv (or its labels CSVs in OUTDIR)\n"
            "lists, its CSVs and unfinished temporaries are removed first. Files it\n"
            "did not write are kept (a warning names them); one at an output CSV name stops\n"
            "the run (exit 3).\n"
            "--labels may not name a folder, OUTDIR/series.csv or OUTDIR/test_labels.csv\n"
            "(exit 2), nor an existing file that is not this unfinished run's own unless\n"
            "--force, and then only a labels CSV ('ID,Label' first line; exit 3 otherwise);\n"
            "the one it replaces is removed when the run begins. Every refusal comes before\n"
            "any folder is made. Missing folders of OUTDIR and --labels are made; an output\n"
            "that cannot be created there stops the run before anything is written (exit 5).\n"
            "IDs derive from --seed and every option that changes what is generated (--series,\n"
            "--slices, --size, --prevalence, --rates, --test-fraction, --uids), so datasets\n"
            "made with different options share no IDs. The same options give byte-identical\n"
            "files, whatever -j or OUTDIR.",
        .exit_codes = NULL,
        .options = options,
        .min_positional = 0,
        .max_positional = 0,
    };
    char **positional;
    opt_parse(&spec, argc, argv, &positional);
    free(positional);
    if (!o.out) {
        fprintf(stderr, "mkphantom: error: -o OUTDIR is required\nTry 'mkphantom --help'.\n");
        return EXIT_USAGE;
    }
    int slices_lo, slices_hi;
    if (parse_slice_range(o.slices, &slices_lo, &slices_hi) != 0) {
        fprintf(stderr, "mkphantom: error: --slices '%s' is not N or LO-HI (1..10000)\n",
                o.slices);
        return EXIT_USAGE;
    }
    double rates[N_LESION_KINDS];
    if (parse_rates(o.rates, rates) != 0) {
        fprintf(stderr, "mkphantom: error: --rates '%s' is not five non-negative numbers "
                        "(not all 0)\n", o.rates);
        return EXIT_USAGE;
    }

    /* Every refusal before any folder is made. */
    output_dir_check("-o", o.out);
    if (o.labels)
        output_path_check("--labels", o.labels, LABELS_NAME);
    char *labels_path = o.labels ? xstrdup(o.labels) : path_join(o.out, LABELS_NAME);
    char *labels_canonical = canonical_path(labels_path);
    if (strchr(labels_canonical, '\n')) {
        fprintf(stderr, "mkphantom: error: --labels has a newline in its name\n");
        return EXIT_USAGE;
    }
    char *settings = generation_settings(&o, slices_lo, slices_hi, rates);
    /* OUTDIR's own labels.csv is recorded as "-", so that the marker stays right when an
     * unfinished OUTDIR is moved. */
    char *out_canonical = canonical_path(o.out);
    char *default_labels = path_join(out_canonical, LABELS_NAME);
    const char *labels_record = strcmp(labels_canonical, default_labels) ? labels_canonical : "-";
    char *header = unfinished_header(settings, labels_record, o.test_fraction > 0);
    free(out_canonical);
    free(default_labels);
    if (!path_is_dir(o.out))
        check_labels_path(&o, 0, 0);
    mkdir_p(o.out);
    /* One run at a time, for the whole run: another would take a live run for a killed one
     * and finish or remove its files. */
    int lock_fd = folder_lock(o.out, 0, "mkphantom");

    /* An unfinished run in OUTDIR with this header is this command's own, killed. */
    char *marker = path_join(o.out, UNFINISHED_NAME);
    unfinished_run_t unfinished = {0};
    if (path_is_file(marker))
        read_unfinished_marker(marker, &unfinished);
    int resuming = unfinished.header && strcmp(unfinished.header, header) == 0;

    double t0 = time_now();
    series_plan_t *series = xcalloc((size_t)o.series, sizeof *series);
    size_t nslices;
    slice_plan_t *slices = plan(series, &o, slices_lo, slices_hi, rates, &nslices);
    int test_series = 0;
    for (int i = 0; i < o.series; i++)
        test_series += series[i].test;

    /*
     * The labels CSVs at this run's names: a resumed run keeps writing over those provably its
     * own (every ID one of its IDs) and treats any other as a new run does (refused, or with
     * --force replaced).
     */
    char *test_path = o.test_fraction > 0 ? path_join(o.out, TEST_LABELS_NAME) : NULL;
    const char *csvs[] = {labels_path, test_path};
    int replace[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        if (!csvs[i] || !path_exists(csvs[i]))
            continue;
        int allow_empty = i == 0 ? test_series == o.series : test_series == 0;
        replace[i] = !(resuming && labels_only_of(csvs[i], &unfinished.run.ids, allow_empty));
        if (resuming && replace[i] && (i == 1 || !o.labels))
            check_replaceable(csvs[i], csvs[i], o.force, 1);
    }
    check_labels_path(&o, !replace[0], resuming);
    prepare_outdir(&o, &unfinished, resuming);
    free_unfinished(&unfinished);
    check_output_folders(o.out, labels_path);
    tmp_sweep_for(labels_path);
    /* A labels CSV this run replaces goes now, so that no file of another run is left at one
     * of its output names while it is unfinished. */
    for (int i = 0; i < 2; i++) {
        if (replace[i] && path_exists(csvs[i])) {
            remove_file(csvs[i]);
            log_info("removed %s, which this run replaces", csvs[i]);
        }
    }

    write_unfinished_marker(marker, header, series, o.series, slices);
    for (int i = 0; i < o.series; i++)
        mkdir_p(series[i].folder);

    render_job_t job = {.o = &o, .series = series, .slices = slices, .resume = resuming};
    job.buffers = xcalloc((size_t)o.threads, sizeof *job.buffers);
    for (int t = 0; t < o.threads; t++)
        job.buffers[t] = xmalloc((size_t)o.size * o.size * sizeof **job.buffers);
    job.errors = xcalloc(nslices, sizeof *job.errors);
    job.kept = xcalloc(nslices, sizeof *job.kept);
    job.progress = progress_begin("slices", (int64_t)nslices);
    parallel_for(o.threads, nslices, render_one, &job);
    progress_end(job.progress);
    for (size_t i = 0; i < nslices; i++)
        if (job.errors[i])
            die(EXIT_IO, "%s", job.errors[i]);
    double render_s = time_now() - t0;
    size_t kept = 0;
    for (size_t i = 0; i < nslices; i++)
        kept += (size_t)job.kept[i];
    if (resuming)
        log_info("kept %zu slices the unfinished run wrote, wrote %zu", kept, nslices - kept);

    write_labels(labels_path, series, o.series, slices, 0);
    if (test_path)
        write_labels(test_path, series, o.series, slices, 1);
    char *manifest = path_join(o.out, MANIFEST_NAME);
    write_manifest(manifest, series, o.series, slices);
    /* Every output is in place: the run is finished. */
    remove_file(marker);

    size_t positive = 0, per_subtype[N_SUBTYPES] = {0};
    for (size_t i = 0; i < nslices; i++)
        for (int t = 0; t < N_SUBTYPES; t++)
            per_subtype[t] += (size_t)slices[i].label[t];
    positive = per_subtype[N_SUBTYPES - 1];
    log_info("%zu slices in %d series (%d test), %zu positive (epidural %zu, "
             "intraparenchymal %zu, intraventricular %zu, subarachnoid %zu, subdural %zu) "
             "-> %s",
             nslices, o.series, test_series, positive, per_subtype[0], per_subtype[1],
             per_subtype[2], per_subtype[3], per_subtype[4], o.out);
    log_info("%.2f s, %.0f slices/s", render_s, nslices / (render_s > 0 ? render_s : 1e-9));

    for (int i = 0; i < o.series; i++)
        free(series[i].folder);
    for (int t = 0; t < o.threads; t++)
        free(job.buffers[t]);
    for (size_t i = 0; i < nslices; i++)
        free(job.errors[i]);
    free(job.errors);
    free(job.kept);
    free(job.buffers);
    close(lock_fd);
    free(labels_path);
    free(test_path);
    free(labels_canonical);
    free(settings);
    free(header);
    free(marker);
    free(manifest);
    free(slices);
    free(series);
    return EXIT_OK;
}
