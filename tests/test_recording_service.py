"""Snapshots and recordings through the whole service, over a real WebSocket.

Starts ``camservice`` with one simulated camera, so the recording worker
resolves cameras through the discovery worker's snapshot and events, and
its events reach the client as notifications. One scenario, because each
service start costs seconds.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from camservice import ffmpeg
from camservice.errors import IN_PROGRESS, INVALID_PARAMS

from .harness import Client, RpcFailure, Service, alive, run, wait_for

pytestmark = pytest.mark.slow


def test_snapshot_recording_and_worker_crash_through_the_service():
    with Service(simulate=1, **{"storage.min_free_bytes": 0}) as service:
        token = service.token("operator")

        async def before_crash():
            async with Client(service.url, token) as client:
                snap = await client.call("take_snapshot", {"device": "sim:0"})
                started = await client.call("start_recording", {"device": "camera0", "duration_seconds": 30})
                note = await client.notification(
                    "recording_status_update", where=lambda p: p["session_id"] == started["session_id"]
                )
                again = None
                try:
                    await client.call("start_recording", {"device": "sim:0"})
                except RpcFailure as exc:
                    again = exc.code
                during = await client.call("take_snapshot", {"device": "sim:0", "format": "png"})
                return snap, started, note, again, during

        snap, started, note, again, during = run(before_crash())
        assert snap["status"] == "completed" and snap["file_size"] > 0
        assert started["status"] == "STARTED" and started["duration"] == 30
        assert note["status"] == "STARTED" and note["filename"] == started["filename"]
        assert again == IN_PROGRESS
        assert during["filename"].endswith(".png")

        # SIGKILL the recording worker mid-recording: the supervisor restarts it
        # and the new worker resumes the session from its journal.
        recording_dir = service.state_dir / "recordings"
        worker = service.pids()["recording-0"]
        captures = [p.pid for p in __import__("psutil").Process(worker).children()]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: not alive(captures), timeout=10, message="the capture to die with its worker")
        second = recording_dir / (started["filename"][:-4] + "_part001.mp4")
        wait_for(second.exists, timeout=30, message="the resumed segment")

        async def after_crash():
            async with Client(service.url, token) as client:
                stopped = await client.call("stop_recording", {"device": "sim:0"})
                idle = None
                try:
                    await client.call("stop_recording", {"device": "sim:0"})
                except RpcFailure as exc:
                    idle = exc.code
                listing = await client.call("list_recordings", {})
                return stopped, idle, listing

        stopped, idle, listing = run(after_crash())
        assert stopped["status"] == "STOPPED" and stopped["session_id"] == started["session_id"]
        assert idle == INVALID_PARAMS
        names = {f["filename"] for f in listing["files"]}
        assert {started["filename"], second.name} <= names
        for name in (started["filename"], second.name):
            assert ffmpeg.probe(recording_dir / name).codec == "h264"
        active = json.loads((service.state_dir / "run" / "recording-active.json").read_text())
        assert active == {"files": {}}
