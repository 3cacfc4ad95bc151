"""A tiny, deterministic stand-in for `dg-lsp --stdio`, for testing editor wiring without a model.

It speaks the same surface as the real server:

* `initialize` with `initializationOptions` (the `dg` settings object; `{"dg": {...}}` is accepted too),
* `$/progress` work-done progress and the `dg/status` notification (`loading` -> `ready`) after `initialized`,
* `textDocument/inlineCompletion` and `textDocument/completion`,
* `textDocument/codeAction` ("Rewrite this block", kind `refactor.rewrite`, no edit) + `codeAction/resolve`,
* `workspace/executeCommand` `dg.rewriteBlock` and `dg.fixBlock` with `[uri, range[, version[, options]]]`: both
  return the WorkspaceEdit and also send it with `workspace/applyEdit`, unless `options` is `{"apply": false}` (a
  client previewing the edit),
* `workspace/didChangeConfiguration` with `{"settings": {"dg": {...}}}`.

Suggestions (always valid Python when the document is; completion items add a trailing `  # dg` comment):

* cursor at the end of a line ending in `:` -> a new indented line `pass`,
* cursor on a blank (or whitespace-only) line -> `pass`,
* anything else -> no suggestion.

Rewrite: the selected lines (whole lines) get a `# rewritten by dg` comment line above them, at their indentation
(`dg.fixBlock`: `# fixed by dg`).
Settings honoured: `enable` (per language id, false -> nothing), `candidates` (that many items, numbered in a
trailing comment from the second on).

Flags: `--fail-load` sends `dg/status` `error` instead of `ready`; `--crash` exits with status 3 right after
`initialized`; `--delay-ms N` waits N ms before answering a completion; `--null-when-empty` answers an inline
completion with nothing to suggest with `null` (as dg-lsp once did) instead of an empty list; `--stale` answers
each inline completion with the last suggestion it made before (text and range: made for an older text and position,
the bug a client's stale-suggestion check must catch), nothing the first time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

NAME = "dg-lsp-stub"
REWRITE_MARK = "# rewritten by dg"
FIX_MARK = "# fixed by dg"

server = LanguageServer(NAME, "0.0.1", text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
settings: dict[str, Any] = {}
args = argparse.Namespace(fail_load=False, crash=False, delay_ms=0, null_when_empty=False, stale=False)
last_made: list[types.InlineCompletionItem] = []  # --stale: the items made for the previous suggestion


def _merge_settings(raw: Any) -> None:
    if not isinstance(raw, dict):
        return
    if isinstance(raw.get("dg"), dict):
        raw = raw["dg"]
    settings.update(raw)


def _enabled(language_id: str | None) -> bool:
    enable = settings.get("enable") or {}
    return bool(enable.get(language_id or "", True))


def _suggest(uri: str, pos: types.Position) -> str | None:
    doc = server.workspace.get_text_document(uri)
    if not _enabled(doc.language_id):
        return None
    lines = doc.lines
    line = lines[pos.line].rstrip("\r\n") if pos.line < len(lines) else ""
    before, after = line[: pos.character], line[pos.character :]
    if after.strip():
        return None
    if before.rstrip().endswith(":"):
        indent = before[: len(before) - len(before.lstrip())]
        return "\n" + indent + "    pass"
    if not before.strip():
        return "pass"
    return None


@server.feature(types.INITIALIZE)
def on_initialize(ls: LanguageServer, params: types.InitializeParams) -> None:
    _merge_settings(params.initialization_options)


@server.feature(types.INITIALIZED)
async def on_initialized(ls: LanguageServer, params: types.InitializedParams) -> None:
    if args.crash:
        logging.error("stub: crashing on purpose (--crash)")
        sys.stderr.flush()
        os._exit(3)
    model = settings.get("model") or "stub"
    device = settings.get("device") or "cpu"
    ls.protocol.notify("dg/status", {"state": "loading", "model": model, "device": device, "message": "loading"})
    token = "dg-load"
    progress_ok = bool(
        ls.client_capabilities.window and ls.client_capabilities.window.work_done_progress
    )
    if progress_ok:
        try:
            await ls.work_done_progress.create_async(token)
            ls.work_done_progress.begin(
                token, types.WorkDoneProgressBegin(title="dg: loading model", percentage=0, cancellable=False)
            )
            ls.work_done_progress.report(token, types.WorkDoneProgressReport(message="weights", percentage=50))
            ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message="ready"))
        except Exception:  # a client may refuse the token; progress is optional
            logging.exception("stub: progress failed")
    if args.fail_load:
        ls.protocol.notify(
            "dg/status",
            {"state": "error", "model": model, "device": device, "message": "stub: model failed to load"},
        )
        ls.window_log_message(types.LogMessageParams(types.MessageType.Error, "stub: model failed to load"))
        return
    ls.protocol.notify("dg/status", {"state": "ready", "model": model, "device": device, "message": "ready"})
    ls.window_log_message(types.LogMessageParams(types.MessageType.Info, f"stub: ready ({model} on {device})"))


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def on_config(ls: LanguageServer, params: types.DidChangeConfigurationParams) -> None:
    _merge_settings(params.settings)
    ls.window_log_message(types.LogMessageParams(types.MessageType.Log, f"stub: settings {settings}"))


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def on_inline(ls: LanguageServer, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
    if args.delay_ms:
        await asyncio.sleep(args.delay_ms / 1000)
    text = _suggest(params.text_document.uri, params.position)
    if args.stale:
        old = list(last_made)
        if text is not None:
            rng = types.Range(start=params.position, end=params.position)
            last_made[:] = [types.InlineCompletionItem(insert_text=text, range=rng)]
        return types.InlineCompletionList(items=old)
    if text is None:
        return None if args.null_when_empty else types.InlineCompletionList(items=[])
    n = max(1, int(settings.get("candidates") or 1))
    items = []
    for i in range(n):
        insert = text if i == 0 else f"{text}  # {i + 1}"
        items.append(
            types.InlineCompletionItem(
                insert_text=insert, range=types.Range(start=params.position, end=params.position)
            )
        )
    return types.InlineCompletionList(items=items)


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[":"]))
def on_completion(ls: LanguageServer, params: types.CompletionParams) -> types.CompletionList:
    text = _suggest(params.text_document.uri, params.position)
    if text is None:
        return types.CompletionList(is_incomplete=True, items=[])
    rng = types.Range(start=params.position, end=params.position)
    text = text + "  # dg"  # several words: clients must insert the whole textEdit, not its first word
    item = types.CompletionItem(
        label=text.strip().splitlines()[0] if text.strip() else text,
        kind=types.CompletionItemKind.Snippet,
        detail="dg (stub)",
        filter_text="",
        text_edit=types.TextEdit(range=rng, new_text=text),
        insert_text_format=types.InsertTextFormat.PlainText,
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def _rewrite_edit(uri: str, rng: types.Range, mark: str = REWRITE_MARK) -> types.WorkspaceEdit:
    doc = server.workspace.get_text_document(uri)
    lines = doc.lines
    start = rng.start.line
    end = rng.end.line
    if end > start and rng.end.character == 0:
        end -= 1  # a selection ending at column 0 does not include that line
    end = min(end, len(lines) - 1)
    first = lines[start] if start < len(lines) else ""
    indent = first[: len(first) - len(first.lstrip())]
    block = "".join(lines[start : end + 1])
    new = indent + mark + "\n" + block
    whole = types.Range(start=types.Position(start, 0), end=types.Position(end + 1, 0))
    if end + 1 >= len(lines) and not block.endswith("\n"):
        whole = types.Range(start=types.Position(start, 0), end=types.Position(end, len(lines[end])))
    return types.WorkspaceEdit(changes={uri: [types.TextEdit(range=whole, new_text=new)]})


@server.feature(
    types.TEXT_DOCUMENT_CODE_ACTION,
    types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.RefactorRewrite], resolve_provider=True),
)
def on_code_action(ls: LanguageServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    rng = params.range
    if rng.start == rng.end:
        return []
    doc = ls.workspace.get_text_document(params.text_document.uri)
    if not _enabled(doc.language_id):
        return []
    if params.context.only and not any(
        types.CodeActionKind.RefactorRewrite.value.startswith(k) for k in params.context.only
    ):
        return []
    return [
        types.CodeAction(
            title="Rewrite this block",
            kind=types.CodeActionKind.RefactorRewrite,
            data={
                "uri": params.text_document.uri,
                "range": {
                    "start": {"line": rng.start.line, "character": rng.start.character},
                    "end": {"line": rng.end.line, "character": rng.end.character},
                },
            },
        )
    ]


def _range_from(obj: Any) -> types.Range:
    s, e = obj["start"], obj["end"]
    return types.Range(types.Position(s["line"], s["character"]), types.Position(e["line"], e["character"]))


@server.feature(types.CODE_ACTION_RESOLVE)
def on_resolve(ls: LanguageServer, action: types.CodeAction) -> types.CodeAction:
    data = action.data or {}
    action.edit = _rewrite_edit(data["uri"], _range_from(data["range"]))
    return action


async def _block_command(ls: LanguageServer, args: tuple, mark: str, label: str) -> Any:
    if not 2 <= len(args) <= 4:
        raise ValueError(f"expected (uri, range[, version[, options]]), got {len(args)} arguments")
    uri, rng = args[0], args[1]
    options = args[3] if len(args) > 3 and isinstance(args[3], dict) else {}
    edit = _rewrite_edit(uri, _range_from(rng), mark)
    if options.get("apply", True):
        await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=label))
    return edit


@server.command("dg.rewriteBlock")
async def rewrite_block(ls: LanguageServer, *args: Any) -> Any:
    return await _block_command(ls, args, REWRITE_MARK, "Rewrite block")


@server.command("dg.fixBlock")
async def fix_block(ls: LanguageServer, *args: Any) -> Any:
    return await _block_command(ls, args, FIX_MARK, "Fix block")


def main() -> None:
    global args
    p = argparse.ArgumentParser(prog="stub_server")
    p.add_argument("--stdio", action="store_true")
    p.add_argument("--fail-load", action="store_true")
    p.add_argument("--crash", action="store_true")
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--null-when-empty", action="store_true")
    p.add_argument("--stale", action="store_true")
    p.add_argument("--model", default=None)
    args, _ = p.parse_known_args()
    if args.model:
        settings["model"] = args.model
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    server.start_io()


if __name__ == "__main__":
    main()
