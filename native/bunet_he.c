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

typedef void (*task_fn)(void *ctx, int64_t lo, int64_t hi, void *scratch);

typedef struct {
    task_fn fn;
    void *ctx;
    int64_t n, grain, next;
    size_t scratch;
} pool_t;

/* Worker scratch is reused across calls: large blocks come from mmap and would otherwise be
 * faulted in and zeroed by the kernel on every call.  A few released blocks are kept. */
#define SCRATCH_KEEP 8
static pthread_mutex_t g_scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_scratch[SCRATCH_KEEP];
static size_t g_scratch_size[SCRATCH_KEEP];

static void *scratch_get(size_t size) {
    void *best = NULL;
    int bi = -1;
    pthread_mutex_lock(&g_scratch_lock);
    for (int i = 0; i < SCRATCH_KEEP; i++)
        if (g_scratch[i] && g_scratch_size[i] >= size && (bi < 0 || g_scratch_size[i] < g_scratch_size[bi])) bi = i;
    if (bi >= 0) {
        best = g_scratch[bi];
        g_scratch[bi] = NULL;
    }
    pthread_mutex_unlock(&g_scratch_lock);
    if (!best) {
        size = (size + 4095) / 4096 * 4096;
        best = aligned_alloc(64, size);
    }
    return best;
}

static void scratch_put(void *ptr, size_t size) {
    if (!ptr) return;
    size = (size + 4095) / 4096 * 4096;
    pthread_mutex_lock(&g_scratch_lock);
    int slot = -1;
    for (int i = 0; i < SCRATCH_KEEP && slot < 0; i++)
        if (!g_scratch[i]) slot = i;
    if (slot < 0) {                              /* full: replace the smallest if this one is larger */
        int sm = 0;
        for (int i = 1; i < SCRATCH_KEEP; i++)
            if (g_scratch_size[i] < g_scratch_size[sm]) sm = i;
        if (g_scratch_size[sm] < size) {
            free(g_scratch[sm]);
            slot = sm;
        }
    }
    if (slot >= 0) {
        g_scratch[slot] = ptr;
        g_scratch_size[slot] = size;
        ptr = NULL;
    }
    pthread_mutex_unlock(&g_scratch_lock);
    free(ptr);
}

static void *pool_worker(void *arg) {
    pool_t *p = (pool_t *)arg;
    void *scratch = p->scratch ? scratch_get(p->scratch) : NULL;
    for (;;) {
        int64_t lo = __atomic_fetch_add(&p->next, p->grain, __ATOMIC_RELAXED);
        if (lo >= p->n) break;
        int64_t hi = lo + p->grain < p->n ? lo + p->grain : p->n;
        p->fn(p->ctx, lo, hi, scratch);
    }
    scratch_put(scratch, p->scratch);
    return NULL;
}

static void par_for(int threads, int64_t n, int64_t grain, task_fn fn, void *ctx, size_t scratch) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    pool_t p = {fn, ctx, n, grain, 0, scratch};
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

#ifdef BH_X86
#define CC_ROT(v, c) _mm256_or_si256(_mm256_slli_epi32((v), (c)), _mm256_srli_epi32((v), 32 - (c)))
#define CC_QRV(a, b, c, d)                                                                          \
    x[a] = _mm256_add_epi32(x[a], x[b]); x[d] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d], x[a]), r16); \
    x[c] = _mm256_add_epi32(x[c], x[d]); x[b] = _mm256_xor_si256(x[b], x[c]); x[b] = CC_ROT(x[b], 12); \
    x[a] = _mm256_add_epi32(x[a], x[b]); x[d] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d], x[a]), r8);  \
    x[c] = _mm256_add_epi32(x[c], x[d]); x[b] = _mm256_xor_si256(x[b], x[c]); x[b] = CC_ROT(x[b], 7);

/* 8x8 transpose of 32-bit words: v[i] lane l -> block l word i; stores 32 bytes per block. */
BH_AVX2 BH_INLINE void cc_store8(const __m256i v[8], uint8_t *out) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int l = 0; l < 4; l++) {
        _mm256_storeu_si256((__m256i *)(out + 64 * l), _mm256_permute2x128_si256(u[l], u[l + 4], 0x20));
        _mm256_storeu_si256((__m256i *)(out + 64 * (l + 4)), _mm256_permute2x128_si256(u[l], u[l + 4], 0x31));
    }
}

BH_AVX2 static void chacha8_avx2(const uint32_t st[16], uint8_t *out) {
    const __m256i r16 = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
                                         2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    const __m256i r8 = _mm256_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14,
                                        3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);
    __m256i s[16], x[16];
    for (int i = 0; i < 16; i++) s[i] = _mm256_set1_epi32((int)st[i]);
    s[12] = _mm256_add_epi32(s[12], _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int i = 0; i < 16; i++) x[i] = s[i];
    for (int r = 0; r < 10; r++) {
        CC_QRV(0, 4, 8, 12) CC_QRV(1, 5, 9, 13) CC_QRV(2, 6, 10, 14) CC_QRV(3, 7, 11, 15)
        CC_QRV(0, 5, 10, 15) CC_QRV(1, 6, 11, 12) CC_QRV(2, 7, 8, 13) CC_QRV(3, 4, 9, 14)
    }
    for (int i = 0; i < 16; i++) x[i] = _mm256_add_epi32(x[i], s[i]);
    cc_store8(x, out);
    cc_store8(x + 8, out + 32);
}
#else
static void chacha8_avx2(const uint32_t st[16], uint8_t *out) { chacha8_body(st, out); }
#endif
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

