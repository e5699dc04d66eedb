"""``edgecls fleet pull`` end to end: real devices (device.py processes, one real ``edgecls run --collect``), a real
broker, the host command in a subprocess; real field photos from ../shared/datasets/plantdoc-field."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from broker_support import wait_until
from support import IMAGENET_MODEL, REPO, SHARED, run_cli, write_video

from edge_app.runtime.signing import load_private_key, sign_model, sign_request

FIELD = SHARED / "datasets" / "plantdoc-field"
DEVICE = REPO / "tests" / "edge_app" / "link" / "device.py"


def photos(cls: str, n: int, start: int = 0) -> list[Path]:
    found = sorted((FIELD / cls).glob("*.jpg"))[start:start + n]
    assert len(found) == n, f"{FIELD / cls} has too few photos"
    return found


def label(field: Path, cls: str, sources: list[Path], prefix: str = "f") -> list[str]:
    """Put ``sources`` in ``field/labelled/cls/`` as the kiosk's review leaves them (JPEG + collector sidecar)."""
    folder = field / "labelled" / cls
    folder.mkdir(parents=True, exist_ok=True)
    shas = []
    for i, source in enumerate(sources):
        name = f"{prefix}{i:03d}-{cls[:10]}"
        shutil.copy(source, folder / f"{name}.jpg")
        (folder / f"{name}.json").write_text(json.dumps({
            "id": name, "t": 1718000000.5 + i, "frame": 100 + i, "why": "low_score", "label": "tomato_healthy",
            "score": 0.41, "novelty": 0.2, "top": [["tomato_healthy", 0.41]], "model_sha256": "cd" * 32,
            "source": "picamera", "signature": {"pixels": [1, 2, 3]}}))
        shas.append(hashlib.sha256(source.read_bytes()).hexdigest())
    return shas


def files(out: Path) -> dict[str, set[str]]:
    """The class folders of ``out`` and the photo names in each."""
    return {d.name: {f.name for f in d.iterdir()} for d in sorted(out.iterdir()) if d.is_dir()}


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture
def kiosk(broker, keys, tmp_path, subscribe):
    """``kiosk(device_id, field=True, trust="good", **pull)`` → its ``--collect`` folder; a device.py process, online."""
    procs = []
    statuses = subscribe("edgecls/+/status")

    def start(device_id: str, field: bool = True, trust: str | None = "good", **pull) -> Path:
        folder = tmp_path / device_id
        folder.mkdir()
        config = folder / "device.json"
        config.write_text(json.dumps({
            "url": broker.url, "device_id": device_id, "folder": str(folder),
            "trust": str(keys[trust][1]) if trust else None, "field_folder": str(folder / "field") if field else None,
            "hostname": f"{device_id}.lan", "pull_settle_s": 0, **{f"pull_{k}": v for k, v in pull.items()}}))
        proc = subprocess.Popen([sys.executable, str(DEVICE), str(config)], stdout=subprocess.PIPE, text=True,
                                cwd=REPO)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "started"
        statuses.wait_for("status", lambda s: s["device_id"] == device_id and s["online"])
        start.procs[device_id] = proc
        return folder / "field"

    start.procs = {}
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def pull(broker, keys, out: Path, *args, key: str = "good", to: str = "kiosk-*", timeout_s: float = 10):
    return run_cli("fleet", "pull", "--to", to, "--key", keys[key][0], "--out", out, "--broker", broker.url,
                   "--wait", 0.5, "--timeout", timeout_s, *args, timeout=120)


def rows(done) -> dict[str, dict]:
    return {r["device_id"]: r for r in json.loads(done.stdout)["devices"]}


