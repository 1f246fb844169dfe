/* Whole-batch uint8 kernels of the colour and histogram ops (fulcra_plugins.augment, issue 17).
 *
 * Every kernel reproduces bit for bit the torch arithmetic of the op's reference path in
 * colour.py / histogram.py (which the tests compare it with):
 *
 *   grey      floor(fl32(fl32(fl32(r * 0.2989f) + g * 0.587f) + b * 0.114f)), each "+ x * c" one
 *             float32 fused multiply-add (torchvision's rgb_to_grayscale, _kernels.gray_uint8_exact);
 *   blend     trunc(clamp(fl32(s + o * alpha), 0, 255)) with the sum in float64 (the products are
 *             exact there) and one rounding to float32 (_kernels.fma32_trunc_exact): Color with
 *             s = fl32(x * r), o = floor(grey); Sharpness with s = centre, o = round(blur) - centre.
 *
 * Fast paths with an exact fallback: only the floor of each value is kept, so each kernel first
 * computes an approximation with a proven error bound (grey: float32 with extra roundings; the
 * blends: 16.16 fixed-point sums of per-image tables, see FIX_FLAG) for the magnitudes allowed
 * (|value| < FAST_MAX, checked per image). Where the bound cannot decide the floor (the value lies
 * within a few 2^-16 of an integer) the value is flagged and recomputed with the exact arithmetic
 * above, so every output is the exact one; the fast path only decides how often the slow one runs.
 *
 * Layout: images are contiguous [*, C, H, W] uint8; a kernel reads image sidx[i] of src and writes
 * image didx[i] of dst (i < n), so the composite gathers and writes back without copies. Each image
 * is computed by one thread in a fixed order: the output does not depend on the thread count.
 * Compiled by fulcra.native (-ffp-contract=off -fno-fast-math: no fused multiply-adds behind the
 * source's back, which the fast path's error bound and the exact path both rely on).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int64_t i64;
typedef uint8_t u8;

/* An AVX2 build of the hot kernels next to the baseline one, chosen at load time (GCC ifunc): the
 * same IEEE operations in wider registers (no FMA: -ffp-contract=off), so the same bits. ifunc
 * needs glibc (musl has none: there the baseline build alone is compiled, instead of failing). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

#define BLK 256
/* float32 fast-path margin: the approximation is within 2^-14 of the exact value for |value| < 1024
 * (two extra roundings of at most half an ulp, 2^-15 each), the reference within 2^-15 of it: a
 * floor decided at least 2^-12 from an integer is the reference's floor */
#define EPS (1.0f / 4096.0f)
#define FAST_MAX 1000.0f
/* values per image from which Color and Sharpness tabulate their 2-D function (64K entries)
 * rather than compute each value in float32: about 64x64 pixels */
#define TABLE_MIN 4096

static inline int nthreads_for(int want, i64 n) {
    if (want < 1) want = 1;
    if ((i64)want > n) want = (int)(n > 0 ? n : 1);
    return want;
}

/* floor of |v| < 2^23 without a libm call (vectorisable): truncate, then step down below zero */
static inline float floor_small(float v) {
    int t = (int)v;
    t -= (v < (float)t);
    return (float)t;
}

/* ---------------------------------------------------------------- grey level ---------------- */

static inline u8 grey_exact(u8 r, u8 g, u8 b) {
    float t1 = (float)r * 0.2989f;
    float t2 = (float)((double)g * (double)0.587f + (double)t1);
    float t3 = (float)((double)b * (double)0.114f + (double)t2);
    return (u8)(int)floorf(t3);
}

/* floor(grey) of npix pixels of the planes r, g, b into out (values <= 254). */
static void grey_floor(const u8 *r, const u8 *g, const u8 *b, u8 *out, i64 npix) {
    for (i64 p0 = 0; p0 < npix; p0 += BLK) {
        int m = (int)(npix - p0 < BLK ? npix - p0 : BLK);
        const u8 *rr = r + p0, *gg = g + p0, *bb = b + p0;
        u8 *oo = out + p0;
        u8 fl8[BLK];
        int flag = 0;
        for (int j = 0; j < m; j++) {
            float v = (float)rr[j] * 0.2989f;
            v = v + (float)gg[j] * 0.587f;
            v = v + (float)bb[j] * 0.114f;
            float fl = floor_small(v);
            float fr = v - fl;
            int f = (fr < EPS) | (fr > 1.0f - EPS);
            fl8[j] = (u8)f;
            flag |= f;
            oo[j] = (u8)(int)fl;
        }
        if (flag) {
            for (int j = 0; j < m; j++)
                if (fl8[j]) oo[j] = grey_exact(rr[j], gg[j], bb[j]);
        }
    }
}