static void ntt_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    (void)scratch;
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
    par_for(threads, count * r->k, grain_for(count * r->k, threads, 64), ntt_task, &c, 0);
}

void bh_ntt_inv(const bh_rns *r, double *a, int64_t count, int threads) {
    ntt_ctx c = {r, a, 1};
    par_for(threads, count * r->k, grain_for(count * r->k, threads, 64), ntt_task, &c, 0);
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
    int short_row = 0, k = r->k, n = r->n;     /* locals: stores below may alias *r */
    for (int i = 0; i < k; i++) {
        uint32_t p = (uint32_t)r->p[i];
        uint32_t lim = (uint32_t)((((uint64_t)1 << 32) / p) * p);
        uint32_t *w = words + (size_t)i * row;     /* compacted in place: cnt <= j */
        size_t cnt = 0;
        size_t j = 0;
        /* rejections are rare (< 2^-10 per word): blocks of 8 without one are copied as a whole */
        for (; j + 8 <= row && cnt + 8 <= (size_t)n; j += 8) {
            int ok = 1;
            for (int q = 0; q < 8; q++) ok &= w[j + q] < lim;
            if (ok) {
                for (int q = 0; q < 8; q++) w[cnt + q] = w[j + q];
                cnt += 8;
            } else {
                for (int q = 0; q < 8; q++) {
                    w[cnt] = w[j + q];
                    cnt += w[j + q] < lim;
                }
            }
        }
        for (; j < row && cnt < (size_t)n; j++) {
            w[cnt] = w[j];
            cnt += w[j] < lim;
        }
        if (cnt < (size_t)n) {
            short_row = 1;
            for (size_t q = cnt; q < (size_t)n; q++) w[q] = 0;
        }
        double pd = r->p[i], pinv = r->pinv[i];
        double *o = out + (size_t)i * n;
        for (int q = 0; q < n; q++) o[q] = red(u52_to_d(w[q]), pd, pinv);
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

static size_t words_bytes(const bh_rns *r) { return (4 * a_words(r) + 512 + 63) / 64 * 64; }

typedef struct {
    const bh_rns *r;
    const uint8_t *keys;
    double *out;
    int64_t fails;
} expand_ctx;

static void expand_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    expand_ctx *c = (expand_ctx *)vctx;
    const bh_rns *r = c->r;
    uint32_t *words = (uint32_t *)scratch;
    int64_t f = 0;
    for (int64_t it = lo; it < hi; it++)
        f += expand_a(r, c->keys + 32 * it, words, c->out + (size_t)it * r->k * r->n);
    if (f) __atomic_fetch_add(&c->fails, f, __ATOMIC_RELAXED);
}

int64_t bh_expand_a(const bh_rns *r, const uint8_t *keys, int64_t count, double *out, int threads) {
    expand_ctx c = {r, keys, out, 0};
    par_for(threads, count, grain_for(count, threads, 16), expand_task, &c, words_bytes(r));
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

/* Coefficients of ciphertext g = (b*groups + grp)*tiles + tile: the zero-padded input tiles of
 * the group's channels, pixel (u, v) of channel slot j at coefficient j*Ht*Wt + u*Wt + v, reduced
 * mod 2^l (see layout.Plan). */
BH_INLINE void encode_tile(const uint64_t *x, const bh_tiling *t, int64_t g, int n, uint64_t *m) {
    int64_t groups = (t->c + t->ipack - 1) / t->ipack;
    int64_t tile = g % t->tiles, grp = (g / t->tiles) % groups, b = g / (t->tiles * groups);
    int64_t r0 = (tile / t->n_tj) * t->th - t->pad, c0 = (tile % t->n_tj) * t->tw - t->pad;
    int64_t v0 = c0 < 0 ? -c0 : 0, v1 = t->w - c0 < t->wt ? t->w - c0 : t->wt;
    uint64_t mask = t->mask;
    memset(m, 0, sizeof(uint64_t) * n);
    for (int64_t j = 0; j < t->ipack && grp * t->ipack + j < t->c; j++) {
        const uint64_t *plane = x + ((size_t)b * t->c + grp * t->ipack + j) * t->h * t->w;
        uint64_t *slot = m + (size_t)j * t->ht * t->wt;
        for (int64_t u = 0; u < t->ht; u++) {
            int64_t row = r0 + u;
            if (row < 0 || row >= t->h) continue;
            const uint64_t *src = plane + (size_t)row * t->w;
            uint64_t *dst = slot + (size_t)u * t->wt;
            for (int64_t v = v0; v < v1; v++) dst[v] = src[c0 + v] & mask;
        }
    }
}

/* out[i][j] = Delta_i * m[j] mod p_i (centred), m < 2^52 */
BH_INLINE void scaled_body(const bh_rns *r, const uint64_t *m, const double *delta, double *out) {
    int k = r->k, n = r->n;
    for (int i = 0; i < k; i++) {
        double p = r->p[i], pinv = r->pinv[i], d = delta[i];
        double *o = out + (size_t)i * n;
        for (int j = 0; j < n; j++) o[j] = red(red(u52_to_d(m[j]), p, pinv) * d, p, pinv);
    }
}

/* round(2^bits * c / q) mod 2^bits for count coefficients given their residues x[i * stride + j]
 * (|x| < 2^30); acc is count doubles of scratch.  Primes outer, coefficients inner (vectorises).
 * The float sum is within K * 2^(bits - 52) of the exact value; subtracting the nearest multiple
 * of 2^bits is exact and leaves |acc| <= 2^(bits-1) for the integer conversion. */
BH_INLINE void pow2_many(const bh_rns *r, const double *x, size_t stride, int64_t count, const double *scale,
                         double two_b, double inv_two_b, uint64_t mask, double *acc, uint64_t *out) {
    for (int64_t j = 0; j < count; j++) acc[j] = 0.0;
    for (int i = 0; i < r->k; i++) {
        double p = r->p[i], pinv = r->pinv[i], cr = r->crt[i], sc = scale[i];
        const double *xi = x + (size_t)i * stride;
        for (int64_t j = 0; j < count; j++) acc[j] += red(xi[j] * cr, p, pinv) * sc;
    }
    for (int64_t j = 0; j < count; j++) {
        double a = acc[j];
        a -= rnd(a * inv_two_b) * two_b;
        out[j] = (uint64_t)d_to_i(a) & mask;
    }
}

#define PREFETCH_AHEAD 16

/* Upload residues, bit-packed: residue i of a ciphertext as an unsigned value in [0, p_i) in
 * up_bits(p_i) = bitlen(p_i - 1) bits, LSB first; each prime's N values form one row of
 * N * up_bits / 8 bytes (N is a multiple of 8), rows in prime order, ciphertexts one after another
 * (bunet.he.wire.up_ct_bytes). 108 bits per coefficient at l = 24 instead of 5 x 24. */
BH_INLINE int up_bits(double p) {
    uint64_t m = (uint64_t)p - 1;
    int b = 0;
    while (m) {
        b++;
        m >>= 1;
    }
    return b;
}

BH_INLINE size_t up_ct_bytes(const bh_rns *r) {
    size_t t = 0;
    for (int i = 0; i < r->k; i++) t += (size_t)r->n * up_bits(r->p[i]) / 8;
    return t;
}

/* one row: centred residues v (|v| <= p/2 + 1, as red() leaves them) -> n values of w bits at o,
 * w <= 32 (the primes are below 2^22), n * w a multiple of 8. 32 bits are stored at a time. */
BH_INLINE void up_pack_row(const double *v, int n, double p, int w, uint8_t *o) {
    const int64_t pi = (int64_t)p;
    uint64_t acc = 0;
    int nacc = 0;
    for (int j = 0; j < n; j++) {
        int64_t x = d_to_i(v[j]);
        x += pi & -(int64_t)(x < 0); /* into [0, p) */
        acc |= (uint64_t)x << nacc;
        nacc += w;
        if (nacc >= 32) {
            st32(o, (uint32_t)acc);
            o += 4;
            acc >>= 32;
            nacc -= 32;
        }
    }
    for (; nacc > 0; nacc -= 8) {
        *o++ = (uint8_t)acc;
        acc >>= 8;
    }
}

/* one row: n values of w bits at src -> add to vi (reduced); returns 1 if a value is >= p.
 * Reads 32 bits at a time: a row is n * w / 8 bytes, a multiple of 4 (N is a power of two >= 32). */
BH_INLINE int up_unpack_add_row(const uint8_t *src, int n, double p, double pinv, int w, double *vi) {
    const uint64_t pi = (uint64_t)p, mask = (1ULL << w) - 1;
    uint64_t acc = 0, bad = 0;
    int nacc = 0;
    for (int j = 0; j < n; j++) {
        if (nacc < w) {
            acc |= (uint64_t)ld32(src) << nacc;
            src += 4;
            nacc += 32;
        }
        uint64_t x = acc & mask;
        acc >>= w;
        nacc -= w;
        bad |= x >= pi;
        vi[j] = red(vi[j] + (double)x, p, pinv);
    }
    return bad != 0;
}

/* ------------------------------------------------------------------------------------------ */
/* client encryption                                                                          */

typedef struct {
    const bh_rns *r;
    const uint64_t *x;
    const bh_tiling *t;
    const double *delta, *s_hat;
    const uint8_t *a_keys, *noise_key;
    uint8_t *out;
    int64_t fails;
} enc_ctx;

BH_INLINE int encrypt_one(enc_ctx *c, int64_t ct, double *v, double *a, uint32_t *words, uint8_t *nb,
                          double *e, const int simd) {
    const bh_rns *r = c->r;
    int k = r->k, n = r->n;
    ntt_pair kk = ntt_pick(r);
    stream_t s;
    stream_ct(&s, c->noise_key, ct, 0);
    stream_read(&s, nb, 8 * (size_t)n);
    cbd_body(nb, n, e);
    encode_tile(c->x, c->t, ct, n, (uint64_t *)a);           /* a is filled later */
    scaled_body(r, (const uint64_t *)a, c->delta, v);
    for (int i = 0; i < k; i++) {
        double *vi = v + (size_t)i * n;
        for (int j = 0; j < n; j++) vi[j] += e[j];
        fwd1(&kk, r, vi, i);
    }
    int fail = expand_a(r, c->a_keys + 32 * ct, words, a);
    uint8_t *o = c->out + (size_t)ct * up_ct_bytes(r);
    (void)simd;
    for (int i = 0; i < k; i++) {
        double p = r->p[i], pinv = r->pinv[i];
        const double *sh = c->s_hat + (size_t)i * n;
        double *vi = v + (size_t)i * n, *ai = a + (size_t)i * n;
        for (int j = 0; j < n; j++) vi[j] = red(vi[j] - ai[j] * sh[j], p, pinv);
        int w = up_bits(p);
        up_pack_row(vi, n, p, w, o);
        o += (size_t)n * w / 8;
    }
    return fail;
}

BH_AVX2 static int encrypt_one_avx2(enc_ctx *c, int64_t ct, double *v, double *a, uint32_t *w, uint8_t *nb,
                                    double *e) {
    return encrypt_one(c, ct, v, a, w, nb, e, 1);
}
static int encrypt_one_gen(enc_ctx *c, int64_t ct, double *v, double *a, uint32_t *w, uint8_t *nb, double *e) {
    return encrypt_one(c, ct, v, a, w, nb, e, 0);
}

static size_t encrypt_scratch(const bh_rns *r) {
    return sizeof(double) * (2 * (size_t)r->k * r->n + r->n) + 8 * (size_t)r->n + words_bytes(r);
}

static void encrypt_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    enc_ctx *c = (enc_ctx *)vctx;
    const bh_rns *r = c->r;
    size_t kn = (size_t)r->k * r->n;
    double *v = (double *)scratch;
    uint8_t *nb = (uint8_t *)(v + 2 * kn + r->n);
    uint32_t *words = (uint32_t *)(nb + 8 * (size_t)r->n);
    int64_t f = 0;
    int simd = simd_on();
    for (int64_t ct = lo; ct < hi; ct++)
        f += simd ? encrypt_one_avx2(c, ct, v, v + kn, words, nb, v + 2 * kn)
                  : encrypt_one_gen(c, ct, v, v + kn, words, nb, v + 2 * kn);
    if (f) __atomic_fetch_add(&c->fails, f, __ATOMIC_RELAXED);
}

int64_t bh_encrypt(const bh_rns *r, const uint64_t *x, const bh_tiling *t, int64_t count, const double *delta,
                   const double *s_hat,
                   const uint8_t *a_keys, const uint8_t *noise_key, uint8_t *out, int threads) {
    enc_ctx c = {r, x, t, delta, s_hat, a_keys, noise_key, out, 0};
    par_for(threads, count, grain_for(count, threads, 8), encrypt_task, &c, encrypt_scratch(r));
    return c.fails;
}

/* ------------------------------------------------------------------------------------------ */
/* server: input preparation                                                                  */

typedef struct {
    const bh_rns *r;
    const uint8_t *c0;
    const int64_t *ct_index;
    const uint64_t *xs;
    const bh_tiling *t;
    const double *delta;
    const uint8_t *a_keys;
    int c_in, tc;
    double *x;
    int64_t bad;
} prep_ctx;

BH_INLINE int prep_one(prep_ctx *c, int64_t item, double *v, double *a, uint32_t *words, const int simd) {
    const bh_rns *r = c->r;
    int k = r->k, n = r->n;
    ntt_pair kk = ntt_pick(r);
    encode_tile(c->xs, c->t, c->ct_index[item], n, (uint64_t *)a);     /* a is filled later */
    scaled_body(r, (const uint64_t *)a, c->delta, v);
    for (int i = 0; i < k; i++) fwd1(&kk, r, v + (size_t)i * n, i);
    const uint8_t *src = c->c0 + (size_t)c->ct_index[item] * up_ct_bytes(r);
    int bad = 0;
    (void)simd;
    for (int i = 0; i < k; i++) {
        int w = up_bits(r->p[i]);
        bad |= up_unpack_add_row(src, n, r->p[i], r->pinv[i], w, v + (size_t)i * n);
        src += (size_t)n * w / 8;
    }
    if (expand_a(r, c->a_keys + 32 * item, words, a)) bad = 1;   /* cannot happen in practice */
    return bad;
}

#define GROUP 4   /* consecutive tiles moved together: adjacent rows of a slot block */

/* Scatter items first .. first+cnt-1 (same channel, consecutive tiles; item s at v[s*2kn],
 * a at v[s*2kn + kn]) into the slot blocks: one contiguous run of 2*cnt*4 doubles per block. */
static void prep_scatter(prep_ctx *c, int64_t first, int cnt, const double *v) {
    const bh_rns *r = c->r;
    size_t kn = (size_t)r->k * r->n, nblk = kn / 4, rows = 2 * (size_t)c->tc;
    int ch = (int)(first / c->tc), tl = (int)(first % c->tc);
    double *dst = c->x + ((size_t)ch * rows + 2 * tl) * 4;
    size_t bstride = (size_t)c->c_in * rows * 4;
    for (size_t b = 0; b < nblk; b++) {
        double *d = dst + b * bstride;
        __builtin_prefetch(d + PREFETCH_AHEAD * bstride, 1);
        for (int q = 0; q < cnt; q++) {
            memcpy(d + 8 * q, v + 2 * kn * q + 4 * b, 4 * sizeof(double));
            memcpy(d + 8 * q + 4, v + 2 * kn * q + kn + 4 * b, 4 * sizeof(double));
        }
    }
}

BH_AVX2 static int prep_one_avx2(prep_ctx *c, int64_t item, double *v, double *a, uint32_t *w) {
    return prep_one(c, item, v, a, w, 1);
}
static int prep_one_gen(prep_ctx *c, int64_t item, double *v, double *a, uint32_t *w) {
    return prep_one(c, item, v, a, w, 0);
}

static void prep_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    prep_ctx *c = (prep_ctx *)vctx;
    size_t kn = (size_t)c->r->k * c->r->n;
    double *v = (double *)scratch;
    uint32_t *words = (uint32_t *)(v + 2 * kn * GROUP);
    int64_t bad = 0;
    int simd = simd_on();
    for (int64_t first = lo; first < hi;) {
        int cnt = 0;
        while (first + cnt < hi && cnt < GROUP && (first + cnt) / c->tc == first / c->tc) {
            double *vs = v + 2 * kn * cnt;
            bad += simd ? prep_one_avx2(c, first + cnt, vs, vs + kn, words)
                        : prep_one_gen(c, first + cnt, vs, vs + kn, words);
            cnt++;
        }
        prep_scatter(c, first, cnt, v);
        first += cnt;
    }
    if (bad) __atomic_fetch_add(&c->bad, bad, __ATOMIC_RELAXED);
}

