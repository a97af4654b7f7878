"""Graph builder for the classic U-Net family, with seeded random weights for benchmarks/tests.

The "seed U-Net" of the BUNET paper: 16 base features, 4 poolings, 2 classes, 3x3 convolutions
with ReLU (two per level), 2x2 max-pool, 2x2 transposed-convolution upsampling, a 1x1 output conv.
"""

from __future__ import annotations

import numpy as np

from bunet.model.format import Model, Network, Preprocessing, Quantization
from bunet.model.graph import Graph, Node


def unet_graph(
    in_channels: int = 2,
    base: int = 16,
    depth: int = 4,
    classes: int = 2,
    pool: str = "maxpool",
    up: str = "conv_transpose",
) -> tuple[Graph, dict[str, tuple[int, ...]]]:
    """Nodes and weight shapes of a U-Net; ``pool`` is maxpool|avgpool, ``up`` conv_transpose|upsample."""
    nodes = [Node("input", "input", [], {"channels": in_channels})]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, x: str, cin: int, cout: int, k: int = 3, relu: bool = True) -> str:
        nodes.append(Node(name, "conv", [x], {"pad": k // 2}))
        shapes[name] = (cout, cin, k, k)
        if not relu:
            return name
        nodes.append(Node(f"{name}_relu", "relu", [name]))
        return f"{name}_relu"

    x, c = "input", in_channels
    skips = []
    for d in range(depth + 1):
        ch = base * 2**d
        x = conv(f"enc{d}a", x, c, ch)
        x = conv(f"enc{d}b", x, ch, ch)
        c = ch
        if d < depth:
            skips.append((x, ch))
            nodes.append(Node(f"pool{d}", pool, [x]))
            x = f"pool{d}"
    for d in reversed(range(depth)):
        skip, sc = skips[d]
        if up == "conv_transpose":
            nodes.append(Node(f"up{d}", "conv_transpose", [x]))
            shapes[f"up{d}"] = (c, sc, 2, 2)
            nodes.append(Node(f"up{d}_relu", "relu", [f"up{d}"]))
            x, c = f"up{d}_relu", sc
        else:
            nodes.append(Node(f"up{d}", "upsample", [x]))
            x = f"up{d}"
        nodes.append(Node(f"cat{d}", "concat", [x, skip]))
        x = conv(f"dec{d}a", f"cat{d}", c + sc, sc)
        x = conv(f"dec{d}b", x, sc, sc)
        c = sc
    x = conv("head", x, c, classes, k=1, relu=False)
    nodes.append(Node("labels", "argmax", [x]))
    return Graph(nodes), shapes


def random_weights(shapes: dict[str, tuple[int, ...]], graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised weights and small biases: activations keep their scale through depth."""
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    for name, shp in shapes.items():
        op = graph.node(name).op
        fan_in = shp[1] * shp[2] * shp[3] if op == "conv" else shp[0]
        w[f"{name}.weight"] = (rng.standard_normal(shp) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        cout = shp[0] if op == "conv" else shp[1]
        w[f"{name}.bias"] = (rng.standard_normal(cout) * 0.05).astype(np.float32)
    return w


def seed_unet_model(
    in_channels: int = 2,
    base: int = 16,
    depth: int = 4,
    classes: int = 2,
    input_size: int = 512,
    seed: int = 0,
    pool: str = "maxpool",
    up: str = "conv_transpose",
    quantization: Quantization | None = None,
    planes: tuple[str, ...] = ("xy",),
) -> Model:
    """A U-Net with random weights, for benchmarks and tests (not for diagnosis)."""
    g, shapes = unet_graph(in_channels, base, depth, classes, pool, up)
    m = Model(
        name=f"seed-unet-b{base}-d{depth}",
        networks={"main": Network(g, random_weights(shapes, g, seed))},
        plane_networks={p: "main" for p in planes},
        quantization=quantization or Quantization(),
        preprocessing=Preprocessing(input_size=(input_size, input_size)),
        description="random-weight U-Net for benchmarks",
    )
    m.validate()
    return m
