"""Download bodies sent by threads of their own, at a lower scheduling class.

Measured on the 2-core test machine (README, "Downloads"; bench/api_download.py),
four loopback downloads at memory speed cost the file worker most of a core,
and half of that was asyncio's ``loop.sendfile`` machinery around each
512 KiB chunk (a future, a timeout task, four ``epoll_ctl`` and a wake-up
per chunk), all on the thread that also answers request heads. So the body
of a plain (non-TLS) download goes to a thread from :class:`BulkSenders`,
which loops on ``os.sendfile`` itself: ``poll`` for room only when the
socket is full, ``sleep`` only when pacing says so (:mod:`.pacing`). The
system call releases the GIL; the Python between two calls is a few lines.

The cost of ``sendfile`` (and, over loopback, of the receiver's TCP work,
which the kernel runs in the sender's context) lands in the thread that
calls it. That thread runs at ``files.download_priority``: ``normal``;
``low`` (``SCHED_BATCH``, never preempting on waking, at nice 10: about a
tenth of a core's share against a normal thread wanting it too); or
``idle`` (``SCHED_IDLE``: only what nothing else wants; but a bulk thread
preempted while it holds the GIL then holds up the worker's other threads
until the core is free, so it is not the default). API calls and recordings
win the cores; bulk bytes take what is left. The thread
works on duplicates of the socket and file descriptors, which it closes
itself: a connection closed under it can never make it write into a
reused descriptor number.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .pacing import Pacer, wait_for

#: Bytes per ``sendfile`` call at most, and per pacing step: at 500 MB/s one
#: wake-up per 4 ms. Measured against 512 KiB (four 500 MB/s downloads), the
#: file worker's CPU per GB fell from 0.23 to 0.17 s and its context
#: switches per GB from 3,500 to 930. A client must make room for more
#: within ``stall_timeout`` or it is dropped.
CHUNK_BYTES = 2 * 1024 * 1024

#: ``files.download_priority`` -> (scheduling policy, nice) of a bulk thread.
PRIORITIES: dict[str, tuple[int, int]] = {
    "normal": (os.SCHED_OTHER, 0),
    "low": (os.SCHED_BATCH, 10),
    "idle": (os.SCHED_IDLE, 0),
}
#: Longest single ``poll``: how soon a sender sees a cancel while the client is not reading.
POLL_STEP = 0.25


class Stalled(TimeoutError):
    """The client took nothing for ``stall_timeout`` seconds."""


def lower_priority(priority: str) -> None:
    """Put the calling thread (only it: Linux schedules threads) into ``priority``'s class."""
    policy, nice = PRIORITIES[priority]
    if policy != os.SCHED_OTHER:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    if nice:  # per thread on Linux (0: the calling thread)
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)


def send_body(
    sock_fd: int,
    file_fd: int,
    offset: int,
    length: int,
    *,
    chunk: int,
    pacers: tuple[Pacer, ...],
    stall_timeout: float,
    cancel: threading.Event,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], object] | None = None,
) -> int:
    """Send ``length`` bytes of ``file_fd`` from ``offset`` into the non-blocking ``sock_fd``; bytes sent.

    Blocking: runs on a bulk thread. Fewer bytes than ``length`` means the
    file ended early or ``cancel`` was set; a client that takes nothing for
    ``stall_timeout`` raises :class:`Stalled`; a client gone raises
    ``OSError`` (``EPIPE``, ``ECONNRESET``). ``clock`` and ``pause`` (default:
    ``cancel.wait``, so a cancel cuts a pacing wait short) are for tests.
    """
    pause = pause or cancel.wait
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    sent = 0
    while sent < length and not cancel.is_set():
        try:
            count = os.sendfile(sock_fd, file_fd, offset + sent, min(chunk, length - sent))
        except BlockingIOError:
            deadline = clock() + stall_timeout
            while not poller.poll(1000 * min(POLL_STEP, max(0.0, deadline - clock()))):
                if cancel.is_set():
                    return sent
                if clock() >= deadline:
                    raise Stalled(f"no room in the socket for {stall_timeout} s") from None
            continue
        if count == 0:
            break  # the file is shorter than it was
        sent += count
        if pacers:
            wait = wait_for(pacers, clock(), count)
            if wait > 0:
                pause(wait)
    return sent


class BulkSenders:
    """Threads that send download bodies, created as needed, at ``priority``."""

    def __init__(self, max_threads: int, priority: str = "normal"):
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
        self.priority = priority
        self._pool = ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix="files-bulk", initializer=lower_priority, initargs=(priority,)
        )

    def submit(self, sock_fd: int, file_fd: int, offset: int, length: int, **kwargs) -> Future:
        """Send on a bulk thread, on duplicates of both descriptors (closed when done)."""
        own_sock, own_file = os.dup(sock_fd), os.dup(file_fd)

        def run() -> int:
            try:
                return send_body(own_sock, own_file, offset, length, **kwargs)
            finally:
                os.close(own_sock)
                os.close(own_file)

        def closed_if_never_run(future: Future) -> None:
            if future.cancelled():  # cancelled while queued: run() never owned them
                os.close(own_sock)
                os.close(own_file)

        try:
            future = self._pool.submit(run)
        except RuntimeError:  # shut down: the server is stopping
            os.close(own_sock)
            os.close(own_file)
            raise
        future.add_done_callback(closed_if_never_run)
        return future

    async def send(
        self, writer, file, offset: int, length: int, pacers: tuple[Pacer, ...], stall_timeout: float
    ) -> int:
        """Send a body of a plain (non-TLS) connection on a bulk thread; bytes sent. Awaitable."""
        transport = writer.transport
        # The head must be on the wire before the thread writes behind the
        # transport's back: a write-buffer limit of 0 makes drain() wait until it is.
        transport.set_write_buffer_limits(0)
        await asyncio.wait_for(writer.drain(), stall_timeout)
        cancel = threading.Event()
        future = self.submit(
            transport.get_extra_info("socket").fileno(),
            file.fileno(),
            offset,
            length,
            chunk=CHUNK_BYTES,
            pacers=pacers,
            stall_timeout=stall_timeout,
            cancel=cancel,
        )
        try:
            return await asyncio.wrap_future(future)  # Stalled is a TimeoutError
        finally:
            cancel.set()  # a cancelled download (server stopping) stops its thread too

    def shutdown(self, wait: bool = False) -> None:
        """No new sends; running ones end at their next check of ``cancel`` (the caller sets it).

        ``wait``: return only once every thread is done (it charged its last
        chunk to the pacers after the client had the bytes).
        """
        self._pool.shutdown(wait=wait, cancel_futures=True)


async def send_on_loop(
    writer,
    file,
    offset: int,
    length: int,
    pacers: tuple[Pacer, ...],
    stall_timeout: float,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> int:
    """Over TLS asyncio reads the file and encrypts on the loop's thread, chunk by chunk; bytes sent."""
    loop = asyncio.get_running_loop()
    sent = 0
    while sent < length:
        count = min(CHUNK_BYTES, length - sent)
        done = await asyncio.wait_for(loop.sendfile(writer.transport, file, offset + sent, count), stall_timeout)
        if done == 0:
            break
        sent += done
        wait = wait_for(pacers, time.monotonic(), done)
        if wait > 0:
            await sleep(wait)
    return sent
