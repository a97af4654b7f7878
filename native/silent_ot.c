/* BUNET silent correlated-OT extension: Ferret (Yang, Weng, Lan, Zhang, Wang, CCS 2020), semi-honest,
 * primal LPN with regular noise over F_2 and a d = 10 local linear code.
 *
 * One iteration turns M = k + t*h base COTs (q_i = t_i ^ c_i Delta) into n = t * 2^h COTs:
 *   - multi-point COT: t single-point COTs, each a half-tree GGM tree of depth h (Guo et al., EUROCRYPT
 *     2023: one AES per node, the two children of a node sum to it, level 1 is (s, s ^ Delta), so every
 *     level sums to Delta). The receiver's punctured leaf alpha of tree tau is given by the choice bits r_i
 *     of its h base COTs (alpha bit i = NOT r_i, most significant first), so nothing goes receiver ->
 *     sender. For level i the sender sends the level's left sum K_0 ^ q_i; the receiver's t_i opens
 *     K_{r_i} = K_0 ^ r_i Delta, the sum of its path's sibling's side, and it rebuilds every leaf but
 *     alpha; leaf alpha is the XOR of the others (= v_alpha ^ Delta): w = v ^ e Delta, e one 1 per tree.
 *   - LPN: output j = e_j ^ <A_j, u> (choice) with A_j's 10 positions in [0, k) from AES under a fixed
 *     public key; the sender's value y_j = v_j ^ XOR q_u[A_j], the receiver's z_j = w_j ^ XOR t_u[A_j].
 * Messages: t * 16 h bytes sender -> receiver, nothing back.
 *
 * Parameters: only the vetted table below (emp-ot's tuning.h, ~128-bit against the published regular-LPN
 * attacks by the LPN estimator; see docs/protocol.md); a test-only set is accepted only when asked for.
 * Constant time: the receiver's punctured index (its secret choice bits) never steers a branch or an
 * address; it enters masks only. LPN positions are public. */
#include "silent_ot.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <wmmintrin.h>

#include "bunet_gc.h"
#include "gc/common.h" /* bn_use_avx512 */

typedef __m128i block;
typedef struct {
    block k[11];
} sot_key;

#define SOT_D 10 /* nonzeros per row of the local linear code */

static const struct {
    uint32_t t, logk, h;
    int test_only;
} SOT_TABLE[] = {
    {850, 16, 10, 0},  /* ferret_b10: n = 870,400, k = 65,536 */
    {1170, 17, 11, 0}, /* ferret_b11: n = 2,396,160, k = 131,072 */
    {1520, 18, 12, 0}, /* ferret_b12: n = 6,225,920, k = 262,144 */
    {1900, 19, 13, 0}, /* ferret_b13: n = 15,564,800, k = 524,288 */
    {16, 10, 8, 1},    /* tests only, NOT secure: n = 4,096, k = 1,024 */
    {32, 11, 8, 1},    /* tests only, NOT secure: n = 8,192, k = 2,048 */
};
#define SOT_NPARAM (sizeof SOT_TABLE / sizeof SOT_TABLE[0])

int bn_sot_param(uint32_t id, uint32_t *t, uint32_t *logk, uint32_t *h, int *test_only) {
    if (id >= SOT_NPARAM) return BN_EINVAL;
    *t = SOT_TABLE[id].t;
    *logk = SOT_TABLE[id].logk;
    *h = SOT_TABLE[id].h;
    *test_only = SOT_TABLE[id].test_only;
    return 0;
}

int bn_sot_check(uint32_t t, uint32_t logk, uint32_t h, int allow_test) {
    if (logk > 25 || h > 20) return BN_EPARAMS; /* the positions' 25-bit fields; tree index arithmetic */
    for (size_t i = 0; i < SOT_NPARAM; i++)
        if (SOT_TABLE[i].t == t && SOT_TABLE[i].logk == logk && SOT_TABLE[i].h == h)
            return SOT_TABLE[i].test_only && !allow_test ? -2 : 0;
    return BN_EPARAMS;
}

uint64_t bn_sot_msg_len(uint32_t t, uint32_t h) { return (uint64_t)t * 16 * (uint64_t)h; }

static void load(sot_key *K, const uint8_t *rk) {
    for (int i = 0; i < 11; i++) K->k[i] = _mm_loadu_si128((const block *)(rk + 16 * i));
}

