"""A hostile but realistic world against the server, loopback only, every loop bounded.

Each case asserts a clean status (the right gRPC code, a one-line reason, no traceback in the
server's log), and that the server is healthy afterwards: a correct job (mask equal to the
fixed-point reference) and, for the server in its own process, memory within its budget.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from seed_unet import seed_unet_model
from serverproc import ROOT, ServerProcess, vm

from bunet.client import Client, ClientError
from bunet.model import reference
from bunet.model.format import Quantization
from bunet.model.plan import compile_plan
from bunet.protocol.channel import DeadlineExceeded
from bunet.protocol.session import PROTOCOL_VERSION, JobSpec
from bunet.server import Server
from bunet.service import frames
from bunet.service.admission import Admission
from bunet.service.transport import StreamChannel, StubClient, open_channel

SIZE = 16


@pytest.fixture(scope="module")
def model():
    return seed_unet_model(in_channels=1, base=4, depth=2, input_size=SIZE, seed=3, quantization=Quantization(24, 8, 8))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(11).random((2, 1, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def ref(model, x):
    return reference.run_plan(compile_plan(model.networks["main"], model.quantization), x)


class _LogSpy(logging.Handler):
    """Collects the server's log records: a traceback in them is a bug."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.exc_info]


@pytest.fixture
def logspy():
    spy = _LogSpy()
    logging.getLogger("bunet").addHandler(spy)
    yield spy
    logging.getLogger("bunet").removeHandler(spy)


@pytest.fixture(scope="module")
def server(model):
    srv = Server(model, "127.0.0.1:0", max_slices=8, idle_timeout_s=3.0)
    srv.transport_limits.spec_timeout_s = 2.0
    srv.start()
    yield srv
    srv.stop(0)


def _raw(address: str, frames_iter, timeout: float = 30.0) -> grpc.RpcError:
    """Send hand-made frames on one Run stream; the server's error."""
    stub = StubClient(open_channel(address), address)
    try:
        with pytest.raises(grpc.RpcError) as e:
            list(stub._run(frames_iter, timeout=timeout))
        return e.value
    finally:
        stub.close()


def _spec(**kw) -> bytes:
    d = {**JobSpec("main", 1, SIZE, SIZE).__dict__, **kw}
    return json.dumps(d).encode()


def _healthy(server: Server, x, ref) -> None:
    with Client(server.address) as c:
        assert np.array_equal(c.segment_slices(x), ref)
    assert server.admission.snapshot()["running_streams"] == 0


@pytest.mark.parametrize(
    "raw, code, match",
    [
        (b"not json", "INVALID_ARGUMENT", "malformed job request"),
        (b"[1, 2]", "INVALID_ARGUMENT", "malformed job request"),
        (_spec(network="other"), "INVALID_ARGUMENT", "unknown network"),
        (_spec(slices=0), "FAILED_PRECONDITION", "0 slices"),
        (_spec(slices=9), "FAILED_PRECONDITION", "over the server's limit"),
        (_spec(height=0), "INVALID_ARGUMENT", "outside the server's limit"),
        (_spec(height=4096, width=4096), "INVALID_ARGUMENT", "outside the server's limit"),
        (_spec(height=32, width=32), "INVALID_ARGUMENT", "not served"),
        (_spec(gc_window=0), "INVALID_ARGUMENT", "window 0"),
        (_spec(gc_window=10_000), "INVALID_ARGUMENT", "outside 1..64"),
        (_spec(slices="many"), "INVALID_ARGUMENT", "malformed job request"),
        (_spec(gc_ot="ferret" * 100), "FAILED_PRECONDITION", "this server offers silent, softspoken"),
        (_spec(protocol=PROTOCOL_VERSION + 1), "FAILED_PRECONDITION", "protocol version"),
        (json.dumps({"network": "main"}).encode(), "FAILED_PRECONDITION", "protocol version"),
    ],
)
def test_illegal_job_specs(server, raw, code, match, logspy):
    err = _raw(server.address, iter([frames.encode("job", raw, False)]))
    assert err.code().name == code and match in err.details(), err.details()
    assert "\n" not in err.details() and not logspy.tracebacks()


