#include "imgproc.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jpegio.h"

const float IMG_CHANNEL_MEAN[IMG_CHANNELS] = {0.22363983f, 0.18190407f, 0.2523437f};
const float IMG_CHANNEL_STD[IMG_CHANNELS] = {0.32451536f, 0.2956294f, 0.31335256f};

/* ---- scratch memory ---- */

enum {
    WS_GREY,       /* channel maximum, then its minimum filter */
    WS_FILTER_TMP, /* minimum filter: the image after the horizontal pass */
    WS_RUN_EXT,    /* minimum filter: one mirrored line */
    WS_RUN_FWD,    /* minimum filter: running minimum from each block's start */
    WS_RUN_BACK,   /* minimum filter: running minimum from each block's end */
    WS_IMAGE_A,    /* padded square, or the flipped image */
    WS_IMAGE_B,    /* the warped image */
    WS_SLOTS
};

_Static_assert(WS_SLOTS <= sizeof(((img_workspace_t *)0)->buffer) / sizeof(uint8_t *),
               "img_workspace_t has a buffer for every slot");

static uint8_t *ws_get(img_workspace_t *ws, int slot, size_t need)
{
    if (ws->capacity[slot] < need) {
        free(ws->buffer[slot]);
        ws->buffer[slot] = xmalloc(need);
        ws->capacity[slot] = need;
    }
    return ws->buffer[slot];
}

void img_workspace_free(img_workspace_t *ws)
{
    for (int i = 0; i < WS_SLOTS; i++) {
        free(ws->buffer[i]);
        ws->buffer[i] = NULL;
        ws->capacity[i] = 0;
    }
}

static inline uint8_t min_u8(uint8_t a, uint8_t b)
{
    return a < b ? a : b;
}

/* out = elementwise minimum of a and b. In blocks of fixed length, which GCC vectorises even at
 * -O2 (its cheapest cost model leaves loops of unknown length scalar). */
#define MIN_BLOCK 32
static void min_rows(const uint8_t *restrict a, const uint8_t *restrict b,
                     uint8_t *restrict out, size_t n)
{
    size_t i = 0;
    for (; i + MIN_BLOCK <= n; i += MIN_BLOCK)
        for (int j = 0; j < MIN_BLOCK; j++)
            out[i + j] = min_u8(a[i + j], b[i + j]);
    for (; i < n; i++)
        out[i] = min_u8(a[i], b[i]);
}

static inline int clamp_int(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* OpenCV's saturate_cast<int>(double): round half to even, clamped to the int range. */
static inline int round_to_int(double v)
{
    if (v >= (double)INT_MAX)
        return INT_MAX;
    if (v <= (double)INT_MIN)
        return INT_MIN;
    return (int)lrint(v);
}

/* ---- cropping ---- */

void img_channel_max(const uint8_t *rgb, int width, int height, uint8_t *out)
{
    size_t n = (size_t)width * height;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = rgb + 3 * i;
        uint8_t m = p[0] > p[1] ? p[0] : p[1];
        out[i] = m > p[2] ? m : p[2];
    }
}

/* Where position i of a line of n pixels reads from under scipy's 'reflect' extension:
 * mirrored about the half-pixel beyond each end, repeated with period 2n. */
static int reflect_index(int i, int n)
{
    int period = 2 * n;
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - 1 - i;
}

/* A line mirrored into ext: size / 2 values before it, size - size / 2 - 1 after. */
static void mirror_line(const uint8_t *line, int n, int size, uint8_t *ext)
{
    int before = size / 2, after = size - before - 1;
    for (int j = 0; j < before; j++)
        ext[j] = line[reflect_index(j - before, n)];
    memcpy(ext + before, line, (size_t)n);
    for (int j = 0; j < after; j++)
        ext[before + n + j] = line[reflect_index(n + j, n)];
}

/*
 * van Herk / Gil-Werman on one line already mirrored into ext (n + size - 1 values): the
 * minimum of ext[i .. i + size - 1] for i < n. Within blocks of size values, fwd holds the
 * running minimum from the block's start and back the one from its end; any window is the
 * tail of one block plus the head of the next, so two lookups give its minimum.
 */
