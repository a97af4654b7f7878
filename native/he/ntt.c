#include "ntt.h"
#include "threads.h"

/* ------------------------------------------------------------------------------------------ */
/* NTT: Cooley-Tukey forward (natural -> bit-reversed), Gentleman-Sande inverse               */
/*
 * Forward: the twiddle-multiplied operand is reduced by the modular multiplication, the other
 * grows by at most p/2 + 1 per stage, so from |x| <= 2^22 every value stays below 2^26 and
 * every product below 2^47; the last stage reduces its outputs.
 * Inverse: the sums double per stage, so they are reduced every 8th stage; products stay
 * below 2^52.  n^-1 is folded into the last stage.
 */

static void ntt_fwd_gen(double *a, int n, const double *tw, double p, double pinv) {
    int t = n;
    for (int m = 1; m < n; m <<= 1) {
        t >>= 1;
        int last = 2 * m == n;
        for (int i = 0; i < m; i++) {
            double w = tw[m + i];
            double *x = a + 2 * (size_t)i * t, *y = x + t;
            for (int j = 0; j < t; j++) {
                double u = x[j], v = red(y[j] * w, p, pinv);
                if (last) {
                    x[j] = red(u + v, p, pinv);
                    y[j] = red(u - v, p, pinv);
                } else {
                    x[j] = u + v;
                    y[j] = u - v;
                }
            }
        }
    }
}

static void ntt_inv_gen(double *a, int n, const double *itw, double ninv, double p, double pinv) {
    int t = 1, st = 0;
    double w1n = red(itw[1] * ninv, p, pinv);
    for (int m = n; m > 1; m >>= 1, st++) {
        int h = m >> 1;
        int last = m == 2, fold = (st & 7) == 7;
        for (int i = 0; i < h; i++) {
            double w = last ? w1n : itw[h + i];
            double *x = a + 2 * (size_t)i * t, *y = x + t;
            for (int j = 0; j < t; j++) {
                double u = x[j], v = y[j];
                double s = u + v;
                if (last) s = red(s * ninv, p, pinv);
                else if (fold) s = red(s, p, pinv);
                x[j] = s;
                y[j] = red((u - v) * w, p, pinv);
            }
        }
        t <<= 1;
    }
}

#ifdef BH_X86

/* Two consecutive stages are fused where both have half-length >= 4 (radix-4 passes over the
 * data); the last two (half-lengths 2 and 1, in-register shuffles) are fused as well.  The
 * butterflies and reductions are exactly those of the radix-2 portable code, in the same order. */
