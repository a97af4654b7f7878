"""The ``.bunet`` model file: one zip holding ``model.json`` (everything but the weights) and
``weights.npz`` (float32 arrays). The JSON header is what a client may see; the weights never
leave the server.

``model.json``::

    {"format": "bunet-model", "format_version": 1, "name": ..., "description": ...,
     "networks": {"main": [<graph nodes>]},           # one or more networks
     "plane_networks": {"xy": "main", ...},          # which network serves which plane
     "quantization": {"ring_bits": 24, "frac_bits": 8, "weight_frac_bits": 8, "in_bits": {}},
     "preprocessing": {"kind": "hu_window", "center": -600, "width": 1500,
                       "input_size": [128, 128], "classes": ["background", "lesion"]},
     "metadata": {...}}                               # training provenance, figures

Weights are stored as ``"<network>/<node>.weight"``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .graph import Graph, ModelError

FORMAT = "bunet-model"
FORMAT_VERSION = 1
PLANES = ("xy", "yz", "xz")


@dataclass
class Quantization:
    """Fixed-point configuration. Activations carry ``frac_bits`` fraction bits, weights
    ``weight_frac_bits``; everything lives in Z_{2^ring_bits}. ``in_bits`` optionally narrows, per
    non-linear node name, how many low bits of its input enter the garbled circuit (default: all)."""

    ring_bits: int = 24
    frac_bits: int = 8
    weight_frac_bits: int = 8
    in_bits: dict[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        if not 8 <= self.ring_bits <= 64:
            raise ModelError(f"ring_bits must be in [8, 64], got {self.ring_bits}")
        for name, v in (("frac_bits", self.frac_bits), ("weight_frac_bits", self.weight_frac_bits)):
            if not 0 <= v < self.ring_bits - 1:
                raise ModelError(f"{name} must be in [0, ring_bits-1), got {v}")
        for node, b in self.in_bits.items():
            if not 2 <= int(b) <= self.ring_bits:
                raise ModelError(f"in_bits[{node!r}] must be in [2, ring_bits], got {b}")


@dataclass
class Preprocessing:
    """How a CT slice becomes the network input: ``hu_window`` maps [center - width/2,
    center + width/2] HU linearly onto [0, 1] (clipped); ``unit`` takes values as they are
    (already in [0, 1], e.g. 8-bit images / 255)."""

    kind: str = "hu_window"
    center: float = -600.0
    width: float = 1500.0
    input_size: tuple[int, int] = (128, 128)
    classes: list[str] = field(default_factory=lambda: ["background", "lesion"])

    def validate(self) -> None:
        if self.kind not in ("hu_window", "unit"):
            raise ModelError(f"unknown preprocessing kind {self.kind!r}")
        if self.kind == "hu_window" and not self.width > 0:
            raise ModelError("HU window width must be positive")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ModelError(f"bad input_size {self.input_size}")

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """Intensity preprocessing to float32 in [0, 1]."""
        x = np.asarray(hu, dtype=np.float32)
        if self.kind == "hu_window":
            lo = self.center - self.width / 2
            x = (x - lo) / self.width
        return np.clip(x, 0.0, 1.0)


@dataclass
class Network:
    graph: Graph
    weights: dict[str, np.ndarray]


@dataclass
class Model:
    name: str
    networks: dict[str, Network]
    plane_networks: dict[str, str]
    quantization: Quantization = field(default_factory=Quantization)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    # metadata keys the vendor publishes to clients; every other key stays on the server
    public_fields: list[str] = field(default_factory=list)

    # -- access ------------------------------------------------------------------------
    @property
    def planes(self) -> list[str]:
        return [p for p in PLANES if p in self.plane_networks]

    def network(self, plane: str) -> Network:
        if plane not in self.plane_networks:
            raise ModelError(f"the model does not serve plane {plane!r} (it serves {', '.join(self.planes)})")
        return self.networks[self.plane_networks[plane]]

    def validate(self) -> None:
        self.quantization.validate()
        self.preprocessing.validate()
        if not self.networks:
            raise ModelError("model has no network")
        for plane, net in self.plane_networks.items():
            if plane not in PLANES:
                raise ModelError(f"unknown plane {plane!r} (use xy, yz, xz)")
            if net not in self.networks:
                raise ModelError(f"plane {plane!r} names missing network {net!r}")
        for name, net in self.networks.items():
            try:
                net.graph.validate(net.weights)
            except ModelError as e:
                raise ModelError(f"network {name!r}: {e}") from None
            m = net.graph.min_size_multiple()
            if any(s % m for s in self.preprocessing.input_size):
                raise ModelError(f"input_size {self.preprocessing.input_size} is not a multiple of {m}")

    def header(self) -> dict[str, Any]:
        """Everything but the weights (what ``bunet-model info`` prints and a client may see)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "networks": {k: n.graph.to_json() for k, n in self.networks.items()},
            "weight_shapes": self.weight_shapes(),
            "plane_networks": dict(self.plane_networks),
            "quantization": asdict(self.quantization),
            "preprocessing": {**asdict(self.preprocessing), "input_size": list(self.preprocessing.input_size)},
            "metadata": self.metadata,
            "public_fields": list(self.public_fields),
        }

    def public_header(self) -> dict[str, Any]:
        """What a client may see: architecture, quantization, preprocessing, weight shapes and the
        metadata fields in ``public_fields``. Free-form metadata (training command, seed, scores)
        can carry information about the weights, so it is published only when the vendor says so."""
        h = self.header()
        h["metadata"] = {k: self.metadata[k] for k in self.public_fields if k in self.metadata}
        return h

    def weight_shapes(self) -> dict[str, dict[str, list[int]]]:
        """Shapes of the linear layers' weights per network: public architecture, no values."""
        if "_shapes" in self.__dict__:
            return self._shapes
        return {
            k: {name[: -len(".weight")]: list(w.shape) for name, w in n.weights.items() if name.endswith(".weight")}
            for k, n in self.networks.items()
        }

    def parameter_count(self) -> int:
        return int(sum(w.size for n in self.networks.values() for w in n.weights.values()))

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        self.validate()
        arrays = {
            f"{net}/{k}": np.asarray(v, dtype=np.float32)
            for net, n in self.networks.items()
            for k, v in n.weights.items()
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("model.json", json.dumps(self.header(), indent=1))
            z.writestr("weights.npz", buf.getvalue())
        tmp.replace(path)  # never leave a half-written model behind

    @staticmethod
    def from_header(header: dict[str, Any], weights: dict[str, np.ndarray] | None = None) -> Model:
        """Build from a parsed header; without weights (a client's view) the weights are empty."""
        if header.get("format") != FORMAT:
            raise ModelError("not a BUNET model (format tag missing)")
        if header.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"unsupported model format version {header.get('format_version')!r}")
        try:
            nets = {}
            for k, g in header["networks"].items():
                prefix = f"{k}/"
                w = {n[len(prefix) :]: a for n, a in (weights or {}).items() if n.startswith(prefix)}
                nets[k] = Network(Graph.from_json(g), w)
            q = Quantization(**header["quantization"])
            pp = dict(header["preprocessing"])
            pp["input_size"] = tuple(int(s) for s in pp["input_size"])
            m = Model(
                name=str(header["name"]),
                networks=nets,
                plane_networks=dict(header["plane_networks"]),
                quantization=q,
                preprocessing=Preprocessing(**pp),
                description=str(header.get("description", "")),
                metadata=dict(header.get("metadata", {})),
                public_fields=[str(k) for k in header.get("public_fields", [])],
            )
            if weights is None:  # a client's view: keep the public shapes
                m._shapes = {
                    k: {n: [int(d) for d in s] for n, s in v.items()}
                    for k, v in header.get("weight_shapes", {}).items()
                }
            return m
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"malformed model header: {e}") from None

    @staticmethod
    def load(path: str | Path) -> Model:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        try:
            with zipfile.ZipFile(path) as z:
                header = json.loads(z.read("model.json"))
                with np.load(io.BytesIO(z.read("weights.npz"))) as npz:
                    weights = {k: npz[k].astype(np.float32) for k in npz.files}
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, ValueError, EOFError) as e:
            raise ModelError(f"{path.name} is not a readable BUNET model file ({e})") from None
        m = Model.from_header(header, weights)
        m.validate()
        return m

    @staticmethod
    def load_header(path: str | Path) -> dict[str, Any]:
        """The JSON header only (cheap; no weights decoded)."""
        try:
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("model.json"))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as e:
            raise ModelError(f"{Path(path).name} is not a readable BUNET model file ({e})") from None
