/* Graph diffusion (Eq. 5.8) on the symmetric similarity matrix S stored once, for
 * _diffusion._power_native (see there and docs/ludvig.md).
 *
 * Built at run time by fulcra.native (cc -O3 [-fopenmp] -fPIC -shared -ffp-contract=off).
 *
 * Storage ("upper"): S is exactly symmetric, so only the entries (i, j) with 0 <= j - i < W are
 * kept (the diagonal included), row by row, as a uint16 delta j - i and the float32 value: 6 bytes
 * per stored entry, against 8 bytes for each of the two directed entries of a CSR matrix with int32
 * indices. Entries with |j - i| >= W (rare in Morton order) are "far": kept in both directions as a
 * small CSR (int32 column, float32 value) and only gathered.
 *
 * One product y = S x: rows are cut into fixed partitions of W rows (the count does not depend on
 * the thread count). A partition p = [a, b) is processed by one thread, rows ascending: row i
 * gathers sum_j S_ij x_j over its stored entries (near, then far) and adds it to y_i, and scatters
 * S_ij x_i to every j > i of its near entries: into y_j when j < b, else into the private buffer
 * nxt_p, which covers exactly the next partition's rows (j - i < W). After all partitions, each
 * partition adds nxt_{p-1} to its rows. Every output element is thus summed in one fixed order
 * (the scatters of earlier rows of its partition in row order, its own gather, then the previous
 * partition's buffer): the same bits for any thread count and schedule.
 *
 * Restriction: sub-blocks of `sub` rows carry the hop distance of their nearest row to the seeds;
 * the product that yields x_{t+1} only touches sub-blocks with a row within t + 1 hops (exact:
 * x_t is zero beyond t hops, so the rows skipped or not zeroed hold exact zeros).
 *
 * Columns: x is [n, ld] row-major; up to QMAX prompt columns are processed together (one pass over
 * the matrix per step); the loops over columns are specialised for common widths so that the
 * accumulators stay in registers, and vectorise (the same bits: each column's sum keeps its order).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define QMAX 32

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__has_attribute) && defined(__GLIBC__)
#if __has_attribute(target_clones)
/* an AVX2 build of the product next to the baseline one, picked at load time: wider vectors over
 * the prompt columns, no FMA (the same roundings, hence the same bits, as the baseline); the
 * load-time choice is a GNU ifunc, which needs glibc (on musl the baseline build alone) */
#define FULCRA_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef FULCRA_CLONES
#define FULCRA_CLONES
#endif

#if defined(__GNUC__)
#define FULCRA_INLINE static inline __attribute__((always_inline))
#else
#define FULCRA_INLINE static inline
#endif

/* ---------------------------------------------------------------------------------------------
 * Structure: counts, then fill (with a symmetry check)
 * ------------------------------------------------------------------------------------------- */

/* Per row: near entries (0 <= j - i < W) and far entries (|j - i| >= W). Returns 0, 2 (a column
 * outside [0, n)) or 3 (columns not strictly ascending within a row). lower/upper: how many
 * entries lie strictly below / above the diagonal (equal for a symmetric pattern). */
int fulcra_sym_count(int64_t n, const int64_t *indptr, const int32_t *indices, int64_t W,
                     int64_t *near_cnt, int64_t *far_cnt, int64_t *lower_upper, int nthreads) {
    int status = 0;
    int64_t lower = 0, upper = 0;
    if (nthreads < 1) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+ : lower, upper)
#endif
    for (int64_t i = 0; i < n; i++) {
        int64_t nn = 0, nf = 0, lo = 0, up = 0, prev = -1;
        int bad = 0;
        for (int64_t e = indptr[i]; e < indptr[i + 1]; e++) {
            int64_t j = indices[e];
            if (j < 0 || j >= n) { bad = 2; break; }
            if (j <= prev) { bad = 3; break; }
            prev = j;
            int64_t d = j - i;
            if (d >= 0 && d < W) nn++;
            else if (d >= W || d <= -W) nf++;
            lo += d < 0;
            up += d > 0;
        }
        near_cnt[i] = nn;
        far_cnt[i] = nf;
        lower += lo;
        upper += up;
        if (bad) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = bad;
        }
    }
    lower_upper[0] = lower;
    lower_upper[1] = upper;
    return status;
}

/* Fill the near and far arrays (positions from the prefix sums of the counts) and, when `check`,
 * check that every entry below the diagonal has its mirror above it with the same value (bit for
 * bit). With as many entries below as above (fulcra_sym_count) that makes S exactly symmetric.
 * Returns 0, or 1 when S is not symmetric (the caller then keeps the general CSR path). */
