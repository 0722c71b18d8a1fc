#include "phantom.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define PI 3.14159265358979323846
#define AIR_HU (-1000.0f)
#define HEADREST_HU 250.0f
#define FOV_PADDING_STORED (-2000) /* what many real scanners store outside the FOV circle */
/* Noise before the 3x3 blur (which leaves 0.375 of it): about 4 HU at 0.45 mm pixels, less
 * on coarse pixels, which average more of the detector's noise. */
#define NOISE_SIGMA_HU 11.0f
#define NOISE_REFERENCE_PIXEL_MM 0.45f

/* ---- random numbers ---- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t phantom_rng_next(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ULL;
    return mix64(*state);
}

double phantom_rng_uniform(uint64_t *state, double lo, double hi)
{
    return lo + (hi - lo) * ((double)(phantom_rng_next(state) >> 11) * 0x1.0p-53);
}

uint64_t phantom_hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t h = mix64(seed ^ 0x243f6a8885a308d3ULL);
    h = mix64(h + 0x9e3779b97f4a7c15ULL * (a + 1));
    h = mix64(h + 0xc2b2ae3d27d4eb4fULL * (b + 1));
    return mix64(h + 0x165667b19e3779f9ULL * (c + 1));
}

/* ---- the head and its lesions ---- */

void phantom_head_random(phantom_head_t *head, const double center[3], uint64_t *rng)
{
    memset(head, 0, sizeof *head);
    head->center[0] = center[0] + phantom_rng_uniform(rng, -6, 6);
    head->center[1] = center[1] + phantom_rng_uniform(rng, -6, 6);
    head->center[2] = center[2];
    head->yaw = phantom_rng_uniform(rng, -0.12, 0.12);
    head->axes[0] = phantom_rng_uniform(rng, 68, 78);
    head->axes[1] = phantom_rng_uniform(rng, 88, 100);
    head->axes[2] = phantom_rng_uniform(rng, 78, 88);
    head->scalp = phantom_rng_uniform(rng, 4, 6.5);
    head->skull = phantom_rng_uniform(rng, 5.5, 8);
    head->grey = phantom_rng_uniform(rng, 36, 41);
    head->white = phantom_rng_uniform(rng, 25, 30);
    head->csf = phantom_rng_uniform(rng, 4, 10);
    head->bone = phantom_rng_uniform(rng, 1100, 1400);
    for (int k = 0; k < 3; k++)
        head->sulcus_phase[k] = phantom_rng_uniform(rng, 0, 2 * PI);
    /* Older brains have larger ventricles. */
    head->ventricle_scale = phantom_rng_uniform(rng, 0.85, 1.25) * head->axes[0] / 74.0;
}

static int place_blob(const phantom_head_t *head, phantom_lesion_t *l, uint64_t *rng);

int phantom_add_lesion(phantom_head_t *head, int subtype, uint64_t *rng)
{
    if (head->nlesions >= PHANTOM_MAX_LESIONS)
        return -1;
    /* Counted only once placed, so that placement sees the head without it. */
    phantom_lesion_t *l = &head->lesions[head->nlesions];
    memset(l, 0, sizeof *l);
    l->subtype = subtype;
    l->azimuth = phantom_rng_uniform(rng, -PI, PI);
    switch (subtype) {
    case PH_EPIDURAL: /* a thick, short lens against the skull */
        l->hu = phantom_rng_uniform(rng, 65, 90);
        l->elevation = phantom_rng_uniform(rng, -0.05, 0.55);
        l->half_azimuth = phantom_rng_uniform(rng, 0.25, 0.42);
        l->half_elevation = phantom_rng_uniform(rng, 0.22, 0.34);
        l->thickness = phantom_rng_uniform(rng, 9, 20);
        break;
    case PH_SUBDURAL: /* a thin, long crescent along the skull */
        l->hu = phantom_rng_uniform(rng, 55, 80);
        l->elevation = phantom_rng_uniform(rng, 0.0, 0.5);
        l->half_azimuth = phantom_rng_uniform(rng, 0.6, 1.0);
        l->half_elevation = phantom_rng_uniform(rng, 0.35, 0.55);
        l->thickness = phantom_rng_uniform(rng, 5, 11);
        break;
    case PH_SUBARACHNOID: /* blood in the sulci of a patch of cortex */
        l->hu = phantom_rng_uniform(rng, 55, 80);
        l->elevation = phantom_rng_uniform(rng, -0.1, 0.6);
        l->half_azimuth = phantom_rng_uniform(rng, 0.4, 0.75);
        l->half_elevation = phantom_rng_uniform(rng, 0.25, 0.45);
        l->thickness = 16; /* deepest sulcus it may fill, for the bounds */
        break;
    case PH_INTRAPARENCHYMAL: /* an irregular blob in the tissue, above the skull base */
        l->hu = phantom_rng_uniform(rng, 60, 85);
        if (place_blob(head, l, rng) != 0)
            return -1;
        break;
    case PH_INTRAVENTRICULAR:
        l->hu = phantom_rng_uniform(rng, 50, 75);
        l->side = (int)(phantom_rng_next(rng) % 3) - 1;
        l->fill = phantom_rng_uniform(rng, 0.3, 1.0);
        break;
    default:
        return -1;
    }
    head->nlesions++;
    return 0;
}

