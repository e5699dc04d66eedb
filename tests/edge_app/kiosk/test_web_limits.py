"""The kiosk server's limits, through the real server: what a hostile probe of the device found (issue 21).

Half-open and dribbling connections, a flood past the connection cap, too many MJPEG viewers, bodies
too big, too slow or too deep, names too long in bytes or clashing in case, booleans for numbers, and
a handler that fails: each one is an answer (or a closed socket), and the server goes on answering.
"""

from __future__ import annotations

import json
import logging
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

from edge_app.frames.sinks import Result
from edge_app.frames.sources import Frame
from edge_app.kiosk import routes as web_routes
from edge_app.kiosk.field import FieldLearning
from edge_app.kiosk.limits import BODY_GRACE_S, LINGER_S, MAX_CONNECTIONS, MAX_VIEWERS, WORKERS
from edge_app.kiosk.server import WebView

HALF_HEADER = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc"


@pytest.fixture
def view(request):
    """A bare WebView on a free port, fed one frame, with a short keep-alive (2 s, or the test's parameter)."""
    web = WebView("127.0.0.1", 0, keepalive_s=getattr(request, "param", 2.0))
    web.start({"model": "m.tflite"})
    image = np.full((120, 160, 3), 90, np.uint8)
    web.update(Frame(image, "RGB", 0, time.time()), Result(0, time.time(), "leaf", 0.9, top_k=[("leaf", 0.9)]))
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
            web.update(Frame(image, "RGB", i, time.time()), Result(i, time.time(), "leaf", 0.9, top_k=[("leaf", 0.9)]))
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


def test_hostile_bodies_and_names_are_answered_and_the_server_goes_on(kiosk):
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
    started = time.monotonic()
    code, said = raw_post(port, (head + "Content-Length: 100\r\n\r\n").encode() + b'{"id": ')  # and no more
    assert code == 408 and time.monotonic() - started < BODY_GRACE_S + 5, said
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


# --- issue 21, defects 4 and 5: malformed requests in the log, and slow clients filling the cap -------------------

MALFORMED = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n"
OTHER_MALFORMED = (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the HTTP port
                   b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nNo colon here\r\n\r\n",
                   b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")  # a request line past MAX_LINE_BYTES


def send_malformed(port: int, requests) -> list[bytes]:
    """Each request on a connection of its own; what the server answered before it closed each one."""
    answers = []
    for request in requests:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            data = b""
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            answers.append(data)
    return answers


def test_malformed_requests_are_one_debug_line_each_never_a_traceback(view, caplog):
    caplog.set_level("DEBUG")
    caplog.set_level("DEBUG", logger="edgecls")
    requests = [MALFORMED] * 50 + list(OTHER_MALFORMED)
    answers = send_malformed(view.port, requests)
    assert all(a.startswith(b"HTTP/1.") and b" 400 " in a.split(b"\r\n")[0] for a in answers[:50]), answers[0]
    assert status_code(view.port) == 200
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG], caplog.text
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    assert len(caplog.records) <= len(requests), caplog.text
    assert all("\n" not in r.getMessage() for r in caplog.records), caplog.text


def test_malformed_requests_leave_stderr_quiet_with_q(tmp_path, shared):
    video = write_video(tmp_path / "v.avi", [("parrot.jpg", 30)], size=(320, 240))
    port = free_port()
    with open(tmp_path / "stderr.txt", "wb") as stderr:  # a file, not a pipe: 2,200 lines would fill a pipe
        proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(IMAGENET_MODEL), "--source", str(video),
                                 "--loop", "--threads", "1", "--web", f"127.0.0.1:{port}", "-q"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            Kiosk(port).until("/status", lambda s: True, timeout=60)
            send_malformed(port, [MALFORMED] * 200 + list(OTHER_MALFORMED))
            Kiosk(port).until("/status", lambda s: True, timeout=30)  # still answering
        finally:
            proc.terminate()
            proc.wait(30)
    said = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert "Traceback" not in said and len(said.splitlines()) <= 2, said[:3000]  # before: 2,200 lines


