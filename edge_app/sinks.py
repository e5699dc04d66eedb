"""Where results go: a JSONL log, saved evidence frames, an overlay window, the web view, nothing.

Every sink has the same three calls: ``start(info)`` once with the run's facts, ``update(frame,
result)`` per classified frame, ``close()`` (always, flushing what it holds). Hardware and GUI
imports stay inside the classes that need them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_app.errors import EdgeclsError
from edge_app.files import write_bytes
from edge_app.sources import Frame

log = logging.getLogger("edgecls")

UNCERTAIN = "uncertain"


class DisplayError(EdgeclsError):
    """``--display`` asked for a window where none can open."""


class StopRequested(Exception):
    """The user closed the window (q or Esc): the run ends normally."""


@dataclass
class Result:
    """What the loop decided for one frame.

    Attributes:
        label: the top label, or ``"uncertain"`` below ``--threshold``.
        score: the top (smoothed) score, even when uncertain.
        top_k: ``[(label, score)]`` best first.
        latency_ms: from the frame's capture (or decode) to this result.
        fps: classified frames per second over the last second or so.
    """

    frame: int
    t: float
    label: str
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    latency_ms: float = 0.0
    fps: float = 0.0

    @property
    def uncertain(self) -> bool:
        return self.label == UNCERTAIN

    def record(self, with_top_k: bool = False) -> dict:
        """The log line (DESIGN.md schema), plus ``top_k`` when more than one was asked for."""
        record = {"frame": self.frame, "t": round(self.t, 3), "label": self.label, "score": round(self.score, 4),
                  "latency_ms": round(self.latency_ms, 2), "fps": round(self.fps, 1)}
        if with_top_k:
            record["top_k"] = [{"label": label, "score": round(score, 4)} for label, score in self.top_k]
        return record


class Sink:
    """Does nothing; the base of every sink (``--headless`` with no log is a null sink)."""

    def start(self, info: dict) -> None:
        pass

    def update(self, frame: Frame, result: Result) -> None:
        pass

    def event(self, name: str, detail: str) -> None:
        """Something happened that is not a frame (the camera was lost or came back)."""

    def close(self) -> None:
        pass


NullSink = Sink


class JsonlLog(Sink):
    """One JSON object per line, rotated by size so a months-long run can't fill the card.

    Lines reach the file in whole-line writes at least every ``flush_s`` (and at once for
    headers, events and on close): a power cut loses at most that much and never leaves half
    a line; flushing every line would cost a system call per frame.

    Line kinds: the first line of every file is ``{"header": {...}}`` (device facts, model,
    source); per classified frame ``{"frame", "t", "label", "score", "latency_ms", "fps"}``;
    ``{"event": "source_lost" | "source_reopened", "t", "detail"}`` when a camera drops out.
    At ``max_bytes`` the file becomes ``FILE.1`` (``FILE.1`` → ``FILE.2`` …, ``backups`` kept).

    Example:
        >>> sink = JsonlLog("runs/field.jsonl", max_bytes=10_000_000, backups=3)
    """

    def __init__(self, path: str | Path, max_bytes: int = 10_000_000, backups: int = 3, top_k: bool = False,
                 flush_s: float = 0.05):
        self.path = Path(path)
        self.flush_s = flush_s
        self._pending: list[bytes] = []
        # The capture thread writes events while the loop writes frames.
        self._lock = threading.RLock()
        self._pending_bytes = 0
        self._size = 0
        self._flushed_at = 0.0
        self._warned_at = -1e9
        self.dropped = 0  # lines lost to a full or failing disk since the last successful write
        self.max_bytes = max_bytes
        self.backups = backups
        self.top_k = top_k
        self._file = None
        self._header: dict = {}
        self.lines = 0
        self._open()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)
            self._size = self._file.seek(0, os.SEEK_END)
        except OSError as e:
            raise EdgeclsError(f"--log {self.path}: cannot write there ({e.strerror}); choose a writable path") from e

    def start(self, info: dict) -> None:
        self._header = info
        self._write({"header": info}, flush=True)

    def update(self, frame: Frame, result: Result) -> None:
        self._write(result.record(self.top_k))

    def event(self, name: str, detail: str) -> None:
        self._write({"event": name, "t": round(time.time(), 3), "detail": detail}, flush=True)

    def _write(self, record: dict, flush: bool = False) -> None:
        line = (json.dumps(record, separators=(", ", ": ")) + "\n").encode("utf-8")
        with self._lock:
            if self._file is not None:
                self._append(line, flush)

    def _append(self, line: bytes, flush: bool) -> None:
        if self._size + self._pending_bytes + len(line) > self.max_bytes and self._size + self._pending_bytes > 0:
            self.flush()
            self._rotate()
        self._pending.append(line)
        self._pending_bytes += len(line)
        self.lines += 1
        now = time.monotonic()
        if flush or now - self._flushed_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the pending lines in one system call.

        A full or failing card must not stop the classifier: the lines are dropped with a
        warning (at most one a minute) and an ``{"event": "log_lines_dropped"}`` line says how
        many once writing works again.
        """
        with self._lock:
            if not self._pending or self._file is None:
                return
            data = b"".join(self._pending)
            lines = len(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._flushed_at = time.monotonic()
            if self.dropped:
                note = {"event": "log_lines_dropped", "t": round(time.time(), 3), "detail": str(self.dropped)}
                data = (json.dumps(note) + "\n").encode("utf-8") + data
            try:
                self._file.write(data)
            except OSError as e:
                self.dropped += lines
                if self._flushed_at - self._warned_at > 60:
                    self._warned_at = self._flushed_at
                    log.warning("--log %s: cannot write (%s); dropping log lines until it can, "
                                "classifying on", self.path, e.strerror)
                return
            self.dropped = 0
            self._size += len(data)

    def _rotate(self) -> None:
        try:
            self._rotate_files()
        except (OSError, EdgeclsError) as e:
            # Keep appending where we can: a log problem never stops the run.
            log.warning("--log %s: rotation failed (%s)", self.path, e)
            if self._file is None:
                try:
                    self._open()
                except EdgeclsError:
                    log.warning("--log %s: cannot reopen it; no more log lines this run", self.path)

    def _rotate_files(self) -> None:
        self._file.close()
        self._file = None
        for n in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            if n == self.backups and older.exists():
                older.unlink()
            if newer.exists():
                os.replace(newer, older)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        self._open()
        if self._header:
            header = json.dumps({"header": {**self._header, "rotated_at": round(time.time(), 3)}}) + "\n"
            self._pending.append(header.encode("utf-8"))
            self._pending_bytes += len(self._pending[-1])
            self.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            self.flush()
            try:
                os.fsync(self._file.fileno())
            except OSError:
                pass
            self._file.close()
            self._file = None


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
    color = (0, 200, 255) if result.uncertain else (80, 255, 80)
    text = f"{result.label}  {result.score:.0%}"
    cv2.putText(image, text, (10, int(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 2, cv2.LINE_AA)
    fps = f"{result.fps:.1f} FPS"
    (tw, _), _ = cv2.getTextSize(fps, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, 1)
    cv2.putText(image, fps, (w - tw - 10, int(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8,
                (255, 255, 255), 1, cv2.LINE_AA)
