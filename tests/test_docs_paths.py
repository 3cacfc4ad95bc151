"""The files the README and CONTRIBUTING name are in the tree: every path in `code`, every relative link, and every
file of the README's Layout table (named relative to its first column)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "CONTRIBUTING.md")
TOP = ("dg_lsp/", "dg_model/", "dg_bench/", "tests/", "editors/", "docs/", ".ci/")
CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)\)")


def exists(path: str) -> bool:
    return any(REPO.glob(path)) if "*" in path else (REPO / path).exists()


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_and_link_names_a_file_that_exists(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    paths = {span for span in CODE.findall(text) if span.startswith(TOP) and " " not in span}
    links = {link for link in LINK.findall(text) if "://" not in link}
    assert paths and links
    assert sorted(p for p in paths | links if not exists(p)) == []


def test_every_file_of_the_layout_table_exists() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) > 10
    named = [
        where + name
        for where_cell, files, *_ in rows
        for where in CODE.findall(where_cell)[:1]
        for name in CODE.findall(files)
    ]
    assert sorted(p for p in named if not exists(p)) == []
