/*
 * cnntrain: train the slice classifier (reference-method.md stage 3) on the JPEGs of dcm2jpg
 * with the labels and folds of mkfolds. One checkpoint per epoch and one every --save-every
 * steps; --resume continues from the newest complete one.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "dist.h"
#include "exitcodes.h"
#include "fsutil.h"
#include "h5io.h"
#include "labels.h"
#include "loader.h"
#include "log.h"
#include "metric.h"
#include "nn/checkpoint.h"
#include "nn/lossscale.h"
#include "nn/mixed.h"
#include "nn/nn.h"
#include "nn/resnext.h"
#include "opt.h"
#include "pool.h"
#include "slicelist.h"

typedef struct {
    const char *out_dir, *arch, *init, *crop, *precision, *device;
    int fold, size, batch, micro_batch, epochs, threads, save_every, log_every, resume, force;
    double lr;
    long long seed;
} train_options_t;

/* The slices of folds.h5 with their image files, split into training and validation. */
typedef struct {
    size_t count;
    char **ids;
    char **paths;
    int8_t *labels; /* count x N_SUBTYPES */
    size_t *train, *val;
    size_t n_train, n_val;
    size_t n_epoch; /* training slices used per epoch (n_train, or one fewer: see main) */
    slicelist_t list;
} dataset_t;

/* Training rows: labelled, fold >= 0 and not the held-out one; validation: fold == held. */
static void dataset_load(dataset_t *d, const char *folds_path, const char *image_dir, int held)
{
    slicelist_read_folds(&d->list, folds_path);
    d->count = d->list.count;
    d->ids = d->list.ids;
    d->labels = d->list.labels;
    const int32_t *fold = d->list.fold;

    d->paths = xcalloc(d->count ? d->count : 1, sizeof *d->paths);
    d->train = xmalloc((d->count ? d->count : 1) * sizeof *d->train);
    d->val = xmalloc((d->count ? d->count : 1) * sizeof *d->val);
    size_t partial = 0;
    for (size_t i = 0; i < d->count; i++) {
        if (fold[i] < 0)
            continue;
        if (!slicelist_fully_labelled(d->labels + i * N_SUBTYPES)) {
            partial++;
            continue;
        }
        int is_val = held >= 0 && fold[i] == held;
        d->paths[i] = slicelist_image_path(image_dir, d->ids[i]);
        if (is_val)
            d->val[d->n_val++] = i;
        else
            d->train[d->n_train++] = i;
    }
    if (partial)
        log_warn("%s: %zu labelled slice%s some of the six labels; skipped", folds_path,
                 partial, partial == 1 ? " lacks" : "s lack");
    if (!d->n_train)
        die(EXIT_BAD_INPUT, "%s: no training slices outside fold %d", folds_path, held);
}

/* Weighted log loss of predicting each label's training prevalence on the validation rows. */
static double prevalence_baseline(const dataset_t *d)
{
    double prevalence[N_SUBTYPES];
    metric_prevalence(d->labels, d->train, d->n_train, prevalence);
    int8_t *label = xmalloc(d->n_val * N_SUBTYPES);
    for (size_t k = 0; k < d->n_val; k++)
        memcpy(&label[k * N_SUBTYPES], &d->labels[d->val[k] * N_SUBTYPES], N_SUBTYPES);
    metric_result_t r;
    metric_score_constant(prevalence, label, d->n_val, &r);
    free(label);
    return r.score;
}

/* ---- the model and its training state ---- */

typedef struct {
    nn_backend_t *be;
    resnext_t *model;
    nn_adam_t adam;
    float *accum, *zeros;  /* backend: accumulated gradients; zeros to start the sum */
    float *input;          /* backend: one micro-batch of images */
    float *labels;         /* backend: one micro-batch of labels */
    float *host_labels, *host_dlogits, *host_logits;
    int micro;
    /* fp16: the loss gradient is scaled by S and the step skipped on overflow. */
    int loss_scaling;
    nn_lossscale_t scaler;
    int skipped_in_row; /* overflows in a row: too many means fp16 cannot train this model */
} trainer_t;

/* fp16 steps skipped in a row before the run stops: GradScaler would go on halving S for
 * ever; 40 halvings take S from 65536 below 1e-7, where no gradient survives anyway. */
enum { MAX_SKIPPED_IN_ROW = 40 };

static nn_tensor_t flat(float *data, size_t count)
{
    nn_tensor_t t = {.data = data, .n = 1, .c = (int)count, .h = 1, .w = 1};
    return t;
}

static void trainer_init(trainer_t *t, const train_options_t *o)
{
    /* Under mpirun each rank takes the GPU of its local rank. */
    const char *device = dist_device_for_rank(o->device);
    char why[512];
    t->be = nn_backend_open(device, why, sizeof why);
    if (!t->be)
        die(EXIT_USAGE, "--device %s: %s", device, why);
    t->model = resnext_create(t->be, o->arch, N_SUBTYPES);
    /* Weights, gradients and moments in the order the backend computes in: two weight
     * reorders fewer per convolution and step (bench/README.md); checkpoints stay in
     * PyTorch's order. */
    resnext_set_native_weights(t->model, 1);
    nn_paramset_t *ps = &t->model->ps;
    nn_params_alloc_adam(ps);
    resnext_set_precision(t->model,
                          nn_mixed_precision_setup(t->be, o->precision, "--precision"));
    t->loss_scaling = !strcmp(o->precision, "fp16");
    nn_lossscale_init(&t->scaler);
    t->adam = (nn_adam_t){o->lr, 0.9, 0.999, 1e-8, 0.0};
    t->micro = o->micro_batch;

    nn_backend_t *be = t->be;
    size_t bytes = ps->param_count * sizeof(float);
    t->accum = be->alloc(be, bytes);
    t->zeros = be->alloc(be, bytes);
    float *host_zeros = xcalloc(ps->param_count, sizeof(float));
    be->to_device(be, t->zeros, host_zeros, bytes);
    free(host_zeros);
    size_t image = (size_t)IMG_CHANNELS * o->size * o->size;
    t->input = be->alloc(be, (size_t)t->micro * image * sizeof(float));
    t->labels = be->alloc(be, (size_t)t->micro * N_SUBTYPES * sizeof(float));
    t->host_labels = xmalloc((size_t)t->micro * N_SUBTYPES * sizeof(float));
    t->host_dlogits = xmalloc((size_t)t->micro * N_SUBTYPES * sizeof(float));
    t->host_logits = xmalloc((size_t)t->micro * N_SUBTYPES * sizeof(float));
}

