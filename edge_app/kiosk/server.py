"""``--web HOST:PORT``: a kiosk page, a live MJPEG view, ``/status`` JSON and Prometheus ``/metrics``, served
by aiohttp with limits.

The server is an asyncio loop on one daemon thread that the :class:`WebView` owns; the routes are in
:mod:`edge_app.kiosk.routes`. The live loop's ``update``/``event`` calls only store the newest result
under a lock (and wake MJPEG viewers when there are any): frames are encoded only while someone
watches, once per frame however many viewers, on a small thread pool that also does the field loop's
disk work, never on the loop. Bound to 127.0.0.1 unless ``--allow-remote``. Every limit is a named
constant below.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from edge_app.frames.sinks import Result, Sink
from edge_app.frames.sources import Frame
from edge_app.kiosk.address import is_loopback
from edge_app.kiosk.limits import (
    CLOSE_TIMEOUT_S,
    HANDLER_TIMEOUT_S,
    KEEPALIVE_S,
    LINGER_S,
    MAX_CONNECTIONS,
    MAX_FIELD_BYTES,
    MAX_LINE_BYTES,
    RESERVE_WAIT_S,
    RESERVED_CONNECTIONS,
    WORKERS,
    Full,
    ServerLog,
)
from edge_app.kiosk.review import Refused
from edge_app.kiosk.verdict import Examples, card_for, is_sure
from edge_app.runtime.device import device_facts
from edge_app.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls")

class WebView(Sink):
    """The kiosk web server, as a sink of the live loop.

    Args:
        host, port: where to listen (port 0: any free port; :attr:`port` tells which).
        max_fps: MJPEG frames per second per viewer, at most.
        history: label changes and events kept for the page.
        allow_remote: answer to any ``Host`` (the address is not a loopback one).
        token: the kiosk token for actions and field-loop reads (``None``: no ``--learn``).
        public_view: field-loop reads need no token (``--public-view``).
        keepalive_s: :data:`KEEPALIVE_S`; tests shorten it.
        lang: the page's language unless a request asks for another (``--lang``; ``None``: the browser's).

    Example:
        >>> web = WebView("127.0.0.1", 8080)
        >>> web.start({"model": "leaf.tflite"})   # serves until close()
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, max_fps: float = 10.0, history: int = 20,
                 allow_remote: bool = False, token: str | None = None, public_view: bool = False,
                 keepalive_s: float = KEEPALIVE_S, lang: str | None = None):
        self.max_fps = max_fps
        self.lang = lang
        self.allow_remote = allow_remote
        self.token = token
        self.public_view = public_view
        self.keepalive_s = keepalive_s
        self.field = None  # the run's FieldLearning with --learn: the page's review/teach/apply/undo
        self.metrics = None  # the run's Metrics sink: GET /metrics
        self.model = None  # () -> the running classifier: its class cards
        self._examples = Examples()
        self._lock = threading.Lock()  # the newest frame and result, written by the live loop
        self._frame: Frame | None = None
        self._result: Result | None = None
        self._version = 0
        self._history: deque = deque(maxlen=history)
        self._info: dict = {}
        self._facts: tuple[float, dict] = (0.0, {})
        self._started = time.time()
        self.closed = threading.Event()
        self.viewers = 0  # changed on the loop only; read by the live loop (frames for the view only when watched)
        # On the loop only, below:
        self._jpeg: tuple[int, bytes] = (-1, b"")
        self._encoding: tuple[int, asyncio.Future] | None = None
        self._accepting = 0  # connections made by the factory, not yet counted by aiohttp
        # connection -> since when it runs no request (it came, or its last one ended), idle longest first
        self._idle: dict = {}
        self._reserve: dict = {}  # connection let in past the cap -> whether its one request has come
        self._warned: float | None = None
        self._server = self._runner = self._wake = None
        try:
            import aiohttp  # noqa: F401 - checked here: a missing server is a setup problem, said in one line
        except ImportError as e:
            raise EdgeclsError("--web needs aiohttp, which the [edge] extra installs: pip install 'edgecls[edge]' "
                               "(or pip install aiohttp)") from e
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="edgecls-web")
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(self.pool)  # getaddrinfo too: no thread outside the pool
        self._thread = threading.Thread(target=self._serve, name="edgecls-web", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._bind(host, port), self.loop).result()
        except OSError as e:
            self.close()
            reason = os.strerror(e.errno) if e.errno else e.strerror or str(e)
            raise EdgeclsError(f"--web {host}:{port}: cannot listen there ({reason}); is another program "
                               "using the port? Choose another, e.g. --web 127.0.0.1:8081") from e
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    # --- who may ask what -----------------------------------------------------------------------------------------
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
        return host in (self.host.lower(), "localhost") or is_loopback(host)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """A browser's ``Origin`` (when it sends one) must be this server: another site's page never acts here."""
        if not origin:
            return True
        from urllib.parse import urlsplit

        return urlsplit(origin).netloc.lower() == (host or "").strip().lower()

    def token_ok(self, given: str | None) -> bool:
        if not self.token or given is None:
            return False
        # surrogateescape: aiohttp decodes header bytes that are not UTF-8 that way; they simply do not match.
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # --- the live loop's side -------------------------------------------------------------------------------------
    def start(self, info: dict) -> None:
        self._info = {k: v for k, v in info.items() if k != "labels"}  # polled twice a second: no 1000 labels
        asyncio.run_coroutine_threadsafe(self._server.start_serving(), self.loop).result()
        log.info("web view on %s", self.url)

    def update(self, frame: Frame, result: Result) -> None:
        with self._lock:
            previous = self._result.label if self._result is not None else None
            if result.label != previous:
                self._history.appendleft({"t": round(result.t, 3), "label": result.label,
                                          "score": round(result.score, 4)})
            self._frame, self._result = frame, result
            self._version += 1
        if self.viewers and not self.closed.is_set():
            try:
                self.loop.call_soon_threadsafe(self._new_frame)
            except RuntimeError:  # the loop closed between the check and the call: nobody to wake
                pass

    def event(self, name: str, detail: str, **fields) -> None:
        with self._lock:
            self._history.appendleft({"t": round(time.time(), 3), "event": name, "detail": detail})
            if name == "model_swapped":
                self._info = {**self._info, "model": fields.get("model"), "model_sha256": fields.get("new_sha256"),
                              "num_classes": fields.get("num_classes"), "delegate": fields.get("delegate")}

    def status(self, lang: str = "en") -> dict:
        """What ``/status`` returns: the current result with its class card in ``lang`` and whether the kiosk is
        sure, the labelled frames it looks like (``--learn``), recent label changes, run and device facts (blocks:
        reads the device's temperature now and then, and labelled frames' signatures)."""
        now = time.time()
        if now - self._facts[0] > 10:  # temperature and throttling change; vcgencmd is not free
            self._facts = (now, device_facts())
        with self._lock:
            r, frame, version = self._result, self._frame, self._version
            history = list(self._history)
        current = {"label": None, "score": None, "frame": None, "fps": 0.0} if r is None else {
            "label": r.label, "score": round(r.score, 4), "uncertain": r.uncertain, "unknown": r.unknown,
            "sure": is_sure(r),
            "novelty": None if r.novelty is None else round(r.novelty, 4),
            "top_k": [{"label": lb, "score": round(s, 4)} for lb, s in r.top_k], "frame": r.frame,
            "t": round(r.t, 3), "latency_ms": round(r.latency_ms, 2), "fps": round(r.fps, 1),
            "card": card_for(self.model, r.label, lang),
            "examples": self._examples.find(self.field, r, frame, version, self._info.get("model_sha256"))}
        return {**current, "history": history, "uptime_s": round(now - self._started, 1),
                "viewers": self.viewers, "run": self._info, "device": self._facts[1],
                "learn": self.field is not None}

    # --- frames, on the loop --------------------------------------------------------------------------------------
    def _new_frame(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def jpeg(self) -> tuple[int, bytes] | None:
        """``(version, JPEG bytes)`` of the newest frame, encoded once however many viewers ask."""
        with self._lock:
            frame, version = self._frame, self._version
        if frame is None:
            return None
        if self._jpeg[0] == version:
            return self._jpeg
        if frame.jpeg is not None and frame.display is None:
            self._jpeg = (version, frame.jpeg)  # an MJPEG source's own bytes: nothing to encode
            return self._jpeg
        if self._encoding is None or self._encoding[0] != version:
            self._encoding = (version, self.loop.run_in_executor(self.pool, _encode, frame))
        encoding_version, future = self._encoding
        # shield: a viewer who leaves must not cancel the encoding the other viewers wait for
        data = await asyncio.shield(future)
        if data is None:
            return None
        if encoding_version > self._jpeg[0]:
            self._jpeg = (encoding_version, data)
        return encoding_version, data

    async def next_jpeg(self, after: int, timeout: float = 2.0) -> tuple[int, bytes] | None:
        """The newest frame once it is newer than version ``after`` (``None`` after ``timeout`` s without one)."""
        wake = self._wake  # before the check: a frame that comes in between still sets this one
        with self._lock:
            newer = self._version > after
        if not newer:
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        return await self.jpeg()

    async def run(self, work, *args, timeout: float = HANDLER_TIMEOUT_S):
        """``work(*args)`` on the pool, answered 503 (as :class:`~edge_app.kiosk.review.Refused`) after ``timeout``."""
        try:
            return await asyncio.wait_for(self.loop.run_in_executor(self.pool, work, *args), timeout)
        except asyncio.TimeoutError:
            raise Refused(f"the kiosk took more than {timeout:g} s on this; it may still finish, look again "
                          "in a moment", 503) from None

    # --- connections, on the loop ---------------------------------------------------------------------------------
    async def _bind(self, host: str, port: int) -> None:
        from aiohttp import (
            web,  # imported when a server starts: the routes need it, the rest of the app does not
        )

        from edge_app.kiosk.routes import make_app

        self._wake = asyncio.Event()
        self._runner = web.AppRunner(make_app(self), access_log=None, logger=ServerLog(log, None),
                                     keepalive_timeout=self.keepalive_s, lingering_time=LINGER_S,
                                     max_line_size=MAX_LINE_BYTES, max_field_size=MAX_FIELD_BYTES)
        await self._runner.setup()
        self._server = await self.loop.create_server(self._connection, host, port, start_serving=False)
        self.loop.call_later(1.0, self._close_idle)

    def _connection(self):
        """The protocol factory: aiohttp's handler for a new connection, making room at :data:`MAX_CONNECTIONS`.

        At the cap the connection idle longest is closed for the new one; when none is idle, the new one goes
        on the reserve (:data:`RESERVED_CONNECTIONS`); when that is full too, it is told 503.
        """
        server = self._runner.server
        open_now = sum(1 for c in server.connections if c.transport is not None) + self._accepting
        reserve = False
        if open_now >= MAX_CONNECTIONS:
            idle = next((c for c in self._idle if c.transport is not None), None)
            if idle is not None:
                self._warn(f"{MAX_CONNECTIONS} connections open, the most it keeps: closing the one idle longest "
                           "for each new one")
                del self._idle[idle]
                idle.force_close()
            elif open_now < MAX_CONNECTIONS + RESERVED_CONNECTIONS:
                self._warn(f"{MAX_CONNECTIONS} connections open and every one busy: a new one gets one request")
                reserve = True
            else:
                self._warn(f"{MAX_CONNECTIONS + RESERVED_CONNECTIONS} connections open and every one busy: "
                           "refusing new ones")
                return Full()
        self._accepting += 1
        # Runs just before the new connection's connection_made (both are call_soon, in this order):
        # from then on aiohttp counts it.
        self.loop.call_soon(self._accepted)
        connection = server()
        self._idle[connection] = self.loop.time()
        if reserve:
            self._reserve[connection] = False
            self.loop.call_later(RESERVE_WAIT_S, self._reserve_expired, connection)
        return connection

    def _accepted(self) -> None:
        self._accepting -= 1

    def request_started(self, connection) -> None:
        """A request's head has come on ``connection`` (the routes' middleware says so): it is busy."""
        self._idle.pop(connection, None)
        if connection in self._reserve:
            self._reserve[connection] = True

    def request_ended(self, connection) -> bool:
        """``connection``'s request is answered: idle from now. True when it was on the reserve, which it leaves
        (its answer closes it, for the next visitor)."""
        if connection.transport is not None:
            self._idle[connection] = self.loop.time()
        return self._reserve.pop(connection, None) is not None

    def on_reserve(self, connection) -> bool:
        return connection in self._reserve

    def _reserve_expired(self, connection) -> None:
        if self._reserve.get(connection) is False:  # no request yet: a slow one, not the visitor it was kept for
            del self._reserve[connection]
            connection.force_close()

    def _close_idle(self) -> None:
        """Once a second: close connections that have run no request for ``keepalive_s``.

        aiohttp's keep-alive timer covers a connection between requests; before the first one only
        recent aiohttp versions watch it, and a header dribbled a byte a second must not hold it for ever.
        """
        if self.closed.is_set():
            return
        now, current = self.loop.time(), set(self._runner.server.connections)
        for connection, since in list(self._idle.items()):
            if connection not in current and now - since > 1.0:  # gone (or never made): forget it
                self._idle.pop(connection)
            elif now - since > self.keepalive_s:
                self._idle.pop(connection)
                connection.force_close()
        self.loop.call_later(1.0, self._close_idle)

    def _warn(self, message: str) -> None:
        """At most one warning a minute: a flood of connections is one problem, not thousands of lines."""
        if self._warned is None or time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log.warning("web view: %s", message)

    # --- the thread -----------------------------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # What close() did not end (a request waiting on a stuck disk) is cancelled, not left pending.
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=0.5))
            self.loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None and self._runner.server is not None:
            for connection in self._runner.server.connections:
                connection.force_close()
        if self._wake is not None:
            self._wake.set()  # MJPEG viewers waiting for a frame look at `closed` and leave
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), CLOSE_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(CLOSE_TIMEOUT_S + 1)
            except Exception as e:  # closing must finish: the loop is stopped below whatever happened
                log.debug("web view shutdown: %s", e)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=2)
        # A teach capture may still hold a worker: it ends on its own; nothing waits for it here.
        self.pool.shutdown(wait=False, cancel_futures=True)


def _encode(frame: Frame) -> bytes | None:
    import cv2

    ok, data = cv2.imencode(".jpg", frame.view_bgr(), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return data.tobytes() if ok else None