/* ---- geometry helpers ---- */

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }
/* Plain comparisons: libm's fminf/fmaxf are calls that the hot loop does not need. */
static inline float min2(float a, float b) { return a < b ? a : b; }
static inline float max2(float a, float b) { return a > b ? a : b; }

/* Fraction of a pixel inside a region, from the signed distance to its edge (> 0 inside). */
static inline float cover(float inside_mm, float px)
{
    return clampf(0.5f + inside_mm / px, 0, 1);
}

/* Fraction of a pixel's width [-px/2, px/2] that the band [s - hw, s + hw] covers. */
static inline float band_cover(float s, float hw, float px)
{
    float lo = max2(s - hw, -0.5f * px), hi = min2(s + hw, 0.5f * px);
    return clampf((hi - lo) / px, 0, 1);
}

static inline float mixf(float a, float b, float w) { return a + (b - a) * w; }

/* Full contrast in the middle of an extent, fading to 35% at its ends (partial volume). */
static inline float end_fade(float e)
{
    e = fabsf(e);
    return e < 0.5f ? 1.0f : clampf(1.0f - 1.3f * (e - 0.5f), 0.35f, 1.0f);
}

/* An ellipsoid, possibly sheared in x along y (so the ventricles can bend outward). */
typedef struct {
    float c[3], inv_axes[3], shear, min_axis;
    int side; /* -1 right, +1 left, 0 midline: which hemorrhage side fills it */
} ellipsoid_t;

/* Signed distance (mm, > 0 inside) along the ray from the centre; -1e9 when far outside. */
static inline float ellipsoid_inside(const ellipsoid_t *e, const float *p, float margin)
{
    float qx = p[0] - e->c[0], qy = p[1] - e->c[1], qz = p[2] - e->c[2];
    qx -= e->shear * qy;
    float nx = qx * e->inv_axes[0], ny = qy * e->inv_axes[1], nz = qz * e->inv_axes[2];
    float rho2 = nx * nx + ny * ny + nz * nz;
    float limit = 1.0f + margin / e->min_axis;
    if (rho2 > limit * limit)
        return -1e9f;
    float rho = sqrtf(rho2), len = sqrtf(qx * qx + qy * qy + qz * qz);
    if (rho < 1e-6f)
        return e->min_axis;
    return len * (1.0f / rho - 1.0f);
}

#define N_VENTRICLES 7
#define N_NUCLEI 2

/* What one slice needs, precomputed from the head. */
typedef struct {
    const phantom_head_t *head;
    float px;
    float inv_axes[3], axes[3];
    float cos_yaw, sin_yaw;
    ellipsoid_t ventricles[N_VENTRICLES], nuclei[N_NUCLEI];
    float ventricle_box_lo[3], ventricle_box_hi[3];
    float lateral_fill_y; /* blood of the lateral ventricles lies posterior of this y */
    /* Surface lesions: unit direction of the centre (normalised frame), angular reach. */
    float lesion_dir[PHANTOM_MAX_LESIONS][3], lesion_cos_reach[PHANTOM_MAX_LESIONS];
    ellipsoid_t blob[PHANTOM_MAX_LESIONS];
} slice_ctx_t;

static void set_ellipsoid(ellipsoid_t *e, float s, float cx, float cy, float cz, float ax,
                          float ay, float az, float shear, int side)
{
    e->c[0] = cx * s;
    e->c[1] = cy * s;
    e->c[2] = cz;
    e->inv_axes[0] = 1.0f / (ax * s);
    e->inv_axes[1] = 1.0f / (ay * s);
    e->inv_axes[2] = 1.0f / (az * s);
    e->min_axis = min2(min2(ax, ay), az) * s;
    e->shear = shear;
    e->side = side;
}

