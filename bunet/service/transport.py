"""gRPC transport: adapts a bidirectional stream of frames to the protocol's Channel, and the
server/client plumbing (TLS, bearer-token auth, limits, health, graceful shutdown).

This module knows about frames, streams and credentials; it knows nothing of U-Nets. The
server side runs a *job handler* (any callable taking a Channel) once per stream.
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..protocol.channel import Channel, ChannelClosed, ProtocolError
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
ZERO_COPY_BYTES = 64 << 10  # single-frame messages from this size are handed on as views of the frame
OUTQ_BYTES = 64 << 20  # frames queued for sending per stream (back-pressure, bounded memory)
SERVICE_NAME = "bunet.v1.Segmentation"
_END = object()


class StreamChannel(Channel):
    """A Channel over two frame queues: ``outq`` feeds the gRPC request/response iterator and
    ``inq`` is filled from the peer's iterator by a reader thread. Frames travel as raw bytes in
    the ``Frame`` encoding of protos/bunet.proto (:mod:`bunet.service.frames`)."""

    def __init__(self, timeout: float | None = None) -> None:
        super().__init__()
        self.outq: queue.Queue = queue.Queue(maxsize=max(2, OUTQ_BYTES // FRAME_BYTES))  # back-pressure
        self.inq: queue.Queue = queue.Queue()
        self.timeout = timeout
        self.peer_error: BaseException | None = None

    def _send(self, tag: str, payload: bytes | bytearray | memoryview) -> None:
        view = memoryview(payload)
        n = len(view)
        off = 0
        while True:  # at least one frame, also for an empty message
            end = min(off + FRAME_BYTES, n)
            self.outq.put(frames.encode(tag, view[off:end], end < n))
            off = end
            if off >= n:
                return

    def _next(self) -> tuple[str, memoryview, bool]:
        try:
            item = self.inq.get(timeout=self.timeout)
        except queue.Empty:
            raise ProtocolError(f"peer idle for more than {self.timeout:g} s") from None
        if item is _END:
            self.inq.put(_END)  # stay closed for later calls
            if self.peer_error is not None:
                raise ChannelClosed(_describe_rpc_error(self.peer_error))
            raise ChannelClosed("peer closed the stream")
        try:
            return frames.decode(item)
        except frames.FrameError as e:
            raise ProtocolError(str(e)) from None

    def _recv(self) -> tuple[str, bytes | memoryview]:
        tag, data, more = self._next()
        if not more:  # one frame: large payloads as a view into it (no copy), small ones as bytes
            return tag, data if len(data) >= ZERO_COPY_BYTES else bytes(data)
        parts = [data]
        size = len(data)
        while True:
            t, data, more = self._next()
            if t != tag:
                raise ProtocolError("interleaved frames from peer")
            parts.append(data)
            size += len(data)
            if self.max_message is not None and size > self.max_message:
                raise ProtocolError(f"message {tag!r} is larger than this job allows ({self.max_message} bytes)")
            if not more:
                return tag, b"".join(parts)  # the one copy of the payload on the receiving side

    def feed(self, incoming: Iterator[bytes]) -> None:
        """Reader loop: move the peer's raw frames into ``inq`` (run in a thread)."""
        try:
            for fr in incoming:
                self.inq.put(fr)
        except grpc.RpcError as e:
            self.peer_error = e
        except Exception as e:  # stream torn down
            self.peer_error = e
        finally:
            self.inq.put(_END)

    def outgoing(self) -> Iterator[bytes]:
        while True:
            item = self.outq.get()
            if item is _END:
                return
            yield item

    def close(self) -> None:
        self.outq.put(_END)


def _describe_rpc_error(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.details() or e.code().name}"
    return str(e) or type(e).__name__


# --------------------------------------------------------------------------------------------
# Server


@dataclass
class ServerLimits:
    max_sessions: int = 2
    idle_timeout_s: float = 300.0
    max_message_bytes: int = MAX_MESSAGE_BYTES


JobHandler = Callable[[Channel], None]


class SegmentationServicer(bunet_pb2_grpc.SegmentationServicer):
    def __init__(
        self, describe_json: str, run_job: JobHandler, limits: ServerLimits, token: str | None, max_slices: int
    ) -> None:
        self.describe_json = describe_json
        self.run_job = run_job
        self.limits = limits
        self.token = token
        self.max_slices = max_slices
        self.sessions = threading.BoundedSemaphore(limits.max_sessions)

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
        self._auth(context)
        if not self.sessions.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {self.limits.max_sessions} sessions already running"
            )
        chan = StreamChannel(timeout=self.limits.idle_timeout_s)
        failure: list[tuple[grpc.StatusCode, str]] = []

        def work() -> None:
            try:
                self.run_job(chan)
            except ChannelClosed:
                log.info("session ended by the client")
            except ProtocolError as e:
                failure.append((grpc.StatusCode.FAILED_PRECONDITION, str(e)))
            except Exception:  # a failed session never takes the server down
                log.exception("session failed")  # exception text only; never payloads
                failure.append((grpc.StatusCode.INTERNAL, "internal error in the secure session"))
            finally:
                chan.close()

        reader = threading.Thread(target=chan.feed, args=(request_iterator,), daemon=True)
        worker = threading.Thread(target=work, daemon=True)
        try:
            reader.start()
            worker.start()
            yield from chan.outgoing()
            worker.join()
        finally:
            self.sessions.release()
        if failure:
            context.abort(*failure[0])


# Extra channel/server options. None measured better on loopback (bench/transport.py, 2 MiB
# frames): grpc.http2.max_frame_size up to 16 MiB, grpc.http2.lookahead_bytes 8 MiB with
# grpc.http2.bdp_probe 0, larger grpc.experimental.tcp_*read_chunk_size, and the core experiments
# tcp_rcv_lowat / tcp_frame_size_tuning all stayed within run-to-run noise: gRPC reads sockets into
# 64 KiB slices whatever the options, and the Python layer copies each slice, then joins them.
GRPC_TUNING: list[tuple[str, int]] = []


def _grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
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
        opts = _grpc_options(servicer.limits.max_message_bytes)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=opts)
        # Describe through the generated (de)serialisers; Run's frames as raw bytes (see frames.py)
        handlers = {
            "Describe": grpc.unary_unary_rpc_method_handler(
                servicer.Describe,
                request_deserializer=bunet_pb2.DescribeRequest.FromString,
                response_serializer=bunet_pb2.DescribeReply.SerializeToString,
            ),
            "Run": grpc.stream_stream_rpc_method_handler(servicer.Run),
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
            self.port = self.server.add_secure_port(listen, creds)
        else:
            if client_ca:
                raise ValueError("--client-ca needs TLS (--tls-cert and --tls-key)")
            self.port = self.server.add_insecure_port(listen)
        if not self.port:
            raise OSError(f"cannot listen on {listen}")

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


def open_channel(
    address: str,
    *,
    tls: bool = False,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    opts = _grpc_options(max_message_bytes)
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

    def job(self) -> tuple[StreamChannel, Callable[[], None]]:
        """A new stream as a Channel, and a function that waits for the stream to end."""
        chan = StreamChannel()
        call = self._run(chan.outgoing(), metadata=self.metadata)
        reader = threading.Thread(target=chan.feed, args=(call,), daemon=True)
        reader.start()

        def finish() -> None:
            chan.close()
            reader.join(timeout=30)

        return chan, finish

    def close(self) -> None:
        self.channel.close()