static void running_min_line(const uint8_t *ext, int n, int size, uint8_t *fwd, uint8_t *back,
                             uint8_t *out)
{
    int len = n + size - 1;
    for (int start = 0; start < len; start += size) {
        int end = start + size < len ? start + size : len;
        fwd[start] = ext[start];
        for (int j = start + 1; j < end; j++)
            fwd[j] = min_u8(fwd[j - 1], ext[j]);
        back[end - 1] = ext[end - 1];
        for (int j = end - 2; j >= start; j--)
            back[j] = min_u8(back[j + 1], ext[j]);
    }
    for (int i = 0; i < n; i++)
        out[i] = min_u8(back[i], fwd[i + size - 1]);
}

/* The same down the columns, whole rows at a time so that the inner loops run along memory. */
static void running_min_columns(const uint8_t *src, int width, int height, int size,
                                uint8_t *fwd, uint8_t *back, uint8_t *dst)
{
    int before = size / 2, len = height + size - 1;
    size_t w = (size_t)width;
    for (int j = 0; j < len; j++) {
        const uint8_t *row = src + (size_t)reflect_index(j - before, height) * w;
        uint8_t *f = fwd + (size_t)j * w;
        if (j % size == 0) {
            memcpy(f, row, w);
            continue;
        }
        min_rows(f - w, row, f, w);
    }
    for (int j = len - 1; j >= 0; j--) {
        const uint8_t *row = src + (size_t)reflect_index(j - before, height) * w;
        uint8_t *b = back + (size_t)j * w;
        if (j == len - 1 || (j + 1) % size == 0) {
            memcpy(b, row, w);
            continue;
        }
        min_rows(b + w, row, b, w);
    }
    for (int i = 0; i < height; i++) {
        min_rows(back + (size_t)i * w, fwd + (size_t)(i + size - 1) * w, dst + (size_t)i * w,
                 w);
    }
}

void img_min_filter(const uint8_t *src, int width, int height, int size, uint8_t *dst,
                    img_workspace_t *ws)
{
    size_t n = (size_t)width * height;
    if (size <= 1) {
        if (dst != src)
            memmove(dst, src, n);
        return;
    }

    /* Along the rows, into a temporary image (so that src and dst may be one buffer). */
    int row_len = width + size - 1;
    size_t col_len = (size_t)(height + size - 1) * width;
    size_t run_len = col_len > (size_t)row_len ? col_len : (size_t)row_len;
    uint8_t *tmp = ws_get(ws, WS_FILTER_TMP, n);
    uint8_t *ext = ws_get(ws, WS_RUN_EXT, (size_t)row_len);
    uint8_t *fwd = ws_get(ws, WS_RUN_FWD, run_len);
    uint8_t *back = ws_get(ws, WS_RUN_BACK, run_len);
    for (int y = 0; y < height; y++) {
        mirror_line(src + (size_t)y * width, width, size, ext);
        running_min_line(ext, width, size, fwd, back, tmp + (size_t)y * width);
    }

    /* Then down the columns. */
    running_min_columns(tmp, width, height, size, fwd, back, dst);
}

int img_nonzero_box(const uint8_t *grey, int width, int height, img_box_t *box)
{
    int x0 = width, x1 = -1, y0 = -1, y1 = -1;
    for (int y = 0; y < height; y++) {
        const uint8_t *row = grey + (size_t)y * width;
        int first = -1, last = -1;
        for (int x = 0; x < width; x++)
            if (row[x]) {
                first = x;
                break;
            }
        if (first < 0)
            continue;
        for (int x = width - 1; x >= first; x--)
            if (row[x]) {
                last = x;
                break;
            }
        if (y0 < 0)
            y0 = y;
        y1 = y;
        if (first < x0)
            x0 = first;
        if (last > x1)
            x1 = last;
    }
    if (y0 < 0)
        return 0;
    *box = (img_box_t){x0, y0, x1 + 1, y1 + 1};
    return 1;
}

