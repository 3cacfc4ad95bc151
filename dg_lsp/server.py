"""The language server: state shared by the feature handlers, and the helpers every handler uses.

Handlers live in `dg_lsp/features/` (one module per LSP feature) and all have the same shape: get the document ->
convert the position with `DgServer.offset` -> one pipeline call through `DgServer.run` -> convert back ->
`return result or None`. `DgServer.run` is where requests meet the job worker: superseding, `$/cancelRequest`,
stale versions, "model not ready" and out of memory all end there as an empty answer, never an error storm.
Completion requests first go through their answer cache, typing along and debounce (`answers.py`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import FeatureRequestError, JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.workspace import TextDocument

from dg_model.api import Cancelled, EngineError

from . import convert, fallback
from .answers import Answers, SharedJobs
from .engines import Engines, settings_label
from .jobs import JobRunner, ModelNotReady
from .postprocess import Edit
from .settings import Settings

log = logging.getLogger(__name__)

__version__ = "0.1.0"
STATUS_METHOD = "dg/status"
# Open documents of the same language larger than this are not offered to the context builder as snippet sources.
MAX_SNIPPET_DOC_CHARS = 1_000_000


def _check_message(data: dict[str, Any], respond: Callable[..., Any]) -> None:
    """Reject what lsprotocol would accept wrongly: a notification method sent as a request (never answered), and
    a didChange whose text is not a string (lsprotocol turns null into "None" and corrupts the document)."""
    method = data["method"]
    types_for = types.METHOD_TO_TYPES.get(method)
    if "id" in data and types_for is not None and types_for[0].__name__.endswith("Notification"):
        error = JsonRpcInvalidRequest(f"{method} is a notification; it must not carry an id")
        respond(data["id"], error=error.to_response_error())
        raise error
    if method == types.TEXT_DOCUMENT_DID_CHANGE:
        changes = (data.get("params") or {}).get("contentChanges") if isinstance(data.get("params"), dict) else None
        if isinstance(changes, list) and any(
            not isinstance(c, dict) or not isinstance(c.get("text"), str) for c in changes
        ):
            raise JsonRpcInvalidParams("didChange: every contentChanges[i].text must be a string")


class DgProtocol(LanguageServerProtocol):
    """pygls' protocol with LSP-correct incremental sync.

    pygls applies changes with `str.splitlines`, which also breaks lines at form feeds, U+2028 and friends, and
    clamps a too-long character one short on the last line; either corrupts the document for good. Changes go
    through `convert.apply_change` instead, the same conversion requests use, and a change for a document that is
    not open is logged instead of raising inside a notification.
    """

    def structure_message(self, data: dict[str, Any]):
        """pygls drops a request whose params do not deserialize without answering it; JSON-RPC wants an error."""
        if "jsonrpc" in data and isinstance(data.get("method"), str):
            _check_message(data, self._send_response)
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" in data and "method" in data:
                cause = exc.__cause__ or exc
                message = f"invalid params for {data['method']}: {cause}".splitlines()[0]
                self._send_response(data["id"], error=JsonRpcInvalidParams(message).to_response_error())
            raise

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        # pygls 2.1 files a future for every message, notifications included, under a fresh id and never removes
        # it: ~1.6 KB leaked per keystroke. Drop it once the handler is done.
        def done(future, _callback=callback):
            if self._request_futures.get(msg_id) is future:
                del self._request_futures[msg_id]
            _callback(future)

        super()._execute_handler(msg_id, handler, done, args, kwargs)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        uri = params.text_document.uri
        doc = self.workspace.text_documents.get(unquote(uri))
        if doc is None:
            log.warning("didChange for a document that is not open: %s", uri)
            return
        text = doc.source
        for change in params.content_changes:
            text = convert.apply_change(text, change, doc.position_codec)
        self.workspace.put_text_document(
            types.TextDocumentItem(
                uri=doc.uri, language_id=doc.language_id or "", version=params.text_document.version, text=text
            )
        )
        if (user_handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield user_handler, (params,), None


class DgServer(LanguageServer):
    def __init__(self, engines: Engines, base_settings: Settings | None = None) -> None:
        super().__init__(
            "dg-lsp",
            __version__,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=DgProtocol,
        )
        self.engines = engines  # how models load: the configured one, `remote.fallback`'s, the fallback
        # Flags, then initializationOptions merged in at `initialize`; configuration changes merge over this.
        self.base_settings = base_settings or Settings()
        self.settings = self.base_settings
        self.jobs = JobRunner(self.settings.model_wait_ms / 1000)
        self.status: dict[str, str] = {
            "state": "loading",
            "model": settings_label(self.settings),
            "device": self.settings.device,
            "message": "",
        }
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shutdown_requested = False
        self.exit_code = 0
        self.load_generation = 0  # a model load only reports if no newer one started
        self.load_task: asyncio.Future | None = None
        self._starts: tuple[TextDocument | None, list[int]] = (None, [])  # line index of the last document used
        self.answers: Answers = Answers(self)  # completion answers: cache, typing along, debounce
        self.shared_jobs: SharedJobs = SharedJobs()  # requests that would run the same job await one
        # What fallback.py has reported (out of memory, missing grammars), so each is reported once.
        self._dg_fallback: fallback.FallbackState = fallback.FallbackState()

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Errors outside a request (a malformed message, a failing notification handler): logged, and sent as
        window/logMessage. pygls' default pops up a window/showMessage for each, an error storm in the making."""
        log.error("%s: %s", getattr(source, "__name__", source), error)
        if source is not FeatureRequestError:  # request errors already went back as the response
            self.log_message(f"dg-lsp: {error}", types.MessageType.Error)

    # -- documents and positions --

    def document(self, uri: str) -> TextDocument:
        """An open document. Unknown URIs are an error: pygls would silently read the file from disk instead."""
        doc = self.workspace.text_documents.get(unquote(uri))
        if doc is None:
            raise JsonRpcInvalidParams(f"document not open: {uri}")
        return doc

    def offset(self, doc: TextDocument, position: types.Position) -> int:
        """THE position -> offset conversion for requests (see `convert` for the clamping rules)."""
        try:
            return convert.offset_at(doc.source, position, doc.position_codec, self._line_starts(doc))
        except convert.PositionError as exc:
            raise JsonRpcInvalidParams(f"{doc.uri}: {exc}") from exc

    def offsets(self, doc: TextDocument, rng: types.Range) -> tuple[int, int]:
        try:
            return convert.offsets_of(doc.source, rng, doc.position_codec, self._line_starts(doc))
        except convert.PositionError as exc:
            raise JsonRpcInvalidParams(f"{doc.uri}: {exc}") from exc

    def range(self, doc: TextDocument, start: int, end: int) -> types.Range:
        """Offsets into `doc.source` (of this `doc` object: one per version) -> an LSP range."""
        return convert.range_at(doc.source, start, end, doc.position_codec, self._line_starts(doc))

    def _line_starts(self, doc: TextDocument) -> list[int]:
        # Indexing lines costs ~0.1 s for a 5 MB document; a request converts 2-3 positions of one version.
        # Keyed by the document object itself: pygls-side each version is a new object (see `DgProtocol`), and
        # holding it here keeps its identity from being reused.
        if self._starts[0] is not doc:
            self._starts = (doc, convert.line_starts(doc.source))
        return self._starts[1]

    def other_docs(self, doc: TextDocument) -> list[tuple[str, str, str]]:
        """Other open documents of the same language: snippet sources for the context builder."""
        return [
            (d.uri, d.language_id or "", d.source)
            for d in list(self.workspace.text_documents.values())
            if d.uri != doc.uri and d.language_id == doc.language_id and len(d.source) <= MAX_SNIPPET_DOC_CHARS
        ]

    def is_current(self, doc: TextDocument) -> Callable[[], bool]:
        """For the job runner: is `doc` still open at the version the request saw? (Read on the worker thread.)"""
        key, version = unquote(doc.uri), doc.version

        def check() -> bool:
            now = self.workspace.text_documents.get(key)
            return now is not None and now.version == version

        return check

    def forget(self, uri: str, *, closed: bool = False) -> None:
        """The document changed or closed: cancel its jobs (their results would be stale). What was answered stays
        until it closes: answers are keyed by content, and a change may bring that content back."""
        for key in (uri, f"{uri}#rewrite"):
            self.jobs.cancel(key)
        if closed:
            self.answers.forget(uri)

    def clear_cache(self) -> None:
        """Settings or the model changed: no completion answered before stands."""
        self.answers.clear()

    # -- running pipeline calls --

    async def complete(self, doc: TextDocument, offset: int, *, automatic: bool) -> list[Edit]:
        """Completions at `offset`, shared by inline completion and completion (see `answers.py`)."""
        return await self.answers.complete(doc, offset, automatic=automatic)

    async def run(self, key: str, doc: TextDocument, fn: Callable[..., Any], share_key: tuple | None = None) -> Any:
        """Run `fn(engine, cancel)` on the job worker; None when cancelled, superseded, stale, without a model or out
        of memory (which falls back, `fallback.py`).

        A job newer than this one for the same `key` supersedes it. Requests with the same `share_key` await the
        same job; it is cancelled only when all of them are. Any other error stays the request's error.
        """
        submit = functools.partial(self.jobs.submit, key, fn, self.is_current(doc))
        try:
            return await self.shared_jobs.wait(submit, share_key)
        except Cancelled as exc:
            log.debug("%s: %s", key, exc)
        except ModelNotReady as exc:
            log.info("%s: no model yet: %s", key, exc)
        except EngineError as exc:
            log.error("%s: engine error: %s", key, exc)
            self.log_message(f"dg-lsp: model error: {exc}", types.MessageType.Error)
        except fallback.OUT_OF_MEMORY as exc:
            fallback.handle_out_of_memory(self, exc)
        return None

    # -- talking to the user --

    def log_message(self, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
        self.call_in_loop(self.window_log_message, types.LogMessageParams(type=kind, message=message))

    def show_message(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        self.call_in_loop(self.window_show_message, types.ShowMessageParams(type=kind, message=message))

    def set_status(self, state: str, *, device: str | None = None, message: str = "") -> None:
        self.status = {
            "state": state,
            "model": settings_label(self.settings),
            "device": device or self.settings.device,
            "message": message,
        }
        self.call_in_loop(self.protocol.notify, STATUS_METHOD, dict(self.status))

    def call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Writes to the client happen on the event loop thread; loader and worker threads hop over here."""
        loop = self.loop
        if loop is None or _running_in(loop):
            fn(*args)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# A feature's `register(server)`: what `create_server` calls for each feature module.
Register = Callable[[DgServer], None]


def create_server(settings: Settings | None, engines: Engines, extras: Sequence[Register] = ()) -> DgServer:
    """The server with every feature registered, then `extras` (for programs that run dg-lsp with more: the
    benchmarks' probe adds debug requests)."""
    from .features import completion, inline, lifecycle, rewrite

    server = DgServer(engines, settings)
    for feature in (lifecycle, inline, completion, rewrite, fallback):
        feature.register(server)
    for register in extras:
        register(server)
    return server
