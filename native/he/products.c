#include "threads.h"

/* ------------------------------------------------------------------------------------------ */
/* products                                                                                   */
/*
 * Per slot block, a small matrix product with 4-slot vectors as elements.  The micro-kernel
 * keeps G x R accumulators (G <= 3 kernels or weight rows, R <= 4 input rows) in registers.
 * Sums of c_in <= 512 products below 2^43 (a residue of a is below 2^22) stay below 2^52.
 */

#ifdef BH_X86
BH_AVX2 BH_INLINE void micro_f_avx2(const float *f, const double *x, double *y, int c_in, int rows, const int G,
                                    const int R, __m256d P, __m256d PI) {
    __m256d acc[3][4];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm256_setzero_pd();
    for (int c = 0; c < c_in; c++) {
        __m256d xr[4];
        for (int r = 0; r < R; r++) xr[r] = _mm256_loadu_pd(x + ((size_t)c * rows + r) * 4);
        for (int g = 0; g < G; g++) {
            __m256d fv = _mm256_cvtps_pd(_mm_loadu_ps(f + ((size_t)g * c_in + c) * 4));
            for (int r = 0; r < R; r++) acc[g][r] = _mm256_fmadd_pd(fv, xr[r], acc[g][r]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) _mm256_storeu_pd(y + ((size_t)g * rows + r) * 4, VRED(acc[g][r]));
}

BH_AVX2 static void prod_filters_blk_avx2(const float *f, const double *x, double *y, int og_cnt, int c_in,
                                          int rows, double p, double pinv) {
    const __m256d P = _mm256_set1_pd(p), PI = _mm256_set1_pd(pinv);
    for (int g = 0; g < og_cnt; g += 3) {
        int G = og_cnt - g < 3 ? og_cnt - g : 3;
        const float *fg = f + (size_t)g * c_in * 4;
        double *yg = y + (size_t)g * rows * 4;
        for (int r0 = 0; r0 < rows; r0 += 4) {
            int R = rows - r0 < 4 ? rows - r0 : 4;
            const double *xr = x + (size_t)r0 * 4;
            double *yr = yg + (size_t)r0 * 4;
            switch (G * 4 + R) {
#define MF(GG, RR) case GG * 4 + RR: micro_f_avx2(fg, xr, yr, c_in, rows, GG, RR, P, PI); break;
                MF(1, 1) MF(1, 2) MF(1, 3) MF(1, 4) MF(2, 1) MF(2, 2) MF(2, 3) MF(2, 4)
                MF(3, 1) MF(3, 2) MF(3, 3) MF(3, 4)
#undef MF
            }
        }
    }
}

BH_AVX2 BH_INLINE void micro_w_avx2(const double *w, const double *x, double *z, int c_in, int rows, const int G,
                                    const int R, __m256d P, __m256d PI) {
    __m256d acc[3][4];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) acc[g][r] = _mm256_setzero_pd();
    for (int c = 0; c < c_in; c++) {
        __m256d xr[4];
        for (int r = 0; r < R; r++) xr[r] = _mm256_loadu_pd(x + ((size_t)c * rows + r) * 4);
        for (int g = 0; g < G; g++) {
            __m256d wv = _mm256_broadcast_sd(w + (size_t)g * c_in + c);
            for (int r = 0; r < R; r++) acc[g][r] = _mm256_fmadd_pd(wv, xr[r], acc[g][r]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int r = 0; r < R; r++) _mm256_storeu_pd(z + ((size_t)g * rows + r) * 4, VRED(acc[g][r]));
}

/* z[g][row][4] = reduce(sum_c w[g][c] x[c][row]) for g < cnt */
BH_AVX2 static void prod_w_blk_avx2(const double *w, const double *x, double *z, int cnt, int c_in, int rows,
                                    double p, double pinv) {
    const __m256d P = _mm256_set1_pd(p), PI = _mm256_set1_pd(pinv);
    for (int g = 0; g < cnt; g += 3) {
        int G = cnt - g < 3 ? cnt - g : 3;
        for (int r0 = 0; r0 < rows; r0 += 4) {
            int R = rows - r0 < 4 ? rows - r0 : 4;
            const double *wg = w + (size_t)g * c_in;
            const double *xr = x + (size_t)r0 * 4;
            double *zr = z + ((size_t)g * rows + r0) * 4;
            switch (G * 4 + R) {
#define MW(GG, RR) case GG * 4 + RR: micro_w_avx2(wg, xr, zr, c_in, rows, GG, RR, P, PI); break;
                MW(1, 1) MW(1, 2) MW(1, 3) MW(1, 4) MW(2, 1) MW(2, 2) MW(2, 3) MW(2, 4)
                MW(3, 1) MW(3, 2) MW(3, 3) MW(3, 4)
#undef MW
            }
        }
    }
}
#endif

static void prod_filters_blk_gen(const float *f, const double *x, double *y, int og_cnt, int c_in, int rows,
                                 double p, double pinv) {
    for (int g = 0; g < og_cnt; g++) {
        for (int r = 0; r < rows; r++) {
            double acc[4] = {0, 0, 0, 0};
            for (int c = 0; c < c_in; c++) {
                const float *fv = f + ((size_t)g * c_in + c) * 4;
                const double *xv = x + ((size_t)c * rows + r) * 4;
                for (int l = 0; l < 4; l++) acc[l] += (double)fv[l] * xv[l];
            }
            double *yv = y + ((size_t)g * rows + r) * 4;
            for (int l = 0; l < 4; l++) yv[l] = red(acc[l], p, pinv);
        }
    }
}

static void prod_w_blk_gen(const double *w, const double *x, double *z, int cnt, int c_in, int rows, double p,
                           double pinv) {
    for (int g = 0; g < cnt; g++) {
        for (int r = 0; r < rows; r++) {
            double acc[4] = {0, 0, 0, 0};
            for (int c = 0; c < c_in; c++) {
                double wv = w[(size_t)g * c_in + c];
                const double *xv = x + ((size_t)c * rows + r) * 4;
                for (int l = 0; l < 4; l++) acc[l] += wv * xv[l];
            }
            double *zv = z + ((size_t)g * rows + r) * 4;
            for (int l = 0; l < 4; l++) zv[l] = red(acc[l], p, pinv);
        }
    }
}

typedef struct {
    const bh_rns *r;
    const float *f;
    const double *w, *t, *x;
    double *y;
    int og_cnt, c_in, rows, og0, n_og, c_out, opack;
} prod_ctx;

static void prod_filters_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    (void)scratch;
    prod_ctx *c = (prod_ctx *)vctx;
    const bh_rns *r = c->r;
    int simd = bh_simd_on();
    for (int64_t b = lo; b < hi; b++) {
        int i = (int)(b * 4 / r->n);
        const float *f = c->f + (size_t)b * c->og_cnt * c->c_in * 4;
        const double *x = c->x + (size_t)b * c->c_in * c->rows * 4;
        double *y = c->y + ((size_t)b * c->n_og + c->og0) * c->rows * 4;
#ifdef BH_X86
        if (simd) {
            prod_filters_blk_avx2(f, x, y, c->og_cnt, c->c_in, c->rows, r->p[i], r->pinv[i]);
            continue;
        }
#endif
        (void)simd;
        prod_filters_blk_gen(f, x, y, c->og_cnt, c->c_in, c->rows, r->p[i], r->pinv[i]);
    }
}

void bh_product_filters(const bh_rns *r, const float *f, int og_cnt, int c_in, int rows, const double *x, double *y,
                        int og0, int n_og, int threads) {
    prod_ctx c = {r, f, NULL, NULL, x, y, og_cnt, c_in, rows, og0, n_og, 0, 0};
    int64_t nblk = (int64_t)r->k * r->n / 4;
    bh_par_for(threads, nblk, bh_grain_for(nblk, threads, 32), prod_filters_task, &c, 0);
}

static void prod_taps_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    prod_ctx *c = (prod_ctx *)vctx;
    const bh_rns *r = c->r;
    int simd = bh_simd_on();
    int rows = c->rows, n_og = c->n_og, c_in = c->c_in, c_out = c->c_out, opack = c->opack;
    size_t kn = (size_t)r->k * r->n, per = (size_t)rows * 4;
    double *z = (double *)scratch;
    for (int64_t b = lo; b < hi; b++) {
        int i = (int)(b * 4 / r->n);
        double p = r->p[i], pinv = r->pinv[i];
        const double *x = c->x + (size_t)b * c_in * per;
        double *y = c->y + (size_t)b * n_og * per;
        if (opack == 1) {            /* the only tap is X^0: NTT(1) = 1, Y[o] = sum_c W[o, c] X[c] */
#ifdef BH_X86
            if (simd) prod_w_blk_avx2(c->w, x, y, c_out, c_in, rows, p, pinv);
            else
#endif
                prod_w_blk_gen(c->w, x, y, c_out, c_in, rows, p, pinv);
            continue;
        }
        memset(y, 0, sizeof(double) * n_og * per);
        for (int o = 0; o < c_out; o += 3) {
            int cnt = c_out - o < 3 ? c_out - o : 3;
            const double *w = c->w + (size_t)o * c_in;
#ifdef BH_X86
            if (simd) prod_w_blk_avx2(w, x, z, cnt, c_in, rows, p, pinv);
            else
#endif
                prod_w_blk_gen(w, x, z, cnt, c_in, rows, p, pinv);
            for (int g = 0; g < cnt; g++) {   /* sums of opack <= 512 products < 2^42 */
                const double *tv = c->t + (size_t)((o + g) % opack) * kn + (size_t)b * 4;
                double *yv = y + (size_t)((o + g) / opack) * per;
                const double *zg = z + (size_t)g * per;
                for (int q = 0; q < rows; q++)
                    for (int l = 0; l < 4; l++) yv[4 * q + l] += zg[4 * q + l] * tv[l];
            }
        }
        for (size_t q = 0; q < (size_t)n_og * per; q++) y[q] = red(y[q], p, pinv);
    }
    (void)simd;
}

void bh_product_taps(const bh_rns *r, const double *w, const double *t, int c_out, int opack, int n_og, int c_in,
                     int rows, const double *x, double *y, int threads) {
    prod_ctx c = {r, NULL, w, t, x, y, 0, c_in, rows, 0, n_og, c_out, opack};
    int64_t nblk = (int64_t)r->k * r->n / 4;
    bh_par_for(threads, nblk, bh_grain_for(nblk, threads, 32), prod_taps_task, &c, sizeof(double) * 3 * (size_t)rows * 4);
}

