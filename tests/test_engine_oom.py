"""Out of memory leaves the engine as one typed error, `EngineOutOfMemory`, whichever library raised it; the server
falls back on that type (tests/test_hardening.py drives that end to end). Tiny random-weight engine."""

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

from dg_model.api import Cancelled, EngineOutOfMemory, InfillJob, RewriteJob, ScoreJob
from dg_model.architecture import TINY, build_config
from dg_model.engine import DiffusionEngine, EngineSettings
from dg_model.loading import EMBEDDED_DIR
from dg_model.sampler import SamplerConfig

JOBS = {
    "infill": InfillJob("def f(x):\n    return ", "\n", doc_key="d"),
    "rewrite": RewriteJob("def f(x):\n", "    return x\n", "\n", doc_key="d"),
    "score": ScoreJob("def f(x):\n", "\n", ["    return x\n"], doc_key="d"),
}


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_DIR)
    model = DiffusionGemmaForBlockDiffusion(build_config(tok.vocab_size, 32, **TINY)).eval()
    return DiffusionEngine(model, tok, EngineSettings(sampler=SamplerConfig(max_steps=2)), name="tiny")


class _Failing:
    """A forward whose every call raises `exc`, as a model call that runs out of memory does."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __getattr__(self, name):
        raise self.exc


def failing(engine, exc, monkeypatch):
    monkeypatch.setattr(engine, "fwd", _Failing(exc))
    return engine


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),  # a kernel library's way of saying it
        type("OutOfMemoryError", (RuntimeError,), {})("CUDA error"),  # a kernel library's own class
    ],
)
@pytest.mark.parametrize("kind", list(JOBS))
def test_out_of_memory_leaves_every_job_kind_as_the_typed_error(engine, monkeypatch, exc, kind):
    failing(engine, exc, monkeypatch)
    with pytest.raises(EngineOutOfMemory) as caught:
        getattr(engine, kind)(JOBS[kind])
    assert caught.value.__cause__ is exc
    assert type(exc).__name__ in str(caught.value) and str(exc) in str(caught.value)
    caught.value.free_memory()  # safe to call, with or without CUDA


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"),
        ValueError("out of range"),
        KeyError("memory"),
        Cancelled("cancelled at step 1"),
    ],
)
def test_other_errors_leave_the_engine_unchanged(engine, monkeypatch, exc):
    failing(engine, exc, monkeypatch)
    with pytest.raises(type(exc)) as caught:
        engine.infill(JOBS["infill"])
    assert caught.value is exc


def test_the_engine_still_answers_without_a_failure(engine):
    result = engine.infill(JOBS["infill"])
    assert result.stats.prompt_tokens > 0 and result.stats.steps > 0