static inline void aes_n(const sot_key *K, block *x, int n) {
    for (int i = 0; i < n; i++) x[i] = _mm_xor_si128(x[i], K->k[0]);
    for (int r = 1; r < 10; r++)
        for (int i = 0; i < n; i++) x[i] = _mm_aesenc_si128(x[i], K->k[r]);
    for (int i = 0; i < n; i++) x[i] = _mm_aesenclast_si128(x[i], K->k[10]);
}

static inline block mask_if(uint64_t bit) { return _mm_set1_epi64x(-(long long)(bit & 1)); }

/* all ones iff a == b, without a branch (a, b < 2^63) */
static inline uint64_t eq_mask(uint64_t a, uint64_t b) { return (uint64_t)0 - (((a ^ b) - 1) >> 63); }

/* The public LPN code: row j's SOT_D positions in [0, 2^logk), from AES-CTR under a fixed key (the first
 * 16 bytes of SHA-256("BUNET silent OT LPN code v1")): blocks 2j, 2j + 1 as 256 bits, position l is
 * bits 25 l .. 25 l + 24, reduced mod 2^logk (logk <= 25). */
static const uint8_t LPN_KEY[16] = {0x3b, 0x51, 0x9e, 0x0c, 0x6a, 0xd2, 0x47, 0x18,
                                    0xc4, 0x8f, 0x22, 0xe9, 0x71, 0x05, 0xb6, 0x3d};

#define POS_ROWS 8 /* rows per step: 16 AES blocks in flight */

static inline void positions_of(const uint64_t *w, uint32_t mk, uint32_t *pos) {
    for (int l = 0; l < SOT_D; l++) {
        const int bit = 25 * l, i = bit >> 6, off = bit & 63;
        uint64_t v = w[i] >> off;
        if (off > 39) v |= w[i + 1] << (64 - off);
        pos[l] = (uint32_t)v & mk;
    }
}

static void lpn_positions_sse(const sot_key *K, uint64_t j0, uint32_t cnt, uint32_t logk, uint32_t *pos) {
    const uint32_t mk = (1u << logk) - 1;
    block x[2 * POS_ROWS];
    for (uint32_t r = 0; r < cnt; r += POS_ROWS) {
        const uint32_t rows = cnt - r < POS_ROWS ? cnt - r : POS_ROWS;
        for (uint32_t b = 0; b < 2 * rows; b++) x[b] = _mm_set_epi64x(0x4c504e00, (long long)(2 * (j0 + r) + b));
        aes_n(K, x, (int)(2 * rows));
        uint64_t w[4 * POS_ROWS]; /* stored, not cast: reading a vector through uint64_t * breaks aliasing */
        for (uint32_t b = 0; b < 2 * rows; b++) _mm_storeu_si128((block *)(w + 2 * b), x[b]);
        for (uint32_t q = 0; q < rows; q++) positions_of(w + 4 * q, mk, pos + (r + q) * SOT_D);
    }
}

/* the same with 256-bit VAES (one row per register) */
__attribute__((target("avx2,vaes"))) static void lpn_positions_vaes(const sot_key *K, uint64_t j0, uint32_t cnt,
                                                                    uint32_t logk, uint32_t *pos) {
    const uint32_t mk = (1u << logk) - 1;
    __m256i rk[11];
    for (int i = 0; i < 11; i++) rk[i] = _mm256_broadcastsi128_si256(K->k[i]);
    __m256i x[POS_ROWS];
    uint32_t r = 0;
    for (; r + POS_ROWS <= cnt; r += POS_ROWS) {
        for (uint32_t q = 0; q < POS_ROWS; q++) {
            const long long c = (long long)(2 * (j0 + r + q));
            x[q] = _mm256_xor_si256(_mm256_set_epi64x(0x4c504e00, c + 1, 0x4c504e00, c), rk[0]);
        }
        for (int i = 1; i < 10; i++)
            for (uint32_t q = 0; q < POS_ROWS; q++) x[q] = _mm256_aesenc_epi128(x[q], rk[i]);
        uint64_t w[4 * POS_ROWS];
        for (uint32_t q = 0; q < POS_ROWS; q++)
            _mm256_storeu_si256((__m256i *)(w + 4 * q), _mm256_aesenclast_epi128(x[q], rk[10]));
        for (uint32_t q = 0; q < POS_ROWS; q++) positions_of(w + 4 * q, mk, pos + (r + q) * SOT_D);
    }
    if (r < cnt) lpn_positions_sse(K, j0 + r, cnt - r, logk, pos + r * SOT_D);
}

/* logk <= 16: 16-bit fields, reduced mod 2^logk; rows j0 .. j0 + cnt - 1 (j0 a multiple of 4) from blocks
 * 5 (j0 / 4) + b, b < 5 per group of 4 rows (40 fields), so 1.25 blocks a row and no shifts across words */
