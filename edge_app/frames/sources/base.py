"""Where frames come from: one small interface, one module per kind of source.

``FrameSource`` is all the live loop knows. Concrete sources import their hardware library
(OpenCV, picamera2) inside ``open()``, so this module imports anywhere, camera or not.

- :class:`PicameraSource` — the Raspberry Pi camera through picamera2: a low-resolution stream
  sized for the model (the ISP does the scaling) and a main stream for display.
- :class:`OpenCVSource` — a camera index (``0``) or an ``rtsp://``/``http://`` stream.
- :class:`VideoFileSource` — every frame of a video file, in order.
- :class:`ImageFolderSource` — every image of a folder, in name order.

Live sources (``live = True``) are read by a capture thread that keeps only the newest frame;
file sources by a decode thread feeding a short queue (see :mod:`edge_app.frames.feeds`).
"""


from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


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
        spec: the :class:`~edge_app.runtime.InputSpec` that ``tensor`` was made for.
        file: the image file's name, for folder sources (the log says which photo a line is about).
    """

    image: np.ndarray
    order: str
    index: int
    t: float
    jpeg: bytes | None = None
    display: np.ndarray | None = None
    tensor: np.ndarray | None = None
    preprocess_ms: float = 0.0
    file: str | None = None
    spec: object = None  # the InputSpec ``tensor`` was made for (a swapped-in model may want another)

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


class CaptureSource(FrameSource):
    """A source read through an OpenCV ``VideoCapture`` (``self._cap``), released on close."""

    _cap = None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


@contextlib.contextmanager
def quiet_opencv():
    """Silence OpenCV and FFmpeg while a source opens: our SourceError says what happened and what to do.

    OpenCV's own warnings are turned off; FFmpeg's native lines (``[tcp @ 0x...] Connection
    refused``, ``moov atom not found``) go to the DEBUG log (``--verbose`` shows them). Only in the
    main thread: elsewhere (a camera reopening during a run) redirecting stderr would swallow the
    main thread's messages too.
    """
    import threading

    import cv2

    from edge_app.runtime.interpreter import native_stderr_to_log

    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    capture = native_stderr_to_log() if threading.current_thread() is threading.main_thread() else \
        contextlib.nullcontext()
    try:
        with capture:
            yield
    finally:
        cv2.utils.logging.setLogLevel(previous)