BH_AVX2 static void ntt_fwd_avx2(double *a, int n, const double *tw, double p, double pinv) {
    const __m256d P = _mm256_set1_pd(p), PI = _mm256_set1_pd(pinv);
    int m = 1, t = n / 2;                        /* next stage: m groups of half-length t */
    for (; t >= 8; m <<= 2, t >>= 2) {           /* stages (m, t) and (2m, t/2) */
        int h = t / 2;
        for (int i = 0; i < m; i++) {
            __m256d w1 = _mm256_set1_pd(tw[m + i]);
            __m256d w2 = _mm256_set1_pd(tw[2 * m + 2 * i]), w3 = _mm256_set1_pd(tw[2 * m + 2 * i + 1]);
            double *x = a + 2 * (size_t)i * t;
            for (int j = 0; j < h; j += 4) {
                __m256d a0 = _mm256_loadu_pd(x + j), a1 = _mm256_loadu_pd(x + j + h);
                __m256d a2 = _mm256_loadu_pd(x + j + t), a3 = _mm256_loadu_pd(x + j + t + h);
                __m256d v = _mm256_mul_pd(a2, w1);
                v = VRED(v);
                a2 = _mm256_sub_pd(a0, v);
                a0 = _mm256_add_pd(a0, v);
                v = _mm256_mul_pd(a3, w1);
                v = VRED(v);
                a3 = _mm256_sub_pd(a1, v);
                a1 = _mm256_add_pd(a1, v);
                v = _mm256_mul_pd(a1, w2);
                v = VRED(v);
                a1 = _mm256_sub_pd(a0, v);
                a0 = _mm256_add_pd(a0, v);
                v = _mm256_mul_pd(a3, w3);
                v = VRED(v);
                a3 = _mm256_sub_pd(a2, v);
                a2 = _mm256_add_pd(a2, v);
                _mm256_storeu_pd(x + j, a0);
                _mm256_storeu_pd(x + j + h, a1);
                _mm256_storeu_pd(x + j + t, a2);
                _mm256_storeu_pd(x + j + t + h, a3);
            }
        }
    }
    if (t == 4) {                                /* one single stage of half-length 4 left */
        for (int i = 0; i < m; i++) {
            __m256d w = _mm256_set1_pd(tw[m + i]);
            double *x = a + 8 * (size_t)i;
            __m256d u = _mm256_loadu_pd(x);
            __m256d pr = _mm256_mul_pd(_mm256_loadu_pd(x + 4), w);
            __m256d v = VRED(pr);
            _mm256_storeu_pd(x, _mm256_add_pd(u, v));
            _mm256_storeu_pd(x + 4, _mm256_sub_pd(u, v));
        }
        m <<= 1;
    }
    /* now m = n/4: half-length 2 on blocks (x0 x1 y0 y1), then half-length 1 on pairs (x, y), 8 values per step */
    int m1 = 2 * m;
    for (int i = 0; i < m; i += 2) {
        double *b = a + 4 * (size_t)i;
        __m256d A = _mm256_loadu_pd(b), B = _mm256_loadu_pd(b + 4);
        __m256d U = _mm256_permute2f128_pd(A, B, 0x20), V = _mm256_permute2f128_pd(A, B, 0x31);
        __m256d w = _mm256_set_pd(tw[m + i + 1], tw[m + i + 1], tw[m + i], tw[m + i]);
        __m256d pr = _mm256_mul_pd(V, w);
        V = VRED(pr);
        __m256d X = _mm256_add_pd(U, V), Y = _mm256_sub_pd(U, V);
        A = _mm256_permute2f128_pd(X, Y, 0x20);
        B = _mm256_permute2f128_pd(X, Y, 0x31);
        /* half-length 1: pair groups 2i .. 2i+3 of stage m1 */
        U = _mm256_unpacklo_pd(A, B);
        V = _mm256_unpackhi_pd(A, B);
        w = _mm256_permute4x64_pd(_mm256_loadu_pd(tw + m1 + 2 * i), 0xD8);
        pr = _mm256_mul_pd(V, w);
        V = VRED(pr);
        X = _mm256_add_pd(U, V);
        Y = _mm256_sub_pd(U, V);
        X = VRED(X);
        Y = VRED(Y);
        _mm256_storeu_pd(b, _mm256_unpacklo_pd(X, Y));
        _mm256_storeu_pd(b + 4, _mm256_unpackhi_pd(X, Y));
    }
}

