"""The camera simulator: node files, plug/unplug, one reader at a time, ffmpeg input."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from camservice.workers.discovery.ids import IdStore

from camservice import ffmpeg, simnodes

# A child that opens a node and reports how it went: "ok", "EBUSY", or the errno name.
OPENER = textwrap.dedent("""
    import errno, sys
    from camservice.simnodes import open_sim_device
    try:
        fd = open_sim_device(sys.argv[1])
    except OSError as exc:
        print(errno.errorcode[exc.errno], exc.strerror, flush=True)
    else:
        print("ok", flush=True)
""")


def try_open_in_other_process(path) -> str:
    result = subprocess.run([sys.executable, "-c", OPENER, str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_plug_writes_a_node_and_unplug_removes_it(tmp_path):
    index = simnodes.plug(tmp_path)
    node = tmp_path / "dev" / "sim0"
    assert index == 0
    assert json.loads(node.read_text()) == {"index": 0, "resolution": "640x480", "fps": 15, "pattern": "testsrc2"}
    assert simnodes.plug(tmp_path, "1280x720", 30) == 1
    assert [(n.device, n.resolution, n.fps) for n in simnodes.list_nodes(tmp_path)] == [
        ("sim:0", "640x480", 15),
        ("sim:1", "1280x720", 30),
    ]
    assert simnodes.unplug(tmp_path, "sim:0") == 0
    assert not node.exists()
    assert simnodes.plug(tmp_path) == 0  # the lowest free index again
    assert sorted(os.listdir(tmp_path / "dev")) == ["sim0", "sim1"]


def test_plug_refuses_bad_parameters_and_taken_indexes(tmp_path):
    with pytest.raises(simnodes.SimNodeError):
        simnodes.plug(tmp_path, resolution="640*480")
    with pytest.raises(simnodes.SimNodeError):
        simnodes.plug(tmp_path, fps=0)
    with pytest.raises(simnodes.SimNodeError):
        simnodes.plug(tmp_path, pattern="rm -rf")
    simnodes.plug(tmp_path, index=4)
    with pytest.raises(FileExistsError):
        simnodes.plug(tmp_path, index=4)
    assert simnodes.list_nodes(tmp_path)[0].index == 4


def _plug_one(state_dir: str) -> int:
    return simnodes.plug(state_dir)


def test_concurrent_plugs_from_many_processes_get_distinct_indexes(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        indexes = pool.map(_plug_one, [str(tmp_path)] * 12, chunksize=1)
    assert sorted(indexes) == list(range(12))
    assert [n.index for n in simnodes.list_nodes(tmp_path)] == list(range(12))
    assert not [name for name in os.listdir(tmp_path / "dev") if name.endswith(".tmp")]


def test_unplug_names(tmp_path):
    for _ in range(4):
        simnodes.plug(tmp_path)
    IdStore(tmp_path / "cameras.json").assign(["by-path:x", "sim:0", "sim:1", "sim:2", "sim:3"])
    assert simnodes.unplug(tmp_path, 3) == 3
    assert simnodes.unplug(tmp_path, "sim2") == 2
    assert simnodes.unplug(tmp_path, "camera2") == 1  # camera0 is the real camera, camera1 is sim:0
    with pytest.raises(LookupError):
        simnodes.unplug(tmp_path, "camera0")  # a real camera has no node
    with pytest.raises(FileNotFoundError) as caught:  # what the CLI catches
        simnodes.unplug(tmp_path, "sim:3")  # already unplugged
    assert isinstance(caught.value, LookupError) and "sim:3" in str(caught.value)
    assert [n.index for n in simnodes.list_nodes(tmp_path)] == [0]


def test_parse_node_rejects_broken_files(tmp_path):
    good = simnodes.parse_node(tmp_path / "sim3", '{"index": 3, "fps": 5}')
    assert (good.index, good.resolution, good.fps) == (3, "640x480", 5)
    for name, text in [
        ("sim3", "not json"),
        ("sim3", "[]"),
        ("sim3", '{"index": 4}'),
        ("sim03", "{}"),
        ("camera3", "{}"),
        ("sim3", '{"resolution": "big"}'),
    ]:
        with pytest.raises(simnodes.SimNodeError):
            simnodes.parse_node(tmp_path / name, text)


def test_one_reader_at_a_time_across_processes(tmp_path):
    node = simnodes.node_path(tmp_path, simnodes.plug(tmp_path))
    fd = simnodes.open_sim_device(node)
    try:
        assert try_open_in_other_process(node) == "EBUSY Device or resource busy"
        with pytest.raises(simnodes.DeviceBusy) as caught:
            simnodes.open_sim_device(node)  # a second open in the same process too
        assert caught.value.errno == errno.EBUSY
    finally:
        os.close(fd)
    assert try_open_in_other_process(node) == "ok"
    fd = simnodes.open_sim_device(node)  # and here, once the other process exited
    os.close(fd)


def test_lock_lives_exactly_as_long_as_the_capture_child(tmp_path):
    node = simnodes.node_path(tmp_path, simnodes.plug(tmp_path))
    fd = simnodes.open_sim_device(node)
    # The recording worker's pattern: hand the fd to the child, close its own copy.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, pass_fds=(fd,)
    )
    os.close(fd)
    try:
        assert try_open_in_other_process(node) == "EBUSY Device or resource busy"
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert try_open_in_other_process(node) == "ok"


def test_open_unplugged_node_fails(tmp_path):
    node = simnodes.node_path(tmp_path, simnodes.plug(tmp_path))
    simnodes.unplug(tmp_path, 0)
    with pytest.raises(FileNotFoundError):
        simnodes.open_sim_device(node)


def test_replugged_node_is_free_even_while_the_old_one_is_held(tmp_path):
    node = simnodes.node_path(tmp_path, simnodes.plug(tmp_path))
    fd = simnodes.open_sim_device(node)
    try:
        simnodes.unplug(tmp_path, 0)
        simnodes.plug(tmp_path)  # a new device on the same index
        assert try_open_in_other_process(node) == "ok"
    finally:
        os.close(fd)


def test_prepare_run_resets_a_new_run_and_keeps_a_restarted_one(tmp_path):
    for _ in range(5):
        simnodes.plug(tmp_path, "320x240")  # leftovers of an earlier run
    (tmp_path / "dev" / ".sim9.123.abcd.tmp").write_text("{}")
    assert simnodes.prepare_run(tmp_path, 2, "1280x720", 10, owner="run-1") is True
    assert sorted(os.listdir(tmp_path / "dev")) == [".owner", "sim0", "sim1"]
    assert {(n.resolution, n.fps) for n in simnodes.list_nodes(tmp_path)} == {("1280x720", 10)}

    simnodes.unplug(tmp_path, 1)
    simnodes.plug(tmp_path, index=7)
    assert simnodes.prepare_run(tmp_path, 2, "1280x720", 10, owner="run-1") is False  # worker restart
    assert [n.index for n in simnodes.list_nodes(tmp_path)] == [0, 7]

    assert simnodes.prepare_run(tmp_path, 3, None, None, owner="run-2") is True
    assert [(n.index, n.resolution) for n in simnodes.list_nodes(tmp_path)] == [
        (0, "640x480"),
        (1, "640x480"),
        (2, "640x480"),
    ]


def test_sim_capabilities_include_its_own_mode():
    formats, resolutions, rates = simnodes.sim_capabilities("1024x600", 12)
    assert formats == ["YUYV", "MJPEG"]
    assert resolutions == ["1024x600", "800x600", "640x480", "320x240", "160x120"]
    assert rates["1024x600"] == [12, 10, 5]


def test_sim_input_args():
    source = simnodes.SimNode(2, Path("/x/dev/sim2"), "320x240", 10, "smptebars").source()
    assert source == {"kind": "sim", "node": "/x/dev/sim2", "size": "320x240", "fps": 10, "pattern": "smptebars"}
    assert simnodes.sim_input_args(source) == ["-re", "-f", "lavfi", "-i", "smptebars=size=320x240:rate=10"]
    with pytest.raises(simnodes.SimNodeError):
        simnodes.sim_input_args({"kind": "v4l2", "path": "/dev/video0"})
    with pytest.raises(simnodes.SimNodeError):
        simnodes.sim_input_args({**source, "pattern": "testsrc2,drawtext=text=x"})


def test_ffmpeg_captures_a_simulated_camera(tmp_path):
    try:
        exe = ffmpeg.locate()
    except ffmpeg.FFmpegNotFound:
        pytest.skip("no ffmpeg")
    node = simnodes.read_node(simnodes.node_path(tmp_path, simnodes.plug(tmp_path, "320x240", 10)))
    out = tmp_path / "clip.mkv"
    result = subprocess.run(
        [
            exe,
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            *simnodes.sim_input_args(node.source()),
            "-frames:v",
            "3",
            "-c:v",
            "ffv1",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert ffmpeg.probe(out, exe).resolution == "320x240"