/* Ventricles (lateral bodies, occipital and temporal horns, third) and deep nuclei (mm). */
static void deep_structures_init(ellipsoid_t ventricles[N_VENTRICLES],
                                 ellipsoid_t nuclei[N_NUCLEI], const phantom_head_t *h)
{
    float s = (float)h->ventricle_scale, zc = 0.17f * (float)h->axes[2];
    for (int side = -1, i = 0; side <= 1; side += 2, i++) {
        set_ellipsoid(&ventricles[3 * i], s, 8.0f * side, -2, zc, 5.5f, 25, 9, 0.12f * side,
                      side);
        set_ellipsoid(&ventricles[3 * i + 1], s, 15.0f * side, 26, zc - 4 * s, 4, 12, 5,
                      0.2f * side, side);
        set_ellipsoid(&ventricles[3 * i + 2], s, 25.0f * side, -5, -0.15f * h->axes[2], 2.5f,
                      10, 3.5f, 0, side);
        set_ellipsoid(&nuclei[i], s, 19.0f * side, 2, 0.05f * h->axes[2], 8, 15, 10, 0, side);
    }
    set_ellipsoid(&ventricles[6], s, 0, 4, 0.02f * h->axes[2], 1.6f, 11, 8, 0, 0);
}

static void ctx_init(slice_ctx_t *ctx, const phantom_head_t *h, double px)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->head = h;
    ctx->px = (float)px;
    for (int k = 0; k < 3; k++) {
        ctx->axes[k] = (float)h->axes[k];
        ctx->inv_axes[k] = 1.0f / (float)h->axes[k];
    }
    ctx->cos_yaw = (float)cos(h->yaw);
    ctx->sin_yaw = (float)sin(h->yaw);
    deep_structures_init(ctx->ventricles, ctx->nuclei, h);
    for (int k = 0; k < 3; k++) {
        ctx->ventricle_box_lo[k] = 1e9f;
        ctx->ventricle_box_hi[k] = -1e9f;
    }
    for (int v = 0; v < N_VENTRICLES; v++) {
        const ellipsoid_t *e = &ctx->ventricles[v];
        for (int k = 0; k < 3; k++) {
            float reach = 1.0f / e->inv_axes[k] + (k == 0 ? 40 * fabsf(e->shear) : 0) + 4;
            ctx->ventricle_box_lo[k] = min2(ctx->ventricle_box_lo[k], e->c[k] - reach);
            ctx->ventricle_box_hi[k] = max2(ctx->ventricle_box_hi[k], e->c[k] + reach);
        }
    }

    for (int i = 0; i < h->nlesions; i++) {
        const phantom_lesion_t *l = &h->lesions[i];
        if (l->subtype == PH_INTRAVENTRICULAR) {
            const ellipsoid_t *body = &ctx->ventricles[0];
            float half_length = 1.0f / body->inv_axes[1];
            ctx->lateral_fill_y = body->c[1] + half_length * (1.0f - 2.0f * (float)l->fill);
        } else if (l->subtype == PH_INTRAPARENCHYMAL) {
            set_ellipsoid(&ctx->blob[i], 1, (float)l->center[0], (float)l->center[1],
                          (float)l->center[2], (float)l->radius[0], (float)l->radius[1],
                          (float)l->radius[2], 0, 0);
        } else {
            ctx->lesion_dir[i][0] = (float)(cos(l->elevation) * cos(l->azimuth));
            ctx->lesion_dir[i][1] = (float)(cos(l->elevation) * sin(l->azimuth));
            ctx->lesion_dir[i][2] = (float)sin(l->elevation);
            double reach = fmax(l->half_azimuth, l->half_elevation) * 1.15 + 0.05;
            ctx->lesion_cos_reach[i] = (float)cos(fmin(reach, PI));
        }
    }
}

/* Where one pixel lies relative to the head; computed once, shaded possibly several times. */
typedef struct {
    float p[3];      /* head frame (mm) */
    float n[3];      /* normalised frame (p / axes) */
    float rho;       /* |n|: 1 on the scalp's surface */
    float depth;     /* below the scalp surface along the ray from the centre (mm) */
    float brain;     /* below the inner table (mm) */
    float skull;     /* skull thickness here */
    float theta, rxy; /* azimuth and distance from the z axis, for the sulci */
    int has_angles;
    float azimuth, elevation; /* in the normalised frame */
} pixel_geo_t;

static void pixel_geometry(const slice_ctx_t *ctx, const float *p, pixel_geo_t *g)
{
    const phantom_head_t *h = ctx->head;
    memcpy(g->p, p, sizeof g->p);
    for (int k = 0; k < 3; k++)
        g->n[k] = p[k] * ctx->inv_axes[k];
    g->rho = sqrtf(g->n[0] * g->n[0] + g->n[1] * g->n[1] + g->n[2] * g->n[2]);
    float len = sqrtf(p[0] * p[0] + p[1] * p[1] + p[2] * p[2]);
    g->depth = g->rho > 1e-6f ? len * (1.0f / g->rho - 1.0f) : ctx->axes[0];
    /* The skull thickens towards the base. */
    float low = clampf((-p[2] * ctx->inv_axes[2] - 0.1f) / 0.5f, 0, 1);
    g->skull = (float)h->skull * (1.0f + 0.6f * low);
    g->brain = g->depth - (float)h->scalp - g->skull;
    g->rxy = sqrtf(p[0] * p[0] + p[1] * p[1]);
    g->theta = g->brain > -ctx->px ? atan2f(p[1], p[0]) : 0; /* only the brain needs it */
    g->has_angles = 0;
}

