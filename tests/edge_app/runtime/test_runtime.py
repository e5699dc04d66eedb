"""The runtime layer on real models and real image files."""

from __future__ import annotations

import numpy as np
import pytest
from support import BIRD_MODEL, EDGETPU_MODEL, IMAGENET_MODEL, IMAGES, MODELS

from edge_app.runtime import (
    ImageClassifier,
    InputSpec,
    dequantize,
    embed_metadata,
    make_interpreter,
    match_labels,
    output_scores,
    parse_labels,
    preprocess,
    quantize,
    read_artifact,
    read_image,
    top_k,
)
from edge_app.runtime.errors import DelegateError, ImageError, LabelsError, ModelError
from edge_app.runtime.interpreter import parse_device


@pytest.fixture(scope="module")
def imagenet(shared):
    return ImageClassifier(IMAGENET_MODEL, num_threads=2)


@pytest.mark.parametrize("image, label", [("parrot.jpg", "macaw"), ("grace_hopper.bmp", "military uniform")])
def test_coral_imagenet_model_known_answers(imagenet, image, label):
    top = imagenet.classify(read_image(IMAGES / image), top_k=3)
    assert top[0].label == label
    assert top[0].score > 0.5
    assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)


def test_coral_bird_model_uses_embedded_labels(shared):
    clf = ImageClassifier(BIRD_MODEL, num_threads=2)
    assert len(clf.labels) == clf.num_classes == 965
    top = clf.classify(read_image(IMAGES / "parrot.jpg"), top_k=1)
    assert top[0].label == "Ara macao (Scarlet Macaw)"
    # uint8 softmax output: taken as probabilities, not squashed by a second softmax.
    assert top[0].score > 0.5


def test_embedded_labels_and_label_file_agree(shared):
    artifact = read_artifact(IMAGENET_MODEL)
    assert artifact.labels == parse_labels((MODELS / "imagenet_labels.txt").read_text())
    assert not artifact.edgetpu and read_artifact(EDGETPU_MODEL).edgetpu


def test_thousand_labels_for_1001_outputs_take_background_offset(imagenet, tmp_path, caplog):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(imagenet.labels[1:]) + "\n")
    clf = ImageClassifier(IMAGENET_MODEL, labels=labels, num_threads=1)
    assert clf.labels[0] == "background" and clf.labels == imagenet.labels
    assert "background" in caplog.text
    assert clf.classify(read_image(IMAGES / "parrot.jpg"), top_k=1)[0].label == "macaw"


def test_parse_labels_formats():
    assert parse_labels("cat\ndog\n\n") == ["cat", "dog"]
    assert parse_labels("0 background\n1  tench, Tinca tinca\n3: goldfish\n") == \
        ["background", "tench, Tinca tinca", "class_2", "goldfish"]
    # Plain labels that start with a digit stay whole unless every line has the ID shape.
    assert parse_labels("3 spot\nhealthy\n") == ["3 spot", "healthy"]


def test_match_labels_mismatch_names_both_counts():
    with pytest.raises(LabelsError, match="3 labels but the model outputs 5 classes"):
        match_labels(["a", "b", "c"], 5, "labels.txt")


def test_quantize_rounds_then_clips():
    q = quantize(np.array([-1.0, 0.0, 0.5, 1.0, 9.0]), 1 / 128, 128, np.uint8)
    assert q.tolist() == [0, 128, 192, 255, 255]
    assert np.allclose(dequantize(q, 1 / 128, 128), [-1.0, 0.0, 0.5, 127 / 128, 127 / 128])
    assert quantize(np.array([-3.0, 1.0, 5.0]), 1 / 64, -128, np.int8).tolist() == [-128, -64, 127]


def test_output_scores_softmax_only_for_logits():
    detail = {"quantization": (0.0, 0), "dtype": np.float32}
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    assert np.allclose(output_scores(probs, detail), probs[0])
    logits = np.array([[2.0, 1.0, -1.0]], np.float32)
    scores = output_scores(logits, detail)
    assert np.isclose(scores.sum(), 1) and scores.argmax() == 0 and not np.allclose(scores, logits[0])
    # int8 softmax output (scale 1/256, zero point -128) whose rounded values sum well below 1.
    raw = np.array([[60, -128, -100]], np.int8)
    scores = output_scores(raw, {"quantization": (1 / 256, -128), "dtype": np.int8})
    assert np.allclose(scores, [188 / 256, 0, 28 / 256])


def test_top_k_threshold_and_order():
    scores = np.array([0.1, 0.5, 0.05, 0.35])
    assert top_k(scores, 3) == [(1, 0.5), (3, 0.35), (0, 0.1)]
    assert top_k(scores, 3, score_threshold=0.2) == [(1, 0.5), (3, 0.35)]
    assert len(top_k(scores, 10)) == 4


def test_preprocess_uint8_raw_pixels_into_buffer():
    spec = InputSpec(8, 8, dtype=np.uint8, scale=1 / 128, zero_point=128)
    image = np.full((32, 16, 3), 200, np.uint8)
    out = spec.new_buffer()
    assert preprocess(image, spec, out=out) is out
    assert out.shape == (1, 8, 8, 3) and np.all(out == 200)


