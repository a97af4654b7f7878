/* The OT kernels' bit-matrix transpose. */
#ifndef BN_GC_TRANSPOSE_H
#define BN_GC_TRANSPOSE_H

#include "common.h"

/* The OT kernels' transpose: 128 x 128 bit tiles, Y[r] bit c = X[c] bit r (X: one 128-row block of
 * 128 columns, Y: its 128 rows of 16 bytes). Two tiles (row blocks 2p, 2p + 1) are interleaved
 * block by block, tile[(p * 128 + c) * 2 + (q & 1)], so that one 32-byte load gives the same column
 * of both and every step below stays inside a 128-bit lane: two tiles per AVX2 instruction.
 * With r = 8R + rho and c = 8C + gamma: an 8 x 8 bit transpose inside every byte of the 8 columns
 * 8C .. 8C + 7 (three delta swaps), then for each rho a 16 x 16 byte transpose (four unpack stages)
 * of byte R of those results over C. No movemasks, and each output row is one 16-byte store. With
 * GFNI the 8 x 8 bit transposes are one instruction each (transpose.c). */
static inline block *tile_at(block *tile, uint32_t c, int q) {
    return tile + ((size_t)(q >> 1) * 128 + c) * 2 + (q & 1);
}


/* row blocks 0 .. nb-1 of the tiles -> nb * 128 rows of 16 bytes at out (nt: non-temporal stores) */
void bn_tiles_to_rows(const block *tile, int nb, uint8_t *out, int nt);

/* Rows of a large output are written with non-temporal stores: they would leave the cache before they
 * are read anyway, and streaming them saves reading every line in before it is overwritten (half the
 * memory traffic). Small outputs (the circuit's chunks) stay in the cache for their consumer. */
#define NT_MIN_BYTES ((uint64_t)8 << 20)
static inline int stream_rows(const uint8_t *out, uint64_t rows) {
    return ((uintptr_t)out & 15) == 0 && rows * 16 >= NT_MIN_BYTES;
}

#endif
