/*
 * dcm2jpg: DICOM CT slices -> three-window 8-bit images (stage 1 of the reference method)
 * and a metadata table with one row per slice (OUTDIR/meta.h5).
 *
 * Two passes: every header is read first (cheap, the pixel data stays on disk), so that
 * duplicate SOPInstanceUIDs, existing outputs and slices to skip are known before any
 * pixel is decoded; then the remaining slices are decoded, windowed and encoded in parallel.
 *
 * The output folder is shared by successive runs (train, then test): its table keeps the
 * rows of earlier runs, and an image made earlier is reused only when the settings that
 * shaped its bytes are known to equal this run's (meta.h5 and the .dcm2jpg-settings record).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "dicom.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "imgproc.h"
#include "jpegio.h"
#include "log.h"
#include "opt.h"
#include "pool.h"
#include "window.h"

/* The record of the settings images in OUTDIR were made with, written before any image. */
#define SETTINGS_FILE ".dcm2jpg-settings"
/* Largest --size: 8192 x 8192 x 3 bytes is 192 MiB per thread already. */
#define MAX_SIZE 8192

typedef enum {
    SLICE_PENDING = 0, /* to be converted in the second pass */
    SLICE_OK,          /* converted in this run */
    SLICE_EXISTS,      /* output already there, made with this run's settings (no --force) */
    SLICE_SKIPPED,     /* valid DICOM we do not convert: not CT, colour, localizer, ... */
    SLICE_ERROR,       /* unreadable, undecodable, duplicate ID, ... */
    SLICE_NOT_DICOM,   /* found in a folder walk and not DICOM at all: counted, no row */
    SLICE_STALE,       /* a row of an earlier run whose image was made with other settings */
} slice_status_t;

static const char *const STATUS_NAMES[] = {"pending", "ok",        "exists", "skipped",
                                           "error",   "not-dicom", "stale"};

/* One input file and, once read, its row of meta.h5 (or a row kept from an earlier run). */
typedef struct {
    const char *path;
    slice_status_t status;
    char *message;
    char *id, *patient_id, *study_uid, *series_uid;
    char *photometric, *modality, *transfer_syntax, *image_type;
    double position[3], orientation[6], pixel_spacing[2];
    double slope, intercept, window_center, window_width;
    int32_t rows, columns, bits_allocated, bits_stored, high_bit, pixel_representation;
    int32_t instance_number;
    int8_t wrap_fixed;
} slice_t;

typedef struct {
    const char *out_dir;
    const char *format;
    const char *list_file;
    int threads, quality, subsample420, size, force, fix_wrap, any_modality;
    int bgr, keep_localizers;
    int only_inputs; /* meta.h5 lists this run's inputs only, no rows of earlier runs */
} options_t;

/* The settings that shape an image's bytes (and which slices get one). */
typedef struct {
    char format[64]; /* jpeg | ppm */
    int64_t size, quality;
    char subsampling[64]; /* 4:4:4 | 4:2:0 */
    int64_t fix_wrap, any_modality;
    char channel_order[64]; /* rgb | bgr */
} settings_t;

/* Scratch images of one worker thread, reused from slice to slice. */
typedef struct {
    uint8_t *rgb, *resized;
    size_t rgb_cap, resized_cap;
} scratch_t;

typedef struct {
    const options_t *opt;
    slice_t *slices;
    size_t *queue; /* indexes of the slices handled by the current pass */
    scratch_t *scratch;
    const char *extension;
    progress_t *progress;
    atomic_int io_failed;

    /* The settings record, written once just before the first image (record_lock). */
    pthread_mutex_t record_lock;
    int record_pending, record_written;
    settings_t record_settings;
} run_t;

static void free_slice(slice_t *s)
{
    free(s->message);
    free(s->id);
    free(s->patient_id);
    free(s->study_uid);
    free(s->series_uid);
    free(s->photometric);
    free(s->modality);
    free(s->transfer_syntax);
    free(s->image_type);
}

