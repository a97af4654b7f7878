#include "aes.h"

#include <errno.h>
#include <sys/random.h>

int bn_getrandom(uint8_t *buf, size_t len) {
    while (len > 0) {
        ssize_t r = getrandom(buf, len, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return BN_ERANDOM;
        }
        buf += r;
        len -= (size_t)r;
    }
    return 0;
}

void bn_aes_keysched(const uint8_t *key, uint8_t *out176) {
    block rk[11];
    rk[0] = _mm_loadu_si128((const block *)key);
#define EXP(i, rc) rk[i] = expand_step(rk[i - 1], _mm_aeskeygenassist_si128(rk[i - 1], rc))
    EXP(1, 0x01); EXP(2, 0x02); EXP(3, 0x04); EXP(4, 0x08); EXP(5, 0x10);
    EXP(6, 0x20); EXP(7, 0x40); EXP(8, 0x80); EXP(9, 0x1b); EXP(10, 0x36);
#undef EXP
    memcpy(out176, rk, sizeof rk);
}

/* out[i] = H(in[i], tweak = (dom, tw0 + i*twstep)); in may equal out */
static void hash_batch_sse(const aeskey *K, const block *in, block *out, size_t cnt, uint64_t tw0,
                           uint64_t twstep, uint64_t dom) {
    size_t i = 0;
    block s[8], x[8];
    for (; i + 8 <= cnt; i += 8) {
        for (int j = 0; j < 8; j++) {
            s[j] = sigma(_mm_loadu_si128(in + i + j));
            x[j] = _mm_xor_si128(s[j], _mm_set_epi64x((long long)dom, (long long)(tw0 + (i + j) * twstep)));
        }
        aes8(K, x);
        for (int j = 0; j < 8; j++) _mm_storeu_si128(out + i + j, _mm_xor_si128(x[j], s[j]));
    }
    for (; i < cnt; i++) {
        s[0] = sigma(_mm_loadu_si128(in + i));
        x[0] = _mm_xor_si128(s[0], _mm_set_epi64x((long long)dom, (long long)(tw0 + i * twstep)));
        aes1(K, x);
        _mm_storeu_si128(out + i, _mm_xor_si128(x[0], s[0]));
    }
}

/* the same with 256-bit VAES: 16 blocks in flight (used only when cpuid reports VAES+AVX2) */
__attribute__((target("avx2,vaes"))) static void hash_batch_vaes(const aeskey *K, const block *in, block *out,
                                                                 size_t cnt, uint64_t tw0, uint64_t twstep,
                                                                 uint64_t dom) {
    size_t i = 0;
    if (cnt >= 16) {
        __m256i rk[11];
        for (int r = 0; r < 11; r++) rk[r] = _mm256_broadcastsi128_si256(K->k[r]);
        const __m256i himask = _mm256_set_epi64x(-1, 0, -1, 0);
        __m256i tw = _mm256_set_epi64x((long long)dom, (long long)(tw0 + twstep), (long long)dom, (long long)tw0);
        const __m256i step = _mm256_set_epi64x(0, (long long)(2 * twstep), 0, (long long)(2 * twstep));
        for (; i + 16 <= cnt; i += 16) {
            __m256i sg[8], x[8];
            for (int j = 0; j < 8; j++) {
                const __m256i a = _mm256_loadu_si256((const __m256i *)(in + i + 2 * j));
                sg[j] = _mm256_xor_si256(_mm256_shuffle_epi32(a, 78), _mm256_and_si256(a, himask));
                x[j] = _mm256_xor_si256(_mm256_xor_si256(sg[j], tw), rk[0]);
                tw = _mm256_add_epi64(tw, step);
            }
            for (int r = 1; r < 10; r++)
                for (int j = 0; j < 8; j++) x[j] = _mm256_aesenc_epi128(x[j], rk[r]);
            for (int j = 0; j < 8; j++) {
                x[j] = _mm256_aesenclast_epi128(x[j], rk[10]);
                _mm256_storeu_si256((__m256i *)(out + i + 2 * j), _mm256_xor_si256(x[j], sg[j]));
            }
        }
    }
    if (i < cnt) hash_batch_sse(K, in + i, out + i, cnt - i, tw0 + i * twstep, twstep, dom);
}

void bn_hash_batch_k(const aeskey *K, const block *in, block *out, size_t cnt, uint64_t tw0,
                              uint64_t twstep, uint64_t dom) {
    if (bn_have_vaes())
        hash_batch_vaes(K, in, out, cnt, tw0, twstep, dom);
    else
        hash_batch_sse(K, in, out, cnt, tw0, twstep, dom);
}


/* hash_batch under the row keys of master: runs of items whose tweaks share a key group */
void bn_hash_rows(const aeskey *master, const block *in, block *out, size_t cnt, uint64_t tw0,
                      uint64_t twstep, uint64_t dom) {
    keyctx kc;
    kc.master = *master;
    kc.valid = 0;
    for (size_t i = 0; i < cnt;) {
        const uint64_t t = tw0 + i * twstep, g = t >> ROW_KEY_SHIFT, left = ((g + 1) << ROW_KEY_SHIFT) - t;
        size_t run = twstep ? (size_t)((left + twstep - 1) / twstep) : cnt - i;
        if (run > cnt - i || run == 0) run = cnt - i;
        bn_hash_batch_k(row_key(&kc, dom, g), in + i, out + i, run, t, twstep, dom);
        i += run;
    }
}

void bn_hash_batch(const uint8_t *rk, const uint8_t *in, uint8_t *out, size_t cnt, uint64_t tw0,
                   uint64_t twstep, uint64_t dom) {
    aeskey K;
    load_key(&K, rk);
    bn_hash_rows(&K, (const block *)in, (block *)out, cnt, tw0, twstep, dom);
}

int bn_prg_init(prg_t *p) {
    uint8_t key[16], rk[176];
    if (bn_getrandom(key, 16) != 0) return BN_ERANDOM;
    bn_aes_keysched(key, rk);
    load_key(&p->K, rk);
    p->ctr = 0;
    memset(key, 0, sizeof key);
    memset(rk, 0, sizeof rk);
    return 0;
}


int bn_prg_fill(uint8_t *out, size_t len) {
    prg_t p;
    if (bn_prg_init(&p) != 0) return BN_ERANDOM;
    block x[8];
    while (len > 0) {
        prg_next8(&p, x);
        size_t take = len < 128 ? len : 128;
        memcpy(out, x, take);
        out += take;
        len -= take;
    }
    memset(x, 0, sizeof x);
    memset(&p, 0, sizeof p);
    return 0;
}

