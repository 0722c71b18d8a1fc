/*
 * Slice lists for cnntrain and embdump: the slices of folds.h5 (mkfolds) or the usable rows of
 * a dcm2jpg meta.h5, and the image file of a slice in a dcm2jpg folder.
 */
#ifndef ICH_SLICELIST_H
#define ICH_SLICELIST_H

#include <stddef.h>
#include <stdint.h>

#include "imgproc.h"
#include "labels.h"

typedef struct {
    size_t count;
    char **ids;     /* sorted by strcmp (folds.h5 order) */
    int8_t *labels; /* count x N_SUBTYPES: 0/1, -1 where the slice lacks that label */
    int32_t *fold;  /* 0..K-1; -1 for unlabelled (test) slices */
} slicelist_t;

/* Read /id, /label and /fold of a folds.h5; dies with EXIT_BAD_INPUT naming the file and the
 * dataset when a shape disagrees, the IDs are not strictly sorted (strcmp), a fold is below -1
 * or a label is not 0, 1 or -1 (naming the slice). */
void slicelist_read_folds(slicelist_t *list, const char *folds_path);

/* A fingerprint of the list's content (IDs, labels, folds): equal for equal files. */
uint64_t slicelist_fingerprint(const slicelist_t *list);

/*
 * The rows of a dcm2jpg meta.h5 whose image was made with the table's settings (status ok or
 * exists), sorted by ID, without labels (-1) or folds (-1). An ID on two such rows is
 * EXIT_BAD_INPUT naming it.
 */
void slicelist_read_meta(slicelist_t *list, const char *meta_path);

void slicelist_free(slicelist_t *list);

/* Are all six labels of a row 0 or 1? */
int slicelist_fully_labelled(const int8_t *label);

/* dir/<id>.jpg, else dir/<id>.ppm (heap string); dies with EXIT_BAD_INPUT when neither is a
 * file. */
char *slicelist_image_path(const char *dir, const char *id);

/* The crop modes by the names of cnntrain's --crop and its checkpoints' train_crop attribute. */
#define SLICELIST_CROP_CHOICES "intended|plain|none"
/* The mode named name, or -1 for another name. */
int slicelist_parse_crop(const char *name);

/* Dies with EXIT_USAGE naming option ("--fold") when fold is not -1 and is not below the
 * "folds" attribute of folds_path (a fold the file lacks would hold out nothing). */
void slicelist_require_fold(const char *folds_path, const char *option, int fold);

#endif
