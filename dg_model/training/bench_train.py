"""`python -m dg_model.training.bench_train --corpus DIR`: the training objectives side by side on one model and
machine.

The first recipe (`canvas`: transformers' modules, one 64-slot canvas per example), block diffusion through the eager
lean layers (`block_eager`) and through torch.compile (`block`, what `train` runs). Alternating rounds of one optimizer
step each (the same batch size, bf16 autocast where `train --amp auto` would use it), after two warm-up steps of each
(with and without self-conditioning: two compiled graphs). Reported per objective: median step time, positions run
through the model per second, and supervised tokens per step and per example: denoised (the decoder's loss) and
next-token (the encoder's causal-LM loss). Writes `bench_results/bench_train.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from dg_model.loading import EMBEDDED_DIR
from dg_model.training.corpus import read_jsonl
from dg_model.training.train import FimBatches, TrainConfig, batch_tokens, pick_device, step_losses, use_bf16

# (name, objective, compiled): the first recipe; block diffusion through the eager lean layers; compiled (`train`)
VARIANTS = (("canvas", "canvas", False), ("block_eager", "block", False), ("block", "block", True))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", default=str(EMBEDDED_DIR))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(EMBEDDED_DIR.parent / "bench_results" / "bench_train.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device("auto")
    bf16 = use_bf16("auto", device)
    base = TrainConfig(corpus=args.corpus, tokenizer=args.model, out="", batch=args.batch)
    texts = [read_jsonl(Path(args.corpus) / "train.jsonl")]
    runs = {}
    for name, objective, compiled in VARIANTS:
        cfg = replace(base, objective=objective, compile=compiled)
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model, dtype=torch.float32)
        # transformers wraps `to` with functools.wraps, and mypy then binds the device to `self`
        model = model.to(device).train()  # type: ignore[arg-type]
        batches = iter(FimBatches(texts, args.model, cfg, seed=0))
        runs[name] = dict(
            cfg=cfg,
            model=model,
            opt=torch.optim.AdamW(model.parameters(), lr=1e-5),
            batches=batches,
            times=[],
            positions=[],
            denoised=[],
            ar=[],
        )
    random.seed(0)
    warm_up = 2  # one step with self-conditioning and one without: each is its own compiled graph
    for round_ in range(args.rounds + warm_up):
        for name, _, _ in VARIANTS:
            r = runs[name]
            batch = next(r["batches"])
            cfg = replace(r["cfg"], self_cond_prob=float(round_ == 0)) if round_ < warm_up else r["cfg"]
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = step_losses(r["model"], batch, cfg)
            r["opt"].zero_grad(set_to_none=True)
            out["loss"].backward()
            r["opt"].step()
            if round_ < warm_up:
                continue  # warm-up (and torch.compile's one-off compiles)
            r["times"].append(time.perf_counter() - t0)
            r["positions"].append(batch_tokens(batch, r["cfg"]))
            r["denoised"].append(int(out["denoised_tokens"]))
            r["ar"].append(int(out["ar_tokens"]))
    result = {
        "device": str(device),
        "bf16": bf16,
        "threads": args.threads,
        "batch": args.batch,
        "rounds": args.rounds,
        "objectives": {},
    }
    for name, r in runs.items():
        step = statistics.median(r["times"])
        result["objectives"][name] = {
            "step_s_p50": round(step, 3),
            "positions_per_s": round(sum(r["positions"]) / sum(r["times"])),
            "denoised_tokens_per_step": statistics.median(r["denoised"]),
            "denoised_tokens_per_example": round(statistics.median(r["denoised"]) / args.batch, 1),
            "ar_tokens_per_step": statistics.median(r["ar"]),
            "supervised_tokens_per_s": round((sum(r["denoised"]) + sum(r["ar"])) / sum(r["times"])),
            "denoised_tokens_per_s": round(sum(r["denoised"]) / sum(r["times"])),
        }
    c = result["objectives"]["canvas"]
    for name in ("block_eager", "block"):
        b = result["objectives"][name]
        result[f"ratios_{name}_vs_canvas"] = {
            "denoised_tokens_per_example": round(
                b["denoised_tokens_per_example"] / c["denoised_tokens_per_example"], 1
            ),
            "denoised_tokens_per_s": round(b["denoised_tokens_per_s"] / c["denoised_tokens_per_s"], 1),
            "supervised_tokens_per_s": round(b["supervised_tokens_per_s"] / c["supervised_tokens_per_s"], 2),
            "positions_per_s": round(b["positions_per_s"] / c["positions_per_s"], 2),
            "step_time": round(b["step_s_p50"] / c["step_s_p50"], 2),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
