"""Quick real runs of the bench tools against the baseline server.

No timing thresholds: these check that the tools work and report consistent
figures, not how fast this machine is.
"""

import json
import subprocess
import sys

import pytest

from bench import common
from tests.harness import wait_for


@pytest.fixture(scope="module")
def baseline():
    port = common.free_port()
    proc = common.start_baseline(port)
    yield proc, f"ws://127.0.0.1:{port}/ws"
    proc.terminate()
    proc.wait(10)


def run_load(*args) -> dict:
    out = subprocess.run(
        common.module_cmd("load", *args), capture_output=True, text=True, timeout=60, cwd=common.REPO, check=False
    )
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
    import signal

    import psutil

    _, url = baseline
    load = subprocess.Popen(
        common.module_cmd("load", "--url", url, "--connections", "2", "--duration", "30"),
        stdout=subprocess.DEVNULL,
        cwd=common.REPO,
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
        common.module_cmd(
            "vsbaseline",
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
        ),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=common.REPO,
        check=False,
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


def suite(*args) -> list[str]:
    """argv of the suite's command line, ``python -m bench ARGS``."""
    return [sys.executable, "-m", "bench", *args]


def test_suite_cli_writes_results_and_a_self_contained_report(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        suite("load", "--quick", "--quiet", "--duration", "2", "--clients", "5", "--cameras", "1", "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=common.REPO,
        check=False,
    )
    assert done.returncode in (0, 2), done.stderr[-3000:]  # 2: a requirement failed (a loaded machine)
    results = json.loads((out / "results.json").read_text())
    assert results["category"] == "load" and not results["failures"]
    ids = {r["id"] for r in results["requirements"]}
    assert ids == {f"REQ-PERF-00{i}" for i in range(1, 7)}
    for row in results["requirements"]:
        assert set(row) >= {"id", "measured", "threshold", "target", "pass"}
    status = next(r for r in results["requirements"] if r["what"].startswith("status query"))
    assert status["measured"] == results["categories"]["load"]["endpoints"]["get_camera_status"]["p95_ms"]
    assert status["pass"] == (status["measured"] < 200)
    page = (out / "report.html").read_text()
    assert page.index("REQ-PERF-001") < page.index("Load:")  # the requirements table comes first
    assert "http://" not in page.split("<body>", 1)[1].replace("http://127.0.0.1", "")  # nothing fetched from outside
    try:
        import matplotlib  # noqa: F401

        assert "data:image/png;base64," in page
    except ImportError:
        assert "matplotlib is not installed" in page


def test_compare_flags_a_regression_beyond_its_tolerance(tmp_path):
    from bench import regress

    base = {
        "categories": {
            "load": {
                "endpoints": {"get_camera_status": {"n": 100, "p50_ms": 1.0, "p95_ms": 4.0}},
                "steady": {"p95_ms": 4.0, "error_rate": 0.0},
                "capacity": {"rps": 1000.0, "p95_ms": 10.0, "cpu_us_per_request": 50.0},
            }
        }
    }
    same = json.loads(json.dumps(base))
    rows, regressed = regress.compare(base, same, {})
    assert not regressed and {r["verdict"] for r in rows} == {"ok"}
    slower = json.loads(json.dumps(base))
    slower["categories"]["load"]["endpoints"]["get_camera_status"]["p95_ms"] = 4.0 * 2.5  # tolerance 1.0: limit 8
    rows, regressed = regress.compare(base, slower, {})
    assert regressed
    assert [r["figure"] for r in rows if r["verdict"] == "REGRESSED"] == ["load.get_camera_status.p95_ms"]
    fewer = json.loads(json.dumps(base))
    fewer["categories"]["load"]["capacity"]["rps"] = 500.0
    rows, regressed = regress.compare(base, fewer, {"load.capacity.rps": 0.2})
    assert regressed and next(r for r in rows if r["figure"] == "load.capacity.rps")["ratio"] == 0.5
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(base))
    costlier = json.loads(json.dumps(base))  # CPU per request: the steadiest figure, a tight measured tolerance
    costlier["categories"]["load"]["capacity"]["cpu_us_per_request"] = 100.0
    (tmp_path / "b" / "results.json").write_text(json.dumps(costlier))

    def cli(a, b):
        return subprocess.run(
            suite("compare", str(tmp_path / a), str(tmp_path / b)),
            capture_output=True,
            text=True,
            cwd=common.REPO,
            check=False,
            timeout=60,
        )

    assert cli("a", "a").returncode == 0
    flagged = cli("a", "b")
    assert flagged.returncode == 1 and "load.capacity.cpu_us_per_request" in flagged.stdout.split("regressed:")[-1]


def test_tolerances_are_measured_from_the_spread_of_repeated_runs(tmp_path):
    from bench import regress

    def run(p95, rps):
        return {
            "machine": {"loadavg_start": [1.0], "commit": "abc"},
            "categories": {
                "load": {
                    "endpoints": {"get_camera_status": {"n": 100, "p50_ms": 1.0, "p95_ms": p95}},
                    "steady": {"p95_ms": p95, "error_rate": 0.0},
                    "capacity": {"rps": rps, "p95_ms": 10.0, "cpu_us_per_request": 50.0},
                }
            },
        }

    dirs = []
    for i, (p95, rps) in enumerate([(4.0, 1000.0), (12.0, 900.0), (6.0, 1100.0)]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(run(p95, rps)))
        dirs.append(str(tmp_path / str(i)))
    measured = regress.measure(dirs)
    tol = measured["tolerances"]
    assert tol["load.get_camera_status.p95_ms"] == 3.0  # 1.5 x (12/4 - 1)
    assert tol["load.capacity.rps"] == round(max(0.25, 1.5 * (1100 / 900 - 1)), 2)
    assert tol["load.capacity.cpu_us_per_request"] == 0.25  # steady: the floor
    assert measured["spread"]["load.capacity.rps"] == [900.0, 1100.0]


def test_cpu_per_request_counts_the_role_processes_not_the_recordings_ffmpeg():
    from bench.phases import cpu_us_per_request

    processes = {"gateway-0": {"cpu_percent": 60.0}, "files-0": {"cpu_percent": 40.0}}
    phase = {"rps": 5000.0, "resources": {"processes": processes, "service_cpu_percent": 100.0}}
    assert cpu_us_per_request(phase) == 200.0
    processes["ffmpeg-0"] = {"cpu_percent": 25.0}  # a recording that lived through the window
    phase["resources"]["service_cpu_percent"] = 125.0
    assert cpu_us_per_request(phase) == 200.0
    assert cpu_us_per_request({"rps": 0.0, "resources": {"processes": processes}}) is None
