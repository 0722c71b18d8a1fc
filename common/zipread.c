/* Zip archives in memory (see zipread.h). */
#include "zipread.h"

#include "check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_END 0x06054b50u
#define SIG_END64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u
#define END_SIZE 22
#define CENTRAL_SIZE 46
#define LOCAL_SIZE 30

static int fail(zip_t *zip, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(zip_t *zip, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(zip->error, sizeof(zip->error), fmt, ap);
    va_end(ap);
    return -1;
}

static uint16_t u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t u64(const uint8_t *p)
{
    return (uint64_t)u32(p) | (uint64_t)u32(p + 4) << 32;
}

/* Is [offset, offset + len) inside the archive? */
static int inside(const zip_t *zip, uint64_t offset, uint64_t len)
{
    return offset <= zip->size && len <= zip->size - offset;
}

int zip_is_zip(const uint8_t *data, size_t size)
{
    return size >= 4 && u32(data) == SIG_LOCAL;
}

/* The end of central directory record: the last signature with a consistent comment. */
static long find_end(const zip_t *zip)
{
    if (zip->size < END_SIZE)
        return -1;
    size_t lowest = zip->size > END_SIZE + 65535 ? zip->size - END_SIZE - 65535 : 0;
    for (size_t at = zip->size - END_SIZE + 1; at-- > lowest;) {
        const uint8_t *p = zip->data + at;
        if (u32(p) == SIG_END && at + END_SIZE + u16(p + 20) == zip->size)
            return (long)at;
    }
    return -1;
}

/* Zip64 values for the fields that hold 0xFFFFFFFF, from the entry's extra field. */
static int apply_zip64(zip_t *zip, zip_entry_t *e, const uint8_t *extra, size_t len,
                       int need_usize, int need_csize, int need_offset)
{
    size_t at = 0;
    while (at + 4 <= len) {
        uint16_t id = u16(extra + at), size = u16(extra + at + 2);
        if (at + 4 + size > len)
            break;
        if (id == 0x0001) {
            const uint8_t *p = extra + at + 4;
            size_t left = size;
            uint64_t *fields[3] = {need_usize ? &e->usize : NULL, need_csize ? &e->csize : NULL,
                                   need_offset ? &e->header_offset : NULL};
            for (int k = 0; k < 3; k++) {
                if (!fields[k])
                    continue;
                if (left < 8)
                    return fail(zip, "entry %s: short zip64 extra field", e->name);
                *fields[k] = u64(p);
                p += 8;
                left -= 8;
            }
            return 0;
        }
        at += 4 + (size_t)size;
    }
    if (need_usize || need_csize || need_offset)
        return fail(zip, "entry %s: zip64 sizes announced but no zip64 extra field", e->name);
    return 0;
}

int zip_open(zip_t *zip, const uint8_t *data, size_t size)
{
    memset(zip, 0, sizeof(*zip));
    zip->data = data;
    zip->size = size;
    long end = find_end(zip);
    if (end < 0)
        return fail(zip, "no end of central directory record (truncated zip archive?)");
    const uint8_t *e = data + end;
    uint64_t count = u16(e + 10), cd_size = u32(e + 12), cd_offset = u32(e + 16);

    /* Zip64: the locator just before the end record points at the zip64 end record. */
    if (end >= 20 && u32(data + end - 20) == SIG_LOCATOR64) {
        uint64_t at = u64(data + end - 20 + 8);
        if (!inside(zip, at, 56) || u32(data + at) != SIG_END64)
            return fail(zip, "bad zip64 end of central directory record");
        count = u64(data + at + 32);
        cd_size = u64(data + at + 40);
        cd_offset = u64(data + at + 48);
    }
    if (!inside(zip, cd_offset, cd_size))
        return fail(zip, "central directory at %llu (+%llu) beyond the archive's %zu bytes "
                    "(truncated?)", (unsigned long long)cd_offset,
                    (unsigned long long)cd_size, size);
    /* Each record takes at least CENTRAL_SIZE bytes: bounds the count before allocating. */
    if (count > cd_size / CENTRAL_SIZE)
        return fail(zip, "central directory claims %llu entries in %llu bytes",
                    (unsigned long long)count, (unsigned long long)cd_size);

    zip->entries = xcalloc(count ? count : 1, sizeof(zip_entry_t));
    const uint8_t *p = data + cd_offset, *limit = p + cd_size;
    for (uint64_t i = 0; i < count; i++) {
        if (limit - p < CENTRAL_SIZE || u32(p) != SIG_CENTRAL)
            return fail(zip, "central directory record %llu is damaged", (unsigned long long)i);
        size_t name_len = u16(p + 28), extra_len = u16(p + 30), comment_len = u16(p + 32);
        if ((size_t)(limit - p) < CENTRAL_SIZE + name_len + extra_len + comment_len)
            return fail(zip, "central directory record %llu is cut", (unsigned long long)i);
        zip_entry_t *entry = &zip->entries[zip->n_entries++];
        entry->name = xmalloc(name_len + 1);
        memcpy(entry->name, p + CENTRAL_SIZE, name_len);
        entry->name[name_len] = 0;
        entry->method = u16(p + 10);
        entry->crc = u32(p + 16);
        entry->csize = u32(p + 20);
        entry->usize = u32(p + 24);
        entry->header_offset = u32(p + 42);
        if (apply_zip64(zip, entry, p + CENTRAL_SIZE + name_len, extra_len,
                        entry->usize == 0xFFFFFFFFu, entry->csize == 0xFFFFFFFFu,
                        entry->header_offset == 0xFFFFFFFFu) < 0)
            return -1;
        p += CENTRAL_SIZE + name_len + extra_len + comment_len;
    }
    return 0;
}

void zip_close(zip_t *zip)
{
    for (size_t i = 0; i < zip->n_entries; i++)
        free(zip->entries[i].name);
    free(zip->entries);
    zip->entries = NULL;
    zip->n_entries = 0;
}

const zip_entry_t *zip_find(const zip_t *zip, const char *name)
{
    for (size_t i = 0; i < zip->n_entries; i++)
        if (strcmp(zip->entries[i].name, name) == 0)
            return &zip->entries[i];
    return NULL;
}

static int check_crc(zip_t *zip, const zip_entry_t *e, const uint8_t *bytes)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    uint64_t left = e->usize;
    const uint8_t *p = bytes;
    while (left) {
        uInt chunk = left > (1u << 30) ? (1u << 30) : (uInt)left;
        crc = crc32(crc, p, chunk);
        p += chunk;
        left -= chunk;
    }
    if ((uint32_t)crc != e->crc)
        return fail(zip, "entry %s: CRC-32 mismatch (damaged archive)", e->name);
    return 0;
}

