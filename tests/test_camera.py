"""Frame sources: image files in order, looped, shuffled and paced; cameras off the Pi;
the newest-frame mailbox in front of live cameras."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
import types
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from broker.settings import FileSourceConfig, Picamera2SourceConfig, V4L2SourceConfig
from device import camera_v4l2
from device.camera import FileFrameSource, FrameRate, LatestFrame, make_frame_source
from device.camera_v4l2 import V4L2FrameSource, device_argument
from device.decoder import GrayFrame
from device.errors import FrameSourceError

ROOT = Path(__file__).resolve().parents[1]
# A bound on waits for a thread to finish: liveness, not speed.
DEADLINE_S = 30.0

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
    has_exposure_value = True

    def __init__(self, camera_num: int) -> None:
        self.camera_num = camera_num
        self.camera_controls: dict[str, Any] = {"ExposureTime": (29, 15534385, 20000)}
        if self.has_autofocus:
            self.camera_controls["AfMode"] = (0, 2, 0)
        if self.has_exposure_value:
            self.camera_controls["ExposureValue"] = (-8.0, 8.0, 0.0)
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
        # A real capture waits for the next frame; without a pause the grabber would spin.
        time.sleep(0.002)
        width, height = self.config[name]["size"]
        stride = width + 64
        yuv = np.full((height * 3 // 2, stride), 128, dtype=np.uint8)
        yuv[:height, :width] = np.arange(width, dtype=np.uint8)[None, :]
        return yuv

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


CONTINUOUS_AF = object()


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> type[FakePicamera2]:
    picamera2 = types.ModuleType("picamera2")
    picamera2.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    libcamera = types.ModuleType("libcamera")
    libcamera.controls = types.SimpleNamespace(  # type: ignore[attr-defined]
        AfModeEnum=types.SimpleNamespace(Continuous=CONTINUOUS_AF)
    )
    monkeypatch.setitem(sys.modules, "picamera2", picamera2)
    monkeypatch.setitem(sys.modules, "libcamera", libcamera)
    FakePicamera2.instances.clear()
    return FakePicamera2


def _camera_controls(config: Picamera2SourceConfig) -> dict[str, Any]:
    with closing(make_frame_source(config)):
        pass
    controls: dict[str, Any] = FakePicamera2.instances[-1].config["controls"]
    return controls


@pytest.mark.parametrize("has_autofocus", [True, False])
def test_picamera2_source_returns_the_luma_plane(
    monkeypatch: pytest.MonkeyPatch, fake_picamera2: type[FakePicamera2], has_autofocus: bool
) -> None:
    monkeypatch.setattr(fake_picamera2, "has_autofocus", has_autofocus)

    config = Picamera2SourceConfig(width=160, height=120, camera_index=1)
    with closing(make_frame_source(config)) as source:
        assert isinstance(source, LatestFrame)
        frame = source.read()
    camera = FakePicamera2.instances[0]
    assert camera.camera_num == 1
    assert camera.config["main"] == {"size": (160, 120), "format": "YUV420"}
    assert camera.config["controls"] == ({"AfMode": CONTINUOUS_AF} if has_autofocus else {})
    assert frame is not None and frame.shape == (120, 160) and frame.flags.c_contiguous
    assert (frame == np.arange(160, dtype=np.uint8)[None, :]).all()
    assert camera.calls == ["start", "stop", "close"]
    assert source.read() is None


def test_picamera2_autofocus_can_be_switched_off(fake_picamera2: type[FakePicamera2]) -> None:
    assert _camera_controls(Picamera2SourceConfig(autofocus=False)) == {}


def test_picamera2_exposure_value_is_set_when_not_zero(
    fake_picamera2: type[FakePicamera2],
) -> None:
    controls = _camera_controls(Picamera2SourceConfig(autofocus=False, exposure_value=1.5))
    assert controls == {"ExposureValue": 1.5}
    assert _camera_controls(Picamera2SourceConfig(exposure_value=-2)) == {
        "AfMode": CONTINUOUS_AF,
        "ExposureValue": -2.0,
    }


def test_picamera2_without_exposure_value_warns(
    monkeypatch: pytest.MonkeyPatch,
    fake_picamera2: type[FakePicamera2],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(fake_picamera2, "has_exposure_value", False)
    with caplog.at_level(logging.WARNING, logger="device.camera_pi"):
        controls = _camera_controls(Picamera2SourceConfig(exposure_value=1.0))
    assert controls == {"AfMode": CONTINUOUS_AF}
    assert "ExposureValue" in caplog.text


# --- the V4L2 webcam ---------------------------------------------------------------------


def test_v4l2_device_digits_are_an_index() -> None:
    assert device_argument("0") == 0
    assert device_argument("12") == 12
    assert device_argument(" 3 ") == 3
    assert device_argument("/dev/video2") == "/dev/video2"
    assert device_argument("/dev/v4l/by-id/usb-cam-video-index0") == (
        "/dev/v4l/by-id/usb-cam-video-index0"
    )


def test_v4l2_missing_device_is_named() -> None:
    pytest.importorskip("cv2")
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a /dev/video0")
    with pytest.raises(FrameSourceError, match="/dev/video0"):
        V4L2FrameSource(V4L2SourceConfig(device="/dev/video0"))
    with pytest.raises(FrameSourceError, match="/dev/video0"):
        make_frame_source(V4L2SourceConfig())


def test_v4l2_without_opencv_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(FrameSourceError, match=r"qrgate\[webcam\]"):
        V4L2FrameSource(V4L2SourceConfig())


def test_opencv_is_imported_only_for_the_webcam(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    image = tmp_path / "a.png"
    Image.new("L", (8, 8)).save(image)
    script = """
