"""The folder ``edgecls fleet pull`` writes: ``OUT/<class>/<sha256[:16]>.jpg``, ``OUT/manifest.jsonl`` (one line per
photo and device) and ``OUT/.pull-state.json`` (a cursor per device), held by one pull at a time (a lock file).

A photo is written atomically, its manifest line appended and fsynced, then its device's cursor advanced: a host
killed between two steps loses nothing and writes nothing twice. The same photo (sha256) under one class is written
once however many devices send it (a duplicate); under two classes it is kept out of both (a conflict).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field

from edge_app.runtime.errors import FleetError, LabelsError
from edge_app.runtime.files import check_writable, write_json
from edge_app.runtime.labelled import MANIFEST, read_manifest
from edge_app.runtime.labels import check_label

STATE, LOCK = ".pull-state.json", ".pull.lock"
MAGIC = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png"}
_FOLDER_BAD = re.compile(r"[/\\\x00-\x1f\x7f]")
_FACTS = ("t", "model_sha256", "model_label", "score", "why", "novelty", "source", "frame")


def is_key(key: object) -> bool:
    """A cursor key as a device sends it: ``[ctime_ns, "class/file"]``."""
    return (isinstance(key, list) and len(key) == 2 and isinstance(key[0], int) and not isinstance(key[0], bool)
            and isinstance(key[1], str) and len(key[1]) <= 400)


class Refused(Exception):
    """A photo the host will not write (the reason); the cursor passes it: it is not asked for again."""


def class_folder(label: object, taken: dict[str, str]) -> str:
    """``label`` when it can be a folder of OUT: one path level, no hidden or skipped name, and a class name
    (:func:`check_label`: not ``unknown``/``uncertain``, not a look-alike of a class in ``taken``)."""
    if not isinstance(label, str) or not label or len(label.encode("utf-8")) > 200:
        raise Refused(f"class name {str(label)[:60]!r}: not 1-200 bytes of text")
    if _FOLDER_BAD.search(label) or label in (".", "..") or label.startswith((".", "_")) or label != label.strip():
        raise Refused(f"class name {label[:60]!r} cannot be a folder (a '/', a control character, a leading "
                      "'.' or '_', or spaces around it)")
    try:
        return check_label(label, taken, what="class", fix="rename one on the device")
    except LabelsError as e:
        raise Refused(str(e)) from None


def _clean(value):
    """A fact from a device as the manifest may keep it: a finite number, a short string, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    return value[:200] if isinstance(value, str) else None


@dataclass
class _Entry:
    """What the manifest says of one sha256: its file per label, who sent it under which label, a conflict."""

    paths: dict[str, str | None] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    conflict: bool = False


