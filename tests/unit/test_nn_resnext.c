/*
 * ResNeXt on the CPU backend against torchvision (tests/ref/resnext_ref.py): the same model
 * with the same hashed weights, input and labels; eval forward, training forward, every
 * parameter gradient, 3 Adam steps (losses, weight updates, running statistics).
 *
 * Cases: "tiny" (64 px, batch 3, every tensor compared whole; with the weights in plain
 * and in the backend's own order, resnext_set_native_weights) and "resnext101_32x8d" (64 px,
 * batch 4, native order, as the benchmark trains; gradients, updates and buffers compared by
 * norm, max and 2048 sampled values). Then both orders against each other, bit for bit.
 * NN_TEST_MODELS=NAME runs only the cases whose model name contains NAME; NN_VERBOSE=1
 * prints every tensor; NN_STEPS=K changes the number of Adam steps; NN_DOUBLE=1 makes the
 * reference compute in float64 (slow: 90 s for ResNeXt-101).
 *
 * Tolerances, per tensor: relative L2 error, and max abs error / max |ref| (the same bound).
 *   tiny: outputs, gradients, buffers 1e-4 (measured <= 3e-6); loss 1e-5; Adam updates
 *   rel L2 1e-2 with at most 1 in 1000 values "flipped" (see compare_mode; measured 9e-4).
 *   resnext101_32x8d: outputs 1e-4 (measured 2e-6). Gradients are looser because of relu
 *   kinks, not arithmetic: with ~6M relu inputs, a few lie within the fp32 rounding
 *   distance of 0 and take the other side of the kink in one of the two engines (measured
 *   against PyTorch in float64: one pre-activation of -7.4e-7 computed as +7.6e-7 in each of
 *   layer3.16.bn2 and layer4.0.bn2). One such flip moves the gradient of every layer below it
 *   by ~0.7% and its own layer's by ~3%, up to 29% of the max at one value: per tensor rel L2
 *   5e-2 and max abs 0.5 of the max, median over tensors 1e-2 (measured 3.3e-2, 0.29, 6.5e-3).
 *   Adam's first steps move each weight by ~lr * sign(g), so
 *   those gradient differences flip ~1% of the updates: rel L2 0.2, flips <= 2% (measured
 *   0.11, 0.9%); buffers after 4 forwards 1e-2 (3e-3); losses 1e-3 (1.8e-4).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "expect.h"
#include "h5io.h"
#include "log.h"
#include "nn/checkpoint.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/resnext.h"
#include "refdump.h"

typedef struct {
    const char *model;
    int size, batch, full, native; /* native: weights in the backend's order */
    double tol_out, tol_grad, tol_grad_abs, tol_grad_median;
    double tol_update, update_flips, tol_buffer, tol_loss;
} nn_case_t;

typedef struct {
    double worst_rel, worst_abs;
    char worst_rel_name[NN_NAME_MAX], worst_abs_name[NN_NAME_MAX];
    int count;
    double rels[4096]; /* every tensor's relative L2 error, for the median */
} category_t;

/* Compare n values (host) with a whole dataset or a norm/max/pos/val summary group. */
/*
 * flip_mode (Adam updates): Adam's first steps move each weight by about lr * sign(g), so
 * where g ~ 0 a rounding difference flips the sign: there the max abs error is bounded by
 * 2 lr by construction and says nothing. Instead count the values off by more than a quarter
 * of the largest update ("flips") and allow the fraction flip_frac (0: use max abs).
 */
