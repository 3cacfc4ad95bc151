"""Re-ranking candidates by the suffix's next line: the split of the suffix, and the engine's use of it."""

import threading
from dataclasses import replace

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

from dg_model.api import Cancelled, InfillJob, ScoreJob
from dg_model.architecture import TINY, build_config
from dg_model.engine import DiffusionEngine, EngineSettings
from dg_model.loading import EMBEDDED_DIR
from dg_model.prompt_cache import PromptCaches
from dg_model.rescore import NextLineReader, followed_by, split_next_line


@pytest.mark.parametrize(
    ("suffix", "split"),
    [
        # the next line, and what follows it
        ("\n        return True\n    return False\n", ("\n        return True", "\n    return False\n")),
        # the rest of the cursor's line comes along; blank lines are skipped
        (")\n\n    x = 1\n", (")\n\n    x = 1", "\n")),
        ("\n    last", ("\n    last", "")),
        # nothing to read: no next line, only blank ones, or one too far away
        ("", None),
        ("rest of the line", None),
        ("\n\n  \n", None),
        ("\n" * 500 + "x = 1\n", None),
    ],
)
def test_split_next_line(suffix, split):
    assert split_next_line(suffix) == split


def test_followed_by_reads_as_the_file_would():
    # a finished line's break is the head's own; mid-line, the head's text continues the middle's
    assert followed_by("if x:\n        ", "\n        return True") == "if x:\n        return True"
    assert followed_by("if x:", "\n        return True") == "if x:\n        return True"
    assert followed_by("f(a, ", "b)\n    y = 2") == "f(a, b)\n    y = 2"


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_DIR)
    model = DiffusionGemmaForBlockDiffusion(build_config(tok.vocab_size, 32, **TINY)).eval()
    return DiffusionEngine(model, tok, EngineSettings(next_line_rescore=True), name="tiny", mode="ar")


PREFIX = "def total(xs):\n    "
SUFFIX = "\n        t += x\n    return t\n"


def _rescore(engine: DiffusionEngine, job: InfillJob, texts: list[str]) -> tuple[list[str], list[float]]:
    reader = engine._reader(job)
    try:
        return reader.ranked(texts)
    finally:
        reader.close()


def _prompt_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dg-prompt"]


@torch.inference_mode()
def test_candidates_are_ranked_by_the_likelihood_of_the_next_line_after_them(engine):
    texts = ["t = 0", "for x in xs:", "return 0"]
    ranked, scores = _rescore(engine, InfillJob(PREFIX, SUFFIX, doc_key="d"), texts)
    # the same readings asked directly: each middle with the next line, the rest of the suffix as the suffix
    direct = engine.score(ScoreJob(PREFIX, "\n    return t\n", [t + "\n        t += x" for t in texts], detail=False))
    expected = sorted(zip(texts, (d.logprob for d in direct)), key=lambda p: -p[1])
    assert ranked == [t for t, _ in expected]
    assert scores == pytest.approx([s for _, s in expected], abs=1e-3)
    assert scores == sorted(scores, reverse=True)


@torch.inference_mode()
def test_infill_reports_the_rescoring(engine):
    wide = DiffusionEngine(engine.model, engine.tokenizer, replace(engine.settings, ar_beam=3), name="tiny", mode="ar")
    result = wide.infill(InfillJob(PREFIX, SUFFIX, kind="line", max_tokens=6, n=3, invoked=True))
    assert len({c.text for c in result.candidates}) == len(result.candidates) > 1
    assert result.stats.rescore_ms > 0
    # while typing, the candidates come as the beam ranked them, at no extra cost
    typing = wide.infill(InfillJob(PREFIX, SUFFIX, kind="line", max_tokens=6, n=3))
    assert typing.stats.rescore_ms == 0
    # no next line: ranked by the likelihood of each as the whole middle
    texts = ["return 0", "t = 0\n    for x in xs:"]
    ranked, scores = _rescore(wide, InfillJob(PREFIX, "\n"), texts)
    direct = [s.logprob for s in wide.score(ScoreJob(PREFIX, "\n", texts, detail=False))]
    assert scores == pytest.approx(sorted(direct, reverse=True), abs=1e-3)
    assert ranked == [t for _, t in sorted(zip(direct, texts), reverse=True)]


