"""The camera replica: merging events and snapshots (no I/O), and the one loading loop."""

from __future__ import annotations

import asyncio

from camservice.cameras import CONNECTED, DISCONNECTED, Camera
from camservice.envelope import Event
from camservice.errors import SERVICE_BUSY, RpcError
from camservice.replica import CameraReplica

SOURCE = "discovery-0"


def cam(index: int, **fields) -> Camera:
    return Camera(f"camera{index}", f"sim:{index}", **{"resolution": "640x480", "fps": 15, **fields})


def event(camera: Camera, seq: int, source: str = SOURCE, at: float = 1.0) -> Event:
    return Event("camera_status_update", source, seq, camera.to_state(), at)


def snapshot(*cameras: Camera, seq: int, source: str = SOURCE) -> dict:
    return {"cameras": [c.to_state() for c in cameras], "seq": seq, "source": source}


def seen(changes) -> list[tuple[str, str, bool, bool]]:
    return [(c.camera.id, c.camera.status, c.camera.recording, c.visible) for c in changes]


def loaded(*cameras: Camera, seq: int = 2) -> CameraReplica:
    replica = CameraReplica()
    replica.begin_snapshot()
    replica.apply_snapshot(snapshot(*cameras, seq=seq))
    return replica


def test_first_snapshot_is_a_baseline_and_events_after_it_apply_in_order():
    replica = CameraReplica()
    replica.begin_snapshot()
    assert seen(replica.apply_snapshot(snapshot(cam(0), cam(1), seq=2))) == [
        ("camera0", CONNECTED, False, False),
        ("camera1", CONNECTED, False, False),
    ]
    assert replica.find("sim:1").id == "camera1" and len(replica) == 2
    assert replica.apply_event(event(cam(1), 2)) == []  # covered by the snapshot
    assert seen(replica.apply_event(event(cam(1, status=DISCONNECTED), 3))) == [("camera1", DISCONNECTED, False, True)]
    assert replica.find("camera1").status == DISCONNECTED and not replica.needs_snapshot


def test_a_change_clients_cannot_see_is_reported_but_not_visible():
    replica = loaded(cam(0))
    started = replica.apply_event(event(cam(0, recording=True, readers=1), 3))
    assert seen(started) == [("camera0", CONNECTED, True, False)]
    assert replica.find("camera0").recording is True
    assert seen(replica.apply_event(event(cam(0), 4))) == [("camera0", CONNECTED, False, False)]
    assert seen(replica.apply_event(event(cam(0, resolution="320x240"), 5))) == [("camera0", CONNECTED, False, True)]


def test_a_gap_is_applied_and_asks_for_a_snapshot_that_reports_what_was_lost():
    replica = loaded(cam(0), cam(1))
    assert seen(replica.apply_event(event(cam(0, status=DISCONNECTED), 5))) == [("camera0", DISCONNECTED, False, True)]
    assert replica.needs_snapshot
    replica.begin_snapshot()
    held = event(cam(0), 7)
    assert replica.apply_event(held) == []  # held while the snapshot is on its way
    # seq 3 and 4 were lost: camera1 was unplugged meanwhile.
    changes = replica.apply_snapshot(snapshot(cam(0, status=DISCONNECTED), cam(1, status=DISCONNECTED), seq=6))
    assert seen(changes) == [("camera0", CONNECTED, False, True), ("camera1", DISCONNECTED, False, True)]
    assert replica.find("camera0").status == CONNECTED and replica.table.seq == 7
    assert not replica.needs_snapshot


def test_held_events_covered_by_the_snapshot_are_still_news():
    replica = loaded(cam(0))
    replica.begin_snapshot()
    for seq, status in ((3, DISCONNECTED), (4, CONNECTED)):  # a bounce while the snapshot travels
        replica.apply_event(event(cam(0, status=status), seq))
    changes = replica.apply_snapshot(snapshot(cam(0), seq=4))
    assert seen(changes) == [("camera0", DISCONNECTED, False, True), ("camera0", CONNECTED, False, True)]


def test_a_new_discovery_process_is_news_and_needs_a_snapshot():
    replica = loaded(cam(0))
    assert seen(replica.apply_event(event(cam(0, status=DISCONNECTED), 1, source="discovery-0b"))) == [
        ("camera0", DISCONNECTED, False, True)
    ]
    assert replica.needs_snapshot and replica.find("camera0").status == DISCONNECTED
    replica.begin_snapshot()
    changes = replica.apply_snapshot(snapshot(cam(0, status=DISCONNECTED), cam(1), seq=2, source="discovery-0b"))
    # camera0: nothing new for clients (its record differs only where they cannot see); camera1 is news.
    assert seen(changes) == [("camera0", DISCONNECTED, False, False), ("camera1", CONNECTED, False, True)]
    assert replica.find("camera0").status == DISCONNECTED


def test_a_failed_snapshot_releases_the_held_events():
    replica = loaded(cam(0))
    replica.begin_snapshot()
    replica.apply_event(event(cam(0, status=DISCONNECTED), 3))
    assert seen(replica.release_held()) == [("camera0", DISCONNECTED, False, True)]
    assert replica.apply_event(event(cam(0), 4)) != []  # no longer holding


def test_sync_retries_until_a_snapshot_arrives_and_reports_through_on_change():
    answers = [
        RpcError(SERVICE_BUSY, data={"reason": "no gateway"}),
        snapshot(cam(0, status=DISCONNECTED), cam(1), seq=9),
    ]
    changes = []

    async def fetch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scenario():
        replica = CameraReplica(fetch, changes.append)
        assert not await replica.wait_loaded(0.0)
        replica.on_event(event(cam(0, status=DISCONNECTED), 9))  # before any snapshot: asks for one
        assert await replica.wait_loaded(10.0)
        return replica

    replica = asyncio.run(scenario())
    assert answers == [] and replica.find("camera1").status == CONNECTED
    assert seen(changes) == [
        ("camera0", DISCONNECTED, False, True),  # the event itself, at once
        ("camera0", DISCONNECTED, False, False),  # now in the table too, nothing new to tell
        ("camera1", CONNECTED, False, False),  # the baseline
    ]
