"""``edgecls run --mqtt`` end to end: the real live app in a subprocess, a real broker, ``edgecls fleet`` deploys."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from broker_support import wait_until
from support import BIRD_MODEL, IMAGENET_MODEL, REPO, log_records, run_cli, write_video

PARROT, BIRD_PARROT = "macaw", "Ara macao (Scarlet Macaw)"


def fleet(*args, timeout: float = 120):
    return run_cli("fleet", *map(str, args), timeout=timeout)


def statuses(broker) -> dict[str, dict]:
    done = fleet("status", "--broker", broker.url, "--json", "--wait", 1)
    assert done.returncode == 0, done.stderr
    return {s["device_id"]: s for s in json.loads(done.stdout)}


@pytest.fixture
def device_run(tmp_path, broker, keys):
    """``start(*extra)`` → the ``edgecls run --mqtt`` process on a looping parrot video; killed at the end."""
    model, log = tmp_path / "model.tflite", tmp_path / "run.jsonl"
    shutil.copy(IMAGENET_MODEL, model)
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 30)], size=(320, 240))
    procs = []

    def start(*extra: str) -> subprocess.Popen:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "edgecls", "run", str(model), "--source", str(video), "--loop", "--threads", "1",
             "--log", str(log), "--mqtt", broker.url, "--device-id", "kiosk-1", "--trust", str(keys["good"][1]),
             *extra], cwd=REPO, stderr=subprocess.PIPE, text=True))
        wait_until(lambda: statuses(broker).get("kiosk-1", {}).get("online"), 60, "kiosk-1 online")
        return procs[-1]

    yield start, model, log
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_running_device_takes_a_signed_deploy_and_refuses_the_rest(broker, keys, device_run, tmp_path):
    start, model, log = device_run
    proc = start()
    # FPS is measured over the first frames: a status sent after the very first (a busy machine) says 0.
    status = wait_until(lambda: (s := statuses(broker)["kiosk-1"])["frames"] > 0 and s["fps"] > 0 and s, 30,
                        "frames and an FPS in the status")
    assert status["model_sha256"] == hashlib.sha256(IMAGENET_MODEL.read_bytes()).hexdigest()
    assert status["labels"][:2] == ["background", "tench, Tinca tinca"]

    wrong = fleet("deploy", BIRD_MODEL, "--to", "kiosk-1", "--key", keys["other"][0], "--broker", broker.url)
    assert wrong.returncode == 1 and "signature" in wrong.stdout, wrong.stdout + wrong.stderr
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(BIRD_MODEL.read_bytes()[:1_000_000])  # a TFLite header, a truncated body
    rejected = fleet("deploy", broken, "--to", "kiosk-1", "--key", keys["good"][0], "--broker", broker.url)
    assert rejected.returncode == 1 and "damaged" in rejected.stdout, rejected.stdout + rejected.stderr
    assert model.read_bytes() == IMAGENET_MODEL.read_bytes()  # rolled back
    assert [e["event"] for e in log_records(log) if "event" in e] == ["model_rejected"]

    done = fleet("deploy", BIRD_MODEL, "--to", "kiosk-1", "--key", keys["good"][0], "--broker", broker.url)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: any(r.get("label") == BIRD_PARROT for r in log_records(log)), 30, "the bird model's labels")
    assert model.read_bytes() == BIRD_MODEL.read_bytes()
    frames = [r for r in log_records(log) if "frame" in r]
    first_bird = next(i for i, f in enumerate(frames) if f["label"] == BIRD_PARROT)
    assert {f["label"] for f in frames[:first_bird]} == {PARROT}
    assert statuses(broker)["kiosk-1"]["model_sha256"] == hashlib.sha256(BIRD_MODEL.read_bytes()).hexdigest()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert statuses(broker)["kiosk-1"]["online"] is False


def test_kill_9_sets_the_device_offline_through_the_last_will(broker, device_run):
    start, _, _ = device_run
    proc = start()
    proc.kill()
    proc.wait()
    status = wait_until(lambda: (s := statuses(broker).get("kiosk-1")) and s["online"] is False and s, 60,
                        "the last will")
    assert "last will" in status["reason"]


@pytest.mark.slow
def test_a_broker_that_dies_never_stops_classification(broker, device_run):
    start, _, log = device_run
    start()
    broker.stop(kill=True)
    down_at = time.time()
    time.sleep(3)
    up_at = time.time()
    broker.start()
    during = [r for r in log_records(log) if "frame" in r and down_at < r["t"] < up_at]
    assert len(during) > 30, "frames stopped while the broker was down"
    status = wait_until(lambda: (s := statuses(broker).get("kiosk-1")) and s.get("t", 0) > up_at and s, 60,
                        "a fresh status after the broker came back")
    assert status["online"] is True
