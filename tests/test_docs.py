"""The README and the docs site: every page reachable from the README, every relative link and anchor
resolving (on GitHub, where the pages are read as files, and in the MkDocs site alike), and the site
building with ``mkdocs build --strict`` where MkDocs is installed (the ``[docs]`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
# [text](target) and ![alt](target), with an optional "title"; the text may hold one level of [brackets].
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks, inline code spans blanked."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, CODE_SPAN.sub("", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (mkdocs.yml's toc uses the same: pymdownx.slugs, case lower)."""
    text = re.sub(r"<[^>]*>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _heading_lines(path):
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def _heading_lines(path: Path) -> list[tuple[int, str]]:
    # Headings keep their code spans (their text is part of the slug), so read them apart from prose_lines.
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and re.match(r"^#{1,6} ", line):
            out.append((number, line.rstrip()))
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    return [(number, target) for number, line in prose_lines(path) for target in LINK.findall(line)
            if not SCHEME.match(target)]


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in pages():
        for number, target in relative_links(page):
            file_part, _, fragment = target.partition("#")
            dest = (page.parent / unquote(file_part)).resolve() if file_part else page
            where = f"{page.relative_to(REPO)}:{number}: {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif REPO not in dest.parents and dest != REPO:
                broken.append(f"{where}: outside the repository")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{where}: no heading makes #{fragment} in {dest.relative_to(REPO)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for _, target in relative_links(page):
            dest = (page.parent / unquote(target.partition("#")[0])).resolve()
            if dest.suffix == ".md" and dest.is_file() and dest not in reached:
                todo.append(dest)
    unreached = [str(p.relative_to(REPO)) for p in DOCS.glob("*.md") if p.resolve() not in reached]
    assert not unreached, f"docs pages no link from README.md leads to: {sorted(unreached)}"


def test_the_readme_stays_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move reference material into docs/ (a page per topic)"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="MkDocs and the Material theme are in the [docs] extra: pip install -e '.[docs]'")
def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    # The offline plugin's search index, inlined so that search works from file://.
    assert (tmp_path / "site" / "search" / "search_index.js").is_file()
