"""Classifier heads fitted in numpy on frozen embeddings: each is a fully connected layer ``e @ W.T + b``.

``imprint``: the normalised mean of each class's normalised embeddings (weight imprinting, Qi et al.
2018). Scoring ``w·e`` ranks classes exactly as cosine similarity does (``|e|`` is the same for every
class), so it is a nearest-class-mean classifier that fits from a single image per class.

``softmax``: multinomial logistic regression, L2-regularised, by full-batch gradient descent with
Adam on centred and scaled embeddings, a fixed number of steps; centring and scale are folded into
the weights afterwards, so the device runs one plain fully connected layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("edgecls")

HEADS = ("auto", "imprint", "softmax")
SOFTMAX_MIN_PER_CLASS = 5  # below this, logistic regression has too little to fit and imprinting wins
IMPRINT_SCALE = 16.0  # cosine similarity times this gives the softmax a useful spread (imprinting's temperature)


@dataclass(frozen=True)
class Head:
    kind: str
    weights: np.ndarray  # [classes, width] float32
    bias: np.ndarray  # [classes] float32

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Softmax probabilities, exactly as the written model computes them."""
        logits = embeddings @ self.weights.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def choose(kind: str, counts: np.ndarray) -> str:
    """``auto``: softmax when every class has at least 5 training images, else imprint."""
    if kind != "auto":
        return kind
    return "softmax" if counts.min() >= SOFTMAX_MIN_PER_CLASS else "imprint"


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_means(x: np.ndarray, y: np.ndarray, num_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-class sums of normalised embeddings (what extending a model adds to), each row times its weight."""
    sums = np.zeros((num_classes, x.shape[1]), np.float64)
    rows = _normalise(x.astype(np.float64))
    np.add.at(sums, y, rows if weights is None else rows * np.asarray(weights, np.float64)[:, None])
    return sums


def imprint(x: np.ndarray, y: np.ndarray, num_classes: int, norm: float | None = None,
            sums: np.ndarray | None = None) -> Head:
    """Normalised class means, scaled so ``w·e`` is ``IMPRINT_SCALE`` × cosine for a typical ``|e|``.

    ``norm`` (when given) is the weight norm to match instead, e.g. an existing classifier's mean
    row norm, so new rows score on the same scale as its old ones. ``sums`` (when given) are the
    per-class sums to use instead of those of ``x`` (a learned model's, which saw more images)."""
    directions = _normalise(class_means(x, y, num_classes) if sums is None else sums)
    typical = float(np.median(np.linalg.norm(x, axis=1))) or 1.0
    scale = norm if norm is not None else IMPRINT_SCALE / typical
    return Head("imprint", (directions * scale).astype(np.float32), np.zeros(num_classes, np.float32))


def softmax(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-2, steps: int = 300, lr: float = 0.05,
            seed: int = 0, weights: np.ndarray | None = None) -> Head:
    """Multinomial logistic regression: class-balanced cross-entropy + ``l2``·|W|², ``steps`` of full-batch Adam.

    A fixed budget, no early stopping: measured on potato, stopping on a validation part of a few photos
    per class lost 5-40 points against this at 5-20 photos per class (scripts/learn_curve.py). ``weights``: per
    photo, within its class (``learn --field``: 40 field photos count as much as 700 lab ones of the class)."""
    # Centred and scaled by one number, not per feature: from a few photos many pooled features barely
    # vary, and dividing by their tiny spread would blow them up on every new photo.
    mean = x.mean(axis=0)
    scale = float(np.sqrt(np.mean((x - mean) ** 2))) + 1e-6
    z = ((x - mean) / scale).astype(np.float32)
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((num_classes, z.shape[1])) * 0.01).astype(np.float32)
    b = np.zeros(num_classes, np.float32)
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    # Balanced: every class weighs the same in the loss, whatever its image count.
    w_row = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    mass = np.bincount(y, weights=w_row, minlength=num_classes)
    sample_weight = (w_row * len(y) / (num_classes * np.maximum(mass, 1e-12)[y]))[:, None].astype(np.float32)
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    for step in range(1, steps + 1):
        grad_logits = (Head("softmax", w, b).scores(z) - onehot) * sample_weight / len(y)
        grads = [grad_logits.T @ z + l2 * w, grad_logits.sum(axis=0)]
        for i, (param, g) in enumerate(zip((w, b), grads, strict=True)):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            param -= lr * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
    # Fold centring and scale in: w·((e - mean)/scale) + b = (w/scale)·e + (b - w·mean/scale).
    return Head("softmax", (w / scale).astype(np.float32), (b - w @ (mean / scale)).astype(np.float32))


def fit(kind: str, x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0,
        weights: np.ndarray | None = None) -> Head:
    """The head ``kind`` (``imprint`` or ``softmax``) fitted on float embeddings ``x`` with labels ``y``."""
    if kind == "imprint":
        return imprint(x, y, num_classes, sums=None if weights is None else class_means(x, y, num_classes, weights))
    return softmax(x, y, num_classes, seed=seed, weights=weights)
