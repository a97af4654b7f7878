/* Run-time choice between the AVX2+FMA and the portable paths. */
#include "common.h"


static int g_force_portable = 0;

int bh_simd_on(void) {
#ifdef BH_X86
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
    }
    return have && !g_force_portable;
#else
    return 0;
#endif
}

static int g_no_vl = 0;

int bh_vl_on(void) {
#ifdef BH_X86
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && !getenv("BUNET_NO_AVX512");
    }
    return have && bh_simd_on() && !g_no_vl;
#else
    return 0;
#endif
}

void bh_force_no_avx512(int on) { g_no_vl = on != 0; }

int bh_simd(void) { return bh_simd_on() | bh_vl_on() << 1; }
void bh_force_portable(int on) { g_force_portable = on != 0; }
