/* Double-buffered batch loading on worker threads (loader.h). */
#include "loader.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "exitcodes.h"
#include "log.h"
#include "pool.h"

#define LOADER_SLOTS 2
#define LOADER_ERR_MAX 512
_Static_assert(LOADER_MESSAGE_MAX >= LOADER_ERR_MAX + 64, "room for the count of failures");

typedef struct {
    size_t *indices;
    int n;
    uint64_t epoch;
    float *data;
    int ready;
    char error[LOADER_ERR_MAX]; /* first failure of the batch; empty when none */
} loader_slot_t;

struct loader {
    loader_config_t config;
    img_aug_config_t aug;
    size_t image_floats;
    loader_slot_t slots[LOADER_SLOTS];
    long submitted, loaded, consumed; /* batch counters; slot = counter % LOADER_SLOTS */
    int quit;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    pthread_t coordinator;
    img_workspace_t *workspaces; /* one per worker thread */
    uint8_t **prepared;          /* one size x size x 3 image per worker thread */
    loader_slot_t *current;      /* the slot the workers fill */
};

/* One workspace and one prepared size x size x 3 image per worker thread. */
static void thread_buffers_create(int threads, int size, img_workspace_t **workspaces,
                                  uint8_t ***prepared)
{
    *workspaces = xcalloc((size_t)threads, sizeof **workspaces);
    *prepared = xmalloc((size_t)threads * sizeof **prepared);
    for (int t = 0; t < threads; t++)
        (*prepared)[t] = xmalloc((size_t)size * size * IMG_CHANNELS);
}

static void thread_buffers_free(int threads, img_workspace_t *workspaces, uint8_t **prepared)
{
    for (int t = 0; t < threads; t++) {
        img_workspace_free(&workspaces[t]);
        free(prepared[t]);
    }
    free(workspaces);
    free(prepared);
}

static void load_one(size_t k, int thread, void *ctx)
{
    loader_t *l = ctx;
    loader_slot_t *slot = l->current;
    size_t index = slot->indices[k];
    const loader_config_t *c = &l->config;
    uint8_t *rgb = l->prepared[thread];
    float *chw = slot->data + k * l->image_floats;
    char err[LOADER_ERR_MAX];

    if (img_prepare_file(c->paths[index], c->crop, c->size, rgb, &l->workspaces[thread], err,
                         sizeof err) != 0) {
        pthread_mutex_lock(&l->lock);
        if (!slot->error[0])
            snprintf(slot->error, sizeof slot->error, "%s", err);
        pthread_mutex_unlock(&l->lock);
        memset(chw, 0, l->image_floats * sizeof *chw);
        return;
    }

    img_aug_t aug = {0};
    if (c->augment) {
        img_rng_t rng;
        img_rng_seed_stream(&rng, c->seed, slot->epoch, index);
        img_aug_sample(&l->aug, &rng, &aug);
    }
    img_augment(rgb, c->size, c->size, &aug, chw, &l->workspaces[thread]);
}

static void *coordinate(void *arg)
{
    loader_t *l = arg;
    for (;;) {
        pthread_mutex_lock(&l->lock);
        while (!l->quit && l->loaded == l->submitted)
            pthread_cond_wait(&l->changed, &l->lock);
        if (l->quit) {
            pthread_mutex_unlock(&l->lock);
            return NULL;
        }
        loader_slot_t *slot = &l->slots[l->loaded % LOADER_SLOTS];
        pthread_mutex_unlock(&l->lock);

        l->current = slot;
        parallel_for(l->config.threads, (size_t)slot->n, load_one, l);

        pthread_mutex_lock(&l->lock);
        slot->ready = 1;
        l->loaded++;
        pthread_cond_broadcast(&l->changed);
        pthread_mutex_unlock(&l->lock);
    }
}

/* The pre-check's shared state: per-thread buffers and the first failure by index. */
typedef struct {
    const loader_config_t *config;
    img_workspace_t *workspaces;
    uint8_t **prepared;
    pthread_mutex_t lock;
    size_t failed, first_failed;
    char first_error[LOADER_ERR_MAX];
} image_check_t;

static void check_one(size_t index, int thread, void *ctx)
{
    image_check_t *c = ctx;
    const loader_config_t *config = c->config;
    if (!config->paths[index])
        return;
    char err[LOADER_ERR_MAX];
    if (img_prepare_file(config->paths[index], config->crop, config->size,
                         c->prepared[thread], &c->workspaces[thread], err, sizeof err) == 0)
        return;

    pthread_mutex_lock(&c->lock);
    if (!c->failed++ || index < c->first_failed) {
        c->first_failed = index;
        snprintf(c->first_error, sizeof c->first_error, "%s", err);
    }
    pthread_mutex_unlock(&c->lock);
}

