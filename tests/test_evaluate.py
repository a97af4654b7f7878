"""``bunet-client evaluate`` end to end on small synthetic case sets (2D PNG slices, NIfTI
volumes) against real servers on loopback, the PlainEval RPC and its limits, the statistics and
metrics on inputs with known answers, and one-line errors for bad input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from seed_unet import seed_unet_model

from bunet import cli, evalstats, metrics
from bunet.client import Client
from bunet.model import reference
from bunet.model.format import Quantization
from bunet.model.plan import compile_plan
from bunet.model.train import resize
from bunet.plain_eval import PlainEvaluator, request
from bunet.protocol.session import Limits
from bunet.server import Server
from bunet.service.transport import NotAllowed


@pytest.fixture(scope="module")
def model():
    return seed_unet_model(
        in_channels=1, base=4, depth=2, input_size=16, seed=3, quantization=Quantization(24, 8, 8), planes=("xy",)
    )


@pytest.fixture(scope="module")
def plain_server(model):
    with Server(model, "127.0.0.1:0", allow_plain_eval=True) as s:
        yield s


@pytest.fixture(scope="module")
def secure_server(model):
    with Server(model, "127.0.0.1:0") as s:
        yield s


def _slices(tmp_path, n=5, shape=(22, 19)):
    """n grey slices with a bright blob and a mask of the blob (PNG, 0/255); different sizes."""
    rng = np.random.default_rng(11)
    img_dir, msk_dir = tmp_path / "cases" / "images", tmp_path / "masks"
    img_dir.mkdir(parents=True)
    msk_dir.mkdir()
    for i in range(n):
        h, w = shape[0] + i, shape[1] + 2 * i
        yy, xx = np.mgrid[:h, :w]
        blob = (yy - h / 2 - i) ** 2 + (xx - w / 3) ** 2 < (3 + i) ** 2
        img = np.clip(rng.normal(70, 25, (h, w)) + 120 * blob, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(img_dir / f"{i}.png")
        Image.fromarray((blob * 255).astype(np.uint8)).save(msk_dir / f"{i}.png")
    return tmp_path / "cases", msk_dir


def _evaluate(*args: str) -> int:
    return cli.client_main(["evaluate", *args, "--quiet"])


def test_evaluate_slices_with_plain_eval(plain_server, model, tmp_path, capsys):
    cases, masks = _slices(tmp_path)
    out = tmp_path / "r"
    assert _evaluate(str(cases), "--truth", str(masks), "--server", plain_server.address, "--out", str(out)) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["plain_eval"]["available"] and rep["case_kind"] == "slice" and len(rep["cases"]) == 5
    s = rep["summary"]
    assert s["secure_equals_fixed_point"]["pixels_differ"] == 0 and s["secure_equals_fixed_point"]["cases_equal"] == 5
    for key in (
        "secure",
        "float",
        "fixed",
        "dice_difference_secure_minus_float",
        "secure_vs_float_dice_tests",
        "bland_altman_volume_secure_vs_float",
        "bland_altman_volume_secure_vs_truth",
    ):
        assert key in s
    # the float figures are the float model's on the same network inputs, scored at the labels' size
    img = np.asarray(Image.open(cases / "images" / "2.png"), dtype=np.float32) / 255.0
    truth = np.asarray(Image.open(tmp_path / "masks" / "2.png")) > 127
    x = resize(img, (16, 16))[None, None].astype(np.float32)
    fl = reference.float_labels(model.networks["main"], x)[0]
    want = metrics.dice(resize(fl.astype(np.float32), truth.shape, nearest=True) > 0.5, truth)
    assert rep["cases"][2]["case"] == "2" and rep["cases"][2]["float"]["dice"] == pytest.approx(want)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "secure == fixed-point reference: 5 of 5" in page
    printed = capsys.readouterr().out
    assert "secure == fixed point: 5/5 cases" in printed and "mean Dice [95% CI]" in printed


def test_evaluate_without_plain_eval_says_so(secure_server, tmp_path, capsys):
    cases, masks = _slices(tmp_path, n=3)
    out = tmp_path / "r"
    assert _evaluate(str(cases), "--truth", str(masks), "--server", secure_server.address, "--out", str(out)) == 0
    rep = json.loads((out / "report.json").read_text())
    assert not rep["plain_eval"]["available"] and "--allow-plain-eval" in rep["plain_eval"]["note"]
    assert set(rep["summary"]) >= {"secure", "bland_altman_volume_secure_vs_truth"}
    assert "float" not in rep["summary"] and "float" not in rep["cases"][0]
    assert "No plaintext comparison" in (out / "report.html").read_text()
    assert "plaintext comparison: off" in capsys.readouterr().out


def test_evaluate_volumes_embedded_server(tmp_path):
    """NIfTI cases, the embedded server (which offers plaintext evaluation of its own model)."""
    m = seed_unet_model(in_channels=1, base=4, depth=2, input_size=16, seed=5, planes=("xy", "yz", "xz"))
    mp = tmp_path / "m.bunet"
    m.save(mp)
    rng = np.random.default_rng(2)
    (tmp_path / "ct").mkdir()
    (tmp_path / "lab").mkdir()
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    for k in range(2):
        hu = rng.normal(-700, 300, (12, 10, 4)).astype(np.int16)
        lab = np.zeros(hu.shape, np.uint8)
        lab[3:7, 2:6, 1:3] = 1 + k
        nib.save(nib.Nifti1Image(hu, aff), str(tmp_path / "ct" / f"p{k}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "lab" / f"p{k}_seg.nii.gz"))
    out = tmp_path / "r"
    assert _evaluate(str(tmp_path / "ct"), "--truth", str(tmp_path / "lab"), "--model", str(mp), "--out", str(out)) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["case_kind"] == "volume" and rep["units"]["volume"] == "mL" and rep["plain_eval"]["available"]
    assert rep["summary"]["secure_equals_fixed_point"]["pixels_differ"] == 0
    assert rep["secure_traffic"]["slices"] == {"xy": 8, "yz": 24, "xz": 20}
    assert rep["cases"][0]["truth_volume"] == pytest.approx(4 * 4 * 2 * 1.5 * 1.5 * 3.0 / 1000)


def test_plain_eval_rpc_off_by_default_and_limited(secure_server, plain_server, model):
    x = np.random.default_rng(0).random((3, 1, 16, 16)).astype(np.float32)
    with Client(secure_server.address) as c, pytest.raises(NotAllowed, match="--allow-plain-eval"):
        c.plain_labels(x)
    with Client(plain_server.address) as c:
        fl, fx = c.plain_labels(x)
    assert np.array_equal(fx, reference.run_plan(compile_plan(model.networks["main"], model.quantization), x))
    assert np.array_equal(fl, reference.float_labels(model.networks["main"], x))
    ev = PlainEvaluator(
        model, {"main": compile_plan(model.networks["main"], model.quantization)}, Limits(max_slices=2, max_pixels=300)
    )
    with pytest.raises(ValueError, match="limit"):
        ev(request("main", x))  # 3 slices > 2
    with pytest.raises(ValueError, match="size"):
        ev(request("main", np.zeros((1, 1, 20, 20), np.float32)))  # 400 pixels > 300
    with pytest.raises(ValueError, match="channel"):
        ev(request("main", np.zeros((1, 2, 16, 16), np.float32)))
    with pytest.raises(ValueError, match="unknown network"):
        ev(request("other", x[:1]))
    bad = request("main", x[:1])
    bad.pixels = bad.pixels[:-4]
    with pytest.raises(ValueError, match="does not match"):
        ev(bad)
    with pytest.raises(ValueError, match="NaN"):
        ev(request("main", np.full((1, 1, 16, 16), np.nan, np.float32)))


# ---------------------------------------------------------------------------------------------
# statistics and metrics on known inputs


def test_bootstrap_ci():
    v = np.linspace(0.2, 0.9, 30)
    r = evalstats.bootstrap_mean_ci(v)
    assert r["mean"] == pytest.approx(v.mean()) and r["low"] < r["mean"] < r["high"]
    assert r["high"] - r["low"] < 0.3
    same = evalstats.bootstrap_mean_ci([0.5] * 7)
    assert same["low"] == same["high"] == 0.5 and "same value" in same["note"]
    one = evalstats.bootstrap_mean_ci([0.4])
    assert one["low"] is None and one["mean"] == 0.4


def test_paired_tests_known_and_degenerate():
    x = np.arange(8, dtype=float) + 1
    r = evalstats.paired_tests(x + np.arange(1, 9), x)  # every difference positive
    assert r["wilcoxon"]["statistic"] == 0 and r["wilcoxon"]["p_value"] == pytest.approx(2 / 256)
    assert evalstats.paired_tests(np.arange(5.0), np.arange(5.0) + 10)["ks_2samp"]["statistic"] == 1.0
    eq = evalstats.paired_tests([0.7, 0.8, 0.9], [0.7, 0.8, 0.9])
    assert eq["wilcoxon"]["p_value"] is None and "equal on every case" in eq["wilcoxon"]["note"]
    assert eq["ks_2samp"]["statistic"] == 0.0 and eq["ks_2samp"]["p_value"] == 1.0


def test_bland_altman_known():
    r = evalstats.bland_altman([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert r["bias"] == 2.0 and r["sd"] == 1.0
    assert r["loa_low"] == pytest.approx(0.04) and r["loa_high"] == pytest.approx(3.96)
    assert evalstats.bland_altman([1.0], [0.0])["loa_low"] is None


def test_metrics_known():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True  # 16 pixels
    b[2:6, 4:8] = True  # overlaps in 8
    assert metrics.dice(a, b) == 0.5 and metrics.iou(a, b) == pytest.approx(8 / 24)
    p, q = np.zeros((5, 9), bool), np.zeros((5, 9), bool)
    p[2, 1], q[2, 7] = True, True
    assert metrics.hd95(p, q) == 6.0 and metrics.hd95(p, q, spacing=(1.0, 0.5)) == 3.0
    assert metrics.hd95(p, p) == 0.0
    assert metrics.hd95(p, np.zeros_like(p)) is None and metrics.hd95(~p & False, np.zeros_like(p)) == 0.0


# ---------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing started


def _one_line_error(capsys, *args: str) -> str:
    assert _evaluate(*args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_line(tmp_path, capsys):
    cases, masks = _slices(tmp_path, n=2)
    assert "--truth" in _one_line_error(capsys, str(cases), "--out", str(tmp_path / "r"))
    assert "labels not found" in _one_line_error(capsys, str(cases), "--truth", str(tmp_path / "nope"))
    (masks / "1.png").unlink()
    assert "no label file for case '1'" in _one_line_error(capsys, str(cases), "--truth", str(masks))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "1.png")  # wrong size
    m = seed_unet_model(in_channels=1, base=2, depth=1, input_size=8)
    m.save(tmp_path / "m.bunet")
    err = _one_line_error(
        capsys, str(cases), "--truth", str(masks), "--model", str(tmp_path / "m.bunet"), "--out", str(tmp_path / "r")
    )
    assert "differ in size" in err
    (tmp_path / "v").mkdir()
    (tmp_path / "vl").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 3), np.int16), np.eye(4)), str(tmp_path / "v" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 3), np.uint8), np.eye(4)), str(tmp_path / "vl" / "a.nii.gz"))
    err = _one_line_error(
        capsys,
        str(tmp_path / "v"),
        "--truth",
        str(tmp_path / "vl"),
        "--model",
        str(tmp_path / "m.bunet"),
        "--out",
        str(tmp_path / "r"),
    )
    assert "differ in shape" in err


def test_secure_only_flag(plain_server, tmp_path):
    cases, masks = _slices(tmp_path, n=2)
    out = tmp_path / "r"
    assert (
        _evaluate(
            str(cases), "--truth", str(masks), "--server", plain_server.address, "--out", str(out), "--secure-only"
        )
        == 0
    )
    rep = json.loads((out / "report.json").read_text())
    assert not rep["plain_eval"]["available"] and "--secure-only" in rep["plain_eval"]["note"]
