#include "ot_check.h"

/* ---------------------------------------------------------------- OT consistency check
 * The KOS check as SoftSpoken (Roy, CRYPTO 2022) uses it for a malicious receiver: with challenges
 * chi_i = AES_seed(i) in GF(2^128) (x^128 + x^7 + x^2 + x + 1), the receiver sends x~ = sum x_i chi_i and
 * t~ = sum chi_i t_i; the sender accepts iff sum chi_i q_i = t~ ^ x~ Delta. Products are summed
 * unreduced (XOR is linear) and reduced once. The caller pads the rows with >= 128 + 40 random choices
 * so that x~ is uniform (bunet/gc/otcheck.py). The sums run over rows in any grouping (bn_chk_rows), so
 * the garbler checks its rows in its chunk loop (run.c) while they are in the cache. */

#define CHI_TAG 0x4348490000000000LL /* "CHI" in the counter block's high half */

static inline void gf_mul_acc(block a, block b, block *lo, block *hi) {
    const block mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10), _mm_clmulepi64_si128(a, b, 0x01));
    *lo = _mm_xor_si128(*lo, _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x00), _mm_slli_si128(mid, 8)));
    *hi = _mm_xor_si128(*hi, _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x11), _mm_srli_si128(mid, 8)));
}

/* lo + x^128 hi mod x^128 + x^7 + x^2 + x + 1 (x^128 = 0x87) */
static inline block gf_reduce(block lo, block hi) {
    const block P = _mm_set_epi64x(0, 0x87);
    const block a = _mm_clmulepi64_si128(hi, P, 0x00), b = _mm_clmulepi64_si128(hi, P, 0x01);
    const block c = _mm_clmulepi64_si128(b, P, 0x01); /* b's bits beyond 2^64, shifted past x^128 */
    return _mm_xor_si128(_mm_xor_si128(lo, a), _mm_xor_si128(_mm_slli_si128(b, 8), c));
}

void bn_chk_init(bn_chk *c, const uint8_t *seed) {
    bn_aes_keysched(seed, c->rk);
    c->lo = c->hi = c->mid = c->xs = _mm_setzero_si128();
}

/* Karatsuba with the three partial products summed separately over all rows and combined once (all
 * steps are linear); the choice sum in constant time (masks) */
static void chk_rows_sse(bn_chk *c, const uint8_t *rows, const uint8_t *choice, uint64_t i0, uint64_t m) {
    aeskey K;
    load_key(&K, c->rk);
    block lo = c->lo, hi = c->hi, mid = c->mid, xs = c->xs, chi[8];
    for (uint64_t i = 0; i < m; i += 8) {
        const uint64_t cnt = m - i < 8 ? m - i : 8;
        for (int j = 0; j < 8; j++) chi[j] = _mm_set_epi64x(CHI_TAG, (long long)(i0 + i + j));
        aes8(&K, chi);
        const uint64_t bits = choice ? choice[i / 8] : 0;
        for (uint64_t j = 0; j < cnt; j++) {
            const block a = chi[j], b = _mm_loadu_si128((const block *)(rows + 16 * (i + j)));
            lo = _mm_xor_si128(lo, _mm_clmulepi64_si128(a, b, 0x00));
            hi = _mm_xor_si128(hi, _mm_clmulepi64_si128(a, b, 0x11));
            mid = _mm_xor_si128(mid, _mm_clmulepi64_si128(_mm_xor_si128(a, _mm_shuffle_epi32(a, 0x4e)),
                                                          _mm_xor_si128(b, _mm_shuffle_epi32(b, 0x4e)), 0x00));
            xs = _mm_xor_si128(xs, _mm_and_si128(a, _mm_set1_epi64x(-(long long)((bits >> j) & 1))));
        }
    }
    c->lo = lo, c->hi = hi, c->mid = mid, c->xs = xs;
}

/* The same sums, two rows per instruction (VAES, VPCLMULQDQ): lane 0 holds row i, lane 1 row i + 1,
 * and the lanes are folded at the end. Whole groups of 8 rows; returns the rows done. */
