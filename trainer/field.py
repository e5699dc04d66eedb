"""``train --field``: field photos mixed into training so that a few of them are not drowned by many lab photos.

Field photos (leaves on the plant, in sun and shade, among soil and hands) are what a kiosk sees; lab photos
(one leaf on a plain background) are what datasets have by the thousand. Pooled as they are, 60 field photos
among 1,500 lab ones barely move the model. Here the field photos are split per class into train, val and
test (classes of 5 or more: a held-out part of one photo measures nothing), and the training part is repeated
so it makes up ``field_weight`` of every epoch; the validation part, repeated the same way, joins the lab
validation photos the best epoch is chosen on, and the test part is reported on its own in ``metrics.json``
(``field``), never mixed into the lab figure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app.runtime.labelled import Item, labelled_folder, parse_map, photo_devices, stratified_split
from trainer.config import TrainError

log = logging.getLogger("edgecls")

HOLD_OUT = {"val": 0.2, "test": 0.2}  # of each field class with 5 photos or more


@dataclass(frozen=True)
class FieldPhotos:
    """The field photos of one run: which folder went to which class, the parts, and how often each repeats."""

    folder: Path
    folders: dict[str, int]
    parts: dict[str, list[Item]]
    repeat: int
    weight: float
    devices: dict[str, int] = field(default_factory=dict)  # photos per device, for a folder `fleet pull` wrote

    def paths(self, part: str, repeated: bool = False) -> list[str]:
        return [str(p) for p, _ in self.parts[part]] * (self.repeat if repeated else 1)

    def targets(self, part: str, repeated: bool = False) -> list[int]:
        return [i for _, i in self.parts[part]] * (self.repeat if repeated else 1)

    def record(self, labels: list[str]) -> dict:
        """What config.json keeps of it: enough to say which photos trained the model and which judged it."""
        return {"folder": str(self.folder), "weight": self.weight, "repeat": self.repeat,
                "folders": {f: labels[i] for f, i in self.folders.items()},
                "splits": {part: [[str(p), int(i)] for p, i in items] for part, items in self.parts.items()},
                **({"devices": self.devices} if self.devices else {})}


def read_field(folder: Path, mapping: tuple[str, ...], weight: float, labels: list[str], lab_train: int,
               seed: int) -> FieldPhotos:
    """The field photos in ``folder``, matched to ``labels`` and split; the repeat that gives them ``weight``.

    Raises:
        TrainError: a field folder matching no class (``--field-map FOLDER=CLASS``), an empty class, no photos.
    """
    items, folders = labelled_folder(folder, labels, parse_map(mapping, "--field-map"), flag="--field",
                                     error=TrainError, map_flag="--field-map")
    parts = stratified_split(items, HOLD_OUT, seed)
    n = len(parts["train"])
    # weight = n·r / (n·r + lab_train)  →  r = weight·lab_train / ((1 − weight)·n)
    repeat = max(1, round(weight * lab_train / ((1 - weight) * max(n, 1))))
    log.info("field photos %s: %d (train %d, val %d, test %d); each training photo repeated %d× so field photos "
             "are %.0f%% of an epoch", folder, len(items), n, len(parts["val"]), len(parts["test"]), repeat,
             100 * n * repeat / max(1, n * repeat + lab_train))
    devices = photo_devices(folder, [p for p, _ in items])  # {} unless `edgecls fleet pull` wrote the folder
    if devices:
        log.info("field photos from %d device(s): %s", len(devices), ", ".join(f"{d} {n}" for d, n in devices.items()))
    return FieldPhotos(Path(folder), folders, parts, repeat, weight, devices)


def field_augmenter(seed: int):
    """Field-style augmentation: crops that lose the plain background, light and colour of sun and shade, a
    little blur (motion, focus). Applied to every training photo, lab ones included (0–255 in and out)."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(0.15, fill_mode="reflect", seed=seed + 1),
            # Negative factors zoom in: a leaf filling the frame, the background cut away, as a close photo.
            keras.layers.RandomZoom((-0.45, 0.1), fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomContrast(0.3, value_range=(0, 255), seed=seed + 4),
            keras.layers.RandomBrightness(0.25, value_range=(0, 255), seed=seed + 5),
            keras.layers.RandomSaturation((0.3, 0.7), value_range=(0, 255), seed=seed + 6),
            keras.layers.RandomGaussianBlur(0.5, kernel_size=3, sigma=(0.1, 1.2), value_range=(0, 255), seed=seed + 7),
        ],
        name="field_augment",
    )


def evaluate_field(model, config, field: FieldPhotos, labels: list[str]) -> dict:
    """The held-out field photos' figures, apart from the lab test's (``metrics.json`` ``field``)."""
    from trainer import report
    from trainer.datasets import batched, decoded_dataset

    items = field.parts["test"]
    if not items:
        log.warning("--field %s: no class has 5 photos or more, so none are held out: no field test figure",
                    field.folder)
        return {"num_images": 0, "repeat": field.repeat, "weight": field.weight, "held_out": False}
    y = np.array([i for _, i in items], np.int64)
    ds = batched(decoded_dataset([str(p) for p, _ in items], y, int(config.image_size), ""), config.batch_size)
    result = report.metrics(y, model.predict(ds, verbose=0), labels)
    log.info("field test: %.1f%% of %d held-out field photos (lab test: see above)", 100 * result["test_accuracy"],
             len(y))
    return {"accuracy": result["test_accuracy"], "balanced_accuracy": result["balanced_accuracy"],
            "num_images": len(y), "per_class": result["per_class"], "confusion_matrix": result["confusion_matrix"],
            "repeat": field.repeat, "weight": field.weight, "held_out": True,
            "train_images": len(field.parts["train"]), "val_images": len(field.parts["val"])}
