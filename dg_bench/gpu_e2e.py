"""End-to-end GPU benchmark: a whole block-autoregressive generation of the 26B-A4B architecture, random weights.

    python -m dg_bench.gpu_e2e --all --budget-s 150 --out e2e.json     # CUDA: fp8, bf16, nf4 one after another
    python -m dg_bench.gpu_e2e --experts fp8 --out fp8.json             # one expert kind
    python -m dg_bench.gpu_e2e --plan                                   # planned bytes per kind (no weights)
    python -m dg_bench.gpu_e2e --experts fp8 --tiny --out t.json        # anywhere: tiny config (CPU smoke test)

What runs is transformers' own `generate` loop (`DiffusionGemmaForBlockDiffusion.generate`): prefill of a
`--prompt-len` prompt through the causal encoder into a `StaticCache`, then per block `--steps` decoder denoising
steps over the canvas (entropy-bound sampler; the adaptive stop is off, so every block takes exactly `--steps`
forwards = canvas / steps tokens committed per forward), then the finished block is encoded into the cache (commit)
and the next block starts. Compiled (default on CUDA): the library's own pieces, `torch.compile(mode=
"reduce-overhead")` = CUDA graphs over the decoder step, the commit encoder and the sampler; if that fails the run
falls back to eager and records why.

Experts ("--experts"): bf16 (the reference; transformers' grouped_mm experts), fp8 (`quantize.Fp8Experts`: e4m3
weights, one fp32 scale per row, `torch._scaled_grouped_mm`, else a `torch._scaled_mm` loop, else dequantize per call;
the backend is probed against the dequantized reference on the device before the run), nf4 (bitsandbytes 4-bit
experts and dense layers, `quantize.QuantizedExperts`: dequantize-per-call + grouped matmul).

Reported per canvas: decoder step ms (median over every step of the timed generations), commit ms, e2e ms of the
whole generation and its measured tok/s, and `projected_tok_s` = k / step at k = 15 and 20 tokens per forward (a
projection: the regime of the published 1000+ tok/s figure, not what this fixed-step run commits).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import StaticCache
from transformers.models.diffusion_gemma import DiffusionGemmaTextConfig

from dg_bench import gpu as bench_gpu
from dg_model.configs import load_config, tiny_config
from dg_model.quantize import Fp8Experts, footprint_bytes, fp8_backend, fp8_expert_bytes, projected_footprint_bytes

KINDS = ("fp8", "bf16", "nf4")  # --all runs them in this order (the new path first)
GIB = 1024**3


# ------------------------------------------------------------------------------------------------ expert kinds
def kind_setup(kind: str) -> dict:
    """build_model keyword arguments for an expert kind."""
    if kind == "bf16":
        return {"bits": 16, "dense_bits": 16}
    if kind == "fp8":
        return {"bits": 16, "dense_bits": 16, "convert": Fp8Experts}
    assert kind == "nf4", kind
    return {"bits": 4, "dense_bits": 4}  # the README's 14.2 GiB configuration


def build(kind: str, config, device, dtype):
    if kind == "nf4":
        import bitsandbytes  # noqa: F401 - fail early with a clear ImportError
    model = bench_gpu.build_model(config, device, dtype, **kind_setup(kind))
    model.config.text_config._experts_implementation = "grouped_mm"  # bf16 experts: static shapes, no host sync
    return model


def fp8_modules(model) -> list[Fp8Experts]:
    return list({id(m): m for m in model.modules() if isinstance(m, Fp8Experts)}.values())


@torch.no_grad()
def probe_fp8(model, device, dtype) -> dict:
    """Pick the first fp8 backend that runs here and matches the dequantized reference; set it on every layer."""
    mods = fp8_modules(model)
    first, tried = mods[0], {}
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(64, first.gate_up_fp8.shape[2], generator=g).to(device, dtype)
    k = model.config.text_config.top_k_experts
    index = torch.stack([torch.randperm(first.num_experts, generator=g)[:k] for _ in range(64)]).to(device)
    weights = torch.rand(64, k, generator=g).to(device)
    first.backend = "dequant"
    ref = first(hidden, index, weights).float()
    chosen = "dequant"
    cuda_fallback = ["scaled_mm"] if torch.device(device).type == "cuda" else []
    for backend in dict.fromkeys([fp8_backend(device), *cuda_fallback]):
        if backend == "dequant":
            continue
        try:
            first.backend = backend
            out = first(hidden, index, weights).float()
            err = ((out - ref).norm() / ref.norm()).item()
            tried[backend] = {"rel_err": err}
            if err < 0.02:
                chosen = backend
                break
        except Exception as e:  # noqa: BLE001 - a missing kernel must not cost the run
            tried[backend] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    for m in mods:
        m.backend = chosen
    return {"backend": chosen, "tried": tried}


# ---------------------------------------------------------------------------------------------------- planning
def kv_cache_bytes(config, max_len: int, dtype_bytes: int = 2) -> int:
    """StaticCache bytes: K and V per layer (sliding layers capped at the window)."""
    tc, total = config.text_config, 0
    for i, layer_type in enumerate(tc.layer_types):
        layer = tc.per_layer_config[i]
        length = min(max_len, tc.sliding_window) if layer_type == "sliding_attention" else max_len
        total += 2 * layer.num_key_value_heads * layer.head_dim * length * dtype_bytes
    return total


def plan(config, max_len: int, max_canvas: int) -> dict:
    """Planned bytes per kind on a `meta` model (nothing allocated): weights, KV cache, logits of one step."""
    model = bench_gpu._meta_model(config)
    bf16 = projected_footprint_bytes(model, 16, 16)
    experts = [p for n, p in model.named_parameters() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    numel, rows = sum(p.numel() for p in experts), sum(p.shape[0] * p.shape[1] for p in experts)
    weights = {
        "bf16": bf16,
        "fp8": bf16 - 2 * numel + fp8_expert_bytes(numel, rows),
        "nf4": projected_footprint_bytes(model, 4, 4),
    }
    kv = kv_cache_bytes(config, max_len)
    logits = 4 * max_canvas * config.text_config.vocab_size * 4  # fp32 logits, probs, self-cond. copy, sampler
    return {
        kind: {
            "weights_gib": w / GIB,
            "kv_cache_gib": kv / GIB,
            "logits_gib": logits / GIB,
            "total_gib": (w + kv + logits) / GIB,
        }
        for kind, w in weights.items()
    }


# ----------------------------------------------------------------------------------------------------- timing
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Timer:
    """Wraps callables and records the time of every call: CUDA events (no host sync), else wall clock."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks: dict[str, list] = {}

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(*args, **kwargs)
                end.record()
                self.marks.setdefault(name, []).append((start, end))
            else:
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                self.marks.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
            return out

        return timed

    def ms(self, name: str) -> list[float]:
        marks = self.marks.get(name, [])
        return [s.elapsed_time(e) for s, e in marks] if self.cuda else list(marks)


