/* BUNET silent correlated-OT extension (Ferret-style primal LPN, regular noise): public C interface
 * (also parsed by cffi, keep it plain). One call runs one whole iteration of one party; gk is the
 * half-tree GGM expansion's AES key schedule (176 bytes, public, per session). */
#ifndef BUNET_SILENT_OT_H
#define BUNET_SILENT_OT_H
#include <stddef.h>
#include <stdint.h>

int bn_sot_param(uint32_t id, uint32_t *t, uint32_t *logk, uint32_t *h, int *test_only);
int bn_sot_check(uint32_t t, uint32_t logk, uint32_t h, int allow_test);
uint64_t bn_sot_msg_len(uint32_t t, uint32_t h);
int bn_sot_send(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *gk, const uint8_t *delta,
                const uint8_t *base_q, uint8_t *msg, uint8_t *out_q, const uint16_t *pos);
/* pos (send, choice, recv): NULL, or the LPN positions of the parameter set's n rows from bn_sot_positions
 * (n * 10 entries; logk <= 16 only), shared by every iteration */
int bn_sot_positions(uint32_t logk, uint64_t n, uint16_t *pos);
int bn_sot_choice(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *base_c, uint8_t *out_c,
                  const uint16_t *pos);
int bn_sot_recv(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *gk, const uint8_t *base_c,
                const uint8_t *base_t, const uint8_t *msg, uint8_t *out_t, const uint16_t *pos);
/* out[j] = rows[j] ^ d_{off + j} Delta, d packed LSB first (the sender's q rows for the receiver's corrections) */
void bn_sot_derand(const uint8_t *rows, uint64_t cnt, const uint8_t *d_bits, uint64_t off, const uint8_t *delta,
                   uint8_t *out);
#endif
