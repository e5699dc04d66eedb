"""Scoring a classifier's answers against the truth: accuracy, per class, confusion, calibration, ``unknown``.

One implementation for ``learn``'s validation report, ``eval`` on lab or field photos and ``convert --field``.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 10
# Field accuracy this many points below the lab's is said out loud (eval, convert): the model was proven on photos
# unlike a kiosk's (lab-trained leaf models lose 45-65 points on field photos; a few points are sampling noise).
FIELD_GAP_WARN_PP = 15.0


def evaluate(predictions: np.ndarray, truth: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix (rows: truth)."""
    n = len(labels)
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (truth, predictions), 1)
    support, predicted, correct = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    per_class = {}
    for i, label in enumerate(labels):
        if support[i] == 0 and predicted[i] == 0:
            continue  # a kept class that was neither shown nor predicted
        precision = correct[i] / predicted[i] if predicted[i] else 0.0
        recall = correct[i] / support[i] if support[i] else None
        f1 = 2 * precision * recall / (precision + recall) if recall and precision + recall else 0.0
        per_class[label] = {"precision": round(float(precision), 4),
                            "recall": None if recall is None else round(float(recall), 4),
                            "f1": round(float(f1), 4), "support": int(support[i])}
    shown = support > 0
    return {"accuracy": float(correct.sum() / max(1, len(truth))),
            "balanced_accuracy": float(np.mean(correct[shown] / support[shown])) if shown.any() else None,
            "num_images": int(len(truth)), "per_class": per_class,
            "confusion_matrix": {"labels": [labels[i] for i in np.flatnonzero(shown | (predicted > 0))],
                                 "rows": matrix[np.ix_(shown | (predicted > 0), shown | (predicted > 0))].tolist()}}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict:
    """ECE over ``bins`` equal-width bins of top-1 probability, and the bins (for a reliability diagram).

    ECE is the mean gap between how sure the model says it is and how often it is right, weighted by the share
    of photos in each bin: 0 is perfectly calibrated; a lab-trained model on field photos is typically sure and
    wrong (a large ECE), which a percentage on a kiosk screen would hide.
    """
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        chosen = which == b
        if not chosen.any():
            continue
        gap = abs(float(confidence[chosen].mean()) - float(correct[chosen].mean()))
        ece += gap * chosen.sum() / max(1, len(confidence))
        rows.append({"low": round(float(edges[b]), 2), "high": round(float(edges[b + 1]), 2), "count": int(chosen.sum()),
                     "confidence": round(float(confidence[chosen].mean()), 4),
                     "accuracy": round(float(correct[chosen].mean()), 4)})
    return {"ece": round(float(ece), 4), "bins": rows}


def summarize(predicted: np.ndarray, truth: np.ndarray, confidence: np.ndarray, unknown: np.ndarray | None,
              labels: list[str]) -> dict:
    """Everything ``eval`` reports from per-photo answers: :func:`evaluate`'s figures, calibration, and ``unknown``.

    ``unknown``: per photo, whether the model said "not one of my classes" (None: the model cannot). A photo
    called unknown still has its top-1 class in ``accuracy`` (what the head thought); ``accuracy_accepted`` is
    the accuracy on the photos the model did not call unknown, and ``known_accepted`` the share of them.
    """
    result = evaluate(predicted, truth, labels)
    right = predicted == truth
    result["calibration"] = expected_calibration_error(confidence, right)
    if unknown is not None and len(truth):
        accepted = ~unknown
        result["unknown_rate"] = round(float(unknown.mean()), 4)
        result["known_accepted"] = round(float(accepted.mean()), 4)
        result["accuracy_accepted"] = round(float(right[accepted].mean()), 4) if accepted.any() else None
        # What a kiosk shows: right only when it names the right class (an "unknown" is not an answer).
        result["accuracy_shown"] = round(float((right & accepted).mean()), 4)
    return result


def score_photos(classifier, items: list[tuple], progress_desc: str | None = None) -> tuple[dict, list[dict]]:
    """Run ``classifier`` (an :class:`~edge_app.runtime.classifier.ImageClassifier`) over ``(path, class)`` items,
    exactly as ``classify`` does, and :func:`summarize` it; returns ``(result, skipped)`` (unreadable photos)."""
    from edge_app.runtime.errors import ImageError
    from edge_app.runtime.progress import progress

    predicted, truth, confidence, unknown, skipped = [], [], [], [], []
    for path, index in progress(items, desc=progress_desc or f"eval {classifier.path.name}", unit="img",
                                leave=False, disable=progress_desc is None and len(items) < 50):
        try:
            image = classifier.read_image(path)
        except ImageError as e:
            skipped.append({"path": str(path), "error": str(e)})
            continue
        classifier.set_input(image)
        classifier.invoke()
        scores = classifier.scores()
        best = int(np.argmax(scores))
        predicted.append(best)
        truth.append(int(index))
        confidence.append(float(scores[best]))  # scores() are probabilities (a logits output is softmaxed)
        novelty = classifier.novelty()
        unknown.append(novelty is not None and classifier.is_unknown(novelty))
    has_unknown = classifier.reference is not None
    result = summarize(np.array(predicted, np.int64), np.array(truth, np.int64), np.array(confidence),
                       np.array(unknown, bool) if has_unknown else None, classifier.labels)
    return result, skipped

