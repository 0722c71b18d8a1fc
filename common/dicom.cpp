/*
 * DICOM on DCMTK behind the plain C interface of dicom.h. The only C++ file of the project:
 * everything DCMTK-specific stays here, so the programs remain C.
 */
#include "dicom.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dctk.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/oflog/oflog.h>

#include <cmath>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <pthread.h>
#include <string>

namespace {

const double NOT_A_NUMBER = std::numeric_limits<double>::quiet_NaN();

pthread_once_t setup_once = PTHREAD_ONCE_INIT;

/* Codecs are registered once per process, before any thread decodes. DCMTK's own logger
 * would print parser warnings for every odd file; the caller reports problems instead. */
void setup_dcmtk()
{
    OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
    DcmRLEDecoderRegistration::registerCodecs();
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
}

void ensure_setup()
{
    pthread_once(&setup_once, setup_dcmtk);
}

void set_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void set_error(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void copy_string(char *dst, size_t dstlen, const char *src)
{
    snprintf(dst, dstlen, "%s", src ? src : "");
}

/* ---------------------------------------------------------------------------------------- */
/* Writing                                                                                   */

/* A decimal string (DS) holds at most 16 characters: use the most digits that fit. */
void format_ds(char *out, size_t outlen, double value)
{
    for (int digits = 12; digits >= 1; digits--) {
        snprintf(out, outlen, "%.*g", digits, value);
        if (strlen(out) <= 16)
            return;
    }
}

/* Several DS values joined by backslashes (multi-valued attribute). */
std::string format_ds_list(const double *values, int count)
{
    std::string joined;
    for (int i = 0; i < count; i++) {
        char one[32];
        format_ds(one, sizeof one, values[i]);
        if (i > 0)
            joined += '\\';
        joined += one;
    }
    return joined;
}

class CtWriter {
public:
    CtWriter(DcmDataset *dataset) : dataset_(dataset), status_(EC_Normal) {}

    void str(const DcmTagKey &tag, const char *value)
    {
        if (status_.good() && value != NULL)
            status_ = dataset_->putAndInsertString(tag, value);
        if (status_.bad() && failed_tag_.empty())
            failed_tag_ = DcmTag(tag).getTagName();
    }

    void ds(const DcmTagKey &tag, const double *values, int count)
    {
        str(tag, format_ds_list(values, count).c_str());
    }

    void is(const DcmTagKey &tag, int value)
    {
        char text[16];
        snprintf(text, sizeof text, "%d", value);
        str(tag, text);
    }

    void us(const DcmTagKey &tag, Uint16 value)
    {
        if (status_.good())
            status_ = dataset_->putAndInsertUint16(tag, value);
        if (status_.bad() && failed_tag_.empty())
            failed_tag_ = DcmTag(tag).getTagName();
    }

    void pixels(const int16_t *values, unsigned long count)
    {
        /* Signed 16-bit stored values travel as OW words: the bits are what matters. */
        if (status_.good())
            status_ = dataset_->putAndInsertUint16Array(
                DCM_PixelData, reinterpret_cast<const Uint16 *>(values), count);
        if (status_.bad() && failed_tag_.empty())
            failed_tag_ = "PixelData";
    }

    bool good() const { return status_.good(); }
    const char *reason() const { return status_.text(); }
    const char *failed_tag() const { return failed_tag_.c_str(); }

private:
    DcmDataset *dataset_;
    OFCondition status_;
    std::string failed_tag_;
};

/* ---------------------------------------------------------------------------------------- */
/* Reading                                                                                   */

/*
 * A text value as printable ASCII: other bytes become \xNN. Character sets differ between
 * files (Latin-1, UTF-8, ...) and corrupt files hold anything; the result is always valid
 * UTF-8 for HDF5 and terminals, and the same bytes always give the same text.
 */
void get_string(DcmDataset *ds, const DcmTagKey &tag, char *out, size_t outlen)
{
    OFString value;
    out[0] = '\0';
    if (ds->findAndGetOFStringArray(tag, value).bad())
        return;
    size_t used = 0;
    for (size_t i = 0; i < value.length(); i++) {
        unsigned char c = (unsigned char)value[i];
        char piece[5] = {(char)c, 0};
        if (c < 0x20 || c > 0x7e)
            snprintf(piece, sizeof piece, "\\x%02x", c);
        size_t len = strlen(piece);
        if (used + len + 1 > outlen)
            break;
        memcpy(out + used, piece, len);
        used += len;
    }
    out[used] = '\0';
}

/* All count values of a multi-valued DS, or NaN everywhere when any is missing. */
void get_doubles(DcmDataset *ds, const DcmTagKey &tag, double *out, int count)
{
    for (int i = 0; i < count; i++) {
        Float64 value;
        if (ds->findAndGetFloat64(tag, value, i).bad() || !std::isfinite(value)) {
            for (int k = 0; k < count; k++)
                out[k] = NOT_A_NUMBER;
            return;
        }
        out[i] = value;
    }
}

/* Does a multi-valued code string hold word as one of its values (spaces trimmed)? */
bool has_code_value(DcmDataset *ds, const DcmTagKey &tag, const char *word)
{
    OFString value;
    if (ds->findAndGetOFStringArray(tag, value).bad())
        return false;
    size_t start = 0, wordlen = strlen(word);
    while (start <= value.length()) {
        size_t end = value.find('\\', start);
        if (end == OFString_npos)
            end = value.length();
        size_t a = start, b = end;
        while (a < b && value[a] == ' ')
            a++;
        while (b > a && value[b - 1] == ' ')
            b--;
        if (b - a == wordlen && value.compare(a, wordlen, word) == 0)
            return true;
        start = end + 1;
    }
    return false;
}

int get_int(DcmDataset *ds, const DcmTagKey &tag, int fallback)
{
    Uint16 us;
    if (ds->findAndGetUint16(tag, us).good())
        return us;
    Sint32 is;
    if (ds->findAndGetSint32(tag, is).good())
        return is;
    return fallback;
}

void fill_header(DcmFileFormat &file, dicom_header_t *hdr)
{
    DcmDataset *ds = file.getDataset();
    DcmMetaInfo *meta = file.getMetaInfo();

    memset(hdr, 0, sizeof *hdr);
    get_string(ds, DCM_SOPInstanceUID, hdr->sop_uid, sizeof hdr->sop_uid);
    get_string(ds, DCM_SOPClassUID, hdr->sop_class, sizeof hdr->sop_class);
    get_string(ds, DCM_PatientID, hdr->patient_id, sizeof hdr->patient_id);
    get_string(ds, DCM_StudyInstanceUID, hdr->study_uid, sizeof hdr->study_uid);
    get_string(ds, DCM_SeriesInstanceUID, hdr->series_uid, sizeof hdr->series_uid);
    get_string(ds, DCM_Modality, hdr->modality, sizeof hdr->modality);
    get_string(ds, DCM_PhotometricInterpretation, hdr->photometric, sizeof hdr->photometric);
    get_string(ds, DCM_ImageType, hdr->image_type, sizeof hdr->image_type);
    hdr->is_localizer = has_code_value(ds, DCM_ImageType, "LOCALIZER");

    /* The transfer syntax the file was actually encoded in; the meta header's UID when it
     * has one (it also names syntaxes DCMTK does not know). */
    DcmXfer xfer(ds->getOriginalXfer());
    OFString ts_uid;
    if (meta != NULL && meta->findAndGetOFString(DCM_TransferSyntaxUID, ts_uid).good() &&
        !ts_uid.empty())
        copy_string(hdr->transfer_syntax, sizeof hdr->transfer_syntax, ts_uid.c_str());
    else
        copy_string(hdr->transfer_syntax, sizeof hdr->transfer_syntax, xfer.getXferID());
    DcmXfer named(hdr->transfer_syntax);
    const char *name = named.getXfer() != EXS_Unknown ? named.getXferName() : "unknown";
    copy_string(hdr->transfer_syntax_name, sizeof hdr->transfer_syntax_name, name);

    Sint32 instance = 0;
    if (ds->findAndGetSint32(DCM_InstanceNumber, instance).good())
        hdr->instance_number = instance;

    get_doubles(ds, DCM_ImagePositionPatient, hdr->position, 3);
    get_doubles(ds, DCM_ImageOrientationPatient, hdr->orientation, 6);
    get_doubles(ds, DCM_PixelSpacing, hdr->pixel_spacing, 2);

    /* Rescale values are parsed and checked by read_rescale. */
    hdr->slope = 1.0;
    hdr->intercept = 0.0;

    Float64 value;
    hdr->window_center = ds->findAndGetFloat64(DCM_WindowCenter, value).good() ? value
                                                                              : NOT_A_NUMBER;
    hdr->window_width = ds->findAndGetFloat64(DCM_WindowWidth, value).good() ? value
                                                                            : NOT_A_NUMBER;

    hdr->rows = get_int(ds, DCM_Rows, 0);
    hdr->columns = get_int(ds, DCM_Columns, 0);
    hdr->bits_allocated = get_int(ds, DCM_BitsAllocated, 0);
    hdr->bits_stored = get_int(ds, DCM_BitsStored, hdr->bits_allocated);
    hdr->high_bit = get_int(ds, DCM_HighBit, hdr->bits_stored - 1);
    hdr->pixel_representation = get_int(ds, DCM_PixelRepresentation, 0);
    hdr->samples_per_pixel = get_int(ds, DCM_SamplesPerPixel, 1);
    hdr->frames = get_int(ds, DCM_NumberOfFrames, 1);
    if (hdr->frames < 1)
        hdr->frames = 1;
    hdr->has_pixel_data = ds->tagExists(DCM_PixelData);
    hdr->is_image = dcmIsImageStorageSOPClassUID(hdr->sop_class) || ds->tagExists(DCM_Rows) ||
                    ds->tagExists(DCM_Columns);
}

/*
 * A decimal string as pydicom's float() of it takes it: optional spaces around one number
 * ([sign] digits [. digits] [e [sign] digits]), finite. No hex, no NaN, no trailing text.
 */
bool parse_decimal(const char *text, double *out)
{
    const char *p = text;
    while (*p == ' ')
        p++;
    const char *start = p;
    if (*p == '+' || *p == '-')
        p++;
    int digits = 0;
    while (*p >= '0' && *p <= '9')
        p++, digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9')
            p++, digits++;
    }
    if (digits == 0)
        return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!(*p >= '0' && *p <= '9'))
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    const char *end = p;
    while (*p == ' ')
        p++;
    if (*p != '\0')
        return false;
    std::string number(start, (size_t)(end - start));
    double value = strtod(number.c_str(), NULL);
    if (!std::isfinite(value))
        return false;
    *out = value;
    return true;
}

