/* Native HomConv kernels: see bunet_he.h for the interface and layouts.
 *
 * Arithmetic.  Residues are integers held in doubles.  x mod p is computed as
 * x - rint(x * (1/p)) * p: for |x| < 2^52 the quotient estimate is within 1/2 + 2^-20 of
 * x / p, so the result is a centred residue (|r| <= p/2 + 1) and every step is exact.
 * Products of two centred residues (< 2^42) and sums of up to 2^10 of them stay exact.
 *
 * Dispatch.  Hot loops (NTT butterflies, the product micro-kernels) have AVX2+FMA intrinsics
 * and a portable scalar twin; per-ciphertext element-wise loops are written once as
 * always-inline bodies and instantiated for both targets.  The choice is made at run time
 * (__builtin_cpu_supports), so the module runs on any x86-64 (or other) CPU.  Both paths
 * perform the same IEEE operations (FMA is used only where the operands make it exact),
 * so their results are bit-identical.
 */
#include "bunet_he.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BH_X86 1
#define BH_AVX2 __attribute__((target("avx2,fma,popcnt")))
#else
#define BH_AVX2
#endif

#define BH_INLINE static inline __attribute__((always_inline))
#define MAGIC 6755399441055744.0            /* 1.5 * 2^52: (x + MAGIC) - MAGIC = rint(x), |x| < 2^51 */
#define MAGIC_BITS 0x4338000000000000ULL

/* ------------------------------------------------------------------------------------------ */
/* dispatch                                                                                   */

static int g_force_portable = 0;

static int simd_on(void) {
#ifdef BH_X86
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
    }
    return have && !g_force_portable;
#else
    return 0;
#endif
}

int bh_simd(void) { return simd_on(); }
void bh_force_portable(int on) { g_force_portable = on != 0; }

/* ------------------------------------------------------------------------------------------ */
/* threads: a dynamic parallel-for (the machine is shared, so work is taken in small grains)   */

typedef void (*task_fn)(void *ctx, int64_t lo, int64_t hi);

typedef struct {
    task_fn fn;
    void *ctx;
    int64_t n, grain, next;
} pool_t;

static void *pool_worker(void *arg) {
    pool_t *p = (pool_t *)arg;
    for (;;) {
        int64_t lo = __atomic_fetch_add(&p->next, p->grain, __ATOMIC_RELAXED);
        if (lo >= p->n) break;
        int64_t hi = lo + p->grain < p->n ? lo + p->grain : p->n;
        p->fn(p->ctx, lo, hi);
    }
    return NULL;
}

static void par_for(int threads, int64_t n, int64_t grain, task_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    pool_t p = {fn, ctx, n, grain, 0};
    int64_t chunks = (n + grain - 1) / grain;
    int extra = threads - 1;
    if (extra > 63) extra = 63;
    if (extra > chunks - 1) extra = (int)(chunks - 1);
    pthread_t th[64];
    int started = 0;
    for (int i = 0; i < extra; i++)
        if (pthread_create(&th[started], NULL, pool_worker, &p) == 0) started++;
    pool_worker(&p);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
}

static int64_t grain_for(int64_t n, int threads, int64_t cap) {
    int64_t g = n / (4 * (threads > 0 ? threads : 1));
    if (g > cap) g = cap;
    return g < 1 ? 1 : g;
}

/* ------------------------------------------------------------------------------------------ */
/* little-endian byte helpers                                                                 */

BH_INLINE uint32_t ld32(const uint8_t *s) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint32_t v;
    memcpy(&v, s, 4);
    return v;
#else
    return (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
#endif
}

BH_INLINE uint64_t ld64(const uint8_t *s) { return (uint64_t)ld32(s) | (uint64_t)ld32(s + 4) << 32; }

BH_INLINE void st32(uint8_t *d, uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(d, &v, 4);
#else
    for (int i = 0; i < 4; i++) d[i] = (uint8_t)(v >> (8 * i));
#endif
}

BH_INLINE void st64(uint8_t *d, uint64_t v) {
    st32(d, (uint32_t)v);
    st32(d + 4, (uint32_t)(v >> 32));
}

/* Store count values of nb bytes each (little-endian) at d, never writing past d + count*nb. */
BH_INLINE void pack_words(uint8_t *d, const uint64_t *v, int64_t count, int nb) {
    int64_t j = 0;
    int64_t end = count * nb;
    for (; j < count && j * nb + 8 <= end; j++) st64(d + j * nb, v[j]);
    for (; j < count; j++)
        for (int b = 0; b < nb; b++) d[j * nb + b] = (uint8_t)(v[j] >> (8 * b));
}

/* ------------------------------------------------------------------------------------------ */
/* scalar residue arithmetic                                                                  */

BH_INLINE double rnd(double x) { return (x + MAGIC) - MAGIC; }
BH_INLINE double red(double x, double p, double pinv) { return x - rnd(x * pinv) * p; }
/* integer in [0, 2^52) -> double without a (non-vectorisable) integer conversion */
BH_INLINE double u52_to_d(uint64_t m) {
    union { uint64_t u; double d; } v = {m | 0x4330000000000000ULL};
    return v.d - 4503599627370496.0;
}
/* rint(x) as int64 for |x| < 2^51 */
BH_INLINE int64_t d_to_i(double x) {
    union { double d; uint64_t u; } v = {x + MAGIC};
    return (int64_t)(v.u - MAGIC_BITS);
}

/* ------------------------------------------------------------------------------------------ */
/* ChaCha20                                                                                   */

