"""``--display``: an OpenCV window with the label, score and FPS drawn on the frame."""

from __future__ import annotations

import os

from edge_app.frames.sinks.base import UNKNOWN_TEXT, Result, Sink, StopRequested
from edge_app.frames.sources import Frame
from edge_app.runtime.errors import DisplayError


class OverlayWindow(Sink):
    """An OpenCV window with the label, score and FPS drawn on the frame; q or Esc ends the run."""

    def __init__(self, title: str = "edgecls"):
        import cv2

        self.title = title
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and os.name == "posix":
            raise DisplayError("--display: no screen here (DISPLAY is not set). Run it on the Pi's desktop, or "
                               "use --web 127.0.0.1:8080 and open the page, or --headless")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise DisplayError("--display needs OpenCV with a GUI, and opencv-python-headless has none: "
                               "on a Pi run sudo apt install python3-opencv (venv with --system-site-packages), "
                               "elsewhere pip install opencv-python; or use --web / --headless") from e

    def update(self, frame: Frame, result: Result) -> None:
        import cv2

        image = frame.view_bgr().copy()
        draw_overlay(image, result)
        cv2.imshow(self.title, image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            raise StopRequested

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


def draw_overlay(image, result: Result) -> None:
    """Label, score and FPS in a band at the top of a BGR image (in place)."""
    import cv2

    h, w = image.shape[:2]
    scale = max(0.5, w / 900)
    band = int(40 * scale)
    cv2.rectangle(image, (0, 0), (w, band), (0, 0, 0), -1)
    color = (0, 200, 255) if result.uncertain else (255, 160, 80) if result.unknown else (80, 255, 80)
    text = UNKNOWN_TEXT if result.unknown else f"{result.label}  {result.score:.0%}"
    cv2.putText(image, text, (10, int(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 2, cv2.LINE_AA)
    fps = f"{result.fps:.1f} FPS"
    (tw, _), _ = cv2.getTextSize(fps, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, 1)
    cv2.putText(image, fps, (w - tw - 10, int(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8,
                (255, 255, 255), 1, cv2.LINE_AA)