/*
 * RescaleSlope and RescaleIntercept. Absent (or empty) they are 1 and 0, as for the
 * reference; present, each must be one finite number and the slope not 0 (a slope of 0 makes
 * every pixel one value: a black image rather than an error).
 */
bool read_rescale(DcmDataset *ds, dicom_header_t *hdr, char *err, size_t errlen)
{
    static const struct {
        DcmTagKey tag;
        const char *name;
    } tags[2] = {{DCM_RescaleSlope, "RescaleSlope"}, {DCM_RescaleIntercept, "RescaleIntercept"}};
    double *targets[2] = {&hdr->slope, &hdr->intercept};
    for (int k = 0; k < 2; k++) {
        OFString raw;
        if (ds->findAndGetOFStringArray(tags[k].tag, raw).bad() || raw.empty())
            continue;
        char shown[64];
        get_string(ds, tags[k].tag, shown, sizeof shown);
        if (!parse_decimal(raw.c_str(), targets[k])) {
            set_error(err, errlen, "invalid %s '%s': not one finite decimal number",
                      tags[k].name, shown);
            return false;
        }
        hdr->has_rescale = 1;
    }
    if (hdr->slope == 0.0) {
        set_error(err, errlen, "invalid RescaleSlope 0: every pixel would get the same value");
        return false;
    }
    return true;
}

