"""ZeroMQ message shapes between gateways, workers and the supervisor.

Requests travel gateway ROUTER <-> worker DEALER. A frame is one msgpack
array of messages, each an array whose first item is the message kind: a
busy sender puts every message of one event-loop tick for one peer into one
frame, because each ZeroMQ send costs a wake-up of ZeroMQ's I/O thread on both
sides, which under load cost more than the work itself. A ROUTER sees an
extra leading identity frame, which the transport layer handles.
Events travel PUB -> SUB as two frames: the topic and one msgpack frame.

This module is the single definition of those shapes; nothing else builds or
parses the arrays by hand.
"""

from __future__ import annotations

import threading
import time
from enum import IntEnum
from typing import Any, NamedTuple

import msgpack


class Kind(IntEnum):
    READY = 1  # worker -> gateway: I serve <kind>, pid, capacity; repeated as the heartbeat
    REQUEST = 3  # gateway -> worker (or worker -> gateway for worker-to-worker calls)
    REPLY = 4  # answer to a REQUEST, matched by ``seq``
    GOODBYE = 5  # worker -> gateway: draining, send me nothing more


class Ready(NamedTuple):
    kind: str
    pid: int
    capacity: int
    # The wire field's name; it shadows tuple.index, which nothing calls on a Ready.
    index: int  # type: ignore[assignment]

    def wire(self) -> tuple:
        return (Kind.READY, self.kind, self.pid, self.capacity, self.index)

    def pack(self) -> bytes:
        return pack(self)


class Request(NamedTuple):
    """A call to a method served by another process.

    ``seq`` is unique per sender and only used to match the REPLY; ``deadline``
    is a wall-clock time (seconds since the epoch) after which the answer is
    useless and the receiver may drop the request; ``request_id`` follows the
    call through every process's logs; ``caller`` holds the identity the
    gateway authenticated (``{"sub": ..., "role": ...}``) or is empty.
    """

    seq: int
    method: str
    params: dict[str, Any]
    deadline: float
    request_id: str
    caller: dict[str, Any]

    def wire(self) -> tuple:
        return (Kind.REQUEST, self.seq, self.method, self.params, self.deadline, self.request_id, self.caller)

    def pack(self) -> bytes:
        return pack(self)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) > self.deadline


class Reply(NamedTuple):
    """The answer to a :class:`Request`: ``error`` (a JSON-RPC error dict) or ``result``.

    With ``encoded`` the result is JSON text: workers encode what they send
    back, so the gateway, which every request crosses, splices it into the
    response instead of decoding and re-encoding it.
    """

    seq: int
    error: dict[str, Any] | None
    result: Any
    encoded: bool = False

    def wire(self) -> tuple:
        return (Kind.REPLY, self.seq, self.error, self.result, self.encoded)

    def pack(self) -> bytes:
        return pack(self)


class Native(NamedTuple):
    """A handler's result sent as msgpack (``encoded`` False), not as JSON text.

    For internal calls whose result carries bytes (a preview's JPEG frame)
    and is read by the gateway itself, never spliced into a JSON-RPC
    response: JSON would need base64 (a third larger, and encoded twice).
    """

    value: Any


class Goodbye(NamedTuple):
    pid: int

    def wire(self) -> tuple:
        return (Kind.GOODBYE, self.pid)

    def pack(self) -> bytes:
        return pack(self)


Message = Ready | Request | Reply | Goodbye

_CLASSES: dict[Kind, Any] = {Kind.READY: Ready, Kind.REQUEST: Request, Kind.REPLY: Reply, Kind.GOODBYE: Goodbye}


#: Message number -> (class, its number of fields).
_SHAPES = {int(kind): (cls, len(cls._fields)) for kind, cls in _CLASSES.items()}
_new_tuple = tuple.__new__


class EnvelopeError(ValueError):
    """A frame that is not one of the shapes above."""


