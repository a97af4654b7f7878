"""End to end over real gRPC on localhost: the secure mask equals the fixed-point reference mask
exactly; TLS and token paths; the client never receives weight material; clear errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from seed_unet import seed_unet_model

from bunet import ring, volume
from bunet.client import Client, ClientError
from bunet.model import reference
from bunet.model.format import Quantization
from bunet.model.plan import compile_plan
from bunet.model.steps import Linear, ReluPool
from bunet.protocol.channel import pipe
from bunet.protocol.session import ClientProtocol, JobSpec, ServerProtocol
from bunet.server import Server


@pytest.fixture(scope="module")
def model():
    # small but complete: max-pool (GC window 4), transposed conv, concat, avg-pool path elsewhere
    return seed_unet_model(
        in_channels=1,
        base=4,
        depth=2,
        input_size=16,
        seed=7,
        quantization=Quantization(24, 8, 8),
        planes=("xy", "yz", "xz"),
    )


@pytest.fixture(scope="module")
def server(model):
    with Server(model, "127.0.0.1:0", max_slices=64) as s:
        yield s


def _scan(tmp_path, shape=(20, 18, 6)):
    rng = np.random.default_rng(5)
    hu = rng.normal(-700, 300, shape).astype(np.int16)
    aff = np.diag([1.2, 1.2, 4.0, 1.0])
    p = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu, aff), str(p))
    return p


def test_secure_equals_fixed_point_reference_in_memory(model):
    """The protocol alone, both halves in threads over an in-memory channel."""
    import threading

    srv = ServerProtocol(model)
    cli = ClientProtocol(json.loads(json.dumps(srv.describe())))
    x = np.random.default_rng(1).random((3, 1, 16, 16)).astype(np.float32)
    x[0] = 0.0  # all-zero slice
    a, b = pipe()
    th = threading.Thread(target=srv.run_job, args=(b,))
    th.start()
    labels, _ = cli.run_job(a, "main", x)
    th.join()
    plan = compile_plan(model.networks["main"], model.quantization)
    assert any(isinstance(s, ReluPool) for s in plan.steps)  # the fused ReLU + max-pool (encoder levels)
    ref = reference.run_plan(plan, x)
    assert labels.shape == (3, 16, 16)
    assert np.array_equal(labels, ref)


@pytest.mark.parametrize("ready,arrival_s", [(True, 0.0), (False, 10.0)])
def test_server_computes_the_he_parts_already_in_together(model, monkeypatch, ready, arrival_s):
    """The server computes the HE parts that have arrived (the channel's ``ready``) with the one it
    waited for, up to MERGE_PARTS (here every slice is a part); a transport that cannot tell gets
    them one by one. It waits for them (up to the layer's ``merge_wait_s``) only while parts come in
    fast. The labels equal the reference either way."""
    import threading

    from bunet.he import server as he_server

    merges: list[int] = []
    waits: list[float] = []
    real = he_server.Apply.steps
    monkeypatch.setattr(he_server.Apply, "steps", lambda self, i, ups: merges.append(len(ups)) or real(self, i, ups))
    srv = ServerProtocol(model)
    cli = ClientProtocol(json.loads(json.dumps(srv.describe())))
    x = np.random.default_rng(3).random((6, 1, 16, 16)).astype(np.float32)
    a, b = pipe()
    b.ready = lambda wait=0.0: waits.append(wait) or ready  # the server's end
    b.arrival_s = arrival_s  # how long its messages take to come in
    th = threading.Thread(target=srv.run_job, args=(b,))
    th.start()
    labels, _ = cli.run_job(a, "main", x)
    th.join()
    plan = compile_plan(model.networks["main"], model.quantization)
    assert np.array_equal(labels, reference.run_plan(plan, x))
    layers = sum(isinstance(s, Linear) for s in plan.steps)
    assert sum(merges) == 6 * layers  # one part per slice and layer
    assert merges == ([he_server.MERGE_PARTS, 2] if ready else [1] * 6) * layers
    assert (max(waits) > 0) == (arrival_s == 0.0) and max(waits) <= he_server.MERGE_WAIT_S


@pytest.mark.parametrize("size,quant", [((12, 20), Quantization(24, 8, 8)), ((8, 4), Quantization(32, 10, 9))])
def test_secure_fused_relu_pool_non_square(size, quant, monkeypatch):
    """Fused ReLU + max-pool on non-square slices (the window layout both ways) and another ring;
    inputs scaled to drive activations to the limits. Every non-linear tensor (both outputs of the
    fused steps included) is reconstructed from the two parties' shares and compared bit for bit."""
    import threading

    from bunet.model.executor import execute
    from bunet.model.steps import Argmax, CircuitStep
    from bunet.protocol import gc_pipeline, session

    seen: dict[str, list[dict[str, np.ndarray]]] = {}

    def spy(plan, backend, height, width, **kw):  # each party's every share tensor, in step order
        t = execute(plan, backend, height, width, keep=True, **kw)
        steps = [s for s in plan.steps if isinstance(s, CircuitStep) and not isinstance(s, Argmax)]
        seen[threading.current_thread().name] = [{o: t[o] for o in s.outs} for s in steps]
        return t

    monkeypatch.setattr(session, "execute", spy)
    monkeypatch.setattr(gc_pipeline, "GC_CHUNK", 64)  # many chunks per step and round
    m = seed_unet_model(in_channels=2, base=2, depth=2, input_size=16, seed=11, quantization=quant)
    srv = ServerProtocol(m)
    cli = ClientProtocol(json.loads(json.dumps(srv.describe())))
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 2, *size)) * np.array([1.0, 300.0])[:, None, None, None]).astype(np.float32)
    a, b = pipe()
    th = threading.Thread(target=srv.run_job, args=(b,), name="server")
    th.start()
    labels, _ = cli.run_job(a, "main", x)
    th.join()
    plan = compile_plan(m.networks["main"], m.quantization)
    assert sum(isinstance(s, ReluPool) for s in plan.steps) == 2
    ref = reference.run_plan(plan, x, keep=True)
    assert np.array_equal(labels, ref[plan.output])
    srv_sh, cli_sh = seen.pop("server"), seen.popitem()[1]
    assert len(srv_sh) == len(cli_sh) == sum(isinstance(s, CircuitStep) for s in plan.steps) - 1
    for ss, cs in zip(srv_sh, cli_sh, strict=True):
        for name in ss:
            np.testing.assert_array_equal(ring.add(ss[name], cs[name], quant.ring_bits), ref[name], err_msg=name)