/*
 * Native pixel data must hold exactly the image the header describes: a mismatch means a
 * wrong Rows/Columns/BitsAllocated or a cut file, and decoding it would give a scrambled
 * image. One padding byte to an even length is allowed. Compressed data is checked by its
 * decoder.
 */
bool check_pixel_length(DcmDataset *ds, const dicom_header_t *hdr, char *err, size_t errlen)
{
    if (!hdr->has_pixel_data || DcmXfer(ds->getOriginalXfer()).isEncapsulated())
        return true;
    if (hdr->rows <= 0 || hdr->columns <= 0 || hdr->bits_allocated <= 0)
        return true; /* reported by check_pixel_format */
    DcmElement *element = NULL;
    if (ds->findAndGetElement(DCM_PixelData, element).bad() || element == NULL)
        return true;

    unsigned long long samples = hdr->samples_per_pixel > 0 ? hdr->samples_per_pixel : 1;
    unsigned long long values = (unsigned long long)hdr->rows * (unsigned long long)hdr->columns *
                                (unsigned long long)hdr->frames;
    /* 4:2:2 colour stores two samples per pixel in place of three. */
    size_t plen = strlen(hdr->photometric);
    if (samples == 3 && strncmp(hdr->photometric, "YBR_", 4) == 0 && plen > 4 &&
        strcmp(hdr->photometric + plen - 4, "_422") == 0)
        samples = 2;
    unsigned long long need;
    if (hdr->bits_allocated % 8 == 0)
        need = values * samples * (unsigned long long)(hdr->bits_allocated / 8);
    else if (hdr->bits_allocated == 1)
        need = (values * samples + 7) / 8;
    else
        return true; /* reported by check_pixel_format */

    unsigned long long have = element->getLength();
    if (have == need || (need % 2 == 1 && have == need + 1))
        return true;
    set_error(err, errlen,
              "pixel data is %llu bytes, but Rows %d x Columns %d x %d frame(s) x %llu "
              "sample(s) x %d bits = %llu bytes (truncated, or wrong Rows/Columns?)",
              have, hdr->rows, hdr->columns, hdr->frames, samples, hdr->bits_allocated, need);
    return false;
}

