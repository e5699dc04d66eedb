"""Threads between a :class:`~edge_app.frames.sources.FrameSource` and the live loop.

- :class:`FileFeed` — files: a decode thread reads *every* frame in order into a 1–2 slot
  queue and pre-processes it there, so decoding frame N+1 overlaps invoking frame N (OpenCV
  and LiteRT both release the GIL).
- :class:`LiveFeed` — cameras and streams: a capture thread keeps only the *newest* frame
  (older ones are dropped, never queued, so latency cannot grow) and reopens a source that
  fails or vanishes, with back-off.

Both: ``start()`` opens the source in the caller's thread (a source that never opens raises
:class:`SourceError` there), ``get()`` returns the next :class:`Frame` or ``None`` at the end,
``stop()`` ends the thread and closes the source.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from edge_app.frames.sources import Frame, FrameSource
from edge_app.runtime.errors import EdgeclsError, SourceError, first_line

log = logging.getLogger("edgecls")

_END = object()


class FileFeed:
    """Every frame of a file source, in order, decoded (and pre-processed) one step ahead.

    Args:
        source: a file source (``live = False``).
        prepare: called on each frame in the decode thread (pre-processing into ``frame.tensor``).
        depth: queue slots; 1–2 is enough to overlap, more only holds memory.

    Example:
        >>> feed = FileFeed(VideoFileSource("field.avi"), depth=2)
        >>> feed.start()
        >>> while (frame := feed.get()) is not None: ...
    """

    def __init__(self, source: FrameSource, prepare: Callable[[Frame], None] | None = None, depth: int = 2):
        self.source = source
        self.prepare = prepare
        self.reopens = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self.source.open()
        self._thread = threading.Thread(target=self._run, name="edgecls-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                if self.prepare is not None:
                    self.prepare(frame)
                self._put(frame)
        except BaseException as e:  # handed to the loop's thread, which raises it
            self._error = e
        self._put(_END)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or ``None`` at the end of the source."""
        item = self._queue.get(timeout=timeout)
        if item is _END:
            self._queue.put_nowait(_END)  # later calls see the end too
            if self._error is not None:
                error, self._error = self._error, None
                if isinstance(error, EdgeclsError):
                    raise error
                raise SourceError(f"{self.source.name}: reading failed ({error})") from error
            return None
        return item

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Unblock a decode thread waiting on a full queue.
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=5)
        _close_unless_busy(self.source, self._thread)


def _close_unless_busy(source: FrameSource, thread: threading.Thread | None) -> None:
    """Close the source, unless its thread is still inside ``read()``: releasing a capture that
    another thread is reading can crash OpenCV. The daemon thread ends with the process."""
    if thread is not None and thread.is_alive():
        log.warning("%s did not stop within 5 s; leaving it to the process exit", source.name)
        return
    source.close()


class LiveFeed:
    """The newest frame of a live source; a failing source is reopened with back-off.

    Args:
        source: a live source (camera or stream).
        backoff_s: first wait before reopening; doubles up to ``max_backoff_s``.
        on_event: called as ``on_event(name, detail)`` for ``"source_lost"`` and
            ``"source_reopened"`` (the loop writes them to the log).

    Example:
        >>> feed = LiveFeed(OpenCVSource(0))
        >>> feed.start()
        >>> frame = feed.get()   # waits for a frame newer than the last one returned
    """

    def __init__(self, source: FrameSource, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 on_event: Callable[[str, str], None] | None = None):
        self.source = source
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_event = on_event
        self.reopens = 0
        self.dropped = 0
        self._delay = backoff_s
        self._latest: Frame | None = None
        self._seq = 0  # frames captured; sources may restart their own numbering
        self._taken = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.source.open()
        self._thread = threading.Thread(target=self._run, name="edgecls-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.source.read()
                if frame is None:
                    raise SourceError(f"{self.source.name} ended")
            except Exception as e:  # a camera that vanished: reopen, never crash the service
                self._reopen(e)
                continue
            self._delay = self.backoff_s  # back-off restarts only once frames flow again
            with self._cond:
                if self._seq != self._taken:
                    self.dropped += 1
                self._latest = frame
                self._seq += 1
                self._cond.notify_all()

    def _reopen(self, error: Exception) -> None:
        reason = first_line(error)
        log.warning("%s failed (%s); reopening", self.source.name, reason)
        self._event("source_lost", reason)
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                self.source.close()
            except Exception as e:  # a dead device may fail to close too; we reopen regardless
                log.debug("closing %s: %s", self.source.name, e)
            if self._stop.wait(self._delay):
                return
            # Doubled whether or not the reopen works: a camera that opens but gives no frames
            # must not be retried (and logged) twice a second forever.
            self._delay = min(self._delay * 2, self.max_backoff_s)
            try:
                self.source.open()
            except Exception as e:
                log.warning("%s still unavailable (%s); next try in %.1f s",
                            self.source.name, first_line(e), self._delay)
                continue
            self.reopens += 1
            down = time.monotonic() - started
            log.warning("%s reopened after %.1f s", self.source.name, down)
            self._event("source_reopened", f"after {down:.1f} s")
            return

    def _event(self, name: str, detail: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(name, detail)
            except Exception as e:  # a full disk must not stop the camera thread
                log.debug("event %s not recorded: %s", name, e)

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet returned; waits for one. Raises ``queue.Empty`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._seq == self._taken:
                # Short waits keep Ctrl-C and SIGTERM responsive while the camera reconnects.
                remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if remaining <= 0:
                    raise queue.Empty
                self._cond.wait(remaining)
            self._taken = self._seq
            return self._latest

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _close_unless_busy(self.source, self._thread)
