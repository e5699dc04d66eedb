"""Label files: one label per line, or Coral's ``ID label`` / ``ID: label`` per line; and the one check every
class name passes, at every door a name comes in by (dataset folders, label files, the kiosk)."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, MutableMapping
from pathlib import Path

from edge_app.runtime.errors import EdgeclsError, LabelsError

log = logging.getLogger("edgecls")

# What the live app answers itself, in its log, over MQTT and to Home Assistant: a class of either name (in any
# case) could not be told apart from these verdicts.
UNKNOWN = "unknown"  # none of the model's classes (its reference set says so); checked before UNCERTAIN
UNCERTAIN = "uncertain"  # the top score is below --threshold
RESERVED_LABELS = (UNKNOWN, UNCERTAIN)

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


MAX_LABELS_BYTES = 4_000_000  # ImageNet's 1,001 labels are 20 kB; a label file of megabytes is the wrong file


def read_labels(path: str | Path) -> list[str]:
    """Read a label file (checked, then read: a regular file under ``MAX_LABELS_BYTES``); a missing, unreadable,
    oversize or empty file is a :class:`LabelsError`."""
    from edge_app.runtime.files import FileTooLarge, NotRegularFile, read_bounded

    path = Path(path)
    try:
        text = read_bounded(path, MAX_LABELS_BYTES).decode("utf-8-sig")
    except FileNotFoundError as e:
        raise LabelsError(f"label file {path} does not exist; pass --labels with the file the model was trained with") from e
    except NotRegularFile as e:
        raise LabelsError(f"label file {path} is {e}, not a text file; pass --labels with the model's label file") from e
    except FileTooLarge as e:
        raise LabelsError(f"label file {path} is {e.size / 1e6:.1f} MB, over the {MAX_LABELS_BYTES / 1e6:.0f} MB a "
                          "label file may be; is it the right file?") from e
    except (OSError, UnicodeDecodeError) as e:
        raise LabelsError(f"cannot read label file {path} ({e}); it should be UTF-8 text, one label per line") from e
    labels = parse_labels(text)
    if not labels:
        raise LabelsError(f"label file {path} is empty; it should hold one label per line")
    return check_labels(labels, f"label file {path}", "label")


def match_labels(labels: list[str], num_classes: int, source: str) -> list[str]:
    """Check that ``labels`` fit a model with ``num_classes`` outputs.

    The one mismatch handled is TF-slim's ImageNet convention: a 1001-class model whose
    index 0 is "background", paired with a 1000-line file (or the reverse); it is logged.
    """
    check_labels(labels, source, "label")
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


def label_key(name: str) -> str:
    """How class names are compared: two names with one key are shown the same (Unicode NFC, casefolded,
    runs of spaces as one, as a web page shows them).

    Example:
        >>> label_key("Cafe\\u0301") == label_key(" CAFÉ ")
        True
    """
    return " ".join(unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold()).split())


def check_label(name: str, taken: MutableMapping[str, str] | None = None, source: str = "", what: str = "class",
                error: type[EdgeclsError] = LabelsError, fix: str = "merge them or rename one") -> str:
    """``name``, when it can be a class beside the names in ``taken``; else ``error`` saying why and the fix.

    A class may not be named as the live app's own verdicts (``unknown``, ``uncertain``, in any case), nor look
    the same as another class (:func:`label_key`). The same spelling twice is not a look-alike: it is a fact of
    the model (ImageNet's label file names a bird and a machine 'crane'), and a folder cannot have it.

    Args:
        taken: ``{label_key: spelling}`` of the names already accepted; ``name`` is added to it.
        source: where the name comes from (a folder, a label file), first in the message.
        what: what the name is there ("class folder", "label").
        fix: what to do about a look-alike.

    Example:
        >>> taken = {}
        >>> [check_label(n, taken) for n in ("Café", "tea", "tea")]
        ['Café', 'tea', 'tea']
        >>> check_label("Cafe\\u0301", taken)  # the same word, its accent encoded as a second character
        Traceback (most recent call last):
        ...
        edge_app.runtime.errors.LabelsError: class 'Café' ('Cafe\\u0301') looks the same as 'Café' ('Caf\\xe9') ...
    """
    where = f"{source}: " if source else ""
    key = label_key(name)
    if key in RESERVED_LABELS:
        raise error(f"{where}{what} {name!r} cannot be a class: edgecls answers '{UNKNOWN}' (unlike every class) and "
                    f"'{UNCERTAIN}' (below --threshold) itself, in its log, over MQTT and to Home Assistant, and a class "
                    "named so (in any case) could not be told apart from them; give it another name")
    if taken is None:
        return name
    twin = taken.setdefault(key, name)
    if twin != name:
        same_text = unicodedata.normalize("NFC", name) == unicodedata.normalize("NFC", twin)
        # Spelled the same to the eye: the escapes say which folder or line is which.
        shown, other = (f"{n!r} ({ascii(n)})" if same_text else repr(n) for n in (name, twin))
        raise error(f"{where}{what} {shown} looks the same as {other} ({_how_they_differ(name, twin)}): they would "
                    f"be two classes that no one can tell apart; {fix}")
    return name


def check_labels(labels: Iterable[str], source: str = "", what: str = "class",
                 error: type[EdgeclsError] = LabelsError) -> list[str]:
    """Every name through :func:`check_label`, against the ones before it; returns them as a list."""
    taken: dict[str, str] = {}
    return [check_label(name, taken, source, what, error) for name in labels]


def _how_they_differ(a: str, b: str) -> str:
    a_nfc, b_nfc = unicodedata.normalize("NFC", a), unicodedata.normalize("NFC", b)
    if a_nfc == b_nfc:
        return "the same letters, their accents encoded two ways: Unicode NFC and NFD"
    if a_nfc.casefold() == b_nfc.casefold():
        return "it differs only in case" + ("" if a_nfc == a and b_nfc == b else " and in how its accents are encoded")
    return "it differs only in case, spacing or how its accents are encoded"
