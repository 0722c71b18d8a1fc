/*
 * Reading the entries of a zip archive held in memory (the archives torch.save writes since
 * PyTorch 1.6): the central directory, stored and deflated entries, zip64 sizes and offsets.
 * Every offset and size is checked against the archive's bounds, and every entry's CRC-32
 * is verified when it is read.
 */
#ifndef ICH_ZIPREAD_H
#define ICH_ZIPREAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *name;              /* NUL-terminated copy */
    uint16_t method;         /* 0 stored, 8 deflated */
    uint32_t crc;
    uint64_t csize, usize;   /* compressed and uncompressed sizes */
    uint64_t header_offset;  /* of the local header */
} zip_entry_t;

typedef struct {
    const uint8_t *data;
    size_t size;
    zip_entry_t *entries;
    size_t n_entries;
    char error[256];
} zip_t;

/* 1 if data starts with a zip local header signature. */
int zip_is_zip(const uint8_t *data, size_t size);

/* Parse the central directory of the archive in data (kept, not copied). Returns 0, or -1
 * with zip->error saying what is wrong (truncated, no central directory, bad offsets). */
int zip_open(zip_t *zip, const uint8_t *data, size_t size);
void zip_close(zip_t *zip);

/* An entry by exact name, or NULL. */
const zip_entry_t *zip_find(const zip_t *zip, const char *name);

/*
 * The entry's bytes. Stored entries point into the archive (*owned = 0); deflated ones are
 * inflated into a new buffer (*owned = 1, free it) of the declared size, refused when the
 * declared size exceeds limit. Checks the CRC-32. Returns NULL with zip->error set.
 */
const uint8_t *zip_read(zip_t *zip, const zip_entry_t *entry, uint64_t limit, int *owned);

#endif