int64_t bh_server_prep(const bh_rns *r, const uint8_t *c0, const int64_t *ct_index, const uint64_t *xs,
                       const bh_tiling *t,
                       const double *delta, const uint8_t *a_keys, int c_in, int tc, double *x, int threads) {
    prep_ctx c = {r, c0, ct_index, xs, t, delta, a_keys, c_in, tc, x, 0};
    int64_t items = (int64_t)c_in * tc;
    par_for(threads, items, grain_for(items, threads, GROUP), prep_task, &c, sizeof(double) * 2 * GROUP * (size_t)r->k * r->n + words_bytes(r));
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

static void prod_filters_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    (void)scratch;
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
    par_for(threads, nblk, grain_for(nblk, threads, 32), prod_filters_task, &c, 0);
}

static void prod_taps_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    prod_ctx *c = (prod_ctx *)vctx;
    const bh_rns *r = c->r;
    int simd = simd_on();
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
    par_for(threads, nblk, grain_for(nblk, threads, 32), prod_taps_task, &c, sizeof(double) * 3 * (size_t)rows * 4);
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
    const uint64_t *r_out, *bias;
    const int32_t *ret_flat;
    const int32_t *ret_ch;
    uint64_t ring_mask;
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

/* Flood residues for cnt <= FIN_BATCH coefficients from 32-bit words (cnt, n_limbs):
 * res[i * stride + j] = sum_l limb_l * 2^(27 l) - 2^bits mod p_i (terms < 2^49, sums < 2^52). */
