/*
 * The image loader of cnntrain and embdump: worker threads read, prepare (crop, pad, resize)
 * and, for training, augment the images of the next batch while the caller computes on the
 * current one. Two batch buffers alternate (double buffering).
 *
 * Use: loader_submit(batch 0); then for each batch b: loader_submit(batch b + 1) if there is
 * one, loader_wait() -> batch b, compute. A buffer returned by loader_wait stays valid until
 * the second loader_submit after it, so at most two batches are in flight.
 *
 * Augmentation is drawn from img_rng_seed_stream(seed, epoch, image index): an image's
 * augmentation depends neither on the thread nor on the batch it lands in (resumable).
 */
#ifndef ICH_LOADER_H
#define ICH_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "imgproc.h"

typedef struct {
    const char *const *paths; /* image file of each index */
    size_t count;
    int size;        /* output side */
    img_crop_t crop;
    int augment;     /* 1: training augmentation (img_aug_defaults); 0: none */
    uint64_t seed;   /* of the augmentation streams */
    int threads;     /* worker threads (at least 1) */
    int max_batch;   /* images per batch at most */
    int images_checked; /* 1: loader_check_images already read these paths (not again) */
} loader_config_t;

typedef struct loader loader_t;

/*
 * Read and prepare every image of config (NULL paths are skipped) on config->threads threads,
 * as a batch would: a missing, truncated or otherwise unreadable image ends the program with
 * EXIT_BAD_INPUT naming the file and the problem (the first in index order, and how many
 * others failed), before any work that such an image would waste. loader_create calls it;
 * a config whose images_checked is 1 is not read again.
 */
void loader_check_images(const loader_config_t *config);

/* The same reading, reporting instead of ending: how many images are unreadable (0: none),
 * with the message loader_check_images would die with in err (LOADER_MESSAGE_MAX bytes
 * hold it whole). */
enum { LOADER_MESSAGE_MAX = 640 };
size_t loader_find_bad_images(const loader_config_t *config, char *err, size_t err_len);

/* Checks every image (loader_check_images), then starts the coordinating thread; dies when
 * memory runs out. */
loader_t *loader_create(const loader_config_t *config);

/* Queue a batch of n image indices (n <= max_batch); epoch selects the augmentation streams.
 * Blocks while two batches are already queued and not yet waited for. */
void loader_submit(loader_t *loader, const size_t *indices, int n, uint64_t epoch);

/*
 * The oldest submitted batch: n x 3 x size x size floats (host memory), normalised.
 * *wait_seconds (if not NULL) receives the time spent blocked. An unreadable image ends the
 * program with EXIT_BAD_INPUT and a message naming the file.
 */
const float *loader_wait(loader_t *loader, int *n, double *wait_seconds);

void loader_free(loader_t *loader);

#endif
