"""Fixtures of the converter tests.

A real run directory, built once per session: patterned images written with OpenCV, a tiny Keras
model that follows the run contract (float32 0-255 input, Rescaling inside, softmax), trained a few
steps on exactly the pixels the device will see, saved with labels.txt and config.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import run_cli  # noqa: F401  (re-exported to the converter tests)

from edge_app.runtime import InputSpec, preprocess, read_image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ["circles", "horizontal stripes", "vertical stripes"]  # a space in a label, as real folders have
SIZE = 48
TRAIN_PER_CLASS, TEST_PER_CLASS = 40, 20


def draw(kind: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One BGR image of class ``kind``: random colours, phase, thickness and noise."""
    bg, fg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(bg.astype(int) - fg).sum() < 150:
        fg = rng.integers(0, 256, 3)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    period, width = int(rng.integers(8, 16)), int(rng.integers(2, 5))
    offset = int(rng.integers(0, period))
    if kind == 0:
        for _ in range(int(rng.integers(2, 5))):
            center = tuple(int(v) for v in rng.integers(8, size - 8, 2))
            cv2.circle(img, center, int(rng.integers(4, 14)), fg.tolist(), width)
    elif kind == 1:
        for y in range(offset, size, period):
            cv2.line(img, (0, y), (size, y), fg.tolist(), width)
    else:
        for x in range(offset, size, period):
            cv2.line(img, (x, 0), (x, size), fg.tolist(), width)
    noise = rng.normal(0, 12, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_dataset(root: Path, seed: int = 0) -> dict[str, list]:
    """``root/{train,test}/<label>/img N.png`` and the contract's split lists (paths relative to root)."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for index, label in enumerate(LABELS):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rel = f"{split}/{label}/img {i}.png"
                cv2.imwrite(str(root / rel), draw(index, rng))
                splits[split].append([rel, index])
    return splits


def device_pixels(paths, size: int = SIZE, mean=0.0, std=1.0) -> np.ndarray:
    """The float32 batch the device's pre-processing makes: read_image + preprocess."""
    spec = InputSpec(size, size, dtype=np.float32, mean=(mean,) * 3, std=(std,) * 3)
    return np.concatenate([preprocess(read_image(p), spec) for p in paths])


def build_model(num_classes: int, size: int = SIZE):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="session", name="run_dir")
def fixture_run_dir(tmp_path_factory) -> Path:
    """A run directory per the contract: model.keras, labels.txt, config.json with splits."""
    root = tmp_path_factory.mktemp("converter")
    data, run = root / "data", root / "run"
    splits = write_dataset(data)
    run.mkdir()
    train = splits["train"]
    x = device_pixels([data / rel for rel, _ in train])
    y = np.array([label for _, label in train])
    model = build_model(len(LABELS))
    model.fit(x, y, epochs=25, batch_size=24, verbose=0, shuffle=True)
    model.save(run / "model.keras")
    (run / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config = {
        "labels": LABELS, "image_size": [SIZE, SIZE], "backbone": "tiny_test_cnn", "weights": "none", "seed": 0,
        "data_dir": str(data), "splits": splits, "split_source": {"train": "folder", "test": "folder"},
        "preprocessing": {"mean": 0, "std": 1, "channel_order": "RGB",
                          "resize": "area when shrinking, bilinear when enlarging, stretched"},
        "class_counts": {label: TRAIN_PER_CLASS for label in LABELS},
    }
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="session", name="data_dir")
def fixture_data_dir(run_dir) -> Path:
    return Path(json.loads((run_dir / "config.json").read_text())["data_dir"])
