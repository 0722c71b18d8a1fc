/*
 * A synthetic head for CT slices: scalp, skull, brain (grey and white matter, sulci, fissure,
 * deep nuclei, ventricles) and hemorrhages of the five challenge subtypes, all defined in 3-D
 * millimetres so that neighbouring slices agree. Rendering one slice gives stored int16 values
 * (HU = stored - 1024) and the slice's labels: a lesion labels a slice when it visibly changes
 * enough of it.
 */
#ifndef ICH_PHANTOM_H
#define ICH_PHANTOM_H

#include <stddef.h>
#include <stdint.h>

#include "labels.h"

#define PHANTOM_MAX_LESIONS 4
#define PHANTOM_INTERCEPT (-1024.0) /* HU = stored + PHANTOM_INTERCEPT */

/* Subtype indices follow SUBTYPE_NAMES (labels.h). */
enum {
    PH_EPIDURAL = 0,
    PH_INTRAPARENCHYMAL = 1,
    PH_INTRAVENTRICULAR = 2,
    PH_SUBARACHNOID = 3,
    PH_SUBDURAL = 4,
};

typedef struct {
    int subtype;
    double hu; /* density of the blood */
    /* Along the skull (epidural, subdural, subarachnoid): the centre as azimuth and
     * elevation (radians, in the head's normalised frame), angular half extents, and the
     * greatest thickness below the inner table (mm). */
    double azimuth, elevation, half_azimuth, half_elevation, thickness;
    /* In the tissue (intraparenchymal): centre and semi-axes (mm), shape irregularity. */
    double center[3], radius[3], lumps[3];
    /* In the ventricles: -1 right, +1 left, 0 both; fraction of the ventricle filled from
     * its dependent (posterior) end. */
    int side;
    double fill;
} phantom_lesion_t;

typedef struct {
    /* Pose in patient coordinates (LPS, mm): the head's centre and its turn about z. */
    double center[3], yaw;
    double axes[3];        /* semi-axes of the scalp's outer surface (x, y, z) */
    double scalp, skull;   /* thicknesses (mm) at the vertex; the skull thickens lower down */
    double grey, white, csf, bone; /* tissue densities (HU) */
    double sulcus_phase[3];
    double ventricle_scale;
    int nlesions;
    phantom_lesion_t lesions[PHANTOM_MAX_LESIONS];
} phantom_head_t;

/* One image plane in patient coordinates (what ImagePositionPatient etc. describe). */
typedef struct {
    double origin[3];  /* centre of the first pixel */
    double row_dir[3]; /* unit step along a row (next column) */
    double col_dir[3]; /* unit step down a column (next row) */
    double spacing;    /* mm between pixel centres, both directions */
    int size;          /* rows = columns */
} phantom_plane_t;

/* splitmix64: the generator behind every random choice (small, seedable, splittable). */
uint64_t phantom_rng_next(uint64_t *state);
double phantom_rng_uniform(uint64_t *state, double lo, double hi);
/* A well-mixed 64-bit hash of a seed and up to three indices, for independent streams. */
uint64_t phantom_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);

/* A random healthy head centred near center (patient mm); deterministic for the state. */
void phantom_head_random(phantom_head_t *head, const double center[3], uint64_t *rng);
/*
 * Add a random lesion of a subtype; returns 0, or -1 when the head is full or (very rarely) no
 * place was found. Intraparenchymal blood is placed in the parenchyma only: at least 2 mm from
 * every ventricle and 4 mm below the brain's surface.
 */
int phantom_add_lesion(phantom_head_t *head, int subtype, uint64_t *rng);

/*
 * Render one slice into stored (size*size int16, row-major; HU = stored - 1024, -2000 outside
 * the circular field of view) with noise seeded by noise_seed. label[k] (k < 5) is 1 when a
 * lesion of subtype k changes at least PHANTOM_MIN_AREA_MM2 of the slice (and two pixels) by
 * PHANTOM_MIN_EVIDENCE_HU or more; label[5] ("any") is their maximum. Thread-safe.
 */
#define PHANTOM_MIN_EVIDENCE_HU 10.0
#define PHANTOM_MIN_AREA_MM2 10.0
void phantom_render(const phantom_head_t *head, const phantom_plane_t *plane,
                    uint64_t noise_seed, int16_t *stored, int8_t label[N_SUBTYPES]);

#endif
