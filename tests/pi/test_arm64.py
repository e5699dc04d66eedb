"""The device path on the Pi's architecture and Python (Debian Trixie arm64, Python 3.13; ``make test-pi``).

Run inside the emulated root by ``pi/pi_root.sh test`` with the rest of ``pi/device_tests.txt``; on any
other machine these tests skip. Emulated, one MobileNetV2 inference takes about a second: the videos are short.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest
from support import (
    BIRD_MODEL,
    IMAGENET_MODEL,
    REPO,
    free_port,
    log_records,
    read_log,
    wait_until,
    write_video,
)

from edge_app.runtime import ImageClassifier, make_interpreter
from edge_app.runtime.interpreter import applied_kernels

pytestmark = pytest.mark.arm64
PARROT, BIRD_PARROT = "macaw", "Ara macao (Scarlet Macaw)"
SHIPPED = REPO / "edge_app" / "learn" / "models" / "mobilenet_v2_1.0_224_quant.tflite"


def test_this_is_the_pi_architecture_and_python_without_tensorflow():
    assert platform.machine() == "aarch64" and sys.version_info[:2] == (3, 13), (platform.machine(), sys.version)
    assert importlib.util.find_spec("tensorflow") is None, "the device venv must not have TensorFlow"


def test_numpy_float32_matrix_products_are_right():
    """Under qemu's default "max" CPU, OpenBLAS picks SME kernels whose products come out wrong (errors of 100,
    NaN), and every numpy-fitted head diverges; pi/pi_root.sh emulates a Pi 5's Cortex-A76 (QEMU_CPU)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for left, right in (((3, 36), (36, 1280)), ((36, 1280), (1280, 3)), ((200, 300), (300, 50))):
        a, b = rng.standard_normal(left).astype(np.float32), rng.standard_normal(right).astype(np.float32)
        error = np.abs(a @ b - a.astype(np.float64) @ b.astype(np.float64)).max()
        assert error < 1e-3, f"{left} @ {right}: float32 error {error} (QEMU_CPU={os.environ.get('QEMU_CPU')})"


@pytest.mark.parametrize("model", [IMAGENET_MODEL, BIRD_MODEL, SHIPPED], ids=["coral-imagenet", "coral-bird", "learn-base"])
def test_xnnpack_is_applied(model, shared):
    """Without /sys (or with qemu's pass-through of an x86 /proc/cpuinfo) LiteRT drops XNNPACK without a word."""
    kernels = applied_kernels(make_interpreter(model, num_threads=2))
    assert kernels is not None and kernels.delegate == "XNNPACK", kernels
    assert kernels.delegated_ops >= kernels.total_ops - 2, kernels.summary()  # uint8 AVERAGE_POOL_2D, SOFTMAX
    assert ImageClassifier(model, num_threads=1).describe()["kernels"]["delegate"] == "XNNPACK"


def test_run_a_video_with_a_live_swap_and_the_kiosk_status(tmp_path, shared):
    """``edgecls run --web`` on a looping video; the model file is replaced mid-run; /status names the kernels."""
    model, log, port = tmp_path / "model.tflite", tmp_path / "run.jsonl", free_port()
    shutil.copy(IMAGENET_MODEL, model)
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 8)], size=(320, 240))
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(video), "--loop",
                             "--threads", "2", "--log", str(log), "--web", f"127.0.0.1:{port}"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: sum("frame" in r for r in log_records(log)) >= 3, 240, "3 frames")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as response:
            status = json.loads(response.read())
        assert status["run"]["kernels"]["delegate"] == "XNNPACK" and status["run"]["delegate"].startswith("XNNPACK (")
        tmp = model.with_name(".incoming.tflite")
        tmp.write_bytes(BIRD_MODEL.read_bytes())
        os.replace(tmp, model)
        wait_until(lambda: any(r.get("label") == BIRD_PARROT for r in log_records(log)), 240, "the bird model's label")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    header, frames, events = read_log(log)
    assert header["kernels"]["delegate"] == "XNNPACK" and "XNNPACK is not applied" not in stderr
    assert [f["frame"] for f in frames] == list(range(len(frames))), "a frame was lost or repeated around the swap"
    assert [e["event"] for e in events] == ["model_swapped"]
    labels = [f["label"] for f in frames]
    first_new = labels.index(BIRD_PARROT)
    assert labels == [PARROT] * first_new + [BIRD_PARROT] * (len(labels) - first_new) and first_new >= 3


