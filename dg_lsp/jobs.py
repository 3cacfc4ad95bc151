"""Engine calls off the event loop, on ONE worker thread, because the model is not re-entrant.

The server submits one job per request, keyed by document URI. A newer job for the same key supersedes the older
one: its `cancel` event is set, so a running denoise stops at its next decoder step (the engine raises `Cancelled`)
and a queued one never starts. A job whose document moved on (`is_current()` false) is dropped rather than answered
with edits for text that no longer exists. Until the model has loaded, a job waits at most `model_wait_s` from its
submission and then fails with `ModelNotReady`, which handlers turn into an empty answer.

Nothing here knows about LSP, so it is tested with plain threads and a fake engine.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from dg_model.api import Cancelled, Engine

from .engines import close_engine

log = logging.getLogger(__name__)

JobFn = Callable[[Engine, threading.Event], Any]


class ModelNotReady(Exception):
    """No engine yet (still loading past the wait budget) or loading failed; the message says which."""


class Stale(Cancelled):
    """The document changed while the job waited or ran; its result would not apply."""


@dataclass(eq=False)
class Job:
    key: str
    fn: JobFn
    is_current: Callable[[], bool] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)


class JobRunner:
    def __init__(self, model_wait_s: float = 2.0) -> None:
        self.model_wait_s = model_wait_s
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._latest: dict[str, Job] = {}  # newest job per key, queued or running
        self._engine: Engine | None = None
        self._error: str | None = None
        self._loading = True
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dg-engine", daemon=True)
        self._thread.start()

    # -- engine state (set by the loader thread) --

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def set_loading(self) -> None:
        """A (re)load started: new jobs wait for it instead of using the engine being replaced, which is closed (a
        remote engine's connections and thread; a request still running on it finishes first)."""
        with self._cond:
            old, self._engine, self._error, self._loading = self._engine, None, None, True
            self._cond.notify_all()
        close_engine(old)

    def set_engine(self, engine: Engine | None, error: str | None = None) -> None:
        with self._cond:
            old, self._engine, self._error, self._loading = self._engine, engine, error, False
            self._cond.notify_all()
        if old is not engine:
            close_engine(old)

    # -- jobs --

    def submit(self, key: str, fn: JobFn, is_current: Callable[[], bool] | None = None) -> Job:
        job = Job(key=key, fn=fn, is_current=is_current)
        with self._cond:
            if self._closed:
                job.future.set_exception(Cancelled("server is shutting down"))
                return job
            if (older := self._latest.get(key)) is not None:
                log.debug("job for %s superseded", key)
                older.cancel.set()
            self._latest[key] = job
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, key: str) -> None:
        """Cancel the newest job for `key` (a document changed or closed: its answer would be dropped anyway)."""
        with self._cond:
            if (job := self._latest.get(key)) is not None:
                job.cancel.set()
            self._cond.notify_all()

    def cancel_all(self) -> None:
        with self._cond:
            for job in list(self._latest.values()) + list(self._queue):
                job.cancel.set()
            self._cond.notify_all()

    def close(self, timeout: float = 0.5) -> None:
        """Cancel everything and stop the worker; a generation stuck in native code is left to the daemon flag."""
        with self._cond:
            self._closed = True
        self.cancel_all()
        self._thread.join(timeout)

    # -- worker --

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    pending, self._queue = list(self._queue), deque()
                    break
                job = self._queue.popleft()
            self._execute(job)
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(Cancelled("server is shutting down"))

    def _execute(self, job: Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return  # the request was cancelled before the job started
        try:
            engine = self._wait_for_engine(job)
            self._check(job)
            result = job.fn(engine, job.cancel)
            self._check(job)  # finished, but a newer request or an edit made the answer useless
            job.future.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - every outcome, errors included, belongs to the caller
            _drop_locals(exc)
            job.future.set_exception(exc)
        finally:
            with self._cond:
                if self._latest.get(job.key) is job:
                    del self._latest[job.key]

    @staticmethod
    def _check(job: Job) -> None:
        if job.cancel.is_set():
            raise Cancelled("cancelled or superseded")
        if job.is_current is not None and not job.is_current():
            raise Stale("document changed")

    def _wait_for_engine(self, job: Job) -> Engine:
        deadline = job.submitted + self.model_wait_s
        with self._cond:
            # Polls `cancel` (an Event the condition does not see) every 50 ms; only while the model loads.
            while self._engine is None and self._loading and not self._closed and not job.cancel.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.05))
            if self._engine is not None:
                return self._engine
            if job.cancel.is_set() or self._closed:
                raise Cancelled("cancelled while waiting for the model")
            raise ModelNotReady(self._error or "the model is still loading")


def _drop_locals(first: BaseException) -> None:
    """Let go of what the frames of a failed job held: the traceback still says where it was raised, but no longer
    keeps the engine's locals alive (an expanded KV cache, activations: ~12 MB for the embedded model's beam of 3).

    The exception goes into the job's future, and its traceback holds `_execute`'s frame, which holds the job, which
    holds the future: a reference cycle that only a full garbage collection frees, and a typing storm cancels jobs
    far faster than those run (RSS grew by ~300 MB in 40 s)."""
    seen: set[int] = set()
    exc: BaseException | None = first
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)  # skips the frames still running (this one's caller)
        exc = exc.__cause__ or exc.__context__


def in_daemon_thread(fn: Callable[..., Any], *args: Any, name: str = "dg-load") -> asyncio.Future:
    """Run `fn` on a daemon thread: unlike the loop's executor, it never delays exit while a model loads."""
    future: Future = Future()

    def target() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return asyncio.wrap_future(future)
