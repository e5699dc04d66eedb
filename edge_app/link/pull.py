"""``edgecls fleet pull`` on the device: on a signed request, send the labelled field photos the host lacks.

The kiosk keeps what its operator labelled in ``--collect DIR``'s ``labelled/<class>/<id>.jpg`` (+ ``<id>.json``,
the collector's sidecar). A request (``edgecls/ID/cmd/pull``) is verified before anything is read: signed by the
trusted key over its own fields (``edgecls-pull-v1:`` + canonical JSON, :func:`~edge_app.runtime.signing.verify_request`),
for this device, made within the last 10 minutes. It carries the host's cursor, the key of the last photo it wrote;
the device sends the photos after it, oldest first, as JSON messages on ``edgecls/ID/pull`` (QoS 1, never
retained), then an end message, and never more than the request's ``max_photos`` and ``max_bytes``.

A photo's key is ``[ctime_ns, "<class>/<file>"]``: the kiosk's review *moves* a frame into ``labelled/`` and a move
keeps its mtime, but sets its ctime, so a frame labelled today of a photo taken last week still comes after the
cursor. Photos that arrived in the last few seconds wait for the next pull (one being moved in while the folder
is listed must not be passed by the cursor unseen).

Sending runs on a thread of its own, one pull at a time, a few messages in flight (each waits for the broker's
PUBACK), so the camera loop, the status and the events never wait for it and paho's queue never fills with photos.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_app.link.messages import command_object, leading_id
from edge_app.runtime.broker import MAX_PHOTO_BYTES
from edge_app.runtime.errors import FleetError
from edge_app.runtime.files import FileTooLarge, NotRegularFile, read_bounded
from edge_app.runtime.signing import sha256_hex, verify_request

log = logging.getLogger("edgecls")

LABELLED = "labelled"  # edge_app.kiosk.collect.LABELLED (the link may not import the kiosk: DESIGN.md's rooms)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_SIDECAR_BYTES = 64 * 1024
CHUNK_BYTES = 512 * 1024  # of photo per message (base64: 683 kB), far under any broker's message cap
MAX_PHOTOS = 5000  # per pull, whatever a request asks
MAX_BYTES = 2 * 1024 ** 3
SETTLE_S = 2.0  # photos moved in more recently wait for the next pull
IN_FLIGHT = 4  # messages handed to paho and not yet confirmed by the broker
PUBLISH_TIMEOUT_S = 30.0
MAX_REQUEST_BYTES = 4096  # a request is a few hundred bytes
_FACTS = {"t": (int, float), "frame": (int,), "why": (str,), "label": (str,), "score": (int, float),
          "novelty": (int, float), "model_sha256": (str,), "source": (str,)}

# publish(kind, payload) -> paho's MQTTMessageInfo, for edgecls/<this device>/<kind>
Publish = Callable[[str, str], object]
# ack(request, cmd, accepted, reason, remember=False, **fields): the command desk's answer on edgecls/ID/ack
Ack = Callable[..., None]


@dataclass(frozen=True)
class PullRequest:
    """A verified ``cmd/pull`` request: its id, the host's cursor and the most it takes this time."""

    id: str
    after: tuple[int, str] | None
    max_photos: int
    max_bytes: int


@dataclass(frozen=True)
class Photo:
    """A labelled photo on disk: its class (the folder it is in), its key in sending order, size and mtime."""

    path: Path
    label: str
    key: tuple[int, str]
    size: int
    mtime: float


def parse_request(payload: bytes, device_id: str, trust, now: float | None = None) -> PullRequest:
    """A ``cmd/pull`` message, verified (signature first) and checked; raises :class:`FleetError` saying why not.

    Example:
        >>> parse_request(message.payload, "kiosk-1", load_public_key("fleet.key.pub"))
        PullRequest(id='9f2c...', after=(1718000000000000000, 'tomato_healthy/x.jpg'), max_photos=500, ...)
    """
    message, request = command_object(payload)
    if trust is None:
        raise FleetError("field photos are sent only on a request signed by the fleet key, and this device runs "
                         "without --trust KEY.pub")
    verify_request(trust, "pull", message, now=now)
    if message.get("device_id") != device_id:
        raise FleetError(f"the request is for device {str(message.get('device_id'))[:64]!r}, not {device_id!r}")
    after = message.get("after")
    if after is not None:
        if not (isinstance(after, list) and len(after) == 2 and isinstance(after[0], int)
                and not isinstance(after[0], bool) and isinstance(after[1], str)):
            raise FleetError(f"'after' must be null or [ctime_ns, \"class/file\"], got {str(after)[:80]}")
        after = (after[0], after[1])
    limits = []
    for name, cap in (("max_photos", MAX_PHOTOS), ("max_bytes", MAX_BYTES)):
        value = message.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FleetError(f"'{name}' must be a whole number of 1 or more, got {str(value)[:40]}")
        limits.append(min(value, cap))
    return PullRequest(request, after, *limits)


