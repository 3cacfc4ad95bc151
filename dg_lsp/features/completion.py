"""`textDocument/completion`: the same completions as ghost text, as multi-line items in the completion menu.

Each item carries a `textEdit` (its range is on the cursor line, as the spec requires, and replaces the rest of the
line when the edit does), label = the first line of the completion, detail and documentation = the whole block.
The list is marked incomplete: the answer depends on every keystroke, so the client must ask again.
"""

from __future__ import annotations

from lsprotocol import types
from pygls.workspace import TextDocument

from .. import languages
from ..postprocess import Edit
from ..server import DgServer


def register(server: DgServer) -> None:
    options = types.CompletionOptions(trigger_characters=list(languages.all_trigger_characters()))

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, options)
    async def completion(ls: DgServer, params: types.CompletionParams) -> types.CompletionList | None:
        doc = ls.document(params.text_document.uri)
        offset = ls.offset(doc, params.position)
        context = params.context
        automatic = context is not None and context.trigger_kind != types.CompletionTriggerKind.Invoked
        # One trigger list is advertised for all languages; drop characters that do not trigger in this one.
        if (
            context is not None
            and context.trigger_kind == types.CompletionTriggerKind.TriggerCharacter
            and context.trigger_character not in languages.trigger_characters(doc.language_id)
        ):
            return None
        edits = await ls.complete(doc, offset, automatic=automatic)
        items = [_item(ls, doc, e, rank) for rank, e in enumerate(edits)]
        return types.CompletionList(is_incomplete=True, items=items) if items else None


def _item(ls: DgServer, doc: TextDocument, edit: Edit, rank: int) -> types.CompletionItem:
    first = next((line.strip() for line in edit.text.splitlines() if line.strip()), edit.text)
    return types.CompletionItem(
        label=first,
        kind=types.CompletionItemKind.Snippet if "\n" in edit.text else types.CompletionItemKind.Text,
        detail=edit.text,
        documentation=types.MarkupContent(
            kind=types.MarkupKind.Markdown, value=f"```{doc.language_id or ''}\n{edit.text}\n```"
        ),
        sort_text=f"{rank:04d}",
        insert_text_format=types.InsertTextFormat.PlainText,
        # The range starts at the cursor, so clients filter on an empty word; sort_text keeps the model's order.
        text_edit=types.TextEdit(range=ls.range(doc, edit.start, edit.end), new_text=edit.text),
    )
