"""Folder-per-class datasets: scanning, checking every image, stratified splits (no TensorFlow).

Two layouts are read: ``DATA/<class>/*.jpg``, or ``DATA/train/<class>/…`` with optional ``val/`` and
``test/`` beside it. Splits that are missing are carved out of the training images, per class (so
every split keeps the class proportions), with a seeded shuffle. ``edgecls train`` and ``edgecls
learn`` read datasets through here, so both report unreadable images and bad folders the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app.runtime.errors import DataError, EdgeclsError, ImageError
from edge_app.runtime.labels import check_labels
from edge_app.runtime.rundir import SPLITS

log = logging.getLogger("edgecls")

# What training and learning read; TIFF is left out on purpose: the tf-free device decoder reads it, but
# leaf/camera datasets never use it and a stray .tif is more often a scan than a sample.
TRAIN_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Sample = tuple[str, int]  # (path relative to data_dir, class index)


@dataclass
class Dataset:
    """A scanned dataset: labels, the three splits, and what was skipped."""

    data_dir: Path
    labels: list[str]
    splits: dict[str, list[Sample]]
    split_source: dict[str, str]
    skipped: list[dict] = field(default_factory=list)

    def paths(self, split: str) -> list[str]:
        return [str(self.data_dir / rel) for rel, _ in self.splits[split]]

    def targets(self, split: str) -> np.ndarray:
        return np.array([index for _, index in self.splits[split]], np.int64)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {label: count}}``, every label present (zeros included)."""
        counts = {}
        for split, samples in self.splits.items():
            n = np.bincount([i for _, i in samples], minlength=len(self.labels))
            counts[split] = {label: int(c) for label, c in zip(self.labels, n, strict=True)}
        return counts


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in TRAIN_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    hidden = [p.name for p in folders if p.name.startswith((".", "_"))]
    if hidden:
        log.warning("%s: not reading %s as class%s (a name starting with '.' or '_' is skipped); rename %s to "
                    "make %s a class", root, ", ".join(hidden[:5]) + (", ..." if len(hidden) > 5 else ""),
                    "es" if len(hidden) > 1 else "", "them" if len(hidden) > 1 else "it",
                    "them" if len(hidden) > 1 else "it")
    return [p for p in folders if p.name not in hidden]


def _scan_classes(root: Path, labels: Sequence[str] | None = None, error=DataError) -> dict[str, list[Path]]:
    folders = _class_folders(root)
    if not folders:
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in TRAIN_SUFFIXES]
        if loose:
            raise error(
                f"{root} holds {len(loose)} images but no class folders; put each class's "
                "images in its own sub-folder (DATA/<class>/*.jpg)"
            )
        raise error(
            f"{root} is empty: no class folders; give a folder of class sub-folders "
            "(DATA/<class>/*.jpg) with jpg/png/bmp/webp images"
        )
    if labels is None:  # the classes themselves (val/ and test/ must then use exactly these names)
        check_labels([p.name for p in folders], str(root), "class folder", error)
    found = {}
    for folder in folders:
        if labels is not None and folder.name not in labels:
            raise error(
                f"{folder} is a class that train/ does not have; rename it to one of "
                f"{list(labels)} or add it to train/"
            )
        images = _images_in(folder)
        if not images:
            raise error(
                f"class folder {folder} has no images (jpg/png/bmp/webp); add images or remove the folder"
            )
        found[folder.name] = images
    return found


def _verify(paths: list[Path]) -> list[dict]:
    """Decode every image once (threads: OpenCV releases the GIL); return the unreadable ones."""
    from edge_app.runtime.images import read_image
    from edge_app.runtime.progress import progress

    def check(path: Path) -> dict | None:
        try:
            read_image(path)
        except ImageError as e:
            return {"path": str(path), "error": str(e)}
        return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(
            progress(
                pool.map(check, paths),
                total=len(paths),
                desc="checking images",
                unit="img",
                leave=False,
                disable=len(paths) < 200,
            )
        )
    return [r for r in results if r is not None]


