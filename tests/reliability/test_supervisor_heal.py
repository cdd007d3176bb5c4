"""Issue 11 §2, §5, §8 (supervisor side), reproduced against the real service.

Each test failed before its fix:

* a SIGSTOPped worker stayed frozen for ever, and its callers heard that it "exited";
* a crash-looping worker was left failed for ever, and get_status said "degraded";
* a SIGKILLed supervisor left clients with a dropped connection and no word;
* get_metrics listed no processes during the first two seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal

from camservice.errors import SERVICE_BUSY

from ..harness import Client, Service, alive, run, wait_for


def states(svc: Service) -> dict[str, str]:
    return {p["name"]: p["state"] for p in svc.status()["processes"]}


def test_a_frozen_worker_is_replaced_and_its_callers_hear_it_stopped_answering():
    with Service(simulate=0) as svc:
        frozen = svc.pids()["files-0"]

        async def scenario():
            async with Client(svc.url, svc.token("admin")) as client:
                os.kill(frozen, signal.SIGSTOP)
                # Not idempotent: the gateway cannot retry it elsewhere, so the caller hears why it failed.
                reply = await client.request("delete_recording", {"filename": "nothing-here.mp4"})
                assert reply["error"]["code"] == SERVICE_BUSY, reply
                assert "stopped answering" in reply["error"]["data"]["reason"], reply
                assert "exited" not in reply["error"]["data"]["reason"]
                wait_for(lambda: svc.pids().get("files-0") not in (None, frozen), 15, message="files-0 replaced")
                assert not alive([frozen])
                # The replacement serves, once it registered with the gateway.
                for _ in range(200):
                    if (await client.call("get_status"))["components"]["files"] == "running":
                        break
                    await asyncio.sleep(0.05)
                listing = await client.call("list_recordings")
                assert listing["files"] == []

        try:
            run(scenario())
        finally:
            if alive([frozen]):
                os.kill(frozen, signal.SIGKILL)
        assert "process_hung" in (svc.state_dir / "logs" / "supervisor.log").read_text()


def test_a_crash_loop_is_retried_after_the_cool_down_and_status_says_unhealthy_meanwhile():
    settings = {"runtime.give_up_after": 1, "runtime.failed_retry_after": 10.0, "runtime.stable_after": 60.0}
    with Service(simulate=0, **settings) as svc:

        async def scenario():
            async with Client(svc.url, svc.token("admin")) as client:
                for _ in range(2):  # two crashes in a row: give_up_after 1 leaves it failed
                    pid = wait_for(lambda: svc.pids().get("files-0"), 10, message="files worker up")
                    os.kill(pid, signal.SIGKILL)
                    wait_for(lambda pid=pid: svc.pids().get("files-0") != pid, 10, message="files-0 gone")
                wait_for(lambda: states(svc)["files-0"] == "failed", 10, message="files-0 failed")

                async def status_is(expected):
                    for _ in range(200):
                        status = await client.call("get_status")
                        if status["status"] == expected:
                            return status
                        await asyncio.sleep(0.05)
                    raise AssertionError(f"get_status never said {expected}: {status}")

                down = await status_is("unhealthy")
                assert down["components"]["files"] == "down"
                # After the cool-down the supervisor tries again, and the service heals.
                wait_for(lambda: states(svc)["files-0"] == "running", 25, message="files-0 retried")
                healed = await status_is("healthy")
                assert healed["components"]["files"] == "running"
                assert (await client.call("list_recordings"))["files"] == []

        run(scenario())


def test_supervisor_death_tells_clients_server_restarting_then_1012():
    with Service(simulate=0) as svc:
        children = list(svc.pids().values())

        async def scenario():
            async with Client(svc.url, svc.token("viewer")) as client:
                await client.call("ping")
                os.kill(svc.supervisor_pid(), signal.SIGKILL)
                told = await client.notification("server_restarting", timeout=15)
                assert told["reason"] == "stop" and told["reconnect_after_ms"] > 0
                await asyncio.wait_for(client.ws.wait_closed(), 10)
                return client.ws.close_code

        assert run(scenario()) == 1012
        wait_for(lambda: not alive(children), 15, message="children gone with the supervisor")


def test_stop_tells_clients_server_restarting_then_1001():
    svc = Service(simulate=0).start()
    try:

        async def scenario():
            async with Client(svc.url, svc.token("viewer")) as client:
                await client.call("ping")
                stopping = asyncio.ensure_future(asyncio.to_thread(svc.stop))
                told = await client.notification("server_restarting", timeout=15)
                assert told["reason"] == "stop"
                await asyncio.wait_for(client.ws.wait_closed(), 10)
                await stopping
                return client.ws.close_code

        assert run(scenario()) == 1001
    finally:
        svc.cleanup()


def test_get_metrics_lists_every_process_as_soon_as_the_service_is_up():
    with Service(simulate=0) as svc:
        expected = set(svc.pids())

        async def scenario():
            async with Client(svc.url, svc.token("admin")) as client:
                return await client.call("get_metrics")

        metrics = run(scenario())
        listed = {p["name"]: p for p in metrics["processes"]}
        assert set(listed) == expected
        for row in listed.values():
            assert row["pid"] and row["rss_bytes"] > 0, row