import sys
from pathlib import Path
from broker.settings import FileSourceConfig, V4L2SourceConfig
from device.camera import make_frame_source
from device.errors import FrameSourceError

make_frame_source(FileSourceConfig(paths=[Path(sys.argv[1])])).read()
print("file source, cv2 loaded:", "cv2" in sys.modules)
try:
    make_frame_source(V4L2SourceConfig(device=sys.argv[2]))
except FrameSourceError as exc:
    print("webcam error:", exc)
print("webcam, cv2 loaded:", "cv2" in sys.modules)
"""
    missing = str(tmp_path / "no-such-video")
    result = subprocess.run(
        [sys.executable, "-c", script, str(image), missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines == [
        "file source, cv2 loaded: False",
        f"webcam error: cannot open video device {missing}",
        "webcam, cv2 loaded: True",
    ]


class FakeCapture:
    """cv2.VideoCapture stand-in: plays back a list of BGR frames (None: a failed read)."""

    instances: ClassVar[list[FakeCapture]] = []
    opens = True
    script: ClassVar[list[np.ndarray[Any, np.dtype[np.uint8]] | None]] = []

    def __init__(self, device: int | str, api: int) -> None:
        self.device, self.api = device, api
        self.props: dict[int, float] = {}
        self.frames = list(self.script)
        self.released = False
        FakeCapture.instances.append(self)

    def isOpened(self) -> bool:
        return self.opens

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray[Any, np.dtype[np.uint8]] | None]:
        frame = self.frames.pop(0) if self.frames else None
        return frame is not None, frame

    def release(self) -> None:
        self.released = True


@pytest.fixture
def fake_cv2(monkeypatch: pytest.MonkeyPatch) -> Any:
    """OpenCV with a fake capture; the colour conversion is the real one."""
    cv2 = pytest.importorskip("cv2")
    fake = types.ModuleType("cv2")
    for name in (
        "CAP_V4L2",
        "CAP_PROP_FRAME_WIDTH",
        "CAP_PROP_FRAME_HEIGHT",
        "CAP_PROP_BUFFERSIZE",
    ):
        setattr(fake, name, getattr(cv2, name))
    fake.COLOR_BGR2GRAY = cv2.COLOR_BGR2GRAY  # type: ignore[attr-defined]
    fake.cvtColor = cv2.cvtColor  # type: ignore[attr-defined]
    fake.VideoCapture = FakeCapture  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cv2", fake)
    monkeypatch.setattr(FakeCapture, "opens", True)
    monkeypatch.setattr(FakeCapture, "script", [])
    monkeypatch.setattr(camera_v4l2, "RETRY_PAUSE_S", 0.0)
    FakeCapture.instances.clear()
    return cv2


def _bgr(blue: int, green: int, red: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    frame = np.empty((6, 8, 3), dtype=np.uint8)
    frame[:] = (blue, green, red)
    return frame


@pytest.mark.parametrize(("device", "opened"), [("2", 2), ("/dev/video2", "/dev/video2")])
def test_v4l2_opens_the_device_by_index_or_path(
    fake_cv2: Any, device: str, opened: int | str
) -> None:
    FakeCapture.script = [_bgr(0, 255, 0)]
    with V4L2FrameSource(V4L2SourceConfig(device=device, width=320, height=240)) as source:
        frame = source.read()
    capture = FakeCapture.instances[0]
    assert (capture.device, capture.api) == (opened, fake_cv2.CAP_V4L2)
    assert capture.props[fake_cv2.CAP_PROP_FRAME_WIDTH] == 320
    assert capture.props[fake_cv2.CAP_PROP_FRAME_HEIGHT] == 240
    assert capture.props[fake_cv2.CAP_PROP_BUFFERSIZE] == 1
    assert frame is not None and frame.shape == (6, 8) and frame.dtype == np.uint8
    # Green weighs 0.587 in ITU-R BT.601 luma: 255 * 0.587 = 149.7.
    assert (frame == 150).all()
    assert capture.released
    assert source.read() is None


def test_v4l2_device_that_does_not_open_is_named_and_released(fake_cv2: Any) -> None:
    FakeCapture.opens = False
    with pytest.raises(FrameSourceError, match="/dev/video7"):
        V4L2FrameSource(V4L2SourceConfig(device="/dev/video7"))
    assert FakeCapture.instances[0].released


def test_v4l2_rides_out_a_dropped_frame_but_not_a_dead_camera(fake_cv2: Any) -> None:
    FakeCapture.script = [_bgr(0, 0, 0), None, _bgr(10, 10, 10)]
    with V4L2FrameSource(V4L2SourceConfig(device="1")) as source:
        first, second = source.read(), source.read()
        assert first is not None and (first == 0).all()
        assert second is not None and (second == 10).all()
        with pytest.raises(FrameSourceError, match="video device 1 gave no frame"):
            source.read()


def test_make_frame_source_puts_the_webcam_behind_latest_frame(fake_cv2: Any) -> None:
    FakeCapture.script = [_bgr(50, 50, 50)]
    with closing(make_frame_source(V4L2SourceConfig())) as source:
        assert isinstance(source, LatestFrame)
        frame = source.read()
        assert frame is not None and (frame == 50).all()
        # The fake camera then fails for good: the error reaches the reader.
        with pytest.raises(FrameSourceError, match="gave no frame"):
            source.read()
    assert FakeCapture.instances[0].released


# --- the newest-frame mailbox ------------------------------------------------------------


def numbered(n: int) -> GrayFrame:
    """A tiny frame that carries its sequence number."""
    return np.frombuffer(n.to_bytes(8, "big"), dtype=np.uint8).reshape(1, 8).copy()


def number(frame: GrayFrame | None) -> int:
    assert frame is not None
    return int.from_bytes(frame.tobytes(), "big")


class NumberedCamera:
    """A fake live camera that films numbered frames, one per ``interval_s``."""

    def __init__(
        self,
        *,
        interval_s: float = 0.001,
        fail_after: int | None = None,
        end_after: int | None = None,
        hang_after: int | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.fail_after = fail_after
        self.end_after = end_after
        self.hang_after = hang_after
        self.count = 0
        self.closed = False
        self.readers: set[threading.Thread] = set()
        self.hanging = threading.Event()
        self.unstuck = threading.Event()

    def read(self) -> GrayFrame | None:
        self.readers.add(threading.current_thread())
        if self.hang_after is not None and self.count >= self.hang_after:
            self.hanging.set()
            self.unstuck.wait()
        time.sleep(self.interval_s)
        if self.fail_after is not None and self.count >= self.fail_after:
            raise RuntimeError("sensor unplugged")
        if self.end_after is not None and self.count >= self.end_after:
            return None
        self.count += 1
        return numbered(self.count)

    def close(self) -> None:
        self.closed = True


def _wait_ended(threads: set[threading.Thread]) -> None:
    for thread in threads:
        thread.join(DEADLINE_S)
    assert not any(thread.is_alive() for thread in threads)


def test_slow_reader_gets_ever_newer_frames_and_the_rest_are_dropped() -> None:
    camera = NumberedCamera()
    source = LatestFrame(camera)
    seen = []
    for _ in range(8):
        seen.append(number(source.read()))
        time.sleep(0.02)  # a decode slower than the camera
    source.close()
    assert seen == sorted(set(seen)), "a frame older than or equal to the previous one"
    assert source.dropped > 0
    # Every grabbed frame was read, dropped, or left in the mailbox at close.
    assert source.grabbed - source.dropped - len(seen) in (0, 1)
    assert source.frames_per_second() > 0


def test_close_ends_the_grabber_and_closes_the_camera() -> None:
    camera = NumberedCamera()
    source = LatestFrame(camera)
    assert source.read() is not None
    source.close()
    assert camera.readers and not any(thread.is_alive() for thread in camera.readers)
    assert camera.closed
    assert source.read() is None


def test_camera_error_surfaces_from_read_as_frame_source_error() -> None:
    camera = NumberedCamera(interval_s=0.005, fail_after=3)
    with LatestFrame(camera) as source:
        numbers = []
        with pytest.raises(FrameSourceError, match="sensor unplugged") as raised:
            while True:
                numbers.append(number(source.read()))
        assert isinstance(raised.value.__cause__, RuntimeError)
        # Frames filmed before the failure are not lost: the last one always arrives.
        assert numbers and numbers[-1] == 3 and numbers == sorted(set(numbers))
        _wait_ended(camera.readers)
        assert camera.closed
        with pytest.raises(FrameSourceError):
            source.read()


def test_exhausted_camera_gives_its_last_frame_then_none() -> None:
    camera = NumberedCamera(interval_s=0.002, end_after=5)
    with LatestFrame(camera) as source:
        numbers = []
        while (frame := source.read()) is not None:
            numbers.append(number(frame))
        assert numbers[-1] == 5 and numbers == sorted(set(numbers))
        assert source.read() is None
        _wait_ended(camera.readers)
        assert camera.closed


def test_close_wakes_a_reader_even_when_the_camera_hangs() -> None:
    camera = NumberedCamera(hang_after=2)
    source = LatestFrame(camera, join_timeout_s=0.05)
    numbers: list[int] = []

    def read_all() -> None:
        while (frame := source.read()) is not None:
            numbers.append(number(frame))

    reader = threading.Thread(target=read_all)
    reader.start()
    assert camera.hanging.wait(DEADLINE_S)
    source.close()
    reader.join(DEADLINE_S)
    assert not reader.is_alive()
    assert numbers == sorted(set(numbers)) and set(numbers) <= {1, 2}
    assert not camera.closed, "closed under a read still in progress"
    camera.unstuck.set()
    _wait_ended(camera.readers)
    assert camera.closed


# --- frame rates -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_frame_rate_counts_the_last_seconds_only() -> None:
    clock = FakeClock()
    rate = FrameRate(window_s=2.0, clock=clock)
    assert rate.per_second() == 0.0
    for _ in range(21):  # 20 frames a second for one second
        rate.tick()
        clock.now += 0.05
    assert rate.per_second() == pytest.approx(20.0)
    for _ in range(11):  # then 5 a second: the 20 a second ages out of the window
        rate.tick()
        clock.now += 0.2
    assert rate.per_second() == pytest.approx(5.0)
    clock.now += 10
    assert rate.per_second() == 0.0


def test_file_source_reports_its_frame_rate(image_dir: Path) -> None:
    interval = 0.02
    source = FileFrameSource(FileSourceConfig(paths=[image_dir], interval_s=interval))
    assert source.frames_per_second() == 0.0
    for _ in range(5):
        source.read()
    # Pacing keeps frames at least ``interval`` apart.
    assert 0 < source.frames_per_second() <= 1 / interval + 1e-6
