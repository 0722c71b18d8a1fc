/* Stage 1 of the method: rescale, the three CT windows, and the 12-bit wrap-around fix. */
#include "window.h"

#include <stdlib.h>
#include <string.h>

const ct_window_t CT_WINDOWS[3] = {{40, 80}, {80, 200}, {40, 380}};

/* Stored values spanning more than this use the direct formula instead of a lookup table. */
#define LUT_MAX_ENTRIES (1 << 17)

int window_fix_wrap(int32_t *pixels, size_t n, const char *modality, int bits_stored,
                    int pixel_representation, double *intercept)
{
    if (modality == NULL || strcmp(modality, "CT") != 0)
        return 0;
    if (bits_stored != 12 || pixel_representation != 0 || !(*intercept > -100.0))
        return 0;

    for (size_t i = 0; i < n; i++) {
        int32_t shifted = pixels[i] + 1000;
        pixels[i] = shifted >= 4096 ? shifted - 4096 : shifted;
    }
    *intercept = -1000.0;
    return 1;
}

/*
 * Smallest and largest stored value. Blocks of fixed length keep one running minimum and
 * maximum per lane, which the compiler turns into vector instructions even at -O2.
 */
static void stored_range(const int32_t *pixels, size_t n, int32_t *smin, int32_t *smax)
{
    enum { LANES = 16 };
    int32_t lo[LANES], hi[LANES];
    for (int j = 0; j < LANES; j++)
        lo[j] = hi[j] = pixels[0];
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            int32_t v = pixels[i + j];
            lo[j] = v < lo[j] ? v : lo[j];
            hi[j] = v > hi[j] ? v : hi[j];
        }
    for (; i < n; i++) {
        lo[0] = pixels[i] < lo[0] ? pixels[i] : lo[0];
        hi[0] = pixels[i] > hi[0] ? pixels[i] : hi[0];
    }
    *smin = lo[0];
    *smax = hi[0];
    for (int j = 1; j < LANES; j++) {
        *smin = lo[j] < *smin ? lo[j] : *smin;
        *smax = hi[j] > *smax ? hi[j] : *smax;
    }
}

static double clip(double value, double low, double high)
{
    return value < low ? low : value > high ? high : value;
}

/*
 * One channel value, with the operations in the order of the reference (float64 rescale,
 * clip, minus the channel minimum, / width, * 255, truncation), so results agree bit for bit.
 */
static uint8_t window_value(int32_t stored, double slope, double intercept, int k,
                            const double *channel_min)
{
    double hu = (double)stored * slope + intercept;
    double low = CT_WINDOWS[k].center - CT_WINDOWS[k].width / 2;
    double high = CT_WINDOWS[k].center + CT_WINDOWS[k].width / 2;
    double scaled = (clip(hu, low, high) - channel_min[k]) / CT_WINDOWS[k].width * 255.0;
    return (uint8_t)scaled;
}

void window_apply(const int32_t *pixels, size_t n, double slope, double intercept, uint8_t *rgb)
{
    if (n == 0)
        return;

    int32_t smin, smax;
    stored_range(pixels, n, &smin, &smax);

    /* Clipping is monotone, so each channel's minimum over the slice is the clipped minimum
     * of the rescaled values, found at one end of the stored range. */
    double hu_a = (double)smin * slope + intercept;
    double hu_b = (double)smax * slope + intercept;
    double hu_min = hu_a < hu_b ? hu_a : hu_b;
    double channel_min[3];
    for (int k = 0; k < 3; k++) {
        double low = CT_WINDOWS[k].center - CT_WINDOWS[k].width / 2;
        double high = CT_WINDOWS[k].center + CT_WINDOWS[k].width / 2;
        channel_min[k] = clip(hu_min, low, high);
    }

    /* A slice has far fewer distinct stored values than pixels: evaluate each value once. */
    int64_t span = (int64_t)smax - (int64_t)smin + 1;
    if (span > LUT_MAX_ENTRIES || (size_t)span > n) {
        for (size_t i = 0; i < n; i++)
            for (int k = 0; k < 3; k++)
                rgb[3 * i + k] = window_value(pixels[i], slope, intercept, k, channel_min);
        return;
    }

    /* Entries hold the three bytes in memory order plus one spare byte, so that a pixel is
     * one 4-byte copy; the next pixel overwrites the spare byte, the last one is copied
     * byte by byte to stay inside rgb. */
    uint8_t (*lut)[4] = malloc((size_t)span * sizeof *lut);
    if (lut == NULL) {
        for (size_t i = 0; i < n; i++)
            for (int k = 0; k < 3; k++)
                rgb[3 * i + k] = window_value(pixels[i], slope, intercept, k, channel_min);
        return;
    }
    for (int64_t v = 0; v < span; v++) {
        for (int k = 0; k < 3; k++)
            lut[v][k] = window_value((int32_t)(smin + v), slope, intercept, k, channel_min);
        lut[v][3] = 0;
    }
    for (size_t i = 0; i + 1 < n; i++)
        memcpy(rgb + 3 * i, lut[pixels[i] - smin], 4);
    memcpy(rgb + 3 * (n - 1), lut[pixels[n - 1] - smin], 3);
    free(lut);
}
