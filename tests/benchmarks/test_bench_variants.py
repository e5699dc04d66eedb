"""Benching real TFLite variants of a tiny 3-class Keras model: quant from tensor types, float input, few classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import run_cli

from benchmarks.latency import infer_quant
from edge_app.runtime import embed_metadata, make_interpreter, read_artifact

pytestmark = pytest.mark.slow
LABELS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """fp32, fp16, dynamic-range and int8 (uint8 I/O) TFLite files of one tiny CNN, names hiding the quant."""
    import tensorflow as tf

    out = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(0)
    inputs = tf.keras.Input((32, 32, 3))
    x = tf.keras.layers.Rescaling(1 / 255)(inputs)
    x = tf.keras.layers.Conv2D(16, 3, activation="relu")(x)
    # >= 1024 weights: TF's dynamic-range quantization leaves smaller tensors in float
    x = tf.keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(3, activation="softmax")(x))

    def representative():
        for _ in range(8):
            yield [rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)]

    paths = {}
    for name in ("fp32", "fp16", "dynamic", "int8"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if name != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if name == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if name == "int8":
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.uint8
        meta = {"mean": 0, "std": 1, "output": "probabilities"}
        paths[name] = out / f"tiny_{'abcd'['fp32 fp16 dynamic int8'.split().index(name)]}.tflite"
        paths[name].write_bytes(embed_metadata(converter.convert(), meta, LABELS))
    return paths


def test_quant_is_inferred_from_tensor_types(variants):
    for quant, path in variants.items():
        assert infer_quant(read_artifact(path), make_interpreter(path, num_threads=1)) == quant


def test_few_classes_have_no_top5_and_a_balanced_top1(variants, tmp_path):
    import cv2

    for i, label in enumerate(LABELS):
        (tmp_path / "data" / label).mkdir(parents=True)
        for j in range(3 if i else 1):  # imbalanced: 1 red, 3 green, 3 blue
            image = np.zeros((40, 40, 3), np.uint8)
            image[..., 2 - i] = 200 + j * 10  # OpenCV writes BGR
            cv2.imwrite(str(tmp_path / "data" / label / f"{j}.png"), image)
    out = tmp_path / "bench.json"
    proc = run_cli("bench", variants["fp32"], variants["int8"], "--threads", "1", "--runs", "3", "--warmup", "0",
                   "--data", tmp_path / "data", "--json", out, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for row in json.loads(out.read_text())["results"]:
        acc = row["accuracy"]
        assert acc["n"] == 7 and acc["top5"] is None
        assert {k: v["n"] for k, v in acc["per_class"].items()} == {"red": 1, "green": 3, "blue": 3}
        assert acc["balanced_top1"] == pytest.approx(np.mean([v["top1"] for v in acc["per_class"].values()]))
        assert acc["top1"] == pytest.approx(sum(v["top1"] * v["n"] for v in acc["per_class"].values()) / 7)
    assert [r["quant"] for r in json.loads(out.read_text())["results"]] == ["fp32", "int8"]
