"""``/files/...`` on the API port: the gateway hands each download to a file worker.

The gateway's event loop never copies a file's bytes (README, "Downloads"):

* **plain HTTP**: the connection's socket itself goes to a file worker
  (:mod:`camservice.handoff`, ``SCM_RIGHTS``) with the request head and
  anything read after it; the worker parses, checks credentials, and sends
  the file with ``sendfile`` straight into the client's TCP connection. The
  gateway lets go of the connection at once (keep-alive requests that
  follow are the worker's; one for a path outside ``/files/`` is closed
  unanswered, and clients send it again on a new connection).
* **TLS**: the encryption state lives in this process, so the socket cannot
  move. The worker gets one end of a Unix socketpair instead, and answers
  exactly as above (``sendfile`` into the socketpair); the gateway relays
  the other end through its TLS transport, so it encrypts but never reads
  files, parses ranges or holds a file open.

Everything about the file (path safety, credentials, conditions, ranges) is
decided by the worker, in one place for both ways and for the optional
``files.http_port``. The gateway itself answers only CORS preflights.
"""

from __future__ import annotations

import socket

from camservice import handoff
from camservice.cors import CorsPolicy

from .routes import HANDED_OFF, HttpRequest, HttpResponse, RouteTable


class Downloads:
    def __init__(self, sender: handoff.Sender, cors: CorsPolicy):
        self.sender = sender
        self.cors = cors
        self.handed_off = 0
        self.refused = 0

    def register(self, routes: RouteTable) -> None:
        # Every /files/ path goes to the worker, malformed ones included, so
        # that the API port answers a traversal attempt exactly as the worker does.
        routes.add(("GET", "HEAD"), "/files/{path*}", self.download)
        routes.add("OPTIONS", "/files/{path*}", self.options)

    def options(self, request: HttpRequest) -> HttpResponse:
        if self.cors.is_preflight(request.method, request.headers):
            status, headers = self.cors.preflight(request.headers)
            return HttpResponse(status, headers)
        return HttpResponse(204, {"Allow": "GET, HEAD, OPTIONS"})

    def download(self, request: HttpRequest):
        message = handoff.pack(request.raw, request.peer, request.scheme)
        connection = request.connection
        if request.scheme == "http":
            if connection.take_socket(lambda fd: self.sender.send(fd, message)):
                self.handed_off += 1
                return HANDED_OFF
            return self._unavailable()
        outer, inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sent = self.sender.send(inner.fileno(), message)
        finally:
            inner.close()  # the worker holds its own copy now (or nobody does)
        if not sent:
            outer.close()
            return self._unavailable()
        outer.setblocking(False)
        self.handed_off += 1
        return self._relay(connection, outer)

    async def _relay(self, connection, outer: socket.socket):
        await connection.relay(outer)
        return HANDED_OFF

    def _unavailable(self) -> HttpResponse:
        self.refused += 1
        return HttpResponse.text(503, "no file worker is available\n", {"Retry-After": "1"})
