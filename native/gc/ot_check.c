#include "common.h"

/* ---------------------------------------------------------------- OT consistency check
 * The KOS check as SoftSpoken (Roy, CRYPTO 2022) uses it for a malicious receiver: with challenges
 * chi_i = AES_seed(i) in GF(2^128) (x^128 + x^7 + x^2 + x + 1), the receiver sends x~ = sum x_i chi_i and
 * t~ = sum chi_i t_i; the sender accepts iff sum chi_i q_i = t~ ^ x~ Delta. Products are summed
 * unreduced (XOR is linear) and reduced once. The caller pads the rows with >= 128 + 40 random choices
 * so that x~ is uniform (bunet/gc/otcheck.py). */
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

/* sum chi_i rows_i (reduced), and, with choice, sum choice_i chi_i (constant time: masks). Karatsuba with
 * the three partial products summed separately over all rows and combined once (all steps are linear). */
static void ot_check_sums(const uint8_t *rows, const uint8_t *choice, uint64_t m, const uint8_t *seed,
                          block *rsum, block *xsum) {
    uint8_t rk[176];
    bn_aes_keysched(seed, rk);
    aeskey K;
    load_key(&K, rk);
    block lo = _mm_setzero_si128(), hi = lo, mid = lo, xs = lo, chi[8];
    for (uint64_t i0 = 0; i0 < m; i0 += 8) {
        const uint64_t cnt = m - i0 < 8 ? m - i0 : 8;
        for (int j = 0; j < 8; j++) chi[j] = _mm_set_epi64x(0x4348490000000000LL, (long long)(i0 + j)); /* "CHI" */
        aes8(&K, chi);
        const uint64_t bits = choice ? choice[i0 / 8] : 0; /* i0 % 8 == 0 */
        for (uint64_t j = 0; j < cnt; j++) {
            const block a = chi[j], b = _mm_loadu_si128((const block *)(rows + 16 * (i0 + j)));
            lo = _mm_xor_si128(lo, _mm_clmulepi64_si128(a, b, 0x00));
            hi = _mm_xor_si128(hi, _mm_clmulepi64_si128(a, b, 0x11));
            mid = _mm_xor_si128(mid, _mm_clmulepi64_si128(_mm_xor_si128(a, _mm_shuffle_epi32(a, 0x4e)),
                                                          _mm_xor_si128(b, _mm_shuffle_epi32(b, 0x4e)), 0x00));
            xs = _mm_xor_si128(xs, _mm_and_si128(a, _mm_set1_epi64x(-(long long)((bits >> j) & 1))));
        }
    }
    mid = _mm_xor_si128(mid, _mm_xor_si128(lo, hi));
    *rsum = gf_reduce(_mm_xor_si128(lo, _mm_slli_si128(mid, 8)), _mm_xor_si128(hi, _mm_srli_si128(mid, 8)));
    *xsum = xs;
}

/* receiver: proof = (x~, t~) over its t rows and choice bits */
void bn_ot_check_prove(const uint8_t *t_rows, const uint8_t *choice, uint64_t m, const uint8_t *seed,
                       uint8_t *proof) {
    block t, x;
    ot_check_sums(t_rows, choice, m, seed, &t, &x);
    _mm_storeu_si128((block *)proof, x);
    _mm_storeu_si128((block *)(proof + 16), t);
}

/* sender: 1 if sum chi_i q_i == t~ ^ x~ Delta */
int bn_ot_check_verify(const uint8_t *q_rows, const uint8_t *delta, uint64_t m, const uint8_t *seed,
                       const uint8_t *proof) {
    block q, unused, lo = _mm_setzero_si128(), hi = lo;
    ot_check_sums(q_rows, NULL, m, seed, &q, &unused);
    gf_mul_acc(_mm_loadu_si128((const block *)proof), _mm_loadu_si128((const block *)delta), &lo, &hi);
    const block want = _mm_xor_si128(gf_reduce(lo, hi), _mm_loadu_si128((const block *)(proof + 16)));
    return _mm_test_all_zeros(_mm_xor_si128(q, want), _mm_set1_epi8(-1));
}
