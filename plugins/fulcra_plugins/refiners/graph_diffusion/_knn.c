/* Exact k nearest neighbours inside octree blocks, for _graph._grid_knn_sorted (see there).
 *
 * Built at run time by fulcra.native (cc -O3 [-fopenmp] -fPIC -shared). One call handles every
 * cell group of one octree level: a group is a run of query points sharing a cell; its candidates
 * are the points of up to R index ranges (the 3x3x3 block of cells around it, ascending). For each
 * query the kk smallest keys (squared float64 distance, candidate index) are selected, the query
 * itself forced first (distance -1), and written in ascending index order, with the float32 dot
 * products of the features on the selected pairs (accumulated in float64 in feature order). A
 * query whose kk-th distance exceeds its squared distance to the outside of the block (margin2) is
 * flagged as failed instead (the caller redoes it one level coarser).
 *
 * Every output element is computed by one thread in a fixed order: identical for any thread count.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* (d, i) lexicographic: distances, then candidate position (= index order: ranges ascending) */
static inline int key_less(const double *d, int32_t a, int32_t b) {
    return d[a] < d[b] || (d[a] == d[b] && a < b);
}

/* place the kk smallest keys of ord[0..m) in ord[0..kk) (unordered); Hoare quickselect */
static void select_k(const double *d, int32_t *ord, int64_t m, int64_t kk) {
    int64_t lo = 0, hi = m - 1, target = kk - 1;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2;
        /* median of three as pivot */
        int32_t a = ord[lo], b = ord[mid], c = ord[hi], p;
        if (key_less(d, a, b)) {
            p = key_less(d, b, c) ? b : (key_less(d, a, c) ? c : a);
        } else {
            p = key_less(d, a, c) ? a : (key_less(d, b, c) ? c : b);
        }
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (key_less(d, ord[i], p)) i++;
            while (key_less(d, p, ord[j])) j--;
            if (i <= j) {
                int32_t t = ord[i]; ord[i] = ord[j]; ord[j] = t;
                i++; j--;
            }
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else break;
    }
}