/* floor(grey) of every pixel: n images of 3 x npix -> out [n, npix] (a test hook). */
MULTIVERSION int fulcra_grey_floor(const u8 *src, i64 n, i64 npix, u8 *out) {
    for (i64 i = 0; i < n; i++) {
        const u8 *im = src + i * 3 * npix;
        grey_floor(im, im + npix, im + 2 * npix, out + i * npix, npix);
    }
    return 0;
}

/* Sum over each image of floor(grey) (C == 3) or of the values (C == 1): Contrast's mean. */
MULTIVERSION int fulcra_grey_sum(const u8 *src, const i64 *sidx, i64 n, i64 C, i64 npix, i64 *out, int nthreads) {
    if (C != 1 && C != 3) return 1;
    int nt = nthreads_for(nthreads, n);
    int err = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        u8 *buf = C == 3 ? (u8 *)malloc((size_t)BLK) : NULL;
        if (C == 3 && !buf) {
#pragma omp atomic write
            err = 2;
        }
#pragma omp for schedule(static)
        for (i64 i = 0; i < n; i++) {
            const u8 *im = src + sidx[i] * C * npix;
            i64 s = 0;
            if (C == 1) {
                for (i64 p = 0; p < npix; p++) s += im[p];
            } else if (buf) {
                for (i64 p0 = 0; p0 < npix; p0 += BLK) {
                    i64 m = npix - p0 < BLK ? npix - p0 : BLK;
                    grey_floor(im + p0, im + npix + p0, im + 2 * npix + p0, buf, m);
                    unsigned t = 0;
                    for (i64 j = 0; j < m; j++) t += buf[j];
                    s += t;
                }
            }
            out[i] = s;
        }
        free(buf);
    }
    return err;
}

/* ---------------------------------------------------------------- blends -------------------- */

static inline u8 clamp_trunc(float f) {
    f = f < 0.0f ? 0.0f : f;
    f = f > 255.0f ? 255.0f : f;
    return (u8)(int)f;
}

static inline u8 blend_exact(float s, float o, float alpha) {
    return clamp_trunc((float)((double)s + (double)o * (double)alpha));
}

static inline u8 clamp_floor_int(float fl) {
    fl = fl < 0.0f ? 0.0f : fl;
    fl = fl > 255.0f ? 255.0f : fl;
    return (u8)(int)fl;
}

/* Fixed-point tables of the blends: for a value E = u + v (exact, u and v from 256- or 511-entry
 * per-image tables), Z = TU[u] + TV[v] with T = floor(65536 * term) satisfies 65536 E - 2 < Z <= 65536 E,
 * so floor(E) = Z >> 16 unless Z is within 2 units below a multiple of 65536. The reference rounds E
 * to float32 (through float64), which moves it by at most 2^-15 (= 2 units) for |E| < 1024 and never
 * across an integer from above (integers are representable, rounding is monotone): its floor is
 * floor(E) unless E is within 2^-15 below an integer. Values with (Z & 0xFFFF) >= FIX_FLAG are
 * therefore recomputed exactly; every other output is clamp(Z >> 16, 0, 255). */
#define FIX_FLAG 0xFFF0

static inline u8 fix_out(int32_t Z) {
    int32_t q = Z >> 16; /* arithmetic shift: floor */
    q = q < 0 ? 0 : q;
    q = q > 255 ? 255 : q;
    return (u8)q;
}

