"""Deploy commands from someone who does not hold the key, and from servers that misbehave: a real broker, a real
HTTP server that records every request, a device in its own process whose memory is read from /proc."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from broker_support import wait_until
from support import IMAGENET_MODEL, REPO, run_cli

from edge_app.runtime.signing import load_private_key, sign_model


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records every request; serves ``body`` slowly when ``trickle_s`` is set."""

    requests: list[str] = []
    body = b""
    trickle_s = 0.0

    def do_GET(self):  # noqa: N802 - the stdlib's name
        type(self).requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for i in range(0, len(self.body), 4096):
                self.wfile.write(self.body[i:i + 4096])
                self.wfile.flush()
                time.sleep(self.trickle_s)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    handler = type("Handler", (Recorder,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_unsigned_deploy_makes_the_device_request_nothing(broker, make_link, keys, info, subscribe, web):
    handler, base = web
    calls = []
    link = make_link(broker.url, "kiosk-1", trust=keys["good"][1], installer=lambda *a: calls.append(a))
    link.start(info)
    wait_until(lambda: link.connected, what="the link to connect")
    acks = subscribe("edgecls/kiosk-1/ack")
    forged = {"sha256": "ab" * 32, "signature": base64.b64encode(os.urandom(64)).decode()}
    other_key = sign_model(load_private_key(keys["other"][0]), IMAGENET_MODEL.read_bytes())
    for n, (request, fields) in enumerate([("ssrf", {**forged, "url": f"{base}/internal-admin?x=1"}),
                                           ("probe", {**forged, "url": "http://127.0.0.1:9/closed-port"}),
                                           ("other-key", {**other_key, "url": f"{base}/m.tflite"})], 1):
        # One at a time: a device keeps two deploys waiting and answers a third "busy" (by design).
        acks.publish("edgecls/kiosk-1/cmd/model", json.dumps({"id": request, **fields}))
        wait_until(lambda n=n: len(acks.bodies("ack")) >= n, what=f"ack {n}")
    answers = acks.bodies("ack")
    assert handler.requests == [], "the device fetched a URL named by an unsigned message"
    for ack in answers:
        assert not ack["accepted"] and "does not verify" in ack["reason"], ack
        assert "refused" not in ack["reason"].lower()  # nothing about the network: no port probe
    assert calls == []
    acks.publish("edgecls/kiosk-1/cmd/model", json.dumps({"id": "unsigned", "url": f"{base}/m.tflite"}))
    unsigned = wait_until(lambda: [a for a in acks.bodies("ack") if a["id"] == "unsigned"], what="the ack")[0]
    assert "sign it with: edgecls fleet deploy MODEL --to DEVICE --key KEY" in unsigned["reason"]  # a real command
    assert handler.requests == []


def test_a_signed_download_that_trickles_is_stopped_at_its_deadline(broker, make_link, keys, info, subscribe, web):
    handler, base = web
    data = IMAGENET_MODEL.read_bytes()
    handler.body, handler.trickle_s = data, 0.05  # 4 kB every 50 ms: ~15 minutes for the whole model
    calls = []
    link = make_link(broker.url, "kiosk-1", trust=keys["good"][1], installer=lambda *a: calls.append(a),
                     download_timeout_s=2.0)
    link.start(info)
    wait_until(lambda: link.connected, what="the link to connect")
    acks = subscribe("edgecls/kiosk-1/ack")
    signed = sign_model(load_private_key(keys["good"][0]), data)
    started = time.monotonic()
    acks.publish("edgecls/kiosk-1/cmd/model", json.dumps({"id": "slow", **signed, "url": f"{base}/m.tflite"}))
    (ack,) = wait_until(lambda: acks.bodies("ack"), timeout_s=30, what="the ack")
    took = time.monotonic() - started
    assert not ack["accepted"] and "longer than 2 s" in ack["reason"], ack
    assert took < 10, f"the 2 s deadline took {took:.1f} s"  # per-read timeouts alone would never end it
    assert handler.requests == ["/m.tflite"] and calls == []


def test_a_url_with_credentials_is_refused_by_host_and_device_and_never_shown(broker, make_link, keys, info,
                                                                             subscribe, web, caplog):
    """Regression (hostile-input issue, defect 7): ``--url http://user:password@host/m.tflite`` failed on the
    device with "Name or service not known", and the ack, the host's table and both logs showed the password.
    Devices send no credentials: the host refuses such a URL in one line, a device refuses it before any
    request, and neither the user nor the password appears in what either says (ack, status, events, logs)."""
    caplog.set_level(logging.DEBUG, logger="edgecls")
    user, password = "deployer-7", "s3cret-pw-1"
    handler, base = web
    handler.body = IMAGENET_MODEL.read_bytes()
    calls = []
    link = make_link(broker.url, "kiosk-1", trust=keys["good"][1], installer=lambda *a: calls.append(a))
    link.start(info)
    wait_until(lambda: link.connected, what="the link to connect")
    heard = subscribe("edgecls/kiosk-1/ack", "edgecls/kiosk-1/status", "edgecls/kiosk-1/event")
    url = base.replace("http://", f"http://{user}:{password}@") + "/m.tflite"

    done = run_cli("fleet", "deploy", IMAGENET_MODEL, "--to", "kiosk-1", "--key", keys["good"][0], "--broker",
                   broker.url, "--wait", 1, "--url", url, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert "--url 'http://***@127.0.0.1:" in lines[0] and "user name or password" in lines[0], lines[0]
    assert "without credentials" in lines[0]
    assert user not in done.stdout + done.stderr and password not in done.stdout + done.stderr

    # From a host that does not check (an older edgecls, a script): signed, and still refused before any request.
    signed = sign_model(load_private_key(keys["good"][0]), IMAGENET_MODEL.read_bytes())
    for n, bad in enumerate([url, url.replace("http://", "ftp://"), url.replace("/m.tflite", ":x/m.tflite")]):
        heard.publish("edgecls/kiosk-1/cmd/model", json.dumps({"id": f"creds-{n}", **signed, "url": bad}))
        ack = heard.wait_for("ack", lambda a, n=n: a["id"] == f"creds-{n}")
        assert not ack["accepted"] and "***@127.0.0.1" in ack["reason"], ack
    assert "user name or password" in heard.bodies("ack")[0]["reason"]
    assert handler.requests == [] and calls == []
    said = json.dumps(heard.messages) + caplog.text
    assert "creds-2" in caplog.text and user not in said and password not in said


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from /proc")
def test_an_oversize_command_is_answered_without_being_held_in_memory(broker, subscribe, keys, tmp_path):
    cap = 1_000_000
    config = tmp_path / "device.json"
    config.write_text(json.dumps({"url": broker.url, "device_id": "pi-3", "folder": str(tmp_path),
                                  "trust": str(keys["good"][1]), "max_payload_bytes": cap}))
    device = subprocess.Popen([sys.executable, str(REPO / "tests" / "edge_app" / "link" / "device.py"), str(config)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert device.stdout.readline().strip() == "started"
        acks = subscribe("edgecls/pi-3/ack")
        wait_until(lambda: subscribe("edgecls/pi-3/status").wait_for("status"), what="the device's status")
        before = _peak_rss_mb(device.pid)
        size = 40_000_000
        acks.publish("edgecls/pi-3/cmd/model", b'{"id": "huge", "model": "' + b"A" * size + b'"}')
        (ack,) = wait_until(lambda: acks.bodies("ack"), timeout_s=120, what="the ack")
        grown = _peak_rss_mb(device.pid) - before
        assert ack["id"] == "huge" and not ack["accepted"] and "over this device's cap of 1 MB" in ack["reason"], ack
        assert "40.0 MB" in ack["reason"]
        assert grown < 10, f"the device's peak memory grew {grown:.0f} MB for a {size / 1e6:.0f} MB message"
        # The link lives on: a signed deploy under the cap still goes through.
        small = tmp_path / "small.bin"
        small.write_bytes(b"\x00\x00\x00\x00TFL3" + b"\x00" * 1000)
        signed = sign_model(load_private_key(keys["good"][0]), small.read_bytes())
        acks.publish("edgecls/pi-3/cmd/model", json.dumps({"id": "small", **signed,
                                                           "model": base64.b64encode(small.read_bytes()).decode()}))
        wait_until(lambda: any(a["id"] == "small" and a["accepted"] for a in acks.bodies("ack")), timeout_s=30,
                   what="the small deploy")
    finally:
        device.terminate()
        device.wait(30)
