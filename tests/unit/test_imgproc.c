/*
 * Unit tests of common/imgproc.c, the image input pipeline, against slow direct evaluations
 * written out here (a window minimum by brute force, bilinear interpolation in double, ...),
 * plus its speed on a synthetic 512x512 slice.
 *
 * With arguments it is the C side of tests/py/test_imgproc.py, which compares the same
 * functions with numpy, scipy and OpenCV:
 *     test_imgproc --ops FILE     run the operations listed in FILE, one a line:
 *         minfilter SIZE IN OUT        channel maximum, minimum filter (width*height bytes)
 *         crop none|plain|minfilter IN OUT            "x0 y0 x1 y1 from_mode" as text
 *         prepare none|plain|minfilter SIZE IN OUT    SIZE*SIZE*3 bytes
 *         resize WIDTH HEIGHT IN OUT   interleaved bytes
 *         flip IN OUT | transpose IN OUT
 *         ssr ANGLE SCALE SHIFT_X SHIFT_Y IN OUT
 *         normalize 0|1 IN OUT         float32 CHW (1: transposed)
 *         augment SEED EPOCH INDEX IN OUT   float32 CHW, and OUT.txt with what was drawn
 *         tta original|hflip|transpose IN OUT
 *         bench REPS IN OUT            milliseconds per image, as text
 *     IN is a binary PPM; OUT is written raw.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "exitcodes.h"
#include "imgproc.h"
#include "jpegio.h"
#include "log.h"

#include "expect.h"

static uint32_t rng_state = 2024;
static uint32_t next_random(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return rng_state >> 8;
}

static uint8_t *random_image(int width, int height, int channels)
{
    size_t n = (size_t)width * height * channels;
    uint8_t *p = xmalloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)next_random();
    return p;
}

/*
 * A slice-like test image: black, a bright ellipse (the head) with some texture, and a thin
 * line two pixels high below it (the table), all in three channels.
 */
static uint8_t *synthetic_slice(int width, int height)
{
    uint8_t *rgb = xcalloc((size_t)width * height, 3);
    double cx = width * 0.45, cy = height * 0.42, rx = width * 0.3, ry = height * 0.33;
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++) {
            double dx = (x - cx) / rx, dy = (y - cy) / ry;
            uint8_t *p = rgb + ((size_t)y * width + x) * 3;
            if (dx * dx + dy * dy <= 1) {
                p[0] = (uint8_t)(60 + next_random() % 120);
                p[1] = (uint8_t)(40 + next_random() % 80);
                p[2] = (uint8_t)(90 + next_random() % 100);
            }
        }
    int line_y = (int)(height * 0.85);
    for (int y = line_y; y < line_y + 2 && y < height; y++)
        for (int x = width / 10; x < width * 9 / 10; x++)
            memset(rgb + ((size_t)y * width + x) * 3, 200, 3);
    return rgb;
}

/* ---- minimum filter ---- */

/* scipy's 'reflect' written as the mirror image it describes: tiles of the line alternate
 * between forwards and backwards copies. */
static int mirror_tile_index(int p, int n)
{
    int tile = p >= 0 ? p / n : -((-p + n - 1) / n);
    int within = p - tile * n;
    return tile % 2 == 0 ? within : n - 1 - within;
}

static void brute_min_filter(const uint8_t *src, int w, int h, int size, uint8_t *dst)
{
    int before = size / 2, after = size - size / 2 - 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t m = 255;
            for (int j = y - before; j <= y + after; j++)
                for (int i = x - before; i <= x + after; i++) {
                    uint8_t v = src[(size_t)mirror_tile_index(j, h) * w + mirror_tile_index(i, w)];
                    if (v < m)
                        m = v;
                }
            dst[(size_t)y * w + x] = size <= 1 ? src[(size_t)y * w + x] : m;
        }
}

static void test_min_filter(img_workspace_t *ws)
{
    static const int cases[][3] = {{1, 1, 34}, {1, 1, 3}, {5, 3, 4}, {3, 5, 34}, {40, 37, 34},
                                   {64, 64, 1}, {17, 9, 2}, {33, 40, 7}, {2, 50, 9}, {70, 3, 5}};
    int checked = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int w = cases[c][0], h = cases[c][1], size = cases[c][2];
        uint8_t *src = random_image(w, h, 1);
        uint8_t *got = xmalloc((size_t)w * h), *want = xmalloc((size_t)w * h);
        img_min_filter(src, w, h, size, got, ws);
        brute_min_filter(src, w, h, size, want);
        EXPECT(memcmp(got, want, (size_t)w * h) == 0);

        /* in place */
        img_min_filter(src, w, h, size, src, ws);
        EXPECT(memcmp(src, want, (size_t)w * h) == 0);
        checked++;
        free(src);
        free(got);
        free(want);
    }
    printf("min filter: %d shapes (1x1 to 70x3, sizes 1 to 34) equal a brute-force window "
           "minimum with mirrored borders\n", checked);
}

