"""The Raspberry Pi camera through picamera2 (imported only when opened)."""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_app.frames.sources.base import Frame, FrameSource
from edge_app.runtime.errors import SourceError


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


def _even(n: int) -> int:
    return max(2, n + (n % 2))
