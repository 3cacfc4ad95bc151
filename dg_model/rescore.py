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
import threading
from collections.abc import Callable

import torch

from dg_model.prompt_cache import Encoded, PromptCaches

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


class NextLineReader:
    """One invoked job's reading. `beside`: its prompt is encoded on a thread of its own, which a core the decoding
    leaves idle runs while the job decodes (on this CPU encoding it took ~60 of the ~130 ms the reading added after a
    ~220 ms beam; the engine starts it once the job's own prompt is read, on both cores); the candidates are read
    when `ranked` asks, as one tree, on the caller's thread (read on the second thread as the beam finished them,
    they slowed the beam by as much as they saved: both threads are dispatch-bound).

    `read(prompt, blocks)` returns the log-probability of each block after the encoded prompt. `close` must follow
    (the job's `finally`): it waits until the thread is out of the model and gives the prompt back to its document.
    """

    def __init__(
        self,
        caches: PromptCaches,
        key: str,
        ids: list[int],
        head: str,
        read: Callable[[Encoded, list[str]], list[float]],
        beside: bool,
    ):
        self.head = head
        self._caches, self._key, self._ids, self._read = caches, key, ids, read
        self._prompt: Encoded | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if beside:
            # taken here, on the caller's thread: the caches' dictionary is never changed by two threads
            self._lease = caches.lease(key, ids)
            self._thread = threading.Thread(target=self._encode, name="dg-prompt", daemon=True)
            self._thread.start()

    def ranked(self, texts: list[str]) -> tuple[list[str], list[float]]:
        """`texts` best first by how likely each is followed by the head, with those log-probabilities as scores."""
        self.close()
        if self._error is not None:
            raise self._error
        prompt = self._prompt or self._caches.encode(self._key, self._ids)
        scores = self._read(prompt, [followed_by(t, self.head) for t in texts])
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        return [texts[i] for i in order], [scores[i] for i in order]

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._lease.give_back()

    def _encode(self) -> None:
        try:
            with torch.inference_mode():  # thread-local: the caller's mode does not reach this thread
                self._prompt = self._lease.encode()
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread, by `ranked`
            self._error = exc