static void set_message(slice_t *s, slice_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_message(slice_t *s, slice_status_t status, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    free(s->message);
    s->message = xstrdup(text);
    s->status = status;
}

/* ---------------------------------------------------------------------------------------- */
/* Input gathering                                                                           */

/* A 0-byte file, whether named or found in a walk (where only *.dcm names make it an error). */
#define EMPTY_FILE "empty file (0 bytes)"

typedef struct {
    char *path;
    int walked;    /* found in a folder walk: non-DICOM files there are counted, not errors */
    char *problem; /* what a walk could not follow (an error row), or NULL */
} input_t;

static int compare_inputs(const void *a, const void *b)
{
    return strcmp(((const input_t *)a)->path, ((const input_t *)b)->path);
}

typedef struct {
    input_t *items;
    size_t count, cap;
    const char *out_dir; /* -o as given, for messages */
    char *out_real;      /* -o as an absolute path without links, "." or ".." */
} inputs_t;

static void inputs_add(inputs_t *in, const char *path, int walked, const char *problem)
{
    if (in->count == in->cap) {
        in->cap = in->cap ? in->cap * 2 : 256;
        in->items = xrealloc(in->items, in->cap * sizeof *in->items);
    }
    in->items[in->count++] = (input_t){xstrdup(path), walked, problem ? xstrdup(problem) : NULL};
}

/* path + "/" + name, with no doubled slash after the root. */
static char *append_component(char *path, const char *name)
{
    size_t len = strlen(path), extra = strlen(name);
    int slash = !(len == 1 && path[0] == '/');
    path = xrealloc(path, len + (size_t)slash + extra + 1);
    if (slash)
        path[len++] = '/';
    memcpy(path + len, name, extra + 1);
    return path;
}

/*
 * The absolute path a folder has, or will have once made: its longest leading part that
 * exists resolved by realpath (links, ".."), the rest appended with "." and ".." applied by
 * name (folders that do not exist yet are no links).
 */
static char *resolve_future_path(const char *path)
{
    char *full;
    if (path[0] == '/') {
        full = xstrdup(path);
    } else {
        char *cwd = getcwd(NULL, 0);
        if (cwd == NULL)
            die(EXIT_IO, "cannot read the current folder: %s", strerror(errno));
        full = path_join(cwd, path);
        free(cwd);
    }

    size_t cut = strlen(full);
    char *resolved;
    for (;;) {
        char saved = full[cut];
        full[cut] = '\0';
        resolved = realpath(cut ? full : "/", NULL);
        full[cut] = saved;
        if (resolved != NULL || cut == 0)
            break;
        do
            cut--;
        while (cut > 0 && full[cut] != '/');
    }
    if (resolved == NULL)
        die(EXIT_IO, "%s: cannot resolve the path: %s", path, strerror(errno));

    char *save = NULL;
    for (char *name = strtok_r(full + cut, "/", &save); name; name = strtok_r(NULL, "/", &save)) {
        if (strcmp(name, ".") == 0)
            continue;
        if (strcmp(name, "..") == 0) {
            char *last = strrchr(resolved, '/');
            last[last == resolved] = '\0';
            continue;
        }
        resolved = append_component(resolved, name);
    }
    free(full);
    return resolved;
}

/*
 * An output folder that is an input folder, or one the walk of an input folder reaches (not
 * below a hidden folder, which walks skip), would have its images and meta.h5 read back as
 * inputs on the next run: a usage error, before anything is read or written.
 */
/* Of two resolved paths: what follows folder in path ("" when they are equal, "/a/b" below
 * it), or NULL when path is not folder or below it. */
static const char *path_below(const char *path, const char *folder)
{
    if (strcmp(folder, "/") == 0)
        return path;
    size_t len = strlen(folder);
    if (strncmp(path, folder, len) == 0 && (path[len] == '/' || path[len] == '\0'))
        return path + len;
    return NULL;
}

static void refuse_output_in_input(const inputs_t *in, const char *folder)
{
    char *folder_real = realpath(folder, NULL);
    if (folder_real == NULL)
        return; /* the walk reports it */
    const char *below = path_below(in->out_real, folder_real);
    free(folder_real);
    if (below == NULL || strstr(below, "/.") != NULL)
        return;
    if (below[0] == '\0')
        die(EXIT_USAGE, "-o %s is the input folder %s: its images and meta.h5 would be read "
            "as inputs on the next run; give an output folder outside the inputs", in->out_dir,
            folder);
    die(EXIT_USAGE, "-o %s is inside the input folder %s, which is walked for DICOM files: "
        "its images and meta.h5 would be read as inputs on the next run; give an output "
        "folder outside the inputs", in->out_dir, folder);
}

/* Whether a file found in a walk is one of the output folder's own, reached through a
 * symbolic link inside an input folder: never read back as an input. */
static int in_output_folder(const inputs_t *in, const char *path)
{
    char *real = realpath(path, NULL);
    if (real == NULL)
        return 0;
    const char *below = path_below(real, in->out_real);
    int inside = below != NULL && below[0] == '/';
    free(real);
    return inside;
}

/*
 * A folder is walked: what it holds that cannot be read becomes an error row. A file named
 * explicitly (on the command line or in a list), or a folder that cannot be read at all, must
 * be fine, otherwise nothing is written and the exit code is EXIT_BAD_INPUT.
 */
static void add_input(inputs_t *in, const char *path)
{
    if (path_is_dir(path)) {
        refuse_output_in_input(in, path);
        strlist_t found = {0}, problem_paths = {0}, problem_reasons = {0};
        walk_files_report(path, &found, &problem_paths, &problem_reasons);
        size_t first = in->count;
        for (size_t i = 0; i < problem_paths.count; i++) {
            if (strcmp(problem_paths.items[i], path) == 0)
                die(EXIT_BAD_INPUT, "%s: %s", path, problem_reasons.items[i]);
            inputs_add(in, problem_paths.items[i], 1, problem_reasons.items[i]);
        }
        size_t outputs = 0;
        for (size_t i = 0; i < found.count; i++) {
            if (in_output_folder(in, found.items[i]))
                outputs++;
            else
                inputs_add(in, found.items[i], 1, NULL);
        }
        if (outputs)
            log_warn("%s: %zu files reached through a link into the output folder %s were "
                     "left out", path, outputs, in->out_dir);
        /* Rows in path order, problems among the files (an empty list may have no array). */
        if (in->count > first)
            qsort(in->items + first, in->count - first, sizeof *in->items, compare_inputs);
        strlist_free(&found);
        strlist_free(&problem_paths);
        strlist_free(&problem_reasons);
        return;
    }
    struct stat st;
    if (!path_exists(path)) {
        if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
            die(EXIT_BAD_INPUT, "%s: broken symbolic link (its target is missing)", path);
        die(EXIT_BAD_INPUT, "%s: no such file or folder", path);
    }
    if (!path_is_file(path))
        die(EXIT_BAD_INPUT, "%s: not a regular file", path);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die(EXIT_BAD_INPUT, "%s: cannot read: %s", path, strerror(errno));
    fclose(f);
    /* The same words as for an empty *.dcm found in a folder walk. */
    if (stat(path, &st) == 0 && st.st_size == 0)
        die(EXIT_BAD_INPUT, "%s: %s", path, EMPTY_FILE);
    if (!dicom_sniff(path))
        die(EXIT_BAD_INPUT, "%s: not a DICOM file (no DICM marker, no DICOM element at start)",
            path);
    inputs_add(in, path, 0, NULL);
}

static void add_list_file(inputs_t *in, const char *list_path)
{
    strlist_t lines = {0};
    read_list_file(list_path, &lines);
    for (size_t i = 0; i < lines.count; i++)
        add_input(in, lines.items[i]);
    strlist_free(&lines);
}

typedef struct {
    dev_t dev;
    ino_t ino;
    size_t index;
} file_key_t;

static int compare_file_keys(const void *a, const void *b)
{
    const file_key_t *x = a, *y = b;
    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/*
 * One file reached twice (a folder or file given twice, a folder inside another one given,
 * two links to it) would otherwise be two inputs sharing a SOPInstanceUID, both rejected.
 * Each file (device and inode) is kept once, where it first appears; so is each problem.
 */
static void drop_repeated_files(inputs_t *in)
{
    file_key_t *keys = xmalloc((in->count ? in->count : 1) * sizeof *keys);
    size_t nkeys = 0;
    for (size_t i = 0; i < in->count; i++) {
        /* What a walk could not follow is known by the entry itself (a link, a folder). */
        struct stat st;
        int found = in->items[i].problem == NULL ? stat(in->items[i].path, &st) == 0
                                                 : lstat(in->items[i].path, &st) == 0;
        if (found)
            keys[nkeys++] = (file_key_t){st.st_dev, st.st_ino, i};
    }
    qsort(keys, nkeys, sizeof *keys, compare_file_keys);

    char *repeated = xcalloc(in->count ? in->count : 1, 1);
    size_t dropped = 0, first = 0;
    for (size_t k = 1; k < nkeys; k++) {
        if (keys[k].dev != keys[first].dev || keys[k].ino != keys[first].ino) {
            first = k;
            continue;
        }
        repeated[keys[k].index] = 1;
        log_debug("%s: same file as %s: converted once", in->items[keys[k].index].path,
                  in->items[keys[first].index].path);
        dropped++;
    }
    size_t kept = 0;
    for (size_t i = 0; i < in->count; i++) {
        if (repeated[i]) {
            free(in->items[i].path);
            free(in->items[i].problem);
        } else {
            in->items[kept++] = in->items[i];
        }
    }
    in->count = kept;
    if (dropped > 0)
        log_info("%zu input path(s) name a file listed already (a file or folder given twice, "
                 "or links to it): each file is converted once",
                 dropped);
    free(repeated);
    free(keys);
}

/* ---------------------------------------------------------------------------------------- */
/* First pass: headers                                                                       */

/* IDs become file names: keep to the characters of UIDs and RSNA IDs. */
static int id_is_safe(const char *id)
{
    if (id[0] == '\0' || id[0] == '.')
        return 0;
    for (const char *c = id; *c; c++) {
        int ok = (*c >= '0' && *c <= '9') || (*c >= 'A' && *c <= 'Z') ||
                 (*c >= 'a' && *c <= 'z') || *c == '.' || *c == '_' || *c == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

static void copy_header(slice_t *s, const dicom_header_t *h, const options_t *opt)
{
    s->id = xstrdup(h->sop_uid);
    s->patient_id = xstrdup(h->patient_id);
    s->study_uid = xstrdup(h->study_uid);
    s->series_uid = xstrdup(h->series_uid);
    s->photometric = xstrdup(h->photometric);
    s->modality = xstrdup(h->modality);
    s->transfer_syntax = xstrdup(h->transfer_syntax);
    s->image_type = xstrdup(h->image_type);
    memcpy(s->position, h->position, sizeof s->position);
    memcpy(s->orientation, h->orientation, sizeof s->orientation);
    memcpy(s->pixel_spacing, h->pixel_spacing, sizeof s->pixel_spacing);
    s->slope = h->slope;
    s->intercept = h->intercept;
    s->window_center = h->window_center;
    s->window_width = h->window_width;
    s->rows = h->rows;
    s->columns = h->columns;
    s->bits_allocated = h->bits_allocated;
    s->bits_stored = h->bits_stored;
    s->high_bit = h->high_bit;
    s->pixel_representation = h->pixel_representation;
    s->instance_number = h->instance_number;

    /* The fix depends on header fields only; asking with no pixels tells whether it applies. */
    double intercept = h->intercept;
    s->wrap_fixed = (int8_t)(opt->fix_wrap && window_fix_wrap(NULL, 0, h->modality,
                                                              h->bits_stored,
                                                              h->pixel_representation,
                                                              &intercept));
}

/* Decide from the header alone whether a slice is converted, skipped or rejected. */
static void classify(slice_t *s, const dicom_header_t *h, const options_t *opt)
{
    if (!h->has_pixel_data && h->is_image) {
        /* An image object cut before its pixels parses as a complete header. */
        set_message(s, SLICE_ERROR, "no pixel data: truncated? (SOP class %s, Rows %d, "
                    "Columns %d)", h->sop_class[0] ? h->sop_class : "none", h->rows,
                    h->columns);
    } else if (!h->has_pixel_data) {
        set_message(s, SLICE_SKIPPED, "no image: Modality %s, SOP class %s",
                    h->modality[0] ? h->modality : "none", h->sop_class);
    } else if (h->samples_per_pixel != 1) {
        set_message(s, SLICE_SKIPPED, "colour image (%s, %d samples per pixel)",
                    h->photometric, h->samples_per_pixel);
    } else if (h->frames > 1) {
        set_message(s, SLICE_SKIPPED, "multi-frame image (%d frames)", h->frames);
    } else if (strcmp(h->modality, "CT") != 0 && !opt->any_modality) {
        set_message(s, SLICE_SKIPPED, "Modality is %s, not CT (--any-modality converts it)",
                    h->modality[0] ? h->modality : "missing");
    } else if (h->is_localizer && !opt->keep_localizers) {
        set_message(s, SLICE_SKIPPED, "localizer (scout) image: ImageType %s "
                    "(--keep-localizers converts it)", h->image_type);
    } else if (h->sop_uid[0] == '\0') {
        set_message(s, SLICE_ERROR, "no SOPInstanceUID");
    } else if (!id_is_safe(h->sop_uid)) {
        set_message(s, SLICE_ERROR, "SOPInstanceUID '%s' is not usable as a file name",
                    h->sop_uid);
    } else {
        s->status = SLICE_PENDING;
    }
    if (s->status != SLICE_PENDING)
        s->wrap_fixed = 0;
}

/* Found in a walk and not DICOM: ignored, unless its name says it is DICOM (a cut file). */
static void not_dicom(slice_t *s, const char *reason)
{
    if (!path_has_ext(s->path, ".dcm") && !path_has_ext(s->path, ".dicom")) {
        set_message(s, SLICE_NOT_DICOM, "%s", reason);
        return;
    }
    struct stat st;
    long long bytes = stat(s->path, &st) == 0 ? (long long)st.st_size : -1;
    if (bytes == 0)
        set_message(s, SLICE_ERROR, "%s", EMPTY_FILE);
    else
        set_message(s, SLICE_ERROR, "named like a DICOM file, but %s (%lld bytes; truncated?)",
                    reason, bytes);
}

typedef struct {
    run_t *run;
    const inputs_t *inputs;
} header_pass_t;

static void read_header_task(size_t index, int thread, void *ctx)
{
    (void)thread;
    header_pass_t *pass = ctx;
    run_t *run = pass->run;
    slice_t *s = &run->slices[index];
    const input_t *input = &pass->inputs->items[index];
    dicom_header_t h;
    char err[512];

    if (input->problem != NULL) {
        set_message(s, SLICE_ERROR, "%s", input->problem);
    } else {
        dicom_status_t st = dicom_read(s->path, &h, NULL, err, sizeof err);
        if (st == DICOM_NOT_DICOM && input->walked)
            not_dicom(s, err);
        else if (st == DICOM_NOT_DICOM)
            set_message(s, SLICE_NOT_DICOM, "%s", err);
        else if (st != DICOM_OK)
            set_message(s, SLICE_ERROR, "%s", err);
        else {
            copy_header(s, &h, run->opt);
            classify(s, &h, run->opt);
        }
    }
    progress_add(run->progress, 1);
}

static int compare_by_id(const void *a, const void *b, void *slices)
{
    const slice_t *sa = (const slice_t *)slices + *(const size_t *)a;
    const slice_t *sb = (const slice_t *)slices + *(const size_t *)b;
    int c = strcmp(sa->id, sb->id);
    if (c != 0)
        return c;
    return (*(const size_t *)a > *(const size_t *)b) - (*(const size_t *)a < *(const size_t *)b);
}

/* Every slice of a group sharing one SOPInstanceUID is an error naming another member. */
static size_t reject_duplicates(slice_t *slices, size_t n)
{
    size_t *order = xmalloc((n ? n : 1) * sizeof *order);
    size_t count = 0, rejected = 0;
    for (size_t i = 0; i < n; i++)
        if (slices[i].status == SLICE_PENDING)
            order[count++] = i;
    qsort_r(order, count, sizeof *order, compare_by_id, slices);

    for (size_t start = 0; start < count;) {
        size_t end = start + 1;
        while (end < count && strcmp(slices[order[end]].id, slices[order[start]].id) == 0)
            end++;
        for (size_t k = start; end - start > 1 && k < end; k++) {
            size_t other = order[k == start ? start + 1 : start];
            set_message(&slices[order[k]], SLICE_ERROR,
                        "duplicate SOPInstanceUID %s: also in %s", slices[order[k]].id,
                        slices[other].path);
            rejected++;
        }
        start = end;
    }
    free(order);
    return rejected;
}

/* ---------------------------------------------------------------------------------------- */
/* The output folder: its lock, the settings its images were made with, its earlier table     */

static void settings_of_options(const options_t *opt, settings_t *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->format, sizeof s->format, "%s", opt->format);
    s->size = opt->size;
    s->quality = opt->quality;
    snprintf(s->subsampling, sizeof s->subsampling, "%s", opt->subsample420 ? "4:2:0" : "4:4:4");
    s->fix_wrap = opt->fix_wrap;
    s->any_modality = opt->any_modality;
    snprintf(s->channel_order, sizeof s->channel_order, "%s", opt->bgr ? "bgr" : "rgb");
}

static void describe_number(char *out, size_t len, const char *name, int64_t was, int64_t now)
{
    size_t used = strlen(out);
    if (was != now)
        snprintf(out + used, len - used, "%s%s %lld -> %lld", used ? ", " : "", name,
                 (long long)was, (long long)now);
}

static void describe_text(char *out, size_t len, const char *name, const char *was,
                          const char *now)
{
    size_t used = strlen(out);
    if (strcmp(was, now) != 0)
        snprintf(out + used, len - used, "%s%s %s -> %s", used ? ", " : "", name, was, now);
}

/* 1 and what differs ("size 64 -> 0, ...") when a and b would make different images. */
static int settings_differ(const settings_t *a, const settings_t *b, char *what, size_t len)
{
    what[0] = '\0';
    describe_text(what, len, "format", a->format, b->format);
    describe_number(what, len, "size", a->size, b->size);
    /* Quality and subsampling shape JPEG bytes only. */
    if (strcmp(a->format, "ppm") != 0 || strcmp(b->format, "ppm") != 0) {
        describe_number(what, len, "quality", a->quality, b->quality);
        describe_text(what, len, "subsampling", a->subsampling, b->subsampling);
    }
    describe_number(what, len, "fix_wrap", a->fix_wrap, b->fix_wrap);
    describe_number(what, len, "any_modality", a->any_modality, b->any_modality);
    describe_text(what, len, "channel_order", a->channel_order, b->channel_order);
    return what[0] != '\0';
}

static const char *const SETTINGS_KEYS[] = {"format",   "size",         "quality",
                                            "subsampling", "fix_wrap", "any_modality",
                                            "channel_order"};
#define SETTINGS_NKEYS (sizeof SETTINGS_KEYS / sizeof *SETTINGS_KEYS)

/* Read OUTDIR/.dcm2jpg-settings: 1 read, 0 absent, -1 present but unreadable or incomplete. */
static int settings_file_read(const char *out_dir, settings_t *s)
{
    char *path = path_join(out_dir, SETTINGS_FILE);
    FILE *f = fopen(path, "r");
    free(path);
    if (f == NULL)
        return errno == ENOENT ? 0 : -1;
    memset(s, 0, sizeof *s);
    unsigned seen = 0;
    char line[256], key[64], value[64];
    while (fgets(line, sizeof line, f) != NULL) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        if (sscanf(line, "%63s %63s", key, value) != 2) {
            fclose(f);
            return -1;
        }
        size_t k = 0;
        while (k < SETTINGS_NKEYS && strcmp(key, SETTINGS_KEYS[k]) != 0)
            k++;
        if (k == SETTINGS_NKEYS)
            continue;
        seen |= 1u << k;
        long long number = strtoll(value, NULL, 10);
        switch (k) {
        case 0: snprintf(s->format, sizeof s->format, "%s", value); break;
        case 1: s->size = number; break;
        case 2: s->quality = number; break;
        case 3: snprintf(s->subsampling, sizeof s->subsampling, "%s", value); break;
        case 4: s->fix_wrap = number; break;
        case 5: s->any_modality = number; break;
        default: snprintf(s->channel_order, sizeof s->channel_order, "%s", value); break;
        }
    }
    fclose(f);
    return seen == (1u << SETTINGS_NKEYS) - 1 ? 1 : -1;
}

/* Written under a temporary name; 0, or -1 with the reason in err. */
static int settings_file_write(const char *out_dir, const settings_t *s, char *err,
                               size_t errlen)
{
    char *path = path_join(out_dir, SETTINGS_FILE);
    char *tmp = tmp_path_for(path);
    FILE *f = fopen(tmp, "w");
    int ok = f != NULL;
    if (ok) {
        fprintf(f, "# dcm2jpg: the settings the images in this folder were made with\n");
        fprintf(f, "format %s\nsize %lld\nquality %lld\nsubsampling %s\nfix_wrap %lld\n"
                "any_modality %lld\nchannel_order %s\n",
                s->format, (long long)s->size, (long long)s->quality, s->subsampling,
                (long long)s->fix_wrap, (long long)s->any_modality, s->channel_order);
        ok = !ferror(f);
        ok = fclose(f) == 0 && ok;
    }
    if (!ok || tmp_commit(tmp, path) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        tmp_discard(tmp);
        ok = 0;
    }
    free(tmp);
    free(path);
    return ok ? 0 : -1;
}

/* The record must say what the images are before the first one of this run is written. */
static int record_before_image(run_t *run, char *err, size_t errlen)
{
    int rc = 0;
    pthread_mutex_lock(&run->record_lock);
    if (run->record_pending) {
        rc = settings_file_write(run->opt->out_dir, &run->record_settings, err, errlen);
        run->record_pending = rc != 0;
        run->record_written = rc == 0;
    }
    pthread_mutex_unlock(&run->record_lock);
    return rc;
}

/* meta.h5 of earlier runs into the folder: its settings and rows. */
typedef struct {
    int present;      /* meta.h5 exists */
    int has_settings; /* and its settings could be read */
    int has_rows;     /* and its rows */
    settings_t settings;
    const char *extension; /* of the images it lists */
    slice_t *rows;
    size_t count;
    strlist_t paths; /* owns the rows' paths */
} earlier_t;

static int attr_text(hid_t f, const char *name, char *out, size_t len)
{
    char *value = h5_attr_read_str(f, name);
    if (value == NULL)
        return 0;
    snprintf(out, len, "%s", value);
    free(value);
    return 1;
}

static int read_earlier_settings(hid_t f, settings_t *s)
{
    memset(s, 0, sizeof *s);
    int ok = attr_text(f, "format", s->format, sizeof s->format) &&
             h5_attr_read_i64(f, "size", &s->size) &&
             h5_attr_read_i64(f, "quality", &s->quality) &&
             attr_text(f, "subsampling", s->subsampling, sizeof s->subsampling) &&
             h5_attr_read_i64(f, "fix_wrap", &s->fix_wrap) &&
             h5_attr_read_i64(f, "any_modality", &s->any_modality);
    /* Tables from before --bgr existed hold channel 0 first. */
    if (ok && !attr_text(f, "channel_order", s->channel_order, sizeof s->channel_order))
        snprintf(s->channel_order, sizeof s->channel_order, "rgb");
    return ok;
}

/* A column of the earlier table, or NULL when absent or not n rows of width values. */
static void *earlier_column(hid_t f, const char *name, hid_t type, size_t n, int width)
{
    if (!h5_exists(f, name))
        return NULL;
    hsize_t dims[8];
    int rank = h5_dims(f, name, dims);
    if (dims[0] != n || (width == 1 ? rank != 1 : rank != 2 || dims[1] != (hsize_t)width))
        return NULL;
    return h5_read(f, name, type, rank, dims);
}

static char **earlier_strings(hid_t f, const char *name, size_t n)
{
    if (!h5_exists(f, name))
        return NULL;
    size_t count;
    char **values = h5_read_strings(f, name, &count);
    if (count != n) {
        h5_free_strings(values, count);
        return NULL;
    }
    return values;
}

/* Copy string column values into the rows (field at offset), "" when the column is absent. */
static void fill_strings(slice_t *rows, size_t n, char **column, size_t offset)
{
    for (size_t i = 0; i < n; i++)
        *(char **)((char *)&rows[i] + offset) = xstrdup(column ? column[i] : "");
}

static void fill_f64(slice_t *rows, size_t n, const double *column, size_t offset, int width)
{
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < width; k++)
            ((double *)((char *)&rows[i] + offset))[k] = column ? column[i * width + k] : NAN;
}

static void fill_i32(slice_t *rows, size_t n, const int32_t *column, size_t offset)
{
    for (size_t i = 0; i < n; i++)
        *(int32_t *)((char *)&rows[i] + offset) = column ? column[i] : 0;
}

static void read_earlier_rows(hid_t f, earlier_t *e)
{
    hsize_t dims[8];
    if (!h5_exists(f, "id") || h5_dims(f, "id", dims) != 1)
        return;
    size_t n = dims[0];
    char **ids = earlier_strings(f, "id", n);
    char **status = earlier_strings(f, "status", n);
    char **paths = earlier_strings(f, "path", n);
    if (ids == NULL || status == NULL || paths == NULL) {
        if (ids)
            h5_free_strings(ids, n);
        if (status)
            h5_free_strings(status, n);
        if (paths)
            h5_free_strings(paths, n);
        return;
    }
    slice_t *rows = xcalloc(n ? n : 1, sizeof *rows);
    for (size_t i = 0; i < n; i++) {
        strlist_push(&e->paths, paths[i]);
        rows[i].path = e->paths.items[i];
        rows[i].message = xstrdup("");
        rows[i].status = SLICE_PENDING; /* an unknown status word: the row is dropped */
        for (size_t k = 0; k < sizeof STATUS_NAMES / sizeof *STATUS_NAMES; k++)
            if (strcmp(status[i], STATUS_NAMES[k]) == 0)
                rows[i].status = (slice_status_t)k;
    }

    static const struct {
        const char *name;
        size_t offset;
    } texts[] = {
        {"id", offsetof(slice_t, id)},
        {"patient_id", offsetof(slice_t, patient_id)},
        {"study_uid", offsetof(slice_t, study_uid)},
        {"series_uid", offsetof(slice_t, series_uid)},
        {"photometric", offsetof(slice_t, photometric)},
        {"modality", offsetof(slice_t, modality)},
        {"transfer_syntax", offsetof(slice_t, transfer_syntax)},
        {"image_type", offsetof(slice_t, image_type)},
    };
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        char **column = earlier_strings(f, texts[k].name, n);
        fill_strings(rows, n, column, texts[k].offset);
        if (column)
            h5_free_strings(column, n);
    }

    static const struct {
        const char *name;
        size_t offset;
        int width;
    } reals[] = {
        {"position", offsetof(slice_t, position), 3},
        {"orientation", offsetof(slice_t, orientation), 6},
        {"pixel_spacing", offsetof(slice_t, pixel_spacing), 2},
        {"slope", offsetof(slice_t, slope), 1},
        {"intercept", offsetof(slice_t, intercept), 1},
        {"window_center", offsetof(slice_t, window_center), 1},
        {"window_width", offsetof(slice_t, window_width), 1},
    };
    for (size_t k = 0; k < sizeof reals / sizeof *reals; k++) {
        double *column = earlier_column(f, reals[k].name, H5T_NATIVE_DOUBLE, n, reals[k].width);
        fill_f64(rows, n, column, reals[k].offset, reals[k].width);
        free(column);
    }

    static const struct {
        const char *name;
        size_t offset;
    } ints[] = {
        {"rows", offsetof(slice_t, rows)},
        {"columns", offsetof(slice_t, columns)},
        {"bits_allocated", offsetof(slice_t, bits_allocated)},
        {"bits_stored", offsetof(slice_t, bits_stored)},
        {"high_bit", offsetof(slice_t, high_bit)},
        {"pixel_representation", offsetof(slice_t, pixel_representation)},
        {"instance_number", offsetof(slice_t, instance_number)},
    };
    for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) {
        int32_t *column = earlier_column(f, ints[k].name, H5T_NATIVE_INT32, n, 1);
        fill_i32(rows, n, column, ints[k].offset);
        free(column);
    }
    int8_t *wrap = earlier_column(f, "wrap_fixed", H5T_NATIVE_INT8, n, 1);
    for (size_t i = 0; i < n; i++)
        rows[i].wrap_fixed = wrap ? wrap[i] : 0;
    free(wrap);

    h5_free_strings(ids, n);
    h5_free_strings(status, n);
    h5_free_strings(paths, n);
    e->rows = rows;
    e->count = n;
    e->has_rows = 1;
}

