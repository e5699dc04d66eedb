"""Class cards: what each class of a model is called, what it means and what to do about it, per language.

A model's metadata (``edgecls.json``) carries them under :data:`KEY`::

    {"cards": {"Potato___Early_blight": {"en": {"name": "Early blight", "description": "...", "advice": "..."},
                                        "sw": {"name": "Baka jani la mapema"}}}}

They are written from a *cards file*, YAML, one entry per class (named exactly as the model's label), one
card per language (a code such as ``en``, ``sw``, ``pt_BR``); ``name`` is required, ``description`` (one
line, at most 200 characters) and ``advice`` (what a farmer should do, at most 400) are optional::

    Potato___Early_blight:
      en: {name: Early blight, description: Dark rings on older leaves., advice: Remove the lowest leaves.}
      sw: {name: Baka jani la mapema}
    Potato___Late_blight:
      en: {name: Late blight}

Every card needs English (``en``): it is what a language without a card falls back to. A class without a card
is shown by its label. Every value is read as text (``no:`` is Norwegian, not *false*; ``007`` stays
``007``). ``edgecls train`` and ``edgecls learn`` read ``DATA/classes.yaml`` (or ``--classes FILE``),
``edgecls meta MODEL --classes FILE`` sets them on an existing model; convert, learn, a live swap and a fleet
deploy carry them with the model.

Example:
    >>> cards = read_cards("classes.yaml", ["Potato___Early_blight", "Potato___healthy"])
    >>> card(cards, "Potato___Early_blight", "sw_KE")["name"]
    'Baka jani la mapema'
"""

from __future__ import annotations

import difflib
import os
import unicodedata
from pathlib import Path

from edge_app.runtime.errors import CardsError, first_line

KEY = "cards"  # the metadata key (and the run's config.json key)
FILE_NAME = "classes.yaml"  # the cards file train and learn read from DATA when no --classes is given
FALLBACK = "en"
FIELDS = {"name": 60, "description": 200, "advice": 400}  # field -> the most characters it may have
MAX_CARDS_BYTES = 1_000_000  # a cards file of megabytes is the wrong file


def default_file(data_dir: str | os.PathLike) -> Path | None:
    """``DATA/classes.yaml`` when there is one (a folder of that name is a class, not a cards file)."""
    path = Path(data_dir) / FILE_NAME
    return path if path.exists() and not path.is_dir() else None


def read_cards(path: str | os.PathLike, labels: list[str], flag: str = "--classes") -> dict:
    """The cards in the YAML file ``path``, checked against the model's ``labels``: the metadata value.

    The file is checked, then read (a regular file of at most 1 MB); an empty mapping (``{}``) means no cards.

    Raises:
        CardsError: one line naming ``flag`` and the file, what is wrong and what to do.

    Example:
        >>> read_cards("data/classes.yaml", ["Potato___Early_blight", "Potato___healthy"])
        {'Potato___Early_blight': {'en': {'name': 'Early blight'}}}
    """
    from edge_app.runtime.files import FileTooLarge, NotRegularFile, read_bounded

    path = Path(path)
    where = f"{flag} {path}"
    try:
        text = read_bounded(path, MAX_CARDS_BYTES).decode("utf-8-sig")
    except FileNotFoundError as e:
        raise CardsError(f"{where} does not exist; give a class cards file (YAML: class, language, name), "
                         "see docs/cards.md") from e
    except NotRegularFile as e:
        raise CardsError(f"{where} is {e}, not a cards file; give a YAML file") from e
    except FileTooLarge as e:
        raise CardsError(f"{where} is {e.size / 1e6:.1f} MB, over the {MAX_CARDS_BYTES / 1e6:.0f} MB a cards file "
                         "may be; is it the right file?") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CardsError(f"cannot read {where} ({e}); it should be UTF-8 YAML text") from e
    return check_cards(_parse_yaml(text, where), labels, where)


