"""Bad input gets a clear JSON-RPC error or an empty answer, and the server keeps answering afterwards."""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import Future

import pytest
from conftest import fake_spec, session
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

PY = "def add(a, b):\n    return \n"


def pos(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


async def still_answers(s, uri: str) -> None:
    s.open(uri, PY) if uri not in s.texts else None
    assert (await s.inline(uri, 1, 11)).items[0].insert_text == "a + b"


async def test_unknown_uri_is_invalid_params(py_uri):
    async with session(fake_spec()) as s:
        with pytest.raises(JsonRpcInvalidParams, match="not open"):
            await s.inline("file:///never/opened.py", 0, 0)
        with pytest.raises(JsonRpcInvalidParams):
            await s.client.text_document_completion_async(
                types.CompletionParams(
                    text_document=types.TextDocumentIdentifier(uri="file:///x.py"), position=pos(0, 0)
                )
            )
        await still_answers(s, py_uri)


async def test_line_past_the_end_is_invalid_params(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, PY)
        with pytest.raises(JsonRpcInvalidParams, match="past the end"):
            await s.inline(py_uri, 50, 0)
        await still_answers(s, py_uri)


async def test_reversed_code_action_range_is_invalid_params(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, PY)
        with pytest.raises(JsonRpcInvalidParams):
            await s.client.text_document_code_action_async(
                types.CodeActionParams(
                    text_document=types.TextDocumentIdentifier(uri=py_uri),
                    range=types.Range(start=pos(1, 5), end=pos(0, 0)),
                    context=types.CodeActionContext(diagnostics=[]),
                )
            )
        await still_answers(s, py_uri)


async def test_malformed_params_are_an_error_not_a_crash(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, PY)
        # Sent raw: the client library would refuse to serialize these params.
        answer: Future = Future()
        s.client.protocol._request_futures["bad-1"] = answer
        s.client.protocol._send_data(
            {
                "jsonrpc": "2.0",
                "id": "bad-1",
                "method": types.TEXT_DOCUMENT_INLINE_COMPLETION,
                "params": {"textDocument": {"uri": py_uri}, "position": {"line": -1}},
            }
        )
        with pytest.raises(JsonRpcInvalidParams, match="invalid params"):
            await asyncio.wait_for(asyncio.wrap_future(answer), 5)
        await still_answers(s, py_uri)
        assert not s.client.messages  # logged, not popped up


async def test_changes_to_unknown_documents_are_ignored(py_uri):
    async with session(fake_spec()) as s:
        s.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri="file:///ghost.py", version=2),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text="x")],
            )
        )
        await still_answers(s, py_uri)
        assert not [m for m in s.client.messages if m.type == types.MessageType.Error]


async def test_closed_document_is_forgotten(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, PY)
        s.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=py_uri))
        )
        with pytest.raises(JsonRpcInvalidParams):
            await s.inline(py_uri, 1, 11)


async def test_five_megabyte_document(py_uri):
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(5 * 1024 * 1024 // 40))
    text = body + PY
    assert len(text) > 5_000_000
    async with session(fake_spec()) as s:
        s.open(py_uri, text)
        last = text.count("\n") - 1
        started = time.monotonic()
        result = await asyncio.wait_for(s.inline(py_uri, last, 11), 20)
        elapsed = time.monotonic() - started
        assert result.items[0].insert_text == "a + b"
        assert elapsed < 10, elapsed
        s.change(py_uri, [types.TextEdit(range=types.Range(start=pos(0, 0), end=pos(0, 0)), new_text="# big\n")])
        result = await asyncio.wait_for(s.inline(py_uri, last + 1, 11), 20)
        assert result.items[0].insert_text == "a + b"  # the edit landed where the client put it


async def test_binary_looking_text(tmp_path):
    uri = (tmp_path / "blob.py").as_uri()
    rng = random.Random(0)
    text = "".join(chr(rng.choice([0, 1, 7, 0x0C, 0x1B, 0xFF, 0xFFFD, 0x41, 0x0A])) for _ in range(20000))
    async with session(fake_spec()) as s:
        s.open(uri, text)
        line = text.count("\n") // 2
        result = await s.inline(uri, line, 3)
        assert result is None or all(isinstance(i.insert_text, str) for i in result.items)
        await still_answers(s, (tmp_path / "ok.py").as_uri())


async def test_unknown_language_completes_as_plain_text(tmp_path):
    uri = (tmp_path / "prog.cob").as_uri()
    async with session(fake_spec(text="DISPLAY 'HI'.")) as s:
        s.open(uri, "       PROCEDURE DIVISION.\n           \n", language_id="cobol")
        result = await s.inline(uri, 1, 11)
        assert result.items[0].insert_text == "DISPLAY 'HI'."
