/* BFV client side: seeded symmetric encryption of the share, and the decryption phase. */
#include "chacha20.h"
#include "encode.h"
#include "ntt.h"
#include "sampling.h"
#include "threads.h"
#include "wire.h"

/* ------------------------------------------------------------------------------------------ */
/* client encryption                                                                          */

typedef struct {
    const bh_rns *r;
    const uint64_t *x;
    const bh_tiling *t;
    const int64_t *order;
    const double *delta, *s_hat;
    const uint8_t *a_keys, *noise_key;
    uint8_t *out;
    int64_t fails;
} enc_ctx;

BH_INLINE int encrypt_one(enc_ctx *c, int64_t ct, double *v, double *a, uint32_t *words, uint8_t *nb,
                          double *e, const int simd) {
    const bh_rns *r = c->r;
    int k = r->k, n = r->n;
    ntt_pair kk = bh_ntt_pick(r);
    stream_t s;
    bh_stream_ct(&s, c->noise_key, ct, 0);
    bh_stream_read(&s, nb, 8 * (size_t)n);
    cbd_body(nb, n, e);
    encode_tile(c->x, c->t, c->order ? c->order[ct] : ct, n, (uint64_t *)a); /* a is filled later */
    scaled_body(r, (const uint64_t *)a, c->delta, v);
    for (int i = 0; i < k; i++) {
        double *vi = v + (size_t)i * n;
        for (int j = 0; j < n; j++) vi[j] += e[j];
        fwd1(&kk, r, vi, i);
    }
    int fail = bh_expand_a1(r, c->a_keys + 32 * ct, words, a);
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
    return sizeof(double) * (2 * (size_t)r->k * r->n + r->n) + 8 * (size_t)r->n + bh_words_bytes(r);
}

static void encrypt_task(void *vctx, int64_t lo, int64_t hi, void *scratch) {
    enc_ctx *c = (enc_ctx *)vctx;
    const bh_rns *r = c->r;
    size_t kn = (size_t)r->k * r->n;
    double *v = (double *)scratch;
    uint8_t *nb = (uint8_t *)(v + 2 * kn + r->n);
    uint32_t *words = (uint32_t *)(nb + 8 * (size_t)r->n);
    int64_t f = 0;
    int simd = bh_simd_on();
    for (int64_t ct = lo; ct < hi; ct++)
        f += simd ? encrypt_one_avx2(c, ct, v, v + kn, words, nb, v + 2 * kn)
                  : encrypt_one_gen(c, ct, v, v + kn, words, nb, v + 2 * kn);
    if (f) __atomic_fetch_add(&c->fails, f, __ATOMIC_RELAXED);
}

int64_t bh_encrypt(const bh_rns *r, const uint64_t *x, const bh_tiling *t, const int64_t *order, int64_t count,
                   const double *delta, const double *s_hat, const uint8_t *a_keys, const uint8_t *noise_key,
                   uint8_t *out, int threads) {
    enc_ctx c = {r, x, t, order, delta, s_hat, a_keys, noise_key, out, 0};
    bh_par_for(threads, count, bh_grain_for(count, threads, 8), encrypt_task, &c, encrypt_scratch(r));
    return c.fails;
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
    ntt_pair kk = bh_ntt_pick(r);
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
    int simd = bh_simd_on();
    for (int64_t g = lo; g < hi; g++) bad += simd ? decrypt_one_avx2(c, g, x, v) : decrypt_one_gen(c, g, x, v);
    if (bad) __atomic_fetch_add(&c->bad, bad, __ATOMIC_RELAXED);
}

int64_t bh_decrypt_phase(const bh_rns *r, const bh_decrypt_args *a, int threads) {
    if (a->down_bits > 50 || a->down_bits < 2 || a->down_c0_bits > a->down_bits || a->down_c0_bits < 1)
        return BN_EPARAMS;
    if (a->out && (a->ring_bits < 1 || a->ring_bits >= a->down_bits)) return BN_EPARAMS;
    dec_ctx c;
    memset(&c, 0, sizeof c);
    c.r = r;
    for (int t = 0; t < 3; t++) c.pi[t] = a->prime_idx[t];
    c.s_hat = a->s_hat;
    c.c1 = a->c1;
    c.c0 = a->c0;
    c.per_ct = a->per_ct;
    c.n_ret = a->n_ret;
    c.ret_lo = a->ret_lo;
    c.ret_hi = a->ret_hi;
    c.ret_coef = a->ret_coef;
    c.down_bits = a->down_bits;
    c.down_c0_bits = a->down_c0_bits;
    c.phase = a->phase;
    c.out = a->out;
    c.ret_flat = a->ret_flat;
    c.out_stride = a->out_stride;
    c.ring_bits = a->ring_bits;
    int64_t p1 = (int64_t)r->p[c.pi[0]], p2 = (int64_t)r->p[c.pi[1]], p3 = (int64_t)r->p[c.pi[2]];
    int64_t i12 = inv_mod(p1, p2), i3 = inv_mod((p1 % p3) * (p2 % p3) % p3, p3);
    c.inv12 = (double)(i12 > p2 / 2 ? i12 - p2 : i12);
    c.inv3 = (double)(i3 > p3 / 2 ? i3 - p3 : i3);
    c.p1 = (uint64_t)p1;
    c.p12 = (uint64_t)p1 * (uint64_t)p2;
    int64_t count = a->batch * a->per_ct;
    bh_par_for(threads, count, bh_grain_for(count, threads, 4), decrypt_task, &c,
            sizeof(double) * 3 * (size_t)r->n + sizeof(uint64_t) * (size_t)r->n);
    return c.bad;
}
