"""README is a user's manual: under 700 lines, a table of contents whose links resolve, every section in it,
and every place that cites a README section or a doc names one that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LIMIT = 700


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every Markdown heading outside code fences."""
    found, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        match = None if fence else re.match(r"^(#{1,6}) (.+)$", line)
        if match:
            found.append((len(match.group(1)), match.group(2).strip()))
    return found


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def test_the_readme_stays_under_700_lines():
    assert len(README.read_text().splitlines()) < LIMIT


def test_the_table_of_contents_links_resolve_and_list_every_section():
    text = README.read_text()
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    sections = [title for level, title in headings(text) if level in (2, 3) and title != "Contents"]
    assert links == [anchor(title) for title in sections]
    every_anchor = {anchor(title) for _, title in headings(text)}
    assert set(re.findall(r"\]\(#([^)]+)\)", text)) <= every_anchor


def cited_sections() -> list[tuple[str, str]]:
    """(file, section) for every `README, "Section"` or `README "Section"` in the repository's own text."""
    cited = []
    for folder in ("gateway", "tests", "docs", "deploy", "bench", "soak", "client", "examples"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".sh", ".html", ".txt"} and path.name != "test_readme.py":
                for name in re.findall(r'README,? "([^"]+)"', path.read_text(encoding="utf-8", errors="replace")):
                    cited.append((str(path.relative_to(ROOT)), " ".join(name.split())))
    return cited


def test_every_cited_readme_section_exists():
    titles = [re.sub(r"`", "", title) for _, title in headings(README.read_text())]
    missing = [(path, name) for path, name in cited_sections()
               if not any(title.startswith(name.replace("`", "")) for title in titles)]
    assert missing == []


def test_every_document_the_readme_points_to_exists():
    text = README.read_text()
    named = set(re.findall(r"\b((?:docs|client|deploy)/[\w./-]+\.(?:md|png|json|sh))", text))  # not the user's files
    named |= set(re.findall(r"\b([A-Z]+\.md)\b", text))
    assert [name for name in sorted(named) if not (ROOT / name).exists()] == []