/* Is the two-letter code at p one of the value representations of the standard? */
bool is_vr_code(const unsigned char *p)
{
    static const char *const codes =
        "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
        "UL UN UR US UT UV";
    if (p[0] < 'A' || p[0] > 'Z' || p[1] < 'A' || p[1] > 'Z')
        return false;
    char code[3] = {(char)p[0], (char)p[1], 0};
    return strstr(codes, code) != NULL;
}

/* The groups a data set can start with: meta header (0002) up to image pixel (0028). */
bool plausible_first_group(unsigned group)
{
    return group >= 0x0002 && group <= 0x0028 && group % 2 == 0;
}

/*
 * A data set without preamble starts with one of the first groups, in either byte order,
 * followed by an explicit VR or a plausible implicit length.
 */
bool plausible_first_element(const unsigned char *b, long file_size)
{
    unsigned group_le = b[0] | (b[1] << 8);
    unsigned group_be = (b[0] << 8) | b[1];
    if (!plausible_first_group(group_le) && !plausible_first_group(group_be))
        return false;
    if (is_vr_code(b + 4))
        return true;
    unsigned long length = (unsigned long)b[4] | ((unsigned long)b[5] << 8) |
                           ((unsigned long)b[6] << 16) | ((unsigned long)b[7] << 24);
    return length <= 1024 && (long)length + 8 <= file_size;
}

/*
 * Copy the first frame of (decompressed) pixel data into int32, the way pydicom 2.3's
 * pixel_array does: native and RLE words are taken as unsigned or two's complement by
 * PixelRepresentation alone, without masking or sign extension from BitsStored; JPEG and
 * samples of signed data (DCT and lossless JPEG, not JPEG-LS) are sign-extended from
 * BitsStored (sign_bits), as its decoder for them does. Checked against pydicom on fixtures.
 */
