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

int bh_simd(void) { return bh_simd_on(); }
void bh_force_portable(int on) { g_force_portable = on != 0; }
