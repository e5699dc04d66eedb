"""The photos ``learn`` reads: the base's labels (and class cards), how DATA's classes join them, and the
train/val/test parts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_app.runtime import cards
from edge_app.runtime.dataset import scan
from edge_app.runtime.errors import CardsError, DataError, LabelsError
from edge_app.runtime.labels import check_label, label_key, match_labels, read_labels

log = logging.getLogger("edgecls")

MIN_VAL_CLASS = 5  # a class with fewer images gives none to the validation part
IMBALANCE = 10  # most/least photos per class from which learn warns


def base_labels(artifact, path: Path, labels_file: Path | None, num_classes: int) -> list[str]:
    if labels_file is not None:
        return match_labels(read_labels(labels_file), num_classes, str(labels_file))
    if artifact.labels:
        return match_labels(artifact.labels, num_classes, f"the labels embedded in {path.name}")
    beside = path.parent / "labels.txt"
    if beside.is_file():
        return match_labels(read_labels(beside), num_classes, str(beside))
    raise LabelsError(f"--keep-classes needs the labels of {path}: it carries none and there is no labels.txt "
                      "beside it; pass --labels FILE")


def class_cards(base_metadata: dict, base_path: Path, labels: list[str], classes: Path | None) -> dict:
    """The new model's class cards: the base's for every class of ``labels`` it has one for (the classes it keeps),
    the file ``classes``'s over them, card by card (class and language).

    Raises:
        CardsError: a bad ``classes`` file (a base's bad cards are dropped with a warning: a model from elsewhere).
    """
    kept = cards.for_labels(base_metadata.get(cards.KEY), labels)
    try:
        kept = cards.check_cards(kept, labels, f"--base {base_path}")
    except CardsError as e:
        log.warning("the class cards of the base are not kept: %s", e)
        kept = {}
    given = cards.read_cards(classes, labels) if classes is not None else {}
    merged = cards.for_labels(cards.merge(kept, given), labels)  # in the model's class order
    if merged:
        log.info("class cards for %d of %d classes (%s)%s", len(merged), len(labels),
                 ", ".join(cards.languages(merged)),
                 "".join([f"; {len(kept)} kept from {base_path.name}"] * bool(kept)
                         + [f"; {len(given)} from {classes}"] * bool(given)))
    return merged


def merge_labels(old: list[str], new: list[str], data: Path) -> list[str]:
    """Old labels first, then new ones; a folder that looks the same as an old label (another case, or accents
    encoded otherwise: :func:`~edge_app.runtime.labels.check_label`) is an error."""
    from edge_app.runtime.labelled import loose_key

    taken: dict[str, str] = {}
    for label in old:
        taken.setdefault(label_key(label), label)
    loose = {loose_key(label): label for label in old}
    for label in new:
        if label not in old:
            check_label(label, taken, str(data), "class folder", fix="rename the folder to the model's spelling to "
                        "add examples to that class, or give it a clearly different name")
            twin = loose.get(loose_key(label))
            if twin is not None:  # potato_early_blight beside Potato___Early_blight: one disease, two classes
                raise LabelsError(f"class folder {data / label} is named like the model's class {twin!r} (case, '_', "
                                  f"'-' and spaces aside); rename the folder to {twin!r} to add examples to it, or "
                                  "give it a clearly different name")
    return old + [label for label in new if label not in old]


def warn_imbalance(dataset, root: Path) -> None:
    """A head fitted on 500 photos of one class and 1 of another leans to the first: say so (train says it too)."""
    counts = dataset.class_counts()["train"]
    most, least = max(counts, key=counts.get), min(counts, key=counts.get)
    if len(counts) > 1 and counts[most] >= IMBALANCE * max(counts[least], 1):
        log.warning("classes are imbalanced: %s has %d photos, %s %d (%d:1); the head will lean towards %s. Add "
                    "photos of %s, or use fewer of %s", root / most, counts[most], root / least, counts[least],
                    counts[most] // max(counts[least], 1), most, least, most)


def split_parts(dataset, labels: list[str], data: Path, val_split: float, seed: int) -> dict[str, tuple[list[Path], np.ndarray]]:
    """The train part, a validation part (``val/`` when given, else carved per class from classes of 5 photos or
    more), and ``test/`` when given; ``val/`` and ``test/`` may hold any class the model will know."""
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    given = {part: data / part for part in ("val", "test") if (data / "train").is_dir() and (data / part).is_dir()}
    by_class: dict[int, list[str]] = {}
    for rel, i in dataset.splits["train"]:
        by_class.setdefault(i, []).append(rel)
    for i, files in sorted(by_class.items()):
        order = rng.permutation(len(files))
        carve = val_split and "val" not in given and len(files) >= MIN_VAL_CLASS
        n_val = max(1, round(len(files) * val_split)) if carve else 0
        for j, k in enumerate(order):
            part = "val" if j < n_val else "train"
            parts[part][0].append(dataset.data_dir / files[k])
            parts[part][1].append(labels.index(dataset.labels[i]))
    for part, folder in given.items():
        found = scan(folder, 0.0, 0.0, seed, min_classes=1, verify=False)
        for label in found.labels:
            if label not in labels:
                raise DataError(f"{folder / label} is a class the model will not know; rename it to one of "
                                f"{labels} or add it to {data / 'train'}")
        parts[part] = ([found.data_dir / rel for rel, _ in found.splits["train"]],
                       [labels.index(found.labels[i]) for _, i in found.splits["train"]])
    return {part: (paths, np.array(targets, np.int64)) for part, (paths, targets) in parts.items()}


def check_readable(dataset, raw: dict, labels: list[str], skipped: list[dict], prefixes=("",)) -> None:
    """Every class folder of DATA kept a readable photo (``prefixes``: ``field_`` when DATA's parts are named so)."""
    present = set()
    for part in (f"{prefix}{p}" for prefix in prefixes for p in ("train", "val")):
        if part in raw:
            present |= set(raw[part][1].tolist())
    for label in dataset.labels:
        if labels.index(label) not in present:
            raise DataError(f"class folder {dataset.data_dir / label} has no readable images; replace them or "
                            "remove the folder")
    if skipped:
        log.warning("skipped %d unreadable image(s)", len(skipped))


def field_parts(folder: Path, mapping: tuple[str, ...], labels: list[str], val_split: float,
                seed: int) -> dict[str, tuple[list[Path], np.ndarray]]:
    """``--field``: its photos matched to ``labels`` by folder name (or ``--field-map``), as ``field_train`` and a
    held-out ``field_val`` (classes of 5 photos or more); raises :class:`DataError` for a folder matching no class."""
    from edge_app.runtime.labelled import labelled_folder, parse_map, stratified_split

    items, folders = labelled_folder(folder, labels, parse_map(mapping, "--field-map"), flag="--field",
                                     map_flag="--field-map")
    split = stratified_split(items, {"val": val_split} if val_split else {}, seed, MIN_VAL_CLASS)
    log.info("--field %s: %d field photos (%s)", folder, len(items),
             ", ".join(f"{f} -> {labels[i]}" for f, i in folders.items()))
    return {f"field_{part}": ([p for p, _ in chosen], np.array([i for _, i in chosen], np.int64))
            for part, chosen in split.items() if chosen}
