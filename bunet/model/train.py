"""Train the bundled lesion U-Net on the MedSeg COVID-19 slices and export it as ``.bunet``.

    python -m bunet.model.train --data ../shared/data/medseg_covid19_2d_infnet --out data/covid_unet.bunet

Data: ``train/`` (50 slices) and ``test/`` (48 slices) of the Inf-Net split, 8-bit grey JPEGs
with binary lesion masks. Images are /255 -> [0, 1]; at inference the client produces the
same range from HU with the model's window (see :data:`HU_CENTER`), so the network never sees
HU. Evaluation follows the paper's protocol as closely as the data allow: predict at model
resolution, resize the labels back to each slice's own size, and report lesion Dice both pooled
over all test pixels and as the mean over slices.

Secure-inference cost drives the architecture (see :mod:`bunet.model.torch_unet`): average
pooling and nearest upsampling are free under HE, and ReLUs per slice are reported.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

# MedSeg's 8-bit slices are windowed CT. Their grey histogram (all 98 slices, lesion pixels
# excluded) has two peaks: aerated lung at grey ~44 and mediastinal soft tissue at grey ~210,
# with bone saturated at 255. Taking aerated COVID lung ~ -870 HU and soft tissue (blood,
# muscle, some fat) ~ +30 HU: slope = (210-44)/900 grey/HU -> width ~ 255/0.184 ~ 1380 HU,
# lower edge ~ -870 - 44/0.184 ~ -1110 HU. Rounded: window [-1100, 300] HU = center -400,
# width 1400 (a lung window a little narrower and higher than the textbook -600/1500).
HU_CENTER = -400.0
HU_WIDTH = 1400.0


def _load_split(root: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Images at ``size`` (float32 [0,1]) and masks at ``size`` (float32 {0,1}), plus originals."""
    from PIL import Image

    img_dir, msk_dir = root / split / "images", root / split / "infection_mask"
    stems = sorted((p.stem for p in img_dir.glob("*.jpg")), key=int)
    if not stems:
        raise SystemExit(f"no images in {img_dir}")
    xs, ys, orig_x, orig_y = [], [], [], []
    for s in stems:
        im = Image.open(img_dir / f"{s}.jpg").convert("L")
        m = Image.open(msk_dir / f"{s}.png").convert("L")
        a = np.asarray(im, dtype=np.float32) / 255.0
        b = (np.asarray(m) > 127).astype(np.float32)
        orig_x.append(a)
        orig_y.append(b.astype(bool))
        xs.append(resize(a, (size, size)))
        ys.append((resize(b, (size, size)) > 0.5).astype(np.float32))
    return np.stack(xs), np.stack(ys), orig_x, orig_y


