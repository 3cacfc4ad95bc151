"""GPU benchmark of the full DiffusionGemma 26B-A4B architecture with random weights and k-bit experts.

    python -m dg_bench.gpu --out results.json              # CUDA: 26B-A4B, experts NF4
    python -m dg_bench.gpu --bits 16 --out bf16.json       # the bf16 baseline (needs ~52 GB)
    python -m dg_bench.gpu --tiny --out tiny.json          # anywhere: tiny config (CPU smoke test)

Build (gpt-fast style): construct on the `meta` device (no memory), then layer by layer materialize that layer's
experts in bf16 on the device, quantize them and drop the bf16 copy, so the peak is the final size plus one layer's
experts (~1.5 GB): this also works on 24 GB cards. Everything else (~2.5 B params) is materialized afterwards and
initialized on the device. The vision tower is left out: the benchmark is the text path.

Measured: VRAM after the build (allocated and peak), encoder prefill of a 512-token prompt, decoder step time for
canvases 32/64/256 (median of N after warm-up, synchronized), projected tokens/s = tokens_per_forward / step time
at 15 and 20 tokens per forward (the regime of the published 1000+ tok/s H100 figure). Random weights give the
same FLOPs, bytes and routing spread as real ones (the router picks 8 of 128 experts either way).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import torch
from torch import nn
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache
from transformers.models.diffusion_gemma import DiffusionGemmaTextConfig

from dg_model.configs import load_config, tiny_config
from dg_model.forward import with_cache
from dg_model.quantize import Fp8Experts, QuantizedExperts, footprint_bytes, quantize_dense

TOKENS_PER_FORWARD = (15, 20)
PACKED_EXPERTS = (QuantizedExperts, Fp8Experts)  # built by `_build_experts`, never re-initialized


# -------------------------------------------------------------------------------------------------------- building
def _meta_model(config) -> DiffusionGemmaForBlockDiffusion:
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    model.model.encoder.vision_tower = nn.Identity()  # text path only; saves ~0.55 B params
    model.model.encoder.embed_vision = nn.Identity()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def _random_experts(experts: nn.Module, device, dtype, std: float) -> None:
    for name in ("gate_up_proj", "down_proj"):
        shape = getattr(experts, name).shape
        setattr(experts, name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype).normal_(0, std), False))


@torch.no_grad()
def _build_experts(
    model: DiffusionGemmaForBlockDiffusion, device, dtype, bits: int, blocksize: int, std: float, convert=None
) -> None:
    """Layer by layer: random bf16 experts on the device -> k-bit (or `convert(experts)`, e.g. fp8), shared by the
    encoder and decoder layer."""
    if convert is None and bits != 16:
        convert = functools.partial(QuantizedExperts, bits=bits, blocksize=blocksize)
    enc_layers, dec_layers = model.model.encoder.language_model.layers, model.model.decoder.layers
    for enc, dec in zip(enc_layers, dec_layers):
        _random_experts(enc.experts, device, dtype, std)
        experts = enc.experts if convert is None else convert(enc.experts)
        enc.experts = dec.experts = experts  # the shared weights stay shared; the bf16 copy is freed here


def _materialize(model: nn.Module, device, dtype) -> None:
    """Every tensor still on `meta` -> uninitialized on `device`; tied tensors stay one tensor."""
    params: dict[int, nn.Parameter] = {}
    buffers: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and p.is_meta:
                if id(p) not in params:
                    dt = dtype if p.is_floating_point() else p.dtype
                    params[id(p)] = nn.Parameter(torch.empty(p.shape, device=device, dtype=dt), requires_grad=False)
                module._parameters[name] = params[id(p)]
        for name, b in module._buffers.items():
            if b is not None and b.is_meta:
                if id(b) not in buffers:
                    buffers[id(b)] = torch.empty(b.shape, device=device, dtype=b.dtype)
                module._buffers[name] = buffers[id(b)]


@torch.no_grad()
def _init_rest(model: DiffusionGemmaForBlockDiffusion) -> None:
    """The library's own init, run on the device, for everything but the (already built) experts."""
    for module in model.modules():
        if type(module).__name__ != "DiffusionGemmaTextExperts" and not isinstance(module, PACKED_EXPERTS):
            model._init_weights(module)
    for name, buf in model.named_buffers():
        if name.endswith("layer_scalar"):
            buf.fill_(1.0)


def build_model(
    config, device, dtype, bits: int = 4, blocksize: int = 64, dense_bits: int = 16, seed: int = 0, convert=None
):
    """Random-weight model on `device`: experts in `bits` (16 = unquantized) or `convert(bf16 experts)`, dense
    linears in `dense_bits`."""
    torch.manual_seed(seed)
    model = _meta_model(config)
    _build_experts(model, device, dtype, bits, blocksize, config.text_config.initializer_range, convert)
    _materialize(model, device, dtype)
    _init_rest(model)
    if dense_bits != 16:
        quantize_dense(model, dense_bits, device)
    return model


# -------------------------------------------------------------------------------------------------------- stepping
@torch.no_grad()
def prefill(model, prompt: torch.Tensor) -> DynamicCache:
    """prompt [B, P] -> KV cache of the causal encoder."""
    cache = DynamicCache(config=model.config.text_config)
    model.model.encoder(**with_cache(cache, input_ids=prompt))
    return cache


