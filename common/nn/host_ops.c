/* Host arithmetic shared by the backends: the loss, Adam, the LR schedule, hashed init. */
#include "nn/nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NN_CLASSES 6

/* The convolution kinds that compute in bf16 in mixed precision (nn_conv_precision). */
#define NN_BF16_DEFAULT_KINDS "1x1,grouped,stem"
#define NN_ANY_COLUMN 5

/* log(1 + exp(-|z|)) + max(z, 0) - z y: BCE with logits without overflow. */
static double bce_term(double z, double y)
{
    return fmax(z, 0.0) - z * y + log1p(exp(-fabs(z)));
}

double nn_host_bce_loss(const float *logits, const float *labels, int n, float *dlogits)
{
    double all_sum = 0.0, any_sum = 0.0;

    for (int i = 0; i < n; i++) {
        for (int k = 0; k < NN_CLASSES; k++) {
            double term = bce_term(logits[i * NN_CLASSES + k], labels[i * NN_CLASSES + k]);
            all_sum += term;
            if (k == NN_ANY_COLUMN)
                any_sum += term;
        }
    }
    double loss = (6.0 * all_sum / (n * NN_CLASSES) + any_sum / n) / 7.0;

    if (dlogits) {
        /* d/dz BCE = sigmoid(z) - y, weighted as each mean weights its terms. */
        double w_all = 6.0 / 7.0 / (n * NN_CLASSES), w_any = 1.0 / 7.0 / n;
        for (int i = 0; i < n; i++) {
            for (int k = 0; k < NN_CLASSES; k++) {
                double z = logits[i * NN_CLASSES + k];
                double diff = 1.0 / (1.0 + exp(-z)) - labels[i * NN_CLASSES + k];
                double w = w_all + (k == NN_ANY_COLUMN ? w_any : 0.0);
                dlogits[i * NN_CLASSES + k] = (float)(w * diff);
            }
        }
    }
    return loss;
}

void nn_host_adam_step(const nn_adam_t *hp, int64_t step, float *w, const float *g, float *m,
                       float *v, size_t count)
{
    /* Scalars rounded to float as PyTorch passes them to its float kernels. */
    double bias1 = 1.0 - pow(hp->beta1, (double)step);
    double bias2 = 1.0 - pow(hp->beta2, (double)step);
    float beta1 = (float)hp->beta1, beta2 = (float)hp->beta2;
    float keep1 = (float)(1.0 - hp->beta1), keep2 = (float)(1.0 - hp->beta2);
    float decay = (float)hp->weight_decay, eps = (float)hp->eps;
    float neg_step_size = (float)(-hp->lr / bias1);
    float bias2_sqrt = (float)sqrt(bias2);

    for (size_t i = 0; i < count; i++) {
        float grad = g[i];
        if (decay != 0.0f)
            grad += decay * w[i];
        m[i] = m[i] * beta1 + keep1 * grad;
        v[i] = v[i] * beta2 + keep2 * grad * grad;
        float denom = sqrtf(v[i]) / bias2_sqrt + eps;
        w[i] += neg_step_size * (m[i] / denom);
    }
}

double nn_lr_step(double base_lr, int epoch, int step_size, double gamma)
{
    if (step_size <= 0)
        return base_lr;
    return base_lr * pow(gamma, (double)(epoch / step_size));
}

static uint32_t hash_u32(uint32_t seed, uint32_t i)
{
    uint32_t h = i * 0x9E3779B1u + seed * 0x85EBCA77u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    h *= 0x297A2D39u;
    h ^= h >> 15;
    return h;
}

void nn_fill_hashed(float *out, size_t count, uint32_t seed, float scale, float offset)
{
    for (size_t i = 0; i < count; i++) {
        float u = (float)(hash_u32(seed, (uint32_t)i) >> 8) * (1.0f / 16777216.0f);
        out[i] = offset + scale * (2.0f * u - 1.0f);
    }
}

uint32_t nn_name_seed(const char *name)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; name[i]; i++) {
        h ^= (uint8_t)name[i];
        h *= 16777619u;
    }
    return h;
}

