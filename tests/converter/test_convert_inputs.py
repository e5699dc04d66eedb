"""Bad input, bring-your-own models and the Edge TPU step, through the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import LABELS, SIZE, device_pixels, fixture_data_dir, fixture_run_dir, run_cli  # noqa: F401

from edge_app.runtime import ImageClassifier, read_artifact
from edge_app.runtime.artifact import flatbuffer_part
from edge_app.runtime.novelty import KEY

pytestmark = pytest.mark.slow
FAST = ("--runs", "2", "--warmup", "1", "--threads", "1")


def last_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def labels_file(run_dir) -> Path:
    return run_dir / "labels.txt"


def save_model(path: Path, build) -> Path:
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    keras.Model(inputs, build(inputs)).save(path)
    return path


# --- bad input: exit 2 and one line naming the file and the fix -------------------------------------------

def test_run_directory_without_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    proc = run_cli("convert", tmp_path)
    assert proc.returncode == 2
    assert f"{tmp_path} has no model.keras" in last_line(proc) and "edgecls train" in last_line(proc)
    assert "Traceback" not in proc.stderr


def test_missing_path_and_a_tflite_file(tmp_path):
    proc = run_cli("convert", tmp_path / "nope")
    assert proc.returncode == 2 and "does not exist" in last_line(proc)
    (tmp_path / "m.tflite").write_bytes(b"\0" * 16)
    proc = run_cli("convert", tmp_path / "m.tflite")
    assert proc.returncode == 2 and "already a TFLite model" in last_line(proc)


def test_edgetpu_with_float_io_is_refused(run_dir):
    proc = run_cli("convert", run_dir, "--edgetpu", "--io", "float32")
    assert proc.returncode == 2 and "--edgetpu needs integer input and output" in last_line(proc)


def test_a_model_that_is_not_a_classifier(tmp_path, labels_file, data_dir):
    import keras

    model = save_model(tmp_path / "features.keras", lambda x: keras.layers.Conv2D(4, 3)(x))
    proc = run_cli("convert", model, "--labels", labels_file, "--data", data_dir)
    assert proc.returncode == 2
    assert "features.keras outputs shape [None, 46, 46, 4]" in last_line(proc)
    assert "not classifiers" in last_line(proc)


def test_labels_that_do_not_fit_the_model(tmp_path, run_dir, data_dir):
    import shutil

    (tmp_path / "labels.txt").write_text("a\nb\n")
    shutil.copytree(data_dir / "test" / LABELS[0], tmp_path / "data" / "a")
    proc = run_cli("convert", run_dir / "model.keras", "--labels", tmp_path / "labels.txt", "--data",
                   tmp_path / "data", "--quant", "fp32")
    assert proc.returncode == 2
    assert "outputs 3 classes but its labels have 2" in last_line(proc)


def test_no_calibration_images_is_refused(run_dir):
    proc = run_cli("convert", run_dir, "--quant", "int8", "--calibration-size", "0")
    assert proc.returncode == 2
    assert "--calibration-size 0" in last_line(proc) and "--quant dynamic" in last_line(proc)


def test_data_folder_with_other_classes_names_the_difference(tmp_path, run_dir, data_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir / "test" / LABELS[0], data / LABELS[0])
    shutil.copytree(data_dir / "test" / LABELS[1], data / "zebra")
    proc = run_cli("convert", run_dir, "--data", data, "--quant", "fp32")
    assert proc.returncode == 2
    assert "class folders the model does not know: zebra" in last_line(proc)
    assert str(data) in last_line(proc)


def test_an_op_without_int8_support_names_the_op_and_dynamic_works(tmp_path, labels_file, data_dir):
    """TF 2.21's int8 quantizer segfaults on mish; the converter survives, names LOG, and --quant dynamic converts."""
    import keras

    def build(x):
        x = keras.layers.Conv2D(8, 3, strides=2, activation="mish")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.layers.Dense(len(LABELS), activation="softmax")(x)

    model = save_model(tmp_path / "mish.keras", build)
    common = ("--labels", labels_file, "--data", data_dir, "--out", tmp_path / "out", *FAST)
    proc = run_cli("convert", model, "--quant", "int8", *common)
    assert proc.returncode == 2, proc.stderr
    assert "to int8" in last_line(proc) and "LOG" in last_line(proc) and "--quant dynamic" in last_line(proc)
    assert "Traceback" not in proc.stderr
    proc = run_cli("convert", model, "--quant", "dynamic", "--max-accuracy-drop", "100", *common)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model_dynamic.tflite").is_file()


