"""Degrade instead of failing: when part of the stack breaks, say so once and keep completing with what works.

- The model does not load (weights missing or corrupt, not a DiffusionGemma, k-bit without CUDA or without
  bitsandbytes, ...): `recover` loads the fallback instead (`DgServer.engines.fallback`: dg-lsp's is the embedded
  model on the CPU), shows ONE error message naming the problem
  and the fallback, and the fallback's name (hence dg/status' "ready" message) carries the reason.
- The GPU runs out of memory while serving: the engine raises `EngineOutOfMemory` (dg_model/api.py; which errors of
  its libraries count is the engine's business) and `handle_out_of_memory` shows ONE error message and swaps in the
  same fallback in the background; requests answer empty meanwhile instead of each failing with an internal error.
- A tree-sitter grammar is missing or broken: the context module already falls back to plain-text windows for that
  language; the `textDocument/didOpen` handler registered here tells the user once per language, with the fix.

Hooks (the server calls these; nothing here patches the server):
- `dg_lsp/features/lifecycle.py`, `load_model`, right after the try/except around `ls.engines.load`:
      if engine is None and generation == ls.load_generation:
          engine, error = await fallback.recover(ls, settings, error)
- `dg_lsp/server.py`, `DgServer.run`: `except OUT_OF_MEMORY as exc: fallback.handle_out_of_memory(self, exc)`.
- `dg_lsp/server.py`, `create_server`: `fallback` in the tuple of registered feature modules.
What has been reported lives in `DgServer._dg_fallback`, a `FallbackState`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from dg_model.api import BlockScore, Engine, EngineOutOfMemory, InfillJob, JobResult, RewriteJob, ScoreJob

from . import languages
from .engines import EngineKey, model_label, settings_label
from .jobs import in_daemon_thread

if TYPE_CHECKING:
    from collections.abc import Callable

    from .server import DgServer
    from .settings import Settings

log = logging.getLogger(__name__)

# What counts as out of memory: the engine's typed error, and Python's own when the host runs out outside the engine.
OUT_OF_MEMORY = (EngineOutOfMemory, MemoryError)


@dataclass
class FallbackState:
    """What this server has already told the user, so each problem is reported once."""

    oom_reported: bool = False
    grammars_reported: set[str] = field(default_factory=set)


class FallbackEngine:
    """The fallback engine under a name that says why it serves: dg/status' "ready" message shows it."""

    def __init__(self, engine: Engine, reason: str) -> None:
        self._engine = engine
        self.reason = reason
        self.name = f"{engine.name} (fallback: {reason})"
        self.device = engine.device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def count_tokens(self, text: str) -> int:
        return self._engine.count_tokens(text)

    def infill(self, job: InfillJob) -> JobResult:
        return self._engine.infill(job)

    def rewrite(self, job: RewriteJob) -> JobResult:
        return self._engine.rewrite(job)

    def score(self, job: ScoreJob) -> list[BlockScore]:
        return self._engine.score(job)


def applies(settings: Settings, fallback: EngineKey) -> bool:
    """Whether there is something to fall back to: not when the fallback itself is what failed."""
    if settings.remote.url and not settings.remote.fallback:
        return False  # a remote backend falls back only when asked to (remote.fallback)
    return settings.engine_key != fallback


def _first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ failed load


async def recover(ls: DgServer, settings: Settings, error: str | None) -> tuple[Engine | None, str | None]:
    """After the configured model failed to load with `error`: (the fallback engine, None), or (None, `error`) when
    there is no fallback or it failed too (the loader then reports `error` as before)."""
    if not applies(settings, ls.engines.fallback):
        return None, error
    label = settings_label(settings)
    why = _first_line(error or "unknown error")
    log.error("model %s failed to load (%s); falling back to the embedded model on the CPU", label, why)
    ls.set_status("loading", message=f"{label} failed to load; loading the embedded model on the CPU")
    try:
        engine = await in_daemon_thread(ls.engines.load_fallback, name="dg-fallback")
    except Exception as exc:  # noqa: BLE001 - any failure here means "no fallback either"
        log.error("the fallback model failed to load too: %s: %s", type(exc).__name__, exc)
        return None, error
    ls.show_message(
        f"dg-lsp: could not load model {label}: {why} Completing with the embedded model on the CPU instead; fix the "
        f"model settings and restart (or change dg.model) to use {label}.",
        types.MessageType.Error,
    )
    return FallbackEngine(engine, f"could not load {label}: {why}"), None


# ------------------------------------------------------------------------------------------------ errors while serving


def handle_out_of_memory(ls: DgServer, exc: EngineOutOfMemory | MemoryError) -> None:
    """A job ran out of memory (on the event loop, in `DgServer.run`); the request answers empty. The first time: one
    message, and the fallback engine loads in the background."""
    state = ls._dg_fallback
    if state.oom_reported:
        log.debug("out of memory again (fallback already under way): %s", _first_line(str(exc)))
        return
    state.oom_reported = True
    label = model_label(ls.settings.model)
    # The engine's message already names the error it caught ("OutOfMemoryError: CUDA out of memory. ...").
    why = _first_line(str(exc) if isinstance(exc, EngineOutOfMemory) else f"{type(exc).__name__}: {exc}")
    free_memory = getattr(exc, "free_memory", None)  # not `exc`: its traceback holds the engine being dropped
    log.error("%s ran out of memory: %s", label, why)
    _free(free_memory)
    if (
        not applies(ls.settings, ls.engines.fallback)
        or ls.jobs.engine is None
        or isinstance(ls.jobs.engine, FallbackEngine)
    ):
        ls.show_message(
            f"dg-lsp: {label} ran out of memory ({why}); completions may fail until memory is freed.",
            types.MessageType.Error,
        )
        return
    ls.show_message(
        f"dg-lsp: {label} ran out of GPU memory ({why}). Completing with the embedded model on the CPU instead; "
        "restart the server to try the GPU model again.",
        types.MessageType.Error,
    )
    generation = ls.load_generation
    ls.jobs.set_loading()  # new jobs wait for the fallback; the GPU model is dropped with its last job
    ls.set_status("loading", message=f"{label} ran out of memory; loading the embedded model on the CPU")

    def swap() -> None:
        try:
            engine = ls.engines.load_fallback()
        except Exception as err:  # noqa: BLE001
            message = f"{label} ran out of memory and the embedded model failed to load: {_first_line(str(err))}"
            log.error("%s", message)
            if generation == ls.load_generation:
                ls.jobs.set_engine(None, message)
                ls.set_status("error", message=message)
            return
        if generation != ls.load_generation:  # the settings changed meanwhile; that load reports
            return
        fallback = FallbackEngine(engine, f"{label} ran out of memory")
        _free(free_memory)
        ls.jobs.set_engine(fallback)
        ls.call_in_loop(ls.clear_cache)
        ls.set_status("ready", device=fallback.device, message=f"{fallback.name} on {fallback.device}")

    threading.Thread(target=swap, name="dg-fallback", daemon=True).start()


def _free(free_memory: Callable[[], None] | None) -> None:
    try:
        if free_memory is not None:
            free_memory()
    except Exception:  # noqa: BLE001 - best effort
        pass


# ------------------------------------------------------------------------------------------------ grammars


def grammar_problem(language_id: str | None) -> str | None:
    """Why the tree-sitter grammar for `language_id` does not load, or None when it loads (or none is known)."""
    spec = languages.spec_for(language_id)
    if spec is None or languages.get_language(language_id) is not None:
        return None
    try:
        getattr(importlib.import_module(spec.module), spec.factory)()
    except Exception as exc:  # noqa: BLE001 - the reason, whatever it is
        return f"{type(exc).__name__}: {_first_line(str(exc))}"
    return "the grammar is incompatible with the installed tree-sitter"


def check_grammar(ls: DgServer, language_id: str | None) -> None:
    spec = languages.spec_for(language_id)
    state = ls._dg_fallback
    if spec is None or spec.name in state.grammars_reported:
        return
    state.grammars_reported.add(spec.name)
    problem = grammar_problem(language_id)
    if problem is None:
        return
    package = spec.module.replace("_", "-")
    log.warning("no tree-sitter grammar for %s (%s): plain-text context", spec.name, problem)
    ls.show_message(
        f"dg-lsp: the tree-sitter grammar for {spec.name} is unavailable ({problem}); {spec.name} files get "
        f"plain-text context (completions still work). Fix: pip install --force-reinstall {package}",
        types.MessageType.Warning,
    )
    status = ls.status
    note = f"plain-text context for {spec.name} (no grammar)"
    if note not in status.get("message", ""):
        message = "; ".join(m for m in (status.get("message", ""), note) if m)
        ls.set_status(status["state"], device=status.get("device"), message=message)


def register(server: DgServer) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DgServer, params: types.DidOpenTextDocumentParams) -> None:
        check_grammar(ls, params.text_document.language_id)
