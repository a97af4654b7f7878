/* Native HomConv kernels (BFV over an RNS of primes p < 2^22, residues held in float64).
 *
 * Every residue is an integer stored in a double; products of two centred residues are below
 * 2^42 and exact, and a product is reduced as x - rint(x / p) * p, also exact.  All kernels
 * have an AVX2+FMA path chosen at run time and a portable path with bit-identical results.
 * Functions taking ``threads`` split their work over that many POSIX threads (the caller
 * counts as one); cffi releases the GIL around every call.
 *
 * Layouts: a polynomial "per ciphertext" array is (count, K, N) doubles.  The product kernels
 * work on "slot blocks": the K*N NTT slots cut into groups of 4, block b = slots 4b..4b+3
 * (all within prime 4b / N):  X[blk][c][row][4], F[blk][og][c][4] (float32), Y[blk][og][row][4].
 */
#ifndef BUNET_HE_H
#define BUNET_HE_H

#include <stddef.h>
#include <stdint.h>

#include "bunet_status.h"

typedef struct {
    int k;                /* number of primes */
    int n;                /* polynomial degree, a power of two >= 16 */
    const double *p;      /* [k] primes */
    const double *pinv;   /* [k] 1 / p */
    const double *tw;     /* [k][n] psi^bitrev(i), centred (forward, Cooley-Tukey) */
    const double *itw;    /* [k][n] psi^-bitrev(i), centred (inverse, Gentleman-Sande) */
    const double *ninv;   /* [k] n^-1 mod p, centred */
    const double *crt;    /* [k] (q / p_i)^-1 mod p_i, centred */
} bh_rns;

/* Public tiling of a layer (bunet.he.layout.Plan): ciphertext g = (b*groups + grp)*tiles + tile,
 * groups = ceil(c / ipack), holds for each channel ch = grp*ipack + j < c, at coefficient
 * j*ht*wt, the zero-padded ht x wt input tile at (ti*th - pad, tj*tw - pad), tile = ti*n_tj + tj,
 * of the (B, c, h, w) share, each value masked to the ring (mask = 2^l - 1). */
typedef struct {
    int64_t c, h, w, pad, th, tw, ht, wt, n_tj, tiles, ipack;
    uint64_t mask;
} bh_tiling;

/* 1 when the AVX2+FMA path is in use (+2 with AVX-512VL's rotations in ChaCha20); bh_force_portable(1)
 * switches to the portable path, bh_force_no_avx512(1) to the AVX2 path without AVX-512VL. */
int bh_simd(void);
void bh_force_portable(int on);
void bh_force_no_avx512(int on);

/* ChaCha20 (RFC 8439, 96-bit nonce, 32-bit block counter) keystream. */
void bh_chacha20(const uint8_t *key, const uint8_t *nonce, uint32_t counter, uint8_t *out, size_t len);

/* In-place negacyclic NTT of (count, K, N) residues; inputs |x| <= 2^22, outputs centred. */
void bh_ntt_fwd(const bh_rns *r, double *a, int64_t count, int threads);
void bh_ntt_inv(const bh_rns *r, double *a, int64_t count, int threads);

/* Uniform polynomials a (NTT form) from 32-byte keys: (count, K, N) centred residues.
 * Same words as keystream(key, 4*K*(N + 64 + N/64)) with rejection per prime row.
 * Returns the number of keys whose keystream ran short (probability < 2^-100 each). */
int64_t bh_expand_a(const bh_rns *r, const uint8_t *keys, int64_t count, double *out, int threads);

/* Client: seeded symmetric encryption of `count` ciphertexts of the share x (B, c, h, w): item i
 * encrypts ciphertext g = order[i] (index (b*c + group)*tiles + tile; order NULL: g = i) with the
 * a-key a_keys[32*i]: m = the tile's coefficients (< 2^52), c0 = NTT(Delta*m + e) - a*s, written
 * at item i of out as residues in [0, p_i), bit-packed in bitlen(p_i - 1) bits per residue,
 * (count, K, N).  delta: [k] centred Delta mod p; s_hat: (K, N); noise_key: 32 bytes (fresh per
 * call: item i's noise is keyed by (noise_key, i)). */
int64_t bh_encrypt(const bh_rns *r, const uint64_t *x, const bh_tiling *t, const int64_t *order, int64_t count,
                   const double *delta, const double *s_hat, const uint8_t *a_keys, const uint8_t *noise_key,
                   uint8_t *out, int threads);

/* Server: slot-block input X[blk][c][2*tc][4] of one tile chunk.  Item i = c*tc + tl is the upload
 * ciphertext at c0_index[i] of c0 (bit-packed residues, as bh_encrypt writes them) with a-key
 * a_keys[32*i]; it encrypts ciphertext g = ct_index[i] ((b*c + group)*tiles + tile), whose tile of
 * the server's share xs (B, c, h, w) is added.  Row 2*tl holds c0 + NTT(Delta*x_s), row 2*tl+1
 * holds a.  Returns the number of ciphertexts with a residue out of range. */
int64_t bh_server_prep(const bh_rns *r, const uint8_t *c0, const int64_t *c0_index, const int64_t *ct_index,
                       const uint64_t *xs, const bh_tiling *t, const double *delta, const uint8_t *a_keys,
                       int c_in, int tc, double *x, int threads);