static void trainer_free(trainer_t *t)
{
    nn_backend_t *be = t->be;
    be->release(be, t->accum);
    be->release(be, t->zeros);
    be->release(be, t->input);
    be->release(be, t->labels);
    free(t->host_labels);
    free(t->host_dlogits);
    free(t->host_logits);
    resnext_free(t->model);
    be->destroy(be);
}

/* Forward n images of size x size (host memory) into t->host_logits. */
static void forward_micro(trainer_t *t, const float *images, int n, int size, int training)
{
    nn_backend_t *be = t->be;
    size_t floats = (size_t)n * IMG_CHANNELS * size * size;
    nn_upload_batch(be, t->input, images, floats * sizeof(float));
    nn_tensor_t x = {.data = t->input, .n = n, .c = IMG_CHANNELS, .h = size, .w = size};
    resnext_forward(t->model, &x, training);
}

/*
 * One optimizer step over a batch of n images, of which this rank holds `mine` (all of them
 * without mpirun), in micro-batches: each micro-batch's loss gradient is scaled by its share
 * of the whole batch so that the gradients summed over micro-batches and ranks are those of
 * the batch mean; every rank then takes the same Adam step, Adam's step count being
 * adam_step. Returns the batch's mean loss (NaN or infinite when it went wrong on any rank).
 * *taken says whether the step was taken: in fp16 an overflow (in the gradients or already in
 * the loss) skips it, as GradScaler does, and lowers the loss scale.
 */
static double train_step(trainer_t *t, const float *images, const int8_t *const *labels,
                         int mine, int n, int size, int64_t adam_step, int *taken)
{
    nn_backend_t *be = t->be;
    nn_paramset_t *ps = &t->model->ps;
    size_t image = (size_t)IMG_CHANNELS * size * size;
    nn_tensor_t accum = flat(t->accum, ps->param_count);
    nn_tensor_t grads = flat(ps->grads, ps->param_count);
    nn_tensor_t zeros = flat(t->zeros, ps->param_count);
    double loss = 0;

    for (int start = 0; start < mine; start += t->micro) {
        int m = mine - start < t->micro ? mine - start : t->micro;
        forward_micro(t, images + (size_t)start * image, m, size, 1);

        for (int k = 0; k < m; k++)
            for (int j = 0; j < N_SUBTYPES; j++)
                t->host_labels[k * N_SUBTYPES + j] = labels[start + k][j];
        nn_upload_batch(be, t->labels, t->host_labels, (size_t)m * N_SUBTYPES * sizeof(float));
        float *dlogits = t->model->dlogits.data;
        double share = (double)m / n;
        loss += share * be->bce_loss(be, t->model->logits.data, t->labels, m, dlogits);

        /* Backward is linear in dlogits: scaling it scales this micro-batch's gradients
         * (by the loss scale too in fp16, undone before the step). */
        double factor = share * (t->loss_scaling ? t->scaler.scale : 1.0);
        size_t dbytes = (size_t)m * N_SUBTYPES * sizeof(float);
        be->to_host(be, t->host_dlogits, dlogits, dbytes);
        for (int k = 0; k < m * N_SUBTYPES; k++)
            t->host_dlogits[k] = (float)(t->host_dlogits[k] * factor);
        nn_upload_batch(be, dlogits, t->host_dlogits, dbytes);
        resnext_backward(t->model, dlogits);
        be->add(be, &grads, start == 0 ? &zeros : &accum, &accum);
    }
    if (mine == 0) /* a short last batch can leave a rank without images */
        be->add(be, &zeros, &zeros, &accum);

    dist_allreduce_backend(be, t->accum, ps->param_count);
    dist_allreduce_sum_f64(&loss, 1);
    *taken = 0;

    /* After the sums over ranks, so that every rank takes the same decision. */
    int overflow = 0;
    if (t->loss_scaling && !isfinite(loss))
        overflow = !nn_lossscale_update(&t->scaler, 1);
    else if (!isfinite(loss))
        return loss;
    else if (t->loss_scaling)
        overflow = !nn_lossscale_unscale(&t->scaler, be, t->accum, ps->param_count);
    if (overflow) {
        t->skipped_in_row++;
        log_info("fp16 %s overflowed: step skipped, loss scale now %g",
                 isfinite(loss) ? "gradients" : "loss", t->scaler.scale);
        if (t->skipped_in_row >= MAX_SKIPPED_IN_ROW)
            die(EXIT_INTERNAL, "fp16 overflowed %d steps in a row (loss scale now %g): "
                "stopped; train this model in bf16 or fp32", t->skipped_in_row,
                t->scaler.scale);
        return loss;
    }
    t->skipped_in_row = 0;

    be->adam_step(be, &t->adam, adam_step, ps->params, t->accum, ps->adam_m, ps->adam_v,
                  ps->param_count);
    *taken = 1;
    return loss;
}

static double sigmoid(double z)
{
    return 1.0 / (1.0 + exp(-z));
}

/*
 * The challenge metric of the model (eval mode) on the validation slices, on rank 0 (NaN on
 * the others). Each rank predicts a run of whole micro-batches with rank 0's batch norm
 * statistics, those its checkpoint keeps; rank 0 gathers the rows in their order.
 */
