"""The kiosk's frames and classes: review collected frames, label or discard them, look at the labelled ones
again (move one to another class, or send it back to the inbox), and the checks every class name passes.

Folders (``--collect DIR``): ``DIR/inbox/<id>.jpg`` + ``<id>.json`` wait for review;
``DIR/labelled/<class>/<id>.jpg`` (+ ``.json``) are the dataset ``edgecls learn`` reads. Every name and id
that arrives from the page is checked before it becomes part of a path, and resolves inside ``DIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import unicodedata
from pathlib import Path

from edge_app.kiosk.collect import INBOX, LABELLED, FrameCollector
from edge_app.kiosk.similar import groups, nearest, vectors
from edge_app.runtime.errors import EdgeclsError
from edge_app.runtime.files import FileTooLarge, NotRegularFile, read_bounded, write_json
from edge_app.runtime.labelled import loose_key
from edge_app.runtime.labels import check_label, label_key

MAX_CLASS_NAME = 64
# A class name is a folder name: Linux allows 255 bytes (NAME_MAX), and 64 emoji are already 256. 200 leaves
# room for what tools add to a folder name (a sync's temporary suffix, a backup's ".orig").
MAX_CLASS_BYTES = 200
# A kiosk frame is a JPEG of at most a few MB; anything bigger in its folders was not put there by edgecls.
MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_SIDECAR_BYTES = 64 * 1024  # a frame's JSON with its signature is about 6 kB
REVIEW_LIMIT = 120  # frames listed for review: two camera minutes of one leaf, grouped
MAX_BULK = 200  # frames one request labels, discards or sends back
MAX_EXAMPLES_READ = 500  # a class's newest labelled frames searched for "looks like these"
_FRAME_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


class Refused(EdgeclsError):
    """A kiosk request that cannot be done now or as asked; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_class_name(name: object) -> str:
    """A class name that is safe as a folder name and readable: trimmed, 1-64 characters of at most 200
    bytes in UTF-8, no path parts, and not one of the kiosk's own verdicts (``unknown``, ``uncertain``).

    Example:
        >>> check_class_name("  late blight ")
        'late blight'
    """
    if not isinstance(name, str):
        raise Refused("a class name must be text")
    name = " ".join(name.split())
    if not name or len(name) > MAX_CLASS_NAME:
        raise Refused(f"a class name needs 1 to {MAX_CLASS_NAME} characters")
    if any(c in name for c in "/\\\0") or name.startswith((".", "_")) or not name.isprintable():
        raise Refused(f"{name!r} cannot be a class name: no '/', '\\', control characters, or a leading '.' or '_'")
    size = len(name.encode())  # isprintable() above has refused lone surrogates, which cannot be encoded
    if size > MAX_CLASS_BYTES:
        raise Refused(f"{name[:16]!r}... is {size} bytes in UTF-8; a class name is a folder name and may take at "
                      f"most {MAX_CLASS_BYTES} (emoji and many scripts take 3-4 bytes a character): shorten it")
    return check_label(name, what="name", error=Refused)  # not 'unknown' or 'uncertain', the kiosk's own verdicts