static void read_earlier(const char *out_dir, earlier_t *e)
{
    memset(e, 0, sizeof *e);
    e->extension = "jpg";
    char *path = path_join(out_dir, "meta.h5");
    e->present = path_exists(path);
    /* Damage is reported by the caller as unknown settings, not by HDF5 itself. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = e->present && H5Fis_hdf5(path) > 0 ? H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT)
                                                  : -1;
    free(path);
    if (f < 0)
        return;
    e->has_settings = read_earlier_settings(f, &e->settings);
    if (e->has_settings && strcmp(e->settings.format, "ppm") == 0)
        e->extension = "ppm";
    read_earlier_rows(f, e);
    H5Fclose(f);
}

static void free_earlier(earlier_t *e)
{
    for (size_t i = 0; i < e->count; i++)
        free_slice(&e->rows[i]);
    free(e->rows);
    strlist_free(&e->paths);
}

/*
 * Can the images already in the folder be taken as this run's? Only when the settings they
 * were made with are known and equal. Otherwise *why says why not.
 */
static int trust_existing(const settings_t *now, const earlier_t *e, int record,
                          const settings_t *recorded, char *why, size_t len)
{
    char what[256];
    if (!e->present && record == 0) {
        snprintf(why, len, "there is no meta.h5 nor %s saying how they were made",
                 SETTINGS_FILE);
        return 0;
    }
    if (record < 0) {
        snprintf(why, len, "%s is unreadable", SETTINGS_FILE);
        return 0;
    }
    if (e->present && !e->has_settings) {
        snprintf(why, len, "meta.h5 is unreadable or lacks the settings");
        return 0;
    }
    if (e->present && record > 0 && settings_differ(&e->settings, recorded, what, sizeof what)) {
        snprintf(why, len, "an earlier run with other settings (%s) did not finish", what);
        return 0;
    }
    const settings_t *was = record > 0 ? recorded : &e->settings;
    if (settings_differ(was, now, what, sizeof what)) {
        snprintf(why, len, "they were made with other settings (%s)", what);
        return 0;
    }
    return 1;
}

/* A sorted copy of the non-empty strings at offset in the slices, for bsearch. */
static const char **sorted_field(const slice_t *slices, size_t n, size_t offset, size_t *count)
{
    const char **out = xmalloc((n ? n : 1) * sizeof *out);
    *count = 0;
    for (size_t i = 0; i < n; i++) {
        const char *value = *(const char *const *)((const char *)&slices[i] + offset);
        if (value != NULL && value[0] != '\0')
            out[(*count)++] = value;
    }
    qsort(out, *count, sizeof *out, compare_strings);
    return out;
}

static int in_sorted(const char **sorted, size_t n, const char *value)
{
    return value[0] != '\0' &&
           bsearch(&value, sorted, n, sizeof *sorted, compare_strings) != NULL;
}

/*
 * Rows of the earlier table that this run does not replace (their ID and path are not
 * among this run's): a slice whose image is still there is kept as "exists", or as "stale"
 * when the images cannot be trusted; skipped and error rows are kept as they were.
 * Returns how many were kept; they are the first *kept rows of e->rows afterwards.
 */
static size_t keep_earlier_rows(earlier_t *e, const slice_t *slices, size_t n, int trusted,
                                const char *out_dir, size_t *stale)
{
    size_t nids, npaths;
    const char **ids = sorted_field(slices, n, offsetof(slice_t, id), &nids);
    const char **paths = sorted_field(slices, n, offsetof(slice_t, path), &npaths);
    size_t kept = 0;
    *stale = 0;
    for (size_t i = 0; i < e->count; i++) {
        slice_t *row = &e->rows[i];
        int keep = !in_sorted(ids, nids, row->id) && !in_sorted(paths, npaths, row->path);
        if (keep && (row->status == SLICE_OK || row->status == SLICE_EXISTS ||
                     row->status == SLICE_STALE)) {
            char *image = xasprintf("%s/%s.%s", out_dir, row->id, e->extension);
            keep = row->id[0] != '\0' && path_exists(image);
            if (keep && trusted && row->status != SLICE_STALE)
                set_message(row, SLICE_EXISTS, "kept from an earlier run: %s", image);
            else if (keep) {
                set_message(row, SLICE_STALE, "made with other settings than this table's: "
                            "convert it again");
                (*stale)++;
            }
            free(image);
        } else if (keep) {
            keep = row->status == SLICE_SKIPPED || row->status == SLICE_ERROR;
        }
        if (keep) {
            slice_t moved = e->rows[kept];
            e->rows[kept] = *row;
            *row = moved;
            kept++;
        }
    }
    free(ids);
    free(paths);
    return kept;
}

/* ---------------------------------------------------------------------------------------- */
/* Second pass: pixels                                                                       */

/* A scratch buffer of at least need bytes, or NULL when there is not that much memory. */
static uint8_t *scratch_get(uint8_t **buffer, size_t *cap, size_t need)
{
    if (*cap < need) {
        free(*buffer);
        *buffer = malloc(need);
        *cap = *buffer ? need : 0;
    }
    return *buffer;
}

static char *output_path(const run_t *run, const char *id)
{
    return xasprintf("%s/%s.%s", run->opt->out_dir, id, run->extension);
}

/* Binary PPM written straight from the image (no copy: images can be large). */
static int write_ppm(const char *path, const uint8_t *rgb, int w, int h, char *err,
                     size_t errlen)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    size_t body = (size_t)w * (size_t)h * 3;
    int ok = fprintf(f, "P6\n%d %d\n255\n", w, h) > 0 && fwrite(rgb, 1, body, f) == body;
    ok = fclose(f) == 0 && ok;
    if (!ok) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Encode under a temporary name and rename, so that a killed run leaves no partial image. */
static int write_image(const run_t *run, const char *final_path, const uint8_t *rgb, int w,
                       int h, char *err, size_t errlen)
{
    char *tmp = tmp_path_for(final_path);
    int rc;
    if (strcmp(run->opt->format, "ppm") == 0)
        rc = write_ppm(tmp, rgb, w, h, err, errlen);
    else
        rc = jpeg_write_file(tmp, rgb, w, h, run->opt->quality, run->opt->subsample420, err,
                             errlen);
    if (rc == 0 && tmp_commit(tmp, final_path) != 0) {
        snprintf(err, errlen, "cannot rename into %s: %s", final_path, strerror(errno));
        rc = -1;
    }
    if (rc != 0)
        tmp_discard(tmp);
    free(tmp);
    return rc;
}

static void convert_slice(run_t *run, slice_t *s, scratch_t *scratch)
{
    dicom_header_t h;
    int32_t *pixels = NULL;
    char err[512];

    dicom_status_t st = dicom_read(s->path, &h, &pixels, err, sizeof err);
    if (st != DICOM_OK) {
        set_message(s, SLICE_ERROR, "%s", err);
        return;
    }
    if (strcmp(h.sop_uid, s->id) != 0) {
        set_message(s, SLICE_ERROR, "file changed while converting (SOPInstanceUID %s -> %s)",
                    s->id, h.sop_uid);
        free(pixels);
        return;
    }

    size_t n = (size_t)h.rows * (size_t)h.columns;
    double intercept = h.intercept;
    if (run->opt->fix_wrap)
        window_fix_wrap(pixels, n, h.modality, h.bits_stored, h.pixel_representation,
                        &intercept);
    uint8_t *rgb = scratch_get(&scratch->rgb, &scratch->rgb_cap, n * 3);
    if (rgb == NULL) {
        set_message(s, SLICE_ERROR, "out of memory for a %dx%d image (%zu bytes)", h.columns,
                    h.rows, n * 3);
        free(pixels);
        return;
    }
    window_apply(pixels, n, h.slope, intercept, rgb);
    free(pixels);
    /* The original method's files hold the brain window in the last byte of each pixel. */
    if (run->opt->bgr)
        for (size_t i = 0; i < n; i++) {
            uint8_t first = rgb[3 * i];
            rgb[3 * i] = rgb[3 * i + 2];
            rgb[3 * i + 2] = first;
        }

    int w = h.columns, ht = h.rows;
    const uint8_t *image = rgb;
    if (run->opt->size > 0 && (w != run->opt->size || ht != run->opt->size)) {
        size_t side = (size_t)run->opt->size;
        uint8_t *resized = scratch_get(&scratch->resized, &scratch->resized_cap, side * side * 3);
        if (resized == NULL) {
            set_message(s, SLICE_ERROR, "out of memory for a %zux%zu image (%zu bytes)", side,
                        side, side * side * 3);
            return;
        }
        img_resize_bilinear(rgb, w, ht, resized, run->opt->size, run->opt->size);
        image = resized;
        w = ht = run->opt->size;
    }

    char *final_path = output_path(run, s->id);
    if (record_before_image(run, err, sizeof err) != 0 ||
        write_image(run, final_path, image, w, ht, err, sizeof err) != 0) {
        set_message(s, SLICE_ERROR, "%s", err);
        atomic_store(&run->io_failed, 1);
    } else {
        set_message(s, SLICE_OK, "%s", "converted");
    }
    free(final_path);
}

static void convert_task(size_t index, int thread, void *ctx)
{
    run_t *run = ctx;
    slice_t *s = &run->slices[run->queue[index]];
    if (atomic_load(&run->io_failed))
        set_message(s, SLICE_ERROR, "not converted: an earlier output could not be written");
    else
        convert_slice(run, s, &run->scratch[thread]);
    if (s->status == SLICE_ERROR)
        log_error("%s: %s", s->path, s->message);
    progress_add(run->progress, 1);
}

/* ---------------------------------------------------------------------------------------- */
/* meta.h5                                                                                   */

/* Gather one string field of the rows into an array for h5_write_strings. */
static void write_string_column(hid_t file, const char *name, slice_t *const *rows, size_t n,
                                size_t offset)
{
    const char **column = xmalloc((n ? n : 1) * sizeof *column);
    for (size_t i = 0; i < n; i++) {
        const char *value = *(const char *const *)((const char *)rows[i] + offset);
        column[i] = value ? value : "";
    }
    h5_write_strings(file, name, column, n);
    free(column);
}

static void write_f64_column(hid_t file, const char *name, slice_t *const *rows, size_t n,
                             size_t offset, int width)
{
    double *column = xmalloc((n ? n : 1) * (size_t)width * sizeof *column);
    for (size_t i = 0; i < n; i++)
        memcpy(column + i * width, (const char *)rows[i] + offset, width * sizeof *column);
    hsize_t dims[2] = {n, (hsize_t)width};
    h5_write_f64(file, name, column, width == 1 ? 1 : 2, dims);
    free(column);
}

static void write_i32_column(hid_t file, const char *name, slice_t *const *rows, size_t n,
                             size_t offset)
{
    int32_t *column = xmalloc((n ? n : 1) * sizeof *column);
    for (size_t i = 0; i < n; i++)
        column[i] = *(const int32_t *)((const char *)rows[i] + offset);
    hsize_t dims[1] = {n};
    h5_write_i32(file, name, column, 1, dims);
    free(column);
}

typedef struct {
    size_t ok, exists, skipped, error, not_dicom, kept, stale;
} counts_t;

/* The rows kept from earlier runs first (in their order), then this run's in input order. */
static void write_meta(const options_t *opt, slice_t *kept, size_t nkept, slice_t *slices,
                       size_t n, const counts_t *c)
{
    slice_t **rows = xmalloc((nkept + n ? nkept + n : 1) * sizeof *rows);
    size_t nrows = 0;
    for (size_t i = 0; i < nkept; i++)
        rows[nrows++] = &kept[i];
    for (size_t i = 0; i < n; i++)
        if (slices[i].status != SLICE_NOT_DICOM)
            rows[nrows++] = &slices[i];

    const char **status = xmalloc((nrows ? nrows : 1) * sizeof *status);
    int8_t *wrap = xmalloc(nrows ? nrows : 1);
    for (size_t i = 0; i < nrows; i++) {
        status[i] = STATUS_NAMES[rows[i]->status];
        wrap[i] = rows[i]->wrap_fixed;
    }

    char *path = path_join(opt->out_dir, "meta.h5");
    h5out_t out;
    h5out_create(&out, path);
    hid_t f = out.file;

#define STR_COL(field) write_string_column(f, #field, rows, nrows, offsetof(slice_t, field))
#define I32_COL(field) write_i32_column(f, #field, rows, nrows, offsetof(slice_t, field))
#define F64_COL(field, w) write_f64_column(f, #field, rows, nrows, offsetof(slice_t, field), w)
    STR_COL(id);
    STR_COL(patient_id);
    STR_COL(study_uid);
    STR_COL(series_uid);
    F64_COL(position, 3);
    F64_COL(orientation, 6);
    F64_COL(pixel_spacing, 2);
    F64_COL(slope, 1);
    F64_COL(intercept, 1);
    F64_COL(window_center, 1);
    F64_COL(window_width, 1);
    I32_COL(rows);
    I32_COL(columns);
    I32_COL(bits_allocated);
    I32_COL(bits_stored);
    I32_COL(high_bit);
    I32_COL(pixel_representation);
    I32_COL(instance_number);
    STR_COL(photometric);
    STR_COL(modality);
    STR_COL(transfer_syntax);
    STR_COL(image_type);
    STR_COL(path);
    STR_COL(message);
#undef STR_COL
#undef I32_COL
#undef F64_COL
    h5_write_strings(f, "status", status, nrows);
    hsize_t dims[1] = {nrows};
    h5_write_i8(f, "wrap_fixed", wrap, 1, dims);

    h5_attr_provenance(f);
    h5_attr_i64(f, "quality", opt->quality);
    h5_attr_str(f, "subsampling", opt->subsample420 ? "4:2:0" : "4:4:4");
    h5_attr_i64(f, "size", opt->size);
    h5_attr_str(f, "format", opt->format);
    h5_attr_i64(f, "fix_wrap", opt->fix_wrap);
    h5_attr_i64(f, "any_modality", opt->any_modality);
    h5_attr_i64(f, "keep_localizers", opt->keep_localizers);
    h5_attr_str(f, "channel_order", opt->bgr ? "bgr" : "rgb");
    h5_attr_str(f, "windows", "brain 40/80, subdural 80/200, bone 40/380 (center/width)");
    h5_attr_i64(f, "converted", (int64_t)c->ok);
    h5_attr_i64(f, "existing", (int64_t)c->exists);
    h5_attr_i64(f, "skipped", (int64_t)c->skipped);
    h5_attr_i64(f, "failed", (int64_t)c->error);
    h5_attr_i64(f, "non_dicom", (int64_t)c->not_dicom);
    h5_attr_i64(f, "kept_rows", (int64_t)c->kept);
    h5_attr_i64(f, "stale", (int64_t)c->stale);
    h5out_commit(&out);

    free(path);
    free(status);
    free(wrap);
    free(rows);
}

/* ---------------------------------------------------------------------------------------- */

static const char *const DETAILS =
    "Inputs: DICOM files, folders (walked recursively) and list files (--list FILE or\n"
    "@FILE, one path per line). A file named explicitly must be a DICOM file (its header\n"
    "readable), else nothing is written (exit 3); one whose pixels then fail to decode is an\n"
    "error like any other (exit 4). In a folder walk, files that are not DICOM are counted\n"
    "and ignored, except those named *.dcm or *.dicom (empty or cut files): those are\n"
    "errors, as are unreadable subfolders and broken links. A file reached twice is\n"
    "converted once.\n"
    "OUTDIR must lie outside every input folder (a hidden folder inside one is not walked).\n"
    "\n"
    "Output: OUTDIR/<SOPInstanceUID>.jpg (.ppm with --format ppm) per slice: channel 0\n"
    "brain (40/80), 1 subdural (80/200), 2 bone (40/380), each clipped, minus its minimum\n"
    "over the slice, / width * 255, truncated to 8 bits; decoded as RGB, R is the brain\n"
    "window (--bgr: B, the byte order of the original method's OpenCV files). And\n"
    "OUTDIR/meta.h5, one row per DICOM input, status ok, exists, skipped, error or stale.\n"
    "\n"
    "Re-runs: an image already in OUTDIR is kept (status exists) only when the settings it\n"
    "was made with (format, size, quality, subsampling, wrap fix, modalities, channel order)\n"
    "are recorded and equal this run's; otherwise it is made again. meta.h5 keeps the rows of\n"
    "earlier runs into OUTDIR that this run does not replace, so train and test converted\n"
    "one after the other give one table; with --only-inputs it lists this run's inputs\n"
    "only (the pipeline's choice: a replaced input set leaves no rows behind). A second\n"
    "dcm2jpg into the same OUTDIR waits for the first to finish.\n"
    "\n"
    "Skipped (not failures): non-CT slices (unless --any-modality), localizers (unless\n"
    "--keep-localizers), colour, multi-frame and non-image objects. Failures: unreadable or\n"
    "truncated files, image objects without pixel data, pixel data not matching Rows x\n"
    "Columns, invalid RescaleSlope/Intercept, transfer syntaxes without a decoder (e.g.\n"
    "JPEG 2000), two files with the same SOPInstanceUID (both rejected).";

static const char *const EXIT_CODES =
    "  dcm2jpg: 2 also when OUTDIR is an input folder or inside one (a walk would read it);\n"
    "           3 also when no slice could be converted (meta.h5 is then not written,\n"
    "             and an OUTDIR this run created is removed again);\n"
    "           4 when some inputs failed (listed in meta.h5 with status 'error').\n";

int main(int argc, char **argv)
{
    log_init("dcm2jpg", LOG_INFO);
    options_t opt = {.format = "jpeg", .threads = 1, .quality = 95, .fix_wrap = 1};
    const opt_t table[] = {
        {'o', "out", OPT_STRING, &opt.out_dir, "OUTDIR",
         "output folder (required; created if missing)", 1, 0, 0},
        {0, "list", OPT_STRING, &opt.list_file, "FILE", "read input paths from FILE", 1, 0, 0},
        {'j', "threads", OPT_INT, &opt.threads, "N", "worker threads", 1, 1024, 0},
        {0, "quality", OPT_INT, &opt.quality, "Q", "JPEG quality", 1, 100, 0},
        {0, "subsample420", OPT_FLAG, &opt.subsample420, NULL,
         "4:2:0 chroma (default 4:4:4: channels are independent windows)", 1, 0, 0},
        {0, "size", OPT_INT, &opt.size, "N", "resize to NxN, bilinear (0: keep the size)", 0,
         MAX_SIZE, 0},
        {0, "format", OPT_CHOICE, &opt.format, "FMT", "image format (ppm is lossless)", 1, 0,
         "jpeg|ppm"},
        {0, "bgr", OPT_FLAG, &opt.bgr, NULL,
         "bytes in BGR order, as the original method's OpenCV files", 1, 0, 0},
        {0, "force", OPT_FLAG, &opt.force, NULL, "rewrite images that exist already", 1, 0, 0},
        {0, "only-inputs", OPT_FLAG, &opt.only_inputs, NULL,
         "meta.h5 lists this run's inputs only (no rows of earlier runs into OUTDIR)", 1, 0, 0},
        {0, "fix-wrap", OPT_FLAG, &opt.fix_wrap, NULL,
         "shifted 12-bit CT: (v+1000) mod 4096, intercept -1000", 1, 0, 0},
        {0, "no-fix-wrap", OPT_UNSET, &opt.fix_wrap, NULL,
         "keep those values as stored (the original method)", 1, 0, 0},
        {0, "any-modality", OPT_FLAG, &opt.any_modality, NULL,
         "convert slices of every modality, not only CT", 1, 0, 0},
        {0, "keep-localizers", OPT_FLAG, &opt.keep_localizers, NULL,
         "convert localizer (scout) images too (ImageType LOCALIZER)", 1, 0, 0},
        {0, NULL, OPT_END, NULL, NULL, NULL, 0, 0, 0},
    };
    const opt_spec_t spec = {
        .program = "dcm2jpg",
        .usage = "[options] -o OUTDIR INPUT...",
        .summary = "Window DICOM CT slices into three-channel 8-bit images (brain, subdural,\n"
                   "bone) and write their metadata to OUTDIR/meta.h5.",
        .details = DETAILS,
        .exit_codes = EXIT_CODES,
        .options = table,
        .min_positional = 0,
        .max_positional = -1,
    };
    char **positional;
    int npos = opt_parse(&spec, argc, argv, &positional);
    const char *usage_problem = opt.out_dir == NULL ? "-o OUTDIR is required"
                                : npos == 0 && opt.list_file == NULL ? "an input is required"
                                                                     : NULL;
    if (usage_problem != NULL) {
        fprintf(stderr, "dcm2jpg: error: %s\nTry 'dcm2jpg --help'.\n", usage_problem);
        free(positional);
        return EXIT_USAGE;
    }
    output_dir_check("-o", opt.out_dir);
    double start = time_now();

    inputs_t in = {.out_dir = opt.out_dir, .out_real = resolve_future_path(opt.out_dir)};
    if (opt.list_file)
        add_list_file(&in, opt.list_file);
    for (int i = 0; i < npos; i++) {
        if (positional[i][0] == '@')
            add_list_file(&in, positional[i] + 1);
        else
            add_input(&in, positional[i]);
    }
    free(positional);
    drop_repeated_files(&in);

    size_t n = in.count;
    slice_t *slices = xcalloc(n ? n : 1, sizeof *slices);
    for (size_t i = 0; i < n; i++)
        slices[i].path = in.items[i].path;

    run_t run = {.opt = &opt, .slices = slices, .extension = opt.format[0] == 'p' ? "ppm"
                                                                                  : "jpg"};
    atomic_init(&run.io_failed, 0);
    header_pass_t header_pass = {&run, &in};
    run.progress = progress_begin("headers", (int64_t)n);
    parallel_for(opt.threads, n, read_header_task, &header_pass);
    progress_end(run.progress);
    double headers_done = time_now();

    for (size_t i = 0; i < n; i++) {
        slice_t *s = &slices[i];
        if (s->status == SLICE_NOT_DICOM && !in.items[i].walked)
            die(EXIT_BAD_INPUT, "%s: %s", s->path, s->message);
    }
    reject_duplicates(slices, n);

    /* From here on this run owns the folder; one it makes goes again if nothing is written. */
    strlist_t made_dirs = {0};
    mkdir_p_created(opt.out_dir, &made_dirs);
    /* A second run into the folder waits for the first, so that its table includes the
     * first one's rows and neither sweeps the other's temporary files. */
    int lock_fd = folder_lock(opt.out_dir, 1, "dcm2jpg");
    int swept = tmp_sweep(opt.out_dir);
    if (swept > 0)
        log_info("removed %d unfinished file%s of an earlier run in %s", swept,
                 swept == 1 ? "" : "s", opt.out_dir);

    settings_t now, recorded;
    settings_of_options(&opt, &now);
    earlier_t earlier;
    read_earlier(opt.out_dir, &earlier);
    int record = settings_file_read(opt.out_dir, &recorded);
    char why[512];
    int trusted = trust_existing(&now, &earlier, record, &recorded, why, sizeof why);

    run.queue = xmalloc((n ? n : 1) * sizeof *run.queue);
    size_t nqueued = 0, redone = 0;
    for (size_t i = 0; i < n; i++) {
        slice_t *s = &slices[i];
        if (s->status == SLICE_PENDING) {
            char *final_path = output_path(&run, s->id);
            int there = !opt.force && path_exists(final_path);
            if (there && trusted)
                set_message(s, SLICE_EXISTS, "output exists: %s", final_path);
            else
                run.queue[nqueued++] = i;
            redone += there && !trusted;
            free(final_path);
        } else if (s->status == SLICE_ERROR) {
            log_error("%s: %s", s->path, s->message);
        } else if (s->status == SLICE_SKIPPED) {
            log_warn("%s: skipped: %s", s->path, s->message);
        } else if (s->status == SLICE_NOT_DICOM) {
            log_debug("%s: ignored: %s", s->path, s->message);
        }
    }
    if (redone > 0)
        log_warn("%s: %zu existing image(s) are made again: %s", opt.out_dir, redone, why);
    if (earlier.present && !earlier.has_rows)
        log_warn("%s/meta.h5 is unreadable or incomplete: the rows of earlier runs are not "
                 "kept", opt.out_dir);
    size_t stale = 0;
    size_t nkept = earlier.has_rows && !opt.only_inputs
                       ? keep_earlier_rows(&earlier, slices, n, trusted, opt.out_dir, &stale)
                       : 0;
    if (earlier.has_rows && opt.only_inputs && earlier.count > 0)
        log_info("%s: --only-inputs: meta.h5 lists this run's inputs only; images of earlier "
                 "runs that are not among them stay on disk unlisted", opt.out_dir);
    if (stale > 0)
        log_warn("%s: %zu image(s) of earlier runs, not among this run's inputs, are listed "
                 "as 'stale' in meta.h5: %s; convert their inputs again", opt.out_dir, stale,
                 why);
    char change[256];
    run.record_pending = record != 1 || settings_differ(&recorded, &now, change, sizeof change);
    run.record_settings = now;
    pthread_mutex_init(&run.record_lock, NULL);

    run.scratch = xcalloc((size_t)opt.threads, sizeof *run.scratch);
    run.progress = progress_begin("converting", (int64_t)nqueued);
    parallel_for(opt.threads, nqueued, convert_task, &run);
    progress_end(run.progress);
    double pixels_done = time_now();
    for (int t = 0; t < opt.threads; t++) {
        free(run.scratch[t].rgb);
        free(run.scratch[t].resized);
    }
    free(run.scratch);

    counts_t c = {.kept = nkept, .stale = stale};
    for (size_t i = 0; i < n; i++) {
        switch (slices[i].status) {
        case SLICE_OK: c.ok++; break;
        case SLICE_EXISTS: c.exists++; break;
        case SLICE_SKIPPED: c.skipped++; break;
        case SLICE_NOT_DICOM: c.not_dicom++; break;
        default: c.error++; break;
        }
    }
    if (atomic_load(&run.io_failed)) {
        /* With none of this run's images there, the earlier record is true again. */
        if (run.record_written && c.ok == 0) {
            char *path = path_join(opt.out_dir, SETTINGS_FILE);
            if (record == 1)
                settings_file_write(opt.out_dir, &recorded, why, sizeof why);
            else
                unlink(path);
            free(path);
        }
        rmdir_created(&made_dirs);
        die(EXIT_IO, "images could not be written to %s; meta.h5 not written", opt.out_dir);
    }

    int code = EXIT_OK;
    if (c.ok + c.exists == 0) {
        size_t dicom = n - c.not_dicom;
        log_error("nothing converted: %zu DICOM slice%s, %zu skipped, %zu failed, %zu "
                  "non-DICOM file%s; meta.h5 not written", dicom, dicom == 1 ? "" : "s",
                  c.skipped, c.error, c.not_dicom, c.not_dicom == 1 ? "" : "s");
        code = EXIT_BAD_INPUT;
        rmdir_created(&made_dirs);
    } else {
        /* A table from before the record existed gets one. */
        if (record_before_image(&run, why, sizeof why) != 0)
            die(EXIT_IO, "%s", why);
        write_meta(&opt, earlier.rows, nkept, slices, n, &c);
        if (c.error > 0)
            code = EXIT_PARTIAL;
    }

    double seconds = time_now() - start;
    log_debug("time: inputs and headers %.3f s, pixels %.3f s, table %.3f s",
              headers_done - start, pixels_done - headers_done, time_now() - pixels_done);
    if (nkept > 0 && code != EXIT_BAD_INPUT)
        log_info("meta.h5 keeps %zu row(s) of earlier runs into %s", nkept, opt.out_dir);
    log_info("converted %zu, existing %zu, skipped %zu, failed %zu, non-DICOM %zu in %.2f s "
             "(%.1f slices/s)",
             c.ok, c.exists, c.skipped, c.error, c.not_dicom, seconds,
             seconds > 0 ? c.ok / seconds : 0.0);

    for (size_t i = 0; i < n; i++)
        free_slice(&slices[i]);
    free(slices);
    free(run.queue);
    free_earlier(&earlier);
    for (size_t i = 0; i < in.count; i++) {
        free(in.items[i].path);
        free(in.items[i].problem);
    }
    free(in.items);
    free(in.out_real);
    strlist_free(&made_dirs);
    pthread_mutex_destroy(&run.record_lock);
    close(lock_fd);
    return code;
}