@pytest.mark.parametrize("chunk,window", [(7, 1), (64, 3), (1000, 4)])
def test_pipelined_gc_chunks_in_memory(model, monkeypatch, chunk, window):
    """Many small GC chunks with several in flight (garbled and evaluated on thread pools, answered
    in order): the labels still equal the reference, and the server ends the job cleanly. The window
    is the client's (announced in the job spec); the server's own default differs and is not used."""
    import threading

    from bunet.protocol import gc_pipeline, session

    monkeypatch.setattr(gc_pipeline, "GC_CHUNK", chunk)
    srv = ServerProtocol(model)
    cli = ClientProtocol(json.loads(json.dumps(srv.describe())))
    assert window != session.GC_WINDOW
    cli.gc_window = window
    x = np.random.default_rng(chunk).random((2, 1, 16, 16)).astype(np.float32)
    a, b = pipe()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            srv.run_job(b)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    th = threading.Thread(target=serve)
    th.start()
    labels, _ = cli.run_job(a, "main", x)
    th.join(timeout=60)
    assert not th.is_alive() and not errors
    ref = reference.run_plan(compile_plan(model.networks["main"], model.quantization), x)
    assert np.array_equal(labels, ref)


@pytest.mark.parametrize("offered", [("softspoken",), ("silent",)])
def test_ot_agreed_in_job_spec(model, offered):
    """The client takes a correlated-OT backend the server offers (its describe) and announces it in
    the job spec; the labels equal the reference. A client that asks for one the server does not
    offer gets a clear error before any cryptographic work."""
    import threading

    from bunet.protocol.channel import ProtocolError

    srv = ServerProtocol(model)
    srv.gc_ots = offered
    cli = ClientProtocol(json.loads(json.dumps(srv.describe())))
    assert cli.gc_ot == offered[0]
    x = np.random.default_rng(5).random((1, 1, 16, 16)).astype(np.float32)
    a, b = pipe()
    th = threading.Thread(target=srv.run_job, args=(b,))
    th.start()
    labels, _ = cli.run_job(a, "main", x)
    th.join(timeout=60)
    assert np.array_equal(labels, reference.run_plan(compile_plan(model.networks["main"], model.quantization), x))
    cli.gc_ot = "silent" if offered == ("softspoken",) else "softspoken"
    a, b = pipe()
    a.send("job", JobSpec("main", 1, 16, 16, gc_ot=cli.gc_ot).to_bytes())
    with pytest.raises(ProtocolError, match=f"this server offers {offered[0]}"):
        srv.run_job(b)


