"""Signed deploys and remote benchmarks end to end: ``edgecls fleet`` in a subprocess, a device link, a real broker."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import threading

import pytest
from broker_support import wait_until
from support import IMAGENET_MODEL, run_cli

from edge_app.runtime.signing import load_private_key, load_public_key, sign_model


class Installer:
    """Records what the link hands over, as the live app's swapper would receive it."""

    def __init__(self, answer: tuple[bool, str] = (True, "swapped in")):
        self.calls: list[tuple[bytes, str]] = []
        self.answer = answer

    def __call__(self, data: bytes, origin: str) -> tuple[bool, str, str]:
        import hashlib

        self.calls.append((data, origin))
        return (*self.answer, hashlib.sha256(data).hexdigest())


@pytest.fixture
def device(broker, make_link, keys, info):
    """``device(device_id, trust=True, answer=(True, "..."), **link_kwargs)`` → (link, installer), connected."""
    def make(device_id: str = "kiosk-1", trust: bool = True, answer=(True, "swapped in"), **kwargs):
        installer = Installer(answer)
        link = make_link(broker.url, device_id, trust=keys["good"][1] if trust else None, installer=installer,
                         status_every_s=0.5, **kwargs)
        link.start(info)
        wait_until(lambda: link.connected, what=f"{device_id} to connect")
        return link, installer

    return make


def fleet(*args, timeout: float = 120):
    return run_cli("fleet", *map(str, args), timeout=timeout)


def test_a_deploy_signed_with_the_trusted_key_is_installed_byte_for_byte(broker, device, keys):
    _, installer = device("kiosk-1")
    _, other = device("kiosk-2")
    done = fleet("deploy", IMAGENET_MODEL, "--to", "kiosk-1", "--key", keys["good"][0], "--broker", broker.url,
                 "--wait", 1, "--timeout", 60)
    assert done.returncode == 0, done.stdout + done.stderr
    ((data, origin),) = installer.calls
    assert data == IMAGENET_MODEL.read_bytes() and IMAGENET_MODEL.name in origin
    assert other.calls == []  # not a target
    assert "kiosk-1" in done.stdout and "accepted" in done.stdout and "swapped in" in done.stdout


def test_deploy_acks_as_json_to_a_glob_of_devices(broker, device, keys):
    installers = [device(f"pi-{i}")[1] for i in (1, 2)]
    done = fleet("deploy", IMAGENET_MODEL, "--to", "pi-*", "--key", keys["good"][0], "--broker", broker.url,
                 "--wait", 1, "--json")
    assert done.returncode == 0, done.stderr
    acks = json.loads(done.stdout)
    assert [a["device_id"] for a in acks] == ["pi-1", "pi-2"] and all(a["accepted"] for a in acks)
    assert all(a["cmd"] == "model" and len(a["sha256"]) == 64 for a in acks)
    assert all(len(i.calls) == 1 for i in installers)


def test_a_deploy_signed_with_another_key_is_rejected_and_never_installed(broker, device, keys):
    _, installer = device("kiosk-1")
    done = fleet("deploy", IMAGENET_MODEL, "--to", "kiosk-1", "--key", keys["other"][0], "--broker", broker.url,
                 "--wait", 1, "--timeout", 60)
    assert done.returncode == 1
    assert "rejected" in done.stdout and "does not verify" in done.stdout
    assert "trusts key" in done.stderr  # warned before sending: the device's status names the key it trusts
    assert "did not take model" in done.stderr.strip().splitlines()[-1]
    assert installer.calls == []


def test_a_device_without_trust_refuses_every_deploy(broker, device, keys):
    _, installer = device("kiosk-1", trust=False)
    done = fleet("deploy", IMAGENET_MODEL, "--to", "kiosk-1", "--key", keys["good"][0], "--broker", broker.url,
                 "--wait", 1, "--timeout", 60)
    assert done.returncode == 1 and "without --trust" in done.stdout and installer.calls == []


def test_a_model_that_fails_validation_is_reported_rejected(broker, device, keys):
    device("kiosk-1", answer=(False, "rolled back: the model's output does not match the labels"))
    done = fleet("deploy", IMAGENET_MODEL, "--to", "kiosk-1", "--key", keys["good"][0], "--broker", broker.url,
                 "--wait", 1)
    assert done.returncode == 1 and "rolled back" in done.stdout


def test_bad_deploy_input_exits_2_in_one_line(broker, device, keys, tmp_path):
    device("kiosk-1")
    not_a_model = tmp_path / "model.tflite"
    not_a_model.write_bytes(b"hello, not a flatbuffer")
    for args, says in [
        ((IMAGENET_MODEL, "--to", "nobody-*"), "matches no device"),
        ((not_a_model, "--to", "kiosk-1"), "not a TFLite model"),
        ((tmp_path / "missing.tflite", "--to", "kiosk-1"), "does not exist"),
        ((IMAGENET_MODEL, "--to", "kiosk/1"), "no '/'"),
    ]:
        done = fleet("deploy", *args, "--key", keys["good"][0], "--broker", broker.url, "--wait", 1)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    done = fleet("deploy", IMAGENET_MODEL, "--to", "kiosk-1", "--key", keys["good"][1], "--broker", broker.url)
    assert done.returncode == 2 and "that is the public key" in done.stderr


