"""Per-document KV caches of the last prompt: the next prompt of a document re-encodes only what changed.

While typing, a document's prompt changes at the cursor and stays the same before it (the suffix first in the
fim-spm format, then the prefix up to the line being typed), so most of a prompt is read once. Each document key keeps
its last prompt's ids and cache; the least recently used key goes once there are more than `capacity`.

A `Lease` lets another thread encode into a document's entry: an explicit request's rescoring prompt (rescore.py),
the job's prompt without the suffix's next line, is read on a spare core while the job decodes.
"""

from __future__ import annotations

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
    """The documents' last prompts, each with the cache that holds it; `capacity` documents at most."""

    def __init__(self, fwd, device: str, capacity: int):
        self.fwd, self.device, self.capacity = fwd, device, capacity
        self.entries: OrderedDict[str, _Entry] = OrderedDict()

    def encode(self, key: str, ids: list[int]) -> Encoded:
        """A cache holding `ids` for document `key` ("": a fresh cache, kept nowhere)."""
        lease = self.lease(key, ids)
        try:
            return lease.encode()
        finally:
            lease.give_back()

    def lease(self, key: str, ids: list[int]) -> Lease:
        """`key`'s entry taken out of the caches, on the calling thread, for `ids` to be encoded into it on any one
        thread (rescore.py reads a second prompt beside the decoding): no other request sees it until it is given
        back."""
        entry = self.entries.pop(key, None) if key else None
        reuse = _common_prefix(entry.ids, ids) if entry else 0
        reuse = min(reuse, len(ids) - 1)  # always re-encode the last token: its state starts AR decoding
        if entry is None or reuse == 0:
            entry, reuse = _Entry([], self.fwd.new_cache()), 0
        else:
            self.fwd.trim(entry.cache, reuse)
        return Lease(self, key, entry, ids, reuse)

    def _keep(self, key: str, entry: _Entry) -> None:
        if key and entry.ids:
            self.entries[key] = entry
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)


class Lease:
    """A document's entry out of the caches (`PromptCaches.lease`): `encode` fills it with the prompt on whichever
    thread calls it, `give_back` returns it to the document for the next prompt to reuse."""

    def __init__(self, caches: PromptCaches, key: str, entry: _Entry, ids: list[int], reuse: int):
        self._caches, self._key, self._entry, self._ids, self._reuse = caches, key, entry, ids, reuse
        self._returned = False

    def encode(self) -> Encoded:
        entry, fwd = self._entry, self._caches.fwd
        entry.ids = []  # half-encoded until the encoder returns: an error leaves nothing to reuse
        t0 = time.perf_counter()
        ids = torch.tensor([self._ids[self._reuse :]], device=self._caches.device)
        last_hidden = fwd.encode(ids, entry.cache, self._reuse, last_only=True)
        entry.ids = list(self._ids)
        return Encoded(entry.cache, last_hidden, self._reuse, (time.perf_counter() - t0) * 1e3)

    def give_back(self) -> None:
        """The entry back to its document, once (unless its encoding failed): the next prompt reuses it."""
        if not self._returned:
            self._returned = True
            self._caches._keep(self._key, self._entry)
