/* BUNET native garbled-circuit engine.
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
#include "bunet_gc.h"

#include <cpuid.h>
#include <errno.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <wmmintrin.h>

typedef __m128i block;

#define NB 128 /* instances per internal chunk (a multiple of 64, at most 512) */
#define NW (NB / 64) /* 64-bit words of one bit per instance */
_Static_assert(NB % 64 == 0 && NB <= 512, "NB: a multiple of 64, at most 512 (control-bit words from 8 PRG blocks)");

int bn_cpu_ok(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return (c & bit_AES) && (c & bit_SSE4_1) && (c & bit_SSSE3) && (c & bit_PCLMUL) ? 1 : 0;
}

int bn_getrandom(uint8_t *buf, size_t len) {
    while (len > 0) {
        ssize_t r = getrandom(buf, len, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += r;
        len -= (size_t)r;
    }
    return 0;
}

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

void bn_aes_keysched(const uint8_t *key, uint8_t *out176) {
    block rk[11];
    rk[0] = _mm_loadu_si128((const block *)key);
#define EXP(i, rc) rk[i] = expand_step(rk[i - 1], _mm_aeskeygenassist_si128(rk[i - 1], rc))
    EXP(1, 0x01); EXP(2, 0x02); EXP(3, 0x04); EXP(4, 0x08); EXP(5, 0x10);
    EXP(6, 0x20); EXP(7, 0x40); EXP(8, 0x80); EXP(9, 0x1b); EXP(10, 0x36);
#undef EXP
    memcpy(out176, rk, sizeof rk);
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

/* out[i] = H(in[i], tweak = (dom, tw0 + i*twstep)); in may equal out */
static void hash_batch_sse(const aeskey *K, const block *in, block *out, size_t cnt, uint64_t tw0,
                           uint64_t twstep, uint64_t dom) {
    size_t i = 0;
    block s[8], x[8];
    for (; i + 8 <= cnt; i += 8) {
        for (int j = 0; j < 8; j++) {
            s[j] = sigma(_mm_loadu_si128(in + i + j));
            x[j] = _mm_xor_si128(s[j], _mm_set_epi64x((long long)dom, (long long)(tw0 + (i + j) * twstep)));
        }
        aes8(K, x);
        for (int j = 0; j < 8; j++) _mm_storeu_si128(out + i + j, _mm_xor_si128(x[j], s[j]));
    }
    for (; i < cnt; i++) {
        s[0] = sigma(_mm_loadu_si128(in + i));
        x[0] = _mm_xor_si128(s[0], _mm_set_epi64x((long long)dom, (long long)(tw0 + i * twstep)));
        aes1(K, x);
        _mm_storeu_si128(out + i, _mm_xor_si128(x[0], s[0]));
    }
}

/* the same with 256-bit VAES: 16 blocks in flight (used only when cpuid reports VAES+AVX2) */
__attribute__((target("avx2,vaes"))) static void hash_batch_vaes(const aeskey *K, const block *in, block *out,
                                                                 size_t cnt, uint64_t tw0, uint64_t twstep,
                                                                 uint64_t dom) {
    size_t i = 0;
    if (cnt >= 16) {
        __m256i rk[11];
        for (int r = 0; r < 11; r++) rk[r] = _mm256_broadcastsi128_si256(K->k[r]);
        const __m256i himask = _mm256_set_epi64x(-1, 0, -1, 0);
        __m256i tw = _mm256_set_epi64x((long long)dom, (long long)(tw0 + twstep), (long long)dom, (long long)tw0);
        const __m256i step = _mm256_set_epi64x(0, (long long)(2 * twstep), 0, (long long)(2 * twstep));
        for (; i + 16 <= cnt; i += 16) {
            __m256i sg[8], x[8];
            for (int j = 0; j < 8; j++) {
                const __m256i a = _mm256_loadu_si256((const __m256i *)(in + i + 2 * j));
                sg[j] = _mm256_xor_si256(_mm256_shuffle_epi32(a, 78), _mm256_and_si256(a, himask));
                x[j] = _mm256_xor_si256(_mm256_xor_si256(sg[j], tw), rk[0]);
                tw = _mm256_add_epi64(tw, step);
            }
            for (int r = 1; r < 10; r++)
                for (int j = 0; j < 8; j++) x[j] = _mm256_aesenc_epi128(x[j], rk[r]);
            for (int j = 0; j < 8; j++) {
                x[j] = _mm256_aesenclast_epi128(x[j], rk[10]);
                _mm256_storeu_si256((__m256i *)(out + i + 2 * j), _mm256_xor_si256(x[j], sg[j]));
            }
        }
    }
    if (i < cnt) hash_batch_sse(K, in + i, out + i, cnt - i, tw0 + i * twstep, twstep, dom);
}

static int have_vaes = -1;

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

static int have_avx2 = -1;

static int detect_vaes(void) {
    unsigned a, b, c, d;
    if (!detect_avx2()) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (c & (1u << 9)) ? 1 : 0; /* VAES: leaf 7 ECX bit 9 */
}

static inline void hash_batch(const aeskey *K, const block *in, block *out, size_t cnt, uint64_t tw0,
                              uint64_t twstep, uint64_t dom) {
    if (have_vaes < 0) have_vaes = detect_vaes() && !getenv("BUNET_NO_VAES");
    if (have_vaes)
        hash_batch_vaes(K, in, out, cnt, tw0, twstep, dom);
    else
        hash_batch_sse(K, in, out, cnt, tw0, twstep, dom);
}

int bn_have_vaes(void) {
    if (have_vaes < 0) have_vaes = detect_vaes() && !getenv("BUNET_NO_VAES");
    return have_vaes;
}

/* Per-gate keys (multi-instance security, as emp's MITCCRH): every hashing gate, on every chunk
 * of <= NB instances, hashes under its own AES key k_j = expand(pi(j)), j = the gate's first
 * tweak on that chunk (unique in the session); the instance tweak still separates the hashes
 * under one key. So no fixed key ever sees more than a few hundred hash inputs. */
static inline void keyexp_block(block key, aeskey *out) {
    block *rk = out->k;
    rk[0] = key;
#define EXP(i, rc) rk[i] = expand_step(rk[i - 1], _mm_aeskeygenassist_si128(rk[i - 1], rc))
    EXP(1, 0x01); EXP(2, 0x02); EXP(3, 0x04); EXP(4, 0x08); EXP(5, 0x10);
    EXP(6, 0x20); EXP(7, 0x40); EXP(8, 0x80); EXP(9, 0x1b); EXP(10, 0x36);
#undef EXP
}

typedef struct {
    aeskey master, k;
    uint64_t last;
    int valid;
} keyctx;

static inline const aeskey *gate_key(keyctx *kc, uint64_t j) {
    if (!kc->valid || kc->last != j) {
        block x = _mm_set_epi64x(0x4b45590000000000LL, (long long)j);
        aes1(&kc->master, &x);
        keyexp_block(x, &kc->k);
        kc->last = j;
        kc->valid = 1;
    }
    return &kc->k;
}

/* Row keys: the look-up, post-message and setup hashes (one per OT row, millions a session) are
 * re-keyed like the gates: tweak t of domain dom hashes under k = expand(AES_master(dom | "KEY", t >> 16)),
 * so no key sees more than 2^16 tweaks (2^17 inputs: q and q ^ Delta'). Smaller groups would re-key every
 * few post-message hashes (their tweaks step by the table's rows). The key depends on the tweak only,
 * never on how the rows are batched, so both parties derive the same keys. */
#define ROW_KEY_SHIFT 16
static inline const aeskey *row_key(keyctx *kc, uint64_t dom, uint64_t g) {
    if (!kc->valid || kc->last != g) {
        block x = _mm_set_epi64x((long long)(dom | 0x4b4559ULL), (long long)g);
        aes1(&kc->master, &x);
        keyexp_block(x, &kc->k);
        kc->last = g;
        kc->valid = 1;
    }
    return &kc->k;
}

/* hash_batch under the row keys of master: runs of items whose tweaks share a key group */
static void hash_rows(const aeskey *master, const block *in, block *out, size_t cnt, uint64_t tw0,
                      uint64_t twstep, uint64_t dom) {
    keyctx kc;
    kc.master = *master;
    kc.valid = 0;
    for (size_t i = 0; i < cnt;) {
        const uint64_t t = tw0 + i * twstep, g = t >> ROW_KEY_SHIFT, left = ((g + 1) << ROW_KEY_SHIFT) - t;
        size_t run = twstep ? (size_t)((left + twstep - 1) / twstep) : cnt - i;
        if (run > cnt - i || run == 0) run = cnt - i;
        hash_batch(row_key(&kc, dom, g), in + i, out + i, run, t, twstep, dom);
        i += run;
    }
}

void bn_hash_batch(const uint8_t *rk, const uint8_t *in, uint8_t *out, size_t cnt, uint64_t tw0,
                   uint64_t twstep, uint64_t dom) {
    aeskey K;
    load_key(&K, rk);
    hash_rows(&K, (const block *)in, (block *)out, cnt, tw0, twstep, dom);
}

/* AES-CTR PRG under a fresh getrandom() key (each prg_init is a fresh PRG). */
typedef struct {
    aeskey K;
    uint64_t ctr;
} prg_t;

static int prg_init(prg_t *p) {
    uint8_t key[16], rk[176];
    if (bn_getrandom(key, 16) != 0) return -1;
    bn_aes_keysched(key, rk);
    load_key(&p->K, rk);
    p->ctr = 0;
    memset(key, 0, sizeof key);
    memset(rk, 0, sizeof rk);
    return 0;
}

/* the next 8 blocks of the stream */
static inline void prg_next8(prg_t *p, block *x) {
    for (int j = 0; j < 8; j++) x[j] = _mm_set_epi64x(0, (long long)(p->ctr + j));
    p->ctr += 8;
    aes8(&p->K, x);
}

int bn_prg_fill(uint8_t *out, size_t len) {
    prg_t p;
    if (prg_init(&p) != 0) return -1;
    block x[8];
    while (len > 0) {
        prg_next8(&p, x);
        size_t take = len < 128 ? len : 128;
        memcpy(out, x, take);
        out += take;
        len -= take;
    }
    memset(x, 0, sizeof x);
    memset(&p, 0, sizeof p);
    return 0;
}

/* ---------------------------------------------------------------- transpose */

/* The OT kernels' transpose: 128 x 128 bit tiles, Y[r] bit c = X[c] bit r (X: one 128-row block of
 * 128 columns, Y: its 128 rows of 16 bytes). Two tiles (row blocks 2p, 2p + 1) are interleaved
 * block by block, tile[(p * 128 + c) * 2 + (q & 1)], so that one 32-byte load gives the same column
 * of both and every step below stays inside a 128-bit lane: two tiles per AVX2 instruction.
 * With r = 8R + rho and c = 8C + gamma: an 8 x 8 bit transpose inside every byte of the 8 columns
 * 8C .. 8C + 7 (three delta swaps), then for each rho a 16 x 16 byte transpose (four unpack stages)
 * of byte R of those results over C. No movemasks, and each output row is one 16-byte store. */
static inline block *tile_at(block *tile, uint32_t c, int q) {
    return tile + ((size_t)(q >> 1) * 128 + c) * 2 + (q & 1);
}

/* delta swap: a's bits at positions with bit s set <-> b's bits s lower (m: positions with bit s clear) */
#define BN_DSWAP(V, XOR, AND, SRL, SLL, a, b, s, m)    \
    do {                                             \
        const V _t = AND(XOR(SRL(a, s), b), m);      \
        b = XOR(b, _t);                              \
        a = XOR(a, SLL(_t, s));                      \
    } while (0)

/* x[i] bit p <-> x[p] bit i in every byte (8 x 8 bit transposes) */
#define BN_BITS8X8(V, XOR, AND, SRL, SLL, SET1, x)                                                                  \
    do {                                                                                                            \
        const V _m4 = SET1(0x0f), _m2 = SET1(0x33), _m1 = SET1(0x55);                                              \
        for (int _i = 0; _i < 4; _i++) BN_DSWAP(V, XOR, AND, SRL, SLL, x[_i], x[_i + 4], 4, _m4);                  \
        for (int _i = 0; _i < 8; _i += (_i & 1) ? 3 : 1) BN_DSWAP(V, XOR, AND, SRL, SLL, x[_i], x[_i + 2], 2, _m2); \
        for (int _i = 0; _i < 8; _i += 2) BN_DSWAP(V, XOR, AND, SRL, SLL, x[_i], x[_i + 1], 1, _m1);               \
    } while (0)

/* 16 x 16 byte transpose: each stage rotates the (register, byte) address left by one bit, four make it
 * (byte, register) */
#define BN_BYTES16X16(V, LO, HI, a)                                    \
    do {                                                               \
        V _b[16];                                                      \
        for (int _s = 0; _s < 4; _s++) {                               \
            for (int _i = 0; _i < 8; _i++) {                           \
                _b[2 * _i] = LO(a[_i], a[_i + 8]);                     \
                _b[2 * _i + 1] = HI(a[_i], a[_i + 8]);                 \
            }                                                          \
            for (int _i = 0; _i < 16; _i++) a[_i] = _b[_i];            \
        }                                                              \
    } while (0)

#define SET1_128(c) _mm_set1_epi8((char)(c))
#define SET1_256(c) _mm256_set1_epi8((char)(c))

/* row blocks 0 .. nb-1 of the tiles -> nb * 128 rows of 16 bytes at out (SSE2: one tile at a time) */
static void tiles_to_rows_sse(const block *tile, int nb, uint8_t *out, int nt) {
    block s[128];
    for (int q = 0; q < nb; q++) {
        for (int g = 0; g < 8; g++) {
            block a[16];
            for (int C = 0; C < 16; C++) a[C] = _mm_load_si128(tile_at((block *)tile, 8 * C + g, q));
            BN_BYTES16X16(block, _mm_unpacklo_epi8, _mm_unpackhi_epi8, a);
            for (int R = 0; R < 16; R++) s[8 * R + g] = a[R];
        }
        for (int R = 0; R < 16; R++) {
            block *x = s + 8 * R;
            BN_BITS8X8(block, _mm_xor_si128, _mm_and_si128, _mm_srli_epi64, _mm_slli_epi64, SET1_128, x);
            for (int r = 0; r < 8; r++) {
                block *o = (block *)(out + ((size_t)q * 128 + 8 * R + r) * 16);
                if (nt)
                    _mm_stream_si128(o, x[r]);
                else
                    _mm_storeu_si128(o, x[r]);
            }
        }
    }
}

__attribute__((target("avx2"))) static void tiles_to_rows_avx2(const block *tile, int nb, uint8_t *out, int nt) {
    __m256i s[128];
    for (int q = 0; q < nb; q += 2) {
        const __m256i *t2 = (const __m256i *)tile_at((block *)tile, 0, q);
        for (int g = 0; g < 8; g++) {
            __m256i a[16];
            for (int C = 0; C < 16; C++) a[C] = _mm256_load_si256(t2 + 8 * C + g);
            BN_BYTES16X16(__m256i, _mm256_unpacklo_epi8, _mm256_unpackhi_epi8, a);
            for (int R = 0; R < 16; R++) s[8 * R + g] = a[R];
        }
        uint8_t *o = out + (size_t)q * 128 * 16;
        for (int R = 0; R < 16; R++) {
            __m256i *x = s + 8 * R;
            BN_BITS8X8(__m256i, _mm256_xor_si256, _mm256_and_si256, _mm256_srli_epi64, _mm256_slli_epi64, SET1_256,
                       x);
            if (nt) {
                for (int r = 0; r < 8; r++)
                    _mm_stream_si128((block *)(o + (8 * R + r) * 16), _mm256_castsi256_si128(x[r]));
                if (q + 1 < nb)
                    for (int r = 0; r < 8; r++)
                        _mm_stream_si128((block *)(o + (128 + 8 * R + r) * 16), _mm256_extracti128_si256(x[r], 1));
                continue;
            }
            for (int r = 0; r < 8; r += 2) {
                _mm256_storeu_si256((__m256i *)(o + (8 * R + r) * 16), _mm256_permute2x128_si256(x[r], x[r + 1], 0x20));
                if (q + 1 < nb) /* public: the last row block of an odd count has no partner */
                    _mm256_storeu_si256((__m256i *)(o + (128 + 8 * R + r) * 16),
                                        _mm256_permute2x128_si256(x[r], x[r + 1], 0x31));
            }
        }
    }
}

static inline int use_avx2(void) {
    if (have_avx2 < 0) have_avx2 = detect_avx2() && !getenv("BUNET_NO_AVX2");
    return have_avx2;
}

static void tiles_to_rows(const block *tile, int nb, uint8_t *out, int nt) {
    if (use_avx2())
        tiles_to_rows_avx2(tile, nb, out, nt);
    else
        tiles_to_rows_sse(tile, nb, out, nt);
}

/* Rows of a large output are written with non-temporal stores: they would leave the cache before they
 * are read anyway, and streaming them saves reading every line in before it is overwritten (half the
 * memory traffic). Small outputs (the circuit's chunks) stay in the cache for their consumer. */
#define NT_MIN_BYTES ((uint64_t)8 << 20)
static int stream_rows(const uint8_t *out, uint64_t rows) {
    return ((uintptr_t)out & 15) == 0 && rows * 16 >= NT_MIN_BYTES;
}

/* ---------------------------------------------------------------- IKNP */

#define ROWS 1024 /* rows per internal chunk (8 AES blocks per column) */

static inline void ctr8(const aeskey *K, uint64_t ctr, block *x, int nb) {
    for (int j = 0; j < 8; j++) x[j] = _mm_set_epi64x(0, (long long)(ctr + j));
    if (nb == 8)
        aes8(K, x);
    else
        for (int j = 0; j < nb; j++) aes1(K, x + j);
}

/* SoftSpoken OT extension (Roy 2022), semi-honest, k bits per block (k = 1 is IKNP).
 * 128/k blocks; block b has N = 2^k leaf seeds s_{b,x} (AES-CTR keys, schedules [b][x]).
 * The client (OT-extension receiver) knows every leaf; the garbler all but leaf d_b, where
 * d_b = Delta bits b*k .. b*k+k-1 (GGM-punctured trees, set up once per session over base OTs).
 * With G_x the CTR stream of s_{b,x} over the rows:
 *   client:  u_b = XOR_x G_x, t column (b*k+j) = v_{b,j} = XOR_{x: x_j = 1} G_x, sends c_b = u_b ^ r;
 *   garbler: q column (b*k+j) = XOR_{x != d} (x ^ d)_j G_x  ^  d_j c_b = v_{b,j} ^ d_j r.
 * So q_row = t_row ^ r * Delta: correlated OT with the free-XOR offset, 128/k bits sent per OT.
 * The garbler's missing leaf is a dummy key whose stream is multiplied by 0 (constant time). */

/* CTR streams of all N leaves of block b for nb 128-row blocks starting at ctr: g[x*8 + j] */
static inline void leaf_streams_sse(const uint8_t *leaves, uint32_t k, uint32_t b, uint64_t ctr, int nb, block *g) {
    const uint32_t N = 1u << k;
    for (uint32_t x = 0; x < N; x++) {
        aeskey K;
        load_key(&K, leaves + ((size_t)b * N + x) * 176);
        ctr8(&K, ctr, g + 8 * x, nb);
    }
}

/* VAES: two leaves per ymm (one key per 128-bit lane), up to 8 ymm in flight */
__attribute__((target("avx2,vaes"))) static void leaf_streams_vaes(const uint8_t *leaves, uint32_t k, uint32_t b,
                                                                   uint64_t ctr, int nb, block *g) {
    const uint32_t N = 1u << k;
    for (uint32_t x = 0; x < N; x += 2) {
        const uint8_t *ka = leaves + ((size_t)b * N + x) * 176, *kb = ka + 176;
        __m256i rk[11], c[8];
        for (int r = 0; r < 11; r++)
            rk[r] = _mm256_set_m128i(_mm_loadu_si128((const block *)(kb + 16 * r)),
                                     _mm_loadu_si128((const block *)(ka + 16 * r)));
        for (int j = 0; j < 8; j++)
            c[j] = _mm256_xor_si256(_mm256_set_epi64x(0, (long long)(ctr + j), 0, (long long)(ctr + j)), rk[0]);
        for (int r = 1; r < 10; r++)
            for (int j = 0; j < 8; j++) c[j] = _mm256_aesenc_epi128(c[j], rk[r]);
        for (int j = 0; j < nb; j++) {
            const __m256i y = _mm256_aesenclast_epi128(c[j], rk[10]);
            g[8 * x + j] = _mm256_castsi256_si128(y);
            g[8 * (x + 1) + j] = _mm256_extracti128_si256(y, 1);
        }
    }
}

static inline void leaf_streams(const uint8_t *leaves, uint32_t k, uint32_t b, uint64_t ctr, int nb, block *g) {
    if (bn_have_vaes())
        leaf_streams_vaes(leaves, k, b, ctr, nb, g);
    else
        leaf_streams_sse(leaves, k, b, ctr, nb, g);
}

/* u[q] = XOR_x G_x[q], v[j*8+q] = XOR_{x: x_j = 1} G_x[q]   (x, j public loop indices).
 * Butterfly: at level j the array holds S_j[m] = XOR_{x >> j = m} G_x, so v_j = XOR of its odd
 * entries and S_{j+1}[m] = S_j[2m] ^ S_j[2m+1]: 2N - 2 XORs instead of N (k/2 + 1).
 * Specialised per k (always inlined with a constant k) so that the loops unroll in registers. */
static inline __attribute__((always_inline)) void uv_acc_k(const block *g, const uint32_t k, int nb, block *u,
                                                           block *v) {
    const uint32_t N = 1u << k;
    for (int q = 0; q < nb; q++) {
        block S[256];
#pragma GCC unroll 256
        for (uint32_t x = 0; x < N; x++) S[x] = g[8 * x + q];
        uint32_t len = N;
#pragma GCC unroll 8
        for (uint32_t j = 0; j < k; j++) {
            block vj = S[1];
#pragma GCC unroll 128
            for (uint32_t m = 1; m < len / 2; m++) vj = _mm_xor_si128(vj, S[2 * m + 1]);
#pragma GCC unroll 128
            for (uint32_t m = 0; m < len / 2; m++) S[m] = _mm_xor_si128(S[2 * m], S[2 * m + 1]);
            v[j * 8 + q] = vj;
            len /= 2;
        }
        u[q] = S[0];
    }
}

static void uv_accumulate(const block *g, uint32_t k, int nb, block *u, block *v) {
    switch (k) {
    case 1: uv_acc_k(g, 1, nb, u, v); break;
    case 2: uv_acc_k(g, 2, nb, u, v); break;
    case 4: uv_acc_k(g, 4, nb, u, v); break;
    default: uv_acc_k(g, 8, nb, u, v); break;
    }
}

/* k = 4 with VAES, streams and butterfly fused: the AES blocks of all 16 leaves are reduced in registers
 * as they come out of the rounds, so the streams are never stored. Two 128-row blocks q, q + 1 at a time,
 * one per lane: every round key is then the same in both lanes, a broadcast load (no interleaving of the
 * leaves' schedules); 8 leaves in flight, x = 8h + i, per half h:
 *   T = XOR_i Y_i,  A_j = XOR_{i: i_j = 1} Y_i (j < 3);  u = T_0 ^ T_1, v_j = A_j,0 ^ A_j,1, v_3 = T_1:
 * the same XORs as uv_acc_k, regrouped. The lanes are q and q + 1, so u[q], u[q + 1] (and each v) are
 * one 32-byte store. */
__attribute__((target("avx2,vaes"))) static void leaf_uv4_vaes(const uint8_t *leaves, uint32_t b, uint64_t ctr, int nb,
                                                               block *u, block *v) {
    const uint8_t *kb = leaves + (size_t)b * 16 * 176;
#define RK(x, r) _mm256_broadcastsi128_si256(_mm_loadu_si128((const block *)(kb + (x) * 176 + 16 * (r))))
    int q = 0;
    /* four blocks at a time: two lane pairs, so that each broadcast round key serves two AES blocks;
     * leaves a quarter at a time, x = 4h + i: per quarter Q_h = XOR_i Y_i, and
     * u = XOR_h Q_h, v_0 = XOR_h (Y_1 ^ Y_3), v_1 = XOR_h (Y_2 ^ Y_3), v_2 = Q_1 ^ Q_3, v_3 = Q_2 ^ Q_3 */
    for (; q + 4 <= nb; q += 4) {
        const __m256i c0 = _mm256_set_epi64x(0, (long long)(ctr + q + 1), 0, (long long)(ctr + q));
        const __m256i c1 = _mm256_set_epi64x(0, (long long)(ctr + q + 3), 0, (long long)(ctr + q + 2));
        __m256i Q[4][2], V0[2], V1[2];
        for (int h = 0; h < 4; h++) {
            __m256i y[4][2];
            for (int i = 0; i < 4; i++) {
                const __m256i k0 = RK(4 * h + i, 0);
                y[i][0] = _mm256_xor_si256(c0, k0);
                y[i][1] = _mm256_xor_si256(c1, k0);
            }
#pragma GCC unroll 9
            for (int r = 1; r < 10; r++)
                for (int i = 0; i < 4; i++) {
                    const __m256i kr = RK(4 * h + i, r);
                    y[i][0] = _mm256_aesenc_epi128(y[i][0], kr);
                    y[i][1] = _mm256_aesenc_epi128(y[i][1], kr);
                }
            for (int i = 0; i < 4; i++) {
                const __m256i kr = RK(4 * h + i, 10);
                y[i][0] = _mm256_aesenclast_epi128(y[i][0], kr);
                y[i][1] = _mm256_aesenclast_epi128(y[i][1], kr);
            }
            for (int p = 0; p < 2; p++) {
                const __m256i s1 = _mm256_xor_si256(y[2][p], y[3][p]), a0 = _mm256_xor_si256(y[1][p], y[3][p]);
                Q[h][p] = _mm256_xor_si256(_mm256_xor_si256(y[0][p], y[1][p]), s1);
                V0[p] = h ? _mm256_xor_si256(V0[p], a0) : a0;
                V1[p] = h ? _mm256_xor_si256(V1[p], s1) : s1;
            }
        }
        for (int p = 0; p < 2; p++) {
            const __m256i v2 = _mm256_xor_si256(Q[1][p], Q[3][p]), v3 = _mm256_xor_si256(Q[2][p], Q[3][p]);
            _mm256_storeu_si256((__m256i *)(u + q + 2 * p), _mm256_xor_si256(_mm256_xor_si256(Q[0][p], Q[1][p]), v3));
            _mm256_storeu_si256((__m256i *)(v + q + 2 * p), V0[p]);
            _mm256_storeu_si256((__m256i *)(v + 8 + q + 2 * p), V1[p]);
            _mm256_storeu_si256((__m256i *)(v + 16 + q + 2 * p), v2);
            _mm256_storeu_si256((__m256i *)(v + 24 + q + 2 * p), v3);
        }
    }
    for (; q + 2 <= nb; q += 2) {
        const __m256i cq = _mm256_set_epi64x(0, (long long)(ctr + q + 1), 0, (long long)(ctr + q));
        __m256i T[2], A0[2], A1[2], A2[2];
        for (int h = 0; h < 2; h++) {
            __m256i y[8];
            for (int i = 0; i < 8; i++) y[i] = _mm256_xor_si256(cq, RK(8 * h + i, 0));
#pragma GCC unroll 9
            for (int r = 1; r < 10; r++)
                for (int i = 0; i < 8; i++) y[i] = _mm256_aesenc_epi128(y[i], RK(8 * h + i, r));
            for (int i = 0; i < 8; i++) y[i] = _mm256_aesenclast_epi128(y[i], RK(8 * h + i, 10));
            A0[h] = _mm256_xor_si256(_mm256_xor_si256(y[1], y[3]), _mm256_xor_si256(y[5], y[7]));
            const __m256i s0 = _mm256_xor_si256(y[0], y[1]), s1 = _mm256_xor_si256(y[2], y[3]);
            const __m256i s2 = _mm256_xor_si256(y[4], y[5]), s3 = _mm256_xor_si256(y[6], y[7]);
            A1[h] = _mm256_xor_si256(s1, s3);
            A2[h] = _mm256_xor_si256(s2, s3);
            T[h] = _mm256_xor_si256(_mm256_xor_si256(s0, s1), A2[h]);
        }
        _mm256_storeu_si256((__m256i *)(u + q), _mm256_xor_si256(T[0], T[1]));
        _mm256_storeu_si256((__m256i *)(v + q), _mm256_xor_si256(A0[0], A0[1]));
        _mm256_storeu_si256((__m256i *)(v + 8 + q), _mm256_xor_si256(A1[0], A1[1]));
        _mm256_storeu_si256((__m256i *)(v + 16 + q), _mm256_xor_si256(A2[0], A2[1]));
        _mm256_storeu_si256((__m256i *)(v + 24 + q), T[1]);
    }
#undef RK
    if (q < nb) { /* an odd last block: leaf pairs in the lanes instead (Y_m = (G_2m, G_2m+1)) */
        const __m256i cq = _mm256_set_epi64x(0, (long long)(ctr + q), 0, (long long)(ctr + q));
        __m256i y[8];
#define RK2(m, r) _mm256_loadu2_m128i((const block *)(kb + (2 * (m) + 1) * 176 + 16 * (r)), \
                                      (const block *)(kb + 2 * (m) * 176 + 16 * (r)))
        for (int m = 0; m < 8; m++) y[m] = _mm256_xor_si256(cq, RK2(m, 0));
#pragma GCC unroll 9
        for (int r = 1; r < 10; r++)
            for (int m = 0; m < 8; m++) y[m] = _mm256_aesenc_epi128(y[m], RK2(m, r));
        for (int m = 0; m < 8; m++) y[m] = _mm256_aesenclast_epi128(y[m], RK2(m, 10));
#undef RK2
        const __m256i w1 = _mm256_xor_si256(_mm256_xor_si256(y[1], y[3]), _mm256_xor_si256(y[5], y[7]));
        const __m256i s0 = _mm256_xor_si256(y[0], y[1]), s1 = _mm256_xor_si256(y[2], y[3]);
        const __m256i s2 = _mm256_xor_si256(y[4], y[5]), s3 = _mm256_xor_si256(y[6], y[7]);
        const __m256i w2 = _mm256_xor_si256(s1, s3), w3 = _mm256_xor_si256(s2, s3);
        const __m256i tot = _mm256_xor_si256(_mm256_xor_si256(s0, s1), w3);
        const block th = _mm256_extracti128_si256(tot, 1);
        u[q] = _mm_xor_si128(_mm256_castsi256_si128(tot), th); /* x = 2m + lane: v_0 = the odd lane, */
        v[q] = th;                                            /* v_j = both lanes of m_(j-1) = 1 */
        v[8 + q] = _mm_xor_si128(_mm256_castsi256_si128(w1), _mm256_extracti128_si256(w1, 1));
        v[16 + q] = _mm_xor_si128(_mm256_castsi256_si128(w2), _mm256_extracti128_si256(w2, 1));
        v[24 + q] = _mm_xor_si128(_mm256_castsi256_si128(w3), _mm256_extracti128_si256(w3, 1));
    }
}

/* u and v of block b (as uv_accumulate) for nb 128-row blocks from ctr; g: scratch for the unfused path */
static inline void leaf_uv(const uint8_t *leaves, uint32_t k, uint32_t b, uint64_t ctr, int nb, block *g, block *u,
                           block *v) {
    if (k == 4 && bn_have_vaes()) {
        leaf_uv4_vaes(leaves, b, ctr, nb, u, v);
        return;
    }
    leaf_streams(leaves, k, b, ctr, nb, g);
    uv_accumulate(g, k, nb, u, v);
}

/* The client's message, B = 128/k columns of m bits, is stored by 128-row blocks: row block rb of
 * column b at byte 16 * (rb * B + b), so a run of rows of all columns is one contiguous stretch
 * (one memory stream instead of B, which the prefetchers could not follow). */
static inline size_t cm_off(uint32_t B, uint64_t rb, uint32_t b) { return 16 * ((size_t)rb * B + b); }

/* Columns b*k .. b*k + k - 1 of row blocks q0 .. nb-1 into the tiles, one block at a time (the
 * portable path, and the odd last block of the AVX2 one). Arguments as cols_to_tiles_avx2. */
static void cols_to_tiles_sse(block *tile, uint32_t k, uint32_t b, int q0, int nb, const block *u, const block *v,
                              const uint8_t *delta, const uint8_t *choice, uint8_t *cm, uint32_t B, uint64_t rb0) {
    for (int q = q0; q < nb; q++) {
        block uq = u[q], *c0 = cm ? (block *)(cm + cm_off(B, rb0 + q, b)) : NULL;
        if (delta) uq = _mm_xor_si128(uq, _mm_loadu_si128(c0));
        if (cm && !delta) _mm_storeu_si128(c0, _mm_xor_si128(uq, _mm_loadu_si128((const block *)(choice + 16 * q))));
        for (uint32_t j = 0; j < k; j++) {
            const uint32_t c = b * k + j;
            const block dj = _mm_set1_epi8((char)(delta ? -(int)((delta[c / 8] >> (c % 8)) & 1) : 0));
            _mm_store_si128(tile_at(tile, c, q), _mm_xor_si128(v[j * 8 + q], _mm_and_si128(uq, dj)));
        }
    }
}

/* Columns b*k .. b*k + k - 1 of row blocks 0 .. nb-1 into the tiles with AVX2, two row blocks per
 * instruction: tile_at(c, q), tile_at(c, q + 1) are adjacent for even q, as are u[q], u[q + 1] and
 * v[j * 8 + q], v[j * 8 + q + 1]; an odd last block alone. cm: NULL, or the client's message to read
 * (garbler: c_b, delta != NULL) or write (client: c_b = u ^ r, r from choice). */
__attribute__((target("avx2"))) static void cols_to_tiles_avx2(block *tile, uint32_t k, uint32_t b, int nb,
                                                                const block *u, const block *v, const uint8_t *delta,
                                                                const uint8_t *choice, uint8_t *cm, uint32_t B,
                                                                uint64_t rb0) {
    __m256i d[8];
    for (uint32_t j = 0; j < k; j++) {
        const uint32_t c = b * k + j;
        d[j] = _mm256_set1_epi8((char)(delta ? -(int)((delta[c / 8] >> (c % 8)) & 1) : 0));
    }
    int q = 0;
    for (; q + 2 <= nb; q += 2) {
        __m256i uq = _mm256_loadu_si256((const __m256i *)(u + q));
        block *c0 = cm ? (block *)(cm + cm_off(B, rb0 + q, b)) : NULL, *c1 = cm ? c0 + B : NULL; /* q + 1 */
        if (delta) {
            uq = _mm256_xor_si256(uq, _mm256_loadu2_m128i(c1, c0));
            for (uint32_t j = 0; j < k; j++)
                _mm256_store_si256((__m256i *)tile_at(tile, b * k + j, q),
                                   _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(v + j * 8 + q)),
                                                    _mm256_and_si256(uq, d[j])));
            continue;
        }
        if (cm)
            _mm256_storeu2_m128i(c1, c0, _mm256_xor_si256(uq, _mm256_loadu_si256((const __m256i *)(choice + 16 * q))));
        for (uint32_t j = 0; j < k; j++)
            _mm256_store_si256((__m256i *)tile_at(tile, b * k + j, q),
                               _mm256_loadu_si256((const __m256i *)(v + j * 8 + q)));
    }
    if (q < nb) cols_to_tiles_sse(tile, k, b, q, nb, u, v, delta, choice, cm, B, rb0); /* an odd last block */
}

