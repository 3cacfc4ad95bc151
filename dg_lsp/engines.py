"""Where engines come from: the one loading entry point for the server and the CLI sub-commands.

`dg_model` (torch, transformers) is imported only here and only when a model is actually loaded, so the server
starts, answers `initialize` and reports problems even on a machine where the model stack is broken.
"""

from __future__ import annotations

import importlib
import logging
import os

from dg_model.api import Engine, EngineError

log = logging.getLogger(__name__)

FAKE_PREFIX = "fake:"
ALLOW_FAKE_ENV = "DG_LSP_ALLOW_FAKE"


def model_label(model: str | None) -> str:
    if model is None:
        return "embedded"
    return "fake" if model.startswith(FAKE_PREFIX) else model


def settings_label(settings) -> str:
    """What status lines call the configured backend: the served model of a remote server, else `model_label`."""
    if settings.remote.url:
        return settings.remote.model or "remote"
    return model_label(settings.model)


def load_engine(model: str | None, device: str = "auto", quantize: str = "none") -> Engine:
    """Load the engine named by `model` (path, HF id, None for the embedded model). Raises `EngineError`."""
    if model is not None and model.startswith(FAKE_PREFIX):
        return _load_fake(model[len(FAKE_PREFIX) :])
    try:
        loading = importlib.import_module("dg_model.loading")
    except ImportError as exc:
        raise EngineError(
            f"the model package cannot be imported ({exc}); reinstall dg-lsp with its dependencies"
        ) from exc
    return loading.load_engine(model, device=device, quantize=quantize)


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


def _load_fake(spec: str) -> Engine:
    # Test engines drive the real server subprocess in e2e tests; outside tests this prefix is just a bad model name.
    if os.environ.get(ALLOW_FAKE_ENV) != "1":
        raise EngineError(f"'{FAKE_PREFIX}' models are for tests only (set {ALLOW_FAKE_ENV}=1)")
    for name in ("fake_engine", "tests.fake_engine"):
        try:
            module = importlib.import_module(name)
            break
        except ImportError:
            continue
    else:
        raise EngineError("fake engine module not importable; put tests/ on PYTHONPATH")
    return module.from_spec(spec)