int fulcra_sym_fill(int64_t n, const int64_t *indptr, const int32_t *indices, const float *values,
                    int64_t W, const int64_t *near_ptr, const int64_t *far_ptr, uint16_t *delta,
                    float *near_val, int32_t *far_col, float *far_val, int check, int nthreads) {
    int asym = 0;
    if (nthreads < 1) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nthreads)
#endif
    for (int64_t i = 0; i < n; i++) {
        int64_t pn = near_ptr[i], pf = far_ptr[i];
        int bad = 0;
        for (int64_t e = indptr[i]; e < indptr[i + 1]; e++) {
            int64_t j = indices[e];
            int64_t d = j - i;
            float v = values[e];
            if (d >= 0 && d < W) {
                delta[pn] = (uint16_t)d;
                near_val[pn] = v;
                pn++;
            } else if (d >= W || d <= -W) {
                far_col[pf] = (int32_t)j;
                far_val[pf] = v;
                pf++;
            }
            if (check && d < 0 && !bad) { /* the mirror (j, i) in row j, by bisection */
                int64_t a = indptr[j], b = indptr[j + 1];
                while (a < b) {
                    int64_t h = a + (b - a) / 2;
                    if (indices[h] < i) a = h + 1; else b = h;
                }
                if (a == indptr[j + 1] || indices[a] != i || memcmp(&values[a], &v, sizeof(float)) != 0)
                    bad = 1;
            }
        }
        if (bad) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            asym = 1;
        }
    }
    return asym;
}

/* ---------------------------------------------------------------------------------------------
 * The product over one partition's active rows
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    int64_t n, ld, W, sub, nparts, nsub;
    const int64_t *near_ptr;
    const uint16_t *delta;
    const float *near_val;
    const int64_t *far_ptr;
    const int32_t *far_col;
    const float *far_val;
    const int32_t *sub_hop;
} sym_t;

static inline int sub_on(const sym_t *m, int64_t s, int64_t hop) {
    return s >= 0 && s < m->nsub && m->sub_hop[s] <= hop;
}

static int part_on(const sym_t *m, int64_t p, int64_t hop) {
    if (p < 0 || p >= m->nparts) return 0;
    int64_t per = m->W / m->sub;
    for (int64_t s = p * per; s < (p + 1) * per; s++)
        if (sub_on(m, s, hop)) return 1;
    return 0;
}

/* the k-th uint16 of four read as one uint64 */
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define U16(w, k) (((w) >> (48 - 16 * (k))) & 0xffff)
#else
#define U16(w, k) (((w) >> (16 * (k))) & 0xffff)
#endif

/* one stored entry (i, j = i + dk, value v) of row i: gather into acc, scatter x_i into row j */
#define ENTRY(dk, v)                                                                  \
    do {                                                                              \
        const int64_t j_ = i + (int64_t)(dk);                                         \
        const float v_ = (v);                                                         \
        const float *restrict xj_ = x + j_ * ld;                                      \
        for (int64_t c = 0; c < Q; c++) acc[c] += v_ * xj_[c];                        \
        float *restrict dst_ = j_ < bp ? y + j_ * ld : nxt + (j_ - bp) * ld;          \
        for (int64_t c = 0; c < Q; c++) dst_[c] += v_ * xi[c];                        \
    } while (0)

/* rows [r0, r1) of the partition ending at bp: y += S x on them, scatters as described above.
 * Deltas are read eight at a time for one column (two 64-bit loads), four at a time for several,
 * before the entries are processed: a store whose address comes straight from a load of its own
 * made every later load wait for it (one column: 148 -> 50 ms per product at 300k, k = 200, one
 * thread); the arithmetic and its order are those of one entry after the other. */
