"""Recording worker: naming, journal, sanitising and command lines (no ffmpeg runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from camservice.workers.recording import capture, naming, storage
from camservice.workers.recording.journal import Journal, SessionRecord

from camservice.active_files import ActiveFiles, atomic_write_json
from camservice.cameras import Camera


def test_default_name_follows_the_contract():
    name = naming.default_name("camera3", "mp4", stamp=0)
    assert re.fullmatch(r"camera3_1970-01-01_00-00-00_[A-Z0-9]{6}\.mp4", name)


def test_utc_iso_has_z_suffix():
    assert naming.utc_iso(0) == "1970-01-01T00:00:00.000Z"


def test_segment_names_keep_the_first_name():
    assert naming.segment_name("rec.mp4", 0) == "rec.mp4"
    assert naming.segment_name("rec.mp4", 1) == "rec_part001.mp4"
    assert naming.segment_name("a.b.mkv", 12) == "a.b_part012.mkv"
    assert naming.segment_name("rec.mp4", 1234) == "rec_part1234.mp4"


def test_segment_name_of_a_long_name_stays_within_255_bytes():
    first = "x" * 251 + ".mp4"
    later = naming.segment_name(first, 7)
    assert len(later.encode()) <= 255 and later.endswith("_part007.mp4")


def test_later_segments_are_told_apart_from_other_names():
    later = ["rec_part001.mp4", "rec_part1000.mp4", "rec_part123x.mp4", naming.segment_name("rec.mp4", 42)]
    other = ["rec.mp4", "record.mp4", "rec_partial.mp4", "rec_part01.mp4", "rec_part001.mkv", "xrec_part001.mp4"]
    other += ["rec_part١٢٣.mp4", "rec_part001mp4", "rec_part.mp4"]  # Arabic-Indic digits are not [0-9]
    assert [name for name in later + other if naming.is_later_segment("rec.mp4", name)] == later


def test_a_name_whose_segments_exist_is_taken(tmp_path: Path):
    assert not storage.name_taken(tmp_path / "missing", "rec.mp4")
    (tmp_path / "record_part001.mp4").touch()
    assert not storage.name_taken(tmp_path, "rec.mp4")
    (tmp_path / "rec_part002.mp4").touch()  # the first segments may be gone to retention
    assert storage.name_taken(tmp_path, "rec.mp4") and not storage.name_taken(tmp_path, "rec.mkv")
    (tmp_path / "clip.mkv").touch()
    assert storage.name_taken(tmp_path, "clip.mkv")


def test_sanitize_keeps_storage_paths_and_devices_only(tmp_path: Path):
    storage = tmp_path / "recordings"
    text = (
        f"{storage}/a.mp4: error | /root/.state/dev/sim0: busy | /dev/video0: No such device"
        " | /opt/ffmpeg/bin/ffmpeg-x: failed"
    )
    clean = capture.sanitize(text, [storage])
    assert f"{storage}/a.mp4" in clean and "/dev/video0" in clean
    assert "/root" not in clean and "/opt" not in clean
    assert "sim0: busy" in clean and "ffmpeg-x: failed" in clean


def test_journal_round_trip_and_bad_entries(tmp_path: Path):
    journal = Journal(tmp_path / "journal")
    record = SessionRecord("s1", "camera0", "sim:0", "rec.mp4", "mp4", 10.0, 5, 15.0, ["rec.mp4"], 123, "s1-r1")
    journal.save(record)
    (tmp_path / "journal" / "broken.json").write_text("{not json")
    records, bad = journal.load_all()
    assert records == [record]
    assert len(bad) == 1 and (tmp_path / "journal" / "broken.bad").exists()
    journal.remove("s1")
    journal.remove("s1")  # idempotent
    assert journal.load_all() == ([], [])


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path):
    target = tmp_path / "run" / "doc.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["doc.json"]


def test_active_files_document_shape_and_the_readers_view(tmp_path: Path):
    import asyncio

    active = ActiveFiles(tmp_path / "recording-active.json")
    reader = ActiveFiles(active.path)  # what a file worker holds
    assert reader.names() is None  # no list kept: the index flags decide

    async def scenario():
        await active.add("a.mp4", "camera0", "sim:0", "s1", "2026-01-01T00:00:00.000Z")
        await active.add("b.mp4", "camera1", "sim:1", "s2", "2026-01-01T00:00:00.000Z")
        await active.remove("a.mp4", "missing.mp4")

    asyncio.run(scenario())
    document = json.loads(active.path.read_text())
    assert document == {
        "files": {
            "b.mp4": {
                "camera_id": "camera1",
                "device": "sim:1",
                "session_id": "s2",
                "started": "2026-01-01T00:00:00.000Z",
            }
        }
    }
    assert reader.names() == {"b.mp4"}
    asyncio.run(active.clear())
    assert reader.names() == set()


def test_recording_command_line(tmp_path: Path):
    device = capture.DeviceInput(["-f", "lavfi", "-i", "testsrc2"])
    argv = capture.recording_argv(
        "ffmpeg",
        device,
        staging=tmp_path,
        fmt="mp4",
        segment_seconds=600,
        first_index=2,
        fps=15,
        frame_path=tmp_path / "f.jpg",
    )
    joined = " ".join(argv)
    assert "-segment_start_number 2" in joined and f"{tmp_path}/seg%03d.mp4" in joined
    assert "frag_keyframe+empty_moov" in joined and "-g 15" in joined
    assert "-update 1 -atomic_writing 1" in joined
    assert capture.staged_segment(tmp_path, 2, "mp4").name == "seg002.mp4"


def test_v4l2_input_arguments(tmp_path: Path):
    node = tmp_path / "video0"
    node.touch()
    camera = Camera(
        id="camera0",
        device=str(node),
        source={"kind": "v4l2", "path": str(node), "input_format": "mjpeg", "size": "1280x720", "fps": 30},
    )
    device = capture.open_input(camera)
    assert device.args == [
        "-f",
        "v4l2",
        "-thread_queue_size",
        "64",
        "-input_format",
        "mjpeg",
        "-video_size",
        "1280x720",
        "-framerate",
        "30",
        "-i",
        str(node),
    ]
    node.unlink()
    assert not capture.camera_present(camera)
