"""A deterministic stand-in for the diffusion engine, for tests only.

It answers every infill with a fixed text and every rewrite with a fixed (or the unchanged) block, after `steps`
"decoder steps" of `step_ms` each, checking `job.cancel` before every step like the real sampler. With `record` set
it appends one JSON line per event, so a test in another process can see whether (and at which step) a job stopped.

The server loads it with `--model fake:<json spec>` only when `DG_LSP_ALLOW_FAKE=1`; it is not a product feature.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from dg_model.api import (
    BlockScore,
    Cancelled,
    Candidate,
    EngineError,
    InfillJob,
    JobResult,
    JobStats,
    RewriteJob,
    ScoreJob,
)


@dataclass
class FakeEngine:
    texts: list[str] = field(default_factory=lambda: ["pass"])  # infill candidates, best first
    rewrite_text: str | None = None  # None: return the block unchanged
    scores: dict[str, float] = field(default_factory=dict)  # block -> log-likelihood; others: -1 per character
    steps: int = 4
    step_ms: float = 0.0
    record: str | None = None
    name: str = "fake"
    device: str = "cpu"
    calls: list[tuple[str, object]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4) if text else 0

    def infill(self, job: InfillJob) -> JobResult:
        self._denoise("infill", job)
        texts = self.texts[: max(1, job.n)]
        return JobResult([Candidate(t, -0.1 * i) for i, t in enumerate(texts)], JobStats(steps=self.steps))

    def rewrite(self, job: RewriteJob) -> JobResult:
        self._denoise("rewrite", job)
        text = job.block if self.rewrite_text is None else self.rewrite_text
        return JobResult([Candidate(text, -0.1)], JobStats(steps=self.steps))

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
            event="start", kind=kind, doc_key=job.doc_key, n=job.n, max_tokens=job.max_tokens,
            prefix_tail=job.prefix[-60:], suffix_head=suffix[:60], block=getattr(job, "block", None),
        )
        for step in range(self.steps):
            if job.cancel is not None and job.cancel.is_set():
                self._log(event="cancelled", kind=kind, doc_key=job.doc_key, step=step)
                raise Cancelled(f"cancelled at step {step}")
            if job.on_draft is not None:
                job.on_draft("")
            time.sleep(self.step_ms / 1000)
        self._log(event="done", kind=kind, doc_key=job.doc_key)

    def _log(self, **event: object) -> None:
        if self.record is None:
            return
        event["t"] = time.time()
        with self._lock, open(self.record, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")


def from_spec(spec: str) -> FakeEngine:
    """`spec` is a JSON object: text | texts, rewrite, scores, steps, step_ms, record, load_ms, load_error."""
    opts = json.loads(spec or "{}")
    time.sleep(opts.pop("load_ms", 0) / 1000)
    if (error := opts.pop("load_error", None)) is not None:
        raise EngineError(error)
    texts = opts.pop("texts", None) or [opts.pop("text", "pass")]
    opts.pop("text", None)
    return FakeEngine(texts=list(texts), rewrite_text=opts.pop("rewrite", None), **opts)


def read_events(path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