#define POS16_GROUPS 4 /* groups of 4 rows per step: 20 AES blocks in flight */

static void lpn_positions16(const sot_key *K, uint64_t j0, uint64_t cnt, uint32_t logk, uint16_t *pos) {
    const uint16_t mk = (uint16_t)((1u << logk) - 1);
    block x[5 * POS16_GROUPS];
    for (uint64_t r = 0; r < cnt; r += 4 * POS16_GROUPS) {
        const uint64_t rows = cnt - r < 4 * POS16_GROUPS ? cnt - r : 4 * POS16_GROUPS, groups = (rows + 3) / 4;
        const uint64_t g0 = (j0 + r) / 4;
        for (uint64_t b = 0; b < 5 * groups; b++) x[b] = _mm_set_epi64x(0x4c504e10, (long long)(5 * g0 + b));
        aes_n(K, x, (int)(5 * groups));
        uint16_t f[40 * POS16_GROUPS];
        for (uint64_t b = 0; b < 5 * groups; b++) _mm_storeu_si128((block *)(f + 8 * b), x[b]);
        for (uint64_t i = 0; i < rows * SOT_D; i++) pos[r * SOT_D + i] = f[i] & mk;
    }
}

/* the same with VAES: the 20 blocks of 16 rows in 10 registers, masked and stored as they are; the tail
 * as above */
__attribute__((target("avx2,vaes"))) static void lpn_positions16_vaes(const sot_key *K, uint64_t j0, uint64_t cnt,
                                                                      uint32_t logk, uint16_t *pos) {
    const __m256i mk = _mm256_set1_epi16((short)((1u << logk) - 1));
    __m256i rk[11];
    for (int i = 0; i < 11; i++) rk[i] = _mm256_broadcastsi128_si256(K->k[i]);
    uint64_t r = 0;
    for (; r + 4 * POS16_GROUPS <= cnt; r += 4 * POS16_GROUPS) {
        const long long b0 = (long long)(5 * ((j0 + r) / 4));
        __m256i x[5 * POS16_GROUPS / 2];
        for (int q = 0; q < 5 * POS16_GROUPS / 2; q++)
            x[q] = _mm256_xor_si256(_mm256_set_epi64x(0x4c504e10, b0 + 2 * q + 1, 0x4c504e10, b0 + 2 * q), rk[0]);
        for (int i = 1; i < 10; i++)
            for (int q = 0; q < 5 * POS16_GROUPS / 2; q++) x[q] = _mm256_aesenc_epi128(x[q], rk[i]);
        for (int q = 0; q < 5 * POS16_GROUPS / 2; q++)
            _mm256_storeu_si256((__m256i *)(pos + r * SOT_D + 16 * q),
                                _mm256_and_si256(_mm256_aesenclast_epi128(x[q], rk[10]), mk));
    }
    if (r < cnt) lpn_positions16(K, j0 + r, cnt - r, logk, pos + r * SOT_D);
}

static void lpn_key(sot_key *K) {
    uint8_t rk[176];
    bn_aes_keysched(LPN_KEY, rk);
    load(K, rk);
}

int bn_sot_positions(uint32_t logk, uint64_t n, uint16_t *pos) {
    if (logk > 16 || n % 4) return BN_EINVAL;
    sot_key K;
    lpn_key(&K);
    if (bn_have_vaes())
        lpn_positions16_vaes(&K, 0, n, logk, pos);
    else
        lpn_positions16(&K, 0, n, logk, pos);
    return 0;
}

#define LPN_BATCH 256

/* Row i's sum over its SOT_D 32-bit positions p (k > 2^16; the 16-bit ones of the vetted main set below):
 * out[i] = in[i] ^ XOR base[p] (16-byte values, two accumulators for the loads' latency) and
 * out_bits[i] ^= XOR base_bits[p] (0/1 bytes). */
static void lpn_blocks_p32(uint64_t cnt, const uint32_t *pos, const block *base, const block *in, block *out) {
    for (uint64_t i = 0; i < cnt; i++) {
        const uint32_t *p = pos + i * SOT_D;
        block a = _mm_xor_si128(_mm_loadu_si128(in + i), _mm_loadu_si128(base + p[0]));
        block b = _mm_loadu_si128(base + p[1]);
        for (int l = 2; l < SOT_D; l += 2) {
            a = _mm_xor_si128(a, _mm_loadu_si128(base + p[l]));
            b = _mm_xor_si128(b, _mm_loadu_si128(base + p[l + 1]));
        }
        _mm_storeu_si128(out + i, _mm_xor_si128(a, b));
    }
}

