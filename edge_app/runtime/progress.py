"""Progress for long work: a tqdm bar on a terminal; a few plain lines where stderr is a file or a pipe.

A bar redrawn with ``\\r`` is a terminal's thing: in a CI log, ``make demo | tee`` or the journal it
turns into hundreds of updates glued on one line. There, a line at each quarter says the same.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("edgecls")

PLAIN_STEPS = 4  # plain lines per loop: at 25, 50, 75 and 100%
PLAIN_MIN_S = 5.0  # loops shorter than this print nothing in plain mode


def progress(iterable, **options):
    """``tqdm(iterable, **options)`` on a terminal; plain log lines elsewhere (or without tqdm, on a device).

    Options are tqdm's; plain mode reads ``desc``, ``total``, ``unit`` and ``disable``.

    Example:
        >>> for path in progress(paths, desc="embedding", unit="img", total=len(paths)):
        ...     ...
    """
    if options.get("disable"):
        return iterable
    if _terminal():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(iterable, **options)
    return _plain(iterable, options.get("desc") or "working", options.get("total"), options.get("unit", "it"))


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _plain(iterable, desc: str, total: int | None, unit: str):
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    started = time.monotonic()
    step = max(1, -(-total // PLAIN_STEPS)) if total else 0
    done = 0
    for item in iterable:
        yield item
        done += 1
        if step and (done % step == 0 or done == total) and time.monotonic() - started >= PLAIN_MIN_S:
            elapsed = time.monotonic() - started
            log.info("%s: %d/%d %s (%.0f%%, %.0f s, %.1f %s/s)", desc, done, total, unit, 100 * done / total,
                     elapsed, done / elapsed if elapsed else 0.0, unit)


def counter(desc: str, total: int | None = None, unit: str = "it", position: int | None = None,
            disable: bool = False):
    """A bar moved by hand, for work that arrives rather than is iterated (photos from a device): ``.update(n)``,
    ``.total = n`` then ``.refresh()``, ``.close()``. tqdm on a terminal (``position``: its line, for one bar per
    device); plain log lines elsewhere.

    Example:
        >>> bar = counter("kiosk-01", unit="photo", position=0)
        >>> bar.total = 120; bar.refresh(); bar.update(1); bar.close()
    """
    if not disable and _terminal():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc=desc, unit=unit, position=position, leave=True)
    return _PlainCounter(desc, total, unit, disable)


class _PlainCounter:
    """:func:`counter` where stderr is no terminal: a line at each quarter of ``total``, for work over a few seconds."""

    def __init__(self, desc: str, total: int | None, unit: str, disable: bool):
        self.desc, self.total, self.unit, self.disable = desc, total, unit, disable
        self.n, self._started, self._said = 0, time.monotonic(), 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable or not self.total:
            return
        step = max(1, -(-self.total // PLAIN_STEPS))
        elapsed = time.monotonic() - self._started
        if self.n // step > self._said and elapsed >= PLAIN_MIN_S:
            self._said = self.n // step
            log.info("%s: %d/%d %s (%.0f%%, %.0f s)", self.desc, self.n, self.total, self.unit,
                     100 * min(1.0, self.n / self.total), elapsed)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass
