"""Live model swap: a new model is loaded and checked beside the running one, then taken by the loop between two frames.

Three ways in, one validation:

- the model file is replaced on disk (watched every ``poll_s``; ``--no-watch`` turns it off): it is
  loaded once its size and time have not changed for ``settle_s``, and only if they did not change
  while it was read, so a file copied in place is never loaded half-written;
- SIGHUP (``systemctl reload``): load the file now;
- :meth:`ModelSwapper.install` (the kiosk's apply/undo, a fleet deploy): write the bytes over the
  model file atomically, load them, and put the old bytes back when they are rejected — so after a
  crash or ``kill -9`` the file is always a model that was accepted (or the one being checked,
  which the next start checks again). The model an accepted install replaced is kept beside it
  (``.NAME.kept``, one only), so a fleet rollout can roll a device back without sending it a model.

A candidate must load in the runtime with one image input and a ``[1, N]`` output, have labels
that fit (its embedded labels, else the ``--labels`` file, else ``labels.txt`` beside it) and give
finite scores on the latest frame. It runs from its own bytes in memory, so nothing that later
happens to the file can reach the running interpreter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.runtime.artifact import read_artifact, read_model_bytes
from edge_app.runtime.errors import EdgeclsError, first_line
from edge_app.runtime.files import write_bytes

log = logging.getLogger("edgecls")

POLL_S = 0.5  # a replaced file is running within POLL_S + SETTLE_S (+ one poll)
SETTLE_S = 0.5


@dataclass(frozen=True)
class Outcome:
    """What became of a candidate model."""

    accepted: bool
    reason: str
    sha256: str | None = None


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class ModelSwapper:
    """Loads and validates replacement models off the hot path; the loop swaps them in.

    Args:
        clf: the running :class:`~edge_app.runtime.ImageClassifier` (made with ``in_memory=True``).
        load: makes a classifier from a :class:`~edge_app.runtime.ModelArtifact` (read with its bytes) or a path,
            with the run's device, threads and labels.
        watch: poll the model file for replacements.
        on_event: ``on_event(name, detail, **fields)`` for ``model_rejected`` (the loop reports swaps).

    The loop calls :meth:`take` once per frame (an attribute read) and :meth:`swapped` after
    switching; it sets :attr:`latest` to each frame, on which a candidate is tried once.

    Example:
        >>> swapper = ModelSwapper(clf, load=lambda p: ImageClassifier(p, in_memory=True))
        >>> swapper.start(); swapper.request("SIGHUP")
    """

    def __init__(self, clf, load: Callable[[Path], object], watch: bool = True, poll_s: float = POLL_S,
                 settle_s: float = SETTLE_S, on_event: Callable[..., None] | None = None):
        self.clf = clf
        self.path = Path(clf.path)
        self.load = load
        self.watch = watch
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.on_event = on_event
        self.latest = None  # the newest frame the loop saw: a candidate's one test invoke
        self._pending = None
        self._taken = threading.Condition()
        self._attempt = threading.Lock()  # one candidate at a time, whoever asked
        self._install = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._requested: str | None = None
        self._seen = _signature(self.path)  # the file as it was when the running model was read
        self._changing: tuple | None = None  # the file's signature since it was seen changing, and when
        self._changed_at = 0.0
        self._last_rejection: tuple | None = None  # (file signature, sha256, reason): told once
        self._thread: threading.Thread | None = None

    @property
    def sha256(self) -> str:
        return self.clf.artifact.sha256

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgecls-swap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._taken:
            self._taken.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def request(self, why: str = "SIGHUP") -> None:
        """Load the model file now (safe from a signal handler: it only sets a flag)."""
        self._requested = why
        self._wake.set()

    def take(self):
        """The loop's per-frame check: a validated classifier to switch to, or ``None``."""
        return self._pending

    def swapped(self, clf) -> None:
        """The loop switched to ``clf``."""
        with self._taken:
            self.clf = clf
            self._pending = None
            self._taken.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            why, self._requested = self._requested, None
            try:
                if why is not None:
                    self.attempt(why, force=True)
                elif self.watch and not self._install.locked() and self._settled():
                    # (an install checks the file it wrote itself: one verdict, one event)
                    self.attempt("file replaced")
            except Exception as e:  # never let the watcher die: told once, as a rejection; tried again when it changes
                self._refused(_signature(self.path), f"cannot load {self.path}: {first_line(e)}")

    def _settled(self) -> bool:
        """Whether the file changed since it was last read and has stayed unchanged for ``settle_s``."""
        now = _signature(self.path)
        if now is None or now == self._seen:
            self._changing = None
            return False
        if now != self._changing:
            self._changing, self._changed_at = now, time.monotonic()
        return time.monotonic() - self._changed_at >= self.settle_s

    def attempt(self, why: str, force: bool = False, timeout: float = 30.0) -> Outcome:
        """Load the model file, validate it, hand it to the loop and wait until it is running.

        The same bytes as the running model are never swapped again (a SIGHUP storm, a file touched or
        copied over with itself); ``force`` (SIGHUP) still takes them when their labels changed (a new
        ``labels.txt`` beside a model that carries none).
        """
        with self._attempt:
            before = _signature(self.path)
            try:
                # Checked before it is read: a FIFO, /dev/zero or a 1 GB file is refused, never read whole.
                artifact = read_artifact(self.path, keep_bytes=True)
            except EdgeclsError as e:
                return self._refused(before, first_line(e))
            after = _signature(self.path)
            if after != before:  # written while we read it: wait for it to settle, never load half a file
                return Outcome(False, "the file changed while it was read; trying again when it settles")
            self._seen = after
            sha = artifact.sha256
            if sha == self.sha256 and (artifact.labels is not None or not force):
                log.debug("model file %s holds the running model's bytes: nothing to swap", self.path)
                return Outcome(True, "unchanged", sha)
            try:
                candidate = self.load(artifact)
            except EdgeclsError as e:
                return self._reject(first_line(e), sha, after)
            except MemoryError:
                return self._reject(f"there is not enough memory to load it ({len(artifact.data) / 1e6:.1f} MB)",
                                    sha, after)
            if sha == self.sha256 and candidate.labels == self.clf.labels:
                log.debug("model file %s: same bytes and labels as running: nothing to swap", self.path)
                return Outcome(True, "unchanged", sha)
            problem = self._validate(candidate)
            if problem:
                return self._reject(problem, sha, after)
            log.info("model %s (%s, %s) is valid; swapping it in (%s)", self.path.name, sha[:12],
                     f"{candidate.num_classes} classes", why)
            with self._taken:
                self._pending = candidate
                if not self._taken.wait_for(lambda: self._pending is None or self._stop.is_set(), timeout):
                    self._pending = None
                    return Outcome(False, "the run did not take the new model (is it stopping?)", sha)
            return Outcome(self.clf is candidate, "swapped" if self.clf is candidate else "the run ended", sha)

    def _refused(self, before: tuple | None, reason: str) -> Outcome:
        """A file that could not be read as a model: rejected, unless it was being replaced meanwhile."""
        if _signature(self.path) != before:
            return Outcome(False, "the file changed while it was read; trying again when it settles")
        self._seen = before
        return self._reject(reason, None, before)

    def _validate(self, candidate) -> str | None:
        if candidate.labels_source == "indices" and self.clf.labels_source != "indices":
            return (f"no labels for the new model's {candidate.num_classes} classes: embed them (models edgecls "
                    f"writes carry them) or put {self.path.parent / 'labels.txt'} beside it")
        frame = self.latest
        try:
            if frame is not None:
                candidate.set_input(frame.image, frame.order)
            else:
                candidate.set_tensor(candidate.spec.new_buffer())
            candidate.invoke()
            scores = candidate.scores()
        except Exception as e:  # a model that loads but cannot run is rejected, whatever the runtime raises
            return f"it loads but fails on a frame: {first_line(e)}"
        if not np.isfinite(scores).all():
            return "it gives non-finite scores (NaN or infinity) on the latest frame"
        return None

    def _reject(self, reason: str, sha: str | None = None, signature: tuple | None = None) -> Outcome:
        """One warning and one ``model_rejected`` event per distinct file and reason: a bad file that stays
        bad (SIGHUP again and again, a watcher that sees it once more) is told once."""
        key = (signature, sha, reason)
        if signature is not None and key == self._last_rejection:
            log.debug("model %s still rejected: %s", self.path, reason)
            return Outcome(False, reason, sha)
        self._last_rejection = key
        log.warning("model %s rejected, the running model (%s) stays: %s", self.path, self.sha256[:12], reason)
        if self.on_event is not None:
            self.on_event("model_rejected", reason, reason=reason, model=str(self.path), sha256=sha,
                          running_sha256=self.sha256)
        return Outcome(False, reason, sha)

    def install(self, data: bytes, why: str, timeout: float = 60.0) -> Outcome:
        """Write ``data`` over the model file (atomically), swap it in, and put the old file back if it is rejected.

        For the kiosk's apply/undo and fleet deploys: one at a time.
        """
        with self._install:
            previous = previous_path(self.path)
            # The running model's bytes beside it until the new one is accepted: a kill -9 before that
            # is undone at the next start (recover_interrupted_install).
            write_bytes(previous, self.clf.artifact.data)
            write_bytes(self.path, data)
            outcome = self.attempt(why, timeout=timeout)
            if not outcome.accepted:
                os.replace(previous, self.path)
                self._seen = _signature(self.path)
            elif outcome.reason == "swapped":
                # The model it replaced stays beside it, for a signed rollback (edgecls fleet deploy --stages).
                os.replace(previous, kept_path(self.path))
            else:
                previous.unlink(missing_ok=True)
            return outcome

    def kept_model(self) -> bytes | None:
        """The bytes of the model the last install replaced (kept as ``.NAME.kept``), or ``None`` when there is none.

        Read as any model from outside is (a regular file, under the size cap): a fleet rollback installs these
        only after the host's signature over their sha256 verified.
        """
        kept = kept_path(self.path)
        if not kept.is_file():
            return None
        return read_model_bytes(kept, "the kept previous model")


def previous_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.previous")


def kept_path(path: Path) -> Path:
    """Where the model an accepted install replaced is kept (one, the latest), for a fleet rollback."""
    return path.with_name(f".{path.name}.kept")


def recover_interrupted_install(path: Path, load: Callable[[Path], object]) -> None:
    """Undo what a ``kill -9`` during an install left: temporary files, and a new model not yet accepted.

    ``install`` keeps the running model as ``.NAME.previous`` until the new one is accepted. Found at a
    start, the new one is checked now; if it fails, the previous one is put back, so a restart never
    stops on a model that the run it replaced would have rejected.
    """
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):  # never a model: atomic writes that did not finish
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    previous = previous_path(path)
    if not previous.is_file():
        return
    try:
        load(path)
    except EdgeclsError as e:
        log.warning("%s was being installed when the last run stopped and does not load (%s): putting back the "
                    "model it replaced", path, first_line(e))
        os.replace(previous, path)
        return
    previous.unlink(missing_ok=True)
