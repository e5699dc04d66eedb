"""What every test area shares: where the real models and photos are, and a CLI runner.

Imported as ``from support import ...`` (tests/ is on sys.path through its conftest); a module of
its own, because several conftest.py files in tests/ would make ``from conftest import`` ambiguous.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
IMAGES = SHARED / "images"
IMAGENET_MODEL = MODELS / "mobilenet_v2_1.0_224_quant.tflite"
BIRD_MODEL = MODELS / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"
EDGETPU_MODEL = MODELS / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite"
POTATO = SHARED / "datasets" / "plantvillage-potato"


def missing(reason: str) -> None:
    """Skip for want of a real part (a broker, a browser), or fail where ``.ci/run`` promised it.

    ``.ci/run`` installs Mosquitto, Chromium and Prometheus from Debian's packages and sets
    ``EDGECLS_REQUIRE_REAL=1``, so that in CI these tests pass or fail, never quietly skip.
    """
    import pytest

    if os.environ.get("EDGECLS_REQUIRE_REAL"):
        pytest.fail(f"{reason} (EDGECLS_REQUIRE_REAL is set: .ci/run installs it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def run_cli(*args: str | os.PathLike, module: str = "edgecls", env: dict | None = None,
            timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> ARGS`` in a subprocess, as a user would, and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO, input=input)


def can_unshare() -> bool:
    """Whether this process may make a private mount namespace (root with unshare(1)): read-only and tiny disks."""
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


def run_cli_read_only(folder: str | os.PathLike, *args: str | os.PathLike,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m edgecls ARGS`` with ``folder`` mounted read-only (a private mount namespace; root only)."""
    script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), sys.executable, "-m", "edgecls",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def write_video(path: Path, names_and_counts, size=(640, 480), fps=15) -> Path:
    """An MJPG .avi of real photos, each repeated ``count`` frames."""
    import cv2

    from edge_app.runtime import read_image

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for name, count in names_and_counts:
        frame = cv2.resize(cv2.cvtColor(read_image(IMAGES / name), cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA)
        for _ in range(count):
            writer.write(frame)
    writer.release()
    return path


def read_log(path: Path) -> tuple[dict, list[dict], list[dict]]:
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert "header" in records[0]
    frames = [r for r in records if "frame" in r]
    events = [r for r in records if "event" in r]
    return records[0]["header"], frames, events


def log_records(path: Path) -> list[dict]:
    """The whole lines of a JSONL log that a running process is still writing (none before it exists)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_until(condition, timeout_s: float = 20.0, what: str = "the condition"):
    """Poll ``condition()`` until it returns something truthy (returned), or fail after ``timeout_s``."""
    import pytest

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


TOKEN = "a-kiosk-token-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Kiosk:
    """A tiny client: JSON in and out, the token and headers as a browser (or an attacker) would send them."""

    TOKEN_HEADER = "X-Edgecls-Token"  # edge_app.kiosk.server.TOKEN_HEADER, spelled out: a client sees only the wire

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, path: str, body=None, method: str | None = None, token: str | None = TOKEN,
             headers: dict | None = None, raw: bytes | None = None) -> tuple[int, dict | bytes]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method or ("POST" if data is not None else "GET"))
        if data is not None and raw is None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header(self.TOKEN_HEADER, token)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                code, payload, kind = response.status, response.read(), response.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            code, payload, kind = e.code, e.read(), e.headers.get("Content-Type")
        return code, json.loads(payload) if kind == "application/json" else payload

    def until(self, path: str, predicate, timeout: float = 120.0):
        deadline, got = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                code, got = self.call(path)
            except urllib.error.URLError as e:  # the server is not listening yet
                code, got = 0, e
            if code == 200 and predicate(got):
                return got
            time.sleep(0.2)
        raise AssertionError(f"{path}: waited {timeout} s; last {got}")


@contextlib.contextmanager
def running_kiosk(tmp_path: Path, source: Path | None = None, collected: int = 6, **settings):
    """``edgecls run --web --collect --learn`` in a thread on ``tmp_path/model.tflite`` (Coral's ImageNet model
    unless the test put one there) and ``source`` (a looping video of the parrot unless given); yields a
    :class:`Kiosk` once ``collected`` frames wait for review. ``settings``: other :class:`AppConfig` fields."""
    import shutil
    import threading

    from edge_app.live.app import AppConfig, run

    model = tmp_path / "model.tflite"
    if not model.exists():
        shutil.copy(IMAGENET_MODEL, model)
    if source is None:
        source = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 60)], size=(320, 240))
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()
    config = AppConfig(str(model), source=str(source), loop=True, num_threads=1, web=f"127.0.0.1:{port}",
                       log=str(tmp_path / "run.jsonl"), collect=str(tmp_path / "field"), learn=True,
                       token_file=str(tmp_path / "token"),
                       **{"collect_below": 1.0, "collect_every": 0.1, "collect_max": 12, **settings})
    stop, out = threading.Event(), {}

    def target():
        try:
            out["stats"] = run(config, stop=stop)
        except Exception as e:
            out["error"] = e
            raise

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    client = Kiosk(port)
    try:
        client.until("/api/collected", lambda got: len(got["items"]) >= collected, timeout=60)
        yield client
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and "error" not in out, out


# A swap test's expectations on the real bird model, and the way a deploy replaces a model file.
PARROT, BIRD_PARROT = "macaw", "Ara macao (Scarlet Macaw)"


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a clean stop: the process says goodbye), then SIGKILL if it is still there after ``timeout``."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def replace_atomically(model: Path, data: bytes) -> None:
    tmp = model.with_name(".incoming.tflite")
    tmp.write_bytes(data)
    os.replace(tmp, model)


def wait_for(predicate, timeout: float = 60.0, what: str = "it", run: tuple | None = None):
    """Poll ``predicate``; ``run`` = (thread, out) of an in-process run that must still be going."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if run is not None and not run[0].is_alive():
            raise AssertionError(f"the run ended while waiting for {what}: {run[1]}")
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s for {what}")


POTATO_CLASSES = ("Potato___Early_blight", "Potato___Late_blight", "Potato___healthy")


def potato_subset(root: Path, classes=POTATO_CLASSES, per_class: int = 15, offset: int = 0) -> Path:
    """``root/<class>/`` with ``per_class`` real potato photos each (symlinks: the dataset is not copied)."""
    for label in classes:
        folder = root / label
        folder.mkdir(parents=True)
        for photo in sorted((POTATO / label).iterdir())[offset:offset + per_class]:
            (folder / photo.name).symlink_to(photo)
    return root
