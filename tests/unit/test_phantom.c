/*
 * Unit tests of common/phantom.c: intraparenchymal bleeds stay in the parenchyma, so that a
 * slice labelled intraparenchymal shows blood in the tissue, not in a ventricle (which would
 * make it intraventricular) nor against the skull.
 *
 * For many random heads, a blob is placed by phantom_add_lesion and rendered on slices through
 * it. The ventricles are found independently of the blob's geometry: the same head rendered
 * with every ventricle filled with blood, minus the healthy head. Where the blob changes the
 * image by 10 HU or more (the labelling threshold) must lie outside those ventricles and at
 * least 3 mm from bone.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "phantom.h"

#define HEADS 60
#define SIZE 96         /* pixels of the window around the blob */
#define SPACING 0.75    /* mm per pixel */
#define EVIDENCE_HU 10  /* PHANTOM_MIN_EVIDENCE_HU */
#define BONE_HU 300
#define BONE_CLEARANCE_PX 4 /* 3 mm */

static int failures;

static void check(int ok, const char *what)
{
    printf("%s  %s\n", ok ? "ok  " : "FAIL", what);
    failures += !ok;
}

static void render_axial(const phantom_head_t *head, const double centre[3], int16_t *stored,
                         int8_t label[N_SUBTYPES])
{
    phantom_plane_t plane = {.row_dir = {1, 0, 0}, .col_dir = {0, 1, 0}, .spacing = SPACING,
                             .size = SIZE};
    double half = 0.5 * (SIZE - 1) * SPACING;
    plane.origin[0] = centre[0] - half;
    plane.origin[1] = centre[1] - half;
    plane.origin[2] = centre[2];
    phantom_render(head, &plane, 77, stored, label);
}

/* Pixels whose 4 neighbours are all in the mask (the mask less one pixel at its edges). */
static void erode(const unsigned char *mask, unsigned char *out)
{
    for (int y = 0; y < SIZE; y++)
        for (int x = 0; x < SIZE; x++) {
            int i = y * SIZE + x;
            out[i] = mask[i] && x > 0 && x < SIZE - 1 && y > 0 && y < SIZE - 1 &&
                     mask[i - 1] && mask[i + 1] && mask[i - SIZE] && mask[i + SIZE];
        }
}

/* Pixels within r pixels (Chebyshev) of the mask. */
static void dilate(const unsigned char *mask, unsigned char *out, int r)
{
    memset(out, 0, SIZE * SIZE);
    for (int y = 0; y < SIZE; y++)
        for (int x = 0; x < SIZE; x++) {
            if (!mask[y * SIZE + x])
                continue;
            for (int dy = -r; dy <= r; dy++)
                for (int dx = -r; dx <= r; dx++) {
                    int yy = y + dy, xx = x + dx;
                    if (yy >= 0 && yy < SIZE && xx >= 0 && xx < SIZE)
                        out[yy * SIZE + xx] = 1;
                }
        }
}

int main(void)
{
    static int16_t healthy[SIZE * SIZE], bleed[SIZE * SIZE], flooded[SIZE * SIZE];
    static unsigned char ventricle[SIZE * SIZE], core[SIZE * SIZE], bone[SIZE * SIZE],
        near_bone[SIZE * SIZE], near_ventricle[SIZE * SIZE];
    int8_t label[N_SUBTYPES];
    int placed = 0, not_placed = 0, labelled_slices = 0, slices = 0, close_calls = 0;
    long in_ventricle = 0, by_bone = 0, ventricle_pixels = 0;

    for (int h = 0; h < HEADS; h++) {
        uint64_t rng = phantom_hash(2024, (uint64_t)h, 0, 0);
        phantom_head_t head;
        const double origin[3] = {0, 0, 40};
        phantom_head_random(&head, origin, &rng);
        head.yaw = 0; /* head frame = patient frame shifted by the centre */
        phantom_head_t with_blob = head;
        if (phantom_add_lesion(&with_blob, PH_INTRAPARENCHYMAL, &rng) != 0) {
            not_placed++;
            continue;
        }
        placed++;
        const phantom_lesion_t *blob = &with_blob.lesions[0];

        /* Every ventricle full of dense blood: what changes is the ventricles. */
        phantom_head_t full = head;
        full.nlesions = 1;
        full.lesions[0] = (phantom_lesion_t){.subtype = PH_INTRAVENTRICULAR, .hu = 80,
                                             .side = 0, .fill = 1.0};

        for (int level = -1; level <= 1; level++) {
            double centre[3];
            for (int k = 0; k < 3; k++)
                centre[k] = head.center[k] + blob->center[k];
            centre[2] += 0.5 * level * blob->radius[2];
            render_axial(&head, centre, healthy, label);
            render_axial(&full, centre, flooded, label);
            render_axial(&with_blob, centre, bleed, label);
            slices++;
            labelled_slices += label[PH_INTRAPARENCHYMAL] == 1;

            unsigned char filled[SIZE * SIZE];
            for (int i = 0; i < SIZE * SIZE; i++) {
                filled[i] = flooded[i] - healthy[i] >= EVIDENCE_HU;
                core[i] = bleed[i] - healthy[i] >= EVIDENCE_HU;
                bone[i] = healthy[i] + PHANTOM_INTERCEPT >= BONE_HU;
                ventricle_pixels += filled[i];
            }
            erode(filled, ventricle);
            dilate(bone, near_bone, BONE_CLEARANCE_PX);
            dilate(filled, near_ventricle, 8);
            int close = 0;
            for (int i = 0; i < SIZE * SIZE; i++) {
                in_ventricle += core[i] && ventricle[i];
                by_bone += core[i] && near_bone[i];
                close |= core[i] && near_ventricle[i];
            }
            close_calls += close;
        }
    }

    printf("%d of %d blobs placed; %d of %d slices through them labelled intraparenchymal; "
           "%ld ventricle pixels seen; %d slices with blood within 6 mm of a ventricle\n",
           placed, HEADS, labelled_slices, slices, ventricle_pixels, close_calls);
    printf("blob pixels (change >= %d HU) inside a ventricle: %ld; within 3 mm of bone: %ld\n",
           EVIDENCE_HU, in_ventricle, by_bone);
    check(not_placed == 0, "every intraparenchymal lesion found a place");
    check(labelled_slices >= slices * 2 / 3 && ventricle_pixels > 1000,
          "the blobs and the ventricles are visible on the test slices");
    check(in_ventricle == 0, "no intraparenchymal blood inside a ventricle");
    check(by_bone == 0, "no intraparenchymal blood within 3 mm of bone");
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all phantom checks passed\n");
    return 0;
}
