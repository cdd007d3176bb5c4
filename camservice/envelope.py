"""ZeroMQ message shapes between gateways, workers and the supervisor.

Requests travel gateway ROUTER <-> worker DEALER; every message is one
msgpack frame holding an array whose first item is the message kind. A ROUTER
sees an extra leading identity frame, which the transport layer handles.
Events travel PUB -> SUB as two frames: the topic and one msgpack frame.

This module is the single definition of those shapes; nothing else builds or
parses the arrays by hand.
"""

from __future__ import annotations

import time
from enum import IntEnum
from typing import Any, NamedTuple, Union

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
    index: int

    def pack(self) -> bytes:
        return _pack((Kind.READY, self.kind, self.pid, self.capacity, self.index))


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

    def pack(self) -> bytes:
        return _pack((Kind.REQUEST, self.seq, self.method, self.params, self.deadline,
                      self.request_id, self.caller))

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) > self.deadline


class Reply(NamedTuple):
    """The answer to a :class:`Request`: ``error`` (a JSON-RPC error dict) or ``result``."""

    seq: int
    error: dict[str, Any] | None
    result: Any

    def pack(self) -> bytes:
        return _pack((Kind.REPLY, self.seq, self.error, self.result))


class Goodbye(NamedTuple):
    pid: int

    def pack(self) -> bytes:
        return _pack((Kind.GOODBYE, self.pid))


Message = Union[Ready, Request, Reply, Goodbye]

_CLASSES = {Kind.READY: Ready, Kind.REQUEST: Request,
            Kind.REPLY: Reply, Kind.GOODBYE: Goodbye}


class EnvelopeError(ValueError):
    """A frame that is not one of the shapes above."""


def _pack(items: tuple) -> bytes:
    return msgpack.packb(items, use_bin_type=True)


def unpack(frame: bytes) -> Message:
    """Decode one request-channel frame into its message type."""
    try:
        items = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=False)
        cls = _CLASSES[Kind(items[0])]
        return cls(*items[1:])
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
    def from_frames(cls, frames: list[bytes]) -> "Event":
        try:
            source, seq, data, stamp = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
            return cls(frames[0].decode(), source, seq, data, stamp)
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
            raise EnvelopeError(f"malformed event: {exc}") from None
