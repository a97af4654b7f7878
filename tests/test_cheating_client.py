"""A cheating OT receiver in a real job: the client whose SoftSpoken correction uses different choice
bits in different columns (the attack that probes the garbler's Δ) is refused with a clear error before
anything made with its OTs is sent; an honest job over the same path still equals the reference, and
the server serves the next job."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from seed_unet import seed_unet_model

from bunet.client import Client, ClientError
from bunet.gc import engine, otcheck
from bunet.model import reference
from bunet.model.format import Quantization
from bunet.model.plan import compile_plan
from bunet.protocol.channel import ProtocolError, pipe
from bunet.protocol.session import ClientProtocol, ServerProtocol
from bunet.server import Server


@pytest.fixture(scope="module")
def model():
    return seed_unet_model(in_channels=1, base=4, depth=2, input_size=16, seed=7, quantization=Quantization(24, 8, 8))


def _cheat(where: str):
    """A receiver that cheats in its requests' OTs (``where`` = "request") or in the set-up's (the
    128 OTs that carry the reverse extension's base choices, and silent OT's SoftSpoken base COTs)."""

    def recv(self, blk: int, m: int, choice: np.ndarray, body: object, t: np.ndarray) -> None:
        if (self._rleaves is not None) == (where == "request"):
            _cheating_recv(self, blk, m, choice, body, t)
        else:
            HONEST(self, blk, m, choice, body, t)

    return recv


HONEST = engine.Evaluator._checked_recv


def _cheating_recv(self, blk: int, m: int, choice: np.ndarray, body: object, t: np.ndarray) -> None:
    """The honest receiver's rows, then 32 correction bits flipped (each in one column of one row,
    spread over many columns), and the proof made over the changed correction as a careful cheater
    would (Fiat-Shamir over what it sends, its true choices): it passes only if it guessed every Δ
    bit it touched."""
    rows = engine._checked_rows(self.ot_k, m)
    full = np.random.default_rng(blk).integers(0, 256, rows // 8, dtype=np.uint8)
    full[: m // 8] = choice
    engine.lib.bn_cot_recv(self._leaves, self.ot_k, blk, rows, engine._buf(full), body, engine._buf(t))
    cm_len = engine._cot_len(self.ot_k, rows)
    cm = np.frombuffer(engine.ffi.buffer(body, cm_len), dtype=np.uint8)
    rng = np.random.default_rng(blk + 1)
    cm[rng.choice(cm_len, size=32, replace=False)] ^= np.uint8(1) << rng.integers(0, 8, 32).astype(np.uint8)
    proof = otcheck.prove(t[: 16 * rows], full, engine._check_seed(self._sid, blk, cm))
    engine.ffi.memmove(body + cm_len, proof, len(proof))


def _ref(model, x):
    return reference.run_plan(compile_plan(model.networks["main"], model.quantization), x)


def test_honest_softspoken_job_is_checked_and_equals_reference(model, monkeypatch):
    """Every request's proof is verified (its rows counted) and the mask equals the reference."""
    garblers = []
    init = engine.Garbler.__init__
    monkeypatch.setattr(engine.Garbler, "__init__", lambda self, *a, **k: garblers.append(self) or init(self, *a, **k))
    srv = ServerProtocol(model)
    srv.gc_ots = ("softspoken",)
    cli = ClientProtocol(json.loads(json.dumps(srv.describe())))
    x = np.random.default_rng(3).random((2, 1, 16, 16)).astype(np.float32)
    a, b = pipe()
    th = threading.Thread(target=srv.run_job, args=(b,))
    th.start()
    labels, _ = cli.run_job(a, "main", x)
    th.join(timeout=60)
    assert not th.is_alive()
    assert np.array_equal(labels, _ref(model, x))
    (g,) = garblers
    assert g.rows_checked > 0 and g.rows_checked == 128 * (g._blk - engine._SETUP_BLOCKS)  # every request row


@pytest.mark.parametrize(
    "ot,where,error",
    [
        ("softspoken", "request", "GC request refused"),
        ("softspoken", "setup", "malformed GC hello"),
        ("silent", "setup", "malformed GC hello"),
    ],
)
def test_cheating_receiver_is_refused_in_memory(model, monkeypatch, ot, where, error):
    """The server's job ends with one clear line; the client's ends too (its channel closes)."""
    monkeypatch.setattr(engine.Evaluator, "_checked_recv", _cheat(where))
    srv = ServerProtocol(model)
    srv.gc_ots = (ot,)
    cli = ClientProtocol(json.loads(json.dumps(srv.describe())))
    x = np.random.default_rng(4).random((1, 1, 16, 16)).astype(np.float32)
    a, b = pipe()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            srv.run_job(b)
        except BaseException as e:  # noqa: BLE001 - checked below
            errors.append(e)
        finally:
            b.close()

    th = threading.Thread(target=serve)
    th.start()
    with pytest.raises(ProtocolError):
        cli.run_job(a, "main", x)
    th.join(timeout=60)
    assert not th.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ProtocolError)
    msg = str(errors[0])
    assert msg.startswith(error) and "consistency check" in msg and "\n" not in msg


@pytest.mark.parametrize("ot", ["softspoken", "silent"])
def test_cheating_setup_is_refused_by_the_engine(ot, monkeypatch):
    """The set-up's OTs (they carry the server's Δ too) are checked before the server answers."""
    monkeypatch.setattr(engine.Evaluator, "_checked_recv", _cheat("setup"))
    ev, g = engine.Evaluator(ot=ot), engine.Garbler(ot=ot)
    m3 = ev.finish_hello(g.hello(ev.hello()))
    with pytest.raises(engine.OTCheckFailed, match="consistency check"):
        g.finish_hello(m3)
    monkeypatch.undo()
    ev, g = engine.Evaluator(ot=ot), engine.Garbler(ot=ot)
    ev.finish_setup(g.finish_hello(ev.finish_hello(g.hello(ev.hello()))))  # honest: accepted


def test_cheating_receiver_is_refused_over_grpc_and_server_survives(model, monkeypatch):
    x = np.random.default_rng(6).random((1, 1, 16, 16)).astype(np.float32)
    with Server(model, "127.0.0.1:0", max_slices=4) as srv, Client(srv.address, ot="softspoken") as c:
        monkeypatch.setattr(engine.Evaluator, "_checked_recv", _cheat("request"))
        with pytest.raises(ClientError, match="consistency check"):
            c.segment_slices(x)
        monkeypatch.undo()
        assert np.array_equal(c.segment_slices(x), _ref(model, x))  # the server is still up