def labelled_photos(folder: Path, after: tuple[int, str] | None = None, settled_before_ns: int | None = None,
                    too_big: set[str] | None = None) -> list[Photo]:
    """The photos in ``folder``/labelled/<class>/ after the cursor ``after``, oldest first.

    Only regular files (no symlinks, FIFOs or devices), in class folders that are real folders (not links, not
    ``.``/``_`` names the dataset readers skip), at most :data:`MAX_PHOTO_BYTES` (a bigger one is logged once,
    into ``too_big``), moved in before ``settled_before_ns``.
    """
    root = Path(folder) / LABELLED
    found = []
    try:
        classes = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in classes:
        if entry.name.startswith((".", "_")) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            files = list(os.scandir(entry.path))
        except OSError:
            continue
        for file in files:
            if file.name.startswith(".") or os.path.splitext(file.name)[1].lower() not in PHOTO_SUFFIXES:
                continue
            try:
                info = file.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            name = f"{entry.name}/{file.name}"
            if info.st_size > MAX_PHOTO_BYTES:
                if too_big is not None and name not in too_big:
                    too_big.add(name)
                    log.warning("fleet pull: not sending %s: %.1f MB, over the %.0f MB a photo may be", file.path,
                                info.st_size / 1e6, MAX_PHOTO_BYTES / 1e6)
                continue
            key = (info.st_ctime_ns, name)
            if (after is None or key > after) and (settled_before_ns is None or info.st_ctime_ns < settled_before_ns):
                found.append(Photo(Path(file.path), entry.name, key, info.st_size, info.st_mtime))
    return sorted(found, key=lambda p: p.key)