def resize(a: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """2D resize with PIL (bilinear with antialiasing, or nearest for labels)."""
    from PIL import Image

    im = Image.fromarray(np.asarray(a, dtype=np.float32), mode="F")
    out = im.resize((shape[1], shape[0]), Image.NEAREST if nearest else Image.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    s = int(p.sum()) + int(t.sum())
    return 1.0 if s == 0 else 2.0 * int((p & t).sum()) / s


def evaluate_labels(labels: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Labels at model resolution -> nearest-resized to each slice -> pooled and mean Dice."""
    inter = tot = 0
    per = []
    for lab, t in zip(labels, truths, strict=True):
        p = resize(lab.astype(np.float32), t.shape, nearest=True) > 0.5
        per.append(dice(p, t))
        inter += int((p & t).sum())
        tot += int(p.sum()) + int(t.sum())
    return {"dice_pooled": 2.0 * inter / max(tot, 1), "dice_mean": float(np.mean(per))}


def _augment(torch, x, y, gen, out_size: int):  # noqa: ANN001, ANN202
    """Random flips / 90-degree turns, rotation +-15 deg, scale 0.85-1.15, small shift, intensity jitter.

    The MedSeg slices come in several orientations, so 90-degree turns are part of the prior.
    """
    from torch.nn import functional as nnf

    B = x.shape[0]
    u = torch.rand(B, 8, generator=gen)
    ang = (u[:, 0] - 0.5) * (2 * math.pi * 15 / 360) + (u[:, 1] * 4).floor() * (math.pi / 2)
    sc = 0.85 + 0.3 * u[:, 2]
    fx = torch.where(u[:, 3] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * fx, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * fx, cos
    theta[:, :, 2] = (u[:, 4:6] - 0.5) * 0.2
    grid = nnf.affine_grid(theta, (B, 1, out_size, out_size), align_corners=False)
    xa = nnf.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    ya = (nnf.grid_sample(y, grid, mode="bilinear", padding_mode="reflection", align_corners=False) > 0.5).float()
    # intensity: contrast, brightness, gamma, noise (covers window mismatch between scanners)
    c = (0.85 + 0.3 * u[:, 6]).view(B, 1, 1, 1)
    b = (torch.rand(B, 1, 1, 1, generator=gen) - 0.5) * 0.16
    g = torch.exp((torch.rand(B, 1, 1, 1, generator=gen) - 0.5) * 0.5)
    xa = ((xa.clamp(0, 1) ** g) - 0.5) * c + 0.5 + b
    xa = xa + torch.randn(xa.shape, generator=gen) * (0.03 * u[:, 7].view(B, 1, 1, 1))
    return xa.clamp(0, 1), ya


def train(args: argparse.Namespace) -> dict:
    """Train, evaluate on the test split, export; returns the metrics dictionary."""
    import torch
    from torch.nn import functional as nnf

    from .format import Model, Preprocessing, Quantization
    from .torch_unet import UNet, UNetConfig, relu_count, to_network

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    root = Path(args.data)
    size = args.size
    t0 = time.time()
    xtr, ytr, _, _ = _load_split(root, "train", 2 * size)
    xte, _, te_x, te_y = _load_split(root, "test", size)
    if args.limit_test:
        xte, te_x, te_y = xte[: args.limit_test], te_x[: args.limit_test], te_y[: args.limit_test]
    print(f"loaded {len(xtr)} train / {len(xte)} test slices in {time.time() - t0:.1f}s", file=sys.stderr)

    cfg = UNetConfig(base=args.base, depth=args.depth, pool=args.pool, upsample=args.upsample)
    net = UNet(cfg)
    n_params = sum(p.numel() for p in net.parameters())
    relus = relu_count(cfg, size, size)
    print(f"U-Net {cfg}: {n_params} parameters, {relus} ReLUs per {size}x{size} slice", file=sys.stderr)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(args.steps, 2), pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    X, Y = torch.from_numpy(xtr[:, None]), torch.from_numpy(ytr[:, None])
    t1 = time.time()
    net.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(X), (args.batch,), generator=gen)
        xb, yb = _augment(torch, X[idx], Y[idx], gen, size)
        logits = net(xb)
        ce = nnf.cross_entropy(logits, yb[:, 0].long())
        p = logits.softmax(1)[:, 1:2]
        soft_dice = 1 - (2 * (p * yb).sum() + 1) / (p.sum() + yb.sum() + 1)
        loss = ce + soft_dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} ({time.time() - t1:.0f}s)", file=sys.stderr)
    train_s = time.time() - t1

    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(torch.from_numpy(xte[i : i + 8, None])) for i in range(0, len(xte), 8)])
    labels = list(logits.argmax(1).numpy())
    metrics = evaluate_labels(labels, te_y)
    print(
        f"test lesion Dice: pooled {metrics['dice_pooled']:.4f}, mean per slice {metrics['dice_mean']:.4f}",
        file=sys.stderr,
    )
    if args.checkpoint:
        torch.save({"cfg": cfg.to_json(), "state": net.state_dict(), "metrics": metrics}, args.checkpoint)

    network = to_network(net, size, size)
    max_err = _check_export(network, xte[:4], logits[:4].numpy())
    q = Quantization(ring_bits=args.ring_bits, frac_bits=args.frac_bits, weight_frac_bits=args.weight_frac_bits)
    meta = {
        "training": {
            "command": "python -m bunet.model.train " + " ".join(shlex.quote(a) for a in args.argv),
            "seed": args.seed,
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "threads": args.threads,
            "train_seconds": round(train_s, 1),
            "torch": torch.__version__,
            "data": "MedSeg COVID-19 CT segmentation slices, Inf-Net split (50 train / 48 test)",
            "augmentation": "flips, 90-degree turns, rotation +-15 deg, scale 0.85-1.15, shift, "
            "contrast/brightness/gamma jitter, Gaussian noise",
            "loss": "cross-entropy + soft Dice (lesion)",
        },
        "architecture": cfg.to_json(),
        "test_lesion_dice": {
            "pooled": round(metrics["dice_pooled"], 4),
            "mean_per_slice": round(metrics["dice_mean"], 4),
            "slices": len(te_y),
            "protocol": "argmax at model resolution, nearest-resized to each slice's original size",
        },
        "relus_per_slice": relus,
        "parameters_folded": int(sum(w.size for w in network.weights.values())),
        "export_max_abs_logit_error": max_err,
        "quantization_choice": "bench/quantization.py on the 48 test slices: 24-bit ring, 8/8 fraction bits is "
        "the smallest tested ring with dice_vs_float >= 0.99 and no overflow "
        "(22 bits already wraps a few values; 20 bits loses Dice)",
        "hu_window_reasoning": "MedSeg 8-bit slices: lung peak grey ~44 (~-870 HU), soft tissue peak "
        "grey ~210 (~+30 HU) -> window [-1100, 300] HU",
    }
    model = Model(
        name="covid_unet",
        networks={"main": network},
        plane_networks={"xy": "main"},
        quantization=q,
        preprocessing=Preprocessing(
            kind="hu_window",
            center=HU_CENTER,
            width=HU_WIDTH,
            input_size=(size, size),
            classes=["background", "lesion"],
        ),
        description=f"COVID-19 lesion U-Net (base {cfg.base}, depth {cfg.depth}, {cfg.pool}pool, "
        f"{cfg.upsample} upsampling), trained on axial MedSeg slices",
        metadata=meta,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    phantom = _phantom_dice(out)
    if phantom is not None:
        model.metadata["phantom_dice"] = phantom
        model.save(out)
    result = {
        **metrics,
        "phantom_dice": phantom,
        "relus_per_slice": relus,
        "parameters": n_params,
        "model_bytes": out.stat().st_size,
        "train_seconds": train_s,
        "export_max_abs_logit_error": max_err,
    }
    print(json.dumps(result, indent=1))
    return result


def _phantom_dice(model_path: Path) -> dict[str, float] | None:
    """Float Dice on the project's sample phantom (axial slices, the client's preprocessing)."""
    import tempfile

    from ..phantom import main as phantom_main
    from ..phantom import model_dice

    try:
        with tempfile.TemporaryDirectory() as d:
            scan, labels = Path(d) / "ct.nii.gz", Path(d) / "lesions.nii.gz"
            phantom_main(["--out", str(scan), "--labels", str(labels)])
            r = model_dice(model_path, scan, labels)
    except ImportError:  # volume/reference modules absent in this checkout
        return None
    print(f"phantom lesion Dice (float, xy): {r['dice']:.4f}", file=sys.stderr)
    return {"dice": round(r["dice"], 4), "dice_mean_lesion_slices": round(r["dice_mean_lesion_slices"], 4)}


def _check_export(network, x: np.ndarray, torch_logits: np.ndarray) -> float | None:  # noqa: ANN001
    """Max |logit difference| between the exported graph (float reference) and PyTorch."""
    try:
        from .reference import float_forward
    except ImportError:  # reference engine not available in this checkout
        return None
    err = float(np.abs(float_forward(network, x[:, None].astype(np.float32)) - torch_logits).max())
    print(f"exported graph vs PyTorch: max |logit error| {err:.2e}", file=sys.stderr)
    return err


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bunet.model.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data/medseg_covid19_2d_infnet", help="MedSeg 2D slice folder")
    p.add_argument("--out", default="data/covid_unet.bunet")
    p.add_argument("--size", type=int, default=96, help="model input height = width")
    p.add_argument("--base", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--pool", choices=("avg", "max"), default="avg")
    p.add_argument("--upsample", choices=("nearest", "transposed"), default="nearest")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ring-bits", type=int, default=24)
    p.add_argument("--frac-bits", type=int, default=8)
    p.add_argument("--weight-frac-bits", type=int, default=8)
    p.add_argument("--checkpoint", default=None, help="also save the PyTorch state here")
    p.add_argument("--limit-test", type=int, default=0, help="evaluate on the first N test slices only (tests)")
    args = p.parse_args(argv)
    args.argv = argv
    if not (Path(args.data) / "train" / "images").is_dir():
        raise SystemExit(f"error: no MedSeg slices under {args.data} (expected train/images/*.jpg)")
    train(args)


if __name__ == "__main__":
    main()
