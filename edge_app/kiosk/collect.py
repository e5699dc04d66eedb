"""``--collect DIR``: keep the frames the model was unsure of, to label later and learn from.

A frame is kept when its top score is below ``below``, or its top two are within ``margin`` of
each other; one confident frame every ``sample_every_s`` is kept too (to see drift: a model can
be sure and wrong). At most one frame per ``every_s``, at most ``max_frames`` waiting in
``DIR/inbox`` (collection pauses until some are reviewed), and none while the disk has less
than ``min_free_mb`` free. Classification never waits: frames are encoded and written on a
writer thread, and dropped when it is behind.

Layout (the kiosk's review moves frames from ``inbox/`` to ``labelled/<class>/``, a
folder-per-class dataset that ``edgecls learn`` and ``edgecls train`` read as it is)::

    DIR/inbox/<id>.jpg + <id>.json     scores, top labels, model sha256, time, why it was kept
    DIR/labelled/<class>/<id>.jpg (+ .json)
    DIR/models/                         the kiosk's model versions (see field.py)

Every file is written to a temporary name and renamed, JPEG first, so a listed sidecar always
has its image.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_app.frames.sinks import Result, Sink
from edge_app.frames.sources import Frame
from edge_app.kiosk.similar import signature
from edge_app.runtime.errors import EdgeclsError
from edge_app.runtime.files import check_writable, write_bytes, write_json

log = logging.getLogger("edgecls")

INBOX, LABELLED, MODELS = "inbox", "labelled", "models"
DISK_RETRY_S = 60.0
REVIEW, DISK = "review", "disk"  # why collection pauses: frames wait for review / the disk will not take more


@dataclass(frozen=True)
class CollectConfig:
    """What ``--collect`` keeps; fields are named like its flags (``--collect-below`` ...)."""

    folder: Path
    below: float = 0.5
    margin: float = 0.1
    every_s: float = 2.0
    sample_every_s: float = 300.0
    max_frames: int = 1000
    min_free_mb: float = 50.0

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))
        problems = []
        if not 0 <= self.below <= 1 or not 0 <= self.margin <= 1:
            problems.append("--collect-below and --collect-margin must be between 0 and 1")
        if self.every_s < 0 or self.sample_every_s <= 0:
            problems.append("--collect-every must be 0 or more and --collect-sample-every more than 0 seconds")
        if self.max_frames < 1:
            problems.append(f"--collect-max must be 1 or more, got {self.max_frames}")
        if problems:
            raise EdgeclsError("; ".join(problems))


class _Capture:
    """A teach request: ``wanted`` frames of ``label`` over ``seconds``."""

    def __init__(self, label: str, wanted: int, seconds: float):
        self.label, self.wanted = label, wanted
        self.interval = seconds / max(1, wanted)
        self.next_t = 0.0
        self.queued = 0
        self.saved = 0
        self.failed = ""
        self.done = threading.Event()


class FrameCollector(Sink):
    """Keeps unsure frames (and teach captures) on disk, as a sink of the live loop.

    Example:
        >>> collector = FrameCollector(CollectConfig("field/"), model_sha256=lambda: swapper.sha256)
    """

    def __init__(self, config: CollectConfig, model_sha256: Callable[[], str] = lambda: "",
                 on_event: Callable[..., None] | None = None, on_saved: Callable[[bytes], None] | None = None):
        self.config = config
        self.inbox = config.folder / INBOX
        self.labelled = config.folder / LABELLED
        for folder in (self.inbox, self.labelled):
            check_writable(folder, "--collect", inside=True)
            folder.mkdir(parents=True, exist_ok=True)
        self.model_sha256 = model_sha256
        self.on_event = on_event
        self.on_saved = on_saved  # hears each inbox frame's JPEG, on the writer thread (Home Assistant's image)
        self.collected = 0
        self.paused = ""  # why collection is paused, or ""
        self._pause_kind = ""  # REVIEW, DISK or ""
        self._paused_until = 0.0
        self._last = -1e9
        self._last_sample = time.monotonic()
        self._waiting = len(list(self.inbox.glob("*.json")))
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._capture: _Capture | None = None
        self._capture_lock = threading.Lock()
        self._thread = threading.Thread(target=self._write_loop, name="edgecls-collect", daemon=True)
        self._source = ""

    def start(self, info: dict) -> None:
        self._source = str(info.get("source", ""))
        self._thread.start()

    # --- the loop's thread: decide, copy, hand over; never wait -------------------------------------------------
    def update(self, frame: Frame, result: Result) -> None:
        now = time.monotonic()
        capture = self._capture
        if capture is not None and not capture.done.is_set() and now >= capture.next_t:
            if capture.queued < capture.wanted and self._offer(frame, result, "teach", capture):
                capture.queued += 1
                capture.next_t = now + capture.interval
        why = self._why(result, now)
        if why is None:
            return
        if self.paused and now < self._paused_until:
            return
        if self._waiting >= self.config.max_frames:
            self._pause(REVIEW, f"{self._waiting} frames wait in {self.inbox}: review or discard some", retry_s=None)
            return
        if self._offer(frame, result, why):
            self._last = now
            if why == "sample":
                self._last_sample = now

    def _why(self, result: Result, now: float) -> str | None:
        if now - self._last < self.config.every_s:
            return None
        ranked = result.ranked or result.top_k
        if result.unknown:  # none of its classes: what the operator should teach first
            return "novel"
        if result.score < self.config.below:
            return "low_score"
        if len(ranked) > 1 and ranked[0][1] - ranked[1][1] < self.config.margin:
            return "small_margin"
        if now - self._last_sample >= self.config.sample_every_s:
            return "sample"
        return None

    def _offer(self, frame: Frame, result: Result, why: str, capture: _Capture | None = None) -> bool:
        ranked = result.ranked or result.top_k
        sidecar = {"t": round(result.t, 3), "frame": result.frame, "why": why, "label": result.label,
                   "score": round(result.score, 4), "novelty": None if result.novelty is None else round(result.novelty, 4), "top": [[label, round(score, 4)] for label, score in ranked],
                   "model_sha256": self.model_sha256(), "source": self._source}
        if result.file is not None:
            sidecar["file"] = result.file
        try:
            # A copy: sources may reuse their buffers; the writer thread encodes it later.
            self._queue.put_nowait((frame.image.copy(), frame.order, sidecar, capture, result.embedding))
            return True
        except queue.Full:
            return False

    # --- the writer thread ----------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            image, order, sidecar, capture, embedding = item
            try:
                self._write(image, order, sidecar, capture, embedding)
            except Exception as e:  # a failing card pauses collection; classification goes on
                reason = getattr(e, "strerror", None) or str(e)
                if capture is not None:
                    capture.failed = reason
                    capture.done.set()
                self._pause(DISK, f"cannot write in {self.config.folder}: {reason}")

    def _write(self, image, order: str, sidecar: dict, capture: _Capture | None, embedding=None) -> None:
        import cv2

        free_mb = shutil.disk_usage(self.config.folder).free / 1e6
        # Paused for space, it resumes only with a fifth more than the floor: not a pause/resume pair per frame.
        needed = self.config.min_free_mb * (1.2 if self._pause_kind == DISK else 1.0)
        if free_mb < needed:
            raise OSError(errno.ENOSPC, f"{free_mb:.0f} MB free, less than {needed:.0f} MB")
        ok, jpeg = cv2.imencode(".jpg", image if order == "BGR" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise OSError(errno.EIO, "JPEG encoding failed")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(sidecar["t"])) + f"-{int(sidecar['t'] * 1000) % 1000:03d}"
        if capture is not None:
            folder = self.labelled / capture.label
            name = f"teach-{stamp}-{capture.saved:03d}"
        else:
            folder = self.inbox
            name = f"{stamp}-f{sidecar['frame']}"
        data = jpeg.tobytes()
        # What Review groups near-identical frames by, and "looks like these" finds examples by.
        sidecar["signature"] = signature(image, embedding, sidecar.get("model_sha256") or "")
        write_bytes(folder / f"{name}.jpg", data)
        write_json(folder / f"{name}.json", {"id": name, **sidecar})
        if capture is not None:
            capture.saved += 1
            if capture.saved >= capture.wanted:
                capture.done.set()
            return
        self._waiting += 1
        self.collected += 1
        if self._pause_kind == DISK:  # the disk takes files again (a review pause ends only with reviews)
            self._resume()
        if self.on_saved is not None:
            try:
                self.on_saved(data)
            except Exception as e:  # not the disk's fault: collection must not pause for it
                log.debug("a collected frame was not handed on: %s", e)
        if self.on_event is not None and self.collected % 10 == 1:  # one event per ten frames, not a flood
            self.on_event("frames_collected", f"{self.collected} frames kept in {self.inbox}",
                          collected=self.collected, waiting=self._waiting)

    def _pause(self, kind: str, reason: str, retry_s: float | None = DISK_RETRY_S) -> None:
        """Pause for ``kind`` (one event per pause, however often it is confirmed or its wording changes)."""
        self._paused_until = time.monotonic() + (retry_s if retry_s is not None else 0.0)
        already, self.paused = self._pause_kind == kind, reason
        if already:
            return
        self._pause_kind = kind
        log.warning("field collection paused: %s", reason)
        if self.on_event is not None:
            self.on_event("collection_paused", reason, reason=reason)

    def _resume(self) -> None:
        log.info("field collection resumed")
        self.paused, self._pause_kind = "", ""
        if self.on_event is not None:
            self.on_event("collection_resumed", str(self.inbox))

    # --- the web thread -------------------------------------------------------------------------------------------
    def reviewed(self, n: int = 1) -> None:
        """``n`` inbox frames were labelled or discarded."""
        self._waiting = max(0, self._waiting - n)
        # Resumed only once a tenth of the room is free: not a paused/resumed pair per frame reviewed.
        if self._pause_kind == REVIEW and self._waiting <= 0.9 * self.config.max_frames:
            self._resume()

    def returned(self, n: int = 1) -> None:
        """``n`` labelled frames were sent back to the inbox for review (unlabelled on the page)."""
        self._waiting += n

    def capture(self, label: str, frames: int, seconds: float, timeout: float | None = None) -> dict:
        """Save the next ``frames`` frames over ``seconds`` into ``labelled/<label>/`` (a teach); blocks until done.

        Returns ``{"saved": N, "wanted": M}`` plus ``"problem"`` when fewer came (a camera lost meanwhile,
        a full disk). Raises :class:`EdgeclsError` when another capture is running.
        """
        if not self._capture_lock.acquire(blocking=False):
            raise EdgeclsError("a capture is already running; wait for it to finish")
        try:
            (self.labelled / label).mkdir(parents=True, exist_ok=True)
            capture = _Capture(label, frames, seconds)
            self._capture = capture
            finished = capture.done.wait(timeout if timeout is not None else seconds + 10.0)
            self._capture = None
            out = {"saved": capture.saved, "wanted": frames, "label": label}
            if capture.failed:
                out["problem"] = f"cannot write: {capture.failed}"
            elif not finished:
                out["problem"] = (f"only {capture.saved} of {frames} frames came in {seconds:g} s: "
                                  "is the camera still there?")
            return out
        finally:
            self._capture_lock.release()

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=5)
            except queue.Full:
                return
            self._thread.join(timeout=10)

