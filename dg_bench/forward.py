"""`dg-lsp bench forward`: transformers' modules vs the lean forward, the same weights, side by side.

One model is loaded once and both `Forward`s run over it (`dg_model.forward.HFForward`, `dg_model.lean.LeanForward`).
Each round times every operation once with each forward, alternating which goes first, so machine noise lands on
both; reported are medians over rounds and the hf/lean ratio, plus the largest logit difference between the two
(the lean path must compute the same function). Operations, on a prompt cut from a real file:

    encode      the whole prompt into an empty cache (a cold request)
    ar_step     one token appended and trimmed again (one AR decoding step, or one keystroke's re-encode)
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
    ids = torch.tensor([_prompt_ids(tokenizer, args.prompt_tokens)], device=device)
    caches = {k: f.new_cache() for k, f in fwds.items()}
    canvases = [int(c) for c in str(args.canvases).split(",") if c.strip()]
    vocab = model.config.text_config.vocab_size
    gen = torch.Generator().manual_seed(0)
    noise = {c: torch.randint(7, vocab, (1, c), generator=gen).to(device) for c in canvases}
    one = ids[:, -1:]
    n = ids.shape[1]

    def ops(kind: str) -> dict[str, Callable[[], Any]]:
        f, cache = fwds[kind], caches[kind]

        def encode():
            f.trim(cache, 0)
            f.encode(ids, cache, 0)

        def ar_step():
            f.encode(one, cache, n)
            f.trim(cache, n)

        table: dict[str, Callable[[], Any]] = {"encode": encode, "ar_step": ar_step}
        for c in canvases:
            sc = sc_logits[c]
            table[f"canvas_{c}"] = functools.partial(f.decoder_logits, noise[c], cache, sc)
        return table

    with torch.inference_mode():
        for kind, f in fwds.items():
            f.encode(ids, caches[kind], 0)
        sc_logits = {c: fwds["hf"].decoder_logits(noise[c], caches["hf"], None) for c in canvases}
        max_diff = max(
            float(
                (
                    fwds["hf"].decoder_logits(noise[c], caches["hf"], sc_logits[c])
                    - fwds["lean"].decoder_logits(noise[c], caches["lean"], sc_logits[c])
                )
                .abs()
                .max()
            )
            for c in canvases
        )
        tables = {kind: ops(kind) for kind in fwds}
        times: dict[str, dict[str, list[float]]] = {k: {op: [] for op in tables[k]} for k in fwds}
        for op in tables["hf"]:
            for kind in fwds:  # warm-up
                tables[kind][op]()
            for r in range(args.rounds):
                order = ("hf", "lean") if r % 2 == 0 else ("lean", "hf")
                for kind in order:
                    times[kind][op].append(_time(tables[kind][op]))
            say(
                f"{op}: hf {statistics.median(times['hf'][op]):.2f} ms, "
                f"lean {statistics.median(times['lean'][op]):.2f} ms"
            )

    ops_report = {}
    for op in times["hf"]:
        hf, lean = statistics.median(times["hf"][op]), statistics.median(times["lean"][op])
        ops_report[op] = {
            "hf_ms": round(hf, 3),
            "lean_ms": round(lean, 3),
            "speedup": round(hf / lean, 3),
            "hf_p90_ms": round(sorted(times["hf"][op])[int(0.9 * (args.rounds - 1))], 3),
            "lean_p90_ms": round(sorted(times["lean"][op])[int(0.9 * (args.rounds - 1))], 3),
        }
    return {
        "bench": "forward",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "model": f"random {args.size}" if getattr(args, "size", None) else (args.model or "embedded"),
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "prompt_tokens": n,
        "rounds": args.rounds,
        "max_logit_diff": max_diff,
        "ops": ops_report,
    }


def print_report(r: dict[str, Any]) -> None:
    print(
        f"forward: {r['model']} ({r['params'] / 1e6:.1f} M parameters) on {r['device']}, "
        f"{r['torch_threads']} thread(s), "
        f"prompt {r['prompt_tokens']} tokens, "
        f"medians of {r['rounds']} alternating rounds; max |logit diff| {r['max_logit_diff']:.2e}"
    )
    print(f"{'operation':<12} {'hf ms':>9} {'lean ms':>9} {'speed-up':>9}")
    for op, o in r["ops"].items():
        print(f"{op:<12} {o['hf_ms']:>9.2f} {o['lean_ms']:>9.2f} {o['speedup']:>8.2f}x")
