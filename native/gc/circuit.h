/* Running a compiled circuit: the state the chunk loop (run.c) shares with the per-party gate code
 * (garble.c, evaluate.c), and the three-halves AND gate's algebra. */
#ifndef BN_GC_CIRCUIT_H
#define BN_GC_CIRCUIT_H

#include "aes.h"

#define GREC BN_GC_GATE_FIELDS
#define GC_DOM 0x4743000000000000ULL /* "GC" gate-hash domain */

/* One run's buffers and keys. Per chunk of cnt <= NB instances from i0, W holds the wire labels
 * (wire w of instance i at W[w * NB + i]; the k * b input wires filled by run.c) and accs the nout
 * output accumulators (output j of instance i at accs[j * NB + i]). */
typedef struct {
    const bn_gc_args *a;
    keyctx kc;                          /* per-gate keys under the session key */
    block D;                            /* garbler: Delta; evaluator: 0 */
    block s1DA, s2DA, s1DB, s2DB;       /* garbler: S1, S2 of (Delta, 0) and (0, Delta) (see th_rmul) */
    block *W, *hb, *xb, *yb;            /* labels, hash scratch (8 NB), CARRY's inputs (NB each) */
    uint64_t *accs, *acc1, *tv, *tv2;   /* accumulators; B2A2 runs' Y; packed-value scratch */
    uint64_t *roff;                     /* each gate's byte offset in arith */
    prg_t prg;                          /* garbler: the three-halves gates' random control bits */
} gc_run;

/* the gates of one chunk; BN_OK or BN_EOPCODE */
int bn_garble_chunk(gc_run *s, uint64_t i0, uint32_t cnt);
int bn_evaluate_chunk(gc_run *s, uint64_t i0, uint32_t cnt);

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

#endif