/* Color (adjust_saturation), C == 3: out = blend(fl32(x * r32), floor(grey), alpha) per channel. */
MULTIVERSION int fulcra_color(const u8 *src, const i64 *sidx, u8 *dst, const i64 *didx, i64 n, i64 npix,
                              const float *r32, const float *alpha, int nthreads) {
    int nt = nthreads_for(nthreads, n);
    int err = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        u8 *grey = (u8 *)malloc((size_t)BLK);
        u8 *T = (u8 *)malloc((size_t)255 * 256);
        if (!grey || !T) {
#pragma omp atomic write
            err = 2;
        }
#pragma omp for schedule(static)
        for (i64 i = 0; i < n; i++) {
            if (!grey || !T) continue;
            const u8 *im = src + sidx[i] * 3 * npix;
            u8 *om = dst + didx[i] * 3 * npix;
            const float r = r32[i], a = alpha[i];
            const float M = 255.0f * fabsf(r) + 255.0f * fabsf(a);
            const int fast = M < FAST_MAX; /* false also for NaN */
            const int table = fast && npix >= TABLE_MIN;
            if (table) {
                /* the whole (grey, value) -> output function of this image, 255 x 256 entries */
                int32_t TX[256];
                for (int v = 0; v < 256; v++) TX[v] = (int32_t)floor((double)((float)v * r) * 65536.0);
                for (int g = 0; g < 255; g++) {
                    const int32_t tg = (int32_t)floor((double)g * (double)a * 65536.0);
                    u8 *restrict row = T + g * 256;
                    int flag = 0;
                    for (int v = 0; v < 256; v++) {
                        int32_t Z = TX[v] + tg;
                        flag |= (Z & 0xFFFF) >= FIX_FLAG;
                        row[v] = fix_out(Z);
                    }
                    if (flag) {
                        for (int v = 0; v < 256; v++)
                            if (((TX[v] + tg) & 0xFFFF) >= FIX_FLAG) row[v] = blend_exact((float)v * r, (float)g, a);
                    }
                }
            }
            for (i64 p0 = 0; p0 < npix; p0 += BLK) {
                int m = (int)(npix - p0 < BLK ? npix - p0 : BLK);
                grey_floor(im + p0, im + npix + p0, im + 2 * npix + p0, grey, m);
                for (int c = 0; c < 3; c++) {
                    const u8 *x = im + c * npix + p0;
                    u8 *o = om + c * npix + p0;
                    if (table) {
                        for (int j = 0; j < m; j++) o[j] = T[((int)grey[j] << 8) | x[j]];
                    } else if (fast) {
                        /* small images: float32 with the exact fallback (error <= 2^-14, see EPS) */
                        u8 fl8[BLK];
                        int flag = 0;
                        for (int j = 0; j < m; j++) {
                            float v = (float)x[j] * r + (float)grey[j] * a;
                            float fl = floor_small(v);
                            float fr = v - fl;
                            int f = (fr < EPS) | (fr > 1.0f - EPS);
                            fl8[j] = (u8)f;
                            flag |= f;
                            o[j] = clamp_floor_int(fl);
                        }
                        if (flag) {
                            for (int j = 0; j < m; j++)
                                if (fl8[j]) o[j] = blend_exact((float)x[j] * r, (float)grey[j], a);
                        }
                    } else {
                        for (int j = 0; j < m; j++) o[j] = blend_exact((float)x[j] * r, (float)grey[j], a);
                    }
                }
            }
        }
        free(grey);
        free(T);
    }
    return err;
}

/* Sharpness (adjust_sharpness), any C, H, W >= 3: border pixels copied; inside, with
 * b = round(S / 13) = (2S + 13) / 26 (S the 3x3 sum, centre weight 5), out = blend(centre, b - centre,
 * alpha): a function of (b, centre) only, tabulated per image (256 x 256 entries). */
