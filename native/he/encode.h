/* Plaintext encoding of the tiles, Delta scaling, and rounding to 2^bits. */
#ifndef BH_ENCODE_H
#define BH_ENCODE_H

#include "common.h"

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


#endif