void nn_host_bnorm_forward_train(const nn_tensor_t *x, const float *gamma, const float *beta,
                                 float eps, float *save_mean, float *save_var, nn_tensor_t *y)
{
    size_t plane = (size_t)x->h * x->w, count = plane * x->n;

    for (int c = 0; c < x->c; c++) {
        /* Two passes in double: the mean first, then the centred second moment. */
        double sum = 0.0, sq = 0.0;
        for (int n = 0; n < x->n; n++) {
            const float *src = x->data + ((size_t)n * x->c + c) * plane;
            for (size_t k = 0; k < plane; k++)
                sum += src[k];
        }
        double mean = sum / count;
        for (int n = 0; n < x->n; n++) {
            const float *src = x->data + ((size_t)n * x->c + c) * plane;
            for (size_t k = 0; k < plane; k++)
                sq += (src[k] - mean) * (src[k] - mean);
        }
        double var = sq / count, inv = 1.0 / sqrt(var + eps);
        save_mean[c] = (float)mean;
        save_var[c] = (float)var;
        for (int n = 0; n < x->n; n++) {
            size_t at = ((size_t)n * x->c + c) * plane;
            for (size_t k = 0; k < plane; k++)
                y->data[at + k] = (float)(gamma[c] * (x->data[at + k] - mean) * inv + beta[c]);
        }
    }
}

void nn_host_bnorm_backward(const nn_tensor_t *x, const nn_tensor_t *dy, const float *gamma,
                            const float *save_mean, const float *save_var, float eps,
                            nn_tensor_t *dx, float *dgamma, float *dbeta)
{
    size_t plane = (size_t)x->h * x->w, count = plane * x->n;

    for (int c = 0; c < x->c; c++) {
        double mean = save_mean[c], inv = 1.0 / sqrt((double)save_var[c] + eps);
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int n = 0; n < x->n; n++) {
            size_t at = ((size_t)n * x->c + c) * plane;
            for (size_t k = 0; k < plane; k++) {
                double xhat = (x->data[at + k] - mean) * inv;
                sum_dy += dy->data[at + k];
                sum_dy_xhat += dy->data[at + k] * xhat;
            }
        }
        dgamma[c] = (float)sum_dy_xhat;
        dbeta[c] = (float)sum_dy;
        double mean_dy = sum_dy / count, mean_dy_xhat = sum_dy_xhat / count;
        for (int n = 0; n < x->n; n++) {
            size_t at = ((size_t)n * x->c + c) * plane;
            for (size_t k = 0; k < plane; k++) {
                double xhat = (x->data[at + k] - mean) * inv;
                double g = dy->data[at + k] - mean_dy - xhat * mean_dy_xhat;
                dx->data[at + k] = (float)(gamma[c] * inv * g);
            }
        }
    }
}

/* The layer kinds of a ResNeXt convolution, for the precision choice. */
static const char *conv_kind(const nn_conv_t *conv)
{
    if (conv->groups > 1)
        return "grouped";
    return conv->kernel == 1 ? "1x1" : "stem";
}

/* Whether kind is in a comma list of kinds ("all", "none" included). */
static int kind_listed(const char *list, const char *kind)
{
    size_t len = strlen(kind);
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        if ((n == len && strncmp(p, kind, n) == 0) || (n == 3 && strncmp(p, "all", 3) == 0))
            return 1;
        p += n + (p[n] == ',');
    }
    return 0;
}

int nn_conv_precision(int precision, const nn_conv_t *conv)
{
    if (precision != NN_PRECISION_BF16)
        return NN_PRECISION_FP32;
    /* Measured (bench/README.md, avx512_bf16 without AMX): see NN_BF16_DEFAULT_KINDS. */
    const char *list = getenv("NN_BF16_KINDS");
    if (!list || !*list)
        list = NN_BF16_DEFAULT_KINDS;
    return kind_listed(list, conv_kind(conv)) ? NN_PRECISION_BF16 : NN_PRECISION_FP32;
}
