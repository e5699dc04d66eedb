"""Where frames come from: one small interface, one class per kind of source.

``FrameSource`` is all the live loop knows. Concrete sources import their hardware library
(OpenCV, picamera2) inside ``open()``, so this module imports anywhere, camera or not.

- :class:`PicameraSource` — the Raspberry Pi camera through picamera2: a low-resolution stream
  sized for the model (the ISP does the scaling) and a main stream for display.
- :class:`OpenCVSource` — a camera index (``0``) or an ``rtsp://``/``http://`` stream.
- :class:`VideoFileSource` — every frame of a video file, in order.
- :class:`ImageFolderSource` — every image of a folder, in name order.

Live sources (``live = True``) are read by a capture thread that keeps only the newest frame;
file sources by a decode thread feeding a short queue (see :mod:`edge_app.feeds`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.errors import ImageError, SourceError
from edge_app.runtime.preprocess import IMAGE_SUFFIXES, list_images, read_image

log = logging.getLogger("edgecls")

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
SOURCE_HELP = ("a camera index (0), picamera (or picamera:1), a video file, an image folder, "
               "or an rtsp:// / http:// stream URL")


@dataclass
class Frame:
    """One frame and what the loop needs to know about it.

    Attributes:
        image: ``uint8 (H, W, 3)`` pixels, in ``order``.
        order: ``"RGB"`` or ``"BGR"``: the classifier swaps after resizing, which is cheaper
            than converting the full frame.
        index: frame number from the source (0-based; gaps mean a live source dropped frames).
        t: ``time.time()`` when the frame was captured or decoded.
        jpeg: the frame's own JPEG bytes when the source had them (MJPEG files), served
            to the web view as they are instead of re-encoding.
        display: a larger BGR frame for the window and the web view (picamera's main stream).
        tensor: the model input, when the decode thread pre-processed it.
        preprocess_ms: how long that pre-processing took.
    """

    image: np.ndarray
    order: str
    index: int
    t: float
    jpeg: bytes | None = None
    display: np.ndarray | None = None
    tensor: np.ndarray | None = None
    preprocess_ms: float = 0.0

    def view_bgr(self) -> np.ndarray:
        """The frame to show people, BGR (what OpenCV draws on and encodes)."""
        import cv2

        if self.display is not None:
            return self.display
        return self.image if self.order == "BGR" else cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR)


class FrameSource(ABC):
    """A camera, stream, video or folder that yields :class:`Frame` objects.

    ``read()`` returns ``None`` at the end of a file source; a live source that fails raises
    :class:`SourceError` and is reopened by its capture thread.

    Example:
        >>> with VideoFileSource("field.avi") as source:
        ...     frame = source.read()
    """

    live = False
    name = "source"

    @abstractmethod
    def open(self) -> None:
        """Open the device or file; raise :class:`SourceError` saying how to fix it."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame; ``None`` when a file source is exhausted."""

    def close(self) -> None:  # noqa: B027 - optional: folders hold nothing open
        """Release the device or file. Safe to call twice."""

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def reduce_factor(width: int, height: int, input_size: tuple[int, int] | None) -> int:
    """The largest JPEG DCT scale (1, 2, 4, 8) that keeps the frame at least the model's size.

    libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the work; the classifier's own
    resize then finishes the job, as the Pi's ISP does for the camera's low-resolution stream.
    """
    if not input_size or width <= 0 or height <= 0:
        return 1
    model_h, model_w = input_size
    factor = 1
    while factor < 8 and width // (factor * 2) >= model_w and height // (factor * 2) >= model_h:
        factor *= 2
    return factor


class VideoFileSource(FrameSource):
    """Every frame of a video file, in order, then ``None`` (or from the start again with ``loop``).

    MJPEG files (what cameras record and OpenCV writes) are read as raw JPEG packets and decoded
    at the smallest DCT scale that still covers ``input_size``: a fraction of the decode cost.
    """

    def __init__(self, path: str | Path, input_size: tuple[int, int] | None = None, loop: bool = False,
                 fast_decode: bool = True):
        self.path = Path(path)
        self.name = str(path)
        self.input_size = input_size
        self.loop = loop
        self.fast_decode = fast_decode
        self._cap = None
        self._flags = 0
        self._raw = False
        self._index = 0
        self._decode_once = False

    def open(self) -> None:
        import cv2

        if not self.path.is_file():
            raise SourceError(f"video {self.path}: no such file; check the path")
        self._raw = False
        with _quiet_opencv():
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"video {self.path}: OpenCV cannot open it (corrupt, or a codec this "
                              "OpenCV lacks); re-encode it, e.g. ffmpeg -i IN -c:v mjpeg OUT.avi")
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("latin-1").upper()
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.fast_decode and fourcc in ("MJPG", "MJPA", "AVRN", "JPEG") and cap.set(cv2.CAP_PROP_FORMAT, -1):
            factor = reduce_factor(width, height, self.input_size)
            self._flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                           8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
            self._raw = True
            self._decode_once = True
            log.debug("%s: MJPEG %dx%d, decoding JPEG packets at 1/%d scale", self.path.name, width, height, factor)
        self._cap = cap
        if not self._decode_once:
            log.debug("%s: %s %dx%d, decoded by FFmpeg", self.path.name, fourcc, width, height)

    def read(self) -> Frame | None:
        import cv2

        if self._cap is None:
            raise SourceError(f"video {self.path} is not open")
        ok, data = self._cap.read()
        if not ok:
            if not self.loop or self._index == 0:
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, data = self._cap.read()
            if not ok:
                # Some containers cannot seek: reopen from the start instead.
                self.close()
                self.open()
                ok, data = self._cap.read()
                if not ok:
                    return None
        t = time.time()
        jpeg = None
        if self._raw:
            jpeg = data.tobytes()
            image = cv2.imdecode(data, self._flags)
            if image is None and self._decode_once:
                # Not plain JPEG packets after all (the first frame after open): FFmpeg decodes instead.
                log.debug("%s: raw packets are not decodable JPEG; using FFmpeg", self.path.name)
                self.fast_decode = False
                self.close()
                self.open()
                return self.read()
            self._decode_once = False
            if image is None:
                log.warning("%s: frame %d is corrupt; skipping it", self.path, self._index)
                self._index += 1
                return self.read()
        else:
            image = data
        frame = Frame(image, "BGR", self._index, t, jpeg=jpeg)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource(FrameSource):
    """Every image in a folder (or one image file), in name order; unreadable images are skipped with a warning."""

    def __init__(self, path: str | Path, loop: bool = False):
        self.path = Path(path)
        self.name = str(path)
        self.loop = loop
        self._files: list[Path] = []
        self._next = 0
        self._index = 0

    def open(self) -> None:
        if not self.path.exists():
            raise SourceError(f"image folder {self.path}: no such folder; check the path")
        self._files = list_images(self.path)
        if not self._files:
            raise SourceError(f"image folder {self.path} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                              "point --source at a folder of photos")
        self._next = 0

    def read(self) -> Frame | None:
        skipped = 0
        while True:
            if self._next >= len(self._files):
                if not self.loop or skipped >= len(self._files):
                    return None
                self._next = 0
            path = self._files[self._next]
            self._next += 1
            try:
                image = read_image(path)
            except ImageError as e:
                log.warning("skipping %s", e)
                skipped += 1
                continue
            frame = Frame(image, "RGB", self._index, time.time())
            self._index += 1
            return frame


class OpenCVSource(FrameSource):
    """A camera by index (``/dev/videoN``) or a network stream URL, read through OpenCV."""

    live = True

    def __init__(self, device: int | str, size: tuple[int, int] | None = None):
        self.device = device
        self.name = f"camera {device}" if isinstance(device, int) else _redact(str(device))
        self.size = size
        self._cap = None
        self._index = 0

    def open(self) -> None:
        import cv2

        if isinstance(self.device, int) or self.device.startswith("/dev/"):
            with _quiet_opencv():
                cap = cv2.VideoCapture(self.device)
            if self.size:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            fix = ("is a camera plugged in (ls /dev/video*)? Is another program using it? "
                   "Is this user in the 'video' group? On a Pi camera module use --source picamera")
        else:
            # Bounded waits: a stream that stalls fails a read (and is reopened) instead of hanging.
            with _quiet_opencv():
                cap = cv2.VideoCapture(self.device, cv2.CAP_FFMPEG, [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5_000])
            fix = "check the URL, the network and the camera's user name and password"
        # The driver's own queue adds latency; one buffer keeps frames fresh where supported.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"could not open {self.name}: {fix}")
        self._cap = cap

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"{self.name} is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceError(f"{self.name} stopped delivering frames")
        frame = Frame(image, "BGR", self._index, time.time())
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class PicameraSource(FrameSource):
    """The Raspberry Pi camera through picamera2.

    Two streams from one sensor readout: ``lores`` at the model's input size (the ISP scales,
    not the CPU) for the classifier, ``main`` for the window and web view. picamera2's
    ``"RGB888"`` is B, G, R in memory, so frames are handed on as ``"BGR"`` and swapped after
    resizing. Pi 4 and older only give YUV420 on the low-resolution stream; that is converted.

    Args:
        camera_num: which camera (``picamera:1`` on a Pi 5 or CM4 with two).
        lores_size: ``(width, height)`` for the classifier; the model's input size.
        main_size: ``(width, height)`` for display.
        want_display: also capture the main stream, or a function saying whether to, asked per
            frame (the web view wants it only while someone watches: the copy costs a Pi Zero).
        factory: the ``Picamera2`` class; tests pass a fake.
    """

    live = True

    def __init__(self, camera_num: int = 0, lores_size: tuple[int, int] = (224, 224),
                 main_size: tuple[int, int] = (640, 480), want_display: bool | Callable[[], bool] = False,
                 factory=None):
        self.camera_num = camera_num
        self.name = f"picamera:{camera_num}"
        # The ISP wants even sizes; lores must not exceed main.
        self.lores_size = (min(_even(lores_size[0]), main_size[0]), min(_even(lores_size[1]), main_size[1]))
        self.main_size = main_size
        self.want_display = want_display
        self.factory = factory
        self._camera = None
        self._yuv = False
        self._index = 0

    def open(self) -> None:
        factory = self.factory
        if factory is None:
            try:
                from picamera2 import Picamera2 as factory
            except ImportError as e:
                raise SourceError("--source picamera needs picamera2: sudo apt install python3-picamera2, and "
                                  "create the venv with --system-site-packages (see the README's Raspberry Pi "
                                  "section)") from e
        try:
            camera = factory(self.camera_num)
        except (RuntimeError, IndexError, OSError) as e:
            raise SourceError(f"could not open {self.name} ({e}): is the camera cable seated and the camera "
                              "listed by 'rpicam-hello --list-cameras'? Is another program using it?") from e
        try:
            self._yuv = False
            try:
                camera.configure(self._configuration(camera, "RGB888"))
            except (RuntimeError, ValueError):
                # Pi 4 and older: the low-resolution stream must be YUV420.
                self._yuv = True
                camera.configure(self._configuration(camera, "YUV420"))
            camera.start()
        except Exception as e:
            camera.close()
            raise SourceError(f"could not start {self.name}: {e}") from e
        self._camera = camera

    def _configuration(self, camera, lores_format: str):
        return camera.create_preview_configuration(
            main={"size": self.main_size, "format": "RGB888"},
            lores={"size": self.lores_size, "format": lores_format},
            buffer_count=4,
        )

    def read(self) -> Frame | None:
        import cv2

        if self._camera is None:
            raise SourceError(f"{self.name} is not open")
        try:
            wanted = self.want_display() if callable(self.want_display) else self.want_display
            if wanted:
                (lores, main), _ = self._camera.capture_arrays(["lores", "main"])
            else:
                lores, main = self._camera.capture_array("lores"), None
        except Exception as e:
            raise SourceError(f"{self.name} stopped delivering frames ({e})") from e
        t = time.time()
        if self._yuv:
            lores = cv2.cvtColor(lores, cv2.COLOR_YUV2BGR_I420)
        image = lores[..., :3] if lores.shape[-1] == 4 else lores
        display = main[..., :3] if main is not None and main.shape[-1] == 4 else main
        frame = Frame(image, "BGR", self._index, t, display=display)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._camera is not None:
            camera, self._camera = self._camera, None
            try:
                camera.stop()
            finally:
                camera.close()


@contextlib.contextmanager
def _quiet_opencv():
    """Silence OpenCV's own warnings while opening: our SourceError says what happened and what to do."""
    import cv2

    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def _even(n: int) -> int:
    return max(2, n + (n % 2))


def _redact(url: str) -> str:
    """``rtsp://user:secret@host/`` → ``rtsp://user:***@host/``: logs never hold passwords."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_source(spec: str, input_size: tuple[int, int] | None = None, loop: bool = False,
                fast_decode: bool = True, want_display: bool | Callable[[], bool] = False,
                picamera_factory=None) -> FrameSource:
    """Make the :class:`FrameSource` that ``--source`` names (not yet opened).

    Args:
        spec: ``picamera``/``picamera:N``, a camera index, a video file, an image folder or file,
            or a stream URL.
        input_size: the model's ``(height, width)``: picamera's low-resolution stream and the
            JPEG decode scale follow it.
        loop: start file sources over at their end (a kiosk demo).

    Example:
        >>> source = open_source("0")               # the first USB camera
        >>> source = open_source("field.avi", (224, 224))
    """
    spec = str(spec).strip()
    if spec == "picamera" or spec.startswith("picamera:"):
        num = spec.partition(":")[2] or "0"
        if not num.isdigit():
            raise SourceError(f"--source {spec}: the camera number must be an integer, e.g. picamera:1")
        lores = (input_size[1], input_size[0]) if input_size else (224, 224)
        return PicameraSource(int(num), lores, want_display=want_display, factory=picamera_factory)
    if spec.isdigit():
        return OpenCVSource(int(spec))
    if spec.lower().startswith(URL_SCHEMES):
        return OpenCVSource(spec)
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        return ImageFolderSource(path, loop=loop)
    if path.is_file():
        return VideoFileSource(path, input_size, loop=loop, fast_decode=fast_decode)
    if spec.startswith("/dev/video"):
        return OpenCVSource(spec)
    raise SourceError(f"--source {spec}: no such file or folder; pass {SOURCE_HELP}")
