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
            if (nt) {
                for (int r = 0; r < 8; r++)
                    _mm_stream_si128((block *)(o + (8 * R + r) * 16), _mm256_castsi256_si128(x[r]));
                if (q + 1 < nb)
                    for (int r = 0; r < 8; r++)
                        _mm_stream_si128((block *)(o + (128 + 8 * R + r) * 16), _mm256_extracti128_si256(x[r], 1));
                continue;
            }
            for (int r = 0; r < 8; r += 2) {
                _mm256_storeu_si256((__m256i *)(o + (8 * R + r) * 16), _mm256_permute2x128_si256(x[r], x[r + 1], 0x20));
                if (q + 1 < nb) /* public: the last row block of an odd count has no partner */
                    _mm256_storeu_si256((__m256i *)(o + (128 + 8 * R + r) * 16),
                                        _mm256_permute2x128_si256(x[r], x[r + 1], 0x31));
            }
        }
    }
}

void bn_tiles_to_rows(const block *tile, int nb, uint8_t *out, int nt) {
    if (bn_use_avx2())
        tiles_to_rows_avx2(tile, nb, out, nt);
    else
        tiles_to_rows_sse(tile, nb, out, nt);
}
