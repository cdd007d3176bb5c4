"""Issue 16: each generation's event bus is a process of its own, supervised like the others (real processes).

A bus that crashes is restarted and events reach clients again; a frozen one
is replaced, and while it carried nothing the other processes' missing
heartbeats did not get them killed as hung. ``camservice status`` and
``get_metrics`` show the bus with its figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

from ..harness import Client, Service, alive, run, wait_for


def replaced(svc: Service, name: str, old_pid: int) -> dict:
    """The status once ``name`` runs again under a new pid."""
    return wait_for(
        lambda: (
            (s := svc.status())
            and any(
                p["name"] == name and p["pid"] not in (None, old_pid) and p["state"] == "running"
                for p in s["processes"]
            )
            and s
        ),
        60,
        0.1,
        f"{name} replaced",
    )


async def plug_and_hear(svc: Service, client: Client) -> dict:
    camera_id = (await asyncio.to_thread(svc.cli, "camera", "plug", "--timeout", "60")).stdout.strip()
    return await client.notification(
        "camera_status_update", 60, lambda p: p["id"] == camera_id and p["status"] == "CONNECTED"
    )


def test_a_killed_bus_is_restarted_and_events_reach_clients_again():
    with Service(simulate=0) as svc:
        before = svc.status()
        row = next(p for p in before["processes"] if p["name"] == "bus-0")
        assert row["role"] == "bus" and row["pid"] and row["rss_bytes"] > 0, row
        others = {p["name"]: p["pid"] for p in before["processes"] if p["name"] != "bus-0"}

        async def scenario():
            async with Client(svc.url, svc.token("admin")) as client:
                metrics = await client.call("get_metrics")
                os.kill(row["pid"], signal.SIGKILL)
                status = await asyncio.to_thread(replaced, svc, "bus-0", row["pid"])
                # Everyone reconnects to the new bus by themselves: a hot-plug is told again.
                plugged = await plug_and_hear(svc, client)
                return metrics, status, plugged

        metrics, status, plugged = run(scenario())
        assert any(p["name"] == "bus-0" and p["pid"] == row["pid"] for p in metrics["processes"]), metrics
        assert plugged["status"] == "CONNECTED"
        bus = next(p for p in status["processes"] if p["name"] == "bus-0")
        assert bus["restarts"] == 1
        after = {p["name"]: p["pid"] for p in svc.status()["processes"] if p["name"] != "bus-0"}
        assert after == others  # nobody else was restarted
        svc.cli("stop")
        wait_for(lambda: not alive([bus["pid"], *others.values()]), 30, 0.1, "every process gone after stop")


def test_a_frozen_bus_is_replaced_and_the_silence_it_caused_kills_nobody():
    # A silent process goes after 8 s (a stopped one after heartbeat_interval x heartbeat_liveness = 20 s): the
    # frozen bus goes as silent. Every other process's heartbeats stopped with it, as long or longer (their last
    # beats came before the bus's last probe): without the excuse the supervisor killed them (the gateway first).
    settings = {"runtime.heartbeat_liveness": 20, "runtime.hang_timeout": 8.0}
    with Service(simulate=0, **settings) as svc:
        before = svc.status()
        bus = next(p["pid"] for p in before["processes"] if p["name"] == "bus-0")
        others = {p["name"]: p["pid"] for p in before["processes"] if p["name"] != "bus-0"}

        async def scenario():
            async with Client(svc.url, svc.token("admin")) as client:
                os.kill(bus, signal.SIGSTOP)
                try:
                    status = await asyncio.to_thread(replaced, svc, "bus-0", bus)
                finally:
                    if alive([bus]):
                        os.kill(bus, signal.SIGKILL)
                return status, await plug_and_hear(svc, client)

        status, plugged = run(scenario())
        assert plugged["status"] == "CONNECTED"
        assert {p["name"]: p["pid"] for p in status["processes"] if p["name"] != "bus-0"} == others
        assert all(p["restarts"] == 0 for p in status["processes"] if p["name"] != "bus-0")
        lines = (svc.state_dir / "logs" / "supervisor.log").read_text().splitlines()
        hung = {json.loads(line)["process"] for line in lines if '"process_hung"' in line}
        assert hung == {"bus-0"}, hung
