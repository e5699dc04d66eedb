"""Tests that need the hardware they are about: they run on a Pi with a camera or a board with a Coral.

Elsewhere they skip with the reason; the code around the hardware is tested without it (a fake
``Picamera2``, the Edge TPU delegate's error messages) in the other test files.
"""

from __future__ import annotations

import glob
import json

import pytest
from support import EDGETPU_MODEL, IMAGENET_MODEL, run_cli


def _edgetpu_present() -> bool:
    from edge_app.runtime.errors import DelegateError
    from edge_app.runtime.interpreter import load_edgetpu_delegate, load_runtime

    try:
        load_edgetpu_delegate(load_runtime())
    except DelegateError:
        return False
    return True


@pytest.mark.tpu
def test_the_edge_tpu_model_runs_on_a_coral(shared, tmp_path):
    if not _edgetpu_present():
        pytest.skip("no Coral Edge TPU here (libedgetpu could not open a device)")
    result = run_cli("bench", EDGETPU_MODEL, "--device", "edgetpu", "--runs", "20", "--json", tmp_path / "b.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["latency_ms"]["p50"] > 0


@pytest.mark.camera
def test_a_usb_camera_gives_frames(tmp_path):
    if not glob.glob("/dev/video*"):
        pytest.skip("no camera here (/dev/video* is empty)")
    log = tmp_path / "cam.jsonl"
    result = run_cli("run", IMAGENET_MODEL, "--source", "0",
                     "--max-frames", "5", "--log", log, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sum(1 for line in log.read_text().splitlines() if "frame" in json.loads(line)) == 5
