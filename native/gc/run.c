/* The chunk loop of a circuit run (bn_gc_garble, bn_gc_evaluate): checks the circuit records
 * against the arguments, then per chunk of NB instances takes its input labels from the OT
 * extension (or in_labels), runs the party's gates (garble.c / evaluate.c) and writes the outputs.
 * The circuit (built in Python, the same for all n instances) is a list of gates; every gate is
 * applied to a whole chunk in one loop, so hashing is batched and there is no per-gate Python call. */
#include "circuit.h"
#include "ot_check.h"
#include "ot_ext.h"

/* each gate's byte offset in arith (roff) and the checks of the records; BN_OK or BN_EINVAL */
static int gate_offsets(const bn_gc_args *a, uint64_t *roff) {
    const uint64_t n = a->n;
    uint64_t off = 0;
    int32_t run = -1; /* output index of an open B2A2 run (its NOUT must match) */
    for (uint32_t g = 0; g < a->ngates; g++) {
        const int32_t *G = a->gates + (size_t)g * GREC;
        roff[g] = off;
        if (G[8] < 0 || (uint32_t)G[8] >= a->nout ||
            (G[0] != BN_G_B2A && G[0] != BN_G_B2A2 && G[0] != BN_G_NOUT && G[0] != BN_G_GVAL && G[0] != BN_G_REVEAL &&
             G[8]))
            return BN_EINVAL;
        if ((G[0] == BN_G_B2A2 || G[0] == BN_G_NOUT || G[0] == BN_G_GVAL) && run >= 0 && run != G[8]) return BN_EINVAL;
        if (G[0] == BN_G_GVAL && ((uint32_t)G[2] >= a->k || G[6] < 0 || G[7] < 0 || G[6] + G[7] > 64))
            return BN_EINVAL;
        if (G[0] == BN_G_B2A2 || G[0] == BN_G_GVAL) run = G[8];
        if (G[0] == BN_G_NOUT) run = -1;
        if (G[0] == BN_G_B2A || G[0] == BN_G_NOUT) off += (n * (uint64_t)G[6] + 7) / 8;
        if (G[0] == BN_G_B2A2) off += 2 * ((n * (uint64_t)G[6] + 7) / 8);
        if (G[0] == BN_G_REVEAL) off += (n + 7) / 8;
        if (G[0] == BN_G_AND || G[0] == BN_G_CARRY) off += 5 * ((n + 7) / 8); /* three-halves control bit planes */
    }
    return off == a->arith_len ? BN_OK : BN_EINVAL;
}

/* this chunk's input labels straight from OT extension: rows i0*nin .. (i0+cnt)*nin, wire-major
 * (bn_pack_choice): a full chunk's rows are the input slots of W as they are; chk: the consistency
 * check's sums to add them to (garbler) */
static void input_labels(const bn_gc_args *a, int garbler, uint64_t i0, uint32_t cnt, block *W, uint8_t *L,
                         bn_chk *chk) {
    const uint32_t nin = a->k * a->b;
    const uint64_t r0 = i0 * nin, rows = ((uint64_t)cnt * nin + 127) / 128 * 128;
    uint8_t *dst = cnt == NB ? (uint8_t *)W : L;
    if (a->in_labels)
        memcpy(dst, a->in_labels + r0 * 16, (size_t)cnt * nin * 16); /* labels made with the request */
    else if (garbler)
        bn_ot_q_rows(a->ot_leaves, a->ot_k, a->delta, a->cm, a->blk_off, r0, rows, dst);
    else
        bn_ot_t_rows(a->ot_leaves, a->ot_k, a->blk_off, r0, rows, dst);
    if (chk) bn_chk_rows(chk, dst, NULL, r0, rows); /* while they are in the cache */
    if (cnt != NB)
        for (uint32_t w = 0; w < nin; w++) memcpy(W + (size_t)w * NB, L + (size_t)w * cnt * 16, (size_t)cnt * 16);
}

/* the garbler's verdict on the client's proof: the padding rows after the m rows, then the check */
static int check_padding(const bn_gc_args *a, bn_chk *chk, uint8_t *L) {
    for (uint64_t r0 = a->m; r0 < a->m + a->chk_pad; r0 += 128) {
        bn_ot_q_rows(a->ot_leaves, a->ot_k, a->delta, a->cm, a->blk_off, r0, 128, L);
        bn_chk_rows(chk, L, NULL, r0, 128);
    }
    return bn_chk_verify(chk, a->delta, a->chk_proof);
}

