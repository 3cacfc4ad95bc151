"""Typed-ahead reuse: while the user types the beginning of a suggestion, the rest of it is still the answer.

Ghost text is read while it is being typed. Without reuse every keystroke that agrees with the suggestion asks the
model again, the ghost text can flicker or change under the user's fingers, and a weak model may answer worse the
second time. Copilot, Tabby ("forwarding" cache entries) and llama.vim all keep the suggestion instead; so do we.

An `Answer` remembers the document, the cursor and the edits one request returned. A later request is served from it
when the document differs from the answer's only by text inserted at the answer's cursor, the new cursor sits right
after that text, and an edit begins with it: the rest of that edit is the new answer, no model call. Anything else
(a deletion, an edit elsewhere, an auto-inserted closing bracket, text that leaves the suggestion) is a miss, and the
request goes to the model as before. Pure functions: the server keeps one `Answer` per document.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .postprocess import Edit

# Past this many typed characters the suggestion was made for a different place: ask the model again.
MAX_TYPED_AHEAD = 200


@dataclass(frozen=True)
class Answer:
    text: str  # the document the edits were computed on
    offset: int  # the cursor of that request
    edits: tuple[Edit, ...]  # best first; offsets into `text`


def typed_since(answer: Answer, text: str, offset: int) -> str | None:
    """The text typed at `answer`'s cursor to turn its document into `text` with the cursor at `offset`, or None
    when `text` is not that document plus an insertion at its cursor ending at `offset`."""
    n = offset - answer.offset
    if n <= 0 or n > MAX_TYPED_AHEAD or len(text) - len(answer.text) != n:
        return None
    # Suffix first: on a typing user the cheap mismatch is usually right after the cursor.
    if not text.endswith(answer.text[answer.offset :]) or not text.startswith(answer.text[: answer.offset]):
        return None
    return text[answer.offset : offset]


def forward(answer: Answer, text: str, offset: int) -> list[Edit] | None:
    """The edits of `answer` that the user has been typing along with, moved to `offset` in `text` and cut to what is
    still untyped; None when nothing carries over (the caller then asks the model)."""
    typed = typed_since(answer, text, offset)
    if typed is None:
        return None
    out: list[Edit] = []
    for edit in answer.edits:
        if not edit.start <= answer.offset <= edit.end:
            continue
        # What the edit's text must start with: the replaced text before the old cursor, then what was typed.
        done = answer.text[edit.start : answer.offset] + typed
        if len(edit.text) > len(done) and edit.text.startswith(done):
            moved = replace(edit, start=offset, end=edit.end + len(typed), text=edit.text[len(done) :])
            if moved not in out:
                out.append(moved)
    return out or None