@pytest.fixture
def host_broker() -> str:
    url = os.environ.get("EDGECLS_PI_BROKER")
    if not url:
        pytest.skip("no broker on the host: pi/pi_root.sh test starts mosquitto where it is installed")
    return url


def test_the_mqtt_link_reports_and_takes_a_signed_deploy_through_the_host_broker(tmp_path, host_broker, shared):
    """The chroot shares the host's network: ``edgecls run --mqtt`` on arm64 talks to the host's mosquitto."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_app.runtime.signing import generate_keypair

    device_id = f"pi-arm64-{os.getpid()}"
    private, public = generate_keypair(tmp_path / "fleet.key")
    model, log = tmp_path / "model.tflite", tmp_path / "run.jsonl"
    shutil.copy(IMAGENET_MODEL, model)
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 8)], size=(320, 240))
    statuses: list[dict] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pi-test-{os.getpid()}")
    client.on_message = lambda c, u, message: message.payload and statuses.append(json.loads(message.payload))
    client.connect("127.0.0.1", int(host_broker.rsplit(":", 1)[1]))
    client.loop_start()
    client.subscribe(f"edgecls/{device_id}/status", qos=1)
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(video), "--loop",
                             "--threads", "2", "--log", str(log), "--mqtt", host_broker, "--device-id", device_id,
                             "--trust", str(public)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        status = wait_until(lambda: next((s for s in reversed(statuses) if s.get("online") and s.get("frames")), None),
                            240, "an online status with frames")
        assert status["delegate"].startswith("XNNPACK (") and status["labels"][:1] == ["background"]
        done = subprocess.run([sys.executable, "-m", "edgecls", "fleet", "deploy", str(BIRD_MODEL), "--to", device_id,
                               "--key", str(private), "--broker", host_broker], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: any(r.get("label") == BIRD_PARROT for r in log_records(log)), 240, "the deployed model's label")
        assert model.read_bytes() == BIRD_MODEL.read_bytes()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        wait_until(lambda: statuses and statuses[-1].get("online") is False, 30, "the offline status")
    finally:
        proc.kill()
        # no retained status of a test device left on the host's broker
        client.publish(f"edgecls/{device_id}/status", b"", qos=1, retain=True).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()


def test_the_kiosk_field_loop_labels_applies_and_undoes(tmp_path, shared):
    """Review, label, apply (a real ``edgecls learn`` child on arm64, then a live swap) and undo, over HTTP.
    (test_field's version also teaches 10 frames within 1 s: emulated, the camera runs at 1-2 FPS.)"""
    from support import running_kiosk

    new = "red bird"
    with running_kiosk(tmp_path) as client:
        items = client.call("/api/collected")[1]["items"]
        assert all(item["label"] == PARROT for item in items) and len(items) >= 6
        for item in items[:6]:
            assert client.call("/api/label", {"id": item["id"], "label": new})[0] == 200
        assert client.call("/api/classes")[1]["labelled"] == {new: 6}
        code, job = client.call("/api/apply", {})
        assert code == 202 and job["state"] == "learning", job
        job = client.until("/api/job", lambda j: j["state"] not in ("learning", "swapping"), timeout=600)
        assert job["state"] == "applied" and job["new_labels"] == [new], job
        client.until("/status", lambda s: s["label"] == new, timeout=120)
        assert client.call("/status")[1]["run"]["kernels"]["delegate"] == "XNNPACK"
        code, undone = client.call("/api/undo", {})
        assert code == 200 and undone["running"] == "origin", undone
        client.until("/status", lambda s: s["label"] == PARROT, timeout=120)
    assert (tmp_path / "model.tflite").read_bytes() == IMAGENET_MODEL.read_bytes()
