"""The kiosk page in a real browser: headless Chromium (Debian's ``chromium`` package) driven by Playwright.

Runs where both are installed (``apt install chromium``; Playwright comes with the dev extra) and is
skipped elsewhere (failed in CI, which installs Chromium): the same flow is tested without a browser, through
the HTTP API, in test_field.py.
Set ``EDGECLS_SCREENSHOT=PATH`` to keep the page's screenshot (the README's comes from here).
"""

from __future__ import annotations

import os
import shutil

import pytest
from support import TOKEN, missing, running_kiosk

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is in the dev extra")
if CHROMIUM is None:
    missing("no Chromium: apt install chromium")

NEW = "red bird"
HOSTILE = "<img src=x onerror=window.pwned=1>"  # a legal class name that must stay text


def test_review_teach_apply_and_undo_in_a_real_browser(tmp_path):
    with running_kiosk(tmp_path) as client, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{client.base}/#token={TOKEN}")
        assert "token" not in page.url  # taken from the link into local storage, not left in the address bar
        cards = page.locator("#grid .card")
        cards.first.wait_for(timeout=30_000)

        # Review: the pictures come with the token (fetched, shown from blob URLs); label one frame by
        # typing, one as a hostile-looking name, discard one.
        page.wait_for_function("document.querySelector('#grid .card img').naturalWidth > 0")
        assert page.locator("#grid .card img").first.get_attribute("src").startswith("blob:")
        first = cards.first
        first.locator("input").fill(NEW)
        first.locator("button", has_text="Label").click()
        page.wait_for_function(f"document.getElementById('msg').textContent === 'labelled {NEW}'")
        cards.first.locator("input").fill(HOSTILE)
        cards.first.locator("button", has_text="Label").click()
        page.wait_for_function("document.getElementById('msg').textContent.startsWith('labelled <img')")
        cards.first.locator("button", has_text="Discard").click()
        page.wait_for_function("document.getElementById('msg').textContent === 'discarded'")

        # Teach: 10 frames over a second.
        page.click("#field nav button[data-tab=teach]")
        page.fill("#teach-label", NEW)
        page.fill("#teach-frames", "10")
        page.fill("#teach-seconds", "1")
        page.click("#capture")
        page.wait_for_function(f"document.getElementById('msg').textContent === 'captured 10 frames of {NEW}'",
                               timeout=30_000)
        assert HOSTILE in page.locator("#counts").inner_text()  # shown as text ...
        assert page.evaluate("window.pwned") is None              # ... never run as HTML

        # Labelled: the newest frames, their pictures fetched with the token; move one, send one back.
        labelled = tmp_path / "field" / "labelled"
        page.click("#field nav button[data-tab=labelled]")
        shown = page.locator("#labelled-grid .card")
        shown.first.wait_for(timeout=30_000)
        page.wait_for_function("document.querySelector('#labelled-grid .card img').naturalWidth > 0")
        moved = shown.first.get_attribute("data-id")
        shown.first.locator("input").fill(HOSTILE)
        shown.first.locator("button", has_text="Move").click()
        page.wait_for_function("document.getElementById('msg').textContent.startsWith('moved to <img')")
        assert (labelled / HOSTILE / f"{moved}.jpg").is_file()
        page.wait_for_function("name => document.querySelector('#labelled-grid .card .muted').textContent === name",
                               arg=HOSTILE)  # the list came back with the move in it
        back = shown.nth(1).get_attribute("data-id")
        page.locator(f"#labelled-grid .card[data-id='{back}'] button", has_text="Unlabel").click()
        page.wait_for_function("document.getElementById('msg').textContent === 'back to review'")
        assert (tmp_path / "field" / "inbox" / f"{back}.jpg").is_file()
        assert page.evaluate("window.pwned") is None

        # Model: apply, see the two accuracies, the live label change; then undo.
        page.click("#field nav button[data-tab=model]")
        page.click("#apply")
        page.wait_for_function("document.getElementById('job').textContent.startsWith('applied v0001')",
                               timeout=300_000)
        assert "new model" in page.locator("#job").inner_text()
        # Both new classes were shown the same scene; either may now win it, the old "macaw" may not.
        page.wait_for_function("names => names.includes(document.getElementById('label').textContent)",
                               arg=[NEW, HOSTILE], timeout=30_000)
        screenshot = os.environ.get("EDGECLS_SCREENSHOT") or str(tmp_path / "kiosk.png")
        page.screenshot(path=screenshot, full_page=True)
        page.click("#undo")
        page.wait_for_function("document.getElementById('msg').textContent === 'undone: running origin'")
        page.wait_for_function("document.getElementById('label').textContent === 'macaw'", timeout=30_000)
        browser.close()
    assert (root := tmp_path / "field" / "labelled") and sorted(p.name for p in root.iterdir()) == sorted([NEW, HOSTILE])
