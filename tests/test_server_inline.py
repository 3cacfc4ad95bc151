"""textDocument/inlineCompletion end to end: edits that apply and parse, cancellation, superseding, stale versions."""

from __future__ import annotations

import ast
import asyncio
import time

import pytest
from conftest import apply_edits, fake_spec, session
from fake_engine import read_events
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

PY = "import math\n\n\ndef area(r):\n    return \n\n\nprint(area(2.0))\n"
CURSOR = (4, 11)  # after "    return "


def accept(text: str, item: types.InlineCompletionItem) -> str:
    return apply_edits(text, [types.TextEdit(range=item.range, new_text=item.insert_text)])


def _type(s, uri: str, line: int, character: int, text: str) -> None:
    at = types.Position(line=line, character=character)
    s.change(uri, [types.TextEdit(range=types.Range(start=at, end=at), new_text=text)])


async def test_completion_applies_and_the_file_parses(py_uri):
    async with session(fake_spec(text="math.pi * r ** 2")) as s:
        s.open(py_uri, PY)
        result = await s.inline(py_uri, *CURSOR)
        (item,) = result.items
        assert item.range.start == types.Position(line=4, character=11)
        new = accept(PY, item)
        assert "    return math.pi * r ** 2\n" in new
        ast.parse(new)


async def test_several_candidates_best_first(py_uri):
    texts = ["math.pi * r ** 2", "math.pi * r * r", "math.pi * r ** 2"]
    async with session(fake_spec(texts=texts), init_options={"candidates": 3}) as s:
        s.open(py_uri, PY)
        result = await s.inline(py_uri, *CURSOR)
        assert [i.insert_text for i in result.items] == texts[:2]  # duplicates collapse


async def test_completion_that_closes_the_line_replaces_the_rest_of_it(py_uri):
    text = "def f(a, b):\n    return max()\n"
    async with session(fake_spec(text="a, b)")) as s:
        s.open(py_uri, text)
        (item,) = (await s.inline(py_uri, 1, 15)).items  # between "(" and ")"
        new = accept(text, item)
        assert "return max(a, b)\n" in new  # never "max(a, b))"
        ast.parse(new)


async def test_broken_completion_gives_nothing(py_uri):
    async with session(fake_spec(text="math.pi * (r ** 2 +")) as s:
        s.open(py_uri, PY)
        assert not (await s.inline(py_uri, *CURSOR)).items


async def test_nothing_to_suggest_is_an_empty_list_not_null(py_uri):
    """`null` would leave the editor's previous answer in place (Neovim 0.12 keeps drawing and accepting it where it
    was made); an empty list replaces it."""
    async with session(fake_spec(text="math.pi * (r ** 2 +")) as s:
        s.open(py_uri, PY)
        result = await s.inline(py_uri, *CURSOR)
        assert isinstance(result, types.InlineCompletionList) and len(result.items) == 0, result


async def test_automatic_trigger_in_a_comment_gives_nothing(py_uri):
    text = "# compute the area \ndef f():\n    pass\n"
    async with session(fake_spec(text="of a circle"), init_options={"debounceMs": 0}) as s:
        s.open(py_uri, text)
        assert not (await s.inline(py_uri, 0, 19, invoked=False)).items
        assert (await s.inline(py_uri, 0, 19, invoked=True)).items  # an explicit request still runs


async def test_edits_are_seen_by_the_next_request(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(text="r * r", record=str(record))) as s:
        s.open(py_uri, PY)
        _type(s, py_uri, 4, 11, "math.pi * ")
        (item,) = (await s.inline(py_uri, 4, 21)).items
        start = [e for e in read_events(record) if e["event"] == "start"][-1]
        assert start["prefix_tail"].endswith("    return math.pi * ")
        ast.parse(accept(s.texts[py_uri], item))


async def test_cancel_request_stops_the_generation(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(steps=500, step_ms=20, record=str(record))) as s:  # 10 s if not stopped
        s.open(py_uri, PY)
        pending = await s.inline_running(record, py_uri, *CURSOR, msg_id="slow-1")
        sent = time.time()
        s.client.cancel_request(types.CancelParams(id="slow-1"))
        with pytest.raises(JsonRpcRequestCancelled):
            await asyncio.wait_for(pending, 2)
        cancelled = await _wait_event(record, "cancelled")
        assert cancelled["t"] - sent < 0.3  # seen within about one 20 ms step
        assert not any(e["event"] == "done" for e in read_events(record))
        actions = await s.client.text_document_code_action_async(  # the server still answers
            types.CodeActionParams(
                text_document=types.TextDocumentIdentifier(uri=py_uri),
                range=types.Range(start=types.Position(line=3, character=0), end=types.Position(line=3, character=0)),
                context=types.CodeActionContext(diagnostics=[]),
            )
        )
        assert [a.title for a in actions] == ["Fix this block", "Rewrite this block"]


# The fake's answer, `a + b`, reads names the document never defines: an explicit request would ask once more,
# wider (retryCandidates). Tests about one job each turn that off; test_an_answer_that_would_fail_is_asked_again
# covers it.
ONE_CALL = {"retryCandidates": 0}


async def test_newer_request_supersedes_the_running_one(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(steps=50, step_ms=20, record=str(record)), init_options=ONE_CALL) as s:
        s.open(py_uri, PY)
        first = await s.inline_running(record, py_uri, 4, 4)
        second = asyncio.ensure_future(s.inline(py_uri, *CURSOR))
        assert not (await asyncio.wait_for(first, 2)).items  # superseded: empty, promptly
        assert (await asyncio.wait_for(second, 3)).items
        events = [e["event"] for e in read_events(record)]
        assert events == ["start", "cancelled", "start", "done"]


