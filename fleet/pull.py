"""``edgecls fleet pull``: the labelled field photos of devices, brought home as a folder per class + ``manifest.jsonl``.

The host signs one request per device (``edgecls/ID/cmd/pull``: ``{"id", "device_id", "after", "max_photos",
"max_bytes", "t", "signature"}``, ed25519 over ``edgecls-pull-v1:`` + canonical JSON); the device verifies it and
sends the photos after the cursor ``after`` on ``edgecls/ID/pull`` (see :mod:`edge_app.link.pull`). Nothing a device
sends is trusted as a path or a type: every class name passes :func:`~edge_app.runtime.labels.check_label` and the
folder-name rules here, a photo must be a JPEG or PNG (its first bytes), at most ``MAX_PHOTO_BYTES``, with the
sha256 it claims; the file is named by that sha256.

``OUT/<class>/<sha256[:16]>.jpg`` is what ``edgecls train --field`` and ``edgecls learn`` read as it is;
``OUT/manifest.jsonl`` says where each came from (one line per photo and device); ``OUT/.pull-state.json`` keeps a
cursor per device, advanced (atomically) only once a photo is written, so an interrupted pull continues where it
stopped and nothing is sent twice.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from edge_app.runtime.broker import MAX_PHOTO_BYTES, topic
from edge_app.runtime.progress import counter
from edge_app.runtime.signing import sha256_hex, sign_request
from fleet.pulled import MAGIC, PulledFolder, Refused, class_folder, is_key

log = logging.getLogger("edgecls")

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class DeviceRun:
    """One device's pull: what it said, what came, what was written; ``result`` once it is over."""

    device: str
    request: str
    bar: object
    heard: float
    total: int | None = None
    photos: int = 0
    bytes: int = 0
    counts: dict = field(default_factory=lambda: dict.fromkeys(("new", "known", "duplicate", "conflict", "refused"), 0))
    more: bool = False
    result: str | None = None
    reason: str = ""
    running: bool = False
    next_seq: int = 0
    parts: list = field(default_factory=list)
    head: dict | None = None


def check_head(body: dict, taken: dict[str, str]) -> dict:
    """The first message of a photo, checked: its fields are what they claim to be, its class a folder name."""
    size, parts, key = body.get("size"), body.get("parts"), body.get("key")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_PHOTO_BYTES:
        raise Refused(f"a photo of {str(size)[:20]} bytes (at most {MAX_PHOTO_BYTES / 1e6:.0f} MB are taken)")
    if not isinstance(parts, int) or isinstance(parts, bool) or not 1 <= parts <= size:
        raise Refused(f"a photo in {str(parts)[:20]} parts")
    if not isinstance(body.get("sha256"), str) or not _SHA256.fullmatch(body["sha256"]):
        raise Refused("a photo without a sha256 (64 lowercase hex digits)")
    if not is_key(key):
        raise Refused("a photo without a cursor key [ctime_ns, \"class/file\"]")
    return {**body, "label": class_folder(body.get("label"), taken)}


def pull_photos(fleet, out: PulledFolder, key, targets: list[str], statuses: dict[str, dict], max_photos: int,
                max_bytes: int, timeout_s: float) -> tuple[dict[str, DeviceRun], list[dict], list[dict]]:
    """Ask every target for its photos and take them until each has finished or been silent for ``timeout_s``.

    Returns ``(runs by device, duplicates, conflicts)`` of this pull.
    """
    if not targets:
        return {}, [], []
    fleet.subscribe(*(topic(t, "ack") for t in targets), *(topic(t, "pull") for t in targets))
    runs: dict[str, DeviceRun] = {}
    duplicates, conflicts = [], []
    try:
        for position, device in enumerate(targets):
            request = uuid.uuid4().hex[:16]
            body = sign_request(key, "pull", {"id": request, "device_id": device, "after": out.cursor(device),
                                              "max_photos": max_photos, "max_bytes": max_bytes,
                                              "t": int(time.time())})
            runs[device] = DeviceRun(device, request, counter(device, unit="photo", position=position),
                                     time.monotonic())
            log.info("asking %s for its field photos%s", device, " (all of them)" if body["after"] is None else
                     " after the last one pulled")
            fleet.publish(topic(device, "cmd/pull"), json.dumps(body))
        while waiting := [r for r in runs.values() if r.result is None]:
            now = time.monotonic()
            for run in waiting:
                if now - run.heard > timeout_s:
                    run.result = "no answer"
                    run.reason = (f"silent for {timeout_s:.0f} s after {run.photos} photo(s); the next pull continues"
                                  if run.running else f"no answer within {timeout_s:.0f} s")
            deadline = min((r.heard + timeout_s for r in runs.values() if r.result is None), default=now)
            message = fleet.next_message(deadline - now)
            if message is None:
                continue
            run = runs.get(message.device_id)
            if run is None or run.result is not None or message.body.get("id") != run.request:
                continue
            run.heard = time.monotonic()
            if message.kind == "ack":
                _on_ack(run, message.body)
            elif message.kind == "pull":
                found = _on_photo(run, message.body, out, statuses.get(run.device, {}))
                if found is not None:
                    (conflicts if "sent" in found else duplicates).append(found)
    finally:
        for run in runs.values():
            run.bar.close()
    return runs, duplicates, conflicts


