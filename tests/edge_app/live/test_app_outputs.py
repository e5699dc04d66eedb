"""The live app's outputs and helpers: log rotation, smoothing, config validation."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import numpy as np
import pytest
from support import can_unshare

from edge_app.frames.sinks import DisplayError, JsonlLog, OverlayWindow, Result, draw_overlay
from edge_app.frames.smoothing import Smoother
from edge_app.live.app import AppConfig
from edge_app.runtime.errors import EdgeclsError


def test_log_rotates_by_size_and_every_file_starts_with_its_header(tmp_path):
    path = tmp_path / "run.jsonl"
    log = JsonlLog(path, max_bytes=2000, backups=2)
    log.start({"model": "m.tflite", "runtime": "ai-edge-litert"})
    for i in range(100):
        log.update(None, Result(i, 1.7e9 + i, "macaw", 0.9, latency_ms=5.0, fps=30.0))
    log.close()
    files = [path, path.with_name("run.jsonl.1"), path.with_name("run.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("run.jsonl.3").exists()
    frames = []
    for f in reversed(files):
        assert f.stat().st_size <= 2000
        records = [json.loads(line) for line in f.read_text().splitlines()]
        assert records[0]["header"]["model"] == "m.tflite"
        frames += [r["frame"] for r in records[1:]]
    assert frames == list(range(frames[0], 100))  # the newest frames, in order, none twice


def test_smoother_averages_the_last_n_and_resets():
    smoother = Smoother(3, 2)
    outs = [smoother.update(np.array(s, np.float32)).copy() for s in ([1, 0], [0, 1], [0, 1], [0, 1])]
    assert np.allclose(outs, [[1, 0], [0.5, 0.5], [1 / 3, 2 / 3], [0, 1]])
    smoother.reset()
    assert np.allclose(smoother.update(np.array([1, 0], np.float32)), [1, 0])
    assert Smoother(1, 2).update(np.array([0.3, 0.7], np.float32)).tolist() == pytest.approx([0.3, 0.7])


@pytest.mark.parametrize("bad, message", [
    ({"threshold": 1.5}, "--threshold"),
    ({"smooth": 0}, "--smooth"),
    ({"save_when": ("macaw",)}, "--save-frames"),
    ({"web": "0.0.0.0:8080"}, "--allow-remote"),
    ({"max_frames": 0}, "--max-frames"),
    ({"mean": 127.5}, "--std"),
])
def test_config_refuses_bad_values_with_the_flag_named(bad, message):
    with pytest.raises(EdgeclsError, match=message):
        AppConfig("m.tflite", **bad)
    assert AppConfig("m.tflite", save_frames="ev", save_when="a, b").save_when == ("a", "b")
    assert AppConfig("m.tflite", display=True).display


def test_overlay_draws_label_score_and_fps():
    image = np.full((480, 640, 3), 255, np.uint8)
    draw_overlay(image, Result(3, 0.0, "macaw", 0.97, fps=29.5))
    band = image[:40]
    assert (band == 0).mean() > 0.5  # the dark band behind the text
    assert (band[..., 1] > 200).any() and (image[60:] == 255).all()  # green label text; the picture below untouched


def test_display_without_a_screen_says_what_to_use_instead(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(DisplayError, match="--web"):
        OverlayWindow()


def test_a_full_disk_drops_log_lines_but_never_stops_the_run(caplog, shared):
    from support import IMAGENET_MODEL, IMAGES

    from edge_app.live.app import run

    stats = run(AppConfig(str(IMAGENET_MODEL), source=str(IMAGES), log="/dev/full"))  # every write: ENOSPC
    assert stats.frames == 4 and stats.stopped == "end"
    assert "cannot write" in caplog.text and "classifying on" in caplog.text


def test_log_says_how_many_lines_were_lost_once_writing_works_again(tmp_path):
    path = tmp_path / "run.jsonl"
    log = JsonlLog(path, flush_s=0)
    log.start({"model": "m.tflite"})
    real_write, failing = log._file.write, {"on": True}

    def write(data):
        if failing["on"]:
            raise OSError(28, "No space left on device")
        return real_write(data)

    # A disk that fills up, then gets space back.
    log._file = type("Flaky", (), {"write": staticmethod(write), "close": log._file.close,
                                   "fileno": log._file.fileno, "truncate": log._file.truncate})()
    for i in range(3):
        log.update(None, Result(i, 1.7e9, "macaw", 0.9))
    failing["on"] = False
    log.update(None, Result(3, 1.7e9, "macaw", 0.9))
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("event") for r in records[1:3]] == ["log_lines_dropped", None]
    assert records[1]["detail"] == "3" and records[2]["frame"] == 3


def test_evidence_frames_are_rate_limited_per_label_and_capped(tmp_path):
    from edge_app.frames.sinks import FrameSaver
    from edge_app.frames.sources import Frame

    saver = FrameSaver(tmp_path / "ev", labels=("macaw", "uncertain"), min_interval_s=1.0, max_files=3)
    image = np.full((48, 64, 3), 128, np.uint8)
    for i, (t, label) in enumerate([(0.0, "macaw"), (0.5, "macaw"), (0.6, "uncertain"), (1.2, "macaw"),
                                    (1.3, "hen"), (2.4, "macaw"), (3.5, "macaw")]):
        saver.update(Frame(image, "RGB", i, t), Result(i, 1.7e9 + t, label, 0.5))
    names = sorted(p.name for p in (tmp_path / "ev").glob("*.jpg"))
    # Saved: frames 0, 2, 3, 5, 6 (0.5 s after the last macaw is too soon; hen is not asked for);
    # only the newest three are kept.
    assert saver.saved == 5 and len(names) == 3
    assert [n.split("_")[1] for n in names] == ["f000003", "f000005", "f000006"]


def test_a_failed_write_is_cut_back_to_the_last_whole_line(tmp_path):
    path = tmp_path / "run.jsonl"
    log = JsonlLog(path, flush_s=0)
    log.start({"model": "m.tflite"})
    real, room = log._file, {"bytes": 30}  # room for part of one line, then the disk is full

    class FillingDisk:
        def write(self, data):
            if room["bytes"] is None:
                return real.write(data)
            n = min(len(data), room["bytes"])
            if n == 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            room["bytes"] -= n
            return real.write(data[:n])  # a short write, as a filling disk gives

        truncate, close, fileno = real.truncate, real.close, real.fileno

    log._file = FillingDisk()
    for i in range(3):
        log.update(None, Result(i, 1.7e9, "macaw", 0.9))
    assert path.read_bytes().endswith(b"}\n"), "half a line was left behind"
    room["bytes"] = None  # space again
    log.update(None, Result(3, 1.7e9, "macaw", 0.9))
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("event") for r in records[1:3]] == ["log_lines_dropped", None]
    assert records[1]["detail"] == "3" and records[2]["frame"] == 3


@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1) to mount a small tmpfs")
def test_a_disk_that_fills_up_and_frees_leaves_only_whole_lines(tmp_path, shared):
    from support import IMAGENET_MODEL, IMAGES

    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
mount -t tmpfs -o size=128k tmpfs "{disk}" || exit 90
head -c 1000000 /dev/zero > "{disk}/filler" 2>/dev/null || true  # the disk is full from the start
"{sys.executable}" -m edgecls run "{IMAGENET_MODEL}" --source "{IMAGES}" --loop --duration 8 --threads 1 \\
    --log "{disk}/l.jsonl" -q &
sleep 4
rm "{disk}/filler"
wait $!
status=$?
cp "{disk}/l.jsonl" "{tmp_path}/l.jsonl"
exit $status
"""
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "l.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"", "the log ends in half a line"
    records = [json.loads(line) for line in lines[:-1]]  # every line is whole JSON
    dropped = [r for r in records if r.get("event") == "log_lines_dropped"]
    assert dropped and int(dropped[0]["detail"]) > 0, "the full disk went unnoticed"
    frames = [r["frame"] for r in records if "frame" in r]
    assert frames == sorted(frames) and len(frames) > 10


def test_a_half_line_left_by_a_killed_run_is_cut_but_a_foreign_file_is_kept(tmp_path):
    ours = tmp_path / "ours.jsonl"
    ours.write_bytes(b'{"frame": 1}\n{"frame": 2, "lab')
    foreign = tmp_path / "notes.txt"
    foreign.write_bytes(b"no newline at all")
    for path in (ours, foreign):
        log = JsonlLog(path, flush_s=0)
        log.start({"model": "m.tflite"})
        log.close()
    assert ours.read_text().splitlines()[:2] == ['{"frame": 1}', '{"header": {"model": "m.tflite"}}']
    assert foreign.read_text().splitlines()[0] == "no newline at all"