class PulledFolder:
    """``OUT``: the photos, the manifest and the cursors, locked against a second ``fleet pull`` writing into it.

    Example:
        >>> with PulledFolder("pulled/") as out:
        ...     out.cursor("kiosk-01")
    """

    def __init__(self, out: str | os.PathLike):
        self.root = check_writable(out, "--out", inside=True)
        self._lock = self._manifest = None
        self.state: dict = {"version": 1, "devices": {}}
        self.shas: dict[str, _Entry] = {}
        self.taken: dict[str, str] = {}

    def __enter__(self) -> PulledFolder:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / LOCK, "a")  # noqa: SIM115 (held for the whole pull)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise FleetError(f"--out {self.root}: another edgecls fleet pull is writing there; wait for it to "
                             "finish") from None
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self._manifest = open(self.root / MANIFEST, "a", encoding="utf-8")  # noqa: SIM115
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f in (self._manifest, self._lock):
            if f is not None:
                f.close()
        self._manifest = self._lock = None

    def _load(self) -> None:
        path = self.root / STATE
        if path.is_file():
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise FleetError(f"{path} cannot be read ({e}); remove it to pull everything again (photos already "
                                 "here are recognised by their sha256 and not written twice)") from None
            if isinstance(state, dict) and isinstance(state.get("devices"), dict):
                self.state = state
        latest: dict[str, list] = {}
        for record in read_manifest(self.root):
            sha, label, device = record.get("sha256"), record.get("label"), record.get("device")
            if not (isinstance(sha, str) and isinstance(label, str) and isinstance(device, str)):
                continue
            if is_key(record.get("key")):
                latest[device] = record["key"]
            entry = self.shas.setdefault(sha, _Entry())
            entry.paths.setdefault(label, record.get("path") if isinstance(record.get("path"), str) else None)
            entry.seen.add((device, label))
            entry.conflict |= bool(record.get("conflict")) or len(entry.paths) > 1
        for entry in self.shas.values():
            if entry.conflict:  # a host killed between the manifest line and the removal
                self._remove(entry)
        for device, key in latest.items():  # a host killed between a photo's manifest line and its cursor
            cursor = self.cursor(device)
            if cursor is None or tuple(key) > tuple(cursor):
                self.state["devices"].setdefault(device, {})["after"] = key
        for folder in sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            try:
                check_label(folder, self.taken)
            except LabelsError:
                pass

    def cursor(self, device: str) -> list | None:
        entry = self.state["devices"].get(device)
        after = entry.get("after") if isinstance(entry, dict) else None
        return after if is_key(after) else None

    def advance(self, device: str, key: list) -> None:
        """The device's cursor moves to ``key``, on disk at once (atomically): the next pull starts after it."""
        entry = self.state["devices"].setdefault(device, {})
        entry.update(after=key, t=round(time.time(), 3))
        write_json(self.root / STATE, self.state)

    def _append(self, record: dict) -> None:
        self._manifest.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._manifest.flush()
        os.fsync(self._manifest.fileno())

    def _remove(self, entry: _Entry) -> None:
        for label, path in list(entry.paths.items()):
            if path:
                (self.root / path).unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # a class left with no photo is no class: train would refuse it
                    (self.root / path).parent.rmdir()
            entry.paths[label] = None

    def add(self, device: str, status: dict, head: dict, data: bytes) -> tuple[str, dict | None]:
        """Write one checked photo: ``("new"|"known"|"duplicate"|"conflict", what to report or None)``.

        The same sha256 under the same class is written once (the manifest names every device that sent it: a
        duplicate); under two classes it is kept out of both (a conflict); sent again by the same device, known.
        """
        sha, label = head["sha256"], head["label"]
        ext = next(e for magic, e in MAGIC.items() if data.startswith(magic))
        facts = head.get("facts") if isinstance(head.get("facts"), dict) else {}
        record = {"sha256": sha, "path": f"{label}/{sha[:16]}{ext}", "label": label, "device": device,
                  "hostname": _clean(status.get("hostname")), "name": _clean(head.get("name")),
                  **{k: _clean(facts.get(k)) for k in _FACTS}, "mtime": _clean(head.get("mtime")),
                  "size_bytes": len(data), "key": head["key"], "pulled_at": round(time.time(), 3)}
        record["source"] = record["source"] or _clean(status.get("source"))
        entry = self.shas.get(sha)
        if entry is not None and (device, label) in entry.seen:
            return "known", None
        if entry is not None and (entry.conflict or label not in entry.paths):
            self._append({**record, "path": None, "conflict": True})
            entry.paths.setdefault(label, None)
            entry.seen.add((device, label))
            entry.conflict = True
            self._remove(entry)
            return "conflict", {"sha256": sha, "sent": [{"device": d, "label": lab} for d, lab in sorted(entry.seen)]}
        if entry is not None:
            self._append({**record, "path": entry.paths[label], "duplicate": True})
            entry.seen.add((device, label))
            return "duplicate", {"sha256": sha, "label": label, "path": entry.paths[label],
                                 "devices": sorted({d for d, _ in entry.seen})}
        target = self.root / record["path"]
        if target.parent.resolve().parent != self.root.resolve():
            raise Refused(f"class name {label[:60]!r} leads outside {self.root}")
        from edge_app.runtime.files import write_bytes

        write_bytes(target, data)
        self._append(record)
        self.shas[sha] = _Entry({label: record["path"]}, {(device, label)})
        return "new", None
