/* ChaCha20 (RFC 8439) keystreams: eight blocks at a time, AVX2 or portable. */
#ifndef BH_CHACHA20_H
#define BH_CHACHA20_H

#include "common.h"

typedef struct {
    uint32_t st[16];
    uint8_t buf[512];
    int pos;
    void (*blocks)(const uint32_t *, uint8_t *);
} stream_t;

void bh_stream_init(stream_t *s, const uint8_t *key, const uint32_t nonce[3], uint32_t counter);
/* stream for one ciphertext's randomness: nonce (ct low, ct high, label) */
void bh_stream_ct(stream_t *s, const uint8_t *key, int64_t ct, uint32_t label);
void bh_stream_read(stream_t *s, uint8_t *out, size_t len);

#endif