static void lpn_bits_p32(uint64_t cnt, const uint32_t *pos, const uint8_t *base_bits, uint8_t *out_bits) {
    for (uint64_t i = 0; i < cnt; i++) {
        const uint32_t *p = pos + i * SOT_D;
        uint8_t acc = out_bits[i];
        for (int l = 0; l < SOT_D; l++) acc ^= base_bits[p[l]];
        out_bits[i] = acc & 1;
    }
}

/* A row's ten 16-bit positions in three loads (two 8-byte words and a 4-byte one, little-endian), each
 * position then a shift and a mask: the loop is bound by its loads, and this takes seven of the
 * ten index loads off the load ports (about a third less time per row than one load per position). */
static inline void row_words16(const uint16_t *p, uint64_t w[3]) {
    uint32_t w2;
    memcpy(&w[0], p, 8);
    memcpy(&w[1], p + 4, 8);
    memcpy(&w2, p + 8, 4);
    w[2] = w2;
}

/* the byte offset (16 * position) of field f (0 .. 3, a constant) of word x */
static inline uint64_t off16(uint64_t x, int f) { return (f ? x >> (16 * f - 4) : x << 4) & 0xffff0; }
#define AT16(base, x, f) _mm_loadu_si128((const block *)((const uint8_t *)(base) + off16(x, f)))

_Static_assert(SOT_D == 10, "lpn_blocks_p16 and lpn_bits_p16 read ten positions a row");

static void lpn_blocks_p16(uint64_t cnt, const uint16_t *pos, const block *base, const block *in, block *out) {
    for (uint64_t i = 0; i < cnt; i++) {
        uint64_t w[3];
        row_words16(pos + i * SOT_D, w);
        block a = _mm_xor_si128(_mm_loadu_si128(in + i), AT16(base, w[0], 0));
        block b = AT16(base, w[0], 1);
        a = _mm_xor_si128(a, AT16(base, w[0], 2));
        b = _mm_xor_si128(b, AT16(base, w[0], 3));
        a = _mm_xor_si128(a, AT16(base, w[1], 0));
        b = _mm_xor_si128(b, AT16(base, w[1], 1));
        a = _mm_xor_si128(a, AT16(base, w[1], 2));
        b = _mm_xor_si128(b, AT16(base, w[1], 3));
        a = _mm_xor_si128(a, AT16(base, w[2], 0));
        b = _mm_xor_si128(b, AT16(base, w[2], 1));
        _mm_storeu_si128(out + i, _mm_xor_si128(a, b));
    }
}

static void lpn_bits_p16(uint64_t cnt, const uint16_t *pos, const uint8_t *base_bits, uint8_t *out_bits) {
    for (uint64_t i = 0; i < cnt; i++) {
        uint64_t w[3];
        row_words16(pos + i * SOT_D, w);
        uint8_t acc = out_bits[i];
        for (int l = 0; l < SOT_D; l++) acc ^= base_bits[(w[l / 4] >> (16 * (l % 4))) & 0xffff];
        out_bits[i] = acc & 1;
    }
}

/* The LPN step over rows j0 .. j0 + n - 1 (j0 a multiple of 4): out = in ^ the rows' sums of base entries
 * (16-byte values, if base; in and out point at row j0's value, in may be out) and/or out_bits ^= the
 * sums of base_bits (0/1 bytes, if base_bits; out_bits points at row j0's). The positions come from pos
 * (16-bit, SOT_D a row: bn_sot_positions, made once per parameter set and shared by every iteration and
 * both parties) or, without it, are made here. */
static void lpn(uint64_t j0, uint64_t n, uint32_t logk, const block *base, const block *in, block *out,
                const uint8_t *base_bits, uint8_t *out_bits, const uint16_t *pos) {
    if (pos) {
        if (base) lpn_blocks_p16(n, pos + j0 * SOT_D, base, in, out);
        if (base_bits) lpn_bits_p16(n, pos + j0 * SOT_D, base_bits, out_bits);
        return;
    }
    sot_key K;
    lpn_key(&K);
    uint16_t p16[LPN_BATCH * SOT_D];
    uint32_t p32[LPN_BATCH * SOT_D];
    for (uint64_t r = 0; r < n; r += LPN_BATCH) {
        const uint64_t cnt = n - r < LPN_BATCH ? n - r : LPN_BATCH;
        if (logk <= 16) {
            if (bn_have_vaes())
                lpn_positions16_vaes(&K, j0 + r, cnt, logk, p16);
            else
                lpn_positions16(&K, j0 + r, cnt, logk, p16);
            if (base) lpn_blocks_p16(cnt, p16, base, in + r, out + r);
            if (base_bits) lpn_bits_p16(cnt, p16, base_bits, out_bits + r);
        } else {
            if (bn_have_vaes())
                lpn_positions_vaes(&K, j0 + r, (uint32_t)cnt, logk, p32);
            else
                lpn_positions_sse(&K, j0 + r, (uint32_t)cnt, logk, p32);
            if (base) lpn_blocks_p32(cnt, p32, base, in + r, out + r);
            if (base_bits) lpn_bits_p32(cnt, p32, base_bits, out_bits + r);
        }
    }
}