def test_preprocess_normalizes_and_quantizes():
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 0, 127, 255
    float_spec = InputSpec(4, 4, dtype=np.float32, mean=(127.5,) * 3, std=(127.5,) * 3)
    x = preprocess(image, float_spec)[0, 0, 0]
    assert np.allclose(x, [-1, -0.5 / 127.5, 1], atol=1e-6)
    int8_spec = InputSpec(4, 4, dtype=np.int8, scale=1.0, zero_point=-128, mean=(0,) * 3, std=(1,) * 3)
    assert preprocess(image, int8_spec)[0, 0, 0].tolist() == [-128, -1, 127]
    raw_int8 = InputSpec(4, 4, dtype=np.int8, scale=0.5, zero_point=3)  # no normalization known: pixel - 128
    assert preprocess(image, raw_int8)[0, 0, 0].tolist() == [-128, -1, 127]


def test_preprocess_channel_order_gray_and_crop():
    image = np.zeros((10, 20, 3), np.uint8)
    image[..., 0] = 255  # pure red, RGB
    bgr = InputSpec(5, 5, dtype=np.uint8, channel_order="BGR")
    assert preprocess(image, bgr)[0, 0, 0].tolist() == [0, 0, 255]
    gray = InputSpec(5, 5, channels=1, dtype=np.float32, mean=(0,), std=(1,))
    assert np.isclose(preprocess(image, gray)[0, 0, 0, 0], 76, atol=1)
    image[:, :5] = 0  # left quarter black: a center crop to a square drops it
    cropped = InputSpec(5, 5, dtype=np.uint8, center_crop=1.0)
    assert np.all(preprocess(image, cropped)[0, ..., 0] == 255)


def test_read_image_odd_formats(tmp_path):
    import cv2
    from PIL import Image

    cv2.imwrite(str(tmp_path / "gray.png"), np.full((10, 12), 77, np.uint8))
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((6, 6), 65535, np.uint16))
    bgra = np.zeros((6, 6, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 200, 50
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    assert read_image(tmp_path / "gray.png").shape == (10, 12, 3)
    assert read_image(tmp_path / "g16.png").max() == 255
    assert read_image(tmp_path / "rgba.png")[0, 0].tolist() == [200, 0, 0]
    # EXIF orientation 6 (rotate 90° clockwise): a wide photo comes out tall, left half on top.
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :40] = (255, 0, 0)
    pil = Image.fromarray(wide)
    exif = pil.getexif()
    exif[0x0112] = 6
    pil.save(tmp_path / "rotated.jpg", exif=exif)
    rotated = read_image(tmp_path / "rotated.jpg")
    assert rotated.shape == (80, 40, 3)
    assert rotated[5, 20, 0] > 200 and rotated[75, 20, 0] < 50


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"not an image", "not a readable image")])
def test_read_image_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        read_image(path)
    assert "bad.jpg" in str(info.value)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.jpg")


def test_model_errors(shared, tmp_path):
    with pytest.raises(ModelError, match="not a TFLite model"):
        make_interpreter(MODELS / "imagenet_labels.txt")
    with pytest.raises(ModelError, match="compiled for the Coral Edge TPU"):
        make_interpreter(EDGETPU_MODEL)
    with pytest.raises(DelegateError, match="libedgetpu"):
        make_interpreter(IMAGENET_MODEL, device="edgetpu:usb:0")
    with pytest.raises(ModelError, match="unknown device"):
        parse_device("gpu")


def test_embed_metadata_round_trip(shared, tmp_path):
    data = embed_metadata(IMAGENET_MODEL.read_bytes(), {"mean": 127.5, "std": 127.5, "quant": "uint8"}, ["x"] * 1001)
    path = tmp_path / "model.tflite"
    path.write_bytes(data)
    artifact = read_artifact(path)
    assert artifact.metadata["quant"] == "uint8" and artifact.labels == ["x"] * 1001
    # Coral's own embedded file is kept; the model still loads and runs.
    import zipfile

    assert "imagenet_labels.txt" in zipfile.ZipFile(path).namelist()
    clf = ImageClassifier(path, num_threads=1)
    assert clf.spec.mean == (127.5,) * 3
    assert clf.classify(read_image(IMAGES / "parrot.jpg"), top_k=1)[0].index == 89  # macaw's index


def test_top_k_breaks_ties_to_the_lower_index_like_argmax():
    from edge_app.runtime import top_k

    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = np.round(rng.random(rng.integers(2, 1002)) * 16).astype(np.float32) / 16  # many ties
        for k in (1, 3, 5):
            expected = np.argsort(-scores, kind="stable")[:k]
            assert [i for i, _ in top_k(scores, k)] == expected.tolist()
        assert top_k(scores, 1)[0][0] == int(np.argmax(scores))
    assert top_k(np.array([0.5, 0.5], np.float32), 5) == [(0, 0.5), (1, 0.5)]