static double validate(trainer_t *t, const dataset_t *d, loader_t *loader, int size)
{
    size_t n = d->n_val, micro = (size_t)t->micro;
    if (dist_size() > 1) {
        nn_paramset_t *ps = &t->model->ps;
        dist_broadcast_backend(t->be, ps->buffers, ps->buffer_count, 0);
        t->be->weights_changed(t->be);
    }
    dist_range_t own = dist_share(n, micro);
    size_t mine = own.end - own.begin;
    double *mine_prob = xmalloc((mine ? mine : 1) * N_SUBTYPES * sizeof *mine_prob);
    size_t batches = (mine + micro - 1) / micro;
    for (size_t b = 0; b <= batches; b++) {
        if (b < batches) {
            size_t first = b * micro;
            int m = (int)(mine - first < micro ? mine - first : micro);
            loader_submit(loader, d->val + own.begin + first, m, 0);
        }
        if (b == 0)
            continue;
        int m;
        const float *images = loader_wait(loader, &m, NULL);
        size_t first = (b - 1) * micro;
        forward_micro(t, images, m, size, 0);
        t->be->to_host(t->be, t->host_logits, t->model->logits.data,
                       (size_t)m * N_SUBTYPES * sizeof(float));
        for (int k = 0; k < m * N_SUBTYPES; k++)
            mine_prob[first * N_SUBTYPES + (size_t)k] = sigmoid(t->host_logits[k]);
    }

    double *prob = dist_is_root() ? xmalloc((n ? n : 1) * N_SUBTYPES * sizeof *prob) : NULL;
    dist_gather_rows(mine_prob, prob, N_SUBTYPES * sizeof *prob, n, micro);
    free(mine_prob);
    if (!prob)
        return NAN;
    int8_t *label = xmalloc((n ? n : 1) * N_SUBTYPES);
    for (size_t k = 0; k < n; k++)
        memcpy(label + k * N_SUBTYPES, d->labels + d->val[k] * N_SUBTYPES, N_SUBTYPES);
    metric_result_t r;
    metric_score(prob, label, n, &r);
    free(prob);
    free(label);
    return r.score;
}

/*
 * Every rank must hold the same weights and Adam moments after the same steps: compare a
 * hash of them (once an epoch; about a second for ResNeXt-101).
 */
static void check_ranks_agree(trainer_t *t)
{
    if (dist_size() < 2)
        return;
    nn_paramset_t *ps = &t->model->ps;
    size_t bytes = ps->param_count * sizeof(float);
    float *host = xmalloc(bytes);
    float *slabs[3] = {ps->params, ps->adam_m, ps->adam_v};
    uint64_t hash = 0;
    for (int s = 0; s < 3; s++) {
        t->be->to_host(t->be, host, slabs[s], bytes);
        hash = hash * 0x100000001b3ull ^ dist_hash_bytes(host, bytes);
    }
    free(host);
    int differs = dist_check_same(hash);
    if (differs >= 0)
        die(EXIT_INTERNAL, "rank %d's weights differ from rank 0's after the same steps",
            differs);
    log_info("parameters identical on all %d ranks (hash %016llx)", dist_size(),
             (unsigned long long)hash);
}

/*
 * Every image read once before training, each rank reading its share: all ranks stop with
 * EXIT_BAD_INPUT when any image is unreadable, the ranks that found one naming it.
 */
static void check_images_shared(const loader_config_t *config)
{
    dist_range_t own = dist_share(config->count, 1);
    loader_config_t mine = *config;
    mine.paths += own.begin;
    mine.count = own.end - own.begin;
    char err[LOADER_MESSAGE_MAX] = "";
    int64_t bad = (int64_t)loader_find_bad_images(&mine, err, sizeof err);
    int64_t any = bad;
    dist_allreduce_max_i64(&any, 1);
    if (bad)
        die(EXIT_BAD_INPUT, "%s", err);
    if (any)
        die(EXIT_BAD_INPUT, "another rank found an unreadable image (it names it above)");
}

/* Start every rank from rank 0's state (weights, statistics, moments, counters). */
static void share_start(trainer_t *t)
{
    if (dist_size() < 2)
        return;
    nn_paramset_t *ps = &t->model->ps;
    dist_broadcast_backend(t->be, ps->params, ps->param_count, 0);
    dist_broadcast_backend(t->be, ps->adam_m, ps->param_count, 0);
    dist_broadcast_backend(t->be, ps->adam_v, ps->param_count, 0);
    dist_broadcast_backend(t->be, ps->buffers, ps->buffer_count, 0);
    dist_broadcast(ps->counters, ps->counter_count * sizeof *ps->counters, 0);
    t->be->weights_changed(t->be);
}

/* ---- checkpoints ---- */

typedef struct {
    int fold, batch, micro_batch, size, ranks;
    long long seed;
    size_t n_train;
    const char *crop;
    const char *jpeg_dir, *folds_file; /* as given */
    char folds_fingerprint[17];        /* of FOLDS.h5's content: a resumed run reads the same */
} run_info_t;

/*
 * Save under a hidden temporary name (complete once nn_ckpt_save returns), add the run's
 * attributes (and the validation loss when known), then rename into place: a checkpoint that
 * appears under its final name always carries them.
 */
