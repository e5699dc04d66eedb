"""``--web HOST:PORT``: a kiosk page, a live MJPEG view and ``/status`` JSON, from the standard library.

Routes: ``/`` (the page: live view, current label and score, recent history, FPS, device),
``/status`` (JSON), ``/stream.mjpg`` (``multipart/x-mixed-replace`` MJPEG), ``/frame.jpg``
(one snapshot). Frames are encoded only while someone watches, at most ``max_fps`` a second,
once per frame however many viewers; MJPEG sources pass their own JPEG bytes through.
Bound to 127.0.0.1 unless the user asks for another address with ``--allow-remote``.

With ``--learn`` (see :mod:`edge_app.live.field`) the page gains the field loop: ``GET
/api/collected``, ``/api/collected/<id>.jpg``, ``/api/classes``, ``/api/job``, ``/api/versions``,
and ``POST /api/label|discard|teach|apply|undo`` with a JSON body. Every state-changing request
must be a POST carrying the kiosk token in ``X-Edgecls-Token`` (a header a page on another site
cannot send without a CORS preflight, which is never granted), with a ``Host`` (and ``Origin``,
when sent) naming this server.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edge_app.live.kiosk import PAGE
from edge_app.live.sinks import Result, Sink
from edge_app.live.sources import Frame
from edge_app.runtime.device import device_facts
from edge_app.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls")

BOUNDARY = "edgeclsframe"
TOKEN_HEADER = "X-Edgecls-Token"
MAX_BODY = 64 * 1024
ACTIONS = ("label", "discard", "teach", "apply", "undo")


def parse_web_address(value: str, allow_remote: bool = False) -> tuple[str, int]:
    """``"8080"``, ``":8080"``, ``"127.0.0.1:8080"``, ``"[::1]:8080"`` → ``(host, port)``.

    Raises:
        EdgeclsError: a malformed address, or a non-loopback host without ``allow_remote``.

    Example:
        >>> parse_web_address("8080")
        ('127.0.0.1', 8080)
    """
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EdgeclsError(f"--web {value}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if not allow_remote and not _is_loopback(host):
        raise EdgeclsError(f"--web {value} would let other machines watch this camera; add --allow-remote "
                           "if that is what you want (and put it behind a firewall), or use 127.0.0.1:PORT")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebView(Sink):
    """The kiosk web server, as a sink of the live loop.

    Example:
        >>> web = WebView("127.0.0.1", 8080)
        >>> web.start({"model": "leaf.tflite"})   # serves until close()
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, max_fps: float = 10.0, history: int = 20,
                 allow_remote: bool = False, token: str | None = None):
        self.max_fps = max_fps
        self.allow_remote = allow_remote
        self.token = token
        self.field = None  # the run's FieldLearning with --learn: the page's review/teach/apply/undo
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._version = 0
        self._jpeg: tuple[int, bytes] = (-1, b"")
        self._encode_lock = threading.Lock()
        self._status: dict = {"label": None, "score": None, "frame": None, "fps": 0.0}
        self._history: deque = deque(maxlen=history)
        self._info: dict = {}
        self._facts: tuple[float, dict] = (0.0, {})
        self._started = time.time()
        self.closed = threading.Event()
        self.viewers = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        try:
            self.server = server_class((host, port), _handler(self))
        except OSError as e:
            raise EdgeclsError(f"--web {host}:{port}: cannot listen there ({e.strerror}); is another program "
                               "using the port? Choose another, e.g. --web 127.0.0.1:8081") from e
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edgecls-web", daemon=True)

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request's ``Host`` names this server: the bound address or a loopback name.

        A page on the internet can point its own DNS name at 127.0.0.1 (DNS rebinding) and then
        drive a kiosk from the visitor's browser; its requests carry that name as ``Host``.
        """
        if self.allow_remote:
            return True
        if not header:
            return False
        host = header.strip().lower()
        host = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rpartition(":")[0] or host
        return host in (self.host.lower(), "localhost") or _is_loopback(host)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """A browser's ``Origin`` (when it sends one) must be this server: another site's page never acts here."""
        if not origin:
            return True
        from urllib.parse import urlsplit

        return urlsplit(origin).netloc.lower() == (host or "").strip().lower()

    def token_ok(self, given: str | None) -> bool:
        return bool(self.token) and given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, info: dict) -> None:
        self._info = {k: v for k, v in info.items() if k != "labels"}  # polled twice a second: no 1000 labels
        self._thread.start()
        log.info("web view on %s", self.url)

    def update(self, frame: Frame, result: Result) -> None:
        with self._cond:
            previous = self._status.get("label")
            self._status = {"label": result.label, "score": round(result.score, 4), "uncertain": result.uncertain,
                            "top_k": [{"label": lb, "score": round(s, 4)} for lb, s in result.top_k],
                            "frame": result.frame, "t": round(result.t, 3), "latency_ms": round(result.latency_ms, 2),
                            "fps": round(result.fps, 1)}
            if result.label != previous:
                self._history.appendleft({"t": round(result.t, 3), "label": result.label,
                                          "score": round(result.score, 4)})
            self._frame = frame
            self._version += 1
            self._cond.notify_all()

    def event(self, name: str, detail: str, **fields) -> None:
        with self._cond:
            self._history.appendleft({"t": round(time.time(), 3), "event": name, "detail": detail})
            if name == "model_swapped":
                self._info = {**self._info, "model": fields.get("model"), "model_sha256": fields.get("new_sha256"),
                              "num_classes": fields.get("num_classes")}

    def status(self) -> dict:
        """What ``/status`` returns: the current result, recent label changes, run and device facts."""
        now = time.time()
        if now - self._facts[0] > 10:  # temperature and throttling change; vcgencmd is not free
            self._facts = (now, device_facts())
        with self._cond:
            return {**self._status, "history": list(self._history), "uptime_s": round(now - self._started, 1),
                    "viewers": self.viewers, "run": self._info, "device": self._facts[1],
                    "learn": self.field is not None}

    def jpeg(self, wait_newer_than: int | None = None, timeout: float = 2.0) -> tuple[int, bytes] | None:
        """``(version, JPEG bytes)`` of the newest frame, encoded once however many viewers ask."""
        import cv2

        with self._cond:
            if wait_newer_than is not None:
                self._cond.wait_for(lambda: self._version > wait_newer_than or self.closed.is_set(), timeout)
            frame, version = self._frame, self._version
        if frame is None or self.closed.is_set():
            return None
        with self._encode_lock:
            if self._jpeg[0] != version:
                data = frame.jpeg if frame.jpeg is not None and frame.display is None else None
                if data is None:
                    ok, encoded = cv2.imencode(".jpg", frame.view_bgr(), [cv2.IMWRITE_JPEG_QUALITY, 80])
                    if not ok:
                        return None
                    data = encoded.tobytes()
                self._jpeg = (version, data)
            return self._jpeg

    def close(self) -> None:
        self.closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


def _handler(view: WebView) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgecls"

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
            log.debug("web %s: %s", self.address_string(), format % args)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if not view.host_allowed(self.headers.get("Host")):
                self._send(403, "text/plain", b"this kiosk answers only to its own address (or run with --allow-remote)\n")
                return
            try:
                if path.startswith("/api/"):
                    self._api_get(path[len("/api/"):])
                elif path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE)
                elif path == "/status":
                    self._send(200, "application/json", json.dumps(view.status()).encode())
                elif path == "/frame.jpg":
                    got = view.jpeg()
                    if got is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", got[1])
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(404, "text/plain", b"not found: try / or /status or /stream.mjpg\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the viewer left

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            action = path[len("/api/"):] if path.startswith("/api/") else ""
            try:
                problem = self._refuse_post(action)
                if problem:
                    self._json(problem[0], {"error": problem[1]})
                    return
                body = self._body()
                if body is None:
                    return
                from edge_app.live.field import Refused

                try:
                    done = self._act(action, body)
                except Refused as e:
                    self._json(e.status, {"error": str(e)})
                    return
                self._json(202 if action == "apply" else 200, done)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _refuse_post(self, action: str) -> tuple[int, str] | None:
            """Why a state-changing request is refused (HTTP code, message), or ``None``."""
            host = self.headers.get("Host")
            if not view.host_allowed(host) or not view.origin_allowed(self.headers.get("Origin"), host):
                return 403, "this kiosk takes actions only from its own page"
            if action not in ACTIONS:
                return 404, f"no action {action!r}; the kiosk takes POST /api/{{{','.join(ACTIONS)}}}"
            if view.field is None:
                return 403, "this kiosk runs without --learn: it takes no actions"
            if not view.token_ok(self.headers.get(TOKEN_HEADER)):
                return 401, f"a wrong or missing token ({TOKEN_HEADER} header): use the one the kiosk printed at start"
            return None

        def do_PUT(self):  # noqa: N802 - the stdlib's name
            self._json(405, {"error": "use POST"}, {"Allow": "POST"})

        do_DELETE = do_PATCH = do_PUT  # noqa: N815

        def _body(self) -> dict | None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self._json(413, {"error": f"a request body is at most {MAX_BODY} bytes"})
                return None
            if length and not (self.headers.get("Content-Type") or "").startswith("application/json"):
                self._json(415, {"error": "send JSON (Content-Type: application/json)"})
                return None
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._json(400, {"error": "the body is not JSON"})
                return None
            if not isinstance(body, dict):
                self._json(400, {"error": "the body must be a JSON object"})
                return None
            return body

        def _act(self, action: str, body: dict) -> dict:
            field = view.field
            if action == "label":
                return field.label(body.get("id"), body.get("label"))
            if action == "discard":
                return field.discard(body.get("id"))
            if action == "teach":
                return field.teach(body.get("label"), body.get("frames", 20), body.get("seconds", 4.0))
            if action == "apply":
                return field.apply()
            return field.undo()

        def _api_get(self, route: str) -> None:
            field = view.field
            if route in ACTIONS:
                self._json(405, {"error": f"/api/{route} changes the kiosk: POST it"}, {"Allow": "POST"})
            elif field is None:
                self._json(404, {"error": "the kiosk runs without --learn"})
            elif route == "collected":
                self._json(200, {"items": field.items(), "paused": field.collector.paused})
            elif route.startswith("collected/") and route.endswith(".jpg"):
                from edge_app.live.field import Refused

                try:
                    self._send(200, "image/jpeg", field.image(route[len("collected/"):-len(".jpg")]))
                except Refused as e:
                    self._json(e.status, {"error": str(e)})
            elif route == "classes":
                self._json(200, field.classes())
            elif route == "job":
                self._json(200, field.job)
            elif route == "versions":
                self._json(200, field.versions())
            else:
                self._json(404, {"error": f"no /api/{route}"})

        def _json(self, code: int, obj: dict, headers: dict | None = None) -> None:
            self._send(code, "application/json", json.dumps(obj).encode(), headers)

        def _send(self, code: int, kind: str, body: bytes, headers: dict | None = None) -> None:
            self.send_response(code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            with view._cond:
                view.viewers += 1
            try:
                version, period = -1, 1.0 / view.max_fps
                while not view.closed.is_set():
                    started = time.monotonic()
                    got = view.jpeg(wait_newer_than=version)
                    if got is None or got[0] == version:
                        continue
                    version, data = got
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    view.closed.wait(max(0.0, period - (time.monotonic() - started)))
            finally:
                with view._cond:
                    view.viewers -= 1

    return Handler