def test_two_kiosks_photos_come_home_as_class_folders_with_a_manifest_once(broker, kiosk, keys, tmp_path, subscribe):
    one, two = kiosk("kiosk-1"), kiosk("kiosk-2")
    healthy = label(one, "tomato_healthy", photos("tomato_healthy", 3))
    blight = label(one, "potato_late_blight", photos("potato_late_blight", 2))
    healthy += label(two, "tomato_healthy", photos("tomato_healthy", 2, start=3))
    wire = subscribe("edgecls/+/pull")
    out = tmp_path / "pulled"

    done = pull(broker, keys, out, "--json")
    assert done.returncode == 0, done.stderr
    got = rows(done)
    assert [(r["result"], r["photos"], r["new"]) for r in got.values()] == [("done", 5, 5), ("done", 2, 2)]
    assert got["kiosk-1"]["bytes"] == sum(p.stat().st_size for p in (one / "labelled").rglob("*.jpg"))
    assert files(out) == {"potato_late_blight": {f"{s[:16]}.jpg" for s in blight},
                          "tomato_healthy": {f"{s[:16]}.jpg" for s in healthy}}
    for sha in healthy:
        assert hashlib.sha256((out / "tomato_healthy" / f"{sha[:16]}.jpg").read_bytes()).hexdigest() == sha
    lines = manifest(out)
    assert sorted(r["sha256"] for r in lines) == sorted(healthy + blight)
    first = next(r for r in lines if r["device"] == "kiosk-2")
    assert first["label"] == "tomato_healthy" and first["hostname"] == "kiosk-2.lan" and first["source"] == "picamera"
    assert first["why"] == "low_score" and first["model_sha256"] == "cd" * 32 and first["novelty"] == 0.2
    assert first["t"] == 1718000000.5 and first["mtime"] > 0 and first["size_bytes"] > 1000
    assert first["model_label"] == "tomato_healthy" and first["path"] == f"tomato_healthy/{first['sha256'][:16]}.jpg"
    assert (out / ".pull-state.json").is_file()

    # The readers of class folders read it as it is; the manifest says which device sent what.
    from edge_app.runtime.labelled import labelled_folder, photo_devices

    items, _ = labelled_folder(out, ["potato_late_blight", "tomato_healthy"])
    assert len(items) == 7
    assert photo_devices(out, [p for p, _ in items]) == {"kiosk-1": 5, "kiosk-2": 2}

    sent = len([b for b in wire.bodies("pull") if "data" in b])
    again = pull(broker, keys, out, "--json")
    assert again.returncode == 0, again.stderr
    assert [(r["result"], r["photos"]) for r in rows(again).values()] == [("done", 0), ("done", 0)]
    assert len(manifest(out)) == 7
    wait_until(lambda: len([b for b in wire.bodies("pull") if b.get("done")]) == 4, what="both pulls' ends")
    assert len([b for b in wire.bodies("pull") if "data" in b]) == sent == 7  # the second pull sent nothing


