"""`dg-lsp bench remote`: what the remote path adds to server-side time, on loopback.

The same completions (`pipeline.complete_at`: context, ONE engine call, post-processing) at N places of a real file
(stdlib `textwrap.py`), three ways, in turn at each place:
- local: the engine in this process;
- remote: a `RemoteEngine` to `dg_lsp.bench.openai_stub` in another process, which answers through the same engine,
  token counts from a local copy of the tokenizer (what a team with the model's tokenizer on disk gets);
- remote+tokenize: the same, token counts from the server's /tokenize (with token strings: a text inside one already
  tokenized is counted from its token offsets, without a request).
The engine answers a constant text at once and counts with the embedded tokenizer on both ends, so both build the same
context and the differences are the remote path itself. Medians side by side, and the median of the per-place
differences -> bench_remote.json.
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

from dg_model.remote import RemoteConfig, RemoteEngine

from .. import pipeline
from ..settings import Settings
from .openai_stub import EMBEDDED_TOKENIZER, ConstantEngine

WARMUP = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--places", type=int, default=150, help="completions per way (default: 150)")


def main(args: argparse.Namespace, out: Path) -> int:
    text = Path(textwrap.__file__).read_text(encoding="utf-8")
    ends = [i for i, ch in enumerate(text) if ch == "\n" and i and text[i - 1] != "\n"]
    step = max(1, len(ends) // (args.places + WARMUP))
    places = ends[::step][: args.places + WARMUP]
    stub = subprocess.Popen([sys.executable, "-m", "dg_lsp.bench.openai_stub", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = stub.stdout.readline().split()[-1]
        ways = {
            "local": ConstantEngine(),
            "remote": _remote(url, tokenizer=str(EMBEDDED_TOKENIZER)),
            "remote+tokenize": _remote(url, tokenizer=None),
        }
        counts = {name: _Counted(engine) for name, engine in ways.items()}
        times: dict[str, list[float]] = {name: [] for name in ways}
        settings = Settings()
        order = list(counts.items())
        for i, offset in enumerate(places):
            order = order[1:] + order[:1]  # each way goes first in turn: none always gets a warm or a cold cache
            for name, engine in order:
                t0 = time.perf_counter()
                edits = pipeline.complete_at(engine, text, offset, "python", settings, doc_key="textwrap.py")
                took = (time.perf_counter() - t0) * 1e3
                assert edits is not None
                if i >= WARMUP:
                    times[name].append(took)
    finally:
        stub.terminate()
        stub.wait(10)
    result = {
        "places": len(times["local"]),
        "file": "textwrap.py",
        "counting": {name: getattr(e, "info", None) and e.info.counting for name, e in ways.items()},
        "p50_ms": {name: round(statistics.median(t), 2) for name, t in times.items()},
        "p95_ms": {name: round(statistics.quantiles(t, n=20)[-1], 2) for name, t in times.items()},
        "counts_per_completion": {name: round(c.calls / (len(places)), 1) for name, c in counts.items()},
    }
    # Medians of the per-place differences too: this shared machine's speed drifts within a run.
    result["added_p50_ms"] = {name: round(statistics.median(r - b for r, b in zip(times[name], times["local"])), 2)
                              for name in ways if name != "local"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_remote.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'way':16} {'p50 ms':>8} {'p95 ms':>8} {'counts/completion':>18}")
    for name in ways:
        print(f"{name:16} {result['p50_ms'][name]:8.2f} {result['p95_ms'][name]:8.2f} "
              f"{result['counts_per_completion'][name]:18.1f}")
    print(f"added per completion (median of the differences at each place): {result['added_p50_ms']}")
    print(f"wrote {out / 'bench_remote.json'}")
    return 0


def _remote(url: str, tokenizer: str | None) -> RemoteEngine:
    engine = RemoteEngine(RemoteConfig(url=url, model="stub", format="fim-spm", tokenizer=tokenizer))
    engine.check()
    return engine


class _Counted:
    """The engine, counting how often the context builder asks it for a token count."""

    def __init__(self, engine) -> None:
        self.engine, self.calls = engine, 0
        self.name, self.device = engine.name, engine.device

    def count_tokens(self, text: str) -> int:
        self.calls += 1
        return self.engine.count_tokens(text)

    def infill(self, job):
        return self.engine.infill(job)

    def rewrite(self, job):
        return self.engine.rewrite(job)