int fulcra_knn_groups(const double *pos,      /* [N, 3] */
                      const float *feats,     /* [N, D] or NULL */
                      int64_t D,
                      const int64_t *idx,     /* [Q] query indices, grouped */
                      const int64_t *gstart,  /* [G + 1] group bounds into idx */
                      int64_t G,
                      const int64_t *r_lo,    /* [G, R] candidate ranges [r_lo, r_hi) */
                      const int64_t *r_hi,
                      int64_t R,
                      const double *b_lo,     /* [G, 3] block bounds or NULL (no exactness test) */
                      const double *b_hi,
                      int64_t kk,
                      int32_t *nbrs,          /* [N, kk] written at row idx[q] */
                      float *dots,            /* [N, kk] or NULL */
                      uint8_t *failed,        /* [Q] */
                      int nthreads) {
    int status = 0;
    if (nthreads < 1) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int64_t cap = 0;
        double *cx = NULL, *cy = NULL, *cz = NULL, *d = NULL;
        int64_t *cand = NULL;
        int32_t *ord = NULL;
        int32_t *sel = NULL;
        int32_t *asc = NULL;
        int bad = 0;
        sel = (int32_t *)malloc(sizeof(int32_t) * (size_t)(kk > 0 ? kk + 1 : 1));
        if (!sel) bad = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t g = 0; g < G; g++) {
            if (bad) continue;
            int64_t m = 0;
            for (int64_t r = 0; r < R; r++) m += r_hi[g * R + r] - r_lo[g * R + r];
            if (m > cap) {
                free(cx); free(cy); free(cz); free(d); free(cand); free(ord); free(asc);
                cap = m + m / 4 + 64;
                cx = (double *)malloc(sizeof(double) * cap);
                cy = (double *)malloc(sizeof(double) * cap);
                cz = (double *)malloc(sizeof(double) * cap);
                d = (double *)malloc(sizeof(double) * cap);
                cand = (int64_t *)malloc(sizeof(int64_t) * cap);
                ord = (int32_t *)malloc(sizeof(int32_t) * cap);
                asc = (int32_t *)malloc(sizeof(int32_t) * cap);
                if (!cx || !cy || !cz || !d || !cand || !ord || !asc) { bad = 1; cap = 0; continue; }
            }
            int64_t w = 0;
            for (int64_t r = 0; r < R; r++) {
                for (int64_t c = r_lo[g * R + r]; c < r_hi[g * R + r]; c++) {
                    cand[w] = c;
                    cx[w] = pos[3 * c];
                    cy[w] = pos[3 * c + 1];
                    cz[w] = pos[3 * c + 2];
                    w++;
                }
            }
            /* the previous query of the group (a Morton neighbour) bounds this one's kk-th
             * distance: its kk selected points lie within sqrt(vk_prev) + |q - prev| of q, so
             * every key up to q's kk-th one has d <= that bound squared; candidates above it are
             * never selected and skip the selection (rounding slack keeps the filter conservative) */
            int have_prev = 0;
            double px = 0, py = 0, pz = 0, pvk = 0;
            for (int64_t qq = gstart[g]; qq < gstart[g + 1]; qq++) {
                int64_t qi = idx[qq];
                double qx = pos[3 * qi], qy = pos[3 * qi + 1], qz = pos[3 * qi + 2];
                for (int64_t c = 0; c < m; c++) {
                    double dx = cx[c] - qx, dy = cy[c] - qy, dz = cz[c] - qz;
                    d[c] = dx * dx + dy * dy + dz * dz;
                }
                /* the query itself: candidates are ascending, find it by bisection */
                int64_t a = 0, b = m;
                while (a < b) {
                    int64_t h = (a + b) / 2;
                    if (cand[h] < qi) a = h + 1; else b = h;
                }
                if (a < m && cand[a] == qi) d[a] = -1.0;
                if (m < kk) { failed[qq] = 1; continue; }
                int64_t mf = 0;
                if (have_prev) {
                    double ex = qx - px, ey = qy - py, ez = qz - pz;
                    double rr = sqrt(pvk > 0 ? pvk : 0) + sqrt(ex * ex + ey * ey + ez * ez);
                    double bound = rr * rr * (1 + 1e-9) + 1e-300;
                    for (int64_t c = 0; c < m; c++) {
                        ord[mf] = (int32_t)c;
                        mf += d[c] <= bound;
                    }
                }
                if (mf < kk) { /* first query of the group (or a bound too tight by rounding) */
                    for (int64_t c = 0; c < m; c++) ord[c] = (int32_t)c;
                    mf = m;
                }
                memcpy(asc, ord, sizeof(int32_t) * (size_t)mf); /* ascending, kept for the output */
                select_k(d, ord, mf, kk);
                int32_t kth = ord[0]; /* the largest selected key */
                for (int64_t s = 1; s < kk; s++)
                    if (key_less(d, kth, ord[s])) kth = ord[s];
                double vk = d[kth];
                have_prev = 1;
                px = qx; py = qy; pz = qz; pvk = vk;
                if (b_lo != NULL) {
                    double mq = 1e300;
                    const double p[3] = {qx, qy, qz};
                    for (int ax = 0; ax < 3; ax++) {
                        double u = p[ax] - b_lo[3 * g + ax], v = b_hi[3 * g + ax] - p[ax];
                        double t = u < v ? u : v;
                        if (t < mq) mq = t;
                    }
                    double margin2 = mq > 0 ? mq * mq * (1 - 1e-9) : -1.0;
                    if (!(vk <= margin2)) { failed[qq] = 1; continue; }
                }
                failed[qq] = 0;
                /* the selected keys in ascending candidate position (= ascending index): those
                 * of the ascending filtered list not above the kk-th key */
                int64_t ns = 0;
                for (int64_t s = 0; s < mf && ns < kk; s++) {
                    int32_t c = asc[s];
                    sel[ns] = c;
                    ns += d[c] < vk || (d[c] == vk && c <= kth);
                }
                int32_t *nb = nbrs + qi * kk;
                float *dt = dots ? dots + qi * kk : NULL;
                const float *fq = feats ? feats + qi * D : NULL;
                for (int64_t s = 0; s < kk; s++) {
                    int64_t j = cand[sel[s]];
                    nb[s] = (int32_t)j;
                    if (dt) {
                        const float *fj = feats + j * D;
                        /* four partial sums in a fixed order (vectorisable, thread-independent) */
                        double acc[4] = {0.0, 0.0, 0.0, 0.0};
                        int64_t e = 0;
                        for (; e + 4 <= D; e += 4)
                            for (int u = 0; u < 4; u++) acc[u] += (double)fq[e + u] * (double)fj[e + u];
                        for (; e < D; e++) acc[0] += (double)fq[e] * (double)fj[e];
                        dt[s] = (float)((acc[0] + acc[1]) + (acc[2] + acc[3]));
                    }
                }
            }
        }
        free(cx); free(cy); free(cz); free(d); free(cand); free(ord); free(sel); free(asc);
        if (bad) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = 1;
        }
    }
    return status; /* 1: out of memory */
}
