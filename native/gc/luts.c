#include "aes.h"

/* ---------------------------------------------------------------- look-up tables
 * A function of the server's d bits x (d <= 8) and the client's d bits a, w bits per entry (w = 1:
 * the carry out, "generate"; w = 2: generate and "propagate"), as a 1-of-2^d OT built from d random
 * OTs (Naor-Pinkas). The table is 2^d * w bits, entry x's bit p at position x * w + p, each XOR-ed
 * with a fresh random bit of the client (rho_p) and with a pad:
 *   pad(x, p) = XOR_j  R_j^{x_j} [ position x * w + p with index bit J = j + w - 1 removed ],
 *   R_j^b = H(q_j ^ b delta), 2^(d-1) * w bits (blocks: tweaks 2r, 2r + 1 of global row r).
 * The client (sender of the table and of the reverse OT extension, rows q / q ^ delta) knows every
 * R; the server (receiver, rows t_j = q_j ^ x_j delta for its own bits x) knows R_j^{x_j} only, so
 * it opens entry x and nothing else: every bit of R_j^b pads exactly one table bit (those of the
 * entries with x_j = b), so the bits it cannot open are independent and uniform.
 *   generate  = [a + x >= 2^d],   propagate = [a + x == 2^d - 1].
 * A "link" (w = 3) chains a carry through the tables: its d index bits are the server's d - 1 chunk
 * bits x and, on top, its share s of the carry in c = s ^ rho_in (rho_in: the client's mask of the
 * previous table's bit), one bit per entry,
 *   link[x + 2^(d-1) s] = [a + x + (s ^ rho_in) >= 2^(d-1)] ^ rho_out,
 * padded like a w = 1 table of d index bits (the server opens exactly its (x, s) entry). The
 * client's rho word holds rho_out at the table's column and rho_in at the next one (a link takes two
 * columns); the server gets one bit, at the column.
 *
 * All of a value's tables at once (bn_luts_send / bn_luts_recv): item i has rows i * stride ..
 * i * stride + stride - 1 of q / t (global row: row0 + that); table t = (off, d, w) = tabs[3t ..]
 * reads its d rows from off, its bits of a / x are bits off .. off + d - 1 of the item's value, its
 * table sits at tables + i * tstride + (the earlier tables' bytes), at least one byte each, and its
 * w masked bits are bits col .. col + w - 1 (col: the earlier tables' w summed) of the item's rho
 * word (client) and of its output word (server). The items' rows are contiguous, so each block of
 * items is hashed in one pass, no gather. */
static const uint64_t LUT_DOM = 0x4c55540000000000ULL; /* "LUT" hash domain */

/* The low 32 bits of x spread, in order, over the positions of a word whose index bit J (< 6) is 0
 * (blocks of 2^J bits, every other block): the inverse of removing index bit J. Portable: shifts and
 * masks; with BMI2 one pdep (chosen at run time, like AVX2 and VAES). */
static inline uint64_t spread32_soft(uint64_t x, uint32_t J) {
    x &= 0xffffffffULL;
    if (J <= 4) x = (x | x << 16) & 0x0000FFFF0000FFFFULL;
    if (J <= 3) x = (x | x << 8) & 0x00FF00FF00FF00FFULL;
    if (J <= 2) x = (x | x << 4) & 0x0F0F0F0F0F0F0F0FULL;
    if (J <= 1) x = (x | x << 2) & 0x3333333333333333ULL;
    if (J == 0) x = (x | x << 1) & 0x5555555555555555ULL;
    return x;
}

static const uint64_t spread_mask[6] = {0x5555555555555555ULL, 0x3333333333333333ULL, 0x0F0F0F0F0F0F0F0FULL,
                                        0x00FF00FF00FF00FFULL, 0x0000FFFF0000FFFFULL, 0x00000000FFFFFFFFULL};

__attribute__((target("bmi2"))) static inline uint64_t spread32_bmi2(uint64_t x, uint32_t J) {
    return _pdep_u64(x, spread_mask[J]);
}


/* bits per table entry: w, but 1 for a link (w = 3) */
static inline uint32_t lut_wp(uint32_t w) { return w == 3 ? 1 : w; }

