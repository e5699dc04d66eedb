"""End-to-end training on small images the tests write: the run directory contract, both stages."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from edge_app.runtime.rundir import load_split
from trainer.config import TrainConfig
from trainer.datasets import load_pixels
from trainer.train import run

RUN_FILES = (
    "model.keras",
    "labels.txt",
    "config.json",
    "metrics.json",
    "history.csv",
    "curves.png",
    "confusion.png",
    "misclassified.png",
)

pytestmark = pytest.mark.slow


def _predict(model_path: Path, samples: list[tuple[Path, int]], size: int) -> np.ndarray:
    import keras

    model = keras.models.load_model(model_path)
    pixels = np.stack([load_pixels(str(p), size) for p, _ in samples]).astype(np.float32)
    return model.predict(pixels, verbose=0)


def test_simple_cnn_run_directory_is_complete_and_consistent(tmp_path, dataset):
    out = run(
        TrainConfig(
            dataset,
            tmp_path / "run",
            backbone="simple_cnn",
            image_size=32,
            epochs=4,
            batch_size=16,
            learning_rate=3e-3,
            gradcam_images=3,
            seed=1,
        )
    )
    assert out == (tmp_path / "run").resolve()
    for name in RUN_FILES:
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "gradcam").glob("*.png"))) == 3
    assert not list(tmp_path.glob(".run*")), "no partial folder left beside the run"

    labels = (out / "labels.txt").read_text().splitlines()
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert labels == config["labels"] == metrics["labels"] == ["discs", "squares", "stripes"]
    assert config["image_size"] == [32, 32] and config["data_dir"] == str(dataset.resolve())
    assert config["preprocessing"]["mean"] == 0 and config["preprocessing"]["std"] == 1
    assert {"python", "tensorflow", "keras", "edgecls"} <= set(config["versions"])
    assert config["seed"] == 1 and config["weights"] == "none"
    # Stratified: every class keeps its share in every split (24 per class, 15% -> 4 in val and test).
    for split, expected in (("train", 16), ("val", 4), ("test", 4)):
        assert set(config["class_counts"][split].values()) == {expected}, split
    assert (
        sum(metrics["confusion_matrix"], [])
        and np.sum(metrics["confusion_matrix"]) == metrics["num_test"] == 12
    )
    assert set(metrics["per_class"]) == set(labels)
    assert all(v["support"] == 4 for v in metrics["per_class"].values())

    # The saved model reloads, takes raw 0-255 pixels and reproduces the reported test accuracy.
    test = load_split(out, "test")
    probs = _predict(out / "model.keras", test, 32)
    assert probs.shape == (12, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    accuracy = np.mean(probs.argmax(axis=1) == [i for _, i in test])
    assert accuracy == pytest.approx(metrics["test_accuracy"])
    assert metrics["validation"]["learned"], "colour-coded classes are learnable in 4 epochs"

    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert len(history) == metrics["epochs_trained"] >= 1
    assert {row["stage"] for row in history} == {"scratch"}


def test_same_seed_same_metrics_on_cpu(tmp_path, dataset):
    settings = dict(backbone="simple_cnn", image_size=24, epochs=2, batch_size=16, gradcam_images=0, seed=5)
    a = run(TrainConfig(dataset, tmp_path / "a", **settings))
    b = run(TrainConfig(dataset, tmp_path / "b", **settings))
    for name in ("metrics.json",):
        ma, mb = (json.loads((r / name).read_text()) for r in (a, b))
        ma.pop("timing"), mb.pop("timing")
        assert ma == mb
    ha, hb = ([(r["loss"], r["val_loss"]) for r in csv.DictReader(open(d / "history.csv"))] for d in (a, b))
    assert ha == hb
    ca, cb = (json.loads((r / "config.json").read_text())["splits"] for r in (a, b))
    assert ca == cb


def test_two_stage_from_a_local_weights_file(tmp_path, dataset, monkeypatch):
    """Frozen head on cached features, then fine-tuning from a layer; batch-norm stays frozen."""
    import keras

    import trainer.datasets

    # Force the on-disk image cache that large datasets use (one cache shared by both stages).
    monkeypatch.setattr(trainer.datasets, "MEMORY_CACHE_LIMIT_BYTES", 0)

    backbone = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, minimalistic=True
    )
    weights = tmp_path / "pretrained.keras"
    backbone.save(weights)
    at = "expanded_conv_6_expand"
    common = dict(
        backbone="mobilenet_v3_small_minimalistic",
        weights=str(weights),
        image_size=32,
        fine_tune_at=at,
        batch_size=16,
        gradcam_images=1,
        fine_tune_learning_rate=1e-3,
    )
    out = run(TrainConfig(dataset, tmp_path / "run", epochs=2, fine_tune_epochs=1, **common))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["timing"]["feature_cache"] is True and metrics["timing"]["feature_extraction_s"] > 0
    with open(out / "history.csv") as f:
        stages = [row["stage"] for row in csv.DictReader(f)]
    assert stages[:2] == ["frozen", "frozen"] and stages[2:] == ["fine_tune"]

    # Fine-tuning alone, so the saved (best) model is certainly a fine-tuned one.
    out = run(TrainConfig(dataset, tmp_path / "fine", epochs=0, fine_tune_epochs=1, **common))
    trained = keras.models.load_model(out / "model.keras").get_layer("backbone")
    first = [layer.name for layer in backbone.layers].index(at)
    changed = {
        layer.name
        for layer in backbone.layers
        if layer.weights
        and any(
            not np.array_equal(w0, w1)
            for w0, w1 in zip(layer.get_weights(), trained.get_layer(layer.name).get_weights(), strict=True)
        )
    }
    assert changed, "fine-tuning changed no weights"
    below = {layer.name for layer in backbone.layers[:first]}
    batch_norm = {
        layer.name for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert not changed & below, "layers below --fine-tune-at must stay frozen"
    assert not changed & batch_norm, "batch-norm statistics must stay the pretrained ones"


def test_saved_model_converts_and_the_device_runtime_sees_the_same_pixels(tmp_path, dataset):
    """fp32 TFLite through edge_app.runtime (the device path) matches Keras on the trainer's pixels."""
    import keras
    import tensorflow as tf

    from edge_app.runtime import ImageClassifier, read_image

    out = run(
        TrainConfig(
            dataset,
            tmp_path / "run",
            backbone="mobilenet_v3_small_minimalistic",
            weights="none",
            image_size=32,
            epochs=1,
            batch_size=16,
            gradcam_images=0,
        )
    )
    model = keras.models.load_model(out / "model.keras")
    (tmp_path / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    classifier = ImageClassifier(tmp_path / "model.tflite", labels=out / "labels.txt", mean=0, std=1)
    test = load_split(out, "test")
    keras_probs = _predict(out / "model.keras", test, 32)
    for (path, _), expected in zip(test, keras_probs, strict=True):
        classifier.classify(read_image(path), top_k=1)
        np.testing.assert_allclose(classifier.scores(), expected, atol=1e-4)
