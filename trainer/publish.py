"""Putting a finished run directory in place: renamed in whole (an old run replaced only once the new one is in),
and a full disk said as such, naming the run, with nothing half-published."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from trainer.config import TrainError

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def publish(work: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished run into place; an existing run (``--overwrite``) goes only once the new one is in."""
    if out.exists():
        if not overwrite:
            raise TrainError(f"{out} appeared while training; the run is left unpublished. Use --overwrite")
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        work.rename(out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        work.rename(out)
    # Temp files are created 0600; a run directory is shared like any other output (umask applies).
    umask = os.umask(0)
    os.umask(umask)
    for path in [out, *out.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def disk_errors(out: Path):
    try:
        yield
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None:
            if isinstance(cause, OSError) and cause.errno in DISK_FULL:
                reason = {
                    errno.ENOSPC: "no space left on the device",
                    errno.EDQUOT: "disk quota exceeded",
                    errno.EFBIG: "file too large for this filesystem or file-size limit",
                }[cause.errno]
                raise TrainError(
                    f"could not write the run for {out}: {reason} (disk full); free some disk "
                    "space or choose an --out on another disk; nothing was published"
                ) from e
            cause = cause.__cause__ or cause.__context__
        raise
