/*
 * The image input pipeline of reference-method.md stage 3, on 8-bit interleaved RGB images
 * (the layout jpegio.h decodes to), ending in float CHW planes ready for the network:
 *
 *     crop the black border -> pad to a square (zeros bottom/right) -> resize to SxS
 *     -> [training: horizontal flip, shift-scale-rotate, transpose] -> normalise
 *
 * Every step reproduces the arithmetic of the original's Python stack, so a test can compare
 * pixel for pixel: the crop and its minimum filter follow scipy.ndimage.minimum_filter (mode
 * 'reflect'), the resize cv2.resize INTER_LINEAR on 8-bit images, the shift-scale-rotate
 * cv2.getRotationMatrix2D + cv2.warpAffine (INTER_LINEAR, BORDER_REPLICATE) as albumentations'
 * ShiftScaleRotate calls them, the normalisation albumentations' Normalize (float32).
 * notes/imgproc.md has the details and the measured agreement.
 *
 * Images are at least 1x1 (callers check decoded sizes). Thread safety: no global state; each
 * worker thread owns its img_workspace_t and img_rng_t.
 */
#ifndef ICH_IMGPROC_H
#define ICH_IMGPROC_H

#include <stddef.h>
#include <stdint.h>

#define IMG_CHANNELS 3
#define IMG_DEFAULT_SIZE 480

/* Channel statistics of the windowed training images (brain, subdural, bone), on [0, 1]. */
extern const float IMG_CHANNEL_MEAN[IMG_CHANNELS];
extern const float IMG_CHANNEL_STD[IMG_CHANNELS];

/* ---- scratch memory ---- */

/* Buffers reused from image to image; zero-initialise, release with img_workspace_free. */
typedef struct {
    uint8_t *buffer[8];
    size_t capacity[8];
} img_workspace_t;

void img_workspace_free(img_workspace_t *ws);

/* ---- cropping ---- */

typedef enum {
    IMG_CROP_NONE = 0,      /* keep the whole image */
    IMG_CROP_PLAIN = 1,     /* bounding box of the pixels whose channel maximum is above 0 */
    IMG_CROP_MINFILTER = 2, /* the intended crop (default): see img_crop_box */
} img_crop_t;

/* A rectangle of pixels [x0, x1) x [y0, y1). */
typedef struct {
    int x0, y0, x1, y1;
} img_box_t;

/* out[i] = max over the channels of pixel i (width * height bytes). */
void img_channel_max(const uint8_t *rgb, int width, int height, uint8_t *out);

/*
 * Minimum over a size x size window of a one-channel image, as
 * scipy.ndimage.minimum_filter(src, size) with its defaults: pixel i sees the window
 * [i - size/2, i + size - size/2 - 1] on each axis (17 before, 16 after for size 34), and
 * the image is mirrored at its borders with the edge pixel repeated (mode 'reflect':
 * d c b a | a b c d | d c b a), as often as a window wider than the image needs.
 * Separable, two van Herk / Gil-Werman passes: about three comparisons a pixel whatever the
 * size. size <= 1 copies. src and dst may be the same buffer.
 */
void img_min_filter(const uint8_t *src, int width, int height, int size, uint8_t *dst,
                    img_workspace_t *ws);

/* Bounding box of the nonzero pixels of a one-channel image; 0 when there are none. */
int img_nonzero_box(const uint8_t *grey, int width, int height, img_box_t *box);

/* The filter size of the intended crop: rows / 15 (34 for 512 rows). */
int img_crop_filter_size(int height);

/*
 * The crop box of an image.
 *   IMG_CROP_PLAIN: the bounding box of the pixels whose channel maximum is above 0.
 *   IMG_CROP_MINFILTER: the channel maximum, minimum-filtered with size k =
 *     img_crop_filter_size(height) so that thin lines (headrest, table) vanish; the bounding
 *     box of what stays above 0, widened by k on every side and clamped to the image. When
 *     the filter leaves nothing, the plain crop (the original fell back to it likewise).
 *   Either: an image with nothing above 0 keeps its full extent, as does IMG_CROP_NONE.
 * Returns 1 when the box came from the mode asked for, 0 when it fell back.
 */
int img_crop_box(const uint8_t *rgb, int width, int height, img_crop_t mode, img_box_t *box,
                 img_workspace_t *ws);

/* The box of rgb copied to the top-left of a side x side canvas, side = the box's longer
 * edge, the rest zero; dst holds side * side * 3 bytes. Returns side. */
int img_pad_square(const uint8_t *rgb, int width, const img_box_t *box, uint8_t *dst);

/* ---- geometry ---- */

/*
 * Bilinear resize as cv2.resize(src, (dst_w, dst_h), interpolation=INTER_LINEAR) computes it
 * for 8-bit images, bit for bit: source coordinate (d + 0.5) * src/dst - 0.5 in float, weights
 * in 1/2048ths, columns clamped to the image (weight 0 past an edge), rows read at the two
 * clamped neighbours, the vertical blend in OpenCV's 16-bit fixed point.
 */
void img_resize_bilinear(const uint8_t *src, int src_w, int src_h, uint8_t *dst, int dst_w,
                         int dst_h);

/* dst = src mirrored left-right (may not alias). */
void img_flip_horizontal(const uint8_t *src, int width, int height, uint8_t *dst);

