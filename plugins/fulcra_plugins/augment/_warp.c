/* Nearest-pixel affine warp of a whole batch, for _kernels.warp_nearest (see there).
 *
 * Built at run time by fulcra.native (cc -O3 [-fopenmp] -fPIC -shared -ffp-contract=off). The
 * source pixel of every output pixel is decided with exactly the arithmetic of
 * _kernels.source_index (the torch reference):
 *
 *   r[c][k]  = (double)((float)theta[c][k] / (float)(size_c / 2))      c = 0 (x, size W), 1 (y, H)
 *   col_c[j] = (float)((xs[j] * r[c][0]) * half_c)                      xs[j] = j + (0.5 - W/2)
 *   row_c[i] = (float)((((ys[i] * r[c][1]) + (r[c][2] + 1.0)) * half_c) - 0.5)
 *   p_c      = rintf(col_c[j] + row_c[i])        (float32 sum, round half to even)
 *
 * each double operation rounded once, in this order (no contraction into fused multiply-adds: the
 * build passes -ffp-contract=off). The output pixel is the source pixel (p_x, p_y) when it lies in
 * the image, zero otherwise (the reference clamps to the one-pixel zero border of a padded image
 * and gathers from it: the same thing). Pixels are copied as raw elements of 1, 2, 4 or 8 bytes,
 * so every dtype warps alike and the zero fill is the all-zero bit pattern (+0 for floats).
 *
 * Work is done row by row: the source offsets of one output row (int32, -1 for the fill) are
 * computed once and used for every channel, so nothing larger than a few rows of indices is
 * written besides the output itself. With OpenMP the (image, row) pairs are split between threads;
 * every output element is computed by one thread in the same way: identical for any thread count.
 * A matrix whose coordinate parts are not all finite is refused (-3) and left to the reference.
 *
 * The same library holds RandomResizedCrop's crop + bilinear resize (fulcra_crop_resize, below).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* per image: the four float32 coordinate parts (x from columns, x from rows, y from columns, y from rows) */
static void coord_parts(const double *theta, int64_t H, int64_t W, float *cx, float *rx, float *cy, float *ry) {
    const double halfw = 0.5 * (double)W, halfh = 0.5 * (double)H;
    const float sw = (float)halfw, sh = (float)halfh;
    double r[2][3];
    for (int k = 0; k < 3; k++) {
        r[0][k] = (double)((float)theta[k] / sw);
        r[1][k] = (double)((float)theta[3 + k] / sh);
    }
    const double offw = 0.5 - 0.5 * (double)W, offh = 0.5 - 0.5 * (double)H;
    const double bx = r[0][2] + 1.0, by = r[1][2] + 1.0;
    for (int64_t j = 0; j < W; j++) {
        const double xs = (double)j + offw;
        cx[j] = (float)((xs * r[0][0]) * halfw);
        cy[j] = (float)((xs * r[1][0]) * halfh);
    }
    for (int64_t i = 0; i < H; i++) {
        const double ys = (double)i + offh;
        rx[i] = (float)((((ys * r[0][1]) + bx) * halfw) - 0.5);
        ry[i] = (float)((((ys * r[1][1]) + by) * halfh) - 0.5);
    }
}

/* source offsets (y * W + x) of output row i, -1 where the source lies outside the image */
static void row_index(const float *cx, float rxi, const float *cy, float ryi, int64_t H, int64_t W, int32_t *idx) {
    const float wmax = (float)(W - 1), hmax = (float)(H - 1);
    for (int64_t j = 0; j < W; j++) {
        const float px = rintf(cx[j] + rxi);
        const float py = rintf(cy[j] + ryi);
        /* NaN fails every comparison: filled */
        const int in = (px >= 0.0f) & (px <= wmax) & (py >= 0.0f) & (py <= hmax);
        idx[j] = in ? (int32_t)py * (int32_t)W + (int32_t)px : -1;
    }
}

/* The valid pixels of a row: [*j0, *j1) when the sources inside the image are exactly those of
 * one run of columns (always so for a finite matrix: each source coordinate is a rounded monotone
 * function of the column, so the columns whose source lies inside form an interval), with *shift
 * set when the run reads consecutive source pixels (a translation along the row). Returns 0 when
 * the valid pixels are not one run (the caller then tests every pixel). */