static void save_checkpoint(trainer_t *t, const char *path, const nn_ckpt_meta_t *meta,
                            const run_info_t *run, double val_loss)
{
    nn_ckpt_meta_t saved = *meta;
    if (t->loss_scaling || t->scaler.skipped_steps) { /* skips stay known after fp16 */
        saved.loss_scale = t->scaler.scale;
        saved.loss_scale_clean_steps = t->scaler.clean_steps;
        saved.skipped_steps = t->scaler.skipped_steps;
    }
    char *tmp = tmp_path_for(path);
    nn_ckpt_save(tmp, &t->model->ps, &saved, 0);
    hid_t f = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0)
        die(EXIT_IO, "%s: cannot reopen the checkpoint to add attributes", tmp);
    h5_attr_i64(f, "train_fold", run->fold);
    h5_attr_i64(f, "train_batch", run->batch);
    h5_attr_i64(f, "train_micro_batch", run->micro_batch);
    h5_attr_i64(f, "train_size", run->size);
    h5_attr_i64(f, "train_seed", run->seed);
    h5_attr_i64(f, "train_slices", (int64_t)run->n_train);
    h5_attr_str(f, "train_crop", run->crop);
    h5_attr_i64(f, "train_ranks", run->ranks);
    h5_attr_str(f, "train_jpeg_dir", run->jpeg_dir);
    h5_attr_str(f, "train_folds_file", run->folds_file);
    h5_attr_str(f, "train_folds_fingerprint", run->folds_fingerprint);
    if (!isnan(val_loss))
        h5_attr_f64(f, "val_loss", val_loss);
    if (H5Fclose(f) < 0)
        die(EXIT_IO, "%s: cannot close the checkpoint", tmp);
    if (tmp_commit(tmp, path) != 0)
        die(EXIT_IO, "%s: cannot rename into place", path);
    free(tmp);
    log_info("saved %s (step %lld, epoch %lld)", path, (long long)meta->step,
             (long long)meta->epoch);
}

/* epoch<E>.h5 or step<S>.h5: the names this program gives its checkpoints. */
static int is_checkpoint_name(const char *name)
{
    return nn_ckpt_numbered_name(name, "epoch") || nn_ckpt_numbered_name(name, "step");
}

/*
 * The complete checkpoint of dir with the most optimizer steps (epoch files win ties). A
 * checkpoint of another model kind there (lstmtrain's) is refused: this program would
 * overwrite it, and --force would remove it.
 */
static char *newest_checkpoint(const char *dir)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return NULL;
    char *best = NULL;
    int64_t best_step = -1;
    int best_epoch_file = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        int epoch_file = strncmp(e->d_name, "epoch", 5) == 0;
        if (!is_checkpoint_name(e->d_name))
            continue;
        char *path = path_join(dir, e->d_name);
        nn_ckpt_meta_t meta;
        char *message = NULL;
        if (nn_ckpt_read_meta(path, &meta, &message) != 0) {
            log_warn("%s", message);
            free(message);
            free(path);
            continue;
        }
        if (!resnext_config(meta.model))
            die(EXIT_USAGE, "%s is a checkpoint of %s, not of a classifier: give cnntrain "
                "another -o", path, meta.model);
        if (meta.step > best_step || (meta.step == best_step && epoch_file && !best_epoch_file)) {
            free(best);
            best = path;
            best_step = meta.step;
            best_epoch_file = epoch_file;
        } else {
            free(path);
        }
    }
    closedir(dp);
    return best;
}

/* --force: every file of dir named like a checkpoint (complete or not); returns the count. */
static size_t remove_checkpoints(const char *dir)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return 0;
    size_t count = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (!is_checkpoint_name(e->d_name))
            continue;
        char *path = path_join(dir, e->d_name);
        if (unlink(path) != 0)
            die(EXIT_IO, "%s: cannot remove (--force): %s", path, strerror(errno));
        free(path);
        count++;
    }
    closedir(dp);
    return count;
}

/*
 * A run started over in a folder with checkpoints would leave the old run's later epochs
 * beside its own: refuse unless --resume continues them or --force removes them. Returns the
 * newest complete checkpoint (NULL when none), so that the folder is scanned, and a damaged
 * file warned about, once.
 */
static char *refuse_earlier_run(const train_options_t *o)
{
    if (o->resume && o->force)
        die(EXIT_USAGE, "--resume continues the checkpoints in %s, --force removes them: "
            "give one", o->out_dir);
    char *newest = newest_checkpoint(o->out_dir); /* also refuses another model's */
    if (newest && !o->resume && !o->force)
        die(EXIT_USAGE, "%s holds checkpoints of an earlier run (newest: %s): add --resume "
            "to continue it, or --force to remove them and start over", o->out_dir, newest);
    return newest;
}

/*
 * The inputs the checkpoint's run read against this run's. FOLDS.h5 by content: another is
 * refused (a copy elsewhere is the same). JPEG_DIR by path only (the images are not hashed):
 * another folder is said, as is a checkpoint that predates the fingerprint.
 */
static void check_resume_inputs(hid_t f, const char *path, const run_info_t *run)
{
    char *fingerprint = h5_attr_read_str(f, "train_folds_fingerprint");
    char *folds = h5_attr_read_str(f, "train_folds_file");
    if (fingerprint && strcmp(fingerprint, run->folds_fingerprint) != 0)
        die(EXIT_USAGE, "%s: --resume with FOLDS.h5 %s (fingerprint %s), the checkpoint's run "
            "read %s (fingerprint %s): other labels, folds or slices; give that one, or "
            "--force to start over", path, run->folds_file, run->folds_fingerprint,
            folds ? folds : "?", fingerprint);
    if (!fingerprint)
        log_warn("%s: made without a folds fingerprint: cannot check that its run read the "
                 "same FOLDS.h5 as %s", path, run->folds_file);
    char *images = h5_attr_read_str(f, "train_jpeg_dir");
    if (images && strcmp(images, run->jpeg_dir) != 0 && !path_same_file(images, run->jpeg_dir))
        log_warn("%s: the checkpoint's run read its images from %s, this one from %s (not "
                 "compared: they must be the same images)", path, images, run->jpeg_dir);
    free(fingerprint);
    free(folds);
    free(images);
}

static void check_resume_attr(hid_t f, const char *path, const char *name, int64_t expected)
{
    int64_t value;
    if (h5_attr_read_i64(f, name, &value) && value != expected)
        die(EXIT_USAGE, "%s: --resume with %s %lld, the checkpoint has %lld", path, name,
            (long long)expected, (long long)value);
}

/*
 * Batch norm in training normalizes each micro-batch by its own statistics: another
 * micro-batch gives another result than the uninterrupted run. A checkpoint made before
 * train_micro_batch was recorded is taken to have used this run's (and says so).
 */
