"""The product path: `dg-lsp --stdio` with the default (embedded) model completes a real Python file, and the file
still parses after the completion is applied. No fake engine anywhere here."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import apply_edits, session
from lsprotocol import types

# A real file from this repository with one function body emptied where the cursor goes.
SOURCE = Path(__file__).resolve().parent.parent / "dg_lsp" / "settings.py"
HEADER = "def camel(name: str) -> str:\n"


async def test_embedded_model_completes_a_real_python_file(tmp_path):
    text = SOURCE.read_text(encoding="utf-8")
    start = text.index(HEADER) + len(HEADER)
    end = text.index("\n\n", start) + 1
    text = text[:start] + "    return \n" + text[end:]  # the body becomes "return <cursor>"
    uri = (tmp_path / "settings.py").as_uri()
    line = text[:start].count("\n")
    async with session(None, init_options={"candidates": 4}, wait_ready=False) as s:  # None: no --model flag
        status = await s.wait_status("ready", timeout=120)
        assert status["model"] == "embedded"
        s.open(uri, text)
        result = await s.inline(uri, line, len("    return "))
        assert result is not None and result.items, "the embedded model gave no completion that parses"
        item = result.items[0]
        new = apply_edits(text, [types.TextEdit(range=item.range, new_text=item.insert_text)])
        ast.parse(new)
        assert new != text