def _install(model, timer: Timer, compiled: bool) -> None:
    """Route generate's decoder forward and commit encoder through `timer` (compiled: the library's own compile)."""
    for attr in ("_compiled_accept_canvas", "_compiled_renoise_canvas"):  # bound to a sampler of one canvas size
        model.__dict__.pop(attr, None)
    if compiled:
        if "_compiled_raw" not in model.__dict__:
            model._compiled_raw = (
                torch.compile(model.model.encoder, mode="reduce-overhead", fullgraph=True),
                torch.compile(model.forward, mode="reduce-overhead", fullgraph=True),
            )
        enc, dec = model._compiled_raw
        model._compiled_encoder, model._compiled_decoder_forward = timer.wrap("commit", enc), timer.wrap("step", dec)
    else:
        enc = model.model.encoder
        enc.forward = timer.wrap("encoder", type(enc).forward.__get__(enc))  # the prefill, then every commit
        model.forward = timer.wrap("step", type(model).forward.__get__(model))


def _uninstall(model) -> None:
    model.__dict__.pop("forward", None)
    model.model.encoder.__dict__.pop("forward", None)


@torch.no_grad()
def generate(model, prompt, canvas: int, steps: int, new_tokens: int, compiled: bool) -> tuple[float, Timer]:
    """One whole generation; -> (wall ms, per-call timings of steps and commits)."""
    model.config.canvas_length = canvas
    timer = Timer(prompt.device)
    _install(model, timer, compiled)
    try:
        _sync(prompt.device)
        t0 = time.perf_counter()
        out = model.generate(
            prompt,
            max_new_tokens=new_tokens,
            max_denoising_steps=steps,
            stability_threshold=None,
            confidence_threshold=None,
            eos_token_id=None,
            pad_token_id=0,
            cache_implementation="static",
            disable_compile=not compiled,
        )
        _sync(prompt.device)
        wall = (time.perf_counter() - t0) * 1e3
    finally:
        _uninstall(model)
    assert out.sequences.shape[1] == prompt.shape[1] + new_tokens, out.sequences.shape
    if not compiled:
        timer.marks["commit"] = timer.marks.pop("encoder", [])[1:]  # the first encoder call is the prefill
    return wall, timer


