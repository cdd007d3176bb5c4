"""Download throughput of a 1 GB recording, and get_camera_status latency meanwhile.

Puts a --size-mb file (default 1024 MiB) named like a recording into a
recordings folder (a temporary one, or --files-dir, kept and reused when the
file is already there with the right size). --fill says how its bytes get
there:

* ``write`` (default): written once with 8 MiB blocks of zeros and fsynced:
  real data blocks on disk (and, after writing, in the page cache);
* ``fallocate``: ``os.posix_fallocate``: blocks reserved on disk (unwritten
  extents, read back as zeros without disk reads);
* ``truncate``: ``os.ftruncate``: a sparse file, no blocks at all.

The JSON reports the choice and the allocated bytes (st_blocks * 512).

Then it starts the service on that folder and runs three phases of
--duration seconds (default 10) with --status-clients connections (default
100, one client process) calling ``get_camera_status`` paced every
--status-interval seconds each (default 0.1 s: 1,000 req/s in all):

1. ``unloaded``: status clients alone;
2. ``download``: meanwhile ONE client (its own process) downloads the file
   over and over at full speed: ``GET http://HOST:PORT/files/recordings/NAME``
   on the gateway with ``Authorization: Bearer <viewer JWT>`` (the gateway
   hands the connection to a file worker), reads the body with ``recv_into`` into
   one fixed 1 MiB buffer, checks the byte count against Content-Length.
   The download still running when the phase ends is cut off; its bytes
   count towards the rate;
3. ``unloaded_after``: alone again.

Prints one JSON line per phase and a summary: download MB/s (MB = 10^6
bytes; also MiB/s), per complete download seconds, and
status P50/P95/P99 during the download vs unloaded, with per-process CPU in
the download phase.

Examples:
    python -m bench.download
    python -m bench.download --size-mb 256 --duration 5 --fill fallocate
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from array import array
from pathlib import Path
from urllib.parse import urlsplit

from . import (
    common,
    isolation,  # StatusProbe, phase rows
    scaling,  # service start, CPU sampler, index wait
)

NAME = "camera0_2026-01-01_00-00-00_BENCH1.mp4"
BLOCK = 8 << 20


# ------------------------------------------------------------------ the file


def make_file(path: Path, size: int, fill: str) -> dict:
    started = time.monotonic()
    reused = path.exists() and path.stat().st_size == size
    if not reused:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if fill == "write":
                zeros = bytes(BLOCK)
                left = size
                while left:
                    left -= os.write(fd, zeros[: min(BLOCK, left)])
            elif fill == "fallocate":
                os.posix_fallocate(fd, 0, size)
            else:
                os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
    st = path.stat()
    return {
        "file": str(path),
        "size_bytes": st.st_size,
        "fill": fill if not reused else f"{fill} (reused)",
        "allocated_bytes": st.st_blocks * 512,
        "prepare_s": round(time.monotonic() - started, 2),
    }


# ------------------------------------------------------------------ the downloader


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, rest


def get(host: str, port: int, path: str, token: str, buf: memoryview, deadline: float, rate: float = 0.0):
    """One GET; returns (status, headers, body bytes read, complete).

    rate > 0 (bytes/s) paces the reads (TCP flow control then slows the
    server's sendfile): an experiment, not what a full-speed client does.
    """
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Connection: close\r\n\r\n".encode()
        )
        status, headers, rest = read_head(sock)
        if status != 200:
            return status, headers, 0, True
        length = int(headers["content-length"])
        got = len(rest)
        t_body = time.monotonic()
        while got < length:
            if rate and (ahead := got / rate - (time.monotonic() - t_body)) > 0:
                time.sleep(ahead)
            n = sock.recv_into(buf)
            if n == 0:
                raise ConnectionError(f"body cut short at {got} of {length} bytes")
            got += n
            if time.monotonic() >= deadline:
                return status, headers, got, False
        return status, headers, got, True


def download_loop(url: str, token: str, duration: float, once: bool = False, rate: float = 0.0) -> dict:
    """Download `url` from the API port (which serves it, no redirect) again and again for `duration` s (or once)."""
    buf = memoryview(bytearray(1 << 20))
    parts = urlsplit(url)
    started = time.monotonic()
    deadline = started + duration
    total, complete, errors = 0, [], []
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        status, headers, got, done = get(parts.hostname, parts.port, parts.path, token, buf, deadline, rate)
        if status != 200:
            errors.append(f"API port answered {status}")
            break
        total += got
        if done:
            if got != int(headers["content-length"]):
                errors.append("short body")
            complete.append(time.monotonic() - t0)
        if once:
            break
    elapsed = time.monotonic() - started
    return {
        "bytes": total,
        "elapsed_s": elapsed,
        "complete_s": complete,
        "errors": errors,
        "location_port": parts.port if total else None,
    }


def _downloader_main(pipe, url: str, token: str, duration: float, nice: int = 0, rate: float = 0.0) -> None:
    if nice:
        os.nice(nice)
    common.run_child(pipe, lambda: pipe.send(("ok", download_loop(url, token, duration, rate=rate))))


# ------------------------------------------------------------------ the benchmark


def run(args) -> dict:
    keep = args.files_dir is not None
    folder = Path(args.files_dir) if keep else Path(tempfile.mkdtemp(prefix="cs-dl-"))
    folder.mkdir(parents=True, exist_ok=True)
    service = probe = None
    try:
        info = make_file(folder / NAME, args.size_mb << 20, args.fill)
        common.print_json({"bench": "download.file", **info})
        service = scaling.start_service(folder, {})
        token = service.token("viewer")
        scaling.wait_index(service, token, sum(1 for e in os.scandir(folder) if e.name.endswith(".mp4")))
        named, supervisor = service.pids(), service.supervisor_pid()
        http_url = service.url.replace("ws://", "http://").rsplit("/ws", 1)[0]
        url = f"{http_url}/files/recordings/{NAME}"
        # Warm the page cache and check the path end to end (not timed).
        warm = download_loop(url, token, 600, once=True) if args.warm else None
        if warm and warm["errors"]:
            raise RuntimeError(f"download failed: {warm['errors']}")

        probe = isolation.StatusProbe(service.url, token, args.status_clients, args.status_interval)
        time.sleep(1.0)
        probe.run("warmup", 1.0)

        def quiet(label):
            cpu0, h0, c0 = (
                common.cpu_snapshot([supervisor], tree=True),
                common.host_busy(),
                common.cpu_snapshot([probe.proc.pid]),
            )
            res = probe.run(label, args.duration)
            srv = common.cpu_delta(cpu0, common.cpu_snapshot([supervisor], tree=True))
            cli = common.cpu_delta(c0, common.cpu_snapshot([probe.proc.pid]))
            return res, round(common.host_busy() - h0 - srv - cli, 2)

        before, other_before = quiet("unloaded")
        common.print_json(isolation.phase_row("download", before, args.duration, other_before))

        ctx = multiprocessing.get_context("fork")
        parent_end, child_end = ctx.Pipe()
        downloader = ctx.Process(
            target=_downloader_main,
            daemon=True,
            args=(child_end, url, token, args.duration, args.downloader_nice, args.rate_mb_s * 1e6),
        )
        c0 = common.cpu_snapshot([probe.proc.pid])
        probe.start("download", args.duration)
        t_from = time.monotonic()
        downloader.start()
        child_end.close()
        sampler = scaling.CpuSampler(named, downloader.pid).start()
        try:
            while not parent_end.poll(0.2):
                if not downloader.is_alive():
                    raise RuntimeError("downloader died")
            kind, dl = parent_end.recv()
            t_to = time.monotonic()
            loaded = probe.result(args.duration)
        finally:
            sampler.stop()
            downloader.join(5)
            if downloader.is_alive():
                downloader.terminate()
        if kind == "fatal":
            raise RuntimeError(f"downloader failed: {dl}")
        probe_cpu = common.cpu_delta(c0, common.cpu_snapshot([probe.proc.pid]))
        cpu = sampler.percent(t_from, t_to)
        cpu["downloader"] = cpu.pop("client", None)
        cpu["status_probe"] = round(100 * probe_cpu / max(t_to - t_from, 1e-9), 1)
        cpu["other"] = round(cpu.get("other", 0.0) - cpu["status_probe"], 1)
        mb_s = dl["bytes"] / dl["elapsed_s"] / 1e6
        common.print_json(
            isolation.phase_row("download", loaded, args.duration, None, download_MB_s=round(mb_s, 1), cpu_percent=cpu)
        )

        after, other_after = quiet("unloaded_after")
        common.print_json(isolation.phase_row("download", after, args.duration, other_after))

        unloaded = array("q", before["latencies"])
        unloaded.extend(after["latencies"])
        s_un, s_dl = isolation.summary(unloaded), isolation.summary(loaded["latencies"])
        complete = sorted(dl["complete_s"])
        return {
            "bench": "download.summary",
            "size_bytes": info["size_bytes"],
            "fill": info["fill"],
            "allocated_bytes": info["allocated_bytes"],
            "download_MB_s": round(mb_s, 1),
            "download_MiB_s": round(dl["bytes"] / dl["elapsed_s"] / 2**20, 1),
            "downloaded_bytes": dl["bytes"],
            "download_window_s": round(dl["elapsed_s"], 2),
            "complete_downloads": len(complete),
            "complete_download_s": {"min": round(complete[0], 3), "max": round(complete[-1], 3)} if complete else None,
            "warm_download_s": round(warm["elapsed_s"], 3) if warm else None,
            "download_errors": dl["errors"],
            "file_server_port": dl["location_port"],
            "downloader_nice": args.downloader_nice,
            "client_rate_cap_MB_s": args.rate_mb_s or None,
            "status_clients": args.status_clients,
            "status_interval_s": args.status_interval,
            "status_unloaded": s_un,
            "status_during_download": s_dl,
            "p95_ratio": round(s_dl["p95_ms"] / s_un["p95_ms"], 2) if s_un["p95_ms"] else None,
            "targets": {"p95_ratio_below": 2.0, "download_MB_s_at_least": 200},
            "cpu_percent_download": cpu,
            "other_cpu_s_unloaded": [other_before, other_after],
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        if probe is not None:
            probe.close()
        if service is not None:
            service.cleanup()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Examples:" + __doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--size-mb", type=int, default=1024, help="file size in MiB (default 1024)")
    ap.add_argument(
        "--fill",
        choices=("write", "fallocate", "truncate"),
        default="write",
        help="how the file's bytes are made (default write: real zero blocks)",
    )
    ap.add_argument("--files-dir", default=None, help="recordings folder to use and keep (default: a temporary one)")
    ap.add_argument("--status-clients", type=int, default=100, help="get_camera_status clients (default 100)")
    ap.add_argument(
        "--status-interval",
        type=float,
        default=0.1,
        help="seconds between one status client's requests (default 0.1; 0: flat out)",
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default 10)")
    ap.add_argument(
        "--downloader-nice",
        type=int,
        default=0,
        help="nice increment of the downloading client (experiment: a client on another "
        "host takes no CPU here; default 0)",
    )
    ap.add_argument(
        "--rate-mb-s",
        type=float,
        default=0.0,
        help="pace the downloading client to this many MB/s (experiment; default 0: full speed)",
    )
    ap.add_argument(
        "--no-warm", dest="warm", action="store_false", help="skip the untimed first download that warms the page cache"
    )
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, common.on_sigterm)
    try:
        result = run(args)
    except KeyboardInterrupt:
        return 130
    common.print_json(result)
    return 0 if not result["download_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
