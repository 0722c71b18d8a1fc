/*
 * Every op of the CPU backend on small shapes:
 * 1. convolution forward and both backwards against plain double-precision loops, on the
 *    model's shape kinds (grouped, strided, padded, 1x1 on tiny maps);
 * 2. a finite-difference check of each op's backward: for L = sum(r * op(x)) with a fixed
 *    random r, the analytic dL/dx (and dL/dw) against (L(x + h e) - L(x - h e)) / 2h at
 *    sampled positions, in float with h = 1e-3 (tolerance 2e-2 relative to the gradient's
 *    largest value; float rounding of L costs ~1e-4). Relu inputs stay 0.05 away from the
 *    kink and max pool inputs are spaced more than 2h apart, so no step crosses a kink;
 * 3. batch norm (training) against the host reference with double sums;
 * 4. the loss and Adam against values computed here in double.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "nn/nn.h"

static int failures;
static nn_backend_t *be;

static void expect(int ok, const char *what, double err, double tol)
{
    printf("  %-4s %-58s err %.2e  tol %.0e\n", ok ? "ok" : "FAIL", what, err, tol);
    if (!ok)
        failures++;
}

/* Every buffer the tests make, released at the end. */
static void *owned[256];
static int n_owned;

static float *random_buf(size_t n, uint32_t seed)
{
    float *p = be->alloc(be, n * sizeof(float));
    if (n_owned == (int)(sizeof(owned) / sizeof(owned[0])))
        die(1, "too many test buffers");
    owned[n_owned++] = p;
    nn_fill_hashed(p, n, seed, 1.0f, 0.0f);
    return p;
}

static nn_tensor_t tensor(int n, int c, int h, int w, uint32_t seed)
{
    nn_tensor_t t = {.data = NULL, .n = n, .c = c, .h = h, .w = w};
    t.data = random_buf(nn_numel(&t), seed);
    return t;
}

/* Relative max error: max |a - b| / max |b|. */
static double rel_max(const float *a, const double *b, size_t n)
{
    double err = 0.0, ref = 1e-30;
    for (size_t i = 0; i < n; i++) {
        err = fmax(err, fabs(a[i] - b[i]));
        ref = fmax(ref, fabs(b[i]));
    }
    return err / ref;
}

/* ---- convolution against plain loops ---------------------------------------------------- */

typedef struct {
    const char *what;
    int n, in_ch, out_ch, h, kernel, stride, pad, groups;
} conv_case_t;

static void conv_reference(const conv_case_t *k, const float *x, const float *w, const float *dy,
                           double *y, double *dx, double *dw)
{
    int oh = (k->h + 2 * k->pad - k->kernel) / k->stride + 1;
    int cin_g = k->in_ch / k->groups, cout_g = k->out_ch / k->groups, ks = k->kernel;
    size_t ny = (size_t)k->n * k->out_ch * oh * oh;
    memset(y, 0, ny * sizeof(double));
    memset(dx, 0, (size_t)k->n * k->in_ch * k->h * k->h * sizeof(double));
    memset(dw, 0, (size_t)k->out_ch * cin_g * ks * ks * sizeof(double));

    for (int n = 0; n < k->n; n++)
        for (int o = 0; o < k->out_ch; o++) {
            int g = o / cout_g;
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < oh; ox++) {
                    size_t yi = (((size_t)n * k->out_ch + o) * oh + oy) * oh + ox;
                    for (int ci = 0; ci < cin_g; ci++)
                        for (int ky = 0; ky < ks; ky++)
                            for (int kx = 0; kx < ks; kx++) {
                                int iy = oy * k->stride - k->pad + ky;
                                int ix = ox * k->stride - k->pad + kx;
                                if (iy < 0 || ix < 0 || iy >= k->h || ix >= k->h)
                                    continue;
                                int c = g * cin_g + ci;
                                size_t xi = (((size_t)n * k->in_ch + c) * k->h + iy) * k->h + ix;
                                size_t wi = (((size_t)o * cin_g + ci) * ks + ky) * ks + kx;
                                y[yi] += (double)x[xi] * w[wi];
                                dx[xi] += (double)dy[yi] * w[wi];
                                dw[wi] += (double)dy[yi] * x[xi];
                            }
                }
        }
}

