"""Labelled folders of photos matched to a model's classes: field photos, a benchmark's ``--data``, ``eval``'s DATA.

A folder of class folders names its classes its own way (``potato_late_blight`` where the model says
``Potato___Late_blight``); :func:`match_folders` pairs them ignoring case, ``_``/``-``/spaces, and
``--map FOLDER=CLASS`` says the rest (``tomato_late_blight=Potato___Late_blight``: the same pathogen on
another crop). A folder that matches no class is an error that names it, never silently dropped: a field
measurement that quietly skips a class is not a measurement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_app.runtime.errors import DataError, EdgeclsError

Item = tuple[Path, int]  # (photo, class index)


def loose_key(text: str) -> str:
    """A class name as folders of other datasets spell it: case, ``_``, ``-`` and spaces ignored."""
    return re.sub(r"[\s_\-]+", " ", text).strip().casefold()


def match_folders(folders: list[str], labels: list[str]) -> tuple[dict[str, int], list[str]]:
    """Map class-folder names to label indices: ``({folder: index}, [folders matching no label])``.

    A folder matches a label when the names are equal ignoring case, ``_``/``-``/spaces; failing
    that, when it equals exactly one of a label's synonyms, comma-separated or in brackets (ImageNet's
    ``"tench, Tinca tinca"`` matches a folder ``tench``, iNat's ``"Ara macao (Scarlet Macaw)"`` a folder
    ``Scarlet Macaw``). A name that fits two labels this way
    (ImageNet has two ``crane``s) is reported as unmatched rather than guessed.

    Example:
        >>> match_folders(["macaw", "military_uniform", "zebra"], ["background", "macaw", "military uniform"])
        ({'macaw': 1, 'military_uniform': 2}, ['zebra'])
    """
    exact: dict[str, list[int]] = {}
    synonyms: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        exact.setdefault(loose_key(label), []).append(i)
        # "tench, Tinca tinca" and "Ara macao (Scarlet Macaw)" each name one class two ways.
        for part in re.split(r"[,()]", label):
            if part.strip():
                synonyms.setdefault(loose_key(part), []).append(i)
    mapping, unmatched = {}, []
    for folder in folders:
        key = loose_key(folder)
        hits = exact.get(key) or synonyms.get(key) or []
        if len(hits) == 1:
            mapping[folder] = hits[0]
        else:
            unmatched.append(folder)
    return mapping, unmatched


def parse_map(pairs: Sequence[str], flag: str = "--map") -> dict[str, str]:
    """``["FOLDER=CLASS", ...]`` → ``{FOLDER: CLASS}``; raises :class:`DataError` on a malformed pair."""
    out = {}
    for pair in pairs:
        folder, sep, label = pair.partition("=")
        if not sep or not folder.strip() or not label.strip():
            raise DataError(f"{flag} {pair!r}: expected FOLDER=CLASS, e.g. {flag} tomato_late_blight=Potato___Late_blight")
        out[folder.strip()] = label.strip()
    return out


def labelled_folder(data: str | Path, labels: list[str], mapping: dict[str, str] | None = None,
                    flag: str = "DATA", error: type[EdgeclsError] = DataError,
                    map_flag: str = "--map") -> tuple[list[Item], dict[str, int]]:
    """Every photo of ``data``'s class folders with its class index, and the folder→index map.

    Raises ``error`` (exit 2) naming the folder and the fix: ``data`` not a folder, no class folders, a folder
    that matches none of ``labels`` (pass ``map_flag FOLDER=CLASS``), a mapping naming a class the model lacks,
    or a class folder with no images.
    """
    from edge_app.runtime.images import list_images

    data = Path(data)
    if not data.is_dir():
        raise error(f"{flag} {data} is not a folder; give a folder of class sub-folders (DATA/<class>/*.jpg)")
    folders = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not folders:
        raise error(f"{flag} {data} holds no class folders; put each class's photos in a sub-folder named like "
                    f"the class, e.g. {data / labels[0]}/leaf.jpg")
    mapping = dict(mapping or {})
    matched, unmatched = match_folders([f for f in folders if f not in mapping], labels)
    for folder, label in mapping.items():
        if folder not in folders:
            raise error(f"{map_flag} {folder}={label}: {data} has no class folder {folder!r} (it has {', '.join(folders)})")
        index = labels.index(label) if label in labels else match_folders([label], labels)[0].get(label)
        if index is None:
            raise error(f"{map_flag} {folder}={label}: the model has no class {label!r}; its classes are "
                        f"{', '.join(labels)}")
        matched[folder] = index
    if unmatched:
        raise error(f"class folder {data / unmatched[0]} matches none of the model's classes ({', '.join(labels)}); "
                    f"rename it, pass {map_flag} {unmatched[0]}=CLASS, or move it out of {data}")
    items: list[Item] = []
    for folder in folders:
        images = list_images(data / folder)
        if not images:
            raise error(f"class folder {data / folder} has no images (jpg, png, bmp, webp); add photos or remove it")
        items += [(path, matched[folder]) for path in images]
    return items, {folder: matched[folder] for folder in folders}


def stratified_split(items: list[Item], fractions: dict[str, float], seed: int,
                     min_per_class: int = 5) -> dict[str, list[Item]]:
    """``items`` carved per class into ``train`` and the parts of ``fractions`` (e.g. ``{"val": 0.2}``).

    A class with fewer than ``min_per_class`` photos gives none to the other parts: a held-out part of one
    photo measures nothing and costs the training a fifth of what it has.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[Item]] = {"train": [], **{name: [] for name in fractions}}
    by_class: dict[int, list[Path]] = {}
    for path, index in items:
        by_class.setdefault(index, []).append(path)
    for index, paths in sorted(by_class.items()):
        order = [paths[i] for i in rng.permutation(len(paths))]
        start = 0
        if len(paths) >= min_per_class:
            for name, share in fractions.items():
                n = max(1, round(len(paths) * share)) if share > 0 else 0
                parts[name] += [(p, index) for p in order[start:start + n]]
                start += n
        parts["train"] += [(p, index) for p in order[start:]]
    return parts


