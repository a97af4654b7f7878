/* Native HomConv kernels: shared definitions of the modules in native/he/ (see bunet_he.h
 * for the interface and layouts).
 *
 * Arithmetic.  Residues are integers held in doubles.  x mod p is computed as
 * x - rint(x * (1/p)) * p: for |x| < 2^52 the quotient estimate is within 1/2 + 2^-20 of
 * x / p, so the result is a centred residue (|r| <= p/2 + 1) and every step is exact.
 * Products of two centred residues (< 2^42) and sums of up to 2^10 of them stay exact.
 *
 * Dispatch.  Hot loops (NTT butterflies, the product micro-kernels) have AVX2+FMA intrinsics
 * and a portable scalar twin; per-ciphertext element-wise loops are written once as
 * always-inline bodies and instantiated for both targets.  The choice is made at run time
 * (__builtin_cpu_supports), so the module runs on any x86-64 (or other) CPU.  Both paths
 * perform the same IEEE operations (FMA is used only where the operands make it exact),
 * so their results are bit-identical.
 */
#ifndef BH_COMMON_H
#define BH_COMMON_H

#include "bunet_he.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BH_X86 1
#define BH_AVX2 __attribute__((target("avx2,fma,popcnt")))
#else
#define BH_AVX2
#endif

#define BH_INLINE static inline __attribute__((always_inline))
#define MAGIC 6755399441055744.0            /* 1.5 * 2^52: (x + MAGIC) - MAGIC = rint(x), |x| < 2^51 */
#define MAGIC_BITS 0x4338000000000000ULL

/* 1 when the AVX2+FMA path is in use (cpu.c) */
int bh_simd_on(void);
/* 1 when AVX-512VL is there too (its rotations in ChaCha20), BUNET_NO_AVX512 unset and not forced off */
int bh_vl_on(void);

#define PREFETCH_AHEAD 16

#ifdef BH_X86
/* x mod p, centred, of four lanes (P: the prime, PI: 1 / p, in scope) */
#define VRED(x) _mm256_fnmadd_pd(_mm256_round_pd(_mm256_mul_pd((x), PI), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), P, (x))
#endif

/* ------------------------------------------------------------------------------------------ */
/* little-endian byte helpers                                                                 */

BH_INLINE uint32_t ld32(const uint8_t *s) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint32_t v;
    memcpy(&v, s, 4);
    return v;
#else
    return (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
#endif
}

BH_INLINE uint64_t ld64(const uint8_t *s) { return (uint64_t)ld32(s) | (uint64_t)ld32(s + 4) << 32; }

BH_INLINE void st32(uint8_t *d, uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(d, &v, 4);
#else
    for (int i = 0; i < 4; i++) d[i] = (uint8_t)(v >> (8 * i));
#endif
}

BH_INLINE void st64(uint8_t *d, uint64_t v) {
    st32(d, (uint32_t)v);
    st32(d + 4, (uint32_t)(v >> 32));
}

/* ------------------------------------------------------------------------------------------ */
/* scalar residue arithmetic                                                                  */

BH_INLINE double rnd(double x) { return (x + MAGIC) - MAGIC; }
BH_INLINE double red(double x, double p, double pinv) { return x - rnd(x * pinv) * p; }
/* integer in [0, 2^52) -> double without a (non-vectorisable) integer conversion */
BH_INLINE double u52_to_d(uint64_t m) {
    union { uint64_t u; double d; } v = {m | 0x4330000000000000ULL};
    return v.d - 4503599627370496.0;
}
/* rint(x) as int64 for |x| < 2^51 */
BH_INLINE int64_t d_to_i(double x) {
    union { double d; uint64_t u; } v = {x + MAGIC};
    return (int64_t)(v.u - MAGIC_BITS);
}


#endif
