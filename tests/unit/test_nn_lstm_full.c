/*
 * The sequence model at the method's full size (embedding 2048, hidden 2048: 268 M
 * parameters) against PyTorch on packed sequences (tests/ref/lstm_ref.py --summary), default
 * mode, series of lengths 3 and 2: logits whole, the loss, every gradient and the first Adam
 * update by L2 norm, max |value| and 4096 values at fixed positions.
 * Part of `make test` (about 30 s); skipped under `make test-asan` (NN_TEST_MODELS=tiny) and
 * on a machine with less than 8 GiB of memory available.
 *
 * Tolerances: logits and sampled gradients rel L2 and max abs / max |ref| 1e-3, norms and
 * maxima 1e-3 relative, loss 1e-5 relative; the update (one Adam step, ~lr * sign(g)) rel L2
 * of the samples 5e-2 with at most 1% of them off by more than lr / 4. Measured: logits
 * 1.4e-6, gradient samples <= 3.1e-6, updates <= 1.2e-4 and no flips, losses 3e-6; 36 s,
 * 6.5 GB peak (the reference: 26 s).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "h5io.h"
#include "log.h"
#include "nn/nn.h"
#include "nn/params.h"
#include "nn/seqmodel.h"
#include "refdump.h"
#include "seqtest.h"

static int failures;

static void report(int bad, const char *path, const char *what, double a, double b, double tol)
{
    printf("%s %-44s %s %.2e %.2e (tol %.0e)\n", bad ? "FAIL" : "ok  ", path, what, a, b, tol);
    failures += bad;
}

/* A summary group (norm, max, pos, val) against n values here. */
static void compare_summary(hid_t f, const char *path, const float *c, size_t n, double tol,
                            double flip_at, double flip_frac)
{
    char sub[256];
    hsize_t dims[2];
    snprintf(sub, sizeof(sub), "%s/norm", path);
    double *norm = h5_read(f, sub, H5T_NATIVE_DOUBLE, 1, NULL);
    snprintf(sub, sizeof(sub), "%s/max", path);
    double *maxv = h5_read(f, sub, H5T_NATIVE_DOUBLE, 1, NULL);
    snprintf(sub, sizeof(sub), "%s/pos", path);
    int64_t *pos = h5_read(f, sub, H5T_NATIVE_INT64, 1, dims);
    snprintf(sub, sizeof(sub), "%s/val", path);
    float *val = h5_read(f, sub, H5T_NATIVE_FLOAT, 1, NULL);

    double sum2 = 0.0, max_here = 0.0, err2 = 0.0, ref2 = 0.0, max_err = 0.0, ref_max = 0.0;
    size_t flips = 0;
    for (size_t i = 0; i < n; i++) {
        sum2 += (double)c[i] * c[i];
        max_here = fmax(max_here, fabs(c[i]));
    }
    for (hsize_t k = 0; k < dims[0]; k++) {
        if ((size_t)pos[k] >= n)
            die(1, "%s: position %lld outside %zu values", path, (long long)pos[k], n);
        double e = fabs((double)c[pos[k]] - val[k]);
        err2 += e * e;
        ref2 += (double)val[k] * val[k];
        max_err = fmax(max_err, e);
        ref_max = fmax(ref_max, fabs(val[k]));
        flips += flip_at > 0 && e > flip_at;
    }
    double norm_rel = norm[0] > 0 ? fabs(sqrt(sum2) - norm[0]) / norm[0] : sqrt(sum2);
    double max_rel = maxv[0] > 0 ? fabs(max_here - maxv[0]) / maxv[0] : max_here;
    double rel = ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
    double abs_rel = ref_max > 0 ? max_err / ref_max : max_err;
    if (flip_at > 0) {
        int bad = rel > tol || (double)flips > flip_frac * (double)dims[0];
        printf("%s %-44s norm %.2e samples rel_l2 %.2e flips %zu/%llu (tol %.0e)\n",
               bad ? "FAIL" : "ok  ", path, norm_rel, rel, flips,
               (unsigned long long)dims[0], tol);
        failures += bad;
    } else {
        int bad = norm_rel > tol || max_rel > tol || rel > tol || abs_rel > tol;
        printf("%s %-44s norm %.2e max %.2e samples rel_l2 %.2e max_abs/max %.2e (tol %.0e)\n",
               bad ? "FAIL" : "ok  ", path, norm_rel, max_rel, rel, abs_rel, tol);
        failures += bad;
    }
    free(norm);
    free(maxv);
    free(pos);
    free(val);
}

/* Bytes of memory available now (0 when unknown). */
static double memory_available(void)
{
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (double)pages * page : 0.0;
}