static inline uint32_t lut_bytes(uint32_t d, uint32_t w) {
    const uint32_t bits = (1u << d) * lut_wp(w);
    return bits >= 8 ? bits / 8 : 1;
}

#define LUT_ROWS 4096 /* rows hashed per pass (64 KiB per buffer): a block of stride-row items */
#define LUT_MAX_TABS 16

typedef struct {
    uint32_t off, d, w, nblk, tby, toff, col;
} lut_tab;

/* parse and check the tables; returns the bytes per item, 0 if invalid */
static uint64_t lut_tabs(uint32_t ntab, const uint32_t *tabs, uint64_t stride, lut_tab *T, uint32_t *nblk) {
    uint64_t toff = 0;
    uint32_t col = 0;
    *nblk = 1;
    if (ntab < 1 || ntab > LUT_MAX_TABS || stride < 1 || stride > LUT_ROWS) return 0;
    for (uint32_t t = 0; t < ntab; t++) {
        const uint32_t off = tabs[3 * t], d = tabs[3 * t + 1], w = tabs[3 * t + 2];
        const uint32_t cols = w == 3 ? 2 : w; /* a link reads rho_out and rho_in */
        if (d < 1 || d > 8 || w < 1 || w > 3 || (w == 3 && d < 2) || (uint64_t)off + d > stride || col + cols > 64)
            return 0;
        const uint32_t tb = (1u << d) * lut_wp(w), kbits = tb / 2;
        T[t] = (lut_tab){off, d, w, kbits > 128 ? kbits / 128 : 1, lut_bytes(d, w), (uint32_t)toff, col};
        if (T[t].nblk > *nblk) *nblk = T[t].nblk;
        toff += T[t].tby;
        col += cols;
    }
    return toff;
}

/* pad word wi (64 bits) of row r: word wi & 1 of hash block wi / 2 (H0: blocks h = 0, H1: h = 1) */
static inline uint64_t pad_word(const block *H0, const block *H1, size_t r, uint32_t wi) {
    return ((const uint64_t *)((wi < 2 ? H0 : H1) + r))[wi & 1];
}

/* H[h][r] = H(rows[r] (^ D), tweak 2 (grow0 + r) + h) for r < cnt: the pads of cnt contiguous rows */
static void lut_hash_rows(const aeskey *K, const block *rows, const block *D, uint64_t cnt, uint64_t grow0,
                          uint32_t nblk, block *const *H, block *tmp) {
    const block *in = rows;
    if (D) {
        for (uint64_t r = 0; r < cnt; r++) tmp[r] = _mm_xor_si128(_mm_loadu_si128(rows + r), *D);
        in = tmp;
    }
    for (uint32_t h = 0; h < nblk; h++) bn_hash_rows(K, in, H[h], cnt, 2 * grow0 + h, 2, LUT_DOM);
}

/* every (d, w) a table can have: the kernels below are instantiated with them as constants */
#define LUT_DW(X) X(1, 1) X(1, 2) X(2, 1) X(2, 2) X(3, 1) X(3, 2) X(4, 1) X(4, 2) \
                  X(5, 1) X(5, 2) X(6, 1) X(6, 2) X(7, 1) X(7, 2) X(8, 1) X(8, 2) \
                  X(2, 3) X(3, 3) X(4, 3) X(5, 3) X(6, 3) X(7, 3) X(8, 3)

/* bits p in [0, nbits) (nbits <= 64) with base + p >= lo (lo >= 0): a generate table's word; no branch on lo */
static inline uint64_t lut_ge(uint64_t lo, uint64_t base, uint32_t nbits) {
    const int64_t t = (int64_t)lo - (int64_t)base;
    const uint64_t c = (uint64_t)(t & ~(t >> 63)); /* max(t, 0) */
    uint64_t g = (~0ULL << (c & 63)) & ~(-(uint64_t)(c >= 64));
    if (nbits < 64) g &= (1ULL << nbits) - 1;
    return g;
}

/* One item's table (d, w constants): the plain table (f per entry, then rho per plane), XOR-ed with every
 * key's pad bits (key (j, b) covers the positions whose index bit J = j + w - 1 equals b); A / B: the
 * hashes of the rows q / q ^ delta (blocks h = 0, 1), r0 = the table's first row. */