static void check_resume_micro_batch(hid_t f, const char *path, int micro_batch,
                                     const char *why)
{
    int64_t before;
    if (!h5_attr_read_i64(f, "train_micro_batch", &before)) {
        log_warn("%s: made without train_micro_batch: cannot check that its run used "
                 "micro-batches of %d as this one does", path, micro_batch);
        return;
    }
    int64_t ranks = 1;
    h5_attr_read_i64(f, "train_ranks", &ranks);
    if (before != micro_batch)
        die(EXIT_USAGE, "%s: --resume with micro-batches of %d (%s), the checkpoint's run had "
            "%lld (%lld rank%s): batch norm statistics depend on it; resume with micro-batches "
            "of %lld (--micro-batch, and at most batch / ranks), or --force to start over",
            path, micro_batch, why, (long long)before, (long long)ranks, ranks == 1 ? "" : "s",
            (long long)before);
}

/* ---- the program ---- */

/* Images in batch b of an epoch (the last one may be short). */
static size_t batch_size(const dataset_t *d, const train_options_t *o, int64_t b)
{
    size_t start = (size_t)b * (size_t)o->batch;
    return d->n_epoch - start < (size_t)o->batch ? d->n_epoch - start : (size_t)o->batch;
}

/* The epoch's order of the training slices: a seeded Fisher-Yates shuffle. */
static void shuffle_epoch(const dataset_t *d, uint64_t seed, int epoch, size_t *order)
{
    memcpy(order, d->train, d->n_train * sizeof *order);
    nn_rng_t rng;
    nn_rng_seed(&rng, seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(epoch + 1)));
    for (size_t i = d->n_train; i > 1; i--) {
        size_t j = (size_t)nn_rng_below(&rng, i);
        size_t tmp = order[i - 1];
        order[i - 1] = order[j];
        order[j] = tmp;
    }
}

/* Load initial weights, keeping the fresh 6-output head whatever the file's head is. */
static void load_init(trainer_t *t, const char *path, const char *arch)
{
    resnext_t *m = t->model;
    nn_paramset_t *ps = &m->ps;
    size_t head_w = ps->entries[m->fc_w].count, head_b = ps->entries[m->fc_b].count;
    float *w = xmalloc(head_w * sizeof *w), *b = xmalloc(head_b * sizeof *b);
    nn_backend_t *be = t->be;
    be->to_host(be, w, nn_params_value(ps, m->fc_w), head_w * sizeof *w);
    be->to_host(be, b, nn_params_value(ps, m->fc_b), head_b * sizeof *b);
    nn_ckpt_load_or_die(path, ps, arch, NN_CKPT_NONSTRICT, NULL);
    be->to_device(be, nn_params_value(ps, m->fc_w), w, head_w * sizeof *w);
    be->to_device(be, nn_params_value(ps, m->fc_b), b, head_b * sizeof *b);
    be->weights_changed(be);
    free(w);
    free(b);
    log_info("initial weights from %s (head: fresh, %d outputs)", path, N_SUBTYPES);
}

