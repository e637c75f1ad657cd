"""Frame sources: image files in order, looped, shuffled and paced; the camera off the Pi."""

from __future__ import annotations

import random
import sys
import time
import types
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from broker.settings import FileSourceConfig, Picamera2SourceConfig
from device.camera import FileFrameSource, make_frame_source
from device.decoder import GrayFrame
from device.errors import FrameSourceError

# Each image is a flat gray whose level names it, so a frame tells which file it came from.
LEVELS = {"b.png": 20, "a.png": 10, "d.bmp": 40, "c.jpg": 30, "e.webp": 50, "f.JPEG": 60}
NAME_ORDER = [10, 20, 30, 40, 50, 60]


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    for name, level in LEVELS.items():
        Image.new("RGB", (32, 24), (level, level, level)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()
    return tmp_path


def _level(frame: GrayFrame | None) -> int:
    assert frame is not None
    assert frame.dtype == np.uint8 and frame.ndim == 2 and frame.flags.c_contiguous
    # JPEG and WebP are lossy: round to the nearest level.
    return int(round(float(frame.mean()) / 10) * 10)


def _read_levels(source: FileFrameSource, count: int) -> list[int]:
    return [_level(source.read()) for _ in range(count)]


def test_directory_images_come_in_name_order(image_dir: Path) -> None:
    source = FileFrameSource(FileSourceConfig(paths=[image_dir]))
    assert _read_levels(source, len(LEVELS)) == NAME_ORDER


def test_frames_are_gray_images_of_the_file_size(image_dir: Path) -> None:
    frame = FileFrameSource(FileSourceConfig(paths=[image_dir / "a.png"])).read()
    assert frame is not None and frame.shape == (24, 32)


def test_exhausted_source_returns_none(image_dir: Path) -> None:
    source = FileFrameSource(FileSourceConfig(paths=[image_dir / "c.jpg", image_dir / "a.png"]))
    assert _read_levels(source, 2) == [30, 10]
    assert source.read() is None
    assert source.read() is None


def test_loop_starts_again(image_dir: Path) -> None:
    source = FileFrameSource(FileSourceConfig(paths=[image_dir], loop=True))
    assert _read_levels(source, 3 * len(LEVELS)) == NAME_ORDER * 3


def test_shuffle_is_reproducible_and_new_each_pass(image_dir: Path) -> None:
    config = FileSourceConfig(paths=[image_dir], loop=True, shuffle_seed=7)
    first = _read_levels(FileFrameSource(config), 4 * len(LEVELS))
    again = _read_levels(FileFrameSource(config), 4 * len(LEVELS))
    assert first == again
    passes = [first[i : i + len(LEVELS)] for i in range(0, len(first), len(LEVELS))]
    assert all(sorted(p) == NAME_ORDER for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    rng, expected = random.Random(7), []
    for _ in passes:
        order = list(NAME_ORDER)
        rng.shuffle(order)
        expected += order
    assert first == expected


def test_other_seed_other_order(image_dir: Path) -> None:
    def order(seed: int) -> list[int]:
        config = FileSourceConfig(paths=[image_dir], shuffle_seed=seed)
        return _read_levels(FileFrameSource(config), len(LEVELS))

    assert order(1) != order(2)


def test_interval_spaces_frames(image_dir: Path) -> None:
    interval = 0.05
    source = FileFrameSource(FileSourceConfig(paths=[image_dir], interval_s=interval))
    stamps = []
    for _ in range(4):
        assert source.read() is not None
        stamps.append(time.monotonic())
    gaps = np.diff(stamps)
    # The source stamps a frame just before returning it; allow that sliver of a millisecond.
    assert all(gap >= interval - 0.001 for gap in gaps), gaps


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-frames"
    with pytest.raises(FrameSourceError, match="no-such-frames"):
        FileFrameSource(FileSourceConfig(paths=[missing]))


def test_directory_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FrameSourceError, match="no image files"):
        FileFrameSource(FileSourceConfig(paths=[tmp_path]))


def test_corrupt_image_is_named(image_dir: Path) -> None:
    (image_dir / "aa-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    source = FileFrameSource(FileSourceConfig(paths=[image_dir]))
    assert _level(source.read()) == 10
    with pytest.raises(FrameSourceError, match=r"aa-broken\.png"):
        source.read()


def test_truncated_image_is_named(image_dir: Path) -> None:
    whole = (image_dir / "c.jpg").read_bytes()
    (image_dir / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    source = FileFrameSource(FileSourceConfig(paths=[image_dir / "cut.jpg"]))
    with pytest.raises(FrameSourceError, match=r"cut\.jpg"):
        source.read()


def test_closed_source_gives_no_frames(image_dir: Path) -> None:
    with FileFrameSource(FileSourceConfig(paths=[image_dir], loop=True)) as source:
        assert source.read() is not None
    assert source.read() is None


def test_make_frame_source_builds_the_file_source(image_dir: Path) -> None:
    source = make_frame_source(FileSourceConfig(paths=[image_dir]))
    assert isinstance(source, FileFrameSource)
    assert _level(source.read()) == 10


def test_picamera2_off_the_pi_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "device.camera_pi", raising=False)
    # None in sys.modules makes the import fail, as off the Pi, even where picamera2 exists.
    monkeypatch.setitem(sys.modules, "picamera2", None)
    make_frame_source(FileSourceConfig(paths=[Path(__file__)]))
    assert "device.camera_pi" not in sys.modules
    with pytest.raises(FrameSourceError, match="python3-picamera2"):
        make_frame_source(Picamera2SourceConfig())
    assert "device.camera_pi" in sys.modules


class FakePicamera2:
    """Just enough of picamera2.Picamera2 for the frame source: a YUV420 stream."""

    instances: ClassVar[list[FakePicamera2]] = []

    has_autofocus = True

    def __init__(self, camera_num: int) -> None:
        self.camera_num = camera_num
        self.camera_controls: dict[str, Any] = {"ExposureTime": (29, 15534385, 20000)}
        if self.has_autofocus:
            self.camera_controls["AfMode"] = (0, 2, 0)
        self.calls: list[str] = []
        self.config: dict[str, Any] = {}
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any]) -> Any:
        return {"main": dict(main), "controls": dict(controls)}

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def stream_configuration(self, name: str) -> dict[str, Any]:
        return dict(self.config[name])

    def start(self) -> None:
        self.calls.append("start")

    def capture_array(self, name: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
        width, height = self.config[name]["size"]
        stride = width + 64
        yuv = np.full((height * 3 // 2, stride), 128, dtype=np.uint8)
        yuv[:height, :width] = np.arange(width, dtype=np.uint8)[None, :]
        return yuv

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


@pytest.mark.parametrize("has_autofocus", [True, False])
def test_picamera2_source_returns_the_luma_plane(
    monkeypatch: pytest.MonkeyPatch, has_autofocus: bool
) -> None:
    picamera2 = types.ModuleType("picamera2")
    picamera2.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    libcamera = types.ModuleType("libcamera")
    continuous = object()
    libcamera.controls = types.SimpleNamespace(  # type: ignore[attr-defined]
        AfModeEnum=types.SimpleNamespace(Continuous=continuous)
    )
    monkeypatch.setitem(sys.modules, "picamera2", picamera2)
    monkeypatch.setitem(sys.modules, "libcamera", libcamera)
    monkeypatch.setattr(FakePicamera2, "has_autofocus", has_autofocus)
    FakePicamera2.instances.clear()

    config = Picamera2SourceConfig(width=160, height=120, camera_index=1)
    with closing(make_frame_source(config)) as source:
        frame = source.read()
    camera = FakePicamera2.instances[0]
    assert camera.camera_num == 1
    assert camera.config["main"] == {"size": (160, 120), "format": "YUV420"}
    assert camera.config["controls"] == ({"AfMode": continuous} if has_autofocus else {})
    assert frame is not None and frame.shape == (120, 160) and frame.flags.c_contiguous
    assert (frame == np.arange(160, dtype=np.uint8)[None, :]).all()
    assert camera.calls == ["start", "stop", "close"]
    assert source.read() is None