BH_INLINE void flood_body(const bh_rns *r, const uint8_t *words, int64_t cnt, int bits, int n_limbs,
                          double c[][8], const double *off, double *res, size_t stride) {
    double limb[8][FIN_BATCH];
    int total = bits + 1;
    for (int l = 0; l < n_limbs; l++) {
        int width = total - 27 * l < 27 ? total - 27 * l : 27;
        for (int64_t j = 0; j < cnt; j++)
            limb[l][j] = (double)(int32_t)(ld32(words + 4 * ((size_t)j * n_limbs + l)) >> (32 - width));
    }
    for (int i = 0; i < r->k; i++) {
        double *ri = res + i * stride;
        for (int64_t j = 0; j < cnt; j++) ri[j] = -off[i];
        for (int l = 0; l < n_limbs; l++) {
            double cl = c[i][l];
            for (int64_t j = 0; j < cnt; j++) ri[j] += limb[l][j] * cl;
        }
        double p = r->p[i], pinv = r->pinv[i];
        for (int64_t j = 0; j < cnt; j++) ri[j] = red(ri[j], p, pinv);
    }
}

BH_INLINE void finish_one(fin_ctx *c, int64_t job, double *y0, double *y1, double *uh, uint8_t *rb, double *e,
                          uint64_t *w64, double *fres) {
    const bh_rns *r = c->r;
    int k = r->k, n = r->n, rows = c->rows;
    size_t kn = (size_t)k * n, nblk = kn / 4;
    ntt_pair kk = ntt_pick(r);
    int64_t ct = c->ct_global[job];
    (void)rows;
    (void)nblk;
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
    pow2_many(r, y1, (size_t)n, n, c->scale, two_b, inv_two_b, mask, uh, w64);      /* uh: free now */
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
        double msd[FIN_BATCH];
        for (int j = 0; j < cnt; j++) {          /* m_s = b - r at this output, in Z_{2^l} */
            int64_t pos = p0 + j;
            msd[j] = u52_to_d((c->bias[c->ret_ch[pos]] - c->r_out[c->ret_flat[pos]]) & c->ring_mask);
        }
        for (int i = 0; i < k; i++) {
            double p = r->p[i], pinv = r->pinv[i], d = c->delta[i];
            const double *yi = y0 + (size_t)i * n;
            double *fi = fres + (size_t)i * FIN_BATCH;
            for (int j = 0; j < cnt; j++) fi[j] += e[j] + red(red(msd[j], p, pinv) * d, p, pinv);
            for (int j = 0; j < cnt; j++) fi[j] += yi[c->ret_coef[p0 + j]];                  /* < 2^24 */
        }
        pow2_many(r, fres, FIN_BATCH, cnt, c->scale, two_b, inv_two_b, mask, uh, w64);
        for (int j = 0; j < cnt; j++) w64[j] = ((w64[j] + half) >> drop) & mask0;
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

static size_t finish_rb_len(const bh_rns *r, int n_limbs) {
    size_t rb_len = 8 * (size_t)r->n + 64;
    if (rb_len < (size_t)FIN_BATCH * 4 * n_limbs) rb_len = (size_t)FIN_BATCH * 4 * n_limbs;
    return (rb_len + 63) / 64 * 64;
}

static size_t finish_scratch(const bh_rns *r, int n_limbs) {
    size_t kn = (size_t)r->k * r->n;
    return sizeof(double) * ((2 * GROUP + 1) * kn + r->n + (size_t)FIN_BATCH * r->k) + finish_rb_len(r, n_limbs)
           + sizeof(uint64_t) * (r->n > FIN_BATCH ? r->n : FIN_BATCH);
}

/* Gather jobs first .. first+cnt-1 (same og, consecutive tiles) from the slot blocks:
 * job q's rows go to y[q*2kn] (c0) and y[q*2kn + kn] (c1). */
static void finish_gather(fin_ctx *c, int64_t first, int cnt, double *y) {
    const bh_rns *r = c->r;
    size_t kn = (size_t)r->k * r->n, nblk = kn / 4, rows = (size_t)c->rows;
    const double *src = c->y + ((size_t)c->jobs_og[first] * rows + 2 * (size_t)c->jobs_tl[first]) * 4;
    size_t bstride = (size_t)c->n_og * rows * 4;
    for (size_t b = 0; b < nblk; b++) {
        const double *s = src + b * bstride;
        __builtin_prefetch(s + PREFETCH_AHEAD * bstride);          /* page-crossing stride: no HW prefetch */
        for (int q = 0; q < cnt; q++) {
            memcpy(y + 2 * kn * q + 4 * b, s + 8 * q, 4 * sizeof(double));
            memcpy(y + 2 * kn * q + kn + 4 * b, s + 8 * q + 4, 4 * sizeof(double));
        }
    }
}

static void finish_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    fin_ctx *c = (fin_ctx *)vctx;
    const bh_rns *r = c->r;
    size_t kn = (size_t)r->k * r->n;
    double *ys = (double *)scratch, *buf = ys + 2 * kn * GROUP;
    uint8_t *rb = (uint8_t *)(buf + kn + r->n + (size_t)FIN_BATCH * r->k);
    uint64_t *w64 = (uint64_t *)(rb + finish_rb_len(r, c->n_limbs));
    int simd = simd_on();
    for (int64_t first = lo; first < hi;) {
        int cnt = 1;
        while (first + cnt < hi && cnt < GROUP && c->jobs_og[first + cnt] == c->jobs_og[first]
               && c->jobs_tl[first + cnt] == c->jobs_tl[first] + cnt)
            cnt++;
        finish_gather(c, first, cnt, ys);
        for (int q = 0; q < cnt; q++) {
            double *y0 = ys + 2 * kn * q, *y1 = y0 + kn, *uh = buf, *e = buf + kn, *fres = e + r->n;
            if (simd) finish_one_avx2(c, first + q, y0, y1, uh, rb, e, w64, fres);
            else finish_one_gen(c, first + q, y0, y1, uh, rb, e, w64, fres);
        }
        first += cnt;
    }
}

