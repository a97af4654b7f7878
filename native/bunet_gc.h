/* BUNET native garbled-circuit engine: public C interface (also parsed by cffi, keep it plain). */
#ifndef BUNET_GC_H
#define BUNET_GC_H
#include <stddef.h>
#include <stdint.h>

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
int bn_gc_run(int garbler, const int32_t *gates, uint32_t ngates, uint32_t nwires, uint64_t n, uint32_t k,
              uint32_t b, const uint64_t *ys, const uint8_t *ot_keys, uint32_t ot_k, const uint8_t *u,
              uint64_t m, uint64_t blk_off, const uint8_t *in_labels, const uint8_t *rk, const uint8_t *delta, uint64_t tweak_base, uint32_t tpi, uint8_t *ct, uint32_t ctpi,
              uint8_t *arith, uint64_t arith_len, uint64_t *out, uint64_t outmask);
int bn_gc_run_multi(int garbler, const int32_t *gates, uint32_t ngates, uint32_t nwires, uint64_t n, uint32_t k,
                    uint32_t b, const uint64_t *ys, const uint8_t *ot_keys, uint32_t ot_k, const uint8_t *u,
                    uint64_t m, uint64_t blk_off, const uint8_t *in_labels, const uint8_t *rk, const uint8_t *delta,
                    uint64_t tweak_base, uint32_t tpi, uint8_t *ct, uint32_t ctpi, uint8_t *arith,
                    uint64_t arith_len, uint64_t *out, uint64_t outmask, uint32_t nout);
#endif
