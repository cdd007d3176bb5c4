"""A JSON-RPC client of the service's own WebSocket API, for the bridge.

Commands from MQTT go through the same front door as any client's: the
gateway checks authentication, role, rate limit and params and answers with
the contract's errors, so an MQTT user sees exactly what a WebSocket user
would. The bridge authenticates with a short-lived token it signs itself
with the service secret (subject ``mqtt-bridge``, role ``admin``, because
``get_status`` and ``get_storage_info`` need it); who may *send* commands is
decided by the broker's ACLs.

One connection, opened on first use and again after it dropped; a call whose
connection drops is failed, never sent again (a command is never retried
behind the user's back).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import structlog
import websockets
from websockets.asyncio.client import ClientConnection, connect

from camservice.errors import SERVICE_BUSY, RpcError

log = structlog.get_logger("mqtt_bridge.api")

#: Tokens live this long; the connection is renewed (new token) after half of it.
TOKEN_TTL = 3600.0
SUBJECT = "mqtt-bridge"


def api_url(config) -> tuple[str, ssl.SSLContext | None]:
    """The gateway's WebSocket URL as seen from this host, and the TLS context to reach it."""
    host = config.server.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    if not config.server.tls.cert_file:
        return f"ws://{host}:{config.server.port}/ws", None
    # Our own gateway: trust exactly its certificate, whatever name it carries.
    context = ssl.create_default_context(cafile=config.server.tls.cert_file)
    context.check_hostname = False
    return f"wss://{host}:{config.server.port}/ws", context


class ServiceApi:
    def __init__(self, url: str, token: Callable[[], str], tls: ssl.SSLContext | None = None, timeout: float = 10.0):
        self.url, self.tls, self.timeout = url, tls, timeout
        self._token = token
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._opened = 0.0
        self._reader: asyncio.Task | None = None
        self._waiting: dict[int, tuple[ClientConnection, asyncio.Future]] = {}
        self._lock = asyncio.Lock()

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """The result of one call; raises :class:`RpcError` (the service's, or -32011 when unreachable)."""
        timeout = self.timeout if timeout is None else timeout
        try:
            ws = await asyncio.wait_for(self._connection(), timeout)
            return await self._call(ws, method, params, timeout)
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
            reason = "no answer in time" if isinstance(exc, asyncio.TimeoutError) else f"service unreachable: {exc}"
            raise RpcError(SERVICE_BUSY, data={"reason": reason}) from None

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()

    async def _connection(self) -> ClientConnection:
        async with self._lock:
            if self._ws is not None and time.monotonic() - self._opened > TOKEN_TTL / 2:
                await self._ws.close()  # renew the token before it expires
                self._ws = None
            if self._ws is None:
                ws = await connect(self.url, ssl=self.tls, max_size=None, open_timeout=self.timeout)
                self._reader = asyncio.ensure_future(self._read(ws))
                try:
                    await self._call(ws, "authenticate", {"auth_token": self._token()}, self.timeout)
                except BaseException:
                    await ws.close()
                    raise
                self._ws, self._opened = ws, time.monotonic()
            return self._ws

    async def _call(self, ws: ClientConnection, method: str, params: dict[str, Any] | None, timeout: float) -> Any:
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (ws, future)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            message["params"] = params
        try:
            await ws.send(json.dumps(message))
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(request_id, None)
        if "error" in reply:
            raise RpcError.from_dict(reply["error"])
        return reply.get("result")

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                try:
                    message = json.loads(text)
                except ValueError:
                    continue
                if not isinstance(message, dict) or "id" not in message:
                    continue  # notifications: the bridge hears events on the bus
                waiting = self._waiting.get(message["id"]) if isinstance(message["id"], int) else None
                if waiting is not None and not waiting[1].done():
                    waiting[1].set_result(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            for owner, future in list(self._waiting.values()):
                if owner is ws and not future.done():
                    future.set_exception(ConnectionError("connection to the service closed"))