static int row_run(const int32_t *idx, int64_t W, int64_t *j0, int64_t *j1, int *shift) {
    int64_t a = 0, b = W;
    while (a < W && idx[a] < 0) a++;
    while (b > a && idx[b - 1] < 0) b--;
    int bad = 0, consecutive = 1;
    for (int64_t j = a; j < b; j++) {
        bad |= idx[j] < 0;
        consecutive &= idx[j] == idx[a] + (int32_t)(j - a);
    }
    *j0 = a;
    *j1 = b;
    *shift = consecutive;
    return !bad;
}

#define GATHER_ROW(T)                                                                            \
    static void gather_##T(const T *src, T *dst, const int32_t *idx, int64_t W, int run,          \
                           int64_t j0, int64_t j1, int shift) {                                   \
        if (!run) {                                                                              \
            for (int64_t j = 0; j < W; j++) {                                                    \
                const int32_t k = idx[j];                                                        \
                dst[j] = k < 0 ? (T)0 : src[k];                                                  \
            }                                                                                    \
            return;                                                                              \
        }                                                                                        \
        for (int64_t j = 0; j < j0; j++) dst[j] = (T)0;                                          \
        if (shift && j1 > j0) {                                                                  \
            memcpy(dst + j0, src + idx[j0], sizeof(T) * (size_t)(j1 - j0));                       \
        } else {                                                                                 \
            for (int64_t j = j0; j < j1; j++) dst[j] = src[idx[j]];                              \
        }                                                                                        \
        for (int64_t j = j1; j < W; j++) dst[j] = (T)0;                                          \
    }
GATHER_ROW(uint8_t)
GATHER_ROW(uint16_t)
GATHER_ROW(uint32_t)
GATHER_ROW(uint64_t)

/* three uint8 planes at once (RGB, the common case): one index load per pixel for three copies */
static void gather3_u8(const uint8_t *src, uint8_t *dst, int64_t plane, const int32_t *idx, int64_t W, int run,
                       int64_t j0, int64_t j1, int shift) {
    const uint8_t *s0 = src, *s1 = src + plane, *s2 = src + 2 * plane;
    uint8_t *d0 = dst, *d1 = dst + plane, *d2 = dst + 2 * plane;
    if (!run || shift) {
        for (int c = 0; c < 3; c++)
            gather_uint8_t(src + c * plane, dst + c * plane, idx, W, run, j0, j1, shift);
        return;
    }
    for (int64_t j = 0; j < j0; j++) d0[j] = d1[j] = d2[j] = 0;
    for (int64_t j = j0; j < j1; j++) {
        const int32_t k = idx[j];
        d0[j] = s0[k];
        d1[j] = s1[k];
        d2[j] = s2[k];
    }
    for (int64_t j = j1; j < W; j++) d0[j] = d1[j] = d2[j] = 0;
}

static void gather_row(const void *src, void *dst, const int32_t *idx, int64_t W, int esize, int run, int64_t j0,
                       int64_t j1, int shift) {
    switch (esize) {
    case 1: gather_uint8_t((const uint8_t *)src, (uint8_t *)dst, idx, W, run, j0, j1, shift); break;
    case 2: gather_uint16_t((const uint16_t *)src, (uint16_t *)dst, idx, W, run, j0, j1, shift); break;
    case 4: gather_uint32_t((const uint32_t *)src, (uint32_t *)dst, idx, W, run, j0, j1, shift); break;
    default: gather_uint64_t((const uint64_t *)src, (uint64_t *)dst, idx, W, run, j0, j1, shift); break;
    }
}

/* Source offsets of every output pixel of every image, exactly as warp_nearest decides them:
 * index [B, H, W] int32 (y * W + x, -1 for the fill). For tests (the reference's source_index
 * gives the same pixels in padded coordinates). Returns 0, or -1 when out of memory. */
int fulcra_warp_index(const double *theta, int64_t B, int64_t H, int64_t W, int32_t *index) {
    float *parts = (float *)malloc(sizeof(float) * (size_t)(2 * W + 2 * H));
    if (!parts) return -1;
    for (int64_t b = 0; b < B; b++) {
        float *cx = parts, *cy = parts + W, *rx = parts + 2 * W, *ry = parts + 2 * W + H;
        coord_parts(theta + 6 * b, H, W, cx, rx, cy, ry);
        for (int64_t i = 0; i < H; i++) row_index(cx, rx[i], cy, ry[i], H, W, index + (b * H + i) * W);
    }
    free(parts);
    return 0;
}

