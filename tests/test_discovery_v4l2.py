"""V4L2 discovery: parsing recorded udev properties and probe records, scanning, no-camera machines."""

from __future__ import annotations

import errno
import glob
import json
import os
from pathlib import Path

import pytest
from camservice.workers.discovery import v4l2
from camservice.workers.discovery.v4l2 import Mode, RawNode

DATA = Path(__file__).parent / "data" / "v4l2"


def udev_properties(name: str) -> dict[str, str]:
    """``udevadm info --query=property`` output as a dict."""
    lines = (DATA / f"{name}.udev").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def probe_record(name: str) -> dict:
    return json.loads((DATA / f"{name}.probe.json").read_text())


def udev_node(name: str, index: str) -> RawNode:
    props = udev_properties(name)
    return RawNode(devname=props["DEVNAME"], devpath=props["DEVPATH"], index=index, properties=props)


# --- pure functions ---------------------------------------------------------------------


def test_fourcc_text_decodes_little_endian_codes():
    assert v4l2.fourcc_text(0x47504A4D) == "MJPG"
    assert v4l2.fourcc_text(0x56595559) == "YUYV"
    assert v4l2.fourcc_text(0x80000000 | 0x56595559) == "YUYV"  # big-endian flag dropped


def test_capture_node_is_a_camera_and_metadata_node_is_not():
    camera = v4l2.describe(udev_node("c920_video0", "0"), probe_record("c920_video0"))
    metadata = v4l2.describe(udev_node("c920_video1", "1"), probe_record("c920_video1"))
    assert metadata is None
    assert camera is not None
    assert camera.device == "/dev/video0"
    assert camera.name == "HD Pro Webcam C920"
    assert camera.error is None
    assert camera.kind == "v4l2"


def test_device_caps_win_over_the_whole_device_capabilities():
    record = probe_record("c920_video1")
    assert record["capabilities"] & v4l2.CAP_VIDEO_CAPTURE  # the USB device as a whole captures...
    assert not v4l2.is_capture(record)  # ...but this node only carries metadata
    legacy = {"capabilities": v4l2.CAP_VIDEO_CAPTURE, "device_caps": 0}  # driver without DEVICE_CAPS
    assert v4l2.is_capture(legacy)


def test_udev_capabilities_decide_when_the_probe_fails():
    capture = v4l2.describe(udev_node("c920_video0", "0"), None, "permission denied")
    metadata = v4l2.describe(udev_node("c920_video1", "1"), None, "permission denied")
    unknown = v4l2.describe(RawNode("/dev/video5", "/devices/x/video4linux/video5", "0"), None, "denied")
    assert metadata is None and unknown is None
    assert capture is not None and capture.error == "permission denied"
    assert capture.name == "HD Pro Webcam C920"


def test_unprobed_camera_is_usable_with_unknown_capabilities():
    camera = v4l2.describe(udev_node("c920_video0", "0"), None, None)  # linuxpy missing
    assert camera is not None and camera.error is None
    assert camera.formats == [] and camera.source == {"kind": "v4l2", "path": "/dev/video0"}


def test_c920_capabilities():
    caps = v4l2.capabilities(probe_record("c920_video0"))
    assert caps.formats == ["YUYV", "MJPEG"]
    assert caps.resolutions[:4] == ["2304x1536", "2304x1296", "1920x1080", "1600x896"]
    assert caps.resolutions[-1] == "160x90"
    assert len(caps.resolutions) == 19
    # YUYV 1080p is 5 fps, MJPEG 30 down to 7.5 (reported as 7, never more than real).
    assert caps.frame_rates["1920x1080"] == [30, 24, 20, 15, 10, 7, 5]
    assert caps.frame_rates["2304x1536"] == [2]
    assert caps.frame_rates["800x600"] == [30, 24, 20, 15, 10, 7, 5]


def test_c920_default_mode_is_mjpeg_1080p30():
    camera = v4l2.describe(udev_node("c920_video0", "0"), probe_record("c920_video0"))
    assert (camera.resolution, camera.fps) == ("1920x1080", 30)
    assert camera.source == {
        "kind": "v4l2",
        "path": "/dev/video0",
        "input_format": "mjpeg",
        "size": "1920x1080",
        "fps": 30,
    }


