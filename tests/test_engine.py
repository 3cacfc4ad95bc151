"""Engine mechanics on a tiny random-weight DiffusionGemma (no training, no download) and on the embedded model."""

import threading
from dataclasses import replace

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache, PreTrainedTokenizerFast

from dg_model import engine as engine_module
from dg_model import rewrite_spans
from dg_model.api import Cancelled, EngineError, InfillJob, RewriteJob
from dg_model.architecture import TINY, build_config
from dg_model.beam import beam_search
from dg_model.engine import DiffusionEngine, EngineSettings
from dg_model.forward import decoder_logits, encode, lm_logits
from dg_model.loading import EMBEDDED_DIR, load_engine
from dg_model.sampler import SamplerConfig


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_DIR)
    model = DiffusionGemmaForBlockDiffusion(build_config(tok.vocab_size, 32, **TINY)).eval()
    return model, tok


def make(tiny, mode="diffusion", **sampler):
    model, tok = tiny
    settings = EngineSettings(sampler=SamplerConfig(**{"max_steps": 4, **sampler}))
    return DiffusionEngine(model, tok, settings, name="tiny", mode=mode)


PREFIX = "import os\n\ndef read(path):\n    with open(path) as fh:\n        return "
SUFFIX = "\n\n\nprint(read('x'))\n"


@torch.no_grad()
def test_cache_reuse_gives_the_logits_of_a_fresh_encode(tiny):
    engine = make(tiny)
    engine.infill(InfillJob(PREFIX, SUFFIX, doc_key="d"))
    result = engine.infill(InfillJob(PREFIX + "fh.re", SUFFIX, doc_key="d"))
    assert result.stats.reused_tokens > result.stats.prompt_tokens - 6
    cached = engine.prompts.entries["d"]
    fresh = DynamicCache(config=tiny[0].config.text_config)
    encode(tiny[0], torch.tensor([cached.ids]), fresh, 0)
    canvas = torch.randint(7, 500, (1, 16))
    a = engine.fwd.decoder_logits(canvas, cached.cache, None)
    b = decoder_logits(tiny[0], canvas, fresh, None)  # transformers' modules on a fresh cache: the reference
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_ar_mode_equals_step_by_step_recomputation(tiny):
    engine = make(tiny, mode="ar")
    job = InfillJob(PREFIX, SUFFIX, kind="block", max_tokens=6)
    text = engine.infill(job).candidates[0].text
    ids = engine.prompts.entries  # AR with no doc_key keeps no cache; recompute greedily from scratch each step
    from dg_model.prompts import build_prompt

    seq = build_prompt(tiny[1], engine.format, PREFIX, SUFFIX, engine.settings.prompt_tokens).ids
    out = []
    for _ in range(6):
        cache = DynamicCache(config=tiny[0].config.text_config)
        hidden = encode(tiny[0], torch.tensor([seq + out]), cache, 0)
        token = int(lm_logits(tiny[0], hidden[:, -1]).argmax())
        if token in engine.eos_ids:
            break
        out.append(token)
    assert text == tiny[1].decode(out)
    assert ids == {}


def test_cancellation_stops_within_one_step(tiny):
    engine = make(tiny, max_steps=50, freeze_accepted=False, confidence=0.0)
    cancel = threading.Event()
    steps = []

    def on_draft(_text):
        steps.append(1)
        if len(steps) == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.infill(InfillJob(PREFIX, SUFFIX, cancel=cancel, on_draft=on_draft))
    assert len(steps) == 2


def test_candidates_are_batched_and_deterministic_under_a_seed(tiny):
    engine = make(tiny)
    job = InfillJob(PREFIX, SUFFIX, n=3, seed=7)
    a = engine.infill(job)
    b = engine.infill(job)
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
    assert 1 <= len(a.candidates) <= 3


