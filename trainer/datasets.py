"""Datasets from folders: scanning, checking, stratified splits, and the streaming tf.data pipeline.

Two layouts are read: ``DATA/<class>/*.jpg``, or ``DATA/train/<class>/…`` with optional ``val/`` and
``test/`` beside it. Splits that are missing are carved out of the training images, per class (so
every split keeps the class proportions), with a seeded shuffle; the exact file lists go into
``config.json`` and :func:`edge_app.runtime.rundir.load_split` reads them back without TensorFlow.

Pixels are decoded and resized by ``edge_app.runtime`` (OpenCV, EXIF-aware, INTER_AREA when
shrinking): the very code the device runs, so the Keras-vs-TFLite comparison measures quantization,
not a resize mismatch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_app.runtime.dataset import TRAIN_SUFFIXES, Dataset, Sample, log_summary  # noqa: F401  (the trainer's API)
from edge_app.runtime.dataset import scan as scan_folders
from edge_app.runtime.errors import TrainError

log = logging.getLogger("edgecls")

# Below this many bytes of decoded pixels the cache stays in memory; above, it goes to a file.
MEMORY_CACHE_LIMIT_BYTES = 1 << 30

def scan(data_dir: Path, val_split: float = 0.15, test_split: float = 0.15, seed: int = 42,
         val_from: str = "train") -> Dataset:
    """:func:`edge_app.runtime.dataset.scan` with the trainer's error (at least two classes).

    Example:
        >>> ds = scan(Path("plants"), seed=1)
        >>> ds.labels, len(ds.splits["test"])
    """
    return scan_folders(data_dir, val_split, test_split, seed, min_classes=2, error=TrainError, val_from=val_from)


# ----------------------------------------------------------------------------------------- tf.data


def load_pixels(path: str, size: int) -> np.ndarray:
    """One image as the device sees it: ``(size, size, 3)`` uint8 RGB, decoded and resized by edge_app."""
    from edge_app.runtime import InputSpec, preprocess, read_image

    spec = InputSpec(size, size, dtype=np.uint8)
    return preprocess(read_image(path, spec.decode_size), spec)[0]


def decoded_dataset(paths: Sequence[str], targets: np.ndarray, size: int, cache: str | None = None):
    """Unbatched ``(uint8 pixels, class index)`` pairs: decoded+resized in parallel once, then cached.

    Args:
        cache: ``None`` for an in-memory cache, a file path for an on-disk cache (large datasets: only
            the shuffle buffer and a few batches are then in memory), ``""`` for none.
    """
    import tensorflow as tf

    def load(path):
        return load_pixels(path.decode() if isinstance(path, bytes) else str(path), size)

    def tf_load(path, target):
        image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        image.set_shape((size, size, 3))
        return image, target

    ds = tf.data.Dataset.from_tensor_slices((list(paths), targets.astype(np.int64)))
    ds = ds.map(tf_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache is None:
        return ds.cache()
    return ds.cache(cache) if cache else ds


def batched(decoded, batch_size: int, *, shuffle: bool = False, seed: int = 0, augment=None):
    """Shuffle → batch → float32 → augment (train only) → prefetch, over a :func:`decoded_dataset`.

    Several batched views can share one decoded dataset (and so one cache): the frozen stage's
    feature pass and the augmented training pass decode each image once between them.
    """
    import tensorflow as tf

    ds = decoded
    if shuffle:
        ds = ds.shuffle(min(int(ds.cardinality()), 2048), seed=seed, reshuffle_each_iteration=True)

    def to_float(x, y):
        return tf.cast(x, tf.float32), y

    def augmented(x, y):
        return augment(x, training=True), y

    ds = ds.batch(batch_size).map(to_float)
    if augment is not None:
        ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def cache_spec(num_images: int, size: int, work_dir: Path, name: str) -> str | None:
    """In-memory cache for small datasets, a file under ``work_dir`` beyond 1 GiB of pixels."""
    if num_images * size * size * 3 <= MEMORY_CACHE_LIMIT_BYTES:
        return None
    work_dir.mkdir(parents=True, exist_ok=True)
    return str(work_dir / f"{name}.tfcache")


def make_augmenter(seed: int):
    """Random flip, rotation, zoom, translation and contrast, as Keras preprocessing layers.

    Applied in the tf.data pipeline (never in the saved model); inputs and outputs are 0–255.
    """
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.1, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4),
        ],
        name="augment",
    )
