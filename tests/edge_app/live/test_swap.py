"""The live model swap: real models replaced on disk under a running ``edgecls run``, real videos, real signals."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import (
    BIRD_MODEL,
    BIRD_PARROT,
    EDGETPU_MODEL,
    IMAGENET_MODEL,
    PARROT,
    REPO,
    log_records,
    read_log,
    replace_atomically,
    wait_for,
    write_video,
)

from edge_app.live.app import AppConfig, run
from edge_app.runtime.artifact import flatbuffer_part


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def long_parrot(tmp_path_factory, shared) -> Path:
    return write_video(tmp_path_factory.mktemp("swap") / "parrot.avi", [("parrot.jpg", 500)], size=(320, 240))


def test_a_model_replaced_during_a_video_run_is_swapped_in_between_two_frames(tmp_path, long_parrot, cli):
    model, log = tmp_path / "model.tflite", tmp_path / "run.jsonl"
    shutil.copy(IMAGENET_MODEL, model)
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(long_parrot),
                             "--log", str(log), "--threads", "1"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sum("frame" in r for r in log_records(log)) >= 20, what="20 frames")
        replace_atomically(model, BIRD_MODEL.read_bytes())
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    header, frames, events = read_log(log)
    assert [f["frame"] for f in frames] == list(range(500)), "a frame was lost or repeated around the swap"
    assert [e["event"] for e in events] == ["model_swapped"]
    swap = events[0]
    assert swap["old_sha256"] == header["model_sha256"] == sha256(IMAGENET_MODEL)
    assert swap["new_sha256"] == sha256(BIRD_MODEL) and swap["num_classes"] == 965
    assert swap["delegate"].startswith("XNNPACK (")  # read back from the new interpreter, as the header's
    labels = [f["label"] for f in frames]
    first_new = labels.index(BIRD_PARROT)
    assert labels == [PARROT] * first_new + [BIRD_PARROT] * (500 - first_new)
    assert 20 <= first_new < 500 and frames[first_new]["t"] >= swap["t"]
    assert "model swapped" in stderr


def _run_in_thread(config: AppConfig):
    stop, out = threading.Event(), {}

    def target():
        try:
            out["stats"] = run(config, stop=stop)
        except Exception as e:  # reported by the test
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return stop, thread, out


def test_bad_replacements_are_rejected_and_the_running_model_stays(tmp_path, long_parrot):
    model, log = tmp_path / "model.tflite", tmp_path / "run.jsonl"
    shutil.copy(IMAGENET_MODEL, model)
    (tmp_path / "labels.txt").write_text("".join(f"class {i}\n" for i in range(1001)))
    stop, thread, out = _run_in_thread(AppConfig(str(model), source=str(long_parrot), loop=True, log=str(log),
                                                 num_threads=1))
    bird = BIRD_MODEL.read_bytes()

    def events():
        return [r for r in log_records(log) if "event" in r]

    try:
        wait_for(lambda: any("frame" in r for r in log_records(log)), what="the first frame", run=(thread, out))
        bad = [
            (bird[: len(bird) // 2], "damaged"),                      # a truncated copy
            (b"<html>404 not found</html>", "not a TFLite model"),    # a download gone wrong
            (EDGETPU_MODEL.read_bytes(), "Edge TPU"),                 # compiled for a Coral
            (flatbuffer_part(bird), "965 classes"),                   # 965 outputs, labels.txt beside has 1001
        ]
        for n, (data, reason) in enumerate(bad, 1):
            replace_atomically(model, data)
            wait_for(lambda n=n: len(events()) >= n, what=f"rejection {n}", run=(thread, out))
            assert events()[-1]["event"] == "model_rejected" and reason in events()[-1]["reason"], events()[-1]
        time.sleep(0.3)
        assert all(r["label"] == PARROT for r in log_records(log) if "frame" in r)
        replace_atomically(model, bird)
        wait_for(lambda: any(r.get("label") == BIRD_PARROT for r in log_records(log)), what="the bird model", run=(thread, out))
    finally:
        stop.set()
        thread.join(30)
    assert "error" not in out, out.get("error")
    kinds = [e["event"] for e in events()]
    assert kinds == ["model_rejected"] * 4 + ["model_swapped"]


def test_a_model_copied_in_place_slowly_is_never_loaded_half_written(tmp_path, long_parrot):
    """``cp new.tflite model.tflite`` rewrites the file in place; a slow card makes that take seconds."""
    model, log = tmp_path / "model.tflite", tmp_path / "run.jsonl"
    shutil.copy(IMAGENET_MODEL, model)
    stop, thread, out = _run_in_thread(AppConfig(str(model), source=str(long_parrot), loop=True, log=str(log),
                                                 num_threads=1))
    bird = BIRD_MODEL.read_bytes()
    try:
        wait_for(lambda: any("frame" in r for r in log_records(log)), what="the first frame", run=(thread, out))
        with open(model, "r+b") as f:  # in place: same inode, truncated, then written in pieces with pauses
            f.truncate(0)
            for start in range(0, len(bird), len(bird) // 4 + 1):
                f.write(bird[start:start + len(bird) // 4 + 1])
                f.flush()
                time.sleep(0.8)  # longer than the settle time: a half file does get looked at
        wait_for(lambda: any(r.get("label") == BIRD_PARROT for r in log_records(log)), what="the bird model", run=(thread, out))
    finally:
        stop.set()
        thread.join(30)
    assert "error" not in out, out.get("error")
    records = log_records(log)
    swapped = [r for r in records if r.get("event") == "model_swapped"]
    assert len(swapped) == 1 and swapped[0]["new_sha256"] == sha256(BIRD_MODEL)
    # Frames ran on, on the old model (from memory: the file being rewritten under it did not matter).
    frames = [r for r in records if "frame" in r]
    before = [f for f in frames if f["t"] < swapped[0]["t"]]
    assert len(before) > 20 and all(f["label"] == PARROT for f in before)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
def test_sighup_reloads_the_model_and_the_labels_beside_it(tmp_path, long_parrot):
    model, log = tmp_path / "model.tflite", tmp_path / "run.jsonl"
    model.write_bytes(flatbuffer_part(IMAGENET_MODEL.read_bytes()))  # no embedded labels: labels.txt beside counts
    labels = (IMAGENET_MODEL.parent / "imagenet_labels.txt").read_text().splitlines()
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(long_parrot),
                             "--log", str(log), "--threads", "1", "--no-watch", "--loop", "--max-frames", "3000"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sum("frame" in r for r in log_records(log)) >= 5, what="5 frames")
        (tmp_path / "labels.txt").write_text("\n".join("scarlet macaw" if x == PARROT else x for x in labels) + "\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(r.get("label") == "scarlet macaw" for r in log_records(log)), what="the new label")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    events = [r for r in log_records(log) if "event" in r]
    assert [e["event"] for e in events] == ["model_swapped"]
    assert events[0]["old_sha256"] == events[0]["new_sha256"]  # same model, new labels
    assert "SIGHUP" in stderr


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="/proc: Linux")
def test_a_model_file_that_cannot_be_read_is_rejected_once_naming_it(tmp_path, long_parrot):
    """Issue: a swap to /proc/self/mem (a regular file whose every read is EIO) logged "model swap: [Errno 5]
    Input/output error" twice a second, naming no file, with no ``model_rejected`` event."""
    model, log = tmp_path / "model.tflite", tmp_path / "run.jsonl"
    shutil.copy(IMAGENET_MODEL, model)
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(long_parrot),
                             "--loop", "--log", str(log), "--threads", "1"], cwd=REPO, stderr=subprocess.PIPE, text=True)

    def rejections() -> list[dict]:
        return [r for r in log_records(log) if r.get("event") == "model_rejected"]

    try:
        wait_for(lambda: sum("frame" in r for r in log_records(log)) >= 5, what="5 frames")
        incoming = tmp_path / ".incoming"
        incoming.symlink_to("/proc/self/mem")
        os.replace(incoming, model)
        wait_for(rejections, what="the rejection")
        time.sleep(2.5)  # five polls: a file that stays unreadable is told once
        replace_atomically(model, BIRD_MODEL.read_bytes())
        wait_for(lambda: any(r.get("label") == BIRD_PARROT for r in log_records(log)), what="the bird model")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    _, _, events = read_log(log)
    assert [e["event"] for e in events] == ["model_rejected", "model_swapped"], events
    assert events[0]["reason"] == f"cannot read model {model}: Input/output error; put a .tflite file there"
    assert stderr.count("Input/output error") == 1 and "model swap:" not in stderr, stderr


