"""`dg-lsp bench speed`: diffusion, autoregressive and hybrid decoding of the same checkpoint, same HumanEval tasks.

The tasks and their scoring are `dg_model.evaluation.humaneval`'s (`build_tasks` + `run_tasks`); this module only runs
them once per decoding mode (`load_engine(..., mode="diffusion"|"ar"|"hybrid")`, loaded one after the other so the GPU
never holds two copies), on the same seeded subset, each after one warm-up job, and compares:

- new tokens per second of engine time (sum of `JobStats.new_tokens` / sum of `JobStats.total_ms`), and the same for
  the tokens that ended up in the inserted text (`used_tokens`, what the user sees);
- tokens per forward and forwards (decoder steps for diffusion, encoder forwards for AR) per task;
- time per task (p50 and mean of the wall clock around `engine.infill`) and pass@1;
- for hybrid (the decoder drafts, the encoder verifies: greedy AR's text), tokens per decoder forward and the share
  of drafted tokens the encoder accepted.

AR is greedy here (`ar_beam` 1) whatever the model's engine settings say: the speed baseline is one token per forward.

Printed: the speed ratios against AR (tokens per second, and AR / mode time per task). Reference claims: "up to
4x" (Google), ~5x at batch 1 (vLLM, H100); the goal is >= 4x at equal or better pass@1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

MODES = ("diffusion", "ar", "hybrid")
ROW_KEYS = ("latency_ms", "new_tokens", "used_tokens", "steps", "passed", "engine_total_ms")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kinds", nargs="+", default=["single-line", "multi-line"], choices=["single-line", "multi-line"])
    p.add_argument(
        "--limit",
        type=int,
        nargs="+",
        default=[40],
        metavar="N",
        help="tasks per kind, a seeded subset: one N for every kind or one per --kinds (default 40)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="test programs run in parallel")
    p.add_argument("--max-tokens", type=int, default=None, help="generation budget per task (default: humaneval's)")


def _load(model: str | None, device: str, quantize: str, mode: str):
    from dg_model.loading import load_engine

    engine = load_engine(model, device=device, quantize=quantize, mode=mode)
    if mode == "ar" and hasattr(engine, "settings"):
        # The baseline is plain greedy AR, one row per forward, as the reference claims measure it; a model's line
        # beam (ar_beam) buys quality with batched rows and would flatter diffusion's tokens per second.
        engine.settings = dataclasses.replace(engine.settings, ar_beam=1)
    return engine


def _warm_up(engine: Any) -> None:
    from dg_model.api import InfillJob

    engine.infill(InfillJob(prefix="def add(a, b):\n    return ", suffix="\n", max_tokens=8, doc_key="warm-up"))


def _free() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _mode_summary(report: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in report["results"] if "engine_error" not in r]
    engine_s = sum(r["engine_total_ms"] for r in rows) / 1000
    forwards = sum(r["steps"] for r in rows)
    keep = {k: v for k, v in report.items() if k != "results"}
    return keep | {
        "tok_per_s": sum(r["new_tokens"] for r in rows) / engine_s if engine_s else 0.0,
        "ms_per_forward": 1000 * engine_s / forwards if forwards else 0.0,  # engine time (encode included) / forwards
        "used_tok_per_s": sum(r["used_tokens"] for r in rows) / engine_s if engine_s else 0.0,
        "task_latency_p50_ms": report["latency_ms"]["p50"],
        "task_latency_mean_ms": report["latency_ms"]["mean"],
        "rows": {k: [r.get(k) for r in report["results"]] for k in ROW_KEYS},
    }


def _ratio(d: dict[str, Any], a: dict[str, Any]) -> dict[str, float]:
    def div(x: float, y: float) -> float:
        return x / y if y else float("nan")

    return {
        "tok_per_s": div(d["tok_per_s"], a["tok_per_s"]),
        "used_tok_per_s": div(d["used_tok_per_s"], a["used_tok_per_s"]),
        "task_latency": div(a["task_latency_p50_ms"], d["task_latency_p50_ms"]),  # > 1: diffusion is faster
        "task_latency_mean": div(a["task_latency_mean_ms"], d["task_latency_mean_ms"]),
        "pass_at_1_delta": d["pass_at_1"] - a["pass_at_1"],
    }


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    from dg_model.evaluation import humaneval

    model, device, quantize = args.model, args.device, args.quantize
    tasks = {kind: humaneval.build_tasks(kind) for kind in args.kinds}
    per_kind = args.limit if len(args.limit) == len(args.kinds) else args.limit[:1] * len(args.kinds)
    limits = dict(zip(args.kinds, per_kind, strict=True))
    per_mode: dict[str, dict[str, Any]] = {}
    engine_info: dict[str, Any] = {}
    for mode in MODES:
        t0 = time.perf_counter()
        engine = _load(model, device, quantize, mode)
        load_s = time.perf_counter() - t0
        engine_info = {"name": engine.name, "device": str(engine.device)}
        _warm_up(engine)
        per_mode[mode] = {}
        for kind in args.kinds:
            say(f"speed: {mode} {kind}, {limits[kind]} tasks")
            report = humaneval.run_tasks(
                engine,
                tasks[kind],
                kind,
                limit=limits[kind],
                seed=args.seed,
                workers=args.workers,
                max_tokens=args.max_tokens,
                doc_key=f"bench-speed-{mode}",
                progress=lambda m: say(f"  {m}"),
            )
            per_mode[mode][kind] = _mode_summary(report) | {"load_s": load_s}
        del engine
        _free()
    kinds = {
        kind: {
            **{mode: per_mode[mode][kind] for mode in MODES},
            "ratio": _ratio(per_mode["diffusion"][kind], per_mode["ar"][kind]),
            "ratio_hybrid": _ratio(per_mode["hybrid"][kind], per_mode["ar"][kind]),
        }
        for kind in args.kinds
    }
    return {
        "bench": "speed",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "model": engine_info.get("name", model or "embedded"),
        "device": engine_info.get("device", device),
        "quantize": quantize,
        "limit": limits,
        "seed": args.seed,
        "ar": "greedy (ar_beam 1)",
        "kinds": kinds,
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"speed: {r['model']} on {r['device']} (tasks per kind {r['limit']}, seed {r['seed']})")
    print(
        f"{'kind':<12} {'mode':<10} {'tok/s':>8} {'used/s':>8} {'tok/fwd':>8} {'fwd/task':>9} {'ms/fwd':>7} "
        f"{'p50 ms':>8} {'pass@1':>7}"
    )
    for kind, k in r["kinds"].items():
        for mode in MODES:
            m = k[mode]
            print(
                f"{kind:<12} {mode:<10} {m['tok_per_s']:>8.1f} {m['used_tok_per_s']:>8.1f} "
                f"{m['tokens_per_forward']:>8.2f} {m['mean_steps']:>9.1f} {m['ms_per_forward']:>7.1f} "
                f"{m['task_latency_p50_ms']:>8.0f} "
                f"{m['pass_at_1']:>7.3f}"
            )
        h = k["hybrid"]
        print(
            f"{kind:<12} hybrid: {h.get('tokens_per_decoder_forward') or 0:.2f} tokens per decoder forward, "
            f"{h.get('draft_acceptance', 0):.0%} of drafted tokens accepted"
        )
        for name, q in (("diffusion", k["ratio"]), ("hybrid", k["ratio_hybrid"])):
            print(
                f"{kind:<12} speed ratio {name}/AR: {q['tok_per_s']:.2f}x tokens/s, {q['used_tok_per_s']:.2f}x "
                f"used tokens/s, {q['task_latency']:.2f}x per task (p50), {q['task_latency_mean']:.2f}x (mean); "
                f"pass@1 {q['pass_at_1_delta']:+.3f}"
            )