MULTIVERSION int fulcra_sharpness(const u8 *src, const i64 *sidx, u8 *dst, const i64 *didx, i64 n, i64 C, i64 H,
                                  i64 W, const float *alpha, int nthreads) {
    if (H < 3 || W < 3) return 1;
    int nt = nthreads_for(nthreads, n);
    int err = 0;
    const i64 npix = H * W;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        uint16_t *cs = (uint16_t *)malloc((size_t)W * sizeof(uint16_t));
        u8 *bl = (u8 *)malloc((size_t)W);
        u8 *fl8 = (u8 *)malloc((size_t)W);
        u8 *T = (u8 *)malloc((size_t)256 * 256);
        if (!cs || !bl || !fl8 || !T) {
#pragma omp atomic write
            err = 2;
        }
#pragma omp for schedule(static)
        for (i64 i = 0; i < n; i++) {
            if (!cs || !bl || !fl8 || !T) continue;
            const float a = alpha[i];
            const int fast = 255.0f + 255.0f * fabsf(a) < FAST_MAX;
            const int table = fast && npix * C >= TABLE_MIN;
            if (table) {
                /* TR[j] = floor(65536 (255 - j) a), so d = b - c reads TR[255 - b + c], ascending in c */
                int32_t TR[511];
                for (int j = 0; j < 511; j++) TR[j] = (int32_t)floor((double)(255 - j) * (double)a * 65536.0);
                for (int b = 0; b < 256; b++) {
                    u8 *restrict row = T + b * 256;
                    const int32_t *restrict tr = TR + 255 - b;
                    int flag = 0;
                    for (int c = 0; c < 256; c++) {
                        int32_t Z = (c << 16) + tr[c];
                        flag |= (Z & 0xFFFF) >= FIX_FLAG;
                        row[c] = fix_out(Z);
                    }
                    if (flag) {
                        for (int c = 0; c < 256; c++)
                            if ((((c << 16) + tr[c]) & 0xFFFF) >= FIX_FLAG)
                                row[c] = blend_exact((float)c, (float)(b - c), a);
                    }
                }
            }
            for (i64 c = 0; c < C; c++) {
                const u8 *im = src + (sidx[i] * C + c) * npix;
                u8 *om = dst + (didx[i] * C + c) * npix;
                memcpy(om, im, (size_t)W);
                memcpy(om + (H - 1) * W, im + (H - 1) * W, (size_t)W);
                for (i64 y = 1; y < H - 1; y++) {
                    const u8 *up = im + (y - 1) * W, *mid = im + y * W, *dn = im + (y + 1) * W;
                    u8 *o = om + y * W;
                    for (i64 x = 0; x < W; x++) cs[x] = (uint16_t)(up[x] + mid[x] + dn[x]);
                    for (i64 x = 1; x < W - 1; x++) {
                        unsigned S = (unsigned)cs[x - 1] + cs[x] + cs[x + 1] + 4u * mid[x];
                        bl[x] = (u8)((2u * S + 13u) / 26u);
                    }
                    o[0] = mid[0];
                    o[W - 1] = mid[W - 1];
                    if (table) {
                        for (i64 x = 1; x < W - 1; x++) o[x] = T[((int)bl[x] << 8) | mid[x]];
                    } else if (fast) {
                        /* small images: float32 with the exact fallback (error <= 2^-14, see EPS) */
                        int flag = 0;
                        for (i64 x = 1; x < W - 1; x++) {
                            float v = (float)mid[x] + (float)((int)bl[x] - mid[x]) * a;
                            float fl = floor_small(v);
                            float fr = v - fl;
                            int f = (fr < EPS) | (fr > 1.0f - EPS);
                            fl8[x] = (u8)f;
                            flag |= f;
                            o[x] = clamp_floor_int(fl);
                        }
                        if (flag) {
                            for (i64 x = 1; x < W - 1; x++)
                                if (fl8[x]) o[x] = blend_exact((float)mid[x], (float)((int)bl[x] - mid[x]), a);
                        }
                    } else {
                        for (i64 x = 1; x < W - 1; x++) o[x] = blend_exact((float)mid[x], (float)((int)bl[x] - mid[x]), a);
                    }
                }
            }
        }
        free(cs);
        free(bl);
        free(fl8);
        free(T);
    }
    return err;
}