dicom_status_t copy_first_frame(DcmDataset *ds, const dicom_header_t *hdr, int sign_bits,
                                int32_t **pixels, char *err, size_t errlen)
{
    size_t count = (size_t)hdr->rows * (size_t)hdr->columns;
    size_t bytes_per_sample = (size_t)hdr->bits_allocated / 8;
    size_t need = count * bytes_per_sample;

    DcmElement *element = NULL;
    if (ds->findAndGetElement(DCM_PixelData, element).bad() || element == NULL) {
        set_error(err, errlen, "no pixel data");
        return DICOM_NO_PIXELS;
    }

    void *raw = NULL;
    OFCondition got = EC_IllegalCall;
    if (hdr->bits_allocated == 8) {
        Uint8 *bytes = NULL;
        got = element->getUint8Array(bytes);
        raw = bytes;
    } else if (hdr->bits_allocated == 16) {
        Uint16 *words = NULL;
        got = element->getUint16Array(words);
        raw = words;
    } else {
        Uint32 *dwords = NULL;
        got = element->getUint32Array(dwords);
        raw = dwords;
        if (got.bad()) {
            /* 32-bit data read as OW/OB: reinterpret the bytes. */
            Uint8 *bytes = NULL;
            got = element->getUint8Array(bytes);
            raw = bytes;
        }
    }
    size_t have = raw != NULL ? element->getLength() : 0;
    if (got.bad()) {
        set_error(err, errlen, "cannot read pixel data: %s", got.text());
        return DICOM_READ_ERROR;
    }
    if (have < need) {
        set_error(err, errlen, "pixel data too short: %zu bytes, %dx%d at %d bits needs %zu",
                  have, hdr->columns, hdr->rows, hdr->bits_allocated, need);
        return DICOM_READ_ERROR;
    }

    int32_t *out = static_cast<int32_t *>(malloc(count * sizeof *out));
    if (out == NULL) {
        set_error(err, errlen, "out of memory for %zu pixels", count);
        return DICOM_READ_ERROR;
    }
    bool is_signed = hdr->pixel_representation == 1;
    if (hdr->bits_allocated == 8) {
        const uint8_t *src = static_cast<const uint8_t *>(raw);
        for (size_t i = 0; i < count; i++)
            out[i] = is_signed ? (int8_t)src[i] : src[i];
    } else if (hdr->bits_allocated == 16) {
        const uint16_t *src = static_cast<const uint16_t *>(raw);
        if (is_signed)
            for (size_t i = 0; i < count; i++)
                out[i] = (int16_t)src[i];
        else
            for (size_t i = 0; i < count; i++)
                out[i] = src[i];
    } else {
        const uint32_t *src = static_cast<const uint32_t *>(raw);
        for (size_t i = 0; i < count; i++) {
            if (!is_signed && src[i] > (uint32_t)INT32_MAX) {
                free(out);
                set_error(err, errlen, "unsigned 32-bit value %u does not fit", src[i]);
                return DICOM_UNSUPPORTED;
            }
            out[i] = (int32_t)src[i];
        }
    }
    if (is_signed && sign_bits > 0 && sign_bits < hdr->bits_allocated) {
        uint32_t sign = 1u << (sign_bits - 1), mask = (1u << sign_bits) - 1;
        for (size_t i = 0; i < count; i++) {
            uint32_t low = (uint32_t)out[i] & mask;
            out[i] = (int32_t)(low ^ sign) - (int32_t)sign;
        }
    }
    *pixels = out;
    return DICOM_OK;
}

/* The JPEG syntaxes of ISO 10918 (1.2.840.10008.1.2.4.50 to .70), not JPEG-LS or 2000. */
bool is_ijg_jpeg(const char *uid)
{
    static const char prefix[] = "1.2.840.10008.1.2.4.";
    if (strncmp(uid, prefix, sizeof prefix - 1) != 0)
        return false;
    int process = atoi(uid + sizeof prefix - 1);
    return process >= 50 && process <= 70;
}