/* dst (height columns, width rows) = src with x and y swapped (may not alias). */
void img_transpose(const uint8_t *src, int width, int height, uint8_t *dst);

/* The 2x3 matrix of cv2.getRotationMatrix2D(center, angle_deg, scale): rotation
 * anticlockwise on screen (y down) by angle_deg about the centre, then scaling. */
void img_rotation_matrix(double center_x, double center_y, double angle_deg, double scale,
                         double m[6]);

/*
 * cv2.warpAffine(src, m, (width, height), flags=INTER_LINEAR, borderMode=BORDER_REPLICATE),
 * bit for bit: m maps source to destination and is inverted in double; source coordinates in
 * fixed point with 1/32 pixel steps; bilinear weights in 1/32768ths; outside the image the
 * nearest edge pixel. dst has the size of src (may not alias).
 */
void img_warp_affine_replicate(const uint8_t *src, int width, int height, const double m[6],
                               uint8_t *dst);

/* albumentations' shift_scale_rotate: rotation matrix about (width/2, height/2), then the
 * translation shift_x * width, shift_y * height added; warped with img_warp_affine_replicate. */
void img_shift_scale_rotate(const uint8_t *src, int width, int height, double angle_deg,
                            double scale, double shift_x, double shift_y, uint8_t *dst);

/*
 * Normalised float CHW planes: chw[c][y][x] = (v - 255 * mean[c]) * (1 / (255 * std[c])),
 * all in float as albumentations' Normalize computes it; equal to (v / 255 - mean) / std to
 * float rounding. With transpose, chw[c][x][y] instead (planes of width rows of height).
 */
void img_normalize(const uint8_t *rgb, int width, int height, int transpose, float *chw);

/* ---- the pipeline ---- */

/*
 * Crop, pad to a square and resize to size x size: out holds size * size * 3 bytes. The crop
 * box used goes to *box when box is not NULL. With IMG_CROP_NONE a non-square image is padded
 * too (the original stretched it; slices are square, so no difference there).
 */
void img_prepare(const uint8_t *rgb, int width, int height, img_crop_t crop, int size,
                 uint8_t *out, img_box_t *box, img_workspace_t *ws);

/* Read a JPEG or PPM file and img_prepare it. Returns 0, or -1 with a message in err. */
int img_prepare_file(const char *path, img_crop_t crop, int size, uint8_t *out,
                     img_workspace_t *ws, char *err, size_t errlen);

/* ---- random numbers ---- */

/* splitmix64: small, fast, fully determined by its 64-bit state. */
typedef struct {
    uint64_t state;
} img_rng_t;

void img_rng_seed(img_rng_t *rng, uint64_t seed);
/* A stream for one (seed, epoch, image) so that an image's augmentation depends neither on the
 * thread that draws it nor on the order of the draws (resumable, reproducible). */
void img_rng_seed_stream(img_rng_t *rng, uint64_t seed, uint64_t epoch, uint64_t index);
uint64_t img_rng_next(img_rng_t *rng);
/* Uniform in [0, 1) with 53 random bits. */
double img_rng_uniform(img_rng_t *rng);

/* ---- training augmentation ---- */

typedef struct {
    double p_hflip;      /* 0.5 */
    double p_ssr;        /* 0.3: shift-scale-rotate */
    double p_transpose;  /* 0.5 */
    double shift_limit;  /* 0.05: shift uniform in +-limit, a fraction of the side */
    double scale_limit;  /* 0.05: scale uniform in 1 +- limit */
    double rotate_limit; /* 20: angle uniform in +-limit degrees */
} img_aug_config_t;

/* The method's augmentation (reference-method.md stage 3). */
img_aug_config_t img_aug_defaults(void);

/* What one image got: reported so that a test (or a log) can replay it exactly. */
typedef struct {
    int hflip, ssr, transpose;
    double angle_deg, scale, shift_x, shift_y; /* meaningful when ssr */
} img_aug_t;

/*
 * Draw one image's augmentation: always seven numbers, in this order, whatever the outcomes:
 * hflip coin, ssr coin, angle, scale, shift x, shift y, transpose coin (a coin is
 * uniform < p). angle, scale and shifts are stored even when ssr is 0.
 */
void img_aug_sample(const img_aug_config_t *cfg, img_rng_t *rng, img_aug_t *aug);

/*
 * Apply aug to a prepared image (the order of the original: flip, shift-scale-rotate,
 * transpose) and normalise into chw (3 * width * height floats; with transpose the planes
 * have width rows of height pixels).
 */
void img_augment(const uint8_t *rgb, int width, int height, const img_aug_t *aug, float *chw,
                 img_workspace_t *ws);

/* ---- test-time augmentation (embdump) ---- */

typedef enum {
    IMG_TTA_ORIGINAL = 0,
    IMG_TTA_HFLIP = 1,
    IMG_TTA_TRANSPOSE = 2,
    IMG_TTA_COUNT = 3,
} img_tta_t;

/* "original", "hflip", "transpose"; NULL for another value. */
const char *img_tta_name(img_tta_t variant);
/* The variant named name, or -1. */
int img_tta_parse(const char *name);

/* One TTA variant of a prepared image, normalised into chw. */
void img_tta(const uint8_t *rgb, int width, int height, img_tta_t variant, float *chw,
             img_workspace_t *ws);

#endif