#define LUT_KERNEL(S, ATTR, SPREAD)                                                                              \
    ATTR static inline __attribute__((always_inline)) void lut_item_##S(                                         \
        const uint32_t d, const uint32_t w, uint64_t ai, uint64_t rho, const block *A0, const block *A1,         \
        const block *B0, const block *B1, size_t r0, uint8_t *table) {                                           \
        const uint32_t wp = lut_wp(w), tb = (1u << d) * wp, nw = tb > 64 ? tb / 64 : 1;                         \
        const uint32_t per = (tb >= 64 ? 64 : tb) / wp;                                                          \
        const uint64_t full = tb >= 64 ? ~0ULL : ((1ULL << tb) - 1), pm = w == 2 ? 0x5555555555555555ULL : ~0ULL; \
        uint64_t T[8];                                                                                           \
        const uint64_t lo = (1ULL << d) - ai, e = (1ULL << d) - 1 - ai;                                          \
        /* no branch or index on the client's bits (ai, lo, e, lo0, lo1) nor on rho */                           \
        const uint64_t rr = (-(rho & 1) & pm) | (w == 2 ? -((rho >> 1) & 1) & (pm << 1) : 0);                    \
        if (w == 3) { /* link: half s of the entries is the generate table of a + (s ^ rho_in) */              \
            const uint32_t h = d - 1;                                                                            \
            const uint64_t am = ai & ((1ULL << h) - 1), rin = (rho >> 1) & 1;                                    \
            const uint64_t lo0 = (1ULL << h) - am - rin, lo1 = (1ULL << h) - am - 1 + rin;                       \
            for (uint32_t k = 0; k < nw; k++) {                                                                  \
                uint64_t word;                                                                                   \
                if (tb <= 64) {                                                                                  \
                    word = lut_ge(lo0, 0, 1u << h) | lut_ge(lo1, 0, 1u << h) << (1u << h);                       \
                } else { /* a word lies in one half (k is public) */                                             \
                    const uint64_t s = ((uint64_t)k * 64) >> h;                                                  \
                    word = lut_ge(s ? lo1 : lo0, (uint64_t)k * 64 - (s << h), 64);                               \
                }                                                                                                \
                T[k] = (word ^ rr) & full;                                                                       \
            }                                                                                                    \
        }                                                                                                        \
        for (uint32_t k = 0; k < nw && w != 3; k++) { /* generate: x >= lo (none if a = 0); propagate: x == e */\
            const uint64_t base = (uint64_t)k * per;                                                             \
            const int64_t t = (int64_t)lo - (int64_t)base;                                                       \
            const uint64_t c = (uint64_t)(t & ~(t >> 63)); /* max(t, 0) */                                       \
            uint64_t g = (~0ULL << (c & 63)) & ~(-(uint64_t)(c >= 64));                                          \
            if (per < 64) g &= (1ULL << per) - 1;                                                                \
            uint64_t word = w == 2 ? SPREAD(g, 0) : g;                                                           \
            if (w == 2) { /* per is a power of two */                                                            \
                const uint64_t de = e - base, in = -(uint64_t)(de < per);                                        \
                word |= (2ULL << (2 * (de & (per - 1)))) & in;                                                   \
            }                                                                                                    \
            T[k] = (word ^ rr) & full;                                                                           \
        }                                                                                                        \
        for (uint32_t j = 0; j < d; j++) {                                                                       \
            const size_t r = r0 + j;                                                                             \
            const uint32_t J = j + wp - 1;                                                                       \
            if (J < 6) {                                                                                         \
                for (uint32_t k = 0; k < nw; k++) {                                                              \
                    const uint32_t sh = 32 * (k & 1);                                                            \
                    T[k] ^= (SPREAD(pad_word(A0, A1, r, k / 2) >> sh, J) |                                       \
                             SPREAD(pad_word(B0, B1, r, k / 2) >> sh, J) << (1u << J)) & full;                   \
                }                                                                                                \
            } else {                                                                                             \
                uint32_t k0 = 0, k1 = 0;                                                                         \
                for (uint32_t k = 0; k < nw; k++)                                                                \
                    T[k] ^= ((k >> (J - 6)) & 1) ? pad_word(B0, B1, r, k1++) : pad_word(A0, A1, r, k0++);        \
            }                                                                                                    \
        }                                                                                                        \
        memcpy(table, T, lut_bytes(d, w));                                                                       \
    }                                                                                                            \
    /* table L of cnt items (item i: rows from i * stride, table at tables + i * tstride + L->toff) */           \
    ATTR static void lut_items_##S(const lut_tab *L, uint64_t cnt, uint64_t stride, const uint64_t *a,           \
                                   const uint64_t *rho, block *const *A, block *const *B, uint8_t *tables,        \
                                   uint64_t tstride) {                                                           \
        const uint64_t dm = (1ULL << L->d) - 1;                                                                  \
        const block *A1 = L->nblk > 1 ? A[1] : NULL, *B1 = L->nblk > 1 ? B[1] : NULL;                            \
        switch (L->d * 4 + L->w) {                                                                               \
            LUT_DW(LUT_SEND_CASE_##S)                                                                            \
        }                                                                                                        \
    }

#define LUT_SEND_CASE(S, D, W)                                                                                   \
    case D * 4 + W:                                                                                              \
        for (uint64_t i = 0; i < cnt; i++)                                                                       \
            lut_item_##S(D, W, (a[i] >> L->off) & dm, rho[i] >> L->col, A[0], A1, B[0], B1, i * stride + L->off, \
                         tables + i * tstride + L->toff);                                                        \
        break;
