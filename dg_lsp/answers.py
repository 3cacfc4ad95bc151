"""Completion answers: what an inline-completion or completion request gets, and when that costs a model call.

`DgServer.complete` hands every completion request to `Answers.complete`, which tries, in this order:

1. the answer cache: the same document content, cursor, trigger and settings get the edits of before. Keyed by
   content, not version: a backspace and the same character typed again is the document of before. The 32 most
   recently used answers are kept, until their document closes or the settings or the model change;
2. typing along (`typeahead.py`): while the user types the start of the last suggestion, its untyped rest is the
   answer (automatic requests only, `typeAhead`);
3. debounce: an automatic request waits `debounceMs` and answers empty when a request for another place in the same
   document arrived meanwhile;
4. the model, through `DgServer.run`. Editors often send both requests for one keystroke; `SharedJobs` lets them
   await one job instead of superseding each other or running the model twice. A shared job is cancelled only
   when every request awaiting it is.

An explicit request skips 2 and 3: it always asks the model (unless 1 has its answer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pygls.workspace import TextDocument

from dg_model.api import Cancelled, Engine

from . import pipeline, typeahead
from .jobs import Job
from .postprocess import Edit
from .settings import Settings

if TYPE_CHECKING:
    import threading

    from .server import DgServer

log = logging.getLogger(__name__)

MAX_CACHED = 32  # answers kept, least recently used out first
# One DEBUG line per completion job that asked the engine: this mark, then JSON (`kind`, `doc_key`, `t`, `outcome`:
# done | cancelled | error: <type>, `wall_ms`; when done also the `JobStats` fields and `candidates`). Benchmarks read
# them from the server log (`dg_bench.session.read_log`).
STATS_MARK = "engine stats "


class Answers:
    """The completion answers of one server: cache, typing along, debounce (see the module docstring)."""

    def __init__(self, server: DgServer) -> None:
        self.server = server
        # (uri, content length, content hash, offset, automatic, settings key) -> edits, least recently used first
        self._cache: dict[tuple, list[Edit]] = {}
        self._typed: dict[str, typeahead.Answer] = {}  # uri -> the last non-empty answer, for typing along
        self._pending: dict[str, tuple] = {}  # uri -> the key of its latest automatic request, for debouncing
        self._settings_key: tuple[Settings | None, int] = (None, 0)

    def __len__(self) -> int:
        """Answers in the cache."""
        return len(self._cache)

    async def complete(self, doc: TextDocument, offset: int, *, automatic: bool) -> list[Edit]:
        """Completions at `offset` in `doc`, best first; [] when there are none (or the request was dropped)."""
        settings = self.server.settings
        if not settings.enabled_for(doc.language_id or ""):
            return []  # before the job: it would wait for a loading model just to answer nothing
        uri = unquote(doc.uri)
        key = (uri, len(doc.source), hash(doc.source), offset, automatic, self.settings_key())
        if (hit := self._cache.pop(key, None)) is not None:
            self._cache[key] = hit  # most recently used
            return hit
        if automatic and settings.type_ahead and (answer := self._typed.get(uri)) is not None:
            if (ahead := typeahead.forward(answer, doc.source, offset)) is not None:
                log.debug("typed ahead: %d characters, %d edits", offset - answer.offset, len(ahead))
                return ahead
        if automatic and not await self.debounce(key):
            return []
        fn = functools.partial(
            _complete_job,
            text=doc.source,
            offset=offset,
            language_id=doc.language_id or "",
            settings=settings,
            other_docs=self.server.other_docs(doc),
            doc_key=doc.uri,
            automatic=automatic,
        )
        # A job is only shared within a version: a job for an older version with the same content ends as stale.
        edits = await self.server.run(doc.uri, doc, fn, share_key=(*key, doc.version))
        if edits is None:
            return []
        # LSP wants the replace range to contain the cursor (inline and completion alike).
        edits = [e for e in edits if e.start <= offset <= e.end]
        self._cache[key] = edits
        if edits:
            self._typed[uri] = typeahead.Answer(doc.source, offset, tuple(edits))
        while len(self._cache) > MAX_CACHED:
            self._cache.pop(next(iter(self._cache)))
        return edits

    async def debounce(self, key: tuple) -> bool:
        """Wait `debounceMs`; False when a request for another place in the same document arrived meanwhile."""
        uri = key[0]
        self._pending[uri] = key
        if self.server.settings.debounce_ms > 0:
            await asyncio.sleep(self.server.settings.debounce_ms / 1000)
        return self._pending.get(uri) == key

    def settings_key(self) -> int:
        """Part of every answer-cache and shared-job key: answers made under other settings (candidates, budgets,
        decoding, ...) are never reused, not even by a request that joins a job started before a settings change."""
        settings = self.server.settings
        if self._settings_key[0] is not settings:  # each change is a new Settings object
            self._settings_key = (settings, hash(repr(settings)))
        return self._settings_key[1]

    def forget(self, uri: str) -> None:
        """The document closed: drop its answers."""
        key = unquote(uri)
        self._cache = {k: v for k, v in self._cache.items() if k[0] != key}
        self._typed.pop(key, None)

    def clear(self) -> None:
        """Settings or model changed: no answer of before stands."""
        self._cache.clear()
        self._typed.clear()


def _complete_job(engine: Engine, cancel: threading.Event, **kwargs: Any) -> list[Edit]:
    """The job `Answers.complete` runs on the worker: the pipeline's edits, and one `STATS_MARK` line when the engine
    was asked (answered, cancelled or failed). Shared requests share this job, so each job logs once."""
    record: dict[str, Any] = {"kind": "infill", "doc_key": kwargs["doc_key"], "t": time.time()}
    started = time.perf_counter()
    try:
        out = pipeline.complete(engine, cancel=cancel, **kwargs)
    except Cancelled:  # inside the pipeline only the engine raises it
        record["outcome"] = "cancelled"
        raise
    except Exception as exc:
        record["outcome"] = f"error: {type(exc).__name__}"
        raise
    else:
        if out.result is not None:
            record.update(outcome="done", **dataclasses.asdict(out.result.stats), candidates=len(out.result.candidates))
        return out.edits
    finally:
        if "outcome" in record and log.isEnabledFor(logging.DEBUG):
            record["wall_ms"] = (time.perf_counter() - started) * 1000  # the pipeline call: context, engine, edits
            log.debug("%s%s", STATS_MARK, json.dumps(record))


# ------------------------------------------------------------------------------------------------ shared jobs


@dataclass(eq=False)
class _Shared:
    job: Job
    result: asyncio.Future
    waiters: int = 0


class SharedJobs:
    """Requests that would run the same job await one: the first submits it, later ones with the same key join."""

    def __init__(self) -> None:
        self._inflight: dict[tuple, _Shared] = {}

    async def wait(self, submit: Callable[[], Job], share_key: tuple | None = None) -> Any:
        """The result of the running job for `share_key` (None: never shared), or of the one `submit()` starts.

        Raises what the job raised. A cancelled request (`$/cancelRequest`, shutdown) raises CancelledError at once;
        the job stops at its next denoise step only when no other request awaits it.
        """
        shared = self._inflight.get(share_key) if share_key is not None else None
        if shared is None or shared.job.cancel.is_set():
            job = submit()
            shared = _Shared(job, asyncio.wrap_future(job.future))
            shared.result.add_done_callback(functools.partial(self._done, share_key, shared))
            if share_key is not None:
                self._inflight[share_key] = shared
        shared.waiters += 1
        try:
            return await asyncio.shield(shared.result)
        except asyncio.CancelledError:
            shared.waiters -= 1
            if shared.waiters == 0:
                shared.job.cancel.set()
                shared.job.future.cancel()
            raise

    def _done(self, share_key: tuple | None, shared: _Shared, result: asyncio.Future) -> None:
        if share_key is not None and self._inflight.get(share_key) is shared:
            del self._inflight[share_key]
        if not result.cancelled():
            result.exception()  # mark it retrieved: every waiter may have been cancelled (no asyncio warning)