@torch.no_grad()
def prefill_ms(model, prompt, max_len: int, reps: int) -> float:
    """Median ms of the eager prefill into a fresh StaticCache (what generate does first)."""

    def once():
        cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=max_len)
        model.model.encoder(input_ids=prompt, cache=cache)

    return bench_gpu.time_ms(once, prompt.device, 1, reps)[0]


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def measure_canvas(model, prompt, canvas: int, args, state: dict) -> dict:
    """Warm-up generation (compiles), then `--reps` timed ones; compile failure -> eager, reason in `state`."""
    new_tokens = max(args.new_tokens, 2 * canvas)  # at least two blocks, so at least one commit
    new_tokens = -(-new_tokens // canvas) * canvas
    try:
        generate(model, prompt, canvas, args.steps, new_tokens, state["compiled"])
    except Exception as e:  # compile is optional; a failure must not cost the eager numbers (eager errors re-raise)
        if not state["compiled"]:
            raise
        state["compiled"], state["compiled_reason"] = False, f"{type(e).__name__}: {str(e)[:400]}"
        model.__dict__.pop("_compiled_raw", None)
        torch._dynamo.reset()
        generate(model, prompt, canvas, args.steps, new_tokens, False)
    walls, steps, commits = [], [], []
    for _ in range(args.reps):
        wall, timer = generate(model, prompt, canvas, args.steps, new_tokens, state["compiled"])
        walls.append(wall)
        steps += timer.ms("step")
        commits += timer.ms("commit")
    blocks = new_tokens // canvas
    assert len(steps) == args.reps * blocks * args.steps, (len(steps), blocks)
    e2e, step = statistics.median(walls), statistics.median(steps)
    return {
        "new_tokens": new_tokens,
        "blocks": blocks,
        "steps_per_block": args.steps,
        "tokens_per_forward": canvas / args.steps,
        "forwards": blocks * args.steps,
        "commits": blocks - 1,
        "step_ms": step,
        "step_ms_min": min(steps),
        "step_ms_max": max(steps),
        "commit_ms": _median(commits),
        "e2e_ms": e2e,
        "e2e_ms_all": walls,
        "tok_s": new_tokens / (e2e / 1e3),
        "compiled": state["compiled"],
    }


# ------------------------------------------------------------------------------------------------------- runs
def _device_name(device) -> str:
    return torch.cuda.get_device_name() if torch.device(device).type == "cuda" else platform.processor() or "cpu"


def _write(path: str | None, result: dict) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, path)


