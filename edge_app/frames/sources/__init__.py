"""Frame sources: ``open_source(--source)`` makes the right one; see :mod:`edge_app.frames.sources.base`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge_app.frames.sources.base import Frame, FrameSource
from edge_app.frames.sources.camera import OpenCVSource
from edge_app.frames.sources.folder import ImageFolderSource
from edge_app.frames.sources.picamera import PicameraSource
from edge_app.frames.sources.video import VideoFileSource
from edge_app.runtime.errors import SourceError
from edge_app.runtime.images import IMAGE_SUFFIXES, reduce_factor

__all__ = ["Frame", "FrameSource", "ImageFolderSource", "OpenCVSource", "PicameraSource", "VideoFileSource",
           "open_source", "reduce_factor"]

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
SOURCE_HELP = ("a camera index (0), picamera (or picamera:1), a video file, an image folder, "
               "or an rtsp:// / http:// stream URL")


def open_source(spec: str, input_size: tuple[int, int] | None = None, loop: bool = False,
                fast_decode: bool = True, want_display: bool | Callable[[], bool] = False,
                picamera_factory=None, max_pixels: int | None = None) -> FrameSource:
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
        return ImageFolderSource(path, loop=loop, min_size=input_size, max_pixels=max_pixels)
    if path.is_file():
        return VideoFileSource(path, input_size, loop=loop, fast_decode=fast_decode)
    if spec.startswith("/dev/video"):
        return OpenCVSource(spec)
    raise SourceError(f"--source {spec}: no such file or folder; pass {SOURCE_HELP}")
