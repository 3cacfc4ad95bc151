"""A deterministic stand-in for the diffusion engine, for tests only.

It answers every infill with fixed texts and every rewrite with a fixed (or the unchanged) block, after `steps`
"decoder steps" of `step_ms` each, checking `job.cancel` before every step like the real sampler. With `record` set
it appends one JSON line per event, so a test in another process can see whether (and at which step) a job stopped.
`from_spec` builds one from a JSON object; the options that stand in for a model's behaviours:

* `line_start`: suggest only at the start of a line (nothing but indentation before the cursor on its line, nothing
  after it); elsewhere no candidate, as a model with nothing to say there,
* `load_ms` / `load_error` / `exit`: a slow load, a load that fails with `EngineError(load_error)`, and a process
  that dies while loading (`os._exit(exit)`, a crashing server),
* `oom` / `boom`: every infill raises the engine's out-of-memory error (whose `free_memory` is recorded as a "freed"
  event) / any other error (an engine bug); `keep_calls`: keep only the last N jobs in `calls`.

Tests use it in-process, and as the server's engine through `tests/fake_server.py` (the real dg-lsp, with models that
are JSON objects loaded by `from_spec`); dg-lsp itself knows nothing of it.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from dg_model.api import (
    BlockScore,
    Cancelled,
    Candidate,
    EngineError,
    EngineOutOfMemory,
    InfillJob,
    JobResult,
    JobStats,
    RewriteJob,
    ScoreJob,
)


@dataclass
class FakeEngine:
    texts: list[str] = field(default_factory=lambda: ["pass"])  # infill candidates, best first
    # candidates instead of `texts` where the prefix ends with the key (the start of a line, opened for the model)
    after: dict[str, list[str]] = field(default_factory=dict)
    rewrite_text: str | None = None  # None: return the block unchanged
    rewrite_texts: list[str] = field(default_factory=list)  # several rewrite candidates instead, best first
    scores: dict[str, float] = field(default_factory=dict)  # block -> log-likelihood; others: -1 per character
    steps: int = 4
    step_ms: float = 0.0
    record: str | None = None
    line_start: bool = False  # candidates only where the cursor's line is blank
    oom: bool = False  # every infill runs out of memory
    boom: bool = False  # every infill fails with an engine bug
    name: str = "fake"
    device: str = "cpu"
    calls: list[tuple[str, object]] | collections.deque = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4) if text else 0

    def infill(self, job: InfillJob) -> JobResult:
        if self.oom:
            self._log(event="oom", kind="infill", doc_key=job.doc_key)
            # What dg_model.engine raises when torch runs out of CUDA memory.
            raise EngineOutOfMemory(
                "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.6 GiB total capacity)",
                functools.partial(_freed, self.record),
            )
        if self.boom:
            self._log(event="boom", kind="infill", doc_key=job.doc_key)
            raise RuntimeError("boom: an engine bug, not a resource problem")
        self._denoise("infill", job)
        if self.line_start and not _blank_around(job.prefix, job.suffix):
            return JobResult([], JobStats(steps=self.steps))
        texts = next((t for end, t in self.after.items() if job.prefix.endswith(end)), self.texts)[: max(1, job.n)]
        return JobResult([Candidate(t, -0.1 * i) for i, t in enumerate(texts)], JobStats(steps=self.steps))

    def rewrite(self, job: RewriteJob) -> JobResult:
        self._denoise("rewrite", job)
        texts = self.rewrite_texts or [job.block if self.rewrite_text is None else self.rewrite_text]
        return JobResult([Candidate(t, -0.1 * (i + 1)) for i, t in enumerate(texts)], JobStats(steps=self.steps))

    def score(self, job: ScoreJob) -> list[BlockScore]:
        self.calls.append(("score", job))
        if job.cancel is not None and job.cancel.is_set():
            raise Cancelled("cancelled before scoring")
        return [BlockScore(self.scores.get(b, -float(len(b))), []) for b in job.blocks]

    def _denoise(self, kind: str, job: InfillJob | RewriteJob) -> None:
        self.calls.append((kind, job))
        # What the server sent, so e2e tests can check its view of the document around the cursor.
        suffix = job.suffix
        self._log(
            event="start",
            kind=kind,
            doc_key=job.doc_key,
            n=job.n,
            max_tokens=job.max_tokens,
            prefix_tail=job.prefix[-60:],
            suffix_head=suffix[:60],
            block=getattr(job, "block", None),
        )
        for step in range(self.steps):
            if job.cancel is not None and job.cancel.is_set():
                self._log(event="cancelled", kind=kind, doc_key=job.doc_key, step=step)
                raise Cancelled(f"cancelled at step {step}")
            if isinstance(job, InfillJob) and job.on_draft is not None:
                job.on_draft("")
            time.sleep(self.step_ms / 1000)
        self._log(event="done", kind=kind, doc_key=job.doc_key)

    def _log(self, **event: object) -> None:
        if self.record is None:
            return
        event["t"] = time.time()
        with self._lock, open(self.record, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")


def _blank_around(prefix: str, suffix: str) -> bool:
    """Whether the cursor's line holds nothing but indentation before the cursor and nothing after it."""
    return not prefix.rpartition("\n")[2].strip() and not suffix.partition("\n")[0].strip()


def _freed(record: str | None) -> None:  # a function of the record's path: `free_memory` must not hold the engine
    if record is not None:
        with open(record, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": "freed"}) + "\n")


def from_spec(spec: str) -> FakeEngine:
    """`spec` is a JSON object: text | texts, after, rewrite, scores, steps, step_ms, record, line_start, oom, boom,
    name, device, keep_calls, and for the load itself load_ms, load_error, exit."""
    opts = json.loads(spec or "{}")
    time.sleep(opts.pop("load_ms", 0) / 1000)
    if (status := opts.pop("exit", None)) is not None:
        print(f"fake engine: exiting with status {status} while loading, as asked", file=sys.stderr, flush=True)
        os._exit(status)
    if (error := opts.pop("load_error", None)) is not None:
        raise EngineError(error)
    texts = opts.pop("texts", None) or [opts.pop("text", "pass")]
    opts.pop("text", None)
    keep = opts.pop("keep_calls", None)
    engine = FakeEngine(texts=list(texts), rewrite_text=opts.pop("rewrite", None), **opts)
    if keep is not None:
        engine.calls = collections.deque(maxlen=keep)
    return engine


def read_events(path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