/* Half-tree GGM (Guo, Yang, Wang, Zhang, Xie, Liu, Zhao, EUROCRYPT 2023): level i - 1 (w nodes at
 * node[0 ..]) -> level i in place, children left = H(x) and right = x ^ H(x), so the two children of a node
 * sum to it; H(x) = pi(sigma(x)) ^ sigma(x), pi = AES under the public per-session key, sigma the engine's
 * linear orthomorphism (gc/common.h: (xl, xh) -> (xh, xl ^ xh)). Each call also returns the
 * XOR of the level's left and of its right children (*s0, *s1). Nodes are read before their children are
 * written, highest first, so nothing is overwritten before it is read. */
#define GGM_W 8 /* nodes per step: 8 AES blocks in flight */

static void ggm_level_sse(const sot_key *K, block *node, uint64_t width, block *s0, block *s1) {
    block l0 = _mm_setzero_si128(), l1 = _mm_setzero_si128();
    uint64_t j = width;
    while (j > 0) {
        const uint64_t cnt = j < GGM_W ? j : GGM_W, lo = j - cnt;
        block x[GGM_W], g[GGM_W], a[GGM_W];
        for (uint64_t q = 0; q < cnt; q++) {
            x[q] = node[lo + q];
            g[q] = sigma(x[q]);
            a[q] = _mm_xor_si128(g[q], K->k[0]);
        }
        for (int r = 1; r < 10; r++)
            for (uint64_t q = 0; q < cnt; q++) a[q] = _mm_aesenc_si128(a[q], K->k[r]);
        for (uint64_t q = cnt; q-- > 0;) {
            const block left = _mm_xor_si128(_mm_aesenclast_si128(a[q], K->k[10]), g[q]);
            const block right = _mm_xor_si128(left, x[q]);
            node[2 * (lo + q)] = left;
            node[2 * (lo + q) + 1] = right;
            l0 = _mm_xor_si128(l0, left);
            l1 = _mm_xor_si128(l1, right);
        }
        j = lo;
    }
    *s0 = _mm_xor_si128(*s0, l0);
    *s1 = _mm_xor_si128(*s1, l1);
}

/* the same with 512-bit VAES: 16 nodes per step in 4 registers; the rest with 4 nodes a step, then SSE */
#define GGM_W512 16
__attribute__((target("avx512f,vaes"))) static void ggm_level_vaes512(const sot_key *K, block *node, uint64_t width,
                                                                       block *s0, block *s1) {
    __m512i k[11];
    for (int i = 0; i < 11; i++) k[i] = _mm512_broadcast_i32x4(K->k[i]);
    const __m512i himask = _mm512_set_epi64(-1, 0, -1, 0, -1, 0, -1, 0); /* sigma, as in gc/common.h */
    /* children of nodes u, u + 1 of a register: [l_u r_u l_{u+1} r_{u+1}] as 64-bit lanes of (l, r) */
    const __m512i lo_idx = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i hi_idx = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
    uint64_t j = width;
    while (j >= 4) {
        const int regs = j >= GGM_W512 ? GGM_W512 / 4 : 1;
        const uint64_t lo = j - 4 * (uint64_t)regs;
        __m512i x[GGM_W512 / 4], g[GGM_W512 / 4], a[GGM_W512 / 4];
        for (int q = 0; q < regs; q++) {
            x[q] = _mm512_loadu_si512((const void *)(node + lo + 4 * q));
            g[q] = _mm512_xor_si512(_mm512_shuffle_epi32(x[q], (_MM_PERM_ENUM)0x4e), _mm512_and_si512(x[q], himask));
            a[q] = _mm512_xor_si512(g[q], k[0]);
        }
        for (int r = 1; r < 10; r++)
            for (int q = 0; q < regs; q++) a[q] = _mm512_aesenc_epi128(a[q], k[r]);
        for (int q = regs; q-- > 0;) {
            const __m512i left = _mm512_xor_si512(_mm512_aesenclast_epi128(a[q], k[10]), g[q]);
            const __m512i right = _mm512_xor_si512(left, x[q]);
            a0 = _mm512_xor_si512(a0, left);
            a1 = _mm512_xor_si512(a1, right);
            _mm512_storeu_si512((void *)(node + 2 * (lo + 4 * q)), _mm512_permutex2var_epi64(left, lo_idx, right));
            _mm512_storeu_si512((void *)(node + 2 * (lo + 4 * q) + 4), _mm512_permutex2var_epi64(left, hi_idx, right));
        }
        j = lo;
    }
    block f0 = _mm_setzero_si128(), f1 = _mm_setzero_si128();
    for (int u = 0; u < 4; u++) { /* fold the four lanes */
        f0 = _mm_xor_si128(f0, _mm512_extracti32x4_epi32(a0, 0));
        f1 = _mm_xor_si128(f1, _mm512_extracti32x4_epi32(a1, 0));
        a0 = _mm512_alignr_epi64(a0, a0, 2);
        a1 = _mm512_alignr_epi64(a1, a1, 2);
    }
    *s0 = _mm_xor_si128(*s0, f0);
    *s1 = _mm_xor_si128(*s1, f1);
    if (j) ggm_level_sse(K, node, j, s0, s1);
}

