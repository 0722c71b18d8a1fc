/*
 * dcm2jpg: DICOM CT slices -> three-window 8-bit images (stage 1 of the reference method)
 * and a metadata table with one row per slice (OUTDIR/meta.h5).
 *
 * Two passes: every header is read first (cheap, the pixel data stays on disk), so that
 * duplicate SOPInstanceUIDs, existing outputs and slices to skip are known before any
 * pixel is decoded; then the remaining slices are decoded, windowed and encoded in parallel.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "dicom.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "jpegio.h"
#include "log.h"
#include "opt.h"
#include "pool.h"
#include "window.h"

typedef enum {
    SLICE_PENDING = 0, /* to be converted in the second pass */
    SLICE_OK,          /* converted in this run */
    SLICE_EXISTS,      /* output already there (no --force) */
    SLICE_SKIPPED,     /* valid DICOM we do not convert: not CT, colour, multi-frame, no image */
    SLICE_ERROR,       /* unreadable, undecodable, duplicate ID, ... */
    SLICE_NOT_DICOM,   /* found in a folder walk and not DICOM at all: counted, no row */
} slice_status_t;

static const char *const STATUS_NAMES[] = {"pending", "ok", "exists", "skipped", "error",
                                           "not-dicom"};

/* One input file and, once read, its row of meta.h5. */
typedef struct {
    const char *path;
    slice_status_t status;
    char *message;
    char *id, *patient_id, *study_uid, *series_uid;
    char *photometric, *modality, *transfer_syntax;
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
} options_t;

/* Scratch images of one worker thread, reused from slice to slice. */
typedef struct {
    uint8_t *rgb, *resized;
    size_t rgb_cap, resized_cap;
} scratch_t;

typedef struct {
    const options_t *opt;
    slice_t *slices;
    size_t *todo; /* indexes of the slices handled by the current pass */
    scratch_t *scratch;
    const char *extension;
    progress_t *progress;
    atomic_int io_failed;
} run_t;

/* ---------------------------------------------------------------------------------------- */
/* Input gathering                                                                           */

typedef struct {
    strlist_t paths;
    int *walked; /* 1: found in a folder walk (non-DICOM files there are not errors) */
    size_t walked_cap;
} inputs_t;

static void inputs_add(inputs_t *in, const char *path, int walked)
{
    strlist_push(&in->paths, path);
    if (in->paths.count > in->walked_cap) {
        in->walked_cap = in->walked_cap ? in->walked_cap * 2 : 256;
        in->walked = xrealloc(in->walked, in->walked_cap * sizeof *in->walked);
    }
    in->walked[in->paths.count - 1] = walked;
}

/*
 * A folder is walked; a file named explicitly (on the command line or in a list) must exist
 * and be DICOM, otherwise nothing is written and the exit code is EXIT_BAD_INPUT.
 */
static void add_input(inputs_t *in, const char *path)
{
    if (path_is_dir(path)) {
        strlist_t found = {0};
        walk_files(path, &found);
        for (size_t i = 0; i < found.count; i++)
            inputs_add(in, found.items[i], 1);
        strlist_free(&found);
        return;
    }
    if (!path_exists(path))
        die(EXIT_BAD_INPUT, "%s: no such file or folder", path);
    if (!path_is_file(path))
        die(EXIT_BAD_INPUT, "%s: not a regular file", path);
    if (!dicom_sniff(path))
        die(EXIT_BAD_INPUT, "%s: not a DICOM file (no DICM marker, no DICOM element at start)",
            path);
    inputs_add(in, path, 0);
}

static void add_list_file(inputs_t *in, const char *list_path)
{
    strlist_t lines = {0};
    read_list_file(list_path, &lines);
    for (size_t i = 0; i < lines.count; i++)
        add_input(in, lines.items[i]);
    strlist_free(&lines);
}

