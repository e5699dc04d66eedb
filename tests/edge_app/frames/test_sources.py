"""Frame sources and the feeds that read them: real video files, real photos, fake live cameras."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import IMAGES

from edge_app.frames.feeds import FileFeed, LiveFeed
from edge_app.frames.sources import (
    Frame,
    FrameSource,
    ImageFolderSource,
    OpenCVSource,
    PicameraSource,
    VideoFileSource,
    open_source,
    reduce_factor,
)
from edge_app.runtime import read_image
from edge_app.runtime.errors import SourceError


def write_video(path: Path, count: int, size=(640, 480), fourcc="MJPG") -> Path:
    """Frames of a real photo with the frame number drawn in, so order can be checked."""
    base = cv2.resize(cv2.cvtColor(read_image(IMAGES / "bird.bmp"), cv2.COLOR_RGB2BGR), size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 15, size)
    assert writer.isOpened()
    for i in range(count):
        frame = base.copy()
        frame[: size[1] // 4, : size[0] // 4] = (i * 20) % 256  # a block whose brightness encodes i
        writer.write(frame)
    writer.release()
    return path


def block_value(frame: Frame) -> int:
    h, w = frame.image.shape[:2]
    return int(round(float(frame.image[h // 16: h // 8, w // 16: w // 8].mean()) / 20))


@pytest.mark.parametrize("fast", [True, False], ids=["jpeg-packets", "ffmpeg"])
def test_video_file_gives_every_frame_in_order_then_ends(tmp_path, fast, shared):
    path = write_video(tmp_path / "clip.avi", 12)
    with VideoFileSource(path, input_size=(224, 224), fast_decode=fast) as source:
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
    assert [f.index for f in frames] == list(range(12))
    assert [block_value(f) for f in frames] == list(range(12))
    # 640x480 for a 224x224 model: JPEG packets decode at 1/2 scale, FFmpeg at full size.
    assert frames[0].image.shape == ((240, 320, 3) if fast else (480, 640, 3))
    assert (frames[0].jpeg is not None) == fast and frames[0].order == "BGR"
    if fast:
        assert cv2.imdecode(np.frombuffer(frames[0].jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)


@pytest.mark.parametrize("fourcc, suffix", [("mp4v", "mp4"), ("MJPG", "avi")])
def test_looping_starts_over_at_the_first_frame(tmp_path, fourcc, suffix, shared):
    path = write_video(tmp_path / f"clip.{suffix}", 5, fourcc=fourcc)
    with VideoFileSource(path, input_size=(224, 224), loop=True) as source:
        frames = [source.read() for _ in range(12)]
    assert [f.index for f in frames] == list(range(12))
    assert [block_value(f) for f in frames] == [0, 1, 2, 3, 4] * 2 + [0, 1]
    # MPEG-4 is decoded by FFmpeg at full size; MJPEG from its JPEG packets at 1/2 scale.
    assert frames[0].image.shape == ((480, 640, 3) if fourcc == "mp4v" else (240, 320, 3))


def test_reduce_factor_never_goes_below_the_model_size():
    assert reduce_factor(640, 480, (224, 224)) == 2
    assert reduce_factor(1920, 1080, (224, 224)) == 4
    assert reduce_factor(4000, 3000, (224, 224)) == 8
    assert reduce_factor(400, 300, (224, 224)) == 1
    assert reduce_factor(640, 480, None) == 1


def test_bad_files_and_folders_say_what_to_do(tmp_path):
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + bytes(1000))
    with pytest.raises(SourceError, match="corrupt.avi: OpenCV cannot open it"):
        VideoFileSource(corrupt).open()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        ImageFolderSource(empty).open()
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="picamera:1"):
        open_source("picamera:front")


def test_open_source_picks_the_kind(tmp_path, shared):
    assert isinstance(open_source("0"), OpenCVSource) and open_source("0").live
    camera = open_source("picamera:1", input_size=(192, 256))
    assert isinstance(camera, PicameraSource) and camera.camera_num == 1 and camera.lores_size == (256, 192)
    stream = open_source("rtsp://admin:secret@10.0.0.5/live")
    assert isinstance(stream, OpenCVSource) and "secret" not in stream.name and "admin:***@" in stream.name
    assert isinstance(open_source(str(IMAGES)), ImageFolderSource)
    assert isinstance(open_source(str(IMAGES / "parrot.jpg")), ImageFolderSource)
    assert isinstance(open_source(str(write_video(tmp_path / "v.avi", 2))), VideoFileSource)


def test_image_folder_reads_every_photo_and_skips_broken_ones(tmp_path, caplog, shared):
    for name in ("parrot.jpg", "bird.bmp"):
        (tmp_path / name).write_bytes((IMAGES / name).read_bytes())
    (tmp_path / "b_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with ImageFolderSource(tmp_path) as source:
        frames = [source.read(), source.read()]
        assert source.read() is None
    assert [f.index for f in frames] == [0, 1] and all(f.order == "RGB" for f in frames)
    assert np.array_equal(frames[1].image, read_image(IMAGES / "parrot.jpg"))
    assert "b_broken.jpg" in caplog.text


class CountingCamera(FrameSource):
    """A fast live source: a new frame every millisecond."""

    live = True
    name = "counting camera"

    def __init__(self):
        self.index = 0

    def open(self):
        pass

    def read(self):
        time.sleep(0.001)
        self.index += 1
        return Frame(np.zeros((4, 4, 3), np.uint8), "RGB", self.index, time.time())


def test_live_feed_hands_over_the_newest_frame_and_drops_the_rest():
    feed = LiveFeed(CountingCamera())
    feed.start()
    try:
        taken = []
        for _ in range(5):
            taken.append(feed.get(timeout=5).index)
            time.sleep(0.03)  # a slow model: the camera runs ahead meanwhile
    finally:
        feed.stop()
    assert taken == sorted(set(taken))  # never the same frame twice, never an older one
    assert max(b - a for a, b in zip(taken, taken[1:], strict=False)) > 1 and feed.dropped > 0


def test_an_error_without_a_message_does_not_end_the_reopen_loop():
    """A driver that raises a bare RuntimeError() once killed the capture thread (IndexError on '')."""

    class Silent(CountingCamera):
        def __init__(self):
            super().__init__()
            self.failures = {"read": 1, "open": 1}

        def read(self):
            if self.index == 3 and self.failures["read"]:
                self.failures["read"] -= 1
                raise RuntimeError()
            return super().read()

        def open(self):
            if self.index and self.failures["open"]:
                self.failures["open"] -= 1
                raise OSError()

    events = []
    feed = LiveFeed(Silent(), backoff_s=0.01, on_event=lambda name, detail: events.append((name, detail)))
    feed.start()
    try:
        deadline = time.monotonic() + 10
        while feed.reopens == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert feed.get(timeout=5).index > 3
    finally:
        feed.stop()
    assert feed.reopens == 1 and events[0] == ("source_lost", "RuntimeError")


def test_file_feed_keeps_every_frame_and_reports_errors(tmp_path, shared):
    feed = FileFeed(VideoFileSource(write_video(tmp_path / "v.avi", 8), (224, 224)),
                    prepare=lambda f: setattr(f, "tensor", f.image[:2]), depth=1)
    feed.start()
    frames = []
    while (frame := feed.get(timeout=10)) is not None:
        frames.append(frame)
        time.sleep(0.01)
    feed.stop()
    assert [f.index for f in frames] == list(range(8)) and all(f.tensor is not None for f in frames)

    class Broken(VideoFileSource):
        def read(self):
            raise OSError("disk read error")

    broken = FileFeed(Broken(tmp_path / "v.avi"))
    broken.start()
    with pytest.raises(SourceError, match="disk read error"):
        broken.get(timeout=10)
    broken.stop()
    assert not any(t.name == "edgecls-decode" and t.is_alive() for t in threading.enumerate())


def test_a_corrupt_frame_is_skipped_with_a_warning(tmp_path, caplog, shared):
    path = write_video(tmp_path / "clip.avi", 6)
    data = bytearray(path.read_bytes())
    third = [i for i in range(len(data) - 1) if data[i:i + 3] == b"\xff\xd8\xff"][2]
    data[third:third + 2] = b"\x00\x00"  # frame 2 no longer starts like a JPEG
    path.write_bytes(bytes(data))
    with VideoFileSource(path, input_size=(224, 224)) as source:
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
    assert [block_value(f) for f in frames] == [0, 1, 3, 4, 5]
    assert "frame 2 is corrupt; skipping it" in caplog.text
