/* Unit tests of common/: options, CSV, HDF5 helpers, images, temporary outputs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "csv.h"
#include "fsutil.h"
#include "h5io.h"
#include "jpegio.h"
#include "log.h"
#include "opt.h"
#include "pool.h"

#include "expect.h"

static char *scratch_dir(void)
{
    const char *work = getenv("WORK");
    char *dir = xasprintf("%s/test_common", work && *work ? work : "/tmp");
    mkdir_p(dir);
    return dir;
}

static void test_options(void)
{
    int threads = 1, flag = 0, fix = 1;
    double rate = 0.5;
    const char *out = NULL, *mode = "original";
    const opt_t options[] = {
        {'j', "threads", OPT_INT, &threads, "N", "threads", 1, 64, NULL},
        {0, "flag", OPT_FLAG, &flag, NULL, "a flag", 0, -1, NULL},
        {0, "no-fix", OPT_UNSET, &fix, NULL, "turn off", 0, -1, NULL},
        {0, "rate", OPT_DOUBLE, &rate, "R", "a rate", 0, 1, NULL},
        {'o', "out", OPT_STRING, &out, "DIR", "output", 0, -1, NULL},
        {0, "method", OPT_CHOICE, &mode, NULL, "method", 0, -1, "original|stratified"},
        {0},
    };
    opt_spec_t spec = {"prog", "[options] IN...", "Test.", NULL, NULL, options, 1, -1};
    char *argv[] = {"prog", "-j3", "--flag", "a", "--rate=0.25", "-o", "dir", "--no-fix",
                    "--method", "stratified", "--", "-b"};
    char **pos;
    int n = opt_parse(&spec, 12, argv, &pos);
    EXPECT(n == 2 && strcmp(pos[0], "a") == 0 && strcmp(pos[1], "-b") == 0);
    EXPECT(threads == 3 && flag == 1 && fix == 0 && rate == 0.25);
    EXPECT(out && strcmp(out, "dir") == 0 && strcmp(mode, "stratified") == 0);
    EXPECT(strstr(opt_command_line(), "--rate=0.25") != NULL);
    free(pos);

    FILE *help = tmpfile();
    opt_print_help(&spec, help);
    rewind(help);
    char text[4096] = {0};
    size_t got = fread(text, 1, sizeof text - 1, help);
    text[got] = 0;
    fclose(help);
    EXPECT(strstr(text, "--threads N") && strstr(text, "(default: 3; 1..64)"));
    EXPECT(strstr(text, "Exit codes:") && strstr(text, "  4  some inputs failed"));
}

static void test_csv(const char *dir)
{
    char *path = path_join(dir, "a.csv.gz");
    gzFile gz = gzopen(path, "wb");
    /* A byte-order mark, CRLF, a blank line, quotes, and a field spanning two lines. */
    gzputs(gz, "\xEF\xBB\xBFID,Label\r\nID_1_any,1\n\n");
    gzputs(gz, "\"ID,2\",\"say \"\"hi\"\"\"\n\"multi\nline\",x\n");
    gzclose(gz);

    char err[256];
    csv_reader_t *r = csv_open(path, err, sizeof err);
    EXPECT(r != NULL);
    char **f;
    size_t n;
    EXPECT(csv_next(r, &f, &n, err, sizeof err) == 1 && n == 2 && !strcmp(f[1], "Label"));
    EXPECT(!strcmp(f[0], "ID")); /* the byte-order mark is dropped */
    EXPECT(csv_next(r, &f, &n, err, sizeof err) == 1 && !strcmp(f[0], "ID_1_any"));
    EXPECT(csv_line(r) == 2);
    EXPECT(csv_next(r, &f, &n, err, sizeof err) == 1 && !strcmp(f[0], "ID,2"));
    EXPECT(n == 2 && !strcmp(f[1], "say \"hi\""));
    EXPECT(csv_next(r, &f, &n, err, sizeof err) == 1 && !strcmp(f[0], "multi\nline"));
    EXPECT(csv_next(r, &f, &n, err, sizeof err) == 0);
    csv_close(r);
    EXPECT(csv_open("/nonexistent/x.csv", err, sizeof err) == NULL);
    EXPECT(strstr(err, "/nonexistent/x.csv") != NULL);
    free(path);
}

