"""The lean forward, in torch and with its stacks in ONNX Runtime, computes what transformers' modules compute, on the
same weights, through every cache move the engine makes: chunked prompt encodes, canvases, self-conditioning, batch
expansion, block-AR appends, trims, growth."""

import copy
import warnings
from dataclasses import replace

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from dg_model.api import InfillJob, RewriteJob
from dg_model.architecture import TINY, build_config
from dg_model.engine import DiffusionEngine
from dg_model.forward import HFForward, make_forward
from dg_model.lean import LeanForward, unsupported
from dg_model.loading import load_engine
from dg_model.ort import OrtForward

VOCAB = 512


def _model(layer_types=None, sliding_window=None, seed=0):
    torch.manual_seed(seed)
    cfg = build_config(VOCAB, 16, max_positions=256, **TINY)
    if layer_types:
        cfg.text_config.layer_types = layer_types
    if sliding_window:
        cfg.text_config.sliding_window = sliding_window
    model = DiffusionGemmaForBlockDiffusion(cfg).eval()
    # Random norms, scales and layer scalars: with their initial ones a misplaced norm or scale would go unseen.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "scale" in name:
                p.add_(torch.randn_like(p) * 0.3)
        for layer in list(model.model.encoder.language_model.layers) + list(model.model.decoder.layers):
            layer.layer_scalar.fill_(0.9)
    return model


LAYERS = {"global": None, "mixed": ["sliding_attention", "full_attention"]}


@pytest.fixture(scope="module", params=[(layers, fast) for layers in LAYERS for fast in ("lean", "ort")], ids="-".join)
def pair(request):
    # "mixed": a sliding layer (own value projection) next to a global one (values from the key projection);
    # "ort": the lean forward with its layer stacks and logits head in ONNX Runtime
    layers, fast = request.param
    model = _model(LAYERS[layers])
    assert unsupported(model) is None
    return HFForward(model), (OrtForward if fast == "ort" else LeanForward)(model)


def close(a, b):
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@torch.inference_mode()
def test_prompt_in_chunks_then_canvases_match_transformers(pair):
    hf, lean = pair
    ids = torch.randint(7, VOCAB, (1, 40))
    ch, cl = hf.new_cache(), lean.new_cache(capacity=8)  # small: the lean cache must grow on the way
    for lo, hi, last_only in ((0, 25, True), (25, 39, False), (39, 40, True)):
        # a prompt's last state alone: the same state, and every position's keys and values (the canvases below)
        close(hf.encode(ids[:, lo:hi], ch, lo, last_only), lean.encode(ids[:, lo:hi], cl, lo, last_only))
    assert hf.seq_length(ch) == lean.seq_length(cl) == 40
    canvas = torch.randint(7, VOCAB, (1, 16))
    first = hf.decoder_logits(canvas, ch, None)
    close(first, lean.decoder_logits(canvas, cl, None))
    close(hf.decoder_logits(canvas, ch, first), lean.decoder_logits(canvas, cl, first))  # self-conditioned
    assert lean.seq_length(cl) == 40, "a decoder step must not grow the prompt"
    close(
        hf.lm_logits(hf.encode(ids[:, :1], hf.new_cache(), 0)),
        lean.lm_logits(lean.encode(ids[:, :1], lean.new_cache(), 0)),
    )