FULCRA_INLINE void rows_product(const sym_t *m, int64_t r0, int64_t r1, int64_t bp,
                                const float *restrict x, float *restrict y, float *restrict nxt,
                                const int64_t Q) {
    const int64_t ld = m->ld;
    const uint16_t *restrict dl = m->delta;
    const float *restrict nv = m->near_val;
    const int64_t *restrict fp = m->far_ptr;
    const int32_t *restrict fc = m->far_col;
    const float *restrict fv = m->far_val;
    for (int64_t i = r0; i < r1; i++) {
        float acc[QMAX];
        const float *restrict xi = x + i * ld;
        for (int64_t c = 0; c < Q; c++) acc[c] = 0.0f;
        int64_t e = m->near_ptr[i], e1 = m->near_ptr[i + 1];
        if (e < e1 && dl[e] == 0) { /* the diagonal: gathered, not scattered */
            float v = nv[e];
            for (int64_t c = 0; c < Q; c++) acc[c] += v * xi[c];
            e++;
        }
        for (; Q == 1 && e + 8 <= e1; e += 8) {
            uint64_t w0, w1;
            memcpy(&w0, dl + e, 8);
            memcpy(&w1, dl + e + 4, 8);
            const float *restrict vv = nv + e;
            ENTRY(U16(w0, 0), vv[0]);
            ENTRY(U16(w0, 1), vv[1]);
            ENTRY(U16(w0, 2), vv[2]);
            ENTRY(U16(w0, 3), vv[3]);
            ENTRY(U16(w1, 0), vv[4]);
            ENTRY(U16(w1, 1), vv[5]);
            ENTRY(U16(w1, 2), vv[6]);
            ENTRY(U16(w1, 3), vv[7]);
        }
        for (; e + 4 <= e1; e += 4) {
            uint64_t w0;
            memcpy(&w0, dl + e, 8);
            const float *restrict vv = nv + e;
            ENTRY(U16(w0, 0), vv[0]);
            ENTRY(U16(w0, 1), vv[1]);
            ENTRY(U16(w0, 2), vv[2]);
            ENTRY(U16(w0, 3), vv[3]);
        }
        for (; e < e1; e++) ENTRY(dl[e], nv[e]);
        for (int64_t f = fp[i], f1 = fp[i + 1]; f < f1; f++) {
            const float v = fv[f];
            const float *restrict xj = x + (int64_t)fc[f] * ld;
            for (int64_t c = 0; c < Q; c++) acc[c] += v * xj[c];
        }
        float *restrict yi = y + i * ld;
        for (int64_t c = 0; c < Q; c++) yi[c] += acc[c];
    }
}

#define ROWS_CASE(K) case K: rows_product(m, r0, r1, bp, x, y, nxt, K); break;

/* one run of active rows, the column loop specialised for common widths (q <= QMAX) */
FULCRA_CLONES
static void rows_dispatch(const sym_t *m, int64_t r0, int64_t r1, int64_t bp, const float *x, float *y,
                          float *nxt, int64_t q) {
    switch (q) {
        ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3) ROWS_CASE(4) ROWS_CASE(8) ROWS_CASE(12)
        ROWS_CASE(16) ROWS_CASE(20) ROWS_CASE(24) ROWS_CASE(32)
        default: rows_product(m, r0, r1, bp, x, y, nxt, q); break;
    }
}

/* phase 1 of one product for partition p at `hop`: zero its active rows and the active part of
 * its buffer, then run its active rows (columns in chunks of QMAX) */
