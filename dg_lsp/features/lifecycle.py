"""Lifecycle: `initialize`, `initialized`, `workspace/didChangeConfiguration`, `shutdown` and `exit`.

- `initialize` reads `initializationOptions` into the typed settings. Capabilities are computed by pygls from the
  registered features; the position encoding is the client's first preference among utf-8/16/32 (utf-16 when it
  states none), and every conversion goes through the document's codec.
- `initialized` starts loading the model on a daemon thread, reported with `$/progress` (when the client supports
  work-done progress) and the custom `dg/status` notification `{state: loading|ready|error, model, device,
  message}`. Requests that arrive meanwhile wait briefly in the job runner, then answer empty.
- A configuration change that touches model/device/quantize reloads the model the same way.
- `shutdown` cancels every job, so a running denoise stops at its next step and the answer is immediate; `exit`
  arms a watchdog so a generation stuck in native code cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from typing import Any

from lsprotocol import types
from pygls.capabilities import get_capability

from dg_model.api import EngineError

from .. import fallback
from ..engines import close_engine, settings_label
from ..jobs import in_daemon_thread
from ..server import DgServer
from ..settings import SECTION, parse_settings

log = logging.getLogger(__name__)

EXIT_GRACE_S = 2.0


def register(server: DgServer) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls: DgServer, params: types.InitializeParams) -> None:
        ls.loop = asyncio.get_running_loop()
        apply_settings(ls, params.initialization_options, source="initializationOptions", reload=False)
        # Later configuration changes merge over flags + initializationOptions, so a client that sends only a
        # partial (or empty) settings push never silently drops what it said at start-up.
        ls.base_settings = ls.settings
        log.info("client %s, position encoding %s", params.client_info, ls.workspace.position_encoding)

    @server.feature(types.INITIALIZED)
    def initialized(ls: DgServer, params: types.InitializedParams) -> None:
        start_loading(ls)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: DgServer, params: types.DidChangeConfigurationParams) -> None:
        # Push-style clients send {"dg": {...}, other sections...}; pull-style ones send null (or no "dg") and
        # expect workspace/configuration. A push without "dg" means no dg settings: back to the base.
        raw = params.settings
        if isinstance(raw, dict) and SECTION in raw:
            section = raw[SECTION]
        elif get_capability(ls.client_capabilities, "workspace.configuration", False):
            try:
                (section,) = await ls.workspace_configuration_async(
                    types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
                )
            except Exception as exc:  # noqa: BLE001 - any client-side failure means "keep the current settings"
                log.warning("workspace/configuration failed: %s", exc)
                return
        else:
            section = None
        apply_settings(ls, section, source="workspace settings", reload=True)

    # pygls keeps the documents (see `DgProtocol` for the sync itself); these only stop work that became useless.
    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DgServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.forget(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DgServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.forget(params.text_document.uri, closed=True)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: DgServer, params: Any) -> None:
        ls.shutdown_requested = True
        ls.jobs.close(timeout=0)

    @server.feature(types.EXIT)
    def exit_(ls: DgServer, params: Any) -> None:
        ls.jobs.close(timeout=0)
        # pygls swallows the SystemExit that carries this code; `dg_lsp.cli.serve` returns it instead.
        ls.exit_code = 0 if ls.shutdown_requested else 1
        watchdog = threading.Timer(EXIT_GRACE_S, os._exit, args=(ls.exit_code,))
        watchdog.daemon = True
        watchdog.start()


def apply_settings(ls: DgServer, raw: Any, *, source: str, reload: bool) -> None:
    """Merge client settings over the base settings; warn once about bad keys; reload the model if needed."""
    settings, bad = parse_settings(raw, ls.base_settings)
    old, ls.settings = ls.settings, settings
    ls.clear_cache()  # cached completions were made under the old settings
    ls.jobs.model_wait_s = settings.model_wait_ms / 1000
    logging.getLogger("dg_lsp").setLevel(settings.log_level.upper())
    if bad:
        names = ", ".join(key if key == SECTION else f"{SECTION}.{key}" for key in bad)
        log.warning("invalid settings in %s: %s", source, names)
        ls.show_message(f"dg-lsp: ignoring invalid setting(s) {names} from {source}; using the default for each")
    if reload and settings.backend_key != old.backend_key:
        log.info("model settings changed: %s -> %s", old.backend_key, settings.backend_key)
        start_loading(ls)


def start_loading(ls: DgServer) -> None:
    ls.load_task = asyncio.ensure_future(load_model(ls))


async def load_model(ls: DgServer) -> None:
    ls.load_generation += 1
    generation, settings = ls.load_generation, ls.settings
    label = settings_label(settings)
    ls.jobs.set_loading()
    ls.set_status("loading", message=f"loading {label}")
    token = await _begin_progress(ls, f"Loading model {label}")
    started = time.monotonic()
    engine, error = None, None
    try:
        if settings.remote.url:  # a server runs the model: connect and check it instead (dg_lsp/remote.py)
            from .. import remote

            reporter = remote.ServerReporter(ls, settings.remote.url)
            engine = await in_daemon_thread(remote.load, settings, reporter, ls.engines)
        else:
            engine = await in_daemon_thread(ls.engines.load, settings.model, settings.device, settings.quantize)
    except EngineError as exc:
        error = str(exc)
    except Exception as exc:  # logged: torch/transformers/OS failures of every kind mean "model unavailable"
        log.exception("loading %s failed", label)
        error = f"{type(exc).__name__}: {exc}"
    if engine is None and generation == ls.load_generation:
        engine, error = await fallback.recover(ls, settings, error)
    elapsed = time.monotonic() - started
    if generation != ls.load_generation:  # settings changed while loading; the newer load reports
        close_engine(engine)
        _end_progress(ls, token, "superseded")
        return
    ls.jobs.set_engine(engine, error)
    ls.clear_cache()
    # The progress bar closes before the status says so: a client that saw "ready" has seen the end of the load.
    _end_progress(ls, token, "ready" if engine is not None else "failed")
    if engine is not None:
        message = f"{engine.name} on {engine.device}, loaded in {elapsed:.1f}s"
        log.info("model ready: %s", message)
        ls.set_status("ready", device=engine.device, message=message)
        ls.log_message(f"dg-lsp: {message}")
        if settings.remote.url:
            from .. import remote

            remote.after_ready(engine)  # a server that failed its start-up check: one message, dg/status error
    else:
        log.error("model %s failed to load: %s", label, error)
        ls.set_status("error", message=error or "")
        ls.show_message(f"dg-lsp: could not load model {label}: {error}", types.MessageType.Error)


async def _begin_progress(ls: DgServer, message: str) -> str | None:
    if not get_capability(ls.client_capabilities, "window.work_done_progress", False):
        return None
    token = f"dg-load-{uuid.uuid4().hex[:8]}"
    try:
        await ls.work_done_progress.create_async(token)
    except Exception as exc:  # noqa: BLE001 - no progress bar is fine; status still goes out as dg/status
        log.debug("work done progress refused: %s", exc)
        return None
    ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="dg-lsp", message=message))
    return token


def _end_progress(ls: DgServer, token: str | None, message: str) -> None:
    if token is not None:
        ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
