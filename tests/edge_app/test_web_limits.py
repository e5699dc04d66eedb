"""The kiosk server's limits, through the real server: what a hostile probe of the device found (issue 21).

Half-open and dribbling connections, a flood past the connection cap, too many MJPEG viewers, bodies
too big, too slow or too deep, names too long in bytes or clashing in case, booleans for numbers, and
a handler that fails: each one is an answer (or a closed socket), and the server goes on answering.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from support import IMAGENET_MODEL, REPO, TOKEN, Kiosk, free_port, running_kiosk, write_video

from edge_app.live import web_routes
from edge_app.live.field import FieldLearning
from edge_app.live.sinks import Result
from edge_app.live.sources import Frame
from edge_app.live.web import MAX_CONNECTIONS, MAX_VIEWERS, WORKERS, WebView

HALF_HEADER = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc"


@pytest.fixture
def view(request):
    """A bare WebView on a free port, fed one frame, with a short keep-alive (2 s, or the test's parameter)."""
    web = WebView("127.0.0.1", 0, keepalive_s=getattr(request, "param", 2.0))
    web.start({"model": "m.tflite"})
    image = np.full((120, 160, 3), 90, np.uint8)
    web.update(Frame(image, "RGB", 0, time.time()), Result(0, time.time(), "leaf", 0.9, [("leaf", 0.9)]))
    yield web
    web.close()


def status_code(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as response:
        return response.status


def closed_by_server(sockets: list[socket.socket], timeout: float) -> set[socket.socket]:
    """The sockets the server has closed (EOF, or its 503 then EOF) within ``timeout`` s."""
    closed, deadline = set(), time.monotonic() + timeout
    while len(closed) < len(sockets):
        readable, _, _ = select.select([s for s in sockets if s not in closed], [], [], min(timeout, 0.2))
        for s in readable:
            try:
                while s.recv(4096):
                    pass
            except (BlockingIOError, ConnectionResetError):
                pass
            closed.add(s)
        if time.monotonic() >= deadline:
            break
    return closed


@pytest.mark.parametrize("view", [8.0], indirect=True)  # the cap, not the keep-alive, closes them first
def test_a_flood_of_half_open_connections_stays_bounded_and_the_page_still_answers(view):
    threads_before = threading.active_count()
    flood, started = [], time.monotonic()
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", view.port), timeout=5)
            if i % 2:
                s.sendall(HALF_HEADER)  # half a request, never finished
            s.setblocking(False)
            flood.append(s)
            if i % 50 == 49:  # let the server's thread (in this process: the GIL) accept, or SYNs wait 1 s
                time.sleep(0.05)
        closed = closed_by_server(flood, timeout=1.0)
        assert time.monotonic() - started < view.keepalive_s - 1
        assert len(flood) - len(closed) <= MAX_CONNECTIONS  # the rest were closed at once
        assert status_code(view.port) == 200  # a new visitor still gets in (an idle socket makes room)
        assert threading.active_count() <= threads_before + WORKERS  # not one thread per connection
        # Past the keep-alive, none of the half-open ones is left.
        assert len(closed_by_server(flood, timeout=view.keepalive_s + 3)) == len(flood)
    finally:
        for s in flood:
            s.close()
    assert status_code(view.port) == 200


def test_idle_dribbling_and_kept_alive_connections_are_closed_after_the_keepalive(view):
    started = time.monotonic()
    idle = socket.create_connection(("127.0.0.1", view.port), timeout=10)
    dribbler = socket.create_connection(("127.0.0.1", view.port), timeout=10)
    kept = socket.create_connection(("127.0.0.1", view.port), timeout=10)
    kept.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    for s in (idle, dribbler, kept):
        s.setblocking(False)
    closed: dict[str, float] = {}
    sockets = {"idle": idle, "dribbler": dribbler, "kept-alive": kept}
    try:
        for byte in HALF_HEADER * 3:  # one byte every 0.2 s: a header that never ends
            if len(closed) == 3 or time.monotonic() - started > 10:
                break
            if "dribbler" not in closed:
                try:
                    dribbler.send(bytes([byte]))
                except OSError:
                    closed["dribbler"] = time.monotonic() - started
            for name, s in sockets.items():
                if name not in closed and closed_by_server([s], timeout=0):
                    closed[name] = time.monotonic() - started
            time.sleep(0.2)
    finally:
        for s in sockets.values():
            s.close()
    assert set(closed) == {"idle", "dribbler", "kept-alive"}, closed
    assert all(view.keepalive_s - 0.5 <= after <= view.keepalive_s + 2.5 for after in closed.values()), closed


def test_viewers_are_capped_and_close_returns_quickly_while_they_watch():
    web = WebView("127.0.0.1", 0, max_fps=20)
    web.start({"model": "m.tflite"})
    stop = threading.Event()

    def camera():
        image = np.zeros((120, 160, 3), np.uint8)
        for i in range(100_000):
            if stop.is_set():
                return
            web.update(Frame(image, "RGB", i, time.time()), Result(i, time.time(), "leaf", 0.9, [("leaf", 0.9)]))
            time.sleep(0.02)

    threading.Thread(target=camera, daemon=True).start()
    streams = []
    try:
        for _ in range(MAX_VIEWERS):
            stream = urllib.request.urlopen(f"http://127.0.0.1:{web.port}/stream.mjpg", timeout=10)
            assert stream.read1(65536).startswith(b"--edgeclsframe")
            streams.append(stream)
        with pytest.raises(urllib.error.HTTPError) as full:
            urllib.request.urlopen(f"http://127.0.0.1:{web.port}/stream.mjpg", timeout=10)
        assert full.value.code == 503 and "viewers" in json.loads(full.value.read())["error"]
        assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{web.port}/status").read())["viewers"] == MAX_VIEWERS
        started = time.monotonic()
        web.close()
        assert time.monotonic() - started < 2.0
        assert not web._thread.is_alive()
    finally:
        stop.set()
        web.close()
        for stream in streams:
            stream.close()


def test_ipv6_loopback_serves(shared):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        web = WebView("::1", 0)
    except Exception as e:  # a container without an IPv6 loopback address
        pytest.skip(f"cannot listen on [::1]: {e}")
    web.start({"model": "m.tflite"})
    try:
        with urllib.request.urlopen(f"{web.url}status", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read())["label"] is None
    finally:
        web.close()


@pytest.fixture
def kiosk(tmp_path, shared):
    with running_kiosk(tmp_path) as client:
        yield client, tmp_path


def raw_post(port: int, request: bytes, timeout: float = 15) -> tuple[int, dict]:
    """Send ``request`` as it is; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    return next((int(line.split(":")[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0)


def test_hostile_bodies_and_names_are_answered_and_the_server_goes_on(kiosk, monkeypatch):
    client, root = kiosk
    port = int(client.base.rsplit(":", 1)[1])
    item = client.call("/api/collected")[1]["items"][0]

    code, said = client.call("/api/label", {"id": item["id"], "label": "\U0001F342" * 64})  # 64 chars, 256 bytes
    assert code == 400 and "bytes" in said["error"] and "\n" not in said["error"], said
    assert client.call("/status")[0] == 200
    nested = b"[" * 60_000
    code, said = client.call("/api/label", raw=nested, headers={"Content-Type": "application/json"})
    assert (code, said) == (400, {"error": "the body is not JSON"})
    for numbers in ({"frames": True}, {"seconds": True}, {"frames": 1.5}, {"seconds": "4"}):
        code, said = client.call("/api/teach", {"label": "red bird", **numbers})
        assert code == 400 and ("frames" in said["error"] or "seconds" in said["error"]), (numbers, said)

    head = (f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-Edgecls-Token: {TOKEN}\r\n")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (70_000, b" " * 70_000)  # no Content-Length to refuse it by
    assert raw_post(port, (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked)[0] == 413
    monkeypatch.setattr(web_routes, "BODY_TIMEOUT_S", 1.0)
    started = time.monotonic()
    code, said = raw_post(port, (head + "Content-Length: 100\r\n\r\n").encode() + b'{"id": ')  # and no more
    assert code == 408 and time.monotonic() - started < 5, said
    assert client.call("/status")[0] == 200
    assert not list((root / "field" / "labelled").iterdir())


def test_an_unexpected_failure_is_a_500_with_a_reason_and_the_next_request_works(kiosk, monkeypatch, caplog):
    client, _ = kiosk

    def broken(self):
        raise OSError(36, "File name too long")

    monkeypatch.setattr(FieldLearning, "classes", broken)
    with caplog.at_level("DEBUG", logger="edgecls"):
        code, said = client.call("/api/classes")
    assert code == 500 and set(said) == {"error"}
    assert "File name too long" in said["error"] and "Traceback" not in said["error"] and "\n" not in said["error"]
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert client.call("/api/classes")[0] == 200


def test_case_clashes_are_refused_and_labelled_frames_move_and_go_back(kiosk):
    client, root = kiosk
    labelled, inbox = root / "field" / "labelled", root / "field" / "inbox"
    items = client.call("/api/collected")[1]["items"]

    code, said = client.call("/api/label", {"id": items[0]["id"], "label": "Macaw"})  # the model says "macaw"
    assert code == 400 and "use 'macaw'" in said["error"], said
    assert client.call("/api/teach", {"label": "MACAW", "frames": 1})[0] == 400
    assert client.call("/api/label", {"id": items[0]["id"], "label": "red bird"})[0] == 200
    code, said = client.call("/api/label", {"id": items[1]["id"], "label": "Red Bird"})
    assert code == 400 and "use 'red bird'" in said["error"], said
    assert client.call("/api/label", {"id": items[1]["id"], "label": "macaw"})[0] == 200
    assert client.call("/api/label", {"id": items[2]["id"], "label": "macaw"})[0] == 200

    listed = client.call("/api/labelled")[1]
    assert listed["total"] == 3 and {i["id"]: i["label"] for i in listed["items"]} == {
        items[0]["id"]: "red bird", items[1]["id"]: "macaw", items[2]["id"]: "macaw"}
    assert client.call(f"/api/labelled/red%20bird/{items[0]['id']}.jpg")[1][:2] == b"\xff\xd8"
    for bad in (f"/api/labelled/..%2F..%2Finbox/{items[3]['id']}.jpg", f"/api/labelled/.%2E/{items[3]['id']}.jpg",
                f"/api/labelled/macaw/{items[0]['id']}.jpg", "/api/labelled/macaw/..%2Fx.jpg"):
        assert client.call(bad)[0] in (400, 404), bad

    code, moved = client.call("/api/relabel", {"id": items[0]["id"], "label": "macaw"})
    assert (code, moved) == (200, {"id": items[0]["id"], "label": "macaw", "from": "red bird"})
    assert (labelled / "macaw" / f"{items[0]['id']}.jpg").is_file() and not (labelled / "red bird").exists()
    assert client.call("/api/relabel", {"id": items[0]["id"], "label": "Red Bird"})[0] == 200  # no clash left
    assert client.call("/api/relabel", {"id": items[1]["id"], "label": "MACAW"})[0] == 400

    code, back = client.call("/api/unlabel", {"id": items[2]["id"]})
    assert code == 200 and back["from"] == "macaw"
    assert (inbox / f"{items[2]['id']}.jpg").is_file() and (inbox / f"{items[2]['id']}.json").is_file()
    assert items[2]["id"] in [i["id"] for i in client.call("/api/collected")[1]["items"]]
    assert client.call("/api/unlabel", {"id": items[2]["id"]})[0] == 404
    assert client.call("/api/relabel", {"id": "../x", "label": "a"})[0] == 400
    assert client.call("/api/classes")[1]["labelled"] == {"Red Bird": 1, "macaw": 1}


def test_field_loop_reads_need_the_token_unless_public_view(kiosk, tmp_path):
    client, _ = kiosk
    item = client.call("/api/collected")[1]["items"][0]
    for path in ("/api/collected", f"/api/collected/{item['id']}.jpg", "/api/labelled", "/api/classes",
                 "/api/job", "/api/versions"):
        assert client.call(path, token=None)[0] == 401, path
        assert client.call(path, token="wrong" * 8)[0] == 401, path
        assert client.call(path)[0] == 200, path
    for path in ("/", "/status", "/frame.jpg"):  # the live view: a kiosk screen shows it without a token
        assert client.call(path, token=None)[0] == 200, path

    video = write_video(tmp_path / "public.avi", [("parrot.jpg", 30)], size=(320, 240))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(IMAGENET_MODEL), "--source", str(video),
                             "--loop", "--threads", "1", "--web", f"127.0.0.1:{port}", "--collect",
                             str(tmp_path / "public"), "--collect-below", "1", "--learn", "--public-view"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        public = Kiosk(port)
        public.until("/status", lambda s: s["label"] == "macaw", timeout=60)
        assert public.call("/api/collected", token=None)[0] == 200
        assert public.call("/api/classes", token=None)[0] == 200
        assert public.call("/api/label", {"id": "x", "label": "y"}, token=None)[0] == 401  # acts: still the token
    finally:
        proc.terminate()
        proc.wait(30)
    refused = subprocess.run([sys.executable, "-m", "edgecls", "run", str(IMAGENET_MODEL), "--public-view"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--public-view" in refused.stderr and "Traceback" not in refused.stderr