#define ROTL32(v, c) (((v) << (c)) | ((v) >> (32 - (c))))
#define CC_QR(a, b, c, d)                                                                           \
    for (int l = 0; l < 8; l++) {                                                                   \
        x[a][l] += x[b][l]; x[d][l] ^= x[a][l]; x[d][l] = ROTL32(x[d][l], 16);                      \
        x[c][l] += x[d][l]; x[b][l] ^= x[c][l]; x[b][l] = ROTL32(x[b][l], 12);                      \
        x[a][l] += x[b][l]; x[d][l] ^= x[a][l]; x[d][l] = ROTL32(x[d][l], 8);                       \
        x[c][l] += x[d][l]; x[b][l] ^= x[c][l]; x[b][l] = ROTL32(x[b][l], 7);                       \
    }

/* Eight consecutive blocks (counters st[12] .. st[12]+7) = 512 bytes; lanes vectorise. */
BH_INLINE void chacha8_body(const uint32_t st[16], uint8_t *out) {
    uint32_t x[16][8] __attribute__((aligned(32)));
    uint32_t s[16][8] __attribute__((aligned(32)));
    for (int i = 0; i < 16; i++)
        for (int l = 0; l < 8; l++) s[i][l] = st[i];
    for (int l = 0; l < 8; l++) s[12][l] = st[12] + (uint32_t)l;
    memcpy(x, s, sizeof x);
    for (int r = 0; r < 10; r++) {
        CC_QR(0, 4, 8, 12) CC_QR(1, 5, 9, 13) CC_QR(2, 6, 10, 14) CC_QR(3, 7, 11, 15)
        CC_QR(0, 5, 10, 15) CC_QR(1, 6, 11, 12) CC_QR(2, 7, 8, 13) CC_QR(3, 4, 9, 14)
    }
    for (int i = 0; i < 16; i++)
        for (int l = 0; l < 8; l++) x[i][l] += s[i][l];
    for (int l = 0; l < 8; l++)
        for (int i = 0; i < 16; i++) st32(out + 64 * l + 4 * i, x[i][l]);
}

BH_AVX2 static void chacha8_avx2(const uint32_t st[16], uint8_t *out) { chacha8_body(st, out); }
static void chacha8_gen(const uint32_t st[16], uint8_t *out) { chacha8_body(st, out); }

typedef struct {
    uint32_t st[16];
    uint8_t buf[512];
    int pos;
    void (*blocks)(const uint32_t *, uint8_t *);
} stream_t;

static void stream_init(stream_t *s, const uint8_t *key, const uint32_t nonce[3], uint32_t counter) {
    static const uint32_t sigma[4] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u};
    for (int i = 0; i < 4; i++) s->st[i] = sigma[i];
    for (int i = 0; i < 8; i++) s->st[4 + i] = ld32(key + 4 * i);
    s->st[12] = counter;
    for (int i = 0; i < 3; i++) s->st[13 + i] = nonce[i];
    s->pos = 512;
    s->blocks = simd_on() ? chacha8_avx2 : chacha8_gen;
}

/* Stream for one ciphertext's randomness: nonce (ct low, ct high, label). */
static void stream_ct(stream_t *s, const uint8_t *key, int64_t ct, uint32_t label) {
    uint32_t nonce[3] = {(uint32_t)ct, (uint32_t)((uint64_t)ct >> 32), label};
    stream_init(s, key, nonce, 0);
}

static void stream_read(stream_t *s, uint8_t *out, size_t len) {
    while (len) {
        if (s->pos == 512) {
            if (len >= 512) {
                s->blocks(s->st, out);
                s->st[12] += 8;
                out += 512;
                len -= 512;
                continue;
            }
            s->blocks(s->st, s->buf);
            s->st[12] += 8;
            s->pos = 0;
        }
        size_t take = (size_t)(512 - s->pos) < len ? (size_t)(512 - s->pos) : len;
        memcpy(out, s->buf + s->pos, take);
        s->pos += (int)take;
        out += take;
        len -= take;
    }
}

void bh_chacha20(const uint8_t *key, const uint8_t *nonce, uint32_t counter, uint8_t *out, size_t len) {
    uint32_t nw[3] = {ld32(nonce), ld32(nonce + 4), ld32(nonce + 8)};
    stream_t s;
    stream_init(&s, key, nw, counter);
    stream_read(&s, out, len);
}

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
#define VRED(x) _mm256_fnmadd_pd(_mm256_round_pd(_mm256_mul_pd((x), PI), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), P, (x))