int bh_finish(const bh_rns *r, const double *y, int n_og, int rows, const int64_t *jobs_og, const int64_t *jobs_tl,
               const int64_t *ct_global, int64_t njobs, const int64_t *ret_lo, const int64_t *ret_hi,
               const int32_t *ret_coef, int64_t ret_base, const int32_t *ret_flat, const int32_t *ret_ch,
               const uint64_t *r_out, const uint64_t *bias, int ring_bits, const double *pk, const double *delta,
               int flood_bits, int down_bits, int down_c0_bits, const uint8_t *key, uint8_t *c1_out, uint8_t *c0_out,
               int threads) {
    if (r->k > 64 || flood_bits < 1 || flood_bits > 188 || down_bits > 50 || down_c0_bits > down_bits || ring_bits < 1
        || ring_bits > 50)
        return -1;
    fin_ctx *c = (fin_ctx *)calloc(1, sizeof(fin_ctx));
    if (!c) return -1;
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
    c->r_out = r_out;
    c->bias = bias;
    c->ret_flat = ret_flat;
    c->ret_ch = ret_ch;
    c->ring_mask = (1ULL << ring_bits) - 1;
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
    par_for(threads, njobs, grain_for(njobs, threads, GROUP), finish_task, c, finish_scratch(r, c->n_limbs));
    free(c);
    return 0;
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
    double *tmp = (double *)malloc(sizeof(double) * (size_t)r->k * FIN_BATCH);
    for (int64_t j0 = 0; j0 < count; j0 += FIN_BATCH) {
        int64_t cnt = count - j0 < FIN_BATCH ? count - j0 : FIN_BATCH;
        flood_body(r, rb + 4 * (size_t)j0 * n_limbs, cnt, bits, n_limbs, c, off, tmp, FIN_BATCH);
        for (int i = 0; i < r->k; i++) memcpy(res + (size_t)i * count + j0, tmp + (size_t)i * FIN_BATCH, 8 * cnt);
    }
    free(tmp);
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
    double *acc = (double *)malloc(sizeof(double) * (count > 0 ? count : 1));
    pow2_many(r, x, (size_t)count, count, scale, two_b, inv_two_b, mask, acc, out);
    free(acc);
}

