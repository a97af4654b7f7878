"""Frequency-domain HomConv: BFV (plain modulus 2^l, coefficient encoding) on additive shares.

Client:  ``ClientHE(params)`` -- secret key; ``public_key()``, ``encrypt(spec, x_c)``, ``decrypt(spec, msg)``.
Server:  ``ServerHE(params, public_key)`` -- ``prepare(ConvSpec, W, b, in_shape)`` once per model,
         ``apply(layer, upload, x_s) -> (download, y_s)`` per call.
Result:  y_c + y_s = ring.conv2d(x_c + x_s, W, b, pad, l)  (or ring.conv_transpose2x2) exactly.
"""

from .client import ClientHE
from .layout import ConvSpec, LayerSpec, Plan
from .params import HEParams
from .server import ServerHE, ServerLayer

__all__ = ["ClientHE", "ConvSpec", "HEParams", "LayerSpec", "Plan", "ServerHE", "ServerLayer"]