def test_pinned_suffix_format_keeps_the_suffix_in_the_canvas(tiny):
    model, tok = tiny
    engine = DiffusionEngine(
        model,
        tok,
        EngineSettings(prompt_format="pinned-suffix", pinned_suffix_tokens=4, sampler=SamplerConfig(max_steps=3)),
        name="tiny",
    )
    drafts = []
    engine.infill(InfillJob(PREFIX, SUFFIX, canvas=16, on_draft=drafts.append))
    pinned_text = tok.decode(tok.encode(SUFFIX, add_special_tokens=False)[:4])
    assert drafts and all(pinned_text in d or d.endswith(pinned_text.rstrip()) for d in drafts[:1])


def test_rewrite_keeps_the_context_and_rejects_oversized_blocks(tiny):
    engine = make(tiny)
    result = engine.rewrite(RewriteJob(prefix=PREFIX, block="fh.read()\n", suffix=SUFFIX, renoise=0.5, doc_key="r"))
    assert result.candidates and result.stats.steps >= 1
    assert engine.prompts.entries["r"].ids[-1] == tiny[1].convert_tokens_to_ids("<fim_middle>")
    with pytest.raises(EngineError):
        engine.rewrite(RewriteJob(prefix="", block="x = 1\n" * 200, suffix="", max_tokens=64))


def test_a_cancelled_rewrite_stops_before_its_next_forward_and_keeps_the_prompt_cache(tiny, monkeypatch):
    engine, cancel = make(tiny), threading.Event()
    read = rewrite_spans.doubted

    def doubted(*args):  # the request is cancelled while the decoder reads the block in place
        cancel.set()
        return read(*args)

    monkeypatch.setattr(engine_module.rewrite_spans, "doubted", doubted)
    writes = []
    monkeypatch.setattr(engine, "_rewrite_logits", lambda *a: writes.append(a) or pytest.fail("wrote after cancel"))
    job = RewriteJob(prefix=PREFIX, block="fh.read()\n", suffix=SUFFIX, doc_key="c", cancel=cancel)
    with pytest.raises(Cancelled):
        engine.rewrite(job)
    assert not writes
    prompt = engine.prompts.entries["c"]
    assert engine.fwd.seq_length(prompt.cache) == len(prompt.ids)  # the cache holds the prompt alone


def test_a_rewrite_reads_its_canvases_in_batches_of_bounded_logits_with_the_same_candidates(tiny, monkeypatch):
    """Rows grow with a block's words and each row with its length: the decoder reads them in batches whose logits
    stay within the budget (one unbounded batch grows with the square of the block), the candidates are those of one
    batch, and a cancel between batches stops the job."""
    engine = make(tiny)
    block = "total = 0\nfor item in items:\n    total += item.price * item.count\nreturn total\n"
    job = RewriteJob(prefix=PREFIX, block=block, suffix=SUFFIX, renoise=0.5, n=2, doc_key="b")
    whole = engine.rewrite(job)
    read, sizes = engine._rewrite_logits, []

    def spy(canvas, cache, self_cond=None):
        logits = read(canvas, cache, self_cond)
        sizes.append(logits.numel())
        return logits

    monkeypatch.setattr(engine, "_rewrite_logits", spy)
    budget = 3 * 2 * 40 * engine.vocab_size  # three rows of two first tokens, 40 slots wide
    monkeypatch.setattr(rewrite_spans, "LOGITS_BUDGET", budget)
    batched = engine.rewrite(job)
    assert len(sizes) > 1 and max(sizes) <= budget
    assert {c.text for c in batched.candidates} == {c.text for c in whole.candidates}
    scored = {c.text: c.score for c in whole.candidates}
    assert all(c.score == pytest.approx(scored[c.text], abs=1e-3) for c in batched.candidates)
    cancel, sizes[:] = threading.Event(), []
    monkeypatch.setattr(engine, "_rewrite_logits", lambda *a: cancel.set() or spy(*a))
    with pytest.raises(Cancelled):
        engine.rewrite(RewriteJob(prefix=PREFIX, block=block, suffix=SUFFIX, renoise=0.5, n=2, cancel=cancel))
    assert len(sizes) == 1  # the first batch's forward, then the cancel


