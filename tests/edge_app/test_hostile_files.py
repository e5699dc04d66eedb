"""Files no careless user or attacker should be able to hurt a device with: sparse giants, /dev/zero, FIFOs,
folders and SIGHUP storms under a running ``edgecls run``, and the same files given to the commands directly."""

from __future__ import annotations

import json
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
    IMAGENET_MODEL,
    IMAGES,
    PARROT,
    REPO,
    log_records,
    read_log,
    replace_atomically,
    run_cli,
    wait_for,
    write_video,
)

from edge_app.runtime.artifact import read_model_bytes
from edge_app.runtime.errors import ImageError, ModelError
from edge_app.runtime.images import read_image

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


# ------------------------------------------------------------------------------------------------- image files


# Runs the CLI and, at its exit, writes the process's own VmHWM (the peak resident memory of this program since its
# exec). Not wait4's ru_maxrss: a child forked from pytest starts with pytest's pages (TensorFlow's, ~500 MB in the
# whole suite) counted in it, whatever the child does.
_PEAK = """
import atexit, os, runpy, sys
def _peak():
    with open('/proc/self/status') as f:
        kb = next(line.split()[1] for line in f if line.startswith('VmHWM:'))
    with open(os.environ['EDGECLS_TEST_PEAK'], 'w') as out:
        out.write(kb)
atexit.register(_peak)
sys.argv = ['edgecls', *sys.argv[1:]]
runpy.run_module('edgecls', run_name='__main__', alter_sys=True)
"""


