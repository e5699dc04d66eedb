"""The bundled sample dataset: 64x64 RGB texture patches in five classes, for ``edgecls demo``.

``path()`` holds ``train/<class>/NNN.jpg`` and ``test/<class>/NNN.jpg`` (brick, fur, grass, gravel,
wood; 160 train and 40 test images each, test cut from regions of the source photos that train never
touches). Sources, licences (all CC0 1.0) and how to regenerate it: ``SOURCE.md`` beside this file.
"""

from __future__ import annotations

from pathlib import Path


def path() -> Path:
    """Return the folder of the bundled dataset, laid out as ``edgecls train`` reads it.

    Example:
        >>> from edgecls import sample_data
        >>> sorted(p.name for p in (sample_data.path() / "train").iterdir())
        ['brick', 'fur', 'grass', 'gravel', 'wood']
    """
    # A plain folder, not importlib.resources: the trainer and OpenCV need real file paths, and
    # the package is never imported from a zip.
    return Path(__file__).resolve().parent / "textures"
