"""A model file and the metadata that travels with it.

Metadata rides in a zip archive appended to the ``.tflite`` flatbuffer, the same way the
TFLite Metadata tools pack associated files (Coral's and Model Maker's models carry their
labels like this). Interpreters read the flatbuffer from the front and ignore the archive,
so other TFLite tools open the file unchanged. edgecls writes two members:
``labels.txt`` and ``edgecls.json`` (input size, normalization, channel order, quantization,
the accuracy measured by the converter).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edge_app.runtime.errors import ModelError
from edge_app.runtime.labels import parse_labels

METADATA_NAME = "edgecls.json"
LABELS_NAME = "labels.txt"
TFLITE_IDENTIFIER = b"TFL3"
EDGETPU_OP = b"edgetpu-custom-op"


@dataclass(frozen=True)
class ModelArtifact:
    """A ``.tflite`` file with what it carries: embedded labels and edgecls metadata."""

    path: Path
    metadata: dict = field(default_factory=dict)
    labels: list[str] | None = None
    edgetpu: bool = False
    #: The file's bytes, kept when asked (``read_artifact(..., keep_bytes=True)``): an interpreter made from them
    #: cannot be hurt by the file being rewritten in place while it runs.
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str | None:
        import hashlib

        return None if self.data is None else hashlib.sha256(self.data).hexdigest()


def is_tflite(data: bytes) -> bool:
    """True for a TFLite flatbuffer (file identifier ``TFL3`` at byte 4)."""
    return len(data) >= 8 and data[4:8] == TFLITE_IDENTIFIER


def read_artifact(model: str | Path, keep_bytes: bool = False) -> ModelArtifact:
    """Read ``model``, check it is a TFLite flatbuffer, and collect its embedded metadata (and its bytes)."""
    path = Path(model)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ModelError(f"model {path} does not exist; pass a .tflite file or a run directory") from e
    except OSError as e:
        raise ModelError(f"cannot read model {path}: {e.strerror}") from e
    if not is_tflite(data):
        hint = "convert it first: edgecls convert MODEL" if path.suffix in (".keras", ".h5", ".pb") else \
            "pass a .tflite model file"
        raise ModelError(f"{path} is not a TFLite model (no 'TFL3' flatbuffer identifier); {hint}")
    metadata, labels = _read_embedded(data)
    return ModelArtifact(path=path, metadata=metadata, labels=labels, edgetpu=EDGETPU_OP in data,
                         data=data if keep_bytes else None)


def _read_embedded(data: bytes) -> tuple[dict, list[str] | None]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return {}, None
    with archive:
        names = archive.namelist()
        metadata = json.loads(archive.read(METADATA_NAME)) if METADATA_NAME in names else {}
        label_names = [metadata["labels_file"]] if metadata.get("labels_file") in names else \
            [n for n in names if n.endswith(".txt")]
        labels = parse_labels(archive.read(label_names[0]).decode("utf-8-sig")) if label_names else None
    return metadata, labels or None


def flatbuffer_part(model: bytes) -> bytes:
    """``model`` without the metadata archive appended to it (the bare flatbuffer)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            # zipfile reports offsets from the start of ``model``, prefix included.
            return model[:min(i.header_offset for i in archive.infolist())]
    except (zipfile.BadZipFile, ValueError):  # no archive (ValueError: an empty one)
        return model


def read_member(model: bytes, name: str) -> bytes | None:
    """One file of the archive appended to ``model`` (e.g. a learned model's ``learn.npz``), or ``None``."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            return archive.read(name) if name in archive.namelist() else None
    except zipfile.BadZipFile:
        return None


def embed_metadata(model: bytes, metadata: dict, labels: list[str] | None = None,
                   members: dict[str, bytes] | None = None) -> bytes:
    """Return ``model`` with ``metadata`` (and ``labels``) appended as a zip archive.

    An archive already on the model is replaced; its other members are kept; ``members`` adds files.

    Example:
        >>> data = embed_metadata(Path("m.tflite").read_bytes(), {"input_size": [224, 224]}, ["cat", "dog"])
    """
    if not is_tflite(model):
        raise ModelError("embed_metadata needs a TFLite flatbuffer")
    flatbuffer, kept = flatbuffer_part(model), {}
    if len(flatbuffer) < len(model):
        with zipfile.ZipFile(io.BytesIO(model)) as old:
            kept = {n: old.read(n) for n in old.namelist() if n not in (METADATA_NAME, LABELS_NAME)}
    metadata = dict(metadata)
    members, extra = dict(kept), members
    if labels is not None:
        metadata["labels_file"] = LABELS_NAME
        members[LABELS_NAME] = ("\n".join(labels) + "\n").encode("utf-8")
    members.update(extra or {})
    members[METADATA_NAME] = json.dumps(metadata, indent=1).encode("utf-8")
    out = io.BytesIO()
    out.write(flatbuffer)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
    return out.getvalue()

