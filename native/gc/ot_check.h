/* The OT consistency check's running sums (ot_check.c), for callers that check rows as they make them. */
#ifndef BN_GC_OT_CHECK_H
#define BN_GC_OT_CHECK_H

#include "common.h"

/* sum chi_i rows_i as three unreduced Karatsuba partial products, and sum choice_i chi_i */
typedef struct {
    uint8_t rk[176]; /* the challenges' AES key schedule */
    block lo, hi, mid, xs;
} bn_chk;

void bn_chk_init(bn_chk *c, const uint8_t *seed);
/* adds rows i0 .. i0 + m - 1 (i0 % 8 == 0) at rows; choice: NULL, or their packed choice bits (bit 0 of
 * choice[0] is row i0's) */
void bn_chk_rows(bn_chk *c, const uint8_t *rows, const uint8_t *choice, uint64_t i0, uint64_t m);
/* the sender's verdict over the rows added: 1 iff sum chi_i q_i == t~ ^ x~ Delta (proof = x~ || t~) */
int bn_chk_verify(const bn_chk *c, const uint8_t *delta, const uint8_t *proof);

#endif