int img_crop_filter_size(int height)
{
    return height / 15;
}

int img_crop_box(const uint8_t *rgb, int width, int height, img_crop_t mode, img_box_t *box,
                 img_workspace_t *ws)
{
    img_box_t whole = {0, 0, width, height};
    *box = whole;
    if (mode == IMG_CROP_NONE)
        return 1;

    uint8_t *grey = ws_get(ws, WS_GREY, (size_t)width * height);
    img_channel_max(rgb, width, height, grey);
    img_box_t plain;
    if (!img_nonzero_box(grey, width, height, &plain))
        return 0; /* nothing above 0: uncropped */
    *box = plain;
    if (mode == IMG_CROP_PLAIN)
        return 1;

    int k = img_crop_filter_size(height);
    img_min_filter(grey, width, height, k, grey, ws);
    img_box_t kept;
    if (!img_nonzero_box(grey, width, height, &kept))
        return 0; /* the filter removed everything: the plain crop */
    box->x0 = kept.x0 - k > 0 ? kept.x0 - k : 0;
    box->y0 = kept.y0 - k > 0 ? kept.y0 - k : 0;
    box->x1 = kept.x1 + k < width ? kept.x1 + k : width;
    box->y1 = kept.y1 + k < height ? kept.y1 + k : height;
    return 1;
}

int img_pad_square(const uint8_t *rgb, int width, const img_box_t *box, uint8_t *dst)
{
    int bw = box->x1 - box->x0, bh = box->y1 - box->y0;
    int side = bw > bh ? bw : bh;
    size_t row_bytes = (size_t)bw * 3, side_bytes = (size_t)side * 3;
    for (int y = 0; y < bh; y++) {
        const uint8_t *from = rgb + ((size_t)(box->y0 + y) * width + box->x0) * 3;
        uint8_t *to = dst + (size_t)y * side_bytes;
        memcpy(to, from, row_bytes);
        memset(to + row_bytes, 0, side_bytes - row_bytes);
    }
    memset(dst + (size_t)bh * side_bytes, 0, (size_t)(side - bh) * side_bytes);
    return side;
}

/* ---- resize ---- */

#define RESIZE_COEF_SCALE 2048 /* OpenCV's INTER_RESIZE_COEF_SCALE */

/* Source position of destination index d, split into a cell and weights in 1/2048ths, with
 * OpenCV's float arithmetic (the rounding of those floats decides some weights). */
static void resize_source(int d, double scale, int *cell, int16_t weight[2])
{
    float f = (float)((d + 0.5) * scale - 0.5);
    int s = (int)floorf(f);
    f -= (float)s;
    *cell = s;
    weight[0] = (int16_t)lrintf((1.0f - f) * RESIZE_COEF_SCALE);
    weight[1] = (int16_t)lrintf(f * RESIZE_COEF_SCALE);
}

typedef struct {
    const uint8_t *src;
    int src_w, dst_w;
    const int *x_left, *x_right; /* byte offsets of the two source pixels of a column */
    const int16_t *alpha;        /* their weights, two per destination column */
} hresize_t;

/* One source row blended horizontally: 3 * dst_w values scaled by 2048, kept as OpenCV's
 * vertical pass reads them, divided by 16 into 16 bits (at most 255 * 128). */
static void resize_row(const hresize_t *h, int row, int16_t *out)
{
    const uint8_t *s = h->src + (size_t)row * h->src_w * 3;
    for (int x = 0; x < h->dst_w; x++) {
        const uint8_t *l = s + h->x_left[x], *r = s + h->x_right[x];
        int a0 = h->alpha[2 * x], a1 = h->alpha[2 * x + 1];
        int16_t *o = out + 3 * x;
        o[0] = (int16_t)((l[0] * a0 + r[0] * a1) >> 4);
        o[1] = (int16_t)((l[1] * a0 + r[1] * a1) >> 4);
        o[2] = (int16_t)((l[2] * a0 + r[2] * a1) >> 4);
    }
}