async def test_inline_and_completion_for_one_keystroke_share_one_job(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(steps=10, step_ms=10, record=str(record)), init_options=ONE_CALL) as s:
        s.open(py_uri, PY)
        position = types.Position(line=CURSOR[0], character=CURSOR[1])
        completion = s.client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=py_uri), position=position)
        )
        inline, menu = await asyncio.gather(s.inline(py_uri, *CURSOR), completion)
        assert inline.items[0].insert_text == menu.items[0].text_edit.new_text
        assert [e["event"] for e in read_events(record)] == ["start", "done"]


async def test_result_for_a_stale_version_is_dropped(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(steps=50, step_ms=20, record=str(record))) as s:
        s.open(py_uri, PY)
        pending = await s.inline_running(record, py_uri, *CURSOR)
        _type(s, py_uri, 0, 0, "# edited\n")
        assert not (await asyncio.wait_for(pending, 2)).items
        await _wait_event(record, "cancelled")  # the change also stopped the useless generation


async def test_debounced_automatic_requests_only_run_the_last(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(record=str(record)), init_options={"debounceMs": 150}) as s:
        s.open(py_uri, PY)
        first = asyncio.ensure_future(s.inline(py_uri, 4, 4, invoked=False))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(s.inline(py_uri, *CURSOR, invoked=False))
        assert not (await first).items
        assert (await second).items
        assert [e["event"] for e in read_events(record)] == ["start", "done"]


async def _wait_event(record, name: str, timeout: float = 2.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_events(record):
            if event["event"] == name:
                return event
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {name!r} event: {read_events(record)}")


async def test_settings_reach_the_engine_job(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    options = {"candidates": 2, "maxLineTokens": 40, "maxBlockTokens": 100, **ONE_CALL}
    async with session(fake_spec(record=str(record)), init_options=options) as s:
        s.open(py_uri, PY)
        await s.inline(py_uri, *CURSOR)
        start = [e for e in read_events(record) if e["event"] == "start"][-1]
        assert start["n"] == 2 and start["max_tokens"] in (40, 100)
        assert start["doc_key"] == py_uri


async def test_an_answer_that_would_fail_is_asked_again(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(record=str(record)), init_options={"retryCandidates": 12}) as s:
        s.open(py_uri, PY)
        result = await s.inline(py_uri, *CURSOR)
        assert result.items  # the better of both answers (here the same) still reaches the editor
        starts = [e["n"] for e in read_events(record) if e["event"] == "start"]
        assert starts == [1, 12]
        # typing within a line is never asked twice
        await s.inline(py_uri, *CURSOR, invoked=False)
        assert [e["n"] for e in read_events(record) if e["event"] == "start"][2:] == [1]


async def test_typing_along_with_a_suggestion_keeps_its_rest_without_asking_the_model(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(text="math.pi * r ** 2", record=str(record))) as s:
        s.open(py_uri, PY)
        assert (await s.inline(py_uri, *CURSOR, invoked=False)).items[0].insert_text == "math.pi * r ** 2"
        for i, ch in enumerate("math.p"):
            _type(s, py_uri, 4, 11 + i, ch)
            (item,) = (await s.inline(py_uri, 4, 12 + i, invoked=False)).items
            assert item.insert_text == "math.pi * r ** 2"[i + 1 :]
            assert item.range.start == types.Position(line=4, character=12 + i)
        assert "    return math.pi * r ** 2\n" in accept(s.texts[py_uri], item)
        starts = [e for e in read_events(record) if e["event"] == "start"]
        assert len(starts) == 1  # six keystrokes, one model call
        assert (await s.inline(py_uri, 4, 17, invoked=True)) is not None  # an explicit request asks the model again
        _type(s, py_uri, 4, 17, "e")  # "math.pe": off the suggestion
        await s.inline(py_uri, 4, 18, invoked=False)
        assert len([e for e in read_events(record) if e["event"] == "start"]) == 3


async def test_type_ahead_off_asks_the_model_at_every_keystroke(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(text="math.pi * r ** 2", record=str(record)), init_options={"typeAhead": False}) as s:
        s.open(py_uri, PY)
        await s.inline(py_uri, *CURSOR, invoked=False)
        _type(s, py_uri, 4, 11, "m")
        await s.inline(py_uri, 4, 12, invoked=False)
        assert len([e for e in read_events(record) if e["event"] == "start"]) == 2


async def test_a_backspace_and_the_same_character_again_get_the_answer_of_before(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(text="math.pi * r ** 2", record=str(record))) as s:
        s.open(py_uri, PY)
        _type(s, py_uri, 4, 11, "x")
        first = (await s.inline(py_uri, 4, 12, invoked=False)).items
        s.change(
            py_uri,
            [
                types.TextEdit(
                    range=types.Range(
                        start=types.Position(line=4, character=11), end=types.Position(line=4, character=12)
                    ),
                    new_text="",
                )
            ],
        )
        await s.inline(py_uri, 4, 11, invoked=False)
        _type(s, py_uri, 4, 11, "x")
        again = (await s.inline(py_uri, 4, 12, invoked=False)).items
        assert [i.insert_text for i in again] == [i.insert_text for i in first]
        assert len([e for e in read_events(record) if e["event"] == "start"]) == 2  # "x" asked once, not twice
