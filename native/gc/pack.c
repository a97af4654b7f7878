#include "pack.h"

static void pack_vals_serial(uint8_t *dst, const uint64_t *v, uint32_t cnt, uint32_t m) {
    unsigned __int128 acc = 0;
    uint32_t nb = 0;
    const uint64_t mk = mmask(m);
    for (uint32_t i = 0; i < cnt; i++) {
        acc |= (unsigned __int128)(v[i] & mk) << nb;
        nb += m;
        if (nb >= 64) {
            const uint64_t w = (uint64_t)acc;
            memcpy(dst, &w, 8);
            dst += 8;
            acc >>= 64;
            nb -= 64;
        }
    }
    while (nb > 0) {
        *dst++ = (uint8_t)acc;
        acc >>= 8;
        nb = nb > 8 ? nb - 8 : 0;
    }
}

/* groups of 8 values (m bytes each) built word by word without a loop-carried chain */
void bn_pack_vals(uint8_t *dst, const uint64_t *v, uint32_t cnt, uint32_t m) {
    if (m > 56) {
        pack_vals_serial(dst, v, cnt, m);
        return;
    }
    const uint64_t mk = mmask(m);
    uint32_t i = 0;
    for (; i + 8 <= cnt; i += 8) {
        uint64_t gw[8] = {0};
        for (uint32_t j = 0; j < 8; j++) {
            const uint64_t x = v[i + j] & mk;
            const uint32_t off = j * m, s = off & 63;
            gw[off >> 6] |= x << s;
            gw[(off >> 6) + 1] |= (x >> 1) >> (63 - s); /* the bits past the word (none if s == 0) */
        }
        memcpy(dst, gw, m);
        dst += m;
    }
    if (i < cnt) pack_vals_serial(dst, v + i, cnt - i, m);
}

/* the low m bits of each of cnt values, back to back (value i at bits i*m ..), zero-padded to out_bits */
void bn_pack_bits(const uint64_t *vals, uint64_t cnt, uint32_t m, uint8_t *out, uint64_t out_bits) {
    const uint64_t used = (cnt * m + 7) / 8;
    bn_pack_vals(out, vals, (uint32_t)cnt, m);
    memset(out + used, 0, out_bits / 8 - used);
}

/* The client's choice bits in the engine's row order: instances in chunks of NB (the last one
 * shorter), and within a chunk of cnt instances row w * cnt + i holds input wire w = j * bits + t
 * (bit t of value j) of instance i, so a chunk's OT rows are directly its input-wire label slots.
 * vals: n * k values; out: out_bits / 8 bytes (rows past n * k * bits zero). */
void bn_pack_choice(const uint64_t *vals, uint64_t n, uint32_t k, uint32_t bits, uint8_t *out, uint64_t out_bits) {
    const uint32_t nin = k * bits;
    uint64_t acc = 0, pos = 0;
    uint32_t nb = 0;
    for (uint64_t i0 = 0; i0 < n; i0 += NB) {
        const uint32_t cnt = (uint32_t)(n - i0 < NB ? n - i0 : NB);
        for (uint32_t w = 0; w < nin; w++) {
            const uint64_t *v = vals + i0 * k + w / bits;
            const uint32_t t = w % bits;
            for (uint32_t i = 0; i < cnt; i++) {
                acc |= ((v[(size_t)i * k] >> t) & 1) << nb;
                if (++nb == 64) {
                    memcpy(out + pos, &acc, 8);
                    pos += 8;
                    acc = 0;
                    nb = 0;
                }
            }
        }
    }
    while (nb > 0) {
        out[pos++] = (uint8_t)acc;
        acc >>= 8;
        nb = nb > 8 ? nb - 8 : 0;
    }
    memset(out + pos, 0, out_bits / 8 - pos);
}

void bn_unpack_vals(const uint8_t *src, const uint8_t *end, uint64_t *v, uint32_t cnt, uint32_t m) {
    const uint64_t mk = mmask(m);
    if (m <= 57) { /* every value within one 8-byte load at its first byte: no loop-carried chain */
        for (uint32_t i = 0; i < cnt; i++) {
            const uint64_t off = (uint64_t)i * m;
            const uint8_t *p = src + (off >> 3);
            uint64_t w = 0;
            const size_t avail = (size_t)(end - p);
            if (avail >= 8)
                memcpy(&w, p, 8);
            else
                memcpy(&w, p, avail); /* the region's last bytes */
            v[i] = (w >> (off & 7)) & mk;
        }
        return;
    }
    unsigned __int128 acc = 0;
    uint32_t nb = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        if (nb < m) {
            uint64_t w = 0;
            const size_t avail = (size_t)(end - src);
            const size_t take = avail >= 8 ? 8 : avail;
            memcpy(&w, src, take);
            src += take;
            acc |= (unsigned __int128)w << nb;
            nb += 64;
        }
        v[i] = (uint64_t)acc & mk;
        acc >>= m;
        nb -= m;
    }
}
