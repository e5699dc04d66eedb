"""The kiosk web view, over real HTTP on 127.0.0.1, fed by a real run of the live app."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import IMAGENET_MODEL, IMAGES

from edge_app.kiosk.address import parse_web_address
from edge_app.live.app import AppConfig, run
from edge_app.runtime import read_image
from edge_app.runtime.errors import EdgeclsError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.headers.get("Content-Type"), response.read()


@pytest.fixture
def live_app(tmp_path: Path, shared):
    """``edgecls run`` on a looping MJPG video with --web on a free port, stopped after the test."""
    path = tmp_path / "loop.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    frame = cv2.resize(cv2.cvtColor(read_image(IMAGES / "parrot.jpg"), cv2.COLOR_RGB2BGR), (320, 240))
    for _ in range(12):
        writer.write(frame)
    writer.release()
    port, stop, result = free_port(), threading.Event(), {}
    config = AppConfig(str(IMAGENET_MODEL), source=str(path), loop=True, web=f"127.0.0.1:{port}", num_threads=1)
    thread = threading.Thread(target=lambda: result.update(stats=run(config, stop=stop)), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    stop.set()
    thread.join(timeout=30)
    assert result["stats"].stopped == "stopped" and result["stats"].frames > 0


def wait_for_status(base: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status = json.loads(get(base + "/status")[2])
            if status["label"] is not None:
                return status
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the web view never reported a label")


def test_status_page_and_mjpeg_stream(live_app):
    status = wait_for_status(live_app)
    assert status["label"] == "macaw" and 0.9 < status["score"] <= 1 and status["fps"] >= 0
    assert status["history"][0]["label"] == "macaw"
    assert status["run"]["runtime"] == "ai-edge-litert" and status["run"]["threads"] == 1
    assert "cpu_model" in status["device"]

    code, kind, page = get(live_app + "/")
    assert code == 200 and kind.startswith("text/html") and b"/stream.mjpg" in page and b"/static/kiosk.js" in page
    code, kind, script = get(live_app + "/static/kiosk.js")  # the page's script, from the kiosk itself
    assert code == 200 and kind.startswith("text/javascript") and b"/status" in script
    for outside in ("/static/../page.py", "/static/%2E%2E/page.py", "/static/OFL.txt"):  # a fixed list, no paths
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(live_app + outside)
        assert missing.value.code == 404

    code, kind, jpeg = get(live_app + "/frame.jpg")
    assert code == 200 and kind == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)

    with urllib.request.urlopen(live_app + "/stream.mjpg", timeout=10) as stream:
        assert stream.headers.get("Content-Type").startswith("multipart/x-mixed-replace")
        data = b""
        while data.count(b"\xff\xd9") < 2 and len(data) < 2_000_000:  # two whole JPEGs
            data += stream.read1(65536)
    assert data.startswith(b"--edgeclsframe\r\nContent-Type: image/jpeg")
    assert data.count(b"\xff\xd8") >= 2

    with pytest.raises(urllib.error.HTTPError) as missing:
        get(live_app + "/nope")
    assert missing.value.code == 404


def test_web_binds_locally_unless_asked():
    assert parse_web_address("8080") == ("127.0.0.1", 8080)
    assert parse_web_address("localhost:9000") == ("localhost", 9000)
    assert parse_web_address("[::1]:8080") == ("::1", 8080)
    with pytest.raises(EdgeclsError, match="--allow-remote"):
        parse_web_address("0.0.0.0:8080")
    assert parse_web_address("0.0.0.0:8080", allow_remote=True) == ("0.0.0.0", 8080)
    with pytest.raises(EdgeclsError, match="HOST:PORT"):
        parse_web_address("127.0.0.1:http")


def test_cli_refuses_a_remote_bind_and_a_busy_port(cli, shared):
    refused = cli("run", IMAGENET_MODEL, "--source", IMAGES, "--web", "0.0.0.0:8080", timeout=60)
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr and "Traceback" not in refused.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = cli("run", IMAGENET_MODEL, "--source", IMAGES, "--web", f"127.0.0.1:{port}", timeout=60)
    assert taken.returncode == 2 and "cannot listen" in taken.stderr


def test_a_network_stream_that_goes_away_is_reopened(tmp_path, shared):
    """A real HTTP MJPEG camera (another run's web view) restarted mid-run: the viewer reconnects."""
    path = tmp_path / "camera.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    frame = cv2.resize(cv2.cvtColor(read_image(IMAGES / "parrot.jpg"), cv2.COLOR_RGB2BGR), (320, 240))
    for _ in range(6):
        writer.write(frame)
    writer.release()
    port = free_port()

    def camera(stop: threading.Event) -> threading.Thread:
        config = AppConfig(str(IMAGENET_MODEL), source=str(path), loop=True, web=f"127.0.0.1:{port}", num_threads=1)
        thread = threading.Thread(target=run, args=(config,), kwargs={"stop": stop}, daemon=True)
        thread.start()
        return thread

    first_stop, second_stop, viewer_stop, result = threading.Event(), threading.Event(), threading.Event(), {}
    first = camera(first_stop)
    wait_for_status(f"http://127.0.0.1:{port}")
    log = tmp_path / "viewer.jsonl"
    viewer_config = AppConfig(str(IMAGENET_MODEL), source=f"http://127.0.0.1:{port}/stream.mjpg", log=str(log),
                              num_threads=1, duration=60)
    viewer = threading.Thread(target=lambda: result.update(stats=run(viewer_config, stop=viewer_stop)), daemon=True)
    viewer.start()

    def events() -> list[str]:
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [r["event"] for r in lines if "event" in r]

    def frames() -> int:
        return log.read_text().count('"frame"') if log.exists() else 0

    def wait(condition, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    wait(lambda: frames() >= 3, "the viewer's first frames")
    first_stop.set()  # the camera goes away...
    first.join(timeout=30)
    wait(lambda: "source_lost" in events(), "the viewer to notice")
    second = camera(second_stop)  # ...and comes back on the same address
    wait(lambda: "source_reopened" in events(), "the viewer to reconnect")
    seen = frames()
    wait(lambda: frames() > seen + 2, "frames after the reconnect")
    viewer_stop.set()
    viewer.join(timeout=30)
    second_stop.set()
    second.join(timeout=30)
    stats = result["stats"]
    assert stats.reopens >= 1 and stats.labels.get("macaw", 0) == stats.frames
    assert events()[:2] == ["source_lost", "source_reopened"]


def test_requests_for_another_host_name_are_refused(live_app):
    """DNS rebinding: a page whose own name resolves to 127.0.0.1 must not reach the kiosk."""
    wait_for_status(live_app)
    port = live_app.rsplit(":", 1)[1]
    for host, allowed in ((f"127.0.0.1:{port}", True), (f"localhost:{port}", True), ("localhost", True),
                          (f"evil.example:{port}", False), ("", False)):
        request = urllib.request.Request(live_app + "/status", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                code = response.status
        except urllib.error.HTTPError as e:
            code = e.code
        assert (code == 200) == allowed, (host, code)
