/* The evaluator's side of a circuit chunk: one label per wire, ciphertexts read where the garbler
 * wrote them. Constant time like the garbler (colours select by masks). */
#include "circuit.h"
#include "pack.h"

int bn_evaluate_chunk(gc_run *s, uint64_t i0, uint32_t cnt) {
    const bn_gc_args *a = s->a;
    const int32_t *const gates = a->gates;
    const uint32_t ngates = a->ngates, tpi = a->tpi;
    const uint64_t n = a->n, twc = a->tweak_base + i0 * tpi, dom = GC_DOM;
    uint8_t *const ct = a->ct, *const arith = a->arith;
    const uint64_t *const roff = s->roff;
    block *const W = s->W, *const hb = s->hb, *const xb = s->xb;
    uint64_t *const accs = s->accs, *const acc1 = s->acc1, *const tv = s->tv, *const tv2 = s->tv2;
    keyctx *const kc = &s->kc;
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
        case BN_G_NOT:  /* the garbler flips its zero label: the active label stays */
        case BN_G_XORG: /* the same with a garbler bit */
            for (uint32_t i = 0; i < cnt; i++) O[i] = A[i];
            break;
        case BN_G_SUM: /* a ^ c ^ g (full-adder sum bit with a garbler share bit) */
            for (uint32_t i = 0; i < cnt; i++) O[i] = _mm_xor_si128(A[i], B[i]);
            break;
        case BN_G_AND:
        case BN_G_CARRY: {
            /* three-halves AND (see th_rmul): G0 G1 G2 (24 bytes per instance) + 5 control bits (bit planes
             * z0..z4 of n bits each), hash tweaks t (A), t+1 (B), t+2 (A^B).
             * CARRY (full-adder carry with a garbler share bit g): X = a ^ c, Y = c ^ g, out = c ^ (X & Y). */
            const block *X = A, *Y = B;
            if (op == BN_G_CARRY) { /* Y = c ^ g is c's active label */
                for (uint32_t i = 0; i < cnt; i++) xb[i] = _mm_xor_si128(A[i], B[i]);
                X = xb;
            }
            const block cz = op == BN_G_CARRY ? _mm_set1_epi8(-1) : _mm_setzero_si128();
            uint8_t *T = ct + (size_t)c * n + i0 * 24;
            const uint64_t plane = (n + 7) / 8, zbytes = (cnt + 7) / 8;
            uint8_t *zp = arith + roff[g] + i0 / 8;
            uint64_t zw[5][NW] = {{0}};
            block *h[6];
            for (int q = 0; q < 6; q++) h[q] = hb + (size_t)q * NB;
            for (uint32_t i = 0; i < cnt; i++) h[2][i] = _mm_xor_si128(X[i], Y[i]);
            bn_hash_batch_k(gate_key(kc, twc + t), X, h[0], cnt, twc + t, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t + 1), Y, h[1], cnt, twc + t + 1, tpi, dom);
            bn_hash_batch_k(gate_key(kc, twc + t + 2), h[2], h[2], cnt, twc + t + 2, tpi, dom);
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
            break;
        }
        case BN_G_ANDG: {
            /* a AND g, g known to the garbler: one garbler half gate, 1 ciphertext */
            block *h0 = hb;
            block *T = (block *)(ct + (size_t)c * n + i0 * 16);
            bn_hash_batch_k(gate_key(kc, twc + t), A, h0, cnt, twc + t, tpi, dom);
            for (uint32_t i = 0; i < cnt; i++)
                O[i] = _mm_xor_si128(h0[i], _mm_and_si128(_mm_loadu_si128(T + i), bm(lsb(A[i]))));
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
            uint8_t *rz = arith + roff[g] + i0 * p1 / 8, *ry = arith + roff[g] + rlen + i0 * p1 / 8;
            block *h0 = hb;
            bn_hash_batch_k(gate_key(kc, twc + t), A, h0, cnt, twc + t, tpi, dom);
            bn_unpack_vals(rz, arith + roff[g] + rlen, tv, cnt, p1);
            if (op == BN_G_B2A2) bn_unpack_vals(ry, arith + roff[g] + 2 * rlen, tv2, cnt, p1);
            for (uint32_t i = 0; i < cnt; i++) {
                const uint64_t col = -lsb(A[i]);
                acc0[i] += ((lo64(h0[i]) + (tv[i] & col)) & mk) << p2;
            }
            if (op == BN_G_B2A2)
                for (uint32_t i = 0; i < cnt; i++) {
                    const uint64_t col = -lsb(A[i]);
                    acc1[i] += ((hi64(h0[i]) + (tv2[i] & col)) & mk) << p2;
                }
            break;
        }
        case BN_G_GVAL: {
            /* ReLU output term n * M, M = bits [p1, p1 + p2) of the garbler's value G[2] (plaintext to
             * the garbler, no message): n M = r M + c (1 - 2r) M with r = n's permute bit, so the
             * garbler moves r M into its share and (1 - 2r) M into the Y the run's NOUT converts: nothing here. */
            break;
        }
        case BN_G_NOUT: {
            /* ReLU output: E = h(L_n) + c * (T + Y) in Z_{2^p1}; garbler R_B = h(colour-0 label) */
            const uint64_t mk = mmask(p1);
            const uint64_t rlen = (n * p1 + 7) / 8;
            uint8_t *rz = arith + roff[g] + i0 * p1 / 8;
            block *h0 = hb;
            bn_hash_batch_k(gate_key(kc, twc + t), A, h0, cnt, twc + t, tpi, dom);
            bn_unpack_vals(rz, arith + roff[g] + rlen, tv, cnt, p1);
            for (uint32_t i = 0; i < cnt; i++) {
                const uint64_t col = -lsb(A[i]);
                acc0[i] += (lo64(h0[i]) + ((tv[i] + acc1[i]) & col)) & mk;
                acc1[i] = 0;
            }
            break;
        }
        case BN_G_REVEAL: {
            uint8_t *rz = arith + roff[g] + i0 / 8;
            bn_unpack_vals(rz, arith + roff[g] + (n + 7) / 8, tv, cnt, 1);
            for (uint32_t i = 0; i < cnt; i++) acc0[i] |= (lsb(A[i]) ^ tv[i]) << p2;
            break;
        }
        default:
            return BN_EOPCODE;
        }
    }
    return BN_OK;
}