def _on_ack(run: DeviceRun, ack: dict) -> None:
    if ack.get("accepted") and ack.get("state") == "running":
        run.running = True
        total = ack.get("photos")
        if isinstance(total, int) and not isinstance(total, bool):
            run.total = run.bar.total = total
            run.bar.refresh()
    elif not ack.get("accepted") and not run.running:
        run.result, run.reason = "refused", str(ack.get("reason") or "")[:300]
    # The final ack ('state: done') is the device's log line; the end of the photos is the end message on .../pull.


def _on_photo(run: DeviceRun, body: dict, out: PulledFolder, status: dict) -> dict | None:
    """One message on ``edgecls/ID/pull``: a part of a photo, or the end; returns a duplicate or conflict to report."""
    run.running = True
    if body.get("done") is True:
        return _on_end(run, body, out)
    seq, part = body.get("seq"), body.get("part")
    if not (isinstance(seq, int) and isinstance(part, int)) or isinstance(seq, bool) or isinstance(part, bool):
        run.result, run.reason = "failed", "the device sent a message that is no photo part (no 'seq' or 'part')"
        return None
    if seq < run.next_seq or (run.head is not None and seq == run.next_seq and 0 <= part < len(run.parts)):
        return None  # the rest of a refused photo, or a QoS 1 duplicate of what is taken already
    if part == 0 and seq == run.next_seq and run.head is None:
        try:
            run.head, run.parts = check_head(body, out.taken), []
        except Refused as e:
            return _refuse(run, body, out, str(e))
    elif run.head is None or seq != run.next_seq or part != len(run.parts):
        # A message lost on the way (the host's connection dropped): what is written stays; the next pull resends.
        run.result, run.reason = "interrupted", (f"a message was lost after {run.photos} photo(s); the next pull "
                                                 "continues from the last photo written")
        return None
    try:
        chunk = base64.b64decode(body.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        return _refuse(run, run.head, out, "a part that is not base64")
    run.parts.append(chunk)
    if sum(map(len, run.parts)) > run.head["size"]:
        return _refuse(run, run.head, out, f"more bytes than the {run.head['size']} it claimed")
    if len(run.parts) < run.head["parts"]:
        return None
    head, data = run.head, b"".join(run.parts)
    run.head, run.parts, run.next_seq = None, [], run.next_seq + 1
    if len(data) != head["size"]:
        return _refuse(run, head, out, f"{len(data)} bytes, not the {head['size']} it claimed")
    if sha256_hex(data) != head["sha256"]:
        return _refuse(run, head, out, "bytes that do not have the sha256 it claimed")
    if not any(data.startswith(magic) for magic in MAGIC):
        return _refuse(run, head, out, "not a JPEG or PNG (its first bytes say so)")
    try:
        outcome, found = out.add(run.device, status, head, data)
    except Refused as e:
        return _refuse(run, head, out, str(e))
    out.advance(run.device, head["key"])
    run.counts[outcome] += 1
    run.photos, run.bytes = run.photos + 1, run.bytes + len(data)
    run.bar.update(1)
    return found


def _refuse(run: DeviceRun, head: dict, out: PulledFolder, reason: str) -> None:
    log.warning("%s: refused %s %r: %s", run.device, "photo", str(head.get("name"))[:80], reason)
    run.counts["refused"] += 1
    run.photos += 1
    run.bar.update(1)
    run.head, run.parts = None, []
    if head.get("seq") == run.next_seq:  # its other parts are passed over
        run.next_seq += 1
    if is_key(head.get("key")):
        out.advance(run.device, head["key"])  # passed, not asked for again: a bad photo stays bad
    return None


def _on_end(run: DeviceRun, body: dict, out: PulledFolder) -> None:
    if body.get("error"):
        run.result, run.reason = "failed", str(body["error"])[:300]
        return None
    run.more = body.get("more") is True
    run.result = "done"
    run.reason = "more wait: pull again" if run.more else ""
    last = body.get("last")
    # Photos the device skipped at the end (unreadable) are passed too, when every photo it sent arrived.
    if is_key(last) and body.get("sent") == run.next_seq and run.head is None:
        out.advance(run.device, last)
    return None


def pull_rows(runs: dict[str, DeviceRun], skipped: dict[str, str]) -> list[dict]:
    """One row per target, for the table and ``--json``."""
    rows = [{"device_id": d, "result": "not sent", "reason": r, "photos": 0, "bytes": 0, "new": 0, "known": 0,
             "duplicates": 0, "conflicts": 0, "refused": 0, "more": None} for d, r in skipped.items()]
    for device, run in runs.items():
        rows.append({"device_id": device, "result": run.result or "no answer", "reason": run.reason,
                     "photos": run.photos, "bytes": run.bytes, "new": run.counts["new"], "known": run.counts["known"],
                     "duplicates": run.counts["duplicate"], "conflicts": run.counts["conflict"],
                     "refused": run.counts["refused"], "more": run.more})
    return sorted(rows, key=lambda r: r["device_id"])