/* ---------------------------------------------------------------------------------------- */
/* First pass: headers                                                                       */

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
    if (!h->has_pixel_data) {
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

static void read_header_task(size_t index, int thread, void *ctx)
{
    (void)thread;
    run_t *run = ctx;
    slice_t *s = &run->slices[index];
    dicom_header_t h;
    char err[512];

    dicom_status_t st = dicom_read(s->path, &h, NULL, err, sizeof err);
    if (st == DICOM_NOT_DICOM)
        set_message(s, SLICE_NOT_DICOM, "%s", err);
    else if (st != DICOM_OK)
        set_message(s, SLICE_ERROR, "%s", err);
    else {
        copy_header(s, &h, run->opt);
        classify(s, &h, run->opt);
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
/* Second pass: pixels                                                                       */

static uint8_t *scratch_get(uint8_t **buffer, size_t *cap, size_t need)
{
    if (*cap < need) {
        free(*buffer);
        *buffer = xmalloc(need);
        *cap = need;
    }
    return *buffer;
}

/*
 * Bilinear resize of interleaved RGB with pixel centres aligned (the usual convention of
 * image libraries), rounding to the nearest grey level.
 */
static void resize_bilinear(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh)
{
    for (int y = 0; y < dh; y++) {
        double sy = (y + 0.5) * sh / dh - 0.5;
        if (sy < 0)
            sy = 0;
        int y0 = (int)sy;
        int y1 = y0 + 1 < sh ? y0 + 1 : sh - 1;
        double fy = sy - y0;
        for (int x = 0; x < dw; x++) {
            double sx = (x + 0.5) * sw / dw - 0.5;
            if (sx < 0)
                sx = 0;
            int x0 = (int)sx;
            int x1 = x0 + 1 < sw ? x0 + 1 : sw - 1;
            double fx = sx - x0;
            for (int k = 0; k < 3; k++) {
                double top = src[((size_t)y0 * sw + x0) * 3 + k] * (1 - fx) +
                             src[((size_t)y0 * sw + x1) * 3 + k] * fx;
                double bottom = src[((size_t)y1 * sw + x0) * 3 + k] * (1 - fx) +
                                src[((size_t)y1 * sw + x1) * 3 + k] * fx;
                dst[((size_t)y * dw + x) * 3 + k] = (uint8_t)(top * (1 - fy) + bottom * fy + 0.5);
            }
        }
    }
}

static char *output_path(const run_t *run, const char *id)
{
    return xasprintf("%s/%s.%s", run->opt->out_dir, id, run->extension);
}

/* Encode under a temporary name and rename, so that a killed run leaves no partial image. */
static int write_image(const run_t *run, const char *final_path, const uint8_t *rgb, int w,
                       int h, char *err, size_t errlen)
{
    char *tmp = tmp_path_for(final_path);
    int rc;
    if (strcmp(run->opt->format, "ppm") == 0)
        rc = ppm_write_file(tmp, rgb, w, h, err, errlen);
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
    window_apply(pixels, n, h.slope, intercept, rgb);
    free(pixels);

    int w = h.columns, ht = h.rows;
    const uint8_t *image = rgb;
    if (run->opt->size > 0 && (w != run->opt->size || ht != run->opt->size)) {
        size_t side = (size_t)run->opt->size;
        uint8_t *resized = scratch_get(&scratch->resized, &scratch->resized_cap, side * side * 3);
        resize_bilinear(rgb, w, ht, resized, run->opt->size, run->opt->size);
        image = resized;
        w = ht = run->opt->size;
    }

    char *final_path = output_path(run, s->id);
    if (write_image(run, final_path, image, w, ht, err, sizeof err) != 0) {
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
    slice_t *s = &run->slices[run->todo[index]];
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
    size_t ok, exists, skipped, error, not_dicom;
} counts_t;

static void write_meta(const options_t *opt, slice_t *slices, size_t n, const counts_t *c)
{
    slice_t **rows = xmalloc((n ? n : 1) * sizeof *rows);
    size_t nrows = 0;
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
    h5_attr_str(f, "windows", "brain 40/80, subdural 80/200, bone 40/380 (center/width)");
    h5_attr_i64(f, "converted", (int64_t)c->ok);
    h5_attr_i64(f, "existing", (int64_t)c->exists);
    h5_attr_i64(f, "skipped", (int64_t)c->skipped);
    h5_attr_i64(f, "failed", (int64_t)c->error);
    h5_attr_i64(f, "non_dicom", (int64_t)c->not_dicom);
    h5out_commit(&out);

    free(path);
    free(status);
    free(wrap);
    free(rows);
}

/* ---------------------------------------------------------------------------------------- */

static const char *const DETAILS =
    "Inputs: DICOM files, folders (walked recursively; files there that are not DICOM are\n"
    "counted and ignored) and list files (--list FILE or @FILE, one path per line). A file\n"
    "named explicitly must exist and be DICOM, else nothing is written (exit 3).\n"
    "\n"
    "Output: OUTDIR/<SOPInstanceUID>.jpg (.ppm with --format ppm) per slice: channel 0\n"
    "brain (40/80), 1 subdural (80/200), 2 bone (40/380), each clipped, minus its minimum\n"
    "over the slice, / width * 255, truncated to 8 bits; and OUTDIR/meta.h5, one row per\n"
    "DICOM input (status ok, exists, skipped or error, with the reason in message).\n"
    "Slices whose output exists are not decoded again unless --force.\n"
    "Skipped (not failures): non-CT slices (unless --any-modality), colour, multi-frame and\n"
    "non-image objects. Failures: unreadable or truncated files, transfer syntaxes without\n"
    "a decoder (e.g. JPEG 2000), two files with the same SOPInstanceUID (both rejected).";

static const char *const EXIT_CODES =
    "  dcm2jpg: 3 also when no slice could be converted (meta.h5 is then not written);\n"
    "           4 when some slices failed (listed in meta.h5 with status 'error').\n";

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
         65535, 0},
        {0, "format", OPT_CHOICE, &opt.format, "FMT", "image format (ppm is lossless)", 1, 0,
         "jpeg|ppm"},
        {0, "force", OPT_FLAG, &opt.force, NULL, "rewrite images that exist already", 1, 0, 0},
        {0, "fix-wrap", OPT_FLAG, &opt.fix_wrap, NULL,
         "shifted 12-bit CT: (v+1000) mod 4096, intercept -1000", 1, 0, 0},
        {0, "no-fix-wrap", OPT_UNSET, &opt.fix_wrap, NULL,
         "keep those values as stored (the original method)", 1, 0, 0},
        {0, "any-modality", OPT_FLAG, &opt.any_modality, NULL,
         "convert slices of every modality, not only CT", 1, 0, 0},
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
    double start = time_now();

    inputs_t in = {0};
    if (opt.list_file)
        add_list_file(&in, opt.list_file);
    for (int i = 0; i < npos; i++) {
        if (positional[i][0] == '@')
            add_list_file(&in, positional[i] + 1);
        else
            add_input(&in, positional[i]);
    }
    free(positional);

    mkdir_p(opt.out_dir);
    int swept = tmp_sweep(opt.out_dir);
    if (swept > 0)
        log_info("removed %d unfinished file(s) of an earlier run in %s", swept, opt.out_dir);

    size_t n = in.paths.count;
    slice_t *slices = xcalloc(n ? n : 1, sizeof *slices);
    for (size_t i = 0; i < n; i++)
        slices[i].path = in.paths.items[i];

    run_t run = {.opt = &opt, .slices = slices, .extension = opt.format[0] == 'p' ? "ppm"
                                                                                  : "jpg"};
    atomic_init(&run.io_failed, 0);
    run.progress = progress_begin("headers", (int64_t)n);
    parallel_for(opt.threads, n, read_header_task, &run);
    progress_end(run.progress);
    double headers_done = time_now();

    for (size_t i = 0; i < n; i++) {
        slice_t *s = &slices[i];
        if (s->status == SLICE_NOT_DICOM && !in.walked[i])
            die(EXIT_BAD_INPUT, "%s: %s", s->path, s->message);
    }
    reject_duplicates(slices, n);

    run.todo = xmalloc((n ? n : 1) * sizeof *run.todo);
    size_t ntodo = 0;
    for (size_t i = 0; i < n; i++) {
        slice_t *s = &slices[i];
        if (s->status == SLICE_PENDING) {
            char *final_path = output_path(&run, s->id);
            if (!opt.force && path_exists(final_path))
                set_message(s, SLICE_EXISTS, "output exists: %s", final_path);
            else
                run.todo[ntodo++] = i;
            free(final_path);
        } else if (s->status == SLICE_ERROR) {
            log_error("%s: %s", s->path, s->message);
        } else if (s->status == SLICE_SKIPPED) {
            log_warn("%s: skipped: %s", s->path, s->message);
        } else if (s->status == SLICE_NOT_DICOM) {
            log_debug("%s: ignored: %s", s->path, s->message);
        }
    }

    run.scratch = xcalloc((size_t)opt.threads, sizeof *run.scratch);
    run.progress = progress_begin("converting", (int64_t)ntodo);
    parallel_for(opt.threads, ntodo, convert_task, &run);
    progress_end(run.progress);
    double pixels_done = time_now();
    for (int t = 0; t < opt.threads; t++) {
        free(run.scratch[t].rgb);
        free(run.scratch[t].resized);
    }
    free(run.scratch);

    counts_t c = {0};
    for (size_t i = 0; i < n; i++) {
        switch (slices[i].status) {
        case SLICE_OK: c.ok++; break;
        case SLICE_EXISTS: c.exists++; break;
        case SLICE_SKIPPED: c.skipped++; break;
        case SLICE_NOT_DICOM: c.not_dicom++; break;
        default: c.error++; break;
        }
    }
    if (atomic_load(&run.io_failed))
        die(EXIT_IO, "images could not be written to %s; meta.h5 not written", opt.out_dir);

    int code = EXIT_OK;
    if (c.ok + c.exists == 0) {
        log_error("nothing converted: %zu DICOM slice(s), %zu skipped, %zu failed, %zu "
                  "non-DICOM file(s); meta.h5 not written",
                  n - c.not_dicom, c.skipped, c.error, c.not_dicom);
        code = EXIT_BAD_INPUT;
    } else {
        write_meta(&opt, slices, n, &c);
        if (c.error > 0)
            code = EXIT_PARTIAL;
    }

    double seconds = time_now() - start;
    log_debug("time: inputs and headers %.3f s, pixels %.3f s, table %.3f s",
              headers_done - start, pixels_done - headers_done, time_now() - pixels_done);
    log_info("converted %zu, existing %zu, skipped %zu, failed %zu, non-DICOM %zu in %.2f s "
             "(%.1f slices/s)",
             c.ok, c.exists, c.skipped, c.error, c.not_dicom, seconds,
             seconds > 0 ? c.ok / seconds : 0.0);

    for (size_t i = 0; i < n; i++) {
        slice_t *s = &slices[i];
        free(s->message);
        free(s->id);
        free(s->patient_id);
        free(s->study_uid);
        free(s->series_uid);
        free(s->photometric);
        free(s->modality);
        free(s->transfer_syntax);
    }
    free(slices);
    free(run.todo);
    free(in.walked);
    strlist_free(&in.paths);
    return code;
}
