#include "jpegio.h"

#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "check.h"

/* libjpeg reports errors through a callback; turn them into a message and a longjmp. */
typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
} jpeg_error_t;

static void jpeg_error_exit(j_common_ptr cinfo)
{
    jpeg_error_t *e = (jpeg_error_t *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->message);
    longjmp(e->escape, 1);
}

/* Print nothing, but count warnings as libjpeg's own handler does and keep the first: a cut
 * file decodes with a "premature end" warning (grey rows), which jpeg_decode turns into an
 * error. */
static void jpeg_silence(j_common_ptr cinfo, int level)
{
    if (level >= 0)
        return;
    jpeg_error_t *e = (jpeg_error_t *)cinfo->err;
    if (cinfo->err->num_warnings++ == 0)
        (*cinfo->err->format_message)(cinfo, e->message);
}

int jpeg_encode(const uint8_t *rgb, int width, int height, int quality, int subsample420,
                uint8_t **out, size_t *out_size, char *err, size_t errlen)
{
    struct jpeg_compress_struct c;
    jpeg_error_t jerr;
    unsigned char *mem = NULL;
    unsigned long mem_size = 0;

    c.err = jpeg_std_error(&jerr.base);
    jerr.base.error_exit = jpeg_error_exit;
    if (setjmp(jerr.escape)) {
        snprintf(err, errlen, "JPEG encoding failed: %s", jerr.message);
        jpeg_destroy_compress(&c);
        free(mem);
        return -1;
    }
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &mem, &mem_size);
    c.image_width = (JDIMENSION)width;
    c.image_height = (JDIMENSION)height;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    /* The channels are independent CT windows: no chroma subsampling unless asked. */
    int h = subsample420 ? 2 : 1;
    c.comp_info[0].h_samp_factor = h;
    c.comp_info[0].v_samp_factor = h;
    for (int i = 1; i < 3; i++) {
        c.comp_info[i].h_samp_factor = 1;
        c.comp_info[i].v_samp_factor = 1;
    }
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * (size_t)width * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *out = mem;
    *out_size = mem_size;
    return 0;
}

static int write_all(const char *path, const void *data, size_t size, char *err, size_t errlen)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    size_t n = fwrite(data, 1, size, f);
    int close_rc = fclose(f);
    if (n != size || close_rc != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int jpeg_write_file(const char *path, const uint8_t *rgb, int width, int height, int quality,
                    int subsample420, char *err, size_t errlen)
{
    uint8_t *mem;
    size_t size;
    if (jpeg_encode(rgb, width, height, quality, subsample420, &mem, &size, err, errlen) != 0)
        return -1;
    int rc = write_all(path, mem, size, err, errlen);
    free(mem);
    return rc;
}

uint8_t *jpeg_decode(const uint8_t *data, size_t size, int *width, int *height, char *err,
                     size_t errlen)
{
    struct jpeg_decompress_struct d;
    jpeg_error_t jerr;
    uint8_t *volatile pixels = NULL;

    d.err = jpeg_std_error(&jerr.base);
    jerr.base.error_exit = jpeg_error_exit;
    jerr.base.emit_message = jpeg_silence;
    jerr.message[0] = '\0';
    if (setjmp(jerr.escape)) {
        snprintf(err, errlen, "not a readable JPEG: %s", jerr.message);
        jpeg_destroy_decompress(&d);
        free(pixels);
        return NULL;
    }
    jpeg_create_decompress(&d);
    jpeg_mem_src(&d, data, (unsigned long)size);
    jpeg_read_header(&d, TRUE);
    d.out_color_space = JCS_RGB;
    jpeg_start_decompress(&d);
    size_t stride = (size_t)d.output_width * 3;
    pixels = xmalloc(stride * d.output_height);
    while (d.output_scanline < d.output_height) {
        JSAMPROW row = pixels + (size_t)d.output_scanline * stride;
        jpeg_read_scanlines(&d, &row, 1);
    }
    /* Finishing reads up to the end marker: a file cut just before it warns there. */
    jpeg_finish_decompress(&d);

    /* A truncated or corrupt file decodes with warnings; treat it as damage. */
    if (jerr.base.num_warnings > 0) {
        snprintf(err, errlen, "damaged JPEG: %s (%ld decoder warning%s)", jerr.message,
                 jerr.base.num_warnings, jerr.base.num_warnings > 1 ? "s" : "");
        jpeg_destroy_decompress(&d);
        free(pixels);
        return NULL;
    }
    *width = (int)d.output_width;
    *height = (int)d.output_height;
    jpeg_destroy_decompress(&d);
    return pixels;
}

static uint8_t *read_whole_file(const char *path, size_t *size, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = xmalloc(cap);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        cap *= 2;
        buf = xrealloc(buf, cap);
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        snprintf(err, errlen, "cannot read %s", path);
        free(buf);
        return NULL;
    }
    *size = n;
    return buf;
}

