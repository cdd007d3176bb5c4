"""Client frame boundaries and server text frames, without the protocol object (RFC 6455 5.2).

I/O-free helpers of :class:`~camservice.gateway.connection.Connection`'s fast
path. Two shortcuts around the protocol object, for the frames that make up
nearly all traffic (measured: 2.3 µs → 1.0 µs to read a request, 0.8 → 0.2 µs
to frame a reply):

- The protocol reads the opening request and not a byte more; once the 101
  is sent, the connection cuts the byte stream into frames itself
  (:func:`next_frame`). A whole, masked, unfragmented text or
  binary frame is unmasked and handed over directly; every other frame
  (control frames, fragments, anything malformed) is given, whole, to
  ``ServerProtocol``, so its parser always starts at a frame boundary and
  does the checking, the answering (pong, close) and the failing (1002,
  1009) as if it had read the whole stream itself. A frame header announcing
  more than ``max_size`` is passed on at once, so the protocol refuses it
  before anything is buffered.
- :func:`text_frame` frames replies itself: server frames are unmasked and
  this server negotiates no extension, so a frame is a header plus the
  payload. Ordering with what the protocol queues (the 101 response, pongs,
  the close frame) is kept by draining the protocol's output first.
"""

from __future__ import annotations


def next_frame(buffer: bytes | bytearray, position: int) -> tuple[int, int, int] | None:
    """Where the client frame at ``position`` is: ``(payload start, end, payload length)``.

    None while its header is incomplete; ``end`` may lie beyond the buffer
    when its payload is. Only the length and mask bits are read: checking
    the rest is the protocol's job.
    """
    available = len(buffer) - position
    if available < 2:
        return None
    second = buffer[position + 1]
    length = second & 0x7F
    header = 2
    if length == 126:
        header = 4
        if available < header:
            return None
        length = int.from_bytes(buffer[position + 2 : position + 4], "big")
    elif length == 127:
        header = 10
        if available < header:
            return None
        length = int.from_bytes(buffer[position + 2 : position + 10], "big")
    if second & 0x80:
        header += 4
    if available < header:
        return None
    start = position + header
    return start, start + length, length


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server text frame (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload
