"""The remote backend inside the server: built from settings, its failures visible but harmless.

- `connect(settings)`: a `RemoteEngine` for `remote.url`, the API key from DG_LSP_API_KEY. CLI sub-commands use it
  as it is: a failure is their error message.
- `load(settings, reporter, engines)`: what the server's loader runs instead of loading a model: connect, the
  start-up check (bounded retries: it is idempotent), the local engine (from `engines`) when `remote.fallback` is
  on, all in a `RemoteGuard`.
- `RemoteGuard`: the engine the server gets. A failure (unreachable, key refused, unknown model, HTTP 400, timeout)
  gives ONE window/showMessage and a dg/status naming the URL, and the request answers empty, or from the local
  model with `remote.fallback`. While the server is down, requests get that answer at once without contacting it; it
  is tried again after a back-off (1 s, doubling to 30 s), so a team's editors never storm a recovering server. The
  first answer after an outage puts dg/status back to "ready", and a later failure is shown again. Scoring (Fix,
  Rewrite) has no remote form: the local model scores, or one message says the actions go on unranked. `close()`
  ends the connections when settings replace the engine (`engines.close_engine`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Protocol

from lsprotocol import types

from dg_model.api import Engine, EngineError, InfillJob, JobResult, JobStats, RewriteJob
from dg_model.remote import RemoteConfig, RemoteEngine
from dg_model.remote_counts import estimate_tokens
from dg_model.remote_errors import API_KEY_ENV, RemoteError, display_url, insecure

from .engines import Engines, close_engine

if TYPE_CHECKING:
    from .server import DgServer
    from .settings import Settings

log = logging.getLogger(__name__)

STARTUP_TRIES = 3
MIN_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0
# Shown once per engine, the first time "Fix this block" or "Rewrite this block" needs the model's scores.
UNSCORED = (
    '{url} cannot score code over the OpenAI API, so "Fix this block" uses the checks alone (compiler, '
    'tree-sitter, pyflakes) and "Rewrite this block" offers the first rewrite that parses and passes them, '
    "unranked. Turn on remote.fallback to score with the local model."
)


class Reporter(Protocol):
    """Where the guard tells the user; `ServerReporter` sends LSP messages, tests record them."""

    def show(self, message: str, error: bool) -> None: ...

    def status(self, state: str, message: str) -> None: ...

    def log(self, message: str) -> None: ...


class ServerReporter:
    """The server's own paths: window/showMessage, dg/status (device = the URL) and window/logMessage. Thread-safe:
    `DgServer` hops each write over to the event loop."""

    def __init__(self, ls: DgServer, url: str) -> None:
        self.ls, self.url = ls, display_url(url)

    def show(self, message: str, error: bool) -> None:
        self.ls.show_message(message, types.MessageType.Error if error else types.MessageType.Warning)

    def status(self, state: str, message: str) -> None:
        self.ls.set_status(state, device=self.url, message=message)

    def log(self, message: str) -> None:
        self.ls.log_message(message)


def connect(settings: Settings) -> RemoteEngine:
    r = settings.remote
    assert r.url, "connect() needs remote.url"
    config = RemoteConfig(
        url=r.url, model=r.model, format=r.format, tokenizer=r.tokenizer, timeout_s=r.timeout_ms / 1000
    )
    return RemoteEngine(config, api_key=os.environ.get(API_KEY_ENV) or None)


def load(settings: Settings, reporter: Reporter, engines: Engines) -> RemoteGuard:
    """The server's engine for `settings.remote`. Raises EngineError only for settings that cannot work (a bad URL);
    a server that is down is not a load failure: the guard reports it and keeps trying."""
    engine = connect(settings)
    if insecure(engine.url):
        log.warning("%s is plain http to another machine", engine.url)
        reporter.show(
            f"dg-lsp: {engine.url} is plain http to another machine: code and the API key cross the network "
            "unencrypted. Put the server behind https (docs/remote.md).",
            error=False,
        )
    local = None
    if settings.remote.fallback:
        try:
            local = engines.load(settings.model, settings.device, settings.quantize)
        except EngineError as exc:
            log.error("remote.fallback: the local model failed to load: %s", exc)
            reporter.show(
                f"dg-lsp: remote.fallback is on but the local model failed to load ({exc}); "
                "a failing server will answer empty.",
                error=True,
            )
    guard = RemoteGuard(engine, local, reporter)
    try:
        engine.check(tries=STARTUP_TRIES)
    except RemoteError as exc:
        guard.problem = exc  # shown once the loader has said "ready", so the error is the status that stays
    return guard


def after_ready(engine: Engine | None) -> None:
    """The loader installed `engine` and said "ready": now report a remote server that failed its start-up check."""
    if isinstance(engine, RemoteGuard) and engine.problem is not None:
        engine.failed(engine.problem)


class RemoteGuard:
    """`Engine` over a `RemoteEngine`: remote failures become one message and an empty (or local) answer."""

    def __init__(self, remote: RemoteEngine, local: Engine | None, reporter: Reporter) -> None:
        self.remote, self.local, self.reporter = remote, local, reporter
        self.device = remote.device
        self.problem: RemoteError | None = None  # the start-up check's failure, until `after_ready` reports it
        self._lock = threading.Lock()  # the worker thread and the loader's `after_ready` both report
        self._shown: str | None = None  # kind of the failure last shown; None while the server answers
        self._retry_at = 0.0
        self._backoff = 0.0
        self._told_unscored = False

    @property
    def name(self) -> str:
        return self.remote.name  # the served model's name, known after the first check

    @property
    def down(self) -> bool:
        return self._shown is not None

    def count_tokens(self, text: str) -> int:
        if not self.down:
            return self.remote.count_tokens(text)
        # While the server is down counting must not contact it either; the local model counts for its own prompt.
        return self.local.count_tokens(text) if self.local is not None else estimate_tokens(text)

    def infill(self, job: InfillJob) -> JobResult:
        return self._call("infill", job)

    def rewrite(self, job: RewriteJob) -> JobResult:
        return self._call("rewrite", job)

    def score(self, job):
        """Scoring has no remote form (see RemoteEngine.score): the local model scores when there is one. Without
        one, "Fix this block" and "Rewrite this block" still work, unranked (fix.py, rewrite_block._checked catch the
        EngineError); the user is told so ONCE, the first time they ask."""
        if self.local is not None:
            return self.local.score(job)
        try:
            return self.remote.score(job)
        except EngineError:
            with self._lock:
                first, self._told_unscored = not self._told_unscored, True
            if first:
                self.reporter.show(f"dg-lsp: {UNSCORED.format(url=self.remote.url)}", error=False)
            raise

    def close(self) -> None:
        """Close the remote engine's connections (idempotent, returns at once); the server calls it when settings
        replace this engine."""
        self.remote.close()
        close_engine(self.local)

    def _call(self, method: str, job: InfillJob | RewriteJob) -> JobResult:
        if self.down and time.monotonic() < self._retry_at:
            return self._instead(method, job)  # backing off: no request, no new message
        try:
            result = getattr(self.remote, method)(job)
        except RemoteError as exc:
            self.failed(exc)
            return self._instead(method, job)
        if self.down:
            self._recovered()
        return result

    def _instead(self, method: str, job: InfillJob | RewriteJob) -> JobResult:
        if self.local is not None:
            return getattr(self.local, method)(job)
        return JobResult([], JobStats(mode="remote"))

    def failed(self, exc: RemoteError) -> None:
        with self._lock:
            if exc.kind != "request":  # a rejected request says nothing about the next one: no back-off for it
                self._backoff = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, 2 * self._backoff))
                self._retry_at = time.monotonic() + self._backoff
            if exc.kind == self._shown:
                log.debug("remote still failing: %s", exc)
                return
            self._shown = exc.kind
        meanwhile = (
            f"completing with {self.local.name} meanwhile"
            if self.local is not None
            else "completions are empty until it answers"
        )
        log.error("remote %s: %s (%s)", exc.kind, exc, meanwhile)
        self.reporter.show(f"dg-lsp: {exc} ({meanwhile}).", error=True)
        self.reporter.status("ready" if self.local is not None else "error", f"{exc} ({meanwhile})")

    def _recovered(self) -> None:
        with self._lock:
            self._shown, self._backoff = None, 0.0
        log.info("remote %s answers again", self.remote.url)
        self.reporter.status("ready", f"{self.name} on {self.remote.url}")
        self.reporter.log(f"dg-lsp: {self.remote.url} answers again")