/* OpenCV's vertical blend of two such rows (VResizeLinearVec_32s8u): each multiplied by its
 * weight keeping the high 16 bits, summed, rounded by 4. Written so that it vectorises. */
static inline uint8_t resize_blend(int top, int bottom, int b0, int b1)
{
    int v = (((top * b0) >> 16) + ((bottom * b1) >> 16) + 2) >> 2;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static void resize_blend_rows(const int16_t *restrict top, const int16_t *restrict bottom,
                              int n, int16_t b0, int16_t b1, uint8_t *restrict out)
{
    int i = 0;
    for (; i + 16 <= n; i += 16) /* fixed-length blocks vectorise, see min_rows */
        for (int j = 0; j < 16; j++)
            out[i + j] = resize_blend(top[i + j], bottom[i + j], b0, b1);
    for (; i < n; i++)
        out[i] = resize_blend(top[i], bottom[i], b0, b1);
}

static int cached_slot(const int cached[2], int row)
{
    return cached[0] == row ? 0 : cached[1] == row ? 1 : -1;
}

void img_resize_bilinear(const uint8_t *src, int src_w, int src_h, uint8_t *dst, int dst_w,
                         int dst_h)
{
    int *x_left = xmalloc(2 * sizeof(int) * (size_t)dst_w), *x_right = x_left + dst_w;
    int16_t *alpha = xmalloc(2 * sizeof(int16_t) * (size_t)dst_w);
    int16_t *rows = xmalloc(2 * sizeof(int16_t) * 3 * (size_t)dst_w);

    /* Columns: a cell outside the image becomes the edge pixel at full weight. */
    double scale_x = 1.0 / ((double)dst_w / src_w), scale_y = 1.0 / ((double)dst_h / src_h);
    for (int x = 0; x < dst_w; x++) {
        int cell;
        resize_source(x, scale_x, &cell, alpha + 2 * x);
        if (cell < 0 || cell >= src_w - 1) {
            cell = cell < 0 ? 0 : src_w - 1;
            alpha[2 * x] = RESIZE_COEF_SCALE;
            alpha[2 * x + 1] = 0;
        }
        x_left[x] = cell * 3;
        x_right[x] = (cell + 1 < src_w ? cell + 1 : cell) * 3;
    }

    /* Rows: the weights stay as computed and both neighbours are clamped into the image,
     * which is not quite the same rounding as a clamped cell. Two blended rows are cached. */
    hresize_t h = {src, src_w, dst_w, x_left, x_right, alpha};
    int16_t *slot[2] = {rows, rows + 3 * (size_t)dst_w};
    int cached[2] = {-1, -1};
    for (int y = 0; y < dst_h; y++) {
        int cell;
        int16_t beta[2];
        resize_source(y, scale_y, &cell, beta);
        int want[2] = {clamp_int(cell, 0, src_h - 1), clamp_int(cell + 1, 0, src_h - 1)};
        int at[2];
        for (int k = 0; k < 2; k++) {
            at[k] = cached_slot(cached, want[k]);
            if (at[k] >= 0)
                continue;
            /* Overwrite the slot that the other row of this pair does not occupy. */
            int other = k == 0 ? cached_slot(cached, want[1]) : at[0];
            at[k] = other == 0 ? 1 : 0;
            resize_row(&h, want[k], slot[at[k]]);
            cached[at[k]] = want[k];
        }
        resize_blend_rows(slot[at[0]], slot[at[1]], 3 * dst_w, beta[0], beta[1],
                          dst + (size_t)y * dst_w * 3);
    }
    free(x_left);
    free(alpha);
    free(rows);
}

/* ---- flips ---- */

void img_flip_horizontal(const uint8_t *src, int width, int height, uint8_t *dst)
{
    for (int y = 0; y < height; y++) {
        const uint8_t *s = src + (size_t)y * width * 3;
        uint8_t *d = dst + (size_t)y * width * 3;
        for (int x = 0; x < width; x++)
            memcpy(d + 3 * x, s + 3 * (width - 1 - x), 3);
    }
}

void img_transpose(const uint8_t *src, int width, int height, uint8_t *dst)
{
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++)
            memcpy(dst + ((size_t)x * height + y) * 3, src + ((size_t)y * width + x) * 3, 3);
}

