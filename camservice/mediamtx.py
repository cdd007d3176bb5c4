"""MediaMTX's control API (v3), the client every MediaMTX call goes through.

:class:`MediaMTXClient` speaks plain HTTP (``http.client``: no dependency)
over one kept-alive connection, so a reconcile of many paths costs one TCP
handshake, not one per call. Blocking calls run in a thread behind
``async`` methods; list endpoints are read page by page. Every failure is a
:class:`MediaMTXError`, a JSON-RPC -32006 whose ``data.reason`` is
MediaMTX's own error text, or ``"mediamtx unreachable"`` when it did not
answer. A :class:`~camservice.breaker.CircuitBreaker` makes calls fail fast
while MediaMTX is down and tells listeners when it is back.

Users: the discovery worker keeps the cameras' paths
(:mod:`camservice.workers.discovery.mediamtx_paths`), the recording worker
checks a camera's path before reading its stream
(:class:`camservice.workers.recording.backend.MediaMTXBackend`).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import structlog

from .breaker import CLOSED, CircuitBreaker
from .errors import MEDIA_BACKEND, RpcError

log = structlog.get_logger("mediamtx")

#: ``data.reason`` of every error where MediaMTX did not answer.
UNREACHABLE = "mediamtx unreachable"

_MAX_ANSWER = 16 * 1024 * 1024
_MAX_PAGES = 10_000
_PATH_NAME = re.compile(r"^[0-9A-Za-z_\-.~:]+(?:/[0-9A-Za-z_\-.~:]+)*$")
#: What a kept-alive connection that the server closed while idle looks like
#: on the next request: the request never reached MediaMTX, so sending it
#: again on a new connection cannot do it twice.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class MediaMTXError(RpcError):
    """-32006: MediaMTX refused a call (``status`` is its HTTP status) or never answered (``status`` None).

    ``data`` is ``{"reason": ...}`` plus ``http_status`` for an answer;
    ``detail`` (not sent to clients) says what the connection did, for logs.
    """

    def __init__(self, reason: str, status: int | None = None, detail: str | None = None):
        data: dict[str, Any] = {"reason": reason}
        if status is not None:
            data["http_status"] = status
        super().__init__(MEDIA_BACKEND, data=data)
        self.reason, self.status, self.detail = reason, status, detail

    @property
    def unreachable(self) -> bool:
        return self.status is None


class MediaMTXClient:
    """MediaMTX's control API (v3).

    ``base_url`` may carry credentials (``http://user:pass@host:9997``) for
    an API that requires them. ``timeout`` bounds connecting and each read,
    in seconds. ``clock`` is only replaced by tests.

    One idle connection is kept for the next call. Calls that overlap (they
    run in threads) each take a connection; only one goes back to be kept.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:9997",
        timeout: float = 2.0,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 5.0,
        page_size: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode()
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.base_url = f"{parts.scheme}://{host}:{self._port}{self._prefix}"  # no credentials: safe to log
        self.timeout = timeout
        self.page_size = page_size
        self.breaker = CircuitBreaker(failure_threshold, reset_timeout, clock)
        self.breaker.add_listener(self._breaker_moved)
        self._listeners: list[tuple[Callable[[bool], Any], asyncio.AbstractEventLoop | None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._idle: http.client.HTTPConnection | None = None
        self._idle_lock = threading.Lock()
        #: Connections opened so far (each a TCP handshake); tests check the reuse.
        self.connections_opened = 0

    @classmethod
    def from_config(cls, config: Any, **options: Any) -> MediaMTXClient:
        return cls(config.media.mediamtx_api, **options)

    def close(self) -> None:
        """Close the kept connection (a later call opens a new one)."""
        with self._idle_lock:
            connection, self._idle = self._idle, None
        if connection is not None:
            connection.close()

    # --- availability ------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False from the moment the breaker opens until a call succeeds again."""
        return self.breaker.state == CLOSED

    def on_availability(self, callback: Callable[[bool], Any]) -> Callable[[], None]:
        """Call ``callback(available)`` each time :attr:`available` flips.

        Registered from inside a running event loop, the callback runs in
        that loop (and may be a coroutine function); otherwise it runs in
        the thread that noticed the change. Returns an unsubscribe function.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        entry = (callback, loop)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    def _breaker_moved(self, old: str, new: str) -> None:
        if (old == CLOSED) == (new == CLOSED):
            return  # open <-> half-open: still unavailable
        available = new == CLOSED
        if available:
            log.info("mediamtx_available", url=self.base_url)
        else:
            log.warning("mediamtx_unavailable", url=self.base_url, retry_in=self.breaker.reset_timeout)
        for callback, loop in list(self._listeners):
            if loop is None:
                self._run_listener(callback, available)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(self._run_listener, callback, available)

    def _run_listener(self, callback: Callable[[bool], Any], available: bool) -> None:
        try:
            result = callback(available)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("mediamtx_listener_failed")

    # --- transport -------------------------------------------------------------------------

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection for one exchange, and whether it was used before."""
        with self._idle_lock:
            connection, self._idle = self._idle, None
        if connection is not None:
            return connection, True
        self.connections_opened += 1
        return self._connection_class(self._host, self._port, timeout=self.timeout), False

    def _give_back(self, connection: http.client.HTTPConnection | None) -> None:
        with self._idle_lock:
            if self._idle is None:
                self._idle, connection = connection, None
        if connection is not None:
            connection.close()

    def _exchange(self, method: str, target: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        """Send one request and read the answer, on the kept connection when there is one.

        A kept connection the server closed while idle fails before
        MediaMTX saw the request: that one failure is retried once on a new
        connection. Any other failure closes the connection and propagates.
        """
        while True:
            connection, reused = self._take()
            try:
                connection.request(method, target, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read(_MAX_ANSWER + 1)
                keep = not response.will_close and len(payload) <= _MAX_ANSWER and response.isclosed()
            except _STALE:
                connection.close()
                if reused:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            if keep:
                self._give_back(connection)
            else:
                connection.close()
            return response.status, payload

    def request_sync(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        """One API call, blocking: the decoded JSON answer (None when empty).

        Raises :class:`MediaMTXError` for an error answer, no answer, or an
        open circuit breaker.
        """
        if not self.breaker.acquire():
            raise MediaMTXError(
                UNREACHABLE + " (circuit open)", detail=f"next attempt in {self.breaker.retry_in():.1f}s"
            )
        target = self._prefix + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._authorization:
            headers["Authorization"] = self._authorization
        try:
            status, payload = self._exchange(method, target, data, headers)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, garbled
            self.breaker.failure()
            raise MediaMTXError(UNREACHABLE, detail=f"{method} {path}: {type(exc).__name__}: {exc}") from None
        self.breaker.success()
        if not 200 <= status < 300:
            raise MediaMTXError(_error_reason(status, payload), status=status)
        if len(payload) > _MAX_ANSWER:
            raise MediaMTXError(f"answer to {path} exceeds {_MAX_ANSWER} bytes", status=status)
        if not payload.strip():
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise MediaMTXError(f"answer to {path} is not JSON", status=status) from None

    async def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        """:meth:`request_sync` in a thread."""
        return await asyncio.to_thread(self.request_sync, method, path, query, body)

    async def _get_or_none(self, path: str) -> Any:
        try:
            return await self.request("GET", path)
        except MediaMTXError as exc:
            if exc.status == 404:
                return None
            raise

    async def _list_all(self, path: str) -> list[dict[str, Any]]:
        """Every item of a paginated list, reading ``page_size`` items per call.

        Items whose name was already seen are skipped: a path added while
        the pages are read shifts later items onto a page already read.
        """
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        page = 0
        while True:
            answer = await self.request("GET", path, {"page": page, "itemsPerPage": self.page_size}) or {}
            batch = answer.get("items") or []
            for item in batch:
                name = item.get("name") if isinstance(item, dict) else None
                if name is not None:
                    if name in seen:
                        continue
                    seen.add(name)
                items.append(item)
            page += 1
            if not batch or page >= int(answer.get("pageCount") or 0) or page >= _MAX_PAGES:
                return items

    # --- the calls this service makes ---------------------------------------------------------

    async def list_path_configs(self) -> list[dict[str, Any]]:
        """Every configured path (``/v3/config/paths/list``), defaults filled in."""
        return await self._list_all("/v3/config/paths/list")

    async def get_path_config(self, name: str) -> dict[str, Any] | None:
        """A path's configuration, or None when no path has that name."""
        return await self._get_or_none(f"/v3/config/paths/get/{_quote(name)}")

    async def add_path(self, name: str, conf: dict[str, Any]) -> None:
        """Add a path; MediaMTX answers 400 ``path already exists`` when it does."""
        await self.request("POST", f"/v3/config/paths/add/{_quote(name)}", body=conf)

    async def patch_path(self, name: str, conf: dict[str, Any]) -> None:
        """Change the given fields of a path (404 when there is none)."""
        await self.request("PATCH", f"/v3/config/paths/patch/{_quote(name)}", body=conf)

    async def delete_path(self, name: str) -> None:
        """Remove a path configuration (404 when there is none); its readers are disconnected."""
        await self.request("DELETE", f"/v3/config/paths/delete/{_quote(name)}")

    async def get_global_config(self) -> dict[str, Any]:
        return await self.request("GET", "/v3/config/global/get")

    async def get_path(self, name: str) -> dict[str, Any] | None:
        """Live state of one path, or None when MediaMTX has no such path."""
        return await self._get_or_none(f"/v3/paths/get/{_quote(name)}")

    async def ping(self) -> bool:
        """Whether MediaMTX answers (any HTTP answer counts); drives the breaker like any call."""
        try:
            await self.request("GET", "/v3/paths/list", {"itemsPerPage": 1})
        except MediaMTXError as exc:
            return not exc.unreachable
        return True


def _quote(name: str) -> str:
    """A path name for a URL; refuses names MediaMTX would refuse (and any ``..`` games)."""
    if not _PATH_NAME.fullmatch(name) or ".." in name.split("/"):
        raise ValueError(f"invalid MediaMTX path name {name!r}")
    return quote(name, safe="/:~")


def _error_reason(status: int, payload: bytes) -> str:
    """MediaMTX's error text (``{"status": "error", "error": "..."}``), or what the body says."""
    try:
        answer = json.loads(payload)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]:
            return answer["error"]
    except ValueError:
        pass
    text = payload.decode("utf-8", "replace").strip()[:200]
    return text or f"HTTP {status}"
