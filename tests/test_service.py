"""The whole service, for real: supervisor, gateway, workers, WebSockets.

These tests start ``camservice start`` as a user would and talk to it over
real WebSocket connections; processes are real OS processes and are killed
with real signals.
"""

import asyncio
import json
import os
import signal

import psutil
import pytest

from camservice.errors import (
    AUTH_REQUIRED,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVICE_BUSY,
)

from .harness import Client, RpcFailure, Service, alive, process_tree, run, wait_for

pytestmark = pytest.mark.slow


def test_start_status_and_camera_list(service):
    status = service.status()
    assert status["running"] is True
    roles = sorted(p["role"] for p in status["processes"])
    assert roles == ["bus", "discovery", "files", "gateway", "recording"]  # bus: the event bus process
    assert all(p["state"] == "running" and p["pid"] for p in status["processes"])
    for pid in service.pids().values():
        # setproctitle replaces the command line: "camservice: gateway 0", "camservice: files 0"...
        title = " ".join(psutil.Process(pid).cmdline())
        assert title.startswith("camservice: "), title

    async def scenario():
        async with Client(service.url, service.token("viewer")) as client:
            listing = await client.call("get_camera_list")
            assert listing["total"] == 2 and listing["connected"] == 2
            assert sorted(c["device"] for c in listing["cameras"]) == ["sim:0", "sim:1"]
            camera = listing["cameras"][0]
            assert {
                "device",
                "id",
                "status",
                "name",
                "resolution",
                "fps",
                "streams",
                "capabilities",
                "recording",
            } <= set(camera)
            status = await client.call("get_camera_status", {"device": camera["id"]})
            assert status["status"] == "CONNECTED" and set(status["metrics"]) == {"bytes_sent", "readers", "uptime"}
            same = await client.call("get_camera_status", {"device": camera["device"]})
            assert same["id"] == camera["id"]
            caps = await client.call("get_camera_capabilities", {"device": camera["id"]})
            assert caps["device"] and "320x240" in caps["resolutions"]

    run(scenario())


def test_process_titles_are_recognisable(service):
    titles = sorted(" ".join(psutil.Process(pid).cmdline()) for pid in service.pids().values())
    assert any(t.startswith("camservice: gateway") for t in titles), titles
    assert any(t.startswith("camservice: recording") for t in titles), titles


def test_transport_rules_over_a_real_connection(service):
    async def scenario():
        async with Client(service.url) as client:
            # Garbage: -32700 and the connection stays open.
            reply = await client.raw("{not json", "null")
            assert reply["error"]["code"] == PARSE_ERROR and reply["id"] is None
            assert await client.call("ping") == "pong"
            # Empty batch.
            reply = await client.raw("[]", "null")
            assert reply["error"]["code"] == INVALID_REQUEST
            # Ids of every type echoed.
            for request_id in ["s", 0, 3.5, None, 2**60]:
                reply = await client.request("ping", request_id=request_id)
                assert reply == {"jsonrpc": "2.0", "result": "pong", "id": request_id}
            # Unknown method, then auth required.
            reply = await client.request("nope")
            assert reply["error"]["code"] == METHOD_NOT_FOUND
            reply = await client.request("get_camera_list")
            assert reply["error"]["code"] == AUTH_REQUIRED
            # A batch with a notification, an error and two calls: one array, no entry for the notification.
            batch = json.dumps(
                [
                    {"jsonrpc": "2.0", "method": "ping", "id": "a"},
                    {"jsonrpc": "2.0", "method": "ping"},
                    {
                        "jsonrpc": "2.0",
                        "method": "get_camera_list",
                        "id": "b",
                        "params": {"auth_token": service.token("viewer")},
                    },
                    {
                        "jsonrpc": "2.0",
                        "method": "get_streams",
                        "id": "c",
                        "params": {"auth_token": service.token("viewer")},
                    },
                    7,
                ]
            )
            reply = await client.raw(batch, "batch")
            assert isinstance(reply, list) and len(reply) == 4
            by_id = {r["id"]: r for r in reply}
            assert by_id["a"]["result"] == "pong" and by_id["b"]["result"]["total"] == 2
            assert isinstance(by_id["c"]["result"], list)
            assert by_id[None]["error"]["code"] == INVALID_REQUEST
            # Too-large frame: close code 1009.
            await client.ws.send("x" * (1024 * 1024 + 10))
            await asyncio.wait_for(client.ws.wait_closed(), 10)
            assert client.ws.close_code == 1009

    run(scenario())


