"""What the farmer's view says beside a verdict: whether the kiosk is sure, the class card in the page's language,
and the labelled frames of that class the frame looks like."""

from __future__ import annotations

from collections.abc import Callable

from edge_app.frames.sinks import Result
from edge_app.frames.sources import Frame

SURE_AT = 0.8  # a verdict's (smoothed) score from which the farmer's page says "sure"


def is_sure(result: Result) -> bool:
    return not (result.uncertain or result.unknown) and result.score >= SURE_AT


def card_for(model: Callable[[], object] | None, label: str, lang: str) -> dict | None:
    """The running model's card for ``label`` in ``lang`` (see :func:`edge_app.runtime.cards.card`)."""
    from edge_app.runtime.cards import KEY, card

    clf = model() if model is not None else None
    return card(clf.artifact.metadata.get(KEY) if clf is not None else None, label, lang)


class Examples:
    """"Looks like these": the labelled frames of the verdict's class nearest its frame, found once per frame
    however many viewers ask (``/status`` is polled twice a second by each)."""

    def __init__(self):
        self._found: tuple[int, list] = (-1, [])  # the frame version they were found for, and them

    def find(self, field, result: Result, frame: Frame | None, version: int, model_sha256: str) -> list[dict]:
        if field is None or frame is None or result.unknown or result.uncertain:
            return []
        if self._found[0] != version:
            from edge_app.kiosk.similar import vectors_of

            target = vectors_of(frame.image, result.embedding, model_sha256 or "")
            self._found = (version, field.examples(target, result.label))
        return self._found[1]