def run(args) -> dict:
    """One expert kind; the JSON at `args.out` is rewritten after every canvas (a killed run leaves its part)."""
    start = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 matmuls crawl on CPUs without bf16 units
    config = tiny_config() if args.tiny else load_config()
    max_len = args.prompt_len + max(max(args.new_tokens, 2 * c) for c in args.canvases)
    compile_wanted = cuda if args.compile == "auto" else args.compile == "yes"
    result = {
        "device": _device_name(device),
        "experts": args.experts,
        "config": "tiny" if args.tiny else "diffusiongemma-26B-A4B",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "prompt_len": args.prompt_len,
        "steps": args.steps,
        "budget_s": args.budget_s,
        "plan": plan(config, max_len, max(args.canvases))[args.experts],
        "compiled": compile_wanted,
        "compiled_reason": "requested" if compile_wanted else f"--compile {args.compile}",
        "step_ms": {},
        "e2e_ms": {},
        "tok_s": {},
        "projected_tok_s": {},
        "canvases": {},
        "skipped": [],
        "projection_note": "projected_tok_s = k / step_ms at k tokens per forward: a projection, not measured",
        "complete": False,
    }
    model = build(args.experts, config, device, dtype)
    _sync(device)
    result["build_s"] = time.perf_counter() - start
    result["footprint_gib"] = footprint_bytes(model) / GIB
    if cuda:
        result["build_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()  # peak_gib = the serving peak, not the build's
    if args.experts == "fp8":
        result["fp8"] = probe_fp8(model, device, dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    text = config.text_config
    assert isinstance(text, DiffusionGemmaTextConfig)  # typed `| dict | None`: the config's __post_init__ builds it
    prompt = torch.randint(0, text.vocab_size, (1, args.prompt_len), generator=g).to(device)
    result["prefill_ms"] = prefill_ms(model, prompt, max_len, max(1, args.reps))
    _write(args.out, result)
    state = {"compiled": compile_wanted}
    for canvas in args.canvases:
        if args.budget_s and time.perf_counter() - start > 0.8 * args.budget_s:
            result["skipped"].append(canvas)
            continue
        r = measure_canvas(model, prompt, canvas, args, state)
        c = str(canvas)
        result["canvases"][c] = r
        result["step_ms"][c], result["e2e_ms"][c], result["tok_s"][c] = r["step_ms"], r["e2e_ms"], r["tok_s"]
        result["projected_tok_s"][c] = {str(k): k / (r["step_ms"] / 1e3) for k in bench_gpu.TOKENS_PER_FORWARD}
        result["compiled"] = state["compiled"]
        result["compiled_reason"] = state.get("compiled_reason", result["compiled_reason"])
        result["peak_gib"] = torch.cuda.max_memory_allocated() / GIB if cuda else None
        result["wall_s"] = time.perf_counter() - start
        _write(args.out, result)
    result["peak_gib"] = torch.cuda.max_memory_allocated() / GIB if cuda else None
    result["complete"] = not result["skipped"]
    result["wall_s"] = time.perf_counter() - start
    _write(args.out, result)
    return result


def run_all(args) -> dict:
    """Every kind in a fresh subprocess (its own CUDA context, compile cache and peak), killed at `--budget-s`."""
    combined = {"runs": {}, "budget_s": args.budget_s, "torch": torch.__version__, "cuda": torch.version.cuda}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            out = os.path.join(tmp, f"{kind}.json")
            cmd = [sys.executable, "-m", "dg_bench.gpu_e2e", *_child_args(args), "--experts", kind, "--out", out]
            t0, status = time.perf_counter(), {}
            try:
                proc = subprocess.run(cmd, timeout=args.budget_s or None, capture_output=True, text=True)
                status = {"returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
            except subprocess.TimeoutExpired as e:  # subprocess.run has killed it; keep what it wrote
                status = {"timed_out": True, "stderr_tail": (e.stderr or b"")[-2000:].decode(errors="replace")}
            status["wall_s"] = time.perf_counter() - t0
            r = json.load(open(out)) if os.path.exists(out) else {"experts": kind}
            combined["runs"][kind] = {**r, "subprocess": status}
            _write(args.out, combined)
            print_table(combined["runs"][kind])
    return combined


def _child_args(args) -> list[str]:
    """The command-line flags of one kind's run (everything but --all/--kinds/--experts/--out)."""
    out = [
        "--prompt-len",
        str(args.prompt_len),
        "--canvases",
        *map(str, args.canvases),
        "--steps",
        str(args.steps),
        "--new-tokens",
        str(args.new_tokens),
        "--reps",
        str(args.reps),
        "--compile",
        args.compile,
        "--budget-s",
        str(args.budget_s),
    ]
    return out + (["--tiny"] if args.tiny else []) + (["--device", args.device] if args.device else [])


def print_table(r: dict) -> None:
    print(
        f"{r.get('experts')} experts on {r.get('device')} ({r.get('config')}); compiled {r.get('compiled')} "
        f"({r.get('compiled_reason')}); prefill {r.get('prefill_ms')} ms; peak {r.get('peak_gib')} GiB"
    )
    print(
        f"{'canvas':>6} {'tok/fwd':>7} {'step ms':>9} {'commit ms':>9} {'e2e ms':>9} {'tok/s':>8} "
        f"{'proj@15':>8} {'proj@20':>8}"
    )
    for c, s in r.get("canvases", {}).items():
        p = r["projected_tok_s"][c]
        commit = s["commit_ms"] if s["commit_ms"] is not None else float("nan")
        print(
            f"{c:>6} {s['tokens_per_forward']:>7.1f} {s['step_ms']:>9.2f} {commit:>9.2f} {s['e2e_ms']:>9.1f} "
            f"{s['tok_s']:>8.0f} {p['15']:>8.0f} {p['20']:>8.0f}"
        )
    if r.get("skipped"):
        print(f"skipped (budget): {r['skipped']}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", choices=KINDS, default="fp8")
    ap.add_argument("--all", action="store_true", help="every kind of --kinds in a fresh subprocess, one JSON")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--plan", action="store_true", help="print planned GiB per kind (meta device) and exit")
    ap.add_argument("--out", default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke test)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--canvases", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--steps", type=int, default=4, help="decoder forwards per block (fixed: no adaptive stop)")
    ap.add_argument("--new-tokens", type=int, default=256, help="tokens generated (at least two canvases)")
    ap.add_argument("--reps", type=int, default=2, help="timed generations per canvas after one warm-up")
    ap.add_argument("--compile", choices=("auto", "yes", "no"), default="auto", help="auto: on CUDA only")
    ap.add_argument("--budget-s", type=float, default=0, help="seconds per kind (0: none); canvases past 80%% skip")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.plan:
        config = tiny_config() if args.tiny else load_config()
        max_len = args.prompt_len + max(max(args.new_tokens, 2 * c) for c in args.canvases)
        result = {
            "config": "tiny" if args.tiny else "diffusiongemma-26B-A4B",
            "max_len": max_len,
            "plan": plan(config, max_len, max(args.canvases)),
        }
        _write(args.out, result)
        for kind, p in result["plan"].items():
            print(
                f"{kind:>5}: weights {p['weights_gib']:.2f} GiB + KV cache {p['kv_cache_gib']:.2f} + logits "
                f"{p['logits_gib']:.2f} = {p['total_gib']:.2f} GiB"
            )
        return result
    if args.all:
        return run_all(args)
    result = run(args)
    print_table(result)
    return result


if __name__ == "__main__":
    main()
