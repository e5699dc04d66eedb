"""What the converter starts from: a run directory (per the run contract) or a model made elsewhere.

The run directory is read through :mod:`edge_app.runtime.rundir` (``config.json``: ``splits``,
``labels``, ``image_size``, ``preprocessing``), so the converter imports nothing from the trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app.runtime import cards, list_images, read_labels
from edge_app.runtime.errors import DataError, LabelsError, ModelError
from edge_app.runtime.rundir import CONFIG, KERAS_MODEL, LABELS, read_config, split_items

log = logging.getLogger("edgecls")

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")



Items = list[tuple[Path, int]]


@dataclass(frozen=True)
class Source:
    """A model to convert, with its labels, normalization and the images that prove it."""

    model_path: Path
    run_dir: Path | None
    labels: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str
    image_size: tuple[int, int] | None
    calibration: Items
    calibration_source: str
    test: Items
    test_source: str
    #: The class cards every variant carries (``--classes``, else the run's): the metadata value, or ``{}``.
    cards: dict = field(default_factory=dict)


def load_source(config) -> Source:
    """Resolve ``config.model`` into a :class:`Source`; every problem is an error naming the file."""
    path = config.model
    if not path.exists():
        raise ModelError(f"{path} does not exist; pass a run directory (edgecls train ... --out RUN), "
                         "a .keras/.h5 model or a SavedModel directory")
    run_config, run_dir = {}, None
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        run_dir = path
        model_path = path / KERAS_MODEL
        if not model_path.is_file():
            raise ModelError(f"run directory {path} has no {KERAS_MODEL}; train first (edgecls train DATA --out {path}) "
                             "or pass the model file itself")
        run_config = read_config(path)
    else:
        model_path = path
        if path.is_file() and path.suffix.lower() not in KERAS_SUFFIXES:
            hint = " (already a TFLite model: run it with edgecls classify/bench)" if path.suffix == ".tflite" else ""
            raise ModelError(f"{path} is not a Keras model{hint}; pass a .keras or .h5 file, a SavedModel "
                             "directory or a run directory")
    labels = _labels(config, run_dir, run_config)
    class_cards = _cards(config, run_dir, run_config, labels)  # a bad cards file fails now, before minutes of work
    prep = run_config.get("preprocessing", {})
    if config.mean is not None:
        mean, std = config.mean, config.std
    else:
        mean, std = _triple(prep.get("mean", 0.0)), _triple(prep.get("std", 1.0))
        if run_dir is None:
            log.warning("%s: no --mean/--std given, so the model gets raw 0-255 pixels. If it expects [0, 1] pass "
                        "--std 255, for [-1, 1] pass --mean 127.5 --std 127.5", path.name)
    image_size = config.image_size or (tuple(run_config["image_size"]) if "image_size" in run_config else None)

    if config.data is not None:
        test, test_source = folder_items(config.data, labels), f"--data {config.data}"
    elif run_config.get("splits"):
        test, name = _held_out(run_dir, run_config)
        test_source = f"the run's {name} split"
    else:
        raise DataError(f"{path} is not a run directory with held-out images; pass --data DIR "
                        "(a folder of class sub-folders named like the labels) to check the converted models")
    if config.calibration_data is not None:
        calibration, calibration_source = folder_items(config.calibration_data, labels), \
            f"--calibration-data {config.calibration_data}"
    elif run_config.get("splits", {}).get("train"):
        calibration, calibration_source = split_items(run_dir, run_config, "train"), "the run's train split"
    else:
        calibration, calibration_source = test, f"{test_source} (no training split given: pass --calibration-data)"
    if not test:
        raise DataError(f"no images to check on in {test_source}; pass --data DIR with class sub-folders")
    return Source(model_path, run_dir, labels, mean, std, prep.get("channel_order", "RGB"), image_size,
                  calibration, calibration_source, test, test_source, class_cards)


def _held_out(run_dir: Path, run_config: dict) -> tuple[Items, str]:
    for split in ("test", "val"):
        items = split_items(run_dir, run_config, split)
        if items:
            if split != "test":
                log.warning("%s has no test split: checking on the validation split, which guided training",
                            run_dir)
            missing = [p for p, _ in items if not p.is_file()]
            if missing:
                raise DataError(f"{len(missing)} of the {split} images of run {run_dir} are missing "
                                f"(first: {missing[0]}); is data_dir {run_config.get('data_dir')} still there? "
                                "Or pass --data DIR")
            return items, split
    return [], "test"


def folder_items(folder: Path, labels: list[str]) -> Items:
    """Images of a folder of class sub-folders, indexed by ``labels``; classes must be the model's.

    A folder holding ``test/`` is read from there. A sub-folder the model has no label for is an
    error naming it; a label with no folder is a warning (that class is simply not checked).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data {folder} is not a folder; pass a folder of class sub-folders")
    if (folder / "test").is_dir():
        folder = folder / "test"
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class sub-folders; put each class's images in a folder named like its label")
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise DataError(f"{folder} has class folders the model does not know: {', '.join(unknown)}; the model's "
                        f"labels are {', '.join(labels)}. Rename the folders or pass the matching --labels")
    absent = [label for label in labels if label not in classes]
    if absent:
        log.warning("%s has no folder for %s: those classes are not checked", folder, ", ".join(absent))
    items = [(p, labels.index(c)) for c in classes for p in list_images(folder / c)]
    if not items:
        raise DataError(f"{folder} has class folders but no images (.jpg, .png, .bmp, .webp, .tif)")
    return items


def _labels(config, run_dir: Path | None, run_config: dict) -> list[str]:
    if config.labels is not None:
        return read_labels(config.labels)
    if run_dir is not None and (run_dir / LABELS).is_file():
        return read_labels(run_dir / LABELS)
    if run_config.get("labels"):
        return list(run_config["labels"])
    beside = config.model.parent / LABELS
    if beside.is_file():
        return read_labels(beside)
    raise LabelsError(f"no labels for {config.model}; pass --labels FILE (one label per line, index order)")


def _cards(config, run_dir: Path | None, run_config: dict, labels: list[str]) -> dict:
    """``--classes FILE``, else the cards ``edgecls train`` kept in the run's config.json (those of ``labels``)."""
    if config.classes is not None:
        found = cards.read_cards(config.classes, labels)
    elif run_config.get(cards.KEY):
        found = cards.check_cards(cards.for_labels(run_config[cards.KEY], labels), labels,
                                  f"{run_dir / CONFIG} ({cards.KEY!r})")
    else:
        return {}
    log.info("class cards for %d of %d classes (%s): embedded in every variant", len(found), len(labels),
             ", ".join(cards.languages(found)) or "none")
    return found


def _triple(value) -> tuple[float, ...]:
    return tuple(float(v) for v in np.atleast_1d(value))


def stratified_sample(items: Items, n: int | None, seed: int) -> Items:
    """At most ``n`` items, as even across classes as the data allows (all of a small class, then the rest).

    Example:
        >>> stratified_sample([(Path("a.jpg"), 0), (Path("b.jpg"), 1)], 1, seed=0)
    """
    if n is None or n >= len(items):
        return list(items)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    for members in by_class.values():
        rng.shuffle(members)
    chosen, left = [], n
    # Small classes first: each takes its fair share of what is left, so none is crowded out.
    classes = sorted(by_class, key=lambda c: len(by_class[c]))
    for i, c in enumerate(classes):
        take = min(len(by_class[c]), left // (len(classes) - i))
        chosen += by_class[c][:take]
        left -= take
    return sorted(chosen, key=lambda item: (item[1], str(item[0])))