/* ---- crop and pad ---- */

static void test_crop(img_workspace_t *ws)
{
    img_box_t box;

    /* All black: nothing to keep, the whole image. */
    uint8_t *black = xcalloc(64 * 48, 3);
    EXPECT(img_crop_box(black, 64, 48, IMG_CROP_PLAIN, &box, ws) == 0);
    EXPECT(box.x0 == 0 && box.y0 == 0 && box.x1 == 64 && box.y1 == 48);
    EXPECT(img_crop_box(black, 64, 48, IMG_CROP_MINFILTER, &box, ws) == 0);
    EXPECT(box.x0 == 0 && box.y0 == 0 && box.x1 == 64 && box.y1 == 48);
    free(black);

    /* One pixel in one channel is enough for the plain crop. */
    uint8_t *dot = xcalloc(30 * 20, 3);
    dot[(7 * 30 + 11) * 3 + 2] = 1;
    EXPECT(img_crop_box(dot, 30, 20, IMG_CROP_PLAIN, &box, ws) == 1);
    EXPECT(box.x0 == 11 && box.y0 == 7 && box.x1 == 12 && box.y1 == 8);
    free(dot);

    /* The synthetic slice: the plain crop keeps the table line, the intended one drops it. */
    int w = 512, h = 512, k = img_crop_filter_size(h);
    EXPECT(k == 34);
    uint8_t *slice = synthetic_slice(w, h);
    EXPECT(img_crop_box(slice, w, h, IMG_CROP_PLAIN, &box, ws) == 1);
    int line_y = (int)(h * 0.85);
    EXPECT(box.y1 == line_y + 2 && box.x0 == w / 10);
    img_box_t plain = box;
    EXPECT(img_crop_box(slice, w, h, IMG_CROP_MINFILTER, &box, ws) == 1);
    EXPECT(box.y1 < line_y);
    /* The ellipse's bounding box shrinks by the filter's reach and grows back by k. */
    double cy = h * 0.42, ry = h * 0.33;
    int top = (int)ceil(cy - ry);
    EXPECT(abs(box.y0 - (top + 17 - k)) <= 1);
    printf("crop: plain box x %d..%d y %d..%d (with the table line), intended x %d..%d "
           "y %d..%d\n", plain.x0, plain.x1, plain.y0, plain.y1, box.x0, box.x1, box.y0,
           box.y1);

    /* Only the line: the filter leaves nothing, the plain crop is used. */
    uint8_t *line = xcalloc((size_t)w * h, 3);
    for (int x = 100; x < 400; x++)
        memset(line + ((size_t)300 * w + x) * 3, 50, 3);
    EXPECT(img_crop_box(line, w, h, IMG_CROP_MINFILTER, &box, ws) == 0);
    EXPECT(box.x0 == 100 && box.x1 == 400 && box.y0 == 300 && box.y1 == 301);

    /* Crop off: everything. */
    EXPECT(img_crop_box(line, w, h, IMG_CROP_NONE, &box, ws) == 1);
    EXPECT(box.x0 == 0 && box.x1 == w && box.y0 == 0 && box.y1 == h);
    free(line);
    free(slice);

    /* Pad: a 3x2 box of a 5x4 image to a 3x3 square, zeros below. */
    uint8_t *img = random_image(5, 4, 3), square[27];
    img_box_t b = {1, 2, 4, 4};
    EXPECT(img_pad_square(img, 5, &b, square) == 3);
    int pad_ok = 1;
    for (int y = 0; y < 3; y++)
        for (int x = 0; x < 3; x++)
            for (int c = 0; c < 3; c++) {
                uint8_t want = y < 2 ? img[((y + 2) * 5 + x + 1) * 3 + c] : 0;
                pad_ok &= square[(y * 3 + x) * 3 + c] == want;
            }
    EXPECT(pad_ok);
    /* and a 1x3 box to a 3x3 square, zeros right */
    b = (img_box_t){4, 0, 5, 3};
    EXPECT(img_pad_square(img, 5, &b, square) == 3);
    EXPECT(square[0] == img[4 * 3] && square[3] == 0 && square[9] == img[(5 + 4) * 3]);
    free(img);
    printf("crop: all-black, single-pixel, line-only and crop-off cases; pad to square\n");
}