static void compare_mode(hid_t f, const char *path, const float *c, size_t n, double tol,
                         double tol_abs, category_t *cat, int verbose, double flip_frac)
{
    double err2 = 0.0, ref2 = 0.0, max_err = 0.0, ref_max = 0.0;
    size_t flips = 0, compared = 0;
    float *errs = NULL;
    char sub[512];
    snprintf(sub, sizeof(sub), "%s/pos", path);
    double norm_rel = 0.0;

    if (h5_exists(f, sub)) {
        hsize_t dims[8];
        int64_t *pos = h5_read(f, sub, H5T_NATIVE_INT64, 1, dims);
        snprintf(sub, sizeof(sub), "%s/val", path);
        float *val = h5_read(f, sub, H5T_NATIVE_FLOAT, 1, NULL);
        errs = xmalloc(dims[0] * sizeof(float));
        compared = dims[0];
        for (hsize_t i = 0; i < dims[0]; i++) {
            if ((size_t)pos[i] >= n)
                die(1, "%s: position %lld outside %zu values", path, (long long)pos[i], n);
            double d = (double)c[pos[i]] - val[i];
            errs[i] = (float)fabs(d);
            err2 += d * d;
            ref2 += (double)val[i] * val[i];
            max_err = fmax(max_err, fabs(d));
        }
        snprintf(sub, sizeof(sub), "%s/norm", path);
        double *norm = h5_read(f, sub, H5T_NATIVE_DOUBLE, 1, NULL);
        snprintf(sub, sizeof(sub), "%s/max", path);
        double *maxv = h5_read(f, sub, H5T_NATIVE_DOUBLE, 1, NULL);
        double c_norm = 0.0;
        for (size_t i = 0; i < n; i++)
            c_norm += (double)c[i] * c[i];
        c_norm = sqrt(c_norm);
        norm_rel = fabs(c_norm - norm[0]) / fmax(norm[0], 1e-30);
        ref_max = maxv[0];
        free(pos);
        free(val);
        free(norm);
        free(maxv);
    } else {
        float *ref = read_ref_exact(f, path, n);
        errs = xmalloc(n * sizeof(float));
        compared = n;
        for (size_t i = 0; i < n; i++) {
            double d = (double)c[i] - ref[i];
            errs[i] = (float)fabs(d);
            err2 += d * d;
            ref2 += (double)ref[i] * ref[i];
            max_err = fmax(max_err, fabs(d));
            ref_max = fmax(ref_max, fabs(ref[i]));
        }
        free(ref);
    }

    double rel = sqrt(err2) / fmax(sqrt(ref2), 1e-30);
    double abs_rel = max_err / fmax(ref_max, 1e-30);
    if (ref2 == 0.0 && err2 == 0.0)
        rel = 0.0;
    for (size_t i = 0; i < compared; i++)
        flips += errs[i] > 0.25 * ref_max;
    free(errs);
    int ok = rel <= tol && norm_rel <= tol;
    if (flip_frac > 0)
        ok = ok && flips <= flip_frac * compared;
    else
        ok = ok && abs_rel <= tol_abs;
    if (!ok)
        failures++;
    if (verbose || !ok)
        printf("  %-4s %-44s rel_l2 %.2e  max_abs %.2e (%.2e of max)  norm %.1e  flips %zu/%zu"
               "%s\n", ok ? "ok" : "FAIL", path, rel, max_err, abs_rel, norm_rel, flips, compared,
               ok ? "" : "  <-- over tol");
    if (cat) {
        if (cat->count < 4096)
            cat->rels[cat->count] = fmax(rel, norm_rel);
        cat->count++;
        double worst = fmax(rel, norm_rel);
        if (worst > cat->worst_rel) {
            cat->worst_rel = worst;
            snprintf(cat->worst_rel_name, NN_NAME_MAX, "%s", path);
        }
        if (abs_rel > cat->worst_abs) {
            cat->worst_abs = abs_rel;
            snprintf(cat->worst_abs_name, NN_NAME_MAX, "%s", path);
        }
    }
}

