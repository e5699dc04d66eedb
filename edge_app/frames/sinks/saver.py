"""``--save-frames DIR``: evidence JPEGs of chosen labels, rate-limited and capped."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from edge_app.frames.sinks.base import Result, Sink
from edge_app.frames.sources import Frame
from edge_app.runtime.errors import EdgeclsError
from edge_app.runtime.files import write_bytes

log = logging.getLogger("edgecls")


class FrameSaver(Sink):
    """Keeps evidence: JPEGs of frames whose label is in ``labels`` (all when empty).

    At most one per ``min_interval_s`` per label (a cow in view for an hour is one event, not
    100,000 files), and the oldest files go once ``max_files`` is reached.
    Names: ``20261122-141503.120_f000123_macaw_0.87.jpg``.
    """

    def __init__(self, folder: str | Path, labels: tuple[str, ...] = (), min_interval_s: float = 1.0,
                 max_files: int = 1000):
        self.folder = Path(folder)
        self.labels = set(labels)
        self.min_interval_s = min_interval_s
        self.max_files = max_files
        self.saved = 0
        self._last: dict[str, float] = {}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgeclsError(f"--save-frames {self.folder}: cannot create it ({e.strerror}); choose a writable folder") from e
        self._files = sorted(self.folder.glob("*.jpg"))

    def update(self, frame: Frame, result: Result) -> None:
        import cv2

        if self.labels and result.label not in self.labels:
            return
        if result.t - self._last.get(result.label, -1e18) < self.min_interval_s:
            return
        self._last[result.label] = result.t
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(result.t)) + f".{int(result.t * 1000) % 1000:03d}"
        safe = re.sub(r"[^\w.-]+", "_", result.label).strip("_")[:60] or "label"
        path = self.folder / f"{stamp}_f{result.frame:06d}_{safe}_{result.score:.2f}.jpg"
        data = frame.jpeg
        if data is None:
            ok, encoded = cv2.imencode(".jpg", frame.view_bgr(), [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                return
            data = encoded.tobytes()
        try:
            write_bytes(path, data)
        except OSError as e:
            log.warning("could not save %s (%s)", path, e.strerror)
            return
        self.saved += 1
        self._files.append(path)
        while len(self._files) > self.max_files:
            self._files.pop(0).unlink(missing_ok=True)
