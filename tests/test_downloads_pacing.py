"""Download pacing and bulk sending: the pacer as pure arithmetic, the bulk
sender over real sockets, and a real server sharing one budget among
parallel downloads."""

from __future__ import annotations

import asyncio
import http.client
import os
import select
import shutil
import socket
import ssl
import threading
import time

import pytest
from camservice.workers.files import bulk
from camservice.workers.files.bulk import CHUNK_BYTES, BulkSenders, Stalled, send_body
from camservice.workers.files.downloads import BUDGET_SLACK, DownloadServer
from camservice.workers.files.pacing import Pacer, SharedPacer, wait_for

MIB = 1 << 20


# --- the pacer, time passed in -----------------------------------------------------------------


def test_one_download_never_runs_ahead_of_its_rate():
    pacer = Pacer(1000)
    now, sent = 0.0, 0
    for _ in range(50):
        sent += 100
        now += pacer.charge(now, 100)  # the sender waits what it is told, and takes no time itself
        assert sent / now <= 1000 * (1 + 1e-9)  # float rounding only
    assert sent / now == pytest.approx(1000)


def test_a_pause_earns_no_burst_beyond_the_slack():
    pacer = Pacer(1000, slack=0.01)
    assert pacer.charge(0.0, 10) == 0.0  # within the slack: no wait
    # An idle minute: only 10 ms' worth (10 bytes) may go without waiting, not 60,000.
    assert pacer.charge(60.0, 10) == 0.0
    assert pacer.charge(60.0, 1000) == pytest.approx(1.0, abs=0.02)


def test_a_shared_budget_is_shared_out_in_turn():
    """Four senders, each sending a chunk and then waiting what the shared pacer says:
    together they take the budget, and each about a quarter of it."""
    budget, chunk = 1_000_000, 10_000
    pacer = Pacer(budget)
    ready = [0.0] * 4  # when each sender may send next
    sent = [0] * 4
    now = 0.0
    while now < 10.0:
        who = min(range(4), key=lambda i: ready[i])
        now = ready[who]
        sent[who] += chunk
        ready[who] = now + pacer.charge(now, chunk)
    assert sum(sent) / now == pytest.approx(budget, rel=0.01)
    assert max(sent) - min(sent) <= chunk


def test_each_download_waits_for_the_stricter_of_its_own_limit_and_the_budget():
    own, shared = Pacer(100), Pacer(1000)
    assert wait_for((own, shared), 0.0, 100) == pytest.approx(1.0)  # its own limit
    assert wait_for((), 0.0, 100) == 0.0
    busy = Pacer(1000)
    busy.charge(0.0, 5000)  # others used the budget for the next 5 s
    assert wait_for((Pacer(100), busy), 0.0, 100) == pytest.approx(5.1)


def test_rates_must_be_positive():
    with pytest.raises(ValueError):
        Pacer(0)
    with pytest.raises(ValueError):
        Pacer(10, slack=-1)


def test_a_shared_pacer_counts_every_threads_bytes():
    pacer = SharedPacer(1e9)
    threads = [threading.Thread(target=lambda: [pacer.charge(0.0, 1) for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert pacer.due == pytest.approx(4000 / 1e9)


# --- the bulk sender over a real socket pair ---------------------------------------------------


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "body.bin"
    path.write_bytes(os.urandom(64 * 1024) * 64)  # 4 MiB
    with open(path, "rb", buffering=0) as handle:
        yield handle, path.read_bytes()


def reader(sock: socket.socket, into: bytearray, done: threading.Event) -> threading.Thread:
    def run():
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            into.extend(data)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_send_body_sends_the_range_whole_and_paces_it(data_file):
    handle, body = data_file
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got, done = bytearray(), threading.Event()
    reader(theirs, got, done)
    clock = [0.0]
    pauses: list[float] = []

    def pause(seconds):  # a fake clock: waiting moves it on, sending takes no time
        pauses.append(seconds)
        clock[0] += seconds

    rate = 2 * MIB
    sent = send_body(
        ours.fileno(), handle.fileno(), 1000, len(body) - 1000, chunk=CHUNK_BYTES, pacers=(Pacer(rate),),
        stall_timeout=30, cancel=threading.Event(), clock=lambda: clock[0], pause=pause,
    )  # fmt: skip
    ours.close()
    assert done.wait(30)
    assert sent == len(body) - 1000 and bytes(got) == body[1000:]
    assert sum(pauses) == pytest.approx((len(body) - 1000) / rate)


def test_send_body_unpaced_never_waits(data_file):
    handle, body = data_file
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got, done = bytearray(), threading.Event()
    reader(theirs, got, done)
    pauses: list[float] = []
    sent = send_body(
        ours.fileno(), handle.fileno(), 0, len(body), chunk=CHUNK_BYTES, pacers=(), stall_timeout=30,
        cancel=threading.Event(), pause=pauses.append,
    )  # fmt: skip
    ours.close()
    assert done.wait(30)
    assert sent == len(body) and bytes(got) == body and pauses == []


def test_a_client_that_reads_nothing_is_dropped_after_the_stall_timeout(data_file):
    handle, body = data_file
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with pytest.raises(Stalled):
        send_body(
            ours.fileno(), handle.fileno(), 0, len(body), chunk=CHUNK_BYTES, pacers=(), stall_timeout=0.3,
            cancel=threading.Event(),
        )  # fmt: skip
    ours.close()
    theirs.close()


def test_a_cancel_stops_a_sender_blocked_on_a_full_socket(data_file, monkeypatch):
    monkeypatch.setattr(bulk, "POLL_STEP", 0.05)
    handle, body = data_file
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    cancel = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            send_body(ours.fileno(), handle.fileno(), 0, len(body), chunk=CHUNK_BYTES, pacers=(),
                      stall_timeout=600, cancel=cancel)
        )
    )  # fmt: skip
    thread.start()
    assert select.select([theirs], [], [], 30)[0]  # it is sending; nobody reads, so it soon blocks
    cancel.set()
    thread.join(30)
    assert not thread.is_alive() and result and result[0] < len(body)
    ours.close()
    theirs.close()


@pytest.mark.parametrize(
    "priority, policy", [("normal", os.SCHED_OTHER), ("low", os.SCHED_BATCH), ("idle", os.SCHED_IDLE)]
)
def test_bulk_threads_run_at_the_configured_priority_and_only_they(priority, policy):
    senders = BulkSenders(2, priority)
    try:
        assert senders._pool.submit(os.sched_getscheduler, 0).result(30) == policy
        nice = senders._pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result(30)
        assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + (10 if priority == "low" else 0))
    finally:
        senders.shutdown()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is untouched
    with pytest.raises(ValueError):
        BulkSenders(2, "realtime")


