"""Top-1/top-5 accuracy on a folder of class folders, through the same runtime the device runs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmarks.config import BenchError
from edge_app.runtime import ImageClassifier, list_images
from edge_app.runtime.errors import ImageError
from edge_app.runtime.labelled import match_folders  # noqa: F401  (benchmarks' API)

log = logging.getLogger("edgecls")


def labelled_images(data: str | Path, labels: list[str], max_per_class: int | None = None
                    ) -> tuple[list[tuple[Path, int]], dict[str, int], list[str]]:
    """The ``(image, label_index)`` pairs of ``data``, the folder→label map and the unmatched folders."""
    data = Path(data)
    folders = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise BenchError(f"--data {data} holds no class folders; put each class's images in a sub-folder "
                         f"named like its label, e.g. {data}/macaw/parrot.jpg")
    mapping, unmatched = match_folders(folders, labels)
    if not mapping:
        shown = ", ".join(repr(label) for label in labels[:5])
        raise BenchError(f"no class folder in --data {data} is named like one of the model's {len(labels)} labels "
                         f"(folders: {', '.join(folders[:8])}; labels start: {shown}); rename the folders, "
                         "or pass --labels with the label file the model was trained with")
    if unmatched:
        log.warning("--data %s: folders not among the model's labels, skipped: %s", data, ", ".join(unmatched))
    pairs = []
    for folder, index in mapping.items():
        images = list_images(data / folder)
        if max_per_class is not None:
            images = images[:max_per_class]
        pairs.extend((path, index) for path in images)
    if not pairs:
        raise BenchError(f"the class folders in --data {data} hold no images (.jpg, .png, .bmp, ...)")
    return pairs, mapping, unmatched


def evaluate(clf: ImageClassifier, data: str | Path, max_per_class: int | None = None,
             progress: bool = True) -> dict:
    """Top-1 and top-5 accuracy of ``clf`` on a folder of class folders.

    Images that cannot be read are skipped and counted in ``unreadable`` (named in the log).

    Returns:
        ``{"top1", "top5", "n", "balanced_top1", "per_class": {folder: {"top1", "n"}}, "unmatched_folders",
        "unreadable"}``; ``top5`` is None for models with 5 classes or fewer.

    Example:
        >>> evaluate(ImageClassifier("mobilenet_v2_1.0_224_quant.tflite"), "photos/")["top1"]
        1.0
    """
    pairs, mapping, unmatched = labelled_images(data, clf.labels, max_per_class)
    index_to_folder = {index: folder for folder, index in mapping.items()}
    hits1, hits5, truth, unreadable = [], [], [], []
    for path, index in _progress(pairs, progress, f"accuracy {clf.path.name}"):
        try:
            image = clf.read_image(path)
        except ImageError as e:
            log.warning("%s", e)
            unreadable.append(str(path))
            continue
        clf.set_input(image)
        clf.invoke()
        best = [c.index for c in clf.top(clf.scores(), top_k=5)]
        hits1.append(best[:1] == [index])
        hits5.append(index in best)
        truth.append(index)
    if not truth:
        raise BenchError(f"no image in --data {data} could be read; see the messages above")
    hits1_arr, truth_arr = np.array(hits1), np.array(truth)
    per_class = {index_to_folder[i]: {"top1": float(hits1_arr[truth_arr == i].mean()), "n": int((truth_arr == i).sum())}
                 for i in sorted(set(truth))}
    return {
        "top1": float(np.mean(hits1)),
        # With 5 classes or fewer every image is in the top 5: say "not meaningful" rather than 100%.
        "top5": float(np.mean(hits5)) if clf.num_classes > 5 else None,
        "n": len(truth),
        # Plain top-1 flatters a model on imbalanced folders; the mean of per-class recalls does not.
        "balanced_top1": float(np.mean([c["top1"] for c in per_class.values()])),
        "per_class": per_class,
        "unmatched_folders": unmatched,
        "unreadable": unreadable,
    }


def _progress(items, enabled: bool, desc: str):
    from edge_app.runtime.progress import progress

    return progress(items, desc=desc, unit="img", leave=False, mininterval=1.0, disable=not enabled)
