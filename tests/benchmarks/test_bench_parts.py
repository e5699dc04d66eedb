"""The pieces of ``edgecls bench``: stats, quant inference, folder→label matching, comparison, the worker protocol."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from support import IMAGENET_MODEL, IMAGES, REPO

from benchmarks.accuracy import labelled_images, match_folders
from benchmarks.bench import check_models
from benchmarks.config import BenchConfig, BenchError, parse_threads
from benchmarks.latency import infer_quant, latency_stats, measure_latency
from benchmarks.pipeline import stage_summary
from benchmarks.report import compare, compare_table, device_line
from edge_app.runtime import embed_metadata, make_interpreter, read_artifact
from edge_app.runtime.errors import EdgeclsError


def test_latency_stats_match_numpy():
    samples = list(np.random.default_rng(1).gamma(4.0, 1.5, size=257))
    stats = latency_stats(samples)
    assert stats["p50"] == pytest.approx(np.median(samples))
    assert stats["min"] == min(samples) and stats["max"] == max(samples)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["mean"] == pytest.approx(np.mean(samples))


def test_stage_summary_skips_missing_values():
    summary = stage_summary({"invoke": [4.0, 5.0, 6.0], "capture": [None, 2.0], "postprocess": []})
    assert summary["invoke"]["p50"] == 5.0 and summary["invoke"]["n"] == 3
    assert summary["capture"] == {"p50": 2.0, "p90": 2.0, "mean": 2.0, "n": 1}
    assert "postprocess" not in summary


def test_threads_parsing():
    assert parse_threads("1, 2,2,4") == (1, 2, 4)
    assert parse_threads(None) is None
    # The shared validator (edge_app.runtime.errors.check_threads): at least 1, at most the cores.
    with pytest.raises(EdgeclsError, match="got 0"):
        parse_threads("1,0")
    with pytest.raises(EdgeclsError, match="more than the .* cores"):
        parse_threads("1,3000")
    with pytest.raises(BenchError, match="whole numbers"):
        parse_threads("1.5")
    with pytest.raises(BenchError, match="--runs"):
        BenchConfig(models=("m.tflite",), runs=0)


def test_folder_names_map_to_imagenet_labels(shared):
    labels = read_artifact(IMAGENET_MODEL).labels
    folders = ["macaw", "Military_Uniform", "tench", "crane", "zebra thing"]
    mapping, unmatched = match_folders(folders, labels)
    assert labels[mapping["macaw"]] == "macaw"
    assert labels[mapping["Military_Uniform"]] == "military uniform"
    assert labels[mapping["tench"]] == "tench, Tinca tinca"
    # ImageNet has two classes called "crane" (the bird and the machine): not guessed.
    assert unmatched == ["crane", "zebra thing"]


def test_quant_from_metadata_name_and_tensor_types(shared, tmp_path):
    data = IMAGENET_MODEL.read_bytes()
    assert infer_quant(read_artifact(IMAGENET_MODEL), make_interpreter(IMAGENET_MODEL, num_threads=1)) == "uint8"
    tagged = tmp_path / "coral.tflite"
    tagged.write_bytes(embed_metadata(data, {"quant": "int8"}, read_artifact(IMAGENET_MODEL).labels))
    assert infer_quant(read_artifact(tagged)) == "int8"
    # The file name does not decide: Coral's uint8 model renamed model_fp16.tflite stays uint8.
    named = tmp_path / "model_fp16.tflite"
    shutil.copy(IMAGENET_MODEL, named)
    assert infer_quant(read_artifact(named), make_interpreter(named, num_threads=1)) == "uint8"
    assert infer_quant(read_artifact(named)) == "unknown"


def test_duration_mode_fills_the_time(shared):
    row, _ = measure_latency(IMAGENET_MODEL, threads=1, warmup=1, duration=0.3)
    assert row["runs"] == len(row["samples_ms"]) > 1
    # Nearly all of the wall time goes to the timed calls, and the loop stops right after the deadline.
    assert 0.5 * 300 <= sum(row["samples_ms"]) <= 300 + 5 * max(row["samples_ms"])


def _report(p50: float, cpu: str = "Xeon") -> dict:
    row = {"model": "/a/m.tflite", "name": "m", "quant": "int8", "threads": 2,
           "latency_ms": {"p50": p50, "mean": p50 * 1.1}}
    return {"device": {"cpu_model": cpu, "cpu_count": 2, "runtime": "ai-edge-litert", "runtime_version": "2.3.0"},
            "results": [row]}


def test_compare_flags_a_slower_model(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_report(4.0)))
    new = _report(8.0)
    new["results"][0]["model"] = "/elsewhere/m.tflite"  # matched by file name, not path
    result = compare(new, old)
    assert result["rows"][0]["p50_ratio"] == pytest.approx(2.0) and result["same_device"]
    assert "ratio 2.00" in compare_table(result) and "SLOWER" in compare_table(result)
    other_board = compare(_report(8.0, cpu="Cortex-A72"), old)
    assert not other_board["same_device"] and "compare machines" in compare_table(other_board)
    old.write_text("{}")
    with pytest.raises(BenchError, match="not a report written by edgecls bench"):
        compare(new, old)


def test_device_line_names_the_pi_facts():
    line = device_line({"board": "Raspberry Pi 4 Model B Rev 1.4", "cpu_model": "Cortex-A72", "cpu_count": 4,
                        "runtime": "ai-edge-litert", "runtime_version": "2.3.0", "delegate": "XNNPACK (default)",
                        "cpu_governor": "ondemand", "cpu_temperature_c": 51.1, "cpu_temperature_c_end": 63.3,
                        "throttled": "0x0", "throttled_end": "0x50000", "loadavg_1m": 0.1})
    for text in ("Raspberry Pi 4", "4 cores", "governor ondemand", "51.1 °C → 63.3 °C", "throttled 0x50000"):
        assert text in line


def test_worker_answers_errors_as_json(tmp_path):
    job = {"kind": "model", "model": str(tmp_path / "missing.tflite"), "threads": 1}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker"], input=json.dumps(job),
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 3 and reply["ok"] is False and reply["exit_code"] == 2
    assert "missing.tflite does not exist" in reply["error"]


def test_data_folder_that_fits_no_label_says_so(tmp_path):
    (tmp_path / "Early_blight").mkdir()
    with pytest.raises(BenchError, match="no class folder .* is named like one of the model's 2 labels"):
        labelled_images(tmp_path, ["cat", "dog"])


def test_a_model_named_twice_is_measured_once(shared, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(IMAGENET_MODEL, run / "model_int8.tflite")
    assert check_models((str(run), str(run / "model_int8.tflite")), "cpu") == [run / "model_int8.tflite"]


def test_readme_inputs_from_the_real_photos(shared, tmp_path):
    import cv2

    from scripts.samples import write_clip, write_labelled

    labelled = write_labelled(tmp_path / "labelled", IMAGES)
    assert sorted(p.relative_to(labelled).as_posix() for p in labelled.rglob("*.*")) == [
        "macaw/parrot.jpg", "military uniform/grace_hopper.bmp"]
    clip = write_clip(tmp_path / "clip.mp4", frames=6, size=(320, 240), images=IMAGES)
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    assert len(frames) == 6 and frames[0].shape == (240, 320, 3) and frames[0].std() > 10