def test_rewrite_writes_doubted_words_afresh_and_pins_every_other_token(tiny, monkeypatch):
    """Self-correction: the words (runs of tokens joined by word characters) the decoder doubts, and those the
    editor's checks point at, are written afresh at several lengths; every other token stays, and no candidate ends
    inside the block (a free canvas let a small model collapse blocks)."""
    engine = make(tiny)
    block = "    total = 0\n    for x in items:\n        totl += x\n    return total\n"
    coded = tiny[1](block, add_special_tokens=False, return_offsets_mapping=True)
    ids, word_of = coded["input_ids"], rewrite_spans.words(block, coded["offset_mapping"])
    seen, plain = [], rewrite_spans.written

    def written(ids_, v, row):
        out = plain(ids_, v, row)
        seen.append((v, out))
        return out

    monkeypatch.setattr(engine_module.rewrite_spans, "written", written)
    misspelt = block.index("totl")
    job = RewriteJob(prefix=PREFIX, block=block, suffix=SUFFIX, renoise=0.1, n=2, suspects=((misspelt, misspelt + 4),))
    result = engine.rewrite(job)
    assert result.candidates and all(c.text != block for c in result.candidates)
    tried = {(v.start, v.end) for v, _ in seen}
    assert tried <= set(word_of)  # whole words only
    assert word_of[next(i for i, (s, e) in enumerate(coded["offset_mapping"]) if s <= misspelt < e)] in tried
    assert len(tried) == 1 + max(1, round(0.1 * len(set(word_of))))  # the suspect's word, then 10% of the words
    for v, out in seen:
        assert out[: v.start] == ids[: v.start] and out[v.start + v.length :] == ids[v.end :]
        assert len(out) == len(ids) - (v.end - v.start) + v.length
        assert not engine.eos_ids & set(out)
    assert {v.length for v, _ in seen} >= {1, 2, 3}


def test_embedded_model_settles_a_canvas_in_few_forwards():
    engine = load_engine(None)
    assert engine.format == "fim-spm" and engine.device == "cpu"
    prefix = "def area(width, height):\n    return width * "
    result = engine.infill(InfillJob(prefix, "\n", kind="block", max_tokens=48))
    assert result.candidates and result.candidates[0].text.split("\n")[0].strip(), "the embedded model produced nothing"
    # A whole 64-token canvas settles in a handful of forwards: parallel decoding with an adaptive stop.
    assert result.stats.steps <= engine.settings.sampler.max_steps < engine.settings.block_canvas // 4


def test_chat_format_for_checkpoints_without_fim_tokens(tiny):
    from dg_model.prompts import CURSOR, build_prompt, choose_format, clean_answer

    model, tok = tiny
    chat_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend_tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    chat_tok.chat_template = (
        "{% for m in messages %}<bos>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}model\n{% endif %}"
    )
    assert choose_format(chat_tok, None) == "fim-spm"  # FIM tokens win when present
    prompt = build_prompt(chat_tok, "chat", PREFIX, SUFFIX, 512)
    text = chat_tok.decode(prompt.ids)
    assert CURSOR in text and "return " in text and "print(read('x'))" in text and text.endswith("model\n")
    assert clean_answer("```python\nfh.read()\n```\nThis reads the file.", "chat") == "fh.read()"
    assert clean_answer("fh.read()", "fim-spm") == "fh.read()"
    engine = DiffusionEngine(
        model, chat_tok, EngineSettings(prompt_format="chat", sampler=SamplerConfig(max_steps=2)), name="tiny-chat"
    )
    assert engine.infill(InfillJob(PREFIX, SUFFIX)).stats.prompt_tokens == len(prompt.ids)