def read_answer(s: socket.socket) -> bytes:
    """One whole answer (head and Content-Length body) from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def at_eof(s: socket.socket) -> bool:
    """Whether the server has closed non-blocking ``s`` (what it sent before is read and dropped)."""
    try:
        while True:
            if not s.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def keep_alive_get(port: int, then: bytes = b"") -> tuple[socket.socket, float]:
    """A connection that GETs /status, reads the whole 200, sends ``then`` and stays open; how long the GET took."""
    started = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = read_answer(s)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    s.sendall(then)
    s.setblocking(False)
    return s, took


@pytest.mark.parametrize("view", [60.0], indirect=True)  # the keep-alive timer is no rescue here: only the cap is
def test_at_the_cap_the_connections_idle_longest_make_room_for_new_visitors(view):
    kept: list[socket.socket] = []
    try:
        for i in range(MAX_CONNECTIONS):  # each completes a GET, then idles, or starts its next one and stops
            kept.append(keep_alive_get(view.port, then=HALF_HEADER if i % 2 else b"")[0])
        for turn in range(3):  # each newcomer stays too: the cap stays full
            s, took = keep_alive_get(view.port)
            kept.append(s)
            assert took < 5, (turn, took)  # before: 503 until the keep-alive closed the idle ones (12-15 s)
        assert status_code(view.port) == 200  # a fourth newcomer, one request then gone
        deadline = time.monotonic() + 10
        while not all(at_eof(s) for s in kept[:4]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(at_eof(s) for s in kept[:4])  # the four idle longest made the room, oldest first
        assert not any(at_eof(s) for s in kept[4:])
    finally:
        for s in kept:
            s.close()


def open_dribblers(port: int, token: str, expect: bytes, extra: str = "") -> list[socket.socket]:
    """:data:`MAX_CONNECTIONS` POSTs of a 100-byte body that send one byte of it, each once ``expect`` came back."""
    head = (f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-Edgecls-Token: {token}\r\nContent-Length: 100\r\n{extra}\r\n").encode()
    dribblers = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            dribblers.append(s)
            s.sendall(head + b"{")
            got = b""
            while b"\r\n\r\n" not in got:  # the server is on it: answered, or reading the body
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
            assert got.startswith(expect), got[:300]
            s.setblocking(False)
    except BaseException:
        for s in dribblers:
            s.close()
        raise
    return dribblers


def dribble_until_cut(dribblers: list[socket.socket], started: float, limit_s: float) -> dict[int, float]:
    """A byte a second on each until the server closes it (at most ``limit_s``): when each was cut."""
    cut: dict[int, float] = {}
    next_byte = time.monotonic()
    while len(cut) < len(dribblers) and time.monotonic() - started < limit_s:
        for i, s in enumerate(dribblers):
            if i not in cut and at_eof(s):
                cut[i] = time.monotonic() - started
        if time.monotonic() >= next_byte:
            next_byte += 1.0
            for i, s in enumerate(dribblers):
                if i not in cut:
                    try:
                        s.send(b" ")
                    except OSError:
                        cut[i] = time.monotonic() - started
        time.sleep(0.05)
    return cut


def test_slow_bodies_with_a_wrong_token_neither_lock_the_page_out_nor_stay(kiosk):
    client, _ = kiosk
    port = int(client.base.rsplit(":", 1)[1])
    started = time.monotonic()
    dribblers = open_dribblers(port, "wrong" * 8, expect=b"HTTP/1.1 401")
    try:
        code, took = client.call("/status")[0], time.monotonic() - started
        assert code == 200 and took < 10, (code, took)  # before: 503 for 12-15 s
        cut = dribble_until_cut(dribblers, started, limit_s=30)
        assert len(cut) == len(dribblers), f"{len(cut)} of {len(dribblers)} cut: {cut}"
        assert max(cut.values()) < LINGER_S + 8, cut  # before: 10 s of lingering each, and more
    finally:
        for s in dribblers:
            s.close()
    assert client.call("/status")[0] == 200


def test_a_whole_request_is_served_on_the_reserve_while_slow_bodies_fill_the_cap(kiosk, monkeypatch):
    client, _ = kiosk
    port = int(client.base.rsplit(":", 1)[1])
    # A longer grace than the real 2 s: every slow body is surely still held when the visitor comes.
    monkeypatch.setattr(web_routes, "BODY_GRACE_S", 6.0)
    started = time.monotonic()
    # The right token: their bodies are read, so each one's connection is busy (100 Continue says so).
    dribblers = open_dribblers(port, TOKEN, expect=b"HTTP/1.1 100", extra="Expect: 100-continue\r\n")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as visitor:
            visitor.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # whole, and kept alive
            answer = read_answer(visitor)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]  # before: 503 for 10 s
            assert visitor.recv(1) == b""  # one request on the reserve, then closed for the next visitor
        assert not any(at_eof(s) for s in dribblers)  # all still held: the visitor took no one's place
        assert client.call("/status")[0] == 200
        cut = dribble_until_cut(dribblers, started, limit_s=30)
        assert len(cut) == len(dribblers), f"{len(cut)} of {len(dribblers)} cut: {cut}"
        assert max(cut.values()) < 6.0 + 8, cut
    finally:
        for s in dribblers:
            s.close()
    assert client.call("/status")[0] == 200