static void test_h5(const char *dir)
{
    char *path = path_join(dir, "t.h5");
    unlink(path);
    h5out_t out;
    h5out_create(&out, path);
    EXPECT(!path_exists(path)); /* only the temporary exists while writing */
    double pos[6] = {1, 2, 3, 4, 5, NAN};
    hsize_t d2[2] = {2, 3};
    h5_write_f64(out.file, "slices/position", pos, 2, d2);
    const char *ids[3] = {"ID_a", "ID_bbbb", ""};
    h5_write_strings(out.file, "id", ids, 3);
    h5_attr_str(out.file, "note", "hello");
    h5_attr_i64(out.file, "k", 5);
    h5out_commit(&out);
    EXPECT(path_exists(path));

    hid_t f = h5_open_read(path);
    hsize_t dims[8];
    double *back = h5_read(f, "slices/position", H5T_NATIVE_DOUBLE, 2, dims);
    EXPECT(dims[0] == 2 && dims[1] == 3 && back[4] == 5 && isnan(back[5]));
    free(back);
    size_t n;
    char **s = h5_read_strings(f, "id", &n);
    EXPECT(n == 3 && !strcmp(s[0], "ID_a") && !strcmp(s[1], "ID_bbbb") && !strcmp(s[2], ""));
    h5_free_strings(s, n);
    char *note = h5_attr_read_str(f, "note");
    EXPECT(note && !strcmp(note, "hello"));
    free(note);
    int64_t k = 0;
    EXPECT(h5_attr_read_i64(f, "k", &k) && k == 5);
    EXPECT(h5_exists(f, "slices/position") && !h5_exists(f, "nothing/here"));
    h5_close(f);

    /* Shapes in messages: a 1-D dataset is "35", not "35x0". */
    char shape[64];
    hsize_t shape_dims[3] = {35, 2048, 3};
    EXPECT(!strcmp(h5_shape_text(1, shape_dims, shape, sizeof shape), "35"));
    EXPECT(!strcmp(h5_shape_text(2, shape_dims, shape, sizeof shape), "35x2048"));
    EXPECT(!strcmp(h5_shape_text(3, shape_dims, shape, sizeof shape), "35x2048x3"));
    EXPECT(!strcmp(h5_shape_text(0, shape_dims, shape, sizeof shape), "scalar"));
    EXPECT(!strcmp(h5_shape_text(3, shape_dims, shape, 6), "35x20")); /* cut, terminated */

    /* A discarded output leaves nothing behind. */
    char *other = path_join(dir, "discarded.h5");
    h5out_create(&out, other);
    h5out_discard(&out);
    EXPECT(!path_exists(other));
    EXPECT(tmp_sweep(dir) == 0);
    free(other);
    free(path);
}

static void test_images(const char *dir)
{
    enum { W = 37, H = 23 };
    uint8_t rgb[W * H * 3];
    for (int i = 0; i < W * H * 3; i++)
        rgb[i] = (uint8_t)((i * 7) % 251);
    char err[256];
    char *ppm = path_join(dir, "x.ppm");
    EXPECT(ppm_write_file(ppm, rgb, W, H, err, sizeof err) == 0);
    int w, h;
    uint8_t *back = image_read_file(ppm, &w, &h, err, sizeof err);
    EXPECT(back && w == W && h == H && memcmp(back, rgb, sizeof rgb) == 0);
    free(back);

    /* A smooth image survives 4:4:4 quality 95 within a few grey levels. */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                rgb[(y * W + x) * 3 + c] = (uint8_t)(x * 3 + y * 2 + c * 40);
    char *jpg = path_join(dir, "x.jpg");
    EXPECT(jpeg_write_file(jpg, rgb, W, H, 95, 0, err, sizeof err) == 0);
    back = image_read_file(jpg, &w, &h, err, sizeof err);
    EXPECT(back && w == W && h == H);
    double sum = 0;
    for (int i = 0; back && i < W * H * 3; i++)
        sum += abs(back[i] - rgb[i]);
    printf("jpeg q95 4:4:4 mean abs error %.3f\n", sum / (W * H * 3));
    EXPECT(sum / (W * H * 3) < 2.0);
    free(back);

    /* A truncated JPEG is an error, not a half image: cut in the headers' wake, mid-scan, in
     * the last rows, and just before the end marker. libjpeg decodes all but the first with
     * a warning only, filling the missing rows with grey. */
    enum { BIG = 96 }; /* large enough that its scan data, not its tables, fill the file */
    uint8_t *texture = xmalloc(BIG * BIG * 3);
    for (int i = 0; i < BIG * BIG * 3; i++)
        texture[i] = (uint8_t)((i * 2654435761u) >> 24);
    uint8_t *whole;
    size_t size;
    EXPECT(jpeg_encode(texture, BIG, BIG, 95, 0, &whole, &size, err, sizeof err) == 0);
    free(texture);
    const double cuts[] = {0.5, 0.6, 0.99};
    for (int c = 0; c < 4; c++) {
        size_t keep = c < 3 ? (size_t)(cuts[c] * (double)size) : size - 2;
        FILE *f = fopen(jpg, "wb");
        fwrite(whole, 1, keep, f);
        fclose(f);
        err[0] = 0;
        back = image_read_file(jpg, &w, &h, err, sizeof err);
        printf("JPEG of %zu bytes cut to %zu: %s\n", size, keep, back ? "decoded" : err);
        EXPECT(back == NULL && strstr(err, "x.jpg") != NULL);
        free(back);
    }
    free(whole);
    free(ppm);
    free(jpg);
}

