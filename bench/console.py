"""Benchmark of the web console (issue 14) in Debian's chromium against the real service.

Prints one JSON object per line:

* ``first_load``: bytes transferred for a first visit (empty cache) of ``/``
  (what the network layer reports, compressed sizes and headers included),
  the time until the login form is usable, and the time from "Sign in" to the
  camera grid;
* ``files_page``: with ``--files`` recordings in the folder (default 100000),
  the time from a click in the pager to the next 100 rows rendered, for the
  next page and for the last page (the deepest offset);
* ``idle_consoles``: service CPU (every process of the service) over
  ``--idle-seconds`` with no console open and then with ``--consoles`` open on
  the cameras page, as % of one core.

    python -m bench.console --files 100000 --consoles 20 --idle-seconds 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from playwright.sync_api import sync_playwright

from bench.common import cpu_delta, cpu_snapshot, print_json
from bench.files import generate
from tests.harness import Service
from tests.test_console_browser import CHROMIUM, CHROMIUM_ARGS


def login(page, svc: Service, token: str, where: str = "") -> None:
    page.goto(f"http://127.0.0.1:{svc.port}/{where}")
    page.get_by_label("Token or API key").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Log out").wait_for(timeout=30_000)


def first_load(browser, svc: Service, token: str) -> dict:
    context = browser.new_context()
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    transferred = {}
    cdp.on("Network.loadingFinished", lambda e: transferred.__setitem__(e["requestId"], e["encodedDataLength"]))
    started = time.perf_counter()
    page.goto(f"http://127.0.0.1:{svc.port}/")
    page.get_by_label("Token or API key").wait_for()
    usable = time.perf_counter() - started
    page.wait_for_load_state("networkidle")
    load_bytes = sum(transferred.values())
    requests = len(transferred)
    page.get_by_label("Token or API key").fill(token)
    started = time.perf_counter()
    page.get_by_role("button", name="Sign in").click()
    page.locator("article.camera").first.wait_for()
    to_grid = time.perf_counter() - started
    context.close()
    return {
        "bench": "first_load",
        "bytes": load_bytes,
        "requests": requests,
        "usable_ms": round(usable * 1000, 1),
        "sign_in_to_grid_ms": round(to_grid * 1000, 1),
        "load_average_1m": os.getloadavg()[0],
    }


def files_page(browser, svc: Service, token: str, rounds: int, files: int) -> dict:
    context = browser.new_context()
    page = context.new_page()
    login(page, svc, token, "#/files")
    status = page.locator("nav.pager [role=status]")
    # The file worker indexes the folder after its start: reload until every file is listed.
    deadline = time.monotonic() + 300
    while not status.inner_text().endswith(f"of {files}"):
        if time.monotonic() > deadline:
            raise SystemExit(f"the index never listed {files} files: {status.inner_text()!r}")
        time.sleep(2)
        page.reload()
        page.locator("table.files").wait_for()
    total = files
    samples = {k: [] for k in ("next", "last", "next_call", "last_call", "next_render", "last_render")}
    for _ in range(rounds):
        for which, button in (("next", "Next"), ("last", "Last")):
            first = page.get_by_role("button", name="First")
            if first.is_enabled():
                first.click()
            page.wait_for_function(
                "() => document.querySelector('nav.pager [role=status]').textContent.startsWith('1–')"
            )
            page.locator("table.files tbody tr").nth(99).wait_for()
            start = 101 if which == "next" else (total - 1) // 100 * 100 + 1
            began = time.perf_counter()
            page.get_by_role("button", name=button, exact=True).click()
            page.wait_for_function(
                "s => document.querySelector('nav.pager [role=status]').textContent.startsWith(s)"
                " && document.querySelectorAll('table.files tbody tr').length > 0",
                arg=f"{start}–",
            )
            samples[which].append((time.perf_counter() - began) * 1000)
            page.wait_for_function(
                "o => document.querySelector('table.files').dataset.offset === o", arg=str(start - 1)
            )
            timing = page.locator("table.files").evaluate(
                "t => [Number(t.dataset.fetchMs), Number(t.dataset.renderMs)]"
            )
            samples[f"{which}_call"].append(timing[0])
            samples[f"{which}_render"].append(timing[1])
    context.close()
    return {
        "bench": "files_page",
        "files": total,
        **{f"{k}_median_ms": round(statistics.median(v), 1) for k, v in samples.items()},
        **{f"{k}_max_ms": round(max(v), 1) for k, v in samples.items()},
        "rounds": rounds,
        "load_average_1m": os.getloadavg()[0],
    }


def service_cpu(svc: Service, seconds: float) -> float:
    pids = [svc.supervisor_pid()]
    before = cpu_snapshot(pids, tree=True)
    time.sleep(seconds)
    after = cpu_snapshot(pids, tree=True)
    return round(100.0 * cpu_delta(before, after) / seconds, 2)


def idle_consoles(browser, svc: Service, token: str, consoles: int, seconds: float) -> dict:
    baseline = service_cpu(svc, seconds)
    contexts = []
    for _ in range(consoles):
        context = browser.new_context()
        page = context.new_page()
        login(page, svc, token)
        page.locator("article.camera").first.wait_for()
        contexts.append(context)
    time.sleep(5)  # let the logins' own work finish
    with_consoles = service_cpu(svc, seconds)
    for context in contexts:
        context.close()
    return {
        "bench": "idle_consoles",
        "consoles": consoles,
        "seconds": seconds,
        "cpu_percent_of_one_core_without": baseline,
        "cpu_percent_of_one_core_with": with_consoles,
        "cost_percent_of_one_core": round(with_consoles - baseline, 2),
        "load_average_1m": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--consoles", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    svc = Service(simulate=2)
    try:
        generate(svc.state_dir / "recordings", args.files, time.time() - args.files * 30 - 3600)
        svc.start()
        token = svc.token("admin")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            print_json(first_load(browser, svc, token))
            print_json(files_page(browser, svc, token, args.rounds, args.files))
            print_json(idle_consoles(browser, svc, token, args.consoles, args.idle_seconds))
            browser.close()
    finally:
        svc.cleanup()


if __name__ == "__main__":
    main()
