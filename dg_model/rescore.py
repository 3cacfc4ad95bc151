"""Candidate middles re-ranked by how well the code after the cursor follows them.

Decoding ranks a middle by its own likelihood between prefix and suffix. A second reading asks the causal encoder how
likely the middle is *together with the suffix's next line*, given the prefix and the rest of the suffix: a middle
after which that line reads naturally (it binds the name the line uses, opens the block the line is indented into)
ranks first. The model writes the candidates with the whole suffix in view and judges them with the next line held
out, so the two readings disagree exactly where a candidate ignores the line it leads into. Where the suffix has no
next line near, the reading is of the middle and its end alone: its whole likelihood, where the beam ranked by a
length-normalised one.

The engine does this for an explicitly requested completion (`InfillJob.invoked`), whose beam is also wider: on
HumanEval single-line infilling through the editor's path the line shown passes 211 of 1,033 tasks instead of 153
with the typing path's beam of 3 (model card, Session 9). A wider beam alone gets less than half of that: what it adds
are candidates, and this reading is what picks among them.
"""

from __future__ import annotations

import re

# A next line further than this (in characters of suffix) says little about the middle; long gaps are not read.
MAX_HEAD_CHARS = 400
_TRAILING_BREAK = re.compile(r"[ \t]*\n\s*$")


def split_next_line(suffix: str, max_chars: int = MAX_HEAD_CHARS) -> tuple[str, str] | None:
    """(head, rest): the suffix through its first non-blank line after the cursor's line, and what follows it; None
    when there is no such line within `max_chars`."""
    at = suffix.find("\n")
    while 0 <= at < max_chars:
        nxt = suffix.find("\n", at + 1)
        end = len(suffix) if nxt < 0 else nxt
        if suffix[at + 1 : end].strip():
            return (suffix[:end], suffix[end:]) if end <= max_chars else None
        at = nxt
    return None


def followed_by(middle: str, head: str) -> str:
    """The middle followed by the suffix's head, as the file would read: a line break the middle ended on (the
    last token of a finished line) is the head's own."""
    return (_TRAILING_BREAK.sub("", middle) if head.startswith("\n") else middle) + head
