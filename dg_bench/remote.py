"""`dg-lsp bench remote`: what the remote path adds to server-side time, on loopback.

The same completions (`pipeline.complete`: context, ONE engine call, post-processing) at N places of a real file
(stdlib `textwrap.py`), three ways, in turn at each place:
- local: the engine in this process;
- remote: a `RemoteEngine` to `dg_bench.openai_stub` in another process, which answers through the same engine,
  token counts from a local copy of the tokenizer (what a team with the model's tokenizer on disk gets);
- remote+tokenize: the same, token counts from the server's /tokenize (with token strings): a text made of runs of
  already tokenized texts is counted from their token offsets, without a request (`RemoteEngine._count_pieces`);
- remote+tokenize:inside: the same, counting without a request only a text inside ONE tokenized text (of the last 8),
  as before the runs were joined: the previous way side by side in the same run.
The engine answers a constant text at once and counts with the embedded tokenizer on both ends, so all build about the
same context and the differences are the remote path itself. Medians side by side, the median of the per-place
differences, /tokenize requests per completion, and each way's prompts counted by the real tokenizer (tokens, and how
many went over `context.maxPromptTokens`) -> bench_remote.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from dg_lsp import pipeline
from dg_lsp.settings import Settings
from dg_model.api import BlockScore, Engine, InfillJob, JobResult, RewriteJob, ScoreJob
from dg_model.remote import RemoteConfig, RemoteEngine

from .openai_stub import EMBEDDED_TOKENIZER, ConstantEngine

WARMUP = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--places", type=int, default=150, help="completions per way (default: 150)")


def main(args: argparse.Namespace, out: Path) -> int:
    text = Path(textwrap.__file__).read_text(encoding="utf-8")
    ends = [i for i, ch in enumerate(text) if ch == "\n" and i and text[i - 1] != "\n"]
    step = max(1, len(ends) // (args.places + WARMUP))
    places = ends[::step][: args.places + WARMUP]
    stub = subprocess.Popen(
        [sys.executable, "-m", "dg_bench.openai_stub", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert stub.stdout is not None  # stdout=PIPE
    try:
        url = stub.stdout.readline().split()[-1]
        ways: dict[str, Engine] = {
            "local": ConstantEngine(),
            "remote": _remote(url, tokenizer=str(EMBEDDED_TOKENIZER)),
            "remote+tokenize": _remote(url, tokenizer=None),
            "remote+tokenize:inside": _remote(url, tokenizer=None, span_texts=8, max_pieces=1, new_share=0.0),
        }
        real = ConstantEngine()  # the tokenizer both ends use: what the prompts really count
        counts = {name: _Counted(engine, real) for name, engine in ways.items()}
        times: dict[str, list[float]] = {name: [] for name in ways}
        settings = Settings()
        order = list(counts.items())
        for i, offset in enumerate(places):
            order = order[1:] + order[:1]  # each way goes first in turn: none always gets a warm or a cold cache
            for name, engine in order:
                t0 = time.perf_counter()
                edits = pipeline.complete(engine, text, offset, "python", settings, doc_key="textwrap.py").edits
                took = (time.perf_counter() - t0) * 1e3
                assert edits is not None
                if i >= WARMUP:
                    times[name].append(took)
        requests = {name: getattr(e, "tokenize_requests", 0) for name, e in ways.items()}
        prefetches = {name: getattr(e, "tokenize_prefetches", 0) for name, e in ways.items()}
    finally:
        stub.terminate()
        stub.wait(10)
    budget = settings.context.max_prompt_tokens
    result: dict[str, Any] = {
        "places": len(times["local"]),
        "file": "textwrap.py",
        "counting": {
            name: e.info and e.info.counting if isinstance(e, RemoteEngine) else None for name, e in ways.items()
        },
        "p50_ms": {name: round(statistics.median(t), 2) for name, t in times.items()},
        "p95_ms": {name: round(statistics.quantiles(t, n=20)[-1], 2) for name, t in times.items()},
        "counts_per_completion": {name: round(c.calls / len(places), 1) for name, c in counts.items()},
        "tokenize_requests_per_completion": {name: round(n / len(places), 2) for name, n in requests.items()},
        "background_tokenize_per_completion": {name: round(n / len(places), 2) for name, n in prefetches.items()},
        "prompt_tokens_p50": {name: statistics.median(c.prompt_tokens) for name, c in counts.items()},
        "max_prompt_tokens": budget,
        "over_budget": {name: sum(n > budget for n in c.prompt_tokens) for name, c in counts.items()},
    }
    # Medians of the per-place differences too: this shared machine's speed drifts within a run.
    result["added_p50_ms"] = {
        name: round(statistics.median(r - b for r, b in zip(times[name], times["local"])), 2)
        for name in ways
        if name != "local"
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_remote.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'way':24} {'p50 ms':>8} {'p95 ms':>8} {'counts':>7} {'requests':>9} {'prompt tokens':>14} "
        f"{'over ' + str(budget):>9}  (per completion; prompt tokens: p50, real tokenizer)"
    )
    for name in ways:
        print(
            f"{name:24} {result['p50_ms'][name]:8.2f} {result['p95_ms'][name]:8.2f} "
            f"{result['counts_per_completion'][name]:7.1f} {result['tokenize_requests_per_completion'][name]:9.2f} "
            f"{result['prompt_tokens_p50'][name]:14.0f} {result['over_budget'][name]:9d}"
        )
    print(f"added per completion (median of the differences at each place): {result['added_p50_ms']}")
    print(f"wrote {out / 'bench_remote.json'}")
    return 0


def _remote(url: str, tokenizer: str | None, **counting) -> RemoteEngine:
    engine = RemoteEngine(RemoteConfig(url=url, model="stub", format="fim-spm", tokenizer=tokenizer))
    for name, value in counting.items():
        setattr(engine, name, value)
    engine.check()
    return engine


class _Counted:
    """The engine, counting how often the context builder asks it for a token count, and what each prompt it was
    given really counts (prefix, suffix and snippets, by `real`)."""

    def __init__(self, engine: Engine, real: Engine) -> None:
        self.engine, self.real, self.calls = engine, real, 0
        self.name, self.device = engine.name, engine.device
        self.prompts: list[tuple[str, ...]] = []

    @property
    def prompt_tokens(self) -> list[int]:
        return [sum(self.real.count_tokens(t) for t in prompt) for prompt in self.prompts]

    def count_tokens(self, text: str) -> int:
        self.calls += 1
        return self.engine.count_tokens(text)

    def infill(self, job: InfillJob) -> JobResult:
        self.prompts.append((job.prefix, job.suffix, *job.context))  # counted after the timing
        return self.engine.infill(job)

    def rewrite(self, job: RewriteJob) -> JobResult:
        return self.engine.rewrite(job)

    def score(self, job: ScoreJob) -> list[BlockScore]:
        return self.engine.score(job)