__attribute__((target("avx2,vaes,vpclmulqdq"))) static uint64_t chk_rows_wide(bn_chk *c, const uint8_t *rows,
                                                                               const uint8_t *choice, uint64_t i0,
                                                                               uint64_t m) {
    __m256i k[11];
    for (int r = 0; r < 11; r++) k[r] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const block *)(c->rk + 16 * r)));
    __m256i lo = _mm256_setzero_si256(), hi = lo, mid = lo, xs = lo;
    uint64_t i = 0;
    for (; i + 8 <= m; i += 8) {
        __m256i x[4];
        for (int j = 0; j < 4; j++) {
            const long long r0 = (long long)(i0 + i + 2 * j);
            x[j] = _mm256_xor_si256(_mm256_set_epi64x(CHI_TAG, r0 + 1, CHI_TAG, r0), k[0]);
        }
#pragma GCC unroll 9
        for (int r = 1; r < 10; r++)
            for (int j = 0; j < 4; j++) x[j] = _mm256_aesenc_epi128(x[j], k[r]);
        for (int j = 0; j < 4; j++) x[j] = _mm256_aesenclast_epi128(x[j], k[10]);
        const uint64_t bits = choice ? choice[i / 8] : 0;
        for (int j = 0; j < 4; j++) {
            const __m256i a = x[j], b = _mm256_loadu_si256((const __m256i *)(rows + 16 * (i + 2 * j)));
            lo = _mm256_xor_si256(lo, _mm256_clmulepi64_epi128(a, b, 0x00));
            hi = _mm256_xor_si256(hi, _mm256_clmulepi64_epi128(a, b, 0x11));
            mid = _mm256_xor_si256(mid,
                                   _mm256_clmulepi64_epi128(_mm256_xor_si256(a, _mm256_shuffle_epi32(a, 0x4e)),
                                                            _mm256_xor_si256(b, _mm256_shuffle_epi32(b, 0x4e)), 0x00));
            const long long b0 = -(long long)((bits >> (2 * j)) & 1), b1 = -(long long)((bits >> (2 * j + 1)) & 1);
            xs = _mm256_xor_si256(xs, _mm256_and_si256(a, _mm256_set_epi64x(b1, b1, b0, b0)));
        }
    }
#define FOLD(acc, v) acc = _mm_xor_si128(acc, _mm_xor_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)))
    FOLD(c->lo, lo);
    FOLD(c->hi, hi);
    FOLD(c->mid, mid);
    FOLD(c->xs, xs);
#undef FOLD
    return i;
}

/* Four rows per instruction (512-bit VAES, VPCLMULQDQ): lanes 0..3 hold rows i .. i + 3; a row's choice bit
 * selects its lane's two 64-bit words of xs by a mask register (spread from the bits, no branch). Whole
 * groups of 16 rows; returns the rows done. */
__attribute__((target("avx512f,vaes,vpclmulqdq"))) static uint64_t chk_rows_512(bn_chk *c, const uint8_t *rows,
                                                                               const uint8_t *choice, uint64_t i0,
                                                                               uint64_t m) {
    __m512i k[11];
    for (int r = 0; r < 11; r++) k[r] = _mm512_broadcast_i32x4(_mm_loadu_si128((const block *)(c->rk + 16 * r)));
    __m512i lo = _mm512_setzero_si512(), hi = lo, mid = lo, xs = lo;
    uint64_t i = 0;
    for (; i + 16 <= m; i += 16) {
        __m512i x[4];
        for (int j = 0; j < 4; j++) {
            const long long r0 = (long long)(i0 + i + 4 * j);
            x[j] = _mm512_xor_si512(_mm512_set_epi64(CHI_TAG, r0 + 3, CHI_TAG, r0 + 2, CHI_TAG, r0 + 1, CHI_TAG, r0),
                                    k[0]);
        }
#pragma GCC unroll 9
        for (int r = 1; r < 10; r++)
            for (int j = 0; j < 4; j++) x[j] = _mm512_aesenc_epi128(x[j], k[r]);
        for (int j = 0; j < 4; j++) x[j] = _mm512_aesenclast_epi128(x[j], k[10]);
        const uint32_t bits = choice ? (uint32_t)choice[i / 8] | (uint32_t)choice[i / 8 + 1] << 8 : 0;
        for (int j = 0; j < 4; j++) {
            const __m512i a = x[j], b = _mm512_loadu_si512((const void *)(rows + 16 * (i + 4 * j)));
            lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128(a, b, 0x00));
            hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128(a, b, 0x11));
            const __m512i as = _mm512_xor_si512(a, _mm512_shuffle_epi32(a, (_MM_PERM_ENUM)0x4e));
            const __m512i bs = _mm512_xor_si512(b, _mm512_shuffle_epi32(b, (_MM_PERM_ENUM)0x4e));
            mid = _mm512_xor_si512(mid, _mm512_clmulepi64_epi128(as, bs, 0x00));
            uint32_t e = (bits >> (4 * j)) & 15; /* bit l -> bits 2l, 2l + 1 */
            e = (e | e << 2) & 0x33;
            e = (e | e << 1) & 0x55;
            xs = _mm512_mask_xor_epi64(xs, (__mmask8)(e | e << 1), xs, a);
        }
    }