def test_an_install_keeps_the_model_it_replaced_for_a_rollback(tmp_path):
    """``install`` keeps one model, the one an accepted swap replaced (``.NAME.kept``): what a fleet rollback
    installs; a rejected or unchanged install leaves it as it was."""
    from edge_app.live.swap import ModelSwapper, kept_path
    from edge_app.runtime import ImageClassifier

    running = tmp_path / "model.tflite"
    shutil.copy(IMAGENET_MODEL, running)
    clf = ImageClassifier(running, in_memory=True, num_threads=1)
    swapper = ModelSwapper(clf, load=lambda artifact: ImageClassifier(artifact, in_memory=True, num_threads=1),
                           watch=False)
    stop = threading.Event()

    def loop():  # the live loop's part: take a validated candidate between two frames
        while not stop.is_set():
            if (candidate := swapper.take()) is not None:
                swapper.swapped(candidate)
            time.sleep(0.005)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        assert swapper.kept_model() is None
        assert swapper.install(BIRD_MODEL.read_bytes(), "test deploy").accepted
        assert swapper.kept_model() == IMAGENET_MODEL.read_bytes() and running.read_bytes() == BIRD_MODEL.read_bytes()
        assert not swapper.install(b"TFL3 not a model", "test deploy").accepted
        assert swapper.install(BIRD_MODEL.read_bytes(), "test deploy").reason == "unchanged"
        assert swapper.kept_model() == IMAGENET_MODEL.read_bytes()  # neither replaced the kept one
        assert swapper.install(swapper.kept_model(), "rollback").accepted  # back; the bird model is kept now
        assert kept_path(running).read_bytes() == BIRD_MODEL.read_bytes() and sha256(running) == sha256(IMAGENET_MODEL)
    finally:
        stop.set()
        thread.join(5)
