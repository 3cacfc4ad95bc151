"""initialize / initialized / configuration / shutdown / exit, through a real `dg-lsp --stdio` subprocess."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import fake_spec, inline_params, open_document, session, vscode_capabilities
from fake_engine import read_events
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import LanguageClient, client_capabilities

PY = "def add(a, b):\n    return \n"


async def test_plain_pytest_lsp_fixture(client: LanguageClient, py_uri):
    """The stock pytest-lsp fixture works too: open, complete (the fake engine loads instantly)."""
    open_document(client, py_uri, PY)
    result = await client.text_document_inline_completion_async(inline_params(py_uri, 1, 11))
    assert result.items[0].insert_text == "a + b"


async def test_initialize_result():
    async with session(fake_spec(), wait_ready=False) as s:
        caps = s.init.capabilities
        assert s.init.server_info.name == "dg-lsp"
        assert caps.position_encoding == types.PositionEncodingKind.Utf16  # VS Code states none: the default
        assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
        assert caps.text_document_sync.open_close
        assert caps.inline_completion_provider is not None
        assert {".", "(", ","} <= set(caps.completion_provider.trigger_characters)
        assert list(caps.code_action_provider.code_action_kinds) == [
            types.CodeActionKind.QuickFix,
            types.CodeActionKind.RefactorRewrite,
        ]
        assert caps.code_action_provider.resolve_provider is True
        assert "dg.rewriteBlock" in caps.execute_command_provider.commands


async def test_utf8_when_the_client_prefers_it():
    async with session(fake_spec(), capabilities=client_capabilities("neovim@v0.11")) as s:
        assert s.init.capabilities.position_encoding == types.PositionEncodingKind.Utf8


async def test_model_loads_in_the_background_with_progress_and_status():
    async with session(fake_spec(load_ms=300), wait_ready=False) as s:
        ready = await s.wait_status("ready")
        assert [st["state"] for st in s.statuses] == ["loading", "ready"]
        assert ready["model"] == json.dumps(fake_spec(load_ms=300)) and ready["device"] == "cpu"  # as configured
        assert "fake on cpu, loaded in" in ready["message"]
        (reports,) = s.client.progress_reports.values()
        assert [r.kind for r in reports] == ["begin", "end"]
        assert "Loading model" in reports[0].message


async def test_requests_wait_briefly_for_a_loading_model(py_uri):
    async with session(fake_spec(load_ms=500), wait_ready=False) as s:
        s.open(py_uri, PY)
        result = await s.inline(py_uri, 1, 11)  # sent while loading; modelWaitMs (2 s) covers the load
        assert result.items[0].insert_text == "a + b"


async def test_requests_answer_empty_when_the_model_takes_too_long(py_uri):
    async with session(fake_spec(load_ms=1500), init_options={"modelWaitMs": 100}, wait_ready=False) as s:
        s.open(py_uri, PY)
        started = time.monotonic()
        assert not (await s.inline(py_uri, 1, 11)).items
        assert time.monotonic() - started < 1.5
        await s.wait_status("ready")
        assert (await s.inline(py_uri, 1, 11)).items


async def test_load_failure_is_reported_and_the_server_keeps_answering(py_uri):
    async with session(fake_spec(load_error="no weights in /nowhere"), wait_ready=False) as s:
        status = await s.wait_status("error")
        assert "no weights" in status["message"]
        await asyncio.sleep(0.1)
        assert any("no weights" in m.message and m.type == types.MessageType.Error for m in s.client.messages)
        s.open(py_uri, PY)
        started = time.monotonic()
        assert not (await s.inline(py_uri, 1, 11)).items  # empty, at once, not an error
        assert time.monotonic() - started < 1.0


def test_dg_lsp_knows_no_fake_models(monkeypatch):
    """Outside `tests/fake_server.py` every model name, a JSON object too, goes to the model loader of dg_model."""
    from dg_lsp import engines
    from dg_model import loading

    asked = []
    monkeypatch.setattr(loading, "load_engine", lambda model, **kw: asked.append((model, kw)) or "engine")
    spec = json.dumps(fake_spec())
    assert engines.LOCAL.load(spec) == "engine" and engines.LOCAL.load(None, "cpu") == "engine"
    assert asked == [(spec, {"device": "auto", "quantize": "none"}), (None, {"device": "cpu", "quantize": "none"})]


async def test_malformed_initialization_options_warn_once_and_use_defaults(py_uri):
    options = {"candidates": "many", "device": "gpu", "bogus": 1, "maxLineTokens": 16}
    async with session(fake_spec(), init_options=options) as s:
        await asyncio.sleep(0.1)
        warnings = [m for m in s.client.messages if m.type == types.MessageType.Warning]
        assert len(warnings) == 1
        for key in ("dg.candidates", "dg.device", "dg.bogus"):
            assert key in warnings[0].message
        assert "maxLineTokens" not in warnings[0].message
        s.open(py_uri, PY)
        assert (await s.inline(py_uri, 1, 11)).items  # and the server works on the defaults


async def test_settings_change_disables_and_reenables_a_language(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, PY)
        assert (await s.inline(py_uri, 1, 11)).items
        s.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"dg": {"enable": {"python": False}}})
        )
        assert not (await s.inline(py_uri, 1, 11)).items
        s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"dg": {}}))
        assert (await s.inline(py_uri, 1, 11)).items


async def test_pull_style_configuration(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, PY)
        s.client.set_configuration({"enable": {"python": False}}, section="dg")
        s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        await asyncio.sleep(0.3)  # the server asks workspace/configuration, then applies
        assert not (await s.inline(py_uri, 1, 11)).items


async def test_other_sections_are_not_ours(py_uri):
    caps = vscode_capabilities()
    caps.workspace.configuration = False  # push-only client
    async with session(fake_spec(), capabilities=caps, init_options={"enable": {"python": False}}) as s:
        s.open(py_uri, PY)
        s.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"dg": {"enable": {"python": True}}})
        )
        assert (await s.inline(py_uri, 1, 11)).items
        s.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"python": {"analysis": {"strict": True}}})
        )
        assert not (await s.inline(py_uri, 1, 11)).items  # back to the base: flags + initializationOptions
        assert not s.client.messages  # and no warning about someone else's settings


async def test_malformed_configuration_change_warns_and_keeps_working(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, PY)
        s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"dg": 5}))
        s.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"dg": {"context": {"suffixShare": 7}}})
        )
        assert (await s.inline(py_uri, 1, 11)).items
        messages = [m.message for m in s.client.messages]
        assert any("dg.context.suffixShare" in m for m in messages)
        assert any("setting(s) dg from" in m for m in messages)  # the whole section was not an object


async def test_model_change_reloads(py_uri):
    async with session(fake_spec()) as s:
        s.open(py_uri, PY)
        assert (await s.inline(py_uri, 1, 11)).items[0].insert_text == "a + b"
        new_model = json.dumps(fake_spec(text="b + a", load_ms=200))
        s.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"dg": {"model": new_model}})
        )
        deadline = time.monotonic() + 10
        while [st["state"] for st in s.statuses].count("ready") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [st["state"] for st in s.statuses] == ["loading", "ready", "loading", "ready"]
        assert (await s.inline(py_uri, 1, 11)).items[0].insert_text == "b + a"


async def test_shutdown_is_prompt_mid_generation(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    async with session(fake_spec(steps=1000, step_ms=20, record=str(record))) as s:  # a 20 s generation
        s.open(py_uri, PY)
        pending = await s.inline_running(record, py_uri, 1, 11)
        started, started_wall = time.monotonic(), time.time()
        await asyncio.wait_for(s.client.shutdown_async(None), 2)
        assert time.monotonic() - started < 1.0
        with pytest.raises((JsonRpcRequestCancelled, asyncio.CancelledError)):
            await asyncio.wait_for(pending, 2)
        # The generation itself stops at its next 20 ms step, not just the answer.
        deadline = time.monotonic() + 1.0
        while read_events(record)[-1]["event"] != "cancelled" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        events = read_events(record)
        assert events[-1]["event"] == "cancelled", events
        assert events[-1]["t"] - started_wall < 0.5
        s.client.exit(None)
        await asyncio.wait_for(s.client._server.wait(), 3)
        assert s.client._server.returncode == 0
        s.client.capabilities = None  # already shut down: skip the session's own shutdown


async def test_exit_without_shutdown_exits_nonzero():
    async with session(fake_spec(), wait_ready=False) as s:
        s.client.exit(None)
        await asyncio.wait_for(s.client._server.wait(), 3)
        assert s.client._server.returncode == 1
        s.client.capabilities = None
