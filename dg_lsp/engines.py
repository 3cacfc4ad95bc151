"""Where engines come from: the one loading entry point for the server and the CLI sub-commands.

`dg_model` (torch, transformers) is imported only here and only when a model is actually loaded, so the server
starts, answers `initialize` and reports problems even on a machine where the model stack is broken.

Everything that loads a model (the server, its fallback, `remote.fallback`, the sub-commands) calls `load_engine`,
which loads with `load_local` unless a program that embeds dg-lsp installed another loader with `use_loader` (the
tests' `tests/fake_server.py` runs the real server that way on a stand-in engine).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from dg_model.api import Engine, EngineError

log = logging.getLogger(__name__)

# (model, device, quantize) -> the engine; raises EngineError for a model a user can fix.
Loader = Callable[[str | None, str, str], Engine]


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


_loader: Loader = load_local


def load_engine(model: str | None, device: str = "auto", quantize: str = "none") -> Engine:
    """Load the engine named by `model` with the installed loader (`load_local` unless `use_loader` replaced it).
    Raises `EngineError`."""
    return _loader(model, device, quantize)


def use_loader(loader: Loader) -> Loader:
    """Load every engine of this process with `loader` from now on; returns the loader it replaces."""
    global _loader
    previous, _loader = _loader, loader
    return previous


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
