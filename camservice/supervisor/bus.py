"""The event bus of one generation: an XSUB/XPUB proxy in a small process of its own (role ``bus``).

Publishers (workers, gateways, the supervisor) connect to ``events_in``,
subscribers to ``events_out``. ``zmq.proxy_steerable`` forwards in C without
holding the GIL, in a thread of this process; the steering socket lets
:meth:`Bus.close` end it cleanly on SIGTERM.

Why a process and not a thread of the supervisor (issue 16): the supervisor
re-executes itself in place (:mod:`.reexec`), and a bus inside it went down
for the exec (about half a second), losing every event published meanwhile
(a ``recording_status_update`` never reached its clients). As a child it is
started and watched like the others (:class:`~.watcher.Watcher`: restarted on
a crash with backoff), adopted by pid across a re-exec, and stopped last, after
the generation's gateways and workers, so their final events get through.
It keeps the generation's endpoints (:meth:`camservice.comms.Endpoints.from_config`):
nobody else changes. The supervisor checks it end to end: it publishes a
:data:`~camservice.topics.BUS_PROBE` through each bus and hears it back (the
bus's heartbeat, and its readiness before the generation's other processes
start, see :meth:`~.arbiter.Arbiter.open`).

Why not one bus for the whole service, or one per gateway (issue 11 §2):
every child gets SIGTERM from the kernel when the supervisor dies
(PDEATHSIG), this one included, so a bus never outlives its supervisor; and
a bus in each gateway would make every worker publish to and subscribe from
every gateway, and every subscriber de-duplicate events.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading

import structlog
import zmq

from camservice import comms, process, runtime

_ids = itertools.count()
#: Seconds between the bus process's checks that its parent still lives (PDEATHSIG's safety net).
PARENT_CHECK = 1.0

log = structlog.get_logger("bus")


class Bus:
    """The XSUB/XPUB proxy in a thread; :meth:`start` returns once both ends are bound (or raises)."""

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


def main(index: int) -> None:
    """The ``bus`` role's process (``camservice.process``): forward until SIGTERM or the supervisor is gone."""
    config = runtime.boot(f"bus-{index}", f"camservice: bus {index}")
    endpoints = comms.Endpoints.from_config(config)
    parent = os.getppid()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctx = zmq.Context()
    bus = Bus(ctx, endpoints)
    bus.start()
    log.info("bus_started", pid=os.getpid(), events_in=endpoints.events_in, events_out=endpoints.events_out)
    while not stop.wait(PARENT_CHECK):
        if not process.parent_alive(parent):
            log.warning("bus_parent_gone")
            break
    bus.close()
    ctx.term()
    log.info("bus_stopped", pid=os.getpid())