@torch.inference_mode()
def test_trim_expand_and_block_append_match_transformers(pair):
    hf, lean = pair
    ids = torch.randint(7, VOCAB, (1, 30))
    ch, cl = hf.new_cache(), lean.new_cache()
    hf.encode(ids, ch, 0), lean.encode(ids, cl, 0)
    hf.trim(ch, 22), lean.trim(cl, 22)  # the user edited the prompt after token 22
    tail = torch.randint(7, VOCAB, (1, 5))
    close(hf.encode(tail, ch, 22), lean.encode(tail, cl, 22))
    bh, bl = hf.expand(ch, 3), lean.expand(cl, 3)  # three candidates
    canvas = torch.randint(7, VOCAB, (3, 16))
    close(hf.decoder_logits(canvas, bh, None), lean.decoder_logits(canvas, bl, None))
    close(hf.encode(canvas, bh, 27), lean.encode(canvas, bl, 27))  # block-AR: the canvas becomes prompt
    nxt = torch.randint(7, VOCAB, (3, 16))
    close(hf.decoder_logits(nxt, bh, None), lean.decoder_logits(nxt, bl, None))
    assert lean.seq_length(cl) == 27, "expanding copies the cache, it does not share it"
    with pytest.raises(ValueError, match="expand it first"):
        lean.decoder_logits(nxt, cl, None)


@torch.inference_mode()
def test_reordered_beams_continue_from_their_parents_rows(pair):
    hf, lean = pair
    prompt, steps = torch.randint(7, VOCAB, (1, 20)), torch.randint(7, VOCAB, (3, 2))
    caches = []
    for fwd in (hf, lean):
        c = fwd.new_cache()
        fwd.encode(prompt, c, 0)
        c = fwd.expand(c, 3)
        fwd.encode(steps[:, :1], c, 20), fwd.encode(steps[:, 1:], c, 21)
        fwd.reorder(c, torch.tensor([2, 0, 0]), start=20)  # beams 0 and 1 now continue row 2's and row 0's text
        caches.append(c)
    nxt = torch.randint(7, VOCAB, (3, 1))
    out_hf, out_lean = hf.encode(nxt, caches[0], 22), lean.encode(nxt, caches[1], 22)
    close(out_hf, out_lean)
    fresh = lean.encode(torch.cat([prompt[0], steps[2], nxt[0]])[None], lean.new_cache(), 0)
    close(out_lean[0], fresh[0, -1:])


@torch.inference_mode()
def test_rows_trimmed_into_their_shared_prompt_continue_from_it(pair):
    # expanded rows share the prompt (read once by every row): trimming into it and growing past the rows' storage
    # must still read each position once, from the right place
    hf, lean = pair
    ids, steps = torch.randint(7, VOCAB, (1, 24)), torch.randint(7, VOCAB, (2, 3))
    ch, cl = hf.new_cache(), lean.new_cache(capacity=24)
    hf.encode(ids, ch, 0), lean.encode(ids, cl, 0)
    bh, bl = hf.expand(ch, 2), lean.expand(cl, 2)
    close(hf.encode(steps, bh, 24), lean.encode(steps, bl, 24))
    hf.trim(bh, 18), lean.trim(bl, 18)
    long = torch.randint(7, VOCAB, (2, 90))
    last = lean.encode(long, bl, 18, last_only=True)
    assert last.shape == (2, 1, lean.enc_layers[0].o.shape[0])
    close(hf.encode(long, bh, 18)[:, -1:], last)
    canvas = torch.randint(7, VOCAB, (2, 8))
    close(hf.decoder_logits(canvas, bh, None), lean.decoder_logits(canvas, bl, None))


@torch.inference_mode()
def test_cache_memory_is_never_read_before_it_is_written(pair):
    hf, lean = pair
    cl = lean.new_cache(capacity=8)
    for t in cl.k + cl.v:
        t.fill_(float("nan"))  # the cache is allocated uninitialised: any stale read would show as NaN
    ids, canvas = torch.randint(7, VOCAB, (1, 12)), torch.randint(7, VOCAB, (2, 6))
    ch = hf.new_cache()
    close(hf.encode(ids, ch, 0), lean.encode(ids, cl, 0))  # grows past capacity 8 on the way
    bh, bl = hf.expand(ch, 2), lean.expand(cl, 2)
    close(hf.decoder_logits(canvas, bh, None), lean.decoder_logits(canvas, bl, None))
    lean.reorder(bl, torch.tensor([1, 0]), start=12), hf.reorder(bh, torch.tensor([1, 0]))
    close(hf.encode(canvas[:, :1], bh, 12), lean.encode(canvas[:, :1], bl, 12))