def test_job_spec_window_checked(model):
    """The server refuses a job whose garbled-circuit window is out of range or missing (before any
    cryptographic work), with a clear error."""
    from bunet.protocol.channel import ProtocolError
    from bunet.protocol.session import MAX_GC_WINDOW, PROTOCOL_VERSION, JobSpec

    srv = ServerProtocol(model)
    for raw, match in (
        (JobSpec("main", 1, 16, 16, 0).to_bytes(), "window 0 is outside"),
        (JobSpec("main", 1, 16, 16, MAX_GC_WINDOW + 1).to_bytes(), "outside"),
        (
            json.dumps(
                {"network": "main", "slices": 1, "height": 16, "width": 16, "protocol": PROTOCOL_VERSION}
            ).encode(),
            "malformed job request",
        ),
        (JobSpec("main", 1, 16, 16, protocol=PROTOCOL_VERSION - 1).to_bytes(), "protocol version"),
    ):
        a, b = pipe()
        a.send("job", raw)
        with pytest.raises(ProtocolError, match=match):
            srv.run_job(b)


def test_job_size_within_the_flooding_bound(model, server, monkeypatch):
    """A job may hold only as many slices as flooding's per-job bound covers (2^20 returned
    ciphertexts): the server refuses one slice more, and the client splits a scan below it."""
    from bunet.he import params
    from bunet.protocol.channel import ProtocolError
    from bunet.protocol.session import JobSpec, Limits, max_job_slices, returned_ciphertexts

    srv = ServerProtocol(model)
    plan, n = srv.plans["main"], srv.he_params.poly_degree
    per_slice = returned_ciphertexts(plan, n, 16, 16)
    assert returned_ciphertexts(plan, n, 16, 16, slices=3) == 3 * per_slice
    cap = max_job_slices(plan, n, 16, 16)
    assert cap == params.FLOOD_JOB_CIPHERTEXTS // per_slice
    limits = Limits(max_slices=1 << 30)
    srv.check_spec(JobSpec("main", cap, 16, 16), limits)
    with pytest.raises(ProtocolError, match="flooding bound"):
        srv.check_spec(JobSpec("main", cap + 1, 16, 16), limits)

    from bunet.protocol import session

    monkeypatch.setattr(session, "FLOOD_JOB_CIPHERTEXTS", 2 * per_slice)  # the bound as if 2 slices
    with Client(address=server.address, max_batch=16) as c:
        assert [sl.stop - sl.start for sl in c._batches(5, "main", (16, 16))] == [2, 2, 1]


@pytest.mark.parametrize("ot", [None, "silent", "softspoken"])
def test_ot_choice_over_grpc(server, model, ot):
    """A client of a server on this machine uses SoftSpoken unless told otherwise (bytes are free on
    loopback, the cores are shared); either backend gives the reference mask over gRPC."""
    with Client(server.address, ot=ot) as c:
        assert c.protocol.gc_ot == (ot or "softspoken")
        x = np.random.default_rng(4).random((2, 1, 16, 16)).astype(np.float32)
        labels = c.segment_slices(x)
    ref = reference.run_plan(compile_plan(model.networks["main"], model.quantization), x)
    assert np.array_equal(labels, ref)


