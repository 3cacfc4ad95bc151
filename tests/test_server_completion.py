"""textDocument/completion end to end: multi-line items with a textEdit that applies and parses."""

from __future__ import annotations

import ast

from conftest import apply_edits, fake_spec, session
from lsprotocol import types

from dg_lsp import languages

BODY = "def double(x):\n    \n\n\nprint(double(2))\n"
BLOCK = "y = x * 2\n    return y"


def params(uri: str, line: int, character: int, context: types.CompletionContext | None = None):
    return types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=context,
    )


async def test_multi_line_item(py_uri):
    async with session(fake_spec(text=BLOCK)) as s:
        s.open(py_uri, BODY)
        result = await s.client.text_document_completion_async(params(py_uri, 1, 4))
        assert result.is_incomplete  # depends on every keystroke: the client must ask again
        (item,) = result.items
        assert item.label == "y = x * 2"
        assert item.detail == BLOCK and BLOCK in item.documentation.value
        assert item.insert_text_format == types.InsertTextFormat.PlainText
        assert item.text_edit.range == types.Range(
            start=types.Position(line=1, character=4), end=types.Position(line=1, character=4)
        )
        new = apply_edits(BODY, [item.text_edit])
        assert "    y = x * 2\n    return y\n" in new
        ast.parse(new)


async def test_trigger_character_of_another_language_is_ignored(py_uri):
    async with session(fake_spec(text=BLOCK)) as s:
        s.open(py_uri, BODY)
        at = types.CompletionContext(trigger_kind=types.CompletionTriggerKind.TriggerCharacter, trigger_character="@")
        assert "@" not in languages.trigger_characters("python") and "@" in languages.all_trigger_characters()
        assert await s.client.text_document_completion_async(params(py_uri, 1, 4, at)) is None


async def test_invoked_completion_in_javascript(tmp_path):
    uri = (tmp_path / "a.js").as_uri()
    text = "function add(a, b) {\n  return \n}\n"
    async with session(fake_spec(text="a + b;")) as s:
        s.open(uri, text, language_id="javascript")
        invoked = types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked)
        (item,) = (await s.client.text_document_completion_async(params(uri, 1, 9, invoked))).items
        assert apply_edits(text, [item.text_edit]) == "function add(a, b) {\n  return a + b;\n}\n"


async def test_nothing_to_offer_is_null(py_uri):
    async with session(fake_spec(text="   ")) as s:  # a blank completion is no completion
        s.open(py_uri, BODY)
        assert await s.client.text_document_completion_async(params(py_uri, 1, 4)) is None