def test_decoding_follows_the_job_then_the_engine_then_the_models_choice_per_kind(tiny):
    model, tok = tiny
    settings = EngineSettings(decoding={"line": "ar", "block": "diffusion"}, sampler=SamplerConfig(max_steps=2))
    auto = DiffusionEngine(model, tok, settings, name="tiny")
    line = InfillJob(PREFIX, SUFFIX, kind="line", max_tokens=4)
    block = InfillJob(PREFIX, SUFFIX, kind="block", max_tokens=4)
    assert auto.infill(line).stats.mode == "ar"
    assert auto.infill(block).stats.mode == "diffusion"
    assert auto.infill(replace(line, decoding="diffusion")).stats.mode == "diffusion"
    forced = DiffusionEngine(model, tok, settings, name="tiny", mode="diffusion")
    assert forced.infill(line).stats.mode == "diffusion"
    assert forced.infill(replace(line, decoding="ar")).stats.mode == "ar"
    with pytest.raises(EngineError, match="unknown decoding"):
        auto.infill(replace(line, decoding="fast"))
    with pytest.raises(EngineError, match="unknown decoding"):
        DiffusionEngine(model, tok, EngineSettings(decoding={"line": "fast"}), name="tiny")


@pytest.mark.parametrize("forward", ["ort", "lean", "hf"])
def test_ar_beams_score_what_a_fresh_encode_scores(tiny, forward, monkeypatch):
    import dg_model.decoders as decoders_module
    from dg_model.beam import ALPHA
    from dg_model.prompts import build_prompt

    model, tok = tiny
    engine = DiffusionEngine(model, tok, EngineSettings(forward=forward, ar_beam=4), name="tiny", mode="ar")
    seen = []
    monkeypatch.setattr(decoders_module, "beam_search", lambda *a, **k: seen.append(beam_search(*a, **k)) or seen[-1])
    job = InfillJob(PREFIX, SUFFIX, kind="block", max_tokens=6, doc_key="doc")
    result = engine.infill(job)
    assert len(result.candidates) > 1, "a beam of 4 returns alternatives even for n=1"
    assert len({c.text for c in result.candidates}) == len(result.candidates)
    scores = [c.score for c in result.candidates if c.text]  # best first; an empty middle, if any, last
    assert scores == sorted(scores, reverse=True) and all(c.text for c in result.candidates[: len(scores)])
    # Every beam's score is its tokens' log-probability under a from-scratch encode: the cache rows were reordered
    # with the beams, not left with the rows they started in.
    prompt = build_prompt(tok, engine.format, PREFIX, SUFFIX, engine.settings.prompt_tokens).ids
    for h in seen[0].hypotheses:
        with torch.no_grad():
            hidden = encode(model, torch.tensor([prompt + h.tokens]), DynamicCache(config=model.config.text_config), 0)
            logp = torch.log_softmax(lm_logits(model, hidden[0, len(prompt) - 1 :]).float(), -1)
        want = [float(logp[i, t]) for i, t in enumerate(h.tokens)]
        if len(h.logprobs) > len(h.tokens):  # it ended on EOS (or pad): that step's log-prob counts too
            assert any(float(logp[len(h.tokens), e]) == pytest.approx(h.logprobs[-1], abs=1e-4) for e in engine.eos_ids)
            want.append(h.logprobs[-1])
        torch.testing.assert_close(torch.tensor(h.logprobs), torch.tensor(want), atol=1e-4, rtol=1e-4)
        assert h.score == pytest.approx(sum(want) / len(want) ** ALPHA, abs=1e-4)
    again = engine.infill(job).candidates  # from the cached prompt: the cache was trimmed back after the beams
    assert [c.text for c in again] == [c.text for c in result.candidates]


