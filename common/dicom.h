/*
 * DICOM reading and writing on DCMTK, behind a plain C interface (implemented in dicom.cpp,
 * the project's only C++ file).
 */
#ifndef ICH_DICOM_H
#define ICH_DICOM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DICOM_UID_MAX 72  /* UIDs are at most 64 characters; RSNA IDs are shorter */
#define DICOM_CS_MAX 68   /* code strings and transfer syntax UIDs */

typedef struct {
    char sop_uid[DICOM_UID_MAX];     /* SOPInstanceUID: the slice ID everywhere */
    char sop_class[DICOM_CS_MAX];    /* SOPClassUID */
    char patient_id[DICOM_UID_MAX];  /* PatientID (LO, up to 64 characters) */
    char study_uid[DICOM_UID_MAX];
    char series_uid[DICOM_UID_MAX];
    char modality[DICOM_CS_MAX];
    char photometric[DICOM_CS_MAX];      /* PhotometricInterpretation */
    char transfer_syntax[DICOM_CS_MAX];  /* UID of the file's transfer syntax */
    char transfer_syntax_name[DICOM_CS_MAX * 2];
    char image_type[DICOM_CS_MAX * 2];   /* ImageType, values joined by backslashes */
    int is_localizer;                    /* ImageType holds LOCALIZER (a scout image) */
    int is_image;                        /* an image SOP class, or Rows/Columns present */
    int instance_number;                 /* 0 when absent */

    double position[3];      /* ImagePositionPatient, NaN when absent */
    double orientation[6];   /* ImageOrientationPatient, NaN when absent */
    double pixel_spacing[2]; /* PixelSpacing (row, column), NaN when absent */
    double slope, intercept; /* RescaleSlope/Intercept; 1 and 0 when absent (has_rescale 0) */
    int has_rescale;
    double window_center, window_width; /* first values of the window tags, NaN when absent */

    int rows, columns;
    int bits_allocated, bits_stored, high_bit, pixel_representation;
    int samples_per_pixel;
    int frames;          /* NumberOfFrames, 1 when absent */
    int has_pixel_data;  /* PixelData present */
} dicom_header_t;

typedef enum {
    DICOM_OK = 0,
    DICOM_NOT_DICOM,     /* not a DICOM file at all */
    DICOM_READ_ERROR,    /* cannot open, truncated, corrupt, or inconsistent values */
    DICOM_UNSUPPORTED,   /* valid, but a transfer syntax or pixel format we cannot decode */
    DICOM_NO_PIXELS,     /* a non-image object (SR, RTPLAN, ...) */
} dicom_status_t;

/* Quick sniff: "DICM" at offset 128, or a plausible first element at offset 0. */
int dicom_sniff(const char *path);

/*
 * Read the header, and the pixels when pixels != NULL: the stored values of the first frame
 * (rows*columns, decompressed, interpreted with BitsStored and PixelRepresentation exactly as
 * pydicom's pixel_array), in a new malloc'd int32 buffer. On failure returns the status with a
 * one-line reason in err (the transfer syntax is named when it cannot be decoded).
 * Also a read error, even for the header alone: a RescaleSlope or RescaleIntercept that is
 * not one finite decimal number (or a slope of 0), and native pixel data whose length is not
 * Rows x Columns x frames x samples x bytes (one padding byte to an even length allowed).
 */
dicom_status_t dicom_read(const char *path, dicom_header_t *hdr, int32_t **pixels, char *err,
                          size_t errlen);

/* Write a single-frame CT Image Storage object, Explicit VR Little Endian, with preamble. */
typedef struct {
    const char *sop_uid, *study_uid, *series_uid, *frame_of_reference_uid;
    const char *patient_id, *patient_name, *study_date, *series_description;
    int instance_number;
    double position[3], orientation[6], pixel_spacing[2], slice_thickness;
    double slope, intercept, window_center, window_width;
    int rows, columns;
} dicom_ct_slice_t;

int dicom_write_ct(const char *path, const dicom_ct_slice_t *slice, const int16_t *pixels,
                   char *err, size_t errlen);

/* Name of the DCMTK version linked, for --version and logs. */
const char *dicom_library_version(void);

#ifdef __cplusplus
}
#endif

#endif