/* ---- affine warp ---- */

void img_rotation_matrix(double center_x, double center_y, double angle_deg, double scale,
                         double m[6])
{
    double angle = angle_deg * (M_PI / 180);
    double alpha = cos(angle) * scale, beta = sin(angle) * scale;
    m[0] = alpha;
    m[1] = beta;
    m[2] = (1 - alpha) * center_x - beta * center_y;
    m[3] = -beta;
    m[4] = alpha;
    m[5] = beta * center_x + (1 - alpha) * center_y;
}

/* The destination-to-source matrix, computed as cv2.warpAffine inverts its argument. */
static void invert_affine(const double m[6], double inv[6])
{
    double det = m[0] * m[4] - m[1] * m[3];
    det = det != 0 ? 1.0 / det : 0;
    inv[0] = m[4] * det;
    inv[1] = m[1] * -det;
    inv[3] = m[3] * -det;
    inv[4] = m[0] * det;
    inv[2] = -inv[0] * m[2] - inv[1] * m[5];
    inv[5] = -inv[3] * m[2] - inv[4] * m[5];
}

/* OpenCV's fixed point for warps: coordinates in 1/1024ths while summing, then 1/32 pixel
 * steps (INTER_BITS 5); bilinear weights sum to 32768 (INTER_REMAP_COEF_BITS 15). */
#define WARP_AB_BITS 10
#define WARP_INTER_BITS 5
#define WARP_TAB 32
#define WARP_COEF_BITS 15

void img_warp_affine_replicate(const uint8_t *src, int width, int height, const double m[6],
                               uint8_t *dst)
{
    double inv[6];
    invert_affine(m, inv);

    int *x_step = xmalloc(2 * sizeof(int) * (size_t)width), *y_step = x_step + width;
    for (int x = 0; x < width; x++) {
        x_step[x] = round_to_int(inv[0] * x * (1 << WARP_AB_BITS));
        y_step[x] = round_to_int(inv[3] * x * (1 << WARP_AB_BITS));
    }
    const int round_delta = (1 << WARP_AB_BITS) / WARP_TAB / 2;
    const size_t stride = (size_t)width * 3;

    /* Arithmetic right shifts and masks of negative ints below: floor division and its
     * remainder, as OpenCV relies on too (two's complement, GCC and Clang). */
    for (int y = 0; y < height; y++) {
        int x_row = round_to_int((inv[1] * y + inv[2]) * (1 << WARP_AB_BITS)) + round_delta;
        int y_row = round_to_int((inv[4] * y + inv[5]) * (1 << WARP_AB_BITS)) + round_delta;
        uint8_t *out = dst + (size_t)y * stride;
        for (int x = 0; x < width; x++, out += 3) {
            int sx = (x_row + x_step[x]) >> (WARP_AB_BITS - WARP_INTER_BITS);
            int sy = (y_row + y_step[x]) >> (WARP_AB_BITS - WARP_INTER_BITS);
            int ix = sx >> WARP_INTER_BITS, iy = sy >> WARP_INTER_BITS;
            int fx = sx & (WARP_TAB - 1), fy = sy & (WARP_TAB - 1);
            int w00 = (WARP_TAB - fy) * (WARP_TAB - fx) * WARP_TAB;
            int w01 = (WARP_TAB - fy) * fx * WARP_TAB;
            int w10 = fy * (WARP_TAB - fx) * WARP_TAB;
            int w11 = fy * fx * WARP_TAB;
            const uint8_t *p00, *p01, *p10, *p11;
            if ((unsigned)ix < (unsigned)(width - 1) && (unsigned)iy < (unsigned)(height - 1)) {
                p00 = src + (size_t)iy * stride + (size_t)ix * 3;
                p01 = p00 + 3;
                p10 = p00 + stride;
                p11 = p10 + 3;
            } else { /* BORDER_REPLICATE: each neighbour clamped into the image */
                int x0 = clamp_int(ix, 0, width - 1), x1 = clamp_int(ix + 1, 0, width - 1);
                int y0 = clamp_int(iy, 0, height - 1), y1 = clamp_int(iy + 1, 0, height - 1);
                p00 = src + (size_t)y0 * stride + (size_t)x0 * 3;
                p01 = src + (size_t)y0 * stride + (size_t)x1 * 3;
                p10 = src + (size_t)y1 * stride + (size_t)x0 * 3;
                p11 = src + (size_t)y1 * stride + (size_t)x1 * 3;
            }
            for (int c = 0; c < 3; c++) {
                int v = p00[c] * w00 + p01[c] * w01 + p10[c] * w10 + p11[c] * w11;
                out[c] = (uint8_t)((v + (1 << (WARP_COEF_BITS - 1))) >> WARP_COEF_BITS);
            }
        }
    }
    free(x_step);
}

