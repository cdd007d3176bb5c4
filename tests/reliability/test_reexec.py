"""Issue 16: the supervisor re-executes itself in place (real processes).

Same pid, same children (adopted, not restarted), the control socket and the
event bus bound again: ``camservice status`` answers, a WebSocket client
connected across the re-exec keeps its connection and still gets events
carried by the bus, a worker killed afterwards is restarted by the new
image, and ``camservice stop`` stops everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

from ..harness import Client, Service, alive, run, wait_for


def test_the_supervisor_re_execs_in_place_keeping_its_pid_its_processes_and_the_clients():
    with Service(simulate=1) as svc:
        before = svc.status()
        supervisor = svc.supervisor_pid()
        pids = {p["name"]: p["pid"] for p in before["processes"]}

        async def scenario():
            async with Client(svc.url, svc.token("operator")) as client:
                first = await client.call("get_camera_list")
                out = await asyncio.to_thread(svc.cli, "reload", "--supervisor-only", "--json")
                # The same connection keeps working...
                second = await client.call("get_camera_list")
                # Every child's publisher found the bus again: the new image heard each one's heartbeat.
                await asyncio.to_thread(
                    wait_for,
                    lambda: all(p["heard"] for p in svc.status()["processes"]),
                    60,
                    0.2,
                    "a heartbeat of every process after the re-exec",
                )
                # ...and events still travel over the bus the new image bound again.
                camera_id = (await asyncio.to_thread(svc.cli, "camera", "plug")).stdout.strip()
                plugged = await client.notification(
                    "camera_status_update",
                    timeout=60,
                    where=lambda p: p["id"] == camera_id and p["status"] == "CONNECTED",
                )
                return first, json.loads(out.stdout), second, plugged

        first, answer, second, plugged = run(scenario())
        assert answer["ok"] and answer["pid"] == supervisor and answer["execs"] == 1, answer
        assert second["total"] == first["total"] and plugged["id"]
        after = svc.status()
        assert after["pid"] == supervisor == svc.supervisor_pid() and after["execs"] == 1
        assert {p["name"]: p["pid"] for p in after["processes"]} == pids  # adopted, not restarted
        assert all(p["state"] == "running" and p["restarts"] == 0 for p in after["processes"])
        assert after["generation"] == before["generation"]
        log = (svc.state_dir / "logs" / "supervisor.log").read_text()
        assert "supervisor_reexec" in log and "supervisor_adopted" in log

        # The new image supervises: a worker killed now is restarted.
        os.kill(pids["files-0"], signal.SIGKILL)
        status = wait_for(
            lambda: (
                (s := svc.status())
                and any(
                    p["name"] == "files-0" and p["restarts"] == 1 and p["state"] == "running" for p in s["processes"]
                )
                and s
            ),
            60,
            0.2,
            "files-0 restarted by the re-executed supervisor",
        )
        restarted = next(p for p in status["processes"] if p["name"] == "files-0")
        assert restarted["pid"] not in (None, pids["files-0"])

        # And it stops everything it adopted.
        svc.cli("stop")
        children = set(pids.values()) - {pids["files-0"]} | {restarted["pid"]}
        wait_for(lambda: not alive(children | {supervisor}), 30, 0.1, "every process gone after stop")


def test_a_reexec_into_an_interpreter_that_cannot_run_the_supervisor_is_refused():
    with Service(simulate=0) as svc:
        before = svc.status()
        broken = svc.root / "python"
        broken.write_text("#!/bin/sh\nexit 3\n")
        broken.chmod(0o755)
        from camservice import comms, control
        from camservice import config as config_module

        config = config_module.load(svc.config_path, environ={})
        answer = control.request(comms.Endpoints.from_config(config, 0).control, "reexec", 40.0, executable=str(broken))
        assert answer is not None and not answer["ok"] and "cannot import the supervisor" in answer["error"], answer
        after = svc.status()
        assert after["execs"] == 0 and after["pid"] == before["pid"]
        assert {p["pid"] for p in after["processes"]} == {p["pid"] for p in before["processes"]}


def test_reload_with_supervisor_re_execs_first_then_starts_the_new_generation():
    with Service(simulate=0, **{"upgrade.canary_seconds": 0}) as svc:
        before = svc.status()
        reloaded = json.loads(svc.cli("reload", "--supervisor", "--json").stdout)
        assert reloaded["ok"] and reloaded["generation"] == before["generation"] + 1, reloaded
        after = svc.status()
        assert after["pid"] == before["pid"] and after["execs"] == 1
        assert after["generation"] == reloaded["generation"]
        assert {p["generation"] for p in after["processes"]} == {reloaded["generation"]}


def test_events_published_while_the_supervisor_is_mid_re_exec_reach_websocket_clients():
    """The new image is held before it binds anything (a test-only knob): a recording stopped and a
    camera plugged in that window are told to a connected client while the supervisor is still held."""
    from camservice import comms, control
    from camservice import config as config_module
    from camservice.supervisor import reexec

    svc = Service(simulate=1)
    hold = svc.root / "reexec-hold"
    svc.env[reexec.HOLD_ENV] = str(hold)
    with svc:
        config = config_module.load(svc.config_path, environ={})
        endpoint = comms.Endpoints.from_config(config, 0).control
        before = svc.status()

        async def scenario():
            async with Client(svc.url, svc.token("operator")) as client:
                started = await client.call("start_recording", {"device": "camera0"})
                await client.notification(
                    "recording_status_update", 60, lambda p: p["session_id"] == started["session_id"]
                )
                answer = await asyncio.to_thread(control.request, endpoint, "reexec", 40.0)
                assert answer is not None and answer["ok"], answer
                # The new image is up to its hold: nothing of the supervisor is bound (its control socket is silent).
                await asyncio.to_thread(wait_for, (svc.root / "reexec-hold.held").exists, 60, 0.02, "the held image")
                assert await asyncio.to_thread(control.request, endpoint, "status", 0.5) is None
                # A worker publishes while the supervisor is mid-re-exec; the client still hears it.
                stopped = await client.call("stop_recording", {"device": "camera0"})
                told = await client.notification(
                    "recording_status_update",
                    60,
                    lambda p: p["session_id"] == started["session_id"] and p["status"] == "STOPPED",
                )
                camera_id = (await asyncio.to_thread(svc.cli, "camera", "plug", "--timeout", "60")).stdout.strip()
                plugged = await client.notification(
                    "camera_status_update", 60, lambda p: p["id"] == camera_id and p["status"] == "CONNECTED"
                )
                # All of it while the supervisor was still held.
                still_held = (svc.root / "reexec-hold.held").exists()
                silent = await asyncio.to_thread(control.request, endpoint, "status", 0.5) is None
                hold.touch()
                return stopped, told, plugged, still_held, silent

        stopped, told, plugged, still_held, silent = run(scenario())
        assert still_held and silent
        assert told["filename"] == stopped["filename"] and plugged["status"] == "CONNECTED"
        after = wait_for(lambda: (s := svc.status()).get("execs") == 1 and s, 60, 0.1, "the released image")
        assert after["pid"] == before["pid"]
        assert {p["name"]: p["pid"] for p in after["processes"]} == {p["name"]: p["pid"] for p in before["processes"]}
