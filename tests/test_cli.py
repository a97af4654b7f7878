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
    r = _run("client_main", "segment", str(p), "--server", "127.0.0.1:1", "--quiet")
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
