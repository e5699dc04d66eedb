"""What a learned model carries for extending it: the ``learn.npz`` member (each class's embedding sums and
counts, a sample of its photos' embeddings, which were field photos, the embedding's name), so a later
``learn --base`` adds classes or photos without the old photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edge_app.runtime.artifact import MAX_MEMBER_BYTES, read_member
from edge_app.runtime.errors import ModelError

STATE = "learn.npz"  # the archive member


def read_state(base: bytes, path: Path) -> dict | None:
    """What a learned model carries for extending it (class sums, counts, samples), or ``None`` for a model
    ``learn`` did not write; a damaged or inflating member is a :class:`ModelError` naming ``path``."""
    try:
        blob = read_member(base, STATE)
        if blob is None:
            return None
        with np.load(io.BytesIO(blob)) as state:
            if any(i.file_size > MAX_MEMBER_BYTES for i in state.zip.infolist()):
                raise ValueError("an array would inflate past the member cap")
            return {k: state[k] for k in state.files} | {"labels": [str(v) for v in state["labels"]]}
    except (ValueError, KeyError, OSError) as e:
        raise ModelError(f"{path} carries a damaged {STATE}; learn from the photos again") from e


def state_bytes(labels, sums, counts, samples, sample_y, embedding, sample_field) -> bytes:
    """The :data:`STATE` member of a learned model: what :func:`read_state` gives back when it is extended."""
    out = io.BytesIO()
    np.savez_compressed(out, labels=np.array(labels), sums=sums.astype(np.float32), counts=counts.astype(np.int64),
                        samples=samples, sample_labels=sample_y.astype(np.int64),
                        sample_field=np.asarray(sample_field, bool), embedding=np.array([embedding.name]))
    return out.getvalue()