/* Pixel layouts this reader turns into one grey value per pixel. */
dicom_status_t check_pixel_format(const dicom_header_t *hdr, char *err, size_t errlen)
{
    if (!hdr->has_pixel_data) {
        set_error(err, errlen, "no pixel data (SOP class %s)",
                  hdr->sop_class[0] ? hdr->sop_class : "unknown");
        return DICOM_NO_PIXELS;
    }
    if (hdr->samples_per_pixel != 1) {
        set_error(err, errlen, "colour image (%d samples per pixel, %s) is not supported",
                  hdr->samples_per_pixel, hdr->photometric);
        return DICOM_UNSUPPORTED;
    }
    if (hdr->bits_allocated != 8 && hdr->bits_allocated != 16 && hdr->bits_allocated != 32) {
        set_error(err, errlen, "BitsAllocated %d is not supported", hdr->bits_allocated);
        return DICOM_UNSUPPORTED;
    }
    if (hdr->rows <= 0 || hdr->columns <= 0 || hdr->rows > 65535 || hdr->columns > 65535) {
        set_error(err, errlen, "invalid image size %dx%d", hdr->columns, hdr->rows);
        return DICOM_READ_ERROR;
    }
    if (hdr->pixel_representation != 0 && hdr->pixel_representation != 1) {
        set_error(err, errlen, "invalid PixelRepresentation %d", hdr->pixel_representation);
        return DICOM_READ_ERROR;
    }
    return DICOM_OK;
}

/* dicom_sniff, telling an unreadable file (-1) apart from one that is not DICOM (0). */
int sniff_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    unsigned char head[132];
    size_t got = fread(head, 1, sizeof head, f);
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    fclose(f);

    if (got == sizeof head && memcmp(head + 128, "DICM", 4) == 0)
        return 1;
    return got >= 8 && plausible_first_element(head, size);
}

} // namespace

extern "C" int dicom_sniff(const char *path)
{
    return sniff_file(path) == 1;
}

namespace {

dicom_status_t read_file(const char *path, dicom_header_t *hdr, int32_t **pixels, char *err,
                         size_t errlen)
{
    int sniffed = sniff_file(path);
    if (sniffed < 0) {
        set_error(err, errlen, "cannot open: %s", strerror(errno));
        return DICOM_READ_ERROR;
    }
    if (sniffed == 0) {
        set_error(err, errlen, "not a DICOM file (no DICM marker, no DICOM element at start)");
        return DICOM_NOT_DICOM;
    }

    /*
     * Without pixels, large values (the pixel data) stay on disk: only the header is parsed.
     * With pixels, everything is read in one pass rather than reopening the file later.
     */
    DcmFileFormat file;
    Uint32 max_read = pixels != NULL ? 0xFFFFFFFEu : DCM_MaxReadLength;
    OFCondition loaded = file.loadFile(path, EXS_Unknown, EGL_noChange, max_read,
                                       ERM_autoDetect);
    if (loaded == EC_StreamNotifyClient) {
        set_error(err, errlen, "file ends early (truncated or corrupt): %s", loaded.text());
        return DICOM_READ_ERROR;
    }
    if (loaded.bad()) {
        set_error(err, errlen, "corrupt DICOM: %s", loaded.text());
        return DICOM_READ_ERROR;
    }
    fill_header(file, hdr);
    if (!read_rescale(file.getDataset(), hdr, err, errlen) ||
        !check_pixel_length(file.getDataset(), hdr, err, errlen))
        return DICOM_READ_ERROR;
    if (pixels == NULL)
        return DICOM_OK;

    dicom_status_t format = check_pixel_format(hdr, err, errlen);
    if (format != DICOM_OK)
        return format;

    DcmDataset *ds = file.getDataset();
    DcmXfer original(ds->getOriginalXfer());
    int sign_bits = 0;
    if (original.isEncapsulated()) {
        /* Decompress through the registered codecs; a syntax without one is named. */
        OFCondition decoded = ds->chooseRepresentation(EXS_LittleEndianExplicit, NULL);
        if (decoded.bad() || !ds->canWriteXfer(EXS_LittleEndianExplicit)) {
            /* DCMTK says "cannot change representation" when it has no codec at all. */
            bool no_codec = decoded.bad() && decoded == EC_CannotChangeRepresentation;
            set_error(err, errlen, "cannot decode transfer syntax %s (%s): %s",
                      hdr->transfer_syntax, hdr->transfer_syntax_name,
                      no_codec || decoded.good() ? "no decoder for it in this build"
                                                 : decoded.text());
            return no_codec ? DICOM_UNSUPPORTED : DICOM_READ_ERROR;
        }
        if (is_ijg_jpeg(original.getXferID()))
            sign_bits = hdr->bits_stored;
    }
    return copy_first_frame(ds, hdr, sign_bits, pixels, err, errlen);
}

} // namespace

