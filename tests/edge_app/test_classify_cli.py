"""``edgecls classify`` through the real command line, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from support import BIRD_MODEL, EDGETPU_MODEL, IMAGENET_MODEL, IMAGES, MODELS, REPO, run_cli

PARROT, HOPPER = IMAGES / "parrot.jpg", IMAGES / "grace_hopper.bmp"


def test_classify_json_contract(shared):
    result = run_cli("classify", IMAGENET_MODEL, PARROT, HOPPER, "--json", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in lines] == [str(PARROT), str(HOPPER)]
    assert [r["top_k"][0]["label"] for r in lines] == ["macaw", "military uniform"]
    for r in lines:
        assert len(r["top_k"]) == 2 and r["top_k"][0]["score"] >= r["top_k"][1]["score"]
        assert r["latency_ms"] > 0 and set(r["timings_ms"]) == {"decode", "preprocess", "invoke", "postprocess"}


def test_classify_human_output_and_bird_labels(shared):
    result = run_cli("classify", BIRD_MODEL, PARROT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{PARROT}: Ara macao (Scarlet Macaw) ")
    assert result.stdout.rstrip().endswith("ms)")


def test_classify_a_folder_and_label_file(shared, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(PARROT, folder / "a parrot.jpg")
    (folder / "notes.txt").write_text("not an image")
    result = run_cli("classify", IMAGENET_MODEL, folder, "--labels", MODELS / "imagenet_labels.txt", "--json")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["top_k"][0]["label"] == "macaw"


def test_edge_app_runs_without_tensorflow(shared):
    code = ("import sys, runpy; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
            f"sys.argv = ['edge_app', 'classify', {str(IMAGENET_MODEL)!r}, {str(PARROT)!r}, '--json']; "
            "runpy.run_module('edge_app', run_name='__main__', alter_sys=True)")
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top_k"][0]["label"] == "macaw"


def test_classify_imports_no_tensorflow(shared):
    code = (f"import sys; from edgecls.cli import main; rc = main(['classify', {str(IMAGENET_MODEL)!r}, {str(PARROT)!r}]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'; "
            "sys.exit(rc)")
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr


def _bad_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "truncated.jpg").write_bytes(PARROT.read_bytes()[:4000])
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("missing.jpg", "missing.jpg: no such file"),
    ("empty.jpg", "empty.jpg: the file is empty"),
    ("corrupt.jpg", "corrupt.jpg: not a readable image"),
    ("truncated.jpg", "truncated.jpg: not a readable image"),
])
def test_bad_images(shared, tmp_path, name, message):
    _bad_files(tmp_path)
    alone = run_cli("classify", IMAGENET_MODEL, tmp_path / name)
    assert alone.returncode == 2
    assert message in alone.stderr and "Traceback" not in alone.stderr
    assert len(alone.stderr.strip().splitlines()) == 1
    # With a good image beside it: the good one is classified, exit 1, a JSON error line for the bad one.
    mixed = run_cli("classify", IMAGENET_MODEL, tmp_path / name, PARROT, "--json")
    assert mixed.returncode == 1
    bad, good = (json.loads(line) for line in mixed.stdout.splitlines())
    assert bad["image"] == str(tmp_path / name) and message.split(": ", 1)[1] in bad["error"]
    assert good["top_k"][0]["label"] == "macaw"


@pytest.mark.parametrize("model, extra, message", [
    (MODELS / "imagenet_labels.txt", [], "is not a TFLite model"),
    ("missing.tflite", [], "missing.tflite does not exist"),
    (IMAGENET_MODEL, ["--labels", "{tmp}/three.txt"], "three.txt has 3 labels but the model outputs 1001 classes"),
    (IMAGENET_MODEL, ["--labels", "{tmp}/nope.txt"], "nope.txt does not exist"),
    (EDGETPU_MODEL, [], "compiled for the Coral Edge TPU"),
    (IMAGENET_MODEL, ["--device", "edgetpu:usb:0"], "could not load the Edge TPU delegate 'libedgetpu.so.1' for device 'usb:0'"),
    (IMAGENET_MODEL, ["--device", "gpu"], "unknown device 'gpu'"),
    (IMAGENET_MODEL, ["--threads", "0"], "--threads must be 1 or more"),
    ("{tmp}", [], "holds no .tflite model; convert the run first"),
])
def test_bad_models_labels_devices(shared, tmp_path, model, extra, message):
    _bad_files(tmp_path)
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in (model, *extra)]
    result = run_cli("classify", args[0], PARROT, *args[1:])
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecls classify: error: "), result.stderr
    assert message in lines[0]


def test_a_label_file_with_look_alike_or_reserved_names_is_refused(shared, tmp_path):
    """Regression (hostile-input issue, defects 2 and 3): a label file whose classes look the same ("Café" with
    its accent as one character or two) or are named as the app's own verdicts is one line, exit 2. The same
    spelling twice is the model's own fact: ImageNet's file names a bird and a machine 'crane'."""
    labels = (MODELS / "imagenet_labels.txt").read_text().splitlines()
    assert labels.count("crane") == 2
    said = {}
    for name, (first, second) in [("twins", ("Caf\u00e9", "Cafe\u0301")), ("case", ("Macaw", "macaw")),
                                  ("reserved", ("tench", "Unknown"))]:
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join([labels[0], first, second, *labels[3:]]) + "\n", encoding="utf-8")
        result = run_cli("classify", IMAGENET_MODEL, PARROT, "--labels", path)
        assert result.returncode == 2, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"edgecls classify: error: label file {path}: "), lines
        said[name] = lines[0]
    assert "looks the same as" in said["twins"] and "'Cafe\\u0301'" in said["twins"] and "'Caf\\xe9'" in said["twins"]
    assert "'macaw' looks the same as 'Macaw' (it differs only in case)" in said["case"]
    assert "'Unknown' cannot be a class" in said["reserved"]


def test_edgetpu_message_says_how_to_fix(shared):
    result = run_cli("classify", EDGETPU_MODEL, PARROT)
    assert "libedgetpu1-std" in result.stderr and "--device edgetpu" in result.stderr
    assert "without '_edgetpu'" in result.stderr


def test_help_has_examples_and_every_command_is_listed():
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("train", "convert", "classify", "run", "bench", "demo", "report"):
        assert command in top.stdout
    sub = run_cli("classify", "--help")
    assert sub.returncode == 0 and "examples:" in sub.stdout and "--top-k" in sub.stdout
    assert run_cli("classify", "--help", module="edge_app").returncode == 0


@pytest.mark.slow
def test_falls_back_to_tensorflow_lite_when_litert_is_missing(shared):
    import subprocess

    code = ("import sys; sys.modules['ai_edge_litert'] = None; sys.modules['tflite_runtime'] = None; "
            f"from edgecls.cli import main; sys.exit(main(['classify', '-v', {str(IMAGENET_MODEL)!r}, {str(PARROT)!r}, '--json']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "runtime: tensorflow.lite" in result.stderr
    assert json.loads(result.stdout)["top_k"][0]["label"] == "macaw"


def test_unknown_forced_runtime_is_a_clear_error(shared):
    result = run_cli("classify", IMAGENET_MODEL, PARROT, env={"EDGECLS_RUNTIME": "onnx"})
    assert result.returncode == 2
    assert "unknown runtime 'onnx'" in result.stderr


def test_a_folder_of_class_folders_is_read_with_recursive_and_the_folder_names_are_the_truth(tmp_path):
    data = tmp_path / "data"
    for label, photo in (("macaw", "parrot.jpg"), ("military uniform", "grace_hopper.bmp"), ("not-a-class", "bird.bmp")):
        (data / label).mkdir(parents=True)
        (data / label / photo).symlink_to(IMAGES / photo)
    proc = run_cli("classify", IMAGENET_MODEL, data)
    assert proc.returncode == 2 and "sub-folders hold 3 images: pass --recursive" in proc.stderr.splitlines()[-1]
    proc = run_cli("classify", IMAGENET_MODEL, data, "--recursive", "--json", "--top-k", "1")
    assert proc.returncode == 0, proc.stderr
    results = {Path(r["image"]).parent.name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == {"macaw", "military uniform", "not-a-class"}
    assert results["macaw"]["truth"] == "macaw" and "truth" not in results["not-a-class"]
    assert "2 of 3 images are in a folder named like a class: top-1 right on 2 (100.0%)" in proc.stderr
