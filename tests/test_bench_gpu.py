"""Smoke run of the GPU benchmark on CPU with the tiny config: it runs and its numbers are sane (no timing bounds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("bitsandbytes")

from dg_bench import gpu as bench_gpu
from dg_model.configs import tiny_config
from dg_model.quantize import QuantizedExperts

SMALL = ["--tiny", "--prompt-len", "32", "--canvases", "16", "32", "--warmup", "1", "--iters", "3"]


def test_cli_writes_sane_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    bench_gpu.main([*SMALL, "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["config"] == "tiny" and r["expert_bits"] == 4 and r["dense_bits"] == 4
    assert r["prefill_ms"] > 0 and r["footprint_gib"] > 0
    assert set(r["steps"]) == {"16", "32"}
    for s in r["steps"].values():
        assert 0 < s["min_ms"] <= s["step_ms"] <= s["max_ms"]
        for k, tps in s["tok_per_s"].items():
            assert math.isclose(tps, int(k) / (s["step_ms"] / 1e3))
    assert set(r["steps"]["32"]["tok_per_s"]) == {"15", "20"}
    assert "canvas" in capsys.readouterr().out


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_built_model_is_initialized_and_runs(bits):
    config = tiny_config()
    model = bench_gpu.build_model(config, "cpu", torch.float32, bits=bits)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    enc, dec = model.model.encoder.language_model.layers[0], model.model.decoder.layers[0]
    assert enc.experts is dec.experts and isinstance(enc.experts, QuantizedExperts) == (bits != 16)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    cache = bench_gpu.prefill(model, torch.randint(0, 256, (1, 8)))
    first = bench_gpu.decoder_step(model, cache, torch.randint(0, 256, (1, 16)), None)
    logits = bench_gpu.decoder_step(model, cache, torch.randint(0, 256, (1, 16)), first)
    assert logits.shape == (1, 16, 256) and torch.isfinite(logits).all() and logits.std() > 0
    assert cache.get_seq_length() == 8  # the decoder only reads the cache
