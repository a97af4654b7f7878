/* Sampling from keystreams: uniform a-polynomials, centred binomial noise, flooding, uniform ring elements. */
#ifndef BH_SAMPLING_H
#define BH_SAMPLING_H

#include "common.h"

/* a-polynomials: scratch bytes per key, and one key's (K, N) centred residues; 1 if a row ran short */
size_t bh_words_bytes(const bh_rns *r);
int bh_expand_a1(const bh_rns *r, const uint8_t *key, uint32_t *words, double *out);


/* centred binomial noise, eta = 21, from 64-bit words */
BH_INLINE void cbd_body(const uint8_t *bytes, int64_t count, double *e) {
    const uint64_t m = (1ULL << 21) - 1;
    for (int64_t j = 0; j < count; j++) {
        uint64_t w = ld64(bytes + 8 * j);
        e[j] = (double)(__builtin_popcountll(w & m) - __builtin_popcountll((w >> 21) & m));
    }
}

#define FIN_BATCH 256 /* flooding coefficients per batch */

/* 2^(27 l) mod p_i per limb, 2^bits mod p_i, and the limb count, of a flood of `bits` bits */
void bh_flood_consts(const bh_rns *r, int bits, double c[][8], double *off, int *n_limbs);

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

#endif
