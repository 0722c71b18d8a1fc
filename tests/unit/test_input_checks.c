/*
 * The shared readers refuse bad inputs: folds.h5 with impossible labels, folds or ID order,
 * sequences.h5 with overlapping series or repeated slices, damaged images before a loader
 * starts, and an unreadable list file. Each refusal is exit 3 (EXIT_BAD_INPUT) with a message
 * naming the file and the problem; each runs in a child process, as it ends the program.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "jpegio.h"
#include "loader.h"
#include "log.h"
#include "seqfile.h"
#include "slicelist.h"

#include "expect.h"

static char *scratch_dir(void)
{
    const char *work = getenv("WORK");
    char *dir = xasprintf("%s/test_input_checks", work && *work ? work : "/tmp");
    mkdir_p(dir);
    return dir;
}

typedef void (*reader_fn)(const char *path);

static char last_message[1024]; /* the first line the last expect_exit's child printed */

/*
 * Run read(path) in a child with stderr captured: expect exit code and a message holding
 * path and every one of the words (NULL-terminated); print what it said.
 */
static void expect_exit(reader_fn read, const char *path, int code, const char *what,
                        const char *const *words)
{
    char *log_path = xasprintf("%s.stderr", path);
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        if (!freopen(log_path, "w", stderr))
            _exit(99);
        read(path);
        fflush(NULL);
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    char message[1024] = "";
    FILE *f = fopen(log_path, "r");
    if (f) {
        size_t n = fread(message, 1, sizeof message - 1, f);
        message[n] = 0;
        fclose(f);
    }
    message[strcspn(message, "\n")] = 0;
    snprintf(last_message, sizeof last_message, "%s", message);
    printf("%s: exit %d, \"%s\"\n", what, rc, message);
    EXPECT(rc == code);
    if (code == 0)
        EXPECT(message[0] == 0);
    else
        EXPECT(strstr(message, path) != NULL);
    for (int i = 0; words && words[i]; i++)
        if (!strstr(message, words[i])) {
            fprintf(stderr, "%s: the message lacks \"%s\"\n", what, words[i]);
            failures++;
        }
    unlink(log_path);
    free(log_path);
}

/* ---- folds.h5 ---- */

#define FOLD_ROWS 4

/* A folds.h5 of four slices. */
static void write_folds(const char *path, const char *const *ids, const int8_t *labels,
                        const int32_t *fold)
{
    h5out_t out;
    h5out_create(&out, path);
    h5_write_strings(out.file, "id", ids, FOLD_ROWS);
    hsize_t dims[2] = {FOLD_ROWS, 6};
    h5_write_i8(out.file, "label", labels, 2, dims);
    h5_write_i32(out.file, "fold", fold, 1, dims);
    h5out_commit(&out);
}

static void read_folds(const char *path)
{
    slicelist_t list;
    slicelist_read_folds(&list, path);
    slicelist_free(&list);
}

static void test_folds(const char *dir)
{
    const char *ids[FOLD_ROWS] = {"ID_a", "ID_b", "ID_c", "ID_d"};
    int8_t labels[FOLD_ROWS * 6];
    memset(labels, 0, sizeof labels);
    memset(labels + 3 * 6, -1, 6); /* a test slice: no labels */
    labels[6 + 5] = 1;
    int32_t fold[FOLD_ROWS] = {0, 1, 2, -1};

    char *good = path_join(dir, "good_folds.h5");
    write_folds(good, ids, labels, fold);
    expect_exit(read_folds, good, 0, "valid folds.h5", NULL);

    char *label7 = path_join(dir, "label7.h5");
    labels[6 + 2] = 7;
    write_folds(label7, ids, labels, fold);
    labels[6 + 2] = 0;
    const char *label_words[] = {"/label", "ID_b", "is 7", "intraventricular", NULL};
    expect_exit(read_folds, label7, EXIT_BAD_INPUT, "label 7", label_words);

    char *fold_neg = path_join(dir, "fold_minus7.h5");
    fold[2] = -7;
    write_folds(fold_neg, ids, labels, fold);
    fold[2] = 2;
    const char *fold_words[] = {"/fold", "ID_c", "is -7", NULL};
    expect_exit(read_folds, fold_neg, EXIT_BAD_INPUT, "fold -7", fold_words);

    char *dup = path_join(dir, "duplicate_id.h5");
    const char *dup_ids[FOLD_ROWS] = {"ID_a", "ID_b", "ID_b", "ID_d"};
    write_folds(dup, dup_ids, labels, fold);
    const char *dup_words[] = {"/id", "not sorted and unique", "ID_b", NULL};
    expect_exit(read_folds, dup, EXIT_BAD_INPUT, "repeated ID", dup_words);

    char *unsorted = path_join(dir, "unsorted_id.h5");
    const char *unsorted_ids[FOLD_ROWS] = {"ID_a", "ID_c", "ID_b", "ID_d"};
    write_folds(unsorted, unsorted_ids, labels, fold);
    const char *unsorted_words[] = {"/id", "not sorted and unique", "ID_c, then ID_b", NULL};
    expect_exit(read_folds, unsorted, EXIT_BAD_INPUT, "unsorted IDs", unsorted_words);

    free(good);
    free(label7);
    free(fold_neg);
    free(dup);
    free(unsorted);
}

/* ---- sequences.h5 ---- */

/* Two series over the slice IDs (n of them) with the given starts and lengths. */
static void write_sequences(const char *path, const char *const *ids, size_t n,
                            const int64_t *start, const int64_t *length)
{
    h5out_t out;
    h5out_create(&out, path);
    h5_write_strings(out.file, "slices/id", ids, n);
    hsize_t dims[1] = {2};
    h5_write_i64(out.file, "series/start", start, 1, dims);
    h5_write_i64(out.file, "series/length", length, 1, dims);
    h5out_commit(&out);
}

