"""Post-processing: dequantize, softmax only when needed, top-k with a score threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_app.runtime.quant import dequantize


@dataclass(frozen=True)
class Classification:
    index: int
    score: float
    label: str


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def is_distribution(scores: np.ndarray, detail: dict | None = None) -> bool:
    """True when ``scores`` (dequantized) already are probabilities.

    A quantized output with TFLite's fixed softmax quantization (scale 1/256, zero point at the
    type's minimum) is one, even though rounding small probabilities to 0 leaves sums of 0.8-0.9.
    Otherwise the values must be non-negative and sum to 1.
    """
    if detail is not None:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        dtype = np.dtype(detail.get("dtype", np.float32))
        if scale and dtype.kind in "iu" and abs(scale - 1 / 256) < 1e-9 and zero_point == np.iinfo(dtype).min:
            return True
    return bool(scores.size and scores.min() >= 0 and abs(float(scores.sum()) - 1.0) <= 0.01)


def output_scores(raw: np.ndarray, detail: dict, probabilities: bool | None = None) -> np.ndarray:
    """Class scores (float32, 1-D) from a raw output tensor and its ``get_output_details()`` entry.

    ``probabilities``: what the model's metadata says its output is; ``None`` = decide from the values.
    """
    scale, zero_point = detail.get("quantization", (0.0, 0))
    scores = dequantize(raw.reshape(-1), scale, zero_point)
    if probabilities is None:
        probabilities = is_distribution(scores, detail)
    return scores if probabilities else softmax(scores)


def top_k(scores: np.ndarray, k: int = 5, score_threshold: float = 0.0) -> list[tuple[int, float]]:
    """The ``k`` best ``(index, score)`` pairs with ``score >= score_threshold``, best first.

    Equal scores (frequent in quantized outputs) go to the lower class index, as ``numpy.argmax``
    does: the converter's checks, ``classify``, ``run`` and ``bench`` all pick the same top-1.

    Example:
        >>> top_k(np.array([0.25, 0.5, 0.25]), k=2)
        [(1, 0.5), (0, 0.25)]
    """
    if k <= 0 or scores.size == 0:
        return []
    if k == 1:
        best = [int(np.argmax(scores))]  # the live loop's usual case: one pass, lowest index on ties
    else:
        # Per frame, so no full sort of 1001 ImageNet scores: the candidates are every score at
        # least the k-th largest (ties included, in index order), and a stable sort keeps that order.
        k = min(k, scores.size)
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        candidates = np.flatnonzero(scores >= kth)
        best = candidates[np.argsort(-scores[candidates], kind="stable")][:k]
    return [(int(i), float(scores[i])) for i in best if scores[i] >= score_threshold]
