"""The supervisor's control socket: JSON requests on a ZeroMQ ROUTER.

``camservice status``, ``stop``, ``reload`` and the gateways' ``hello`` ask
here (the client side is :mod:`camservice.control`). A request is
``[identity, b"", json]`` naming a ``command``; the answer goes back to that
identity as JSON, at once or later through the ``reply`` callable (a reload
answers when it is done). What the commands mean is the arbiter's business
(:meth:`~camservice.supervisor.arbiter.Arbiter.command`); this module only
carries them, reading through the one edge-triggered drain
(:class:`camservice.drain.Drain`).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

import zmq

from camservice import comms
from camservice.drain import Drain

#: ``command(name, request, reply)``: an answer now, or None when ``reply`` will be called later.
Commands = Callable[[str | None, dict[str, Any], Callable[[dict[str, Any]], None]], dict[str, Any] | None]


class ControlSocket:
    """A bound ROUTER whose requests go to ``command`` and whose answers go back to their sender."""

    def __init__(self, ctx: zmq.Context, endpoint: str, command: Commands):
        self.sock = comms.router(ctx)
        self.sock.bind(endpoint)
        self._command = command
        self._reader = Drain(self.sock, self._on_request, multipart=True, name="control")

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._reader.start(loop)

    def drain(self) -> None:
        """Answer whatever waits (belt and braces next to the reader: see :mod:`camservice.drain`)."""
        self._reader.drain()

    def close(self, linger: int = 0) -> None:
        """Stop reading and close; ``linger`` (ms) lets answers already sent leave first."""
        self._reader.stop()
        self.sock.close(linger=linger)

    def answer(self, identity: bytes, answer: dict[str, Any]) -> None:
        try:
            self.sock.send_multipart((identity, b"", json.dumps(answer).encode()), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        self._reader.after_send()

    def _on_request(self, frames: list[bytes]) -> None:
        """One request: ``[identity, b"", json]``; anything else is dropped, a bad body is an unknown command."""
        try:
            identity, _empty, payload = frames
        except ValueError:
            return
        try:
            request = json.loads(payload)
            command = request.get("command")
        except (ValueError, AttributeError):
            request, command = {}, None
        answer = self._command(command, request, functools.partial(self.answer, identity))
        if answer is not None:
            self.answer(identity, answer)
