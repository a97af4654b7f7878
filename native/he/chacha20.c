#include "chacha20.h"

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
#define CC_ROL(v, c) _mm256_rol_epi32((v), (c)) /* AVX-512VL: one instruction for the two shifts and the or */
#define CC_QRV(a, b, c, d, ROT)                                                                     \
    x[a] = _mm256_add_epi32(x[a], x[b]); x[d] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d], x[a]), r16); \
    x[c] = _mm256_add_epi32(x[c], x[d]); x[b] = _mm256_xor_si256(x[b], x[c]); x[b] = ROT(x[b], 12);    \
    x[a] = _mm256_add_epi32(x[a], x[b]); x[d] = _mm256_shuffle_epi8(_mm256_xor_si256(x[d], x[a]), r8);  \
    x[c] = _mm256_add_epi32(x[c], x[d]); x[b] = _mm256_xor_si256(x[b], x[c]); x[b] = ROT(x[b], 7);

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

/* Eight blocks, a 32-bit word of each per lane; ROT: the 12- and 7-bit rotations. */
#define CC_BLOCKS8(ROT)                                                                                   \
    do {                                                                                                  \
        const __m256i r16 = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,        \
                                             2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);       \
        const __m256i r8 = _mm256_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14,         \
                                            3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);        \
        __m256i s[16], x[16];                                                                             \
        for (int i = 0; i < 16; i++) s[i] = _mm256_set1_epi32((int)st[i]);                                \
        s[12] = _mm256_add_epi32(s[12], _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));                       \
        for (int i = 0; i < 16; i++) x[i] = s[i];                                                         \
        for (int r = 0; r < 10; r++) {                                                                    \
            CC_QRV(0, 4, 8, 12, ROT) CC_QRV(1, 5, 9, 13, ROT) CC_QRV(2, 6, 10, 14, ROT)                   \
            CC_QRV(3, 7, 11, 15, ROT) CC_QRV(0, 5, 10, 15, ROT) CC_QRV(1, 6, 11, 12, ROT)                 \
            CC_QRV(2, 7, 8, 13, ROT) CC_QRV(3, 4, 9, 14, ROT)                                             \
        }                                                                                                 \
        for (int i = 0; i < 16; i++) x[i] = _mm256_add_epi32(x[i], s[i]);                                 \
        cc_store8(x, out);                                                                                \
        cc_store8(x + 8, out + 32);                                                                       \
    } while (0)

BH_AVX2 static void chacha8_avx2(const uint32_t st[16], uint8_t *out) { CC_BLOCKS8(CC_ROT); }

__attribute__((target("avx2,fma,popcnt,avx512f,avx512vl"))) static void chacha8_vl(const uint32_t st[16],
                                                                                     uint8_t *out) {
    CC_BLOCKS8(CC_ROL);
}
#else
static void chacha8_avx2(const uint32_t st[16], uint8_t *out) { chacha8_body(st, out); }
static void chacha8_vl(const uint32_t st[16], uint8_t *out) { chacha8_body(st, out); }
#endif
static void chacha8_gen(const uint32_t st[16], uint8_t *out) { chacha8_body(st, out); }


void bh_stream_init(stream_t *s, const uint8_t *key, const uint32_t nonce[3], uint32_t counter) {
    static const uint32_t sigma[4] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u};
    for (int i = 0; i < 4; i++) s->st[i] = sigma[i];
    for (int i = 0; i < 8; i++) s->st[4 + i] = ld32(key + 4 * i);
    s->st[12] = counter;
    for (int i = 0; i < 3; i++) s->st[13 + i] = nonce[i];
    s->pos = 512;
    s->blocks = bh_vl_on() ? chacha8_vl : bh_simd_on() ? chacha8_avx2 : chacha8_gen;
}

/* Stream for one ciphertext's randomness: nonce (ct low, ct high, label). */
void bh_stream_ct(stream_t *s, const uint8_t *key, int64_t ct, uint32_t label) {
    uint32_t nonce[3] = {(uint32_t)ct, (uint32_t)((uint64_t)ct >> 32), label};
    bh_stream_init(s, key, nonce, 0);
}

void bh_stream_read(stream_t *s, uint8_t *out, size_t len) {
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
    bh_stream_init(&s, key, nw, counter);
    bh_stream_read(&s, out, len);
}