/* The OT rows [r0, r0 + rows) of one party, 128-row blocks (ctr = blk_off + block): with delta the
 * garbler's q rows from the client's message cm; without, the client's t rows, and with choice also its
 * message cm (c_b = u_b ^ r). */
static void ot_rows(const uint8_t *leaves, uint32_t k, uint64_t blk_off, uint64_t r0, uint64_t rows,
                    const uint8_t *delta, const uint8_t *choice, uint8_t *cm, uint8_t *out) {
    static __thread block tile[128 * ROWS / 128] __attribute__((aligned(32)));
    static __thread block g[256 * 8];
    block u[8], v[64];
    const int avx2 = use_avx2(), nt = stream_rows(out, rows);
    const uint32_t B = 128 / k;
    for (uint64_t s0 = 0; s0 < rows; s0 += ROWS) {
        const uint64_t sr = rows - s0 < ROWS ? rows - s0 : ROWS, rb0 = (r0 + s0) / 128;
        const int nb = (int)(sr / 128);
        const uint8_t *ch = choice ? choice + (r0 + s0) / 8 : NULL;
        for (uint32_t b = 0; b < B; b++) {
            leaf_uv(leaves, k, b, blk_off + rb0, nb, g, u, v);
            if (avx2)
                cols_to_tiles_avx2(tile, k, b, nb, u, v, delta, ch, cm, B, rb0);
            else
                cols_to_tiles_sse(tile, k, b, 0, nb, u, v, delta, ch, cm, B, rb0);
        }
        tiles_to_rows(tile, nb, out + s0 * 16, nt);
    }
    if (nt) _mm_sfence();
}