def test_mode_choice_prefers_a_usable_rate_over_size():
    modes = [Mode("YUYV", 1280, 720, (10,)), Mode("YUYV", 640, 480, (30, 15))]
    assert v4l2.choose_mode(modes) == modes[1]
    # Same size and rate: the compressed format (less USB bandwidth).
    modes = [Mode("YUYV", 640, 480, (30,)), Mode("MJPG", 640, 480, (30,))]
    assert v4l2.choose_mode(modes).fourcc == "MJPG"
    # Only slow modes: the fastest of them.
    assert v4l2.choose_mode([Mode("YUYV", 1920, 1080, (5,)), Mode("YUYV", 640, 480, (10,))]).fps == (10,)
    # A format ffmpeg cannot read is chosen only when nothing else exists.
    assert v4l2.choose_mode([Mode("BGR4", 1920, 1080, (30,)), Mode("YUYV", 320, 240, (5,))]).fourcc == "YUYV"
    assert v4l2.choose_mode([]) is None


def test_sonix_camera_yuyv_and_mjpeg():
    camera = v4l2.describe(udev_node("sonix_video2", "0"), probe_record("sonix_video2"))
    assert camera.name == "USB 2.0 Camera: USB Camera"
    assert camera.formats == ["MJPEG", "YUYV"]
    assert camera.frame_rates == {"1280x720": [30, 10], "640x480": [30]}
    assert (camera.resolution, camera.fps, camera.source["input_format"]) == ("1280x720", 30, "mjpeg")


def test_stepwise_sizes_and_continuous_intervals():
    caps = v4l2.capabilities(probe_record("bcm2835_video0"))
    assert caps.formats == ["YU12", "YUYV", "RGB3", "MJPEG", "H264", "BGR4"]
    assert caps.resolutions[0] == "2592x1944"  # the maximum itself
    assert {"1920x1080", "1280x720", "640x480", "320x240"} <= set(caps.resolutions)
    assert "3840x2160" not in caps.resolutions  # beyond the range
    assert caps.frame_rates["1920x1080"] == [30, 25, 24, 20, 15, 10, 5, 1]
    mode = v4l2.choose_mode(caps.modes)
    assert (mode.size, max(mode.fps)) == ("1920x1080", 30)
    assert mode.fourcc == "JPEG"  # compressed, and ffmpeg reads it as mjpeg


def test_stable_keys():
    key, alt = v4l2.stable_keys(udev_node("c920_video0", "0"))
    assert key == "by-id:usb-046d_HD_Pro_Webcam_C920_8B1D3A6F-video-index0"
    assert alt == "by-path:pci-0000:00:14.0-usb-0:2:1.0-video-index0"
    # No serial number: the port identifies the camera, and nothing else can.
    key, alt = v4l2.stable_keys(udev_node("sonix_video2", "0"))
    assert (key, alt) == ("by-path:pci-0000:00:14.0-usb-0:4:1.0-video-index0", None)
    # No udev database (container): the sysfs parent, i.e. the same port.
    bare = RawNode("/dev/video0", "/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/video4linux/video0", "0")
    assert v4l2.stable_keys(bare) == ("sysfs:/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0-video-index0", None)
    # A virtual device has no port: its node name.
    loop = RawNode("/dev/video10", "/devices/virtual/video4linux/video10", "0")
    assert v4l2.stable_keys(loop) == ("dev:/dev/video10", None)


def test_product_name_fallbacks():
    props = udev_properties("sonix_video2")
    del props["ID_V4L_PRODUCT"]
    assert v4l2.product_name(RawNode("/dev/video2", properties=props)) == "USB 2.0 Camera"
    assert v4l2.product_name(RawNode("/dev/video2", name="mmal service 16.1")) == "mmal service 16.1"
    assert v4l2.product_name(RawNode("/dev/video2")) == "Camera"


def test_probe_error_texts_are_client_safe():
    assert "video" in v4l2.probe_error_text(PermissionError(errno.EACCES, "Permission denied", "/dev/video0"))
    assert v4l2.probe_error_text(OSError(errno.EIO, "Input/output error")) == "Input/output error"


# --- enumeration and probing on real files -------------------------------------------------


def make_sysfs(root: Path, nodes: dict[str, tuple[str, str, str]]) -> tuple[Path, Path]:
    """A fake /sys and /dev: name -> (parent device path, index, card name)."""
    sys_root, dev_root = root / "sys", root / "dev"
    (sys_root / "class" / "video4linux").mkdir(parents=True)
    dev_root.mkdir()
    for name, (parent, index, card) in nodes.items():
        real = sys_root / parent.lstrip("/") / "video4linux" / name
        real.mkdir(parents=True)
        (real / "index").write_text(index + "\n")
        (real / "name").write_text(card + "\n")
        os.symlink(real, sys_root / "class" / "video4linux" / name)
        (dev_root / name).touch()
    return sys_root, dev_root


