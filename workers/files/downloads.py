"""HTTP downloads of recordings and snapshots, served by the file workers.

``GET|HEAD /files/recordings/{name}``, ``/files/snapshots/{name}`` and
``/files/health``. The gateway redirects or proxies ``/files/`` here, so a
multi-gigabyte download never runs in the gateway's event loop.

Design: an asyncio server (``asyncio.start_server``) on a dedicated thread
with its own event loop, sending bodies with ``loop.sendfile``.

* Zero-copy and constant memory: ``loop.sendfile`` uses ``os.sendfile`` on
  the non-blocking socket, so file pages go from the page cache to the
  socket without passing through Python; where it cannot (TLS) asyncio
  falls back to bounded read/write chunks.
* Own thread, own loop: the worker's main loop (JSON-RPC, events) never
  runs header parsing or ``sendfile`` calls, so downloads cannot delay
  listing requests even when a ``sendfile`` waits on a cold disk page;
  the sendfile system call releases the GIL.
* asyncio rather than a thread per connection (``ThreadingHTTPServer``):
  a thousand slow clients cost a thousand small tasks, not a thousand
  threads, and every wait has a timeout (head read, stalled client).
* Several file worker processes listen on the same port with
  ``SO_REUSEPORT``; the kernel spreads connections among them.
* With ``server.tls`` configured the gateway redirects to ``https://``, so
  this server speaks TLS with the same certificate; asyncio then sends the
  body in bounded 256 KiB read/write steps instead of ``sendfile``.

Paths are checked before any file is touched: the raw target is decoded
exactly once; a NUL byte, a backslash, a ``.`` or ``..`` segment or a name
outside the contract's character set is 400; a name that resolves outside
its folder (a symlink pointing out) is 404, like a missing file, so the
server never confirms what exists elsewhere. Only regular files are served
(as only they are listed): the name is opened with ``O_NOFOLLOW``, which
also closes the window in which it could be swapped for a symlink after
the check.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import os
import re
import ssl
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote_to_bytes

import structlog

from .auth import Authorizer, allow_all
from .names import Escape, admitted, content_type, resolve_inside
from camservice.methods import check_filename

#: URL folder -> index kind.
ROUTES = {"recordings": "recording", "snapshots": "snapshot"}

MAX_HEAD_BYTES = 16 * 1024
#: Bytes per ``loop.sendfile`` call; a client must take this much within
#: ``stall_timeout`` (about 8.7 KB/s at the defaults) or it is dropped.
CHUNK_BYTES = 512 * 1024

REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_DIGITS = re.compile(r"[0-9]{1,19}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in connection
        return "keep-alive" in connection

    @property
    def has_body(self) -> bool:
        return "transfer-encoding" in self.headers or self.headers.get("content-length", "0").strip() != "0"


def parse_head(data: bytes) -> RequestHead:
    """The request line and headers (``data`` ends with the blank line)."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(505 if version.startswith("HTTP/") else 400, "unsupported HTTP version")
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "malformed method")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding
            raise HttpError(400, "malformed header line")
        name, value = name.lower(), value.strip(" \t")
        # Repeated headers fold into one list (RFC 9110 5.3): a doubled Range
        # becomes a multi-range and is ignored, a doubled credential is invalid.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return RequestHead(method, target, version, headers)


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


class Unsatisfiable(Exception):
    pass


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range asked for, as ``(first, last)`` inclusive.

    ``None``: serve the whole file (no header, another unit, several ranges
    or a malformed one, all of which RFC 9110 lets a server ignore).
    Raises :class:`Unsatisfiable` for a range that lies past the end.
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