#: One packer per thread, reused (a Packer is not thread-safe). ``msgpack.packb``
#: makes a new Packer per call, and each mallocs a buffer of 256 KiB: in the
#: file worker (heaptrack, 8 minutes of the endurance mix) that was 30,673
#: allocations of 256 KiB, one per message. A reused packer keeps its
#: buffer, which grows only for a larger message, and packs in half the time.
_packers = threading.local()
#: The buffer a thread's packer starts with: most frames are well under it.
PACKER_BUFFER = 16 * 1024


def _packer() -> msgpack.Packer:
    try:
        return _packers.packer
    except AttributeError:
        _packers.packer = msgpack.Packer(use_bin_type=True, buf_size=PACKER_BUFFER)
        return _packers.packer


def _pack(items: tuple | list[tuple]) -> bytes:
    # The packer empties its buffer after each pack, also when packing raises (autoreset).
    return _packer().pack(items)


def pack(*messages: Message) -> bytes:
    """One request-channel frame carrying ``messages`` in order."""
    return _pack(tuple(m.wire() for m in messages))


def pack_wires(wires: list[tuple]) -> bytes:
    """Like :func:`pack`, for messages already turned into tuples (``m.wire()``)."""
    return _pack(wires)


#: What msgpack raises for a value it cannot encode (an int beyond 64 bits, an unknown type).
UNENCODABLE = (OverflowError, TypeError, ValueError)


def pack_wires_apart(wires: list[tuple]) -> tuple[bytes | None, list[tuple]]:
    """Pack ``wires`` into one frame, leaving out any message that cannot be encoded.

    Returns ``(frame, refused)``: ``frame`` carries every encodable message in
    order (None when none is), ``refused`` lists the others, so that one bad
    message fails alone and its neighbours of the tick still travel. The
    common case, every message fine, costs one pack as before.
    """
    try:
        return _pack(wires), []
    except UNENCODABLE:
        pass
    good: list[bytes] = []
    refused: list[tuple] = []
    for wire in wires:
        try:
            good.append(_pack(wire))
        except UNENCODABLE:
            refused.append(wire)
    if not good:
        return None, refused
    # A msgpack array is its header followed by its items, each packed on its own.
    header = _packer().pack_array_header(len(good))
    return header + b"".join(good), refused


def unpack(frame: bytes) -> list[Message]:
    """Decode one request-channel frame into its messages."""
    try:
        batch = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=False)
        if not isinstance(batch, list) or not batch:
            raise ValueError("a frame is a non-empty array of messages")
        # A plain dict lookup by number: constructing Kind(n) per message
        # showed up in profiles of the request path. A message with every
        # field is made by tuple.__new__ (C), not the class's generated
        # Python __new__ (0.16 µs less per message, each side of a hop); any
        # other length goes through the class, which fills defaults or raises.
        messages = []
        for items in batch:
            cls, size = _SHAPES[items[0]]
            fields = items[1:]
            messages.append(_new_tuple(cls, fields) if len(fields) == size else cls(*fields))
        return messages
    except (ValueError, KeyError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise EnvelopeError(f"malformed frame: {exc}") from None


# --- events (PUB/SUB) -------------------------------------------------------------


class Event(NamedTuple):
    """A state change published on the event bus.

    ``topic`` is a client notification method (``camera_status_update``...)
    or an internal topic starting with ``_`` (never sent to clients).
    ``source`` names the publishing process (``discovery-0``) and ``seq``
    counts that publisher's events of this topic, so a subscriber can notice
    a gap in the topic it replicates and take a fresh snapshot.
    """

    topic: str
    source: str
    seq: int
    data: dict[str, Any]
    time: float

    def frames(self) -> list[bytes]:
        return [self.topic.encode(), _pack((self.source, self.seq, self.data, self.time))]

    @classmethod
    def from_frames(cls, frames: list[bytes]) -> Event:
        try:
            source, seq, data, stamp = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
            return cls(frames[0].decode(), source, seq, data, stamp)
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
            raise EnvelopeError(f"malformed event: {exc}") from None
