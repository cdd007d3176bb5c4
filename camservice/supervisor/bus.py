"""The event bus of one generation: an XSUB/XPUB proxy in a thread of the supervisor.

Publishers (workers, gateways, the supervisor) connect to ``events_in``,
subscribers to ``events_out``. ``zmq.proxy_steerable`` forwards in C without
holding the GIL; the steering socket lets :meth:`Bus.close` end it cleanly
(a generation that was drained or rolled back takes its bus with it).

Why the bus stays in the supervisor (issue 11 §2): every child gets SIGTERM
from the kernel when the supervisor dies (PDEATHSIG), so a bus that outlived
the supervisor would have nobody left to carry events for; what clients
missed was being *told*, which the gateways now do (``server_restarting``,
then close 1012). Binding a bus in each gateway instead would make every
worker publish to and subscribe from every gateway, and every subscriber
de-duplicate events by source and sequence: more sockets and more code for
no gain in the failure that matters.
"""

from __future__ import annotations

import itertools
import threading

import zmq

from camservice import comms

_ids = itertools.count()


class Bus:
    def __init__(self, ctx: zmq.Context, endpoints: comms.Endpoints):
        self.ctx = ctx
        self.endpoints = endpoints
        self._control = f"inproc://bus-steer-{next(_ids)}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="event-bus", daemon=True)
        self._steer: zmq.Socket | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)
        if self._error is not None:
            raise self._error
        self._steer = self.ctx.socket(zmq.PAIR)
        self._steer.setsockopt(zmq.LINGER, 0)
        self._steer.connect(self._control)

    def _run(self) -> None:
        sockets = []
        try:
            xsub = self.ctx.socket(zmq.XSUB)
            xpub = self.ctx.socket(zmq.XPUB)
            steer = self.ctx.socket(zmq.PAIR)
            sockets = [xsub, xpub, steer]
            for sock in (xsub, xpub):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, comms.HIGH_WATER_MARK)
                sock.setsockopt(zmq.RCVHWM, comms.HIGH_WATER_MARK)
            xsub.bind(self.endpoints.events_in)
            xpub.bind(self.endpoints.events_out)
            steer.bind(self._control)
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
            self._ready.set()
            for sock in sockets:
                sock.close(linger=0)
            return
        self._ready.set()
        try:
            zmq.proxy_steerable(xsub, xpub, None, steer)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in sockets:
                sock.close(linger=0)

    def close(self) -> None:
        if self._steer is not None:
            try:
                self._steer.send(b"TERMINATE")
            except zmq.ZMQError:
                pass
            self._thread.join(2.0)
            self._steer.close(linger=0)
            self._steer = None
