#include "sampling.h"
#include "chacha20.h"
#include "threads.h"

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
    bh_stream_init(&s, key, nonce, 0);
    bh_stream_read(&s, (uint8_t *)words, 4 * nw);
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

int bh_expand_a1(const bh_rns *r, const uint8_t *key, uint32_t *words, double *out) {
    return bh_simd_on() ? expand_a_avx2(r, key, words, out) : expand_a_gen(r, key, words, out);
}

size_t bh_words_bytes(const bh_rns *r) { return (4 * a_words(r) + 512 + 63) / 64 * 64; }

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
        f += bh_expand_a1(r, c->keys + 32 * it, words, c->out + (size_t)it * r->k * r->n);
    if (f) __atomic_fetch_add(&c->fails, f, __ATOMIC_RELAXED);
}

int64_t bh_expand_a(const bh_rns *r, const uint8_t *keys, int64_t count, double *out, int threads) {
    expand_ctx c = {r, keys, out, 0};
    bh_par_for(threads, count, bh_grain_for(count, threads, 16), expand_task, &c, bh_words_bytes(r));
    return c.fails;
}

void bh_flood_consts(const bh_rns *r, int bits, double c[][8], double *off, int *n_limbs) {
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

void bh_flood_sample(const bh_rns *r, const uint8_t *key, int64_t ct, int bits, int64_t count, double *res,
                     uint32_t *limbs) {
    double c[64][8], off[64];
    int n_limbs;
    if (r->k > 64 || bits < 1 || bits > 188) return;
    bh_flood_consts(r, bits, c, off, &n_limbs);
    stream_t s;
    bh_stream_ct(&s, key, ct, 2);
    uint8_t *rb = (uint8_t *)malloc(4 * (size_t)count * n_limbs + 1);
    bh_stream_read(&s, rb, 4 * (size_t)count * n_limbs);
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
        bh_stream_ct(&s, c->key, blk, 4);
        bh_stream_read(&s, buf, 8 * (size_t)cnt);
        for (int64_t j = 0; j < cnt; j++) c->out[j0 + j] = ld64(buf + 8 * j) & mask;
    }
}

void bh_random_bits(const uint8_t *key, int64_t count, int bits, uint64_t *out, int threads) {
    rand_ctx c = {key, bits, count, out};
    int64_t blocks = (count + RAND_BLOCK - 1) / RAND_BLOCK;
    bh_par_for(threads, blocks, bh_grain_for(blocks, threads, 8), rand_task, &c, 8 * RAND_BLOCK);
}
