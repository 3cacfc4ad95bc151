"""JobRunner without LSP: one worker, superseding, cancellation, stale results, waiting for the model."""

from __future__ import annotations

import threading
import time

import pytest
from fake_engine import FakeEngine

from dg_lsp.jobs import JobRunner, ModelNotReady, Stale
from dg_model.api import Cancelled, InfillJob


def infill(engine, cancel, text="x"):
    return engine.infill(InfillJob(prefix=text, suffix="", cancel=cancel, doc_key=text)).candidates[0].text


@pytest.fixture
def runner():
    r = JobRunner(model_wait_s=2.0)
    yield r
    r.close()


def test_runs_a_job_on_the_worker_thread(runner):
    runner.set_engine(FakeEngine(texts=["done"]))
    seen = []
    job = runner.submit(
        "a", lambda engine, cancel: seen.append(threading.current_thread().name) or infill(engine, cancel)
    )
    assert job.future.result(2) == "done"
    assert seen == ["dg-engine"]


def test_newer_job_for_the_same_key_supersedes_a_running_one(runner):
    engine = FakeEngine(steps=200, step_ms=10)
    runner.set_engine(engine)
    first = runner.submit("doc", infill)
    while not engine.calls:  # wait until the first job is inside the engine
        time.sleep(0.005)
    started = time.monotonic()
    second = runner.submit("doc", lambda e, c: "second")
    with pytest.raises(Cancelled):
        first.future.result(2)
    # The engine checks `cancel` before every 10 ms step: the running denoise stopped within about one step.
    assert time.monotonic() - started < 0.5
    assert first.cancel.is_set()
    assert second.future.result(2) == "second"


def test_superseded_queued_job_never_runs(runner):
    runner.set_engine(FakeEngine(steps=20, step_ms=10))
    blocker = runner.submit("other", infill)  # keeps the worker busy
    ran = []
    queued = runner.submit("doc", lambda e, c: ran.append(1))
    newest = runner.submit("doc", lambda e, c: "newest")
    assert newest.future.result(3) == "newest"
    with pytest.raises(Cancelled):
        queued.future.result(1)
    assert ran == []
    assert blocker.future.result(1) == "pass"


def test_different_keys_do_not_supersede_each_other(runner):
    runner.set_engine(FakeEngine(steps=5, step_ms=5))
    a = runner.submit("a", infill)
    b = runner.submit("b", infill)
    assert a.future.result(2) == b.future.result(2) == "pass"


def test_only_one_job_runs_at_a_time(runner):
    runner.set_engine(FakeEngine())
    active, peak = [0], [0]
    lock = threading.Lock()

    def fn(engine, cancel):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.005)
        with lock:
            active[0] -= 1

    jobs = [runner.submit(f"k{i}", fn) for i in range(10)]
    for job in jobs:
        job.future.result(2)
    assert peak[0] == 1


def test_cancel_by_key_stops_the_running_job(runner):
    runner.set_engine(FakeEngine(steps=500, step_ms=5))
    job = runner.submit("doc", infill)
    time.sleep(0.05)
    runner.cancel("doc")
    with pytest.raises(Cancelled):
        job.future.result(1)


def test_future_cancelled_before_start_skips_the_job(runner):
    runner.set_engine(FakeEngine(steps=10, step_ms=10))
    runner.submit("busy", infill)
    ran = []
    job = runner.submit("doc", lambda e, c: ran.append(1))
    assert job.future.cancel()
    time.sleep(0.3)
    assert ran == []


def test_stale_results_are_dropped(runner):
    runner.set_engine(FakeEngine())
    current = [True]

    def fn(engine, cancel):
        current[0] = False  # the document changes while the job runs
        return "late"

    job = runner.submit("doc", fn, is_current=lambda: current[0])
    with pytest.raises(Stale):
        job.future.result(2)


def test_stale_before_start_does_not_run(runner):
    runner.set_engine(FakeEngine())
    ran = []
    job = runner.submit("doc", lambda e, c: ran.append(1), is_current=lambda: False)
    with pytest.raises(Stale):
        job.future.result(2)
    assert ran == []


def test_waits_for_a_model_that_is_still_loading(runner):
    job = runner.submit("doc", infill)
    time.sleep(0.1)
    runner.set_engine(FakeEngine(texts=["loaded"]))
    assert job.future.result(2) == "loaded"


def test_gives_up_waiting_after_the_budget():
    runner = JobRunner(model_wait_s=0.1)
    try:
        started = time.monotonic()
        job = runner.submit("doc", infill)
        with pytest.raises(ModelNotReady, match="still loading"):
            job.future.result(2)
        assert time.monotonic() - started < 1.0
    finally:
        runner.close()


def test_failed_load_answers_at_once_with_the_reason(runner):
    runner.set_engine(None, error="no weights at /x")
    started = time.monotonic()
    job = runner.submit("doc", infill)
    with pytest.raises(ModelNotReady, match="no weights"):
        job.future.result(2)
    assert time.monotonic() - started < 0.5


def test_reload_makes_new_jobs_wait_for_the_new_engine(runner):
    runner.set_engine(FakeEngine(texts=["old"]))
    runner.set_loading()
    job = runner.submit("doc", infill)
    time.sleep(0.05)
    runner.set_engine(FakeEngine(texts=["new"]))
    assert job.future.result(2) == "new"


def test_cancel_while_waiting_for_the_model(runner):
    job = runner.submit("doc", infill)
    time.sleep(0.05)
    job.cancel.set()
    with pytest.raises(Cancelled):
        job.future.result(1)


def test_engine_errors_reach_the_caller(runner):
    runner.set_engine(FakeEngine())

    def boom(engine, cancel):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        runner.submit("doc", boom).future.result(2)
    # ...and the worker survives it.
    assert runner.submit("doc", infill).future.result(2) == "pass"


def test_close_cancels_running_and_queued_jobs():
    runner = JobRunner()
    runner.set_engine(FakeEngine(steps=1000, step_ms=5))
    running = runner.submit("a", infill)
    queued = runner.submit("b", infill)
    time.sleep(0.05)
    started = time.monotonic()
    runner.close(timeout=1.0)
    for job in (running, queued):
        with pytest.raises(Cancelled):
            job.future.result(1)
    assert time.monotonic() - started < 1.0
    late = runner.submit("c", infill)
    with pytest.raises(Cancelled):
        late.future.result(1)