extern "C" dicom_status_t dicom_read(const char *path, dicom_header_t *hdr, int32_t **pixels,
                                     char *err, size_t errlen)
{
    ensure_setup();
    memset(hdr, 0, sizeof *hdr);
    if (pixels != NULL)
        *pixels = NULL;
    set_error(err, errlen, "ok");

    /* A file that needs more memory than there is fails alone, not the whole program. */
    try {
        return read_file(path, hdr, pixels, err, errlen);
    } catch (const std::bad_alloc &) {
        if (pixels != NULL) {
            free(*pixels);
            *pixels = NULL;
        }
        set_error(err, errlen, "out of memory while reading it");
        return DICOM_READ_ERROR;
    }
}

extern "C" int dicom_write_ct(const char *path, const dicom_ct_slice_t *s, const int16_t *pixels,
                              char *err, size_t errlen)
{
    ensure_setup();
    if (s->rows <= 0 || s->columns <= 0 || s->rows > 65535 || s->columns > 65535) {
        set_error(err, errlen, "%s: invalid image size %dx%d", path, s->columns, s->rows);
        return -1;
    }

    DcmFileFormat file;
    DcmDataset *ds = file.getDataset();
    CtWriter w(ds);

    w.str(DCM_SOPClassUID, UID_CTImageStorage);
    w.str(DCM_SOPInstanceUID, s->sop_uid);
    w.str(DCM_StudyInstanceUID, s->study_uid);
    w.str(DCM_SeriesInstanceUID, s->series_uid);
    w.str(DCM_FrameOfReferenceUID, s->frame_of_reference_uid);
    w.str(DCM_SpecificCharacterSet, "ISO_IR 100");
    w.str(DCM_ImageType, "ORIGINAL\\PRIMARY\\AXIAL");
    w.str(DCM_Modality, "CT");
    w.str(DCM_PatientID, s->patient_id);
    w.str(DCM_PatientName, s->patient_name);
    w.str(DCM_StudyDate, s->study_date);
    w.str(DCM_SeriesDate, s->study_date);
    w.str(DCM_SeriesDescription, s->series_description);
    w.is(DCM_InstanceNumber, s->instance_number);
    w.is(DCM_SeriesNumber, 1);

    w.ds(DCM_ImagePositionPatient, s->position, 3);
    w.ds(DCM_ImageOrientationPatient, s->orientation, 6);
    w.ds(DCM_PixelSpacing, s->pixel_spacing, 2);
    w.ds(DCM_SliceThickness, &s->slice_thickness, 1);
    w.ds(DCM_RescaleSlope, &s->slope, 1);
    w.ds(DCM_RescaleIntercept, &s->intercept, 1);
    w.str(DCM_RescaleType, "HU");
    w.ds(DCM_WindowCenter, &s->window_center, 1);
    w.ds(DCM_WindowWidth, &s->window_width, 1);

    w.us(DCM_SamplesPerPixel, 1);
    w.str(DCM_PhotometricInterpretation, "MONOCHROME2");
    w.us(DCM_Rows, (Uint16)s->rows);
    w.us(DCM_Columns, (Uint16)s->columns);
    w.us(DCM_BitsAllocated, 16);
    w.us(DCM_BitsStored, 16);
    w.us(DCM_HighBit, 15);
    w.us(DCM_PixelRepresentation, 1);
    w.pixels(pixels, (unsigned long)s->rows * (unsigned long)s->columns);
    if (!w.good()) {
        set_error(err, errlen, "%s: cannot set %s: %s", path, w.failed_tag(), w.reason());
        return -1;
    }

    /* saveFile adds the meta header (with the 128-byte preamble) for the chosen syntax. */
    OFCondition saved = file.saveFile(path, EXS_LittleEndianExplicit, EET_UndefinedLength,
                                      EGL_recalcGL, EPD_noChange, 0, 0, EWM_createNewMeta);
    if (saved.bad()) {
        set_error(err, errlen, "%s: cannot write DICOM: %s", path, saved.text());
        return -1;
    }
    return 0;
}

extern "C" const char *dicom_library_version(void)
{
    return "DCMTK " PACKAGE_VERSION;
}
