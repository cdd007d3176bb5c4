"""The malloc arena bound and the MEMTRACE_DIR debug knob, each in a process of its own."""

import json
import subprocess
import sys
import time

import pytest

from camservice import memtrace


def test_limit_arenas_takes_effect_on_glibc():
    out = subprocess.run(
        [sys.executable, "-c", "from camservice.allocator import limit_arenas; print(limit_arenas(2))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    if "glibc" not in subprocess.run(["ldd", "--version"], capture_output=True, text=True, check=False).stdout.lower():
        pytest.skip("not a glibc system")
    assert out.stdout.strip() == "True"


def test_memtrace_writes_where_the_memory_is(tmp_path):
    script = (
        "import time; from camservice import memtrace\n"
        "class Kept: pass\n"
        "keep = []\n"
        "from camservice import runtime; runtime.tune_gc()\n"  # as at boot: imports out of the counts
        "memtrace.start_from_env('probe')\n"  # at boot
        "memtrace.start_from_env('probe', lambda: {'extra_figure': 7})\n"  # a worker adds its figures
        "for _ in range(600):\n"
        "    keep.append((bytearray(10000), Kept())); time.sleep(0.05)\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        memtrace.DIR_ENV: str(tmp_path),
        memtrace.EVERY_ENV: "0.2",
        memtrace.TYPES_ENV: "1",
    }
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        lines: list[dict] = []
        deadline = time.monotonic() + 60
        while len(lines) < 3 and time.monotonic() < deadline:
            files = list(tmp_path.glob("probe-*.jsonl"))
            lines = [json.loads(x) for x in files[0].read_text().splitlines()] if files else []
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(10)
    assert len(lines) >= 3, lines
    last = lines[-1]
    assert "error" not in last and last["extra_figure"] == 7
    assert last["rss_kb"] > 0 and last["anon_kb"] > 0 and last["malloc"]["used_kb"] > 0
    assert last["py_kb"] > lines[0]["py_kb"]  # the bytearrays kept
    assert any("<string>" in t["where"] and t["grew_kb"] > 0 for t in last["top"])
    assert last["types"]["Kept"] > 0  # the objects kept, by type
    assert len(list(tmp_path.glob("probe-*.jsonl"))) == 1  # one tracer, however often it is asked for


def test_memtrace_is_off_without_its_variable(monkeypatch):
    monkeypatch.delenv(memtrace.DIR_ENV, raising=False)
    assert memtrace.start_from_env("x") is None
