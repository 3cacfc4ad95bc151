"""Per-document KV caches of the last prompt: the next prompt of a document re-encodes only what changed.

While typing, a document's prompt changes at the cursor and stays the same before it (the suffix first in the
fim-spm format, then the prefix up to the line being typed), so most of a prompt is read once. Each document key keeps
its last prompt's ids and cache; the least recently used key goes once there are more than `capacity`.

`encode_beside` reads a second prompt on a spare core while the calling thread decodes on the first: an explicit
request's rescoring prompt (rescore.py) is the job's prompt without the suffix's next line, a different prompt from
its first token on, and encoding it took a fifth of such a request on this CPU.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    ids: list[int]
    cache: object  # the Forward's cache type


@dataclass(frozen=True)
class Encoded:
    cache: object
    last_hidden: torch.Tensor  # [B, 1, H]: the last prompt token's final encoder state (AR's first prediction)
    reused: int  # tokens of the document's previous prompt kept
    ms: float  # time spent encoding the rest


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCaches:
    def __init__(self, fwd, device: str, capacity: int):
        self.fwd, self.device, self.capacity = fwd, device, capacity
        self.entries: OrderedDict[str, _Entry] = OrderedDict()

    def encode(self, key: str, ids: list[int]) -> Encoded:
        """A cache holding `ids` for document `key` ("": a fresh cache, kept nowhere)."""
        entry, reuse = self._take(key, ids)
        try:
            return self._encode(entry, ids, reuse)
        finally:
            self._keep(key, entry)

    def encode_beside(self, key: str, ids: list[int]) -> Pending:
        """`encode` on another thread; `Pending.result()` waits for it. Until then `key`'s entry is the thread's alone:
        taken out of `entries` here, on the calling thread, and put back by `result` or `wait`."""
        entry, reuse = self._take(key, ids)
        return Pending(self, key, entry, ids, reuse)

    def _take(self, key: str, ids: list[int]) -> tuple[_Entry, int]:
        entry = self.entries.pop(key, None) if key else None
        reuse = _common_prefix(entry.ids, ids) if entry else 0
        reuse = min(reuse, len(ids) - 1)  # always re-encode the last token: its state starts AR decoding
        if entry is None or reuse == 0:
            return _Entry([], self.fwd.new_cache()), 0
        self.fwd.trim(entry.cache, reuse)
        return entry, reuse

    def _encode(self, entry: _Entry, ids: list[int], reuse: int) -> Encoded:
        entry.ids = []  # half-encoded until the encoder returns: an error leaves nothing to reuse
        t0 = time.perf_counter()
        hidden = self.fwd.encode(torch.tensor([ids[reuse:]], device=self.device), entry.cache, reuse)
        entry.ids = list(ids)
        return Encoded(entry.cache, hidden[:, -1:], reuse, (time.perf_counter() - t0) * 1e3)

    def _keep(self, key: str, entry: _Entry) -> None:
        if key and entry.ids:
            self.entries[key] = entry
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)


class Pending:
    """A prompt being encoded on its own thread (`PromptCaches.encode_beside`)."""

    def __init__(self, caches: PromptCaches, key: str, entry: _Entry, ids: list[int], reuse: int):
        self._caches, self._key, self._entry = caches, key, entry
        self._out: Encoded | None = None
        self._error: BaseException | None = None
        self._returned = False

        def run() -> None:
            try:
                with torch.inference_mode():  # thread-local: the caller's mode does not reach this thread
                    self._out = caches._encode(entry, ids, reuse)
            except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread, by `result`
                self._error = exc

        self._thread = threading.Thread(target=run, name="dg-prompt", daemon=True)
        self._thread.start()

    def result(self) -> Encoded:
        self.wait()
        if self._error is not None:
            raise self._error
        assert self._out is not None
        return self._out

    def wait(self) -> None:
        """Until the thread is done with the model; the entry goes back to its document once (encoded or not)."""
        self._thread.join()
        if not self._returned:
            self._returned = True
            self._caches._keep(self._key, self._entry)