# --- bring your own model -------------------------------------------------------------------------------

def test_own_h5_model_with_normalized_input(tmp_path, run_dir, labels_file, data_dir):
    """A model taking [-1, 1] input: --mean/--std feed it right, and travel in the metadata."""
    import keras

    trained = keras.models.load_model(run_dir / "model.keras", compile=False)
    inputs = keras.Input((SIZE, SIZE, 3))
    restored = keras.layers.Rescaling(127.5, offset=127.5)(inputs)  # [-1, 1] back to the 0-255 the core wants
    own = keras.Model(inputs, trained(restored))
    own.save(tmp_path / "own.h5")
    out = tmp_path / "out"
    proc = run_cli("convert", tmp_path / "own.h5", "--labels", labels_file, "--data", data_dir,
                   "--calibration-data", data_dir / "train", "--calibration-size", "100", "--mean", "127.5",
                   "--std", "127.5", "--quant", "fp32", "int8", "--out", out, "--max-accuracy-drop", "20", *FAST)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "conversion.json").read_text())
    paths = sorted(p for label in LABELS for p in (data_dir / "test" / label).iterdir())
    truth = np.array([LABELS.index(p.parent.name) for p in paths])
    expected = np.mean(own.predict(device_pixels(paths, mean=127.5, std=127.5), verbose=0).argmax(1) == truth)
    assert report["float_accuracy"] == pytest.approx(float(expected))
    assert report["float_accuracy"] > 0.6  # right normalization: the model still works
    for quant in ("fp32", "int8"):
        artifact = read_artifact(out / f"model_{quant}.tflite")
        assert artifact.metadata["mean"] == 127.5 and artifact.metadata["std"] == 127.5
        classifier = ImageClassifier(out / f"model_{quant}.tflite", num_threads=1)
        assert classifier.spec.mean == (127.5,) * 3 and classifier.labels == LABELS


# --- Edge TPU -------------------------------------------------------------------------------------------

def test_edgetpu_without_the_compiler_says_how_to_get_it(tmp_path, run_dir):
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
    proc = run_cli("convert", run_dir, "--edgetpu", "--out", tmp_path, "--calibration-size", "100",
                   "--max-accuracy-drop", "20", *FAST, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "conversion.json").read_text())
    tpu = report["edgetpu"]
    assert tpu["status"] == "compiler_not_found"
    assert "apt-get install edgetpu-compiler" in tpu["message"]
    assert str(tmp_path / "model_int8.tflite") in tpu["message"]
    assert "edgetpu_compiler is not on PATH" in proc.stderr
    assert [v["quant"] for v in report["variants"]] == ["int8"]
    assert report["variants"][0]["graph"]["full_integer"] is True


FAKE_COMPILER = '''\
#!{python}
"""Stands in for Coral's edgetpu_compiler: same arguments, output file names, log and summary."""
import shutil, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("-o") + 1])
src = Path(args[-1])
dest = out / (src.stem + "_edgetpu.tflite")
shutil.copy(src, dest)
summary = """Edge TPU Compiler version 16.0.384591198
Input: {{src}}
Output: {{dest}}

Operator                       Count      Status

CONV_2D                        3          Mapped to Edge TPU
DEPTHWISE_CONV_2D              1          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
SOFTMAX                        1          Mapped to Edge TPU
QUANTIZE                       2          Operation is otherwise supported, but not mapped due to some unspecified limitation

Number of operations that will run on Edge TPU: 7
Number of operations that will run on CPU: 2
""".format(src=src, dest=dest)
(out / (src.stem + "_edgetpu.log")).write_text(summary)
print(summary)
'''


