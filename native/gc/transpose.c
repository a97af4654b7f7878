#include "transpose.h"

/* delta swap: a's bits at positions with bit s set <-> b's bits s lower (m: positions with bit s clear) */
#define BN_DSWAP(V, XOR, AND, SRL, SLL, a, b, s, m)    \
    do {                                             \
        const V _t = AND(XOR(SRL(a, s), b), m);      \
        b = XOR(b, _t);                              \
        a = XOR(a, SLL(_t, s));                      \
    } while (0)

/* x[i] bit p <-> x[p] bit i in every byte (8 x 8 bit transposes) */
#define BN_BITS8X8(V, XOR, AND, SRL, SLL, SET1, x)                                                                  \
    do {                                                                                                            \
        const V _m4 = SET1(0x0f), _m2 = SET1(0x33), _m1 = SET1(0x55);                                              \
        for (int _i = 0; _i < 4; _i++) BN_DSWAP(V, XOR, AND, SRL, SLL, x[_i], x[_i + 4], 4, _m4);                  \
        for (int _i = 0; _i < 8; _i += (_i & 1) ? 3 : 1) BN_DSWAP(V, XOR, AND, SRL, SLL, x[_i], x[_i + 2], 2, _m2); \
        for (int _i = 0; _i < 8; _i += 2) BN_DSWAP(V, XOR, AND, SRL, SLL, x[_i], x[_i + 1], 1, _m1);               \
    } while (0)

/* 16 x 16 byte transpose: each stage rotates the (register, byte) address left by one bit, four make it
 * (byte, register) */
#define BN_BYTES16X16(V, LO, HI, a)                                    \
    do {                                                               \
        V _b[16];                                                      \
        for (int _s = 0; _s < 4; _s++) {                               \
            for (int _i = 0; _i < 8; _i++) {                           \
                _b[2 * _i] = LO(a[_i], a[_i + 8]);                     \
                _b[2 * _i + 1] = HI(a[_i], a[_i + 8]);                 \
            }                                                          \
            for (int _i = 0; _i < 16; _i++) a[_i] = _b[_i];            \
        }                                                              \
    } while (0)

#define SET1_128(c) _mm_set1_epi8((char)(c))
#define SET1_256(c) _mm256_set1_epi8((char)(c))

/* row blocks 0 .. nb-1 of the tiles -> nb * 128 rows of 16 bytes at out (SSE2: one tile at a time) */
static void tiles_to_rows_sse(const block *tile, int nb, uint8_t *out, int nt) {
    block s[128];
    for (int q = 0; q < nb; q++) {
        for (int g = 0; g < 8; g++) {
            block a[16];
            for (int C = 0; C < 16; C++) a[C] = _mm_load_si128(tile_at((block *)tile, 8 * C + g, q));
            BN_BYTES16X16(block, _mm_unpacklo_epi8, _mm_unpackhi_epi8, a);
            for (int R = 0; R < 16; R++) s[8 * R + g] = a[R];
        }
        for (int R = 0; R < 16; R++) {
            block *x = s + 8 * R;
            BN_BITS8X8(block, _mm_xor_si128, _mm_and_si128, _mm_srli_epi64, _mm_slli_epi64, SET1_128, x);
            for (int r = 0; r < 8; r++) {
                block *o = (block *)(out + ((size_t)q * 128 + 8 * R + r) * 16);
                if (nt)
                    _mm_stream_si128(o, x[r]);
                else
                    _mm_storeu_si128(o, x[r]);
            }
        }
    }
}

/* Rows r0 .. r0 + cnt - 1 (cnt even) of two interleaved row blocks from x: the low lanes to the block at
 * o, the high lanes to the next one (128 rows on) when both; nt: non-temporal stores. */
__attribute__((target("avx2"))) static inline void store_rows2(uint8_t *o, const __m256i *x, int r0, int cnt,
                                                               int both, int nt) {
    if (nt) {
        for (int r = 0; r < cnt; r++) _mm_stream_si128((block *)(o + (r0 + r) * 16), _mm256_castsi256_si128(x[r]));
        if (both)
            for (int r = 0; r < cnt; r++)
                _mm_stream_si128((block *)(o + (128 + r0 + r) * 16), _mm256_extracti128_si256(x[r], 1));
        return;
    }
    for (int r = 0; r < cnt; r += 2) {
        _mm256_storeu_si256((__m256i *)(o + (r0 + r) * 16), _mm256_permute2x128_si256(x[r], x[r + 1], 0x20));
        if (both) /* public: the last row block of an odd count has no partner */
            _mm256_storeu_si256((__m256i *)(o + (128 + r0 + r) * 16), _mm256_permute2x128_si256(x[r], x[r + 1], 0x31));
    }
}