#define LUT_SEND_CASE_soft(D, W) LUT_SEND_CASE(soft, D, W)
#define LUT_SEND_CASE_bmi2(D, W) LUT_SEND_CASE(bmi2, D, W)

LUT_KERNEL(soft, , spread32_soft)
LUT_KERNEL(bmi2, __attribute__((target("bmi2"))), spread32_bmi2)

/* The server's entry x of one item's table (d, w constants), opened: its w bits. No branch or memory
 * index on x: every table word and pad word is read, the wanted ones kept by masks, bits taken by
 * register shifts. H0 / H1: the hashes of the server's rows t (blocks h = 0, 1), r0 = the table's first row. */
static inline __attribute__((always_inline)) uint64_t lut_open(const uint32_t d, const uint32_t w, uint64_t x,
                                                               const uint8_t *tab, const block *H0,
                                                               const block *H1, size_t r0) {
    const uint32_t wp = lut_wp(w), tb = (1u << d) * wp, tby = lut_bytes(d, w), nw = (tby + 7) / 8;
    const uint32_t npad = tb / 2 > 128 ? 4 : 2, P = (uint32_t)x * wp;
    uint64_t tw[8] = {0};
    memcpy(tw, tab, tby);
    uint64_t v = 0; /* the 64-bit table word holding entry x (w = 2: both its bits, P even) */
    for (uint32_t k = 0; k < nw; k++) v |= tw[k] & -(uint64_t)(k == P / 64);
    uint64_t bits = v >> (P % 64);
    for (uint32_t j = 0; j < d; j++) {
        const uint32_t J = j + wp - 1;
        const uint32_t Q = (P & ((1u << J) - 1)) | ((P >> (J + 1)) << J); /* index bit J removed */
        uint64_t word = 0;
        for (uint32_t wi = 0; wi < npad; wi++) word |= pad_word(H0, H1, r0 + j, wi) & -(uint64_t)(wi == Q / 64);
        bits ^= word >> (Q % 64);
    }
    return bits & (wp == 2 ? 3 : 1);
}

/* table L of cnt items: out[i] |= its opened bits << L->col */
static void lut_opens(const lut_tab *L, uint64_t cnt, uint64_t stride, const uint64_t *x, block *const *H,
                      const uint8_t *tables, uint64_t tstride, uint64_t *out) {
    const uint64_t dm = (1ULL << L->d) - 1;
    const block *H1 = L->nblk > 1 ? H[1] : NULL;
#define LUT_RECV_CASE(D, W)                                                                                  \
    case D * 4 + W:                                                                                          \
        for (uint64_t i = 0; i < cnt; i++)                                                                   \
            out[i] |= lut_open(D, W, (x[i] >> L->off) & dm, tables + i * tstride + L->toff, H[0], H1,        \
                               i * stride + L->off) << L->col;                                               \
        break;
    switch (L->d * 4 + L->w) {
        LUT_DW(LUT_RECV_CASE)
    }
#undef LUT_RECV_CASE
}

