"""The kiosk's languages: its own words from gettext catalogues, the language a request gets.

The words live in ``locale/<lang>/LC_MESSAGES/kiosk.po`` (Babel extracts them from :mod:`edge_app.kiosk.page`,
translators edit the ``.po``, ``make translations`` compiles the ``.mo`` read here with the standard library).
A request's language: ``?lang=`` (the page's switch), else the run's ``--lang``, else the browser's
``Accept-Language``, else English. ``--lang`` comes before the browser's wish because a kiosk's own screen is a
browser its owner rarely configures; a farmer's phone can still switch.
"""

from __future__ import annotations

import functools
import gettext
from pathlib import Path

from edge_app.runtime.errors import EdgeclsError

LOCALE = Path(__file__).parent / "locale"
DOMAIN = "kiosk"
LANGUAGES = ("en", "es", "fr", "hi", "sw")  # English is the source: it has no catalogue
NAMES = {"en": "English", "es": "Español", "fr": "Français", "hi": "हिन्दी", "sw": "Kiswahili"}


def check_language(code: str, flag: str = "--lang") -> str:
    """``code`` as one of :data:`LANGUAGES` (``es-MX`` → ``es``), or a one-line error listing them."""
    base = str(code).replace("_", "-").split("-")[0].lower()
    if base not in LANGUAGES:
        raise EdgeclsError(f"{flag} {code}: the kiosk speaks {', '.join(LANGUAGES)}; choose one of them "
                          "(class cards may carry more)")
    return base


@functools.cache
def translations(lang: str) -> gettext.NullTranslations:
    """The catalogue of ``lang`` (English: the words as written)."""
    if lang == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE, languages=[lang])


def choose(asked: str | None, default: str | None, accept_language: str | None) -> str:
    """The language of one request: ``?lang=``, else ``--lang``, else ``Accept-Language``, else English."""
    for wish in (asked, default):
        if wish:
            try:
                return check_language(wish)
            except EdgeclsError:
                pass  # a stale ?lang= from a bookmark falls through to the kiosk's own
    from babel import Locale

    wanted = [part.split(";")[0].strip().replace("-", "_") for part in (accept_language or "").split(",")[:20]]
    found = Locale.negotiate([w for w in wanted if w and w != "*"], list(LANGUAGES), sep="_")
    return str(found.language) if found else "en"
