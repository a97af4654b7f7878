/* Bit packing of the circuits' arithmetic ciphertexts. */
#ifndef BN_GC_PACK_H
#define BN_GC_PACK_H

#include "common.h"

/* Arithmetic ciphertexts: each gate has its own region holding n values of m bits, packed
 * back to back (LSB first); a chunk starts at instance i0 (a multiple of 8, so byte aligned). */
void bn_pack_vals(uint8_t *dst, const uint64_t *v, uint32_t cnt, uint32_t m);
/* the inverse of bn_pack_vals; end: the end of the region (never read past) */
void bn_unpack_vals(const uint8_t *src, const uint8_t *end, uint64_t *v, uint32_t cnt, uint32_t m);

#endif