/* Y[blk][og0 + g][row] = sum_c F[blk][g][c] * X[blk][c][row] (g < og_cnt), reduced. */
void bh_product_filters(const bh_rns *r, const float *f, int og_cnt, int c_in, int rows,
                        const double *x, double *y, int og0, int n_og, int threads);

/* Y[blk][og][row] = sum_o' T[o'][slots] * (sum_c W[og*opack + o'][c] * X[blk][c][row]), reduced.
 * W: (c_out, c_in) integers with row L1 norm < 2^31; T: (opack, K*N) centred. */
void bh_product_taps(const bh_rns *r, const double *w, const double *t, int c_out, int opack,
                     int n_og, int c_in, int rows, const double *x, double *y, int threads);

/* Server: finish output ciphertexts (arguments: bh_finish_args).  Job j is slot-block output og = jobs_og[j], tile row
 * pair jobs_tl[j] of Y[blk][n_og][rows][4]; it is written as ciphertext ct_global[j].
 * Steps: + u*pk (u ternary, fresh), inverse NTT, + e (c1 everywhere, c0 at returned
 * coefficients), c0 also + Delta*m_s + a uniform flood in [-2^flood_bits, 2^flood_bits),
 * then switched to 2^down_bits: c1 as (down_bits+7)/8-byte words at c1_out[ct_global*N],
 * c0's top down_c0_bits at c0_out[ret_base + pos] for pos in [ret_lo[j], ret_hi[j]),
 * coefficient ret_coef[pos].  m_s = bias[ret_ch[pos]] - r_out[ret_flat[pos]] mod 2^ring_bits
 * (the bias and the server's fresh mask at that output).  Randomness: ChaCha20 under key with
 * nonce (ct_global, label).  Returns BN_OK, BN_EPARAMS (nothing written) for unsupported precisions, or BN_ENOMEM. */
typedef struct {
    const double *y;                                 /* Y[blk][n_og][rows][4] */
    int n_og, rows;
    const int64_t *jobs_og, *jobs_tl, *ct_global;    /* per job */
    int64_t njobs;
    const int64_t *ret_lo, *ret_hi;                  /* per job: its returned positions */
    const int32_t *ret_coef;                         /* per position: its coefficient */
    int64_t ret_base;                                /* c0_out index of position 0 */
    const int32_t *ret_flat, *ret_ch;                /* per position: output index, channel */
    const uint64_t *r_out, *bias;                    /* the server's fresh masks, the bias per channel */
    int ring_bits;
    const double *pk, *delta;                        /* public key (NTT form), Delta mod p_i */
    int flood_bits, down_bits, down_c0_bits;
    const uint8_t *key;                              /* 32-byte ChaCha20 key */
    uint8_t *c1_out, *c0_out;
} bh_finish_args;

int bh_finish(const bh_rns *r, const bh_finish_args *a, int threads);

/* Test hook: the residues (K, count) of `count` flooding integers drawn as bh_finish does
 * (nonce (ct, 2)), and the integers themselves as 32-bit limbs (count, (bits + 27) / 27). */
void bh_flood_sample(const bh_rns *r, const uint8_t *key, int64_t ct, int bits, int64_t count,
                     double *res, uint32_t *limbs);

/* count uniform integers in [0, 2^bits) from ChaCha20 under key (a CSPRNG for masks). */
void bh_random_bits(const uint8_t *key, int64_t count, int bits, uint64_t *out, int threads);

/* Client (arguments: bh_decrypt_args): the phase c0 * 2^(m - m0) + (c1 * s)[coef] mod 2^m of every returned coefficient of a
 * download (c1: batch*per_ct ciphertexts of (m+7)/8-byte words, c0: m0-bit values of (m0+7)/8
 * bytes, ranges as in bh_finish).  With out == NULL it is stored at phase[b * n_ret + pos]; else
 * it is rounded to its top ring_bits bits (the decrypted value) and stored at
 * out[b * out_stride + ret_flat[pos]].  c1 * s uses the primes prime_idx[0..2], whose product
 * must exceed 4 N 2^m.  Returns the number of ciphertexts with a word out of range (then the
 * output is not usable), or BN_EPARAMS (< 0) for bad precisions. */
typedef struct {
    const int *prime_idx;                            /* the three primes of c1 * s */
    const double *s_hat;                             /* (K, N) secret key, NTT form */
    const uint8_t *c1, *c0;
    int64_t batch, per_ct, n_ret;
    const int64_t *ret_lo, *ret_hi;
    const int32_t *ret_coef;
    int down_bits, down_c0_bits;
    uint64_t *phase;                                 /* NULL, or the phases */
    const int32_t *ret_flat;
    int ring_bits;
    uint64_t *out;                                   /* NULL, or the decrypted values */
    int64_t out_stride;
} bh_decrypt_args;

int64_t bh_decrypt_phase(const bh_rns *r, const bh_decrypt_args *a, int threads);

/* round(2^bits * c / q) mod 2^bits of residues (K, count) (|x| <= 2^22), bits <= 50. */
void bh_to_pow2(const bh_rns *r, const double *x, int64_t count, int bits, uint64_t *out);

#endif