static void part_product(const sym_t *m, int64_t p, int64_t hop, const float *x, float *y, float *nxt_all,
                         int64_t q) {
    const int64_t ld = m->ld, W = m->W, sub = m->sub, per = W / sub;
    const int64_t a = p * W, bp = a + W < m->n ? a + W : m->n;
    float *nxt = nxt_all + p * W * ld;
    for (int64_t s = p * per; s < (p + 1) * per; s++) {
        if (sub_on(m, s, hop)) {
            int64_t r0 = s * sub, r1 = r0 + sub < m->n ? r0 + sub : m->n;
            memset(y + r0 * ld, 0, sizeof(float) * (size_t)((r1 - r0) * ld));
        }
        int64_t s2 = s + per; /* the next partition's sub-block mirrored in nxt */
        if (sub_on(m, s2, hop)) {
            int64_t r0 = s2 * sub, r1 = r0 + sub < m->n ? r0 + sub : m->n;
            memset(nxt + (r0 - bp) * ld, 0, sizeof(float) * (size_t)((r1 - r0) * ld));
        }
    }
    for (int64_t s = p * per; s < (p + 1) * per; s++) {
        if (!sub_on(m, s, hop)) continue;
        int64_t r0 = s * sub, r1 = r0 + sub < m->n ? r0 + sub : m->n;
        for (int64_t c0 = 0; c0 < q; c0 += QMAX) {
            int64_t qc = q - c0 < QMAX ? q - c0 : QMAX;
            rows_dispatch(m, r0, r1, bp, x + c0, y + c0, nxt + c0, qc);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * The power iteration
 * ------------------------------------------------------------------------------------------- */

/* T = steps >= 1 steps of Eq. 5.8 as _diffusion._power_restricted runs them:
 *   x_0 = sp * g0;  x_{t+1} = P * (S x_t) (P = sp * sp), the columns divided by their sums every
 *   `rescale` steps (values <= tiny then set to 0);  g = sp * (S x_{T-1}) / (||sp * S x_{T-2}|| + eps)
 *   (||g0|| + eps when T = 1).
 * sp: [n, ld] or NULL (P = 1). buf0, buf1: [n, ld], zero-filled by the caller. The result is in
 * buf0 when T is even, buf1 when odd. Norms and column sums are accumulated in float64, per
 * partition in row order, then over partitions in partition order. Returns 0, or -1 (no memory). */
int fulcra_sym_power(int64_t n, int64_t q, int64_t W, int64_t sub, const int64_t *near_ptr,
                     const uint16_t *delta, const float *near_val, const int64_t *far_ptr,
                     const int32_t *far_col, const float *far_val, const int32_t *sub_hop,
                     const float *g0, const float *sp, int64_t steps, int64_t rescale, float eps,
                     float tiny, float *buf0, float *buf1, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (steps < 1 || q < 1 || n < 1) return 0;
    sym_t M;
    M.n = n; M.ld = q; M.W = W; M.sub = sub;
    M.nparts = (n + W - 1) / W;
    M.nsub = (n + sub - 1) / sub;
    M.near_ptr = near_ptr; M.delta = delta; M.near_val = near_val;
    M.far_ptr = far_ptr; M.far_col = far_col; M.far_val = far_val; M.sub_hop = sub_hop;
    const sym_t *m = &M;
    const int64_t np = M.nparts, per = W / sub;
    /* the scatter buffer 1 KiB off x and y modulo 4 KiB (the caller puts buf1 2 KiB off buf0), a
     * precaution against false store-to-load dependencies ("4K aliasing") between the scatter's
     * stores and the gather's loads */
    float *nxt_mem = (float *)calloc((size_t)(np * W * q) + 2048, sizeof(float));
    float *nxt = nxt_mem;
    if (nxt_mem) {
        uintptr_t d = ((uintptr_t)nxt_mem - (uintptr_t)buf0 - 1024) % 4096; /* bytes past the target */
        nxt = (float *)((char *)nxt_mem + ((4096 - d) % 4096));
    }
    double *part = (double *)calloc((size_t)(np * q), sizeof(double));
    float *norm = (float *)malloc(sizeof(float) * (size_t)q);
    float *scale = (float *)malloc(sizeof(float) * (size_t)q);
    if (!nxt_mem || !part || !norm || !scale) {
        free(nxt_mem); free(part); free(norm); free(scale);
        return -1;
    }
    float *bufs[2] = {buf0, buf1};

#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        /* x_0 = sp * g0 and ||g0||, per partition */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t p = 0; p < np; p++) {
            int64_t a = p * W, b = a + W < n ? a + W : n;
            double *pp = part + p * q;
            for (int64_t c = 0; c < q; c++) pp[c] = 0.0;
            for (int64_t i = a; i < b; i++)
                for (int64_t c = 0; c < q; c++) {
                    float g = g0[i * q + c];
                    pp[c] += (double)g * (double)g;
                    buf0[i * q + c] = sp ? sp[i * q + c] * g : g;
                }
        }
#ifdef _OPENMP
#pragma omp single
#endif
        for (int64_t c = 0; c < q; c++) {
            double s = 0.0;
            for (int64_t p = 0; p < np; p++) s += part[p * q + c];
            norm[c] = (float)sqrt(s) + eps; /* the divisor when T = 1 */
        }
        for (int64_t t = 0; t < steps; t++) {
            const float *x = bufs[t % 2];
            float *y = bufs[(t + 1) % 2];
            const int64_t hop = t + 1;
            const int final = t == steps - 1, last = t == steps - 2;
            const int resc = !final && !last && (t % rescale == rescale - 1);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t p = 0; p < np; p++)
                if (part_on(m, p, hop)) part_product(m, p, hop, x, y, nxt, q);
            /* implicit barrier: every partition's scatter is done */
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t p = 0; p < np; p++) {
                if (!part_on(m, p, hop)) continue;
                const float *prev = part_on(m, p - 1, hop) ? nxt + (p - 1) * W * q : NULL;
                double *pp = part + p * q;
                for (int64_t c = 0; c < q; c++) pp[c] = 0.0;
                for (int64_t s = p * per; s < (p + 1) * per; s++) {
                    if (!sub_on(m, s, hop)) continue;
                    int64_t r0 = s * sub, r1 = r0 + sub < n ? r0 + sub : n;
                    for (int64_t i = r0; i < r1; i++) {
                        float *yi = y + i * q;
                        const float *si = sp ? sp + i * q : NULL;
                        if (prev) {
                            const float *pi = prev + (i - p * W) * q;
                            for (int64_t c = 0; c < q; c++) yi[c] += pi[c];
                        }
                        if (final) {
                            for (int64_t c = 0; c < q; c++) {
                                float v = si ? yi[c] * si[c] : yi[c];
                                v = v / norm[c];
                                yi[c] = v > tiny ? v : 0.0f;
                            }
                            continue;
                        }
                        if (last)
                            for (int64_t c = 0; c < q; c++) {
                                double v = si ? (double)(yi[c] * si[c]) : (double)yi[c];
                                pp[c] += v * v;
                            }
                        if (si)
                            for (int64_t c = 0; c < q; c++) yi[c] *= si[c] * si[c];
                        if (resc)
                            for (int64_t c = 0; c < q; c++) pp[c] += (double)yi[c];
                    }
                }
            }
            if (final || !(last || resc)) continue;
#ifdef _OPENMP
#pragma omp single
#endif
            for (int64_t c = 0; c < q; c++) {
                double s = 0.0;
                for (int64_t p = 0; p < np; p++)
                    if (part_on(m, p, hop)) s += part[p * q + c];
                if (last) {
                    norm[c] = (float)sqrt(s) + eps;
                } else {
                    float f = (float)s;
                    scale[c] = f > 0.0f ? f : 1.0f;
                }
            }
            if (!resc) continue;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t p = 0; p < np; p++) {
                if (!part_on(m, p, hop)) continue;
                for (int64_t s = p * per; s < (p + 1) * per; s++) {
                    if (!sub_on(m, s, hop)) continue;
                    int64_t r0 = s * sub, r1 = r0 + sub < n ? r0 + sub : n;
                    for (int64_t i = r0; i < r1; i++)
                        for (int64_t c = 0; c < q; c++) {
                            float v = y[i * q + c] / scale[c];
                            y[i * q + c] = v > tiny ? v : 0.0f;
                        }
                }
            }
        }
    }
    free(nxt_mem); free(part); free(norm); free(scale);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Hop distances (breadth-first search), for _diffusion.hop_distances on the CPU
 * ------------------------------------------------------------------------------------------- */

