"""gRPC transport: adapts a bidirectional stream of frames to the protocol's Channel, and the
server/client plumbing (TLS, bearer-token auth, limits, health, graceful shutdown).

This module knows about frames, streams and credentials; it knows nothing of U-Nets. The
server side runs a *job handler* (any callable taking a Channel) once per stream.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..protocol.channel import Channel, ChannelClosed, DeadlineExceeded, MalformedMessage, ProtocolError, Refused
from . import frames
from .proto import bunet_pb2, bunet_pb2_grpc

log = logging.getLogger("bunet.service")

# 2 MiB per frame: half of gRPC's 4 MiB message default, so a frame and its header always fit.
# Most of the transport's CPU goes to copying every byte (ours: frame encoding, reassembly;
# gRPC's Python layer: one copy sending, two receiving; the kernel's two), which frames cannot
# change; the rest is largely per frame (thread hand-offs and Python in gRPC's layer and ours),
# which larger frames cut. bench/transport.py measures both.
FRAME_BYTES = 2 << 20
MAX_MESSAGE_BYTES = 4 << 20
# What the server accepts in one gRPC message: a frame and its header. Our frames are at most
# FRAME_BYTES; a peer's larger gRPC messages are refused by gRPC before they are buffered whole.
MAX_FRAME_MESSAGE_BYTES = FRAME_BYTES + (4 << 10)
ZERO_COPY_BYTES = 64 << 10  # single-frame messages from this size are handed on as views of the frame
OUTQ_BYTES = 64 << 20  # frames queued for sending per stream (back-pressure, bounded memory)
# frames received ahead of the protocol per stream: then gRPC's flow control holds the peer. 24 MiB
# holds a whole HE part of 128 ciphertexts at N = 8192 (17 MB), which the server merges with the one
# it computes only once it is in whole (ready).
INQ_FRAMES = 12
NOTICE_PREFIX = "~"  # frames whose tag starts with it are transport notices (queue place), not protocol messages
SERVICE_NAME = "bunet.v1.Segmentation"
CLIENT_ID_KEY = "bunet-client-id"  # groups one client's parallel streams into one job (not an identity)
RETRY_AFTER_KEY = "bunet-retry-after-ms"
HEARTBEAT_S = 5.0  # the server's notice to a client while a job runs
STALL_S = 25.0  # a client that hears nothing at all (no frame, no heartbeat) for this long gives up
_END = object()
_POLL_S = 0.5  # how often a blocked queue operation looks whether the stream was aborted


class _FrameQueue(queue.Queue):
    """A queue that remembers when each item was put: ``taken_at`` is the arrival time of the item
    the last ``get`` returned (the reader thread puts frames as they come off the stream)."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._times: collections.deque[float] = collections.deque()
        self.taken_at = 0.0

    def _put(self, item: object) -> None:  # called with the queue's lock held, as _get
        super()._put(item)
        self._times.append(time.monotonic())

    def _get(self) -> object:
        self.taken_at = self._times.popleft()
        return super()._get()


