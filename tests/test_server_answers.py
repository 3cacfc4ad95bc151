"""The engine's `JobStats` through the pipeline and out of the server's own log: what benchmarks read."""

from __future__ import annotations

import asyncio
import time

from conftest import fake_spec, session
from fake_engine import FakeEngine, read_events

from dg_bench.session import read_log
from dg_lsp import pipeline
from dg_lsp.settings import Settings

PY = "import math\n\n\ndef area(r):\n    return \n\n\nprint(area(2.0))\n"
AT = PY.index("return ") + len("return ")


def test_the_pipeline_returns_the_engines_stats_beside_the_edits():
    out = pipeline.complete(FakeEngine(texts=["math.pi * r ** 2"], steps=3), PY, AT, "python", Settings())
    assert [e.text for e in out.edits] == ["math.pi * r ** 2"]
    assert out.result is not None and out.result.stats.steps == 3
    assert [c.text for c in out.result.candidates] == ["math.pi * r ** 2"]


def test_no_engine_call_no_stats():
    engine = FakeEngine()
    out = pipeline.complete(engine, PY, AT, "python", Settings(enable={"python": False}))
    assert out == pipeline.Completions([], None) and not engine.calls


async def test_the_server_logs_one_stats_line_per_completion_job(py_uri, tmp_path):
    log = tmp_path / "server.log"
    async with session(
        fake_spec(text="math.pi * r ** 2", steps=3), extra_args=("--log-level", "debug", "--log-file", str(log))
    ) as s:
        s.open(py_uri, PY)
        assert (await s.inline(py_uri, 4, 11)).items
        assert (await s.inline(py_uri, 4, 11)).items  # the same place again: the answer cache, no job
    (record,) = read_log(log).stats
    assert record["kind"] == "infill" and record["outcome"] == "done" and record["doc_key"] == py_uri
    assert record["steps"] == 3 and record["candidates"] == 1


async def test_a_superseded_job_logs_that_it_was_cancelled(py_uri, tmp_path):
    log, events = tmp_path / "server.log", tmp_path / "events.jsonl"
    spec = fake_spec(text="math.pi * r ** 2", steps=50, step_ms=20, record=str(events))
    async with session(spec, extra_args=("--log-level", "debug", "--log-file", str(log))) as s:
        s.open(py_uri, PY)
        first = asyncio.ensure_future(s.inline(py_uri, 4, 11))
        deadline = time.monotonic() + 10
        while not any(e["event"] == "start" for e in read_events(events)) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the engine is denoising the first request
        second = await s.inline(py_uri, 4, 4)  # another place: supersedes the first
        assert not (await first).items and second is not None
    assert [r["outcome"] for r in read_log(log).stats] == ["cancelled", "done"]
