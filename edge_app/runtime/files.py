"""Atomic file writes: an interrupted run never leaves a half-written model, report or log.

Every output goes through here, so every output problem reads the same: :func:`check_writable`
before the work starts, and any ``OSError`` while writing becomes one :class:`OutputError` line
naming the file (exit 2) instead of a traceback after the work is done.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edge_app.runtime.errors import OutputError

_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write to another disk",
    errno.EFBIG: "the file is too large for this filesystem: write to another disk",
    errno.EROFS: "the filesystem is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "that is a folder: give a file name",
}


def output_error(path: str | os.PathLike, error: OSError) -> OutputError:
    """The one-line :class:`OutputError` for an ``OSError`` raised while writing ``path``."""
    fix = _FIXES.get(error.errno, "choose a writable path")
    return OutputError(f"cannot write {path} ({error.strerror or error}); {fix}")


def check_writable(path: str | os.PathLike, flag: str | None = None, inside: bool = False) -> Path:
    """Check, before any work, that ``path`` can be created (or, with ``inside``, written into).

    A file or folder is created in the nearest existing folder above ``path``; ``inside`` means
    ``path`` is a folder whose files will be written. The check creates a file for real, since
    ``os.access`` says yes to root on a read-only filesystem.

    Raises:
        OutputError: naming ``path`` (and ``flag``), the reason and the fix.

    Example:
        >>> check_writable("runs/potato", "--out")
    """
    path = Path(path).expanduser()
    where = f"{flag} {path}" if flag else str(path)
    probe = path if inside else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{where}: cannot write there, {probe} is a file, not a folder; check the path")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".edgecls-write-check."):
            pass
    except OSError as e:
        raise OutputError(f"{where}: cannot write in {probe} ({e.strerror}); "
                          f"{_FIXES.get(e.errno, 'choose a writable path')}") from e
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Any ``OSError`` (disk full, read-only, permission) becomes an :class:`OutputError` naming
    ``path``, and the temporary file is removed.

    Example:
        >>> with atomic_path("run/model.tflite") as tmp:
        ...     tmp.write_bytes(data)
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same directory, so os.replace is a rename on one filesystem (atomic on POSIX).
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        # mkstemp makes 0600 files; an artifact should get the mode any new file gets (a service user reads it).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(e, OSError):
            raise output_error(path, e) from e
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, fsynced before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