class StreamChannel(Channel):
    """A Channel over two bounded frame queues: ``outq`` feeds the gRPC request/response iterator
    and ``inq`` is filled from the peer's iterator by a reader thread. Frames travel as raw bytes in
    the ``Frame`` encoding of protos/bunet.proto (:mod:`bunet.service.frames`).

    Bounded both ways: a peer that stops reading makes ``send`` fail after ``send_timeout``, and a
    peer that sends faster than the protocol reads is held back by gRPC's flow control once
    ``INQ_FRAMES`` frames wait. ``abort`` (the call was cancelled, the peer vanished) makes every
    blocked or later send and receive fail at once."""

    def __init__(
        self,
        timeout: float | None = None,
        *,
        send_timeout: float | None = None,
        max_message: int | None = None,
        per_frame: bool = False,
    ) -> None:
        super().__init__()
        # per_frame (the client): ``timeout`` bounds the silence between frames, notices included,
        # so a stalled peer is found while a long message may take its time. Otherwise (the server)
        # it bounds a whole message, so a trickle of frames cannot hold a session.
        self.per_frame = per_frame
        self.outq: queue.Queue = queue.Queue(maxsize=max(2, OUTQ_BYTES // FRAME_BYTES))
        self.inq: _FrameQueue = _FrameQueue(maxsize=INQ_FRAMES)
        self.timeout = timeout
        self.send_timeout = send_timeout
        self.max_message = max_message
        self.peer_error: BaseException | None = None
        self._aborted = threading.Event()
        self._abort_reason = ""

    # ---- sending ---------------------------------------------------------------------------------
    def _send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        view = memoryview(payload)
        n = len(view)
        off = 0
        while True:  # at least one frame, also for an empty message
            end = min(off + FRAME_BYTES, n)
            self._put_out(frames.encode(tag, view[off:end], end < n))
            off = end
            if off >= n:
                return

    def _put_out(self, frame: bytes) -> None:
        end = None if self.send_timeout is None else time.monotonic() + self.send_timeout
        while True:
            if self._aborted.is_set():
                raise ChannelClosed(self._abort_reason)
            wait = _POLL_S if end is None else min(_POLL_S, end - time.monotonic())
            if wait <= 0:
                raise DeadlineExceeded(f"the peer read nothing for {self.send_timeout:g} s")
            try:
                self.outq.put(frame, timeout=wait)
                return
            except queue.Full:
                continue

    def notify(self, kind: str, text: str) -> None:
        """A transport notice for the peer (dropped if the send queue is full: notices are advisory)."""
        with contextlib.suppress(queue.Full):
            self.outq.put_nowait(frames.encode(NOTICE_PREFIX + kind, text.encode(), False))

    # ---- receiving -------------------------------------------------------------------------------
    def _next(self, end: float | None) -> tuple[str, memoryview, bool]:
        """The next protocol frame before ``end`` (monotonic; None: no limit); notices go to ``on_notice``."""
        while True:
            wait = None if end is None else end - time.monotonic()
            if wait is not None and wait <= 0:
                self._check_deadline()
                if self.per_frame:
                    raise DeadlineExceeded(f"nothing heard from the peer for {self.timeout:g} s")
                raise DeadlineExceeded(f"no complete message from the peer within {self.timeout:g} s")
            try:
                item = self.inq.get(timeout=_POLL_S if wait is None else min(_POLL_S, wait))
            except queue.Empty:
                if self._aborted.is_set():
                    raise ChannelClosed(self._abort_reason) from None
                continue
            if item is _END:
                _force_put(self.inq, _END)  # stay closed for later calls
                if self._aborted.is_set():
                    raise ChannelClosed(self._abort_reason)
                if self.peer_error is not None:
                    raise ChannelClosed(_describe_rpc_error(self.peer_error))
                raise ChannelClosed("peer closed the stream")
            try:
                tag, data, more = frames.decode(item)
            except frames.FrameError as e:
                raise MalformedMessage(str(e)) from None
            if tag.startswith(NOTICE_PREFIX):
                if self.per_frame:  # the client: a notice (queue place, heartbeat) shows the server alive
                    if self.on_notice is not None:
                        self.on_notice(tag[len(NOTICE_PREFIX) :], bytes(data[:256]).decode("utf-8", "replace"))
                    if self.timeout is not None:
                        end = time.monotonic() + self.timeout
                continue  # the server ignores notices: a client's cannot stretch a timeout
            return tag, data, more

    def ready(self, wait: float = 0.0) -> bool:
        end = time.monotonic() + wait
        with self.inq.not_empty:  # every frame the reader queues wakes this
            while not self._whole_queued():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.inq.not_empty.wait(left)
            return True

    def _whole_queued(self) -> bool:
        """A whole message waits in ``inq``: its last frame is queued (a message of more frames than
        INQ_FRAMES never is); the end of the stream or a frame that does not decode count too (``recv``
        then fails at once). Called with the queue's lock held."""
        for item in self.inq.queue:
            if item is _END:
                return True
            try:
                tag, _, more = frames.decode(item)
            except frames.FrameError:
                return True
            if not more and not tag.startswith(NOTICE_PREFIX):
                return True
        return False

    def _recv(self, cap: int | None) -> tuple[str, bytes | memoryview]:
        # the whole message must arrive within the timeout: a trickle of frames does not extend it
        wait = self._wait_s()
        end = None if wait is None else time.monotonic() + wait
        tag, data, more = self._next(end)
        first = self.inq.taken_at
        self.arrival_s = 0.0
        if self.per_frame:
            end = None
        size = len(data)
        if cap is not None and size > cap:
            raise MalformedMessage(f"message {tag!r} is larger than this job allows ({cap} bytes)")
        if not more:  # one frame: large payloads as a view into it (no copy), small ones as bytes
            return tag, data if len(data) >= ZERO_COPY_BYTES else bytes(data)
        parts = [data]
        while True:
            if self.per_frame and wait is not None:
                end = time.monotonic() + wait
            t, data, more = self._next(end)
            if t != tag:
                raise MalformedMessage("interleaved frames from peer")
            parts.append(data)
            size += len(data)
            if cap is not None and size > cap:
                raise MalformedMessage(f"message {tag!r} is larger than this job allows ({cap} bytes)")
            if not more:
                self.arrival_s = self.inq.taken_at - first
                return tag, b"".join(parts)  # the one copy of the payload on the receiving side

    def feed(self, incoming: Iterator[bytes]) -> None:
        """Reader loop: move the peer's raw frames into ``inq`` (run in a thread). Blocks while
        ``inq`` is full, which stops reading the stream: gRPC's flow control then holds the peer."""
        try:
            for fr in incoming:
                while True:
                    if self._aborted.is_set():
                        return
                    try:
                        self.inq.put(fr, timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue
        except grpc.RpcError as e:
            self.peer_error = e
        except Exception as e:  # stream torn down
            self.peer_error = e
        finally:
            while not self._aborted.is_set():  # after the frames already queued, which the protocol may still read
                try:
                    self.inq.put(_END, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            else:
                _force_put(self.inq, _END)

    def outgoing(self) -> Iterator[bytes]:
        while True:
            item = self.outq.get()
            if item is _END:
                return
            yield item

    def close(self) -> None:
        """End the outgoing stream after every frame already queued (abort() drops them instead);
        a peer that reads nothing for ``send_timeout`` loses them."""
        end = None if self.send_timeout is None else time.monotonic() + self.send_timeout
        while not self._aborted.is_set() and (end is None or time.monotonic() < end):
            try:
                self.outq.put(_END, timeout=_POLL_S)
                return
            except queue.Full:
                continue
        self.abort("the peer stopped reading")

    def abort(self, reason: str) -> None:
        """The stream is gone: every blocked or later send and receive raises ChannelClosed(reason)."""
        if not self._aborted.is_set():
            self._abort_reason = reason
            self._aborted.set()
            _force_put(self.inq, _END)
            _force_put(self.outq, _END)

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()


def _force_put(q: queue.Queue, item: object) -> None:
    """Put without blocking, dropping queued items if the queue is full (used for end markers)."""
    while True:
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                q.get_nowait()


def _describe_rpc_error(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.details() or e.code().name}"
    return str(e) or type(e).__name__


# --------------------------------------------------------------------------------------------
# Server


@dataclass
class ServerLimits:
    """Transport limits. ``idle_timeout_s``: the longest a whole message may take to arrive, and a
    send may wait for the peer to read; ``spec_timeout_s``: for the job request, the first message;
    ``max_streams``: streams open at once (running, queued, or starting), beyond which gRPC
    refuses new ones at once."""

    idle_timeout_s: float = 120.0
    spec_timeout_s: float = 30.0
    first_message_bytes: int = 64 << 10
    max_streams: int = 32


@dataclass(frozen=True)
class Session:
    """Who a job handler is serving: a random id for the log, the client's grouping id, the peer."""

    sid: str
    client: str
    peer: str


JobHandler = Callable[[StreamChannel, Session], None]

# How a job's failure reaches the client: the status code, and whether the server log says more.
_FAILURES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Refused, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MalformedMessage, grpc.StatusCode.INVALID_ARGUMENT),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ProtocolError, grpc.StatusCode.FAILED_PRECONDITION),
)
# PlainEval: a request message in, a reply message out; raises ValueError for a request the
# server refuses (size, shape, limits), Refused when it has no room now. None: the RPC is off.
PlainEvalHandler = Callable[[bunet_pb2.PlainEvalRequest, Session], bunet_pb2.PlainEvalReply]


class SegmentationServicer(bunet_pb2_grpc.SegmentationServicer):
    def __init__(
        self,
        describe_json: str,
        run_job: JobHandler,
        limits: ServerLimits,
        token: str | None,
        max_slices: int,
        plain_eval: PlainEvalHandler | None = None,
    ) -> None:
        self.describe_json = describe_json
        self.run_job = run_job
        self.plain_eval = plain_eval
        self.limits = limits
        self.token = token
        self.max_slices = max_slices

    def _auth(self, context: grpc.ServicerContext) -> None:
        if self.token is None:
            return
        md = dict(context.invocation_metadata())
        got = md.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong access token")

    def Describe(self, request, context):  # noqa: N802 - gRPC naming
        self._auth(context)
        from .. import __version__

        return bunet_pb2.DescribeReply(
            description_json=self.describe_json,
            server_version=__version__,
            max_slices_per_job=self.max_slices,
            max_frame_bytes=FRAME_BYTES,
        )

    def Run(self, request_iterator, context):  # noqa: N802
        """One job on its own stream. The handler runs in a worker thread; this generator feeds its
        frames to gRPC. A cancelled or vanished client aborts the channel at once (the handler's
        next send or receive fails and its memory goes with it)."""
        self._auth(context)
        md = dict(context.invocation_metadata())
        sid = secrets.token_hex(4)
        session = Session(sid, str(md.get(CLIENT_ID_KEY, ""))[:64] or sid, context.peer())
        chan = StreamChannel(
            timeout=self.limits.spec_timeout_s,
            send_timeout=self.limits.idle_timeout_s,
            max_message=self.limits.first_message_bytes,
        )
        failure: list[tuple[grpc.StatusCode, str, float | None]] = []
        context.add_callback(lambda: chan.abort("the client cancelled the job or went away"))

        def work() -> None:
            try:
                self.run_job(chan, session)
            except ChannelClosed as e:  # the client closed or cancelled: nobody may be listening any more
                log.info("session %s ended early: %s", sid, e)
                failure.append((grpc.StatusCode.CANCELLED, f"the job ended early: {e}", None))
            except ProtocolError as e:
                code = next(c for t, c in _FAILURES if isinstance(e, t))
                log.info("session %s refused or failed: %s (%s)", sid, e, code.name)
                failure.append((code, str(e), getattr(e, "retry_after_s", None)))
            except Exception:  # a failed session never takes the server down; a bug: its traceback
                log.exception("session %s failed", sid)  # exception text only; never payloads
                failure.append((grpc.StatusCode.INTERNAL, f"internal error in the secure session {sid}", None))
            finally:
                chan.close()

        reader = threading.Thread(target=chan.feed, args=(request_iterator,), daemon=True, name=f"feed-{sid}")
        worker = threading.Thread(target=work, daemon=True, name=f"job-{sid}")
        done = threading.Event()

        def heartbeat() -> None:  # lets the client tell a busy server from a stalled one
            while not done.wait(HEARTBEAT_S):
                chan.notify("alive", "")

        threading.Thread(target=heartbeat, daemon=True, name=f"alive-{sid}").start()
        reader.start()
        worker.start()
        try:
            yield from chan.outgoing()
            worker.join()
        finally:
            done.set()
        if failure:
            code, text, retry = failure[0]
            if retry is not None:
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(int(retry * 1000))),))
            context.abort(code, text)

    def PlainEval(self, request, context):  # noqa: N802
        self._auth(context)
        if self.plain_eval is None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "plaintext evaluation is off on this server (it is turned on with bunet-server --allow-plain-eval)",
            )
        md = dict(context.invocation_metadata())
        sid = secrets.token_hex(4)
        session = Session(sid, str(md.get(CLIENT_ID_KEY, ""))[:64] or sid, context.peer())
        try:
            return self.plain_eval(request, session)
        except Refused as e:
            if e.retry_after_s is not None:
                context.set_trailing_metadata(((RETRY_AFTER_KEY, str(int(e.retry_after_s * 1000))),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except ValueError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))


