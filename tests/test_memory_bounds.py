"""What keeps memory bounded under a typing storm, asserted on behaviour (no timings, no RSS).

A storm cancels a job per keystroke. A cancelled job's exception lands in its future; if its traceback kept the
engine's frames, each cancellation would hold that job's tensors (an expanded KV cache, activations) until a full
garbage collection, which a storm outruns: RSS grew by hundreds of MB a minute (issue 17). The caches that outlive a
job are bounded by count. The end-to-end view is `dg-lsp bench memory` (its smoke test checks the answer cache).
"""

from __future__ import annotations

import gc
import time
import traceback
import weakref
from dataclasses import replace

import pytest
import torch
from fake_engine import FakeEngine

from dg_lsp.jobs import JobRunner
from dg_model.api import Cancelled, EngineError, InfillJob


class Ballast:
    """Stands in for a tensor the engine holds in a local while it decodes."""


@pytest.fixture
def runner():
    r = JobRunner(model_wait_s=2.0)
    r.set_engine(FakeEngine())
    yield r
    r.close()


def _decode(alive: list, exc: BaseException) -> None:
    ballast = Ballast()  # held by this frame only, as a decoder's KV cache is
    alive.append(weakref.ref(ballast))
    raise exc


@pytest.mark.parametrize("exc", [Cancelled("cancelled at step 3"), EngineError("bad job")], ids=["cancelled", "error"])
def test_a_failed_job_does_not_keep_its_frames_locals_alive(runner, exc):
    alive: list = []
    gc.disable()  # what a storm outruns: nothing may depend on a full collection
    try:
        job = runner.submit("doc", lambda engine, cancel: _decode(alive, exc))
        with pytest.raises(type(exc)) as raised:
            job.future.result(5)
        (ref,) = alive
        assert ref() is None, "the job's exception keeps the decoder's locals alive"
    finally:
        gc.enable()
    # ... while the traceback still says where it was raised
    assert "_decode" in "".join(traceback.format_exception(raised.value))


def test_a_chained_cause_lets_go_of_its_frames_too(runner):
    alive: list = []

    def job_fn(engine, cancel):
        try:
            _decode(alive, MemoryError("out of memory"))
        except MemoryError as cause:
            raise EngineError("out of memory, typed") from cause

    job = runner.submit("doc", job_fn)
    with pytest.raises(EngineError):
        job.future.result(5)
    (ref,) = alive
    assert ref() is None


def test_superseded_jobs_in_a_storm_leave_nothing_behind(runner):
    """Jobs for one document, each superseded while it decodes: none of their locals survive them."""
    runner.set_engine(FakeEngine(steps=10_000, step_ms=1))  # runs until superseded
    alive: list = []

    def job_fn(engine, cancel):
        ballast = Ballast()
        alive.append(weakref.ref(ballast))
        return engine.infill(InfillJob(prefix="x", suffix="", cancel=cancel, doc_key="doc"))

    gc.disable()
    try:
        jobs = []
        for i in range(20):
            jobs.append(runner.submit("doc", job_fn))  # supersedes the one decoding
            deadline = time.monotonic() + 10
            while len(alive) <= i:  # until this one is inside the engine
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.001)
        runner.cancel("doc")
        for job in jobs:
            with pytest.raises(Cancelled):
                job.future.result(10)
        assert len(alive) == 20 and all(ref() is None for ref in alive)
    finally:
        gc.enable()


# -- the engine's per-document prompt caches --


@pytest.fixture(scope="module")
def tiny_engine():
    from transformers import DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

    from dg_model.architecture import TINY, build_config
    from dg_model.engine import DiffusionEngine, EngineSettings
    from dg_model.loading import EMBEDDED_DIR
    from dg_model.sampler import SamplerConfig

    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_DIR)
    model = DiffusionGemmaForBlockDiffusion(build_config(tok.vocab_size, 32, **TINY)).eval()
    settings = replace(EngineSettings(sampler=SamplerConfig(max_steps=2)), cached_documents=3)
    return DiffusionEngine(model, tok, settings, name="tiny", mode="ar")


def test_prompt_caches_are_bounded_by_cached_documents(tiny_engine):
    for i in range(8):
        tiny_engine.infill(InfillJob(f"def f{i}(x):\n    return ", "\n", doc_key=f"doc{i}", max_tokens=2))
    # the most recently used documents keep their caches; a job for an evicted one starts afresh
    assert list(tiny_engine.prompts.entries) == ["doc5", "doc6", "doc7"]
    again = tiny_engine.infill(InfillJob("def f0(x):\n    return ", "\n", doc_key="doc0", max_tokens=2))
    assert again.stats.reused_tokens == 0 and len(tiny_engine.prompts.entries) == 3
