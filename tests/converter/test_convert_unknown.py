"""Every converted variant says ``unknown``: its second output is the trained model's pooled features, and its
reference set was computed with itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import LABELS, device_pixels, fixture_data_dir, fixture_run_dir, run_cli  # noqa: F401
from support import IMAGES

from edge_app.runtime import ImageClassifier, read_artifact, read_image
from edge_app.runtime.artifact import flatbuffer_part
from edge_app.runtime.novelty import KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(run_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("unknown-out")
    far = tmp_path_factory.mktemp("far")
    for photo in IMAGES.iterdir():
        (far / photo.name).symlink_to(photo)
    proc = run_cli("convert", run_dir, "--out", out, "--quant", "fp32", "int8", "--calibration-size", "60",
                   "--runs", "5", "--warmup", "1", "--threads", "1", "--max-accuracy-drop", "20",
                   "--unknown-check", far, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def _keras_pooled(run_dir, paths) -> np.ndarray:
    import keras

    model = keras.models.load_model(run_dir / "model.keras")
    pooled = next(layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    return keras.Model(model.inputs, pooled.output).predict(device_pixels(paths), verbose=0)


def test_the_second_output_is_the_keras_models_pooled_features(converted, run_dir, data_dir):
    out, _ = converted
    paths = sorted((data_dir / "test" / LABELS[0]).iterdir())[:8]
    keras_features = _keras_pooled(run_dir, paths)
    for quant, tolerance in (("fp32", 1e-4), ("int8", None)):
        clf = ImageClassifier(out / f"model_{quant}.tflite", num_threads=1)
        assert clf.reference is not None, quant
        ours = []
        for path in paths:
            clf.classify(read_image(path), top_k=1)
            ours.append(clf.embedding())
        ours = np.array(ours)
        if tolerance is not None:
            np.testing.assert_allclose(ours, keras_features, atol=tolerance * max(1.0, np.abs(keras_features).max()))
        else:
            # int8: the whole network's quantization, not one step, lies between them; the direction is kept.
            step = clf.embedding_detail["quantization"][0]
            cosine = (ours * keras_features).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(keras_features, axis=1)
            assert cosine.min() > 0.98, cosine
            assert np.median(np.abs(ours - keras_features)) <= 4 * step, (np.abs(ours - keras_features).max(), step)


def test_each_variant_carries_a_reference_set_made_with_itself_and_reports_it(converted):
    out, report = converted
    for variant in report["variants"]:
        unknown = variant["unknown"]
        path = out / f"model_{variant['quant']}.tflite"
        artifact = read_artifact(path, keep_bytes=True)
        # As many per class as fit in 15% of the model (32 values each, 4 bytes in fp32, 1 in int8), 40 at most.
        row_bytes = 32 * (4 if variant["quant"] == "fp32" else 1)
        budget = 0.15 * len(flatbuffer_part(artifact.data))
        assert unknown["enabled"] and unknown["references"] % 3 == 0 and 3 <= unknown["references"] <= 120
        assert unknown["references"] * row_bytes <= budget or unknown["references"] == 3
        assert 0.85 <= unknown["test"]["known_accepted"] <= 1.0
        assert unknown["check"]["num_images"] == 4 and "max_softmax" in unknown["check"]
        metadata = artifact.metadata
        assert metadata[KEY]["threshold"] == unknown["threshold"] and metadata[KEY]["count"] == unknown["references"]
        assert json.loads((out / f"model_{variant['quant']}.json").read_text())[KEY] == metadata[KEY]
        assert variant["size_bytes"] == (out / f"model_{variant['quant']}.tflite").stat().st_size
        clf = ImageClassifier(path, num_threads=1)  # the k-NN runs in the graph: numpy's score, up to int8 rows
        assert clf.describe()["unknown"]["scored_in"] == "graph"
        for photo in sorted(IMAGES.iterdir()):
            clf.classify(clf.read_image(photo), top_k=1)
            assert clf.novelty() == pytest.approx(clf.reference.score(clf.embedding()), abs=0.01), photo.name
    int8, fp32 = (read_artifact(out / f"model_{q}.tflite", keep_bytes=True) for q in ("int8", "fp32"))
    assert int8.reference != fp32.reference  # the int8 set holds int8 embeddings from the int8 model
    assert "## Unknown: none of the classes" in (out / "conversion.md").read_text()


def test_unknown_off_converts_as_before(run_dir, tmp_path):
    proc = run_cli("convert", run_dir, "--out", tmp_path, "--quant", "fp32", "--runs", "3", "--warmup", "1",
                   "--threads", "1", "--unknown", "off", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "unknown" not in json.loads(proc.stdout)["variants"][0]
    clf = ImageClassifier(tmp_path / "model_fp32.tflite")
    assert clf.reference is None and len(clf.interpreter.get_output_details()) == 1


def _field_photos(root, seed: int = 5, per_class: int = 8):
    """Field-like photos of the fixture's classes: drawn anew, blurred and darkened, in folders named another way."""
    import cv2
    from convert_fixtures import draw

    rng = np.random.default_rng(seed)
    for index, folder in enumerate(("Circles", "horizontal_stripes", "VERTICAL-STRIPES")):
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            image = cv2.GaussianBlur(draw(index, rng), (5, 5), 1.5) * 0.6
            cv2.imwrite(str(root / folder / f"f{i}.png"), image.astype(np.uint8))
    return root


def test_field_photos_are_measured_beside_the_lab_check(run_dir, tmp_path):
    field = _field_photos(tmp_path / "field")
    proc = run_cli("convert", run_dir, "--out", tmp_path / "out", "--quant", "fp32", "int8", "--calibration-size",
                   "30", "--runs", "3", "--warmup", "1", "--threads", "1", "--max-accuracy-drop", "20",
                   "--field", field, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["field"] == {"source": str(field), "num_images": 24}
    for variant in report["variants"]:
        f = variant["field"]
        assert f["num_images"] == 24 and 0 <= f["accuracy"] <= 1 and "unknown_rate" in f
        rows = dict(zip(f["confusion_matrix"]["labels"], f["confusion_matrix"]["rows"], strict=True))
        assert [sum(rows[label]) for label in LABELS] == [8, 8, 8]
    # The same figure as `edgecls eval` gives the written model: one implementation.
    int8 = next(v for v in report["variants"] if v["quant"] == "int8")
    evaluated = json.loads(run_cli("eval", int8["path"], field, "--json").stdout)
    assert evaluated["accuracy"] == int8["field"]["accuracy"]
    assert evaluated["unknown_rate"] == int8["field"]["unknown_rate"]
    assert "## Lab and field" in (tmp_path / "out" / "conversion.md").read_text()


def test_a_field_folder_the_model_lacks_fails_before_converting(run_dir, tmp_path):
    field = _field_photos(tmp_path / "field", per_class=2)
    (field / "triangles").mkdir()
    proc = run_cli("convert", run_dir, "--out", tmp_path / "out", "--quant", "fp32", "--field", field)
    assert proc.returncode == 2 and "triangles" in proc.stderr and "--field-map triangles=CLASS" in proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
