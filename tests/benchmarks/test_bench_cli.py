"""``edgecls bench`` through the real command line on the real MobileNetV2, as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from support import EDGETPU_MODEL, IMAGENET_MODEL, IMAGES, REPO, run_cli

from benchmarks.report import format_cell

FAST = ("--runs", "5", "--warmup", "1")


@pytest.fixture(scope="module")
def labelled_dir(shared, tmp_path_factory) -> Path:
    """``macaw/parrot.jpg``, ``military uniform/grace_hopper.bmp`` and a folder no ImageNet label names."""
    root = tmp_path_factory.mktemp("labelled")
    for folder, name in (("macaw", "parrot.jpg"), ("military uniform", "grace_hopper.bmp"),
                         ("not a label", "bird.bmp")):
        (root / folder).mkdir()
        shutil.copy(IMAGES / name, root / folder / name)
    return root


@pytest.fixture(scope="module")
def video(shared, tmp_path_factory) -> Path:
    """A 12-frame 320x240 MJPEG video of the real photos, written with OpenCV."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened(), "OpenCV cannot write MJPEG .avi here"
    photos = [cv2.resize(cv2.imread(str(IMAGES / n)), (320, 240)) for n in ("parrot.jpg", "grace_hopper.bmp")]
    for i in range(12):
        writer.write(photos[i % 2])
    writer.release()
    return path