/* ---- resize ---- */

/* Bilinear resize in double with OpenCV's pixel-centre mapping and edge clamping. */
static double bilinear_reference(const uint8_t *src, int sw, int sh, int dw, int dh, int x,
                                 int y, int c)
{
    double sx = (x + 0.5) * sw / dw - 0.5, sy = (y + 0.5) * sh / dh - 0.5;
    sx = sx < 0 ? 0 : sx > sw - 1 ? sw - 1 : sx;
    sy = sy < 0 ? 0 : sy > sh - 1 ? sh - 1 : sy;
    int x0 = (int)sx, y0 = (int)sy;
    int x1 = x0 + 1 < sw ? x0 + 1 : x0, y1 = y0 + 1 < sh ? y0 + 1 : y0;
    double fx = sx - x0, fy = sy - y0;
#define PX(yy, xx) src[((size_t)(yy) * sw + (xx)) * 3 + c]
    return (PX(y0, x0) * (1 - fx) + PX(y0, x1) * fx) * (1 - fy) +
           (PX(y1, x0) * (1 - fx) + PX(y1, x1) * fx) * fy;
#undef PX
}

static void test_resize(void)
{
    static const int cases[][4] = {{512, 512, 480, 480}, {400, 380, 480, 480}, {37, 53, 48, 48},
                                   {1, 1, 7, 5},         {5, 7, 13, 11},       {64, 64, 64, 64},
                                   {960, 960, 480, 480}};
    double worst = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int sw = cases[c][0], sh = cases[c][1], dw = cases[c][2], dh = cases[c][3];
        uint8_t *src = random_image(sw, sh, 3), *dst = xmalloc((size_t)dw * dh * 3);
        img_resize_bilinear(src, sw, sh, dst, dw, dh);
        if (sw == dw && sh == dh)
            EXPECT(memcmp(src, dst, (size_t)dw * dh * 3) == 0);
        for (int y = 0; y < dh; y++)
            for (int x = 0; x < dw; x++)
                for (int k = 0; k < 3; k++) {
                    double want = bilinear_reference(src, sw, sh, dw, dh, x, y, k);
                    double d = fabs(dst[((size_t)y * dw + x) * 3 + k] - want);
                    if (d > worst)
                        worst = d;
                }
        free(src);
        free(dst);
    }
    /* Fixed-point weights in 1/2048ths and the 16-bit vertical blend: within one grey level
     * of the exact value (rounding to an integer alone takes 0.5). */
    EXPECT(worst <= 1.0);
    printf("resize: 7 shapes within %.3f grey levels of bilinear in double (limit 1)\n", worst);
}

/* ---- flips, warp, normalisation ---- */