/* ------------------------------------------------------------------------------------------ */
/* uniform ring elements (the server's output masks)                                          */

typedef struct {
    const uint8_t *key;
    int bits;
    int64_t count;
    uint64_t *out;
} rand_ctx;

#define RAND_BLOCK 8192

static void rand_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    rand_ctx *c = (rand_ctx *)vctx;
    uint64_t mask = c->bits >= 64 ? ~0ULL : (1ULL << c->bits) - 1;
    uint8_t *buf = (uint8_t *)scratch;
    for (int64_t blk = lo; blk < hi; blk++) {
        int64_t j0 = blk * RAND_BLOCK, cnt = c->count - j0 < RAND_BLOCK ? c->count - j0 : RAND_BLOCK;
        stream_t s;
        stream_ct(&s, c->key, blk, 4);
        stream_read(&s, buf, 8 * (size_t)cnt);
        for (int64_t j = 0; j < cnt; j++) c->out[j0 + j] = ld64(buf + 8 * j) & mask;
    }
}

void bh_random_bits(const uint8_t *key, int64_t count, int bits, uint64_t *out, int threads) {
    rand_ctx c = {key, bits, count, out};
    int64_t blocks = (count + RAND_BLOCK - 1) / RAND_BLOCK;
    par_for(threads, blocks, grain_for(blocks, threads, 8), rand_task, &c, 8 * RAND_BLOCK);
}