/* How far the blob's reach extends from its centre: nothing beyond is shaded. */
static inline float blob_reach(const phantom_lesion_t *l, float px)
{
    float big = max2(max2((float)l->radius[0], (float)l->radius[1]), (float)l->radius[2]);
    return 1.3f * big + 8 + px;
}

/* Signed distance (mm, > 0 inside) to the irregular surface of an intraparenchymal blob. */
static inline float blob_inside(const ellipsoid_t *e, const phantom_lesion_t *l, const float *p)
{
    float qx = p[0] - e->c[0], qy = p[1] - e->c[1], qz = p[2] - e->c[2];
    float len = sqrtf(qx * qx + qy * qy + qz * qz) + 1e-6f;
    float ux = qx / len, uy = qy / len, uz = qz / len;
    float lumpy = 1.0f + (float)l->lumps[0] * (ux * ux - uy * uy) +
                  (float)l->lumps[1] * 2 * ux * uy + (float)l->lumps[2] * 2 * ux * uz;
    float nx = qx * e->inv_axes[0], ny = qy * e->inv_axes[1], nz = qz * e->inv_axes[2];
    float rho = sqrtf(nx * nx + ny * ny + nz * nz) / lumpy;
    float big = max2(max2((float)l->radius[0], (float)l->radius[1]), (float)l->radius[2]);
    return rho > 1e-6f ? len * (1.0f / rho - 1.0f) : big;
}

#define BLOB_RIM_MM 5.0f            /* the oedema around the blood */
#define BLOB_VENTRICLE_GAP_MM 2.0f  /* blood stays this far from the ventricles */
#define BLOB_SURFACE_DEPTH_MM 4.0f  /* blood stays this deep below the inner table */
#define BLOB_GRID_MM 1.5f
#define BLOB_PLACEMENT_TRIES 400

/*
 * Does a blob's blood lie in the parenchyma: clear of the ventricles (blood there would be
 * intraventricular, not intraparenchymal), of the brain's surface and of the skull? Checked
 * on a grid over the blood's whole extent. (Its oedema rim may touch a ventricle: the
 * renderer stops it at the wall.)
 */
static int blob_fits(const slice_ctx_t *ctx, const ellipsoid_t *e, const phantom_lesion_t *l)
{
    /* The lumps reach at most 1.6 times the largest semi-axis. */
    float big = max2(max2((float)l->radius[0], (float)l->radius[1]), (float)l->radius[2]);
    float reach = 1.6f * big, step = BLOB_GRID_MM;
    int n = (int)ceilf(reach / step);
    for (int i = -n; i <= n; i++)
        for (int j = -n; j <= n; j++)
            for (int k = -n; k <= n; k++) {
                float p[3] = {e->c[0] + i * step, e->c[1] + j * step, e->c[2] + k * step};
                if (blob_inside(e, l, p) < -step)
                    continue;
                for (int v = 0; v < N_VENTRICLES; v++)
                    if (ellipsoid_inside(&ctx->ventricles[v], p, BLOB_VENTRICLE_GAP_MM + step) >
                        -BLOB_VENTRICLE_GAP_MM - step)
                        return 0;
                pixel_geo_t g;
                pixel_geometry(ctx, p, &g);
                if (g.brain < BLOB_SURFACE_DEPTH_MM + step)
                    return 0;
            }
    return 1;
}

/*
 * Centre, size and shape of an intraparenchymal blob, drawn until it fits (blob_fits);
 * later tries draw smaller blobs. Returns -1 when none fits (the lesion is then left out).
 */
