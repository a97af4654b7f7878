#include "ot_ext.h"
#include "transpose.h"

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
    const int avx2 = bn_use_avx2(), nt = stream_rows(out, rows);
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
        bn_tiles_to_rows(tile, nb, out + s0 * 16, nt);
    }
    if (nt) _mm_sfence();
}

/* client's t rows [r0, r0 + rows) (multiples of 128) */
void bn_ot_t_rows(const uint8_t *leaves, uint32_t k, uint64_t blk_off, uint64_t r0, uint64_t rows,
                       uint8_t *out) {
    ot_rows(leaves, k, blk_off, r0, rows, NULL, NULL, NULL, out);
}

/* garbler's q rows [r0, r0 + rows); cm = the client's message (see cm_off). With the dummy stream in
 * place of the missing leaf, XOR_x (x ^ d)_j G_x = v_j ^ d_j u (the dummy's coefficient is 0). */
void bn_ot_q_rows(const uint8_t *leaves, uint32_t k, const uint8_t *delta, const uint8_t *cm,
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
    bn_ot_q_rows(leaves, k, delta, cm, blk_off, 0, m, q_rows);
}
