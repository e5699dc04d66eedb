"""Files no careless user or attacker should be able to hurt a device with: sparse giants, /dev/zero, FIFOs,
folders and SIGHUP storms under a running ``edgecls run``, and the same files given to the commands directly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import BIRD_MODEL, IMAGENET_MODEL, REPO, log_records, read_log, run_cli, write_video
from test_swap import BIRD_PARROT, PARROT, replace_atomically, wait_for

from edge_app.runtime.artifact import read_model_bytes
from edge_app.runtime.errors import ModelError

GB = 1 << 30


def sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that takes no disk (what ``truncate -s 1G`` makes)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


@pytest.mark.parametrize("make, says", [
    (lambda p: sparse(p, GB), "MB, over the"),
    (lambda p: sparse(p, GB, b"\0\0\0\0TFL3"), "MB, over the"),
    (lambda p: p.symlink_to("/dev/zero"), "is a device"),
    (lambda p: os.mkfifo(p), "is a FIFO"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b"TFL3"), "not a TFLite model"),
], ids=["sparse-1g", "sparse-1g-tfl3", "dev-zero", "fifo", "folder", "tiny"])
def test_a_model_path_is_checked_before_it_is_read(tmp_path, make, says):
    path = tmp_path / "model.tflite"
    make(path)
    done = threading.Event()
    errors = []

    def read():
        try:
            read_model_bytes(path)
        except ModelError as e:
            errors.append(str(e))
        finally:
            done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "reading the model blocked"  # a FIFO opened for reading waits for a writer for ever
    assert len(errors) == 1 and says in errors[0] and str(path) in errors[0], errors


def test_the_size_cap_can_be_raised_and_says_how(tmp_path, monkeypatch):
    model = tmp_path / "m.tflite"
    shutil.copy(IMAGENET_MODEL, model)
    monkeypatch.setenv("EDGECLS_MAX_MODEL_MB", "1")
    with pytest.raises(ModelError, match="3.6 MB, over the 1 MB a model may be here.*EDGECLS_MAX_MODEL_MB"):
        read_model_bytes(model)
    monkeypatch.setenv("EDGECLS_MAX_MODEL_MB", "10")
    assert read_model_bytes(model) == IMAGENET_MODEL.read_bytes()


def test_commands_name_the_bad_file_in_one_line(tmp_path):
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    for args, says in [(("classify", fifo, IMAGENET_MODEL), "is a FIFO"),
                       (("bench", sparse(tmp_path / "big.tflite", GB), "--runs", "1"), "MB, over the"),
                       (("learn", data, "--base", "/dev/zero", "--out", tmp_path / "o.tflite"), "--base /dev/zero is")]:
        done = run_cli(*args, timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP") or not os.path.exists("/proc/self/status"),
                    reason="SIGHUP and /proc: Linux")
def test_hostile_replacements_under_a_running_model_are_rejected_once_each(tmp_path, shared):
    """What a careless copy or an attacker with write access to the model's folder can do to a running kiosk."""
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 200)], size=(320, 240))
    model, log = tmp_path / "model.tflite", tmp_path / "run.jsonl"
    shutil.copy(IMAGENET_MODEL, model)
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(video), "--loop",
                             "--log", str(log), "--threads", "1"], cwd=REPO, stderr=subprocess.PIPE, text=True)

    def events(kind: str) -> list[dict]:
        return [r for r in log_records(log) if r.get("event") == kind]

    def swap_in(make) -> None:
        incoming = tmp_path / ".incoming"
        make(incoming)
        os.replace(incoming, model) if not incoming.is_dir() or not model.is_dir() else None

    try:
        wait_for(lambda: sum("frame" in r for r in log_records(log)) >= 10, what="10 frames")
        baseline = _peak_rss_mb(proc.pid)
        hostile = [(lambda p: sparse(p, GB), "MB, over the"),
                   (lambda p: sparse(p, GB, b"\0\0\0\0TFL3"), "MB, over the"),
                   (lambda p: p.symlink_to("/dev/zero"), "is a device"),
                   (lambda p: os.mkfifo(p), "is a FIFO")]
        for n, (make, says) in enumerate(hostile, 1):
            swap_in(make)
            wait_for(lambda n=n: len(events("model_rejected")) >= n, what=f"rejection {n}")
            assert says in events("model_rejected")[-1]["reason"], events("model_rejected")[-1]
        os.unlink(model)  # a folder where the model was
        model.mkdir()
        wait_for(lambda: len(events("model_rejected")) >= 5, what="the folder's rejection")
        assert "is a folder" in events("model_rejected")[-1]["reason"]
        for _ in range(3):  # asked again and again about the same bad file: told once
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
        time.sleep(1.5)  # three polls
        assert len(events("model_rejected")) == 5, [e["reason"] for e in events("model_rejected")]
        model.rmdir()
        replace_atomically(model, BIRD_MODEL.read_bytes())
        wait_for(lambda: any(r.get("label") == BIRD_PARROT for r in log_records(log)), what="the bird model")
        for _ in range(50):  # a SIGHUP storm with the same bytes: nothing to swap
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.01)
        time.sleep(2)
        peak = _peak_rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    _, frames, logged = read_log(log)
    assert [e["event"] for e in logged] == ["model_rejected"] * 5 + ["model_swapped"], [e["event"] for e in logged]
    labels = [f["label"] for f in frames]
    assert set(labels) == {PARROT, BIRD_PARROT} and labels.index(BIRD_PARROT) > 10
    # Before: a 1 GB file was read whole (peak 1.19 GB), /dev/zero until MemoryError. Now nothing grows.
    assert peak - baseline < 100, f"peak memory went from {baseline:.0f} to {peak:.0f} MB"
    assert "Traceback" not in stderr
