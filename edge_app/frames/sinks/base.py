"""Where results go: one small interface, one module per output.

Every output the loop feeds is a :class:`Sink` with the same calls: ``start(info)`` once with the run's facts,
``update(frame, result)`` per classified frame, ``event(name, detail)`` for what is not a frame, ``close()``
(always, flushing what it holds). The outputs that only write what they are handed live beside this module
(``jsonl``: the log, ``window``: the overlay, ``saver``: evidence frames); those that are also a room's front door
live in that room, one module each: the kiosk's web view (:mod:`edge_app.kiosk.server`), field collection
(:mod:`edge_app.kiosk.collect`) and ``/metrics`` (:mod:`edge_app.kiosk.metrics`), the fleet's MQTT link
(:mod:`edge_app.link.mqtt`). Hardware and GUI imports stay inside the classes that need them.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

import numpy as np

from edge_app.frames.sources import Frame
from edge_app.runtime.labels import UNCERTAIN, UNKNOWN  # noqa: F401  (their home: no class may take these names)

UNKNOWN_TEXT = "Not something I know"  # what a person reads for it (overlay, kiosk page)


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
        file: the image file of a folder source.
        ranked: the best five ``[(label, score)]`` when field collection needs more than ``top_k``.
        novelty: how unlike the model's reference photos the frame is (smoothed like the scores), for a model
            with a reference set; above its threshold the label is ``unknown``.
        invoke_ms: the interpreter's own time for this frame (``latency_ms`` also counts capture, decode and
            pre-processing): ``/metrics``' inference histogram and the MQTT result's ``invoke_ms``.
        embedding: the model's embedding of the frame (float32), for a model with an embedding output: what the
            kiosk groups kept frames and finds look-alike examples by.
    """

    frame: int
    t: float
    label: str
    score: float
    _: KW_ONLY  # the rest by name: eleven figures in a row are easy to put in the wrong place
    top_k: list[tuple[str, float]] = field(default_factory=list)
    latency_ms: float = 0.0
    fps: float = 0.0
    file: str | None = None
    ranked: list[tuple[str, float]] | None = None
    novelty: float | None = None
    invoke_ms: float | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def uncertain(self) -> bool:
        return self.label == UNCERTAIN

    @property
    def unknown(self) -> bool:
        return self.label == UNKNOWN

    def record(self, with_top_k: bool = False) -> dict:
        """The log line (DESIGN.md schema), plus ``top_k`` when more than one was asked for."""
        record = {"frame": self.frame, "t": round(self.t, 3), "label": self.label, "score": round(self.score, 4),
                  "latency_ms": round(self.latency_ms, 2), "fps": round(self.fps, 1)}
        if self.novelty is not None:
            record["novelty"] = round(self.novelty, 4)
        if self.file is not None:
            record["file"] = self.file
        if with_top_k:
            record["top_k"] = [{"label": label, "score": round(score, 4)} for label, score in self.top_k]
        return record


class Sink:
    """Does nothing; the base of every sink."""

    def start(self, info: dict) -> None:
        pass

    def update(self, frame: Frame, result: Result) -> None:
        pass

    def event(self, name: str, detail: str, **fields) -> None:
        """Something happened that is not a frame (the camera was lost or came back, a model was swapped in).

        ``fields`` are the event's facts (``old_sha256``, ``new_sha256``, ``reason`` ...), JSON-ready.
        """

    def close(self) -> None:
        pass