def test_filter_cache_bounds_the_prepared_kernels(model):
    """With no room for prepared kernels the server rebuilds them in every call: same mask; by
    default the cache is three quarters of the memory budget and holds them all."""
    x = np.random.default_rng(6).random((1, 1, 16, 16)).astype(np.float32)
    ref = reference.run_plan(compile_plan(model.networks["main"], model.quantization), x)
    with Server(model, "127.0.0.1:0", filter_cache_bytes=0) as srv, Client(srv.address) as c:
        assert all(layer.filters is None for layer in srv.protocol._layers.values() if layer.strategy == "filters")
        assert np.array_equal(c.segment_slices(x), ref)
    with Server(model, "127.0.0.1:0", memory_budget=8 << 30) as srv:
        assert srv.protocol.he.cache_left <= 6 << 30
        assert all(layer.filters is not None for layer in srv.protocol._layers.values() if layer.strategy == "filters")


def test_remote_server_defaults_to_silent_ot(server, monkeypatch):
    """Over a network (any non-loopback address) the client's default is silent OT."""
    from bunet import client as client_mod

    assert client_mod._on_this_machine(["127.0.0.1:1", "localhost:2"])
    assert not client_mod._on_this_machine(["127.0.0.1:1", "192.0.2.7:2"])  # TEST-NET-1: not this host
    monkeypatch.setattr(client_mod, "_on_this_machine", lambda addresses: False)  # as if the server were remote
    with Client(server.address) as c:
        assert c.protocol.gc_ot == "silent"


def test_segment_over_grpc_matches_reference_per_plane(server, model, tmp_path):
    path = _scan(tmp_path)
    with Client(server.address) as c:
        res = c.segment(path, ["xy", "yz", "xz"])
    scan = volume.load_scan(path)
    pp = model.preprocessing
    plan = compile_plan(model.networks["main"], model.quantization)
    for p in ("xy", "yz", "xz"):
        st = volume.to_slices(scan.hu, p)
        x = volume.resize_stack(pp.apply(st), pp.input_size)[:, None].astype(np.float32)
        ref = reference.run_plan(plan, x).astype(np.uint8)
        want = volume.from_slices(volume.resize_stack(ref, st.shape[1:], labels=True), p)
        assert np.array_equal(res.per_plane[p], want), p
    assert np.array_equal(res.labels, volume.fuse(res.per_plane))
    assert res.summary.bytes_up > 0 and res.summary.bytes_down > 0
    out = tmp_path / "mask.nii.gz"
    volume.write_mask(res.labels, res.scan, out)
    assert np.allclose(nib.load(str(out)).affine, nib.load(str(path)).affine)


def test_client_never_receives_weight_material(server, model):
    """Scan every byte the client receives (Describe and a whole job) for the weights' encodings."""
    from bunet.protocol import channel as chmod

    received: list[bytes] = []
    orig = chmod.Channel.recv

    def spy(self, tag, limit=None):
        data = orig(self, tag, limit)
        received.append(data)
        return data

    with Client(server.address) as c:
        desc = json.dumps(c.protocol.model.header())
        chmod.Channel.recv = spy
        try:
            c.segment_slices(np.random.default_rng(2).random((2, 1, 16, 16)).astype(np.float32))
        finally:
            chmod.Channel.recv = orig
    blob = b"".join(received) + desc.encode()
    assert 'weight"' not in desc and len(received) > 5
    plan = compile_plan(model.networks["main"], model.quantization)
    for s in plan.steps:
        if not isinstance(s, Linear):
            continue
        w = s.weight.reshape(-1)
        for pattern in (
            model.networks["main"].weights[f"{s.out}.weight"].reshape(-1)[:4].tobytes(),
            w[:3].astype("<i8").tobytes(),
            (w[:3] % (1 << 24)).astype("<u4").tobytes(),
        ):
            assert pattern not in blob, s.out


def _self_signed(tmp_path):
    from devcert import self_signed

    return self_signed(tmp_path)


def test_tls_and_token(model, tmp_path):
    cert, key = _self_signed(tmp_path)
    with Server(model, "localhost:0", tls_cert=cert, tls_key=key, token="s3cret") as srv:
        with Client(srv.address, ca=cert, token="s3cret") as c:
            x = np.random.default_rng(3).random((1, 1, 16, 16)).astype(np.float32)
            ref = reference.run_plan(compile_plan(model.networks["main"], model.quantization), x)
            assert np.array_equal(c.segment_slices(x), ref)
        with pytest.raises(ClientError, match="token"):
            Client(srv.address, ca=cert, token="wrong")
        with pytest.raises(ClientError, match="token"):
            Client(srv.address, ca=cert)
        with pytest.raises(ClientError, match="reach|TLS"):
            Client(srv.address, token="s3cret", insecure=True)  # plaintext client against a TLS server


