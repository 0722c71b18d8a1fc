/* 8-bit 3-channel images as JPEG (libjpeg-turbo) or binary PPM (lossless, for tests). */
#ifndef ICH_JPEGIO_H
#define ICH_JPEGIO_H

#include <stddef.h>
#include <stdint.h>

typedef enum { IMG_JPEG = 0, IMG_PPM = 1 } img_format_t;

/*
 * Encode interleaved RGB (w*h*3 bytes) to a file. quality 1..100; subsample420 0 writes 4:4:4.
 * Returns 0, or -1 with a message in err. Writes exactly path (callers handle temp names).
 */
int jpeg_write_file(const char *path, const uint8_t *rgb, int width, int height, int quality,
                    int subsample420, char *err, size_t errlen);
/* Encode to memory; *out is malloc'd. */
int jpeg_encode(const uint8_t *rgb, int width, int height, int quality, int subsample420,
                uint8_t **out, size_t *out_size, char *err, size_t errlen);
/* Decode a JPEG (grey or colour) to RGB; returns malloc'd pixels or NULL with err set. */
uint8_t *jpeg_read_file(const char *path, int *width, int *height, char *err, size_t errlen);
uint8_t *jpeg_decode(const uint8_t *data, size_t size, int *width, int *height, char *err,
                     size_t errlen);

int ppm_write_file(const char *path, const uint8_t *rgb, int width, int height, char *err,
                   size_t errlen);
uint8_t *ppm_read_file(const char *path, int *width, int *height, char *err, size_t errlen);

/* Read either format, chosen by the file's first bytes. */
uint8_t *image_read_file(const char *path, int *width, int *height, char *err, size_t errlen);

#endif
