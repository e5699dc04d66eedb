"""ImageNet weights ported from the shipped TFLite MobileNetV2: the port itself, its checks, and what it buys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import BIRD_MODEL, EDGETPU_MODEL, IMAGES, POTATO, run_cli

from trainer.tflite_weights import SHIPPED, model_path, read_port


def _one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgecls train: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_the_bird_model_has_the_same_backbone_and_another_head(shared):
    """Any TFLite MobileNetV2 1.0 classifier is a backbone: the iNat bird model differs only in its classes."""
    imagenet, birds = read_port(model_path(SHIPPED)), read_port(BIRD_MODEL)
    def layout(port):
        return [(kind, kernel.shape, stride, activation) for kind, _, kernel, _, stride, activation in port.kernels]

    assert len(imagenet.kernels) == 52 and layout(birds) == layout(imagenet)
    assert imagenet.classifier[0].shape == (1280, 1001) and birds.classifier[0].shape == (1280, 965)


@pytest.mark.slow
def test_ported_keras_model_answers_as_the_tflite_model(shared):
    """Top-1 of the float Keras port = the uint8 original's wherever the original is not near a tie."""
    from edge_app.runtime import ImageClassifier, InputSpec, preprocess, read_image
    from trainer.tflite_weights import ported_classifier

    model = ported_classifier(SHIPPED, 224)
    tflite = ImageClassifier(model_path(SHIPPED), num_threads=2)
    spec = InputSpec(224, 224, dtype=np.uint8)
    checked = {}
    for path in sorted(IMAGES.iterdir()):
        pixels = preprocess(read_image(path, spec.decode_size), spec)  # the very pixels both models see
        tflite.set_tensor(pixels)
        tflite.invoke()
        scores = tflite.scores()
        second, first = np.sort(scores)[-2:]
        if (first - second) * 256 < 2:  # within 2 uint8 steps of a tie: either answer is the model's
            continue
        keras_scores = model.predict(pixels.astype(np.float32), verbose=0)[0]
        assert keras_scores.argmax() == scores.argmax(), path.name
        checked[path.name] = tflite.labels[int(keras_scores.argmax())]
    assert len(checked) >= 3, checked
    assert checked["parrot.jpg"] == "macaw" and checked["grace_hopper.bmp"] == "military uniform"


@pytest.fixture(scope="module")
def other_architecture(tmp_path_factory) -> Path:
    """A real TFLite classifier of another architecture: Keras's MobileNet (v1), converted."""
    import keras
    import tensorflow as tf

    model = keras.applications.MobileNet(input_shape=(96, 96, 3), alpha=0.25, weights=None, classes=10)
    path = tmp_path_factory.mktemp("v1") / "mobilenet_v1.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.mark.slow
def test_another_architecture_is_refused_in_one_line(tmp_path, dataset, other_architecture, shared):
    args = ("train", dataset, "--out", tmp_path / "run", "--backbone", "mobilenet_v2", "--image-size", "96")
    _one_line_error(run_cli(*args, "--weights", other_architecture), f"--weights {other_architecture}",
                    "not a MobileNetV2 1.0", f"--weights {SHIPPED}")
    # The Edge TPU model is one custom op around a MobileNet v1 embedding: nothing to port either.
    edgetpu = tmp_path / "edgetpu.tflite"
    shutil.copy(EDGETPU_MODEL, edgetpu)
    _one_line_error(run_cli(*args, "--weights", edgetpu), f"--weights {edgetpu}", "not a MobileNetV2 1.0",
                    f"--weights {SHIPPED}")
    assert not (tmp_path / "run").exists()


def _tiny_potato(root: Path, train: int, test: int) -> Path:
    """``train/`` and ``test/`` of real potato-leaf photos, the first files of each class in name order."""
    for label in sorted(p.name for p in POTATO.iterdir() if p.is_dir()):
        photos = sorted((POTATO / label).iterdir())
        for part, chosen in (("train", photos[:train]), ("test", photos[train:train + test])):
            (root / part / label).mkdir(parents=True)
            for photo in chosen:
                (root / part / label / photo.name).symlink_to(photo)
    return root


@pytest.mark.slow
def test_shipped_weights_beat_training_from_scratch(tmp_path, monkeypatch, shared):
    """Same photos, same short schedule: the ported ImageNet start wins by far more than the test's noise."""
    from scipy.stats import binomtest

    from trainer.config import TrainConfig
    from trainer.tflite_weights import cache_path
    from trainer.train import run

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    data = _tiny_potato(tmp_path / "potato", train=12, test=20)
    common = dict(backbone="mobilenet_v2", image_size=96, epochs=30, batch_size=16, gradcam_images=0, seed=0)
    transfer = run(TrainConfig(data, tmp_path / "transfer", weights=SHIPPED, fine_tune_epochs=0, **common))
    scratch = run(TrainConfig(data, tmp_path / "scratch", weights="none", **common))
    accuracy = {name: json.loads((out / "metrics.json").read_text())["test_accuracy"]
                for name, out in (("transfer", transfer), ("scratch", scratch))}
    tested = json.loads((transfer / "metrics.json").read_text())["num_test"]
    # Could the transfer model's hits have come from a model only as good as the scratch one? (one-sided)
    p = binomtest(round(accuracy["transfer"] * tested), tested, max(accuracy["scratch"], 1 / 3),
                  alternative="greater").pvalue
    assert accuracy["transfer"] >= accuracy["scratch"] + 0.25 and p < 1e-3, (accuracy, p)

    source = json.loads((transfer / "config.json").read_text())["weights_source"]
    assert source["name"] == SHIPPED and "Apache-2.0" in source["origin"]
    assert Path(source["cache"]) == cache_path(model_path(SHIPPED)) and Path(source["cache"]).is_file()
    assert Path(source["cache"]).parent == tmp_path / "keras-home" / "models"