int main(int argc, char **argv)
{
    train_options_t o = {.arch = "resnext101_32x8d", .device = "cpu", .crop = "intended",
                         .fold = 0, .size = IMG_DEFAULT_SIZE, .batch = 64, .micro_batch = 0,
                         .epochs = 5, .threads = 2, .save_every = 0, .log_every = 10, .lr = 2e-5,
                         .seed = 1, .precision = "fp32"};
    const opt_t options[] = {
        {'o', "out", OPT_STRING, &o.out_dir, "DIR", "checkpoint folder (created; required)", 1, 0,
         NULL},
        {0, "fold", OPT_INT, &o.fold, "F", "fold held out for validation; -1: train on all", -1,
         99, NULL},
        {0, "arch", OPT_CHOICE, &o.arch, "NAME", "architecture", 1, 0,
         "tiny|resnext50_32x4d|resnext101_32x8d"},
        {0, "init", OPT_STRING, &o.init, "CKPT", "initial weights (non-strict; head replaced)", 1,
         0, NULL},
        {0, "size", OPT_INT, &o.size, "N", "image side", 16, 2048, NULL},
        {0, "lr", OPT_DOUBLE, &o.lr, "LR", "Adam learning rate", 0, 1, NULL},
        {0, "batch", OPT_INT, &o.batch, "N", "images per optimizer step", 1, 65536, NULL},
        {0, "micro-batch", OPT_INT, &o.micro_batch, "N",
         "images per forward/backward (gradients accumulated; batch norm per micro-batch; "
         "default 16, or --batch when smaller)", 1, 65536, NULL},
        {0, "epochs", OPT_INT, &o.epochs, "N", "epochs to train (in all, resumed ones included)",
         1, 1000, NULL},
        {0, "crop", OPT_CHOICE, &o.crop, "MODE", "black border crop", 1, 0,
         SLICELIST_CROP_CHOICES},
        {0, "precision", OPT_CHOICE, &o.precision, "P",
         "convolution arithmetic (bf16, fp16: mixed, fp32 weights and sums; fp16 on cuda "
         "only, with dynamic loss scaling; see common/nn/resnext.h, common/nn/lossscale.h)",
         1, 0, NN_PRECISION_CHOICES},
        {0, "seed", OPT_INT64, &o.seed, "S", "seed of the shuffles and augmentations", 0, 9e15,
         NULL},
        {0, "device", OPT_STRING, &o.device, "NAME", "NN backend: cpu, cuda, cuda:N", 1, 0,
         NULL},
        {'j', "threads", OPT_INT, &o.threads, "N", "image loader threads", 1, 256, NULL},
        {0, "save-every", OPT_INT, &o.save_every, "N",
         "also save a checkpoint every N steps (0: per epoch only)", 0, 1e9, NULL},
        {0, "log-every", OPT_INT, &o.log_every, "N", "a progress line every N steps", 1, 1e9,
         NULL},
        {0, "resume", OPT_FLAG, &o.resume, NULL,
         "continue from the newest complete checkpoint in DIR", 1, 0, NULL},
        {0, "force", OPT_FLAG, &o.force, NULL,
         "start over in a DIR that holds checkpoints, removing them", 1, 0, NULL},
        {0},
    };
    const opt_spec_t spec = {
        .program = "cnntrain",
        .usage = "[options] -o CKPT_DIR JPEG_DIR FOLDS.h5",
        .summary = "Trains the slice classifier (ResNeXt, 6 outputs, weighted BCE, Adam) on the\n"
                   "images of dcm2jpg with the labels and folds of mkfolds, holding out one fold\n"
                   "for validation. Images are read, cropped, resized and augmented on worker\n"
                   "threads while the model computes.",
        .details =
            "Inputs: FOLDS.h5 of mkfolds: slices with fold >= 0 other than --fold train,\n"
            "those of --fold validate; slices lacking a label (-1) are skipped. Images are\n"
            "JPEG_DIR/<id>.jpg or JPEG_DIR/<id>.ppm; every one is read whole (decoded, on the\n"
            "-j loader threads) before the first training step: a missing or damaged image is\n"
            "exit 3 naming it, and no checkpoint (nor the output folder) is written.\n"
            "Outputs:\n"
            "  CKPT_DIR/epoch<E>.h5   after each epoch (E from 1)\n"
            "  CKPT_DIR/step<S>.h5    every --save-every optimizer steps\n"
            "Each is an engine checkpoint (common/nn/checkpoint.h) with the Adam moments and\n"
            "root attributes train_fold, train_batch, train_micro_batch, train_size,\n"
            "train_seed, train_slices, train_crop, and val_loss (held-out fold's weighted log\n"
            "loss; epoch files only, absent when the fold is empty). Files appear only when\n"
            "complete. --resume picks the one with the most steps and continues mid-epoch if\n"
            "need be, with the same shuffles and augmentations as an uninterrupted run; it\n"
            "refuses (exit 2) another --fold, --lr, --batch, --micro-batch, --seed, --size,\n"
            "--crop, training set or FOLDS.h5 content than the checkpoint's (attribute\n"
            "train_folds_fingerprint; a JPEG_DIR other than its train_jpeg_dir is only said:\n"
            "the images are not compared; a checkpoint without train_micro_batch is taken to\n"
            "have used this run's micro-batch, with a warning). A DIR that holds\n"
            "checkpoints needs --resume (a killed run: the same command with --resume) or\n"
            "--force (removes them, starts over); without either it is exit 2, and so is a\n"
            "DIR holding another model's checkpoints (lstmtrain's) whatever the options.\n"
            "A micro-batch is a part of a batch: --micro-batch above --batch is exit 2. The\n"
            "last micro-batch of a batch may be smaller (--batch need not be a multiple), but\n"
            "batch norm in training needs two images per micro-batch: --batch must not leave\n"
            "a micro-batch of one (exit 2), and an epoch whose last batch would end in one\n"
            "leaves its last shuffled image out (said once). --fold must exist in FOLDS.h5.\n"
            "A non-finite loss stops the run (exit 1); earlier checkpoints stay intact.\n"
            "Under `mpirun -np N` the ranks train data-parallel: each takes a contiguous run\n"
            "of the micro-batches of every --batch (micro-batches of at most batch / N\n"
            "images), gradients are summed over ranks before the one Adam step, batch norm\n"
            "statistics stay per rank; rank 0 alone logs and writes checkpoints (attribute\n"
            "train_ranks; --resume accepts another N whose micro-batches are the same). A\n"
            "rank that dies ends the job; one that hangs is given up after ICH_DIST_TIMEOUT\n"
            "seconds (default 1800), exit 1.",
        .options = options,
        .min_positional = 2,
        .max_positional = 2,
    };
    log_init("cnntrain", LOG_INFO);
    char **pos;
    opt_parse(&spec, argc, argv, &pos);
    dist_init(&argc, &argv);
    if (!o.out_dir)
        die(EXIT_USAGE, "-o CKPT_DIR is required");
    output_dir_check("-o", o.out_dir);
    for (int i = 0; i < 2; i++)
        if (path_same_file(o.out_dir, pos[i]))
            die(EXIT_USAGE, "-o %s is the input %s: give the checkpoints a folder of their own",
                o.out_dir, pos[i]);
    char *newest = refuse_earlier_run(&o);
    const char *jpeg_dir = pos[0], *folds_path = pos[1];
    /* A micro-batch is a part of a batch: the default one follows a smaller batch, a given
     * one may not exceed it. */
    const char *micro_why = "--micro-batch";
    if (!o.micro_batch) {
        o.micro_batch = o.batch < 16 ? o.batch : 16;
        micro_why = "the default: 16, or --batch when smaller";
    }
    if (o.micro_batch > o.batch)
        die(EXIT_USAGE, "--micro-batch %d is larger than --batch %d: a micro-batch is a part "
            "of a batch", o.micro_batch, o.batch);
    /* Every rank gets a micro-batch of each full batch. */
    int per_rank = (o.batch + dist_size() - 1) / dist_size();
    if (o.micro_batch > per_rank) {
        if (dist_size() > 1)
            log_info("micro-batches of %d images: %d ranks share batches of %d", per_rank,
                     dist_size(), o.batch);
        o.micro_batch = per_rank;
        micro_why = "batch / ranks";
    }
    nn_mixed_precision_check(o.precision, o.device, "--precision");
    if (o.micro_batch == 1 || o.batch % o.micro_batch == 1)
        die(EXIT_USAGE, "--batch %d in micro-batches of %d leaves a micro-batch of one image: "
            "batch norm in training needs two (choose other sizes%s)", o.batch, o.micro_batch,
            dist_size() > 1 ? "; with several ranks a micro-batch is at most batch / ranks" : "");
    if (dist_size() > o.batch)
        log_warn("%d ranks for batches of %d images: ranks %d and above stay idle",
                 dist_size(), o.batch, o.batch);

    dataset_t d = {0};
    slicelist_require_fold(folds_path, "--fold", o.fold);
    dataset_load(&d, folds_path, jpeg_dir, o.fold);
    free(pos); /* the strings belong to argv */
    if (o.fold >= 0 && !d.n_val)
        log_warn("fold %d has no labelled slices: no validation", o.fold);
    log_info("%zu training slice%s, %zu validation (fold %d)", d.n_train,
             d.n_train == 1 ? "" : "s", d.n_val, o.fold);
    double baseline = d.n_val ? prevalence_baseline(&d) : NAN;
    if (d.n_val)
        log_info("validation loss of the training prevalence: %.6f", baseline);

    trainer_t t;
    trainer_init(&t, &o);
    nn_paramset_t *ps = &t.model->ps;
    nn_params_fill_hashed(ps);
    t.be->weights_changed(t.be);

    run_info_t run = {o.fold, o.batch, o.micro_batch, o.size, dist_size(), o.seed, d.n_train,
                      o.crop, jpeg_dir, folds_path, ""};
    snprintf(run.folds_fingerprint, sizeof run.folds_fingerprint, "%016llx",
             (unsigned long long)slicelist_fingerprint(&d.list));
    nn_ckpt_meta_t meta;
    nn_ckpt_meta_init(&meta, o.arch);
    nn_ckpt_meta_resnext(&meta, t.model);
    meta.adam = t.adam;
    snprintf(meta.precision, sizeof meta.precision, "%s", o.precision);
    nn_rng_seed(&meta.rng, (uint64_t)o.seed);

    /* Rank 0's pick of the checkpoint; every rank reads it (the folder is shared). */
    char *resume_from = o.resume && dist_is_root() ? newest : NULL;
    if (!resume_from)
        free(newest);
    if (o.resume)
        resume_from = dist_broadcast_path(resume_from);
    if (resume_from) {
        hid_t f = h5_open_read(resume_from);
        check_resume_attr(f, resume_from, "train_fold", o.fold);
        check_resume_attr(f, resume_from, "train_batch", o.batch);
        check_resume_micro_batch(f, resume_from, o.micro_batch, micro_why);
        check_resume_attr(f, resume_from, "train_seed", o.seed);
        check_resume_attr(f, resume_from, "train_slices", (int64_t)d.n_train);
        check_resume_attr(f, resume_from, "train_size", o.size);
        check_resume_inputs(f, resume_from, &run);
        char *crop = h5_attr_read_str(f, "train_crop");
        if (crop && strcmp(crop, o.crop) != 0)
            die(EXIT_USAGE, "%s: --resume with --crop %s, the checkpoint has %s", resume_from,
                o.crop, crop);
        free(crop);
        double lr_before;
        hid_t adam = H5Gopen2(f, "adam", H5P_DEFAULT);
        if (adam >= 0 && h5_attr_read_f64(adam, "lr", &lr_before) && lr_before != o.lr)
            die(EXIT_USAGE, "%s: --resume with --lr %g, the checkpoint has %g", resume_from,
                o.lr, lr_before);
        if (adam >= 0)
            H5Gclose(adam);
        int64_t ranks_before = 1;
        h5_attr_read_i64(f, "train_ranks", &ranks_before);
        h5_close(f);
        nn_ckpt_load_or_die(resume_from, ps, o.arch, NN_CKPT_ADAM, &meta);
        /* Adam's step count goes on from the steps an fp16 run took; fp16 goes on with
         * its loss scale. */
        if (meta.has_loss_scale) {
            t.scaler.skipped_steps = meta.skipped_steps;
            if (t.loss_scaling) {
                t.scaler.scale = (float)meta.loss_scale;
                t.scaler.clean_steps = (int)meta.loss_scale_clean_steps;
            }
        }
        meta.adam = t.adam;
        /* The checkpoint holds fp32 master weights: a run may go on in another precision. */
        if (meta.precision[0] && strcmp(meta.precision, o.precision) != 0)
            log_info("resuming a %s run in %s", meta.precision, o.precision);
        snprintf(meta.precision, sizeof meta.precision, "%s", o.precision);
        t.be->weights_changed(t.be);
        log_info("resuming from %s (step %lld, epoch %lld)", resume_from,
                 (long long)meta.step, (long long)meta.epoch);
        if (ranks_before != dist_size())
            log_info("resuming with %d rank%s a run made with %lld: the same batches, "
                     "shuffles and augmentations; batch norm statistics from its rank 0",
                     dist_size(), dist_size() == 1 ? "" : "s", (long long)ranks_before);
        free(resume_from);
    } else {
        if (o.resume)
            log_info("nothing to resume in %s: starting afresh", o.out_dir);
        if (o.init)
            load_init(&t, o.init, o.arch);
    }

    share_start(&t);

    /* Every image read whole before anything is created: a damaged one leaves nothing. */
    loader_config_t lc = {.paths = (const char *const *)d.paths, .count = d.count,
                          .size = o.size, .crop = (img_crop_t)slicelist_parse_crop(o.crop),
                          .augment = 1, .seed = (uint64_t)o.seed, .threads = o.threads,
                          .max_batch = o.batch};
    check_images_shared(&lc);
    lc.images_checked = 1; /* the validation loader's config is a copy: the same paths */

    /* Created only now: a rejected input or initial checkpoint leaves nothing behind. */
    if (dist_is_root()) {
        mkdir_p(o.out_dir);
        tmp_sweep(o.out_dir);
        size_t removed = o.force ? remove_checkpoints(o.out_dir) : 0;
        if (removed)
            log_info("--force: removed %zu checkpoint%s of an earlier run in %s", removed,
                     removed == 1 ? "" : "s", o.out_dir);
    }
    if (meta.epoch >= o.epochs)
        log_info("%s: already %lld epoch%s of %d; nothing to do", o.out_dir,
                 (long long)meta.epoch, meta.epoch == 1 ? "" : "s", o.epochs);

    /* Batch norm in training needs two images per micro-batch: an epoch whose last batch would
     * end in a micro-batch of one image leaves that image (the last of its shuffled order,
     * another one every epoch) out. */
    d.n_epoch = d.n_train;
    if (d.n_train % (size_t)o.batch % (size_t)o.micro_batch == 1) {
        d.n_epoch--;
        log_info("each epoch leaves its last image out: it would be a micro-batch of one, and "
                 "batch norm needs two");
    }
    int64_t steps_per_epoch = (int64_t)((d.n_epoch + (size_t)o.batch - 1) / (size_t)o.batch);
    if (!steps_per_epoch)
        die(EXIT_BAD_INPUT, "%s: one training slice: batch norm in training needs two",
            folds_path);
    int64_t total_steps = steps_per_epoch * o.epochs;
    int64_t into_epoch = meta.step - meta.epoch * steps_per_epoch;
    if (into_epoch < 0 || into_epoch >= steps_per_epoch)
        die(EXIT_BAD_INPUT, "checkpoint step %lld does not fit epoch %lld of %lld step%s",
            (long long)meta.step, (long long)meta.epoch, (long long)steps_per_epoch,
            steps_per_epoch == 1 ? "" : "s");

    loader_t *loader = loader_create(&lc);
    loader_config_t vc = lc;
    vc.augment = 0;
    vc.max_batch = o.micro_batch;
    loader_t *val_loader = d.n_val ? loader_create(&vc) : NULL;

    size_t *order = xmalloc(d.n_train * sizeof *order);
    const int8_t **batch_labels = xmalloc((size_t)o.batch * sizeof *batch_labels);
    double window_start = time_now(), window_wait = 0, run_start = time_now();
    int64_t window_images = 0, steps_this_run = 0;
    double window_loss = 0;
    int window_steps = 0;
    for (int epoch = (int)meta.epoch; epoch < o.epochs; epoch++) {
        shuffle_epoch(&d, (uint64_t)o.seed, epoch, order);
        int64_t first = meta.step - (int64_t)epoch * steps_per_epoch;
        for (int64_t b = first; b <= steps_per_epoch; b++) {
            /* This rank loads only its share of each batch. */
            if (b < steps_per_epoch) {
                size_t start = (size_t)b * (size_t)o.batch;
                dist_range_t own = dist_share(batch_size(&d, &o, b), (size_t)o.micro_batch);
                if (own.end > own.begin)
                    loader_submit(loader, order + start + own.begin,
                                  (int)(own.end - own.begin), (uint64_t)epoch);
            }
            if (b == first)
                continue;
            size_t start = (size_t)(b - 1) * (size_t)o.batch, n = batch_size(&d, &o, b - 1);
            dist_range_t own = dist_share(n, (size_t)o.micro_batch);
            int mine = 0;
            double waited = 0;
            const float *images = NULL;
            if (own.end > own.begin)
                images = loader_wait(loader, &mine, &waited);
            for (int k = 0; k < mine; k++)
                batch_labels[k] = d.labels + order[start + own.begin + (size_t)k] * N_SUBTYPES;
            /* Adam counts the steps taken (fp16 skips some), as torch.optim.Adam does. */
            int taken = 0;
            double loss = train_step(&t, images, batch_labels, mine, (int)n, o.size,
                                     meta.step + 1 - t.scaler.skipped_steps, &taken);
            if (!isfinite(loss) && !t.loss_scaling)
                die(EXIT_INTERNAL,
                    "loss is %g at step %lld (epoch %d): stopped; the checkpoints in %s "
                    "are those of the last good steps",
                    loss, (long long)meta.step + 1, epoch + 1, o.out_dir);
            meta.step++;
            steps_this_run++;
            window_wait += waited;
            window_images += (int64_t)n;
            if (isfinite(loss)) {
                window_loss += loss;
                window_steps++;
            }

            if (meta.step % o.log_every == 0 || b == steps_per_epoch) {
                double now = time_now(), span = now - window_start;
                double eta = (now - run_start) / (double)steps_this_run *
                             (double)(total_steps - meta.step);
                log_info("step %lld/%lld epoch %d loss %.5f lr %.3g %.1f img/s data wait "
                         "%.2f s (%.0f%%) ETA %.0f s",
                         (long long)meta.step, (long long)total_steps, epoch + 1,
                         window_steps ? window_loss / window_steps : NAN, o.lr,
                         (double)window_images / span,
                         window_wait, 100.0 * window_wait / span, eta);
                window_start = now;
                window_wait = 0;
                window_images = 0;
                window_loss = 0;
                window_steps = 0;
            }
            if (o.save_every > 0 && meta.step % o.save_every == 0 && b < steps_per_epoch &&
                dist_is_root()) {
                char *path = xasprintf("%s/step%lld.h5", o.out_dir, (long long)meta.step);
                save_checkpoint(&t, path, &meta, &run, NAN);
                free(path);
            }
        }

        meta.epoch = epoch + 1;
        double val_loss = NAN;
        if (val_loader) {
            val_loss = validate(&t, &d, val_loader, o.size);
            log_info("epoch %d: validation weighted log loss %.6f (prevalence %.6f)", epoch + 1,
                     val_loss, baseline);
        }
        check_ranks_agree(&t);
        if (dist_is_root()) {
            char *path = xasprintf("%s/epoch%d.h5", o.out_dir, epoch + 1);
            save_checkpoint(&t, path, &meta, &run, val_loss);
            free(path);
        }
    }

    loader_free(loader);
    loader_free(val_loader);
    free(order);
    free(batch_labels);
    trainer_free(&t);
    for (size_t i = 0; i < d.count; i++)
        free(d.paths[i]);
    free(d.paths);
    free(d.train);
    free(d.val);
    slicelist_free(&d.list);
    dist_finalize();
    return EXIT_OK;
}
