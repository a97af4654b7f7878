/* BFV server side: input preparation (upload + own share, NTT form, slot blocks) and the finish of
 * the output ciphertexts (masking, noise flooding, modulus switch). */
#include "chacha20.h"
#include "encode.h"
#include "ntt.h"
#include "sampling.h"
#include "threads.h"
#include "wire.h"

/* ------------------------------------------------------------------------------------------ */
/* server: input preparation                                                                  */

typedef struct {
    const bh_rns *r;
    const uint8_t *c0;
    const int64_t *c0_index, *ct_index;
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
    ntt_pair kk = bh_ntt_pick(r);
    encode_tile(c->xs, c->t, c->ct_index[item], n, (uint64_t *)a);     /* a is filled later */
    scaled_body(r, (const uint64_t *)a, c->delta, v);
    for (int i = 0; i < k; i++) fwd1(&kk, r, v + (size_t)i * n, i);
    const uint8_t *src = c->c0 + (size_t)c->c0_index[item] * up_ct_bytes(r);
    int bad = 0;
    (void)simd;
    for (int i = 0; i < k; i++) {
        int w = up_bits(r->p[i]);
        bad |= up_unpack_add_row(src, n, r->p[i], r->pinv[i], w, v + (size_t)i * n);
        src += (size_t)n * w / 8;
    }
    if (bh_expand_a1(r, c->a_keys + 32 * item, words, a)) bad = 1;   /* cannot happen in practice */
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
    int simd = bh_simd_on();
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

int64_t bh_server_prep(const bh_rns *r, const uint8_t *c0, const int64_t *c0_index, const int64_t *ct_index,
                       const uint64_t *xs, const bh_tiling *t, const double *delta, const uint8_t *a_keys, int c_in,
                       int tc, double *x, int threads) {
    prep_ctx c = {r, c0, c0_index, ct_index, xs, t, delta, a_keys, c_in, tc, x, 0};
    int64_t items = (int64_t)c_in * tc;
    bh_par_for(threads, items, bh_grain_for(items, threads, GROUP), prep_task, &c, sizeof(double) * 2 * GROUP * (size_t)r->k * r->n + bh_words_bytes(r));
    return c.bad;
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


BH_INLINE void finish_one(fin_ctx *c, int64_t job, double *y0, double *y1, double *uh, uint8_t *rb, double *e,
                          uint64_t *w64, double *fres) {
    const bh_rns *r = c->r;
    int k = r->k, n = r->n, rows = c->rows;
    size_t kn = (size_t)k * n, nblk = kn / 4;
    ntt_pair kk = bh_ntt_pick(r);
    int64_t ct = c->ct_global[job];
    (void)rows;
    (void)nblk;
    /* u: uniform ternary (bytes < 255, value mod 3 - 1) */
    stream_t s;
    bh_stream_ct(&s, c->key, ct, 0);
    int got = 0;
    while (got < n) {
        int want = n - got + 64;
        bh_stream_read(&s, rb, (size_t)want);
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
    bh_stream_ct(&s, c->key, ct, 1);
    bh_stream_read(&s, rb, 8 * (size_t)n);
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
    bh_stream_ct(&sf, c->key, ct, 2);
    bh_stream_ct(&se, c->key, ct, 3);
    for (int64_t p0 = lo; p0 < hi; p0 += FIN_BATCH) {
        int cnt = (int)(hi - p0 < FIN_BATCH ? hi - p0 : FIN_BATCH);
        bh_stream_read(&sf, rb, 4 * (size_t)cnt * c->n_limbs);
        flood_body(r, rb, cnt, c->flood_bits, c->n_limbs, c->fl_c, c->fl_off, fres, FIN_BATCH);
        bh_stream_read(&se, rb, 8 * (size_t)cnt);
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
    int simd = bh_simd_on();
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

int bh_finish(const bh_rns *r, const bh_finish_args *a, int threads) {
    if (r->k > 64 || a->flood_bits < 1 || a->flood_bits > 188 || a->down_bits > 50 || a->down_c0_bits > a->down_bits
        || a->ring_bits < 1 || a->ring_bits > 50)
        return BN_EPARAMS;
    fin_ctx *c = (fin_ctx *)calloc(1, sizeof(fin_ctx));
    if (!c) return BN_ENOMEM;
    c->r = r;
    c->y = a->y;
    c->n_og = a->n_og;
    c->rows = a->rows;
    c->jobs_og = a->jobs_og;
    c->jobs_tl = a->jobs_tl;
    c->ct_global = a->ct_global;
    c->ret_lo = a->ret_lo;
    c->ret_hi = a->ret_hi;
    c->ret_coef = a->ret_coef;
    c->ret_base = a->ret_base;
    c->r_out = a->r_out;
    c->bias = a->bias;
    c->ret_flat = a->ret_flat;
    c->ret_ch = a->ret_ch;
    c->ring_mask = (1ULL << a->ring_bits) - 1;
    c->pk = a->pk;
    c->delta = a->delta;
    c->flood_bits = a->flood_bits;
    c->down_bits = a->down_bits;
    c->down_c0_bits = a->down_c0_bits;
    c->key = a->key;
    c->c1_out = a->c1_out;
    c->c0_out = a->c0_out;
    for (int i = 0; i < r->k; i++) c->scale[i] = ldexp(1.0, a->down_bits) / r->p[i];
    bh_flood_consts(r, a->flood_bits, c->fl_c, c->fl_off, &c->n_limbs);
    bh_par_for(threads, a->njobs, bh_grain_for(a->njobs, threads, GROUP), finish_task, c, finish_scratch(r, c->n_limbs));
    free(c);
    return BN_OK;
}