@torch.no_grad()
def decoder_step(model, cache, canvas: torch.Tensor, sc_logits: torch.Tensor | None) -> torch.Tensor:
    """canvas [B, C] -> logits [B, C, V] (fp32, soft-capped); reads the cache, never writes it."""
    return model(**with_cache(cache, decoder_input_ids=canvas, self_conditioning_logits=sc_logits)).logits


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, warmup: int, iters: int) -> tuple[float, list[float]]:
    """Median wall ms of `fn()` over `iters` synchronized runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


# ----------------------------------------------------------------------------------------------------------- stats
def param_counts(config) -> dict[str, float]:
    """Total and active (per token) parameters of the text model, analytically from the config."""
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    seen, total, experts = set(), 0, 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            experts += p.numel() if name.endswith(("experts.gate_up_proj", "experts.down_proj")) else 0
    tc = config.text_config
    self_cond = sum(p.numel() for p in model.model.decoder.self_conditioning.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision" in n)
    active = total - vision - self_cond - experts + experts * tc.top_k_experts // tc.num_experts
    return {"total": total, "vision": vision, "experts": experts, "active_text": active}


def _compiled_or_eager(fn, example_args, result: dict):
    """torch.compile(fn) if it compiles and runs on `example_args`; else `fn`, with the error noted in `result`."""
    try:
        compiled = torch.compile(fn)
        compiled(*example_args)
        result["compiled"] = True
        return compiled
    except Exception as e:  # noqa: BLE001 - compile is optional; a failure must not cost the eager numbers
        result["compiled"], result["compile_error"] = False, f"{type(e).__name__}: {str(e)[:300]}"
        return fn


def _memory(device) -> dict[str, float]:
    if torch.device(device).type != "cuda":
        return {}
    gib = 1024**3
    return {"allocated_gib": torch.cuda.memory_allocated() / gib, "peak_gib": torch.cuda.max_memory_allocated() / gib}


def run(args) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 matmuls are ~100x slower than fp32 on CPUs without bf16 units: CPU runs use fp32
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    config = tiny_config() if args.tiny else load_config()
    text = config.text_config
    assert isinstance(text, DiffusionGemmaTextConfig)  # typed `| dict | None`: the config's __post_init__ builds it
    vocab = text.vocab_size
    t0 = time.perf_counter()
    dense_bits = args.dense_bits or (args.bits if args.bits != 16 else 16)
    model = build_model(config, device, dtype, args.bits, args.blocksize, dense_bits)
    _sync(device)
    result = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "config": "tiny" if args.tiny else "diffusiongemma-26B-A4B",
        "dtype": str(dtype).removeprefix("torch."),
        "expert_bits": args.bits,
        "dense_bits": dense_bits,
        "blocksize": args.blocksize,
        "params": param_counts(config),
        "build_s": time.perf_counter() - t0,
        "footprint_gib": footprint_bytes(model) / 1024**3,
        "memory_after_build": _memory(device),
    }
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # memory_after_steps' peak = serving peak, not build peak
    g = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(0, vocab, (1, args.prompt_len), generator=g).to(device)
    result["prefill_ms"], _ = time_ms(lambda: prefill(model, prompt), device, args.warmup, max(3, args.iters // 4))
    cache = prefill(model, prompt)
    result["steps"] = {}
    for c in args.canvases:
        canvas = torch.randint(0, vocab, (1, c), generator=g).to(device)
        sc = decoder_step(model, cache, canvas, None)  # self-conditioning input, as from a previous step
        step = _compiled_or_eager(decoder_step, (model, cache, canvas, sc), result) if args.compile else decoder_step
        ms, times = time_ms(functools.partial(step, model, cache, canvas, sc), device, args.warmup, args.iters)
        result["steps"][str(c)] = {
            "step_ms": ms,
            "min_ms": min(times),
            "max_ms": max(times),
            "tok_per_s": {str(k): k / (ms / 1e3) for k in TOKENS_PER_FORWARD if k <= c},
        }
        del sc
    result["memory_after_steps"] = _memory(device)
    return result


def print_table(r: dict) -> None:
    p = r["params"]
    print(
        f"{r['config']} on {r['device']} ({r['dtype']}, experts {r['expert_bits']}-bit, "
        f"dense {r['dense_bits']}-bit, blocksize {r['blocksize']})"
    )
    print(
        f"params total {p['total'] / 1e9:.4g} B, active (text) {p['active_text'] / 1e9:.4g} B; "
        f"build {r['build_s']:.1f} s; footprint {r['footprint_gib']:.2f} GiB; memory {r['memory_after_build']}"
    )
    print(f"prefill {r.get('prompt_len', '')} tokens: {r['prefill_ms']:.1f} ms")
    print(f"{'canvas':>6} {'step ms':>9} {'tok/s @15':>10} {'tok/s @20':>10}")
    for c, s in r["steps"].items():
        tps = s["tok_per_s"]
        print(f"{c:>6} {s['step_ms']:>9.2f} {tps.get('15', float('nan')):>10.0f} {tps.get('20', float('nan')):>10.0f}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench_gpu.json")
    ap.add_argument("--tiny", action="store_true", help="tiny config (CPU smoke test)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--bits", type=int, default=4, choices=(4, 8, 16), help="expert weights; 16 = bf16 baseline")
    ap.add_argument(
        "--dense-bits",
        type=int,
        default=None,
        choices=(4, 8, 16),
        help="dense nn.Linear weights via bnb Linear4bit/Linear8bitLt; default: as --bits",
    )
    ap.add_argument("--blocksize", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--canvases", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder step (optional)")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    result["prompt_len"] = args.prompt_len
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print_table(result)
    return result


if __name__ == "__main__":
    main()