uint8_t *jpeg_read_file(const char *path, int *width, int *height, char *err, size_t errlen)
{
    size_t size;
    uint8_t *data = read_whole_file(path, &size, err, errlen);
    if (!data)
        return NULL;
    char inner[256];
    uint8_t *pixels = jpeg_decode(data, size, width, height, inner, sizeof inner);
    if (!pixels)
        snprintf(err, errlen, "%s: %s", path, inner);
    free(data);
    return pixels;
}

int ppm_write_file(const char *path, const uint8_t *rgb, int width, int height, char *err,
                   size_t errlen)
{
    char header[64];
    int hlen = snprintf(header, sizeof header, "P6\n%d %d\n255\n", width, height);
    size_t body = (size_t)width * (size_t)height * 3;
    uint8_t *buf = xmalloc((size_t)hlen + body);
    memcpy(buf, header, (size_t)hlen);
    memcpy(buf + hlen, rgb, body);
    int rc = write_all(path, buf, (size_t)hlen + body, err, errlen);
    free(buf);
    return rc;
}

/* Next header number of a PPM, skipping whitespace and comments; -1 when malformed. */
static long ppm_number(const uint8_t *data, size_t size, size_t *pos)
{
    while (*pos < size) {
        if (data[*pos] == '#') {
            while (*pos < size && data[*pos] != '\n')
                (*pos)++;
        } else if (data[*pos] == ' ' || data[*pos] == '\n' || data[*pos] == '\r' ||
                   data[*pos] == '\t') {
            (*pos)++;
        } else {
            break;
        }
    }
    long v = 0;
    int digits = 0;
    while (*pos < size && data[*pos] >= '0' && data[*pos] <= '9' && digits < 9) {
        v = v * 10 + (data[(*pos)++] - '0');
        digits++;
    }
    return digits ? v : -1;
}

uint8_t *ppm_read_file(const char *path, int *width, int *height, char *err, size_t errlen)
{
    size_t size;
    uint8_t *data = read_whole_file(path, &size, err, errlen);
    if (!data)
        return NULL;
    size_t pos = 2;
    long w = -1, h = -1, maxval = -1;
    if (size >= 2 && data[0] == 'P' && data[1] == '6') {
        w = ppm_number(data, size, &pos);
        h = ppm_number(data, size, &pos);
        maxval = ppm_number(data, size, &pos);
    }
    pos++; /* the single whitespace after maxval */
    if (w <= 0 || h <= 0 || maxval != 255 || w > 65535 || h > 65535 ||
        pos + (size_t)w * (size_t)h * 3 > size) {
        snprintf(err, errlen, "%s: not a complete 8-bit binary PPM", path);
        free(data);
        return NULL;
    }
    size_t body = (size_t)w * (size_t)h * 3;
    uint8_t *pixels = xmalloc(body);
    memcpy(pixels, data + pos, body);
    free(data);
    *width = (int)w;
    *height = (int)h;
    return pixels;
}

uint8_t *image_read_file(const char *path, int *width, int *height, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    unsigned char magic[2] = {0, 0};
    size_t got = fread(magic, 1, 2, f);
    fclose(f);
    if (got == 2 && magic[0] == 'P' && magic[1] == '6')
        return ppm_read_file(path, width, height, err, errlen);
    return jpeg_read_file(path, width, height, err, errlen);
}
