"""Shared fixtures for the end-to-end server tests: a real `dg-lsp --stdio` subprocess driven by pytest-lsp.

With a fake engine spec the server is `tests/fake_server.py` (the real dg-lsp, with `--model <json spec>` loaded as
the fake engine of `tests/fake_engine.py`); without one it is `python -m dg_lsp.cli` on the real embedded model.
Client-side helpers apply edits the way an editor would, with an implementation independent of `dg_lsp.convert`, so
a bug there cannot hide itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Union

import pytest
import pytest_lsp
from fake_engine import read_events
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
STATUS = "dg/status"


FAKE_SERVER = TESTS / "fake_server.py"


def server_command(fake: dict[str, Any] | None, *extra: str) -> list[str]:
    if fake is None:
        return [sys.executable, "-m", "dg_lsp.cli", "--stdio", "--log-level", "warning", *extra]
    return [sys.executable, str(FAKE_SERVER), "--stdio", "--log-level", "warning", *extra, "--model", json.dumps(fake)]


def server_env() -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def vscode_capabilities(**overrides: Any) -> types.ClientCapabilities:
    """VS Code's capabilities plus inline completion (1.65 predates it in LSP)."""
    caps = client_capabilities("visual-studio-code")
    caps.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    for name, value in overrides.items():
        setattr(caps, name, value)
    return caps


def open_document(client: LanguageClient, uri: str, text: str, language_id: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)
        )
    )


def inline_params(uri: str, line: int, character: int, invoked: bool = True) -> types.InlineCompletionParams:
    trigger = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=trigger),
    )


class Session:
    """A started and initialized client plus what the server told it."""

    def __init__(self, client: LanguageClient, init: types.InitializeResult) -> None:
        self.client = client
        self.init = init
        self.statuses: list[dict[str, Any]] = []
        self.applied_edits: list[types.ApplyWorkspaceEditParams] = []
        self.versions: dict[str, int] = {}
        self.texts: dict[str, str] = {}

    async def wait_status(self, state: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.statuses:
                if status["state"] == state:
                    return status
                if status["state"] == "error" and state == "ready":
                    raise AssertionError(f"the model did not load: {status['message']}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"no dg/status {state!r} within {timeout}s; got {self.statuses}")

    def open(self, uri: str, text: str, language_id: str = "python") -> None:
        self.versions[uri], self.texts[uri] = 1, text
        open_document(self.client, uri, text, language_id)

    def change(self, uri: str, edits: list[types.TextEdit]) -> None:
        """Send `edits` as incremental changes and mirror them in `self.texts`."""
        for edit in edits:
            self.versions[uri] += 1
            self.texts[uri] = apply_edits(self.texts[uri], [edit])
            self.client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
                    content_changes=[types.TextDocumentContentChangePartial(range=edit.range, text=edit.new_text)],
                )
            )

    def inline(self, uri: str, line: int, character: int, invoked: bool = True, msg_id: str | None = None):
        params = inline_params(uri, line, character, invoked)
        return self.client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)

    async def inline_running(self, record: Path, uri: str, line: int, character: int, msg_id: str | None = None):
        """An invoked inline completion whose job the fake engine has begun (its first event in `record`): the
        pending answer."""
        pending = asyncio.ensure_future(self.inline(uri, line, character, msg_id=msg_id))
        while not read_events(record):
            await asyncio.sleep(0.01)
        return pending


@contextlib.asynccontextmanager
async def session(
    fake: dict[str, Any] | None = None,
    *,
    init_options: Any = None,
    capabilities: types.ClientCapabilities | None = None,
    wait_ready: bool = True,
    extra_args: tuple[str, ...] = (),
) -> AsyncIterator[Session]:
    config = ClientServerConfig(server_command=server_command(fake, *extra_args), server_env=server_env())
    client = await config.start()
    _fix_code_action_union(client)
    holder: dict[str, Session] = {}
    early: list[dict[str, Any]] = []

    @client.feature(STATUS)
    def on_status(params: Any) -> None:
        status = params._asdict() if hasattr(params, "_asdict") else dict(params)
        (holder["s"].statuses if "s" in holder else early).append(status)

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def on_apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        holder["s"].applied_edits.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    try:
        init = await client.initialize_session(
            types.InitializeParams(
                capabilities=capabilities or vscode_capabilities(),
                root_uri=REPO.as_uri(),
                initialization_options=init_options,
            )
        )
        s = holder["s"] = Session(client, init)
        s.statuses.extend(early)
        if wait_ready:
            await s.wait_status("ready")
        yield s
        await asyncio.wait_for(client.shutdown_session(), 10)
    finally:
        # After a failure the server was never told to exit, and `stop()` would wait for it forever.
        if client._server is not None and client._server.returncode is None:
            client._server.kill()
        await client.stop()


def _fix_code_action_union(client: LanguageClient) -> None:
    """lsprotocol (2025.0.0) structures every code action that carries a `command` as a `Command`, with the
    nested command stringified. Editors tell them apart by the type of `command`; make the test client do the same."""
    conv = client.protocol._converter

    def hook(obj: Any, _type: Any) -> types.Command | types.CodeAction:
        if isinstance(obj.get("command"), str):
            return conv.structure(obj, types.Command)
        return conv.structure(obj, types.CodeAction)

    # typing.Union, not `|`: the key the lsprotocol converter looks the hook up by
    conv.register_structure_hook(Union[types.Command, types.CodeAction], hook)  # noqa: UP007


def fake_spec(**overrides: Any) -> dict[str, Any]:
    return {"text": "a + b", "steps": 4, "step_ms": 0, **overrides}


@pytest_lsp.fixture(config=ClientServerConfig(server_command=server_command(fake_spec()), server_env=server_env()))
async def client(lsp_client: LanguageClient):
    """The plain pytest-lsp fixture: a VS Code-like client on a server with the default fake engine."""
    await lsp_client.initialize_session(
        types.InitializeParams(capabilities=vscode_capabilities(), root_uri=REPO.as_uri())
    )
    yield
    await lsp_client.shutdown_session()


# -- client-side edit application (independent of dg_lsp.convert) --


def _lines(text: str) -> list[str]:
    out, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\r" and text[i + 1 : i + 2] == "\n":
            out.append(text[start : i + 2])
            i += 2
            start = i
        elif text[i] in "\r\n":
            out.append(text[start : i + 1])
            i += 1
            start = i
        else:
            i += 1
    out.append(text[start:])
    return out


def offset_of(text: str, pos: types.Position) -> int:
    """utf-16 position -> offset, as VS Code computes it."""
    lines = _lines(text)
    before = sum(len(line) for line in lines[: pos.line])
    line = lines[pos.line].rstrip("\r\n")
    units = 0
    for i, ch in enumerate(line):
        if units >= pos.character:
            return before + i
        units += 2 if ord(ch) > 0xFFFF else 1
    return before + len(line)


def apply_edits(text: str, edits: list[types.TextEdit]) -> str:
    spans = sorted(
        ((offset_of(text, e.range.start), offset_of(text, e.range.end), e.new_text) for e in edits), reverse=True
    )
    for start, end, new in spans:
        text = text[:start] + new + text[end:]
    return text


def workspace_text_edits(edit: types.WorkspaceEdit, uri: str) -> list[types.TextEdit]:
    if edit.document_changes:
        return [e for dc in edit.document_changes if dc.text_document.uri == uri for e in dc.edits]
    return list((edit.changes or {}).get(uri, []))


@pytest.fixture
def py_uri(tmp_path: Path) -> str:
    return (tmp_path / "example.py").as_uri()
