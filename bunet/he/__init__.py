"""Frequency-domain HomConv: BFV (plain modulus 2^l, coefficient encoding) on additive shares.

Client:  ``ClientHE(params)`` -- secret key; ``public_key()``, ``encrypt(spec, x_c)``, ``decrypt(spec, msg)``.
Server:  ``ServerHE(params, public_key)`` -- ``prepare(ConvSpec, W, b, in_shape)`` once per model,
         ``apply(layer, upload, x_s) -> (download, y_s)`` per call.
Result:  y_c + y_s = ring.conv2d(x_c + x_s, W, b, pad, l)  (or ring.conv_transpose2x2) exactly.

Start-up: both sides build ``HEParams.for_ring(l, weight_l1_bits)`` (or exchange ``to_bytes()``;
every message carries ``digest()``); the client sends ``public_key()`` once.  The public key is
an encryption of zero the server needs to re-randomise results: without it the returned c1 is a
linear function of the weights with coefficients the client knows.  No Galois or relinearisation
keys exist.  BFV itself runs in C (``bunet.he._native``, built by cffi at install: RNS over 22-bit
NTT primes held as exact float64 integers, AVX2+FMA chosen at run time with a portable fallback,
POSIX threads inside each call); SEAL validates the parameter set with its 128-bit check (see
:mod:`bunet.he.params`).
"""

from .client import ClientHE
from .layout import ConvSpec, LayerSpec, Plan
from .params import HEParams
from .server import ServerHE, ServerLayer

__all__ = ["ClientHE", "ConvSpec", "HEParams", "LayerSpec", "Plan", "ServerHE", "ServerLayer"]