#define FOLD(acc, v)                                                                                                 \
    acc = _mm_xor_si128(acc, _mm_xor_si128(_mm_xor_si128(_mm512_extracti32x4_epi32(v, 0), _mm512_extracti32x4_epi32(v, 1)), \
                                           _mm_xor_si128(_mm512_extracti32x4_epi32(v, 2), _mm512_extracti32x4_epi32(v, 3))))
    FOLD(c->lo, lo);
    FOLD(c->hi, hi);
    FOLD(c->mid, mid);
    FOLD(c->xs, xs);
#undef FOLD
    return i;
}

void bn_chk_rows(bn_chk *c, const uint8_t *rows, const uint8_t *choice, uint64_t i0, uint64_t m) {
    uint64_t done = 0;
    if (bn_have_vaes() && bn_have_vclmul() && bn_use_avx512()) done = chk_rows_512(c, rows, choice, i0, m);
    if (bn_have_vaes() && bn_have_vclmul() && done + 8 <= m)
        done += chk_rows_wide(c, rows + 16 * done, choice ? choice + done / 8 : NULL, i0 + done, m - done);
    if (done < m) chk_rows_sse(c, rows + 16 * done, choice ? choice + done / 8 : NULL, i0 + done, m - done);
}

/* sum chi_i rows_i, reduced */
static block chk_rsum(const bn_chk *c) {
    const block mid = _mm_xor_si128(c->mid, _mm_xor_si128(c->lo, c->hi));
    return gf_reduce(_mm_xor_si128(c->lo, _mm_slli_si128(mid, 8)), _mm_xor_si128(c->hi, _mm_srli_si128(mid, 8)));
}

int bn_chk_verify(const bn_chk *c, const uint8_t *delta, const uint8_t *proof) {
    block lo = _mm_setzero_si128(), hi = lo;
    gf_mul_acc(_mm_loadu_si128((const block *)proof), _mm_loadu_si128((const block *)delta), &lo, &hi);
    const block want = _mm_xor_si128(gf_reduce(lo, hi), _mm_loadu_si128((const block *)(proof + 16)));
    return _mm_test_all_zeros(_mm_xor_si128(chk_rsum(c), want), _mm_set1_epi8(-1));
}

/* receiver: proof = (x~, t~) over its t rows and choice bits */
void bn_ot_check_prove(const uint8_t *t_rows, const uint8_t *choice, uint64_t m, const uint8_t *seed,
                       uint8_t *proof) {
    bn_chk c;
    bn_chk_init(&c, seed);
    bn_chk_rows(&c, t_rows, choice, 0, m);
    _mm_storeu_si128((block *)proof, c.xs);
    _mm_storeu_si128((block *)(proof + 16), chk_rsum(&c));
}

/* sender: 1 if sum chi_i q_i == t~ ^ x~ Delta */
int bn_ot_check_verify(const uint8_t *q_rows, const uint8_t *delta, uint64_t m, const uint8_t *seed,
                       const uint8_t *proof) {
    bn_chk c;
    bn_chk_init(&c, seed);
    bn_chk_rows(&c, q_rows, NULL, 0, m);
    return bn_chk_verify(&c, delta, proof);
}
