"""Code actions "Fix this block" (kind `quickfix`, preferred) and "Rewrite this block" (`refactor.rewrite`), and their
commands `dg.fixBlock` / `dg.rewriteBlock`.

Listing code actions happens on every cursor move, so it is cheap: no parse and no model, just actions that remember
the document, its version and the range. The model runs in `codeAction/resolve`, which returns the action with a
`WorkspaceEdit`. Clients without resolve support get the same actions with a command instead; the command computes
the edit and sends it with `workspace/applyEdit` (it also returns it). A fourth argument `{"apply": false}` returns
the edit without applying it: the editors preview it as a diff and apply it themselves once the user accepts.
An empty selection means the enclosing syntax block, picked by the pipeline when the model runs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lsprotocol import types
from lsprotocol.converters import get_converter
from pygls.capabilities import get_capability
from pygls.exceptions import JsonRpcContentModified, JsonRpcInvalidParams

from .. import rewrite_block
from ..fix import fix_range
from ..server import DgServer

_converter = get_converter()


@dataclass(frozen=True)
class _Action:
    name: str  # in the action's data
    title: str
    command: str
    kind: str


FIX = _Action("fix", "Fix this block", "dg.fixBlock", types.CodeActionKind.QuickFix)
REWRITE = _Action("rewrite", "Rewrite this block", "dg.rewriteBlock", types.CodeActionKind.RefactorRewrite)
ACTIONS = {a.name: a for a in (FIX, REWRITE)}
# Kept for callers that name the rewrite action's parts.
TITLE, COMMAND, KIND = REWRITE.title, REWRITE.command, REWRITE.kind


def _wanted(action: _Action, only: Sequence[str] | None) -> bool:
    return only is None or any(action.kind == k or action.kind.startswith(f"{k}.") for k in only)


def register(server: DgServer) -> None:
    options = types.CodeActionOptions(code_action_kinds=[FIX.kind, REWRITE.kind], resolve_provider=True)

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, options)
    def code_action(ls: DgServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
        doc = ls.document(params.text_document.uri)
        ls.offsets(doc, params.range)  # a bad range is an InvalidParams error now, not at resolve time
        if not ls.settings.enabled_for(doc.language_id or ""):
            return None
        wanted = [a for a in (FIX, REWRITE) if _wanted(a, params.context.only)]
        if not wanted:
            return None
        rng = _converter.unstructure(params.range)
        resolvable = get_capability(ls.client_capabilities, "text_document.code_action.resolve_support", None)
        out = []
        for spec in wanted:
            action = types.CodeAction(title=spec.title, kind=spec.kind, is_preferred=spec is FIX or None)
            if spec is FIX and params.context.diagnostics:
                action.diagnostics = list(params.context.diagnostics)  # a quick fix for what is under the cursor
            if resolvable is not None and "edit" in resolvable.properties:
                action.data = {"action": spec.name, "uri": doc.uri, "range": rng, "version": doc.version}
            else:
                action.command = types.Command(
                    title=spec.title, command=spec.command, arguments=[doc.uri, rng, doc.version]
                )
            out.append(action)
        return out

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def code_action_resolve(ls: DgServer, action: types.CodeAction) -> types.CodeAction:
        data = action.data
        if not isinstance(data, dict) or data.get("action", "rewrite") not in ACTIONS:
            raise JsonRpcInvalidParams("code action has no dg-lsp data; request code actions again")
        spec = ACTIONS[data.get("action", "rewrite")]
        edit, message = await block_edit(ls, spec, data.get("uri"), data.get("range"), data.get("version"))
        if edit is None:
            _say(ls, message)
        action.edit = edit
        return action

    def command(spec: _Action):
        async def run(ls: DgServer, *args: Any) -> types.WorkspaceEdit | None:
            if not 2 <= len(args) <= 4:
                raise JsonRpcInvalidParams(
                    f"{spec.command} takes (uri, range[, version[, options]]), got {len(args)} arguments"
                )
            opts = args[3] if len(args) == 4 else {}
            if not isinstance(opts, dict):
                raise JsonRpcInvalidParams(f'{spec.command}: options must be an object like {{"apply": false}}')
            edit, message = await block_edit(ls, spec, *args[:3])
            if edit is None:
                _say(ls, message)
                return None
            if opts.get("apply", True) and get_capability(ls.client_capabilities, "workspace.apply_edit", False):
                params = types.ApplyWorkspaceEditParams(edit=edit, label=spec.title)
                result = await ls.workspace_apply_edit_async(params)
                if not result.applied:
                    ls.log_message(f"dg-lsp: the editor did not apply the edit: {result.failure_reason}")
            return edit

        return run

    for spec in (FIX, REWRITE):
        server.command(spec.command)(command(spec))


def _say(ls: DgServer, reason: str) -> None:
    # The user asked explicitly, so an empty answer gets one line of why (a completion never does).
    state = ls.status["state"]
    if state != "ready":
        failed = f"the model failed to load: {ls.status['message']}"
        reason = "the model is still loading" if state == "loading" else failed
    ls.show_message(f"dg-lsp: {reason}", types.MessageType.Info)


async def block_edit(
    ls: DgServer, spec: _Action, uri: Any, raw_range: Any, version: Any = None
) -> tuple[types.WorkspaceEdit | None, str]:
    """The action's edit on the document as it is, or None and why not."""
    if not isinstance(uri, str):
        raise JsonRpcInvalidParams("expected a document URI")
    try:
        rng = _converter.structure(raw_range, types.Range)
    except Exception as exc:  # re-raised as invalid params: cattrs raises several types for a malformed range
        raise JsonRpcInvalidParams(f"expected an LSP range, got {raw_range!r}") from exc
    doc = ls.document(uri)
    if version is not None and version != doc.version:
        raise JsonRpcContentModified(f"{uri} changed since the action was listed; request it again")
    start, end = ls.offsets(doc, rng)
    text = doc.source
    if spec is FIX:

        def fn(engine, cancel):
            result = fix_range(
                engine,
                text,
                start,
                end,
                doc.language_id or "",
                ls.settings,
                ls.other_docs(doc),
                cancel,
                doc_key=doc.uri,
            )
            return result.edit, result.message
    else:
        rewrite = functools.partial(
            rewrite_block.rewrite_range,
            text=text,
            start=start,
            end=end,
            language_id=doc.language_id or "",
            settings=ls.settings,
            other_docs=ls.other_docs(doc),
            doc_key=doc.uri,
        )

        def fn(engine, cancel):
            return rewrite(engine, cancel=cancel), rewrite_block.NO_REWRITE

    answer = await ls.run(f"{doc.uri}#rewrite", doc, fn)
    edit, message = answer if answer is not None else (None, "the job was superseded")
    if edit is None:
        return None, message
    text_edit = types.TextEdit(range=ls.range(doc, edit.start, edit.end), new_text=edit.text)
    if get_capability(ls.client_capabilities, "workspace.workspace_edit.document_changes", False):
        versioned = types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version)
        change = types.TextDocumentEdit(text_document=versioned, edits=[text_edit])
        return types.WorkspaceEdit(document_changes=[change]), message
    return types.WorkspaceEdit(changes={doc.uri: [text_edit]}), message
