/* BUNET native garbled-circuit engine: public C interface (also parsed by cffi, keep it plain). */
#ifndef BUNET_GC_H
#define BUNET_GC_H
#include <stddef.h>
#include <stdint.h>

#include "bunet_status.h"

int bn_cpu_ok(void);
int bn_have_vaes(void);
int bn_getrandom(uint8_t *buf, size_t len);
void bn_aes_keysched(const uint8_t *key, uint8_t *out176);
int bn_prg_fill(uint8_t *out, size_t len);
void bn_hash_batch(const uint8_t *rk, const uint8_t *in, uint8_t *out, size_t cnt,
                   uint64_t tw0, uint64_t twstep, uint64_t dom);
void bn_cot_recv(const uint8_t *leaves, uint32_t k, uint64_t blk_off, uint64_t m, const uint8_t *choice,
                 uint8_t *cm, uint8_t *t_rows);
void bn_cot_send(const uint8_t *leaves, uint32_t k, const uint8_t *delta, uint64_t blk_off, uint64_t m,
                 const uint8_t *cm, uint8_t *q_rows);
void bn_ot_check_prove(const uint8_t *t_rows, const uint8_t *choice, uint64_t m, const uint8_t *seed,
                       uint8_t *proof);
int bn_ot_check_verify(const uint8_t *q_rows, const uint8_t *delta, uint64_t m, const uint8_t *seed,
                       const uint8_t *proof);
int bn_luts_send(uint64_t n, uint32_t ntab, const uint32_t *tabs, uint64_t stride, const uint8_t *q_rows,
                 const uint8_t *delta, const uint8_t *rk, uint64_t row0, const uint64_t *a, const uint64_t *rho,
                 uint8_t *tables);
int bn_luts_recv(uint64_t n, uint32_t ntab, const uint32_t *tabs, uint64_t stride, const uint8_t *t_rows,
                 const uint8_t *rk, uint64_t row0, const uint64_t *x, const uint8_t *tables, uint64_t *out);
void bn_pack_bits(const uint64_t *vals, uint64_t cnt, uint32_t m, uint8_t *out, uint64_t out_bits);
void bn_pack_choice(const uint64_t *vals, uint64_t n, uint32_t k, uint32_t bits, uint8_t *out, uint64_t out_bits);
/* Gate opcodes of a compiled circuit (bunet/gc/circuits.py builds the records). */
enum bn_gc_op {
    BN_G_XOR = 0,    /* o = a ^ b */
    BN_G_NOT = 1,    /* o = a ^ 1 */
    BN_G_XORG = 2,   /* o = a ^ g, g: bit p2 of the garbler's value p1 */
    BN_G_AND = 3,    /* o = a & b (three halves) */
    BN_G_ANDG = 4,   /* o = a & g (garbler half gate) */
    BN_G_B2A = 5,    /* arithmetic output: +-a in Z_{2^p1}, scaled by 2^p2 */
    BN_G_B2A2 = 6,   /* ReLU output pair from one hash (see garble.c) */
    BN_G_NOUT = 7,   /* ReLU output: closes a B2A2 / GVAL run */
    BN_G_REVEAL = 8, /* the bit a, revealed to the evaluator at bit p2 of its output */
    BN_G_CARRY = 9,  /* full-adder carry with a garbler bit */
    BN_G_SUM = 10,   /* full-adder sum with a garbler bit */
    BN_G_GVAL = 11   /* ReLU output term from the garbler's plaintext value */
};

/* int32 fields per gate record: op, a, b, o, tweak, ct/bit offset, p1, p2, output index */
enum { BN_GC_GATE_FIELDS = 9 };

/* One run of a compiled circuit over n instances (a struct per call: bn_gc_garble, bn_gc_evaluate).
 * Input labels come straight from the OT extension, chunk by chunk (no label matrix in memory), or
 * from in_labels (n * k * b labels made with the request, bn_pack_choice's row order):
 *   garbler:   zero labels q (ot_leaves: its leaf key schedules, cm: the client's message);
 *   evaluator: active labels t (ot_leaves: its leaf key schedules; cm unused).
 * The garbler writes ct (each ciphertext gate has a region at byte c * n: 24 bytes per instance per
 * three-halves AND, 16 per garbler half gate) and arith (per-gate regions of n packed values,
 * arith_len bytes in all); the evaluator reads them. Both write out (n x nout, row-major: instance
 * i, output j at i * nout + j, each & outmask): every arithmetic output gate adds into the
 * accumulator of its output index (gate field 8, < nout). The caller turns these into shares
 * (garbler: -out mod 2^l) or labels. A B2A2 run and its NOUT target the same output (checked). */
typedef struct {
    const int32_t *gates;      /* ngates x BN_GC_GATE_FIELDS */
    uint32_t ngates, nwires;   /* nwires: wire slots, the first k * b the inputs */
    uint32_t nout;             /* outputs per instance, 1 .. 64 */
    uint64_t n;                /* instances */
    uint32_t k, b;             /* input values per instance, bits per value */
    const uint8_t *rk;         /* 176-byte key schedule of the session's hash key */
    uint64_t tweak_base;       /* the run's first tweak */
    uint32_t tpi;              /* tweaks per instance */
    const uint8_t *in_labels;  /* NULL: labels from the OT extension */
    const uint8_t *ot_leaves;  /* leaf key schedules (176 bytes each) */
    uint32_t ot_k;             /* SoftSpoken k */
    uint64_t m;                /* OT rows: n * k * b rounded up to 128 */
    uint64_t blk_off;          /* the run's first 128-row block of the OT extension */
    uint8_t *ct;               /* three-halves and half-gate ciphertexts */
    uint8_t *arith;            /* packed arithmetic ciphertexts and control bits */
    uint64_t arith_len;
    uint64_t *out;
    uint64_t outmask;
    /* garbler only */
    const uint64_t *ys;        /* n x k garbler values (bits for XORG, ANDG, SUM, CARRY; GVAL) */
    const uint8_t *delta;      /* the free-XOR offset (16 bytes) */
    const uint8_t *cm;         /* the client's OT-extension message (in_labels == NULL) */
    /* garbler, OT rows from cm only: the client's consistency proof over the m rows and chk_pad rows after
     * them (bunet/gc/otcheck.py), checked as the chunks are garbled; *chk_ok = 1 iff it holds (the caller
     * sends nothing made in the run otherwise). chk_seed NULL: no check. */
    const uint8_t *chk_seed;   /* the challenges' AES key (16 bytes) */
    const uint8_t *chk_proof;  /* x~ || t~ (32 bytes) */
    uint64_t chk_pad;          /* padding rows after the m rows (a multiple of 128) */
    int32_t *chk_ok;
} bn_gc_args;

int bn_gc_garble(const bn_gc_args *a);
int bn_gc_evaluate(const bn_gc_args *a);

/* 1: every kernel (this engine and silent OT) takes its SSE4.1/AES-NI path, no AVX2, VAES or BMI2;
 * 0: the fastest path the CPU has (the default). Results are bit-identical either way. */
void bn_force_sse(int on);
/* 1: the AVX2 path in place of the GFNI one where both exist (tests compare them); 0: the default */
void bn_force_no_gfni(int on);
/* the wide paths in use: 1 AVX2, 2 VAES, 4 BMI2, 8 GFNI */
int bn_simd_paths(void);
#endif