def test_enumerate_sysfs_reads_nodes_without_udev(tmp_path):
    usb = "/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0"
    sys_root, dev_root = make_sysfs(
        tmp_path, {"video0": (usb, "0", "HD Pro Webcam C920"), "video1": (usb, "1", "HD Pro Webcam C920")}
    )
    (sys_root / "class" / "video4linux" / "v4l-subdev0").mkdir()  # not a video node
    nodes = v4l2.enumerate_sysfs(sys_root, dev_root)
    assert [n.devname for n in nodes] == [str(dev_root / "video0"), str(dev_root / "video1")]
    assert nodes[1].index == "1" and nodes[0].name == "HD Pro Webcam C920"
    assert nodes[0].devpath == f"{usb}/video4linux/video0"
    assert v4l2.stable_keys(nodes[0])[0] == f"sysfs:{usb}-video-index0"


def test_enumerate_sysfs_without_video4linux_is_empty(tmp_path):
    assert v4l2.enumerate_sysfs(tmp_path / "sys", tmp_path / "dev") == []


def test_probe_runs_the_ioctls_and_refuses_a_non_v4l2_file(tmp_path):
    pytest.importorskip("linuxpy")
    plain = tmp_path / "video0"
    plain.write_bytes(b"")
    with pytest.raises(OSError) as caught:
        v4l2.probe(str(plain))
    assert caught.value.errno == errno.ENOTTY  # QUERYCAP reached the kernel
    with pytest.raises(FileNotFoundError):
        v4l2.probe(str(tmp_path / "video9"))


class RecordedProber:
    """Answers probes from recorded samples and counts them."""

    def __init__(self, records: dict[str, object]):
        self.records = records
        self.calls: list[str] = []

    def __call__(self, path: str) -> dict:
        self.calls.append(path)
        outcome = self.records[path]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def test_scanner_keeps_capture_nodes_and_caches_probes(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("video0", "video1", "video2"):
        (dev / name).touch()
    nodes = [
        RawNode(str(dev / "video0"), properties=udev_properties("c920_video0"), index="0"),
        RawNode(str(dev / "video1"), properties=udev_properties("c920_video1"), index="1"),
        RawNode(str(dev / "video2"), properties=udev_properties("sonix_video2"), index="0"),
    ]
    prober = RecordedProber(
        {
            str(dev / "video0"): probe_record("c920_video0"),
            str(dev / "video1"): probe_record("c920_video1"),
            str(dev / "video2"): PermissionError(errno.EACCES, "Permission denied"),
        }
    )
    scanner = v4l2.V4L2Scanner(enumerate=lambda: nodes, prober=prober)

    found = scanner.scan()
    assert [(f.device, f.name, f.error is None) for f in found] == [
        (str(dev / "video0"), "HD Pro Webcam C920", True),
        (str(dev / "video2"), "USB 2.0 Camera: USB Camera", False),
    ]
    assert "permission" in found[1].error
    assert len(prober.calls) == 3

    scanner.scan()  # unchanged nodes are not probed again; the failed one is retried
    assert prober.calls[3:] == [str(dev / "video2")]

    (tmp_path / "new").touch()  # replug: the node is recreated (a new inode)
    os.replace(tmp_path / "new", dev / "video0")
    scanner.scan()
    assert str(dev / "video0") in prober.calls[4:]


def test_scanner_skips_nodes_that_vanish_while_probed(tmp_path):
    (tmp_path / "video0").touch()
    nodes = [
        RawNode(str(tmp_path / "video0"), properties=udev_properties("c920_video0"), index="0"),
        RawNode(str(tmp_path / "video7"), properties=udev_properties("c920_video0"), index="0"),
    ]
    prober = RecordedProber({str(tmp_path / "video0"): OSError(errno.ENODEV, "No such device")})
    scanner = v4l2.V4L2Scanner(enumerate=lambda: nodes, prober=prober)
    assert scanner.scan() == []
    assert prober.calls == [str(tmp_path / "video0")]  # video7 was never there


@pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="this machine has V4L2 devices")
def test_machine_without_cameras_reports_none():
    scanner = v4l2.V4L2Scanner()  # real enumeration (libudev or sysfs), real probing
    assert scanner.scan() == []
    assert v4l2.enumerate_sysfs() == []
