/* SoftSpoken OT extension (IKNP at k = 1): the parties' rows. */
#ifndef BN_GC_OT_EXT_H
#define BN_GC_OT_EXT_H

#include "common.h"

/* client's t rows [r0, r0 + rows) (multiples of 128) */
void bn_ot_t_rows(const uint8_t *leaves, uint32_t k, uint64_t blk_off, uint64_t r0, uint64_t rows, uint8_t *out);
/* garbler's q rows [r0, r0 + rows); cm = the client's message */
void bn_ot_q_rows(const uint8_t *leaves, uint32_t k, const uint8_t *delta, const uint8_t *cm, uint64_t blk_off,
                  uint64_t r0, uint64_t rows, uint8_t *out);

#endif