void img_shift_scale_rotate(const uint8_t *src, int width, int height, double angle_deg,
                            double scale, double shift_x, double shift_y, uint8_t *dst)
{
    double m[6];
    /* albumentations passes the centre as the float pair (width / 2, height / 2). */
    img_rotation_matrix((float)(width / 2.0), (float)(height / 2.0), angle_deg, scale, m);
    m[2] += shift_x * width;
    m[5] += shift_y * height;
    img_warp_affine_replicate(src, width, height, m, dst);
}

/* ---- normalisation ---- */

void img_normalize(const uint8_t *rgb, int width, int height, int transpose, float *chw)
{
    /* Every grey level's value per channel, in albumentations' float32 order of operations. */
    float table[IMG_CHANNELS][256];
    for (int c = 0; c < IMG_CHANNELS; c++) {
        float mean = IMG_CHANNEL_MEAN[c] * 255.0f;
        float inv_std = 1.0f / (IMG_CHANNEL_STD[c] * 255.0f);
        for (int v = 0; v < 256; v++)
            table[c][v] = ((float)v - mean) * inv_std;
    }

    size_t plane = (size_t)width * height;
    float *p0 = chw, *p1 = chw + plane, *p2 = chw + 2 * plane;
    if (!transpose) {
        for (size_t i = 0; i < plane; i++) {
            const uint8_t *px = rgb + 3 * i;
            p0[i] = table[0][px[0]];
            p1[i] = table[1][px[1]];
            p2[i] = table[2][px[2]];
        }
        return;
    }
    /* Output row x is source column x. */
    size_t i = 0;
    for (int x = 0; x < width; x++)
        for (int y = 0; y < height; y++, i++) {
            const uint8_t *px = rgb + ((size_t)y * width + x) * 3;
            p0[i] = table[0][px[0]];
            p1[i] = table[1][px[1]];
            p2[i] = table[2][px[2]];
        }
}

/* ---- the pipeline ---- */

void img_prepare(const uint8_t *rgb, int width, int height, img_crop_t crop, int size,
                 uint8_t *out, img_box_t *box, img_workspace_t *ws)
{
    img_box_t b;
    img_crop_box(rgb, width, height, crop, &b, ws);
    if (box)
        *box = b;

    int bw = b.x1 - b.x0, bh = b.y1 - b.y0;
    if (bw == width && bh == height && width == height) {
        img_resize_bilinear(rgb, width, height, out, size, size);
        return;
    }
    int side = bw > bh ? bw : bh;
    uint8_t *square = ws_get(ws, WS_IMAGE_A, (size_t)side * side * 3);
    img_pad_square(rgb, width, &b, square);
    img_resize_bilinear(square, side, side, out, size, size);
}

