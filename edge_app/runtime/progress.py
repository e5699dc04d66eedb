"""Progress bars for long work: tqdm where it is installed, a silent pass-through where it is not."""

from __future__ import annotations


def progress(iterable, **options):
    """``tqdm(iterable, **options)``; on a device without tqdm, ``iterable`` itself.

    Example:
        >>> for path in progress(paths, desc="embedding", unit="img", total=len(paths)):
        ...     ...
    """
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **options)
