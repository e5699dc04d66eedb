"""Outputs across commands: nothing of the user's is replaced, and an unwritable output fails first, in one line."""

from __future__ import annotations

import json
import time

import pytest
from support import IMAGENET_MODEL, can_unshare, run_cli, run_cli_read_only

from tests.trainer.conftest import write_dataset

FAST = ("--backbone", "simple_cnn", "--image-size", "16", "--epochs", "1", "--batch-size", "16")


def _one_line(result, command: str, *needles: str, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"edgecls {command}: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_overwrite_never_deletes_the_dataset_or_the_users_files(tmp_path):
    box = tmp_path / "box"
    write_dataset(box / "data", per_class=6, mixed=False)
    (box / "notes.txt").write_text("notes\n")
    result = run_cli("train", box / "data", "--out", box, "--overwrite", *FAST)
    _one_line(result, "train", "holds the dataset", "--out")
    assert (box / "notes.txt").read_text() == "notes\n" and len(list((box / "data").rglob("*.png"))) == 18

    # A folder that is not a run directory, or a run directory holding the user's files, is not replaced.
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    _one_line(run_cli("train", box / "data", "--out", other, "--overwrite", *FAST), "train",
              "not an edgecls run directory")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"labels": ["a", "b"], "splits": {}}))
    (run / "model_int8.tflite").write_bytes(b"")
    (run / "photos").mkdir()
    _one_line(run_cli("train", box / "data", "--out", run, "--overwrite", *FAST), "train", "did not write", "photos")
    assert (other / "thesis.tex").exists() and (run / "photos").is_dir()


def test_unwritable_outputs_fail_before_the_work_in_one_line(tmp_path, shared):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    data = write_dataset(tmp_path / "data", per_class=6, mixed=False)
    _one_line(run_cli("train", data, "--out", blocker / "run", *FAST), "train", "is a file, not a folder")
    started = time.monotonic()
    result = run_cli("bench", IMAGENET_MODEL, "--runs", "2000", "--json", blocker / "bench.json")
    _one_line(result, "bench", "--json", "is a file, not a folder")
    assert time.monotonic() - started < 30, "the benchmark ran before the output was checked"


@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1) to mount a read-only folder")
def test_read_only_folders_fail_before_the_work(tmp_path, shared):
    data = write_dataset(tmp_path / "data", per_class=6, mixed=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    _one_line(run_cli_read_only(locked, "train", data, "--out", locked / "run", *FAST), "train",
              "Read-only file system")
    (locked / "run").mkdir()
    (locked / "run" / "config.json").write_text(json.dumps({"labels": ["a", "b"], "splits": {}}))
    _one_line(run_cli_read_only(locked, "train", data, "--out", locked / "run", "--overwrite", *FAST), "train",
              "Read-only file system")
    _one_line(run_cli_read_only(locked, "bench", IMAGENET_MODEL, "--runs", "5", "--json", locked / "b.json"),
              "bench", "--json", "Read-only file system")
    assert sorted(p.name for p in locked.iterdir()) == ["run"]


def test_a_missing_source_leaves_no_empty_log(tmp_path, shared):
    log = tmp_path / "x.jsonl"
    result = run_cli("run", IMAGENET_MODEL, "--source", tmp_path / "nope.mp4", "--log", log)
    _one_line(result, "run", "nope.mp4")
    assert not log.exists()