int img_prepare_file(const char *path, img_crop_t crop, int size, uint8_t *out,
                     img_workspace_t *ws, char *err, size_t errlen)
{
    int width, height;
    uint8_t *rgb = image_read_file(path, &width, &height, err, errlen);
    if (!rgb)
        return -1;
    img_prepare(rgb, width, height, crop, size, out, NULL, ws);
    free(rgb);
    return 0;
}

/* ---- random numbers ---- */

void img_rng_seed(img_rng_t *rng, uint64_t seed)
{
    rng->state = seed;
}

uint64_t img_rng_next(img_rng_t *rng)
{
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void img_rng_seed_stream(img_rng_t *rng, uint64_t seed, uint64_t epoch, uint64_t index)
{
    /* Each key mixed through the generator's output function before the next is added, so
     * that nearby (epoch, index) pairs give unrelated streams. */
    img_rng_t mix = {seed};
    mix.state = img_rng_next(&mix) ^ epoch;
    mix.state = img_rng_next(&mix) ^ index;
    rng->state = img_rng_next(&mix);
}

double img_rng_uniform(img_rng_t *rng)
{
    return (double)(img_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- training augmentation ---- */

img_aug_config_t img_aug_defaults(void)
{
    return (img_aug_config_t){.p_hflip = 0.5, .p_ssr = 0.3, .p_transpose = 0.5,
                              .shift_limit = 0.05, .scale_limit = 0.05, .rotate_limit = 20};
}

static double uniform_between(img_rng_t *rng, double lo, double hi)
{
    return lo + (hi - lo) * img_rng_uniform(rng);
}

void img_aug_sample(const img_aug_config_t *cfg, img_rng_t *rng, img_aug_t *aug)
{
    aug->hflip = img_rng_uniform(rng) < cfg->p_hflip;
    aug->ssr = img_rng_uniform(rng) < cfg->p_ssr;
    aug->angle_deg = uniform_between(rng, -cfg->rotate_limit, cfg->rotate_limit);
    aug->scale = uniform_between(rng, 1 - cfg->scale_limit, 1 + cfg->scale_limit);
    aug->shift_x = uniform_between(rng, -cfg->shift_limit, cfg->shift_limit);
    aug->shift_y = uniform_between(rng, -cfg->shift_limit, cfg->shift_limit);
    aug->transpose = img_rng_uniform(rng) < cfg->p_transpose;
}

void img_augment(const uint8_t *rgb, int width, int height, const img_aug_t *aug, float *chw,
                 img_workspace_t *ws)
{
    size_t bytes = (size_t)width * height * 3;
    const uint8_t *image = rgb;
    if (aug->hflip) {
        uint8_t *flipped = ws_get(ws, WS_IMAGE_A, bytes);
        img_flip_horizontal(image, width, height, flipped);
        image = flipped;
    }
    if (aug->ssr) {
        uint8_t *warped = ws_get(ws, WS_IMAGE_B, bytes);
        img_shift_scale_rotate(image, width, height, aug->angle_deg, aug->scale, aug->shift_x,
                               aug->shift_y, warped);
        image = warped;
    }
    img_normalize(image, width, height, aug->transpose, chw);
}

/* ---- test-time augmentation ---- */

static const char *const TTA_NAMES[IMG_TTA_COUNT] = {"original", "hflip", "transpose"};

const char *img_tta_name(img_tta_t variant)
{
    return variant >= 0 && variant < IMG_TTA_COUNT ? TTA_NAMES[variant] : NULL;
}

int img_tta_parse(const char *name)
{
    for (int i = 0; i < IMG_TTA_COUNT; i++)
        if (strcmp(name, TTA_NAMES[i]) == 0)
            return i;
    return -1;
}

void img_tta(const uint8_t *rgb, int width, int height, img_tta_t variant, float *chw,
             img_workspace_t *ws)
{
    img_aug_t aug = {.hflip = variant == IMG_TTA_HFLIP,
                     .transpose = variant == IMG_TTA_TRANSPOSE, .scale = 1};
    img_augment(rgb, width, height, &aug, chw, ws);
}
