"""The end-to-end GPU benchmark on CPU with the tiny config: each expert kind generates end to end and writes sane
JSON (no timing bounds); fp8 experts match bf16 ones; the 26B-A4B plan fits its memory goals (meta device only)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dg_bench import gpu as bench_gpu
from dg_bench import gpu_e2e as bench_gpu_e2e
from dg_model.configs import load_config, tiny_config
from dg_model.quantize import Fp8Experts

SMALL = ["--tiny", "--prompt-len", "32", "--canvases", "8", "16", "--new-tokens", "16", "--reps", "1"]
REQUIRED = {
    "device",
    "experts",
    "step_ms",
    "peak_gib",
    "projected_tok_s",
    "e2e_ms",
    "tok_s",
    "prefill_ms",
    "compiled",
    "compiled_reason",
    "torch",
    "cuda",
}


@pytest.mark.parametrize("kind", ["fp8", "bf16", "nf4"])
def test_tiny_generation_writes_sane_json(kind, tmp_path, capsys):
    if kind == "nf4":
        pytest.importorskip("bitsandbytes")
    out = tmp_path / "r.json"
    bench_gpu_e2e.main([*SMALL, "--experts", kind, "--out", str(out)])
    r = json.loads(out.read_text())
    assert REQUIRED <= set(r) and r["experts"] == kind and r["complete"] and r["prefill_ms"] > 0
    assert r["compiled"] is False and r["compiled_reason"] == "--compile auto"  # CPU: eager unless asked
    assert set(r["step_ms"]) == set(r["e2e_ms"]) == set(r["projected_tok_s"]) == {"8", "16"}
    for c, s in r["canvases"].items():
        assert s["new_tokens"] == max(16, 2 * int(c)) and s["blocks"] == s["new_tokens"] // int(c)
        assert s["forwards"] == s["blocks"] * 4 and s["tokens_per_forward"] == int(c) / 4
        assert s["commits"] == s["blocks"] - 1 >= 1 and s["commit_ms"] > 0
        assert 0 < s["step_ms_min"] <= s["step_ms"] <= s["step_ms_max"]
        # the whole generation takes at least its decoder steps
        assert s["e2e_ms"] >= s["forwards"] * s["step_ms_min"]
        assert math.isclose(s["tok_s"], s["new_tokens"] / (s["e2e_ms"] / 1e3))
        for k, tps in r["projected_tok_s"][c].items():
            assert math.isclose(tps, int(k) / (s["step_ms"] / 1e3))
    if kind == "fp8":
        assert r["fp8"]["backend"] == "dequant"  # CPU: the dequantize-per-call path
    assert "canvas" in capsys.readouterr().out


def test_budget_skips_canvases_and_all_combines(tmp_path):
    out = tmp_path / "all.json"
    r = bench_gpu_e2e.main([*SMALL, "--all", "--kinds", "fp8", "bf16", "--budget-s", "0.001", "--out", str(out)])
    assert set(r["runs"]) == {"fp8", "bf16"} and json.loads(out.read_text())["runs"].keys() == r["runs"].keys()
    for kind, run in r["runs"].items():
        # a budget this small still builds and prefills, then skips every canvas (or the parent kills the child)
        assert run["experts"] == kind and (run.get("skipped") == [8, 16] or run["subprocess"].get("timed_out"))


@torch.no_grad()
def test_fp8_experts_match_bf16_experts():
    config = tiny_config()
    model = bench_gpu.build_model(config, "cpu", torch.float32, bits=16)
    experts = model.model.encoder.language_model.layers[0].experts
    fp8 = Fp8Experts(experts)
    assert fp8.gate_up_fp8.dtype == torch.float8_e4m3fn and fp8.backend == "dequant"
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, config.text_config.hidden_size, generator=g)
    index = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(40)])
    weights = torch.rand(40, 2, generator=g)
    ref, out = experts(hidden, index, weights), fp8(hidden, index, weights)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.06  # e4m3 weights and activations: ~2-4% relative error, never exact
    # the stored form dequantizes back to the weights within e4m3's relative step (2^-3)
    w = fp8.dequantize("gate_up", torch.float32)
    assert (
        torch.allclose(w, experts.gate_up_proj, atol=0, rtol=0.0625 + 1e-6)
        or ((w - experts.gate_up_proj).abs() <= experts.gate_up_proj.abs().amax(-1, keepdim=True) / 448 * 16).all()
    )


@torch.no_grad()
def test_fp8_scaled_mm_loop_matches_dequant_path():
    """The per-expert `torch._scaled_mm` loop (the GPU fallback) runs on this torch's CPU too: same result."""
    model = bench_gpu.build_model(tiny_config(), "cpu", torch.bfloat16, bits=16)
    fp8 = Fp8Experts(model.model.encoder.language_model.layers[0].experts)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 64, generator=g).to(torch.bfloat16)
    index = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(40)])
    weights = torch.rand(40, 2, generator=g)
    ref = fp8(hidden, index, weights).float()
    fp8.backend = "scaled_mm"
    out = fp8(hidden, index, weights).float()
    assert ((out - ref).norm() / ref.norm()).item() < 0.03  # bf16 rounding of the reference only


def test_fp8_model_builds_shared_and_generates():
    model = bench_gpu.build_model(tiny_config(), "cpu", torch.float32, bits=16, convert=Fp8Experts)
    enc, dec = model.model.encoder.language_model.layers[0], model.model.decoder.layers[0]
    assert enc.experts is dec.experts and isinstance(enc.experts, Fp8Experts)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    wall, timer = bench_gpu_e2e.generate(model, torch.randint(0, 256, (1, 8)), 8, 2, 16, compiled=False)
    assert wall > 0 and len(timer.ms("step")) == 4 and len(timer.ms("commit")) == 1


def test_26b_plan_on_meta_fits_the_goals(capsys):
    r = bench_gpu_e2e.main(["--plan"])
    p = {k: v["total_gib"] * 1024**3 / 1e9 for k, v in r["plan"].items()}  # GB
    assert p["nf4"] < 18 and p["fp8"] < 30 and p["bf16"] > 45  # bf16 ~52 GB: the published size
    assert p["nf4"] < p["fp8"] < p["bf16"]
    assert "fp8" in capsys.readouterr().out
    experts = 30 * 128 * (2 * 704 * 2816 + 2816 * 704)  # 22.8 B expert weights, one byte each at fp8
    w = {k: v["weights_gib"] * 1024**3 for k, v in r["plan"].items()}
    assert math.isclose(w["bf16"] - w["fp8"], experts, rel_tol=0.01)
    assert load_config().text_config.num_experts == 128