def test_malformed_and_repeated_commands_get_acks_and_the_link_lives_on(broker, device, keys, subscribe):
    link, installer = device("kiosk-1", max_payload_bytes=8_000_000)
    acks = subscribe("edgecls/kiosk-1/ack")
    data = IMAGENET_MODEL.read_bytes()
    good = {"id": "again", **sign_model(load_private_key(keys["good"][0]), data),
            "model": base64.b64encode(data).decode()}
    for payload in [b"\xff\xfe not json", json.dumps({"id": "no-sig", "model": "AAAA"}),
                    json.dumps({**good, "id": "bad-b64", "model": "%%%"}),
                    json.dumps({**good, "id": "big", "model": "A" * 9_000_000}),
                    json.dumps(good), json.dumps(good)]:
        acks.publish("edgecls/kiosk-1/cmd/model", payload)
    answers = wait_until(lambda: len(acks.bodies("ack")) >= 6 and acks.bodies("ack"), what="six acks")
    by_id = {}
    for a in answers:
        by_id.setdefault(a["id"], []).append(a)
    assert not by_id[None][0]["accepted"] and "not JSON" in by_id[None][0]["reason"]
    assert "no 'sha256'" in by_id["no-sig"][0]["reason"]
    assert "base64" in by_id["bad-b64"][0]["reason"]
    assert "over this device's cap" in by_id["big"][0]["reason"]
    assert [a["accepted"] for a in by_id["again"]] == [True, True]
    assert len(installer.calls) == 1  # delivered twice, installed once
    assert link.connected


def test_malformed_deploys_never_take_a_waiting_deploys_place(keys):
    """Regression: malformed messages used to wait in the two deploy slots and make the next good one 'busy'."""
    from edge_app.link.commands import CommandDesk

    entered, release, acks = threading.Event(), threading.Event(), []

    def installer(data: bytes, origin: str):
        entered.set()
        release.wait(30)
        return True, "swapped in", "x"

    desk = CommandDesk("kiosk-1", acks.append, load_public_key(keys["good"][1]), installer, 8_000_000)
    desk.start()
    try:
        data = IMAGENET_MODEL.read_bytes()
        signed = {**sign_model(load_private_key(keys["good"][0]), data), "model": base64.b64encode(data).decode()}
        desk.submit("model", json.dumps({"id": "first", **signed}).encode())
        assert entered.wait(30)  # the worker holds "first": both slots are free
        for payload in [b"not json", json.dumps({"id": "no-sig", "model": "AAAA"}).encode()]:
            desk.submit("model", payload)
        for request in ("second", "third", "fourth"):
            desk.submit("model", json.dumps({"id": request, **signed}).encode())
        refused = {a["id"]: a["reason"] for a in acks if not a["accepted"]}
        assert "not JSON" in refused[None] and "no 'sha256'" in refused["no-sig"]
        assert set(refused) == {None, "no-sig", "fourth"} and refused["fourth"].startswith("busy")
        release.set()
        wait_until(lambda: {a["id"] for a in acks if a["accepted"]} == {"first", "second", "third"},
                   what="three installs")
    finally:
        release.set()
        desk.close()


def test_a_deploy_by_url_downloads_the_signed_bytes(broker, device, keys, tmp_path):
    _, installer = device("kiosk-1")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "m.tflite").write_bytes(IMAGENET_MODEL.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/m.tflite"
        done = fleet("deploy", IMAGENET_MODEL, "--to", "kiosk-1", "--key", keys["good"][0], "--broker", broker.url,
                     "--wait", 1, "--url", url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert installer.calls[0][0] == IMAGENET_MODEL.read_bytes() and url in installer.calls[0][1]
        missing = fleet("deploy", IMAGENET_MODEL, "--to", "kiosk-1", "--key", keys["good"][0], "--broker",
                        broker.url, "--wait", 1, "--url", url.replace("m.tflite", "gone.tflite"))
        assert missing.returncode == 1 and "HTTP 404" in missing.stdout and len(installer.calls) == 1
    finally:
        server.shutdown()


def test_fleet_bench_returns_each_boards_benchmark_in_one_table(broker, device, keys, tmp_path):
    device("pi4-1")
    device("pi5-1", trust=False)
    out = tmp_path / "boards"
    done = fleet("bench", IMAGENET_MODEL, "--to", "pi*", "--key", keys["good"][0], "--broker", broker.url,
                 "--wait", 1, "--runs", 3, "--threads", 1, "--json", f"{out}.json", "--md", f"{out}.md",
                 "--plot", f"{out}.png", timeout=300)
    assert done.returncode == 1, done.stderr  # pi5-1 has no --trust: no result from it
    report = json.loads((tmp_path / "boards.json").read_text())
    (row,) = report["results"]
    assert row["device_id"] == "pi4-1" and row["threads"] == 1 and row["latency_ms"]["p50"] > 0
    assert row["name"] == IMAGENET_MODEL.stem and row["quant"]
    assert report["devices"]["pi4-1"]["device_id"] == "pi4-1"
    assert report["failed"] == [{"device_id": "pi5-1", "reason": report["failed"][0]["reason"]}]
    assert "without --trust" in report["failed"][0]["reason"]
    assert "pi4-1" in done.stdout and "p50_ms" in done.stdout and "pi5-1: FAILED" in done.stdout
    markdown = (tmp_path / "boards.md").read_text()
    assert "| device | model |" in markdown and "| pi4-1 |" in markdown
    assert (tmp_path / "boards.png").read_bytes()[:4] == b"\x89PNG"
