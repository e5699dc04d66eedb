"""Which kept frames look alike: a small signature per frame, groups of near-identical frames for Review, and the
labelled frames nearest a verdict ("looks like these").

A frame's signature holds two unit vectors, stored in its sidecar as base64 float16:

- ``pixels``: the frame shrunk to 16x16, each colour's mean taken out. Near-identical frames (a camera looking
  at one leaf for a while) are one group by it: on 25 PlantDoc field photos of late blight, two different photos
  scored at most 0.52, the same photo shifted by up to 8 px, 15% brighter or darker and with sensor noise at
  least 0.91 (threshold 0.8).
- ``embedding``: the model's own embedding, for a model that has one (``edgecls learn`` and ``convert`` write
  it). It says what a frame *is* rather than how it looks, so it picks the examples beside a verdict. It is worse
  at telling near-duplicates apart (different photos of one disease up to 0.85, a jittered copy from 0.89 on
  the shipped base), so it groups only above 0.92. Compared only between frames of the same model.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

import numpy as np

SIZE = 16
SAME_PIXELS = 0.8
SAME_EMBEDDING = 0.92


def signature(image: np.ndarray, embedding: np.ndarray | None = None, model: str = "") -> dict:
    """The signature of one frame to store (``image`` HxWx3 in any channel order, ``embedding`` the model's, if
    any, ``model`` its sha256)."""
    pixels, embedding, model = vectors_of(image, embedding, model)
    out = {"pixels": _encode(pixels)}
    if embedding is not None:
        out |= {"embedding": _encode(embedding), "model": model}
    return out


def vectors_of(image: np.ndarray, embedding: np.ndarray | None = None, model: str = "") -> tuple:
    """``(pixels, embedding, model)`` unit vectors of a frame, as :func:`vectors` reads them back from a signature."""
    import cv2

    small = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean(axis=(0, 1))
    have = embedding is not None and embedding.size
    return (_unit(small.reshape(-1)), _unit(np.asarray(embedding, np.float32).reshape(-1)) if have else None,
            model[:16] if have else "")


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _encode(unit: np.ndarray) -> str:
    return base64.b64encode(unit.astype("<f2").tobytes()).decode("ascii")


def vectors(sig: object) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """``(pixels, embedding, model)`` of a stored signature; ``None`` for a part that is missing or damaged (a
    sidecar is a file anyone with the folder can edit)."""
    if not isinstance(sig, dict):
        return None, None, ""
    return _decode(sig.get("pixels"), SIZE * SIZE * 3), _decode(sig.get("embedding")), str(sig.get("model", ""))


def _decode(text: object, size: int | None = None) -> np.ndarray | None:
    if not isinstance(text, str) or len(text) > 64_000:
        return None
    try:
        vector = np.frombuffer(base64.b64decode(text, validate=True), "<f2").astype(np.float32)
    except (ValueError, TypeError):
        return None
    if not vector.size or (size is not None and vector.size != size) or not np.all(np.isfinite(vector)):
        return None
    return vector


def alike(a: tuple, b: tuple) -> bool:
    """Whether two frames' ``vectors`` are the same view: pixels close, or the same model's embeddings very close."""
    if a[0] is not None and b[0] is not None and float(a[0] @ b[0]) >= SAME_PIXELS:
        return True
    return (a[1] is not None and b[1] is not None and a[2] == b[2] and a[1].size == b[1].size
            and float(a[1] @ b[1]) >= SAME_EMBEDDING)


def groups(signatures: Iterable[object]) -> list[int]:
    """A group per frame, in the order given, numbered by the position of its first frame: a frame joins the first
    group whose first frame it is alike, else starts one. A frame without a signature is a group of its own."""
    leaders: list[tuple[int, tuple]] = []
    out = []
    for i, sig in enumerate(signatures):
        mine = vectors(sig)
        known = mine[0] is not None or mine[1] is not None
        found = next((number for number, leader in leaders if alike(mine, leader)), None) if known else None
        if found is None:
            found = i
            if known:
                leaders.append((i, mine))
        out.append(found)
    return out


def nearest(target: tuple, candidates: list[tuple[object, tuple]], k: int = 3) -> list[object]:
    """The ``k`` candidates (``(key, vectors)``) nearest ``target``: by the same model's embedding where both have
    one, else by pixels; best first."""
    scored = []
    for key, theirs in candidates:
        if target[1] is not None and theirs[1] is not None and target[2] == theirs[2] and target[1].size == theirs[1].size:
            scored.append((float(target[1] @ theirs[1]), key))
        elif target[0] is not None and theirs[0] is not None:
            scored.append((float(target[0] @ theirs[0]) - 1.0, key))  # below any embedding match
    scored.sort(key=lambda pair: -pair[0])
    return [key for _, key in scored[:k]]
