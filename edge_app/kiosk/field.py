"""``--learn``: the kiosk's field loop — review collected frames, teach classes, apply and undo.

- *Review* (:mod:`edge_app.kiosk.review`): frames in ``DIR/inbox`` are labelled (moved to
  ``DIR/labelled/<class>/``) or discarded; labelled frames are moved to another class or sent back.
- *Teach*: ``N`` frames of the live view over a few seconds become examples of a class.
- *Apply*: ``edgecls learn`` runs in a child process at low priority (the live loop keeps its
  rate), from the *original* model and every labelled frame (so applying twice never counts a
  frame twice); the new model's validation accuracy is measured beside the running model's on
  the same photos, and the new model replaces the model file atomically and is swapped in live.
- *Undo*: the version before is put back the same way.

Versions live in ``DIR/models/``: ``origin.tflite`` (the model before the first apply, with its
labels in ``origin.labels.txt``), ``vNNNN.tflite`` + ``vNNNN.json`` (what was learned, the
accuracies), ``history.json`` (applied versions, newest last). The newest ``keep`` are kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_app.kiosk.collect import MODELS, FrameCollector
from edge_app.kiosk.review import FrameReview, Refused
from edge_app.runtime.errors import EdgeclsError, first_line
from edge_app.runtime.files import write_bytes, write_json, write_text

log = logging.getLogger("edgecls")

TEACH_MAX_FRAMES = 200
TEACH_MAX_SECONDS = 60
ORIGIN = "origin.tflite"


class FieldLearning(FrameReview):
    """The kiosk's review, teach, apply and undo, on the folders ``--collect DIR`` keeps.

    Args:
        collector: the run's :class:`~edge_app.kiosk.collect.FrameCollector` (frames in, teach captures).
        swapper: the run's :class:`~edge_app.live.swap.ModelSwapper` (the running model, installs).
        num_threads: threads for the learn child (default 1: the live loop keeps the rest).
        keep: model versions kept besides the origin.
    """

    def __init__(self, collector: FrameCollector, swapper, num_threads: int = 1, keep: int = 5):
        super().__init__(collector, swapper)
        self.models = self.folder / MODELS
        self.num_threads = num_threads
        self.keep = keep
        self._apply = threading.Lock()
        self.job: dict = {"state": "idle"}

    # --- teach ----------------------------------------------------------------------------------------------------
    def teach(self, label: object, frames: object = 20, seconds: object = 4.0) -> dict:
        label = self.check_spelling(label)
        # bool is an int to Python, not a count to a person: {"frames": true} is refused, not read as 1.
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= TEACH_MAX_FRAMES:
            raise Refused(f"frames must be a whole number from 1 to {TEACH_MAX_FRAMES}, got {str(frames)[:20]}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= TEACH_MAX_SECONDS:
            raise Refused(f"seconds must be a number from 0 to {TEACH_MAX_SECONDS}, got {str(seconds)[:20]}")
        try:
            return self.collector.capture(label, frames, float(seconds))
        except Refused:
            raise
        except EdgeclsError as e:
            raise Refused(str(e), 409) from e

    # --- apply and undo -------------------------------------------------------------------------------------------
    def apply(self) -> dict:
        """Start learning from every labelled frame; the job's progress is :attr:`job`.

        Raises :class:`Refused` (409) when an apply or undo is running: one wins, the other is told.
        """
        if not self._apply.acquire(blocking=False):
            raise Refused(f"an apply is already running (started {self.job.get('started_at', '?')}); "
                          "wait for it to finish", 409)
        if not any(self.classes()["labelled"].values()):
            self._apply.release()
            raise Refused(f"nothing labelled yet in {self.labelled}: review or teach first")
        self.job = {"state": "learning", "started": time.time(),
                    "started_at": time.strftime("%H:%M:%S"), "running_sha256": self.swapper.sha256}
        worker = threading.Thread(target=self._apply_job, name="edgecls-apply", daemon=True)
        worker.start()
        return dict(self.job)

    def _apply_job(self) -> None:
        try:
            self.job = {**self.job, **self._learn_and_swap()}
        except Exception as e:  # told to the page; the running model stays
            log.warning("kiosk apply failed: %s", first_line(e))
            self.job = {**self.job, "state": "failed", "error": first_line(e)}
        finally:
            self.job["seconds"] = round(time.time() - self.job["started"], 1)
            self._apply.release()

    def _learn_and_swap(self) -> dict:
        origin = self._origin()
        self.models.mkdir(parents=True, exist_ok=True)
        number = 1 + max((int(p.stem[1:]) for p in self.models.glob("v[0-9][0-9][0-9][0-9].tflite")), default=0)
        name = f"v{number:04d}"
        candidate = self.models / f".{name}.candidate.tflite"
        report = self._run_learn(origin, candidate)
        data = candidate.read_bytes()
        write_bytes(self.models / f"{name}.tflite", data)
        candidate.unlink(missing_ok=True)
        for suffix in (".learn.json", ".learn.md"):  # learn's reports, beside the version they describe
            with contextlib.suppress(OSError):
                os.replace(candidate.with_suffix(suffix), self.models / f"{name}{suffix}")
        summary = {"version": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "labels": report["labels"],
                   "new_labels": report["new_labels"], "images_per_class": report["images_per_class"],
                   "val": _brief(report.get("field_val") or report.get("val")),
                   "val_before": _brief(report.get("val_before")),
                   "replaces_sha256": self.swapper.sha256}
        self.job = {**self.job, "state": "swapping", **summary}
        outcome = self.swapper.install(data, f"kiosk apply {name}")
        summary["sha256"] = outcome.sha256
        write_json(self.models / f"{name}.json", {**summary, "accepted": outcome.accepted, "reason": outcome.reason})
        if not outcome.accepted:
            return {**summary, "state": "rejected", "error": outcome.reason}
        history = self._history()
        write_json(self.models / "history.json", [*history, name])
        self._prune([*history, name])
        return {**summary, "state": "applied"}

    def undo(self) -> dict:
        """Put back the version before the running one (the origin after the first apply)."""
        if not self._apply.acquire(blocking=False):
            raise Refused("an apply is running; undo when it has finished", 409)
        try:
            history = self._history()
            if not history:
                raise Refused("nothing to undo: no model was applied from this kiosk")
            previous = history[-2] if len(history) > 1 else None
            path = self.models / (f"{previous}.tflite" if previous else ORIGIN)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise Refused(f"cannot read {path} ({e.strerror}) to undo", 500) from e
            outcome = self.swapper.install(data, f"kiosk undo to {previous or 'origin'}")
            if not outcome.accepted:
                raise Refused(f"{path.name} was rejected: {outcome.reason}", 500)
            write_json(self.models / "history.json", history[:-1])
            return {"state": "undone", "undone": history[-1], "running": previous or "origin", "sha256": outcome.sha256}
        finally:
            self._apply.release()

    def versions(self) -> dict:
        out = []
        for meta in sorted(self.models.glob("v[0-9][0-9][0-9][0-9].json")):
            try:
                out.append(json.loads(meta.read_text()))
            except (OSError, ValueError):
                continue
        return {"history": self._history(), "versions": out, "running_sha256": self.swapper.sha256}

    def _history(self) -> list[str]:
        try:
            history = json.loads((self.models / "history.json").read_text())
        except (OSError, ValueError):
            return []
        return [h for h in history if isinstance(h, str) and (self.models / f"{h}.tflite").is_file()]

    def _origin(self) -> Path:
        """The model before the first apply, kept with its labels: every apply learns from it.

        A running model that is neither the origin nor a version applied here came from elsewhere (a
        fleet deploy, a file copied in): it becomes the new origin, and the history starts over.
        """
        import hashlib

        origin = self.models / ORIGIN
        ours = {(v.get("sha256") or "") for v in self.versions()["versions"]}
        known = origin.is_file() and hashlib.sha256(origin.read_bytes()).hexdigest() == self.swapper.sha256
        if not known and self.swapper.sha256 not in ours:
            if origin.is_file():
                log.info("kiosk apply: the running model %s came from outside this kiosk: learning from it now",
                         self.swapper.sha256[:12])
                write_json(self.models / "history.json", [])
            clf = self.swapper.clf
            write_text(self.models / "origin.labels.txt", "\n".join(clf.labels) + "\n")
            write_bytes(origin, clf.artifact.data)
        return origin

    def _run_learn(self, origin: Path, out: Path) -> dict:
        from edge_app.learn.state import STATE
        from edge_app.runtime import graph
        from edge_app.runtime.artifact import read_member

        base = origin.read_bytes()
        command = [sys.executable, "-m", "edge_app", "learn", "-q", str(self.labelled), "--base", str(origin),
                   "--out", str(out), "--json", "--threads", str(self.num_threads),
                   "--compare", str(self.swapper.path), "--seed", "0",
                   # Frames from the kiosk's camera are field photos: weighed against the lab photos the model
                   # remembers, kept in its reference set first, and setting its 'unknown' threshold.
                   "--as-field",
                   "--overwrite"]  # the candidate of an apply killed before it was installed may be there
        if read_member(base, STATE) is None:
            # A plain classifier keeps its own classes (its final layer) and gains the labelled ones.
            model = graph.read_model(base)
            if graph.find_embedding(model).classifier is not None:
                command += ["--keep-classes", "--labels", str(self.models / "origin.labels.txt")]
        log.info("kiosk apply: learning from %s", self.labelled)
        done = subprocess.run(command, capture_output=True, text=True, preexec_fn=_lower_priority, timeout=3600)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise EdgeclsError(f"learning failed: {lines[-1] if lines else f'exit {done.returncode}'}")
        return json.loads(done.stdout)

    def _prune(self, history: list[str]) -> None:
        """Keep the newest ``keep`` versions (and every one the history still names)."""
        versions = sorted(self.models.glob("v[0-9][0-9][0-9][0-9].tflite"))
        for path in versions[:-self.keep]:
            if path.stem not in history[-self.keep:]:
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
                for report in self.models.glob(f"{path.stem}.learn.*"):
                    report.unlink(missing_ok=True)


def _lower_priority() -> None:
    """In the learn child, before it starts: nice 10 (the live loop keeps its rate), and on Linux, killed
    with its parent (a kiosk killed mid-apply leaves no learn running on)."""
    os.nice(10)
    try:  # ctypes is imported at the top: importing between fork and exec can deadlock
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _brief(result: dict | None) -> dict | None:
    """Accuracy of a learn report part, without the matrices (the page shows two numbers)."""
    if not result:
        return None
    return {"accuracy": result["accuracy"], "balanced_accuracy": result["balanced_accuracy"],
            "num_images": result["num_images"]}
