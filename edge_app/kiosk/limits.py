"""The kiosk server's limits and wire names, in one place: what :mod:`edge_app.kiosk.server` (connections) and
:mod:`edge_app.kiosk.routes` (requests) both hold to, each number saying why; and the two small pieces that
hold them below the routes: the answer to a connection over the cap, and the log that keeps a malformed request
to one debug line."""

from __future__ import annotations

import asyncio
import logging
import sys

BOUNDARY = "edgeclsframe"
TOKEN_HEADER = "X-Edgecls-Token"
ACTIONS = ("label", "discard", "relabel", "unlabel", "teach", "apply", "undo")

# A kiosk has a few browsers of a few connections each (a browser opens at most 6 per host): ten times
# that is plenty, and each open connection costs the Pi buffers. At the cap, the connection idle longest
# (between two requests, or never sent one) is closed for the new one: a flood of idle or kept-alive
# sockets cannot lock the page out.
MAX_CONNECTIONS = 64
# When every one of those is busy (bodies arriving slowly, a stuck disk), this many more are let in, each for
# one request that arrives whole at once: a visitor is served while the cap is full of slow ones. Past these
# the new one is told 503 and closed at once.
RESERVED_CONNECTIONS = 2
# A browser sends its request the moment it connects: a reserve connection that has not sent a whole request
# head in this long is one more slow one, and is closed (after its one answer it is closed anyway).
RESERVE_WAIT_S = 2.0
# Each MJPEG viewer costs ~300 kB/s of the device's (often Wi-Fi) uplink and a JPEG per frame sent.
MAX_VIEWERS = 8
# Idle keep-alive connections, and connections that never finish their first request (nothing sent, or
# a header dribbled byte by byte), are closed after this long. The page polls twice a second, so its
# own connection is never idle this long.
KEEPALIVE_S = 15.0
# aiohttp's defaults, made explicit: a browser also sends the cookies of every other app on localhost.
MAX_LINE_BYTES = MAX_FIELD_BYTES = 8190
# The largest legitimate body (a label request) is under 1 kB.
MAX_BODY = 64 * 1024
# The floor under a body: after BODY_GRACE_S it must have kept up BODY_MIN_BYTES_PER_S on average, or it is
# cut (408). The page's bodies are under 1 kB and arrive in milliseconds on any LAN; a body dribbled a byte
# a second is cut after 2 s, and even a full MAX_BODY has 10 s.
BODY_GRACE_S = 2.0
BODY_MIN_BYTES_PER_S = 8 * 1024
# A body the kiosk refused unread (a wrong token, too big) is read and dropped this long after the answer, so
# that the client reads the answer rather than a reset; aiohttp's 10 s let a dribbled body hold a connection.
LINGER_S = BODY_GRACE_S
# A request whose work (a file move, a listing) takes longer has a stuck disk: it is answered 503.
HANDLER_TIMEOUT_S = 30.0
# An MJPEG viewer that stops reading for this long is let go (its frames would pile up in memory).
WRITE_TIMEOUT_S = 10.0
# Threads for blocking work: JPEG encoding (cv2 releases the GIL) and the field loop's disk work. One
# may be held by a teach capture for up to a minute; the others keep the page answering.
WORKERS = 4
# close() waits this long for open requests before it cuts them off.
CLOSE_TIMEOUT_S = 1.0
_FULL_BODY = b'{"error": "too many open connections to this kiosk; try again in a moment"}'
FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % len(_FULL_BODY)) + _FULL_BODY


class ServerLog(logging.LoggerAdapter):
    """aiohttp's server log, through ours: a malformed request (anyone can send hundreds a second) is one debug
    line, never a traceback on stderr; aiohttp's own failures keep their traceback, in the debug log too."""

    def log(self, level, msg, *args, exc_info=None, **kwargs) -> None:
        from aiohttp.http_exceptions import HttpProcessingError

        error = (exc_info if isinstance(exc_info, BaseException) else exc_info[1] if isinstance(exc_info, tuple)
                 else sys.exc_info()[1] if exc_info else None)
        if isinstance(error, HttpProcessingError):
            # The message's first line says what was wrong; the next ones echo the client's bytes.
            lines = [line.strip() for line in str(error.message or error).splitlines() if line.strip()]
            self.logger.debug("web view: " + msg + ": %s", *args, (lines or [type(error).__name__])[0][:200])
        else:
            self.logger.log(logging.DEBUG if error is not None else level, "web view: " + msg, *args,
                            exc_info=exc_info, **kwargs)


class Full(asyncio.Protocol):
    """A connection past the reserve while every open one is busy: told so, and closed at once."""

    def connection_made(self, transport) -> None:
        transport.write(FULL)
        transport.close()
