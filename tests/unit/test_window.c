/*
 * Unit tests of common/window.c: the wrap-around fix conditions and the windowing, against a
 * plain per-pixel evaluation of reference-method.md stage 1 written out here, on slices that
 * take both of window_apply's paths (lookup table and direct formula).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "window.h"

#include "expect.h"

/* Stage 1 written the slow way: rescale every pixel, clip, find each channel's minimum. */
static void reference_window(const int32_t *pixels, size_t n, double slope, double intercept,
                             uint8_t *rgb)
{
    static const int centres[3] = {40, 80, 40}, widths[3] = {80, 200, 380};
    double *clipped = malloc(n * sizeof *clipped);
    for (int k = 0; k < 3; k++) {
        double low = centres[k] - widths[k] / 2, high = centres[k] + widths[k] / 2;
        double lowest = INFINITY;
        for (size_t i = 0; i < n; i++) {
            double hu = pixels[i] * slope + intercept;
            clipped[i] = hu < low ? low : hu > high ? high : hu;
            if (clipped[i] < lowest)
                lowest = clipped[i];
        }
        for (size_t i = 0; i < n; i++)
            rgb[3 * i + k] = (uint8_t)((clipped[i] - lowest) / widths[k] * 255);
    }
    free(clipped);
}

static uint32_t rng_state = 12345;
static uint32_t next_random(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return rng_state >> 8;
}

static void compare_with_reference(size_t n, int32_t lo, int32_t hi, double slope,
                                   double intercept)
{
    int32_t *pixels = malloc(n * sizeof *pixels);
    uint8_t *got = malloc(3 * n), *want = malloc(3 * n);
    for (size_t i = 0; i < n; i++)
        pixels[i] = lo + (int32_t)(next_random() % (uint32_t)(hi - lo + 1));
    window_apply(pixels, n, slope, intercept, got);
    reference_window(pixels, n, slope, intercept, want);
    size_t differ = 0;
    for (size_t i = 0; i < 3 * n; i++)
        differ += got[i] != want[i];
    if (differ)
        fprintf(stderr, "n %zu range [%d, %d] slope %g intercept %g: %zu values differ\n", n,
                lo, hi, slope, intercept, differ);
    EXPECT(differ == 0);
    free(pixels);
    free(got);
    free(want);
}

static void test_windows(void)
{
    EXPECT(CT_WINDOWS[0].center == 40 && CT_WINDOWS[0].width == 80);
    EXPECT(CT_WINDOWS[1].center == 80 && CT_WINDOWS[1].width == 200);
    EXPECT(CT_WINDOWS[2].center == 40 && CT_WINDOWS[2].width == 380);

    /* Lookup-table path: typical CT ranges, fractional and negative slopes. */
    compare_with_reference(512 * 512, -2000, 2500, 1.0, -1024.0);
    compare_with_reference(512 * 512, 0, 4095, 1.0, -1024.0);
    compare_with_reference(100000, -3000, 3000, 0.5, -20.25);
    compare_with_reference(100000, -3000, 3000, -1.0, 30.0);
    /* Direct path: a span wider than the table, or than the number of pixels. */
    compare_with_reference(50000, -2000000, 2000000, 0.001, -5.0);
    compare_with_reference(1000, -5000, 5000, 1.0, 0.0);

    /* Known values: -1024 HU air, 0 HU water, 40 HU brain, 1000 HU bone. */
    int32_t pixels[4] = {0, 1024, 1064, 2024};
    uint8_t rgb[12];
    window_apply(pixels, 4, 1.0, -1024.0, rgb);
    const uint8_t expected[12] = {0, 0, 0, 0, 25, 100, 127, 76, 127, 255, 255, 255};
    EXPECT(memcmp(rgb, expected, sizeof rgb) == 0);

    /* A uniform slice is all zeros (every value equals the minimum). */
    int32_t flat[3] = {500, 500, 500};
    uint8_t flat_rgb[9];
    memset(flat_rgb, 7, sizeof flat_rgb);
    window_apply(flat, 3, 1.0, 0.0, flat_rgb);
    for (int i = 0; i < 9; i++)
        EXPECT(flat_rgb[i] == 0);
}

static void test_fix_wrap(void)
{
    int32_t pixels[4] = {0, 3095, 3096, 4095};
    double intercept = 0.0;
    EXPECT(window_fix_wrap(pixels, 4, "CT", 12, 0, &intercept) == 1);
    EXPECT(intercept == -1000.0);
    EXPECT(pixels[0] == 1000 && pixels[1] == 4095 && pixels[2] == 0 && pixels[3] == 999);

    /* Conditions: CT only, 12 bits stored, unsigned, intercept above -100. */
    int32_t one[1] = {7};
    intercept = 0.0;
    EXPECT(window_fix_wrap(one, 1, "MR", 12, 0, &intercept) == 0);
    EXPECT(window_fix_wrap(one, 1, "CT", 16, 0, &intercept) == 0);
    EXPECT(window_fix_wrap(one, 1, "CT", 12, 1, &intercept) == 0);
    EXPECT(window_fix_wrap(one, 1, NULL, 12, 0, &intercept) == 0);
    intercept = -100.0;
    EXPECT(window_fix_wrap(one, 1, "CT", 12, 0, &intercept) == 0);
    intercept = -1024.0;
    EXPECT(window_fix_wrap(one, 1, "CT", 12, 0, &intercept) == 0);
    EXPECT(one[0] == 7 && intercept == -1024.0);
    intercept = -99.5;
    EXPECT(window_fix_wrap(one, 1, "CT", 12, 0, &intercept) == 1);
    EXPECT(one[0] == 1007);
}

int main(void)
{
    test_windows();
    test_fix_wrap();
    if (failures) {
        fprintf(stderr, "test_window: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_window: windows equal the per-pixel reference on 6 random slices "
           "(table and direct paths); wrap fix conditions hold\n");
    return 0;
}
