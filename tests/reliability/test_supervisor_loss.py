"""Issue 11 §2: a SIGKILLed supervisor must not end recordings silently and forever.

Before the fix, the recording worker took the graceful-stop path when its
supervisor died (PDEATHSIG is a SIGTERM too): STOPPED, journal removed, and
nothing resumed at the next start. Losing the parent is a crash: the
journal stays, and the next ``camservice start`` resumes the session with
the same session id and deadline, in a new segment, up to its ``COMPLETED``.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from camservice import ffmpeg

from ..harness import Client, Service, alive, process_tree, run, wait_for

pytestmark = pytest.mark.slow


def test_recordings_survive_a_sigkilled_supervisor():
    with Service(simulate=1, **{"storage.min_free_bytes": 0}) as service:
        token = service.token("operator")
        journal = service.state_dir / "journal"
        recordings = service.state_dir / "recordings"

        async def start():
            async with Client(service.url, token) as client:
                started = await client.call("start_recording", {"device": "sim:0", "duration_seconds": 30})
                await client.notification(
                    "recording_status_update", where=lambda p: p["session_id"] == started["session_id"]
                )
                return started

        started = run(start())
        first = recordings / started["filename"]
        wait_for(lambda: first.exists() and first.stat().st_size > 20_000, timeout=20, message="video in the file")
        everything = process_tree([service.supervisor_pid()])

        os.kill(service.supervisor_pid(), signal.SIGKILL)
        wait_for(lambda: not alive(everything), timeout=30, message="every process to follow the supervisor")

        entry = journal / f"{started['session_id']}.json"
        assert entry.exists(), f"the journal entry was removed: the next start cannot resume\n{service.logs(60)}"
        kept = json.loads(entry.read_text())
        assert kept["filename"] == started["filename"] and kept["deadline"] is not None
        assert ffmpeg.probe(first).codec == "h264"  # finalised when the capture was stopped

        service.start()  # what systemd's restart (or an operator) does

        async def resumed():
            async with Client(service.url, token) as client:
                return await client.notification(
                    "recording_status_update",
                    timeout=60,
                    where=lambda p: p["session_id"] == started["session_id"] and p["status"] != "STARTED",
                )

        ended = run(resumed())
        assert ended["status"] == "COMPLETED", ended
        second = recordings / (started["filename"][:-4] + "_part001.mp4")
        for path in (first, second):
            assert ffmpeg.probe(path).codec == "h264"
        assert not entry.exists()
