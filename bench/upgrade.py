"""Issue 16's figures: canary tolerances from same-code reloads, rollback time, supervisor re-exec.

``python -m bench.upgrade [--reloads N] [--clients N]`` starts a service
(``tests.harness.Service``), keeps ``--clients`` WebSocket clients calling
``get_status`` (gateway-answered) and ``list_recordings`` (forwarded to a
file worker) flat out, then:

1. ``--reloads`` same-code reloads, each watched by the canary to its verdict:
   the ratios new/old of status-call P95, worker-call P95 and RSS (like for
   like, as the canary judges) show how far a *healthy* reload moves each
   figure, which is what the ``upgrade.*`` tolerances must stay clear of;
2. a slowed generation (``upgrade.test_status_delay``): when the canary
   decided after the switch, and how long the rollback took;
3. a supervisor re-exec under the same load: its duration and the calls
   that failed across it (expected: none).

One JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import websockets
import yaml

from tests.harness import Service, wait_for

from .common import FAST_LIMITS, print_json


class Load:
    def __init__(self) -> None:
        self.ok = 0
        self.failed: list = []
        self.reconnects = 0


async def client(url: str, token: str, load: Load, stop: asyncio.Event) -> None:
    ids = iter(range(1, 10**9))
    while not stop.is_set():
        try:
            async with websockets.connect(url, open_timeout=20) as ws:

                async def call(method: str, params: dict | None = None) -> dict:
                    request_id = next(ids)
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))
                    while True:
                        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                        if reply.get("id") == request_id:
                            return reply

                await call("authenticate", {"auth_token": token})
                while not stop.is_set():
                    for method, params in (("get_status", None), ("list_recordings", {"limit": 5})):
                        reply = await call(method, params)
                        if "error" in reply:
                            load.failed.append(reply["error"])
                        else:
                            load.ok += 1
                    await asyncio.sleep(0.02)
        except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError):
            load.reconnects += 1
            await asyncio.sleep(0.05)


def verdict(svc: Service) -> dict:
    return wait_for(
        lambda: ((s := svc.status()).get("canary") or {}).get("state") in ("passed", "failed") and s,
        180,
        0.5,
        "the canary's verdict",
    )


def ratio(new, old):
    return round(new / old, 2) if new and old else None


async def scenario(svc: Service, reloads: int, clients: int) -> dict:
    token = svc.token("admin")
    load, stop = Load(), asyncio.Event()
    tasks = [asyncio.ensure_future(client(svc.url, token, load, stop)) for _ in range(clients)]
    await asyncio.sleep(5)
    healthy = []
    for _ in range(reloads):
        reloaded = json.loads((await asyncio.to_thread(svc.cli, "reload", "--json", timeout=120)).stdout)
        status = await asyncio.to_thread(verdict, svc)
        canary = status["canary"]
        new, old = canary.get("figures", {}), canary["baseline"]
        healthy.append(
            {
                "verdict": canary["state"],
                "reason": canary.get("reason"),
                "ready_s": reloaded["ready_s"],
                "status_p95_ms": (old["status_p95"] and old["status_p95"] * 1000, new.get("status_p95", 0) * 1000),
                "worker_p95_ms": (old["worker_p95"] and old["worker_p95"] * 1000, (new.get("worker_p95") or 0) * 1000),
                "status_ratio": ratio(new.get("status_p95"), old["status_p95"]),
                "worker_ratio": ratio(new.get("worker_p95"), old["worker_p95"]),
                "rss_mib": (new.get("old_rss_bytes", 0) >> 20, new.get("rss_bytes", 0) >> 20),
                "rss_ratio": ratio(new.get("rss_bytes"), new.get("old_rss_bytes")),
                "error_rate": (old["error_rate"], new.get("error_rate")),
            }
        )
        await asyncio.sleep(3)
    # A slowed generation: decided when, rolled back how fast.
    good = svc.config_path.read_text()
    tree = yaml.safe_load(good)
    tree.setdefault("upgrade", {})["test_status_delay"] = 0.3
    svc.config_path.write_text(yaml.safe_dump(tree))
    try:
        await asyncio.to_thread(svc.cli, "reload", "--json", timeout=120)
    finally:
        svc.config_path.write_text(good)
    status = await asyncio.to_thread(verdict, svc)
    rollback = {**status["last_rollback"], "phases": status["last_reload"]}
    # The supervisor re-exec under load.
    failed_before, began = len(load.failed), time.monotonic()
    reexec = json.loads((await asyncio.to_thread(svc.cli, "reload", "--supervisor-only", "--json")).stdout)
    reexec["seconds_until_status_answers"] = round(time.monotonic() - began, 3)
    await asyncio.sleep(3)
    reexec["calls_failed_across"] = len(load.failed) - failed_before
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return {
        "healthy_reloads": healthy,
        "max_ratios": {
            key: max((r[key] for r in healthy if r[key] is not None), default=None)
            for key in ("status_ratio", "worker_ratio", "rss_ratio")
        },
        "rollback": rollback,
        "reexec": reexec,
        "load": {"ok": load.ok, "failed": len(load.failed), "reconnects": load.reconnects},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--canary-seconds", type=float, default=15.0)
    args = parser.parse_args()
    with Service(simulate=1, **FAST_LIMITS, **{"upgrade.canary_seconds": args.canary_seconds}) as svc:
        result = asyncio.run(scenario(svc, args.reloads, args.clients))
    print_json(result)


if __name__ == "__main__":
    main()
