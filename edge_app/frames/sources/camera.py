"""Cameras by index and network streams (RTSP, HTTP), through OpenCV."""

from __future__ import annotations

import re
import time

from edge_app.frames.sources.base import CaptureSource, Frame, quiet_opencv
from edge_app.runtime.errors import SourceError


class OpenCVSource(CaptureSource):
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
            with quiet_opencv():
                cap = cv2.VideoCapture(self.device)
            if self.size:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            fix = ("is a camera plugged in (ls /dev/video*)? Is another program using it? "
                   "Is this user in the 'video' group? On a Pi camera module use --source picamera")
        else:
            # Bounded waits: a stream that stalls fails a read (and is reopened) instead of hanging.
            with quiet_opencv():
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


def _redact(url: str) -> str:
    """``rtsp://user:secret@host/`` → ``rtsp://user:***@host/``: logs never hold passwords."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)