static void test_flips_and_warp(void)
{
    int w = 23, h = 17;
    uint8_t *src = random_image(w, h, 3);
    size_t n = (size_t)w * h * 3;
    uint8_t *a = xmalloc(n), *b = xmalloc(n);

    img_flip_horizontal(src, w, h, a);
    EXPECT(memcmp(a, src + (w - 1) * 3, 3) == 0);
    img_flip_horizontal(a, w, h, b);
    EXPECT(memcmp(b, src, n) == 0);

    img_transpose(src, w, h, a); /* now h wide, w high */
    EXPECT(memcmp(a + ((size_t)5 * h + 3) * 3, src + ((size_t)3 * w + 5) * 3, 3) == 0);
    img_transpose(a, h, w, b);
    EXPECT(memcmp(b, src, n) == 0);

    /* The identity warp copies; a whole-pixel shift moves and repeats the edge. */
    double identity[6] = {1, 0, 0, 0, 1, 0};
    img_warp_affine_replicate(src, w, h, identity, a);
    EXPECT(memcmp(a, src, n) == 0);
    double shift[6] = {1, 0, 3, 0, 1, -2};
    img_warp_affine_replicate(src, w, h, shift, a);
    int shift_ok = 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int sx = x - 3 < 0 ? 0 : x - 3, sy = y + 2 > h - 1 ? h - 1 : y + 2;
            shift_ok &= memcmp(a + ((size_t)y * w + x) * 3, src + ((size_t)sy * w + sx) * 3,
                               3) == 0;
        }
    EXPECT(shift_ok);

    /* A half-pixel shift averages neighbours: weights 16/32 each, rounded half up. */
    double half[6] = {1, 0, 0.5, 0, 1, 0};
    img_warp_affine_replicate(src, w, h, half, a);
    int half_ok = 1;
    for (int y = 0; y < h; y++)
        for (int x = 1; x < w; x++)
            for (int c = 0; c < 3; c++) {
                int l = src[((size_t)y * w + x - 1) * 3 + c], r = src[((size_t)y * w + x) * 3 + c];
                half_ok &= a[((size_t)y * w + x) * 3 + c] == (l + r + 1) / 2;
            }
    EXPECT(half_ok);

    /* getRotationMatrix2D: 90 degrees about the centre maps (cx + 1, cy) to (cx, cy - 1). */
    double m[6];
    img_rotation_matrix(10, 20, 90, 1, m);
    double px = m[0] * 11 + m[1] * 20 + m[2], py = m[3] * 11 + m[4] * 20 + m[5];
    EXPECT(fabs(px - 10) < 1e-12 && fabs(py - 19) < 1e-12);

    free(src);
    free(a);
    free(b);
    printf("flip, transpose, identity/whole-pixel/half-pixel warps, rotation matrix\n");
}

static void test_normalize(void)
{
    int w = 16, h = 16; /* every grey level once per channel */
    uint8_t *rgb = xmalloc((size_t)w * h * 3);
    for (int i = 0; i < w * h; i++)
        for (int c = 0; c < 3; c++)
            rgb[i * 3 + c] = (uint8_t)(i * (2 * c + 1)); /* odd factors: a permutation */
    float *chw = xmalloc(sizeof(float) * 3 * w * h), *tr = xmalloc(sizeof(float) * 3 * w * h);
    img_normalize(rgb, w, h, 0, chw);
    img_normalize(rgb, w, h, 1, tr);
    double worst = 0;
    int transpose_ok = 1;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int v = rgb[(y * w + x) * 3 + c];
                double want = (v / 255.0 - IMG_CHANNEL_MEAN[c]) / IMG_CHANNEL_STD[c];
                double d = fabs(chw[(c * h + y) * w + x] - want);
                worst = d > worst ? d : worst;
                transpose_ok &= tr[(c * w + x) * h + y] == chw[(c * h + y) * w + x];
            }
    EXPECT(worst < 2e-6);
    EXPECT(transpose_ok);
    printf("normalize: within %.2g of (v / 255 - mean) / std in double\n", worst);
    free(rgb);
    free(chw);
    free(tr);
}

/* ---- random numbers and augmentation ---- */

static void test_rng_and_sampling(void)
{
    /* splitmix64's published first outputs for seed 0. */
    img_rng_t rng;
    img_rng_seed(&rng, 0);
    EXPECT(img_rng_next(&rng) == 0xe220a8397b1dcdafULL);
    EXPECT(img_rng_next(&rng) == 0x6e789e6aa1b965f4ULL);

    img_aug_config_t cfg = img_aug_defaults();
    int n = 20000, flips = 0, ssrs = 0, transposes = 0, in_range = 1;
    double angle_sum = 0, scale_sum = 0;
    img_rng_seed(&rng, 7);
    for (int i = 0; i < n; i++) {
        img_aug_t a;
        img_aug_sample(&cfg, &rng, &a);
        flips += a.hflip;
        ssrs += a.ssr;
        transposes += a.transpose;
        angle_sum += a.angle_deg;
        scale_sum += a.scale;
        in_range &= fabs(a.angle_deg) <= 20 && fabs(a.scale - 1) <= 0.05 &&
                    fabs(a.shift_x) <= 0.05 && fabs(a.shift_y) <= 0.05;
    }
    /* 4 standard deviations of a binomial proportion at n = 20000: 0.014 at p = 0.5. */
    EXPECT(fabs(flips / (double)n - 0.5) < 0.014);
    EXPECT(fabs(ssrs / (double)n - 0.3) < 0.013);
    EXPECT(fabs(transposes / (double)n - 0.5) < 0.014);
    EXPECT(in_range);
    EXPECT(fabs(angle_sum / n) < 0.35 && fabs(scale_sum / n - 1) < 0.001);
    printf("augmentation draws (n=%d): hflip %.4f (p 0.5), shift-scale-rotate %.4f (p 0.3), "
           "transpose %.4f (p 0.5), mean angle %.3f, mean scale %.5f\n", n, flips / (double)n,
           ssrs / (double)n, transposes / (double)n, angle_sum / n, scale_sum / n);

    /* Streams: reproducible, and different for neighbouring images. */
    img_rng_t s1, s2, s3;
    img_rng_seed_stream(&s1, 42, 3, 1000);
    img_rng_seed_stream(&s2, 42, 3, 1000);
    img_rng_seed_stream(&s3, 42, 3, 1001);
    EXPECT(img_rng_next(&s1) == img_rng_next(&s2));
    EXPECT(img_rng_next(&s1) != img_rng_next(&s3));
}