/* the same with 256-bit VAES: 8 nodes per step in 4 registers, then SSE */
__attribute__((target("avx2,vaes"))) static void ggm_level_vaes(const sot_key *K, block *node, uint64_t width,
                                                                block *s0, block *s1) {
    __m256i k[11];
    for (int i = 0; i < 11; i++) k[i] = _mm256_broadcastsi128_si256(K->k[i]);
    const __m256i himask = _mm256_set_epi64x(-1, 0, -1, 0);
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    uint64_t j = width;
    while (j >= GGM_W) {
        const uint64_t lo = j - GGM_W;
        __m256i x[GGM_W / 2], g[GGM_W / 2], a[GGM_W / 2];
        for (int q = 0; q < GGM_W / 2; q++) {
            x[q] = _mm256_loadu_si256((const __m256i *)(node + lo + 2 * q));
            g[q] = _mm256_xor_si256(_mm256_shuffle_epi32(x[q], 0x4e), _mm256_and_si256(x[q], himask));
            a[q] = _mm256_xor_si256(g[q], k[0]);
        }
        for (int r = 1; r < 10; r++)
            for (int q = 0; q < GGM_W / 2; q++) a[q] = _mm256_aesenc_epi128(a[q], k[r]);
        for (int q = GGM_W / 2; q-- > 0;) { /* node lo+2q+u -> 2(lo+2q+u), 2(lo+2q+u)+1: [l_u, r_u] */
            const __m256i left = _mm256_xor_si256(_mm256_aesenclast_epi128(a[q], k[10]), g[q]);
            const __m256i right = _mm256_xor_si256(left, x[q]);
            a0 = _mm256_xor_si256(a0, left);
            a1 = _mm256_xor_si256(a1, right);
            _mm256_storeu_si256((__m256i *)(node + 2 * (lo + 2 * q)), _mm256_permute2x128_si256(left, right, 0x20));
            _mm256_storeu_si256((__m256i *)(node + 2 * (lo + 2 * q) + 2), _mm256_permute2x128_si256(left, right, 0x31));
        }
        j = lo;
    }
    *s0 = _mm_xor_si128(*s0, _mm_xor_si128(_mm256_castsi256_si128(a0), _mm256_extracti128_si256(a0, 1)));
    *s1 = _mm_xor_si128(*s1, _mm_xor_si128(_mm256_castsi256_si128(a1), _mm256_extracti128_si256(a1, 1)));
    if (j) ggm_level_sse(K, node, j, s0, s1);
}

/* expand level i - 1 (width nodes) into level i; *s0, *s1 := the XOR of its left and of its right children */
static void ggm_level(const sot_key *K, block *node, uint64_t width, block *s0, block *s1) {
    *s0 = *s1 = _mm_setzero_si128();
    if (width >= 4 && bn_have_vaes() && bn_use_avx512())
        ggm_level_vaes512(K, node, width, s0, s1);
    else if (width >= GGM_W && bn_have_vaes())
        ggm_level_vaes(K, node, width, s0, s1);
    else
        ggm_level_sse(K, node, width, s0, s1);
}

/* node[a] = va, node[b] = vb (a != b) and every other node unchanged, touching every node (a and b are
 * the receiver's secret path: no branch or address depends on them) */