static void read_sequences(const char *path)
{
    seqfile_t seq;
    seqfile_read(&seq, path);
    seqfile_free(&seq);
}

static void test_sequences(const char *dir)
{
    const char *ids[5] = {"ID_a", "ID_b", "ID_c", "ID_d", "ID_e"};
    int64_t start[2] = {3, 0}, length[2] = {2, 3};

    char *good = path_join(dir, "good_sequences.h5");
    write_sequences(good, ids, 5, start, length);
    expect_exit(read_sequences, good, 0, "valid sequences.h5", NULL);
    seqfile_t seq;
    seqfile_read(&seq, good);
    EXPECT(seq.n_series == 2 && seq.n_slices == 5 && seq.start[0] == 3 && seq.length[1] == 3);
    EXPECT(!strcmp(seq.ids[4], "ID_e"));
    seqfile_free(&seq);

    /* The finding's case: a second series starting where the first does. */
    char *same_start = path_join(dir, "same_start.h5");
    int64_t same[2] = {0, 0};
    write_sequences(same_start, ids, 5, same, length);
    const char *overlap_words[] = {"series 0", "series 1", "overlap", NULL};
    expect_exit(read_sequences, same_start, EXIT_BAD_INPUT, "series sharing a start",
                overlap_words);

    char *overlap = path_join(dir, "overlap.h5");
    int64_t late[2] = {2, 0};
    write_sequences(overlap, ids, 5, late, length);
    expect_exit(read_sequences, overlap, EXIT_BAD_INPUT, "series sharing row 2",
                overlap_words);

    char *repeated = path_join(dir, "repeated_slice.h5");
    const char *rep_ids[5] = {"ID_a", "ID_b", "ID_c", "ID_d", "ID_b"};
    write_sequences(repeated, rep_ids, 5, start, length);
    const char *repeated_words[] = {"slice ID_b", "two rows", NULL};
    expect_exit(read_sequences, repeated, EXIT_BAD_INPUT, "repeated slice", repeated_words);

    char *outside = path_join(dir, "outside.h5");
    int64_t long_length[2] = {3, 3};
    write_sequences(outside, ids, 5, start, long_length);
    const char *outside_words[] = {"series 0", "outside the 5 rows", NULL};
    expect_exit(read_sequences, outside, EXIT_BAD_INPUT, "series past the end", outside_words);

    free(good);
    free(same_start);
    free(overlap);
    free(repeated);
    free(outside);
}

/* ---- images before loading ---- */

#define IMAGES 6
static const char *check_paths[IMAGES];

static void check_images(const char *path)
{
    (void)path;
    loader_config_t config = {.paths = check_paths, .count = IMAGES, .size = 32,
                              .crop = IMG_CROP_NONE, .threads = 2, .max_batch = 2};
    loader_check_images(&config);
}

static void test_images(const char *dir)
{
    enum { SIDE = 64 };
    uint8_t *rgb = xmalloc(SIDE * SIDE * 3);
    for (int i = 0; i < SIDE * SIDE * 3; i++)
        rgb[i] = (uint8_t)((i * 2654435761u) >> 24);
    uint8_t *jpeg;
    size_t size;
    char err[256];
    EXPECT(jpeg_encode(rgb, SIDE, SIDE, 95, 0, &jpeg, &size, err, sizeof err) == 0);
    char *paths[IMAGES];
    for (int i = 0; i < IMAGES; i++) {
        paths[i] = xasprintf("%s/slice%d.jpg", dir, i);
        FILE *f = xfopen(paths[i], "wb");
        fwrite(jpeg, 1, size, f);
        fclose(f);
        check_paths[i] = paths[i];
    }
    check_paths[1] = NULL; /* a row without an image (a test slice in cnntrain) is skipped */
    expect_exit(check_images, paths[0], 0, "six whole images", NULL);

    /* Cut at 99%: the decoder only warns; the check must still refuse it, naming it. */
    EXPECT(truncate(paths[4], (off_t)(size * 99 / 100)) == 0);
    const char *cut_words[] = {"slice4.jpg", "damaged JPEG", NULL};
    expect_exit(check_images, paths[4], EXIT_BAD_INPUT, "one image cut at 99%", cut_words);

    /* Several bad ones: the first by index is named, the others counted. */
    EXPECT(truncate(paths[2], (off_t)(size * 60 / 100)) == 0);
    unlink(paths[5]);
    const char *many_words[] = {"slice2.jpg", "and 2 more unreadable images", NULL};
    expect_exit(check_images, paths[2], EXIT_BAD_INPUT, "three bad images", many_words);

    for (int i = 0; i < IMAGES; i++)
        free(paths[i]);
    free(jpeg);
    free(rgb);
}

/* ---- list files ---- */

static void read_list(const char *path)
{
    strlist_t lines = {0};
    read_list_file(path, &lines);
    strlist_free(&lines);
}

static void test_list_file(const char *dir)
{
    char *missing = path_join(dir, "no_such_list.txt");
    const char *words[] = {"list file", "No such file", NULL};
    expect_exit(read_list, missing, EXIT_BAD_INPUT, "missing list file", words);
    EXPECT(!strstr(last_message, ".c:")); /* no source location for the user */
    free(missing);
}

int main(void)
{
    log_init("test_input_checks", LOG_WARN);
    char *dir = scratch_dir();
    test_folds(dir);
    test_sequences(dir);
    test_images(dir);
    test_list_file(dir);
    free(dir);
    printf("%s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