__attribute__((target("avx2"))) static void tiles_to_rows_avx2(const block *tile, int nb, uint8_t *out, int nt) {
    __m256i s[128];
    for (int q = 0; q < nb; q += 2) {
        const __m256i *t2 = (const __m256i *)tile_at((block *)tile, 0, q);
        for (int g = 0; g < 8; g++) {
            __m256i a[16];
            for (int C = 0; C < 16; C++) a[C] = _mm256_load_si256(t2 + 8 * C + g);
            BN_BYTES16X16(__m256i, _mm256_unpacklo_epi8, _mm256_unpackhi_epi8, a);
            for (int R = 0; R < 16; R++) s[8 * R + g] = a[R];
        }
        uint8_t *o = out + (size_t)q * 128 * 16;
        for (int R = 0; R < 16; R++) {
            __m256i *x = s + 8 * R;
            BN_BITS8X8(__m256i, _mm256_xor_si256, _mm256_and_si256, _mm256_srli_epi64, _mm256_slli_epi64, SET1_256,
                       x);
            store_rows2(o, x, 8 * R, 8, q + 1 < nb, nt);
        }
    }
}

/* With GFNI: for each group of 8 columns 8G .. 8G + 7, an 8 x 16 byte transpose (three unpack stages)
 * puts byte R of the 8 columns in one quadword (columns in reverse order), whose 8 x 8 bit transpose is
 * one affine instruction: gf2p8affine(x, A) gives byte k bit i = parity(A.byte[7 - i] & x.byte[k]), so
 * with x.byte[k] = 1 << k it is bit k of A.byte[7 - i], the transpose of A with its bytes reversed.
 * The result's byte j is byte G of row 8R + j; a 16 x 16 byte transpose over G (four unpack stages)
 * per pair of R then gives 16 whole rows: about half the instructions of tiles_to_rows_avx2. */
__attribute__((target("avx2,gfni"))) static void tiles_to_rows_gfni(const block *tile, int nb, uint8_t *out, int nt) {
    __m256i e[16][8];
    const __m256i unit = _mm256_set1_epi64x(0x8040201008040201LL);
    for (int q = 0; q < nb; q += 2) {
        const __m256i *t2 = (const __m256i *)tile_at((block *)tile, 0, q);
        for (int G = 0; G < 16; G++) {
            __m256i a[8], b[8], c[8];
            for (int i = 0; i < 8; i++) a[i] = _mm256_load_si256(t2 + 8 * G + 7 - i); /* reversed: see above */
            for (int m = 0; m < 4; m++) {
                b[2 * m] = _mm256_unpacklo_epi8(a[2 * m], a[2 * m + 1]);     /* R 0..7: (a2m, a2m+1) words */
                b[2 * m + 1] = _mm256_unpackhi_epi8(a[2 * m], a[2 * m + 1]); /* R 8..15 */
            }
            for (int h = 0; h < 2; h++) { /* h: R half */
                for (int m = 0; m < 2; m++) { /* m: columns 0-3 or 4-7 */
                    c[4 * h + 2 * m] = _mm256_unpacklo_epi16(b[4 * m + h], b[4 * m + 2 + h]);     /* R 8h+0..3 */
                    c[4 * h + 2 * m + 1] = _mm256_unpackhi_epi16(b[4 * m + h], b[4 * m + 2 + h]); /* R 8h+4..7 */
                }
            }
            for (int h = 0; h < 2; h++)
                for (int f = 0; f < 2; f++) { /* f: R 8h+4f .. +3 */
                    __m256i lo = c[4 * h + f], hi = c[4 * h + 2 + f];
                    __m256i d0 = _mm256_unpacklo_epi32(lo, hi), d1 = _mm256_unpackhi_epi32(lo, hi);
                    /* d0: R = 8h+4f+0, +1; d1: +2, +3 -> s = 4h + 2f (+1) */
                    e[G][4 * h + 2 * f] = _mm256_gf2p8affine_epi64_epi8(unit, d0, 0);
                    e[G][4 * h + 2 * f + 1] = _mm256_gf2p8affine_epi64_epi8(unit, d1, 0);
                }
        }
        uint8_t *o = out + (size_t)q * 128 * 16;
        for (int s = 0; s < 8; s++) {
            __m256i x[16];
            for (int G = 0; G < 16; G++) x[G] = e[G][s];
            BN_BYTES16X16(__m256i, _mm256_unpacklo_epi8, _mm256_unpackhi_epi8, x);
            store_rows2(o, x, 16 * s, 16, q + 1 < nb, nt); /* x[idx] = row 16 s + idx */
        }
    }
}

void bn_tiles_to_rows(const block *tile, int nb, uint8_t *out, int nt) {
    if (bn_use_gfni())
        tiles_to_rows_gfni(tile, nb, out, nt);
    else if (bn_use_avx2())
        tiles_to_rows_avx2(tile, nb, out, nt);
    else
        tiles_to_rows_sse(tile, nb, out, nt);
}