def test_block_end_is_the_first_later_line_left_of_the_cursor():
    from dg_model.stops import block_end, cursor_indent

    assert cursor_indent("def f():\n    ") == 4 and cursor_indent("def f():\n    x = 1") == 4
    assert cursor_indent("x") == 0
    body = "x = 1\n    if x:\n        y = 2\n\n    return y"
    assert block_end(body, 4) is None  # deeper lines and blank lines stay in the block
    assert block_end(body + "\n\ndef g():\n", 4) == len(body) + 1  # cut at the break before `def g`
    assert block_end("x = 1\n  ", 4) is None  # a line still blank says nothing yet
    assert block_end("a\nb", 0) is None  # at column 0 nothing is further left


def test_loop_start_keeps_one_copy_of_a_cycle():
    from dg_model.stops import loop_start

    assert loop_start([5] + [1, 2] * 12) == 3  # (1 2) over 24 tokens: keep 5 1 2
    assert loop_start([9] + [7] * 24) == 2
    assert loop_start([5] + [1, 2] * 11) is None  # 22 tokens: could still be a literal such as [0, 0, ...]
    assert loop_start([1, 2, 3, 4, 5, 6, 7] * 3) is None  # three copies of a long cycle are not yet a loop
    assert loop_start([0] + [1, 2, 3, 4, 5, 6, 7] * 4) == 8
    assert loop_start(list(range(30))) is None and loop_start([]) is None
    line = list(range(10, 24))  # a 14-token line, its break included
    assert loop_start([1, 2] + line * 2) is None  # a line written twice may be code
    assert loop_start([1, 2] + line * 3) == 2 + len(line)  # three times is a loop: keep the first copy
    assert loop_start([1, 2] + line * 3 + [5]) is None  # only a cycle that ends the tokens so far


def test_candidates_keep_the_first_then_go_by_score_with_empty_middles_last():
    from dg_model.api import Candidate
    from dg_model.engine import _dedupe

    cands = [Candidate("a", -3.0), Candidate("", -0.1), Candidate("b", -2.0), Candidate("c", -1.0), Candidate("a", 0.0)]
    assert [c.text for c in _dedupe(cands)] == ["a", "c", "b", ""]
    assert _dedupe([]) == []


@pytest.mark.parametrize("forward", ["ort", "lean", "hf"])
@pytest.mark.parametrize("kind", ["line", "block"])
def test_hybrid_decoding_writes_greedy_ar_text(tiny, forward, kind):
    model, tok = tiny
    settings = EngineSettings(forward=forward, ar_beam=1, draft_canvas=6, sampler=SamplerConfig(max_steps=2))
    ar = DiffusionEngine(model, tok, settings, name="tiny", mode="ar")
    hybrid = DiffusionEngine(model, tok, replace(settings, draft_steps=2), name="tiny", mode="hybrid")
    for prefix in (PREFIX, "def add(a, b):\n    ", "x = [1, 2"):
        job = InfillJob(prefix, SUFFIX, kind=kind, max_tokens=12, doc_key="doc")
        want = ar.infill(job)
        got = hybrid.infill(job)
        assert [c.text for c in got.candidates] == [want.candidates[0].text]
        s = got.stats
        assert s.mode == "hybrid" and s.decoder_forwards >= 1 and 0 <= s.accepted <= s.drafted
        assert s.new_tokens == want.stats.new_tokens
        again = hybrid.infill(job)  # from the cached prompt: the cache was trimmed back after the rounds
        assert [c.text for c in again.candidates] == [c.text for c in got.candidates]


def test_a_block_ends_once_it_retypes_the_suffix():
    from dg_model.stops import ended, reaches_suffix

    suffix = "\n    total += x\n    return total\n"
    assert reaches_suffix("total = 0\n    total += x\n    return total\n", suffix)
    assert not reaches_suffix("total = 0\n    total += x\n    return total", suffix)  # last line not complete yet
    assert not reaches_suffix("total = 0\n    total += x\n    total -= 1\n", suffix)  # only the first line repeats
    assert not reaches_suffix("total += x\n", suffix)  # the middle's own first line is never a repeat
    assert reaches_suffix("a\n    total += x\n", "\n    total += x\n")  # a one-line suffix
    assert not reaches_suffix("a\n)\n", "\n    )\n")  # bare punctuation must match with its indentation
    assert ended("total = 0\n    total += x\n    return total\n", "block", 4, suffix)
    assert not ended("total = 0\n    total += x\n    return total\n", "block", 4)  # no suffix given: no such stop