class DownloadServer:
    """The HTTP server; :meth:`start` and :meth:`stop` are called from any thread."""

    def __init__(
        self,
        folders: Mapping[str, Path],
        host: str,
        port: int,
        *,
        authorize: Authorizer = allow_all,
        reuse_port: bool = True,
        max_connections: int = 1024,
        head_timeout: float = 15.0,
        stall_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        log=None,
        rate_limit: int = 0,
    ):
        self.folders = {url: Path(folders[kind]) for url, kind in ROUTES.items()}
        self.host = host
        self.port = port
        self.authorize = authorize
        self.reuse_port = reuse_port
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.stall_timeout = stall_timeout
        self.ssl_context = ssl_context
        #: Bytes per second per download (0: unpaced). Over loopback a download
        #: runs at memory speed (~2 GB/s here) and the copying alone doubled the
        #: P95 of concurrent status calls (bench/download.py); paced at 500 MB/s
        #: it does not, and no real network is faster.
        self.rate_limit = rate_limit
        self._sleep = asyncio.sleep  # tests substitute a recorder
        self.log = log or structlog.get_logger("files.http")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task] = set()
        self._error: BaseException | None = None

    # --- lifecycle (caller's thread) -----------------------------------------------------

    def start(self, timeout: float = 5.0) -> int:
        """Bind and serve; returns the port (useful with port 0). Blocking."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="files-http", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("download server did not start in time")
        if self._error is not None:
            raise self._error
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut open connections, join the thread. Blocking."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    # --- server thread -------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            server = loop.run_until_complete(
                asyncio.start_server(
                    self._connection,
                    self.host,
                    self.port,
                    reuse_port=self.reuse_port,
                    limit=MAX_HEAD_BYTES,
                    backlog=1024,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=self.head_timeout if self.ssl_context else None,
                )
            )
        except OSError as exc:
            self._error = exc
            ready.set()
            loop.close()
            return
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                loop.run_until_complete(asyncio.wait(list(self._connections), timeout=2.0))
            loop.run_until_complete(server.wait_closed())
            loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            if len(self._connections) > self.max_connections:
                await self._send_error(
                    writer, HttpError(503, "too many connections"), head_only=False, keep_alive=False
                )
                return
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away or stalled: nothing left to tell it
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one bad request must not kill the server
            self.log.exception("download_failed")
        finally:
            self._connections.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (ConnectionError, asyncio.TimeoutError, asyncio.CancelledError):
                pass

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True when the connection may carry another."""
        try:
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except asyncio.IncompleteReadError:
            return False  # closed between requests
        except asyncio.LimitOverrunError:
            await self._send_error(writer, HttpError(431, "request head too large"), False, False)
            return False
        try:
            head = parse_head(data)
        except HttpError as exc:
            await self._send_error(writer, exc, False, False)
            return False
        head_only = head.method == "HEAD"
        # A GET with a body has unknowable framing: answer, then close.
        keep_alive = head.keep_alive and not head.has_body
        try:
            if head.method not in ("GET", "HEAD"):
                raise HttpError(405, "only GET and HEAD", {"Allow": "GET, HEAD"})
            route, name = parse_target(head.target)
            if route == "health":
                await self._send_json(writer, 200, {"status": "ok"}, head_only, keep_alive)
                return keep_alive
            denied = self.authorize(head.headers)
            if inspect.isawaitable(denied):
                denied = await asyncio.wait_for(denied, 5.0)
            if denied is not None:
                extra = {"WWW-Authenticate": 'Bearer realm="camservice"'} if denied == 401 else {}
                raise HttpError(int(denied), "not authorised", extra)
            return await self._send_file(writer, head, route, name, head_only, keep_alive)
        except HttpError as exc:
            keep = keep_alive and exc.status < 500 and exc.status != 400
            await self._send_error(writer, exc, head_only, keep)
            return keep

    def _open(self, route: str, name: str) -> tuple[int, os.stat_result]:
        if not admitted(ROUTES[route], name):
            raise HttpError(404, "no such file")
        try:
            resolve_inside(self.folders[route], name)
        except Escape:
            raise HttpError(404, "no such file") from None
        # Only regular files are served, as only they are listed: O_NOFOLLOW
        # refuses a symlink, including one swapped in after the check above.
        path = os.path.join(os.path.realpath(self.folders[route]), name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # missing, a symlink (ELOOP), unreadable
            raise HttpError(404, "no such file") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise HttpError(404, "no such file")
        return fd, st

    async def _send_file(
        self, writer: asyncio.StreamWriter, head: RequestHead, route: str, name: str, head_only: bool, keep_alive: bool
    ) -> bool:
        fd, st = self._open(route, name)
        with os.fdopen(fd, "rb", buffering=0) as file:
            size = st.st_size
            last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            range_header = head.headers.get("range")
            if_range = head.headers.get("if-range")
            if range_header is not None and if_range is not None and if_range.strip() != last_modified:
                range_header = None  # the client's copy is stale: send the whole new file
            try:
                wanted = parse_range(range_header, size)
            except Unsatisfiable:
                raise HttpError(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"}) from None
            headers = {
                "Content-Type": content_type(name),
                "Accept-Ranges": "bytes",
                "Content-Disposition": f'attachment; filename="{name}"',
                "Last-Modified": last_modified,
                "Cache-Control": "private, no-cache",
                "X-Content-Type-Options": "nosniff",
            }
            if wanted is None:
                status, offset, length = 200, 0, size
            else:
                status, offset, length = 206, wanted[0], wanted[1] - wanted[0] + 1
                headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
            headers["Content-Length"] = str(length)
            await self._write_head(writer, status, headers, keep_alive)
            if head_only or length == 0:
                return keep_alive
            sent = await self._sendfile(writer, file, offset, length)
            self.log.info("download", route=route, filename=name, status=status, bytes=sent, offset=offset, size=size)
            # A file truncated under us: we promised more bytes than exist, so
            # the only honest end is to close the connection.
            return keep_alive and sent == length

    async def _sendfile(self, writer: asyncio.StreamWriter, file, offset: int, length: int) -> int:
        loop = asyncio.get_running_loop()
        sent = 0
        began = loop.time()
        while sent < length:
            count = min(CHUNK_BYTES, length - sent)
            done = await asyncio.wait_for(
                loop.sendfile(writer.transport, file, offset + sent, count), self.stall_timeout
            )
            if done == 0:
                break
            sent += done
            if self.rate_limit:
                ahead = began + sent / self.rate_limit - loop.time()
                if ahead > 0:
                    await self._sleep(ahead)
        return sent

    async def _write_head(
        self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str], keep_alive: bool
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            "Server: camservice-files",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await asyncio.wait_for(writer.drain(), self.stall_timeout)

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: dict,
        head_only: bool,
        keep_alive: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        payload = json.dumps(body).encode()
        headers = {
            **(extra or {}),
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
            "Cache-Control": "no-store",
        }
        await self._write_head(writer, status, headers, keep_alive)
        if not head_only:
            writer.write(payload)
            await asyncio.wait_for(writer.drain(), self.stall_timeout)

    async def _send_error(
        self, writer: asyncio.StreamWriter, error: HttpError, head_only: bool, keep_alive: bool
    ) -> None:
        if error.status >= 500 or error.status in (400, 431):
            self.log.debug("http_refused", status=error.status, reason=error.reason)
        await self._send_json(writer, error.status, {"error": error.reason}, head_only, keep_alive, error.headers)