/* client's t rows [r0, r0 + rows) (multiples of 128) */
static void sst_t_rows(const uint8_t *leaves, uint32_t k, uint64_t blk_off, uint64_t r0, uint64_t rows,
                       uint8_t *out) {
    ot_rows(leaves, k, blk_off, r0, rows, NULL, NULL, NULL, out);
}

/* garbler's q rows [r0, r0 + rows); cm = the client's message (see cm_off). With the dummy stream in
 * place of the missing leaf, XOR_x (x ^ d)_j G_x = v_j ^ d_j u (the dummy's coefficient is 0). */
static void sst_q_rows(const uint8_t *leaves, uint32_t k, const uint8_t *delta, const uint8_t *cm,
                       uint64_t blk_off, uint64_t r0, uint64_t rows, uint8_t *out) {
    ot_rows(leaves, k, blk_off, r0, rows, delta, NULL, (uint8_t *)cm, out);
}

/* client, one pass: its message c_b = u_b ^ r (128/k columns of m bits, layout: cm_off) AND its t rows
 * (m x 16 bytes), m % 128 == 0 */
void bn_cot_recv(const uint8_t *leaves, uint32_t k, uint64_t blk_off, uint64_t m, const uint8_t *choice,
                 uint8_t *cm, uint8_t *t_rows) {
    ot_rows(leaves, k, blk_off, 0, m, NULL, choice, cm, t_rows);
}

void bn_cot_send(const uint8_t *leaves, uint32_t k, const uint8_t *delta, uint64_t blk_off, uint64_t m,
                 const uint8_t *cm, uint8_t *q_rows) {
    sst_q_rows(leaves, k, delta, cm, blk_off, 0, m, q_rows);
}

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

/* ---------------------------------------------------------------- look-up tables
 * A function of the server's d bits x (d <= 8) and the client's d bits a, w bits per entry (w = 1:
 * the carry out, "generate"; w = 2: generate and "propagate"), as a 1-of-2^d OT built from d random
 * OTs (Naor-Pinkas). The table is 2^d * w bits, entry x's bit p at position x * w + p, each XOR-ed
 * with a fresh random bit of the client (rho_p) and with a pad:
 *   pad(x, p) = XOR_j  R_j^{x_j} [ position x * w + p with index bit J = j + w - 1 removed ],
 *   R_j^b = H(q_j ^ b delta), 2^(d-1) * w bits (blocks: tweaks 2r, 2r + 1 of global row r).
 * The client (sender of the table and of the reverse OT extension, rows q / q ^ delta) knows every
 * R; the server (receiver, rows t_j = q_j ^ x_j delta for its own bits x) knows R_j^{x_j} only, so
 * it opens entry x and nothing else: every bit of R_j^b pads exactly one table bit (those of the
 * entries with x_j = b), so the bits it cannot open are independent and uniform.
 *   generate  = [a + x >= 2^d],   propagate = [a + x == 2^d - 1].
 *
 * All of a value's tables at once (bn_luts_send / bn_luts_recv): item i has rows i * stride ..
 * i * stride + stride - 1 of q / t (global row: row0 + that); table t = (off, d, w) = tabs[3t ..]
 * reads its d rows from off, its bits of a / x are bits off .. off + d - 1 of the item's value, its
 * table sits at tables + i * tstride + (the earlier tables' bytes), at least one byte each, and its
 * w masked bits are bits col .. col + w - 1 (col: the earlier tables' w summed) of the item's rho
 * word (client) and of its output word (server). The items' rows are contiguous, so each block of
 * items is hashed in one pass, no gather. */
static const uint64_t LUT_DOM = 0x4c55540000000000ULL; /* "LUT" hash domain */

/* The low 32 bits of x spread, in order, over the positions of a word whose index bit J (< 6) is 0
 * (blocks of 2^J bits, every other block): the inverse of removing index bit J. Portable: shifts and
 * masks; with BMI2 one pdep (chosen at run time, like AVX2 and VAES). */
static inline uint64_t spread32_soft(uint64_t x, uint32_t J) {
    x &= 0xffffffffULL;
    if (J <= 4) x = (x | x << 16) & 0x0000FFFF0000FFFFULL;
    if (J <= 3) x = (x | x << 8) & 0x00FF00FF00FF00FFULL;
    if (J <= 2) x = (x | x << 4) & 0x0F0F0F0F0F0F0F0FULL;
    if (J <= 1) x = (x | x << 2) & 0x3333333333333333ULL;
    if (J == 0) x = (x | x << 1) & 0x5555555555555555ULL;
    return x;
}

static const uint64_t spread_mask[6] = {0x5555555555555555ULL, 0x3333333333333333ULL, 0x0F0F0F0F0F0F0F0FULL,
                                        0x00FF00FF00FF00FFULL, 0x0000FFFF0000FFFFULL, 0x00000000FFFFFFFFULL};

__attribute__((target("bmi2"))) static inline uint64_t spread32_bmi2(uint64_t x, uint32_t J) {
    return _pdep_u64(x, spread_mask[J]);
}

static int have_bmi2 = -1;

static int detect_bmi2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 8)) ? 1 : 0;
}

static inline uint32_t lut_bytes(uint32_t d, uint32_t w) {
    const uint32_t bits = (1u << d) * w;
    return bits >= 8 ? bits / 8 : 1;
}

#define LUT_ROWS 4096 /* rows hashed per pass (64 KiB per buffer): a block of stride-row items */
#define LUT_MAX_TABS 16

typedef struct {
    uint32_t off, d, w, nblk, tby, toff, col;
} lut_tab;

/* parse and check the tables; returns the bytes per item, 0 if invalid */
static uint64_t lut_tabs(uint32_t ntab, const uint32_t *tabs, uint64_t stride, lut_tab *T, uint32_t *nblk) {
    uint64_t toff = 0;
    uint32_t col = 0;
    *nblk = 1;
    if (ntab < 1 || ntab > LUT_MAX_TABS || stride < 1 || stride > LUT_ROWS) return 0;
    for (uint32_t t = 0; t < ntab; t++) {
        const uint32_t off = tabs[3 * t], d = tabs[3 * t + 1], w = tabs[3 * t + 2];
        if (d < 1 || d > 8 || (w != 1 && w != 2) || (uint64_t)off + d > stride || col + w > 64) return 0;
        const uint32_t tb = (1u << d) * w, kbits = tb / 2;
        T[t] = (lut_tab){off, d, w, kbits > 128 ? kbits / 128 : 1, lut_bytes(d, w), (uint32_t)toff, col};
        if (T[t].nblk > *nblk) *nblk = T[t].nblk;
        toff += T[t].tby;
        col += w;
    }
    return toff;
}

/* pad word wi (64 bits) of row r: word wi & 1 of hash block wi / 2 (H0: blocks h = 0, H1: h = 1) */
static inline uint64_t pad_word(const block *H0, const block *H1, size_t r, uint32_t wi) {
    return ((const uint64_t *)((wi < 2 ? H0 : H1) + r))[wi & 1];
}

/* H[h][r] = H(rows[r] (^ D), tweak 2 (grow0 + r) + h) for r < cnt: the pads of cnt contiguous rows */
static void lut_hash_rows(const aeskey *K, const block *rows, const block *D, uint64_t cnt, uint64_t grow0,
                          uint32_t nblk, block *const *H, block *tmp) {
    const block *in = rows;
    if (D) {
        for (uint64_t r = 0; r < cnt; r++) tmp[r] = _mm_xor_si128(_mm_loadu_si128(rows + r), *D);
        in = tmp;
    }
    for (uint32_t h = 0; h < nblk; h++) hash_rows(K, in, H[h], cnt, 2 * grow0 + h, 2, LUT_DOM);
}

/* every (d, w) a table can have: the kernels below are instantiated with them as constants */
#define LUT_DW(X) X(1, 1) X(1, 2) X(2, 1) X(2, 2) X(3, 1) X(3, 2) X(4, 1) X(4, 2) \
                  X(5, 1) X(5, 2) X(6, 1) X(6, 2) X(7, 1) X(7, 2) X(8, 1) X(8, 2)

/* One item's table (d, w constants): the plain table (f per entry, then rho per plane), XOR-ed with every
 * key's pad bits (key (j, b) covers the positions whose index bit J = j + w - 1 equals b); A / B: the
 * hashes of the rows q / q ^ delta (blocks h = 0, 1), r0 = the table's first row. */
