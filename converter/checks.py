"""The checks that prove a converted model: accuracy against the float model, agreement, latency.

Every ``.tflite`` runs through :class:`edge_app.runtime.ImageClassifier`, exactly as the device
runs it (same decode, resize, normalization, quantization, output handling). The float model
sees the same resized pixels, so a difference measures the conversion, nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_app.runtime import ImageClassifier, preprocess
from edge_app.runtime.timing import latency_stats, time_invokes

log = logging.getLogger("edgecls")


@dataclass(frozen=True)
class Evaluation:
    """Top-1 predictions of one model on the check images and what follows from them."""

    predictions: np.ndarray
    accuracy: float
    per_class: dict[str, float | None]
    confusion_matrix: list[list[int]]

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "per_class_accuracy": self.per_class,
                "confusion_matrix": self.confusion_matrix}


@dataclass(frozen=True)
class DropTest:
    """The paired test of an accuracy drop (see :func:`paired_drop`); ``ci95_pp`` is ``[low, high]``."""

    lost: int
    gained: int
    num_images: int
    drop_pp: float
    ci95_pp: list[float]
    p_value: float
    significant: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Comparison:
    """A variant's figures on the check images against the float model's (see :func:`compare`); the first fields of
    a :class:`~converter.results.Variant`."""

    accuracy: float
    accuracy_drop_pp: float
    drop_test: DropTest
    agreement: float
    per_class_accuracy: dict[str, float | None]
    per_class_delta_pp: dict[str, float | None]
    confusion_matrix: list[list[int]]


@dataclass(frozen=True)
class Latency:
    """Milliseconds of ``set_tensor`` + ``invoke`` (rounded to the µs as reported) and how they were taken."""

    p50: float
    p90: float
    mean: float
    min: float
    first_ms: float
    runs: int
    warmup: int
    num_threads: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(predictions: np.ndarray, truth: np.ndarray, labels: list[str]) -> Evaluation:
    """Accuracy, per-class accuracy (recall; ``None`` for a class with no images) and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

    recall = recall_score(truth, predictions, labels=list(range(len(labels))), average=None, zero_division=0)
    present = set(truth.tolist())
    per_class = {label: (float(recall[i]) if i in present else None) for i, label in enumerate(labels)}
    matrix = confusion_matrix(truth, predictions, labels=list(range(len(labels)))).tolist()
    return Evaluation(predictions, float(accuracy_score(truth, predictions)), per_class, matrix)