static void test_conv_exact(const conv_case_t *k)
{
    nn_conv_t op = {.in_ch = k->in_ch, .out_ch = k->out_ch, .kernel = k->kernel,
                     .stride = k->stride, .pad = k->pad, .groups = k->groups};
    int oh = (k->h + 2 * k->pad - k->kernel) / k->stride + 1;
    nn_tensor_t x = tensor(k->n, k->in_ch, k->h, k->h, 11);
    nn_tensor_t dy = tensor(k->n, k->out_ch, oh, oh, 12);
    nn_tensor_t y = tensor(k->n, k->out_ch, oh, oh, 13);
    nn_tensor_t dx = tensor(k->n, k->in_ch, k->h, k->h, 14);
    size_t nw = (size_t)k->out_ch * (k->in_ch / k->groups) * k->kernel * k->kernel;
    float *w = random_buf(nw, 15), *dw = random_buf(nw, 16);

    be->conv_forward(be, &op, &x, w, &y);
    be->conv_backward_data(be, &op, &dy, w, &dx);
    be->conv_backward_weights(be, &op, &x, &dy, dw);

    double *ry = xmalloc(nn_numel(&y) * sizeof(double)), *rdx = xmalloc(nn_numel(&x) * 8);
    double *rdw = xmalloc(nw * sizeof(double));
    conv_reference(k, x.data, w, dy.data, ry, rdx, rdw);
    char what[128];
    double e;
    snprintf(what, sizeof(what), "conv %s forward", k->what);
    e = rel_max(y.data, ry, nn_numel(&y));
    expect(e < 1e-5, what, e, 1e-5);
    snprintf(what, sizeof(what), "conv %s backward data", k->what);
    e = rel_max(dx.data, rdx, nn_numel(&x));
    expect(e < 1e-5, what, e, 1e-5);
    snprintf(what, sizeof(what), "conv %s backward weights", k->what);
    e = rel_max(dw, rdw, nw);
    expect(e < 1e-5, what, e, 1e-5);

    free(ry);
    free(rdx);
    free(rdw);
    be->release_plan(be, &op.plan);
}

/* ---- finite differences -------------------------------------------------------------- */

/* An op under test: forward into y, and backward of sum(r * y) into the gradient buffers. */
typedef struct fd_op fd_op_t;
struct fd_op {
    const char *what;
    nn_tensor_t x, y, dx;
    float *w, *dw; /* optional parameter */
    size_t nw;
    void (*forward)(fd_op_t *op);
    void (*backward)(fd_op_t *op, const nn_tensor_t *r); /* fills dx (and dw) */
    void *state;
};

static double weighted_sum(const nn_tensor_t *y, const nn_tensor_t *r)
{
    double s = 0.0;
    for (size_t i = 0; i < nn_numel(y); i++)
        s += (double)y->data[i] * r->data[i];
    return s;
}

static double fd_at(fd_op_t *op, const nn_tensor_t *r, float *value, float h)
{
    float saved = *value;
    *value = saved + h;
    op->forward(op);
    double plus = weighted_sum(&op->y, r);
    *value = saved - h;
    op->forward(op);
    double minus = weighted_sum(&op->y, r);
    *value = saved;
    return (plus - minus) / (2.0 * h);
}

static double fd_compare(fd_op_t *op, const nn_tensor_t *r, float *values, const float *grad,
                         size_t n)
{
    double err = 0.0, ref = 1e-30;
    size_t samples = n < 40 ? n : 40;
    for (size_t s = 0; s < samples; s++) {
        size_t i = samples == n ? s : (s * 7919u) % n;
        double numeric = fd_at(op, r, &values[i], 1e-3f);
        err = fmax(err, fabs(numeric - grad[i]));
    }
    for (size_t i = 0; i < n; i++)
        ref = fmax(ref, fabs(grad[i]));
    return err / ref;
}