static int place_blob(const phantom_head_t *head, phantom_lesion_t *l, uint64_t *rng)
{
    slice_ctx_t ctx;
    ctx_init(&ctx, head, 1.0);
    for (int attempt = 0; attempt < BLOB_PLACEMENT_TRIES; attempt++) {
        double shrink = 1.0 - 0.5 * attempt / BLOB_PLACEMENT_TRIES;
        double azimuth = attempt ? phantom_rng_uniform(rng, -PI, PI) : l->azimuth;
        double r = phantom_rng_uniform(rng, 0.1, 0.6);
        double el = phantom_rng_uniform(rng, -0.15, 0.75);
        l->azimuth = azimuth;
        l->center[0] = r * cos(el) * cos(azimuth) * (head->axes[0] - 18);
        l->center[1] = r * cos(el) * sin(azimuth) * (head->axes[1] - 18);
        l->center[2] = (0.05 + r * sin(el)) * (head->axes[2] - 18);
        for (int k = 0; k < 3; k++) {
            l->radius[k] = phantom_rng_uniform(rng, 5, 15) * shrink;
            l->lumps[k] = phantom_rng_uniform(rng, -0.2, 0.2);
        }
        ellipsoid_t e;
        set_ellipsoid(&e, 1, (float)l->center[0], (float)l->center[1], (float)l->center[2],
                      (float)l->radius[0], (float)l->radius[1], (float)l->radius[2], 0, 0);
        if (blob_fits(&ctx, &e, l))
            return 0;
    }
    return -1;
}

static void surface_angles(pixel_geo_t *g)
{
    if (g->has_angles)
        return;
    g->azimuth = atan2f(g->n[1], g->n[0]);
    g->elevation = atan2f(g->n[2], sqrtf(g->n[0] * g->n[0] + g->n[1] * g->n[1]));
    g->has_angles = 1;
}

/* Angular offsets of a pixel from a surface lesion's centre, in units of its half extents. */
static float surface_offset(const phantom_lesion_t *l, pixel_geo_t *g, float *e_elev)
{
    surface_angles(g);
    float da = g->azimuth - (float)l->azimuth;
    if (da > (float)PI)
        da -= 2 * (float)PI;
    if (da < -(float)PI)
        da += 2 * (float)PI;
    float qa = da / (float)l->half_azimuth;
    float qe = (g->elevation - (float)l->elevation) / (float)l->half_elevation;
    *e_elev = qe;
    return qa * qa + qe * qe;
}

static int surface_candidate(const slice_ctx_t *ctx, int i, const pixel_geo_t *g)
{
    const phantom_lesion_t *l = &ctx->head->lesions[i];
    if (g->brain > (float)l->thickness + 2 * ctx->px || g->brain < -2 * ctx->px)
        return 0;
    const float *d = ctx->lesion_dir[i];
    float dot = g->n[0] * d[0] + g->n[1] * d[1] + g->n[2] * d[2];
    return dot >= ctx->lesion_cos_reach[i] * g->rho;
}

/* Subarachnoid blood: how much of the fluid in sulci and on the surface is blood here. */
static float sah_weight(const slice_ctx_t *ctx, unsigned mask, pixel_geo_t *g, float *hu,
                        unsigned *touched)
{
    float w = 0;
    for (int i = 0; i < ctx->head->nlesions; i++) {
        const phantom_lesion_t *l = &ctx->head->lesions[i];
        if (l->subtype != PH_SUBARACHNOID || !(mask & (1u << i)))
            continue;
        float qe, q2 = surface_offset(l, g, &qe);
        if (q2 >= 1)
            continue;
        float wi = sqrtf(1 - q2) * end_fade(qe);
        if (wi > w) {
            w = wi;
            *hu = (float)l->hu;
        }
        *touched |= 1u << i;
    }
    return w;
}

