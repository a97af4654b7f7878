/* Run-time choice between the AVX2+FMA (with AVX-512VL's rotations where present) and the portable paths. */
#include "common.h"


static int g_force_portable = 0, g_no_vl = 0;

/* The CPU's, probed once: 1 AVX2+FMA+POPCNT, 2 AVX-512F+VL as well (unless BUNET_NO_AVX512 is set). */
static int features(void) {
#ifdef BH_X86
    static int f = -1;
    if (f < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
        int vl = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && !getenv("BUNET_NO_AVX512");
        f = avx2 | (avx2 && vl) << 1;
    }
    return f;
#else
    return 0;
#endif
}

int bh_simd_on(void) { return (features() & 1) && !g_force_portable; }

int bh_vl_on(void) { return (features() & 2) && bh_simd_on() && !g_no_vl; }

void bh_force_no_avx512(int on) { g_no_vl = on != 0; }

int bh_simd(void) { return bh_simd_on() | bh_vl_on() << 1; }
void bh_force_portable(int on) { g_force_portable = on != 0; }