def test_an_invoked_job_gets_the_wider_beam(engine):
    settings = replace(engine.settings, ar_beam=2, invoked_beam=5)
    wide = DiffusionEngine(engine.model, engine.tokenizer, settings, name="tiny", mode="ar")
    assert wide.beam_width(InfillJob(PREFIX, SUFFIX)) == 2
    assert wide.beam_width(InfillJob(PREFIX, SUFFIX, invoked=True)) == 5
    assert wide.beam_width(InfillJob(PREFIX, SUFFIX, n=7)) == 7  # the job's own candidates, whatever the rest
    plain = DiffusionEngine(engine.model, engine.tokenizer, replace(settings, invoked_beam=0), name="tiny", mode="ar")
    assert plain.beam_width(InfillJob(PREFIX, SUFFIX, invoked=True)) == 2


@pytest.mark.parametrize("spare_core", [False, True])
@torch.inference_mode()
def test_the_rescoring_prompt_read_beside_the_decoding_changes_nothing_and_outlives_no_job(engine, spare_core):
    wide = DiffusionEngine(engine.model, engine.tokenizer, replace(engine.settings, ar_beam=3), name="tiny", mode="ar")
    wide._spare_core = spare_core
    job = InfillJob(PREFIX, SUFFIX, kind="line", max_tokens=6, n=3, invoked=True, doc_key="d")
    result = wide.infill(job)
    # the candidates and scores of the rescoring prompt read after the decoding, on this thread
    serial = DiffusionEngine(engine.model, engine.tokenizer, wide.settings, name="tiny", mode="ar")
    serial._spare_core = False
    assert result.candidates == serial.infill(job).candidates
    assert not _prompt_threads()
    # the document keeps both prompts: the next request re-reads neither
    rest = wide.prompts.entries["d\0rest"]
    assert rest.ids == wide._infill_prompt(job, "\n    return t\n").ids
    assert _rescore(wide, job, ["t = 0", "return 0"])[0]  # reads through the kept cache
    # a job cancelled while it decodes waits for the prompt's thread, whose work is kept for the next request
    cancel = threading.Event()
    cancel.set()
    wide.prompts.entries.clear()
    with pytest.raises(Cancelled):
        wide.infill(replace(job, cancel=cancel))
    assert not _prompt_threads()
    assert ("d\0rest" in wide.prompts.entries) is spare_core


@torch.inference_mode()
def test_the_rescoring_prompt_is_read_once_the_jobs_own_prompt_is(engine):
    # the job's prompt takes both cores (ONNX Runtime's products); only then does the rescoring prompt take one
    order: list[str] = []

    class Recording(PromptCaches):
        def lease(self, key, ids):
            order.append(f"lease {key!r}")
            return super().lease(key, ids)

        def encode(self, key, ids):
            encoded = super().encode(key, ids)
            order.append(f"read {key!r}")
            return encoded

    wide = DiffusionEngine(engine.model, engine.tokenizer, replace(engine.settings, ar_beam=3), name="tiny", mode="ar")
    wide._spare_core = True
    wide.prompts = Recording(wide.fwd, wide.device, capacity=4)
    wide.infill(InfillJob(PREFIX, SUFFIX, kind="line", max_tokens=6, n=3, invoked=True, doc_key="d"))
    assert order[:3] == ["lease 'd'", "read 'd'", "lease 'd\\x00rest'"]
    assert not _prompt_threads()


def test_a_prompt_that_fails_on_its_thread_fails_the_caller_and_is_not_kept():
    class Failing:
        def new_cache(self):
            return []

        def trim(self, cache, length):
            pass

        def encode(self, ids, cache, start, last_only=False):
            raise MemoryError("no room")

    caches = PromptCaches(Failing(), "cpu", capacity=2)
    reader = NextLineReader(caches, "d", [1, 2, 3], "\n    x", lambda prompt, blocks: [0.0] * len(blocks), beside=True)
    with pytest.raises(MemoryError, match="no room"):
        reader.ranked(["a = 1", "b = 2"])
    reader.close()
    assert not caches.entries and not _prompt_threads()