#define LUT_KERNEL(S, ATTR, SPREAD)                                                                              \
    ATTR static inline __attribute__((always_inline)) void lut_item_##S(                                         \
        const uint32_t d, const uint32_t w, uint64_t ai, uint64_t rho, const block *A0, const block *A1,         \
        const block *B0, const block *B1, size_t r0, uint8_t *table) {                                           \
        const uint32_t tb = (1u << d) * w, nw = tb > 64 ? tb / 64 : 1, per = (tb >= 64 ? 64 : tb) / w;          \
        const uint64_t full = tb >= 64 ? ~0ULL : ((1ULL << tb) - 1), pm = w == 2 ? 0x5555555555555555ULL : ~0ULL; \
        uint64_t T[8];                                                                                           \
        const uint64_t lo = (1ULL << d) - ai, e = (1ULL << d) - 1 - ai;                                          \
        /* no branch or index on the client's bits (ai, lo, e) nor on rho */                                     \
        const uint64_t rr = (-(rho & 1) & pm) | (w == 2 ? -((rho >> 1) & 1) & (pm << 1) : 0);                    \
        for (uint32_t k = 0; k < nw; k++) { /* generate: x >= lo (none if a = 0); propagate: x == e */          \
            const uint64_t base = (uint64_t)k * per;                                                             \
            const int64_t t = (int64_t)lo - (int64_t)base;                                                       \
            const uint64_t c = (uint64_t)(t & ~(t >> 63)); /* max(t, 0) */                                       \
            uint64_t g = (~0ULL << (c & 63)) & ~(-(uint64_t)(c >= 64));                                          \
            if (per < 64) g &= (1ULL << per) - 1;                                                                \
            uint64_t word = w == 2 ? SPREAD(g, 0) : g;                                                           \
            if (w == 2) { /* per is a power of two */                                                            \
                const uint64_t de = e - base, in = -(uint64_t)(de < per);                                        \
                word |= (2ULL << (2 * (de & (per - 1)))) & in;                                                   \
            }                                                                                                    \
            T[k] = (word ^ rr) & full;                                                                           \
        }                                                                                                        \
        for (uint32_t j = 0; j < d; j++) {                                                                       \
            const size_t r = r0 + j;                                                                             \
            const uint32_t J = j + w - 1;                                                                        \
            if (J < 6) {                                                                                         \
                for (uint32_t k = 0; k < nw; k++) {                                                              \
                    const uint32_t sh = 32 * (k & 1);                                                            \
                    T[k] ^= (SPREAD(pad_word(A0, A1, r, k / 2) >> sh, J) |                                       \
                             SPREAD(pad_word(B0, B1, r, k / 2) >> sh, J) << (1u << J)) & full;                   \
                }                                                                                                \
            } else {                                                                                             \
                uint32_t k0 = 0, k1 = 0;                                                                         \
                for (uint32_t k = 0; k < nw; k++)                                                                \
                    T[k] ^= ((k >> (J - 6)) & 1) ? pad_word(B0, B1, r, k1++) : pad_word(A0, A1, r, k0++);        \
            }                                                                                                    \
        }                                                                                                        \
        memcpy(table, T, lut_bytes(d, w));                                                                       \
    }                                                                                                            \
    /* table L of cnt items (item i: rows from i * stride, table at tables + i * tstride + L->toff) */           \
    ATTR static void lut_items_##S(const lut_tab *L, uint64_t cnt, uint64_t stride, const uint64_t *a,           \
                                   const uint64_t *rho, block *const *A, block *const *B, uint8_t *tables,        \
                                   uint64_t tstride) {                                                           \
        const uint64_t dm = (1ULL << L->d) - 1;                                                                  \
        const block *A1 = L->nblk > 1 ? A[1] : NULL, *B1 = L->nblk > 1 ? B[1] : NULL;                            \
        switch (L->d * 4 + L->w) {                                                                               \
            LUT_DW(LUT_SEND_CASE_##S)                                                                            \
        }                                                                                                        \
    }

#define LUT_SEND_CASE(S, D, W)                                                                                   \
    case D * 4 + W:                                                                                              \
        for (uint64_t i = 0; i < cnt; i++)                                                                       \
            lut_item_##S(D, W, (a[i] >> L->off) & dm, rho[i] >> L->col, A[0], A1, B[0], B1, i * stride + L->off, \
                         tables + i * tstride + L->toff);                                                        \
        break;
#define LUT_SEND_CASE_soft(D, W) LUT_SEND_CASE(soft, D, W)
#define LUT_SEND_CASE_bmi2(D, W) LUT_SEND_CASE(bmi2, D, W)

LUT_KERNEL(soft, , spread32_soft)
LUT_KERNEL(bmi2, __attribute__((target("bmi2"))), spread32_bmi2)

/* The server's entry x of one item's table (d, w constants), opened: its w bits. No branch or memory
 * index on x: every table word and pad word is read, the wanted ones kept by masks, bits taken by
 * register shifts. H0 / H1: the hashes of the server's rows t (blocks h = 0, 1), r0 = the table's first row. */
static inline __attribute__((always_inline)) uint64_t lut_open(const uint32_t d, const uint32_t w, uint64_t x,
                                                               const uint8_t *tab, const block *H0,
                                                               const block *H1, size_t r0) {
    const uint32_t tb = (1u << d) * w, tby = lut_bytes(d, w), nw = (tby + 7) / 8, npad = tb / 2 > 128 ? 4 : 2;
    const uint32_t P = (uint32_t)x * w;
    uint64_t tw[8] = {0};
    memcpy(tw, tab, tby);
    uint64_t v = 0; /* the 64-bit table word holding entry x (w = 2: both its bits, P even) */
    for (uint32_t k = 0; k < nw; k++) v |= tw[k] & -(uint64_t)(k == P / 64);
    uint64_t bits = v >> (P % 64);
    for (uint32_t j = 0; j < d; j++) {
        const uint32_t J = j + w - 1;
        const uint32_t Q = (P & ((1u << J) - 1)) | ((P >> (J + 1)) << J); /* index bit J removed */
        uint64_t word = 0;
        for (uint32_t wi = 0; wi < npad; wi++) word |= pad_word(H0, H1, r0 + j, wi) & -(uint64_t)(wi == Q / 64);
        bits ^= word >> (Q % 64);
    }
    return bits & (w == 2 ? 3 : 1);
}

/* table L of cnt items: out[i] |= its opened bits << L->col */
static void lut_opens(const lut_tab *L, uint64_t cnt, uint64_t stride, const uint64_t *x, block *const *H,
                      const uint8_t *tables, uint64_t tstride, uint64_t *out) {
    const uint64_t dm = (1ULL << L->d) - 1;
    const block *H1 = L->nblk > 1 ? H[1] : NULL;
#define LUT_RECV_CASE(D, W)                                                                                  \
    case D * 4 + W:                                                                                          \
        for (uint64_t i = 0; i < cnt; i++)                                                                   \
            out[i] |= lut_open(D, W, (x[i] >> L->off) & dm, tables + i * tstride + L->toff, H[0], H1,        \
                               i * stride + L->off) << L->col;                                               \
        break;
    switch (L->d * 4 + L->w) {
        LUT_DW(LUT_RECV_CASE)
    }
#undef LUT_RECV_CASE
}

/* the hash buffers of one pass: nblk blocks per row for each of nsets row sets, and a scratch block per row */
static block *lut_buffers(uint32_t nsets, uint32_t nblk, block **H) {
    block *mem = aligned_alloc(64, (size_t)(nsets * nblk + 1) * LUT_ROWS * sizeof(block));
    if (mem)
        for (uint32_t s = 0; s < nsets * nblk; s++) H[s] = mem + (size_t)s * LUT_ROWS;
    return mem;
}

int bn_luts_send(uint64_t n, uint32_t ntab, const uint32_t *tabs, uint64_t stride, const uint8_t *q_rows,
                 const uint8_t *delta, const uint8_t *rk, uint64_t row0, const uint64_t *a, const uint64_t *rho,
                 uint8_t *tables) {
    lut_tab T[LUT_MAX_TABS];
    uint32_t nblk;
    const uint64_t tstride = lut_tabs(ntab, tabs, stride, T, &nblk);
    if (!tstride) return -3;
    if (have_bmi2 < 0) have_bmi2 = detect_bmi2() && !getenv("BUNET_NO_BMI2");
    aeskey K;
    load_key(&K, rk);
    const block D = _mm_loadu_si128((const block *)delta);
    block *H[4];
    block *mem = lut_buffers(2, nblk, H);
    if (!mem) return -1;
    block *const *R0 = H, *const *R1 = H + nblk, *tmp = mem + (size_t)2 * nblk * LUT_ROWS;
    const uint64_t per = LUT_ROWS / stride;
    for (uint64_t i0 = 0; i0 < n; i0 += per) {
        const uint64_t cnt = n - i0 < per ? n - i0 : per;
        const block *q = (const block *)(q_rows + 16 * i0 * stride);
        lut_hash_rows(&K, q, NULL, cnt * stride, row0 + i0 * stride, nblk, R0, tmp);
        lut_hash_rows(&K, q, &D, cnt * stride, row0 + i0 * stride, nblk, R1, tmp);
        for (uint32_t t = 0; t < ntab; t++) {
            if (have_bmi2)
                lut_items_bmi2(T + t, cnt, stride, a + i0, rho + i0, R0, R1, tables + i0 * tstride, tstride);
            else
                lut_items_soft(T + t, cnt, stride, a + i0, rho + i0, R0, R1, tables + i0 * tstride, tstride);
        }
    }
    free(mem);
    return 0;
}

/* out[i] bit col + p = entry x's bit p of table t, opened */
int bn_luts_recv(uint64_t n, uint32_t ntab, const uint32_t *tabs, uint64_t stride, const uint8_t *t_rows,
                 const uint8_t *rk, uint64_t row0, const uint64_t *x, const uint8_t *tables, uint64_t *out) {
    lut_tab T[LUT_MAX_TABS];
    uint32_t nblk;
    const uint64_t tstride = lut_tabs(ntab, tabs, stride, T, &nblk);
    if (!tstride) return -3;
    aeskey K;
    load_key(&K, rk);
    block *R[2];
    block *mem = lut_buffers(1, nblk, R);
    if (!mem) return -1;
    const uint64_t per = LUT_ROWS / stride;
    for (uint64_t i0 = 0; i0 < n; i0 += per) {
        const uint64_t cnt = n - i0 < per ? n - i0 : per;
        lut_hash_rows(&K, (const block *)(t_rows + 16 * i0 * stride), NULL, cnt * stride, row0 + i0 * stride, nblk,
                      R, NULL);
        memset(out + i0, 0, cnt * sizeof(uint64_t));
        for (uint32_t t = 0; t < ntab; t++) lut_opens(T + t, cnt, stride, x + i0, R, tables + i0 * tstride, tstride, out + i0);
    }
    free(mem);
    return 0;
}

/* ---------------------------------------------------------------- circuits */

enum { G_XOR = 0, G_NOT = 1, G_XORG = 2, G_AND = 3, G_ANDG = 4, G_B2A = 5, G_B2A2 = 6, G_NOUT = 7, G_REVEAL = 8,
       G_CARRY = 9, G_SUM = 10, G_GVAL = 11 };
#define GREC 9 /* op, a, b, o, t, c, p1, p2, output index (B2A, B2A2, NOUT; 0 for the rest) */

static inline uint64_t lsb(block x) { return (uint64_t)_mm_cvtsi128_si64(x) & 1; }
static inline block bm(uint64_t bit) { return _mm_set1_epi64x(-(long long)bit); }
static inline uint64_t lo64(block x) { return (uint64_t)_mm_cvtsi128_si64(x); }
static inline uint64_t hi64(block x) { return (uint64_t)_mm_extract_epi64(x, 1); }
static inline uint64_t mmask(uint32_t m) { return m >= 64 ? ~0ULL : ((1ULL << m) - 1); }

/* Arithmetic ciphertexts: each gate has its own region holding n values of m bits, packed
 * back to back (LSB first); a chunk starts at instance i0 (a multiple of 8, so byte aligned). */
static void pack_vals_serial(uint8_t *dst, const uint64_t *v, uint32_t cnt, uint32_t m) {
    unsigned __int128 acc = 0;
    uint32_t nb = 0;
    const uint64_t mk = mmask(m);
    for (uint32_t i = 0; i < cnt; i++) {
        acc |= (unsigned __int128)(v[i] & mk) << nb;
        nb += m;
        if (nb >= 64) {
            const uint64_t w = (uint64_t)acc;
            memcpy(dst, &w, 8);
            dst += 8;
            acc >>= 64;
            nb -= 64;
        }
    }
    while (nb > 0) {
        *dst++ = (uint8_t)acc;
        acc >>= 8;
        nb = nb > 8 ? nb - 8 : 0;
    }
}

