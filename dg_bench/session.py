"""A `dg-lsp --stdio` subprocess driven the way an editor drives it (pygls' `LanguageClient`), for the benchmarks.

`Server` starts the server (through `dg_bench.probe` unless told otherwise), initializes it like a VS Code-ish
client with inline completion, records `dg/status` and `window/showMessage`, and reads the process' memory from
/proc. `Document` is the client's copy of one open document: it types into it with incremental `didChange` and
converts offsets to utf-16 positions on its own (not with `dg_lsp.convert`, which is what is being measured).
`read_log` turns the server's log into counts: engine jobs and their `JobStats`, superseded and cancelled jobs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from dg_lsp.answers import STATS_MARK

from .probe import DOCUMENT_METHOD, MEMORY_METHOD, proc_memory

STATUS_METHOD = "dg/status"


@dataclass
class ServerSpec:
    model: str | None = None  # None: the embedded model
    device: str = "auto"
    quantize: str = "none"
    probe: bool = True  # instrumented server (dg/debug/* requests)
    log_level: str = "debug"  # debug: the job runner's "superseded" lines and the `engine stats` lines
    init_options: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()

    def command(self, log_file: Path) -> list[str]:
        entry = "dg_bench.probe" if self.probe else "dg_lsp.cli"
        cmd = [sys.executable, "-m", entry, "--stdio", "--log-file", str(log_file), "--log-level", self.log_level]
        cmd += ["--device", self.device, "--quantize", self.quantize]
        if self.model is not None:
            cmd += ["--model", self.model]
        return cmd + list(self.extra_args)


def capabilities() -> types.ClientCapabilities:
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
        text_document=types.TextDocumentClientCapabilities(
            synchronization=types.TextDocumentSyncClientCapabilities(),
            inline_completion=types.InlineCompletionClientCapabilities(),
            completion=types.CompletionClientCapabilities(),
        ),
        window=types.WindowClientCapabilities(work_done_progress=False),
    )


class Server:
    def __init__(self, spec: ServerSpec, log_file: Path) -> None:
        self.spec, self.log_file = spec, log_file
        self.client = LanguageClient("dg-bench", "1")
        self.statuses: list[dict[str, Any]] = []
        self.messages: list[tuple[int, str]] = []  # window/showMessage (type, message)
        self._ids = itertools.count(1)
        self._stderr_task: asyncio.Task | None = None

        @self.client.feature(STATUS_METHOD)
        def on_status(params: Any) -> None:
            self.statuses.append(params._asdict() if hasattr(params, "_asdict") else dict(params))

        @self.client.feature(types.WINDOW_SHOW_MESSAGE)
        def on_show(params: types.ShowMessageParams) -> None:
            self.messages.append((int(params.type), params.message))

        @self.client.feature(types.WINDOW_LOG_MESSAGE)
        def on_log(params: types.LogMessageParams) -> None:
            pass

    @property
    def pid(self) -> int:
        return self.client._server.pid  # type: ignore[union-attr]

    async def start(self, workspace: Path) -> types.InitializeResult:
        env = {**os.environ, **self.spec.env}
        await self.client.start_io(*self.spec.command(self.log_file), env=env)
        # start_io pipes stderr; drain it or a chatty server blocks on a full pipe
        self._stderr_task = asyncio.create_task(_drain(self.client._server.stderr))  # type: ignore[union-attr]
        result = await asyncio.wait_for(
            self.client.initialize_async(
                types.InitializeParams(
                    capabilities=capabilities(),
                    root_uri=workspace.resolve().as_uri(),
                    workspace_folders=[types.WorkspaceFolder(uri=workspace.resolve().as_uri(), name=workspace.name)],
                    initialization_options=self.spec.init_options,
                )
            ),
            30,
        )
        return result

    def initialized(self) -> None:
        """Sent separately so a caller can measure the server before the model starts loading."""
        self.client.initialized(types.InitializedParams())

    async def wait_status(self, *states: str, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in reversed(self.statuses):
                if status.get("state") in states:
                    return status
            if self.client._server is not None and self.client._server.returncode is not None:
                raise RuntimeError(f"server exited with {self.client._server.returncode}; see {self.log_file}")
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no dg/status in {states} within {timeout}s; got {self.statuses}")

    async def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        status = await self.wait_status("ready", "error", timeout=timeout)
        if status["state"] == "error":
            raise RuntimeError(f"the model did not load: {status.get('message')}")
        return status

    def next_id(self, prefix: str = "bench") -> str:
        return f"{prefix}-{next(self._ids)}"

    def inline(self, doc: Document, offset: int | None = None, *, automatic: bool = True, msg_id: str | None = None):
        """Send textDocument/inlineCompletion at `offset` (default: the cursor); returns (msg_id, future)."""
        msg_id = msg_id or self.next_id()
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=doc.uri),
            position=doc.position(doc.cursor if offset is None else offset),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic
                if automatic
                else types.InlineCompletionTriggerKind.Invoked
            ),
        )
        future = self.client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)
        # Cancelled requests are answered with an error nobody may read: mark it retrieved (no asyncio warning).
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return msg_id, future

    def cancel(self, msg_id: str) -> None:
        self.client.cancel_request(types.CancelParams(id=msg_id))

    async def debug_memory(self, *, collect: bool = False) -> dict[str, int]:
        """The probe's `dg/debug/memory`; `collect`: after a full garbage collection in the server."""
        params = {"collect": True} if collect else {}
        return _plain(await self.client.protocol.send_request_async(MEMORY_METHOD, params))

    async def debug_document(self, uri: str) -> dict[str, Any] | None:
        result = await self.client.protocol.send_request_async(DOCUMENT_METHOD, {"uri": uri})
        return None if result is None else _plain(result)

    def proc_memory(self) -> dict[str, int]:
        return proc_memory(self.pid)

    async def stop(self, timeout: float = 10.0) -> int | None:
        proc = self.client._server
        try:
            if proc is not None and proc.returncode is None:
                await asyncio.wait_for(self.client.shutdown_async(None), timeout)
                self.client.exit(None)
                await asyncio.wait_for(proc.wait(), timeout)
        except (TimeoutError, RuntimeError, ConnectionError):
            pass
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            await self.client.stop()
            if self._stderr_task is not None:
                self._stderr_task.cancel()
        return proc.returncode if proc is not None else None


