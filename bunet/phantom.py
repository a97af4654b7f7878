"""A deterministic chest-CT phantom in HU with COVID-like lesions of known extent.

    python -m bunet.phantom --out data/sample_ct.nii.gz [--labels data/sample_ct_lesions.nii.gz]

Why a phantom: the project must ship a sample scan that a new user can segment with one
command, and real COVID-19 CT volumes cannot be redistributed (nor are any available in full).
The phantom is built in world coordinates (millimetres, x to the patient's right, y anterior,
z superior) and sampled on a small grid (default 128 x 128 x 12 voxels of 2.5 x 2.5 x 3 mm) so
that secure inference of every axial slice fits a one-minute demo. What it contains, in HU:

* air outside the body (-1000), a body ellipse with subcutaneous fat (-100) over muscle (+45);
* ribs (cortical bone ~ +700) on an ellipse just inside the muscle, a sternum, a vertebral body
  with its spinal canal and posterior arch;
* the mediastinum: heart (+40) displaced to the left, aorta, a trachea (air) in the upper slices;
* two lung fields (-860) with a 3-D tree of vessels tapering from each hilum (soft tissue, with
  partial volume), so that lung texture looks like CT rather than a flat region;
* ground-glass lesions (-500 ... -200 HU, denser cores up to about -100) -- irregular, mostly
  peripheral/subpleural blobs as in COVID-19 pneumonia -- whose voxels form the label volume
  (1 = lesion, restricted to the lungs); vessels stay visible through the ground glass;
* correlated noise (~ 15 HU) and a mild blur standing in for the scanner's PSF.

Everything is drawn from ``numpy.random.default_rng(seed)``: same arguments, same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

AIR, FAT, MUSCLE, BLOOD, LUNG, BONE, MARROW = -1000.0, -100.0, 45.0, 40.0, -860.0, 700.0, 250.0


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Normalised radius: < 1 inside the ellipse."""
    return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)