def test_an_interrupted_pull_continues_where_it_stopped_and_sends_nothing_twice(broker, kiosk, keys, tmp_path,
                                                                                 subscribe):
    field = kiosk("kiosk-1", chunk_bytes=1024)  # a photo in ~30 messages: a pull long enough to be killed in
    shas = label(field, "tomato_leaf_mold", photos("tomato_leaf_mold", 30))
    wire = subscribe("edgecls/kiosk-1/pull")
    out = tmp_path / "pulled"

    limited = pull(broker, keys, out, "--max-photos", 4, "--json")
    assert limited.returncode == 0, limited.stderr
    (row,) = rows(limited).values()
    assert (row["new"], row["more"], row["result"]) == (4, True, "done") and "more wait" in row["reason"]

    host = subprocess.Popen([sys.executable, "-m", "edgecls", "fleet", "pull", "--to", "kiosk-1", "--key",
                             str(keys["good"][0]), "--out", str(out), "--broker", broker.url, "--wait", "0.5"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(list(out.rglob("*.jpg"))) >= 7, 60, "a few photos of the second pull")
        host.send_signal(signal.SIGKILL)  # the host dies mid-photo: no goodbye, a photo half received
    finally:
        host.kill()
        host.wait()
    written = {r["name"] for r in manifest(out)}
    assert 7 <= len(written) < 30, "the pull was not interrupted half-way"

    final = pull(broker, keys, out, "--json")
    assert final.returncode == 0, final.stderr
    assert len(list(out.rglob("*.jpg"))) == 30 and sorted(r["sha256"] for r in manifest(out)) == sorted(shas)
    requests = list(dict.fromkeys(b["id"] for b in wire.bodies("pull")))
    assert len(requests) == 3
    last = {b["name"] for b in wire.bodies("pull") if b["id"] == requests[2] and b.get("part") == 0}
    first = {b["name"] for b in wire.bodies("pull") if b["id"] == requests[0] and b.get("part") == 0}
    assert not last & written and last | written == {r["name"] for r in manifest(out)}
    second = {b["name"] for b in wire.bodies("pull") if b["id"] == requests[1] and b.get("part") == 0}
    assert not second & first  # the limited pull's photos were not asked for again
    assert rows(final)["kiosk-1"]["new"] == 30 - len(written)


def test_a_pull_not_signed_by_the_fleet_key_gets_nothing(broker, kiosk, keys, tmp_path, subscribe):
    field = kiosk("kiosk-1")
    label(field, "tomato_healthy", photos("tomato_healthy", 2))
    wire = subscribe("edgecls/kiosk-1/pull", "edgecls/kiosk-1/ack")
    out = tmp_path / "pulled"

    done = pull(broker, keys, out, key="other")
    assert done.returncode == 1
    assert "refused" in done.stdout and "does not verify" in done.stdout
    assert "did not send their photos" in done.stderr.strip().splitlines()[-1]
    assert not list(out.rglob("*.jpg"))

    good = load_private_key(keys["good"][0])
    base = {"id": "?", "device_id": "kiosk-1", "after": None, "max_photos": 10, "max_bytes": 10 ** 8,
            "t": int(time.time())}  # the id first, as the host puts it: a refusal names it even unverified
    model_signed = sign_model(good, b"x")
    cases = {
        "unsigned": ({**base, "id": "unsigned"}, "not signed"),
        "forged": ({**base, "id": "forged", "signature": base64.b64encode(os.urandom(64)).decode()}, "does not verify"),
        "other-device": (sign_request(good, "pull", {**base, "id": "other-device", "device_id": "kiosk-2"}),
                         "for device 'kiosk-2'"),
        "stale": (sign_request(good, "pull", {**base, "id": "stale", "t": int(time.time()) - 700}), "stale"),
        "tampered": ({**sign_request(good, "pull", {**base, "id": "tampered"}), "after": [0, "a/b.jpg"]},
                     "does not verify"),
        # A model's signature (domain edgecls-model-v1:) is no request's.
        "model-sig": ({**base, "id": "model-sig", "signature": model_signed["signature"]}, "does not verify"),
    }
    for body, _ in cases.values():
        wire.publish("edgecls/kiosk-1/cmd/pull", json.dumps(body))
    acks = wait_until(lambda: {a["id"]: a for a in wire.bodies("ack") if a["id"] in cases} if
                      len([a for a in wire.bodies("ack") if a["id"] in cases]) == len(cases) else None, what="acks")
    for request, (_, says) in cases.items():
        assert acks[request]["accepted"] is False and acks[request]["cmd"] == "pull", acks[request]
        assert says in acks[request]["reason"], (request, acks[request]["reason"])
    time.sleep(0.3)
    assert [b for b in wire.bodies("pull") if b.get("id") in cases or "data" in b] == []


def test_duplicates_and_conflicts_between_kiosks_are_reported_never_merged(broker, kiosk, keys, tmp_path):
    one, two = kiosk("kiosk-1"), kiosk("kiosk-2")
    (same,) = label(one, "tomato_healthy", photos("tomato_healthy", 1))
    label(two, "tomato_healthy", photos("tomato_healthy", 1), prefix="g")
    (disputed,) = label(one, "tomato_mosaic_virus", photos("tomato_mosaic_virus", 1))
    label(two, "tomato_leaf_mold", photos("tomato_mosaic_virus", 1), prefix="g")
    (own,) = label(two, "tomato_leaf_mold", photos("tomato_leaf_mold", 1, start=5), prefix="h")
    out = tmp_path / "pulled"

    done = pull(broker, keys, out, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["duplicates"] == [{"sha256": same, "label": "tomato_healthy", "path": f"tomato_healthy/{same[:16]}.jpg",
                                     "devices": ["kiosk-1", "kiosk-2"]}]
    assert report["conflicts"] == [{"sha256": disputed, "sent": [{"device": "kiosk-1", "label": "tomato_mosaic_virus"},
                                                                 {"device": "kiosk-2", "label": "tomato_leaf_mold"}]}]
    assert sum(r["duplicates"] for r in report["devices"]) == 1 and sum(r["conflicts"] for r in report["devices"]) == 1
    # the disputed photo is in neither class, and a class it alone made is gone (whichever device came first)
    assert files(out) == {"tomato_healthy": {f"{same[:16]}.jpg"}, "tomato_leaf_mold": {f"{own[:16]}.jpg"}}
    lines = manifest(out)
    assert sorted(r["device"] for r in lines if r["sha256"] == same) == ["kiosk-1", "kiosk-2"]
    assert any(r["sha256"] == disputed and r.get("conflict") for r in lines)

    from fleet.report import pull_table

    table = pull_table(report["devices"], report["duplicates"], report["conflicts"])
    assert f"# duplicate {same[:16]}: tomato_healthy from kiosk-1, kiosk-2" in table
    assert "kiosk-1 says tomato_mosaic_virus, kiosk-2 says tomato_leaf_mold (kept out of every class)" in table


def test_offline_silent_and_collectless_devices_are_listed_without_waiting_for_ever(broker, kiosk, keys, tmp_path,
                                                                                     subscribe):
    kiosk("kiosk-1", field=False)
    label(kiosk("kiosk-2"), "tomato_healthy", photos("tomato_healthy", 1))
    gone = kiosk.procs["kiosk-2"]
    gone.send_signal(signal.SIGTERM)  # a clean stop: its status says online: false
    gone.wait(timeout=30)
    ghost = subscribe("edgecls/kiosk-2/status")
    ghost.wait_for("status", lambda s: not s["online"])
    # A device whose status says online but that answers nothing (its last will not yet published).
    ghost.client.publish("edgecls/kiosk-3/status", json.dumps({"device_id": "kiosk-3", "online": True}), qos=1,
                         retain=True).wait_for_publish(10)

    started = time.monotonic()
    done = pull(broker, keys, tmp_path / "pulled", "--json", timeout_s=2)
    assert time.monotonic() - started < 60
    assert done.returncode == 1
    got = rows(done)
    assert got["kiosk-1"]["result"] == "refused" and "without --collect" in got["kiosk-1"]["reason"]
    assert got["kiosk-2"]["result"] == "not sent" and "offline" in got["kiosk-2"]["reason"]
    assert got["kiosk-3"]["result"] == "no answer" and "within 2 s" in got["kiosk-3"]["reason"]
    assert "3 of 3 device(s) did not send their photos" in done.stderr.strip().splitlines()[-1]


def test_a_hostile_device_writes_nothing_outside_the_folder(broker, keys, tmp_path, subscribe):
    """A device holding no key of ours answers with paths, reserved names, lies about sizes and non-images."""
    fake = subscribe("edgecls/evil-1/cmd/pull")
    fake.client.publish("edgecls/evil-1/status", json.dumps({"device_id": "evil-1", "online": True}), qos=1,
                        retain=True).wait_for_publish(10)
    out = tmp_path / "data" / "pulled"
    host = subprocess.Popen([sys.executable, "-m", "edgecls", "fleet", "pull", "--to", "evil-1", "--key",
                             str(keys["good"][0]), "--out", str(out), "--broker", broker.url, "--wait", "0.5",
                             "--timeout", "10", "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        request = fake.wait_for("cmd/pull")["id"]
        jpeg = photos("tomato_healthy", 1)[0].read_bytes()
        big = 17 * 1024 * 1024

        def photo(seq, label, data, **lie):
            head = {"id": request, "seq": seq, "name": f"p{seq}", "label": label, "key": [seq + 1, f"x/{seq}.jpg"],
                    "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "part": 0, "parts": 1,
                    "facts": {"t": float("nan"), "why": "x" * 5000}, "data": base64.b64encode(data).decode()}
            return json.dumps({**head, **lie})

        fake.publish("edgecls/evil-1/ack", json.dumps({"id": request, "cmd": "pull", "accepted": True,
                                                        "state": "running", "photos": 7}))
        for message in [photo(0, "../../escaped", jpeg), photo(1, "Unknown", jpeg), photo(2, "leaf", b"MZ" + jpeg),
                        photo(3, "leaf", jpeg, size=big), photo(4, "leaf", jpeg, sha256="0" * 64),
                        photo(5, "/etc", jpeg), photo(6, "leaf", jpeg),
                        json.dumps({"id": request, "done": True, "sent": 7, "more": False})]:
            fake.publish("edgecls/evil-1/pull", message)
        stdout, stderr = host.communicate(timeout=60)
    finally:
        host.kill()
    assert host.returncode == 0, stderr
    (row,) = json.loads(stdout)["devices"]
    assert (row["refused"], row["new"]) == (6, 1)
    written = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "data").rglob("*") if p.is_file())
    sha = hashlib.sha256(jpeg).hexdigest()
    assert written == ["data/pulled/.pull-state.json", "data/pulled/.pull.lock", f"data/pulled/leaf/{sha[:16]}.jpg",
                       "data/pulled/manifest.jsonl"]
    (line,) = manifest(out)
    assert line["t"] is None and len(line["why"]) == 200  # a NaN and 5,000 characters are not kept as they came
    state = json.loads((out / ".pull-state.json").read_text())
    assert state["devices"]["evil-1"]["after"] == [7, "x/6.jpg"]


def test_a_kiosk_running_edgecls_run_sends_its_labelled_frames(broker, keys, tmp_path, subscribe):
    """The composition: ``edgecls run --collect DIR --mqtt`` answers a pull from DIR/labelled/."""
    model = tmp_path / "model.tflite"
    shutil.copy(IMAGENET_MODEL, model)
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 10)], size=(320, 240))
    collect = tmp_path / "field"
    shas = label(collect, "macaw", photos("tomato_healthy", 2))
    statuses = subscribe("edgecls/kiosk-9/status")
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(video), "--loop",
                             "--threads", "1", "--collect", str(collect), "--mqtt", broker.url, "--device-id",
                             "kiosk-9", "--trust", str(keys["good"][1])], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        statuses.wait_for("status", lambda s: s["online"], 60)
        time.sleep(2.1)  # photos moved in during the last 2 s wait for the next pull
        done = pull(broker, keys, tmp_path / "pulled", "--json", to="kiosk-9")
    finally:
        proc.kill()
        proc.wait()
    assert done.returncode == 0, done.stderr
    assert files(tmp_path / "pulled") == {"macaw": {f"{s[:16]}.jpg" for s in shas}}