/* the hash buffers of one pass: nblk blocks per row for each of nsets row sets, and a scratch block per row */
static block *lut_buffers(uint32_t nsets, uint32_t nblk, block **H) {
    block *mem = aligned_alloc(64, (size_t)(nsets * nblk + 1) * LUT_ROWS * sizeof(block));
    if (mem)
        for (uint32_t s = 0; s < nsets * nblk; s++) H[s] = mem + (size_t)s * LUT_ROWS;
    return mem;
}

int bn_luts_send(uint64_t n, uint32_t ntab, const uint32_t *tabs, uint64_t stride, const uint8_t *q_rows,
                 const uint8_t *delta, const uint8_t *rk, uint64_t row0, const uint64_t *a, const uint64_t *rho,
                 uint8_t *tables) {
    lut_tab T[LUT_MAX_TABS];
    uint32_t nblk;
    const uint64_t tstride = lut_tabs(ntab, tabs, stride, T, &nblk);
    if (!tstride) return BN_EINVAL;
    const int bmi2 = bn_use_bmi2();
    aeskey K;
    load_key(&K, rk);
    const block D = _mm_loadu_si128((const block *)delta);
    block *H[4];
    block *mem = lut_buffers(2, nblk, H);
    if (!mem) return BN_ENOMEM;
    block *const *R0 = H, *const *R1 = H + nblk, *tmp = mem + (size_t)2 * nblk * LUT_ROWS;
    const uint64_t per = LUT_ROWS / stride;
    for (uint64_t i0 = 0; i0 < n; i0 += per) {
        const uint64_t cnt = n - i0 < per ? n - i0 : per;
        const block *q = (const block *)(q_rows + 16 * i0 * stride);
        lut_hash_rows(&K, q, NULL, cnt * stride, row0 + i0 * stride, nblk, R0, tmp);
        lut_hash_rows(&K, q, &D, cnt * stride, row0 + i0 * stride, nblk, R1, tmp);
        for (uint32_t t = 0; t < ntab; t++) {
            if (bmi2)
                lut_items_bmi2(T + t, cnt, stride, a + i0, rho + i0, R0, R1, tables + i0 * tstride, tstride);
            else
                lut_items_soft(T + t, cnt, stride, a + i0, rho + i0, R0, R1, tables + i0 * tstride, tstride);
        }
    }
    free(mem);
    return 0;
}

/* out[i] bit col + p = entry x's bit p of table t, opened */
int bn_luts_recv(uint64_t n, uint32_t ntab, const uint32_t *tabs, uint64_t stride, const uint8_t *t_rows,
                 const uint8_t *rk, uint64_t row0, const uint64_t *x, const uint8_t *tables, uint64_t *out) {
    lut_tab T[LUT_MAX_TABS];
    uint32_t nblk;
    const uint64_t tstride = lut_tabs(ntab, tabs, stride, T, &nblk);
    if (!tstride) return BN_EINVAL;
    aeskey K;
    load_key(&K, rk);
    block *R[2];
    block *mem = lut_buffers(1, nblk, R);
    if (!mem) return BN_ENOMEM;
    const uint64_t per = LUT_ROWS / stride;
    for (uint64_t i0 = 0; i0 < n; i0 += per) {
        const uint64_t cnt = n - i0 < per ? n - i0 : per;
        lut_hash_rows(&K, (const block *)(t_rows + 16 * i0 * stride), NULL, cnt * stride, row0 + i0 * stride, nblk,
                      R, NULL);
        memset(out + i0, 0, cnt * sizeof(uint64_t));
        for (uint32_t t = 0; t < ntab; t++) lut_opens(T + t, cnt, stride, x + i0, R, tables + i0 * tstride, tstride, out + i0);
    }
    free(mem);
    return 0;
}