/* ------------------------------------------------------------------------------------------ */
/* client: decryption phase c0 + c1 * s mod 2^m                                               */
/*
 * c1 * s is an integer polynomial product with |coefficients| <= N * 2^(m-1); it is computed
 * modulo three primes of the basis (NTT, pointwise s_hat, inverse NTT) and recombined exactly
 * with Garner's method, the last digit centred, in wrapping 64-bit arithmetic (the caller checks
 * N * 2^m < p1 p2 p3 / 4, so the centred representative is the true value).
 */

typedef struct {
    const bh_rns *r;
    int pi[3];
    const double *s_hat;
    const uint8_t *c1, *c0;
    int64_t per_ct, n_ret;
    const int64_t *ret_lo, *ret_hi;
    const int32_t *ret_coef;
    int down_bits, down_c0_bits, ring_bits;
    uint64_t *phase, *out;
    const int32_t *ret_flat;
    int64_t out_stride;
    double inv12, inv3;        /* p1^-1 mod p2, (p1 p2)^-1 mod p3 */
    uint64_t p1, p12;
    int64_t bad;
} dec_ctx;

static int64_t inv_mod(int64_t a, int64_t m) {
    int64_t t = 0, nt = 1, r = m, nr = ((a % m) + m) % m;
    while (nr) {
        int64_t q = r / nr, tmp;
        tmp = t - q * nt; t = nt; nt = tmp;
        tmp = r - q * nr; r = nr; nr = tmp;
    }
    return t < 0 ? t + m : t;
}