def run_cli_peak(*args, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m edgecls ARGS`` and its peak memory in MiB (VmHWM from ``/proc/self/status``, read at its exit).

    Under a 4 GB address-space cap: a reader that is not bounded then fails here with a MemoryError instead of
    taking the machine (``classify z.jpg`` on /dev/zero grew to 22.7 GB before the kernel killed it).
    """
    import resource
    import tempfile

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 * GB, 4 * GB))

    with tempfile.TemporaryDirectory() as folder:
        peak = Path(folder) / "peak"
        done = subprocess.run([sys.executable, "-c", _PEAK, *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, preexec_fn=cap, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "EDGECLS_TEST_PEAK": str(peak)})
        return done, (int(peak.read_text()) / 1024 if peak.exists() else float("inf"))


@pytest.mark.parametrize("make, says", [
    (lambda p: sparse(p, GB), "is 1073.7 MB, over the 64 MB an image may be"),
    # /dev/null, not /dev/zero: in this process an unbounded reader would take the machine (the CLI test has /dev/zero)
    (lambda p: p.symlink_to("/dev/null"), "is a device, not an image file"),
    (lambda p: os.mkfifo(p), "is a FIFO, not an image file"),
    (lambda p: p.mkdir(), "is a folder, not an image file"),
    (lambda p: p.symlink_to("/proc/self/mem"), "cannot read it (Input/output error)"),
], ids=["sparse-1g", "dev-null", "fifo", "folder", "proc-mem"])
def test_an_image_path_is_checked_before_it_is_read(tmp_path, make, says):
    path = tmp_path / "z.jpg"
    make(path)
    done, errors = threading.Event(), []

    def read():
        try:
            read_image(path)
        except ImageError as e:
            errors.append(str(e))
        finally:
            done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "reading the image blocked"
    assert len(errors) == 1 and says in errors[0] and str(path) in errors[0], errors


def test_the_image_size_cap_can_be_raised_and_says_how(tmp_path, monkeypatch):
    photo = tmp_path / "parrot.jpg"
    shutil.copy(IMAGES / "parrot.jpg", photo)
    monkeypatch.setenv("EDGECLS_MAX_IMAGE_MB", "0.01")
    with pytest.raises(ImageError, match=r"parrot.jpg is .* MB, over the 0 MB an image may be.*EDGECLS_MAX_IMAGE_MB"):
        read_image(photo)
    monkeypatch.setenv("EDGECLS_MAX_IMAGE_MB", "1")
    assert read_image(photo).shape[2] == 3


def test_an_image_whose_size_cannot_be_checked_is_not_decoded(tmp_path):
    """A Radiance .hdr: Pillow cannot read its header, OpenCV decodes it. 1 MB declaring 4000x4000 cost 270 MB."""
    side = 4000
    row = b"\x02\x02" + side.to_bytes(2, "big") + (b"\xff\x00" * (side // 127) + bytes([128 + side % 127, 0])) * 4
    path = tmp_path / "flat.jpg"
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (side, side) + row * side)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(ImageError, match="flat.jpg: not a readable image"):
        read_image(path)


def test_classify_refuses_hostile_images_in_one_line_and_little_memory(tmp_path):
    """Issue: ``classify`` on a symlink to /dev/zero grew to 22.7 GB; a 1 GB sparse huge.jpg cost 1.13 GB."""
    zero = tmp_path / "z.jpg"
    zero.symlink_to("/dev/zero")
    alone, _ = run_cli_peak("classify", IMAGENET_MODEL, zero, timeout=120)
    assert alone.returncode == 2, alone.stderr
    assert alone.stderr.strip().splitlines() == [f"edgecls classify: error: {zero} is a device, not an image file; "
                                                 "give a photo (jpg/png/bmp/webp/tif)"], alone.stderr
    data = tmp_path / "data"
    (data / "macaw").mkdir(parents=True)
    (data / "macaw" / "parrot.jpg").symlink_to(IMAGES / "parrot.jpg")
    huge = sparse(data / "macaw" / "huge.jpg", GB)
    mixed, peak = run_cli_peak("classify", IMAGENET_MODEL, data, "--recursive", "--json", timeout=120)
    assert peak < 300, f"classify peaked at {peak:.0f} MiB (it was 1.13 GB: the file was read whole)"
    assert mixed.returncode == 1, mixed.stderr  # an unreadable image: its JSON error line, exit 1 at the end
    lines = [json.loads(line) for line in mixed.stdout.splitlines()]
    assert lines[0] == {"image": str(huge), "error": f"{huge} is 1073.7 MB, over the 64 MB an image may be; is it "
                                                     "the right file? (a larger image: set EDGECLS_MAX_IMAGE_MB)"}
    assert lines[1]["top_k"][0]["label"] == PARROT and lines[1]["truth"] == PARROT
    assert "Traceback" not in mixed.stderr


def test_run_skips_a_hostile_image_in_its_folder_source(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "parrot.jpg").symlink_to(IMAGES / "parrot.jpg")
    huge = sparse(folder / "huge.jpg", GB)
    log = tmp_path / "run.jsonl"
    done, peak = run_cli_peak("run", IMAGENET_MODEL, "--source", folder, "--log", log, "--threads", "1", timeout=120)
    assert done.returncode == 0, done.stderr
    _, frames, _ = read_log(log)
    assert [(f["file"], f["label"]) for f in frames] == [("parrot.jpg", PARROT)]
    assert peak < 300, f"run peaked at {peak:.0f} MiB (it was 1.15 GB: the file was read whole)"
    assert f"skipping {huge} is 1073.7 MB, over the 64 MB" in done.stderr and "Traceback" not in done.stderr


def test_learn_skips_a_hostile_image_in_a_class_folder(tmp_path):
    data = tmp_path / "data"
    for label, photos in (("birds", ("parrot.jpg", "bird.bmp")), ("people", ("grace_hopper.bmp", "cat_720p.jpg"))):
        (data / label).mkdir(parents=True)
        for photo in photos:
            (data / label / photo).symlink_to(IMAGES / photo)
    huge = sparse(data / "birds" / "huge.jpg", GB)
    done, peak = run_cli_peak("learn", data, "--out", tmp_path / "m.tflite", "--head", "imprint", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert peak < 500, f"learn peaked at {peak:.0f} MiB (it was 1.28 GB: the file was read whole)"
    assert f"skipping {huge} is 1073.7 MB, over the 64 MB" in done.stderr and "Traceback" not in done.stderr


def test_train_convert_and_bench_read_images_through_the_bounded_reader(tmp_path, caplog):
    """Training is too slow for a test on two cores: the readers ``train``, ``convert`` and ``bench`` use, called
    as they call them (train checks every image with ``scan`` first and decodes in ``load_pixels``)."""
    from benchmarks.accuracy import evaluate
    from converter.calibration import load_pixels as calibration_pixels
    from edge_app.runtime import ImageClassifier, InputSpec
    from trainer.datasets import load_pixels, scan

    data = tmp_path / "data"
    for label in ("macaw", "military uniform"):
        (data / label).mkdir(parents=True)
        for n in range(4):
            (data / label / f"{n}.jpg").symlink_to(IMAGES / "parrot.jpg")
    huge = sparse(data / "macaw" / "huge.jpg", GB)
    says = f"{huge} is 1073.7 MB, over the 64 MB an image may be"
    dataset = scan(data, val_split=0.25, test_split=0.25)
    assert [s["path"] for s in dataset.skipped] == [str(huge)] and says in dataset.skipped[0]["error"]
    assert f"skipping {says}" in caplog.text
    with pytest.raises(ImageError, match=says):
        load_pixels(str(huge), 32)
    with pytest.raises(ImageError, match=says):
        calibration_pixels([(str(huge), 0)], InputSpec(32, 32))
    result = evaluate(ImageClassifier(IMAGENET_MODEL), data, progress=False)
    assert result["unreadable"] == [str(huge)] and result["n"] == 8


def test_the_kiosk_reads_its_frames_bounded(tmp_path):
    from edge_app.kiosk.review import MAX_IMAGE_BYTES, Refused, _read_image

    frame = tmp_path / "f.jpg"
    for make, status, says in [(lambda p: p.symlink_to("/dev/null"), 404, "gone"),
                               (lambda p: os.mkfifo(p), 404, "gone"),
                               (lambda p: p.symlink_to("/proc/self/mem"), 404, "gone"),
                               (lambda p: sparse(p, GB), 404, "not a kiosk frame")]:
        make(frame)
        with pytest.raises(Refused, match=says) as refused:
            _read_image(frame, "gone")
        assert refused.value.status == status
        frame.unlink()
    frame.write_bytes(b"\xff\xd8" * 10)
    assert _read_image(frame, "gone") == b"\xff\xd8" * 10 and MAX_IMAGE_BYTES < GB


def test_a_label_file_that_is_a_device_or_huge_is_refused_in_one_line(tmp_path):
    zero = tmp_path / "labels.txt"
    zero.symlink_to("/dev/zero")
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)  # sparse: a GB of label file that costs no disk
    for labels, expected in ((zero, "is a device"), (huge, "over the 4 MB")):
        done = run_cli("classify", IMAGENET_MODEL, IMAGES / "parrot.jpg", "--labels", labels, timeout=60)
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_a_run_config_that_is_a_device_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"not a model")
    (run / "config.json").symlink_to("/dev/zero")
    done = run_cli("convert", run, timeout=120)
    assert done.returncode == 2 and "config.json (a device)" in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr
