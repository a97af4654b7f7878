/* BUNET silent correlated-OT extension (Ferret-style primal LPN, regular noise): public C interface
 * (also parsed by cffi, keep it plain). One call runs one whole iteration of one party. */
#ifndef BUNET_SILENT_OT_H
#define BUNET_SILENT_OT_H
#include <stddef.h>
#include <stdint.h>

int bn_sot_param(uint32_t id, uint32_t *t, uint32_t *logk, uint32_t *h, int *test_only);
int bn_sot_check(uint32_t t, uint32_t logk, uint32_t h, int allow_test);
uint64_t bn_sot_msg_len(uint32_t t, uint32_t h);
int bn_sot_send(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *gk, const uint8_t *rk,
                uint64_t tw0, uint64_t dom, const uint8_t *delta, const uint8_t *base_q, uint8_t *msg, uint8_t *out_q);
/* pos_out (NULL, or n * 10 entries; logk <= 16 only): the LPN positions, for bn_sot_recv's pos_in */
int bn_sot_choice(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *base_c, uint8_t *out_c,
                  uint16_t *pos_out);
int bn_sot_recv(uint32_t t, uint32_t logk, uint32_t h, int allow_test, const uint8_t *gk, const uint8_t *rk,
                uint64_t tw0, uint64_t dom, const uint8_t *base_c, const uint8_t *base_t, const uint8_t *msg,
                uint8_t *out_t, const uint16_t *pos_in);
void bn_sot_derand(const uint8_t *rows, uint64_t cnt, const uint8_t *d_bits, const uint8_t *delta, uint8_t *out);
#endif