BH_INLINE int decrypt_one(dec_ctx *c, int64_t g, double *x, uint64_t *v) {
    const bh_rns *r = c->r;
    int n = r->n, nb1 = (c->down_bits + 7) / 8, nb0 = (c->down_c0_bits + 7) / 8;
    ntt_pair kk = ntt_pick(r);
    uint64_t m_mask = (1ULL << c->down_bits) - 1, half = 1ULL << (c->down_bits - 1);
    const uint8_t *src = c->c1 + (size_t)g * n * nb1;
    double *cd = (double *)v;                    /* v is written last: centred c1 as doubles first */
    int bad = 0;
    for (int j = 0; j < n; j++) {
        int fast = (size_t)j * nb1 + 8 <= (size_t)n * nb1;      /* never read past this ciphertext */
        uint64_t w = fast ? ld64(src + (size_t)j * nb1) : 0;
        if (!fast) {
            w = 0;
            for (int b = 0; b < nb1; b++) w |= (uint64_t)src[(size_t)j * nb1 + b] << (8 * b);
        }
        if (nb1 < 8) w &= (1ULL << (8 * nb1)) - 1;
        bad |= w > m_mask;
        cd[j] = (double)(int64_t)(w & m_mask) - (w & half ? (double)(m_mask + 1) : 0.0);   /* |c| <= 2^49 */
    }
    for (int t = 0; t < 3; t++) {
        int i = c->pi[t];
        double p = r->p[i], pinv = r->pinv[i];
        double *xt = x + (size_t)t * n;
        const double *sh = c->s_hat + (size_t)i * n;
        for (int j = 0; j < n; j++) xt[j] = red(cd[j], p, pinv);
        fwd1(&kk, r, xt, i);
        for (int j = 0; j < n; j++) xt[j] = red(xt[j] * sh[j], p, pinv);
        inv1(&kk, r, xt, i);
    }
    double p2 = r->p[c->pi[1]], p3 = r->p[c->pi[2]], p1 = r->p[c->pi[0]];
    double p2i = r->pinv[c->pi[1]], p3i = r->pinv[c->pi[2]];
    double inv12 = c->inv12, inv3 = c->inv3;
    uint64_t p12 = c->p12;
    const double *x1 = x, *x2 = x + n, *x3 = x + 2 * (size_t)n;
    for (int j = 0; j < n; j++) {
        double t2 = red((x2[j] - x1[j]) * inv12, p2, p2i);           /* centred */
        double u = x1[j] + p1 * t2;                                  /* |u| < 2^44, = v mod p1 p2 */
        double t3 = red(red(x3[j] - red(u, p3, p3i), p3, p3i) * inv3, p3, p3i);
        v[j] = (uint64_t)d_to_i(u) + p12 * (uint64_t)d_to_i(t3);    /* wraps mod 2^64: exact low bits */
    }
    int64_t b = g / c->per_ct, lc = g % c->per_ct;
    int drop = c->down_bits - c->down_c0_bits;
    for (int64_t pos = c->ret_lo[lc]; pos < c->ret_hi[lc]; pos++) {
        const uint8_t *s0 = c->c0 + (size_t)(b * c->n_ret + pos) * nb0;
        uint64_t w = 0;
        for (int q = 0; q < nb0; q++) w |= (uint64_t)s0[q] << (8 * q);
        bad |= w >> c->down_c0_bits != 0;
        uint64_t ph = ((w << drop) + v[c->ret_coef[pos]]) & m_mask;
        if (c->out) {                            /* round to the top l bits: the new share */
            int shift = c->down_bits - c->ring_bits;
            uint64_t y = ((ph + (1ULL << (shift - 1))) >> shift) & ((1ULL << c->ring_bits) - 1);
            c->out[b * c->out_stride + c->ret_flat[pos]] = y;
        } else {
            c->phase[b * c->n_ret + pos] = ph;
        }
    }
    return bad;
}

BH_AVX2 static int decrypt_one_avx2(dec_ctx *c, int64_t g, double *x, uint64_t *v) { return decrypt_one(c, g, x, v); }
static int decrypt_one_gen(dec_ctx *c, int64_t g, double *x, uint64_t *v) { return decrypt_one(c, g, x, v); }

static void decrypt_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    dec_ctx *c = (dec_ctx *)vctx;
    int n = c->r->n;
    double *x = (double *)scratch;
    uint64_t *v = (uint64_t *)(x + 3 * (size_t)n);
    int64_t bad = 0;
    int simd = simd_on();
    for (int64_t g = lo; g < hi; g++) bad += simd ? decrypt_one_avx2(c, g, x, v) : decrypt_one_gen(c, g, x, v);
    if (bad) __atomic_fetch_add(&c->bad, bad, __ATOMIC_RELAXED);
}

int64_t bh_decrypt_phase(const bh_rns *r, const int *prime_idx, const double *s_hat, const uint8_t *c1,
                         const uint8_t *c0, int64_t batch, int64_t per_ct, int64_t n_ret, const int64_t *ret_lo,
                         const int64_t *ret_hi, const int32_t *ret_coef, int down_bits, int down_c0_bits,
                         uint64_t *phase, const int32_t *ret_flat, int ring_bits, uint64_t *out, int64_t out_stride,
                         int threads) {
    if (down_bits > 50 || down_bits < 2 || down_c0_bits > down_bits || down_c0_bits < 1) return -1;
    if (out && (ring_bits < 1 || ring_bits >= down_bits)) return -1;
    dec_ctx c;
    memset(&c, 0, sizeof c);
    c.r = r;
    for (int t = 0; t < 3; t++) c.pi[t] = prime_idx[t];
    c.s_hat = s_hat;
    c.c1 = c1;
    c.c0 = c0;
    c.per_ct = per_ct;
    c.n_ret = n_ret;
    c.ret_lo = ret_lo;
    c.ret_hi = ret_hi;
    c.ret_coef = ret_coef;
    c.down_bits = down_bits;
    c.down_c0_bits = down_c0_bits;
    c.phase = phase;
    c.out = out;
    c.ret_flat = ret_flat;
    c.out_stride = out_stride;
    c.ring_bits = ring_bits;
    int64_t p1 = (int64_t)r->p[c.pi[0]], p2 = (int64_t)r->p[c.pi[1]], p3 = (int64_t)r->p[c.pi[2]];
    int64_t i12 = inv_mod(p1, p2), i3 = inv_mod((p1 % p3) * (p2 % p3) % p3, p3);
    c.inv12 = (double)(i12 > p2 / 2 ? i12 - p2 : i12);
    c.inv3 = (double)(i3 > p3 / 2 ? i3 - p3 : i3);
    c.p1 = (uint64_t)p1;
    c.p12 = (uint64_t)p1 * (uint64_t)p2;
    int64_t count = batch * per_ct;
    par_for(threads, count, grain_for(count, threads, 4), decrypt_task, &c,
            sizeof(double) * 3 * (size_t)r->n + sizeof(uint64_t) * (size_t)r->n);
    return c.bad;
}