/* Brain tissue, fluid spaces and hemorrhages at a pixel inside the skull. */
static float shade_brain(const slice_ctx_t *ctx, pixel_geo_t *g, unsigned mask,
                         unsigned *touched)
{
    const phantom_head_t *h = ctx->head;
    const float px = ctx->px, b = g->brain, z = g->p[2];
    const float ph[3] = {(float)h->sulcus_phase[0], (float)h->sulcus_phase[1],
                         (float)h->sulcus_phase[2]};

    float sah_hu = 0, sah = mask ? sah_weight(ctx, mask, g, &sah_hu, touched) : 0;
    float fluid = mixf((float)h->csf, sah_hu, sah);

    /* Sulci: wavy sheets running inward from the surface, 6-14 mm deep. */
    float sulcus_depth = 10.0f + 4.0f * sinf(7 * g->theta + 0.05f * z + ph[2]);
    float sulcus_s = 1e9f, sulcus_hw = 0;
    if (b < sulcus_depth + 3 + px) {
        float wave = 20 * g->theta + 1.8f * sinf(3 * g->theta + 0.04f * z + ph[0]);
        float f = sinf(wave + 0.08f * z + ph[1]);
        sulcus_s = fabsf(f) * g->rxy / 20.0f;
        /* Near the vertex the azimuthal pattern would converge to a star: fade it out. */
        sulcus_hw = 0.7f * (1.0f + 2.0f * sah) * (1.0f - 0.5f * clampf(b / sulcus_depth, 0, 1)) *
                    clampf((g->rxy - 15.0f) / 15.0f, 0, 1);
    }

    /* Grey cortex, thicker around the sulci; white matter below. */
    float grey_w = cover(4.5f - b, px);
    if (sulcus_s < 1e8f)
        grey_w = max2(grey_w, band_cover(sulcus_s, sulcus_hw + 3, px) *
                                   cover(sulcus_depth + 3 - b, px));
    float v = mixf((float)h->white, (float)h->grey, grey_w);

    /* Deep grey nuclei. */
    for (int i = 0; i < N_NUCLEI; i++) {
        float in = ellipsoid_inside(&ctx->nuclei[i], g->p, px);
        if (in > -1e8f)
            v = mixf(v, (float)h->grey - 2, cover(in, px));
    }

    /* Fluid: the thin space over the surface, then the sulci and the midline fissure, which
     * is where subarachnoid blood shows (not as a layer along the skull, unlike subdural). */
    v = mixf(v, (float)h->csf, band_cover(b - 0.6f, 0.6f, px));
    float fluid_w = 0;
    if (sulcus_s < 1e8f)
        fluid_w = band_cover(sulcus_s, sulcus_hw, px) * cover(sulcus_depth - b, px);
    if (b < 35 + px)
        fluid_w = max2(fluid_w, band_cover(g->p[0], 0.8f * (1.0f + sah), px) *
                                     cover(35 - b, px));
    v = mixf(v, fluid, fluid_w);

    /* Ventricles, with intraventricular blood settling at their posterior ends. */
    float ventricle_w = 0;
    int in_box = 1;
    for (int k = 0; k < 3; k++)
        in_box &= g->p[k] >= ctx->ventricle_box_lo[k] && g->p[k] <= ctx->ventricle_box_hi[k];
    if (in_box) {
        const phantom_lesion_t *ivh = NULL;
        int ivh_index = -1;
        for (int i = 0; i < h->nlesions; i++)
            if (h->lesions[i].subtype == PH_INTRAVENTRICULAR && (mask & (1u << i))) {
                ivh = &h->lesions[i];
                ivh_index = i;
            }
        for (int i = 0; i < N_VENTRICLES; i++) {
            const ellipsoid_t *e = &ctx->ventricles[i];
            float in = ellipsoid_inside(e, g->p, px);
            if (in < -1e8f)
                continue;
            float w = cover(in, px), value = (float)h->csf;
            if (ivh && (ivh->side == 0 || ivh->side == e->side) &&
                (e->side != 0 || ivh->fill > 0.6)) {
                float blood = cover(g->p[1] - ctx->lateral_fill_y, px);
                float e_z = (z - e->c[2]) * e->inv_axes[2];
                value = mixf(value, (float)ivh->hu, blood * end_fade(e_z));
                if (blood > 0 && w > 0)
                    *touched |= 1u << ivh_index;
            }
            v = mixf(v, value, w);
            ventricle_w = max2(ventricle_w, w);
        }
    }

    /* Intraparenchymal blood: an irregular blob with a faint rim of oedema, never inside a
     * ventricle (placement keeps it clear; this holds at the edges too). */
    for (int i = 0; i < h->nlesions; i++) {
        const phantom_lesion_t *l = &h->lesions[i];
        if (l->subtype != PH_INTRAPARENCHYMAL || !(mask & (1u << i)))
            continue;
        const ellipsoid_t *e = &ctx->blob[i];
        float qx = g->p[0] - e->c[0], qy = g->p[1] - e->c[1], qz = g->p[2] - e->c[2];
        float reach = blob_reach(l, px);
        if (qx * qx + qy * qy + qz * qz > reach * reach)
            continue;
        float in = blob_inside(e, l, g->p), parenchyma = 1 - ventricle_w;
        v = mixf(v, v - 9, cover(in + BLOB_RIM_MM, px) * (1 - cover(in, px)) * parenchyma);
        float w = cover(in, px) * end_fade(qz * e->inv_axes[2]) * parenchyma;
        v = mixf(v, (float)l->hu, w);
        *touched |= 1u << i;
    }

    /* Blood between skull and brain: epidural lens, subdural crescent. */
    for (int i = 0; i < h->nlesions; i++) {
        const phantom_lesion_t *l = &h->lesions[i];
        if ((l->subtype != PH_EPIDURAL && l->subtype != PH_SUBDURAL) || !(mask & (1u << i)))
            continue;
        if (!surface_candidate(ctx, i, g))
            continue;
        float qe, q2 = surface_offset(l, g, &qe);
        if (q2 >= 1)
            continue;
        float profile = l->subtype == PH_EPIDURAL ? 1 - q2 : sqrtf(1 - q2 * q2);
        float thickness = (float)l->thickness * profile;
        float w = cover(thickness - b, px) * end_fade(qe);
        if (w > 0) {
            v = mixf(v, (float)l->hu, w);
            *touched |= 1u << i;
        }
    }
    return v;
}