class FrameReview:
    """Review and labelled frames on the folders ``--collect DIR`` keeps; the base of
    :class:`~edge_app.kiosk.field.FieldLearning`, whose page calls these from the web server's threads.

    Args:
        collector: the run's :class:`~edge_app.kiosk.collect.FrameCollector`.
        swapper: the run's :class:`~edge_app.live.swap.ModelSwapper` (the running model's classes).
    """

    def __init__(self, collector: FrameCollector, swapper):
        self.collector = collector
        self.swapper = swapper
        self.folder = collector.config.folder
        self.inbox = self.folder / INBOX
        self.labelled = self.folder / LABELLED
        self._move = threading.Lock()
        self._signatures: dict[Path, tuple[int, tuple]] = {}  # a labelled sidecar's mtime and its vectors

    # --- review ---------------------------------------------------------------------------------------------------
    def items(self, limit: int = REVIEW_LIMIT) -> list[dict]:
        """Collected frames waiting for a label, newest first (their sidecars), each with the ``group`` of
        near-identical frames it belongs to (see :mod:`edge_app.kiosk.similar`)."""
        out = []
        for sidecar in sorted(self.inbox.glob("*.json"), reverse=True)[:limit]:
            try:
                item = json.loads(read_bounded(sidecar, MAX_SIDECAR_BYTES))
            except (OSError, ValueError, NotRegularFile, FileTooLarge):
                continue  # being moved by another request, or damaged by a power cut: not listed
            if isinstance(item, dict):
                out.append(item)
        signatures = [item.pop("signature", None) for item in out]
        for item, group in zip(out, groups(signatures), strict=True):
            item["group"] = group
        return out

    def image(self, frame_id: str) -> bytes:
        """The JPEG of an inbox frame."""
        frame_id = self._check_id(frame_id)
        return _read_image(self._inbox_path(frame_id, ".jpg"), f"no collected frame {frame_id!r}")

    def classes(self) -> dict:
        """The running model's classes and the labelled frames per class."""
        counts = {folder.name: sum(1 for p in folder.iterdir() if p.suffix.lower() == ".jpg")
                  for folder in self._class_folders()}
        return {"model": list(self.swapper.clf.labels), "labelled": counts}

    def _class_folders(self) -> list[Path]:
        if not self.labelled.is_dir():
            return []
        return sorted(p for p in self.labelled.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    def check_spelling(self, label: object, leaving: str | None = None) -> str:
        """A checked class name that is not another spelling of a class the model or the labelled folders have.

        ``edgecls learn`` refuses classes that look the same (:func:`~edge_app.runtime.labels.label_key`), so
        "Macaw" beside the model's "macaw" would fail every later apply. The same letters with their accents
        encoded otherwise ("Cafe\\u0301" from one keyboard, "Caf\\xe9" from another) are that class, in its
        spelling; another case or spacing is refused with the spelling to use. A labelled folder that exists
        may always be joined (the way out of a clash made before this check existed); ``leaving`` is a folder
        that goes with this move (a relabelled frame was its last).
        """
        label = unicodedata.normalize("NFC", check_class_name(label))
        model = self.swapper.clf.labels
        if label in model:
            return label
        others = [(name, "the model's class") for name in model]
        folders = [folder.name for folder in self._class_folders()]
        if label not in folders:  # a new folder: not another spelling of one that stays
            others += [(name, "the labelled class") for name in folders if name != leaving]
        # "potato late blight" typed for the model's "Potato___Late_blight" is that class too: learn would refuse
        # the pair (edge_app.learn.data.merge_labels), so every later apply would fail.
        key = loose_key(label_key(label))
        for name, whose in others:
            if loose_key(label_key(name)) == key:
                if unicodedata.normalize("NFC", name) == label:
                    return name
                raise Refused(f"{label!r} looks the same as {whose} {name!r} (only case, spacing, '_' or '-' "
                              f"differ): use {name!r}")
        return label

    def label(self, frame_id: object, label: object) -> dict:
        """Move an inbox frame into ``labelled/<label>/``."""
        frame_id = self._check_id(frame_id)
        with self._move:
            label = self.check_spelling(label)
            target = self.labelled / label
            jpg, sidecar = self._inbox_path(frame_id, ".jpg"), self._inbox_path(frame_id, ".json")
            if not jpg.is_file():
                raise Refused(f"no collected frame {frame_id!r} (labelled or discarded already?)", 404)
            target.mkdir(parents=True, exist_ok=True)
            os.replace(jpg, target / jpg.name)  # the image first: a sidecar in the inbox always has its image
            if sidecar.is_file():
                os.replace(sidecar, target / sidecar.name)
        self.collector.reviewed()
        return {"id": frame_id, "label": label}

    def discard(self, frame_id: object) -> dict:
        frame_id = self._check_id(frame_id)
        with self._move:
            sidecar, jpg = self._inbox_path(frame_id, ".json"), self._inbox_path(frame_id, ".jpg")
            if not jpg.is_file():
                raise Refused(f"no collected frame {frame_id!r}", 404)
            sidecar.unlink(missing_ok=True)  # the sidecar first: it is what lists the frame
            jpg.unlink(missing_ok=True)
        self.collector.reviewed()
        return {"id": frame_id, "discarded": True}

    # --- many at once: a group of near-identical frames is one decision -----------------------------------------
    def label_many(self, frame_ids: object, label: object) -> dict:
        """Label every frame of ``frame_ids`` as ``label``; frames gone meanwhile are listed as ``missing``."""
        ids = self._check_ids(frame_ids)
        done, missing = [], []
        with self._move:
            label = self.check_spelling(label)
            target = self.labelled / label
            for frame_id in ids:
                jpg, sidecar = self._inbox_path(frame_id, ".jpg"), self._inbox_path(frame_id, ".json")
                if not jpg.is_file():
                    missing.append(frame_id)
                    continue
                target.mkdir(parents=True, exist_ok=True)
                os.replace(jpg, target / jpg.name)
                if sidecar.is_file():
                    os.replace(sidecar, target / sidecar.name)
                done.append(frame_id)
        if not done:
            raise Refused("none of these frames waits for review any more (labelled or discarded already?)", 404)
        self.collector.reviewed(len(done))
        return {"ids": done, "label": label, "missing": missing}

    def discard_many(self, frame_ids: object) -> dict:
        return self._each(frame_ids, self.discard)

    def unlabel_many(self, frame_ids: object) -> dict:
        """Send labelled frames back to Review: the undo of :meth:`label_many`."""
        return self._each(frame_ids, self.unlabel)

    def _each(self, frame_ids: object, action) -> dict:
        done, missing = [], []
        for frame_id in self._check_ids(frame_ids):
            try:
                action(frame_id)
                done.append(frame_id)
            except Refused as e:
                if e.status != 404:
                    raise
                missing.append(frame_id)
        if not done:
            raise Refused("none of these frames is there any more", 404)
        return {"ids": done, "missing": missing}

    def _check_ids(self, frame_ids: object) -> list[str]:
        if not isinstance(frame_ids, list) or not frame_ids:
            raise Refused("ids: a list of frame ids", 400)
        if len(frame_ids) > MAX_BULK:
            raise Refused(f"at most {MAX_BULK} frames at once", 400)
        return list(dict.fromkeys(self._check_id(frame_id) for frame_id in frame_ids))

    # --- looks like these -----------------------------------------------------------------------------------------
    def examples(self, target: tuple, label: str, k: int = 3) -> list[dict]:
        """The labelled frames of ``label`` nearest a frame's :func:`~edge_app.kiosk.similar.vectors_of`, best first."""
        folder = self.labelled / label
        if not label or label.startswith((".", "_")) or "/" in label or not folder.is_dir():
            return []
        candidates = []
        with os.scandir(folder) as entries:
            names = sorted((e.name for e in entries if e.name.endswith(".json")), reverse=True)[:MAX_EXAMPLES_READ]
        for name in names:
            path = folder / name
            try:
                stamp = path.stat().st_mtime_ns
                cached = self._signatures.get(path)
                if cached is None or cached[0] != stamp:
                    sidecar = json.loads(read_bounded(path, MAX_SIDECAR_BYTES))
                    cached = (stamp, vectors(sidecar.get("signature") if isinstance(sidecar, dict) else None))
                    self._signatures[path] = cached
            except (OSError, ValueError, NotRegularFile, FileTooLarge):
                continue
            candidates.append((name[:-len(".json")], cached[1]))
        if len(self._signatures) > 4 * MAX_EXAMPLES_READ:  # frames moved away leave entries behind
            self._signatures.clear()
        return [{"label": label, "id": frame_id} for frame_id in nearest(target, candidates, k)]

    # --- labelled frames: look again, move, send back ----------------------------------------------------------------
    def labelled_items(self, limit: int = 60) -> dict:
        """Labelled frames, newest first (by the time they were taken), at most ``limit``; ``total`` counts all."""
        found = []
        for folder in self._class_folders():
            with os.scandir(folder) as entries:
                for entry in entries:
                    stem = entry.name[:-len(".jpg")]
                    if entry.name.endswith(".jpg") and _is_frame_id(stem) and entry.is_file():
                        found.append((entry.stat().st_mtime, stem, folder.name))
        found.sort(reverse=True)
        return {"items": [{"id": stem, "label": label, "t": round(t, 3)} for t, stem, label in found[:limit]],
                "total": len(found)}

    def labelled_image(self, label: object, frame_id: object) -> bytes:
        """The JPEG of a labelled frame; ``label`` comes from a URL: checked, and resolved only inside labelled/."""
        label, frame_id = check_class_name(label), self._check_id(frame_id)
        path = self.labelled / label / f"{frame_id}.jpg"
        missing = f"no labelled frame {frame_id!r} in {label!r}"
        if not path.resolve().is_relative_to(self.labelled.resolve()):
            raise Refused(missing, 404)
        return _read_image(path, missing)

    def relabel(self, frame_id: object, label: object) -> dict:
        """Move a labelled frame to another class (the folder it leaves goes when it is empty)."""
        frame_id = self._check_id(frame_id)
        with self._move:
            source = self._labelled_folder(frame_id)
            last = sum(1 for p in source.iterdir() if p.suffix.lower() == ".jpg") == 1
            label = self.check_spelling(label, leaving=source.name if last else None)
            if label != source.name:
                target = self.labelled / label
                if (target / f"{frame_id}.jpg").exists():
                    raise Refused(f"{label!r} already has a frame {frame_id!r}", 409)
                target.mkdir(parents=True, exist_ok=True)
                self._move_frame(frame_id, source, target)
        return {"id": frame_id, "label": label, "from": source.name}

    def unlabel(self, frame_id: object) -> dict:
        """Send a labelled frame back to the inbox, to be reviewed again."""
        frame_id = self._check_id(frame_id)
        with self._move:
            source = self._labelled_folder(frame_id)
            if self._inbox_path(frame_id, ".jpg").exists():
                raise Refused(f"the inbox already has a frame {frame_id!r}", 409)
            self.inbox.mkdir(parents=True, exist_ok=True)
            if not (source / f"{frame_id}.json").is_file():
                # The inbox lists frames by their sidecars: a frame copied in by hand gets a minimal one.
                taken = (source / f"{frame_id}.jpg").stat().st_mtime
                write_json(source / f"{frame_id}.json", {"id": frame_id, "t": round(taken, 3), "why": "unlabelled",
                                                         "label": source.name, "score": None, "top": []})
            self._move_frame(frame_id, source, self.inbox)
        self.collector.returned()  # one more frame waits for review
        return {"id": frame_id, "unlabelled": True, "from": source.name}

    def _labelled_folder(self, frame_id: str) -> Path:
        for folder in self._class_folders():
            if (folder / f"{frame_id}.jpg").is_file():
                return folder
        raise Refused(f"no labelled frame {frame_id!r} (moved or unlabelled already?)", 404)

    def _move_frame(self, frame_id: str, source: Path, target: Path) -> None:
        # The image first: a sidecar (what the inbox lists) always has its image beside it.
        os.replace(source / f"{frame_id}.jpg", target / f"{frame_id}.jpg")
        if (source / f"{frame_id}.json").is_file():
            os.replace(source / f"{frame_id}.json", target / f"{frame_id}.json")
        with contextlib.suppress(OSError):  # only an empty folder goes: a class with no frames is no class
            source.rmdir()

    def _check_id(self, frame_id: object) -> str:
        if not _is_frame_id(frame_id):
            raise Refused("a frame id is letters, digits, '-', '_' and '.'", 400)
        return frame_id

    def _inbox_path(self, frame_id: str, suffix: str) -> Path:
        """``frame_id`` has passed :meth:`_check_id` (no separators, no leading dot): it names a file in the inbox."""
        return self.inbox / f"{frame_id}{suffix}"


def _read_image(path: Path, missing: str) -> bytes:
    """A JPEG from the kiosk's folders, checked before it is read: a regular file under :data:`MAX_IMAGE_BYTES`
    (opened non-blocking: a FIFO put in its place cannot hang the reading thread)."""
    try:
        return read_bounded(path, MAX_IMAGE_BYTES)
    except FileTooLarge as e:
        raise Refused(f"{path.name} is {e.size} bytes: not a kiosk frame (those are under "
                      f"{MAX_IMAGE_BYTES // 2**20} MB)", 404) from e
    except (OSError, NotRegularFile) as e:
        raise Refused(missing, 404) from e


def _is_frame_id(value: object) -> bool:
    """Letters, digits, '-', '_' and '.', not leading: a file name in one folder, never a path."""
    return isinstance(value, str) and bool(_FRAME_ID.match(value)) and not value.startswith(".")