static void test_pipeline(img_workspace_t *ws)
{
    int w = 512, h = 512, size = 480;
    uint8_t *slice = synthetic_slice(w, h);
    size_t out_bytes = (size_t)size * size * 3;
    uint8_t *got = xmalloc(out_bytes), *want = xmalloc(out_bytes);

    /* img_prepare is crop box + pad + resize. */
    img_box_t box;
    img_prepare(slice, w, h, IMG_CROP_MINFILTER, size, got, &box, ws);
    int side = (box.x1 - box.x0) > (box.y1 - box.y0) ? box.x1 - box.x0 : box.y1 - box.y0;
    uint8_t *square = xmalloc((size_t)side * side * 3);
    img_box_t b2;
    img_workspace_t other = {0};
    img_crop_box(slice, w, h, IMG_CROP_MINFILTER, &b2, &other);
    img_pad_square(slice, w, &b2, square);
    img_resize_bilinear(square, side, side, want, size, size);
    EXPECT(memcmp(got, want, out_bytes) == 0);

    /* TTA variants are the augmentations without randomness. */
    size_t floats = 3 * (size_t)size * size;
    float *t = xmalloc(sizeof(float) * floats), *u = xmalloc(sizeof(float) * floats);
    img_tta(got, size, size, IMG_TTA_HFLIP, t, ws);
    img_flip_horizontal(got, size, size, want);
    img_normalize(want, size, size, 0, u);
    EXPECT(memcmp(t, u, sizeof(float) * floats) == 0);
    img_tta(got, size, size, IMG_TTA_TRANSPOSE, t, ws);
    img_transpose(got, size, size, want);
    img_normalize(want, size, size, 0, u);
    EXPECT(memcmp(t, u, sizeof(float) * floats) == 0);
    EXPECT(img_tta_parse("hflip") == IMG_TTA_HFLIP && img_tta_parse("flip") == -1);
    EXPECT(strcmp(img_tta_name(IMG_TTA_ORIGINAL), "original") == 0);
    EXPECT(img_tta_name(IMG_TTA_COUNT) == NULL);

    /* An augmentation with every step: flip, warp, transposed normalisation. */
    img_aug_t aug = {1, 1, 1, 12.5, 1.03, -0.02, 0.04};
    img_augment(got, size, size, &aug, t, ws);
    uint8_t *flipped = xmalloc(out_bytes);
    img_flip_horizontal(got, size, size, flipped);
    img_shift_scale_rotate(flipped, size, size, 12.5, 1.03, -0.02, 0.04, want);
    img_normalize(want, size, size, 1, u);
    EXPECT(memcmp(t, u, sizeof(float) * floats) == 0);
    printf("pipeline: prepare = crop + pad + resize; TTA and augment = their steps in order\n");

    free(flipped);
    free(slice);
    free(got);
    free(want);
    free(square);
    free(t);
    free(u);
    img_workspace_free(&other);
}