def test_the_device_sends_regular_photos_only_oldest_first(tmp_path):
    from edge_app.link.pull import labelled_photos

    folder = tmp_path / "labelled" / "leaf"
    folder.mkdir(parents=True)
    for name in ("b.jpg", "a.jpg", "c.png"):
        (folder / name).write_bytes(b"\xff\xd8\xff" + name.encode())
        time.sleep(0.01)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "link.jpg").symlink_to("/etc/passwd")
    (folder / "notes.txt").write_text("not a photo")
    with open(folder / "huge.jpg", "wb") as f:
        f.truncate(17 * 1024 * 1024)  # sparse: 17 MB said, nothing on disk
    (tmp_path / "labelled" / "_hidden").mkdir()
    (tmp_path / "labelled" / "_hidden" / "x.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "labelled" / "elsewhere").symlink_to(tmp_path)
    too_big: set[str] = set()
    found = labelled_photos(tmp_path, too_big=too_big)
    assert [p.key[1] for p in found] == ["leaf/b.jpg", "leaf/a.jpg", "leaf/c.png"] and too_big == {"leaf/huge.jpg"}
    assert [p.key[1] for p in labelled_photos(tmp_path, after=found[0].key)] == ["leaf/a.jpg", "leaf/c.png"]
    os.replace(folder / "b.jpg", folder / "d.jpg")  # a review's move: mtime kept, ctime now
    assert [p.key[1] for p in labelled_photos(tmp_path, after=found[-1].key)] == ["leaf/d.jpg"]
    assert labelled_photos(tmp_path, settled_before_ns=found[0].key[0]) == []