def test_many_requests_in_flight_answered_out_of_order(service):
    async def scenario():
        async with Client(service.url, service.token("admin")) as client:
            methods = ["get_camera_capabilities", "get_camera_status", "list_recordings", "ping"] * 25
            replies = await asyncio.gather(
                *(client.request(m, {"device": "camera0"} if "camera" in m else None) for m in methods)
            )
            assert all("result" in r for r in replies), [r for r in replies if "error" in r][:3]

    run(scenario())


def test_invalid_params_keep_the_connection(service):
    async def scenario():
        async with Client(service.url, service.token("operator")) as client:
            with pytest.raises(RpcFailure) as info:
                await client.call("start_recording", {"device": "camera0", "duration_seconds": -5})
            assert info.value.code == INVALID_PARAMS and info.value.data["param"] == "duration_seconds"
            assert await client.call("ping") == "pong"

    run(scenario())


def test_worker_killed_with_request_in_flight(service):
    """SIGKILL a worker holding a request: the client gets one error, the worker comes back."""
    pids = service.pids()
    victim = pids["recording-0"]

    async def scenario():
        async with Client(service.url, service.token("operator")) as client:
            os.kill(victim, signal.SIGSTOP)  # freeze it so the request is certainly in its hands
            pending = asyncio.ensure_future(client.request("take_snapshot", {"device": "camera0"}))
            # One connection's frames are handled in order: once a later ping is answered,
            # the gateway has handed the snapshot to the (frozen) worker.
            assert await client.call("ping") == "pong"
            os.kill(victim, signal.SIGKILL)
            reply = await asyncio.wait_for(pending, 10)
            assert reply["error"]["code"] == SERVICE_BUSY
            assert "exited" in reply["error"]["data"]["reason"]
            # An idempotent call to a killed worker is answered by its replacement.
            discovery = pids["discovery-0"]
            os.kill(discovery, signal.SIGSTOP)
            pending = asyncio.ensure_future(client.request("get_camera_capabilities", {"device": "camera0"}))
            assert await client.call("ping") == "pong"  # handed over, as above
            os.kill(discovery, signal.SIGKILL)
            reply = await asyncio.wait_for(pending, 15)
            assert "result" in reply, reply

    run(scenario())
    wait_for(lambda: service.pids().get("recording-0") not in (None, victim), 10, message="recording restarted")
    rows = {p["name"]: p for p in service.status()["processes"]}
    assert rows["recording-0"]["restarts"] >= 1 and rows["recording-0"]["state"] == "running"


def test_supervisor_sigkill_leaves_no_process():
    svc = Service(simulate=1)
    try:
        svc.start()
        supervisor = svc.supervisor_pid()
        everything = process_tree([supervisor])
        assert len(everything) >= 5  # supervisor and four children
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: not alive(everything), 15, message=f"every process gone: {alive(everything)}")
    finally:
        svc.cleanup()


def test_stop_leaves_no_process_and_a_second_start_is_refused():
    svc = Service(simulate=1)
    try:
        svc.start()
        second = svc.cli("start", check=False)
        assert second.returncode != 0 and "already running" in second.stderr
        everything = process_tree([svc.supervisor_pid()])
        svc.cli("stop")  # exits 0 only once the supervisor is gone
        assert not alive(everything)
        assert svc.status()["running"] is False
    finally:
        svc.cleanup()


def test_bad_configuration_stops_start_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  port: 99999\n")
    svc = Service()
    svc.env["CAMSERVICE_CONFIG"] = str(config)
    proc = svc.cli("start", check=False)
    assert proc.returncode != 0 and "server.port" in proc.stderr
    svc.cleanup()