int main(void)
{
    const char *only = getenv("NN_TEST_MODELS");
    if (only && !strstr("seqmodel", only)) {
        printf("skip: NN_TEST_MODELS=%s leaves out the full-size sequence model\n", only);
        return 77;
    }
    double available = memory_available();
    if (available > 0 && available < 8.0 * (1 << 30)) {
        printf("skip: the full-size sequence model needs about 6.5 GB; %.1f GB available\n",
               available / (1 << 30));
        return 77;
    }
    if (!python_has("torch, h5py")) {
        printf("skip: python3 with torch and h5py is not available\n");
        return 77;
    }
    char *out;
    hid_t f = open_ref_dump("lstm_ref.py --emb 2048 --hidden 2048 --lengths 3,2 --steps 1 "
                            "--summary", "lstm_full.h5", &out);
    hsize_t dims[8];
    float *emb = h5_read(f, "embeddings", H5T_NATIVE_FLOAT, 3, dims);
    int batch = (int)dims[0], steps = (int)dims[1], width = (int)dims[2];
    float *labels = h5_read(f, "labels", H5T_NATIVE_FLOAT, 3, NULL);
    int *lengths = h5_read(f, "lengths", H5T_NATIVE_INT, 1, NULL);
    double lr = 0, hidden = 0;
    if (!h5_attr_read_f64(f, "lr", &lr) || !h5_attr_read_f64(f, "hidden", &hidden))
        die(1, "%s: lr or hidden attribute missing", out);

    double t0 = time_now();
    nn_backend_t *be = nn_backend_create("cpu");
    float *initial;
    seqmodel_t *m = seq_hashed_model(be, width, (int)hidden, 0, NN_PRECISION_FP32, &initial);
    nn_paramset_t *ps = &m->ps;
    printf("embedding %d, hidden %d, batch %d x %d steps, %zu parameters\n", width,
           (int)hidden, batch, steps, ps->param_count);

    double *ref_losses = h5_read(f, "default/losses", H5T_NATIVE_DOUBLE, 1, dims);
    nn_adam_t hp = {lr, 0.9, 0.999, 1e-8, 0.0};
    seqmodel_forward(m, emb, batch, steps, lengths);
    double loss = seqmodel_loss(m, labels, 1);
    double rel = fabs(loss - ref_losses[0]) / fabs(ref_losses[0]);
    report(rel > 1e-5, "loss", "c, rel", loss, rel, 1e-5);
    seqmodel_backward(m);

    float *ref_logits = h5_read(f, "default/logits", H5T_NATIVE_FLOAT, 3, NULL);
    double err2 = 0, ref2 = 0, max_err = 0, ref_max = 0;
    for (size_t i = 0; i < (size_t)batch * steps * SEQ_OUTPUTS; i++) {
        double e = fabs((double)m->logits[i] - ref_logits[i]);
        err2 += e * e;
        ref2 += (double)ref_logits[i] * ref_logits[i];
        max_err = fmax(max_err, e);
        ref_max = fmax(ref_max, fabs(ref_logits[i]));
    }
    double lrel = sqrt(err2 / ref2), labs = max_err / ref_max;
    report(lrel > 1e-3 || labs > 1e-3, "logits", "rel_l2, max_abs/max", lrel, labs, 1e-3);

    char path[256];
    for (size_t i = 0; i < ps->n_entries; i++) {
        nn_entry_t *e = &ps->entries[i];
        snprintf(path, sizeof(path), "default/grad/%s", e->name);
        compare_summary(f, path, ps->grads + e->offset, e->count, 1e-3, 0, 0);
    }
    be->adam_step(be, &hp, 1, ps->params, ps->grads, ps->adam_m, ps->adam_v, ps->param_count);
    for (size_t i = 0; i < ps->param_count; i++)
        initial[i] = ps->params[i] - initial[i];
    for (size_t i = 0; i < ps->n_entries; i++) {
        nn_entry_t *e = &ps->entries[i];
        snprintf(path, sizeof(path), "default/update/%s", e->name);
        compare_summary(f, path, initial + e->offset, e->count, 5e-2, lr / 4, 0.01);
    }
    seqmodel_forward(m, emb, batch, steps, lengths);
    loss = seqmodel_loss(m, labels, 0);
    rel = fabs(loss - ref_losses[1]) / fabs(ref_losses[1]);
    report(rel > 1e-5, "loss after one Adam step", "c, rel", loss, rel, 1e-5);
    printf("engine: %.1f s\n", time_now() - t0);

    h5_close(f);
    seqmodel_destroy(m);
    be->destroy(be);
    free(initial);
    free(ref_losses);
    free(ref_logits);
    free(emb);
    free(labels);
    free(lengths);
    free(out);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("full-size sequence model matches PyTorch\n");
    return 0;
}