@pytest.fixture(scope="module")
def bench_run(shared, labelled_dir, tmp_path_factory):
    """One real ``edgecls bench`` run at 1 and 2 threads with accuracy and every report file."""
    out = tmp_path_factory.mktemp("bench")
    files = {k: out / f"bench.{k if k != 'plot' else 'png'}" for k in ("json", "md", "csv", "plot")}
    flags = [a for k, p in files.items() for a in (f"--{k}", p)]
    proc = run_cli("bench", IMAGENET_MODEL, "--threads", "1,2", *FAST, "--data", labelled_dir, *flags, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, files, json.loads(files["json"].read_text())


def test_json_contract_and_latency_figures(bench_run):
    _, _, report = bench_run
    device = report["device"]
    for key in ("cpu_model", "cpu_count", "cpu_governor", "runtime", "runtime_version", "delegate",
                "cpu_temperature_c", "throttled", "board"):
        assert key in device
    assert device["runtime"] in ("ai-edge-litert", "tflite-runtime", "tensorflow.lite")
    assert device["cpu_count"] == os.cpu_count()
    rows = report["results"]
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["fps"] == pytest.approx(1000 / lat["mean"], rel=1e-9)
        assert r["runs"] == len(r["samples_ms"]) == 5
        assert lat["mean"] == pytest.approx(sum(r["samples_ms"]) / 5, rel=1e-3)
        assert r["size_bytes"] == IMAGENET_MODEL.stat().st_size
        assert r["quant"] == "uint8"  # Coral's legacy per-tensor model: uint8 all through, no int8 tensors
        assert r["first_invoke_ms"] > 0 and r["load_ms"] > 0 and r["runtime_import_ms"] >= 0
        assert r["peak_rss_mb"] > r["baseline_rss_mb"] > 0
        assert r["model"] == str(IMAGENET_MODEL)


def test_accuracy_through_the_runtime(bench_run):
    proc, _, report = bench_run
    for r in report["results"]:
        acc = r["accuracy"]
        assert acc["n"] == 2
        assert acc["top1"] == 1.0 and acc["top5"] == 1.0  # parrot → macaw, grace_hopper → military uniform
        assert acc["per_class"] == {"macaw": {"top1": 1.0, "n": 1}, "military uniform": {"top1": 1.0, "n": 1}}
        assert acc["unmatched_folders"] == ["not a label"]
    assert "not among the model's labels" in proc.stderr and "not a label" in proc.stderr


def test_table_markdown_csv_and_plot(bench_run):
    proc, files, report = bench_run
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# ") and report["device"]["cpu_model"] in lines[0]
    assert "p50_ms" in lines[1] and "peak_rss_mb" in lines[1]
    assert sum(line.startswith("mobilenet_v2_1.0_224_quant ") for line in lines) == 2
    assert ("top-1 per class, mobilenet_v2_1.0_224_quant: macaw 1.000 (n=1), military uniform 1.000 (n=1); "
            "balanced 1.000") in lines
    md = files["md"].read_text()
    assert "| model | quant |" in md and md.count("| mobilenet_v2_1.0_224_quant | uint8 |") == 2
    rows = list(csv.DictReader(files["csv"].open()))
    assert [int(r["threads"]) for r in rows] == [1, 2]
    assert float(rows[0]["p50_ms"]) == pytest.approx(report["results"][0]["latency_ms"]["p50"])
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_prints_ratio_per_model(bench_run, tmp_path):
    _, files, old = bench_run
    proc = run_cli("bench", IMAGENET_MODEL, "--threads", "1", *FAST, "--compare", files["json"],
                   "--json", tmp_path / "new.json")
    assert proc.returncode == 0, proc.stderr
    new = json.loads((tmp_path / "new.json").read_text())
    (row,) = new["comparison"]["rows"]
    expected = new["results"][0]["latency_ms"]["p50"] / old["results"][0]["latency_ms"]["p50"]
    assert row["p50_ratio"] == pytest.approx(expected)
    assert f"ratio {expected:.2f}" in proc.stdout
    assert new["comparison"]["same_device"] is True


def test_max_slowdown_fails_a_regression(bench_run, tmp_path):
    _, _, old = bench_run
    for r in old["results"]:
        r["latency_ms"]["p50"] /= 10  # the reference was 10x faster: today's figures are a regression
    (tmp_path / "fast.json").write_text(json.dumps(old))
    proc = run_cli("bench", IMAGENET_MODEL, "--threads", "1", *FAST, "--compare", tmp_path / "fast.json",
                   "--max-slowdown", "10", "--json", tmp_path / "new.json")
    assert proc.returncode == 1
    assert "grew by more than 10%" in proc.stderr and "mobilenet_v2_1.0_224_quant x1" in proc.stderr
    assert "SLOWER" in proc.stdout and (tmp_path / "new.json").is_file()  # reports are still written


def test_pipeline_mode_times_the_live_loop(shared, video, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", IMAGENET_MODEL, "--threads", "2", *FAST, "--pipeline", video,
                   "--pipeline-frames", "10", "--json", out, "--md", tmp_path / "bench.md", timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    (pipe,) = report["pipeline"]
    assert pipe["source"] == str(video) and pipe["threads"] == 2
    assert pipe["invoke_fps"] == pytest.approx(report["results"][0]["fps"])
    for loop in (pipe["app"], pipe["sequential"]):
        assert loop["frames"] == 10 and loop["fps"] > 0
        assert set(loop["stages"]) >= {"capture", "preprocess", "invoke", "postprocess"}
        for stage in loop["stages"].values():
            assert 0 <= stage["p50"] <= stage["p90"]
    assert pipe["app_vs_invoke"] == pytest.approx(pipe["app_fps"] / pipe["invoke_fps"])
    assert pipe["app_vs_sequential"] == pytest.approx(pipe["app_fps"] / pipe["sequential_fps"])
    assert "pipeline mobilenet_v2_1.0_224_quant.tflite x2" in proc.stdout
    md = (tmp_path / "bench.md").read_text()
    assert "| app FPS |" in md and f"| mobilenet_v2_1.0_224_quant | 2 | {format_cell(pipe['app_fps'])} |" in md


@pytest.mark.parametrize("case", ["missing", "not_a_model", "threads_0", "threads_word", "no_data_dir", "edgetpu_model"])
def test_bad_input_is_one_clear_line(shared, tmp_path, case):
    text_file = tmp_path / "notes.tflite"
    text_file.write_text("not a model\n")
    args = {
        "missing": ([tmp_path / "nope.tflite"], "nope.tflite does not exist"),
        "not_a_model": ([text_file], "is not a TFLite model"),
        "threads_0": ([IMAGENET_MODEL, "--threads", "0"], "--threads must be 1 or more, got 0"),
        "threads_word": ([IMAGENET_MODEL, "--threads", "two"], "--threads takes whole numbers"),
        "no_data_dir": ([IMAGENET_MODEL, "--data", tmp_path / "nowhere"], "is not a folder"),
        "edgetpu_model": ([EDGETPU_MODEL, "--runs", "1"], "compiled for the Coral Edge TPU"),
    }[case]
    proc = run_cli("bench", *args[0], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("edgecls bench: error:") and args[1] in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_help_has_examples():
    proc = run_cli("bench", "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--pipeline" in proc.stdout


def test_edge_install_without_tensorflow_or_matplotlib(shared, labelled_dir, tmp_path):
    """Benches in-process (latency + accuracy + JSON) with TensorFlow and matplotlib unimportable; --plot says how to get it."""
    import subprocess

    block = "import sys; sys.modules['tensorflow'] = None; sys.modules['matplotlib'] = None\n"
    api = (block + "from benchmarks.bench import run\nfrom benchmarks.config import BenchConfig\n"
           f"run(BenchConfig(models=({str(IMAGENET_MODEL)!r},), threads=(1,), runs=5, warmup=1, "
           f"data={str(labelled_dir)!r}, json={str(tmp_path / 'b.json')!r}, isolate=False))\n"
           "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n")
    ok = subprocess.run([sys.executable, "-c", api], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["accuracy"]["top1"] == 1.0
    cli = block + "from edgecls.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    no_plot = subprocess.run([sys.executable, "-c", cli, "bench", str(IMAGENET_MODEL), "--plot", str(tmp_path / "b.png")],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert no_plot.returncode == 2 and "pip install matplotlib" in no_plot.stderr
    assert not (tmp_path / "b.png").exists()


def test_an_error_inside_the_worker_comes_back_as_one_line(shared, tmp_path):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")  # the model has 1001 outputs: the worker's ImageClassifier refuses it
    proc = run_cli("bench", IMAGENET_MODEL, "--runs", "1", "--labels", labels, timeout=60)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("edgecls bench: error:")
    assert "three.txt has 3 labels but the model outputs 1001 classes" in errors[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