def test_two_gateways_share_the_port_and_both_deliver_hotplug_events():
    with Service(simulate=1, **{"gateway.processes": 2}) as svc:
        gateway_pids = [pid for name, pid in svc.pids().items() if name.startswith("gateway")]
        assert len(gateway_pids) == 2

        async def scenario():
            clients = [Client(svc.url, svc.token("viewer")) for _ in range(12)]
            for client in clients:
                await client.__aenter__()
            try:
                served = [
                    sum(
                        1
                        for c in psutil.Process(pid).net_connections("tcp")
                        if c.status == "ESTABLISHED" and c.laddr.port == svc.port
                    )
                    for pid in gateway_pids
                ]
                assert all(served), f"connections per gateway: {served}"
                camera_id = svc.cli("camera", "plug", "--resolution", "160x120", "--fps", "5").stdout.strip()
                events = await asyncio.gather(
                    *(
                        c.notification(
                            "camera_status_update",
                            where=lambda p: p["id"] == camera_id and p["status"] == "CONNECTED",
                        )
                        for c in clients
                    )
                )
                plugged = events[0]["device"]
                assert all(e["device"] == plugged and e["resolution"] == "160x120" for e in events)
                for client in clients:  # every gateway's replica has it
                    listing = await client.call("get_camera_list")
                    assert listing["total"] == 2 and listing["connected"] == 2
                svc.cli("camera", "unplug", plugged)
                await asyncio.gather(
                    *(
                        c.notification(
                            "camera_status_update",
                            where=lambda p: p["id"] == camera_id and p["status"] == "DISCONNECTED",
                        )
                        for c in clients
                    )
                )
                for client in clients:
                    listing = await client.call("get_camera_list")
                    assert listing["total"] == 2 and listing["connected"] == 1
            finally:
                for client in clients:
                    await client.__aexit__(None, None, None)

        run(scenario())


def test_workers_over_tcp_transport():
    from .harness import free_port

    with Service(simulate=1, **{"runtime.transport": "tcp", "runtime.tcp_base_port": free_port()}) as svc:

        async def scenario():
            async with Client(svc.url, svc.token("viewer")) as client:
                caps = await client.call("get_camera_capabilities", {"device": "camera0"})
                assert caps["resolutions"]

        run(scenario())


def test_start_refuses_a_port_another_program_listens_on():
    import socket as socket_module

    svc = Service(simulate=0)
    with socket_module.socket() as squatter:
        # Another instance's gateway: with SO_REUSEPORT our gateways could bind
        # too and silently share its clients, unless start refuses.
        squatter.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_REUSEPORT, 1)
        squatter.bind(("127.0.0.1", svc.port))
        squatter.listen()
        proc = svc.cli("start", check=False)
    try:
        assert proc.returncode != 0
        assert "server.port" in proc.stderr and "already in use" in proc.stderr
        assert svc.status()["running"] is False
    finally:
        svc.cleanup()


def test_a_worker_kind_that_stays_down_fails_calls_fast():
    """With no files worker for a heartbeat-timeout, calls get -32011 at once, not after 10 s."""
    # A short heartbeat (timeout 0.75 s) instead of sleeping past the default 3 s one.
    with Service(simulate=0, **{"runtime.give_up_after": 1, "runtime.heartbeat_interval": 0.25}) as svc:

        async def scenario():
            async with Client(svc.url, svc.token("admin")) as client:
                killed = None
                for _ in range(2):  # crash it twice: the supervisor gives up (give_up_after: 1)
                    pid = wait_for(
                        lambda killed=killed: svc.pids().get("files-0") not in (None, killed) and svc.pids()["files-0"],
                        10,
                        message="a new files worker up",
                    )
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                wait_for(
                    lambda: {p["name"]: p["state"] for p in svc.status()["processes"]}["files-0"] == "failed",
                    10,
                    message="files-0 failed",
                )
                # Queued until the kind has been silent for a heartbeat timeout, then failed
                # by the gateway's sweep: well before the 10 s request deadline.
                reply = await asyncio.wait_for(client.request("list_recordings"), 5)
                assert reply["error"]["code"] == SERVICE_BUSY
                assert "no files worker" in reply["error"]["data"]["reason"]
                status = await client.call("get_status")
                assert status["components"]["files"] == "down" and status["status"] == "unhealthy"

        run(scenario())