/* dist[i] = the number of hops from the nearest seed to i, up to `steps` (steps + 1 where
 * unreached), over the edges of the CSR (indptr, indices). With `use_threshold`, an edge e = (u, j)
 * is followed only when its value v = sim[e] (times sp[u] * sp[j] when sp is given, multiplied in
 * that order in float32, as _diffusion.edge_values does) is > threshold, the comparison in float32
 * as NumPy and torch make it against a Python float. Integer output: the same on any machine.
 * front, next: [n] int32 work arrays. One thread: each edge of the reached nodes is read once, and
 * dist (4 bytes per node) stays in cache at the graph sizes of a scene. Returns 0. */
int fulcra_hops(int64_t n, const int64_t *indptr, const int32_t *indices, const float *sim,
                const float *sp, float threshold, int use_threshold, const uint8_t *seeds,
                int64_t steps, int32_t *dist, int32_t *front, int32_t *next) {
    const int32_t far_away = (int32_t)(steps + 1);
    int64_t nf = 0;
    for (int64_t i = 0; i < n; i++) {
        if (seeds[i]) { dist[i] = 0; front[nf++] = (int32_t)i; }
        else dist[i] = far_away;
    }
    for (int64_t t = 1; t <= steps && nf > 0; t++) {
        int64_t nn = 0;
        for (int64_t f = 0; f < nf; f++) {
            const int64_t u = front[f];
            const float su = sp ? sp[u] : 1.0f;
            for (int64_t e = indptr[u]; e < indptr[u + 1]; e++) {
                const int32_t j = indices[e];
                if (dist[j] != far_away) continue;
                if (use_threshold) {
                    float v = sim[e];
                    if (sp) v = (v * su) * sp[j];
                    if (!(v > threshold)) continue;
                }
                dist[j] = (int32_t)t;
                next[nn++] = j;
            }
        }
        int32_t *tmp = front; front = next; next = tmp;
        nf = nn;
    }
    return 0;
}
