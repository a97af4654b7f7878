/* CPU features and the run-time choice of paths. bn_force_sse(1) makes every kernel (and silent_ot.c)
 * take its SSE/AES-NI path, so that the tests can run the fallbacks on a CPU with AVX2, VAES and BMI2. */
#include "common.h"

#include <cpuid.h>

int bn_cpu_ok(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return (c & bit_AES) && (c & bit_SSE4_1) && (c & bit_SSSE3) && (c & bit_PCLMUL) ? 1 : 0;
}

/* AVX2 usable (cpuid and OS-saved YMM state); VAES on top of it */
static int detect_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & bit_OSXSAVE) || !(c & bit_AVX)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & 6) != 6) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & bit_AVX2) ? 1 : 0;
}

static int detect_vaes(void) {
    unsigned a, b, c, d;
    if (!detect_avx2()) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (c & (1u << 9)) ? 1 : 0; /* VAES: leaf 7 ECX bit 9 */
}

static int detect_vclmul(void) {
    unsigned a, b, c, d;
    if (!detect_avx2()) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (c & (1u << 10)) ? 1 : 0; /* VPCLMULQDQ: leaf 7 ECX bit 10 */
}

/* AVX-512F usable: cpuid and OS-saved opmask and ZMM state (XCR0 bits 5..7) */
static int detect_avx512(void) {
    unsigned a, b, c, d;
    if (!detect_avx2()) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & 0xe6) != 0xe6) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 16)) ? 1 : 0; /* AVX512F: leaf 7 EBX bit 16 */
}

static int detect_gfni(void) {
    unsigned a, b, c, d;
    if (!detect_avx2()) return 0; /* the VEX-encoded (256-bit) forms */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (c & (1u << 8)) ? 1 : 0; /* GFNI: leaf 7 ECX bit 8 */
}

static int detect_bmi2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 8)) ? 1 : 0;
}

static int have_vaes = -1, have_vclmul = -1, have_avx512 = -1, have_avx2 = -1, have_bmi2 = -1, have_gfni = -1;
static int force_sse = 0, no_gfni = 0;

int bn_have_vaes(void) {
    if (have_vaes < 0) have_vaes = detect_vaes() && !getenv("BUNET_NO_VAES");
    return have_vaes && !force_sse;
}

int bn_have_vclmul(void) {
    if (have_vclmul < 0) have_vclmul = detect_vclmul() && !getenv("BUNET_NO_VAES");
    return have_vclmul && !force_sse;
}

int bn_use_avx512(void) {
    if (have_avx512 < 0) have_avx512 = detect_avx512() && !getenv("BUNET_NO_AVX512");
    return have_avx512 && !force_sse;
}

int bn_use_avx2(void) {
    if (have_avx2 < 0) have_avx2 = detect_avx2() && !getenv("BUNET_NO_AVX2");
    return have_avx2 && !force_sse;
}

int bn_use_bmi2(void) {
    if (have_bmi2 < 0) have_bmi2 = detect_bmi2() && !getenv("BUNET_NO_BMI2");
    return have_bmi2 && !force_sse;
}

int bn_use_gfni(void) {
    if (have_gfni < 0) have_gfni = detect_gfni() && !getenv("BUNET_NO_GFNI");
    return have_gfni && !force_sse && !no_gfni && bn_use_avx2();
}

void bn_force_sse(int on) { force_sse = on != 0; }

void bn_force_no_gfni(int on) { no_gfni = on != 0; }

int bn_simd_paths(void) { return bn_use_avx2() | bn_have_vaes() << 1 | bn_use_bmi2() << 2 | bn_use_gfni() << 3; }
