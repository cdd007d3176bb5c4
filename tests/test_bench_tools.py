"""Quick real runs of the bench tools against the baseline server.

No timing thresholds: these check that the tools work and report consistent
figures, not how fast this machine is.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.harness import wait_for

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402


@pytest.fixture(scope="module")
def baseline():
    port = common.free_port()
    proc = common.start_baseline(port)
    yield proc, f"ws://127.0.0.1:{port}/ws"
    proc.terminate()
    proc.wait(10)


def run_load(*args) -> dict:
    out = subprocess.run([sys.executable, str(BENCH / "load.py"), *args], capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, (out.stdout, out.stderr)
    return json.loads(lines[0])


@pytest.mark.parametrize("client", ["fast", "websockets"])
def test_load_against_baseline(baseline, client):
    proc, url = baseline
    r = run_load(
        "--url",
        url,
        "--method",
        "get_camera_status",
        "--params",
        '{"device":"camera0"}',
        "--connections",
        "4",
        "--requests",
        "800",
        "--pipeline",
        "4",
        "--processes",
        "2",
        "--warmup",
        "0.2",
        "--client",
        client,
        "--pid",
        str(proc.pid),
    )
    assert r["requests"] == 800
    assert r["errors"] == 0 and r["error_codes"] == {}
    assert (r["connections"], r["pipeline"], r["processes"]) == (4, 4, 2)
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["throughput_rps"] > 0 and r["duration_s"] > 0
    assert r["server_cpu_s"] > 0 and r["server_cpu_us_per_req"] > 0


def test_load_counts_jsonrpc_errors(baseline):
    _, url = baseline
    r = run_load(
        "--url",
        url,
        "--method",
        "no_such_method",
        "--connections",
        "2",
        "--requests",
        "50",
        "--processes",
        "1",
        "--warmup",
        "0",
    )
    assert r["requests"] == 50
    assert r["errors"] == 50 and r["error_codes"] == {"-32601": 50}
    assert r["server_cpu_s"] is None  # no --pid given


def test_idle_connections(baseline):
    proc, url = baseline
    r = run_load("--url", url, "--idle", "50", "--hold", "0.5", "--pid-tree", str(proc.pid))
    assert r["opened"] == 50 and r["alive"] == 50
    assert r["errors"] == 0
    assert r["server_rss_bytes"] > 0


# A server that does what the real service may do and the baseline doesn't:
# notifications between replies, replies out of order, keepalive pings,
# fragmented and large (64-bit length) frames.
TRICKY_SERVER = r"""
import asyncio, json, random, sys
from websockets.asyncio.server import serve

async def answer(ws, req):
    await asyncio.sleep(random.random() / 500)
    await ws.send('{"jsonrpc":"2.0","method":"camera_status_update","params":{"id":"camera0","note":"~9"}}')
    reply = json.dumps({"jsonrpc": "2.0", "result": {"pad": "x" * random.choice([10, 300, 70000])},
                        "id": req["id"]})
    if random.random() < 0.2:
        await ws.send([reply[:50], reply[50:]])  # fragmented message
    else:
        await ws.send(reply)

async def handler(ws):
    async with asyncio.TaskGroup() as tg:
        async for msg in ws:
            tg.create_task(answer(ws, json.loads(msg)))

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), ping_interval=0.05,
                     max_size=None, compression=None):
        await asyncio.Future()

asyncio.run(main())
"""


@pytest.mark.parametrize("client", ["fast", "websockets"])
def test_load_tolerates_a_tricky_server(client):
    port = common.free_port()
    proc = subprocess.Popen([sys.executable, "-c", TRICKY_SERVER, str(port)])
    try:
        assert common.wait_port("127.0.0.1", port, 10)
        r = run_load(
            "--url",
            f"ws://127.0.0.1:{port}/ws",
            "--connections",
            "4",
            "--requests",
            "400",
            "--pipeline",
            "8",
            "--processes",
            "2",
            "--warmup",
            "0.3",
            "--client",
            client,
            "--timeout",
            "20",
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert r["requests"] == 400 and r["errors"] == 0


def test_client_processes_die_with_the_parent(baseline):
    import psutil
    import signal

    _, url = baseline
    load = subprocess.Popen(
        [sys.executable, str(BENCH / "load.py"), "--url", url, "--connections", "2", "--duration", "30"],
        stdout=subprocess.DEVNULL,
    )
    try:
        children = wait_for(
            lambda: (found := psutil.Process(load.pid).children()) and len(found) >= 2 and found,
            10,
            message="load.py's two client processes",
        )
    finally:
        load.send_signal(signal.SIGKILL)
        load.wait()
    gone, alive = psutil.wait_procs(children, timeout=5)
    for proc in alive:  # don't leave load running if the test fails
        proc.kill()
    assert not alive


def test_baseline_answers_like_the_contract(baseline):
    _, url = baseline
    import asyncio
    from websockets.asyncio.client import connect

    async def talk():
        async with connect(url, compression=None) as ws:
            replies = []
            for text in (
                '{"jsonrpc":"2.0","id":1,"method":"ping"}',
                '{"jsonrpc":"2.0","id":"a","method":"get_camera_status","params":{"device":"camera0"}}',
                '[{"jsonrpc":"2.0","id":2,"method":"ping"},{"jsonrpc":"2.0","method":"ping"}]',
                "[]",
                "not json",
            ):
                await ws.send(text)
                replies.append(json.loads(await ws.recv()))
            return replies

    ping, status, batch, empty, garbage = asyncio.run(talk())
    assert ping == {"jsonrpc": "2.0", "id": 1, "result": "pong"}
    assert status["id"] == "a" and status["result"]["status"] == "CONNECTED"
    assert set(status["result"]["metrics"]) == {"bytes_sent", "readers", "uptime"}
    assert batch == [{"jsonrpc": "2.0", "id": 2, "result": "pong"}]  # notification: no reply
    assert empty["error"]["code"] == -32600
    assert garbage["error"]["code"] == -32700


def test_percentile_helper():
    assert common.percentile([], 50) is None
    values = list(range(1, 101))
    assert common.percentile(values, 50) == 50
    assert common.percentile(values, 99) == 99
    assert common.percentile(values, 100) == 100
    assert common.percentiles([3, 1, 2], (50, 100)) == {50: 2, 100: 3}


def test_compare_runs_both_servers_in_alternating_rounds():
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "compare.py"),
            "--case",
            "get_camera_status:4",
            "--rounds",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--processes",
            "1",
            "--simulate",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    runs, (summary,) = rows[:-1], rows[-1:]
    assert [(r["server"], r["round"]) for r in runs] == [
        ("baseline", 1),
        ("service", 1),
        ("baseline", 2),
        ("service", 2),
    ]
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["server_cpu_us_per_req"] for r in runs)
    assert summary["bench"] == "compare.summary" and summary["errors"] == 0
    assert summary["ratios"] == [
        round(s["throughput_rps"] / b["throughput_rps"], 3) for b, s in zip(runs[::2], runs[1::2])
    ]