def test_edgetpu_with_a_compiler_on_path(tmp_path, run_dir):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "edgetpu_compiler"
    compiler.write_text(textwrap.dedent(FAKE_COMPILER.format(python=sys.executable)))
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    env = {"PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]])}
    proc = run_cli("convert", run_dir, "--quant", "int8", "--edgetpu", "--out", out, "--calibration-size", "100",
                   "--max-accuracy-drop", "20", *FAST, env=env)
    assert proc.returncode == 0, proc.stderr
    tpu = json.loads((out / "conversion.json").read_text())["edgetpu"]
    assert tpu["status"] == "compiled"
    assert tpu["ops_on_tpu"] == 7 and tpu["ops_on_cpu"] == 2
    assert tpu["ops"]["QUANTIZE"]["count"] == 2 and "not mapped" in tpu["ops"]["QUANTIZE"]["status"]
    assert "QUANTIZE" in tpu["message"]
    compiled = out / "model_int8_edgetpu.tflite"
    artifact = read_artifact(compiled)
    assert artifact.labels == LABELS and artifact.metadata["edgetpu"] is True
    # What was compiled is the proven int8 graph, with its embedding output and reference set: the copy says unknown.
    int8 = read_artifact(out / "model_int8.tflite")
    assert artifact.metadata[KEY] == int8.metadata[KEY] and artifact.reference == int8.reference is not None
    assert flatbuffer_part(compiled.read_bytes()) == flatbuffer_part((out / "model_int8.tflite").read_bytes())
    assert (out / "model_int8_edgetpu.log").read_text().startswith("Edge TPU Compiler version")
    assert "Edge TPU" in (out / "conversion.md").read_text()


def test_edgetpu_compiler_platform_message(monkeypatch, tmp_path):
    import platform

    from converter import edgetpu

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    result = edgetpu.compile_model(b"", tmp_path / "model_int8.tflite", {}, LABELS)
    assert result["status"] == "unsupported_platform"
    assert "runs only on x86-64 Linux" in result["message"] and "model_int8.tflite" in result["message"]


# --- graph facts ------------------------------------------------------------------------------------------

def test_int8_hard_swish_is_flagged_and_found_outside_xnnpack(tmp_path):
    """The MobileNetV3 trap on x86: int8 HARD_SWISH has no XNNPACK kernel, splits the graph, and is reported."""
    import keras

    from converter.graph import inspect_flatbuffer, xnnpack_partitions
    from converter.worker import convert_all
    from edge_app.runtime import make_interpreter

    def build(x):
        x = keras.layers.Conv2D(8, 3, activation="hard_swish")(x)
        x = keras.layers.Conv2D(8, 3, activation="hard_swish")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.layers.Dense(len(LABELS), activation="softmax")(x)

    model = save_model(tmp_path / "hs.keras", build)
    pixels = np.random.default_rng(0).uniform(0, 255, (16, SIZE, SIZE, 3)).astype(np.float32)
    flatbuffers = convert_all(model, None, ("fp32", "int8"), "uint8", pixels)
    facts = {}
    for quant, data in flatbuffers.items():
        (tmp_path / f"{quant}.tflite").write_bytes(data)
        facts[quant] = inspect_flatbuffer(data)
        facts[quant].xnnpack_partitions, facts[quant].cpu_fallback_ops = xnnpack_partitions(
            make_interpreter(tmp_path / f"{quant}.tflite", num_threads=1))
    assert facts["fp32"].op_counts["HARD_SWISH"] == 2 and facts["fp32"].warnings == []
    assert facts["fp32"].xnnpack_partitions == 1 and facts["fp32"].cpu_fallback_ops == {}
    assert facts["int8"].op_counts["HARD_SWISH"] == 2 and facts["int8"].full_integer
    assert "2 int8 HARD_SWISH op(s)" in facts["int8"].warnings[0]
    assert facts["int8"].cpu_fallback_ops["HARD_SWISH"] == 2 and facts["int8"].xnnpack_partitions >= 2


@pytest.mark.skipif(not __import__("support").can_unshare(), reason="needs root and unshare(1) for a read-only run")
def test_a_read_only_run_fails_before_converting(tmp_path, run_dir):
    import shutil
    import time

    from support import run_cli_read_only

    locked = tmp_path / "locked"
    shutil.copytree(run_dir, locked)
    before = sorted(p.name for p in locked.iterdir())
    started = time.monotonic()
    result = run_cli_read_only(locked, "convert", locked, "--quant", "int8")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("edgecls convert: error:")]
    assert len(error) == 1 and "Read-only file system" in error[0] and "--out" in error[0], result.stderr
    assert "loading" not in result.stderr, "it started converting before checking the output"
    assert time.monotonic() - started < 30
    assert sorted(p.name for p in locked.iterdir()) == before