/* Everything at one pixel: air, headrest, scalp, skull, and the brain when inside. */
static float shade(const slice_ctx_t *ctx, pixel_geo_t *g, float rest_inside, unsigned mask,
                   unsigned *touched)
{
    const phantom_head_t *h = ctx->head;
    const float px = ctx->px;
    float v = mixf(AIR_HU, HEADREST_HU, rest_inside);
    if (g->depth < -px)
        return v;
    float scalp = mixf(-60.0f, 40.0f, cover(1.5f - g->depth, px)); /* skin over fat */
    v = mixf(v, scalp, cover(g->depth, px));
    /* Dense inner and outer tables, softer diploe between them. */
    float f = clampf((g->depth - (float)h->scalp) / g->skull, 0, 1);
    float edge = fabsf(2 * f - 1), table = edge * sqrtf(edge);
    float bone = mixf(0.55f * (float)h->bone, (float)h->bone, table);
    v = mixf(v, bone, cover(g->depth - (float)h->scalp, px));
    if (g->brain > -px)
        v = mixf(v, shade_brain(ctx, g, mask, touched), cover(g->brain, px));
    return v;
}

/* Lesions that might reach a pixel (cheap bounds), as a bit mask. */
static unsigned candidate_lesions(const slice_ctx_t *ctx, const pixel_geo_t *g)
{
    unsigned mask = 0;
    for (int i = 0; i < ctx->head->nlesions; i++) {
        const phantom_lesion_t *l = &ctx->head->lesions[i];
        switch (l->subtype) {
        case PH_EPIDURAL:
        case PH_SUBDURAL:
        case PH_SUBARACHNOID:
            if (surface_candidate(ctx, i, g))
                mask |= 1u << i;
            break;
        case PH_INTRAPARENCHYMAL:
        case PH_INTRAVENTRICULAR:
            if (g->brain > 0)
                mask |= 1u << i;
            break;
        }
    }
    return mask;
}

/* 3x3 binomial blur (1 2 1), clamped at the borders: softer edges, correlated noise. */
static void blur3(float *img, float *tmp, int n)
{
    for (int y = 0; y < n; y++) {
        const float *r = img + (size_t)y * n;
        float *o = tmp + (size_t)y * n;
        for (int x = 0; x < n; x++) {
            float l = r[x > 0 ? x - 1 : 0], rr = r[x < n - 1 ? x + 1 : n - 1];
            o[x] = 0.25f * l + 0.5f * r[x] + 0.25f * rr;
        }
    }
    for (int y = 0; y < n; y++) {
        const float *u = tmp + (size_t)(y > 0 ? y - 1 : 0) * n;
        const float *c = tmp + (size_t)y * n;
        const float *d = tmp + (size_t)(y < n - 1 ? y + 1 : n - 1) * n;
        float *o = img + (size_t)y * n;
        for (int x = 0; x < n; x++)
            o[x] = 0.25f * u[x] + 0.5f * c[x] + 0.25f * d[x];
    }
}

/* A roughly normal deviate from one 64-bit draw (sum of four uniforms, unit variance). */
static inline float noise_unit(uint64_t *state)
{
    uint64_t r = phantom_rng_next(state);
    float sum = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) +
                (float)((r >> 32) & 0xffff) + (float)(r >> 48);
    return (sum / 65535.0f - 2.0f) * 1.7320508f;
}