def test_error_cases(server, tmp_path):
    with pytest.raises(ClientError, match="reach"):
        Client("127.0.0.1:1")
    with Client(server.address) as c:
        with pytest.raises(ClientError, match="not found"):
            c.segment(tmp_path / "missing.nii.gz")
        with pytest.raises(ClientError, match="plane"):
            c.segment(_scan(tmp_path), ["qq"])


def test_server_limits_and_survival(model, tmp_path):
    with Server(model, "127.0.0.1:0", max_slices=2) as srv, Client(srv.address, max_batch=8, lanes=1) as c:
        c.max_batch = 8  # ask for more than the server allows
        with pytest.raises(ClientError, match="limit"):
            c.segment_slices(np.zeros((5, 1, 16, 16), dtype=np.float32))
        # the server is still up and serves the next job
        x = np.random.default_rng(4).random((2, 1, 16, 16)).astype(np.float32)
        ref = reference.run_plan(compile_plan(model.networks["main"], model.quantization), x)
        c.max_batch = 2
        assert np.array_equal(c.segment_slices(x), ref)


def test_endless_message_is_refused_and_server_survives(server, model):
    """A client that never ends a message gets an error once it passes the job's largest legitimate
    message; the server does not buffer beyond that and serves the next job."""
    import grpc

    from bunet.protocol.session import JobSpec
    from bunet.service import frames
    from bunet.service.transport import StubClient, open_channel

    chunk = bytes(1 << 20)

    def hostile():
        yield frames.encode("job", JobSpec("main", 1, 16, 16).to_bytes(), False)
        for _ in range(64):  # 64 MiB of one never-ending "he_pk" message
            yield frames.encode("he_pk", chunk, True)

    stub = StubClient(open_channel(server.address), server.address)
    try:
        with pytest.raises(grpc.RpcError) as e:
            list(stub._run(hostile()))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "larger than this job allows" in e.value.details()
    finally:
        stub.close()
    x = np.random.default_rng(9).random((1, 1, 16, 16)).astype(np.float32)
    with Client(server.address) as c:
        ref = reference.run_plan(compile_plan(model.networks["main"], model.quantization), x)
        assert np.array_equal(c.segment_slices(x), ref)


def test_plane_not_served(tmp_path):
    m = seed_unet_model(in_channels=1, base=2, depth=1, input_size=8, planes=("xy",))
    with Server(m) as srv, Client(srv.address) as c, pytest.raises(ClientError, match="does not serve plane yz"):
        c.segment(_scan(tmp_path), ["yz"])


def test_server_he_without_client_key_refuses_to_answer(model):
    """The model-wide HE object holds public parameters only; answering needs a session's key."""
    srv = ServerProtocol(model)
    step = next(s for s in srv.plans["main"].steps if isinstance(s, Linear))
    layer = srv._layer("main", step, srv.plans["main"].shapes(16, 16)[step.inputs[0]])
    with pytest.raises(ValueError, match="public key"):
        srv.he.apply(layer, b"", np.zeros((1, 1, 16, 16), dtype=np.uint64))
    assert not any("secret" in k.lower() for k in vars(srv.he))


