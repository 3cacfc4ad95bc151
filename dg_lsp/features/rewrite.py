"""Code action "Rewrite this block" (kind `refactor.rewrite`) and the `dg.rewriteBlock` command.

Listing code actions happens on every cursor move, so it is cheap: no parse and no model, just an action that
remembers the document, its version and the range. The model runs in `codeAction/resolve`, which returns the action
with a `WorkspaceEdit`. Clients without resolve support get the same action with a `dg.rewriteBlock` command
instead; the command computes the edit and sends it with `workspace/applyEdit` (it also returns it, for scripts).
An empty selection means the enclosing syntax block, picked by the pipeline when the model runs.
"""

from __future__ import annotations

import functools
from typing import Any

from lsprotocol import types
from lsprotocol.converters import get_converter
from pygls.capabilities import get_capability
from pygls.exceptions import JsonRpcContentModified, JsonRpcInvalidParams

from .. import pipeline
from ..server import DgServer

TITLE = "Rewrite this block"
COMMAND = "dg.rewriteBlock"
KIND = types.CodeActionKind.RefactorRewrite
_converter = get_converter()


def register(server: DgServer) -> None:
    options = types.CodeActionOptions(code_action_kinds=[KIND], resolve_provider=True)

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, options)
    def code_action(ls: DgServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
        doc = ls.document(params.text_document.uri)
        ls.offsets(doc, params.range)  # a bad range is an InvalidParams error now, not at resolve time
        only = params.context.only
        if only is not None and not any(KIND == k or KIND.startswith(f"{k}.") for k in only):
            return None
        if not ls.settings.enabled_for(doc.language_id or ""):
            return None
        target = {"uri": doc.uri, "range": _converter.unstructure(params.range), "version": doc.version}
        action = types.CodeAction(title=TITLE, kind=KIND)
        resolvable = get_capability(ls.client_capabilities, "text_document.code_action.resolve_support", None)
        if resolvable is not None and "edit" in resolvable.properties:
            action.data = target
        else:
            action.command = types.Command(
                title=TITLE, command=COMMAND, arguments=[target["uri"], target["range"], target["version"]]
            )
        return [action]

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def code_action_resolve(ls: DgServer, action: types.CodeAction) -> types.CodeAction:
        if not isinstance(action.data, dict):
            raise JsonRpcInvalidParams("code action has no dg-lsp data; request code actions again")
        data = action.data
        edit = await rewrite(ls, data.get("uri"), data.get("range"), data.get("version"))
        if edit is None:
            _say_no_rewrite(ls)
        action.edit = edit
        return action

    @server.command(COMMAND)
    async def rewrite_block(ls: DgServer, *args: Any) -> types.WorkspaceEdit | None:
        if not 2 <= len(args) <= 3:
            raise JsonRpcInvalidParams(f"{COMMAND} takes (uri, range[, version]), got {len(args)} arguments")
        edit = await rewrite(ls, *args)
        if edit is None:
            _say_no_rewrite(ls)
            return None
        if get_capability(ls.client_capabilities, "workspace.apply_edit", False):
            result = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=TITLE))
            if not result.applied:
                ls.log_message(f"dg-lsp: the editor did not apply the rewrite: {result.failure_reason}")
        return edit


def _say_no_rewrite(ls: DgServer) -> None:
    # The user asked explicitly, so an empty answer gets one line of why (a completion never does).
    state = ls.status["state"]
    why = "the model is still loading" if state == "loading" else f"the model failed to load: {ls.status['message']}"
    reason = why if state != "ready" else "no rewrite of this block kept the code valid"
    ls.show_message(f"dg-lsp: {reason}", types.MessageType.Info)


async def rewrite(ls: DgServer, uri: Any, raw_range: Any, version: Any = None) -> types.WorkspaceEdit | None:
    if not isinstance(uri, str):
        raise JsonRpcInvalidParams("expected a document URI")
    try:
        rng = _converter.structure(raw_range, types.Range)
    except Exception as exc:  # noqa: BLE001 - cattrs raises several types for a malformed range
        raise JsonRpcInvalidParams(f"expected an LSP range, got {raw_range!r}") from exc
    doc = ls.document(uri)
    if version is not None and version != doc.version:
        raise JsonRpcContentModified(f"{uri} changed since the action was listed; request it again")
    start, end = ls.offsets(doc, rng)
    text = doc.source
    fn = functools.partial(
        pipeline.rewrite_range,
        text=text,
        start=start,
        end=end,
        language_id=doc.language_id or "",
        settings=ls.settings,
        other_docs=ls.other_docs(doc),
        doc_key=doc.uri,
    )
    edit = await ls.run(f"{doc.uri}#rewrite", doc, lambda engine, cancel: fn(engine, cancel=cancel))
    if edit is None:
        return None
    text_edit = types.TextEdit(range=ls.range(doc, edit.start, edit.end), new_text=edit.text)
    if get_capability(ls.client_capabilities, "workspace.workspace_edit.document_changes", False):
        versioned = types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version)
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(text_document=versioned, edits=[text_edit])])
    return types.WorkspaceEdit(changes={doc.uri: [text_edit]})
