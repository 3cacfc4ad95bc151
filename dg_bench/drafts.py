"""How well a model's denoiser drafts for the hybrid (the decoder drafts, the causal encoder verifies), side by side:

    python -m dg_bench.drafts --corpus /work/corpus/valid.jsonl --model dg_model/embedded --model RUN_EXPORT \
        [--cuts 100] [--canvas 16] [--steps 1] [--lookup on|off] [--out FILE]

Held-out code of the training distribution (a corpus split the model never trained on; never HumanEval): cuts made
the way training makes them (`fim_examples.sample_fim`, seeded, the same cuts for every model), each decoded by the
hybrid for up to 24 tokens. The hybrid's text is greedy AR's whatever the drafts, so what is measured is the cost:
draft tokens the encoder accepted per round (one draft step per round with `--steps 1`) and tokens committed per
decoder forward (the issue's ">= 2 where diffusion is used"). Models run one after the other, one torch thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any, Literal

from dg_model.api import InfillJob


def cuts(corpus: Path, n: int, seed: int = 11) -> list[InfillJob]:
    from dg_model.training.fim_examples import sample_fim

    rng = random.Random(seed)
    files = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
    rng.shuffle(files)
    jobs: list[InfillJob] = []
    for text in files:
        if len(jobs) >= n:
            break
        pieces = sample_fim(text[:6000], rng)
        if pieces is None or len(pieces.middle.strip()) < 4:
            continue
        kind: Literal["line", "block"] = "block" if "\n" in pieces.middle.strip("\n") else "line"
        jobs.append(
            InfillJob(
                pieces.prefix[-3000:],
                pieces.suffix[:1500],
                kind=kind,
                max_tokens=24,
                decoding="hybrid",
                doc_key=f"cut{len(jobs)}",
            )
        )
    return jobs


def measure(model: str, jobs: list[InfillJob], canvas: int, steps: int, lookup: bool) -> dict[str, Any]:
    from dg_model.loading import load_engine

    engine = load_engine(None if model == "embedded" else model, device="cpu", mode="hybrid")
    engine.settings = dataclasses.replace(engine.settings, draft_canvas=canvas, draft_steps=steps, draft_lookup=lookup)
    drafted = accepted = new = forwards = 0
    for job in jobs:
        stats = engine.infill(job).stats
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
        new, forwards = new + stats.new_tokens, forwards + stats.decoder_forwards
    return {
        "model": model,
        "cuts": len(jobs),
        "acceptance": round(accepted / max(1, drafted), 4),
        "accepted_per_decoder_forward": round(accepted / max(1, forwards), 3),
        "tokens_per_decoder_forward": round(new / max(1, forwards), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="a held-out JSONL split (one {'text': ...} per line)")
    ap.add_argument("--model", action="append", required=True, help="a model directory, or 'embedded'; repeatable")
    ap.add_argument("--cuts", type=int, default=100)
    ap.add_argument("--canvas", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--lookup", choices=("on", "off"), default="on")
    ap.add_argument("--out", type=Path, default=Path("bench_results/bench_drafts.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    jobs = cuts(args.corpus, args.cuts)
    rows = [measure(m, jobs, args.canvas, args.steps, args.lookup == "on") for m in args.model]
    result = {"canvas": args.canvas, "steps": args.steps, "lookup": args.lookup, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