/* Milliseconds per image for crop + resize and for the augmentations, on one thread. */
static void measure_speed(const uint8_t *rgb, int w, int h, int reps, double ms[4],
                          img_workspace_t *ws)
{
    int size = IMG_DEFAULT_SIZE;
    uint8_t *prepared = xmalloc((size_t)size * size * 3);
    float *chw = xmalloc(sizeof(float) * 3 * (size_t)size * size);

    double t0 = time_now();
    for (int i = 0; i < reps; i++)
        img_prepare(rgb, w, h, IMG_CROP_MINFILTER, size, prepared, NULL, ws);
    double t1 = time_now();
    for (int i = 0; i < reps; i++)
        img_prepare(rgb, w, h, IMG_CROP_PLAIN, size, prepared, NULL, ws);
    double t2 = time_now();

    /* The worst case: every augmentation applied. */
    img_aug_t all = {1, 1, 1, 15, 0.97, 0.03, -0.02};
    for (int i = 0; i < reps; i++)
        img_augment(prepared, size, size, &all, chw, ws);
    double t3 = time_now();

    /* The expected cost: augmentations as drawn. */
    img_aug_config_t cfg = img_aug_defaults();
    img_rng_t rng;
    img_rng_seed(&rng, 1);
    for (int i = 0; i < reps; i++) {
        img_aug_t a;
        img_aug_sample(&cfg, &rng, &a);
        img_augment(prepared, size, size, &a, chw, ws);
    }
    double t4 = time_now();

    ms[0] = (t1 - t0) * 1e3 / reps;
    ms[1] = (t2 - t1) * 1e3 / reps;
    ms[2] = (t3 - t2) * 1e3 / reps;
    ms[3] = (t4 - t3) * 1e3 / reps;
    free(prepared);
    free(chw);
}

static void test_speed(img_workspace_t *ws)
{
    uint8_t *slice = synthetic_slice(512, 512);
    double ms[4];
    measure_speed(slice, 512, 512, 20, ms, ws);
    printf("speed, 512x512 -> 480x480, one thread: crop (min filter) + pad + resize %.2f ms, "
           "plain crop + pad + resize %.2f ms; all augmentations + normalise %.2f ms, "
           "as drawn %.2f ms\n", ms[0], ms[1], ms[2], ms[3]);
    free(slice);
}

/* ---- the operations for the python side ---- */

static img_crop_t parse_crop(const char *s)
{
    if (strcmp(s, "none") == 0)
        return IMG_CROP_NONE;
    if (strcmp(s, "plain") == 0)
        return IMG_CROP_PLAIN;
    if (strcmp(s, "minfilter") == 0)
        return IMG_CROP_MINFILTER;
    die(EXIT_USAGE, "unknown crop mode %s", s);
}

static void write_raw(const char *path, const void *data, size_t bytes)
{
    FILE *f = xfopen(path, "wb");
    xfwrite(data, 1, bytes, f, path);
    xfclose(f, path);
}

static uint8_t *read_input(const char *path, int *w, int *h)
{
    char err[512];
    uint8_t *rgb = ppm_read_file(path, w, h, err, sizeof err);
    if (!rgb)
        die(EXIT_BAD_INPUT, "%s", err);
    return rgb;
}

