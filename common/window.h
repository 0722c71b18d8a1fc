/* Stage 1 of the method: rescale, the three CT windows, and the 12-bit wrap-around fix. */
#ifndef ICH_WINDOW_H
#define ICH_WINDOW_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int center, width;
} ct_window_t;

/* brain (40, 80), subdural (80, 200), bone / soft tissue (40, 380); channels 0, 1, 2. */
extern const ct_window_t CT_WINDOWS[3];

/*
 * The known quirk of some 12-bit unsigned CT slices: applies when the slice is CT,
 * BitsStored is 12, PixelRepresentation 0 and the intercept is above -100. Then stored
 * values become (v + 1000) mod 4096 wrapped down when >= 4096 and the intercept -1000.
 * Returns 1 when it applied (pixels and *intercept changed).
 */
int window_fix_wrap(int32_t *pixels, size_t n, const char *modality, int bits_stored,
                    int pixel_representation, double *intercept);

/*
 * hu = stored * slope + intercept; each window clipped to [c - w/2, c + w/2] (integer halving),
 * minus that channel's minimum over the slice, / width * 255, truncated to uint8.
 * Output interleaved: rgb[3*i + k] is window k.
 */
void window_apply(const int32_t *pixels, size_t n, double slope, double intercept, uint8_t *rgb);

#endif
