/* The tweakable hash under per-gate and per-row keys, and the AES-CTR PRG. */
#ifndef BN_GC_AES_H
#define BN_GC_AES_H

#include "common.h"

/* out[i] = H(in[i], tweak = (dom, tw0 + i*twstep)) under K (VAES when available); in may equal out */
void bn_hash_batch_k(const aeskey *K, const block *in, block *out, size_t cnt, uint64_t tw0, uint64_t twstep,
                     uint64_t dom);

/* Per-gate keys (multi-instance security, as emp's MITCCRH): every hashing gate, on every chunk
 * of <= NB instances, hashes under its own AES key k_j = expand(pi(j)), j = the gate's first
 * tweak on that chunk (unique in the session); the instance tweak still separates the hashes
 * under one key. So no fixed key ever sees more than a few hundred hash inputs. */
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

/* bn_hash_batch_k under the row keys of master: runs of items whose tweaks share a key group */
void bn_hash_rows(const aeskey *master, const block *in, block *out, size_t cnt, uint64_t tw0, uint64_t twstep,
                  uint64_t dom);

/* AES-CTR PRG under a fresh getrandom() key (each prg_init is a fresh PRG). */
typedef struct {
    aeskey K;
    uint64_t ctr;
} prg_t;

/* a fresh PRG: 0, or BN_ERANDOM */
int bn_prg_init(prg_t *p);

/* the next 8 blocks of the stream */
static inline void prg_next8(prg_t *p, block *x) {
    for (int j = 0; j < 8; j++) x[j] = _mm_set_epi64x(0, (long long)(p->ctr + j));
    p->ctr += 8;
    aes8(&p->K, x);
}

#endif
