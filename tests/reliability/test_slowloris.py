"""Issue 11 §3: slowloris against the download ports must not block legitimate downloads.

Reproduction: 200 connections send a request head one byte at a time (the
old download server let 2,000 of them hold every slot: 1 of 20 legitimate
downloads got through). Half come from one address (past the per-address
cap, the next ones are answered 503 with Retry-After at once), half from 100
different loopback addresses; all are dropped at the header timeout. (The
bound on the total, where the oldest make room, is tested with a clock in
tests/test_connlimits.py.)
Meanwhile 20 legitimate downloads run, through the API port (handed to a
file worker) and through the optional file port, and all must succeed.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from tests.harness import Service

pytestmark = pytest.mark.slow

BODY = os.urandom(200_000)
SLOW_FROM_ONE = 100
SLOW_SPREAD = 100
LEGIT = 20
LEGIT_PARALLEL = 4


@pytest.fixture(scope="module")
def svc():
    settings = {"server.header_timeout": 3.0, "server.max_pending": 150, "server.max_pending_per_address": 8}
    with Service(simulate=0, **settings) as service:
        (service.state_dir / "recordings" / "clip.mp4").write_bytes(BODY)
        service.files_port = yaml.safe_load(service.config_path.read_text())["files"]["http_port"]
        yield service


class Slow:
    """One slowloris connection: a request line, then a header byte every ``interval`` seconds."""

    def __init__(self, port: int, source: str):
        self.port, self.source = port, source
        self.answer = b""
        self.started = asyncio.Event()  # connected (or refused at connect)
        self.closed = asyncio.Event()

    async def run(self, stop: asyncio.Event, delay: float, interval: float = 0.2) -> None:
        await asyncio.sleep(delay)  # arrivals spread over time, as an attack ramps up
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(self.source, 0))
        except OSError:
            self.started.set()
            self.closed.set()
            return
        self.started.set()
        reading = asyncio.ensure_future(reader.read(4096))
        try:
            writer.write(b"GET /files/recordings/clip.mp4 HTTP/1.1\r\nHost: x\r\n")
            for byte in b"X-Slow: " + b"a" * 10_000:
                done, _ = await asyncio.wait({reading}, timeout=interval)
                if done or stop.is_set():
                    break
                writer.write(bytes([byte]))
            if reading.done():
                self.answer = reading.result() if not reading.exception() else b""
                self.closed.set()
        except (ConnectionError, OSError):
            self.closed.set()
        finally:
            reading.cancel()
            writer.close()


def download(url: str, token: str) -> bool:
    try:
        response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    except requests.RequestException:
        return False
    return response.status_code == 200 and response.content == BODY


@pytest.mark.parametrize("port_name", ["api", "files"])
def test_slow_senders_do_not_block_downloads(svc, port_name):
    token = svc.token("viewer")
    config_port = svc.port if port_name == "api" else svc.files_port
    url = f"http://127.0.0.1:{config_port}/files/recordings/clip.mp4"

    async def scenario():
        stop = asyncio.Event()
        slow = [Slow(config_port, "127.0.0.2") for _ in range(SLOW_FROM_ONE)]
        slow += [Slow(config_port, f"127.0.1.{n + 1}") for n in range(SLOW_SPREAD)]
        tasks = [asyncio.ensure_future(s.run(stop, delay=0.02 * (n % 100))) for n, s in enumerate(slow)]
        await asyncio.wait_for(asyncio.gather(*(s.started.wait() for s in slow)), 30)
        loop = asyncio.get_running_loop()
        # Like browsers: a few connections at a time, one download after another on each.
        with ThreadPoolExecutor(LEGIT_PARALLEL) as pool:
            results = await asyncio.gather(*(loop.run_in_executor(pool, download, url, token) for _ in range(LEGIT)))
        # Every slow connection is eventually answered or dropped, none is served.
        await asyncio.wait_for(asyncio.gather(*(s.closed.wait() for s in slow)), 60)
        stop.set()
        await asyncio.gather(*tasks)
        return results, slow

    results, slow = asyncio.run(scenario())
    assert all(results), f"{results.count(False)} of {LEGIT} legitimate downloads failed"
    refused = [s for s in slow[:SLOW_FROM_ONE] if s.answer.startswith(b"HTTP/1.1 503")]
    assert refused and all(b"Retry-After:" in s.answer for s in refused)
    assert not any(BODY[:100] in s.answer for s in slow)