BH_AVX2 static void ntt_fwd_avx2(double *a, int n, const double *tw, double p, double pinv) {
    const __m256d P = _mm256_set1_pd(p), PI = _mm256_set1_pd(pinv);
    int t = n, m;
    for (m = 1; m < n / 4; m <<= 1) {        /* half-lengths t = n/2 .. 4 */
        t >>= 1;
        for (int i = 0; i < m; i++) {
            __m256d w = _mm256_set1_pd(tw[m + i]);
            double *x = a + 2 * (size_t)i * t, *y = x + t;
            for (int j = 0; j < t; j += 4) {
                __m256d u = _mm256_loadu_pd(x + j);
                __m256d pr = _mm256_mul_pd(_mm256_loadu_pd(y + j), w);
                __m256d v = VRED(pr);
                _mm256_storeu_pd(x + j, _mm256_add_pd(u, v));
                _mm256_storeu_pd(y + j, _mm256_sub_pd(u, v));
            }
        }
    }
    /* t = 2: blocks of 4 = (x0 x1 y0 y1), two blocks per step */
    for (int i = 0; i < m; i += 2) {
        double *b = a + 4 * (size_t)i;
        __m256d A = _mm256_loadu_pd(b), B = _mm256_loadu_pd(b + 4);
        __m256d U = _mm256_permute2f128_pd(A, B, 0x20), V = _mm256_permute2f128_pd(A, B, 0x31);
        __m256d w = _mm256_set_pd(tw[m + i + 1], tw[m + i + 1], tw[m + i], tw[m + i]);
        __m256d pr = _mm256_mul_pd(V, w);
        V = VRED(pr);
        __m256d X = _mm256_add_pd(U, V), Y = _mm256_sub_pd(U, V);
        _mm256_storeu_pd(b, _mm256_permute2f128_pd(X, Y, 0x20));
        _mm256_storeu_pd(b + 4, _mm256_permute2f128_pd(X, Y, 0x31));
    }
    m <<= 1;
    /* t = 1: pairs (x, y); four pairs per step; last stage, outputs reduced */
    for (int i = 0; i < m; i += 4) {
        double *b = a + 2 * (size_t)i;
        __m256d A = _mm256_loadu_pd(b), B = _mm256_loadu_pd(b + 4);
        __m256d U = _mm256_unpacklo_pd(A, B), V = _mm256_unpackhi_pd(A, B);
        __m256d w = _mm256_permute4x64_pd(_mm256_loadu_pd(tw + m + i), 0xD8);
        __m256d pr = _mm256_mul_pd(V, w);
        V = VRED(pr);
        __m256d X = _mm256_add_pd(U, V), Y = _mm256_sub_pd(U, V);
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
    /* stage 0, t = 1 */
    for (int i = 0; i < h; i += 4) {
        double *b = a + 2 * (size_t)i;
        __m256d A = _mm256_loadu_pd(b), B = _mm256_loadu_pd(b + 4);
        __m256d U = _mm256_unpacklo_pd(A, B), V = _mm256_unpackhi_pd(A, B);
        __m256d w = _mm256_permute4x64_pd(_mm256_loadu_pd(itw + h + i), 0xD8);
        __m256d X = _mm256_add_pd(U, V), D = _mm256_mul_pd(_mm256_sub_pd(U, V), w);
        __m256d Y = VRED(D);
        _mm256_storeu_pd(b, _mm256_unpacklo_pd(X, Y));
        _mm256_storeu_pd(b + 4, _mm256_unpackhi_pd(X, Y));
    }
    h >>= 1;
    /* stage 1, t = 2 */
    for (int i = 0; i < h; i += 2) {
        double *b = a + 4 * (size_t)i;
        __m256d A = _mm256_loadu_pd(b), B = _mm256_loadu_pd(b + 4);
        __m256d U = _mm256_permute2f128_pd(A, B, 0x20), V = _mm256_permute2f128_pd(A, B, 0x31);
        __m256d w = _mm256_set_pd(itw[h + i + 1], itw[h + i + 1], itw[h + i], itw[h + i]);
        __m256d X = _mm256_add_pd(U, V), D = _mm256_mul_pd(_mm256_sub_pd(U, V), w);
        __m256d Y = VRED(D);
        _mm256_storeu_pd(b, _mm256_permute2f128_pd(X, Y, 0x20));
        _mm256_storeu_pd(b + 4, _mm256_permute2f128_pd(X, Y, 0x31));
    }
    h >>= 1;
    int t = 4, st = 2;
    for (; h > 1; h >>= 1, t <<= 1, st++) {
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

typedef void (*ntt_fn)(double *, int, const double *, double, double);
typedef void (*intt_fn)(double *, int, const double *, double, double, double);

typedef struct {
    ntt_fn fwd;
    intt_fn inv;
} ntt_pair;

static ntt_pair ntt_pick(const bh_rns *r) {
    ntt_pair k = {ntt_fwd_gen, ntt_inv_gen};
#ifdef BH_X86
    if (simd_on() && r->n >= 16) {
        k.fwd = ntt_fwd_avx2;
        k.inv = ntt_inv_avx2;
    }
#else
    (void)r;
#endif
    return k;
}

BH_INLINE void fwd1(const ntt_pair *k, const bh_rns *r, double *a, int i) {
    k->fwd(a, r->n, r->tw + (size_t)i * r->n, r->p[i], r->pinv[i]);
}

BH_INLINE void inv1(const ntt_pair *k, const bh_rns *r, double *a, int i) {
    k->inv(a, r->n, r->itw + (size_t)i * r->n, r->ninv[i], r->p[i], r->pinv[i]);
}

typedef struct {
    const bh_rns *r;
    double *a;
    int inverse;
} ntt_ctx;

static void ntt_task(void *vctx, int64_t lo, int64_t hi) {
    ntt_ctx *c = (ntt_ctx *)vctx;
    const bh_rns *r = c->r;
    ntt_pair k = ntt_pick(r);
    for (int64_t it = lo; it < hi; it++) {
        double *a = c->a + (size_t)it * r->n;
        int i = (int)(it % r->k);
        if (c->inverse) inv1(&k, r, a, i);
        else fwd1(&k, r, a, i);
    }
}

void bh_ntt_fwd(const bh_rns *r, double *a, int64_t count, int threads) {
    ntt_ctx c = {r, a, 0};
    par_for(threads, count * r->k, grain_for(count * r->k, threads, 64), ntt_task, &c);
}

void bh_ntt_inv(const bh_rns *r, double *a, int64_t count, int threads) {
    ntt_ctx c = {r, a, 1};
    par_for(threads, count * r->k, grain_for(count * r->k, threads, 64), ntt_task, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* uniform a-polynomials                                                                      */

static size_t a_words(const bh_rns *r) { return (size_t)r->k * (size_t)(r->n + 64 + r->n / 64); }

/* One key: words[4 * a_words] scratch (rounded up to 512 bytes); out (K, N) centred.
 * Returns 1 when a row ran short of accepted words. */
BH_INLINE int expand_a_body(const bh_rns *r, const uint8_t *key, uint32_t *words, double *out) {
    static const uint8_t drg_nonce[12] = {'L', 'i', 'b', 's', 'o', 'd', 'i', 'u', 'm', 'D', 'R', 'G'};
    size_t nw = a_words(r), row = (size_t)(r->n + 64 + r->n / 64);
    uint32_t nonce[3] = {ld32(drg_nonce), ld32(drg_nonce + 4), ld32(drg_nonce + 8)};
    stream_t s;
    stream_init(&s, key, nonce, 0);
    stream_read(&s, (uint8_t *)words, 4 * nw);
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    for (size_t i = 0; i < nw; i++) words[i] = ld32((const uint8_t *)(words + i));
#endif
    int short_row = 0;
    for (int i = 0; i < r->k; i++) {
        uint32_t p = (uint32_t)r->p[i];
        uint32_t lim = (uint32_t)((((uint64_t)1 << 32) / p) * p);
        uint32_t *w = words + (size_t)i * row;     /* compacted in place: cnt <= j */
        size_t cnt = 0;
        for (size_t j = 0; j < row && cnt < (size_t)r->n; j++) {
            w[cnt] = w[j];
            cnt += w[j] < lim;
        }
        if (cnt < (size_t)r->n) {
            short_row = 1;
            for (size_t j = cnt; j < (size_t)r->n; j++) w[j] = 0;
        }
        double pd = r->p[i], pinv = r->pinv[i];
        double *o = out + (size_t)i * r->n;
        for (int j = 0; j < r->n; j++) o[j] = red((double)w[j], pd, pinv);
    }
    return short_row;
}

BH_AVX2 static int expand_a_avx2(const bh_rns *r, const uint8_t *key, uint32_t *words, double *out) {
    return expand_a_body(r, key, words, out);
}
static int expand_a_gen(const bh_rns *r, const uint8_t *key, uint32_t *words, double *out) {
    return expand_a_body(r, key, words, out);
}

static int expand_a(const bh_rns *r, const uint8_t *key, uint32_t *words, double *out) {
    return simd_on() ? expand_a_avx2(r, key, words, out) : expand_a_gen(r, key, words, out);
}

static uint32_t *alloc_words(const bh_rns *r) { return (uint32_t *)malloc(4 * a_words(r) + 512); }

typedef struct {
    const bh_rns *r;
    const uint8_t *keys;
    double *out;
    int64_t fails;
} expand_ctx;

static void expand_task(void *vctx, int64_t lo, int64_t hi) {
    expand_ctx *c = (expand_ctx *)vctx;
    const bh_rns *r = c->r;
    uint32_t *words = alloc_words(r);
    int64_t f = 0;
    for (int64_t it = lo; it < hi; it++)
        f += expand_a(r, c->keys + 32 * it, words, c->out + (size_t)it * r->k * r->n);
    free(words);
    if (f) __atomic_fetch_add(&c->fails, f, __ATOMIC_RELAXED);
}

int64_t bh_expand_a(const bh_rns *r, const uint8_t *keys, int64_t count, double *out, int threads) {
    expand_ctx c = {r, keys, out, 0};
    par_for(threads, count, grain_for(count, threads, 16), expand_task, &c);
    return c.fails;
}

/* ------------------------------------------------------------------------------------------ */
/* element-wise helpers                                                                       */

/* centred binomial noise, eta = 21, from 64-bit words */
BH_INLINE void cbd_body(const uint8_t *bytes, int64_t count, double *e) {
    const uint64_t m = (1ULL << 21) - 1;
    for (int64_t j = 0; j < count; j++) {
        uint64_t w = ld64(bytes + 8 * j);
        e[j] = (double)(__builtin_popcountll(w & m) - __builtin_popcountll((w >> 21) & m));
    }
}

/* out[i][j] = Delta_i * m[j] mod p_i (centred), m < 2^52 */
BH_INLINE void scaled_body(const bh_rns *r, const uint64_t *m, const double *delta, double *out) {
    for (int i = 0; i < r->k; i++) {
        double p = r->p[i], pinv = r->pinv[i], d = delta[i];
        double *o = out + (size_t)i * r->n;
        for (int j = 0; j < r->n; j++) o[j] = red(red(u52_to_d(m[j]), p, pinv) * d, p, pinv);
    }
}

/* round(2^bits * c / q) mod 2^bits for one coefficient given its residues x[i * stride] */
BH_INLINE uint64_t pow2_one(const bh_rns *r, const double *x, size_t stride, const double *scale, double two_b,
                            double inv_two_b, uint64_t mask) {
    double acc = 0.0;
    for (int i = 0; i < r->k; i++) acc += red(x[i * stride] * r->crt[i], r->p[i], r->pinv[i]) * scale[i];
    acc -= rnd(acc * inv_two_b) * two_b;          /* exact: now |acc| <= 2^(bits-1) */
    return (uint64_t)d_to_i(acc) & mask;
}

/* ------------------------------------------------------------------------------------------ */
/* client encryption                                                                          */

typedef struct {
    const bh_rns *r;
    const uint64_t *m;
    const double *delta, *s_hat;
    const uint8_t *a_keys, *noise_key;
    uint8_t *out;
    int64_t fails;
} enc_ctx;

BH_INLINE int encrypt_one(enc_ctx *c, int64_t ct, double *v, double *a, uint32_t *words, uint8_t *nb,
                          double *e) {
    const bh_rns *r = c->r;
    int k = r->k, n = r->n;
    ntt_pair kk = ntt_pick(r);
    stream_t s;
    stream_ct(&s, c->noise_key, ct, 0);
    stream_read(&s, nb, 8 * (size_t)n);
    cbd_body(nb, n, e);
    scaled_body(r, c->m + (size_t)ct * n, c->delta, v);
    for (int i = 0; i < k; i++) {
        double *vi = v + (size_t)i * n;
        for (int j = 0; j < n; j++) vi[j] += e[j];
        fwd1(&kk, r, vi, i);
    }
    int fail = expand_a(r, c->a_keys + 32 * ct, words, a);
    uint8_t *o = c->out + (size_t)ct * k * n * 3;
    size_t total = (size_t)k * n;
    for (int i = 0; i < k; i++) {
        double p = r->p[i], pinv = r->pinv[i];
        const double *sh = c->s_hat + (size_t)i * n;
        double *vi = v + (size_t)i * n, *ai = a + (size_t)i * n;
        for (int j = 0; j < n; j++) vi[j] = red(vi[j] - ai[j] * sh[j], p, pinv);
    }
    for (size_t j = 0; j < total; j++) {
        uint32_t w = (uint32_t)(int32_t)v[j];
        if (j + 1 < total) st32(o + 3 * j, w);       /* the 4th byte is overwritten next */
        else {
            o[3 * j] = (uint8_t)w;
            o[3 * j + 1] = (uint8_t)(w >> 8);
            o[3 * j + 2] = (uint8_t)(w >> 16);
        }
    }
    return fail;
}

BH_AVX2 static int encrypt_one_avx2(enc_ctx *c, int64_t ct, double *v, double *a, uint32_t *w, uint8_t *nb,
                                    double *e) {
    return encrypt_one(c, ct, v, a, w, nb, e);
}
static int encrypt_one_gen(enc_ctx *c, int64_t ct, double *v, double *a, uint32_t *w, uint8_t *nb, double *e) {
    return encrypt_one(c, ct, v, a, w, nb, e);
}

static void encrypt_task(void *vctx, int64_t lo, int64_t hi) {
    enc_ctx *c = (enc_ctx *)vctx;
    const bh_rns *r = c->r;
    size_t kn = (size_t)r->k * r->n;
    double *v = (double *)malloc(sizeof(double) * (2 * kn + r->n));
    uint8_t *nb = (uint8_t *)malloc(8 * (size_t)r->n);
    uint32_t *words = alloc_words(r);
    int64_t f = 0;
    int simd = simd_on();
    for (int64_t ct = lo; ct < hi; ct++)
        f += simd ? encrypt_one_avx2(c, ct, v, v + kn, words, nb, v + 2 * kn)
                  : encrypt_one_gen(c, ct, v, v + kn, words, nb, v + 2 * kn);
    free(v);
    free(nb);
    free(words);
    if (f) __atomic_fetch_add(&c->fails, f, __ATOMIC_RELAXED);
}

int64_t bh_encrypt(const bh_rns *r, const uint64_t *m, int64_t count, const double *delta, const double *s_hat,
                   const uint8_t *a_keys, const uint8_t *noise_key, uint8_t *out, int threads) {
    enc_ctx c = {r, m, delta, s_hat, a_keys, noise_key, out, 0};
    par_for(threads, count, grain_for(count, threads, 8), encrypt_task, &c);
    return c.fails;
}

/* ------------------------------------------------------------------------------------------ */
/* server: input preparation                                                                  */

typedef struct {
    const bh_rns *r;
    const uint8_t *c0;
    const int64_t *ct_index;
    const uint64_t *xs;
    const double *delta;
    const uint8_t *a_keys;
    int c_in, tc;
    double *x;
    int64_t bad;
} prep_ctx;

BH_INLINE int prep_one(prep_ctx *c, int64_t item, double *v, double *a, uint32_t *words) {
    const bh_rns *r = c->r;
    int k = r->k, n = r->n, rows = 2 * c->tc;
    int ch = (int)(item / c->tc), tl = (int)(item % c->tc);
    ntt_pair kk = ntt_pick(r);
    scaled_body(r, c->xs + (size_t)item * n, c->delta, v);
    for (int i = 0; i < k; i++) fwd1(&kk, r, v + (size_t)i * n, i);
    const uint8_t *src = c->c0 + (size_t)c->ct_index[item] * k * n * 3;
    size_t total = (size_t)k * n;
    int bad = 0;
    for (int i = 0; i < k; i++) {
        double p = r->p[i], pinv = r->pinv[i];
        int32_t lim = (int32_t)(r->p[i] * 0.5) + 1;
        double *vi = v + (size_t)i * n;
        const uint8_t *si = src + (size_t)i * n * 3;
        for (int j = 0; j < n; j++) {
            size_t g = (size_t)i * n + j;
            uint32_t w = g + 1 < total ? ld32(si + 3 * j)
                                       : (uint32_t)si[3 * j] | (uint32_t)si[3 * j + 1] << 8 | (uint32_t)si[3 * j + 2] << 16;
            int32_t x = (int32_t)(w << 8) >> 8;
            bad |= (x > lim) | (x < -lim);
            vi[j] = red(vi[j] + (double)x, p, pinv);
        }
    }
    if (expand_a(r, c->a_keys + 32 * item, words, a)) bad = 1;   /* cannot happen in practice */
    /* scatter both rows of this item into the slot blocks: 8 consecutive doubles per block */
    size_t nblk = total / 4;
    double *dst = c->x + ((size_t)ch * rows + 2 * tl) * 4;
    size_t bstride = (size_t)c->c_in * rows * 4;
    for (size_t b = 0; b < nblk; b++) {
        double *d = dst + b * bstride;
        memcpy(d, v + 4 * b, 4 * sizeof(double));
        memcpy(d + 4, a + 4 * b, 4 * sizeof(double));
    }
    return bad;
}

BH_AVX2 static int prep_one_avx2(prep_ctx *c, int64_t item, double *v, double *a, uint32_t *w) {
    return prep_one(c, item, v, a, w);
}
static int prep_one_gen(prep_ctx *c, int64_t item, double *v, double *a, uint32_t *w) {
    return prep_one(c, item, v, a, w);
}

static void prep_task(void *vctx, int64_t lo, int64_t hi) {
    prep_ctx *c = (prep_ctx *)vctx;
    size_t kn = (size_t)c->r->k * c->r->n;
    double *v = (double *)malloc(sizeof(double) * 2 * kn);
    uint32_t *words = alloc_words(c->r);
    int64_t bad = 0;
    int simd = simd_on();
    for (int64_t it = lo; it < hi; it++)
        bad += simd ? prep_one_avx2(c, it, v, v + kn, words) : prep_one_gen(c, it, v, v + kn, words);
    free(v);
    free(words);
    if (bad) __atomic_fetch_add(&c->bad, bad, __ATOMIC_RELAXED);
}

int64_t bh_server_prep(const bh_rns *r, const uint8_t *c0, const int64_t *ct_index, const uint64_t *xs,
                       const double *delta, const uint8_t *a_keys, int c_in, int tc, double *x, int threads) {
    prep_ctx c = {r, c0, ct_index, xs, delta, a_keys, c_in, tc, x, 0};
    int64_t items = (int64_t)c_in * tc;
    par_for(threads, items, grain_for(items, threads, 4), prep_task, &c);
    return c.bad;
}

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

static void prod_filters_task(void *vctx, int64_t lo, int64_t hi) {
    prod_ctx *c = (prod_ctx *)vctx;
    const bh_rns *r = c->r;
    int simd = simd_on();
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
    par_for(threads, nblk, grain_for(nblk, threads, 32), prod_filters_task, &c);
}

static void prod_taps_task(void *vctx, int64_t lo, int64_t hi) {
    prod_ctx *c = (prod_ctx *)vctx;
    const bh_rns *r = c->r;
    int simd = simd_on();
    int rows = c->rows;
    double *z = (double *)malloc(sizeof(double) * 3 * rows * 4);
    double *acc = (double *)malloc(sizeof(double) * rows * 4);
    for (int64_t b = lo; b < hi; b++) {
        int i = (int)(b * 4 / r->n);
        double p = r->p[i], pinv = r->pinv[i];
        const double *x = c->x + (size_t)b * c->c_in * rows * 4;
        for (int og = 0; og < c->n_og; og++) {
            memset(acc, 0, sizeof(double) * rows * 4);
            int o_lo = og * c->opack, o_hi = o_lo + c->opack < c->c_out ? o_lo + c->opack : c->c_out;
            for (int o = o_lo; o < o_hi; o += 3) {
                int cnt = o_hi - o < 3 ? o_hi - o : 3;
                const double *w = c->w + (size_t)o * c->c_in;
#ifdef BH_X86
                if (simd) prod_w_blk_avx2(w, x, z, cnt, c->c_in, rows, p, pinv);
                else
#endif
                    prod_w_blk_gen(w, x, z, cnt, c->c_in, rows, p, pinv);
                for (int g = 0; g < cnt; g++) {
                    const double *tv = c->t + (size_t)(o + g - o_lo) * r->k * r->n + (size_t)b * 4;
                    const double *zg = z + (size_t)g * rows * 4;
                    for (int q = 0; q < rows * 4; q++) acc[q] += zg[q] * tv[q & 3];
                }
            }
            double *y = c->y + ((size_t)b * c->n_og + og) * rows * 4;
            for (int q = 0; q < rows * 4; q++) y[q] = red(acc[q], p, pinv);
        }
    }
    (void)simd;
    free(z);
    free(acc);
}

void bh_product_taps(const bh_rns *r, const double *w, const double *t, int c_out, int opack, int n_og, int c_in,
                     int rows, const double *x, double *y, int threads) {
    prod_ctx c = {r, NULL, w, t, x, y, 0, c_in, rows, 0, n_og, c_out, opack};
    int64_t nblk = (int64_t)r->k * r->n / 4;
    par_for(threads, nblk, grain_for(nblk, threads, 32), prod_taps_task, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* server: finishing output ciphertexts                                                       */

typedef struct {
    const bh_rns *r;
    const double *y;
    int n_og, rows;
    const int64_t *jobs_og, *jobs_tl, *ct_global;
    const int64_t *ret_lo, *ret_hi;
    const int32_t *ret_coef;
    int64_t ret_base;
    const uint64_t *m_s;
    const double *pk, *delta;
    int flood_bits, down_bits, down_c0_bits;
    const uint8_t *key;
    uint8_t *c1_out, *c0_out;
    double scale[64], fl_c[64][8], fl_off[64];
    int n_limbs;
} fin_ctx;

#define FIN_BATCH 256

static void flood_consts(const bh_rns *r, int bits, double c[][8], double *off, int *n_limbs) {
    int total = bits + 1;
    *n_limbs = (total + 26) / 27;
    for (int i = 0; i < r->k; i++) {
        uint64_t p = (uint64_t)r->p[i], v = 1 % p;
        for (int l = 0; l < *n_limbs; l++) {
            c[i][l] = (double)v;
            for (int s = 0; s < 27; s++) v = (v * 2) % p;
        }
        uint64_t o = 1 % p;
        for (int s = 0; s < bits; s++) o = (o * 2) % p;
        off[i] = (double)o;
    }
}

/* Flood residues for cnt coefficients from 32-bit words (cnt, n_limbs): res[i * stride + j]. */
BH_INLINE void flood_body(const bh_rns *r, const uint8_t *words, int64_t cnt, int bits, int n_limbs,
                          double c[][8], const double *off, double *res, size_t stride) {
    int total = bits + 1;
    for (int64_t j = 0; j < cnt; j++) {
        double limb[8];
        for (int l = 0; l < n_limbs; l++) {
            int width = total - 27 * l < 27 ? total - 27 * l : 27;
            limb[l] = (double)(ld32(words + 4 * ((size_t)j * n_limbs + l)) >> (32 - width));
        }
        for (int i = 0; i < r->k; i++) {
            double acc = -off[i];
            for (int l = 0; l < n_limbs; l++) acc += limb[l] * c[i][l];    /* < 5 * 2^49 */
            res[i * stride + j] = red(acc, r->p[i], r->pinv[i]);
        }
    }
}

BH_INLINE void finish_one(fin_ctx *c, int64_t job, double *y0, double *y1, double *uh, uint8_t *rb, double *e,
                          uint64_t *w64, double *fres) {
    const bh_rns *r = c->r;
    int k = r->k, n = r->n, rows = c->rows;
    size_t kn = (size_t)k * n, nblk = kn / 4;
    ntt_pair kk = ntt_pick(r);
    int64_t og = c->jobs_og[job], tl = c->jobs_tl[job], ct = c->ct_global[job];
    /* gather the two rows of this ciphertext from the slot blocks */
    const double *src = c->y + ((size_t)og * rows + 2 * tl) * 4;
    size_t bstride = (size_t)c->n_og * rows * 4;
    for (size_t b = 0; b < nblk; b++) {
        const double *s = src + b * bstride;
        memcpy(y0 + 4 * b, s, 4 * sizeof(double));
        memcpy(y1 + 4 * b, s + 4, 4 * sizeof(double));
    }
    /* u: uniform ternary (bytes < 255, value mod 3 - 1) */
    stream_t s;
    stream_ct(&s, c->key, ct, 0);
    int got = 0;
    while (got < n) {
        int want = n - got + 64;
        stream_read(&s, rb, (size_t)want);
        for (int j = 0; j < want && got < n; j++) {
            if (rb[j] < 255) uh[got++] = (double)(rb[j] % 3) - 1.0;
        }
    }
    for (int i = 1; i < k; i++) memcpy(uh + (size_t)i * n, uh, sizeof(double) * n);
    for (int i = 0; i < k; i++) fwd1(&kk, r, uh + (size_t)i * n, i);
    const double *pk0 = c->pk, *pk1 = c->pk + kn;
    for (int i = 0; i < k; i++) {
        double p = r->p[i], pinv = r->pinv[i];
        size_t o = (size_t)i * n;
        for (int j = 0; j < n; j++) {
            y0[o + j] = red(y0[o + j] + uh[o + j] * pk0[o + j], p, pinv);
            y1[o + j] = red(y1[o + j] + uh[o + j] * pk1[o + j], p, pinv);
        }
    }
    for (int i = 0; i < k; i++) {
        inv1(&kk, r, y0 + (size_t)i * n, i);
        inv1(&kk, r, y1 + (size_t)i * n, i);
    }
    /* c1 + e2, switched to 2^down_bits, whole polynomial */
    double two_b = ldexp(1.0, c->down_bits), inv_two_b = ldexp(1.0, -c->down_bits);
    uint64_t mask = (c->down_bits >= 64) ? ~0ULL : ((1ULL << c->down_bits) - 1);
    stream_ct(&s, c->key, ct, 1);
    stream_read(&s, rb, 8 * (size_t)n);
    cbd_body(rb, n, e);
    for (int i = 0; i < k; i++) {
        double *yi = y1 + (size_t)i * n;
        for (int j = 0; j < n; j++) yi[j] += e[j];
    }
    for (int j = 0; j < n; j++) w64[j] = pow2_one(r, y1 + j, (size_t)n, c->scale, two_b, inv_two_b, mask);
    int b1 = (c->down_bits + 7) / 8;
    pack_words(c->c1_out + (size_t)ct * n * b1, w64, n, b1);
    /* c0 at the returned coefficients: + e0 + flood + Delta * m_s, top down_c0_bits */
    int64_t lo = c->ret_lo[job], hi = c->ret_hi[job];
    if (hi <= lo) return;
    int b0 = (c->down_c0_bits + 7) / 8, drop = c->down_bits - c->down_c0_bits;
    uint64_t half = drop > 0 ? 1ULL << (drop - 1) : 0, mask0 = (1ULL << c->down_c0_bits) - 1;
    stream_t sf, se;
    stream_ct(&sf, c->key, ct, 2);
    stream_ct(&se, c->key, ct, 3);
    for (int64_t p0 = lo; p0 < hi; p0 += FIN_BATCH) {
        int cnt = (int)(hi - p0 < FIN_BATCH ? hi - p0 : FIN_BATCH);
        stream_read(&sf, rb, 4 * (size_t)cnt * c->n_limbs);
        flood_body(r, rb, cnt, c->flood_bits, c->n_limbs, c->fl_c, c->fl_off, fres, FIN_BATCH);
        stream_read(&se, rb, 8 * (size_t)cnt);
        cbd_body(rb, cnt, e);
        for (int j = 0; j < cnt; j++) {
            int64_t pos = p0 + j;
            int coef = c->ret_coef[pos];
            double ms = u52_to_d(c->m_s[pos]);
            double v[64];
            for (int i = 0; i < k; i++) {
                double p = r->p[i], pinv = r->pinv[i];
                double sm = red(red(ms, p, pinv) * c->delta[i], p, pinv);
                v[i] = y0[(size_t)i * n + coef] + e[j] + fres[(size_t)i * FIN_BATCH + j] + sm;   /* < 2^24 */
            }
            uint64_t hv = pow2_one(r, v, 1, c->scale, two_b, inv_two_b, mask);
            w64[j] = ((hv + half) >> drop) & mask0;
        }
        pack_words(c->c0_out + (size_t)(c->ret_base + p0) * b0, w64, cnt, b0);
    }
}

BH_AVX2 static void finish_one_avx2(fin_ctx *c, int64_t job, double *y0, double *y1, double *uh, uint8_t *rb,
                                    double *e, uint64_t *w64, double *fres) {
    finish_one(c, job, y0, y1, uh, rb, e, w64, fres);
}
static void finish_one_gen(fin_ctx *c, int64_t job, double *y0, double *y1, double *uh, uint8_t *rb, double *e,
                           uint64_t *w64, double *fres) {
    finish_one(c, job, y0, y1, uh, rb, e, w64, fres);
}

static void finish_task(void *vctx, int64_t lo, int64_t hi) {
    fin_ctx *c = (fin_ctx *)vctx;
    const bh_rns *r = c->r;
    size_t kn = (size_t)r->k * r->n;
    size_t rb_len = 8 * (size_t)r->n + 64;
    if (rb_len < (size_t)FIN_BATCH * 4 * c->n_limbs) rb_len = (size_t)FIN_BATCH * 4 * c->n_limbs;
    double *buf = (double *)malloc(sizeof(double) * (3 * kn + r->n + (size_t)FIN_BATCH * r->k));
    uint8_t *rb = (uint8_t *)malloc(rb_len);
    uint64_t *w64 = (uint64_t *)malloc(sizeof(uint64_t) * (r->n > FIN_BATCH ? r->n : FIN_BATCH));
    int simd = simd_on();
    for (int64_t j = lo; j < hi; j++) {
        double *y0 = buf, *y1 = buf + kn, *uh = buf + 2 * kn, *e = buf + 3 * kn, *fres = e + r->n;
        if (simd) finish_one_avx2(c, j, y0, y1, uh, rb, e, w64, fres);
        else finish_one_gen(c, j, y0, y1, uh, rb, e, w64, fres);
    }
    free(buf);
    free(rb);
    free(w64);
}

void bh_finish(const bh_rns *r, const double *y, int n_og, int rows, const int64_t *jobs_og, const int64_t *jobs_tl,
               const int64_t *ct_global, int64_t njobs, const int64_t *ret_lo, const int64_t *ret_hi,
               const int32_t *ret_coef, int64_t ret_base, const uint64_t *m_s, const double *pk, const double *delta,
               int flood_bits, int down_bits, int down_c0_bits, const uint8_t *key, uint8_t *c1_out, uint8_t *c0_out,
               int threads) {
    if (r->k > 64 || flood_bits < 1 || flood_bits > 188 || down_bits > 50 || down_c0_bits > down_bits) return;
    fin_ctx *c = (fin_ctx *)calloc(1, sizeof(fin_ctx));
    c->r = r;
    c->y = y;
    c->n_og = n_og;
    c->rows = rows;
    c->jobs_og = jobs_og;
    c->jobs_tl = jobs_tl;
    c->ct_global = ct_global;
    c->ret_lo = ret_lo;
    c->ret_hi = ret_hi;
    c->ret_coef = ret_coef;
    c->ret_base = ret_base;
    c->m_s = m_s;
    c->pk = pk;
    c->delta = delta;
    c->flood_bits = flood_bits;
    c->down_bits = down_bits;
    c->down_c0_bits = down_c0_bits;
    c->key = key;
    c->c1_out = c1_out;
    c->c0_out = c0_out;
    for (int i = 0; i < r->k; i++) c->scale[i] = ldexp(1.0, down_bits) / r->p[i];
    flood_consts(r, flood_bits, c->fl_c, c->fl_off, &c->n_limbs);
    par_for(threads, njobs, grain_for(njobs, threads, 2), finish_task, c);
    free(c);
}

void bh_flood_sample(const bh_rns *r, const uint8_t *key, int64_t ct, int bits, int64_t count, double *res,
                     uint32_t *limbs) {
    double c[64][8], off[64];
    int n_limbs;
    if (r->k > 64 || bits < 1 || bits > 188) return;
    flood_consts(r, bits, c, off, &n_limbs);
    stream_t s;
    stream_ct(&s, key, ct, 2);
    uint8_t *rb = (uint8_t *)malloc(4 * (size_t)count * n_limbs + 1);
    stream_read(&s, rb, 4 * (size_t)count * n_limbs);
    flood_body(r, rb, count, bits, n_limbs, c, off, res, (size_t)count);
    int total = bits + 1;
    for (int64_t j = 0; j < count; j++)
        for (int l = 0; l < n_limbs; l++) {
            int width = total - 27 * l < 27 ? total - 27 * l : 27;
            limbs[j * n_limbs + l] = ld32(rb + 4 * ((size_t)j * n_limbs + l)) >> (32 - width);
        }
    free(rb);
}

void bh_to_pow2(const bh_rns *r, const double *x, int64_t count, int bits, uint64_t *out) {
    double scale[64];
    if (r->k > 64 || bits > 50) return;
    for (int i = 0; i < r->k; i++) scale[i] = ldexp(1.0, bits) / r->p[i];
    double two_b = ldexp(1.0, bits), inv_two_b = ldexp(1.0, -bits);
    uint64_t mask = (1ULL << bits) - 1;
    for (int64_t j = 0; j < count; j++) out[j] = pow2_one(r, x + j, (size_t)count, scale, two_b, inv_two_b, mask);
}