def test_oversized_first_message_and_frames(server, x, ref, logspy):
    big = bytes(100 << 10)  # a job request of 100 KiB, in one frame and in many
    err = _raw(server.address, iter([frames.encode("job", big, False)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "larger than this job allows" in err.details()
    err = _raw(server.address, (frames.encode("job", bytes(8 << 10), True) for _ in range(20)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # a gRPC message past a frame's size is refused by gRPC before it is buffered whole
    err = _raw(server.address, iter([frames.encode("job", bytes(5 << 20), False)]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not logspy.tracebacks()
    _healthy(server, x, ref)


def test_every_message_is_capped_by_the_job(server, x, ref, logspy):
    """After a legal job request, a message past its job's own size (a public key of 40 MiB, an
    endless one) is refused as soon as it passes the cap."""

    def endless():
        yield frames.encode("job", _spec(), False)
        for _ in range(40):
            yield frames.encode("he_pk", bytes(1 << 20), True)

    t0 = time.monotonic()
    err = _raw(server.address, endless())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "larger than this job allows" in err.details()
    assert time.monotonic() - t0 < 20 and not logspy.tracebacks()
    _healthy(server, x, ref)


@pytest.mark.parametrize(
    "case, code",
    [
        ("short key", "INVALID_ARGUMENT"),
        ("empty key", "INVALID_ARGUMENT"),
        ("bad hello", "INVALID_ARGUMENT"),
        ("bad hello reply", "INVALID_ARGUMENT"),
        ("hello first", "FAILED_PRECONDITION"),
        ("done first", "FAILED_PRECONDITION"),
    ],
)
def test_corrupt_or_out_of_order_messages(server, case, code, x, ref, logspy):
    from bunet import he
    from bunet.gc import Evaluator

    pk = he.ClientHE(server.protocol.he_params).public_key()
    ev = Evaluator()
    msgs = {
        "short key": [("he_pk", b"\x00" * 100)],
        "empty key": [("he_pk", b"")],
        "bad hello": [("he_pk", pk), ("gc_hello", b"xyz")],
        "bad hello reply": [("he_pk", pk), ("gc_hello", ev.hello()), ("gc_hello", bytes(64))],
        "hello first": [("gc_hello", ev.hello())],
        "done first": [("done", b"")],
    }[case]

    def gen():
        yield frames.encode("job", _spec(), False)
        for tag, payload in msgs:
            yield frames.encode(tag, payload, False)
        time.sleep(1)

    err = _raw(server.address, gen())
    assert err.code().name == code, err.details()
    assert "\n" not in err.details() and not logspy.tracebacks()
    _healthy(server, x, ref)


def test_silent_stream_and_trickle_lose_their_session(server, x, ref, logspy):
    """A stream that says nothing loses it at the job-request timeout (2 s here); one that
    trickles a byte every 0.3 s never completes a message and loses it at the idle timeout (3 s)."""

    def silent():
        time.sleep(6)
        yield frames.encode("job", _spec(), False)

    def trickle():
        yield frames.encode("job", _spec(), False)
        for _ in range(60):  # 18 s at most
            time.sleep(0.3)
            yield frames.encode("he_pk", b"\x01", True)

    for gen, most in ((silent, 5.0), (trickle, 7.0)):
        t0 = time.monotonic()
        err = _raw(server.address, gen())
        took = time.monotonic() - t0
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
        assert took < most, (gen.__name__, took)
    assert not logspy.tracebacks()
    _healthy(server, x, ref)


def test_many_streams_at_once_and_a_real_job_still_runs(model, x, ref, logspy):
    """20 hostile streams (silent, trickling, endless) at once; a real client meanwhile finishes."""
    srv = Server(model, "127.0.0.1:0", max_slices=8, idle_timeout_s=3.0, max_queue=4).start()
    srv.transport_limits.spec_timeout_s = 2.0
    errors: list[grpc.StatusCode] = []

    def hostile(i: int):
        def gen():
            if i % 3 == 0:
                time.sleep(4)
            yield frames.encode("job", _spec(), False)
            for _ in range(30):
                time.sleep(0.2)
                yield frames.encode("he_pk", bytes(4 << 10 if i % 3 == 1 else 1), True)

        errors.append(_raw(srv.address, gen()).code())

    threads = [threading.Thread(target=hostile, args=(i,)) for i in range(20)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        with Client(srv.address) as c:
            assert np.array_equal(c.segment_slices(x), ref)
        for t in threads:
            t.join(timeout=60)
        assert len(errors) == 20
        assert set(errors) <= {
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.INVALID_ARGUMENT,
        }, errors
        assert not logspy.tracebacks()
        _healthy(srv, x, ref)
    finally:
        srv.stop(0)


def test_four_clients_at_once_on_default_settings_all_finish(model, x, ref):
    srv = Server(model, "127.0.0.1:0").start()  # default limits: 2 running clients, a queue behind them
    try:
        got: dict[int, np.ndarray] = {}
        places: dict[int, list[str]] = {i: [] for i in range(4)}

        def one(i: int) -> None:
            with Client(srv.address, status=places[i].append) as c:
                got[i] = c.segment_slices(np.concatenate([x] * 3))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        want = np.concatenate([ref] * 3)
        assert sorted(got) == [0, 1, 2, 3]
        assert all(np.array_equal(v, want) for v in got.values())
        assert any("queue" in p for ps in places.values() for p in ps)  # someone waited and was told so
    finally:
        srv.stop(0)


def test_full_queue_is_refused_at_once_and_the_client_retries(model, x, ref, monkeypatch):
    """max_sessions 1 and no queue: a second client is refused with a retry hint, backs off and
    finishes after the first."""
    from bunet.service import admission

    monkeypatch.setattr(admission, "RETRY_AFTER_S", 0.3)
    srv = Server(model, "127.0.0.1:0", max_sessions=1, max_queue=0).start()
    try:
        said: list[str] = []
        out: list[np.ndarray] = []
        first = threading.Thread(
            target=lambda: out.append(Client(srv.address, lanes=1).segment_slices(np.concatenate([x] * 40)))
        )
        first.start()
        time.sleep(0.5)
        with Client(srv.address, lanes=1, status=said.append) as c:
            assert np.array_equal(c.segment_slices(x), ref)
        first.join(timeout=120)
        assert any("retrying" in s for s in said)
        assert np.array_equal(out[0], np.concatenate([ref] * 40))
    finally:
        srv.stop(0)


def test_job_over_the_budget_is_refused_at_once(model, x):
    srv = Server(model, "127.0.0.1:0", max_slices=8).start()
    try:
        srv.admission.reserved = srv.admission.budget - (1 << 20)  # leave 1 MiB per job
        with Client(srv.address) as c:
            t0 = time.monotonic()
            with pytest.raises(ClientError, match="send fewer slices"):
                c.segment_slices(x)
            assert time.monotonic() - t0 < 10
    finally:
        srv.stop(0)


def test_job_too_big_at_the_default_window_runs_with_a_smaller_one(model, x, ref, monkeypatch):
    """A server whose per-job memory covers a job with GC_WINDOW_SMALL chunks in flight but not with
    GC_WINDOW refuses it at once; the client sends it again with the smaller window and gets the
    reference labels. (The test model's jobs are too small to fill either window, so the server's
    estimate is raised past its budget for the deeper window.)"""
    from bunet.protocol import session

    srv = Server(model, "127.0.0.1:0").start()
    try:
        real = srv.protocol.job_memory
        windows: list[int] = []

        def job_memory(spec: JobSpec) -> int:
            windows.append(spec.gc_window)
            over = spec.gc_window > session.GC_WINDOW_SMALL
            return real(spec) + (srv.admission.job_budget if over else 0)

        monkeypatch.setattr(srv.protocol, "job_memory", job_memory)
        said: list[str] = []
        with Client(srv.address, lanes=1, status=said.append) as c:
            assert c.protocol.gc_window == session.GC_WINDOW > session.GC_WINDOW_SMALL
            assert np.array_equal(c.segment_slices(x), ref)
        assert windows == [session.GC_WINDOW, session.GC_WINDOW_SMALL]
        assert any("fewer messages in flight" in s for s in said)
    finally:
        srv.stop(0)


def test_admission_queue_order_and_client_grouping():
    adm = Admission(budget=1000, reserved=100, max_running=1, max_queue=2, max_streams_per_client=2)
    order: list[str] = []
    with adm.admit("a", 300):  # noqa: SIM117 - two streams, one after the other
        with adm.admit("a", 300):  # a's second stream joins its job
            assert adm.snapshot()["running_clients"] == 1

            def wait(name: str) -> None:
                with adm.admit(name, 100, notify=lambda p, n=name: order.append(f"{n}:{p}")):
                    order.append(name)

            tb, tc = threading.Thread(target=wait, args=("b",)), threading.Thread(target=wait, args=("c",))
            tb.start()
            time.sleep(0.2)
            tc.start()
            time.sleep(0.2)
            from bunet.protocol.channel import Refused

            with pytest.raises(Refused) as e, adm.admit("d", 100):  # queue of 2 is full
                pass
            assert e.value.retry_after_s
            with pytest.raises(Refused) as e, adm.admit("e", 901):  # never fits
                pass
            assert e.value.retry_after_s is None
    tb.join(5)
    tc.join(5)
    assert order.index("b") < order.index("c") and "b:1" in order and "c:2" in order
    assert adm.snapshot() == {
        "running_clients": 0,
        "running_streams": 0,
        "queued": 0,
        "planned_bytes": 100,
        "budget_bytes": 1000,
    }


def test_send_times_out_when_the_peer_stops_reading():
    chan = StreamChannel(send_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="read nothing"):
        for _ in range(100):  # the queue holds 32 frames; nobody drains it
            chan.send("x", bytes(1 << 20))
    assert time.monotonic() - t0 < 3


# ------------------------------------------------------------------------------------------------
# the server in its own process: kill -9 of a client, SIGSTOP of the server, memory within budget


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    p = tmp_path_factory.mktemp("abuse") / "m.bunet"
    model.save(p)
    return p


def test_killed_client_frees_its_session_and_memory_stays_in_budget(model_file, x, ref):
    srv = ServerProcess("--model", str(model_file), "--memory-budget", "3G", "--idle-timeout", "5")
    try:
        code = (
            "import sys, numpy as np; from bunet.client import Client; "
            f"c = Client('{srv.address}', lanes=1); "
            f"c.segment_slices(np.random.default_rng(0).random((200, 1, {SIZE}, {SIZE})).astype(np.float32))"
        )
        victim = subprocess.Popen(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL
        )
        time.sleep(6)  # in the middle of its job
        victim.kill()
        victim.wait()
        # the next client is served at once (its session is not held up by the dead one's)
        t0 = time.monotonic()
        with Client(srv.address) as c:
            assert np.array_equal(c.segment_slices(x), ref)
        assert time.monotonic() - t0 < 30
        assert vm(srv.proc.pid, "VmHWM") <= 3 << 30
    finally:
        err = srv.stop()
    assert "Traceback" not in err, err


def test_stalled_server_is_reported_within_30_s(model_file, x):
    srv = ServerProcess("--model", str(model_file))
    try:
        box: list[BaseException] = []

        def job() -> None:
            try:
                with Client(srv.address, lanes=1) as c:
                    c.segment_slices(np.concatenate([x] * 100))
            except ClientError as e:
                box.append(e)

        t = threading.Thread(target=job)
        t.start()
        time.sleep(3)
        srv.proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        t.join(timeout=60)
        took = time.monotonic() - t0
        assert box and took < 30, (took, box)
        assert "server" in str(box[0])
    finally:
        srv.stop()


def test_two_servers_one_killed_mid_scan(model, x, ref):
    """The client spreads a scan's jobs over two servers; one dies during the scan; its jobs move
    to the other and the mask is complete and equal to the reference."""
    a = Server(model, "127.0.0.1:0").start()
    b = Server(model, "127.0.0.1:0").start()
    said: list[str] = []
    try:
        xs = np.concatenate([x] * 60)
        with Client(f"{a.address},{b.address}", lanes=2, max_batch=2, status=said.append) as c:
            killer = threading.Timer(1.0, lambda: a.stop(0))
            killer.start()
            got = c.segment_slices(xs)
            killer.join()
        assert np.array_equal(got, np.concatenate([ref] * 60))
        assert any("moving the job" in s for s in said), said
    finally:
        a.stop(0)
        b.stop(0)


def test_servers_of_different_models_are_refused(model):
    other = seed_unet_model(in_channels=1, base=2, depth=1, input_size=SIZE, seed=4)
    with Server(model) as a, Server(other) as b, pytest.raises(ClientError, match="another model"):
        Client(f"{a.address},{b.address}")


def test_a_second_server_on_a_port_in_use_fails_to_start(model):
    """No SO_REUSEPORT: a server started on a port another one holds is an error at start-up, not a
    silent share of the first one's connections."""
    with Server(model, "127.0.0.1:0") as a:
        with pytest.raises(OSError, match="cannot listen"):
            Server(model, a.address)
        with Client(a.address) as c:  # the first still serves
            assert json.loads(c.servers[0].describe().description_json)["model"]