/* groups of 8 values (m bytes each) built word by word without a loop-carried chain */
static void pack_vals(uint8_t *dst, const uint64_t *v, uint32_t cnt, uint32_t m) {
    if (m > 56) {
        pack_vals_serial(dst, v, cnt, m);
        return;
    }
    const uint64_t mk = mmask(m);
    uint32_t i = 0;
    for (; i + 8 <= cnt; i += 8) {
        uint64_t gw[8] = {0};
        for (uint32_t j = 0; j < 8; j++) {
            const uint64_t x = v[i + j] & mk;
            const uint32_t off = j * m, s = off & 63;
            gw[off >> 6] |= x << s;
            gw[(off >> 6) + 1] |= (x >> 1) >> (63 - s); /* the bits past the word (none if s == 0) */
        }
        memcpy(dst, gw, m);
        dst += m;
    }
    if (i < cnt) pack_vals_serial(dst, v + i, cnt - i, m);
}

/* the low m bits of each of cnt values, back to back (value i at bits i*m ..), zero-padded to out_bits */
void bn_pack_bits(const uint64_t *vals, uint64_t cnt, uint32_t m, uint8_t *out, uint64_t out_bits) {
    const uint64_t used = (cnt * m + 7) / 8;
    pack_vals(out, vals, (uint32_t)cnt, m);
    memset(out + used, 0, out_bits / 8 - used);
}

/* The client's choice bits in the engine's row order: instances in chunks of NB (the last one
 * shorter), and within a chunk of cnt instances row w * cnt + i holds input wire w = j * bits + t
 * (bit t of value j) of instance i, so a chunk's OT rows are directly its input-wire label slots.
 * vals: n * k values; out: out_bits / 8 bytes (rows past n * k * bits zero). */
void bn_pack_choice(const uint64_t *vals, uint64_t n, uint32_t k, uint32_t bits, uint8_t *out, uint64_t out_bits) {
    const uint32_t nin = k * bits;
    uint64_t acc = 0, pos = 0;
    uint32_t nb = 0;
    for (uint64_t i0 = 0; i0 < n; i0 += NB) {
        const uint32_t cnt = (uint32_t)(n - i0 < NB ? n - i0 : NB);
        for (uint32_t w = 0; w < nin; w++) {
            const uint64_t *v = vals + i0 * k + w / bits;
            const uint32_t t = w % bits;
            for (uint32_t i = 0; i < cnt; i++) {
                acc |= ((v[(size_t)i * k] >> t) & 1) << nb;
                if (++nb == 64) {
                    memcpy(out + pos, &acc, 8);
                    pos += 8;
                    acc = 0;
                    nb = 0;
                }
            }
        }
    }
    while (nb > 0) {
        out[pos++] = (uint8_t)acc;
        acc >>= 8;
        nb = nb > 8 ? nb - 8 : 0;
    }
    memset(out + pos, 0, out_bits / 8 - pos);
}

static void unpack_vals(const uint8_t *src, const uint8_t *end, uint64_t *v, uint32_t cnt, uint32_t m) {
    const uint64_t mk = mmask(m);
    if (m <= 57) { /* every value within one 8-byte load at its first byte: no loop-carried chain */
        for (uint32_t i = 0; i < cnt; i++) {
            const uint64_t off = (uint64_t)i * m;
            const uint8_t *p = src + (off >> 3);
            uint64_t w = 0;
            const size_t avail = (size_t)(end - p);
            if (avail >= 8)
                memcpy(&w, p, 8);
            else
                memcpy(&w, p, avail); /* the region's last bytes */
            v[i] = (w >> (off & 7)) & mk;
        }
        return;
    }
    unsigned __int128 acc = 0;
    uint32_t nb = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        if (nb < m) {
            uint64_t w = 0;
            const size_t avail = (size_t)(end - src);
            const size_t take = avail >= 8 ? 8 : avail;
            memcpy(&w, src, take);
            src += take;
            acc |= (unsigned __int128)w << nb;
            nb += 64;
        }
        v[i] = (uint64_t)acc & mk;
        acc >>= m;
        nb -= m;
    }
}

/* Three-halves AND gate (Rosulek-Roy, "Three Halves Make a Whole?", CRYPTO 2021), our notation:
 * labels are halves (L = low 64 bits, R = high 64 bits); A, B the evaluator's input labels with
 * colours i = lsb(A), j = lsb(B). The evaluator hashes A, B and A ^ B (one 128-bit hash each: the low
 * half is a label half, the top bit e(.) masks a control bit) and outputs
 *   L = h(A) ^ h(A^B) ^ i G0 ^ (i^j) G2 ^ [R_ij (A, B)]_L,   R = h(B) ^ h(A^B) ^ j G1 ^ (i^j) G2 ^ [R_ij (A, B)]_R
 * where R_ij is a 2x4 GF(2) matrix on (A_L, A_R, B_L, B_R): R_ij = P_ij ^ c0 S1 ^ c1 S2, with
 *   P_ij = [(1^i) B_L ; (1^j) A_R],  S1 = [A_L^A_R^B_L ; A_L^B_R],  S2 = [A_L^B_R ; A_R^B_L^B_R]
 * and (c0, c1) two control bits the evaluator decodes from 5 garbler bits z and the hash bits:
 *   c0 = z0 ^ i z2 ^ (i^j) z4 ^ e(h(A) ^ h(A^B)),   c1 = z1 ^ j z3 ^ (i^j) z4 ^ e(h(B) ^ h(A^B)).
 * The garbler picks c(i,j) = (r0 ^ b i ^ (a^b) j, r1 ^ (a^b) i ^ a j) with fresh random r0, r1, where
 * (a, b) are the colours at which the AND is 1: each c(i,j) alone is uniform (hides a, b), and with these
 * R_ij the four output equations (L, R) = C ^ [i=a][j=b] Delta have a solution (C, G0, G1, G2, z), which
 * the garbler reads off the colour pairs (0,0), (0,1), (1,0). Checked over all inputs by the tests.
 * th_rmul returns R_ij (A, B) given mP = ((1^i) mask, (1^j) mask) and the masks of c0, c1: no branches. */
static inline block th_rmul(block A, block B, block mP, block m0, block m1) {
    const block lo = _mm_set_epi64x(0, -1);
    const block w = _mm_xor_si128(A, _mm_shuffle_epi32(B, 0x4e));                      /* (A_L^B_R, A_R^B_L) */
    const block s1 = _mm_xor_si128(_mm_shuffle_epi32(w, 0x4e), _mm_and_si128(A, lo)); /* S1 (A, B) */
    const block s2 = _mm_xor_si128(w, _mm_andnot_si128(lo, B));                        /* S2 (A, B) */
    const block p = _mm_and_si128(_mm_blend_epi16(B, A, 0xf0), mP);                    /* P_ij (A, B) */
    return _mm_xor_si128(p, _mm_xor_si128(_mm_and_si128(s1, m0), _mm_and_si128(s2, m1)));
}

/* e(.): the control-bit mask of a hash, its top bit */
static inline uint64_t th_e(block h) { return (uint64_t)_mm_movemask_pd(_mm_castsi128_pd(h)) >> 1; }


/* Run the circuit over n instances.
 * Input labels come straight from IKNP, chunk by chunk (no label matrix in memory):
 * garbler: zero labels q (ot_keys = its 128 base-OT key schedules, u = the client's matrix);
 *          writes ct (ctpi bytes per instance; each ciphertext gate has a region at byte c * n of
 *          n records: 24 bytes (G0, G1, G2) per three-halves AND, 16 per garbler half gate)
 *          and arith (per-gate regions of n packed values, arith_len bytes in all); out = acc0.
 * evaluator: active labels t (ot_keys = schedules of k0_i, u unused); reads ct/arith; out = acc0.
 * The caller turns acc0 into shares (garbler: -acc0 mod 2^l) or labels.
 * Several outputs (bn_gc_run_multi): every arithmetic output gate adds into the accumulator of its
 * output index (gate field 8, < nout); out is n x nout, row-major (instance i, output j at i*nout + j).
 * A B2A2 run and its NOUT use the one acc1 and must target the same output (checked). */
int bn_gc_run(int garbler, const int32_t *gates, uint32_t ngates, uint32_t nwires, uint64_t n, uint32_t k,
              uint32_t b, const uint64_t *ys, const uint8_t *ot_keys, uint32_t ot_k, const uint8_t *u,
              uint64_t m, uint64_t blk_off, const uint8_t *in_labels, const uint8_t *rk, const uint8_t *delta, uint64_t tweak_base, uint32_t tpi, uint8_t *ct, uint32_t ctpi,
              uint8_t *arith, uint64_t arith_len, uint64_t *out, uint64_t outmask) {
    return bn_gc_run_multi(garbler, gates, ngates, nwires, n, k, b, ys, ot_keys, ot_k, u, m, blk_off, in_labels, rk,
                           delta, tweak_base, tpi, ct, ctpi, arith, arith_len, out, outmask, 1);
}