/* Warps images [B, C, H, W] (contiguous, elements of esize = 1, 2, 4 or 8 bytes) into out (same
 * shape, contiguous, not overlapping) with per-image inverse matrices theta [B, 2, 3] float64 in
 * centred pixel coordinates. threads <= 1 runs serially. Returns 0, -1 when out of memory, -2 for
 * a bad argument, -3 when a coordinate part is not finite (nothing is written). */
int fulcra_warp_nearest(const void *images, void *out, const double *theta, int64_t B, int64_t C, int64_t H,
                        int64_t W, int esize, int threads) {
    if (!(esize == 1 || esize == 2 || esize == 4 || esize == 8) || B < 0 || C < 1 || H < 1 || W < 1) return -2;
    if (H * W > (int64_t)INT32_MAX) return -2;
    if (B == 0) return 0;
    const int64_t per = 2 * W + 2 * H; /* floats of coordinate parts per image */
    float *parts = (float *)malloc(sizeof(float) * (size_t)(per * B));
    if (!parts) return -1;
    const int64_t plane = H * W;
    /* the coordinate parts of every image (O(B (H + W)), serial); a non-finite part (a NaN or
     * infinite matrix entry, or an overflow to infinity) is left to the torch reference, whose
     * result there (zeros for infinities, an index error for NaNs) the caller reproduces by
     * running it */
    for (int64_t b = 0; b < B; b++) {
        float *p = parts + per * b;
        coord_parts(theta + 6 * b, H, W, p, p + 2 * W, p + W, p + 2 * W + H);
        int finite = 1;
        for (int64_t k = 0; k < per; k++) finite &= isfinite(p[k]) != 0;
        if (!finite) {
            free(parts);
            return -3;
        }
    }
    int fail = 0;
#ifdef _OPENMP
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (size_t)W);
        if (!idx) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            fail = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t t = 0; t < B * H; t++) {
            if (idx) {
                const int64_t b = t / H, i = t % H;
                const float *p = parts + per * b;
                row_index(p, p[2 * W + i], p + W, p[2 * W + H + i], H, W, idx);
                int64_t j0, j1;
                int shift;
                const int run = row_run(idx, W, &j0, &j1, &shift);
                const char *src = (const char *)images + (size_t)(b * C * plane) * esize;
                char *dst = (char *)out + (size_t)((b * C * plane) + i * W) * esize;
                if (esize == 1 && C == 3) {
                    gather3_u8((const uint8_t *)src, (uint8_t *)dst, plane, idx, W, run, j0, j1, shift);
                    continue;
                }
                for (int64_t c = 0; c < C; c++)
                    gather_row(src + (size_t)(c * plane) * esize, dst + (size_t)(c * plane) * esize, idx, W, esize, run, j0,
                               j1, shift);
            }
        }
        free(idx);
    }
    free(parts);
    return fail ? -1 : 0;
}

/* ---- crop + bilinear resize, for _kernels.crop_resize_bilinear ------------------------------- */

/* One axis of _kernels._crop_axis, the same float32 operations in the same order:
 *   s  = max((j + 0.5f) * (length / n) - 0.5f, 0);  s = min(s, length - 1) + start
 *   i0 = floor(s), w1 = s - i0, i1 = min(i0 + 1, start + length - 1)
 * start and length integer-valued. Returns 0, or -2 when the span is not inside [0, n). */
static int crop_axis(int64_t n, double start_d, double length_d, int32_t *i0, int32_t *i1, float *w1, float *w0) {
    const float start = (float)start_d, length = (float)length_d;
    if (!(start >= 0.0f) || !(length >= 1.0f) || !((double)start + (double)length <= (double)n)) return -2;
    const float q = length / (float)n;
    const float last = length - 1.0f;
    const int32_t hi = (int32_t)(start + length - 1.0f);
    for (int64_t j = 0; j < n; j++) {
        float s = ((float)j + 0.5f) * q - 0.5f;
        s = s < 0.0f ? 0.0f : s;
        s = (s < last ? s : last) + start;
        const float f = floorf(s);
        const float w = s - f;
        const int32_t k = (int32_t)f;
        i0[j] = k;
        i1[j] = k + 1 < hi ? k + 1 : hi;
        w1[j] = w;
        w0[j] = 1.0f - w;
    }
    return 0;
}