BH_AVX2 static void ntt_inv_avx2(double *a, int n, const double *itw, double ninv, double p, double pinv) {
    const __m256d P = _mm256_set1_pd(p), PI = _mm256_set1_pd(pinv);
    double w1n = red(itw[1] * ninv, p, pinv);
    int h = n >> 1;
    /* stages 0 (half-length 1, h = n/2 groups) and 1 (half-length 2, n/4 groups), 8 values per step */
    for (int i = 0; i < h; i += 4) {
        double *b = a + 2 * (size_t)i;
        __m256d A = _mm256_loadu_pd(b), B = _mm256_loadu_pd(b + 4);
        __m256d U = _mm256_unpacklo_pd(A, B), V = _mm256_unpackhi_pd(A, B);
        __m256d w = _mm256_permute4x64_pd(_mm256_loadu_pd(itw + h + i), 0xD8);
        __m256d X = _mm256_add_pd(U, V), D = _mm256_mul_pd(_mm256_sub_pd(U, V), w);
        __m256d Y = VRED(D);
        A = _mm256_unpacklo_pd(X, Y);
        B = _mm256_unpackhi_pd(X, Y);
        int h2 = h >> 1, i2 = i >> 1;
        U = _mm256_permute2f128_pd(A, B, 0x20);
        V = _mm256_permute2f128_pd(A, B, 0x31);
        w = _mm256_set_pd(itw[h2 + i2 + 1], itw[h2 + i2 + 1], itw[h2 + i2], itw[h2 + i2]);
        X = _mm256_add_pd(U, V);
        D = _mm256_mul_pd(_mm256_sub_pd(U, V), w);
        Y = VRED(D);
        _mm256_storeu_pd(b, _mm256_permute2f128_pd(X, Y, 0x20));
        _mm256_storeu_pd(b + 4, _mm256_permute2f128_pd(X, Y, 0x31));
    }
    h >>= 2;
    int t = 4, st = 2;
    /* pairs of stages (h groups, half-length t) and (h/2, 2t) while neither is the last (h/2 > 1) */
    for (; h > 2; h >>= 2, t <<= 2, st += 2) {
        int fold0 = (st & 7) == 7, fold1 = ((st + 1) & 7) == 7;
        for (int i = 0; i < h / 2; i++) {
            __m256d wa = _mm256_set1_pd(itw[h + 2 * i]), wb = _mm256_set1_pd(itw[h + 2 * i + 1]);
            __m256d wc = _mm256_set1_pd(itw[h / 2 + i]);
            double *x = a + 4 * (size_t)i * t;
            for (int j = 0; j < t; j += 4) {
                __m256d a0 = _mm256_loadu_pd(x + j), a1 = _mm256_loadu_pd(x + j + t);
                __m256d a2 = _mm256_loadu_pd(x + j + 2 * t), a3 = _mm256_loadu_pd(x + j + 3 * t);
                __m256d s0 = _mm256_add_pd(a0, a1), d0 = _mm256_mul_pd(_mm256_sub_pd(a0, a1), wa);
                __m256d s1 = _mm256_add_pd(a2, a3), d1 = _mm256_mul_pd(_mm256_sub_pd(a2, a3), wb);
                if (fold0) {
                    s0 = VRED(s0);
                    s1 = VRED(s1);
                }
                d0 = VRED(d0);
                d1 = VRED(d1);
                __m256d u0 = _mm256_add_pd(s0, s1), e0 = _mm256_mul_pd(_mm256_sub_pd(s0, s1), wc);
                __m256d u1 = _mm256_add_pd(d0, d1), e1 = _mm256_mul_pd(_mm256_sub_pd(d0, d1), wc);
                if (fold1) {
                    u0 = VRED(u0);
                    u1 = VRED(u1);
                }
                _mm256_storeu_pd(x + j, u0);
                _mm256_storeu_pd(x + j + t, u1);
                _mm256_storeu_pd(x + j + 2 * t, VRED(e0));
                _mm256_storeu_pd(x + j + 3 * t, VRED(e1));
            }
        }
    }
    if (h == 2) {                                /* one single stage before the last */
        int fold = (st & 7) == 7;
        for (int i = 0; i < h; i++) {
            __m256d w = _mm256_set1_pd(itw[h + i]);
            double *x = a + 2 * (size_t)i * t, *y = x + t;
            for (int j = 0; j < t; j += 4) {
                __m256d u = _mm256_loadu_pd(x + j), v = _mm256_loadu_pd(y + j);
                __m256d s = _mm256_add_pd(u, v), d = _mm256_mul_pd(_mm256_sub_pd(u, v), w);
                if (fold) s = VRED(s);
                _mm256_storeu_pd(x + j, s);
                _mm256_storeu_pd(y + j, VRED(d));
            }
        }
        h >>= 1;
        t <<= 1;
    }
    /* last stage, h = 1, t = n/2: both outputs multiplied (n^-1 and w * n^-1) */
    {
        __m256d N1 = _mm256_set1_pd(ninv), W1 = _mm256_set1_pd(w1n);
        double *x = a, *y = a + t;
        for (int j = 0; j < t; j += 4) {
            __m256d u = _mm256_loadu_pd(x + j), v = _mm256_loadu_pd(y + j);
            __m256d s = _mm256_mul_pd(_mm256_add_pd(u, v), N1), d = _mm256_mul_pd(_mm256_sub_pd(u, v), W1);
            _mm256_storeu_pd(x + j, VRED(s));
            _mm256_storeu_pd(y + j, VRED(d));
        }
    }
}
#endif


ntt_pair bh_ntt_pick(const bh_rns *r) {
    ntt_pair k = {ntt_fwd_gen, ntt_inv_gen};
#ifdef BH_X86
    if (bh_simd_on() && r->n >= 16) {
        k.fwd = ntt_fwd_avx2;
        k.inv = ntt_inv_avx2;
    }
#else
    (void)r;
#endif
    return k;
}

typedef struct {
    const bh_rns *r;
    double *a;
    int inverse;
} ntt_ctx;

static void ntt_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    (void)scratch;
    ntt_ctx *c = (ntt_ctx *)vctx;
    const bh_rns *r = c->r;
    ntt_pair k = bh_ntt_pick(r);
    for (int64_t it = lo; it < hi; it++) {
        double *a = c->a + (size_t)it * r->n;
        int i = (int)(it % r->k);
        if (c->inverse) inv1(&k, r, a, i);
        else fwd1(&k, r, a, i);
    }
}

void bh_ntt_fwd(const bh_rns *r, double *a, int64_t count, int threads) {
    ntt_ctx c = {r, a, 0};
    bh_par_for(threads, count * r->k, bh_grain_for(count * r->k, threads, 64), ntt_task, &c, 0);
}

void bh_ntt_inv(const bh_rns *r, double *a, int64_t count, int threads) {
    ntt_ctx c = {r, a, 1};
    bh_par_for(threads, count * r->k, bh_grain_for(count * r->k, threads, 64), ntt_task, &c, 0);
}
