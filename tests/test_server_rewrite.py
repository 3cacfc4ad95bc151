""" "Fix this block" / "Rewrite this block": cheap code action listing, codeAction/resolve with a WorkspaceEdit, the
dg.fixBlock and dg.rewriteBlock commands."""

from __future__ import annotations

import ast
import asyncio

import pytest
from conftest import apply_edits, fake_spec, session, workspace_text_edits
from fake_engine import read_events
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pytest_lsp import client_capabilities

SRC = "def add(a, b):\n    s = a + b\n    return s\n\n\nprint(add(1, 2))\n"
NEW = "def add(a, b):\n    return a + b"
# The stand-in scores a block -1 per character unless told: these rewrites of working code are far likelier than the
# blocks they replace, beyond the price of the change, as working code must be for a rewrite (pipeline.MARGIN,
# rewrite_block.REWRITE_CHANNEL).
LIKELY = {NEW: 400.0, NEW + "\n": 400.0, "    return a + b\n": 400.0}


def rng(l1: int, c1: int, l2: int, c2: int) -> types.Range:
    return types.Range(start=types.Position(line=l1, character=c1), end=types.Position(line=l2, character=c2))


def action_params(uri: str, r: types.Range, only=None, diagnostics=()) -> types.CodeActionParams:
    return types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=r,
        context=types.CodeActionContext(diagnostics=list(diagnostics), only=only),
    )


async def rewrite_action(s, uri: str, r: types.Range) -> types.CodeAction:
    actions = await s.client.text_document_code_action_async(action_params(uri, r))
    return next(a for a in actions if a.title == "Rewrite this block")


async def test_listing_is_cheap_and_resolve_returns_an_edit_that_parses(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(rewrite=NEW, scores=LIKELY, record=str(record))) as s:
        s.open(py_uri, SRC)
        fix, action = await s.client.text_document_code_action_async(action_params(py_uri, rng(1, 4, 1, 4)))
        assert fix.title == "Fix this block" and fix.kind == types.CodeActionKind.QuickFix and fix.is_preferred
        assert action.title == "Rewrite this block" and action.kind == types.CodeActionKind.RefactorRewrite
        assert action.edit is None and action.data is not None
        assert read_events(record) == []  # listing did not run the model
        resolved = await s.client.code_action_resolve_async(action)
        new = apply_edits(SRC, workspace_text_edits(resolved.edit, py_uri))
        # An empty selection rewrote the enclosing function, and only it.
        assert new == "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
        ast.parse(new)
        assert resolved.edit.document_changes[0].text_document.version == 1  # versioned: stale edits are refused


async def test_selection_is_rewritten_as_given(py_uri):
    async with session(fake_spec(rewrite="    return a + b\n", scores=LIKELY)) as s:
        s.open(py_uri, SRC)
        action = await rewrite_action(s, py_uri, rng(1, 0, 3, 0))
        resolved = await s.client.code_action_resolve_async(action)
        new = apply_edits(SRC, workspace_text_edits(resolved.edit, py_uri))
        assert new == "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


async def test_only_filter(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, SRC)
        for only, offered in [
            (["quickfix"], ["Fix this block"]),
            (["refactor"], ["Rewrite this block"]),
            (["refactor.rewrite"], ["Rewrite this block"]),
            (["source"], []),
            (None, ["Fix this block", "Rewrite this block"]),
        ]:
            result = await s.client.text_document_code_action_async(action_params(py_uri, rng(1, 4, 1, 4), only))
            assert [a.title for a in result or []] == offered, only


async def test_broken_rewrite_gives_no_edit_and_says_so(py_uri):
    async with session(fake_spec(rewrite="def add(a, b:\n    return a +")) as s:
        s.open(py_uri, SRC)
        action = await rewrite_action(s, py_uri, rng(1, 4, 1, 4))
        resolved = await s.client.code_action_resolve_async(action)
        assert resolved.edit is None
        await asyncio.sleep(0.1)
        assert any("no rewrite of this block" in m.message for m in s.client.messages)


async def test_resolve_after_the_document_changed_is_content_modified(py_uri):
    async with session(fake_spec(rewrite=NEW, scores=LIKELY)) as s:
        s.open(py_uri, SRC)
        action = await rewrite_action(s, py_uri, rng(1, 4, 1, 4))
        s.change(py_uri, [types.TextEdit(range=rng(0, 0, 0, 0), new_text="# edited\n")])
        with pytest.raises(JsonRpcException) as info:
            await s.client.code_action_resolve_async(action)
        assert info.value.code == -32801  # ContentModified: the client asks again