static void set_two_sse(block *node, uint64_t width, uint64_t a, block va, uint64_t b, block vb) {
    for (uint64_t y = 0; y < width; y++) {
        const block ma = _mm_set1_epi64x((long long)eq_mask(y, a)), mb = _mm_set1_epi64x((long long)eq_mask(y, b));
        const block keep = _mm_andnot_si128(_mm_or_si128(ma, mb), _mm_loadu_si128(node + y));
        node[y] = _mm_or_si128(keep, _mm_or_si128(_mm_and_si128(ma, va), _mm_and_si128(mb, vb)));
    }
}

__attribute__((target("avx512f"))) static void set_two_avx512(block *node, uint64_t width, uint64_t a, block va,
                                                              uint64_t b, block vb) {
    const __m512i A = _mm512_set1_epi64((long long)a), B = _mm512_set1_epi64((long long)b);
    const __m512i VA = _mm512_broadcast_i32x4(va), VB = _mm512_broadcast_i32x4(vb);
    __m512i idx = _mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0); /* each 64-bit lane: its node's index */
    const __m512i four = _mm512_set1_epi64(4);
    for (uint64_t y = 0; y < width; y += 4) {
        __m512i x = _mm512_loadu_si512((const void *)(node + y));
        x = _mm512_mask_blend_epi64(_mm512_cmpeq_epi64_mask(idx, A), x, VA);
        x = _mm512_mask_blend_epi64(_mm512_cmpeq_epi64_mask(idx, B), x, VB);
        _mm512_storeu_si512((void *)(node + y), x);
        idx = _mm512_add_epi64(idx, four);
    }
}

static void set_two(block *node, uint64_t width, uint64_t a, block va, uint64_t b, block vb) {
    if (width >= 4 && bn_use_avx512())
        set_two_avx512(node, width, a, va, b, vb);
    else
        set_two_sse(node, width, a, va, b, vb);
}

static int key_and_check(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *gk, sot_key *K) {
    if (bn_sot_check(t, logk, h, allow_test) != 0) return BN_EPARAMS;
    load(K, gk);
    return 0;
}

/* The sender's tree tau: level 1 is (s, s ^ Delta) for a fresh random s, so every level sums to Delta, and
 * its left sum K_0 at level i is sent as K_0 ^ q_i: the receiver, holding t_i = q_i ^ r_i Delta, opens
 * K_{r_i} = K_0 ^ r_i Delta, the sum of its path's sibling's side. One block per level, no hash. */
int bn_sot_send(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *gk, const uint8_t *delta,
                const uint8_t *base_q, uint8_t *msg, uint8_t *out_q, const uint16_t *pos) {
    sot_key K;
    if (key_and_check(t, logk, h, allow_test, gk, &K) != 0 || (pos && logk > 16)) return BN_EPARAMS;
    const uint64_t k = 1ULL << logk, leaves = 1ULL << h;
    const block D = _mm_loadu_si128((const block *)delta);
    const block *Q = (const block *)base_q + k;
    block *out = (block *)out_q, *cts = (block *)msg;
    uint8_t *roots = malloc(16 * (size_t)t);
    block *node = aligned_alloc(64, leaves * sizeof(block));
    const int rc = !roots || !node ? BN_ENOMEM : bn_prg_fill(roots, 16 * (size_t)t) != 0 ? BN_ERANDOM : 0;
    if (rc) {
        free(roots);
        free(node);
        return rc;
    }
    /* each tree in a cache-resident scratch, then its leaves through the LPN step straight into out */
    for (uint64_t tau = 0; tau < t; tau++) {
        const block s = _mm_loadu_si128((const block *)roots + tau);
        node[0] = s;
        node[1] = _mm_xor_si128(s, D);
        _mm_storeu_si128(cts + tau * h, _mm_xor_si128(s, _mm_loadu_si128(Q + tau * h)));
        for (uint32_t i = 2; i <= h; i++) {
            block s0, s1;
            ggm_level(&K, node, 1ULL << (i - 1), &s0, &s1);
            const uint64_t b = tau * h + i - 1;
            _mm_storeu_si128(cts + b, _mm_xor_si128(s0, _mm_loadu_si128(Q + b)));
        }
        lpn(tau * leaves, leaves, logk, (const block *)base_q, node, out + tau * leaves, NULL, NULL, pos);
    }
    memset(roots, 0, 16 * (size_t)t);
    memset(node, 0, leaves * sizeof(block));
    free(roots);
    free(node);
    return 0;
}

