"""Command lines: one-line errors and non-zero exits, never tracebacks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from seed_unet import seed_unet_model


def _run(*args: str) -> subprocess.CompletedProcess:
    code = f"import sys; from bunet import cli; sys.exit(cli.{args[0]}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args[1:]], capture_output=True, text=True, timeout=300)


def test_missing_scan_is_one_line(tmp_path):
    r = _run("client_main", "segment", str(tmp_path / "nope.nii.gz"), "--quiet")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_planes_flag(tmp_path):
    r = _run("client_main", "segment", "x.nii.gz", "--planes", "ab")
    assert r.returncode == 2 and "planes" in r.stderr and "Traceback" not in r.stderr


def test_unreachable_server(tmp_path):
    import nibabel as nib

    p = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.int16), np.eye(4)), str(p))
    r = _run("client_main", "segment", str(p), "--server", "127.0.0.1:1", "--no-lung-mask", "--quiet")
    assert r.returncode == 1 and "cannot reach" in r.stderr and "Traceback" not in r.stderr


def test_model_info(tmp_path):
    m = seed_unet_model(in_channels=1, base=2, depth=1, input_size=8)
    m.save(tmp_path / "m.bunet")
    r = _run("model_main", "info", str(tmp_path / "m.bunet"))
    assert r.returncode == 0, r.stderr
    assert "ring Z_2^24" in r.stdout and "garbled-circuit instances per slice" in r.stdout
    r = _run("model_main", "info", str(tmp_path / "missing.bunet"))
    assert r.returncode == 1 and "not found" in r.stderr


def test_bundled_model_info():
    r = _run("model_main", "info")
    assert r.returncode == 0, r.stderr
    assert "xy -> main" in r.stdout and "lesion" in r.stdout


def _nifti(path, data, singular=False):
    import nibabel as nib

    img = nib.Nifti1Image(data, np.eye(4))
    if singular:  # nibabel refuses such an affine, so the header says it directly (as a broken file would)
        img.header["qform_code"], img.header["sform_code"], img.header["srow_z"] = 0, 1, [0, 0, 0, 0]
        img = nib.Nifti1Image(data, None, img.header)
    nib.save(img, str(path))
    return path


def _bad_cases(tmp_path):
    """(name, argv) of every bad input a user can give before a job starts."""
    good = _nifti(tmp_path / "good.nii.gz", np.zeros((8, 8, 4), dtype=np.int16))
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "text.nii").write_text("hello")
    (tmp_path / "outdir").mkdir()
    return [
        ("missing scan", [str(tmp_path / "nope.nii.gz")]),
        ("corrupt gzip", [str(tmp_path / "corrupt.nii.gz")]),
        ("not NIfTI", [str(tmp_path / "text.nii")]),
        ("2D", [str(_nifti(tmp_path / "flat2d.nii.gz", np.zeros((8, 8), dtype=np.int16)))]),
        ("4D", [str(_nifti(tmp_path / "four.nii.gz", np.zeros((4, 4, 4, 3), dtype=np.int16)))]),
        ("empty dimension", [str(_nifti(tmp_path / "empty.nii.gz", np.zeros((8, 0, 4), dtype=np.int16)))]),
        ("NaN voxels", [str(_nifti(tmp_path / "nan.nii.gz", np.full((4, 4, 4), np.nan, dtype=np.float32)))]),
        ("singular affine", [str(_nifti(tmp_path / "sing.nii.gz", np.zeros((4, 4, 4), dtype=np.int16), True))]),
        ("png output", [str(good), "-o", str(tmp_path / "mask.png")]),
        ("mask as -o with a folder's suffix", [str(good), "-o", str(tmp_path / "outdir"), "--preview", "p.txt"]),
        ("bad report", [str(good), "--report", str(tmp_path / "r.txt")]),
        ("DICOM-SEG of a NIfTI scan", [str(good), "--dicom-seg", str(tmp_path / "s.dcm")]),
        ("no lung fields", [str(good)]),
        ("missing folder", [str(good), "-o", str(tmp_path / "no" / "mask.nii.gz")]),
        ("new output folder, bad scan", [str(tmp_path / "corrupt.nii.gz"), "-o", str(tmp_path / "new" / "sub")]),
        ("bare extension", [str(good), "-o", str(tmp_path / ".nii.gz")]),
        ("bad preview", [str(good), "--preview", str(tmp_path / "p.txt")]),
        ("preview folder missing", [str(good), "--preview", str(tmp_path / "no" / "p.png")]),
        ("cert without key", [str(good), "--server", "127.0.0.1:1", "--cert", str(good)]),
        ("key without cert", [str(good), "--server", "127.0.0.1:1", "--key", str(good)]),
        ("unreadable CA", [str(good), "--server", "127.0.0.1:1", "--ca", str(tmp_path / "none.pem"), "--no-lung-mask"]),
        ("unreachable server", [str(good), "--server", "127.0.0.1:1", "--no-lung-mask"]),
    ]


def test_bad_inputs_are_one_line_errors_and_leave_no_file(tmp_path):
    cases = _bad_cases(tmp_path)
    before = set(tmp_path.rglob("*"))
    for name, argv in cases:
        r = _run("client_main", "segment", *argv, "--quiet")
        assert r.returncode in (1, 2), (name, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, (name, r.stderr)
    assert set(tmp_path.rglob("*")) == before  # nothing written, partial or complete


def test_failed_preview_leaves_no_mask(tmp_path, monkeypatch):
    """A preview that fails after the job takes the mask with it: a failed run leaves no file."""
    from bunet import cli, preview

    m = seed_unet_model(in_channels=1, base=2, depth=1, input_size=8)
    m.save(tmp_path / "m.bunet")
    scan = _nifti(tmp_path / "s.nii.gz", np.random.default_rng(0).normal(-600, 300, (8, 8, 3)).astype(np.int16))

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(preview, "write_preview", broken)
    code = cli.client_main(
        [
            "segment",
            str(scan),
            "--model",
            str(tmp_path / "m.bunet"),
            "-o",
            str(tmp_path / "mask.nii.gz"),
            "--preview",
            str(tmp_path / "p.png"),
            "--no-lung-mask",  # the random scan has no lungs
            "--quiet",
        ]
    )
    assert code == 1
    assert not (tmp_path / "mask.nii.gz").exists() and not (tmp_path / "p.png").exists()
    assert not list(tmp_path.glob(".part-*"))


def test_server_flags_checked(tmp_path):
    r = _run("server_main", "--memory-budget", "lots")
    assert r.returncode == 1 and "not a size" in r.stderr and "Traceback" not in r.stderr
    r = _run("server_main", "--slice-sizes", "12y3")
    assert r.returncode == 1 and "HxW" in r.stderr
    r = _run("server_main", "--memory-budget", "1M")
    assert r.returncode == 1 and "raise --memory-budget" in r.stderr
    r = _run("server_main", "--max-sessions", "0")
    assert r.returncode == 2
    r = _run("server_main", "--ot", "silent,iknp")
    assert r.returncode == 2 and "--ot takes silent and/or softspoken" in r.stderr


def test_ot_choices_are_the_engines():
    from bunet import cli, gc

    assert cli.OT_CHOICES == gc.OT_BACKENDS
