"""End to end through the real CLI: a tiny trained model converted to every target and proved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import LABELS, SIZE, device_pixels, fixture_data_dir, fixture_run_dir, run_cli  # noqa: F401

from edge_app.runtime import (
    ImageClassifier,
    InputSpec,
    make_interpreter,
    preprocess,
    read_artifact,
    read_image,
)

pytestmark = pytest.mark.slow
QUANTS = ("fp32", "fp16", "dynamic", "int8")


@pytest.fixture(scope="session")
def converted(run_dir) -> tuple[Path, dict, object]:
    """``edgecls convert RUN`` (every target) with loose limits: exit 0 and both reports written."""
    proc = run_cli("convert", run_dir, "--quant", "all", "--calibration-size", "100", "--runs", "10",
                   "--warmup", "2", "--threads", "1", "--max-accuracy-drop", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    return run_dir, report, proc


def test_every_target_is_written_and_loads_in_the_runtime(converted):
    run_dir, report, _ = converted
    assert [v["quant"] for v in report["variants"]] == list(QUANTS)
    for quant in QUANTS:
        path = run_dir / f"model_{quant}.tflite"
        classifier = ImageClassifier(path, num_threads=1)  # no --labels: they travel inside the model
        assert classifier.labels == LABELS
        assert classifier.input_size == (SIZE, SIZE)
        top = classifier.classify(read_image(next((run_dir.parent / "data" / "test" / LABELS[1]).iterdir())), top_k=3)
        assert len(top) == 3 and abs(sum(c.score for c in top) - 1) < 0.02
        artifact = read_artifact(path)
        assert artifact.metadata["quant"] == quant
        assert artifact.metadata["mean"] == 0 and artifact.metadata["std"] == 1
        assert artifact.metadata["channel_order"] == "RGB" and artifact.metadata["output"] == "probabilities"
        assert artifact.metadata["input_size"] == [SIZE, SIZE]
        variant = next(v for v in report["variants"] if v["quant"] == quant)
        assert artifact.metadata["accuracy"]["accuracy"] == variant["accuracy"]
        beside = json.loads(path.with_suffix(".json").read_text())
        assert beside["labels"] == LABELS and beside["quant"] == quant
        assert variant["size_bytes"] == path.stat().st_size


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_files_open_unchanged_in_tensorflow_lite(converted):
    """The appended metadata must not disturb other TFLite tools: TensorFlow's own interpreter reads it."""
    import tensorflow as tf

    run_dir, _, _ = converted
    interpreter = tf.lite.Interpreter(model_path=str(run_dir / "model_int8.tflite"))
    interpreter.allocate_tensors()
    assert interpreter.get_output_details()[0]["shape"].tolist() == [1, len(LABELS)]


def test_int8_is_full_integer_with_uint8_io(converted):
    run_dir, report, _ = converted
    interpreter = make_interpreter(run_dir / "model_int8.tflite", num_threads=1)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    assert interpreter.get_input_details()[0]["shape"].tolist() == [1, SIZE, SIZE, 3]  # static: Edge TPU ready
    int8 = next(v for v in report["variants"] if v["quant"] == "int8")
    assert int8["graph"]["full_integer"] is True and int8["graph"]["float_tensors"] == 0
    # Calibration is pinned to the full pixel range: one uint8 step per pixel value, copied straight in.
    assert int8["io"] == {"input": "uint8", "output": "uint8", "input_quantization": [1.0, 0.0]}
    # Scores in uint8; the second output is the pooled embedding in its own int8 (what 'unknown' reads).
    assert int8["graph"]["input_types"] == ["UINT8"] and int8["graph"]["output_types"] == ["UINT8", "INT8"]
    fp32 = next(v for v in report["variants"] if v["quant"] == "fp32")
    assert fp32["graph"]["full_integer"] is False
    assert int8["size_bytes"] < fp32["size_bytes"]
    assert next(v for v in report["variants"] if v["quant"] == "fp16")["size_bytes"] < fp32["size_bytes"]