def test_the_bulk_thread_closes_its_own_descriptors(data_file):
    handle, body = data_file
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got, done = bytearray(), threading.Event()
    reader(theirs, got, done)
    before = len(os.listdir("/proc/self/fd"))
    senders = BulkSenders(2)
    try:
        future = senders.submit(
            ours.fileno(), handle.fileno(), 0, len(body), chunk=CHUNK_BYTES, pacers=(), stall_timeout=30,
            cancel=threading.Event(),
        )  # fmt: skip
        assert future.result(30) == len(body)
    finally:
        senders.shutdown()
    assert len(os.listdir("/proc/self/fd")) == before
    ours.close()  # the socket stayed ours: the thread closed only its duplicate
    assert done.wait(30) and bytes(got) == body


# --- a real server: one budget for every download ----------------------------------------------


@pytest.fixture
def recordings(tmp_path):
    rec, snap = tmp_path / "recordings", tmp_path / "snapshots"
    rec.mkdir()
    snap.mkdir()
    body = os.urandom(64 * 1024) * 32  # 2 MiB
    for i in range(4):
        (rec / f"clip{i}.mp4").write_bytes(body)
    return {"recording": rec, "snapshot": snap}, body


def fetch(port: int, name: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=context)
    try:
        conn.request("GET", f"/files/recordings/{name}")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_parallel_downloads_share_one_budget(recordings, monkeypatch):
    """Four 2 MiB downloads at once under an 8 MiB/s budget: each arrives whole, every
    byte was charged to the one shared pacer, and together they cannot have taken
    less than the budget allows (a lower bound only: a loaded machine is slower, never faster)."""
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 256 * 1024)  # so that the four first chunks are not the whole files
    folders, body = recordings
    budget = 8 * MIB
    srv = DownloadServer(folders, "127.0.0.1", 0, budget=budget, priority="low")
    srv.start()
    try:
        began = time.monotonic()
        results: dict[int, tuple[int, bytes]] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fetch(srv.port, f"clip{i}.mp4"))) for i in range(4)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - began
    finally:
        srv.stop()
        # A sender charges a chunk after sendfile returned, so the client can
        # have every byte before the last charge: wait for the senders.
        srv.bulk.shutdown(wait=True)
    assert all(results[i] == (200, body) for i in range(4))
    total = 4 * len(body)
    # The shared clock moved on by every byte of all four downloads.
    assert srv.budget is not None and srv.budget.due - began >= total / budget - BUDGET_SLACK
    # Per-download pacing would have let the four finish in a quarter of this.
    # What may go unpaced: each sender's chunk in flight (charged after it is sent), and the
    # slack twice: the clock starts `slack` behind the first charge, and a sender waits only
    # until `slack` before its due time (Pacer.charge). A fresh run missed the one-slack bound by 2 ms.
    burst = 4 * bulk.CHUNK_BYTES + 2 * BUDGET_SLACK * budget
    assert elapsed >= (total - burst) / budget


def test_no_budget_and_no_limit_mean_no_pacing(recordings):
    folders, body = recordings
    srv = DownloadServer(folders, "127.0.0.1", 0)
    srv.start()
    try:
        assert srv.budget is None
        assert fetch(srv.port, "clip0.mp4") == (200, body)
    finally:
        srv.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_downloads_are_paced_on_the_loop(recordings, tmp_path):
    """Over TLS the body goes through asyncio's loop.sendfile (it must be encrypted),
    paced by the same pacers: the waits fill the time the transfer did not take."""
    from tests.test_api_downloads import make_certificate

    folders, body = recordings
    cert, key = make_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    rate = 2 * len(body)  # two files' worth per second
    srv = DownloadServer(folders, "127.0.0.1", 0, ssl_context=server_context, rate_limit=rate)
    slept: list[float] = []

    async def record(seconds):
        slept.append(seconds)
        await asyncio.sleep(seconds)

    srv._sleep = record
    srv.start()
    try:
        client = ssl.create_default_context(cafile=cert)
        assert fetch(srv.port, "clip1.mp4", client) == (200, body)
    finally:
        srv.stop()
    assert slept and sum(slept) <= len(body) / rate


def test_the_service_budget_is_divided_among_the_file_workers(tmp_path):
    from camservice.workers.files.worker import FilesWorker

    from tests.test_files_support import make_config

    config = make_config(tmp_path, **{"files.download_budget": 900, "workers.files": 3})
    worker = FilesWorker(config, 0)
    assert worker.http.budget is not None and worker.http.budget.rate == 300
    assert worker.http.priority == "low"  # the default
    unpaced = FilesWorker(make_config(tmp_path / "b", **{"files.download_budget": 0}), 0)
    assert unpaced.http.budget is None