def check_cards(value: object, labels: list[str], where: str = "cards") -> dict:
    """``value`` (a parsed cards file, or cards read back from a run or a model) checked against ``labels``;
    returns it in the metadata's shape (language codes canonical, text stripped, empty fields left out).

    Raises:
        CardsError: naming ``where`` (e.g. ``--classes data/classes.yaml``), what is wrong and the fix.
    """
    if not isinstance(value, dict):
        raise CardsError(f"{where} is not a mapping of class names to cards (got {_kind(value)}); write one "
                         "'CLASS:' line per class with 'en: {name: ...}' under it, see docs/cards.md")
    known = set(labels)
    out: dict[str, dict] = {}
    for label, per_language in value.items():
        if not isinstance(label, str) or label not in known:
            raise CardsError(f"{where}: {_unknown_class(label, labels)}")
        if not isinstance(per_language, dict):
            raise CardsError(f"{where}: class {label!r} has {_kind(per_language)} where its cards should be, one "
                             f"per language (e.g. 'en: {{name: ...}}')")
        cards: dict[str, dict] = {}
        for code, fields in per_language.items():
            lang = _language(code, f"{where}: class {label!r}")
            if lang in cards:
                raise CardsError(f"{where}: class {label!r} has two cards for language {lang!r}; keep one")
            cards[lang] = _card(fields, f"{where}: class {label!r}, language {lang!r}")
        if FALLBACK not in cards:
            raise CardsError(f"{where}: class {label!r} has no {FALLBACK!r} card (missing language): every class needs "
                             f"English, the fallback for a language it has no card in; add '{FALLBACK}: {{name: ...}}'")
        out[label] = {lang: cards[lang] for lang in sorted(cards)}
    order = {label: i for i, label in reversed(list(enumerate(labels)))}
    return {label: out[label] for label in sorted(out, key=order.__getitem__)}


def card(cards: dict | None, label: str, lang: str) -> dict | None:
    """The card of ``label`` in ``lang``: that language (``pt_BR``; then ``pt``), else English, else ``None``
    (show the label itself).

    Returns:
        ``{"name", "description", "advice", "lang"}``: the absent fields as ``""``, ``lang`` the language
        whose card it is. Cards that are not well formed (a model from elsewhere) count as absent.

    Example:
        >>> card({"a": {"en": {"name": "Early blight"}}}, "a", "sw")
        {'name': 'Early blight', 'description': '', 'advice': '', 'lang': 'en'}
    """
    entry = cards.get(label) if isinstance(cards, dict) and isinstance(label, str) else None
    if not isinstance(entry, dict):
        return None
    by_key = {_fold(code): code for code in entry if isinstance(code, str)}
    wanted = _fold(lang) if isinstance(lang, str) else ""
    for key in dict.fromkeys((wanted, wanted.split("_")[0], FALLBACK)):
        code = by_key.get(key)
        fields = entry.get(code) if code is not None else None
        if isinstance(fields, dict) and isinstance(fields.get("name"), str) and fields["name"].strip():
            return {"name": fields["name"], **{f: _text(fields.get(f)) for f in ("description", "advice")},
                    "lang": code}
    return None


def languages(cards: dict | None) -> list[str]:
    """The languages the cards have (any class), sorted.

    Example:
        >>> languages({"a": {"en": {"name": "A"}, "sw": {"name": "A"}}, "b": {"en": {"name": "B"}}})
        ['en', 'sw']
    """
    if not isinstance(cards, dict):
        return []
    return sorted({code for entry in cards.values() if isinstance(entry, dict) for code in entry
                   if isinstance(code, str)})


def for_labels(cards: dict | None, labels: list[str]) -> dict:
    """The cards of the classes in ``labels`` only, in their order (for a model whose classes changed).

    Example:
        >>> for_labels({"a": {"en": {"name": "A"}}, "b": {"en": {"name": "B"}}}, ["b", "c"])
        {'b': {'en': {'name': 'B'}}}
    """
    if not isinstance(cards, dict):
        return {}
    return {label: cards[label] for label in labels if isinstance(cards.get(label), dict)}


def merge(base: dict | None, extra: dict | None) -> dict:
    """``base``'s cards with ``extra``'s over them, card by card: a class's language that ``extra`` has is
    ``extra``'s; its other languages stay ``base``'s.

    Example:
        >>> merge({"a": {"en": {"name": "A"}, "sw": {"name": "Aa"}}}, {"a": {"en": {"name": "A!"}}})
        {'a': {'en': {'name': 'A!'}, 'sw': {'name': 'Aa'}}}
    """
    out = {label: dict(entry) for label, entry in (base or {}).items() if isinstance(entry, dict)}
    for label, entry in (extra or {}).items():
        if isinstance(entry, dict):
            joined = {**out.get(label, {}), **entry}
            out[label] = {lang: joined[lang] for lang in sorted(joined)}
    return out


