"""The README and docs/results.md link to sections of docs/results.md by anchor; a renamed
heading must not leave a link pointing nowhere."""

from __future__ import annotations

import re

from helpers import REPO

RESULTS = REPO / "docs" / "results.md"
LINK = re.compile(r"\]\(((?:docs/results\.md)?)#([^)\s]+)\)")


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation other than '-' and
    '_' dropped, spaces as '-', a repeated one suffixed -1, -2, ... (code blocks skipped)."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6} (.+)", line)
        if match:
            base = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchor, n = base, 0
            while anchor in anchors:
                n += 1
                anchor = f"{base}-{n}"
            anchors.add(anchor)
    return anchors


def test_github_anchors_of_a_hand_checked_heading() -> None:
    assert github_anchors("## Forward+backward, idle (2026-12-04)\n## Serving\n## Serving") == {
        "forwardbackward-idle-2026-12-04",
        "serving",
        "serving-1",
    }


def test_every_link_into_results_md_finds_its_section() -> None:
    anchors = github_anchors(RESULTS.read_text(encoding="utf-8"))
    checked = 0
    for source in (REPO / "README.md", RESULTS):
        for target, anchor in LINK.findall(source.read_text(encoding="utf-8")):
            if source == RESULTS or target:
                assert anchor in anchors, f"{source.name}: link to #{anchor} finds no heading"
                checked += 1
    assert checked >= 20  # the links were found (about 40 today)