def _vessel_tree(
    rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, radius: float, length: float, generations: int
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments (start, end, radius mm) of a randomly branching tree that tapers outwards."""
    segs: list[tuple[np.ndarray, np.ndarray, float]] = []
    stack = [(root, direction / np.linalg.norm(direction), radius, length, generations)]
    while stack:
        p, d, r, ln, g = stack.pop()
        # a slightly wavy branch made of 3 sub-segments
        for _ in range(3):
            d = d + rng.normal(0, 0.25, 3) * np.array([1, 1, 0.6])
            d /= np.linalg.norm(d)
            q = p + d * ln / 3
            segs.append((p, q, r))
            p = q
        if g > 0:
            for _ in range(2):
                nd = d + rng.normal(0, 0.7, 3) * np.array([1, 1, 0.7])
                stack.append((p, nd / np.linalg.norm(nd), r * 0.72, ln * 0.75, g - 1))
    return segs


def _render_segments(
    axes: tuple[np.ndarray, np.ndarray, np.ndarray], segs: list[tuple[np.ndarray, np.ndarray, float]]
) -> np.ndarray:
    """Soft tube occupancy in [0, 1] on the grid ``axes`` (world coordinate of each index along
    x, y, z): 1 on the axis, partial volume at the wall. Each segment touches only its bounding box."""
    occ = np.zeros(tuple(len(a) for a in axes), dtype=np.float32)
    for a, b, r in segs:
        lo, hi = np.minimum(a, b) - r - 3, np.maximum(a, b) + r + 3
        idx = [np.nonzero((ax >= lo[d]) & (ax <= hi[d]))[0] for d, ax in enumerate(axes)]
        if any(len(i) == 0 for i in idx):
            continue
        sl = tuple(slice(i[0], i[-1] + 1) for i in idx)
        p = np.stack(np.meshgrid(*(ax[s] for ax, s in zip(axes, sl, strict=True)), indexing="ij"), axis=-1)
        ab = b - a
        t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-9), 0, 1)
        dist = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
        v = np.clip((r + 1.0 - dist) / 2.0, 0, 1)  # ~2 mm soft edge: partial volume
        occ[sl] = np.maximum(occ[sl], v)
    return occ


def make_phantom(
    shape: tuple[int, int, int] = (128, 128, 12),
    spacing: tuple[float, float, float] = (2.5, 2.5, 3.0),
    seed: int = 2020,
    n_lesions: int = 6,
    noise_hu: float = 15.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build the phantom: (HU volume int16 (X, Y, Z), lesion labels uint8, 4x4 affine).

    The voxel axes run to the patient's left (i), posterior (j) and superior (k), so the affine
    is ``diag(-sx, -sy, sz)`` with the volume centred on the world origin (LPS-style storage,
    RAS+ world coordinates as NIfTI requires).
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    sx, sy, sz = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (nx - 1) / 2, sy * (ny - 1) / 2, -sz * (nz - 1) / 2]
    ii, jj, kk = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    x = affine[0, 0] * ii + affine[0, 3]  # + = patient's right
    y = affine[1, 1] * jj + affine[1, 3]  # + = anterior
    z = affine[2, 2] * kk + affine[2, 3]  # + = superior
    zc = z / max(sz * nz / 2, 1.0)  # -1 (caudal) .. 1 (cranial)
    hu = np.full(shape, AIR, dtype=np.float32)

    # body: fat shell over muscle; the chest is wider than deep and a little narrower cranially
    bx, by = 152.0 - 6 * zc, 112.0 - 3 * zc
    r_body = _ellipse(x, y, 0, -5, bx, by)
    hu[r_body < 1] = FAT
    muscle = _ellipse(x, y, 0, -5, bx - 11, by - 10) < 1
    hu[muscle] = MUSCLE
    inner = _ellipse(x, y, 0, -5, bx - 24, by - 22)  # pleural cavity boundary (inside the ribs)

    # lungs: two ellipses inside the rib cage, minus the mediastinum
    lx, ly = 66.0 - 4 * zc, 90.0
    lung_r = _ellipse(x, y, -64, -8, lx, ly) < 1
    lung_l = _ellipse(x, y, 64, -8, lx, ly) < 1
    heart = _ellipse(x + 14, y - 30, 0, 0, 44 - 10 * zc, 36 - 8 * zc) < 1  # shifted to the left
    mediast = (np.abs(x) < 15 + 5 * (y > 0)) & (y > -62)
    spine_zone = _ellipse(x, y, 0, -80, 27, 24) < 1
    lungs = (lung_r | lung_l) & (inner < 1) & ~heart & ~mediast & ~spine_zone
    lungs = ndimage.binary_opening(lungs, structure=np.ones((3, 3, 1)))
    hu[(inner < 1) & ~lungs] = BLOOD  # mediastinal soft tissue by default
    hu[lungs] = LUNG

    # aorta (descending, left of the spine) and trachea (upper slices)
    hu[_ellipse(x, y, -16, -52, 13, 13) < 1] = BLOOD + 5
    trachea = (_ellipse(x, y, 0, 10, 9, 8) < 1) & (zc > 0.2)
    hu[trachea] = AIR + 20

    # bones: vertebral body (cortex + marrow), canal, arch; sternum; ribs
    vb = _ellipse(x, y, 0, -82, 19, 16)
    hu[vb < 1] = BONE
    hu[vb < 0.8] = MARROW
    hu[_ellipse(x, y, 0, -104, 8, 7) < 1] = 15.0  # spinal canal
    arch = (_ellipse(x, y, 0, -106, 20, 14) < 1) & (_ellipse(x, y, 0, -104, 8, 7) >= 1) & (y < -96)
    hu[arch] = BONE
    hu[_ellipse(x, y, 0, by - 16, 14, 6) < 1] = BONE * 0.8  # sternum
    rib_ax, rib_ay = bx - 17, by - 16
    phase = 0.25 * np.sin(3.0 * zc)  # ribs run obliquely: their cross-sections move with z
    for side in (-1, 1):
        for t in np.linspace(0.35, 2.75, 8):
            ang = t + phase
            cx, cy = side * rib_ax * np.sin(ang), -5 + rib_ay * np.cos(ang)
            rib = _ellipse(x, y, cx, cy, 6.5, 4.5)
            hu[rib < 1] = BONE
            hu[rib < 0.55] = MARROW

    # vessel trees from each hilum, rendered inside the lungs (partial volume with air)
    pts = np.stack([x[lungs], y[lungs], z[lungs]], axis=1)
    segs = []
    for side in (-1, 1):
        hilum = np.array([side * 32.0, 0.0, 0.0])
        for _ in range(10):
            d = np.array([side * rng.uniform(0.3, 1.0), rng.uniform(-1, 1), rng.uniform(-0.7, 0.7)])
            segs += _vessel_tree(rng, hilum + rng.normal(0, 5, 3), d, radius=3.0, length=40, generations=5)
    axes = (
        affine[0, 0] * np.arange(nx) + affine[0, 3],
        affine[1, 1] * np.arange(ny) + affine[1, 3],
        affine[2, 2] * np.arange(nz) + affine[2, 3],
    )
    occ = _render_segments(axes, segs)[lungs]
    # parenchymal texture: smooth low-amplitude variation, denser towards the dependent (posterior) lung
    tex = ndimage.gaussian_filter(rng.normal(0, 1, shape), (1.2, 1.2, 0.5)).astype(np.float32)
    tex = (tex / (tex.std() + 1e-9))[lungs]
    lung_hu = LUNG + 18 * tex + 25 * np.clip(-(pts[:, 1] + 20) / 80, 0, 1)
    lung_hu = lung_hu + occ * (BLOOD - LUNG)

    # lesions: irregular ground-glass blobs near the pleura, of known extent
    labels = np.zeros(shape, dtype=np.uint8)
    lesion_val = np.zeros(len(pts), dtype=np.float32)
    rough = ndimage.gaussian_filter(rng.normal(0, 1, shape), (4, 4, 1.5)).astype(np.float32)
    rough /= rough.std() + 1e-9
    for n in range(n_lesions):
        side = (-1, 1)[n % 2]
        ang = rng.uniform(0.6, 2.6)  # around the lateral/posterior periphery
        c = np.array([side * (40 + 28 * np.sin(ang)), -10 + 55 * np.cos(ang), rng.uniform(-0.6, 0.6) * sz * nz / 2])
        radii = np.array([rng.uniform(18, 32), rng.uniform(20, 36), rng.uniform(8, 16)])
        d = np.sqrt((((pts - c) / radii) ** 2).sum(axis=1))
        d = d + 0.22 * rough[lungs]  # irregular, lobulated margin
        inside = d < 1
        density = rng.uniform(-480, -260)  # ground glass
        core = np.clip(1 - d / 0.55, 0, 1)  # denser centre, towards consolidation
        val = np.where(inside, density + core * rng.uniform(120, 300) + 40 * rough[lungs], 0.0)
        lesion_val = np.where(inside, np.maximum(lesion_val, val - LUNG), lesion_val)
        lab = np.zeros(len(pts), dtype=bool)
        lab[inside] = True
        labels[lungs] |= lab.astype(np.uint8)
    # ground glass raises the parenchyma but vessels stay visible through it
    lung_hu = np.maximum(lung_hu, LUNG + lesion_val + occ * (BLOOD - LUNG - lesion_val))
    hu[lungs] = lung_hu

    # scanner: mild blur (PSF), correlated noise; clip to the int16 CT range
    hu = ndimage.gaussian_filter(hu, (0.6, 0.6, 0.3))
    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), (0.8, 0.8, 0)).astype(np.float32)
    hu = hu + noise * (noise_hu / (noise.std() + 1e-9))
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return hu, labels, affine


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a NIfTI-1 volume (gzip when the name ends in .gz) with the affine in both qform and sform."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # scanner anatomical
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bunet.phantom", description="Write the chest-CT phantom as NIfTI.")
    p.add_argument("--out", default="data/sample_ct.nii.gz", help="HU volume (.nii or .nii.gz)")
    p.add_argument("--labels", default=None, help="lesion label volume (default: <out stem>_lesions.nii.gz)")
    p.add_argument("--size", type=int, default=128, help="in-plane voxels")
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--seed", type=int, default=2020)
    args = p.parse_args(argv)
    out = Path(args.out)
    labels_path = Path(args.labels) if args.labels else out.with_name(out.name.split(".nii")[0] + "_lesions.nii.gz")
    hu, lab, aff = make_phantom(shape=(args.size, args.size, args.slices), seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(out, hu, aff)
    save_nifti(labels_path, lab, aff)
    print(
        f"wrote {out} ({hu.shape}, HU {hu.min()}..{hu.max()}) and {labels_path} "
        f"({int(lab.sum())} lesion voxels, {100 * lab.mean():.1f} %)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()


def model_dice(model_path: str | Path, scan_path: str | Path, labels_path: str | Path) -> dict[str, float]:
    """Dice of a model's float axial (xy) segmentation of a scan against its label volume.

    Uses the client's own preprocessing path (:mod:`bunet.volume`: canonical orientation, the
    model's HU window, resize to the input size and back) and :func:`reference.float_forward`.
    """
    import nibabel as nib

    from .model.format import Model
    from .model.reference import float_labels
    from .volume import from_slices, load_scan, resize_stack, to_slices

    model = Model.load(model_path)
    scan = load_scan(scan_path)
    truth = nib.as_closest_canonical(nib.load(str(labels_path)))
    truth = np.asarray(truth.dataobj) > 0
    stack = to_slices(model.preprocessing.apply(scan.hu), "xy")
    x = resize_stack(stack, model.preprocessing.input_size)[:, None].astype(np.float32)
    lab = float_labels(model.network("xy"), x)
    pred = from_slices(resize_stack(lab, stack.shape[1:], labels=True), "xy") > 0
    inter = int((pred & truth).sum())
    per = [
        2 * int((pred[..., k] & truth[..., k]).sum()) / max(int(pred[..., k].sum() + truth[..., k].sum()), 1)
        for k in range(truth.shape[2])
        if truth[..., k].any()
    ]
    return {
        "dice": 2 * inter / max(int(pred.sum() + truth.sum()), 1),
        "dice_mean_lesion_slices": float(np.mean(per)),
        "predicted_voxels": int(pred.sum()),
        "lesion_voxels": int(truth.sum()),
    }