def _parse_yaml(text: str, where: str) -> object:
    import yaml

    class Loader(yaml.SafeLoader):
        """Every plain scalar is text (YAML 1.1 would make ``no`` false and ``007`` 7); a key given twice is an
        error, not the last one silently winning."""

        yaml_implicit_resolvers: dict = {}

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice",
                                                            key_node.start_mark, note="twice")
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        fix = "keep one of them" if getattr(e, "note", None) == "twice" else \
            "write it as 'CLASS:' lines with 'en: {name: ...}' under each, see docs/cards.md"
        raise CardsError(f"{where} is not valid YAML ({problem}{at}); {fix}") from e
    except RecursionError as e:  # thousands of nested brackets
        raise CardsError(f"{where} nests too deep to be a cards file; see docs/cards.md") from e


def _unknown_class(label: object, labels: list[str]) -> str:
    if not isinstance(label, str):
        return f"{_kind(label)} where a class name should be; use the model's class names as keys"
    close = difflib.get_close_matches(label, labels, 1, 0.6)
    folded = [name for name in labels if name.casefold() == label.casefold()]
    hint = folded or close
    if hint:
        return f"class {label!r} is not one of the classes; did you mean {hint[0]!r}? (names match exactly)"
    shown = ", ".join(repr(name) for name in labels[:3]) + (f", ... ({len(labels)} in all)" if len(labels) > 3 else "")
    return f"class {label!r} is not one of the classes ({shown}); name each card after a class, or remove it"


def _language(code: object, where: str) -> str:
    """``code`` as Babel spells it (``pt-br`` -> ``pt_BR``) when it is a language Babel knows, else an error."""
    from babel import Locale, UnknownLocaleError

    fix = "use a language code such as en, sw, fr or pt_BR"
    if not isinstance(code, str) or not code.strip():
        raise CardsError(f"{where}: {_kind(code)} is not a language code; {fix}")
    text = code.strip()
    try:
        locale = Locale.parse(text, sep="-" if "-" in text else "_")
    except (UnknownLocaleError, ValueError, TypeError) as e:
        raise CardsError(f"{where}: {text!r} is not a valid language ({first_line(e)}); {fix}") from e
    # Babel reads 'und' and 'en_ZZ' as en_US (its likely guess): only a code that is what it says is taken.
    if locale.english_name is None or str(locale).casefold() != text.replace("-", "_").casefold():
        raise CardsError(f"{where}: {text!r} is not a valid language (Babel reads it as {str(locale)!r}); {fix}")
    return str(locale)


def _card(fields: object, where: str) -> dict:
    if not isinstance(fields, dict):
        raise CardsError(f"{where}: the card is {_kind(fields)}; write it as {{name: ..., description: ..., "
                         "advice: ...}")
    card = {}
    for name, value in fields.items():
        if name not in FIELDS:
            close = difflib.get_close_matches(str(name), list(FIELDS), 1, 0.6)
            raise CardsError(f"{where}: unknown field {name!r}"
                             + (f"; did you mean {close[0]!r}?" if close else "")
                             + f" A card has {', '.join(FIELDS)}")
        if not isinstance(value, str):
            raise CardsError(f"{where}: {name} is {_kind(value)}, not text; write it as one line of text")
        value = value.strip()
        if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
            raise CardsError(f"{where}: {name} holds a line break or control character; write it on one line")
        if len(value) > FIELDS[name]:
            raise CardsError(f"{where}: {name} is {len(value)} characters, over the {FIELDS[name]} a {name} may have; "
                             "shorten it")
        if value:
            card[name] = value
    if not card.get("name"):
        raise CardsError(f"{where}: the card has no name (or an empty one); every card needs 'name: ...', the "
                         "class's name as people say it")
    return {f: card[f] for f in FIELDS if f in card}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _fold(code: str) -> str:
    return code.strip().replace("-", "_").casefold()


def _kind(value: object) -> str:
    if value is None or value == "":
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {str(value)[:40]!r}"