static uint8_t *inflate_entry(zip_t *zip, const zip_entry_t *e, const uint8_t *src)
{
    uint8_t *out = xmalloc(e->usize ? e->usize : 1);
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
        free(out);
        fail(zip, "entry %s: cannot start inflating", e->name);
        return NULL;
    }
    uint64_t in_left = e->csize, out_done = 0;
    int rc = Z_OK;
    while (rc == Z_OK) {
        uInt in_chunk = in_left > (1u << 30) ? (1u << 30) : (uInt)in_left;
        uint64_t out_room = e->usize - out_done;
        zs.next_in = (Bytef *)(uintptr_t)(src + (e->csize - in_left));
        zs.avail_in = in_chunk;
        zs.next_out = out + out_done;
        zs.avail_out = out_room > (1u << 30) ? (1u << 30) : (uInt)out_room;
        uInt in_before = zs.avail_in, out_before = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH);
        in_left -= in_before - zs.avail_in;
        out_done += out_before - zs.avail_out;
        if (rc == Z_OK && in_before == zs.avail_in && out_before == zs.avail_out)
            rc = Z_BUF_ERROR; /* no progress: input or room exhausted */
    }
    inflateEnd(&zs);
    if (rc != Z_STREAM_END || out_done != e->usize) {
        free(out);
        fail(zip, "entry %s: deflated data is damaged or its size is not the declared %llu",
             e->name, (unsigned long long)e->usize);
        return NULL;
    }
    return out;
}

const uint8_t *zip_read(zip_t *zip, const zip_entry_t *e, uint64_t limit, int *owned)
{
    *owned = 0;
    if (!inside(zip, e->header_offset, LOCAL_SIZE) ||
        u32(zip->data + e->header_offset) != SIG_LOCAL) {
        fail(zip, "entry %s: local header missing (truncated archive?)", e->name);
        return NULL;
    }
    const uint8_t *h = zip->data + e->header_offset;
    uint64_t start = e->header_offset + LOCAL_SIZE + u16(h + 26) + u16(h + 28);
    if (!inside(zip, start, e->csize)) {
        fail(zip, "entry %s: %llu bytes at %llu go beyond the archive's %zu bytes "
             "(truncated?)", e->name, (unsigned long long)e->csize,
             (unsigned long long)start, zip->size);
        return NULL;
    }
    const uint8_t *src = zip->data + start;
    const uint8_t *bytes;
    if (e->method == 0) {
        if (e->csize != e->usize) {
            fail(zip, "entry %s: stored with different sizes", e->name);
            return NULL;
        }
        bytes = src;
    } else if (e->method == 8) {
        if (e->usize > limit) {
            fail(zip, "entry %s: declared size %llu is too large", e->name,
                 (unsigned long long)e->usize);
            return NULL;
        }
        uint8_t *out = inflate_entry(zip, e, src);
        if (!out)
            return NULL;
        *owned = 1;
        bytes = out;
    } else {
        fail(zip, "entry %s: compression method %u not supported", e->name, e->method);
        return NULL;
    }
    if (check_crc(zip, e, bytes) < 0) {
        if (*owned)
            free((void *)(uintptr_t)bytes);
        *owned = 0;
        return NULL;
    }
    return bytes;
}