@pytest.mark.parametrize("mode", ["ar", "hybrid", "diffusion"])
@torch.no_grad()
def test_prompt_format_tokens_are_never_written_into_a_middle(tiny, mode):
    engine = make(tiny, mode=mode)
    special = tiny[1].convert_tokens_to_ids("<fim_middle>")
    lm, dec = engine.fwd.lm_logits, engine.fwd.decoder_logits

    def favour(logits):  # a model whose every choice would be <fim_middle>
        logits = logits.clone()
        logits[..., special] = logits.max() + 50
        return logits

    engine.fwd.lm_logits = lambda h: favour(lm(h))
    engine.fwd.decoder_logits = lambda *a: favour(dec(*a))
    result = engine.infill(InfillJob(PREFIX, SUFFIX, kind="block", max_tokens=8))
    texts = [c.text for c in result.candidates]
    assert texts and all("<fim_middle>" not in t for t in texts) and any(t.strip() for t in texts)


@pytest.mark.parametrize("draft", [dict(draft_steps=1, draft_lookup=True), dict(draft_steps=0, draft_lookup=True)])
def test_hybrid_drafts_started_from_the_context_still_write_greedy_ar_text(tiny, draft):
    model, tok = tiny
    settings = EngineSettings(ar_beam=1, draft_canvas=6, sampler=SamplerConfig(max_steps=2))
    ar = DiffusionEngine(model, tok, settings, name="tiny", mode="ar")
    hybrid = DiffusionEngine(model, tok, replace(settings, **draft), name="tiny", mode="hybrid")
    for prefix in (PREFIX, "x = f(a, b)\ny = f(a, b)\nz = f("):
        job = InfillJob(prefix, SUFFIX, kind="block", max_tokens=12, doc_key="doc")
        assert [c.text for c in hybrid.infill(job).candidates] == [ar.infill(job).candidates[0].text]


def test_a_block_out_of_budget_ends_with_its_last_whole_line():
    engine = load_engine(None)
    engine.settings = replace(engine.settings, ar_beam=1)  # greedy: a shorter budget writes a prefix of the same text
    job = InfillJob("def count_words(text):\n    counts = {}\n    ", "\n", kind="block", max_tokens=160, decoding="ar")
    whole = engine.infill(job).candidates[0].text
    assert whole.count("\n") >= 2, whole
    first_line = engine.count_tokens(whole.split("\n")[0])
    for budget in range(first_line + 1, engine.count_tokens(whole), 3):
        text = engine.infill(replace(job, max_tokens=budget)).candidates[0].text
        assert text and whole.startswith(text) and whole[len(text)] == "\n", (budget, text)
    line = engine.infill(replace(job, kind="line", max_tokens=3)).candidates[0].text
    assert line and "\n" not in line and whole.startswith(line)  # a line out of budget keeps what it wrote


def test_only_a_beam_the_user_waits_for_is_pruned(tiny, monkeypatch):
    from dg_model import decoders

    pruned = []

    def spy(*args, **kwargs):
        pruned.append(args[8])  # beam_search's `prune`
        return beam_search(*args, **kwargs)

    monkeypatch.setattr(decoders, "beam_search", spy)
    model, tok = tiny
    settings = EngineSettings(ar_beam=3, invoked_beam=4, beam_prune=[2, 1])
    engine = DiffusionEngine(model, tok, settings, name="tiny", mode="ar")
    engine.infill(InfillJob(PREFIX, SUFFIX, kind="line", max_tokens=4))
    engine.infill(InfillJob(PREFIX, SUFFIX, kind="line", max_tokens=4, invoked=True))
    assert pruned == [None, (2.0, 1.0)]
