/* Negacyclic NTT per prime: forward (Cooley-Tukey) and inverse (Gentleman-Sande) kernels. */
#ifndef BH_NTT_H
#define BH_NTT_H

#include "common.h"

typedef void (*ntt_fn)(double *, int, const double *, double, double);
typedef void (*intt_fn)(double *, int, const double *, double, double, double);

typedef struct {
    ntt_fn fwd;
    intt_fn inv;
} ntt_pair;

/* the kernels for this ring and CPU */
ntt_pair bh_ntt_pick(const bh_rns *r);


BH_INLINE void fwd1(const ntt_pair *k, const bh_rns *r, double *a, int i) {
    k->fwd(a, r->n, r->tw + (size_t)i * r->n, r->p[i], r->pinv[i]);
}

BH_INLINE void inv1(const ntt_pair *k, const bh_rns *r, double *a, int i) {
    k->inv(a, r->n, r->itw + (size_t)i * r->n, r->ninv[i], r->p[i], r->pinv[i]);
}

#endif