async def test_clients_without_resolve_get_a_command_that_applies_the_edit(py_uri):
    caps = client_capabilities("emacs")  # no codeAction resolveSupport
    async with session(fake_spec(rewrite=NEW, scores=LIKELY), capabilities=caps) as s:
        s.open(py_uri, SRC)
        action = await rewrite_action(s, py_uri, rng(1, 4, 1, 4))
        assert action.data is None and action.command.command == "dg.rewriteBlock"
        returned = await s.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=action.command.command, arguments=action.command.arguments)
        )
        (applied,) = s.applied_edits
        assert applied.label == "Rewrite this block"
        new = apply_edits(SRC, workspace_text_edits(applied.edit, py_uri))
        ast.parse(new)
        assert "s = a + b" not in new and returned is not None


async def test_rewrite_command_directly(py_uri):
    async with session(fake_spec(rewrite=NEW, scores=LIKELY)) as s:
        s.open(py_uri, SRC)
        range_json = {"start": {"line": 0, "character": 0}, "end": {"line": 3, "character": 0}}
        await s.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dg.rewriteBlock", arguments=[py_uri, range_json])
        )
        (applied,) = s.applied_edits
        ast.parse(apply_edits(SRC, workspace_text_edits(applied.edit, py_uri)))


async def test_rewrite_command_with_bad_arguments_is_invalid_params(py_uri):
    async with session(fake_spec(rewrite=NEW, scores=LIKELY)) as s:
        s.open(py_uri, SRC)
        origin = {"line": 0, "character": 0}
        for arguments in [
            [],
            ["file:///nope.py"],
            [1, 2],
            [py_uri, {"start": 1}],
            ["a", "b", "c", "d"],
            ["file:///not-open.py", {"start": origin, "end": origin}],
        ]:
            with pytest.raises(JsonRpcInvalidParams):
                await s.client.workspace_execute_command_async(
                    types.ExecuteCommandParams(command="dg.rewriteBlock", arguments=arguments)
                )
        assert await s.client.text_document_code_action_async(action_params(py_uri, rng(1, 4, 1, 4)))


async def test_resolve_of_a_foreign_action_is_invalid_params(py_uri):
    async with session(fake_spec()) as s:
        with pytest.raises(JsonRpcInvalidParams):
            await s.client.code_action_resolve_async(types.CodeAction(title="someone else's", data=None))


BROKEN = "def add(a, b):\n    retrun a + b\n\n\nprint(add(1, 2))\n"


async def test_fix_repairs_a_slip_and_applies_nothing_when_asked_not_to(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, BROKEN)
        arguments = [py_uri, _json(rng(1, 0, 2, 0)), 1, {"apply": False}]
        edit = await s.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dg.fixBlock", arguments=arguments)
        )
        assert s.applied_edits == []  # previewed by the client, not applied by the server
        new = apply_edits(BROKEN, workspace_text_edits(_structure(edit), py_uri))
        assert new == "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


async def test_fix_of_working_code_says_nothing_to_fix(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, SRC)
        fix = (await s.client.text_document_code_action_async(action_params(py_uri, rng(1, 0, 3, 0))))[0]
        resolved = await s.client.code_action_resolve_async(fix)
        assert resolved.edit is None
        await asyncio.sleep(0.1)
        assert any("nothing to fix" in m.message for m in s.client.messages)


async def test_fix_is_a_quick_fix_for_the_diagnostic_under_the_cursor(py_uri):
    diagnostic = types.Diagnostic(range=rng(1, 4, 1, 10), message="invalid syntax", source="pyright")
    async with session(fake_spec()) as s:
        s.open(py_uri, BROKEN)
        actions = await s.client.text_document_code_action_async(
            action_params(py_uri, rng(1, 4, 1, 4), only=["quickfix"], diagnostics=[diagnostic])
        )
        (fix,) = actions
        assert list(fix.diagnostics) == [diagnostic]
        resolved = await s.client.code_action_resolve_async(fix)
        new = apply_edits(BROKEN, workspace_text_edits(resolved.edit, py_uri))
        assert "return a + b" in new
        ast.parse(new)


def _json(r: types.Range) -> dict:
    return {
        "start": {"line": r.start.line, "character": r.start.character},
        "end": {"line": r.end.line, "character": r.end.character},
    }


def _structure(edit) -> types.WorkspaceEdit:
    from lsprotocol.converters import get_converter

    return edit if isinstance(edit, types.WorkspaceEdit) else get_converter().structure(edit, types.WorkspaceEdit)