int bn_sot_choice(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *base_c, uint8_t *out_c,
                  const uint16_t *pos) {
    if (bn_sot_check(t, logk, h, allow_test) != 0 || (pos && logk > 16)) return BN_EPARAMS;
    const uint64_t k = 1ULL << logk, leaves = 1ULL << h;
    for (uint64_t tau = 0; tau < t; tau++) {
        uint64_t alpha = 0;
        for (uint32_t i = 1; i <= h; i++) alpha |= (uint64_t)(1 ^ (base_c[k + tau * h + i - 1] & 1)) << (h - i);
        uint8_t *o = out_c + tau * leaves;
        for (uint64_t y = 0; y < leaves; y++) o[y] = (uint8_t)(eq_mask(y, alpha) & 1);
    }
    lpn(0, (uint64_t)t * leaves, logk, NULL, NULL, NULL, base_c, out_c, pos);
    return 0;
}

/* The receiver's tree tau, its punctured leaf alpha (bit i = NOT r_i, most significant first) kept at 0 on
 * every level: the path node's two children are then Z = H(0) = pi(0) both, so at level i the sibling is
 * K_{r_i} ^ (our side-r_i sum) ^ Z, with no secret-dependent read (level 1: K_{r_1} itself). The leaves
 * sum to Delta on the sender's side, so leaf alpha, v_alpha ^ Delta, is the XOR of all the others. */
int bn_sot_recv(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *gk, const uint8_t *base_c,
                const uint8_t *base_t, const uint8_t *msg, uint8_t *out_t, const uint16_t *pos) {
    sot_key K;
    if (key_and_check(t, logk, h, allow_test, gk, &K) != 0 || (pos && logk > 16)) return BN_EPARAMS;
    const uint64_t k = 1ULL << logk, leaves = 1ULL << h;
    const block *T = (const block *)base_t + k, *cts = (const block *)msg;
    block *out = (block *)out_t, *node = aligned_alloc(64, leaves * sizeof(block));
    if (!node) return BN_ENOMEM;
    block zz[2] = {_mm_setzero_si128(), _mm_setzero_si128()}, u0 = _mm_setzero_si128(), u1 = u0;
    ggm_level_sse(&K, zz, 1, &u0, &u1); /* the children of 0: (Z, Z) */
    const block Z = zz[0];
    for (uint64_t tau = 0; tau < t; tau++) { /* each tree in a scratch, then through the LPN step into out */
        uint64_t path = 0;
        for (uint32_t i = 1; i <= h; i++) {
            const uint64_t b = tau * h + i - 1, r = base_c[k + b] & 1, width = 1ULL << i;
            path = 2 * path + (1 ^ r);
            block s0 = _mm_setzero_si128(), s1 = _mm_setzero_si128(), z = _mm_setzero_si128();
            if (i == 1) {
                node[0] = node[1] = _mm_setzero_si128();
            } else {
                ggm_level(&K, node, width >> 1, &s0, &s1);
                z = Z;
            }
            const block rm = mask_if(r);
            const block sr = _mm_xor_si128(s0, _mm_and_si128(rm, _mm_xor_si128(s0, s1)));
            const block kr = _mm_xor_si128(_mm_loadu_si128(cts + b), _mm_loadu_si128(T + b));
            const block sib = _mm_xor_si128(kr, _mm_xor_si128(sr, z));
            /* the last level: leaf alpha = XOR of the others = our level sum with the path's two Z
             * children replaced by the sibling and 0 */
            const block top = _mm_xor_si128(_mm_xor_si128(s0, s1), sib);
            set_two(node, width, path ^ 1, sib, path, i == h ? top : _mm_setzero_si128());
        }
        lpn(tau * leaves, leaves, logk, (const block *)base_t, node, out + tau * leaves, NULL, NULL, pos);
    }
    memset(node, 0, leaves * sizeof(block));
    free(node);
    return 0;
}

/* out[j] = rows[j] ^ d_{off + j} Delta (d: packed bits, LSB first); out may be rows */
void bn_sot_derand(const uint8_t *rows, uint64_t cnt, const uint8_t *d_bits, uint64_t off, const uint8_t *delta,
                   uint8_t *out) {
    const block D = _mm_loadu_si128((const block *)delta);
    for (uint64_t j = 0; j < cnt; j++) {
        const uint64_t b = off + j;
        const block r = _mm_loadu_si128((const block *)rows + j);
        _mm_storeu_si128((block *)out + j, _mm_xor_si128(r, _mm_and_si128(D, mask_if(d_bits[b >> 3] >> (b & 7)))));
    }
}