static void fd_check(fd_op_t *op)
{
    nn_tensor_t r = tensor(op->y.n, op->y.c, op->y.h, op->y.w, 99);
    op->forward(op);
    op->backward(op, &r);
    float *dx = xmalloc(nn_numel(&op->x) * sizeof(float));
    memcpy(dx, op->dx.data, nn_numel(&op->x) * sizeof(float));
    float *dw = NULL;
    if (op->w) {
        dw = xmalloc(op->nw * sizeof(float));
        memcpy(dw, op->dw, op->nw * sizeof(float));
    }

    char what[128];
    double e = fd_compare(op, &r, op->x.data, dx, nn_numel(&op->x));
    snprintf(what, sizeof(what), "finite differences %s d/dx", op->what);
    expect(e < 2e-2, what, e, 2e-2);
    if (op->w) {
        e = fd_compare(op, &r, op->w, dw, op->nw);
        snprintf(what, sizeof(what), "finite differences %s d/dw", op->what);
        expect(e < 2e-2, what, e, 2e-2);
    }
    free(dx);
    free(dw);
}

static void conv_fwd(fd_op_t *op)
{
    be->conv_forward(be, op->state, &op->x, op->w, &op->y);
}

static void conv_bwd(fd_op_t *op, const nn_tensor_t *r)
{
    be->conv_backward_data(be, op->state, r, op->w, &op->dx);
    be->conv_backward_weights(be, op->state, &op->x, r, op->dw);
}

typedef struct {
    nn_bnorm_t op;
    float *beta, *dbeta, *rmean, *rvar, *smean, *svar;
} bn_state_t;

static void bn_fwd(fd_op_t *op)
{
    bn_state_t *s = op->state;
    be->bnorm_forward_train(be, &s->op, &op->x, op->w, s->beta, s->rmean, s->rvar, s->smean,
                            s->svar, &op->y);
}

static void bn_bwd(fd_op_t *op, const nn_tensor_t *r)
{
    bn_state_t *s = op->state;
    bn_fwd(op);
    be->bnorm_backward(be, &s->op, &op->x, r, op->w, s->smean, s->svar, &op->dx, op->dw,
                       s->dbeta);
}

static void relu_fwd(fd_op_t *op)
{
    be->relu_forward(be, op->state, &op->x, &op->y);
}

static void relu_bwd(fd_op_t *op, const nn_tensor_t *r)
{
    be->relu_backward(be, op->state, &op->y, r, &op->dx);
}

static void pool_fwd(fd_op_t *op)
{
    be->maxpool_forward(be, op->state, &op->x, &op->y, 1);
}

static void pool_bwd(fd_op_t *op, const nn_tensor_t *r)
{
    be->maxpool_backward(be, op->state, &op->x, &op->y, r, &op->dx);
}

static void avg_fwd(fd_op_t *op)
{
    be->avgpool_forward(be, &op->x, &op->y);
}

static void avg_bwd(fd_op_t *op, const nn_tensor_t *r)
{
    be->avgpool_backward(be, r, &op->dx);
}

typedef struct {
    nn_linear_t op;
    float *b, *db;
} linear_state_t;

static void linear_fwd(fd_op_t *op)
{
    linear_state_t *s = op->state;
    be->linear_forward(be, &s->op, &op->x, op->w, s->b, &op->y);
}

static void linear_bwd(fd_op_t *op, const nn_tensor_t *r)
{
    linear_state_t *s = op->state;
    be->linear_backward(be, &s->op, &op->x, r, op->w, &op->dx, op->dw, s->db);
}

/* add: y = x + w (w is the second operand, shaped like x). */
static void add_fwd(fd_op_t *op)
{
    nn_tensor_t b = op->x;
    b.data = op->w;
    be->add(be, &op->x, &b, &op->y);
}

static void add_bwd(fd_op_t *op, const nn_tensor_t *r)
{
    memcpy(op->dx.data, r->data, nn_numel(r) * sizeof(float));
    memcpy(op->dw, r->data, nn_numel(r) * sizeof(float));
}