def scan(data_dir: Path, val_split: float = 0.15, test_split: float = 0.15, seed: int = 42, min_classes: int = 2,
         error: type[EdgeclsError] = DataError, verify: bool = True, val_from: str = "train") -> Dataset:
    """Find classes and images under ``data_dir``, drop unreadable images, and split.

    Without a ``val/`` folder the validation split is carved (``val_split`` per class) from ``train/`` or, with
    ``val_from="test"``, from ``test/``: when the training photos are near-copies of each other (crops of one
    photo, frames of one video) a validation split carved from them looks more familiar than any new photo, for
    choosing the epoch and for calibrating ``unknown``.

    Raises:
        DataError (or ``error``): an empty dataset, an empty class folder, a single class, a class left with
            no readable images, a class too small to split, or a class name no class may have
            (:func:`edge_app.runtime.labels.check_label`: ``unknown``, ``uncertain``, two that look the same).

    Example:
        >>> ds = scan(Path("plants"), seed=1)
        >>> ds.labels, len(ds.splits["test"])
    """
    data_dir = Path(data_dir).resolve()
    layout = {s: data_dir / s for s in SPLITS if (data_dir / s).is_dir()}
    if "train" in layout:
        found = {"train": _scan_classes(layout["train"], error=error)}
        labels = sorted(found["train"])
        for split in ("val", "test"):
            if split in layout:
                found[split] = _scan_classes(layout[split], labels, error)
    else:
        if layout:
            raise error(
                f"{data_dir} has {'/'.join(layout)}/ but no train/ folder; add train/ or use "
                "one folder per class"
            )
        found = {"train": _scan_classes(data_dir, error=error)}
        labels = sorted(found["train"])
    if val_from not in ("train", "test"):
        raise error(f"the validation split comes from train or test, not {val_from!r}")
    if val_from == "test" and ("test" not in found or "val" in found):
        raise error(f"{data_dir}: a validation split carved from test/ needs a test/ folder and no val/ folder "
                    f"(it has {', '.join(f'{s}/' for s in layout) or 'class folders only'})")
    if len(labels) < min_classes:
        raise error(
            f"{data_dir} has a single class ({labels[0]!r}); a classifier needs at least two class folders"
        )

    every = [p for per_class in found.values() for images in per_class.values() for p in images]
    skipped = _verify(every) if verify else []  # without: the caller decodes and skips (learn embeds once)
    bad = {Path(s["path"]) for s in skipped}
    for s in skipped:
        log.warning("skipping %s", s["error"])
    for split, per_class in found.items():
        for label, images in per_class.items():
            if all(p in bad for p in images):
                raise error(
                    f"class folder {layout.get(split, data_dir) / label} has "
                    f"no readable images ({len(images)} corrupt); replace them or remove the folder"
                )

    def samples(per_class: dict[str, list[Path]]) -> dict[int, list[str]]:
        return {
            labels.index(label): [str(p.relative_to(data_dir)) for p in images if p not in bad]
            for label, images in per_class.items()
        }

    splits: dict[str, list[Sample]] = {}
    source = {}
    pool = samples(found["train"])
    fractions = {"val": val_split, "test": test_split}
    rng = np.random.default_rng(seed)
    if val_from == "test":
        carved, rest = _carve(samples(found["test"]), {"val": val_split}, rng, labels, "test/", error)
        splits["val"], splits["test"] = sorted(carved["val"]), sorted(rest)
        source["val"] = f"carved from test/ ({val_split:.0%} per class, seed {seed})"
        source["test"] = "test/, less the carved val"
        fractions["val"] = 0.0
    carve = [s for s in ("val", "test") if s not in found and fractions[s] > 0]
    where = "train/" if "train" in layout else "the class folders"
    carved, train = _carve(pool, {s: fractions[s] for s in carve}, rng, labels, where, error)
    splits["train"] = sorted(train)
    source["train"] = where + (f", less the carved {' and '.join(carve)}" if carve else "")
    for s in ("val", "test"):
        if s in splits:
            continue
        if s in found:
            splits[s] = sorted((f, i) for i, files in samples(found[s]).items() for f in files)
            source[s] = f"{s}/"
        elif s not in carve:
            splits[s], source[s] = [], "none"
        else:
            splits[s] = sorted(carved[s])
            source[s] = (
                f"carved from {'train/' if 'train' in layout else 'the class folders'} "
                f"({fractions[s]:.0%} per class, seed {seed})"
            )
    return Dataset(data_dir, labels, splits, source, skipped)


def _carve(pool: dict[int, list[str]], fractions: dict[str, float], rng, labels: list[str], where: str,
           error: type[EdgeclsError]) -> tuple[dict[str, list[Sample]], list[Sample]]:
    """Per class, ``fractions[split]`` of ``pool``'s files (at least one) for each split; the rest stay."""
    carved: dict[str, list[Sample]] = {s: [] for s in fractions}
    rest: list[Sample] = []
    for index in sorted(pool):
        files = pool[index]
        order = rng.permutation(len(files))
        n_take = {s: max(1, round(len(files) * f)) for s, f in fractions.items()}
        if len(files) - sum(n_take.values()) < 1:
            raise error(
                f"class {labels[index]!r} has {len(files)} readable images in {where}: too few to carve "
                f"{'/'.join(fractions)} splits from it; add images (at least {sum(n_take.values()) + 1}) "
                "or provide val/ and test/ folders"
            )
        start = 0
        for s in fractions:
            carved[s] += [(files[i], index) for i in order[start : start + n_take[s]]]
            start += n_take[s]
        rest += [(files[i], index) for i in order[start:]]
    return carved, rest


def log_summary(dataset: Dataset) -> None:
    """Classes, counts per split, skipped images and imbalance, on the log."""
    counts = dataset.class_counts()
    total = {label: sum(counts[s][label] for s in counts) for label in dataset.labels}
    log.info(
        "%d classes, %d images (train %d, val %d, test %d)%s",
        len(dataset.labels),
        sum(total.values()),
        *(len(dataset.splits[s]) for s in ("train", "val", "test")),
        f"; skipped {len(dataset.skipped)} unreadable" if dataset.skipped else "",
    )
    for label in dataset.labels:
        log.info(
            "  %-30s %6d  (train %d, val %d, test %d)",
            label,
            total[label],
            *(counts[s][label] for s in ("train", "val", "test")),
        )
    most, least = max(total.values()), min(total.values())
    if most >= 3 * least:
        log.info(
            "classes are imbalanced (%d:%d); --class-weights auto weighs them inversely to their counts",
            most,
            least,
        )
