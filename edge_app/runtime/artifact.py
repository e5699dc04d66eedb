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
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edge_app.runtime.errors import ModelError
from edge_app.runtime.files import NotRegularFile, open_regular
from edge_app.runtime.labels import parse_labels

METADATA_NAME = "edgecls.json"
LABELS_NAME = "labels.txt"
REFERENCE_NAME = "novelty.npz"  # see edge_app.runtime.novelty
TFLITE_IDENTIFIER = b"TFL3"
EDGETPU_OP = b"edgetpu-custom-op"
# The largest model file read. Edge classifiers are 1-30 MB (MobileNetV2 fp32: 14 MB, EfficientNet-B0: 21 MB);
# a file far past that is a mistake or an attack, and reading it whole would take the device's memory with it.
MAX_MODEL_MB_ENV = "EDGECLS_MAX_MODEL_MB"
DEFAULT_MAX_MODEL_MB = 256
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # labels, metadata, a learned model's examples: never near this


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
    #: The reference set for ``unknown`` (archive member ``novelty.npz``), when the model carries one.
    reference: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str | None:
        import hashlib

        return None if self.data is None else hashlib.sha256(self.data).hexdigest()


def is_tflite(data: bytes) -> bool:
    """True for a TFLite flatbuffer (file identifier ``TFL3`` at byte 4)."""
    return len(data) >= 8 and data[4:8] == TFLITE_IDENTIFIER


def max_model_bytes() -> int:
    """The size cap for a model file: ``EDGECLS_MAX_MODEL_MB`` (default 256 MB), and at most half the memory
    available now, where the system says (an interpreter needs room beside the bytes)."""
    try:
        cap = int(float(os.environ.get(MAX_MODEL_MB_ENV) or DEFAULT_MAX_MODEL_MB) * 1e6)
    except ValueError:
        raise ModelError(f"{MAX_MODEL_MB_ENV}={os.environ[MAX_MODEL_MB_ENV]!r} is not a number of megabytes; "
                         f"unset it or give e.g. {DEFAULT_MAX_MODEL_MB}") from None
    available = _available_memory()
    return min(cap, available // 2) if available else cap


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_model_bytes(model: str | os.PathLike, what: str = "model") -> bytes:
    """The bytes of a model file, checked before they are read: a regular file, under the size cap, a flatbuffer.

    A path from outside may name a FIFO (an ``open`` that blocks for ever), a device (``/dev/zero``: endless
    bytes), a folder, or a sparse 1 GB file: each is refused with one line before more than 8 bytes are read.
    The open never blocks, and a file that grows while it is read is refused too.

    Raises:
        ModelError: naming the file (as ``what``, e.g. ``--base notes.txt``), what it is and what to do.

    Example:
        >>> data = read_model_bytes("model_int8.tflite")
    """
    path = Path(model)
    try:
        f, info = open_regular(path)
    except FileNotFoundError as e:
        raise ModelError(f"{what} {path} does not exist; pass a .tflite file or a run directory") from e
    except NotRegularFile as e:
        raise ModelError(f"{what} {path} is {e}, not a model file; put a .tflite file there") from e
    except OSError as e:
        raise ModelError(f"cannot read {what} {path}: {e.strerror}") from e
    with f:
        cap = max_model_bytes()
        if info.st_size > cap:
            raise ModelError(f"{what} {path} is {info.st_size / 1e6:.1f} MB, over the {cap / 1e6:.0f} MB a model may "
                             f"be here; is it the right file? (a larger model: set {MAX_MODEL_MB_ENV})")
        try:
            head = f.read(8)
            if not is_tflite(head):
                hint = "convert it first: edgecls convert MODEL" if path.suffix in (".keras", ".h5", ".pb") else \
                    "pass a .tflite model file"
                raise ModelError(f"{what} {path} is not a TFLite model (no 'TFL3' flatbuffer identifier); {hint}")
            data = head + f.read(info.st_size - len(head) + 1)  # one byte more: a file still growing is caught
        except OSError as e:
            # A regular file can still fail to read (/proc/self/mem: EIO; a failing SD card): say which, once.
            raise ModelError(f"cannot read {what} {path}: {e.strerror or e}; put a .tflite file there") from e
    if len(data) != info.st_size:
        raise ModelError(f"{what} {path} changed size while it was read ({info.st_size} bytes, then "
                         f"{len(data)}{'+' if len(data) > info.st_size else ''}); is it still being copied? "
                         "Try again when the copy has finished")
    return data


def read_artifact(model: str | Path, keep_bytes: bool = False, what: str = "model") -> ModelArtifact:
    """Read ``model`` (see :func:`read_model_bytes`) and collect its embedded metadata (and, asked, its bytes)."""
    path = Path(model)
    data = read_model_bytes(path, what)
    try:
        metadata, labels, reference = _read_embedded(data)
    except (ValueError, KeyError, UnicodeDecodeError, zipfile.LargeZipFile, NotImplementedError) as e:
        raise ModelError(f"{what} {path} carries damaged edgecls metadata ({e}); convert or learn it again") from e
    return ModelArtifact(path=path, metadata=metadata, labels=labels, edgetpu=EDGETPU_OP in data,
                         data=data if keep_bytes else None, reference=reference)


def _read_embedded(data: bytes) -> tuple[dict, list[str] | None, bytes | None]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return {}, None, None
    with archive:
        names = archive.namelist()
        metadata = json.loads(_member(archive, METADATA_NAME)) if METADATA_NAME in names else {}
        if not isinstance(metadata, dict):
            raise ValueError(f"{METADATA_NAME} is not a JSON object")
        label_names = [metadata["labels_file"]] if metadata.get("labels_file") in names else \
            [n for n in names if n.endswith(".txt")]
        labels = parse_labels(_member(archive, label_names[0]).decode("utf-8-sig")) if label_names else None
        reference = _member(archive, REFERENCE_NAME) if REFERENCE_NAME in names else None
    return metadata, labels or None, reference


def _member(archive: zipfile.ZipFile, name: str) -> bytes:
    """One member, refused when it would inflate past ``MAX_MEMBER_BYTES`` (a zip bomb riding on a model)."""
    size = archive.getinfo(name).file_size
    if size > MAX_MEMBER_BYTES:
        raise ValueError(f"its member {name!r} would be {size / 1e6:.0f} MB, over {MAX_MEMBER_BYTES / 1e6:.0f} MB")
    return archive.read(name)


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
            return _member(archive, name) if name in archive.namelist() else None
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