size_t loader_find_bad_images(const loader_config_t *config, char *err, size_t err_len)
{
    if (config->images_checked || !config->count)
        return 0;

    int threads = config->threads < 1 ? 1 : config->threads;
    image_check_t c = {.config = config};
    thread_buffers_create(threads, config->size, &c.workspaces, &c.prepared);
    pthread_mutex_init(&c.lock, NULL);

    double start = time_now();
    parallel_for(threads, config->count, check_one, &c);

    thread_buffers_free(threads, c.workspaces, c.prepared);
    pthread_mutex_destroy(&c.lock);
    if (c.failed > 1)
        snprintf(err, err_len, "%s (and %zu more unreadable images)", c.first_error,
                 c.failed - 1);
    else if (c.failed)
        snprintf(err, err_len, "%s", c.first_error);
    if (c.failed)
        return c.failed;

    size_t images = 0;
    for (size_t i = 0; i < config->count; i++)
        images += config->paths[i] != NULL;
    log_info("read %zu images in %.2f s on %d thread%s", images, time_now() - start, threads,
             threads > 1 ? "s" : "");
    return 0;
}

void loader_check_images(const loader_config_t *config)
{
    char err[LOADER_MESSAGE_MAX];
    if (loader_find_bad_images(config, err, sizeof err))
        die(EXIT_BAD_INPUT, "%s", err);
}

loader_t *loader_create(const loader_config_t *config)
{
    loader_check_images(config);

    loader_t *l = xcalloc(1, sizeof *l);
    l->config = *config;
    if (l->config.threads < 1)
        l->config.threads = 1;
    l->aug = img_aug_defaults();
    l->image_floats = (size_t)IMG_CHANNELS * config->size * config->size;
    for (int s = 0; s < LOADER_SLOTS; s++) {
        l->slots[s].indices = xmalloc((size_t)config->max_batch * sizeof(size_t));
        l->slots[s].data = xmalloc((size_t)config->max_batch * l->image_floats * sizeof(float));
    }
    thread_buffers_create(l->config.threads, config->size, &l->workspaces, &l->prepared);
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->changed, NULL);
    if (pthread_create(&l->coordinator, NULL, coordinate, l) != 0)
        die(EXIT_INTERNAL, "loader: cannot start a thread");
    return l;
}

void loader_submit(loader_t *l, const size_t *indices, int n, uint64_t epoch)
{
    if (n < 1 || n > l->config.max_batch)
        die(EXIT_INTERNAL, "loader: batch of %d images (1..%d)", n, l->config.max_batch);
    pthread_mutex_lock(&l->lock);
    /* The slot is free once the batch two submissions back was waited for. */
    while (l->submitted - l->consumed >= LOADER_SLOTS)
        pthread_cond_wait(&l->changed, &l->lock);
    loader_slot_t *slot = &l->slots[l->submitted % LOADER_SLOTS];
    memcpy(slot->indices, indices, (size_t)n * sizeof *indices);
    slot->n = n;
    slot->epoch = epoch;
    slot->ready = 0;
    slot->error[0] = '\0';
    l->submitted++;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
}

const float *loader_wait(loader_t *l, int *n, double *wait_seconds)
{
    double start = time_now();
    pthread_mutex_lock(&l->lock);
    if (l->consumed == l->submitted)
        die(EXIT_INTERNAL, "loader: wait without a submitted batch");
    loader_slot_t *slot = &l->slots[l->consumed % LOADER_SLOTS];
    while (!slot->ready)
        pthread_cond_wait(&l->changed, &l->lock);
    l->consumed++;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
    if (wait_seconds)
        *wait_seconds = time_now() - start;
    if (slot->error[0])
        die(EXIT_BAD_INPUT, "%s", slot->error);
    *n = slot->n;
    return slot->data;
}

void loader_free(loader_t *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->lock);
    l->quit = 1;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->coordinator, NULL);
    for (int s = 0; s < LOADER_SLOTS; s++) {
        free(l->slots[s].indices);
        free(l->slots[s].data);
    }
    thread_buffers_free(l->config.threads, l->workspaces, l->prepared);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->changed);
    free(l);
}
