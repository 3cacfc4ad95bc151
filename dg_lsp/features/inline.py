"""`textDocument/inlineCompletion`: ghost text.

Each item is one `Edit` from the pipeline: `insertText` plus a replace `range` that starts at the cursor. When the
post-processor decided the completion also rewrites the rest of the line (e.g. it closes the bracket the editor
auto-inserted), the range covers that rest, so accepting it is a single edit and never duplicates the suffix.
Automatic triggers (typing) are gated by the context module and debounced; explicit invocations always run.

The answer is always a list, empty when there is nothing to suggest (also for superseded, cancelled-by-newer or
stale requests), never `null`: clients such as Neovim 0.12's `vim.lsp.inline_completion` keep showing, and accept,
the previous answer's items when they get `null`, so an old suggestion would stay drawn where it was made.
"""

from __future__ import annotations

from lsprotocol import types

from ..server import DgServer


def register(server: DgServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: DgServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        doc = ls.document(params.text_document.uri)
        offset = ls.offset(doc, params.position)
        automatic = params.context.trigger_kind != types.InlineCompletionTriggerKind.Invoked
        edits = await ls.complete(doc, offset, automatic=automatic)
        items = [types.InlineCompletionItem(insert_text=e.text, range=ls.range(doc, e.start, e.end)) for e in edits]
        return types.InlineCompletionList(items=items)  # empty replaces what the editor shows; null would not
