"""The error family every edgecls command understands.

``main()`` prints an :class:`EdgeclsError` as one line on stderr and exits with its
``exit_code``: 2 for bad input or environment, 1 for a check that failed.
"""

from __future__ import annotations


class EdgeclsError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""

    exit_code = 2


class ModelError(EdgeclsError):
    """The model file is missing, not a TFLite model, or cannot run here."""


class LabelsError(EdgeclsError):
    """A label file that cannot be read or does not match the model."""


class ImageError(EdgeclsError):
    """An image that is missing, empty, corrupt or in a format we cannot decode."""


class DelegateError(EdgeclsError):
    """A hardware delegate (the Coral Edge TPU) that could not be loaded."""


class SourceError(EdgeclsError):
    """A camera, video, stream or folder that cannot be opened or read."""


class CheckFailed(EdgeclsError):
    """A measured check (accuracy drop, latency) did not pass. Artifacts are still written."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so ``finally`` blocks flush logs and remove temp files."""
