"""The README stays a front page and the docs/ pages stay reachable: README.md at most 150 lines with a Python
example in its first 40, every docs/*.md page linked from it, every relative link in README.md and docs/*.md
pointing at a file (and heading) that exists inside the repository, and every headline figure naming its machine
and linking the results that made it."""

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT as ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\[\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """``text`` without fenced code blocks (their lines kept blank, so line numbers hold)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def links(text: str) -> list[str]:
    """Targets of the markdown links in ``text``'s prose; link text may hold code spans, code spans hold no links."""
    spans_out = INLINE_CODE.sub("C", prose(text))  # [`path`](target) stays a link, `[a](b)` is code
    return list(dict.fromkeys(LINK.findall(spans_out)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def test_slug_follows_github():
    assert slug("Files from strangers: what each reader trusts and refuses") == (
        "files-from-strangers-what-each-reader-trusts-and-refuses"
    )
    assert slug("Temporal stability (`sdk/stability.py`)") == "temporal-stability-sdkstabilitypy"
    assert slug("CPU features are detected, not assumed") == "cpu-features-are-detected-not-assumed"


def test_links_are_found_in_prose_only():
    text = "see [a](x.md) and [`b/`](../b/README.md), not `[c](nope.md)`\n```\n[d](nope2.md)\n```\n"
    assert links(text) == ["x.md", "../b/README.md"]


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move depth into docs/ (at most 150)"
    first_python = next((n for n, line in enumerate(lines, 1) if line.strip().startswith("```python")), None)
    assert first_python is not None, "README.md has no ```python example"
    assert first_python <= 40, f"README.md's first ```python block starts on line {first_python}, after line 40"


def test_readme_keeps_the_two_commands():
    text = README.read_text()
    assert "## The two commands" in text
    for command in ("make demo   # main job", "make test   # sets up .venv, ruff, then the whole pytest suite"):
        assert command in text, f"README.md lost {command!r}"


def test_every_docs_page_is_linked_from_the_readme():
    assert DOCS, "docs/ has no pages"
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README.read_text())}
    unlinked = [page.name for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such path)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment} in {resolved.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_headline_figures_name_their_machine_and_results():
    text = prose(README.read_text())
    section = text.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past the header and its rule
    assert rows, "README.md's headline figures table is empty"
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 4, f"headline row without figure | value | machine | made by: {row}"
        machine, made_by = cells[2], cells[3]
        assert re.search(r"AMD EPYC|Intel Xeon|NVIDIA", machine), f"headline row names no machine: {row}"
        assert any(t.startswith("benchmarks/results/") for t in links(made_by)), f"no results link: {row}"
