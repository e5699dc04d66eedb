"""Atomic file writes, and bounded reads of files that come from outside.

Every output goes through here, so every output problem reads the same: :func:`check_writable`
before the work starts, and any ``OSError`` while writing becomes one :class:`OutputError` line
naming the file (exit 2) instead of a traceback after the work is done.

Every input file is checked before it is read (:func:`open_regular`, :func:`read_bounded`): a path from outside
may name a FIFO (an ``open`` that blocks for ever), a device (``/dev/zero``: endless bytes) or a 1 GB sparse
file, and a careless ``read_bytes()`` takes the device's memory with it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

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


class NotRegularFile(Exception):
    """A path that names a folder, FIFO, device or socket; the message says which (``"a FIFO"``)."""


class FileTooLarge(Exception):
    """A regular file over the cap it was read with (``size`` and ``cap`` in bytes)."""

    def __init__(self, size: int, cap: int):
        super().__init__(f"{size / 1e6:.1f} MB, over the {cap / 1e6:.0f} MB cap")
        self.size, self.cap = size, cap


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, from its ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def open_regular(path: str | os.PathLike) -> tuple[BinaryIO, os.stat_result]:
    """Open ``path`` for reading and ``fstat`` it; only a regular file comes back.

    Non-blocking, so a FIFO put in a file's place cannot hang the open; the checks are on the opened file, so
    the path cannot be swapped between the check and the read.

    Raises:
        OSError: the open failed (``FileNotFoundError``, ``PermissionError``, ...).
        NotRegularFile: a folder, FIFO, device or socket.

    Example:
        >>> f, info = open_regular("model.tflite")
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(file_kind(info.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb"), info


def read_bounded(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, checked before they are read.

    At most ``max_bytes + 1`` bytes are ever read: a file that grows past the cap while it is read (or a
    ``/proc`` file whose size says 0) is refused too.

    Raises:
        OSError: the open or a read failed (a missing file, permissions, an I/O error).
        NotRegularFile: a folder, FIFO, device or socket.
        FileTooLarge: over ``max_bytes``.

    Example:
        >>> data = read_bounded("parrot.jpg", 64_000_000)
    """
    f, info = open_regular(path)
    with f:
        if info.st_size > max_bytes:
            raise FileTooLarge(info.st_size, max_bytes)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(len(data), max_bytes)
    return data


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
