/* Wire packing: bit-packed upload residues and little-endian words. */
#ifndef BH_WIRE_H
#define BH_WIRE_H

#include "common.h"

/* Store count values of nb bytes each (little-endian) at d, never writing past d + count*nb. */
BH_INLINE void pack_words(uint8_t *d, const uint64_t *v, int64_t count, int nb) {
    int64_t j = 0;
    int64_t end = count * nb;
    for (; j < count && j * nb + 8 <= end; j++) st64(d + j * nb, v[j]);
    for (; j < count; j++)
        for (int b = 0; b < nb; b++) d[j * nb + b] = (uint8_t)(v[j] >> (8 * b));
}


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


#endif
