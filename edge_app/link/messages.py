"""The commands a device takes from the broker, as messages: read and checked before anything they name is touched.

A command is data, never code: a JSON object with a request id first (so even a message too big or too broken
to parse can be answered), the model's sha256 and an ed25519 signature, and the model as base64, an http(s)
URL, or ``"previous": true`` (a rollback). Every problem is a :class:`FleetError` whose message is the ``reason``
of the rejected ack.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from edge_app.runtime.broker import check_model_url
from edge_app.runtime.errors import FleetError

MAX_RUNS = 1000
DEFAULT_RUNS = 50
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_LEADING_ID = re.compile(rb'\s*\{\s*"id"\s*:\s*"([A-Za-z0-9_.:-]{1,100})"')
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Command:
    """A parsed ``cmd/model`` or ``cmd/bench`` message (its model bytes not yet fetched or verified)."""

    id: str
    cmd: str
    sha256: str
    signature: str
    model_b64: str | None = None
    url: str | None = None
    previous: bool = False  # a rollback: the model this device kept when its last deploy replaced it
    name: str = "model.tflite"
    runs: int = DEFAULT_RUNS
    threads: tuple[int, ...] | None = None

    @property
    def origin(self) -> str:
        """Where the model came from, for the installer's log and the swap event."""
        return f"mqtt {self.cmd} {self.id} ({'rollback to the kept model' if self.previous else self.url or self.name})"


def leading_id(payload: bytes) -> str | None:
    """The request id of a message too big or too broken to parse, when it comes first (the host puts it first)."""
    found = _LEADING_ID.match(payload[:300])
    return found.group(1).decode("ascii") if found else None


def command_object(payload: bytes) -> tuple[dict, str]:
    """A command message's JSON object and its request id; raises :class:`FleetError` saying what is wrong."""
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise FleetError(f"the message is not JSON ({e})") from None
    if not isinstance(message, dict):
        raise FleetError("the message must be a JSON object")
    request = message.get("id")
    if not isinstance(request, str) or not _ID.fullmatch(request):
        raise FleetError("the message needs an 'id': 1-100 letters, digits or _ . : -")
    return message, request


def parse_command(cmd: str, payload: bytes, max_payload_bytes: int) -> Command:
    """Check a command message's size, JSON and fields; raises :class:`FleetError` saying what is wrong."""
    if len(payload) > max_payload_bytes:
        raise FleetError(f"the message is {len(payload) / 1e6:.1f} MB, over this device's cap of "
                         f"{max_payload_bytes / 1e6:.0f} MB; send a URL instead of the model bytes")
    message, request = command_object(payload)
    for key in ("sha256", "signature"):
        if not isinstance(message.get(key), str):
            raise FleetError(f"the message has no '{key}' string; sign it with: edgecls fleet "
                             f"{'deploy' if cmd == 'model' else cmd} MODEL --to DEVICE --key KEY")
    model, url, previous = message.get("model"), message.get("url"), message.get("previous", False)
    if previous is not False and (previous is not True or cmd != "model"):
        raise FleetError("'previous' may only be true, in a deploy (a rollback to the model this device kept)")
    if (model is not None) + (url is not None) + previous != 1:
        raise FleetError("the message needs exactly one of 'model' (base64 bytes) or 'url' (http or https), or "
                         "'previous': true (a rollback)")
    if model is not None and not isinstance(model, str):
        raise FleetError("'model' must be a base64 string")
    if url is not None:
        url = check_model_url(url)  # no user:password@ (never fetched, never echoed)
    name = message.get("name")
    name = name if isinstance(name, str) and _NAME.fullmatch(name) and name.endswith(".tflite") else "model.tflite"
    runs, threads = DEFAULT_RUNS, None
    if cmd == "bench":
        runs = message.get("runs", DEFAULT_RUNS)
        if not isinstance(runs, int) or isinstance(runs, bool) or not 1 <= runs <= MAX_RUNS:
            raise FleetError(f"'runs' must be a whole number from 1 to {MAX_RUNS}, got {runs!r}")
        threads = message.get("threads")
        cores = os.cpu_count() or 1
        if threads is not None:
            if (not isinstance(threads, list) or not 1 <= len(threads) <= 4 or
                    not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= max(cores, 4)
                            for n in threads)):
                raise FleetError(f"'threads' must be a list of 1-4 thread counts from 1 to {max(cores, 4)}, "
                                 f"got {str(threads)[:60]}")
            threads = tuple(dict.fromkeys(threads))
    return Command(id=request, cmd=cmd, sha256=message["sha256"], signature=message["signature"], model_b64=model,
                   url=url, previous=previous, name=name, runs=runs, threads=threads)