def reference_predictions(reference, images: list[np.ndarray], spec, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Scores and top-1 of the float model on ``images`` pre-processed with ``spec`` (float32), in chunks."""
    scores = [reference.predict(np.concatenate([preprocess(image, spec) for image in images[i:i + chunk]]))
              for i in range(0, len(images), chunk)]
    scores = np.concatenate(scores)
    return scores, scores.argmax(axis=1)


def tflite_predictions(classifier: ImageClassifier, images: list[np.ndarray], desc: str) -> np.ndarray:
    """Top-1 of a converted model on ``images``, one invoke each, as the device runs it."""
    from edge_app.runtime.progress import progress

    out = np.empty(len(images), np.int64)
    for i, image in enumerate(progress(images, desc=desc, unit="img", leave=False, disable=len(images) < 50)):
        classifier.set_input(image)
        classifier.invoke()
        out[i] = int(np.argmax(classifier.scores()))
    return out


def compare(variant: Evaluation, reference: Evaluation, reference_top1: np.ndarray, truth: np.ndarray) -> Comparison:
    """Drop in percentage points with its paired statistics, per-class deltas, and top-1 agreement."""
    deltas = {label: (None if acc is None else round(100.0 * (acc - reference.per_class[label]), 3))
              for label, acc in variant.per_class.items()}
    float_right, variant_right = reference_top1 == truth, variant.predictions == truth
    return Comparison(
        accuracy=variant.accuracy,
        accuracy_drop_pp=round(100.0 * (reference.accuracy - variant.accuracy), 3),
        drop_test=paired_drop(int(np.sum(float_right & ~variant_right)), int(np.sum(~float_right & variant_right)),
                              len(truth)),
        agreement=float(np.mean(variant.predictions == reference_top1)),
        per_class_accuracy=variant.per_class,
        per_class_delta_pp=deltas,
        confusion_matrix=variant.confusion_matrix,
    )


def measure_latency(classifier: ImageClassifier, warmup: int = 5, runs: int = 50) -> Latency:
    """p50/p90/mean/min of ``set_tensor`` + ``invoke`` in milliseconds: the runtime's one timer, as ``bench`` uses.

    Example:
        >>> measure_latency(ImageClassifier("model_int8.tflite", num_threads=2)).p50
    """
    first_ms, samples = time_invokes(classifier, runs=runs, warmup=warmup)
    stats = latency_stats(samples)
    return Latency(**{k: round(stats[k], 3) for k in ("p50", "p90", "mean", "min")}, first_ms=round(first_ms, 3),
                   runs=runs, warmup=warmup, num_threads=classifier.num_threads)


SIGNIFICANCE = 0.05


def paired_drop(lost: int, gained: int, n: int) -> DropTest:
    """The accuracy drop on ``n`` paired images and how sure it is: ``lost`` images the float model got right
    and the variant wrong, ``gained`` the reverse.

    Only those disagreements carry information (McNemar): if the variant were as accurate as the float
    model, each would fall either way with even odds. ``p_value`` is the exact one-sided binomial
    probability of losing at least ``lost`` of them by chance; ``ci95_pp`` is the 95% interval of the drop
    (Wald for paired proportions with continuity correction). On 200 images, 3 lost and 0 gained is p = 0.125 (noise); 15 lost and 2
    gained is p = 0.001 (a real loss).

    Example:
        >>> paired_drop(3, 0, 200).significant
        False
    """
    from scipy.stats import binomtest, norm

    drop = (lost - gained) / n if n else 0.0
    # Wald interval of a paired difference, continuity-corrected (Fleiss): wide enough at small counts.
    half = (float(norm.ppf(0.975)) * np.sqrt(max(lost + gained - (lost - gained) ** 2 / n, 0.0)) + 1) / n \
        if n and lost + gained else 0.0
    p = float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue) if lost + gained else 1.0
    return DropTest(lost, gained, n, round(100 * drop, 3),
                    [round(float(100 * (drop - half)), 3), round(float(100 * (drop + half)), 3)], round(p, 5),
                    p < SIGNIFICANCE)


def accuracy_fails(drop_pp: float, test: DropTest, max_accuracy_drop: float) -> bool:
    """The drop is above the limit and unlikely to be noise."""
    return drop_pp > max_accuracy_drop and test.significant


def gate(drop_pp: float, test: DropTest, p50: float, max_accuracy_drop: float, max_latency_ms: float | None) -> list[str]:
    """The failures of one variant (its accuracy drop in pp, the drop's test, its p50 latency in ms) against the
    limits; empty when it passes.

    Accuracy fails when the drop is above ``max_accuracy_drop`` *and* unlikely to be noise (McNemar's exact
    test at 5%, see :func:`paired_drop`): on a few hundred images, one to three changed predictions
    must not decide whether a model ships.
    """
    failures = []
    if accuracy_fails(drop_pp, test, max_accuracy_drop):
        failures.append(f"accuracy drop {drop_pp:.2f} pp > --max-accuracy-drop {max_accuracy_drop:g} pp "
                        f"({test.lost} images lost, {test.gained} gained: p = {test.p_value:.3g})")
    if max_latency_ms is not None and p50 > max_latency_ms:
        failures.append(f"p50 latency {p50:.2f} ms > --max-latency-ms {max_latency_ms:g} ms")
    return failures


def open_classifier(path: Path, labels: list[str], num_threads: int | None) -> ImageClassifier:
    """The device's classifier for ``path``; its embedded metadata gives labels and normalization."""
    classifier = ImageClassifier(path, num_threads=num_threads)
    if classifier.labels != labels:
        log.warning("%s carries labels %s, expected %s", path.name, classifier.labels, labels)
    return classifier
