"""Training end to end: a few steps on the MedSeg slices write a loadable model (needs ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bunet.model.train import HU_CENTER, HU_WIDTH, dice, evaluate_labels


def test_dice_and_pooled_evaluation() -> None:
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0 and dice(a & False, a & False) == 1.0
    truths = [np.ones((8, 6), bool), np.zeros((8, 6), bool)]
    r = evaluate_labels([np.ones((4, 4), np.int64), np.zeros((4, 4), np.int64)], truths)
    assert r["dice_pooled"] == 1.0 and r["dice_mean"] == 1.0


def test_window_maps_lung_and_soft_tissue_like_medseg() -> None:
    """The HU window sends aerated lung and soft tissue near the MedSeg grey peaks (~44, ~210)."""
    lo = HU_CENTER - HU_WIDTH / 2
    grey = lambda hu: 255 * (hu - lo) / HU_WIDTH  # noqa: E731
    assert 25 < grey(-860) < 65 and 190 < grey(30) < 230


@pytest.mark.slow
def test_tiny_training_run(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from bunet.model.format import Model
    from bunet.model.train import main

    out = tmp_path / "tiny.bunet"
    main(
        [
            "--data",
            str(shared_data / "medseg_covid19_2d_infnet"),
            "--out",
            str(out),
            "--steps",
            "3",
            "--batch",
            "2",
            "--size",
            "32",
            "--base",
            "2",
            "--depth",
            "2",
            "--limit-test",
            "3",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["dice_pooled"] <= 1.0
    # (enc + dec) x 2 convs x C x H x W per level, the bottom block once
    assert result["relus_per_slice"] == 2 * 2 * 2 * 32 * 32 + 2 * 2 * 4 * 16 * 16 + 2 * 8 * 8 * 8
    m = Model.load(out)
    assert m.plane_networks == {"xy": "main"} and m.preprocessing.kind == "hu_window"
    assert m.preprocessing.input_size == (32, 32)
    assert m.metadata["relus_per_slice"] == result["relus_per_slice"]
    assert m.metadata["export_max_abs_logit_error"] is None or m.metadata["export_max_abs_logit_error"] < 1e-4
    assert m.metadata["training"]["seed"] == 0
