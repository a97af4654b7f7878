/* The garbler's side of a circuit chunk: free XOR, three-halves ANDs (fresh random control bits),
 * garbler half gates, and the arithmetic output gates' ciphertexts. Constant time: selections by
 * secret bits (colours, the garbler's values) use masks, never branches or secret indices. */
#include "circuit.h"
#include "pack.h"

int bn_garble_chunk(gc_run *s, uint64_t i0, uint32_t cnt) {
    const bn_gc_args *a = s->a;
    const int32_t *const gates = a->gates;
    const uint32_t ngates = a->ngates, k = a->k, tpi = a->tpi;
    const uint64_t n = a->n, twc = a->tweak_base + i0 * tpi, dom = GC_DOM;
    uint8_t *const ct = a->ct, *const arith = a->arith;
    const uint64_t *const roff = s->roff;
    block *const W = s->W, *const hb = s->hb, *const xb = s->xb, *const yb = s->yb;
    uint64_t *const accs = s->accs, *const acc1 = s->acc1, *const tv = s->tv, *const tv2 = s->tv2;
    keyctx *const kc = &s->kc;
    const uint64_t *const ys = a->ys;
    const block D = s->D, lo = _mm_set_epi64x(0, -1);
    const block s1DA = s->s1DA, s2DA = s->s2DA, s1DB = s->s1DB, s2DB = s->s2DB;
    prg_t *const prg = &s->prg;
    for (uint32_t g = 0; g < ngates; g++) {
        const int32_t *G = gates + (size_t)g * GREC;
        const int op = G[0];
        uint64_t *const acc0 = accs + (size_t)G[8] * NB; /* this gate's output accumulator (public index) */
        block *A = W + (size_t)G[1] * NB, *B = W + (size_t)G[2] * NB, *O = W + (size_t)G[3] * NB;
        const uint64_t t = (uint64_t)G[4];
        const uint32_t c = (uint32_t)G[5], p1 = (uint32_t)G[6], p2 = (uint32_t)G[7];
        switch (op) {
        case BN_G_XOR:
            for (uint32_t i = 0; i < cnt; i++) O[i] = _mm_xor_si128(A[i], B[i]);
            break;
        case BN_G_NOT:
            for (uint32_t i = 0; i < cnt; i++) O[i] = _mm_xor_si128(A[i], D);
            break;
        case BN_G_SUM: /* a ^ c ^ g (full-adder sum bit with a garbler share bit) */
            for (uint32_t i = 0; i < cnt; i++) {
                const uint64_t gb = (ys[(i0 + i) * k + p1] >> p2) & 1;
                O[i] = _mm_xor_si128(_mm_xor_si128(A[i], B[i]), _mm_and_si128(D, bm(gb)));
            }
            break;
        case BN_G_XORG:
            for (uint32_t i = 0; i < cnt; i++) {
                const uint64_t gb = (ys[(i0 + i) * k + p1] >> p2) & 1;
                O[i] = _mm_xor_si128(A[i], _mm_and_si128(D, bm(gb)));
            }
            break;
        case BN_G_AND:
        case BN_G_CARRY: {
            /* three-halves AND (see th_rmul): G0 G1 G2 (24 bytes per instance) + 5 control bits (bit planes
             * z0..z4 of n bits each), hash tweaks t (A), t+1 (B), t+2 (A^B).
             * CARRY (full-adder carry with a garbler share bit g): X = a ^ c, Y = c ^ g, out = c ^ (X & Y). */
            const block *X = A, *Y = B;
            if (op == BN_G_CARRY) {
                for (uint32_t i = 0; i < cnt; i++) {
                    xb[i] = _mm_xor_si128(A[i], B[i]);
                    const uint64_t gb = (ys[(i0 + i) * k + p1] >> p2) & 1;
                    yb[i] = _mm_xor_si128(B[i], _mm_and_si128(D, bm(gb)));
                }
                X = xb;
                Y = yb;
            }
            const block cz = op == BN_G_CARRY ? _mm_set1_epi8(-1) : _mm_setzero_si128();
            uint8_t *T = ct + (size_t)c * n + i0 * 24;
            const uint64_t plane = (n + 7) / 8, zbytes = (cnt + 7) / 8;
            uint8_t *zp = arith + roff[g] + i0 / 8;
            uint64_t zw[5][NW] = {{0}};
            block *h[6];
            for (int q = 0; q < 6; q++) h[q] = hb + (size_t)q * NB;
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
            bn_hash_batch_k(gate_key(kc, twc + t), A0, h[0], cnt, twc + t, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t), h[1], h[1], cnt, twc + t, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t + 1), B0, h[2], cnt, twc + t + 1, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t + 1), h[3], h[3], cnt, twc + t + 1, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t + 2), h[4], h[4], cnt, twc + t + 2, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t + 2), h[5], h[5], cnt, twc + t + 2, tpi, dom);
            block rb[8]; /* r0 of instance i: bit i of words 0..NW-1; r1: bit i of words NW..2NW-1 */
            prg_next8(prg, rb);
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
            break;
        }
        case BN_G_ANDG: {
            /* a AND g, g known to the garbler: one garbler half gate, 1 ciphertext */
            block *h0 = hb, *h1 = hb + NB;
            block *T = (block *)(ct + (size_t)c * n + i0 * 16);
            for (uint32_t i = 0; i < cnt; i++) {
                h0[i] = A[i];
                h1[i] = _mm_xor_si128(A[i], D);
            }
            bn_hash_batch_k(gate_key(kc, twc + t), h0, h0, cnt, twc + t, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t), h1, h1, cnt, twc + t, tpi, dom);
            for (uint32_t i = 0; i < cnt; i++) {
                const uint64_t gb = (ys[(i0 + i) * k + p1] >> p2) & 1;
                const block tt = _mm_xor_si128(_mm_xor_si128(h0[i], h1[i]), _mm_and_si128(D, bm(gb)));
                _mm_storeu_si128(T + i, tt);
                O[i] = _mm_xor_si128(h0[i], _mm_and_si128(tt, bm(lsb(A[i]))));
            }
            break;
        }
        case BN_G_B2A:
        case BN_G_B2A2: {
            /* unary Boolean-to-arithmetic gate in Z_{2^p1}, result scaled by 2^p2:
             * evaluator E = h(L) + colour * T; garbler R with E = R + w * bit.
             * B2A: weight +1 (G[2] == 0) or -1 (G[2] == 1), into acc0.
             * B2A2 (ReLU output, n wire = G[2]): from one hash, Z (low half, weight r') into acc0
             * and Y (high half, weight 1 - 2 r') into acc1, r' = permute bit of the n wire;
             * Z's ciphertexts in the gate's first region, Y's in the second. */
            const uint64_t mk = mmask(p1);
            const uint64_t rlen = (n * p1 + 7) / 8;
            const uint64_t w0 = (op == BN_G_B2A2 && G[3]) ? ~0ULL : 1ULL; /* B2A2: weight -1 if G[3] */
            uint8_t *rz = arith + roff[g] + i0 * p1 / 8, *ry = arith + roff[g] + rlen + i0 * p1 / 8;
            block *h0 = hb, *h1 = hb + NB;
            for (uint32_t i = 0; i < cnt; i++) {
                h0[i] = A[i];
                h1[i] = _mm_xor_si128(A[i], D);
            }
            bn_hash_batch_k(gate_key(kc, twc + t), h0, h0, cnt, twc + t, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t), h1, h1, cnt, twc + t, tpi, dom);
            if (op == BN_G_B2A) {
                const uint64_t wz = (uint64_t)G[2] ? ~0ULL : 1ULL;
                for (uint32_t i = 0; i < cnt; i++) {
                    const uint64_t p = lsb(A[i]), sel = -p;
                    const uint64_t a0 = lo64(h0[i]), a1 = lo64(h1[i]);
                    const uint64_t hc0 = (a1 & sel) | (a0 & ~sel), hc1 = (a0 & sel) | (a1 & ~sel);
                    const uint64_t R = hc0 - wz * p;
                    tv[i] = R + wz * (1 - p) - hc1;
                    acc0[i] += (R & mk) << p2;
                }
                bn_pack_vals(rz, tv, cnt, p1);
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
                bn_pack_vals(rz, tv, cnt, p1);
                bn_pack_vals(ry, tv2, cnt, p1);
            }
            break;
        }
        case BN_G_GVAL: {
            /* ReLU output term n * M, M = bits [p1, p1 + p2) of the garbler's value G[2] (plaintext to
             * the garbler, no message): n M = r M + c (1 - 2r) M with r = n's permute bit, so the
             * garbler moves r M into its share and (1 - 2r) M into the Y the run's NOUT converts. */
            const uint64_t mk = mmask(p2);
            for (uint32_t i = 0; i < cnt; i++) {
                const uint64_t rp = lsb(A[i]);
                const uint64_t M = p2 ? (ys[(i0 + i) * k + (uint32_t)G[2]] >> p1) & mk : 0;
                acc0[i] -= rp * M;
                acc1[i] -= (1 - 2 * rp) * M;
            }
            break;
        }
        case BN_G_NOUT: {
            /* ReLU output: E = h(L_n) + c * (T + Y) in Z_{2^p1}; garbler R_B = h(colour-0 label) */
            const uint64_t mk = mmask(p1);
            uint8_t *rz = arith + roff[g] + i0 * p1 / 8;
            block *h0 = hb, *h1 = hb + NB;
            for (uint32_t i = 0; i < cnt; i++) {
                const block k0 = _mm_xor_si128(A[i], _mm_and_si128(D, bm(lsb(A[i]))));
                h0[i] = k0;
                h1[i] = _mm_xor_si128(k0, D);
            }
            bn_hash_batch_k(gate_key(kc, twc + t), h0, h0, cnt, twc + t, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t), h1, h1, cnt, twc + t, tpi, dom);
            for (uint32_t i = 0; i < cnt; i++) {
                const uint64_t rb = lo64(h0[i]) & mk;
                tv[i] = rb - lo64(h1[i]) - acc1[i];
                acc0[i] += rb;
                acc1[i] = 0;
            }
            bn_pack_vals(rz, tv, cnt, p1);
            break;
        }
        case BN_G_REVEAL: {
            uint8_t *rz = arith + roff[g] + i0 / 8;
            for (uint32_t i = 0; i < cnt; i++) tv[i] = lsb(A[i]);
            bn_pack_vals(rz, tv, cnt, 1);
            break;
        }
        default:
            return BN_EOPCODE;
        }
    }
    return BN_OK;
}