/* One line of the operations file; returns 0 when done. */
static int run_op(char **tok, int ntok, img_workspace_t *ws)
{
    const char *op = tok[0], *in = tok[ntok - 2], *out = tok[ntok - 1];
    int w, h;
    uint8_t *rgb = read_input(in, &w, &h);
    size_t bytes = (size_t)w * h * 3;
    int ok = 1;

    if (strcmp(op, "minfilter") == 0 && ntok == 4) {
        uint8_t *grey = xmalloc((size_t)w * h);
        img_channel_max(rgb, w, h, grey);
        img_min_filter(grey, w, h, atoi(tok[1]), grey, ws);
        write_raw(out, grey, (size_t)w * h);
        free(grey);
    } else if (strcmp(op, "crop") == 0 && ntok == 4) {
        img_box_t b;
        int used = img_crop_box(rgb, w, h, parse_crop(tok[1]), &b, ws);
        char text[128];
        int len = snprintf(text, sizeof text, "%d %d %d %d %d\n", b.x0, b.y0, b.x1, b.y1, used);
        write_raw(out, text, (size_t)len);
    } else if (strcmp(op, "prepare") == 0 && ntok == 5) {
        int size = atoi(tok[2]);
        uint8_t *dst = xmalloc((size_t)size * size * 3);
        img_prepare(rgb, w, h, parse_crop(tok[1]), size, dst, NULL, ws);
        write_raw(out, dst, (size_t)size * size * 3);
        free(dst);
    } else if (strcmp(op, "resize") == 0 && ntok == 5) {
        int dw = atoi(tok[1]), dh = atoi(tok[2]);
        uint8_t *dst = xmalloc((size_t)dw * dh * 3);
        img_resize_bilinear(rgb, w, h, dst, dw, dh);
        write_raw(out, dst, (size_t)dw * dh * 3);
        free(dst);
    } else if ((strcmp(op, "flip") == 0 || strcmp(op, "transpose") == 0) && ntok == 3) {
        uint8_t *dst = xmalloc(bytes);
        if (op[0] == 'f')
            img_flip_horizontal(rgb, w, h, dst);
        else
            img_transpose(rgb, w, h, dst);
        write_raw(out, dst, bytes);
        free(dst);
    } else if (strcmp(op, "ssr") == 0 && ntok == 7) {
        uint8_t *dst = xmalloc(bytes);
        img_shift_scale_rotate(rgb, w, h, atof(tok[1]), atof(tok[2]), atof(tok[3]),
                               atof(tok[4]), dst);
        write_raw(out, dst, bytes);
        free(dst);
    } else if (strcmp(op, "normalize") == 0 && ntok == 4) {
        float *chw = xmalloc(sizeof(float) * bytes);
        img_normalize(rgb, w, h, atoi(tok[1]), chw);
        write_raw(out, chw, sizeof(float) * bytes);
        free(chw);
    } else if (strcmp(op, "augment") == 0 && ntok == 6) {
        img_rng_t rng;
        img_rng_seed_stream(&rng, strtoull(tok[1], NULL, 10), strtoull(tok[2], NULL, 10),
                            strtoull(tok[3], NULL, 10));
        img_aug_config_t cfg = img_aug_defaults();
        img_aug_t a;
        img_aug_sample(&cfg, &rng, &a);
        float *chw = xmalloc(sizeof(float) * bytes);
        img_augment(rgb, w, h, &a, chw, ws);
        write_raw(out, chw, sizeof(float) * bytes);
        char *text = xasprintf("%d %d %d %.17g %.17g %.17g %.17g\n", a.hflip, a.ssr,
                               a.transpose, a.angle_deg, a.scale, a.shift_x, a.shift_y);
        char *path = xasprintf("%s.txt", out);
        write_raw(path, text, strlen(text));
        free(text);
        free(path);
        free(chw);
    } else if (strcmp(op, "tta") == 0 && ntok == 4) {
        int v = img_tta_parse(tok[1]);
        if (v < 0)
            die(EXIT_USAGE, "unknown TTA variant %s", tok[1]);
        float *chw = xmalloc(sizeof(float) * bytes);
        img_tta(rgb, w, h, (img_tta_t)v, chw, ws);
        write_raw(out, chw, sizeof(float) * bytes);
        free(chw);
    } else if (strcmp(op, "bench") == 0 && ntok == 4) {
        double ms[4];
        measure_speed(rgb, w, h, atoi(tok[1]), ms, ws);
        char text[256];
        int len = snprintf(text, sizeof text, "%.3f %.3f %.3f %.3f\n", ms[0], ms[1], ms[2],
                           ms[3]);
        write_raw(out, text, (size_t)len);
    } else {
        ok = 0;
    }
    free(rgb);
    return ok ? 0 : -1;
}

static int run_ops(const char *path)
{
    FILE *f = xfopen(path, "r");
    img_workspace_t ws = {0};
    char line[4096];
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *tok[16];
        int ntok = 0;
        for (char *t = strtok(line, " \t\r\n"); t && ntok < 16; t = strtok(NULL, " \t\r\n"))
            tok[ntok++] = t;
        if (ntok == 0 || tok[0][0] == '#')
            continue;
        if (ntok < 3 || run_op(tok, ntok, &ws) != 0)
            die(EXIT_USAGE, "%s:%d: cannot run this operation (%d words)", path, lineno, ntok);
    }
    fclose(f);
    img_workspace_free(&ws);
    return 0;
}

int main(int argc, char **argv)
{
    log_init("test_imgproc", LOG_INFO);
    if (argc == 3 && strcmp(argv[1], "--ops") == 0)
        return run_ops(argv[2]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--ops FILE]\n", argv[0]);
        return EXIT_USAGE;
    }

    img_workspace_t ws = {0};
    test_min_filter(&ws);
    test_crop(&ws);
    test_resize();
    test_flips_and_warp();
    test_normalize();
    test_rng_and_sampling();
    test_pipeline(&ws);
    test_speed(&ws);
    img_workspace_free(&ws);

    if (failures) {
        fprintf(stderr, "%d imgproc checks failed\n", failures);
        return 1;
    }
    printf("all imgproc unit checks passed\n");
    return 0;
}
