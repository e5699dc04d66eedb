"""The evaluation report: metrics.json, config.json, labels.txt and the plots of a run directory."""

from __future__ import annotations

import csv
import logging
import platform
from pathlib import Path

import numpy as np

from edge_app.runtime import cards, rundir
from edge_app.runtime.files import atomic_path, write_json, write_text

log = logging.getLogger("edgecls")

# p-value under which validation accuracy counts as better than always answering the majority class.
CHANCE_P_VALUE = 0.05


def metrics(targets: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: true class).

    Example:
        >>> metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])["test_accuracy"]
        1.0
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

    predicted = probs.argmax(axis=1)
    classes = np.arange(len(labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=classes, zero_division=0
    )
    return {
        "test_accuracy": float(np.mean(predicted == targets)) if len(targets) else 0.0,
        "balanced_accuracy": float(balanced_accuracy_score(targets, predicted)) if len(targets) else 0.0,
        "macro_f1": float(np.mean(f1)),
        "num_test": int(len(targets)),
        "labels": list(labels),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(targets, predicted, labels=classes).tolist(),
    }


def chance_check(targets: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Is validation accuracy better than always answering the most common class? (one-sided binomial test)

    Returns:
        ``{"accuracy", "chance_accuracy", "majority_label", "p_value", "learned"}``.
    """
    from scipy.stats import binomtest

    counts = np.bincount(targets, minlength=len(labels))
    chance = float(counts.max() / counts.sum())
    correct = int(np.sum(probs.argmax(axis=1) == targets))
    p_value = float(binomtest(correct, len(targets), min(chance, 1 - 1e-9), alternative="greater").pvalue)
    return {
        "accuracy": correct / len(targets),
        "chance_accuracy": chance,
        "majority_label": labels[int(counts.argmax())],
        "p_value": p_value,
        "learned": p_value < CHANCE_P_VALUE,
    }


def write_run(run_dir: Path, config, dataset, metrics_: dict, model, test_probs: np.ndarray, field=None,
              class_cards: dict | None = None) -> None:
    """Write everything but ``model.keras`` and ``history.csv`` into ``run_dir``; ``class_cards`` (checked against
    the labels) go into ``config.json``, whence ``edgecls convert`` embeds them in every model."""
    from trainer import gradcam

    write_text(run_dir / rundir.LABELS, "".join(f"{label}\n" for label in dataset.labels))
    record = config_record(config, dataset, model)
    if field is not None:
        record["field"] = field.record(dataset.labels)
    if class_cards:
        record[cards.KEY] = class_cards
    write_json(run_dir / rundir.CONFIG, record)
    write_json(run_dir / rundir.METRICS, metrics_)
    history = read_history(run_dir / rundir.HISTORY)
    plot_curves(history, run_dir / "curves.png")
    plot_confusion(np.array(metrics_["confusion_matrix"]), dataset.labels, run_dir / "confusion.png")
    test = list(zip(dataset.paths("test"), dataset.targets("test"), strict=True))
    plot_misclassified(
        test, test_probs, dataset.labels, run_dir / "misclassified.png", int(config.image_size)
    )
    if config.gradcam_images:
        gradcam.write_overlays(
            model,
            test,
            test_probs,
            dataset.labels,
            run_dir / "gradcam",
            config.gradcam_images,
            int(config.image_size),
        )


def config_record(config, dataset, model) -> dict:
    """config.json: every setting, the splits, preprocessing and library versions (the run contract)."""
    import keras
    import tensorflow as tf

    import edge_app
    from trainer.backbones import SCRATCH_BN_MOMENTUM, get_backbone, weights_source

    spec = get_backbone(config.backbone)
    size = int(config.image_size)
    return {
        **config.to_dict(),
        "labels": list(dataset.labels),
        "num_classes": len(dataset.labels),
        "image_size": [size, size],
        "input": {"dtype": "float32", "range": [0, 255], "shape": [None, size, size, 3]},
        "data_dir": str(dataset.data_dir),
        "split_source": dataset.split_source,
        "class_counts": dataset.class_counts(),
        "skipped": dataset.skipped,
        "preprocessing": {
            "mean": 0,
            "std": 1,
            "channel_order": "RGB",
            "resize": "area when shrinking, bilinear when enlarging, stretched",
            "decoder": "edge_app.runtime.read_image (OpenCV, EXIF-aware)",
            "in_graph": spec.preprocessing,
        },
        "weights_source": weights_source(config.weights),
        "batch_norm_momentum": None if config.pretrained else SCRATCH_BN_MOMENTUM,
        "num_params": int(model.count_params()),
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "edgecls": edge_app.__version__,
        },
        "splits": {s: [[rel, int(i)] for rel, i in dataset.splits[s]] for s in ("train", "val", "test")},
    }


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation, with stage changes marked."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history) + 1)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [float(h.get(prefix + key) or "nan") for h in history]
            ax.plot(epochs, values, style, marker="o", label=f"{'validation' if prefix else 'train'} {key}")
        for i in range(1, len(history)):
            if history[i].get("stage") != history[i - 1].get("stage"):
                ax.axvline(i + 0.5, color="gray", lw=1, ls=":")
                ax.text(
                    i + 0.6, ax.get_ylim()[1], history[i].get("stage", ""), va="top", fontsize=8, color="gray"
                )
        losses = [float(h.get("val_loss") or "inf") for h in history]
        if history and min(losses) < float("inf"):
            ax.axvline(int(np.argmin(losses)) + 1, color="green", lw=1, alpha=0.5, label="best (saved) epoch")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    _savefig(fig, path)


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> None:
    """The test confusion matrix (rows: true class, columns: predicted)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    side = max(4, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45
    )
    ax.set_title("test confusion matrix")
    _savefig(fig, path)


def plot_misclassified(
    test: list[tuple[str, int]], probs: np.ndarray, labels: list[str], path: Path, size: int, limit: int = 16
) -> None:
    """A grid of the most confidently wrong test images (or a note that there were none)."""
    from trainer.datasets import load_pixels

    plt = _pyplot()
    predicted = probs.argmax(axis=1)
    wrong = [i for i in range(len(test)) if predicted[i] != test[i][1]]
    wrong = sorted(wrong, key=lambda i: -probs[i, predicted[i]])[:limit]
    cols = min(4, max(1, len(wrong)))
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not wrong:
        axes[0, 0].text(
            0.5, 0.5, f"no misclassified test images\n({len(test)} tested)", ha="center", va="center"
        )
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(load_pixels(test[i][0], max(size, 96)))
        ax.set_title(
            f"true: {labels[test[i][1]]}\npred: {labels[predicted[i]]} ({probs[i, predicted[i]]:.0%})",
            fontsize=8,
        )
    _savefig(fig, path)
