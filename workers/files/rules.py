"""What a download request means, as pure functions: its target, its conditions, its range, its answer's head.

No I/O: the server (:mod:`.downloads`) parses the HTTP/1.1 framing with
``h11``, stats the file, and asks :func:`plan` what to answer (RFC 9110:
section 13 for conditional requests, section 14 for ranges). Kept apart so
that every rule is tested without a socket.

Paths are checked before any file is touched (:func:`parse_target`): the
raw target is decoded exactly once; a NUL byte, a backslash, a ``.`` or
``..`` segment or a name outside the contract's character set is 400.
"""

from __future__ import annotations

import email.utils
import os
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import h11

from camservice.methods import check_filename

#: URL folder -> index kind.
ROUTES = {"recordings": "recording", "snapshots": "snapshot"}

_DIGITS = re.compile(r"[0-9]{1,19}")


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class Unsatisfiable(Exception):
    pass


def parse_target(target: str) -> tuple[str, str | None]:
    """``("health", None)`` or ``(url_folder, filename)``; raises :class:`HttpError`.

    The target is percent-decoded exactly once, so ``%252e%252e`` arrives
    as the name ``%2e%2e`` and fails the character-set check.
    """
    if not target.startswith("/"):
        raise HttpError(400, "request target must be an absolute path")
    path = target.split("?", 1)[0].split("#", 1)[0]
    raw = unquote_to_bytes(path)
    if b"\x00" in raw or b"\\" in raw:
        raise HttpError(400, "NUL byte or backslash in path")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "path is not UTF-8") from None
    segments = decoded.split("/")
    if any(segment in (".", "..") for segment in segments):
        raise HttpError(400, "dot segment in path")
    if decoded == "/files/health":
        return "health", None
    if len(segments) < 4 or segments[1] != "files" or segments[2] not in ROUTES:
        raise HttpError(404, "no such resource")
    if len(segments) > 4:
        raise HttpError(400, "file name must be a single path component")
    name = segments[3]
    if not name:
        raise HttpError(404, "no directory listings")
    try:
        check_filename(name)
    except Exception:  # noqa: BLE001 - RpcError from the shared validator
        raise HttpError(400, "invalid file name") from None
    return segments[2], name


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range asked for, as ``(first, last)`` inclusive.

    ``None``: serve the whole file (no header, another unit, several ranges
    or a malformed one, all of which RFC 9110 14.2 lets a server ignore;
    several ranges get the whole file in one pass rather than a multipart
    body that could repeat bytes). Raises :class:`Unsatisfiable` for a
    range that lies past the end.
    """
    if value is None:
        return None
    unit, eq, spec = value.partition("=")
    if not eq or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    if first == "":
        if not _DIGITS.fullmatch(last):
            return None
        length = int(last)
        if length == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - length), size - 1
    if not _DIGITS.fullmatch(first) or (last and not _DIGITS.fullmatch(last)):
        return None
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise Unsatisfiable()
    return start, min(end, size - 1)


def etag(st: os.stat_result) -> str:
    """A strong validator: changes whenever the file is replaced, grows or is rewritten."""
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def _tags(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _weak_match(value: str, current: str) -> bool:
    """RFC 9110 13.1.2/8.8.3.2: ``*`` or any listed tag equal to ours, ``W/`` ignored."""
    return any(tag == "*" or tag.removeprefix("W/") == current for tag in _tags(value))


def _date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


@dataclass
class Plan:
    """What to send: status, the byte span of the file, and the headers that go with it."""

    status: int
    offset: int = 0
    length: int = 0
    headers: dict[str, str] = field(default_factory=dict)


def plan(method: str, headers: dict[str, str], st: os.stat_result) -> Plan:
    """The answer to a GET or HEAD of a file with status ``st``, per RFC 9110 13.2.2's order.

    ``headers`` are the request's, names lower-cased.
    """
    size = st.st_size
    tag = etag(st)
    modified = int(st.st_mtime)
    validators = {
        "ETag": tag,
        "Last-Modified": email.utils.formatdate(modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
    }
    if_match = headers.get("if-match")
    if if_match is not None:
        if not any(t == "*" or t == tag for t in _tags(if_match)):
            return Plan(412, headers=validators)
    elif (since := headers.get("if-unmodified-since")) is not None:
        stamp = _date(since)
        if stamp is not None and modified > stamp:
            return Plan(412, headers=validators)
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _weak_match(if_none_match, tag):
            return Plan(304, headers=validators)
    elif (since := headers.get("if-modified-since")) is not None:
        stamp = _date(since)
        if stamp is not None and modified <= stamp:
            return Plan(304, headers=validators)
    # HEAD gets the same Range answer GET would (as nginx does): a client may probe a span's headers.
    range_header = headers.get("range")
    if_range = headers.get("if-range")
    if range_header is not None and if_range is not None:
        if_range = if_range.strip()
        # 13.1.5: an entity tag must match strongly; a date must be the exact Last-Modified.
        fresh = if_range == tag if if_range.startswith('"') else if_range == validators["Last-Modified"]
        if not fresh:
            range_header = None  # the client's copy is stale: send the whole new file
    try:
        wanted = parse_range(range_header, size)
    except Unsatisfiable:
        return Plan(416, headers={**validators, "Content-Range": f"bytes */{size}"})
    if wanted is None:
        return Plan(200, 0, size, validators)
    first, last = wanted
    return Plan(206, first, last - first + 1, {**validators, "Content-Range": f"bytes {first}-{last}/{size}"})


# --- response heads ----------------------------------------------------------------------


def response_event(status: int, headers: dict[str, str], close: bool) -> h11.Response:
    """The status line and headers of an answer, for ``h11.Connection.send``."""
    items = [
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Server", "camservice-files"),
        *headers.items(),
    ]
    if close:
        items.append(("Connection", "close"))
    return h11.Response(status_code=status, headers=items, reason=_reason(status))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def busy_response() -> bytes:
    """503 for a connection refused at the door (too many from its address, or in all)."""
    body = b'{"error": "too many connections"}'
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