def test_stream_channel_frame_boundaries_over_grpc(monkeypatch):
    """Messages of every size around the frame size, both ways at once, arrive whole and in order;
    a message past the receiver's cap ends the job with a clear error."""
    import threading

    from bunet.protocol.channel import ProtocolError
    from bunet.service import transport

    monkeypatch.setattr(transport, "FRAME_BYTES", 1000)  # many frames per message, quickly
    sizes = [0, 1, 999, 1000, 1001, 2000, 2500, 70_001]
    rng = np.random.default_rng(0)
    msgs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    got_up: list[bytes] = []
    errors: list[BaseException] = []

    def echo(chan, session):  # answers each message reversed while the client keeps sending
        chan.max_message = None  # past the transport's first-message cap
        try:
            for i in range(len(msgs)):
                m = chan.recv(f"up{i}")
                got_up.append(bytes(m))
                chan.send(f"down{i}", bytes(m)[::-1])
            chan.max_message = 5000
            chan.recv("big")
        except ProtocolError as e:
            errors.append(e)
            raise

    servicer = transport.SegmentationServicer("{}", echo, transport.ServerLimits(), None, 1)
    srv = transport.GrpcServer("127.0.0.1:0", servicer).start()
    stub = transport.StubClient(transport.open_channel(f"127.0.0.1:{srv.port}"), "test")
    try:
        chan, finish = stub.job()
        sender = threading.Thread(target=lambda: [chan.send(f"up{i}", m) for i, m in enumerate(msgs)])
        sender.start()
        for i, m in enumerate(msgs):
            assert bytes(chan.recv(f"down{i}")) == m[::-1]
        sender.join()
        chan.send("big", bytes(6000))
        with pytest.raises(ProtocolError, match="larger than this job allows"):
            chan.recv("never")
        finish()
    finally:
        stub.close()
        srv.stop(0)
    assert got_up == msgs
    assert errors and "larger than this job allows" in str(errors[0])


def test_shares_dropped_after_their_last_read() -> None:
    """last_reads: each share is dropped right after the last step that reads it, never before."""
    from bunet.model.executor import last_reads

    m = seed_unet_model(in_channels=1, base=4, depth=3, classes=2, input_size=32, seed=0)
    plan = compile_plan(m.network("xy"), m.quantization)
    drops = last_reads(plan)
    live: set[str] = set()
    for i, step in enumerate(plan.steps):
        assert set(step.inputs) <= live, (i, step.inputs)
        live |= set(step.outs)
        live -= set(drops.get(i, ()))
    read = {n for s in plan.steps for n in s.inputs}
    assert sorted(n for ns in drops.values() for n in ns) == sorted(read)  # each read share dropped once
    assert max(len(ns) for ns in drops.values()) >= 1 and len(live) <= 2  # left at the end: the last outputs


def test_last_messages_arrive_whole_when_the_handler_ends_first(monkeypatch):
    """The handler's last messages are still queued when it returns; a reader slower than the
    handler still gets every frame of every message (closing the stream must not drop frames)."""
    import time

    from bunet.service import transport

    monkeypatch.setattr(transport, "FRAME_BYTES", 1000)
    monkeypatch.setattr(transport, "OUTQ_BYTES", 4000)  # a send queue of 4 frames: full when the handler ends
    msgs = [bytes([i % 256]) * 3000 for i in range(400)]

    def burst(chan, session):
        for i, m in enumerate(msgs):
            chan.send(f"m{i}", m)

    servicer = transport.SegmentationServicer("{}", burst, transport.ServerLimits(), None, 1)
    srv = transport.GrpcServer("127.0.0.1:0", servicer).start()
    stub = transport.StubClient(transport.open_channel(f"127.0.0.1:{srv.port}"), "test")
    try:
        chan, finish = stub.job()
        for i, m in enumerate(msgs):
            if i % 50 == 0:
                time.sleep(0.05)  # slower than the handler
            assert bytes(chan.recv(f"m{i}")) == m, i
        finish()
    finally:
        stub.close()
        srv.stop(0)


def test_he_layers_in_parts_over_grpc(monkeypatch):
    """Slices bigger than one HE tile, in parts of one tile (the client keeps two parts in flight
    over the gRPC stream's bounded queues), with kernels built per call: the reference mask."""
    from bunet.he import layout
    from bunet.he.bfv import plan_for

    plan_for.cache_clear()
    monkeypatch.setattr(layout, "PART_IN_CTS", 1)
    monkeypatch.setattr(layout, "MIN_PART_TILES", 1)
    try:
        m = seed_unet_model(in_channels=1, base=2, depth=1, input_size=100, seed=3)
        x = np.random.default_rng(8).random((1, 1, 100, 100)).astype(np.float32)
        ref = reference.run_plan(compile_plan(m.networks["main"], m.quantization), x)
        with Server(m, "127.0.0.1:0", filter_cache_bytes=0) as srv, Client(srv.address) as c:
            plans = [layer.plan for layer in srv.protocol._layers.values()]
            assert max(p.n_parts for p in plans) >= 2
            assert np.array_equal(c.segment_slices(x), ref)
    finally:
        plan_for.cache_clear()
