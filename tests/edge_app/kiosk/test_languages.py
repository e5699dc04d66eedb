"""The kiosk's languages without a browser: the catalogues (complete for the farmer, compiled from their .po), the
language a request gets, ``--lang``, and the card a status carries (the browser tests are in test_farmer_view.py)."""

from __future__ import annotations

import gettext
import re
import subprocess
import sys

import pytest
from support import IMAGENET_MODEL, REPO, run_cli

from edge_app.kiosk import i18n, page

LOCALE = REPO / "edge_app" / "kiosk" / "locale"
ENGLISH = page.texts(lambda s: s)


@pytest.mark.parametrize("lang", [lang for lang in i18n.LANGUAGES if lang != "en"])
def test_every_word_is_translated_and_the_farmer_sees_no_english(lang):
    from babel.messages.pofile import read_po

    with open(LOCALE / lang / "LC_MESSAGES" / "kiosk.po", "rb") as f:
        catalog = read_po(f)
    ids = {m.id for m in catalog if m.id}
    assert ids == set(ENGLISH.values())  # nothing page.py says is missing from the catalogue (make translations)
    assert not [m.id for m in catalog if m.id and (not m.string or m.fuzzy)]
    words = page.texts(i18n.translations(lang).gettext)
    for key in page.FARMER_KEYS:
        assert words[key] != ENGLISH[key], (lang, key)
    for key, english in ENGLISH.items():  # the page's script fills these in: a lost {n} would show as text
        assert sorted(re.findall(r"\{\w+\}", words[key])) == sorted(re.findall(r"\{\w+\}", english)), (lang, key)


def test_the_compiled_catalogues_are_those_of_the_po_files(tmp_path):
    """A .mo older than its .po would ship last month's words: `make translations` compiles them."""
    for lang in (lang for lang in i18n.LANGUAGES if lang != "en"):
        po = LOCALE / lang / "LC_MESSAGES" / "kiosk.po"
        out = tmp_path / f"{lang}.mo"
        subprocess.run([sys.executable, "-m", "babel.messages.frontend", "compile", "-i", str(po), "-o", str(out),
                        "-l", lang], check=True, capture_output=True)
        with open(out, "rb") as fresh, open(LOCALE / lang / "LC_MESSAGES" / "kiosk.mo", "rb") as shipped:
            assert gettext.GNUTranslations(fresh)._catalog == gettext.GNUTranslations(shipped)._catalog, lang


def test_the_language_a_request_gets():
    assert i18n.choose("sw", "fr", "hi") == "sw"                      # the page's switch first
    assert i18n.choose(None, "fr", "hi-IN,hi;q=0.9") == "fr"          # then the kiosk's --lang
    assert i18n.choose(None, None, "de-DE, hi-IN;q=0.8, en;q=0.5") == "hi"  # then the browser's, by its order
    assert i18n.choose(None, None, "de-DE") == "en" and i18n.choose(None, None, None) == "en"
    assert i18n.choose("xx-bogus", None, "es-MX") == "es"            # a stale ?lang= falls through
    assert i18n.choose(None, None, "*;q=0.1," * 500) == "en"          # a silly header costs nothing


def test_the_page_speaks_the_language_and_keeps_names_as_text():
    sw = page.render("sw").decode()
    assert '<html lang="sw">' in sw and page.texts(i18n.translations("sw").gettext)["what_to_do"] in sw
    assert "What to do" not in sw and '<option value="hi">हिन्दी</option>' in page.render("en").decode()
    # the words go to the script as JSON inside <script>: nothing in them can close it
    assert sw.count("</script>") == 2
    # Hindi's font is asked for with the page, before anything is drawn (no missing-glyph boxes first)
    assert 'href="/static/noto-sans-devanagari-700.woff2" as="font"' in page.render("hi").decode()
    assert "preload" not in sw


def test_lang_flag_is_checked_before_anything_opens(tmp_path):
    proc = run_cli("run", IMAGENET_MODEL, "--source", tmp_path, "--web", "127.0.0.1:0", "--lang", "de")
    assert proc.returncode == 2 and "--lang de" in proc.stderr and "en, es, fr, hi, sw" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("run", IMAGENET_MODEL, "--source", tmp_path, "--lang", "sw")
    assert proc.returncode == 2 and "add --web" in proc.stderr