@torch.inference_mode()
@torch.inference_mode()
def test_the_decoder_reads_through_the_encoders_session_unless_its_weights_differ():
    model = _model()
    shared = OrtForward(model)
    assert shared.decoder.session is shared.encoder.session  # DiffusionGemma's decoder is its encoder's layers
    dec = model.model.decoder
    dec.norm = copy.deepcopy(dec.norm)  # a decoder with a final norm of its own
    dec.norm.weight.add_(0.5)
    hf, own = HFForward(model), OrtForward(model)
    assert own.decoder.session is not own.encoder.session
    ids, canvas = torch.randint(7, VOCAB, (1, 20)), torch.randint(7, VOCAB, (1, 8))
    ch, co = hf.new_cache(), own.new_cache()
    close(hf.encode(ids, ch, 0), own.encode(ids, co, 0))
    close(hf.decoder_logits(canvas, ch, None), own.decoder_logits(canvas, co, None))
    assert not torch.allclose(own.decoder_logits(canvas, co, None), shared.decoder_logits(canvas, co, None))


@pytest.mark.parametrize("fast", [LeanForward, OrtForward])
@torch.inference_mode()
def test_decoder_layers_read_through_the_encoders_packs_unless_their_weights_differ(fast):
    model = _model()
    shared = fast(model)
    assert all(d is e for d, e in zip(shared.dec_layers, shared.enc_layers))  # one pack of the tied weights
    first = model.model.decoder.layers[0]
    first.self_attn.o_proj = copy.deepcopy(first.self_attn.o_proj)  # a decoder layer with a weight of its own
    first.self_attn.o_proj.weight.add_(0.05)
    hf, own = HFForward(model), fast(model)
    assert own.dec_layers[0] is not own.enc_layers[0] and own.dec_layers[1] is own.enc_layers[1]
    ids, canvas = torch.randint(7, VOCAB, (1, 20)), torch.randint(7, VOCAB, (1, 8))
    ch, co = hf.new_cache(), own.new_cache()
    close(hf.encode(ids, ch, 0), own.encode(ids, co, 0))
    close(hf.decoder_logits(canvas, ch, None), own.decoder_logits(canvas, co, None))


def test_the_lean_forward_keeps_the_models_weights_and_answers_in_one_copy():
    """On a CPU the lean forward re-lays the layers' weights out for speed, in place: the model's values, what
    transformers' modules compute with them, and the memory they take stay as they were."""
    model = _model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(7, VOCAB, (1, 20))
    hf = HFForward(model)
    expected = hf.lm_logits(hf.encode(ids, hf.new_cache(), 0))
    lean = LeanForward(model)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    close(hf.lm_logits(hf.encode(ids, hf.new_cache(), 0)), expected)
    close(lean.lm_logits(lean.encode(ids, lean.new_cache(), 0)), expected)
    layer = model.model.encoder.language_model.layers[0]
    shared = (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight, layer.experts.down_proj)
    assert [w.data_ptr() for w in shared] == [
        w.data_ptr() for w in (lean.enc_layers[0].o, lean.enc_layers[0].down, lean.enc_layers[0].experts_down)
    ]


def test_auto_falls_back_to_transformers_where_lean_cannot_run():
    model = _model(["sliding_attention", "full_attention"], sliding_window=16)
    assert "sliding" in unsupported(model)
    assert make_forward(model, "auto").kind == "hf"
    with pytest.raises(ValueError, match="sliding"):
        make_forward(model, "lean")
    with pytest.raises(ValueError, match="choose one of"):
        make_forward(model, "fast")