# Extra channel/server options. None measured better on loopback (bench/transport.py, 2 MiB
# frames): grpc.http2.max_frame_size up to 16 MiB, grpc.http2.lookahead_bytes 8 MiB with
# grpc.http2.bdp_probe 0, larger grpc.experimental.tcp_*read_chunk_size, and the core experiments
# tcp_rcv_lowat / tcp_frame_size_tuning all stayed within run-to-run noise: gRPC reads sockets into
# 64 KiB slices whatever the options, and the Python layer copies each slice, then joins them.
GRPC_TUNING: list[tuple[str, int]] = []


# Keepalive: the client pings every 10 s and gives up 10 s after an unanswered ping, so a stalled or
# vanished server is reported within about 20 s even in the middle of a long job; the server lets
# it (pings every 5 s at most, no strikes) and pings idle clients itself to find vanished ones.
CLIENT_KEEPALIVE: list[tuple[str, int | str]] = [
    ("grpc.lb_policy_name", "round_robin"),  # DNS names of several servers
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_KEEPALIVE: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def _grpc_options(max_receive_bytes: int, max_send_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", max_send_bytes),
        *GRPC_TUNING,
    ]


class GrpcServer:
    """A running gRPC endpoint for one job handler."""

    def __init__(
        self,
        listen: str,
        servicer: SegmentationServicer,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_ca: str | None = None,
        workers: int = 8,
    ) -> None:
        # no SO_REUSEPORT (gRPC's default): a second server on a port in use must fail to start, not
        # share the port and take half of the first one's connections; and port 0 must not hand out
        # a port another server still holds
        opts = _grpc_options(MAX_FRAME_MESSAGE_BYTES) + SERVER_KEEPALIVE + [("grpc.so_reuseport", 0)]
        # every open stream holds a worker thread; beyond max_streams gRPC refuses new calls at once
        # (RESOURCE_EXHAUSTED) instead of queueing them unseen. Describe and health need a few more.
        streams = servicer.limits.max_streams
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max(workers, streams + 4)),
            options=opts,
            maximum_concurrent_rpcs=streams + 4,
        )
        # Describe through the generated (de)serialisers; Run's frames as raw bytes (see frames.py)
        handlers = {
            "Describe": grpc.unary_unary_rpc_method_handler(
                servicer.Describe,
                request_deserializer=bunet_pb2.DescribeRequest.FromString,
                response_serializer=bunet_pb2.DescribeReply.SerializeToString,
            ),
            "Run": grpc.stream_stream_rpc_method_handler(servicer.Run),
            "PlainEval": grpc.unary_unary_rpc_method_handler(
                servicer.PlainEval,
                request_deserializer=bunet_pb2.PlainEvalRequest.FromString,
                response_serializer=bunet_pb2.PlainEvalReply.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise ValueError("TLS needs both --tls-cert and --tls-key")
            creds = grpc.ssl_server_credentials(
                [(_read(tls_key), _read(tls_cert))],
                root_certificates=_read(client_ca) if client_ca else None,
                require_client_auth=bool(client_ca),
            )
        elif client_ca:
            raise ValueError("--client-ca needs TLS (--tls-cert and --tls-key)")
        try:  # gRPC raises RuntimeError on a failed bind (port in use, address not ours), or returns 0
            self.port = (
                self.server.add_secure_port(listen, creds) if tls_cert else self.server.add_insecure_port(listen)
            )
        except RuntimeError:
            self.port = 0
        if not self.port:
            self.server.stop(0)
            raise OSError(f"cannot listen on {listen}: the address is in use or not this machine's")

    def start(self) -> GrpcServer:
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float | None = 5.0) -> None:
        """Graceful: stop taking new calls, let running sessions finish for ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def _read(path: str | None) -> bytes:
    try:
        return Path(path).read_bytes()  # type: ignore[arg-type]
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None


# --------------------------------------------------------------------------------------------
# Client


class TransportError(RuntimeError):
    """Cannot reach, authenticate to or talk to the server (one-line message)."""


class NotAllowed(TransportError):
    """The server refuses this call by its configuration (PERMISSION_DENIED)."""


def open_channel(
    address: str,
    *,
    tls: bool = False,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    opts = _grpc_options(max_message_bytes) + CLIENT_KEEPALIVE
    if (cert or key) and not (cert and key):
        raise ValueError("mutual TLS needs both a client certificate (--cert) and its key (--key)")
    if tls or ca or cert:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(ca) if ca else None,
            private_key=_read(key) if key else None,
            certificate_chain=_read(cert) if cert else None,
        )
        return grpc.secure_channel(address, creds, options=opts)
    return grpc.insecure_channel(address, options=opts)


def rpc_error_message(e: grpc.RpcError, address: str) -> str:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        low = (details or "").lower()
        if "ssl" in low or "handshake" in low or "certificate" in low or "tls" in low:
            return f"TLS handshake with {address} failed ({details})"
        return f"cannot reach the server at {address} ({details})"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"the server at {address} refused the access token"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server at {address} did not answer in time"
    name = code.name if code is not None else "error"
    return f"server error ({name}): {details}"


class StubClient:
    """Client end: Describe, and jobs as Channels over bidirectional streams."""

    def __init__(
        self, channel: grpc.Channel, address: str, token: str | None = None, connect_timeout: float = 10.0
    ) -> None:
        self.channel = channel
        self.address = address
        self.stub = bunet_pb2_grpc.SegmentationStub(channel)
        self._run = channel.stream_stream(f"/{SERVICE_NAME}/Run")  # raw frames (see frames.py)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.connect_timeout = connect_timeout

    def describe(self) -> bunet_pb2.DescribeReply:
        try:
            return self.stub.Describe(
                bunet_pb2.DescribeRequest(), metadata=self.metadata, timeout=self.connect_timeout, wait_for_ready=False
            )
        except grpc.RpcError as e:
            raise TransportError(rpc_error_message(e, self.address)) from None

    def plain_eval(self, request: bunet_pb2.PlainEvalRequest, timeout: float = 600.0) -> bunet_pb2.PlainEvalReply:
        try:
            return self.stub.PlainEval(request, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as e:
            err = NotAllowed if e.code() == grpc.StatusCode.PERMISSION_DENIED else TransportError
            raise err(rpc_error_message(e, self.address)) from None

    def job(
        self, client_id: str = "", deadline_s: float | None = None, on_notice: Callable[[str, str], None] | None = None
    ) -> tuple[StreamChannel, Callable[[], None]]:
        """A new stream as a Channel, and a function that ends it. ``client_id`` groups this
        client's parallel streams into one job at the server; ``deadline_s`` bounds the whole call;
        ``on_notice(kind, text)`` gets the server's transport notices (its place in the queue)."""
        chan = StreamChannel(STALL_S, per_frame=True)
        chan.on_notice = on_notice
        md = [*self.metadata, (CLIENT_ID_KEY, client_id)] if client_id else self.metadata
        call = self._run(chan.outgoing(), metadata=md, timeout=deadline_s)
        reader = threading.Thread(target=chan.feed, args=(call,), daemon=True)
        reader.start()

        def finish() -> None:
            chan.close()
            if reader.is_alive() and chan.peer_error is None:
                call.cancel()  # a job that failed on this side: end the stream rather than wait on it
            reader.join(timeout=30)

        return chan, finish

    def close(self) -> None:
        self.channel.close()


def job_failure(chan: StreamChannel) -> tuple[grpc.StatusCode | None, float | None]:
    """How the server ended a failed job's stream: its status code, and its retry hint in seconds
    (None: do not retry)."""
    e = chan.peer_error
    if not isinstance(e, grpc.RpcError) or not hasattr(e, "code"):
        return None, None
    retry = None
    for key, value in e.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            with contextlib.suppress(ValueError):
                retry = int(value) / 1000
    code = e.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "concurrent rpc limit" in (e.details() or "").lower():
        retry = retry or 5.0  # gRPC's own refusal when every stream slot is taken: busy, not too big
    return code, retry
