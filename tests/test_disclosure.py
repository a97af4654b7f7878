"""What the client receives: Describe carries only the whitelisted header, and no byte of a whole
secure job over gRPC contains any weight in any of its encodings."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from seed_unet import seed_unet_model

from bunet.client import Client
from bunet.model.format import Quantization
from bunet.model.plan import compile_plan
from bunet.protocol import channel as chmod
from bunet.server import Server
from bunet.service import transport

TOP_KEYS = {"model", "he_params", "limits", "gc_ots"}
MODEL_KEYS = {
    "format",
    "format_version",
    "name",
    "description",
    "networks",
    "weight_shapes",
    "plane_networks",
    "quantization",
    "preprocessing",
    "metadata",
    "public_fields",
}
SECRET = "python train.py --seed 1234 --secret-run-xyz"


def _windows(values: np.ndarray, dtype: str, k: int) -> set[bytes]:
    """Every run of k consecutive values in this encoding, except low-entropy runs (all equal)."""
    v = np.ascontiguousarray(values.astype(dtype))
    win = np.lib.stride_tricks.sliding_window_view(v, k)
    keep = ~(win == win[:, :1]).all(axis=1)
    return {r.tobytes() for r in win[keep]}


_MULT = np.array([1, 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


def _hash(words: np.ndarray, k: int) -> np.ndarray:
    """A uint64 mix of every k consecutive 8-byte words (wrapping arithmetic)."""
    n = len(words) - k + 1
    h = np.zeros(max(n, 0), dtype=np.uint64)
    for j in range(k):
        h += words[j : j + n] * _MULT[j]
    return h


def _find_any(blob: bytes, windows: set[bytes]) -> bytes | None:
    """A window occurring anywhere in blob (at any byte offset): hash every run of 8-byte words
    at each of the 8 alignments, then confirm candidate hits byte for byte."""
    if not windows:
        return None
    width = len(next(iter(windows)))
    assert width % 8 == 0
    k = width // 8
    arr = np.frombuffer(b"".join(windows), dtype="<u8").reshape(-1, k)
    keys = np.unique((arr * _MULT[:k]).sum(axis=1, dtype=np.uint64))
    for off in range(8):
        n = (len(blob) - off) // 8
        words = np.frombuffer(blob, dtype="<u8", count=n, offset=off)
        for i in np.flatnonzero(np.isin(_hash(words, k), keys)):
            cand = blob[off + 8 * int(i) : off + 8 * int(i) + width]
            if cand in windows:
                return cand
    return None


@pytest.fixture(scope="module")
def model():
    m = seed_unet_model(
        in_channels=1, base=4, depth=2, input_size=16, seed=11, quantization=Quantization(24, 8, 8), planes=("xy",)
    )
    return dataclasses.replace(
        m, metadata={"training": SECRET, "seed": 1234, "test_dice": 0.71}, public_fields=["test_dice"]
    )


def test_find_any_finds_a_window_at_any_offset():
    w = np.arange(10, 20, dtype=np.int64)
    for off in range(9):
        blob = bytes(off) + w.tobytes() + bytes(5)
        assert _find_any(blob, _windows(w, "<i8", 3)) is not None
    assert _find_any(bytes(range(256)) * 4, _windows(w, "<i8", 3)) is None


def test_client_receives_only_the_whitelist_and_no_weight(model):
    received: list[bytes] = []
    orig_recv, orig_describe = chmod.Channel.recv, transport.StubClient.describe

    def spy_recv(self, tag, limit=None):
        data = orig_recv(self, tag, limit)
        received.append(bytes(data))
        return data

    def spy_describe(self):
        reply = orig_describe(self)
        received.append(reply.SerializeToString())
        return reply

    chmod.Channel.recv, transport.StubClient.describe = spy_recv, spy_describe
    try:
        with Server(model, "127.0.0.1:0", max_slices=8) as srv, Client(srv.address) as c:
            c.segment_slices(np.random.default_rng(2).random((2, 1, 16, 16)).astype(np.float32))
    finally:
        chmod.Channel.recv, transport.StubClient.describe = orig_recv, orig_describe
    desc = json.loads(transport.bunet_pb2.DescribeReply.FromString(received[0]).description_json)
    assert set(desc) <= TOP_KEYS and set(desc["model"]) <= MODEL_KEYS
    assert desc["model"]["metadata"] == {"test_dice": 0.71}
    blob = b"".join(received)
    assert len(received) > 5 and SECRET.encode() not in blob and b"secret-run" not in blob
    plan = compile_plan(model.networks["main"], model.quantization)
    ring = 1 << model.quantization.ring_bits
    for s in plan.steps:
        if getattr(s, "weight", None) is None:
            continue
        w = s.weight.reshape(-1).astype(np.int64)
        f = model.networks["main"].weights[f"{s.out}.weight"].reshape(-1)
        for windows in (
            _windows(f, "<f4", 2),
            _windows(w, "<i8", 3),
            _windows(w % ring, "<u4", 4),
            _windows(w % ring, "<u8", 3),
        ):
            assert _find_any(blob, windows) is None, s.out


def test_dev_private_key_is_owner_only(tmp_path):
    import os
    import stat

    from devcert import self_signed

    (tmp_path / "key.pem").write_bytes(b"old")
    os.chmod(tmp_path / "key.pem", 0o644)
    _, key = self_signed(tmp_path)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_new_message_body_is_zeroed():
    from bunet.message import new_message

    for _ in range(3):  # fresh allocations of a size glibc serves from freed (dirty) memory
        junk = bytes([0xA5]) * (1 << 20)
        del junk
        msg, body = new_message(b"hdr", 1 << 20)
        assert msg[:3] == b"hdr" and not body.any() and len(msg) == 3 + (1 << 20)


def test_token_refused_over_plaintext_unless_insecure(model):
    from bunet.client import ClientError

    with pytest.raises(ValueError, match="plaintext"):
        Server(model, "127.0.0.1:0", token="s3cret")
    with pytest.raises(ClientError, match="plaintext"):
        Client("127.0.0.1:9", token="s3cret")
    with (
        Server(model, "127.0.0.1:0", token="s3cret", insecure=True) as srv,
        Client(srv.address, token="s3cret", insecure=True) as c,
    ):
        assert c.model.name == model.name


def test_bunet_model_set_public(model, tmp_path, capsys):
    from bunet.cli import model_main
    from bunet.model.format import Model

    path = tmp_path / "m.bunet"
    model.save(path)
    assert model_main(["set-public", str(path), "seed,test_dice"]) == 0
    m = Model.load(path)
    assert m.public_fields == ["seed", "test_dice"] and m.public_header()["metadata"] == {
        "seed": 1234,
        "test_dice": 0.71,
    }
    assert model_main(["set-public", str(path), "nope"]) != 0
    assert "nope" in capsys.readouterr().err and Model.load(path).public_fields == ["seed", "test_dice"]
    assert model_main(["set-public", str(path), ""]) == 0 and Model.load(path).public_header()["metadata"] == {}
