"""A float32 and an int8-I/O model, made here with TensorFlow, through the same runtime as the device."""

from __future__ import annotations

import numpy as np
import pytest
from support import IMAGES

from edge_app.runtime import ImageClassifier, InputSpec, embed_metadata, preprocess, read_image

pytestmark = pytest.mark.slow
SIZE = 32
LABELS = ["red", "green", "blue", "other"]


def _pixels(images):
    # The exact pixels the runtime feeds a float model: same decode, same resize.
    spec = InputSpec(SIZE, SIZE, dtype=np.float32, mean=(0.0,) * 3, std=(1.0,) * 3)
    return np.concatenate([preprocess(image, spec) for image in images])


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared):
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Rescaling(1 / 127.5, offset=-1),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(LABELS), activation="softmax", kernel_initializer=keras.initializers.RandomNormal(0, 3)),
    ])
    photos = [read_image(p) for p in sorted(IMAGES.iterdir())]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(12)]
    images = photos + noise
    x = _pixels(images)

    out = tmp_path_factory.mktemp("tiny")
    metadata = {"mean": 0, "std": 1, "channel_order": "RGB", "output": "probabilities"}
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (out / "float.tflite").write_bytes(embed_metadata(converter.convert(), metadata, LABELS))

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    (out / "int8.tflite").write_bytes(embed_metadata(converter.convert(), metadata, LABELS))
    return out, images, model.predict(x, verbose=0)


def _runtime_scores(path, images):
    clf = ImageClassifier(path, num_threads=1)
    rows = []
    for image in images:
        clf.set_input(image)
        clf.invoke()
        rows.append(clf.scores())
    return clf, np.stack(rows)


def test_float32_model_matches_keras(models):
    out, images, expected = models
    clf, scores = _runtime_scores(out / "float.tflite", images)
    assert clf.spec.dtype is np.float32 and clf.labels == LABELS
    assert np.allclose(scores, expected, atol=1e-4)


def test_int8_io_model_matches_keras(models):
    out, images, expected = models
    clf, scores = _runtime_scores(out / "int8.tflite", images)
    assert clf.spec.dtype is np.int8 and np.dtype(clf.output_detail["dtype"]) == np.int8
    assert np.abs(scores - expected).max() < 0.06
    # Where Keras is decided, the int8 model agrees.
    decided = np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2] > 0.15
    assert decided.sum() >= 3
    assert np.array_equal(scores[decided].argmax(1), expected[decided].argmax(1))


def test_float_model_without_metadata_warns_and_takes_flags(models, tmp_path, caplog):
    import zipfile

    out, images, expected = models
    data = (out / "float.tflite").read_bytes()
    with zipfile.ZipFile(out / "float.tflite") as z:  # strip the archive: a model made elsewhere
        bare = data[:min(i.header_offset for i in z.infolist())]
    path = tmp_path / "bare.tflite"
    path.write_bytes(bare)
    ImageClassifier(path, num_threads=1)
    assert "raw 0-255 pixels" in caplog.text
    # With --mean 0 --std 1 it is the same model as before; with others the input changes.
    same = ImageClassifier(path, num_threads=1, mean=(0,), std=(1,))
    same.set_input(images[0])
    same.invoke()
    assert np.allclose(same.scores(), expected[0], atol=1e-4)