def test_auto_takes_the_torch_lean_path_where_onnx_runtime_cannot_run(monkeypatch):
    from dg_model import ort

    assert "float32" in ort.unsupported(_model().half())
    model = _model()
    assert make_forward(model, "auto").kind == "ort"
    monkeypatch.setattr(ort, "_session", lambda model, threads: 1 / 0)  # a runtime that refuses the graph
    assert make_forward(model, "auto").kind == "lean"
    with pytest.raises(ZeroDivisionError):
        make_forward(model, "ort")
    monkeypatch.setattr(ort, "unsupported", lambda model: "no CPU provider")
    assert make_forward(model, "auto").kind == "lean"
    with pytest.raises(ValueError, match="no CPU provider"):
        make_forward(model, "ort")


def test_onnx_runtime_takes_the_spare_core_the_engine_finds(monkeypatch):
    from dg_model import engine as engine_module

    def threads(fwd) -> set[int]:
        sessions = (fwd.encoder.session, fwd.decoder.session, fwd.head)
        return {s.get_session_options().intra_op_num_threads for s in sessions}

    assert threads(make_forward(_model(), "ort", threads=2)) == {2}
    default = load_engine(None)
    settings = replace(default.settings, forward="ort")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    for cores, expected in ((2, {2}), (1, {1})):
        monkeypatch.setattr(engine_module.os, "cpu_count", lambda cores=cores: cores)
        engine = DiffusionEngine(default.model, default.tokenizer, settings, "x")
        assert threads(engine.fwd) == expected and engine._spare_core is (cores > 1)
        hf = DiffusionEngine(default.model, default.tokenizer, replace(settings, forward="hf"), "x")
        assert not hf._spare_core  # transformers' modules are not shared by two threads


def test_auto_keeps_transformers_off_the_cpu():
    model = _model().to("meta")  # no GPU here: any non-CPU device takes the same branch
    assert make_forward(model, "auto").kind == "hf"


def test_the_embedded_model_on_a_cpu_takes_onnx_runtime():
    assert load_engine(None).fwd.kind == "ort"


@pytest.mark.parametrize("fast", ["lean", "ort"])
@pytest.mark.parametrize("mode", ["diffusion", "ar"])
def test_embedded_engine_answers_the_same_on_every_forward(mode, fast):
    default = load_engine(None, mode=mode)
    engine = DiffusionEngine(default.model, default.tokenizer, replace(default.settings, forward=fast), "x", mode=mode)
    assert engine.fwd.kind == fast
    hf = DiffusionEngine(engine.model, engine.tokenizer, replace(engine.settings, forward="hf"), "x", mode=mode)
    assert hf.fwd.kind == "hf"
    prefix = "import os\n\n\ndef read_lines(path):\n    with open(path) as fh:\n        "
    for job in (
        InfillJob(prefix, "\n", kind="line", doc_key="a"),
        InfillJob(prefix + "return fh.read", "\n", kind="block", max_tokens=40, doc_key="a"),
    ):
        assert [c.text for c in engine.infill(job).candidates] == [c.text for c in hf.infill(job).candidates]
    if mode == "diffusion":
        job = RewriteJob(prefix=prefix, block="return fh.readlines()\n", suffix="", doc_key="a")
        assert [c.text for c in engine.rewrite(job).candidates] == [c.text for c in hf.rewrite(job).candidates]


def test_the_transformers_forward_hands_its_cache_over_without_a_deprecated_keyword():
    """transformers 5.24 renamed the modules' `past_key_values` to `cache` (the old name warns until 5.40 removes it):
    the reference forward, and what the engine falls back to, must pass the cache by the name this version takes and
    still fill it."""
    fwd = HFForward(_model())
    cache = fwd.new_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        fwd.encode(torch.tensor([[5, 6, 7, 8]]), cache, 0)
        logits = fwd.decoder_logits(torch.tensor([[9, 10, 11]]), cache, None)
    assert fwd.seq_length(cache) == 4 and logits.shape == (1, 3, VOCAB)
