"""ZeroMQ envelope shapes round-trip and reject garbage."""

import msgpack
import pytest

from camservice.envelope import EnvelopeError, Event, Goodbye, Ready, Reply, Request, pack, unpack


@pytest.mark.parametrize(
    "message",
    [
        Ready("files", 123, 2, 0),
        Request(1, "list_recordings", {"limit": 10}, 1.5e9, "g0-1", {"sub": "u", "role": "viewer"}),
        Reply(1, None, {"files": []}),
        Reply(2, {"code": -32010, "message": "File not found"}, None),
        Goodbye(99),
    ],
)
def test_round_trip(message):
    (decoded,) = unpack(message.pack())
    assert decoded == message and type(decoded) is type(message)
    assert decoded._asdict() == message._asdict()


def test_a_reply_without_its_optional_field_gets_the_default():
    (reply,) = unpack(msgpack.packb([[4, 7, None, "[]"]]))  # a sender from before ``encoded``
    assert type(reply) is Reply and reply.seq == 7 and reply.encoded is False


@pytest.mark.parametrize(
    "items",
    [
        [4, 7, None, "[]", True, "extra"],  # a Reply with a field too many
        [3, 1, "ping", {}],  # a Request with fields missing
        [1, "files", 1, 2, 0, 0],  # a Ready with a field too many
    ],
)
def test_a_message_of_the_wrong_length_raises_envelope_error(items):
    with pytest.raises(EnvelopeError):
        unpack(msgpack.packb([items]))


def test_a_frame_carries_several_messages_in_order():
    messages = [Reply(i, None, i) for i in range(5)] + [Ready("discovery", 1, 64, 0)]
    assert unpack(pack(*messages)) == messages


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00",
        msgpack.packb([99, 1]),
        msgpack.packb([3]),
        msgpack.packb({"a": 1}),
        msgpack.packb([]),
        msgpack.packb([[99, 1]]),
        msgpack.packb([[3]]),
    ],
)
def test_garbage_raises_envelope_error(frame):
    with pytest.raises(EnvelopeError):
        unpack(frame)


def test_event_frames_round_trip():
    event = Event("camera_status_update", "discovery-0", 4, {"id": "camera0"}, 1.0)
    frames = event.frames()
    assert frames[0] == b"camera_status_update"  # topic frame: SUB prefix matching works on it
    assert Event.from_frames(frames) == event


def test_camera_table_device_reused_by_a_new_camera():
    from camservice.cameras import CONNECTED, DISCONNECTED, Camera, CameraTable

    table = CameraTable()
    table.put(Camera("camera0", "/dev/video0", status=DISCONNECTED))
    table.put(Camera("camera1", "/dev/video0", status=CONNECTED))
    assert table.find("/dev/video0").id == "camera1"
    table.put(Camera("camera0", "/dev/video0", status=DISCONNECTED))  # a late update of the old one
    assert table.find("/dev/video0").id == "camera1"
    table.put(Camera("camera1", "/dev/video2", status=CONNECTED))  # renumbered by the kernel
    assert table.find("/dev/video2").id == "camera1"
    assert table.find("camera0").status == DISCONNECTED


def test_an_unencodable_message_is_refused_alone_and_the_next_frame_is_whole():
    from camservice.envelope import pack_wires_apart

    fine, odd, huge, last = Reply(1, None, 1), Reply(2, None, object()), Reply(3, None, 2**70), Reply(4, None, "ok")
    frame, refused = pack_wires_apart([m.wire() for m in (fine, odd, huge, last)])
    assert unpack(frame) == [fine, last]
    assert refused == [odd.wire(), huge.wire()]
    # The thread's packer raised midway twice: what it packs next carries nothing of those.
    assert pack(Reply(5, None, "x")) == msgpack.packb([Reply(5, None, "x").wire()], use_bin_type=True)


def test_packing_a_frame_allocates_no_buffer_per_call():
    """msgpack.packb mallocs a 256 KiB buffer per call (a Packer each); a frame is packed by a reused one."""
    import tracemalloc

    message = Request(1, "get_camera_status", {"device": "camera0"}, 1.5e9, "g0-1", None)
    pack(message)  # this thread's packer and its buffer exist from here on
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(100):
            pack(message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < 16 * 1024