/* For tests: the axis tables of one (n, start, length), as _crop_axis gives them. */
int fulcra_crop_axis(int64_t n, double start, double length, int32_t *i0, int32_t *i1, float *w1) {
    float *w0 = (float *)malloc(sizeof(float) * (size_t)n);
    if (!w0) return -1;
    const int rc = crop_axis(n, start, length, i0, i1, w1, w0);
    free(w0);
    return rc;
}

/* Crops box b of images [B, C, H, W] (uint8 when is_float == 0, else float32; contiguous) and
 * resizes it back to H x W bilinearly, into out (same shape and dtype): the arithmetic of
 * _kernels.crop_resize_bilinear, in float32 with each product and sum rounded once (rows first:
 * v = a * (1 - wy) + b * wy over the source columns of the crop, then columns the same way),
 * uint8 results rounded half to even and clamped to [0, 255]. top, left, height, width [B]
 * float64 (integer-valued). Returns 0, -1 when out of memory, -2 when a box is not inside its image. */
int fulcra_crop_resize(const void *images, void *out, const double *top, const double *left, const double *height,
                       const double *width, int64_t B, int64_t C, int64_t H, int64_t W, int is_float, int threads) {
    if (B < 0 || C < 1 || H < 1 || W < 1 || H * W > (int64_t)INT32_MAX) return -2;
    if (B == 0) return 0;
    /* per image: y0, y1 [H] int32, wy1, wy0 [H] float, x0, x1 [W], wx1, wx0 [W] */
    const int64_t per = 4 * H + 4 * W;
    int32_t *tabs = (int32_t *)malloc(sizeof(int32_t) * (size_t)(per * B));
    if (!tabs) return -1;
    for (int64_t b = 0; b < B; b++) {
        int32_t *t = tabs + per * b;
        if (crop_axis(H, top[b], height[b], t, t + H, (float *)(t + 2 * H), (float *)(t + 3 * H)) != 0 ||
            crop_axis(W, left[b], width[b], t + 4 * H, t + 4 * H + W, (float *)(t + 4 * H + 2 * W),
                      (float *)(t + 4 * H + 3 * W)) != 0) {
            free(tabs);
            return -2;
        }
    }
    const int64_t plane = H * W;
    int fail = 0;
#ifdef _OPENMP
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        float *v = (float *)malloc(sizeof(float) * (size_t)W);
        if (!v) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            fail = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t t = 0; t < B * C * H; t++) {
            if (!v) continue;
            const int64_t bc = t / H, i = t % H, b = bc / C;
            const int32_t *tb = tabs + per * b;
            const int32_t *y0 = tb, *y1 = tb + H, *x0 = tb + 4 * H, *x1 = tb + 4 * H + W;
            const float *wy1 = (const float *)(tb + 2 * H), *wy0 = (const float *)(tb + 3 * H);
            const float *wx1 = (const float *)(tb + 4 * H + 2 * W), *wx0 = (const float *)(tb + 4 * H + 3 * W);
            /* the source columns the crop reads: [x0[0], x1[W - 1]] (both monotone) */
            const int64_t lo = x0[0], hi = x1[W - 1];
            const float a0 = wy0[i], a1 = wy1[i];
            if (is_float) {
                const float *r0 = (const float *)images + bc * plane + (int64_t)y0[i] * W;
                const float *r1 = (const float *)images + bc * plane + (int64_t)y1[i] * W;
                for (int64_t k = lo; k <= hi; k++) v[k] = r0[k] * a0 + r1[k] * a1;
                float *o = (float *)out + bc * plane + i * W;
                for (int64_t j = 0; j < W; j++) o[j] = v[x0[j]] * wx0[j] + v[x1[j]] * wx1[j];
            } else {
                const uint8_t *r0 = (const uint8_t *)images + bc * plane + (int64_t)y0[i] * W;
                const uint8_t *r1 = (const uint8_t *)images + bc * plane + (int64_t)y1[i] * W;
                for (int64_t k = lo; k <= hi; k++) v[k] = (float)r0[k] * a0 + (float)r1[k] * a1;
                uint8_t *o = (uint8_t *)out + bc * plane + i * W;
                for (int64_t j = 0; j < W; j++) {
                    float r = rintf(v[x0[j]] * wx0[j] + v[x1[j]] * wx1[j]);
                    r = r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r);
                    o[j] = (uint8_t)r;
                }
            }
        }
        free(v);
    }
    free(tabs);
    return fail ? -1 : 0;
}