static void compare(hid_t f, const char *path, const float *c, size_t n, double tol,
                    category_t *cat, int verbose)
{
    compare_mode(f, path, c, n, tol, tol, cat, verbose, 0.0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_rel(category_t *cat)
{
    int n = cat->count < 4096 ? cat->count : 4096;
    if (n == 0)
        return 0.0;
    qsort(cat->rels, n, sizeof(double), cmp_double);
    return cat->rels[n / 2];
}

static void report(const char *what, const category_t *cat, double tol)
{
    printf("%-10s %4d tensors: worst rel_l2 %.2e (%s), worst max_abs/max %.2e (%s), tol %.0e\n",
           what, cat->count, cat->worst_rel, cat->worst_rel_name, cat->worst_abs,
           cat->worst_abs_name, tol);
}

static int run_reference(const nn_case_t *tc, const char *out)
{
    const char *py = getenv("PY") ? getenv("PY") : "/usr/bin/python3";
    char *cmd = xasprintf("cd tests/ref && %s resnext_ref.py --model %s --size %d --batch %d "
                          "--steps %s --out '%s'%s%s",
                          py, tc->model, tc->size, tc->batch,
                          getenv("NN_STEPS") ? getenv("NN_STEPS") : "3", out,
                          tc->full ? " --full" : "",
                          getenv("NN_DOUBLE") ? " --double" : "");
    fflush(stdout);
    int rc = system(cmd);
    free(cmd);
    return rc;
}

/* A host copy of a parameter-sized slab in plain order, whatever order it is kept in. */
static float *plain_copy(nn_paramset_t *ps, const float *slab)
{
    float *out = xmalloc((ps->param_count ? ps->param_count : 1) * sizeof(float));
    for (size_t i = 0; i < ps->n_entries; i++)
        if (ps->entries[i].kind == NN_ENTRY_PARAM)
            nn_params_read_plain(ps, slab, i, out + ps->entries[i].offset);
    return out;
}

static void run_case(const nn_case_t *tc, const char *dir)
{
    char *path = xasprintf("%s/ref_%s.h5", dir, tc->model);
    double t0 = time_now();
    if (run_reference(tc, path) != 0)
        die(1, "the reference script failed for %s", tc->model);
    double t_ref = time_now() - t0;

    hid_t f = h5_open_read(path);
    int verbose = tc->full || getenv("NN_VERBOSE");
    nn_backend_t *be = nn_backend_create("cpu");
    resnext_t *m = resnext_create(be, tc->model, 6);
    resnext_set_native_weights(m, tc->native);
    nn_paramset_t *ps = &m->ps;
    nn_params_fill_hashed(ps);
    float *initial = plain_copy(ps, ps->params);

    hsize_t dims[8];
    float *input = h5_read(f, "input", H5T_NATIVE_FLOAT, 4, dims);
    float *labels = h5_read(f, "labels", H5T_NATIVE_FLOAT, 2, NULL);
    nn_tensor_t x = {.data = input, .n = (int)dims[0], .c = (int)dims[1], .h = (int)dims[2],
                     .w = (int)dims[3]};
    int n = x.n;
    printf("%s%s: %d params, %dx%dx%dx%d input, reference %.1f s\n", tc->model,
           tc->native ? " (native weight order)" : "", (int)ps->param_count, x.n, x.c, x.h,
           x.w, t_ref);

    t0 = time_now();
    category_t out_cat = {0};
    resnext_forward(m, &x, 0);
    compare(f, "eval/logits", m->logits.data, nn_numel(&m->logits), tc->tol_out, &out_cat, 1);
    compare(f, "eval/embedding", m->embedding.data, nn_numel(&m->embedding), tc->tol_out,
            &out_cat, 1);

    nn_adam_t hp = {0, 0.9, 0.999, 1e-8, 0};
    if (!h5_attr_read_f64(f, "lr", &hp.lr) ||
        !h5_attr_read_f64(f, "weight_decay", &hp.weight_decay))
        die(1, "%s: lr or weight_decay attribute missing", path);
    nn_params_alloc_adam(ps);
    int steps = getenv("NN_STEPS") ? atoi(getenv("NN_STEPS")) : 3;
    double losses[8];
    category_t grad_cat = {0};
    for (int step = 0; step <= steps; step++) {
        resnext_forward(m, &x, 1);
        losses[step] = be->bce_loss(be, m->logits.data, labels, n, m->dlogits.data);
        if (step == steps)
            break;
        resnext_backward(m, m->dlogits.data);
        if (step == 0) {
            compare(f, "train/logits", m->logits.data, nn_numel(&m->logits), tc->tol_out,
                    &out_cat, 1);
            compare(f, "train/embedding", m->embedding.data, nn_numel(&m->embedding),
                    tc->tol_out, &out_cat, 1);
            float *grads = plain_copy(ps, ps->grads);
            for (size_t i = 0; i < ps->n_entries; i++) {
                nn_entry_t *e = &ps->entries[i];
                if (e->kind != NN_ENTRY_PARAM)
                    continue;
                char *name = xasprintf("grad/%s", e->name);
                compare_mode(f, name, grads + e->offset, e->count, tc->tol_grad,
                             tc->tol_grad_abs, &grad_cat, verbose, 0.0);
                free(name);
            }
            free(grads);
        }
        be->adam_step(be, &hp, step + 1, ps->params, ps->grads, ps->adam_m, ps->adam_v,
                      ps->param_count);
    }
    double t_engine = time_now() - t0;

    double *ref_losses = h5_read(f, "train/losses", H5T_NATIVE_DOUBLE, 1, dims);
    for (int s = 0; s <= steps; s++) {
        double rel = fabs(losses[s] - ref_losses[s]) / fabs(ref_losses[s]);
        int ok = rel <= tc->tol_loss;
        failures += !ok;
        printf("  %-4s loss after %d steps: engine %.7f torch %.7f rel %.1e\n",
               ok ? "ok" : "FAIL", s, losses[s], ref_losses[s], rel);
    }

    category_t upd_cat = {0}, buf_cat = {0};
    float *update = plain_copy(ps, ps->params);
    for (size_t i = 0; i < ps->param_count; i++)
        update[i] -= initial[i];
    for (size_t i = 0; i < ps->n_entries; i++) {
        nn_entry_t *e = &ps->entries[i];
        char *name = xasprintf("%s/%s", e->kind == NN_ENTRY_PARAM ? "update" : "buffer",
                               e->name);
        if (e->kind == NN_ENTRY_PARAM) {
            compare_mode(f, name, update + e->offset, e->count, tc->tol_update, 0.0, &upd_cat,
                         verbose, tc->update_flips);
        } else if (e->kind == NN_ENTRY_BUFFER) {
            compare(f, name, ps->buffers + e->offset, e->count, tc->tol_buffer, &buf_cat,
                    verbose);
        } else {
            int64_t *ref = h5_read(f, name, H5T_NATIVE_INT64, 1, NULL);
            if (ref[0] != ps->counters[e->offset]) {
                printf("  FAIL %s: %lld, torch %lld\n", name,
                       (long long)ps->counters[e->offset], (long long)ref[0]);
                failures++;
            }
            free(ref);
        }
        free(name);
    }

    double grad_median = median_rel(&grad_cat);
    int median_ok = grad_median <= tc->tol_grad_median;
    failures += !median_ok;
    printf("%s gradients: median rel_l2 over tensors %.2e (tol %.0e)\n", median_ok ? "ok" : "FAIL",
           grad_median, tc->tol_grad_median);
    report("outputs", &out_cat, tc->tol_out);
    report("gradients", &grad_cat, tc->tol_grad);
    report("updates", &upd_cat, tc->tol_update);
    report("buffers", &buf_cat, tc->tol_buffer);
    printf("%s: engine %.1f s for eval + 4 training forwards + 3 backwards\n", tc->model,
           t_engine);

    free(update);
    free(ref_losses);
    free(initial);
    free(input);
    free(labels);
    resnext_free(m);
    be->destroy(be);
    h5_close(f);
    remove(path);
    free(path);
}

/* Values of two host arrays that differ in their bits. */
static size_t bits_differ(const float *a, const float *b, size_t n)
{
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return differ;
}

static void expect_same_bits(const char *what, const float *a, const float *b, size_t n)
{
    size_t differ = bits_differ(a, b, n);
    printf("  %-4s %s: %zu of %zu values differ\n", differ ? "FAIL" : "ok", what, differ, n);
    failures += differ != 0;
}

enum { TINY_BATCH = 2, TINY_SIZE = 64 };

/* A hashed input batch for the tiny model (its data freed by the caller) and its labels. */
static nn_tensor_t tiny_batch(const char *seed, int positive_every, float *labels)
{
    size_t count = (size_t)TINY_BATCH * 3 * TINY_SIZE * TINY_SIZE;
    nn_tensor_t x = {.data = xmalloc(count * sizeof(float)), .n = TINY_BATCH, .c = 3,
                     .h = TINY_SIZE, .w = TINY_SIZE};
    nn_fill_hashed(x.data, count, nn_name_seed(seed), 1.0f, 0.0f);
    for (int i = 0; i < TINY_BATCH * 6; i++)
        labels[i] = (float)(i % positive_every == 0);
    return x;
}

/*
 * Weights kept in the backend's own order give the same bits as plain order: the kernels
 * see the same blocked weights either way, and Adam is elementwise. Two tiny models train 2
 * steps from the same weights; then the native one's checkpoint loads into a plain model.
 * In bf16 too: the weights are rounded from either order into the same kernel layout.
 */
static void check_native_order(const char *dir, int precision)
{
    enum { BATCH = TINY_BATCH, STEPS = 2 };
    nn_backend_t *be = nn_backend_create("cpu");
    resnext_t *models[2];
    size_t native_convs = 0;
    float labels[BATCH * 6];
    nn_tensor_t x = tiny_batch("native.input", 4, labels);
    nn_adam_t hp = {1e-3, 0.9, 0.999, 1e-8, 1e-4};

    float *logits[2], *grads[2];
    for (int k = 0; k < 2; k++) {
        resnext_t *m = models[k] = resnext_create(be, "tiny", 6);
        resnext_set_precision(m, precision);
        nn_params_fill_hashed(&m->ps);
        nn_params_alloc_adam(&m->ps);
        resnext_set_native_weights(m, k); /* converts the weights already there */
        for (int step = 1; step <= STEPS; step++) {
            resnext_forward(m, &x, 1);
            be->bce_loss(be, m->logits.data, labels, BATCH, m->dlogits.data);
            resnext_backward(m, m->dlogits.data);
            be->adam_step(be, &hp, step, m->ps.params, m->ps.grads, m->ps.adam_m,
                          m->ps.adam_v, m->ps.param_count);
        }
        grads[k] = plain_copy(&m->ps, m->ps.grads);
        resnext_forward(m, &x, 0);
        logits[k] = xmalloc(BATCH * 6 * sizeof(float));
        memcpy(logits[k], m->logits.data, BATCH * 6 * sizeof(float));
    }
    for (size_t i = 0; i < models[1]->ps.n_entries; i++)
        native_convs += models[1]->ps.entries[i].native_conv != NULL;
    printf("native weight order (%s): %zu of tiny's conv weights kept in the backend's order\n",
           precision == NN_PRECISION_BF16 ? "bf16" : "fp32", native_convs);
    EXPECT(native_convs >= 10);

    size_t n = models[0]->ps.param_count;
    size_t moved = bits_differ(models[0]->ps.params, models[1]->ps.params, n);
    printf("  %-4s the two models' weight slabs differ in %zu positions (the orders)\n",
           moved ? "ok" : "FAIL", moved);
    failures += moved == 0;
    expect_same_bits("gradients of step 2", grads[0], grads[1], n);
    expect_same_bits("eval logits after 2 steps", logits[0], logits[1], BATCH * 6);
    float *slabs[2][3] = {{models[0]->ps.params, models[0]->ps.adam_m, models[0]->ps.adam_v},
                          {models[1]->ps.params, models[1]->ps.adam_m, models[1]->ps.adam_v}};
    const char *names[3] = {"weights after 2 steps", "Adam m", "Adam v"};
    for (int s = 0; s < 3; s++) {
        float *a = plain_copy(&models[0]->ps, slabs[0][s]);
        float *b = plain_copy(&models[1]->ps, slabs[1][s]);
        expect_same_bits(names[s], a, b, n);
        free(a);
        free(b);
    }

    /* The native model's checkpoint holds plain order: a plain model loads the same. */
    char *path = xasprintf("%s/native_order.h5", dir);
    nn_ckpt_meta_t meta;
    nn_ckpt_meta_init(&meta, NULL);
    nn_ckpt_meta_resnext(&meta, models[1]);
    nn_ckpt_save(path, &models[1]->ps, &meta, 0);
    resnext_t *loaded = resnext_create(be, "tiny", 6);
    nn_ckpt_report_t report;
    EXPECT(nn_ckpt_load(path, &loaded->ps, "tiny", NN_CKPT_ADAM, NULL, &report) == 0);
    nn_ckpt_report_free(&report);
    float *want = plain_copy(&models[0]->ps, models[0]->ps.params);
    expect_same_bits("checkpoint of the native model, loaded plain", want, loaded->ps.params,
                     n);
    resnext_set_native_weights(loaded, 1);
    float *back = plain_copy(&loaded->ps, loaded->ps.adam_v);
    float *want_v = plain_copy(&models[0]->ps, models[0]->ps.adam_v);
    expect_same_bits("Adam v loaded, made native, read back", want_v, back, n);
    remove(path);

    free(path);
    free(want);
    free(back);
    free(want_v);
    for (int k = 0; k < 2; k++) {
        free(logits[k]);
        free(grads[k]);
        resnext_free(models[k]);
    }
    resnext_free(loaded);
    free(x.data);
    be->destroy(be);
}

/*
 * Inference folds each batch norm into its convolution's weights; a model that caches the
 * folded weights must fold them again when the weights change (an Adam step) and when only
 * the running statistics do (a training forward, which does not count as a weights change),
 * and when the conv weights alone change. Its eval logits are compared bit for bit with an
 * uncached twin's after each.
 */
static void check_weight_cache(int precision)
{
    enum { BATCH = TINY_BATCH };
    nn_backend_t *be = nn_backend_create("cpu");
    float labels[BATCH * 6];
    nn_tensor_t x = tiny_batch("cache.input", 3, labels);
    nn_adam_t hp = {1e-2, 0.9, 0.999, 1e-8, 0.0};
    const char *what[4] = {"first eval", "after a training step's forward and backward "
                           "(new running statistics)", "after its Adam step (new weights)",
                           "after the conv weights are halved (weights_changed)"};
    const char *name = precision == NN_PRECISION_BF16 ? "bf16" : "fp32";

    resnext_t *m[2];
    float logits[2][BATCH * 6];
    for (int k = 0; k < 2; k++) {
        m[k] = resnext_create(be, "tiny", 6);
        resnext_set_precision(m[k], precision);
        resnext_set_weight_cache(m[k], k ? RESNEXT_WEIGHT_CACHE_ON : RESNEXT_WEIGHT_CACHE_OFF);
        nn_params_fill_hashed(&m[k]->ps);
        nn_params_alloc_adam(&m[k]->ps);
    }
    for (int stage = 0; stage < 4; stage++) {
        for (int k = 0; k < 2; k++) {
            if (stage == 1) {
                resnext_forward(m[k], &x, 1);
                be->bce_loss(be, m[k]->logits.data, labels, BATCH, m[k]->dlogits.data);
                resnext_backward(m[k], m[k]->dlogits.data);
            }
            if (stage == 2)
                be->adam_step(be, &hp, 1, m[k]->ps.params, m[k]->ps.grads, m[k]->ps.adam_m,
                              m[k]->ps.adam_v, m[k]->ps.param_count);
            if (stage == 3) { /* the batch norms as they were: only the weights change */
                nn_paramset_t *ps = &m[k]->ps;
                for (size_t e = 0; e < ps->n_entries; e++)
                    if (ps->entries[e].kind == NN_ENTRY_PARAM && ps->entries[e].rank == 4)
                        for (size_t i = 0; i < ps->entries[e].count; i++)
                            ps->params[ps->entries[e].offset + i] *= 0.5f;
                be->weights_changed(be);
            }
            resnext_forward(m[k], &x, 0);
            memcpy(logits[k], m[k]->logits.data, sizeof(logits[k]));
        }
        char label[160];
        snprintf(label, sizeof(label), "%s weight cache, eval logits %s", name, what[stage]);
        expect_same_bits(label, logits[0], logits[1], BATCH * 6);
    }
    for (int k = 0; k < 2; k++)
        resnext_free(m[k]);
    free(x.data);
    be->destroy(be);
}

int main(void)
{
    if (!python_has("torch, torchvision, h5py")) {
        printf("skip: python3 with torch, torchvision and h5py is not available\n");
        return 77;
    }
    const char *work = getenv("WORK");
    const char *dir = work && *work ? work : "/tmp";
    const char *only = getenv("NN_TEST_MODELS");

    const nn_case_t cases[] = {
        /* model px batch full native out grad grad_abs median update flips buffer loss */
        {"tiny", 64, 3, 1, 0, 1e-4, 1e-4, 1e-4, 1e-4, 1e-2, 1e-3, 1e-4, 1e-5},
        {"tiny", 64, 3, 1, 1, 1e-4, 1e-4, 1e-4, 1e-4, 1e-2, 1e-3, 1e-4, 1e-5},
        {"resnext101_32x8d", 64, 4, 0, 1, 1e-4, 5e-2, 0.5, 1e-2, 0.2, 2e-2, 1e-2, 1e-3},
    };
    if (!only || strstr("tiny", only)) {
        check_native_order(dir, NN_PRECISION_FP32);
        check_native_order(dir, NN_PRECISION_BF16);
        check_weight_cache(NN_PRECISION_FP32);
        check_weight_cache(NN_PRECISION_BF16);
    }
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (only && !strstr(cases[i].model, only))
            continue;
        run_case(&cases[i], dir);
    }
    if (failures) {
        printf("%d comparisons over tolerance\n", failures);
        return 1;
    }
    printf("all comparisons within tolerance\n");
    return 0;
}