static int run(const bn_gc_args *a, int garbler) {
    const uint64_t n = a->n;
    const uint32_t nout = a->nout, nin = a->k * a->b;
    if (nout < 1 || nout > 64 || (n * nin + 127) / 128 * 128 != a->m) return BN_EINVAL;
    if (garbler && (!a->delta || (!a->in_labels && !a->cm))) return BN_EINVAL;
    const int checked = a->chk_seed != NULL;
    if (checked && (!garbler || a->in_labels || !a->chk_proof || !a->chk_ok || a->chk_pad % 128)) return BN_EINVAL;
    if (checked) *a->chk_ok = 0;
    bn_chk chk;
    if (checked) bn_chk_init(&chk, a->chk_seed);
    gc_run s;
    memset(&s, 0, sizeof s);
    s.a = a;
    load_key(&s.kc.master, a->rk);
    s.kc.valid = 0;
    s.D = garbler ? _mm_loadu_si128((const block *)a->delta) : _mm_setzero_si128();
    const block lo = _mm_set_epi64x(0, -1), Dsw = _mm_shuffle_epi32(s.D, 0x4e);
    s.s1DA = _mm_xor_si128(Dsw, _mm_and_si128(s.D, lo));
    s.s2DA = s.D;
    s.s1DB = s.D;
    s.s2DB = _mm_xor_si128(Dsw, _mm_andnot_si128(lo, s.D));
    s.W = aligned_alloc(64, (size_t)a->nwires * NB * sizeof(block));
    s.hb = aligned_alloc(64, 8 * NB * sizeof(block));
    s.accs = aligned_alloc(64, (size_t)nout * NB * sizeof(uint64_t)); /* one accumulator per output */
    s.acc1 = aligned_alloc(64, NB * sizeof(uint64_t));
    s.tv = aligned_alloc(64, NB * sizeof(uint64_t));
    s.tv2 = aligned_alloc(64, NB * sizeof(uint64_t));
    s.xb = aligned_alloc(64, 2 * NB * sizeof(block));
    s.yb = s.xb ? s.xb + NB : NULL;
    s.roff = malloc(((size_t)a->ngates + 1) * sizeof(uint64_t));
    uint8_t *L = aligned_alloc(64, ((size_t)NB * nin + 128) * 16); /* >= 128 rows for check_padding */
    int rc = BN_OK;
    if (!s.W || !s.hb || !s.accs || !s.acc1 || !s.tv || !s.tv2 || !s.roff || !L || !s.xb)
        rc = BN_ENOMEM;
    if (rc == BN_OK) rc = gate_offsets(a, s.roff);
    if (rc == BN_OK && garbler) rc = bn_prg_init(&s.prg);
    for (uint64_t i0 = 0; rc == BN_OK && i0 < n; i0 += NB) {
        const uint32_t cnt = (uint32_t)(n - i0 < NB ? n - i0 : NB);
        input_labels(a, garbler, i0, cnt, s.W, L, checked ? &chk : NULL);
        memset(s.accs, 0, (size_t)nout * NB * sizeof(uint64_t));
        memset(s.acc1, 0, cnt * sizeof(uint64_t));
        rc = garbler ? bn_garble_chunk(&s, i0, cnt) : bn_evaluate_chunk(&s, i0, cnt);
        if (rc == BN_OK)
            for (uint32_t j = 0; j < nout; j++)
                for (uint32_t i = 0; i < cnt; i++) a->out[(i0 + i) * nout + j] = s.accs[(size_t)j * NB + i] & a->outmask;
    }
    if (rc == BN_OK && checked) *a->chk_ok = check_padding(a, &chk, L);
    memset(&s.prg, 0, sizeof s.prg);
    free(s.W); free(s.hb); free(s.accs); free(s.acc1); free(s.tv); free(s.tv2); free(s.roff); free(L); free(s.xb);
    return rc;
}

int bn_gc_garble(const bn_gc_args *a) { return run(a, 1); }

int bn_gc_evaluate(const bn_gc_args *a) { return run(a, 0); }
