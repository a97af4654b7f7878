/* BUNET native garbled-circuit engine: definitions shared by the modules of native/gc/.
 *
 * Modules: cpu (feature detection, the SSE-only switch), aes (AES, the tweakable hash, row and gate
 * keys, the PRG), transpose (128 x 128 bit tiles), ot_ext (SoftSpoken/IKNP OT extension), ot_check
 * (its consistency check), luts (look-up tables), pack (bit packing), garble / evaluate (one chunk of
 * a circuit, per party), run (the chunk loop).
 *
 * - AES-NI hash H_j(x, t) = pi_j(sigma(x) ^ t) ^ sigma(x), sigma(xl, xh) = (xh, xl ^ xh)
 *   (tweakable MMO with an orthomorphism, Guo-Katz-Wang-Yu), t unique per gate and instance in
 *   the session; pi_j is AES under a per-gate, per-chunk key (look-up, post-message and setup rows: per
 *   group of 2^16 tweaks) derived from the session key both parties' fresh nonces determine
 *   (multi-instance security in the style of emp's MITCCRH). 256-bit VAES when the CPU has it.
 * - AES-CTR PRG seeded from getrandom() (Delta, and the garbler's random control bits).
 * - free-XOR with three-halves AND gates (Rosulek-Roy 2021: 1.5 labels + 5 bits each, see th_rmul) and
 *   garbler half gates (1 label) for ANDs with a garbler-known bit.
 * - IKNP OT extension (columns by AES-CTR under the base-OT keys, SSE2 movemask transpose).
 * - a tiny circuit interpreter: the circuit (built in Python, the same for all n instances)
 *   is a list of gates; every gate is applied to a chunk of NB instances in one loop, so
 *   hashing is batched (8 AES blocks in flight) and there is no per-gate Python call.
 *
 * Garbling/evaluation code is constant time: selections by secret bits use masks, never
 * branches or secret-dependent indices.
 */
#ifndef BN_GC_COMMON_H
#define BN_GC_COMMON_H

#include "bunet_gc.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <wmmintrin.h>

typedef __m128i block;

#define NB 128 /* instances per internal chunk (a multiple of 64, at most 512) */
#define NW (NB / 64) /* 64-bit words of one bit per instance */
_Static_assert(NB % 64 == 0 && NB <= 512, "NB: a multiple of 64, at most 512 (control-bit words from 8 PRG blocks)");

/* run-time paths (cpu.c): each 1 when the CPU has it, BUNET_NO_<X> is unset and bn_force_sse(1) is not in effect */
int bn_use_avx2(void);
int bn_use_bmi2(void);
int bn_use_gfni(void); /* GFNI with AVX2 (the OT rows' bit transpose); off also with bn_force_no_gfni(1) */
/* VAES: bn_have_vaes() (public); 256-bit carry-less multiplication (VPCLMULQDQ, off with VAES): */
int bn_have_vclmul(void);
int bn_use_avx512(void); /* AVX-512F (the OT check's 512-bit VAES path, with VAES and VPCLMULQDQ) */

/* ---------------------------------------------------------------- AES */

static inline block expand_step(block t1, block t2) {
    block t3;
    t2 = _mm_shuffle_epi32(t2, 0xff);
    t3 = _mm_slli_si128(t1, 4);
    t1 = _mm_xor_si128(t1, t3);
    t3 = _mm_slli_si128(t3, 4);
    t1 = _mm_xor_si128(t1, t3);
    t3 = _mm_slli_si128(t3, 4);
    t1 = _mm_xor_si128(t1, t3);
    return _mm_xor_si128(t1, t2);
}

typedef struct { block k[11]; } aeskey;

static inline void load_key(aeskey *K, const uint8_t *rk) {
    for (int i = 0; i < 11; i++) K->k[i] = _mm_loadu_si128((const block *)(rk + 16 * i));
}

/* encrypt cnt (<= 8) blocks in place, all in flight */
#define AES_N(K, x, N)                                                        \
    do {                                                                      \
        for (int _i = 0; _i < (N); _i++) x[_i] = _mm_xor_si128(x[_i], (K)->k[0]); \
        for (int _r = 1; _r < 10; _r++)                                       \
            for (int _i = 0; _i < (N); _i++) x[_i] = _mm_aesenc_si128(x[_i], (K)->k[_r]); \
        for (int _i = 0; _i < (N); _i++) x[_i] = _mm_aesenclast_si128(x[_i], (K)->k[10]); \
    } while (0)

static inline void aes8(const aeskey *K, block *x) { AES_N(K, x, 8); }
static inline void aes1(const aeskey *K, block *x) { AES_N(K, x, 1); }

static inline block sigma(block a) {
    return _mm_xor_si128(_mm_shuffle_epi32(a, 78), _mm_and_si128(a, _mm_set_epi64x(-1, 0)));
}

/* AES-128 key expansion of one block */
static inline void keyexp_block(block key, aeskey *out) {
    block *rk = out->k;
    rk[0] = key;
#define EXP(i, rc) rk[i] = expand_step(rk[i - 1], _mm_aeskeygenassist_si128(rk[i - 1], rc))
    EXP(1, 0x01); EXP(2, 0x02); EXP(3, 0x04); EXP(4, 0x08); EXP(5, 0x10);
    EXP(6, 0x20); EXP(7, 0x40); EXP(8, 0x80); EXP(9, 0x1b); EXP(10, 0x36);
#undef EXP
}

static inline uint64_t lsb(block x) { return (uint64_t)_mm_cvtsi128_si64(x) & 1; }
static inline block bm(uint64_t bit) { return _mm_set1_epi64x(-(long long)bit); }
static inline uint64_t lo64(block x) { return (uint64_t)_mm_cvtsi128_si64(x); }
static inline uint64_t hi64(block x) { return (uint64_t)_mm_extract_epi64(x, 1); }
static inline uint64_t mmask(uint32_t m) { return m >= 64 ? ~0ULL : ((1ULL << m) - 1); }

#endif
