"""``--log FILE.jsonl``: one JSON object per line, whole lines only, rotated by size."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

from edge_app.frames.sinks.base import Result, Sink
from edge_app.frames.sources import Frame
from edge_app.runtime.errors import EdgeclsError
from edge_app.runtime.files import check_writable

log = logging.getLogger("edgecls")


class JsonlLog(Sink):
    """One JSON object per line, rotated by size so a months-long run can't fill the card.

    Lines reach the file in whole-line writes at least every ``flush_s`` (and at once for
    headers, events and on close): a power cut loses at most that much and never leaves half
    a line; flushing every line would cost a system call per frame.

    Line kinds: the first line of every file is ``{"header": {...}}`` (device facts, model,
    source); per classified frame ``{"frame", "t", "label", "score", "latency_ms", "fps"}`` (+ ``novelty``
    for a model with a reference set; ``label`` is ``unknown`` above its threshold);
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
        self._error = ""
        self.lines = 0
        # Checked now, opened in start(): a run whose source never opens leaves no empty log behind.
        check_writable(self.path, "--log")

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+b", buffering=0)  # readable too: to find a half line at the end
            self._size = self._file.seek(0, os.SEEK_END)
            self._cut_partial_line()
        except OSError as e:
            raise EdgeclsError(f"--log {self.path}: cannot write there ({e.strerror}); choose a writable path") from e

    def _cut_partial_line(self) -> None:
        """A log left by a killed run or a full card may end in half a line: cut it off before appending."""
        if self._size == 0:
            return
        tail = os.pread(self._file.fileno(), min(self._size, 1 << 16), max(0, self._size - (1 << 16)))
        if tail.endswith(b"\n"):
            return
        if b"\n" not in tail:
            # Not a log of ours (no line in the last 64 KiB): never cut it, just start on a new line.
            self._file.write(b"\n")
            self._size += 1
            return
        keep = self._size - len(tail) + tail.rfind(b"\n") + 1
        self._file.truncate(keep)
        self._size = keep

    def start(self, info: dict) -> None:
        self._header = info
        with self._lock:
            if self._file is None:
                self._open()
        self._write({"header": info}, flush=True)

    def update(self, frame: Frame, result: Result) -> None:
        self._write(result.record(self.top_k))

    def event(self, name: str, detail: str, **fields) -> None:
        self._write({"event": name, "t": round(time.time(), 3), "detail": detail, **fields}, flush=True)

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
        """Write the pending lines in one system call: all of them, or none.

        A full or failing card must not stop the classifier, nor leave half a line: a failed or
        short write is cut back to the last whole line, the lines are counted as dropped (with a
        warning at most once a minute), and an ``{"event": "log_lines_dropped"}`` line says how
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
            if self._write_whole(data):
                self.dropped = 0
                self._size += len(data)
                return
            self.dropped += lines
            if self._flushed_at - self._warned_at > 60:
                self._warned_at = self._flushed_at
                log.warning("--log %s: cannot write (%s); dropping log lines until it can, classifying on",
                            self.path, self._error)

    def _write_whole(self, data: bytes) -> bool:
        written = 0
        try:
            while written < len(data):
                n = self._file.write(data[written:])
                if not n:
                    raise OSError(errno.ENOSPC, "short write")
                written += n
            return True
        except OSError as e:
            self._error = e.strerror or str(e)
        try:
            # Appending (O_APPEND) continues at the new end: the last whole line.
            self._file.truncate(self._size)
        except OSError as e:
            log.debug("--log %s: could not cut back a failed write: %s", self.path, e)
        return False

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