void phantom_render(const phantom_head_t *head, const phantom_plane_t *plane,
                    uint64_t noise_seed, int16_t *stored, int8_t label[N_SUBTYPES])
{
    const int n = plane->size;
    slice_ctx_t ctx;
    ctx_init(&ctx, head, plane->spacing);
    float *img = xmalloc((size_t)n * n * sizeof *img);
    float *tmp = xmalloc((size_t)n * n * sizeof *tmp);
    /*
     * What each subtype adds to each pixel (all its lesions together, since two lesions of a
     * kind may overlap), blurred like the image before it is counted.
     */
    unsigned subtype_lesions[N_SUBTYPES - 1] = {0};
    float *change[N_SUBTYPES - 1] = {NULL};
    for (int i = 0; i < head->nlesions; i++)
        subtype_lesions[head->lesions[i].subtype] |= 1u << i;
    for (int t = 0; t < N_SUBTYPES - 1; t++)
        if (subtype_lesions[t])
            change[t] = xcalloc((size_t)n * n, sizeof *change[t]);

    /* Head-frame steps per pixel: the plane rotated by -yaw about the head's centre. */
    float row[3], col[3], origin[3];
    const double *c = head->center;
    double o[3] = {plane->origin[0] - c[0], plane->origin[1] - c[1], plane->origin[2] - c[2]};
    const float cy = ctx.cos_yaw, sy = ctx.sin_yaw;
    origin[0] = (float)(cy * o[0] + sy * o[1]);
    origin[1] = (float)(-sy * o[0] + cy * o[1]);
    origin[2] = (float)o[2];
    row[0] = (float)(cy * plane->row_dir[0] + sy * plane->row_dir[1]) * (float)plane->spacing;
    row[1] = (float)(-sy * plane->row_dir[0] + cy * plane->row_dir[1]) * (float)plane->spacing;
    row[2] = (float)plane->row_dir[2] * (float)plane->spacing;
    col[0] = (float)(cy * plane->col_dir[0] + sy * plane->col_dir[1]) * (float)plane->spacing;
    col[1] = (float)(-sy * plane->col_dir[0] + cy * plane->col_dir[1]) * (float)plane->spacing;
    col[2] = (float)plane->col_dir[2] * (float)plane->spacing;

    /* The headrest is fixed to the scanner: a curved plastic cradle behind the head. */
    const float rest_y = (float)(head->axes[1] + 5.0);
    float rest_origin[2], rest_row[2], rest_col[2];
    for (int k = 0; k < 2; k++) {
        rest_origin[k] = (float)(plane->origin[k] - (k == 1 ? c[1] : 0));
        rest_row[k] = (float)(plane->row_dir[k] * plane->spacing);
        rest_col[k] = (float)(plane->col_dir[k] * plane->spacing);
    }
    const float px = ctx.px;

    for (int y = 0; y < n; y++) {
        for (int x = 0; x < n; x++) {
            float p[3];
            for (int k = 0; k < 3; k++)
                p[k] = origin[k] + x * row[k] + y * col[k];
            /* Patient x and y relative to the head's centre, for the headrest. */
            float pat_x = rest_origin[0] + x * rest_row[0] + y * rest_col[0];
            float pat_y = rest_origin[1] + x * rest_row[1] + y * rest_col[1];
            float ry = pat_y - rest_y - 0.004f * pat_x * pat_x;
            float rest = fabsf(pat_x) < 95 ? band_cover(ry, 2.0f, px) : 0;

            pixel_geo_t g;
            pixel_geometry(&ctx, p, &g);
            unsigned mask = g.depth > -px ? candidate_lesions(&ctx, &g) : 0;
            unsigned touched = 0;
            float v = shade(&ctx, &g, rest, mask, &touched);
            img[(size_t)y * n + x] = v;

            /* Each subtype's share: how much the pixel changes without its lesions. */
            for (int t = 0; touched && t < N_SUBTYPES - 1; t++) {
                if (!(touched & subtype_lesions[t]))
                    continue;
                unsigned ignored = 0;
                float without = shade(&ctx, &g, rest, mask & ~subtype_lesions[t], &ignored);
                change[t][(size_t)y * n + x] = v - without;
            }
        }
    }

    uint64_t state = noise_seed;
    float sigma = NOISE_SIGMA_HU * clampf(NOISE_REFERENCE_PIXEL_MM / px, 0.35f, 1.0f);
    for (size_t i = 0; i < (size_t)n * n; i++)
        img[i] += sigma * noise_unit(&state);
    blur3(img, tmp, n);

    /* Stored values; -2000 outside the reconstruction circle. */
    float half = 0.5f * (n - 1), radius2 = 0.25f * n * n;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            size_t i = (size_t)y * n + x;
            float dx = x - half, dy = y - half;
            if (dx * dx + dy * dy > radius2) {
                stored[i] = FOV_PADDING_STORED;
                continue;
            }
            float s = img[i] - (float)PHANTOM_INTERCEPT;
            stored[i] = (int16_t)lrintf(clampf(s, -32768.0f, 32767.0f));
        }

    /* Labels: a lesion counts where the final image visibly changes because of it. */
    double pixel_area = plane->spacing * plane->spacing;
    size_t min_pixels = (size_t)ceil(PHANTOM_MIN_AREA_MM2 / pixel_area);
    if (min_pixels < 2)
        min_pixels = 2;
    memset(label, 0, N_SUBTYPES);
    for (int t = 0; t < N_SUBTYPES - 1; t++) {
        if (!change[t])
            continue;
        blur3(change[t], tmp, n);
        size_t evidence = 0;
        for (size_t p = 0; p < (size_t)n * n; p++)
            evidence += change[t][p] >= PHANTOM_MIN_EVIDENCE_HU;
        if (evidence >= min_pixels) {
            label[t] = 1;
            label[N_SUBTYPES - 1] = 1;
        }
        free(change[t]);
    }
    free(img);
    free(tmp);
}
