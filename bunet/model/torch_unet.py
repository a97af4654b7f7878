"""The project's U-Net in PyTorch (training only; inference runs on the converted graph).

Blocks are ``conv3x3 -> BatchNorm -> ReLU`` twice. The choices that matter for secure
inference are configurable:

* ``pool="avg"``: 2x2 average pooling is linear, so under HE it folds into the next
  convolution for free; ``"max"`` costs a garbled comparison tree per window.
* ``upsample="nearest"``: nearest x2 upsampling is a local copy of shares (free);
  ``"transposed"`` is a 2x2 stride-2 transposed convolution (an extra HE layer).
* every ReLU is a garbled circuit (~1-2 us and ~1 KB each), so ``base``, ``depth`` and the
  input size decide the secure cost: :func:`relu_count` reports it per slice.

Conversion to the ``.bunet`` graph goes through ONNX only (:func:`to_network`), so the
PyTorch path and the ONNX path are one code path.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class UNetConfig:
    """Architecture of :class:`UNet` (stored in the model metadata for provenance)."""

    in_channels: int = 1
    classes: int = 2
    base: int = 8
    depth: int = 3
    pool: str = "avg"  # avg | max
    upsample: str = "nearest"  # nearest | transposed

    def __post_init__(self) -> None:
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        if self.upsample not in ("nearest", "transposed"):
            raise ValueError(f"upsample must be 'nearest' or 'transposed', got {self.upsample!r}")
        if self.depth < 1 or self.base < 1:
            raise ValueError("depth and base must be positive")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; level i has ``base * 2**i`` channels."""

    def __init__(self, cfg: UNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or UNetConfig()
        ch = [cfg.base * 2**i for i in range(cfg.depth + 1)]
        self.enc = nn.ModuleList()
        cin = cfg.in_channels
        for c in ch[:-1]:
            self.enc.append(_block(cin, c))
            cin = c
        self.pool = nn.AvgPool2d(2) if cfg.pool == "avg" else nn.MaxPool2d(2)
        self.bottom = _block(ch[-2], ch[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(cfg.depth)):
            if cfg.upsample == "nearest":
                # no weights: the upsampled map keeps its channels and the block narrows them
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.dec.append(_block(ch[i + 1] + ch[i], ch[i]))
            else:
                self.up.append(nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2))
                self.dec.append(_block(2 * ch[i], ch[i]))
        self.head = nn.Conv2d(ch[0], cfg.classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for blk in self.enc:
            x = blk(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, blk, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = blk(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def relu_count(cfg: UNetConfig, height: int, width: int) -> int:
    """ReLUs per slice = sum over ReLU layers of C*H*W (the garbled-circuit count)."""
    total = 0
    for i in range(cfg.depth + 1):
        px = (height >> i) * (width >> i)
        c = cfg.base * 2**i
        total += 2 * c * px * (1 if i == cfg.depth else 2)  # encoder + decoder, bottom once
    return total


def to_onnx_bytes(model: nn.Module, in_channels: int, height: int, width: int) -> bytes:
    """Export in eval mode with a static input shape to an in-memory ONNX file.

    The TorchScript exporter (``dynamo=False``) is used: it needs no extra packages and gives
    plain Conv/BatchNormalization/Resize nodes with constant attributes.
    """
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                model,
                (torch.zeros(1, in_channels, height, width),),
                buf,
                input_names=["input"],
                output_names=["logits"],
                opset_version=17,
                do_constant_folding=False,  # keep BatchNormalization: the importer folds it in float64
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return buf.getvalue()


def to_network(model: UNet | nn.Module, height: int, width: int, in_channels: int | None = None):  # noqa: ANN201
    """PyTorch module -> :class:`bunet.model.format.Network` via in-memory ONNX and the importer."""
    from .onnx_import import load_onnx

    if in_channels is None:
        in_channels = model.cfg.in_channels if isinstance(model, UNet) else 1
    return load_onnx(to_onnx_bytes(model, in_channels, height, width))
