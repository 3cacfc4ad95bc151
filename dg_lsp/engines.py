"""Where engines come from: `Engines`, how a program that runs dg-lsp loads models, decided once and passed down.

`dg_model` (torch, transformers) is imported only here and only when a model is actually loaded, so the server
starts, answers `initialize` and reports problems even on a machine where the model stack is broken.

`cli.main` takes an `Engines` (`LOCAL` unless its caller passes another) and hands it on: the server keeps it as
`DgServer.engines` for its loader, its fallback and `remote.fallback`; sub-commands get it as their second argument
(`engine_from`, `doctor`). The tests' `tests/fake_server.py` passes one that loads JSON models as a stand-in engine.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from dg_model.api import Engine, EngineError

log = logging.getLogger(__name__)

# (model, device, quantize) -> the engine; raises EngineError for a model a user can fix.
Loader = Callable[[str | None, str, str], Engine]
# What names an engine to load: (model, device, quantize).
EngineKey = tuple[str | None, str, str]
# What serves when the configured model cannot: the embedded model, on the CPU, unquantized.
EMBEDDED_ON_CPU: EngineKey = (None, "cpu", "none")


def model_label(model: str | None) -> str:
    return "embedded" if model is None else model


def settings_label(settings) -> str:
    """What status lines call the configured backend: the served model of a remote server, else `model_label`."""
    if settings.remote.url:
        return settings.remote.model or "remote"
    return model_label(settings.model)


def load_local(model: str | None, device: str = "auto", quantize: str = "none") -> Engine:
    """Load the model `model` names (path, HF id, None for the embedded model) into this process. Raises
    `EngineError`."""
    try:
        loading = importlib.import_module("dg_model.loading")
    except ImportError as exc:
        raise EngineError(
            f"the model package cannot be imported ({exc}); reinstall dg-lsp with its dependencies"
        ) from exc
    return loading.load_engine(model, device=device, quantize=quantize)


@dataclass(frozen=True)
class Engines:
    """How this process loads engines: `loader` for every model, `fallback` the engine that serves when the
    configured one fails to load or runs out of memory (`fallback.py`)."""

    loader: Loader = load_local
    fallback: EngineKey = EMBEDDED_ON_CPU

    def load(self, model: str | None, device: str = "auto", quantize: str = "none") -> Engine:
        """The engine `model` names. Raises `EngineError`."""
        return self.loader(model, device, quantize)

    def load_fallback(self) -> Engine:
        return self.loader(*self.fallback)


# dg-lsp's own: every model from `dg_model.loading`, the embedded model on the CPU as the fallback.
LOCAL = Engines()


def close_engine(engine: Engine | None) -> None:
    """Release what a replaced engine holds besides memory: a remote engine's connections and thread (an engine in
    this process has nothing to close). Any engine, any thread, any number of times; it returns at once (a request
    still running on `engine` finishes first) and never raises."""
    close = getattr(engine, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception as exc:  # noqa: BLE001 - closing the old engine must never fail installing the new one
        log.warning("closing %s failed: %s", getattr(engine, "name", "the old engine"), exc)