def test_report_accuracy_equals_an_independent_evaluation(converted, data_dir):
    """Keras and raw-interpreter predictions computed here must give exactly the report's numbers."""
    import keras

    run_dir, report, _ = converted
    config = json.loads((run_dir / "config.json").read_text())
    test = config["splits"]["test"]
    paths, truth = [data_dir / rel for rel, _ in test], np.array([label for _, label in test])
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    keras_top1 = model.predict(device_pixels(paths), verbose=0).argmax(axis=1)
    assert report["float_accuracy"] == pytest.approx(float(np.mean(keras_top1 == truth)))
    assert report["check_data"]["num_images"] == len(test)
    for quant in QUANTS:
        interpreter = make_interpreter(run_dir / f"model_{quant}.tflite", num_threads=1)
        detail = interpreter.get_input_details()[0]
        scale, zero_point = detail["quantization"]
        # Built by hand from the tensor's own quantization, not from the converter's metadata.
        spec = InputSpec(SIZE, SIZE, dtype=detail["dtype"], scale=scale, zero_point=zero_point,
                         mean=(0.0,) * 3, std=(1.0,) * 3)
        top1 = []
        for path in paths:
            interpreter.set_tensor(detail["index"], preprocess(read_image(path), spec))
            interpreter.invoke()
            top1.append(int(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).argmax()))
        top1 = np.array(top1)
        variant = next(v for v in report["variants"] if v["quant"] == quant)
        assert variant["accuracy"] == pytest.approx(float(np.mean(top1 == truth))), quant
        assert variant["agreement"] == pytest.approx(float(np.mean(top1 == keras_top1))), quant
        drop = 100 * (report["float_accuracy"] - variant["accuracy"])
        assert variant["accuracy_drop_pp"] == pytest.approx(drop, abs=1e-3)
        for i, label in enumerate(LABELS):
            mask = truth == i
            delta = 100 * (np.mean(top1[mask] == i) - np.mean(keras_top1[mask] == i))
            assert variant["per_class_delta_pp"][label] == pytest.approx(delta, abs=1e-3)
        counted = np.zeros((len(LABELS), len(LABELS)), int)
        np.add.at(counted, (truth, top1), 1)
        assert variant["confusion_matrix"] == counted.tolist(), quant
    float_counted = np.zeros((len(LABELS), len(LABELS)), int)
    np.add.at(float_counted, (truth, keras_top1), 1)
    assert report["float_confusion_matrix"] == float_counted.tolist()
    assert report["float_accuracy"] > 0.6  # the tiny model learned something, so agreement means something


def test_reports_parse_and_say_which_variant_is_fastest(converted):
    run_dir, report, proc = converted
    on_disk = json.loads((run_dir / "conversion.json").read_text())
    assert on_disk["variants"] == report["variants"]
    for v in on_disk["variants"]:
        assert {"quant", "path", "size_bytes", "accuracy", "accuracy_drop_pp", "agreement", "latency_ms", "passed",
                "failures"} <= set(v)
        assert v["latency_ms"]["p50"] > 0 and v["latency_ms"]["p90"] >= v["latency_ms"]["p50"]
        assert v["passed"] is True and v["failures"] == []
        assert v["graph"]["xnnpack_partitions"] >= 1 and sum(v["graph"]["op_counts"].values()) > 0
    assert on_disk["passed"] is True
    fastest = min(on_disk["variants"], key=lambda v: v["latency_ms"]["p50"])["quant"]
    assert on_disk["speed"]["fastest"] == fastest
    calibration = on_disk["calibration"]
    assert calibration["num_images"] == 100 and sorted(calibration["per_class"].values()) == [33, 33, 34]
    assert calibration["input_range"] == [0.0, 255.0]
    md = (run_dir / "conversion.md").read_text()
    assert f"Fastest on this machine: {fastest}" in md
    for quant in QUANTS:
        assert f"| {quant} |" in md
    assert "pass |" in md and "FAIL" not in md


def test_miscalibrated_int8_fails_a_tight_accuracy_gate_but_is_still_written(run_dir, tmp_path):
    """Calibrating on a few black images forces a real accuracy drop: exit 1, file written, report says why."""
    import cv2

    for label in LABELS:
        (tmp_path / "dark" / label).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(tmp_path / "dark" / label / f"{i}.png"), np.full((SIZE, SIZE, 3), i, np.uint8))
    out = tmp_path / "out"
    proc = run_cli("convert", run_dir, "--quant", "int8", "--calibration-data", tmp_path / "dark", "--out", out,
                   "--max-accuracy-drop", "1", "--runs", "3", "--threads", "1")
    assert proc.returncode == 1, proc.stderr
    assert "only 12 images" in proc.stderr  # fewer than 100: warned
    assert "int8: accuracy drop" in proc.stderr.splitlines()[-1]
    report = json.loads((out / "conversion.json").read_text())
    assert report["passed"] is False
    (variant,) = report["variants"]
    assert variant["passed"] is False and variant["accuracy_drop_pp"] > 1
    assert "--max-accuracy-drop 1 pp" in variant["failures"][0]
    assert (out / "model_int8.tflite").is_file() and "FAIL" in (out / "conversion.md").read_text()


def test_latency_gate_and_int8_io(run_dir, tmp_path):
    proc = run_cli("convert", run_dir, "--quant", "int8", "--io", "int8", "--out", tmp_path, "--max-latency-ms",
                   "0.0001", "--max-accuracy-drop", "100", "--runs", "3", "--threads", "1",
                   "--calibration-size", "100")
    assert proc.returncode == 1, proc.stderr
    assert "--max-latency-ms" in proc.stderr
    interpreter = make_interpreter(tmp_path / "model_int8.tflite", num_threads=1)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # The runtime feeds int8 models the same pixels: its top-1 matches the uint8 twin's accuracy closely.
    report = json.loads((tmp_path / "conversion.json").read_text())
    assert report["variants"][0]["accuracy"] > 0.6