# `edgecls fleet pull` writes its photos as class folders (read as they are) and, beside them, one JSON line per
# photo received: where it came from. Readers of class folders scan folders only, so the file disturbs none.
MANIFEST = "manifest.jsonl"
MAX_MANIFEST_BYTES = 200_000_000  # ~500,000 photos; a larger file is not a manifest fleet pull wrote


def read_manifest(folder: str | Path) -> list[dict]:
    """The records of ``folder``'s ``manifest.jsonl`` (``[]`` when it has none); a torn last line is skipped.

    Example:
        >>> read_manifest("pulled/")[0]["device"]
        'kiosk-01'
    """
    from edge_app.runtime.files import FileTooLarge, NotRegularFile, read_bounded

    try:
        data = read_bounded(Path(folder) / MANIFEST, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return []
    except (OSError, NotRegularFile, FileTooLarge) as e:
        raise DataError(f"cannot read {Path(folder) / MANIFEST} ({e}); move it out of {folder} to use the photos "
                        "without it") from None
    records = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a host that was killed while writing it
        if isinstance(record, dict):
            records.append(record)
    return records


def photo_devices(folder: str | Path, photos: Sequence[str | Path]) -> dict[str, int]:
    """How many of ``photos`` (paths in ``folder``'s class folders) each device sent, from ``folder``'s manifest:
    ``{device_id: n}``, ``{}`` without a manifest. A photo two devices sent counts for both.

    Example:
        >>> photo_devices("pulled/", ["pulled/tomato_healthy/3f2a9c0d1e2b4a5f.jpg"])
        {'kiosk-01': 1}
    """
    root = Path(folder)
    wanted = set()
    for photo in photos:
        try:
            wanted.add(Path(photo).relative_to(root).as_posix())
        except ValueError:
            continue
    devices: dict[str, set[str]] = {}
    for record in read_manifest(root):
        path, device = record.get("path"), record.get("device")
        if isinstance(path, str) and isinstance(device, str) and path in wanted:
            devices.setdefault(device, set()).add(path)
    return {device: len(paths) for device, paths in sorted(devices.items())}