/* A fixed-length attribute, as h5py writes a numpy bytes value: every character counts. */
static void test_fixed_string_attribute(const char *dir)
{
    const char *value = "epidural,intraparenchymal,intraventricular,subarachnoid,subdural,any";
    char *path = path_join(dir, "attr.h5");
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    for (int pad = 0; pad < 2; pad++) {
        hid_t type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, strlen(value) + (pad ? 0 : 1));
        H5Tset_strpad(type, pad ? H5T_STR_NULLPAD : H5T_STR_NULLTERM);
        hid_t space = H5Screate(H5S_SCALAR);
        hid_t attr = H5Acreate2(f, pad ? "nullpad" : "nullterm", type, space, H5P_DEFAULT,
                                H5P_DEFAULT);
        char buf[128] = {0};
        strcpy(buf, value);
        EXPECT(H5Awrite(attr, type, buf) >= 0);
        H5Aclose(attr);
        H5Sclose(space);
        H5Tclose(type);
    }
    H5Fclose(f);

    f = h5_open_read(path);
    char *nullpad = h5_attr_read_str(f, "nullpad"), *nullterm = h5_attr_read_str(f, "nullterm");
    printf("fixed-length attributes read back: '%s', '%s'\n", nullpad, nullterm);
    EXPECT(nullpad && !strcmp(nullpad, value));
    EXPECT(nullterm && !strcmp(nullterm, value));
    free(nullpad);
    free(nullterm);
    h5_close(f);
    free(path);
}

/* A killed writer that its parent has not reaped yet is a zombie: its temporary goes. */
static void test_sweep_zombie(const char *dir)
{
    char *sub = path_join(dir, "zombie");
    mkdir_p(sub);
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    char stat_path[64], line[256] = "";
    snprintf(stat_path, sizeof stat_path, "/proc/%d/stat", (int)child);
    for (int tries = 0; tries < 500 && !strstr(line, ") Z"); tries++) {
        FILE *f = fopen(stat_path, "r");
        line[0] = 0;
        if (f) {
            if (!fgets(line, sizeof line, f))
                line[0] = 0;
            fclose(f);
        }
        if (!strstr(line, ") Z"))
            usleep(2000);
    }
    EXPECT(strstr(line, ") Z") != NULL);
    char *name = xasprintf("%s/.test.h5.tmp-%d-0", sub, (int)child);
    FILE *f = fopen(name, "w");
    fclose(f);
    int removed = tmp_sweep(sub);
    printf("sweep with a zombie writer (%d): removed %d\n", (int)child, removed);
    EXPECT(removed == 1 && !path_exists(name));
    waitpid(child, NULL, 0);
    free(name);
    free(sub);
}

static void add_square(size_t i, int thread, void *ctx)
{
    (void)thread;
    long *out = ctx;
    out[i] = (long)(i * i);
}

static void test_pool(void)
{
    long out[1000];
    parallel_for(3, 1000, add_square, out);
    long bad = 0;
    for (long i = 0; i < 1000; i++)
        bad += out[i] != i * i;
    EXPECT(bad == 0);
}

int main(void)
{
    log_init("test_common", LOG_WARN);
    char *dir = scratch_dir();
    test_options();
    test_csv(dir);
    test_h5(dir);
    test_images(dir);
    test_fixed_string_attribute(dir);
    test_sweep_zombie(dir);
    test_pool();
    free(dir);
    printf("%s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
