"""The error family every edgecls command understands, and the validators every stage shares.

``main()`` prints an :class:`EdgeclsError` as one line on stderr and exits with its
``exit_code``: 2 for bad input or environment, 1 for a check that failed. Each stage's own
errors live here too, so a caller can catch one family without importing TensorFlow.
"""

from __future__ import annotations

import os


class EdgeclsError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""

    exit_code = 2


class ModelError(EdgeclsError):
    """The model file is missing, not a TFLite model, or cannot run here."""


class LabelsError(EdgeclsError):
    """A label file that cannot be read or does not match the model."""


class CardsError(LabelsError):
    """A class cards file (``--classes``) that cannot be read or does not fit the model's classes."""


class ImageError(EdgeclsError):
    """An image that is missing, empty, corrupt, too large or in a format we cannot decode."""


class DelegateError(EdgeclsError):
    """A hardware delegate (the Coral Edge TPU) that could not be loaded."""


class SourceError(EdgeclsError):
    """A camera, video, stream or folder that cannot be opened or read."""


class OutputError(EdgeclsError):
    """An output path that cannot be written, or that edgecls must not replace."""


class DisplayError(EdgeclsError):
    """``--display`` asked for a window where none can open."""


class TrainError(EdgeclsError):
    """A training setting, dataset or output folder that cannot be used as given."""


class ConfigError(EdgeclsError):
    """A conversion setting that cannot work."""


class ConversionError(EdgeclsError):
    """TensorFlow Lite could not lower the model for a target."""


class DataError(EdgeclsError):
    """Images for calibration or checks that are missing or do not fit the model."""


class BenchError(EdgeclsError):
    """A benchmark that cannot run as asked (bad flag value, missing folder, a worker that died)."""


class FleetError(EdgeclsError):
    """A broker URL, device id, key file or fleet target that cannot be used as given, or a broker out of reach."""


class SignatureError(FleetError):
    """A model whose sha256 or ed25519 signature does not match the trusted key: it is never installed."""


class CheckFailed(EdgeclsError):
    """A measured check (accuracy drop, latency) did not pass. Artifacts are still written."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so ``finally`` blocks flush logs and remove temp files."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none.

    Example:
        >>> first_line(ValueError("bad model\\ndetails..."))
        'bad model'
        >>> first_line(RuntimeError())
        'RuntimeError'
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def check_threads(num_threads: int | None, flag: str = "--threads",
                  error: type[EdgeclsError] = EdgeclsError) -> int | None:
    """``None`` (the runtime's default) or a thread count from 1 up to this machine's cores.

    More threads than cores only makes LiteRT's threads wait on each other (3000 threads ran 20x
    slower), so it is refused with the number to use instead.
    """
    if num_threads is None:
        return None
    cores = os.cpu_count() or 1
    if num_threads < 1:
        raise error(f"{flag} must be 1 or more, got {num_threads}")
    if num_threads > max(cores, 4):
        raise error(f"{flag} {num_threads} is more than the {cores} cores here; more interpreter threads "
                           f"than cores only slows it down. Use {flag} {cores} (or leave it unset)")
    return num_threads


def check_normalization(mean, std, error: type[EdgeclsError] = EdgeclsError) -> None:
    """``--mean`` and ``--std`` come together, and no ``std`` is 0."""
    if (mean is None) != (std is None):
        raise error("give both --mean and --std, or neither")
    if std is not None and any(float(s) == 0 for s in (std if isinstance(std, (tuple, list)) else (std,))):
        raise error("--std must not be 0")
