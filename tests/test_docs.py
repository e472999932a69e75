"""The docs hang together: every page is reachable from the README, and no link is dead."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _links(page: Path) -> set[Path]:
    text = page.read_text(encoding="utf-8")
    return {
        (page.parent / target).resolve()
        for target in LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:")
    }


def test_every_docs_page_is_linked_from_the_readme():
    linked = _links(ROOT / "README.md")
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_no_relative_link_in_readme_or_docs_is_dead():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    dead = [
        f"{page.relative_to(ROOT)} -> {target.relative_to(ROOT)}"
        for page in pages
        for target in _links(page)
        if target.is_relative_to(ROOT) and not target.exists()
    ]
    assert not dead, f"dead links: {dead}"
