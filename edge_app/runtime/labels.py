"""Label files: one label per line, or Coral's ``ID label`` / ``ID: label`` per line."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from edge_app.runtime.errors import LabelsError

log = logging.getLogger("edgecls")

_ID_LINE = re.compile(r"^\s*(\d+)\s*[:\s]\s*(\S.*?)\s*$")


def parse_labels(text: str) -> list[str]:
    """Labels from the text of a label file, index order.

    A file is read as ``ID label`` lines only when *every* line has that shape, so plain
    labels that happen to start with a digit stay whole. Missing IDs become ``class_N``.

    Example:
        >>> parse_labels("0 background\\n1: tench\\n")
        ['background', 'tench']
    """
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    matches = [_ID_LINE.match(line) for line in lines]
    if lines and all(matches):
        by_id = {int(m.group(1)): m.group(2) for m in matches}
        return [by_id.get(i, f"class_{i}") for i in range(max(by_id) + 1)]
    return lines


def read_labels(path: str | Path) -> list[str]:
    """Read a label file; a missing, unreadable or empty file is a :class:`LabelsError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise LabelsError(f"label file {path} does not exist; pass --labels with the file the model was trained with") from e
    except (OSError, UnicodeDecodeError) as e:
        raise LabelsError(f"cannot read label file {path} ({e}); it should be UTF-8 text, one label per line") from e
    labels = parse_labels(text)
    if not labels:
        raise LabelsError(f"label file {path} is empty; it should hold one label per line")
    return labels


def match_labels(labels: list[str], num_classes: int, source: str) -> list[str]:
    """Check that ``labels`` fit a model with ``num_classes`` outputs.

    The one mismatch handled is TF-slim's ImageNet convention: a 1001-class model whose
    index 0 is "background", paired with a 1000-line file (or the reverse); it is logged.
    """
    if len(labels) == num_classes:
        return labels
    if len(labels) == num_classes - 1:
        log.warning("%s has %d labels for %d model outputs: taking output 0 as 'background' "
                    "(the TF-slim ImageNet convention)", source, len(labels), num_classes)
        return ["background", *labels]
    if len(labels) == num_classes + 1 and labels[0].strip().lower() == "background":
        log.warning("%s starts with 'background' and has one label more than the model's %d outputs: "
                    "dropping 'background'", source, num_classes)
        return labels[1:]
    raise LabelsError(f"{source} has {len(labels)} labels but the model outputs {num_classes} classes; "
                      "use the label file the model was trained with")