def sidecar_facts(photo: Path) -> dict:
    """What the collector's sidecar says of a photo (time, why kept, the model's verdict and sha256, source);
    ``{}`` when it has none or it cannot be read. The model's verdict is ``model_label``: the class is the folder."""
    try:
        record = json.loads(read_bounded(photo.with_suffix(".json"), MAX_SIDECAR_BYTES))
    except (OSError, NotRegularFile, FileTooLarge, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(record, dict):
        return {}
    facts = {}
    for key, types in _FACTS.items():
        value = record.get(key)
        if isinstance(value, types) and not isinstance(value, bool):
            facts["model_label" if key == "label" else key] = value[:200] if isinstance(value, str) else value
    return facts


class FieldPull:
    """Answers ``cmd/pull`` requests: verifies each, then sends the photos on a thread of its own, one pull at a time.

    Args:
        device_id: this device (a request for another is refused).
        folder: the ``--collect`` folder, or ``None``: every request is answered ``accepted: false``.
        trust: the public key requests must be signed with; ``None`` refuses them all.
        publish: ``publish(kind, payload)`` → paho's ``MQTTMessageInfo`` (QoS 1, not retained).
        chunk_bytes: photo bytes per message; a larger photo goes in parts.
        settle_s: photos moved into ``labelled/`` more recently than this wait for the next pull.

    Example:
        >>> pull = FieldPull("kiosk-1", Path("/var/lib/edgecls/field"), trust, publish)
        >>> pull.submit(message.payload, desk.ack)   # on paho's thread: returns at once
    """

    def __init__(self, device_id: str, folder: str | os.PathLike | None, trust, publish: Publish,
                 chunk_bytes: int = CHUNK_BYTES, settle_s: float = SETTLE_S):
        self.device_id, self.trust, self.publish = device_id, trust, publish
        self.folder = Path(folder) if folder is not None else None
        self.chunk_bytes, self.settle_s = chunk_bytes, settle_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running: str | None = None
        # Final answers of verified requests only: an unsigned message cannot claim a request id first.
        self._answered: collections.OrderedDict[str, tuple[bool, str, dict]] = collections.OrderedDict()
        self._too_big: set[str] = set()
        self._closed = False

    def submit(self, payload: bytes, ack: Ack) -> None:
        """Take a request (paho's network thread: never raises). It is verified here, before it can take the one
        sending slot: a request is a few hundred bytes and an ed25519 check a fraction of a millisecond."""
        try:
            if len(payload) > MAX_REQUEST_BYTES:
                raise FleetError(f"a pull request is at most {MAX_REQUEST_BYTES} bytes, this one {len(payload)}")
            request = parse_request(payload, self.device_id, self.trust)
        except FleetError as e:
            ack(leading_id(payload), "pull", False, str(e))
            return
        except Exception as e:  # the host still gets an answer
            ack(leading_id(payload), "pull", False, f"the device failed: {type(e).__name__}: {e}"[:500])
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                if request.id == self._running:
                    return  # QoS 1 delivered the running request again: its photos are on their way
                ack(request.id, "pull", False, "busy: a pull is being sent; one at a time, try again")
                return
            earlier = self._answered.get(request.id)
            if earlier is None:
                self._running = request.id
                self._thread = threading.Thread(target=self._guarded, args=(request, ack), name="mqtt-pull",
                                                daemon=True)
                self._thread.start()
                return
        accepted, reason, fields = earlier  # a repeat of a request already answered: the answer, not the photos
        ack(request.id, "pull", accepted, reason, **fields)

    def close(self) -> None:
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=2)

    def _guarded(self, request: PullRequest, ack: Ack) -> None:
        try:
            accepted, reason, fields = self._pull(request, ack)
        except Exception as e:  # a worker must outlive any one request, and the host still gets an answer
            log.warning("fleet pull %s failed: %s", request.id, e)
            accepted, reason, fields = False, f"the device failed: {type(e).__name__}: {e}"[:500], {"state": "done"}
        with self._lock:
            self._answered[request.id] = (accepted, reason, fields)
            while len(self._answered) > 64:
                self._answered.popitem(last=False)
        ack(request.id, "pull", accepted, reason, **fields)

    def _pull(self, request: PullRequest, ack: Ack) -> tuple[bool, str, dict]:
        """Send what the request asks for; the final answer ``(accepted, reason, fields)``."""
        if self.folder is None:
            return False, "this device keeps no field photos: it runs without --collect DIR", {}
        settled = time.time_ns() - int(self.settle_s * 1e9)
        waiting = labelled_photos(self.folder, request.after, settled, self._too_big)
        chosen, size = [], 0
        for photo in waiting:
            if len(chosen) >= request.max_photos or (chosen and size + photo.size > request.max_bytes):
                break
            chosen.append(photo)
            size += photo.size
        more = len(chosen) < len(waiting)
        ack(request.id, "pull", True, f"sending {len(chosen)} photo(s)", state="running", photos=len(chosen),
            bytes=size, more=more)
        sent = sent_bytes = skipped = 0
        last = None
        window: collections.deque = collections.deque()
        try:
            for photo in chosen:
                if self._closed:
                    raise FleetError("the device is shutting down")
                try:
                    data = read_bounded(photo.path, MAX_PHOTO_BYTES)
                except (OSError, NotRegularFile, FileTooLarge) as e:
                    log.warning("fleet pull: not sending %s: %s", photo.path, getattr(e, "strerror", None) or e)
                    skipped += 1
                    last = photo.key
                    continue
                head = {"id": request.id, "seq": sent, "name": photo.path.stem, "label": photo.label,
                        "key": list(photo.key), "size": len(data), "sha256": sha256_hex(data), "mtime": photo.mtime,
                        "facts": sidecar_facts(photo.path)}
                parts = max(1, -(-len(data) // self.chunk_bytes))
                for part in range(parts):
                    chunk = data[part * self.chunk_bytes:(part + 1) * self.chunk_bytes]
                    self._send(window, json.dumps({**head, "part": part, "parts": parts,
                                                   "data": base64.b64encode(chunk).decode("ascii")}))
                    if part == 0:
                        head.pop("facts")
                sent, sent_bytes, last = sent + 1, sent_bytes + len(data), photo.key
            end = {"id": request.id, "done": True, "sent": sent, "bytes": sent_bytes, "skipped": skipped,
                   "more": more, "last": list(last) if last else None}
            self._send(window, json.dumps(end))
            while window:
                self._confirmed(window.popleft())
        except FleetError as e:
            try:  # best effort: the host hears it now rather than after its timeout
                self.publish("pull", json.dumps({"id": request.id, "done": True, "sent": sent, "error": str(e)}))
            except Exception as again:
                log.debug("fleet pull: the end message was not sent: %s", again)
            return False, str(e), {"state": "done", "sent": sent, "bytes": sent_bytes}
        log.info("fleet pull %s: sent %d photo(s), %.1f MB%s", request.id, sent, sent_bytes / 1e6,
                 " (more wait for the next pull)" if more else "")
        return True, f"sent {sent} photo(s)" + (", more wait for the next pull" if more else ""), {
            "state": "done", "sent": sent, "bytes": sent_bytes, "skipped": skipped, "more": more}

    def _send(self, window: collections.deque, payload: str) -> None:
        """Hand one message to paho, waiting while its queue is full and while too many are unconfirmed."""
        from paho.mqtt.client import MQTT_ERR_QUEUE_SIZE

        deadline = time.monotonic() + PUBLISH_TIMEOUT_S
        while (info := self.publish("pull", payload)).rc == MQTT_ERR_QUEUE_SIZE:
            if self._closed or time.monotonic() > deadline:
                raise FleetError(f"the link's outgoing queue stayed full for {PUBLISH_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        window.append(info)
        while len(window) >= IN_FLIGHT:
            self._confirmed(window.popleft())

    def _confirmed(self, info) -> None:
        try:
            info.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as e:
            raise FleetError(f"lost the broker while sending photos ({e}); the next pull continues from the last "
                             "photo the host wrote") from None
        if not info.is_published():
            raise FleetError(f"the broker confirmed no photo for {PUBLISH_TIMEOUT_S:.0f} s; the next pull continues "
                             "from the last photo the host wrote")
