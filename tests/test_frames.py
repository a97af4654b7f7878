"""The hand-made Frame codec must be the protobuf encoding of protos/bunet.proto's Frame."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bunet.service import frames
from bunet.service.proto import bunet_pb2

tags = st.text(max_size=40)
payloads = st.binary(max_size=3000)


@settings(max_examples=300, deadline=None)
@given(tags, payloads, st.booleans())
def test_encode_is_the_protobuf_encoding(tag, data, more):
    assert frames.encode(tag, data, more) == bunet_pb2.Frame(tag=tag, data=data, more=more).SerializeToString()


@settings(max_examples=300, deadline=None)
@given(tags, payloads, st.booleans())
def test_decode_reads_protobuf_frames(tag, data, more):
    t, d, m = frames.decode(bunet_pb2.Frame(tag=tag, data=data, more=more).SerializeToString())
    assert (t, bytes(d), m) == (tag, data, more)


def test_decode_field_order_repeats_and_unknown_fields():
    body = (
        b"\x18\x01"  # more = true, first
        + b"\x12\x03abc"  # data
        + b"\x0a\x02gc"  # tag
        + b"\x20\x05"
        + b"\x2a\x01z"  # unknown varint field 4, unknown bytes field 5
        + b"\x31"
        + bytes(8)
        + b"\x3d"
        + bytes(4)  # unknown fixed64 / fixed32
        + b"\x12\x02xy"
    )  # data again: last one wins
    ref = bunet_pb2.Frame.FromString(body)
    t, d, m = frames.decode(body)
    assert (t, bytes(d), m) == (ref.tag, ref.data, ref.more) == ("gc", b"xy", True)


def test_large_payload_is_a_view_not_a_copy():
    data = bytes(range(256)) * 8192  # 2 MiB: a multi-byte length varint
    enc = frames.encode("he:x", data, True)
    assert bunet_pb2.Frame.FromString(enc).data == data
    t, d, m = frames.decode(enc)
    assert t == "he:x" and m and d.obj is not None and bytes(d) == data


@pytest.mark.parametrize(
    "bad",
    [
        b"\x0a\x05ab",  # tag shorter than its length
        b"\x12\x80",  # truncated varint
        b"\x12" + b"\xff" * 11,  # overlong varint
        b"\x0b",  # wire type 3 (groups) unsupported
        b"\x0a\x02\xff\xfe",  # tag not UTF-8
        b"\x31\x00",  # truncated fixed64
        b"\x0a" + frames._varint(300) + b"a" * 300,  # tag too long
    ],
)
def test_malformed_frames_are_rejected(bad):
    with pytest.raises(frames.FrameError):
        frames.decode(bad)


def test_channels_tell_whether_the_next_message_is_arriving():
    """``ready``: the next message is queued whole (a message of several frames once its last frame
    is in), for the gRPC channel and the in-memory pair."""
    from bunet.protocol.channel import pipe
    from bunet.service.transport import FRAME_BYTES, StreamChannel

    chan = StreamChannel(timeout=5.0)
    assert not chan.ready()
    big = bytes(range(256)) * (FRAME_BYTES // 256 + 1)
    first = frames.encode("m", big[:FRAME_BYTES], True)
    chan.inq.put(first)
    assert not chan.ready()
    chan.inq.put(frames.encode("m", big[FRAME_BYTES:], False))
    assert chan.ready()
    assert bytes(chan.recv("m")) == big
    assert not chan.ready()
    a, b = pipe()
    assert not b.ready()
    a.send("x", b"1")
    assert b.ready()
    assert b.recv("x") == b"1"
    assert not b.ready()


def test_ready_waits_for_a_whole_message_and_arrival_is_timed():
    """``ready(wait)``: True once a message is in whole (a later frame completes it), False after
    ``wait`` seconds without one; ``arrival_s``: first to last frame of the message received, as
    they were queued. For the gRPC channel and the in-memory pair."""
    import threading
    import time

    from bunet.protocol.channel import pipe
    from bunet.service.transport import StreamChannel

    chan = StreamChannel(timeout=5.0)
    t0 = time.monotonic()
    assert not chan.ready(0.2)
    assert 0.2 <= time.monotonic() - t0 < 2.0
    chan.inq.put(frames.encode("m", b"ab", True))
    timer = threading.Timer(0.3, lambda: chan.inq.put(frames.encode("m", b"cd", False)))
    timer.start()
    t0 = time.monotonic()
    assert chan.ready(5.0)
    assert time.monotonic() - t0 < 2.0
    timer.join()
    assert bytes(chan.recv("m")) == b"abcd"
    assert 0.25 <= chan.arrival_s < 2.0
    chan.inq.put(frames.encode("n", b"x" * 100_000, False))
    assert bytes(chan.recv("n")) == b"x" * 100_000 and chan.arrival_s == 0.0
    a, b = pipe()
    assert not b.ready(0.05)
    timer = threading.Timer(0.1, lambda: a.send("x", b"1"))
    timer.start()
    assert b.ready(5.0)
    timer.join()
    assert b.recv("x") == b"1" and b.arrival_s == 0.0


def test_transport_bounds_fit_the_memory_the_server_plans():
    """A stream's queued inbound frames fit what admission counts per stream, and both queues with
    one message being assembled (the largest HE part of the seed U-Net at 512x512, 17 MB) fit what a
    job plans for its transport."""
    from bunet import server
    from bunet.protocol import session
    from bunet.service import transport

    inq = transport.INQ_FRAMES * transport.MAX_FRAME_MESSAGE_BYTES
    assert inq < server.STREAM_BYTES
    assert inq >= 17_000_000 + transport.FRAME_BYTES  # a 17 MB part can be in whole
    assert transport.OUTQ_BYTES + inq + (17 << 20) <= session.TRANSPORT_BYTES