def _plain(obj: Any) -> dict[str, Any]:
    """pygls hands results of non-LSP methods over as namedtuples."""
    return obj._asdict() if hasattr(obj, "_asdict") else dict(obj)


async def _drain(stream: asyncio.StreamReader | None) -> None:
    if stream is None:
        return
    while await stream.read(65536):
        pass


# ------------------------------------------------------------------------------------------------ the document


_BREAK = re.compile(r"\r\n|\r|\n")


def _units(s: str) -> int:
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in s)


class Document:
    """The client's copy of an open document, with a cursor; edits go out as incremental didChange."""

    def __init__(self, server: Server, uri: str, text: str, language_id: str = "python") -> None:
        self.server, self.uri, self.text, self.language_id = server, uri, text, language_id
        self.version, self.cursor = 1, 0

    def open(self) -> None:
        self.server.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=self.uri, language_id=self.language_id, version=self.version, text=self.text
                )
            )
        )

    def close(self) -> None:
        self.server.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=self.uri))
        )

    def position(self, offset: int) -> types.Position:
        line_start, line = 0, 0
        for m in _BREAK.finditer(self.text, 0, offset + 1):
            if m.end() > offset:  # the break after the cursor, or the cursor between "\r" and "\n"
                break
            line_start, line = m.end(), line + 1
        return types.Position(line=line, character=_units(self.text[line_start:offset]))

    def insert(self, s: str) -> None:
        """Type `s` at the cursor (one didChange) and move the cursor after it."""
        self.edit(self.cursor, self.cursor, s)

    def edit(self, start: int, end: int, new_text: str) -> None:
        """Replace text[start:end] (one incremental didChange); the cursor ends after the new text."""
        rng = types.Range(start=self.position(start), end=self.position(end))
        self.text = self.text[:start] + new_text + self.text[end:]
        self.cursor = start + len(new_text)
        self.version += 1
        self.server.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                content_changes=[types.TextDocumentContentChangePartial(range=rng, text=new_text)],
            )
        )


# ------------------------------------------------------------------------------------------------ the server log


@dataclass
class LogSummary:
    stats: list[dict[str, Any]]  # one per completion job that asked the engine (the server's `engine stats` lines)
    superseded: int  # jobs replaced by a newer one for the same document (job runner)
    cancelled: int  # jobs that ended as cancelled / superseded / stale on the server
    errors: list[str]  # ERROR lines
    typed_ahead: int = 0  # requests answered from the last suggestion without a model call (dg_lsp.typeahead)


_CANCELLED = re.compile(r": (cancelled or superseded|document changed|cancelled at step \d+|cancelled while waiting)")


def read_log(path: Path) -> LogSummary:
    stats, errors = [], []
    superseded = cancelled = typed_ahead = 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        if STATS_MARK in line:
            try:
                stats.append(json.loads(line.split(STATS_MARK, 1)[1]))
            except ValueError:
                continue
        elif re.search(r"job for .* superseded", line):
            superseded += 1
        elif " typed ahead: " in line:
            typed_ahead += 1
        elif _CANCELLED.search(line):
            cancelled += 1
        elif " ERROR " in line:
            errors.append(line)
    return LogSummary(stats, superseded, cancelled, errors, typed_ahead)


# ------------------------------------------------------------------------------------------------ numbers


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": sum(values) / len(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # NaN is not JSON; null says "no data"
    path.write_text(json.dumps(_no_nan(data), indent=2) + "\n", encoding="utf-8")


def _no_nan(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x