int bn_gc_run_multi(int garbler, const int32_t *gates, uint32_t ngates, uint32_t nwires, uint64_t n, uint32_t k,
                    uint32_t b, const uint64_t *ys, const uint8_t *ot_keys, uint32_t ot_k, const uint8_t *u,
                    uint64_t m, uint64_t blk_off, const uint8_t *in_labels, const uint8_t *rk, const uint8_t *delta,
                    uint64_t tweak_base, uint32_t tpi, uint8_t *ct, uint32_t ctpi, uint8_t *arith,
                    uint64_t arith_len, uint64_t *out, uint64_t outmask, uint32_t nout) {
    (void)ctpi;
    if (nout < 1 || nout > 64) return -3;
    keyctx kc;
    load_key(&kc.master, rk);
    kc.valid = 0;
    const block D = garbler ? _mm_loadu_si128((const block *)delta) : _mm_setzero_si128();
    const uint64_t dom = 0x4743000000000000ULL; /* "GC" gate-hash domain */
    /* three halves: S1, S2 of (Delta, 0) and (0, Delta) (see th_rmul) */
    const block lo = _mm_set_epi64x(0, -1), Dsw = _mm_shuffle_epi32(D, 0x4e);
    const block s1DA = _mm_xor_si128(Dsw, _mm_and_si128(D, lo)), s2DA = D;
    const block s1DB = D, s2DB = _mm_xor_si128(Dsw, _mm_andnot_si128(lo, D));
    block *W = aligned_alloc(64, (size_t)nwires * NB * sizeof(block));
    block *hb = aligned_alloc(64, 8 * NB * sizeof(block));
    uint64_t *accs = aligned_alloc(64, (size_t)nout * NB * sizeof(uint64_t)); /* one accumulator per output */
    uint64_t *acc1 = aligned_alloc(64, NB * sizeof(uint64_t));
    uint64_t *tv = aligned_alloc(64, NB * sizeof(uint64_t));
    uint64_t *tv2 = aligned_alloc(64, NB * sizeof(uint64_t));
    block *xb = aligned_alloc(64, 2 * NB * sizeof(block)), *yb = xb ? xb + NB : NULL;
    uint64_t *roff = malloc(((size_t)ngates + 1) * sizeof(uint64_t));
    const uint32_t nin = k * b;
    uint8_t *L = aligned_alloc(64, ((size_t)NB * nin + 128) * 16);
    int rc = 0;
    prg_t prg; /* garbler: the three-halves gates' random control bits */
    if (garbler && prg_init(&prg) != 0) {
        rc = -4;
        goto done;
    }
    if (!W || !hb || !accs || !acc1 || !tv || !tv2 || !roff || !L || !xb) {
        rc = -1;
        goto done;
    }
    {
        uint64_t off = 0;
        int32_t run = -1; /* output index of an open B2A2 run (its NOUT must match) */
        for (uint32_t g = 0; g < ngates; g++) {
            const int32_t *G = gates + (size_t)g * GREC;
            roff[g] = off;
            if (G[8] < 0 || (uint32_t)G[8] >= nout ||
                (G[0] != G_B2A && G[0] != G_B2A2 && G[0] != G_NOUT && G[0] != G_GVAL && G[0] != G_REVEAL && G[8])) {
                rc = -3;
                goto done;
            }
            if ((G[0] == G_B2A2 || G[0] == G_NOUT || G[0] == G_GVAL) && run >= 0 && run != G[8]) {
                rc = -3;
                goto done;
            }
            if (G[0] == G_GVAL && ((uint32_t)G[2] >= k || G[6] < 0 || G[7] < 0 || G[6] + G[7] > 64)) {
                rc = -3;
                goto done;
            }
            if (G[0] == G_B2A2 || G[0] == G_GVAL) run = G[8];
            if (G[0] == G_NOUT) run = -1;
            if (G[0] == G_B2A || G[0] == G_NOUT) off += (n * (uint64_t)G[6] + 7) / 8;
            if (G[0] == G_B2A2) off += 2 * ((n * (uint64_t)G[6] + 7) / 8);
            if (G[0] == G_REVEAL) off += (n + 7) / 8;
            if (G[0] == G_AND || G[0] == G_CARRY) off += 5 * ((n + 7) / 8); /* three-halves control bit planes */
        }
        if (off != arith_len) {
            rc = -3;
            goto done;
        }
    }
    if ((n * nin + 127) / 128 * 128 != m) {
        rc = -3;
        goto done;
    }
    for (uint64_t i0 = 0; i0 < n; i0 += NB) {
        const uint32_t cnt = (uint32_t)(n - i0 < NB ? n - i0 : NB);
        const uint64_t twc = tweak_base + i0 * tpi;
        /* this chunk's input labels straight from OT extension: rows i0*nin .. (i0+cnt)*nin, wire-major
         * (bn_pack_choice): a full chunk's rows are the input slots of W as they are */
        {
            const uint64_t r0 = i0 * nin, rows = ((uint64_t)cnt * nin + 127) / 128 * 128;
            uint8_t *dst = cnt == NB ? (uint8_t *)W : L;
            if (in_labels)
                memcpy(dst, in_labels + r0 * 16, (size_t)cnt * nin * 16); /* labels made with the request */
            else if (garbler)
                sst_q_rows(ot_keys, ot_k, delta, u, blk_off, r0, rows, dst);
            else
                sst_t_rows(ot_keys, ot_k, blk_off, r0, rows, dst);
            if (cnt != NB)
                for (uint32_t w = 0; w < nin; w++)
                    memcpy(W + (size_t)w * NB, L + (size_t)w * cnt * 16, (size_t)cnt * 16);
        }
        memset(accs, 0, (size_t)nout * NB * sizeof(uint64_t));
        memset(acc1, 0, cnt * sizeof(uint64_t));
        for (uint32_t g = 0; g < ngates; g++) {
            const int32_t *G = gates + (size_t)g * GREC;
            const int op = G[0];
            uint64_t *const acc0 = accs + (size_t)G[8] * NB; /* this gate's output accumulator (public index) */
            block *A = W + (size_t)G[1] * NB, *B = W + (size_t)G[2] * NB, *O = W + (size_t)G[3] * NB;
            const uint64_t t = (uint64_t)G[4];
            const uint32_t c = (uint32_t)G[5], p1 = (uint32_t)G[6], p2 = (uint32_t)G[7];
            switch (op) {
            case G_XOR:
                for (uint32_t i = 0; i < cnt; i++) O[i] = _mm_xor_si128(A[i], B[i]);
                break;
            case G_NOT:
                for (uint32_t i = 0; i < cnt; i++) O[i] = _mm_xor_si128(A[i], D);
                break;
            case G_SUM: /* a ^ c ^ g (full-adder sum bit with a garbler share bit) */
                for (uint32_t i = 0; i < cnt; i++) {
                    const uint64_t gb = garbler ? (ys[(i0 + i) * k + p1] >> p2) & 1 : 0;
                    O[i] = _mm_xor_si128(_mm_xor_si128(A[i], B[i]), _mm_and_si128(D, bm(gb)));
                }
                break;
            case G_XORG:
                if (garbler)
                    for (uint32_t i = 0; i < cnt; i++) {
                        uint64_t gb = (ys[(i0 + i) * k + p1] >> p2) & 1;
                        O[i] = _mm_xor_si128(A[i], _mm_and_si128(D, bm(gb)));
                    }
                else
                    for (uint32_t i = 0; i < cnt; i++) O[i] = A[i];
                break;
            case G_AND:
            case G_CARRY: {
                /* three-halves AND (see th_rmul): G0 G1 G2 (24 bytes per instance) + 5 control bits (bit planes
                 * z0..z4 of n bits each), hash tweaks t (A), t+1 (B), t+2 (A^B).
                 * CARRY (full-adder carry with a garbler share bit g): X = a ^ c, Y = c ^ g, out = c ^ (X & Y). */
                const block *X = A, *Y = B;
                if (op == G_CARRY) {
                    for (uint32_t i = 0; i < cnt; i++) {
                        xb[i] = _mm_xor_si128(A[i], B[i]);
                        const uint64_t gb = garbler ? (ys[(i0 + i) * k + p1] >> p2) & 1 : 0;
                        yb[i] = _mm_xor_si128(B[i], _mm_and_si128(D, bm(gb)));
                    }
                    X = xb;
                    Y = yb;
                }
                const block cz = op == G_CARRY ? _mm_set1_epi8(-1) : _mm_setzero_si128();
                uint8_t *T = ct + (size_t)c * n + i0 * 24;
                const uint64_t plane = (n + 7) / 8, zbytes = (cnt + 7) / 8;
                uint8_t *zp = arith + roff[g] + i0 / 8;
                uint64_t zw[5][NW] = {{0}};
                block *h[6];
                for (int q = 0; q < 6; q++) h[q] = hb + (size_t)q * NB;
                if (garbler) {
                    block *A0 = hb + 6 * NB, *B0 = hb + 7 * NB;
                    uint64_t alw[NW] = {0}, bew[NW] = {0};
                    for (uint32_t i = 0; i < cnt; i++) { /* colour-0 labels A0, B0 */
                        const uint64_t al = lsb(X[i]), be = lsb(Y[i]);
                        const block a0 = _mm_xor_si128(X[i], _mm_and_si128(D, bm(al)));
                        const block b0 = _mm_xor_si128(Y[i], _mm_and_si128(D, bm(be)));
                        alw[i >> 6] |= al << (i & 63);
                        bew[i >> 6] |= be << (i & 63);
                        A0[i] = a0;
                        B0[i] = b0;
                        h[1][i] = _mm_xor_si128(a0, D);
                        h[3][i] = _mm_xor_si128(b0, D);
                        h[4][i] = _mm_xor_si128(a0, b0);
                        h[5][i] = _mm_xor_si128(h[4][i], D);
                    }
                    hash_batch(gate_key(&kc, twc + t), A0, h[0], cnt, twc + t, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t), h[1], h[1], cnt, twc + t, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t + 1), B0, h[2], cnt, twc + t + 1, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t + 1), h[3], h[3], cnt, twc + t + 1, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t + 2), h[4], h[4], cnt, twc + t + 2, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t + 2), h[5], h[5], cnt, twc + t + 2, tpi, dom);
                    block rb[8]; /* r0 of instance i: bit i of words 0..NW-1; r1: bit i of words NW..2NW-1 */
                    prg_next8(&prg, rb);
                    uint64_t rw[2 * NW];
                    memcpy(rw, rb, sizeof rw);
                    for (uint32_t q = 0; q < NW && 64 * q < cnt; q++) { /* 64 instances: one word per bit */
                        const uint32_t end = cnt < 64 * q + 64 ? cnt : 64 * q + 64;
                        const uint64_t rw0 = rw[q], rw1 = rw[NW + q];
                        uint64_t e0 = 0, e1 = 0, e2 = 0, e3 = 0, e4 = 0; /* control-bit masks e(.) of the hash sums */
                        for (uint32_t i = 64 * q; i < end; i++) {
                            const uint64_t sh = i & 63;
                            const block a0 = A0[i], b0 = B0[i];
                            const block mal = bm(lsb(X[i])), mbe = bm(lsb(Y[i]));
                            const block m0 = bm((rw0 >> sh) & 1), m1 = bm((rw1 >> sh) & 1);
                            /* the AND is 1 at colours (a, b) = (1 ^ al, 1 ^ be); control bits per colour pair:
                             * c(0,0) = (r0, r1), c(0,1) = (r0^a^b, r1^a), c(1,0) = (r0^b, r1^a^b), a^b = al^be.
                             * R_ij (A_i, B_j) with S1, S2 linear: S(a0, b1) = S(a0, b0) ^ S(0, D) etc. */
                            const block mab = _mm_xor_si128(mal, mbe);
                            const block w = _mm_xor_si128(a0, _mm_shuffle_epi32(b0, 0x4e));
                            const block s1 = _mm_xor_si128(_mm_shuffle_epi32(w, 0x4e), _mm_and_si128(a0, lo));
                            const block s2 = _mm_xor_si128(w, _mm_andnot_si128(lo, b0));
                            const block R00 = _mm_xor_si128(_mm_blend_epi16(b0, a0, 0xf0),
                                                            _mm_xor_si128(_mm_and_si128(s1, m0), _mm_and_si128(s2, m1)));
                            const block R01 = _mm_xor_si128(
                                _mm_and_si128(_mm_xor_si128(b0, D), lo),
                                _mm_xor_si128(_mm_and_si128(_mm_xor_si128(s1, s1DB), _mm_xor_si128(m0, mab)),
                                              _mm_andnot_si128(_mm_xor_si128(m1, mal), _mm_xor_si128(s2, s2DB))));
                            const block R10 = _mm_xor_si128(
                                _mm_andnot_si128(lo, _mm_xor_si128(a0, D)),
                                _mm_xor_si128(_mm_andnot_si128(_mm_xor_si128(m0, mbe), _mm_xor_si128(s1, s1DA)),
                                              _mm_and_si128(_mm_xor_si128(s2, s2DA), _mm_xor_si128(m1, mab))));
                            const block k00 = _mm_xor_si128(h[0][i], h[4][i]), m00 = _mm_xor_si128(h[2][i], h[4][i]);
                            const block k01 = _mm_xor_si128(h[0][i], h[5][i]), m01 = _mm_xor_si128(h[3][i], h[5][i]);
                            const block k10 = _mm_xor_si128(h[1][i], h[5][i]);
                            /* C = output label at colours (0,0) minus its Delta; V01 = (G2, G1 ^ G2); V10_L = G0 ^ G2 */
                            const block C = _mm_xor_si128(_mm_xor_si128(_mm_unpacklo_epi64(k00, m00), R00),
                                                          _mm_and_si128(D, _mm_and_si128(mal, mbe)));
                            const block V01 = _mm_xor_si128(_mm_xor_si128(_mm_unpacklo_epi64(k01, m01), R01),
                                                            _mm_xor_si128(_mm_and_si128(D, _mm_andnot_si128(mbe, mal)), C));
                            const block V10 = _mm_xor_si128(_mm_xor_si128(k10, R10),
                                                            _mm_xor_si128(_mm_and_si128(D, _mm_andnot_si128(mal, mbe)), C));
                            const block GG = _mm_xor_si128(_mm_blend_epi16(V10, V01, 0xf0), _mm_unpacklo_epi64(V01, V01));
                            _mm_storeu_si128((block *)(T + 24 * (size_t)i), GG);
                            _mm_storel_epi64((block *)(T + 24 * (size_t)i + 16), V01);
                            e0 |= th_e(k00) << sh;
                            e1 |= th_e(m00) << sh;
                            e2 |= th_e(k01) << sh;
                            e3 |= th_e(k10) << sh;
                            e4 |= th_e(m01) << sh;
                            O[i] = _mm_xor_si128(C, _mm_and_si128(B[i], cz));
                        }
                        /* the five control bits of these 64 instances */
                        const uint32_t left = end - 64 * q;
                        const uint64_t keep = left >= 64 ? ~0ULL : (1ULL << left) - 1;
                        const uint64_t a = ~alw[q], bb = ~bew[q], ab = a ^ bb;
                        zw[0][q] = (rw0 ^ e0) & keep;
                        zw[1][q] = (rw1 ^ e1) & keep;
                        zw[4][q] = (rw0 ^ ab ^ zw[0][q] ^ e2) & keep;
                        zw[2][q] = (rw0 ^ bb ^ zw[0][q] ^ zw[4][q] ^ e3) & keep;
                        zw[3][q] = (rw1 ^ a ^ zw[1][q] ^ zw[4][q] ^ e4) & keep;
                    }
                    for (int q = 0; q < 5; q++) memcpy(zp + q * plane, zw[q], zbytes);
                } else {
                    for (uint32_t i = 0; i < cnt; i++) h[2][i] = _mm_xor_si128(X[i], Y[i]);
                    hash_batch(gate_key(&kc, twc + t), X, h[0], cnt, twc + t, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t + 1), Y, h[1], cnt, twc + t + 1, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t + 2), h[2], h[2], cnt, twc + t + 2, tpi, dom);
                    for (int q = 0; q < 5; q++) memcpy(zw[q], zp + q * plane, zbytes);
                    for (uint32_t i = 0; i < cnt; i++) {
                        const uint64_t ci = lsb(X[i]), cj = lsb(Y[i]), cx = ci ^ cj, sh = i & 63, w = i >> 6;
                        const block k1 = _mm_xor_si128(h[0][i], h[2][i]), k2 = _mm_xor_si128(h[1][i], h[2][i]);
                        const uint64_t z4 = cx & (zw[4][w] >> sh);
                        const uint64_t c0 = ((zw[0][w] >> sh) ^ (ci & (zw[2][w] >> sh)) ^ z4 ^ th_e(k1)) & 1;
                        const uint64_t c1 = ((zw[1][w] >> sh) ^ (cj & (zw[3][w] >> sh)) ^ z4 ^ th_e(k2)) & 1;
                        const block mP = _mm_set_epi64x((long long)(cj - 1), (long long)(ci - 1)); /* (1^i, 1^j) masks */
                        const block R = th_rmul(X[i], Y[i], mP, bm(c0), bm(c1));
                        const block GG = _mm_loadu_si128((const block *)(T + 24 * (size_t)i));
                        const block G2 = _mm_loadl_epi64((const block *)(T + 24 * (size_t)i + 16));
                        const block v = _mm_xor_si128(_mm_andnot_si128(mP, GG), _mm_and_si128(_mm_unpacklo_epi64(G2, G2), bm(cx)));
                        O[i] = _mm_xor_si128(_mm_xor_si128(_mm_unpacklo_epi64(k1, k2), _mm_xor_si128(v, R)),
                                             _mm_and_si128(B[i], cz));
                    }
                }
                break;
            }
            case G_ANDG: {
                /* a AND g, g known to the garbler: one garbler half gate, 1 ciphertext */
                block *h0 = hb, *h1 = hb + NB;
                block *T = (block *)(ct + (size_t)c * n + i0 * 16);
                if (garbler) {
                    for (uint32_t i = 0; i < cnt; i++) {
                        h0[i] = A[i];
                        h1[i] = _mm_xor_si128(A[i], D);
                    }
                    hash_batch(gate_key(&kc, twc + t), h0, h0, cnt, twc + t, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t), h1, h1, cnt, twc + t, tpi, dom);
                    for (uint32_t i = 0; i < cnt; i++) {
                        const uint64_t gb = (ys[(i0 + i) * k + p1] >> p2) & 1;
                        const block tt = _mm_xor_si128(_mm_xor_si128(h0[i], h1[i]), _mm_and_si128(D, bm(gb)));
                        _mm_storeu_si128(T + i, tt);
                        O[i] = _mm_xor_si128(h0[i], _mm_and_si128(tt, bm(lsb(A[i]))));
                    }
                } else {
                    hash_batch(gate_key(&kc, twc + t), A, h0, cnt, twc + t, tpi, dom);
                    for (uint32_t i = 0; i < cnt; i++)
                        O[i] = _mm_xor_si128(h0[i], _mm_and_si128(_mm_loadu_si128(T + i), bm(lsb(A[i]))));
                }
                break;
            }
            case G_B2A:
            case G_B2A2: {
                /* unary Boolean-to-arithmetic gate in Z_{2^p1}, result scaled by 2^p2:
                 * evaluator E = h(L) + colour * T; garbler R with E = R + w * bit.
                 * B2A: weight +1 (G[2] == 0) or -1 (G[2] == 1), into acc0.
                 * B2A2 (ReLU output, n wire = G[2]): from one hash, Z (low half, weight r') into acc0
                 * and Y (high half, weight 1 - 2 r') into acc1, r' = permute bit of the n wire;
                 * Z's ciphertexts in the gate's first region, Y's in the second. */
                const uint64_t mk = mmask(p1);
                const uint64_t rlen = (n * p1 + 7) / 8;
                const uint64_t w0 = (op == G_B2A2 && G[3]) ? ~0ULL : 1ULL; /* B2A2: weight -1 if G[3] */
                uint8_t *rz = arith + roff[g] + i0 * p1 / 8, *ry = arith + roff[g] + rlen + i0 * p1 / 8;
                block *h0 = hb, *h1 = hb + NB;
                if (garbler) {
                    for (uint32_t i = 0; i < cnt; i++) {
                        h0[i] = A[i];
                        h1[i] = _mm_xor_si128(A[i], D);
                    }
                    hash_batch(gate_key(&kc, twc + t), h0, h0, cnt, twc + t, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t), h1, h1, cnt, twc + t, tpi, dom);
                    if (op == G_B2A) {
                        const uint64_t wz = (uint64_t)G[2] ? ~0ULL : 1ULL;
                        for (uint32_t i = 0; i < cnt; i++) {
                            const uint64_t p = lsb(A[i]), sel = -p;
                            const uint64_t a0 = lo64(h0[i]), a1 = lo64(h1[i]);
                            const uint64_t hc0 = (a1 & sel) | (a0 & ~sel), hc1 = (a0 & sel) | (a1 & ~sel);
                            const uint64_t R = hc0 - wz * p;
                            tv[i] = R + wz * (1 - p) - hc1;
                            acc0[i] += (R & mk) << p2;
                        }
                        pack_vals(rz, tv, cnt, p1);
                    } else {
                        for (uint32_t i = 0; i < cnt; i++) {
                            const uint64_t p = lsb(A[i]), sel = -p;
                            const uint64_t rp = lsb(B[i]), wz = rp * w0, wy = (1 - 2 * rp) * w0;
                            uint64_t a0 = lo64(h0[i]), a1 = lo64(h1[i]);
                            uint64_t hc0 = (a1 & sel) | (a0 & ~sel), hc1 = (a0 & sel) | (a1 & ~sel);
                            uint64_t R = hc0 - wz * p;
                            tv[i] = R + wz * (1 - p) - hc1;
                            acc0[i] += (R & mk) << p2;
                            a0 = hi64(h0[i]);
                            a1 = hi64(h1[i]);
                            hc0 = (a1 & sel) | (a0 & ~sel);
                            hc1 = (a0 & sel) | (a1 & ~sel);
                            R = hc0 - wy * p;
                            tv2[i] = R + wy * (1 - p) - hc1;
                            acc1[i] += (R & mk) << p2;
                        }
                        pack_vals(rz, tv, cnt, p1);
                        pack_vals(ry, tv2, cnt, p1);
                    }
                } else {
                    hash_batch(gate_key(&kc, twc + t), A, h0, cnt, twc + t, tpi, dom);
                    unpack_vals(rz, arith + roff[g] + rlen, tv, cnt, p1);
                    if (op == G_B2A2) unpack_vals(ry, arith + roff[g] + 2 * rlen, tv2, cnt, p1);
                    for (uint32_t i = 0; i < cnt; i++) {
                        const uint64_t col = -lsb(A[i]);
                        acc0[i] += ((lo64(h0[i]) + (tv[i] & col)) & mk) << p2;
                    }
                    if (op == G_B2A2)
                        for (uint32_t i = 0; i < cnt; i++) {
                            const uint64_t col = -lsb(A[i]);
                            acc1[i] += ((hi64(h0[i]) + (tv2[i] & col)) & mk) << p2;
                        }
                }
                break;
            }
            case G_GVAL: {
                /* ReLU output term n * M, M = bits [p1, p1 + p2) of the garbler's value G[2] (plaintext to
                 * the garbler, no message): n M = r M + c (1 - 2r) M with r = n's permute bit, so the
                 * garbler moves r M into its share and (1 - 2r) M into the Y the run's NOUT converts. */
                if (garbler) {
                    const uint64_t mk = mmask(p2);
                    for (uint32_t i = 0; i < cnt; i++) {
                        const uint64_t rp = lsb(A[i]);
                        const uint64_t M = p2 ? (ys[(i0 + i) * k + (uint32_t)G[2]] >> p1) & mk : 0;
                        acc0[i] -= rp * M;
                        acc1[i] -= (1 - 2 * rp) * M;
                    }
                }
                break;
            }
            case G_NOUT: {
                /* ReLU output: E = h(L_n) + c * (T + Y) in Z_{2^p1}; garbler R_B = h(colour-0 label) */
                const uint64_t mk = mmask(p1);
                const uint64_t rlen = (n * p1 + 7) / 8;
                uint8_t *rz = arith + roff[g] + i0 * p1 / 8;
                block *h0 = hb, *h1 = hb + NB;
                if (garbler) {
                    for (uint32_t i = 0; i < cnt; i++) {
                        const block k0 = _mm_xor_si128(A[i], _mm_and_si128(D, bm(lsb(A[i]))));
                        h0[i] = k0;
                        h1[i] = _mm_xor_si128(k0, D);
                    }
                    hash_batch(gate_key(&kc, twc + t), h0, h0, cnt, twc + t, tpi, dom);
                    hash_batch(gate_key(&kc, twc + t), h1, h1, cnt, twc + t, tpi, dom);
                    for (uint32_t i = 0; i < cnt; i++) {
                        const uint64_t rb = lo64(h0[i]) & mk;
                        tv[i] = rb - lo64(h1[i]) - acc1[i];
                        acc0[i] += rb;
                        acc1[i] = 0;
                    }
                    pack_vals(rz, tv, cnt, p1);
                } else {
                    hash_batch(gate_key(&kc, twc + t), A, h0, cnt, twc + t, tpi, dom);
                    unpack_vals(rz, arith + roff[g] + rlen, tv, cnt, p1);
                    for (uint32_t i = 0; i < cnt; i++) {
                        const uint64_t col = -lsb(A[i]);
                        acc0[i] += (lo64(h0[i]) + ((tv[i] + acc1[i]) & col)) & mk;
                        acc1[i] = 0;
                    }
                }
                break;
            }
            case G_REVEAL: {
                uint8_t *rz = arith + roff[g] + i0 / 8;
                if (garbler) {
                    for (uint32_t i = 0; i < cnt; i++) tv[i] = lsb(A[i]);
                    pack_vals(rz, tv, cnt, 1);
                } else {
                    unpack_vals(rz, arith + roff[g] + (n + 7) / 8, tv, cnt, 1);
                    for (uint32_t i = 0; i < cnt; i++) acc0[i] |= (lsb(A[i]) ^ tv[i]) << p2;
                }
                break;
            }
            default:
                rc = -2;
                goto done;
            }
        }
        for (uint32_t j = 0; j < nout; j++)
            for (uint32_t i = 0; i < cnt; i++) out[(i0 + i) * nout + j] = accs[(size_t)j * NB + i] & outmask;
    }
done:
    if (garbler) memset(&prg, 0, sizeof prg);
    free(W); free(hb); free(accs); free(acc1); free(tv); free(tv2); free(roff); free(L); free(xb);
    return rc;
}
