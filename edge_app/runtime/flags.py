"""One grammar per command-line flag that several commands share (argparse, standard library only).

``--mean``/``--std``: one value, or one per channel separated by commas (``--mean 127.5``,
``--std 58.4,57.1,57.4``), on ``classify``, ``run``, ``bench`` and ``convert`` alike.
``--threads N``: interpreter threads, from 1 up to the machine's cores.
``--unknown on|off`` (classify, run, convert), ``--unknown-accept F`` and ``--unknown-check DIR`` (learn, convert).
"""

from __future__ import annotations

import argparse

from edge_app.runtime.errors import EdgeclsError, check_threads


def channel_values(text: str) -> tuple[float, ...]:
    """``"127.5"`` → ``(127.5,)``; ``"123.7,116.3,103.5"`` → three values. An argparse ``type``."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected one number or three separated by commas (127.5 or "
                                         f"123.7,116.3,103.5), got {text!r}")
    return values


def thread_count(text: str) -> int:
    """``--threads N``: a whole number from 1 to the number of cores. An argparse ``type``."""
    try:
        return check_threads(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number like 2, got {text!r}") from None
    except EdgeclsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_normalization(parser: argparse.ArgumentParser) -> None:
    """``--mean M --std S`` for float models that carry no normalization metadata."""
    parser.add_argument("--mean", type=channel_values, metavar="M[,M,M]",
                        help="float models without metadata: pixels 0-255 become (x - mean) / std")
    parser.add_argument("--std", type=channel_values, metavar="S[,S,S]",
                        help="see --mean: 255 for [0, 1]; --mean 127.5 --std 127.5 for [-1, 1]")


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels N``: images larger than this (once decoded) are refused before decoding."""
    parser.add_argument("--max-pixels", type=lambda text: int(float(text)), metavar="N",
                        help="refuse images above N decoded pixels, before decoding them (default 40000000, "
                             "or EDGECLS_MAX_PIXELS): bounds memory on a small board")


def add_threads(parser: argparse.ArgumentParser, help: str = "interpreter threads (default: all cores, at most 4)"):
    """``--threads N`` into ``num_threads``."""
    parser.add_argument("--threads", dest="num_threads", type=thread_count, metavar="N", help=help)


def add_unknown(parser: argparse.ArgumentParser, help: str) -> None:
    """``--unknown on|off`` into ``unknown`` ("on"/"off"): whether a model's reference set is used (made)."""
    parser.add_argument("--unknown", choices=("on", "off"), default="on", help=help)


def add_unknown_calibration(parser: argparse.ArgumentParser) -> None:
    """``--unknown-accept F`` and ``--unknown-check DIR``: how a reference set's threshold is set, and checked."""
    from edge_app.runtime.novelty import DEFAULT_ACCEPT

    parser.add_argument("--unknown-accept", type=float, default=DEFAULT_ACCEPT, metavar="F",
                        help="'unknown': the share of held-out photos of the classes its threshold accepts")
    parser.add_argument("--unknown-check", default=None, metavar="DIR",
                        help="photos of things that are none of the classes: report how many are called unknown, "
                             "beside the max softmax probability")