static void test_finite_differences(void)
{
    /* Convolution: grouped, strided, padded. */
    nn_conv_t conv = {.in_ch = 4, .out_ch = 6, .kernel = 3, .stride = 2, .pad = 1, .groups = 2};
    fd_op_t c = {"conv 3x3/2 groups 2", tensor(2, 4, 7, 7, 1), tensor(2, 6, 4, 4, 2),
                 tensor(2, 4, 7, 7, 3), random_buf(6 * 2 * 9, 4), random_buf(6 * 2 * 9, 5),
                 6 * 2 * 9, conv_fwd, conv_bwd, &conv};
    fd_check(&c);
    be->release_plan(be, &conv.plan);

    /* Batch norm in training mode (weight = gamma; beta checked through its sum below). */
    bn_state_t bn = {{3, 1e-5f, 0.1f, NULL}, random_buf(3, 6), random_buf(3, 7),
                     random_buf(3, 8), random_buf(3, 9), random_buf(3, 10), random_buf(3, 11)};
    fd_op_t b = {"batch norm (train)", tensor(2, 3, 3, 3, 12), tensor(2, 3, 3, 3, 13),
                 tensor(2, 3, 3, 3, 14), random_buf(3, 15), random_buf(3, 16), 3,
                 bn_fwd, bn_bwd, &bn};
    fd_check(&b);
    be->release_plan(be, &bn.op.plan);

    nn_relu_t relu = {NULL};
    nn_tensor_t rx = tensor(2, 3, 4, 4, 17);
    for (size_t i = 0; i < nn_numel(&rx); i++)
        rx.data[i] += rx.data[i] < 0 ? -0.05f : 0.05f;
    fd_op_t rl = {"relu", rx, tensor(2, 3, 4, 4, 18), tensor(2, 3, 4, 4, 19),
                  NULL, NULL, 0, relu_fwd, relu_bwd, &relu};
    fd_check(&rl);
    be->release_plan(be, &relu.plan);

    nn_pool_t pool = {3, 2, 1, NULL};
    nn_tensor_t px = tensor(2, 3, 7, 7, 20);
    for (size_t i = 0; i < nn_numel(&px); i++)
        px.data[i] = (float)((i * 37) % nn_numel(&px)) / (float)nn_numel(&px) * 2.0f - 1.0f;
    fd_op_t mp = {"max pool 3x3/2 pad 1", px, tensor(2, 3, 4, 4, 21),
                  tensor(2, 3, 7, 7, 22), NULL, NULL, 0, pool_fwd, pool_bwd, &pool};
    fd_check(&mp);
    be->release_plan(be, &pool.plan);

    fd_op_t ap = {"global average pool", tensor(2, 3, 5, 5, 23), tensor(2, 3, 1, 1, 24),
                  tensor(2, 3, 5, 5, 25), NULL, NULL, 0, avg_fwd, avg_bwd, NULL};
    fd_check(&ap);

    linear_state_t lin = {{5, 6, NULL}, random_buf(6, 26), random_buf(6, 27)};
    fd_op_t li = {"linear", tensor(3, 5, 1, 1, 28), tensor(3, 6, 1, 1, 29),
                  tensor(3, 5, 1, 1, 30), random_buf(30, 31), random_buf(30, 32), 30,
                  linear_fwd, linear_bwd, &lin};
    fd_check(&li);
    be->release_plan(be, &lin.op.plan);

    fd_op_t ad = {"add", tensor(2, 3, 2, 2, 33), tensor(2, 3, 2, 2, 34), tensor(2, 3, 2, 2, 35),
                  random_buf(24, 36), random_buf(24, 37), 24, add_fwd, add_bwd, NULL};
    fd_check(&ad);
}

/* ---- batch norm against the host reference -------------------------------------------- */

static void test_bnorm_reference(void)
{
    nn_bnorm_t op = {16, 1e-5f, 0.1f, NULL};
    nn_tensor_t x = tensor(4, 16, 5, 5, 40), dy = tensor(4, 16, 5, 5, 41);
    nn_tensor_t y = tensor(4, 16, 5, 5, 42), dx = tensor(4, 16, 5, 5, 43);
    nn_tensor_t ry = tensor(4, 16, 5, 5, 44), rdx = tensor(4, 16, 5, 5, 45);
    for (size_t i = 0; i < nn_numel(&x); i++)
        x.data[i] = 3.0f + 0.5f * x.data[i]; /* a mean well away from 0 */
    float *gamma = random_buf(16, 46), *beta = random_buf(16, 47);
    float *rmean = random_buf(16, 48), *rvar = random_buf(16, 49);
    float *stats = random_buf(4 * 16, 50), *grads = random_buf(4 * 16, 51);
    float *mean = stats, *var = stats + 16, *hmean = stats + 32, *hvar = stats + 48;
    float *dg = grads, *db = grads + 16, *hdg = grads + 32, *hdb = grads + 48;

    be->bnorm_forward_train(be, &op, &x, gamma, beta, rmean, rvar, mean, var, &y);
    be->bnorm_backward(be, &op, &x, &dy, gamma, mean, var, &dx, dg, db);
    nn_host_bnorm_forward_train(&x, gamma, beta, op.eps, hmean, hvar, &ry);
    nn_host_bnorm_backward(&x, &dy, gamma, hmean, hvar, op.eps, &rdx, hdg, hdb);

    double err = 0.0;
    for (size_t i = 0; i < nn_numel(&x); i++)
        err = fmax(err, fmax(fabs(y.data[i] - ry.data[i]), fabs(dx.data[i] - rdx.data[i])));
    for (int c = 0; c < 16; c++)
        err = fmax(err, fmax(fabs(dg[c] - hdg[c]), fabs(db[c] - hdb[c])) / 100.0);
    expect(err < 1e-4, "batch norm train forward+backward vs host reference", err, 1e-4);
    be->release_plan(be, &op.plan);
}

/* ---- loss and Adam ----------------------------------------------------------------------- */

static void test_loss(void)
{
    float logits[12] = {-3.0f, 0.5f, 2.0f, -0.2f, 8.0f, -9.0f, 0.0f, 1.5f, -1.0f, 3.0f, -4.0f,
                        0.7f};
    float labels[12] = {0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1};
    float grad[12];
    double loss = be->bce_loss(be, logits, labels, 2, grad);

    /* Straight from the definition, in double. */
    double all = 0.0, any = 0.0;
    for (int i = 0; i < 12; i++) {
        double p = 1.0 / (1.0 + exp(-(double)logits[i]));
        double term = -(labels[i] * log(p) + (1 - labels[i]) * log(1 - p));
        all += term / 12.0;
        if (i % 6 == 5)
            any += term / 2.0;
    }
    double expect_loss = (6.0 * all + any) / 7.0;
    expect(fabs(loss - expect_loss) < 1e-12, "weighted BCE loss", fabs(loss - expect_loss),
           1e-12);

    double worst = 0.0;
    for (int i = 0; i < 12; i++) {
        float saved = logits[i];
        logits[i] = saved + 1e-3f;
        double plus = nn_host_bce_loss(logits, labels, 2, NULL);
        logits[i] = saved - 1e-3f;
        double minus = nn_host_bce_loss(logits, labels, 2, NULL);
        logits[i] = saved;
        double numeric = (plus - minus) / ((double)(saved + 1e-3f) - (double)(saved - 1e-3f));
        worst = fmax(worst, fabs(numeric - grad[i]));
    }
    expect(worst < 1e-6, "weighted BCE gradient (finite differences)", worst, 1e-6);
}

