"""The kiosk's routes, as aiohttp handlers over a :class:`~edge_app.kiosk.server.WebView`.

``/`` (the page: live view, current label and score, recent history, FPS, device), ``/status`` (JSON),
``/stream.mjpg`` (``multipart/x-mixed-replace`` MJPEG at most ``max_fps``), ``/frame.jpg`` (one
snapshot), ``/metrics`` (Prometheus; no token: counts and facts, no images, see
:mod:`edge_app.kiosk.metrics`). With ``--learn`` (see :mod:`edge_app.kiosk.field`) the field loop: ``GET /api/collected``,
``/api/collected/<id>.jpg``, ``/api/labelled``, ``/api/labelled/<class>/<id>.jpg``, ``/api/classes``,
``/api/job``, ``/api/versions`` (these need the kiosk token too, unless the run has ``--public-view``),
and ``POST /api/label|discard|relabel|unlabel|teach|apply|undo`` with a JSON body. Every state-changing
request must be a POST carrying the kiosk token in ``X-Edgecls-Token`` (a header a page on another site
cannot send without a CORS preflight, which is never granted), with a ``Host`` (and ``Origin``, when
sent) naming this server.

aiohttp's router holds the table of paths; one middleware runs the checks every request must pass first, in
the order they must run whether a path exists or not (the ``Host`` before anything, the token before a field-loop
read), and the actions check the body's size and type before it is parsed. Every answer is JSON except the page,
the frames and the few plain-text answers a browser shows as they are. Anything a handler did not expect becomes a 500 with a one-line reason (the
traceback goes to the debug log): the server answers the next request as if nothing happened.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from edge_app.kiosk.field import TEACH_MAX_SECONDS
from edge_app.kiosk.i18n import choose
from edge_app.kiosk.limits import (
    ACTIONS,
    BODY_GRACE_S,
    BODY_MIN_BYTES_PER_S,
    BOUNDARY,
    HANDLER_TIMEOUT_S,
    MAX_BODY,
    MAX_VIEWERS,
    TOKEN_HEADER,
    WRITE_TIMEOUT_S,
)
from edge_app.kiosk.page import render, static_file
from edge_app.kiosk.review import Refused
from edge_app.runtime.errors import first_line

log = logging.getLogger("edgecls")


def make_app(view) -> web.Application:
    """The aiohttp application of ``view``: its routes behind the error middleware and the checks, bodies capped
    at 64 kB."""
    routes = Routes(view)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_answer_errors(view), routes.checks])
    table = {"/": routes.page, "/index.html": routes.page, "/static/{name}": routes.static, "/status": routes.status,
             "/frame.jpg": routes.frame, "/stream.mjpg": routes.stream, "/metrics": routes.metrics,
             # the field loop's reads (--learn)
             "/api/collected": routes.collected, "/api/collected/{id}.jpg": routes.collected_image,
             "/api/labelled": routes.labelled, "/api/labelled/{label}/{id}.jpg": routes.labelled_image,
             "/api/classes": routes.classes, "/api/job": routes.job, "/api/versions": routes.versions}
    for path, handler in table.items():
        app.router.add_get(path, handler, allow_head=False)
    for action in ACTIONS:
        app.router.add_post(f"/api/{action}", routes.act)
    return app


def _answer_errors(view):
    @web.middleware
    async def answer_errors(request: web.Request, handler) -> web.StreamResponse:
        connection = request.protocol
        view.request_started(connection)
        try:
            response = await _answer(request, handler)
        finally:
            last = view.request_ended(connection)
        if last:
            response.force_close()  # a reserve connection serves one request: the slot is free for the next
        return response

    return answer_errors


async def _answer(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as e:
        return _json(e.status, {"error": str(e)})
    except web.HTTPException:
        raise
    except Exception as e:  # an answer, never a dropped connection; the traceback for whoever debugs
        log.debug("web view: %s %s failed", request.method, request.path, exc_info=True)
        return _json(500, {"error": f"the kiosk failed on {request.method} {request.path[:100]}: "
                                    f"{type(e).__name__}: {first_line(e)[:200]} (run with -v for the details)"})


def _json(code: int, obj: dict, headers: dict | None = None) -> web.Response:
    return _send(code, "application/json", json.dumps(obj).encode(), headers)


def _send(code: int, kind: str, body: bytes, headers: dict | None = None) -> web.Response:
    return web.Response(status=code, body=body, headers={"Cache-Control": "no-store", **(headers or {}),
                                                         "Content-Type": kind})


class Routes:
    def __init__(self, view):
        self.view = view

    @web.middleware
    async def checks(self, request: web.Request, handler) -> web.StreamResponse:
        """What every request passes before its handler, matched or not: a path that does not exist is no
        answer to a page that may not ask (another site's, through DNS rebinding) or to a read without the token."""
        view, path, method = self.view, request.path, request.method
        unmatched = request.match_info.http_exception
        if method == "POST":
            host = request.headers.get("Host")
            if not view.host_allowed(host) or not view.origin_allowed(request.headers.get("Origin"), host):
                return _json(403, {"error": "this kiosk takes actions only from its own page"})
            if isinstance(unmatched, web.HTTPNotFound | web.HTTPMethodNotAllowed):
                action = path[len("/api/"):] if path.startswith("/api/") else ""
                return _json(404, {"error": f"no action {action[:100]!r}; the kiosk takes POST "
                                            f"/api/{{{','.join(ACTIONS)}}}"})
            if view.field is None:
                return _json(403, {"error": "this kiosk runs without --learn: it takes no actions"})
            if not view.token_ok(request.headers.get(TOKEN_HEADER)):
                return _json(401, {"error": f"a wrong or missing token ({TOKEN_HEADER} header): use the one the "
                                            "kiosk printed at start"})
            return await handler(request)
        if method in ("PUT", "DELETE", "PATCH"):
            return _json(405, {"error": "use POST"}, {"Allow": "POST"})
        if method != "GET":
            return _json(405, {"error": f"{method} is not served here: GET reads, POST acts"}, {"Allow": "GET, POST"})
        if not view.host_allowed(request.headers.get("Host")):
            return _send(403, "text/plain", b"this kiosk answers only to its own address (or run with --allow-remote)\n")
        if not request.rel_url.raw_path.startswith("/api/"):
            if unmatched is not None:
                return _send(404, "text/plain", b"not found: try / or /status or /stream.mjpg or /metrics\n")
            return await handler(request)
        route = request.rel_url.raw_path[len("/api/"):]
        if route in ACTIONS:
            return _json(405, {"error": f"/api/{route} changes the kiosk: POST it"}, {"Allow": "POST"})
        if view.field is None:
            return _json(404, {"error": "the kiosk runs without --learn"})
        if not view.public_view and not view.token_ok(request.headers.get(TOKEN_HEADER)):
            return _json(401, {"error": f"the field loop's pages need the kiosk token ({TOKEN_HEADER} header; "
                                        "the run can make them public with --public-view)"})
        if unmatched is not None:
            return _json(404, {"error": f"no /api/{route[:100]}"})
        return await handler(request)

    # --- reads ----------------------------------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.Response:
        lang = choose(request.query.get("lang"), self.view.lang, request.headers.get("Accept-Language"))
        return _send(200, "text/html; charset=utf-8", render(lang), {"Content-Language": lang, "Vary": "Accept-Language"})

    async def static(self, request: web.Request) -> web.Response:
        found = static_file(request.match_info["name"])
        if found is None:
            return _send(404, "text/plain", b"not found\n")
        return _send(200, found[1], found[0], {"Cache-Control": "max-age=3600"})  # the same until an upgrade

    async def status(self, request: web.Request) -> web.Response:
        lang = choose(request.query.get("lang"), self.view.lang, request.headers.get("Accept-Language"))
        return _json(200, await self.view.run(self.view.status, lang))

    async def frame(self, request: web.Request) -> web.Response:
        got = await self.view.jpeg()
        return _send(503, "text/plain", b"no frame yet\n") if got is None else _send(200, "image/jpeg", got[1])

    async def metrics(self, request: web.Request) -> web.Response:
        view = self.view
        if view.metrics is None:
            return _send(404, "text/plain", b"this run keeps no metrics: pip install prometheus_client\n")
        body, kind = await view.run(view.metrics.exposition, request.headers.get("Accept"))
        return _send(200, kind, body)

    async def collected(self, request: web.Request) -> web.Response:
        field = self.view.field
        return _json(200, await self.view.run(lambda: {"items": field.items(), "paused": field.collector.paused}))

    async def collected_image(self, request: web.Request) -> web.Response:
        return _send(200, "image/jpeg", await self.view.run(self.view.field.image, request.match_info["id"]))

    async def labelled(self, request: web.Request) -> web.Response:
        return _json(200, await self.view.run(self.view.field.labelled_items))

    async def labelled_image(self, request: web.Request) -> web.Response:
        # The router decodes a segment after matching it: a class name's %2F stays inside {label}.
        found = request.match_info
        return _send(200, "image/jpeg", await self.view.run(self.view.field.labelled_image, found["label"], found["id"]))

    async def classes(self, request: web.Request) -> web.Response:
        return _json(200, await self.view.run(self.view.field.classes))

    async def job(self, request: web.Request) -> web.Response:
        return _json(200, dict(self.view.field.job))

    async def versions(self, request: web.Request) -> web.Response:
        return _json(200, await self.view.run(self.view.field.versions))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """MJPEG at most ``max_fps``: each part is the newest frame, sent once a newer one than the last exists."""
        view, loop = self.view, asyncio.get_running_loop()
        if view.viewers >= MAX_VIEWERS:
            return _json(503, {"error": f"{MAX_VIEWERS} viewers already watch this kiosk, the most it serves; "
                                        "close one, or poll /frame.jpg"})
        if view.on_reserve(request.protocol):  # a stream would hold a slot kept for one quick request
            return _json(503, {"error": "this kiosk has as many connections open as it keeps; poll /frame.jpg, "
                                        "or try the stream again in a moment"})
        view.viewers += 1
        response = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                               "Cache-Control": "no-store"})
        try:
            await response.prepare(request)
            version, period = -1, 1.0 / view.max_fps
            while not view.closed.is_set() and request.transport is not None and not request.transport.is_closing():
                started = loop.time()
                got = await view.next_jpeg(version)
                if got is None or got[0] == version:
                    continue
                version, data = got
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                        + data + b"\r\n")
                await asyncio.wait_for(response.write(part), WRITE_TIMEOUT_S)
                await asyncio.sleep(max(0.0, period - (loop.time() - started)))
        except asyncio.TimeoutError:  # stopped reading: its frames would pile up here
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # the viewer left
        except Exception:  # the headers are sent: no 500 can follow, so the stream just ends
            log.debug("web view: an MJPEG stream failed", exc_info=True)
        finally:
            view.viewers -= 1
        return response

    # --- actions --------------------------------------------------------------------------------------------------
    async def act(self, request: web.Request) -> web.Response:
        action = request.path[len("/api/"):]
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        # A teach waits for its frames (up to a minute): its deadline is that much longer.
        timeout = HANDLER_TIMEOUT_S + (TEACH_MAX_SECONDS if action == "teach" else 0)
        done = await self.view.run(self._act, action, body, timeout=timeout)
        return _json(202 if action == "apply" else 200, done)

    async def _body(self, request: web.Request) -> dict | web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _json(413, {"error": f"a request body is at most {MAX_BODY} bytes"})
        if request.body_exists and not request.headers.get("Content-Type", "").startswith("application/json"):
            return _json(415, {"error": "send JSON (Content-Type: application/json)"})
        try:
            raw = await _read_body(request)
        except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the cap
            return _json(413, {"error": f"a request body is at most {MAX_BODY} bytes"})
        except asyncio.TimeoutError:
            response = _json(408, {"error": f"the body came slower than {BODY_MIN_BYTES_PER_S} bytes/s after "
                                            f"{BODY_GRACE_S:g} s; the kiosk cut it"})
            response.force_close()
            return response
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):  # RecursionError: 60 kB of '[' nest deeper than Python recurses
            return _json(400, {"error": "the body is not JSON"})
        if not isinstance(body, dict):
            return _json(400, {"error": "the body must be a JSON object"})
        return body

    def _act(self, action: str, body: dict) -> dict:
        """On the pool: the field loop moves files and waits for frames."""
        field, many = self.view.field, "ids" in body  # {"ids": [...]}: a group or a selection at once
        if action == "label":
            return field.label_many(body["ids"], body.get("label")) if many else field.label(body.get("id"), body.get("label"))
        if action == "discard":
            return field.discard_many(body["ids"]) if many else field.discard(body.get("id"))
        if action == "relabel":
            return field.relabel(body.get("id"), body.get("label"))
        if action == "unlabel":
            return field.unlabel_many(body["ids"]) if many else field.unlabel(body.get("id"))
        if action == "teach":
            return field.teach(body.get("label"), body.get("frames", 20), body.get("seconds", 4.0))
        if action == "apply":
            return field.apply()
        return field.undo()


async def _read_body(request: web.Request) -> bytes:
    """The whole body (at most ``MAX_BODY``), or ``asyncio.TimeoutError`` once it falls under the floor: after
    ``BODY_GRACE_S``, ``BODY_MIN_BYTES_PER_S`` on average (aiohttp has a size cap, no rate)."""
    loop = asyncio.get_running_loop()
    started, body = loop.time(), bytearray()
    while True:
        # When what came so far stops being enough: the next bytes must come before then.
        deadline = started + BODY_GRACE_S + len(body) / BODY_MIN_BYTES_PER_S
        # 1 ms at least: bytes already here are taken even by a loop that ran late.
        chunk = await asyncio.wait_for(request.content.readany(), max(deadline - loop.time(), 0.001))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(MAX_BODY, len(body))
