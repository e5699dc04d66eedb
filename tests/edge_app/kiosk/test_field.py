"""The field loop through the real kiosk HTTP server: collect, review, teach, apply (a real ``edgecls learn``
child process), live swap, undo — and everything that must be refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import IMAGENET_MODEL, IMAGES, REPO, TOKEN, Kiosk, free_port, run_cli, running_kiosk, write_video

from edge_app.kiosk.review import Refused, check_class_name
from edge_app.kiosk.server import WebView
from edge_app.live.app import AppConfig, run
from edge_app.runtime.artifact import read_artifact

NEW = "red bird"


@pytest.fixture
def kiosk(tmp_path, shared):
    with running_kiosk(tmp_path) as client:
        yield client, tmp_path


def test_review_teach_apply_and_undo_through_the_kiosk(kiosk):
    client, root = kiosk
    field = root / "field"
    items = client.call("/api/collected")[1]["items"]
    assert all(item["why"] == "low_score" and item["label"] == "macaw" and item["model_sha256"] for item in items)
    assert client.call(f"/api/collected/{items[0]['id']}.jpg")[1][:2] == b"\xff\xd8"  # a JPEG

    for item in items[:3]:
        assert client.call("/api/label", {"id": item["id"], "label": f"  {NEW} "}) == (200, {"id": item["id"], "label": NEW})
    assert client.call("/api/discard", {"id": items[3]["id"]})[0] == 200
    assert sorted(p.name for p in (field / "labelled" / NEW).glob("*.jpg")) == sorted(f"{i['id']}.jpg" for i in items[:3])
    assert not (field / "inbox" / f"{items[3]['id']}.jpg").exists()

    code, taught = client.call("/api/teach", {"label": NEW, "frames": 10, "seconds": 1})
    assert code == 200 and taught["saved"] == 10 and "problem" not in taught, taught
    assert client.call("/api/classes")[1]["labelled"] == {NEW: 13}

    code, job = client.call("/api/apply", {})
    assert code == 202 and job["state"] == "learning"
    code, second = client.call("/api/apply", {})
    assert code == 409 and "already running" in second["error"]
    job = client.until("/api/job", lambda j: j["state"] not in ("learning", "swapping"), timeout=300)
    assert job["state"] == "applied", job
    assert job["new_labels"] == [NEW] and len(job["labels"]) == 1002
    assert job["val"]["accuracy"] == 1.0 and job["val_before"]["accuracy"] == 0.0  # ImageNet has no "red bird"
    client.until("/status", lambda s: s["label"] == NEW)
    running = read_artifact(root / "model.tflite")
    assert running.labels[-1] == NEW and len(running.labels) == 1002
    versions = client.call("/api/versions")[1]
    assert versions["history"] == ["v0001"] and (field / "models" / "origin.tflite").read_bytes() == IMAGENET_MODEL.read_bytes()

    code, undone = client.call("/api/undo", {})
    assert code == 200 and undone["running"] == "origin", undone
    client.until("/status", lambda s: s["label"] == "macaw")
    assert (root / "model.tflite").read_bytes() == IMAGENET_MODEL.read_bytes()
    assert client.call("/api/undo", {})[0] == 400  # nothing left to undo

    events = [json.loads(line) for line in (root / "run.jsonl").read_text().splitlines() if '"event"' in line]
    swaps = [e for e in events if e["event"] == "model_swapped"]
    assert len(swaps) == 2 and swaps[0]["new_sha256"] == swaps[1]["old_sha256"]


def test_the_kiosk_refuses_what_it_must(kiosk):
    client, root = kiosk
    item = client.call("/api/collected")[1]["items"][0]
    good = {"id": item["id"], "label": NEW}
    assert client.call("/api/label", good, token=None)[0] == 401
    assert client.call("/api/label", good, token="wrong" * 8)[0] == 401
    assert client.call("/api/label", good, headers={"Host": "evil.example:8080"})[0] == 403  # DNS rebinding
    assert client.call("/api/label", good, headers={"Origin": "http://evil.example"})[0] == 403  # another site's page
    assert client.call("/api/label")[0] == 405  # GET never changes anything
    assert client.call("/api/label", good, method="PUT")[0] == 405
    assert client.call("/api/label", raw=b"{not json", headers={"Content-Type": "application/json"})[0] == 400
    assert client.call("/api/label", raw=json.dumps(good).encode(), headers={"Content-Type": "text/plain"})[0] == 415
    assert client.call("/api/label", raw=b"x" * 70_000, headers={"Content-Type": "application/json"})[0] == 413
    for bad_label in ("../outside", "a/b", "", ".hidden", "x" * 65, "uncertain", "Unknown", 7):
        code, said = client.call("/api/label", {"id": item["id"], "label": bad_label})
        assert code == 400 and said["error"], bad_label
    for bad_id in ("../../run.jsonl", "/etc/passwd", "..", 5):
        assert client.call("/api/label", {"id": bad_id, "label": NEW})[0] == 400, bad_id
    assert client.call("/api/label", {"id": "20990101-000000-000-f1", "label": NEW})[0] == 404
    assert client.call("/api/teach", {"label": NEW, "frames": 100000})[0] == 400
    assert client.call("/api/apply", {})[0] == 400  # nothing labelled yet
    assert client.call("/api/nothing", {})[0] == 404
    assert not (root / "outside").exists() and not list((root / "field" / "labelled").rglob("*.jpg"))
    assert sorted(p.name for p in (root / "field").iterdir()) == ["inbox", "labelled"]


def test_a_label_that_looks_like_a_class_becomes_that_class_or_is_refused(kiosk):
    """Regression (hostile-input issue, defects 2 and 3): "Café" typed on two keyboards (one character for the
    accent, or two) made two classes shown the same after Apply; "UNKNOWN " became a class the kiosk's own
    verdict could not be told apart from."""
    client, root = kiosk
    labelled = root / "field" / "labelled"
    composed, decomposed = "Caf\u00e9", "Cafe\u0301"
    items = client.call("/api/collected")[1]["items"]
    assert client.call("/api/label", {"id": items[0]["id"], "label": composed}) == \
        (200, {"id": items[0]["id"], "label": composed})
    assert client.call("/api/label", {"id": items[1]["id"], "label": decomposed}) == \
        (200, {"id": items[1]["id"], "label": composed})  # the same class, in the spelling it already has
    code, said = client.call("/api/label", {"id": items[2]["id"], "label": "CAFE\u0301"})
    assert code == 400 and f"use {composed!r}" in said["error"], said
    code, said = client.call("/api/label", {"id": items[2]["id"], "label": "military-uniform"})
    assert code == 400 and "use 'military uniform'" in said["error"], said  # the model's class, '-' for ' '
    code, said = client.call("/api/relabel", {"id": items[1]["id"], "label": "caf\u00e9"})
    assert code == 400 and f"use {composed!r}" in said["error"], said
    code, said = client.call("/api/teach", {"label": "cafe\u0301", "frames": 1, "seconds": 0})
    assert code == 400 and f"use {composed!r}" in said["error"], said
    for reserved in ("UNKNOWN ", " Uncertain", "unknown"):
        code, said = client.call("/api/label", {"id": items[2]["id"], "label": reserved})
        assert code == 400 and "cannot be a class" in said["error"], (reserved, said)
    # A folder made with the other encoding (by hand, or before this check): a new label joins it.
    (labelled / "The\u0301").mkdir()
    assert client.call("/api/label", {"id": items[2]["id"], "label": "Th\u00e9"}) == \
        (200, {"id": items[2]["id"], "label": "The\u0301"})
    assert sorted(p.name for p in labelled.iterdir()) == [composed, "The\u0301"]
    assert client.call("/api/classes")[1]["labelled"] == {composed: 2, "The\u0301": 1}


def test_without_learn_the_page_takes_no_actions(shared):
    view = WebView("127.0.0.1", 0, token=None)
    view.start({"model": "m.tflite"})
    try:
        client = Kiosk(view.port)
        code, said = client.call("/api/label", {"id": "x", "label": "y"})
        assert code == 403 and "--learn" in said["error"]
        assert client.call("/api/collected")[0] == 404
        assert client.call("/status")[1]["learn"] is False
    finally:
        view.close()


def test_class_names_are_checked():
    assert check_class_name("  late   blight ") == "late blight"
    assert check_class_name("<b>mold") == "<b>mold"  # allowed: the page shows names as text, never as HTML
    assert check_class_name("\U0001F342" * 50) == "\U0001F342" * 50  # 200 bytes: a folder name still fits
    for bad in ("a/b", "a\\b", ".x", "_x", "x\x07y", "", "Uncertain", None, "\U0001F342" * 51, "\ud800"):
        with pytest.raises(Refused):
            check_class_name(bad)


def test_collection_pauses_when_the_disk_is_nearly_full_and_classification_goes_on(tmp_path, shared):
    from edge_app.frames.sinks import Result
    from edge_app.frames.sources import Frame
    from edge_app.kiosk.collect import CollectConfig, FrameCollector

    events = []
    collector = FrameCollector(CollectConfig(tmp_path / "field", every_s=0, min_free_mb=1e12),
                               on_event=lambda name, detail, **f: events.append((name, detail)))
    collector.start({"source": "test"})
    image = __import__("numpy").zeros((8, 8, 3), "uint8")
    for i in range(3):
        collector.update(Frame(image, "RGB", i, time.time()), Result(i, time.time(), "a", 0.1, top_k=[("a", 0.1), ("b", 0.05)]))
        time.sleep(0.2)
    collector.close()
    assert events and events[0][0] == "collection_paused" and "MB free" in events[0][1]
    assert collector.collected == 0 and not list((tmp_path / "field" / "inbox").iterdir())


def test_learn_needs_collect_and_web(tmp_path):
    from edge_app.runtime.errors import EdgeclsError

    with pytest.raises(EdgeclsError, match="--learn needs --collect"):
        AppConfig(str(IMAGENET_MODEL), learn=True, web="127.0.0.1:8080")


def _processes_with(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the learn child")
def test_kill_9_during_an_apply_leaves_a_model_that_starts(tmp_path, shared):
    """The kiosk killed while learning: no learn left running, no half file, and the next start runs."""
    model = tmp_path / "model.tflite"
    shutil.copy(IMAGENET_MODEL, model)
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 30)], size=(320, 240))
    labelled = tmp_path / "field" / "labelled" / NEW
    labelled.mkdir(parents=True)
    for i in range(40):
        shutil.copy(IMAGES / "parrot.jpg", labelled / f"p{i}.jpg")
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(video), "--loop",
                             "--threads", "1", "--web", f"127.0.0.1:{port}", "--collect", str(tmp_path / "field"),
                             "--learn", "--token-file", str(tmp_path / "token")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Kiosk(port)
        client.until("/status", lambda s: s["label"] == "macaw", timeout=60)
        assert client.call("/api/apply", {})[0] == 202
        deadline = time.monotonic() + 60
        while not _processes_with(str(tmp_path / "field" / "labelled")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_with(str(tmp_path / "field" / "labelled")), "the learn child never started"
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while _processes_with(str(tmp_path / "field" / "labelled")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_with(str(tmp_path / "field" / "labelled")), "the learn child outlived the kiosk"
    assert model.read_bytes() == IMAGENET_MODEL.read_bytes()
    assert not [p.name for p in tmp_path.glob(".model.tflite*")]
    again = run_cli("run", model, "--source", video, "--max-frames", "3", "--threads", "1", timeout=120)
    assert again.returncode == 0 and "macaw" in again.stderr, again.stderr


def test_a_start_after_an_interrupted_install_puts_back_the_model_it_replaced(tmp_path, shared, caplog):
    """``install`` keeps the running model as ``.NAME.previous`` until the new one is accepted; a kill -9 in
    between left a model that may not load. The next start checks it and puts the previous one back."""
    model = tmp_path / "model.tflite"
    model.write_bytes(IMAGENET_MODEL.read_bytes()[:100_000])  # the half-checked new model: damaged
    (tmp_path / ".model.tflite.previous").write_bytes(IMAGENET_MODEL.read_bytes())
    (tmp_path / ".model.tflite.x1y2.tmp").write_bytes(b"half a write")
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 3)], size=(320, 240))
    with caplog.at_level("WARNING", logger="edgecls"):
        stats = run(AppConfig(str(model), source=str(video), num_threads=1))
    assert stats.frames == 3 and stats.labels == {"macaw": 3}
    assert "putting back the model it replaced" in caplog.text
    assert model.read_bytes() == IMAGENET_MODEL.read_bytes() and not list(tmp_path.glob(".model.tflite*"))