/* Grayscale, C == 3: floor(grey) on every channel (torchvision's uint8 truncation of the grey). */
MULTIVERSION int fulcra_grayscale(const u8 *src, const i64 *sidx, u8 *dst, const i64 *didx, i64 n, i64 npix,
                                  int nthreads) {
    int nt = nthreads_for(nthreads, n);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (i64 i = 0; i < n; i++) {
        const u8 *im = src + sidx[i] * 3 * npix;
        u8 *om = dst + didx[i] * 3 * npix;
        for (i64 p0 = 0; p0 < npix; p0 += BLK) {
            i64 m = npix - p0 < BLK ? npix - p0 : BLK;
            grey_floor(im + p0, im + npix + p0, im + 2 * npix + p0, om + p0, m);
            memcpy(om + npix + p0, om + p0, (size_t)m);
            memcpy(om + 2 * npix + p0, om + p0, (size_t)m);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- hue ----------------------- */

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* c ? a : b through bit masks. The hue loop is written with these (and integer compares of the
 * bits where the values are >= +0) so that GCC if-converts it and vectorises it: with its default
 * -ftrapping-math it keeps a branch around any float operation a ternary or a multiplication by a
 * 0/1 flag would make conditional, and a loop with a branch is not vectorised. Same IEEE operations,
 * same bits. */
static inline float sel(int c, float a, float b) {
    const uint32_t m = 0u - (uint32_t)(c != 0);
    return u2f((f2u(a) & m) | (f2u(b) & ~m));
}
static inline float clamp01(float x) { return sel(x < 0.0f, 0.0f, sel(x > 1.0f, 1.0f, x)); }

/* fmod(x, 1) for |x| < 2^31: x - trunc(x) is exact, with fmod's sign (that of x) */
static inline float fmod1(float x) {
    const float t = (float)(int)x;
    return u2f((f2u(x - t) & 0x7fffffffu) | (f2u(x) & 0x80000000u)); /* copysignf(x - t, x) */
}

/* Hue (adjust_hue), C == 3: the float32 operations of _kernels.rgb_to_hsv, the shift with
 * remainder(1), _kernels.hsv_to_rgb and the uint8 conversion of colour.Hue, one pixel at a time in
 * the same order (every step is one IEEE operation, so the bits are torch's). */
#if defined(__GNUC__)
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE static inline
#endif
/* inlined into the pixel loop, which is then vectorised (see sel) */
ALWAYS_INLINE void hue_px(u8 R8, u8 G8, u8 B8, float hf, u8 *o0, u8 *o1, u8 *o2) {
    const float k = (float)(1.0 / 255);
    const float r = (float)R8 * k, g = (float)G8 * k, b = (float)B8 * k;
    float maxc = sel(r > g, r, g);
    maxc = sel(maxc > b, maxc, b);
    float minc = sel(r < g, r, g);
    minc = sel(minc < b, minc, b);
    /* equality of values >= +0 (no NaN, no -0) is equality of their bits */
    const int eqc = f2u(maxc) == f2u(minc);
    const float cr = maxc - minc;
    const float s = cr / sel(eqc, 1.0f, maxc);
    const float dv = sel(eqc, 1.0f, cr);
    const float rc = (maxc - r) / dv, gc = (maxc - g) / dv, bc = (maxc - b) / dv;
    const int neq_r = f2u(maxc) != f2u(r), eq_g = f2u(maxc) == f2u(g);
    /* x * (float)flag: x, or x * 0 (a signed zero), both computed */
    const float xg = (rc + 2.0f) - bc, xr = bc - gc, xb = (gc + 4.0f) - rc;
    const float hg = sel(eq_g & neq_r, xg, xg * 0.0f);
    const float hr = sel(!neq_r, xr, xr * 0.0f);
    const float hb = sel(neq_r & !eq_g, xb, xb * 0.0f);
    float h = (hr + hg) + hb;
    h = h * (float)(1.0 / 6.0);
    h = h + 1.0f;
    h = fmod1(h);
    h = h + hf;
    const float m = fmod1(h); /* remainder(h, 1): in (-1, 1), then [0, 1] */
    h = sel(m < 0.0f, m + 1.0f, m);
    const float v = maxc;
    const float h6 = h * 6.0f; /* in [0, 6] */
    const float fi = floor_small(h6);
    const float f = h6 - fi;
    int i = (int)fi;
    const float sxf = s * f;
    const float oms = 1.0f - s;
    const float q = clamp01((1.0f - sxf) * v);
    const float t = clamp01((sxf + oms) * v);
    const float p = clamp01(oms * v);
    i = i - (((5 - i) >> 31) & 6); /* torch's remainder(i, 6) for i in [0, 6] */
    /* _HSV_SELECT: R = v q p p t v, G = t v v q p p, B = p p t v v q for i = 0..5 */
    const float c0 = sel((i == 0) | (i == 5), v, sel(i == 1, q, sel(i == 4, t, p)));
    const float c1 = sel((i == 1) | (i == 2), v, sel(i == 0, t, sel(i == 3, q, p)));
    const float c2 = sel((i == 3) | (i == 4), v, sel(i == 2, t, sel(i == 5, q, p)));
    const float sc = (float)(255 + 1.0 - 1e-3);
    *o0 = (u8)(int)(c0 * sc);
    *o1 = (u8)(int)(c1 * sc);
    *o2 = (u8)(int)(c2 * sc);
}

#define HUE_BLOCK 256

MULTIVERSION int fulcra_hue(const u8 *src, const i64 *sidx, u8 *dst, const i64 *didx, i64 n, i64 npix,
                            const float *factor, int nthreads) {
    int nt = nthreads_for(nthreads, n);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (i64 i = 0; i < n; i++) {
        const u8 *i0 = src + sidx[i] * 3 * npix, *i1 = i0 + npix, *i2 = i1 + npix;
        u8 *d0 = dst + didx[i] * 3 * npix, *d1 = d0 + npix, *d2 = d1 + npix;
        const float hf = factor[i];
        /* blocks of HUE_BLOCK pixels into local buffers, then copied out: the destination may be
         * the source (in place), and local buffers alias nothing, so the pixel loop vectorises
         * without run-time overlap checks */
        for (i64 p0 = 0; p0 < npix; p0 += HUE_BLOCK) {
            const i64 m = npix - p0 < HUE_BLOCK ? npix - p0 : HUE_BLOCK;
            u8 t0[HUE_BLOCK], t1[HUE_BLOCK], t2[HUE_BLOCK];
            for (i64 p = 0; p < m; p++) hue_px(i0[p0 + p], i1[p0 + p], i2[p0 + p], hf, t0 + p, t1 + p, t2 + p);
            memcpy(d0 + p0, t0, (size_t)m);
            memcpy(d1 + p0, t1, (size_t)m);
            memcpy(d2 + p0, t2, (size_t)m);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- tables -------------------- */

/* dst image didx[i], channel c = lut[(i * C + c) * 256 + src value]. */
int fulcra_lut(const u8 *src, const i64 *sidx, u8 *dst, const i64 *didx, i64 n, i64 C, i64 npix, const u8 *lut,
               int nthreads) {
    int nt = nthreads_for(nthreads, n);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (i64 i = 0; i < n; i++) {
        for (i64 c = 0; c < C; c++) {
            const u8 *x = src + (sidx[i] * C + c) * npix;
            u8 *o = dst + (didx[i] * C + c) * npix;
            const u8 *t = lut + (i * C + c) * 256;
            i64 p = 0;
            for (; p + 4 <= npix; p += 4) {
                u8 v0 = t[x[p]], v1 = t[x[p + 1]], v2 = t[x[p + 2]], v3 = t[x[p + 3]];
                o[p] = v0;
                o[p + 1] = v1;
                o[p + 2] = v2;
                o[p + 3] = v3;
            }
            for (; p < npix; p++) o[p] = t[x[p]];
        }
    }
    return 0;
}

/* Histogram of each channel: hist [n, C, 256] int64. Four partial counts against store-to-load stalls
 * on runs of equal values. */
int fulcra_hist(const u8 *src, const i64 *sidx, i64 n, i64 C, i64 npix, i64 *hist, int nthreads) {
    int nt = nthreads_for(nthreads, n);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (i64 i = 0; i < n; i++) {
        for (i64 c = 0; c < C; c++) {
            const u8 *x = src + (sidx[i] * C + c) * npix;
            uint32_t h[4][256];
            memset(h, 0, sizeof h);
            i64 p = 0;
            for (; p + 4 <= npix; p += 4) {
                h[0][x[p]]++;
                h[1][x[p + 1]]++;
                h[2][x[p + 2]]++;
                h[3][x[p + 3]]++;
            }
            for (; p < npix; p++) h[0][x[p]]++;
            i64 *o = hist + (i * C + c) * 256;
            for (int v = 0; v < 256; v++) o[v] = (i64)h[0][v] + h[1][v] + h[2][v] + h[3][v];
        }
    }
    return 0;
}

/* Minimum and maximum of each channel: out [n, C, 2] uint8. */
MULTIVERSION int fulcra_minmax(const u8 *src, const i64 *sidx, i64 n, i64 C, i64 npix, u8 *out, int nthreads) {
    int nt = nthreads_for(nthreads, n);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (i64 i = 0; i < n; i++) {
        for (i64 c = 0; c < C; c++) {
            const u8 *x = src + (sidx[i] * C + c) * npix;
            u8 lo = 255, hi = 0;
            for (i64 p = 0; p < npix; p++) {
                u8 v = x[p];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            out[(i * C + c) * 2] = lo;
            out[(i * C + c) * 2 + 1] = hi;
        }
    }
    return 0;
}

/* dst image didx[i] = src image sidx[i] (nbytes each): the composite's write-back. */
int fulcra_copy_rows(const u8 *src, const i64 *sidx, u8 *dst, const i64 *didx, i64 n, i64 nbytes) {
    for (i64 i = 0; i < n; i++) memcpy(dst + didx[i] * nbytes, src + sidx[i] * nbytes, (size_t)nbytes);
    return 0;
}
