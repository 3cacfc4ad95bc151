"""`dg-lsp bench forward`: transformers' modules vs the lean forward vs its ONNX Runtime encoder, the same weights.

One model is loaded once and every `Forward` runs over it (`dg_model.forward.HFForward`, `dg_model.lean.LeanForward`,
and on a CPU `dg_model.ort.OrtForward`). Each round times every operation once with each forward, rotating which goes
first, so machine noise lands on all; reported are medians over rounds, the hf/lean and lean/ort ratios, and the
largest logit difference from transformers' modules (the fast paths must compute the same function). ONNX Runtime
runs on the threads the engine gives it (two where torch runs one on a CPU of more: `engine.spare_core`), so its
column is what the server runs; the torch forwards run on `--threads`. Operations, on a prompt cut from a real file:

    encode      the whole prompt into an empty cache (a cold request)
    ar_step     one token appended, its logits, trimmed again (one AR decoding step; a keystroke's re-encode)
    beam_step   one token appended to each of 10 rows sharing the prompt, their logits (a step of an explicit
                request's beam)
    canvas_C    one self-conditioned decoder step over a C-token canvas (one diffusion step)
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import statistics
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CANVASES = (8, 16, 24, 64)
BEAM = 10  # the explicit request's beam width (dg_engine.json's invoked_beam)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-tokens", type=int, default=480, help="prompt length (default 480, the server's budget)")
    p.add_argument("--canvases", default=",".join(map(str, CANVASES)), help="decoder canvas sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per operation (default 30)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1, as the server on 2 cores)"
    )
    p.add_argument(
        "--size",
        help="instead of loading --model, build an architecture.SIZES preset (tiny, embedded, "
        "medium) with random weights: the cost of a size before anyone trains it",
    )


def _prompt_ids(tokenizer, n: int) -> list[int]:
    text = Path(textwrap.__file__).read_text()
    ids = tokenizer.encode(text, add_special_tokens=False)
    return (ids * (n // max(1, len(ids)) + 1))[:n]


def _random_model(size: str, device: str):
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

    from dg_model.architecture import SIZES, build_config
    from dg_model.loading import EMBEDDED_DIR, pick_device

    if size not in SIZES:
        raise SystemExit(f"dg-lsp: --size {size}: choose one of {', '.join(SIZES)}")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_DIR)
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(build_config(tokenizer.vocab_size, 64, **SIZES[size]))
    # transformers wraps `to` with functools.wraps, and mypy then binds the device to `self`
    return model.to(pick_device(device)).eval(), tokenizer  # type: ignore[arg-type]


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from dg_model import ort
    from dg_model.engine import spare_core
    from dg_model.forward import Forward, HFForward
    from dg_model.lean import LeanForward, unsupported
    from dg_model.loading import load_model

    torch.set_num_threads(args.threads)
    if getattr(args, "size", None):
        model, tokenizer = _random_model(args.size, args.device)
    else:
        model, tokenizer, _ = load_model(args.model, args.device, args.quantize)
    reason = unsupported(model)
    if reason:
        raise SystemExit(f"dg-lsp: the lean forward cannot run this model ({reason}); nothing to compare")
    device = next(model.parameters()).device
    fwds: dict[str, Forward] = {"hf": HFForward(model), "lean": LeanForward(model)}
    if ort.unsupported(model) is None:
        # as the engine builds it: on two threads where it has a spare core (one torch thread on a CPU of more)
        fwds["ort"] = ort.OrtForward(model, threads=2 if spare_core(str(device)) else None)
    ids = torch.tensor([_prompt_ids(tokenizer, args.prompt_tokens)], device=device)
    caches = {k: f.new_cache() for k, f in fwds.items()}
    canvases = [int(c) for c in str(args.canvases).split(",") if c.strip()]
    vocab = model.config.text_config.vocab_size
    gen = torch.Generator().manual_seed(0)
    noise = {c: torch.randint(7, vocab, (1, c), generator=gen).to(device) for c in canvases}
    one = ids[:, -1:]
    rows = ids[:, -BEAM:].reshape(BEAM, 1)
    n = ids.shape[1]

    def ops(kind: str) -> dict[str, Callable[[], Any]]:
        f, cache = fwds[kind], caches[kind]
        beam = f.expand(cache, BEAM)

        def encode():
            f.trim(cache, 0)
            f.encode(ids, cache, 0)

        def ar_step():
            f.lm_logits(f.encode(one, cache, n))
            f.trim(cache, n)

        def beam_step():
            f.lm_logits(f.encode(rows, beam, n))
            f.trim(beam, n)

        table: dict[str, Callable[[], Any]] = {"encode": encode, "ar_step": ar_step, "beam_step": beam_step}
        for c in canvases:
            sc = sc_logits[c]
            table[f"canvas_{c}"] = functools.partial(f.decoder_logits, noise[c], cache, sc)
        return table

    with torch.inference_mode():
        for kind, f in fwds.items():
            f.encode(ids, caches[kind], 0)
        hf, hf_cache = fwds["hf"], caches["hf"]
        sc_logits = {c: hf.decoder_logits(noise[c], hf_cache, None) for c in canvases}

        def diff(kind: str) -> float:
            f, cache = fwds[kind], caches[kind]
            step = [(hf.lm_logits(hf.encode(one, hf_cache, n)) - f.lm_logits(f.encode(one, cache, n))).abs().max()]
            hf.trim(hf_cache, n)
            f.trim(cache, n)
            canvas = [
                (hf.decoder_logits(noise[c], hf_cache, sc_logits[c]) - f.decoder_logits(noise[c], cache, sc_logits[c]))
                .abs()
                .max()
                for c in canvases
            ]
            return max(float(x) for x in step + canvas)

        diffs = {kind: diff(kind) for kind in fwds if kind != "hf"}
        tables = {kind: ops(kind) for kind in fwds}
        kinds = list(fwds)
        times: dict[str, dict[str, list[float]]] = {k: {op: [] for op in tables[k]} for k in fwds}
        for op in tables["hf"]:
            for kind in kinds:  # warm-up
                tables[kind][op]()
            for r in range(args.rounds):
                for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                    times[kind][op].append(_time(tables[kind][op]))
            say(f"{op}: " + ", ".join(f"{k} {statistics.median(times[k][op]):.2f} ms" for k in kinds))

    ops_report = {}
    p90 = int(0.9 * (args.rounds - 1))
    for op in times["hf"]:
        med = {k: statistics.median(times[k][op]) for k in kinds}
        o: dict[str, float] = {f"{k}_ms": round(med[k], 3) for k in kinds}
        o["speedup"] = round(med["hf"] / med["lean"], 3)
        if "ort" in med:
            o["ort_speedup"] = round(med["lean"] / med["ort"], 3)
        o.update({f"{k}_p90_ms": round(sorted(times[k][op])[p90], 3) for k in kinds})
        ops_report[op] = o
    return {
        "bench": "forward",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "processor": _processor(), "python": platform.python_version()},
        "model": f"random {args.size}" if getattr(args, "size", None) else (args.model or "embedded"),
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "ort_threads": getattr(fwds.get("ort"), "threads", None),
        "prompt_tokens": n,
        "rounds": args.rounds,
        "forwards": kinds,
        "max_logit_diff": diffs["lean"],
        "max_logit_diff_ort": diffs.get("ort"),
        "ops": ops_report,
    }


def _processor() -> str:
    """The CPU's model name: the ratios here differ by vendor (MKL's products on AMD, AMX on recent Intel)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def print_report(r: dict[str, Any]) -> None:
    kinds = r.get("forwards", ["hf", "lean"])
    print(
        f"forward: {r['model']} ({r['params'] / 1e6:.1f} M parameters) on {r['device']}, "
        f"{r['torch_threads']} thread(s)"
        + (f" (ONNX Runtime {r['ort_threads']})" if r.get("ort_threads") else "")
        + ", "
        f"prompt {r['prompt_tokens']} tokens, "
        f"medians of {r['rounds']} rotating rounds; max |logit diff| lean {r['max_logit_diff']:.2e}"
        + (f", ort {r['max_logit_diff_ort']:.2e}" if r.get("max_logit_diff_ort") is not None else "")
    )
    ratios = [("hf/lean", "speedup")] + ([("lean/ort", "ort_speedup")] if "ort" in kinds else [])
    print(f"{'operation':<12}" + "".join(f"{k + ' ms':>10}" for k in kinds) + "".join(f"{n:>10}" for n, _ in ratios))
    for op, o in r["ops"].items():
        print(
            f"{op:<12}"
            + "".join(f"{o[k + '_ms']:>10.2f}" for k in kinds)
            + "".join(f"{o[key]:>9.2f}x" for _, key in ratios)
        )