static void test_adam(void)
{
    /* Three steps on two values, against the update written out in double. */
    nn_adam_t hp = {1e-2, 0.9, 0.999, 1e-8, 0.1};
    float w[2] = {0.5f, -1.0f}, m[2] = {0}, v[2] = {0};
    double rw[2] = {0.5, -1.0}, rm[2] = {0}, rv[2] = {0};
    const float grads[3][2] = {{0.1f, -0.2f}, {0.05f, 0.3f}, {-0.02f, 0.01f}};
    for (int t = 1; t <= 3; t++) {
        be->adam_step(be, &hp, t, w, grads[t - 1], m, v, 2);
        for (int i = 0; i < 2; i++) {
            double g = grads[t - 1][i] + hp.weight_decay * rw[i];
            rm[i] = 0.9 * rm[i] + 0.1 * g;
            rv[i] = 0.999 * rv[i] + 0.001 * g * g;
            double mhat = rm[i] / (1 - pow(0.9, t)), vhat = rv[i] / (1 - pow(0.999, t));
            rw[i] -= hp.lr * mhat / (sqrt(vhat) + hp.eps);
        }
    }
    double err = fmax(fabs(w[0] - rw[0]), fabs(w[1] - rw[1]));
    expect(err < 1e-6, "Adam, 3 steps with weight decay", err, 1e-6);

    /* The backend's vector loop over a large, unaligned range with a ragged end (split over
     * threads) gives the bits of the plain reference loop, step after step. */
    const size_t count = ((size_t)1 << 17) + 13;
    for (int with_decay = 0; with_decay <= 1; with_decay++) {
        nn_adam_t big = {3e-4, 0.9, 0.999, 1e-8, with_decay ? 1e-2 : 0.0};
        float *slab[7];
        for (int k = 0; k < 7; k++)
            slab[k] = xcalloc(count + 1, sizeof(float));
        float *bw = slab[0] + 1, *bm = slab[1] + 1, *bv = slab[2] + 1, *bg = slab[3] + 1;
        float *rw2 = slab[4] + 1, *rm2 = slab[5] + 1, *rv2 = slab[6] + 1;
        for (size_t i = 0; i < count; i++)
            bw[i] = rw2[i] = (float)sin((double)i * 0.37);
        size_t differing = 0;
        for (int t = 1; t <= 3; t++) {
            for (size_t i = 0; i < count; i++)
                bg[i] = (float)(cos((double)i * 0.11 + t) * pow(10.0, -(double)(i % 9)));
            be->adam_step(be, &big, t, bw, bg, bm, bv, count);
            nn_host_adam_step(&big, t, rw2, bg, rm2, rv2, count);
        }
        for (size_t i = 0; i < count; i++)
            differing += memcmp(&bw[i], &rw2[i], sizeof(float)) != 0 ||
                         memcmp(&bm[i], &rm2[i], sizeof(float)) != 0 ||
                         memcmp(&bv[i], &rv2[i], sizeof(float)) != 0;
        expect(differing == 0,
               with_decay ? "Adam, backend loop = host reference bit for bit (decay 1e-2)"
                          : "Adam, backend loop = host reference bit for bit (no decay)",
               (double)differing, 0.0);
        for (int k = 0; k < 7; k++)
            free(slab[k]);
    }

    double lr = nn_lr_step(1e-3, 7, 3, 0.5);
    expect(fabs(lr - 2.5e-4) < 1e-15, "step schedule: epoch 7, step 3, gamma 0.5", lr - 2.5e-4,
           1e-15);
}

int main(void)
{
    be = nn_backend_create("cpu");
    const conv_case_t convs[] = {
        {"7x7/2 pad 3 (stem)", 2, 3, 8, 15, 7, 2, 3, 1},
        {"1x1", 2, 16, 24, 5, 1, 1, 0, 1},
        {"1x1/2 (downsample)", 2, 16, 24, 6, 1, 2, 0, 1},
        {"3x3 groups 4", 2, 16, 16, 6, 3, 1, 1, 4},
        {"3x3/2 groups 32, 8 per group", 2, 256, 256, 4, 3, 2, 1, 32},
        {"1x1 256->512 on 2x2", 4, 256, 512, 2, 1, 1, 0, 1},
    };
    for (size_t i = 0; i < sizeof(convs) / sizeof(convs[0]); i++)
        test_conv_exact(&convs[i]);
    test_finite_differences();
    test_bnorm_reference();
    test_loss();
    test_adam();
    for (int i = 0; i < n_owned; i++)
        be->release(be, owned[i]);
    be->destroy(be);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all op checks passed\n");
    return 0;
}
