"""Hardening: the server survives abuse through a real stdio connection.

1. Fuzzing (hypothesis) with raw JSON-RPC frames written to the server's stdin: malformed frames and headers, wrong
   param types, random methods and ids, out-of-range positions, surrogate halves, huge and empty documents, random
   incremental edit sequences. After each example the server still answers, and its copy of every document (read back
   with the probe's `dg/debug/document`) equals the client's model, which applies edits with its own position code.
2. Typing storm: 50 edits + inline completion requests per second (debounce off, no client-side cancels: the worst
   case for the job runner). Every request is answered, answers do not slow down over time, superseded jobs are
   cancelled rather than run to the end, no job is left running, and RSS stays flat.
3. Fault injection: weights missing or corrupt, bitsandbytes missing, a tree-sitter grammar missing, CUDA out of
   memory: the server stays up, reports ONE error (window/showMessage and dg/status) and falls back (the embedded
   model on the CPU; plain-text context) instead of failing every request.
4. Security: TCP on loopback unless told otherwise, no network use at run time, no file outside the workspace read
   for context unless it is an open document.

Servers run as `python -m dg_bench.probe` (the real `dg-lsp` plus the debug requests) or `-m dg_lsp.cli`, or, with
the fake engine of `tests/fake_engine.py`, as `tests/fake_server.py [--probe]` (the same server); engine faults are
the fake engine's (`oom`, `boom`), other faults are injected by modules put first on the server's PYTHONPATH (a
`tree_sitter_python` that fails to import, a `sitecustomize` that forbids sockets and audits file opens). Fast variants
run by default (< 1 minute); the long ones are marked slow.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_SERVER, REPO, fake_spec, server_env
from fake_engine import read_events
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from lsprotocol.types import METHOD_TO_TYPES

from dg_lsp import cli

FUZZ_EXAMPLES = 30
EMBEDDED = REPO / "dg_model" / "embedded"
PY = "def add(a, b):\n    return \n"
INLINE = "textDocument/inlineCompletion"


# ------------------------------------------------------------------------------------------------ a raw client


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawServer:
    """A server subprocess spoken to in raw JSON-RPC frames (a test may write anything to its stdin)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, *args, "--stdio", "--log-file", str(log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.responses: dict[str, dict[str, Any]] = {}
        self.answered_at: dict[str, float] = {}  # monotonic time each response arrived
        self.notifications: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.ids = itertools.count(1)
        self.write_lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    # -- transport --

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    with self.cond:
                        self.cond.notify_all()
                    return
                if line in (b"\r\n", b"\n"):
                    break
                m = re.match(rb"Content-Length: (\d+)", line)
                if m:
                    length = int(m.group(1))
            if length is None:
                continue
            msg = json.loads(out.read(length))
            if "method" in msg and "id" in msg:  # a request from the server: accept it blandly
                items = (msg.get("params") or {}).get("items")
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": [None] * len(items) if items else None})
                continue
            with self.cond:
                if "method" in msg:
                    self.notifications.append(msg)
                else:
                    key = json.dumps(msg.get("id"), sort_keys=True)
                    self.responses[key] = msg
                    self.answered_at[key] = time.monotonic()
                self.cond.notify_all()

    def write(self, data: bytes) -> None:
        with self.write_lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def send(self, msg: dict[str, Any]) -> None:
        self.write(frame(json.dumps(msg).encode()))

    # -- messages --

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def request_async(self, method: str, params: Any, msg_id: Any = None) -> Any:
        msg_id = f"h-{next(self.ids)}" if msg_id is None else msg_id
        msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not ...:
            msg["params"] = params
        self.send(msg)
        return msg_id

    def wait(self, msg_id: Any, timeout: float = 15.0) -> dict[str, Any]:
        key = json.dumps(msg_id, sort_keys=True)
        deadline = time.monotonic() + timeout
        with self.cond:
            while key not in self.responses:
                left = deadline - time.monotonic()
                assert self.alive(), f"the server exited with {self.proc.returncode}; log:\n{self.log_tail()}"
                assert left > 0, f"no answer to {msg_id!r} within {timeout}s; log:\n{self.log_tail()}"
                self.cond.wait(min(left, 0.2))
            return self.responses.pop(key)

    def request(self, method: str, params: Any, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait(self.request_async(method, params), timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def shown(self, kind: int | None = None) -> list[str]:
        with self.cond:
            return [
                n["params"]["message"]
                for n in self.notifications
                if n["method"] == "window/showMessage" and (kind is None or n["params"]["type"] == kind)
            ]

    def statuses(self) -> list[dict[str, Any]]:
        with self.cond:
            return [n["params"] for n in self.notifications if n["method"] == "dg/status"]

    def wait_status(self, *states: str, timeout: float = 60.0, where: Any = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.statuses():
                if status["state"] in states and (where is None or where(status)):
                    return status
            assert self.alive(), f"the server exited with {self.proc.returncode}; log:\n{self.log_tail()}"
            time.sleep(0.02)
        raise AssertionError(f"no dg/status in {states} within {timeout}s: {self.statuses()}\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- LSP --

    def initialize(self, root: Path, options: Any = None) -> dict[str, Any]:
        caps = {
            "textDocument": {"inlineCompletion": {}, "synchronization": {}},
            "general": {"positionEncodings": ["utf-16"]},
        }
        answer = self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": root.as_uri(),
                "capabilities": caps,
                "initializationOptions": options,
            },
        )
        assert "result" in answer, answer
        self.notify("initialized", {})
        return answer["result"]

    def open(self, uri: str, text: str, language_id: str = "python", version: int = 1) -> None:
        self.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": language_id, "version": version, "text": text}},
        )

    def inline_params(self, uri: str, line: int, character: int, invoked: bool = True) -> dict[str, Any]:
        return {
            "textDocument": {"uri": uri},
            "position": {"line": line, "character": character},
            "context": {"triggerKind": 1 if invoked else 2},
        }

    def document(self, uri: str) -> dict[str, Any] | None:
        answer = self.request("dg/debug/document", {"uri": uri})
        assert "result" in answer, answer
        return answer["result"]

    def close(self, timeout: float = 10.0) -> int | None:
        try:
            if self.alive():
                self.request_async("shutdown", ...)
                time.sleep(0.05)
                self.notify("exit", None)
                self.proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired, AssertionError):
            pass
        finally:
            if self.alive():
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# A fast fake fallback for fault tests (`tests/fake_server.py --fallback`) instead of the embedded model.
FAKE_FALLBACK = {"text": "fallback()"}


def start(
    tmp: Path,
    *args: str,
    fake: dict[str, Any] | None = None,
    probe: bool = True,
    shims: Path | None = None,
    env: dict[str, str] | None = None,
    log_level: str = "info",
    fallback_to: dict[str, Any] | None = None,
) -> RawServer:
    """The server with the `fake` engine (tests/fake_server.py), or without one dg-lsp itself on its real models."""
    base = server_env()
    if shims is not None:
        base["PYTHONPATH"] = os.pathsep.join([str(shims), base["PYTHONPATH"]])
    if fake is None and fallback_to is None:
        entry = ["-m", "dg_bench.probe" if probe else "dg_lsp.cli"]
    else:
        entry = [str(FAKE_SERVER), *(["--probe"] if probe else [])]
        if fallback_to is not None:
            entry += ["--fallback", json.dumps(fallback_to)]
    argv = [*entry, "--log-level", log_level, *args]
    if fake is not None:
        argv += ["--model", json.dumps(fake)]
    return RawServer(argv, {**base, **(env or {})}, tmp / f"server-{time.monotonic_ns()}.log")


# ------------------------------------------------------------------------------------------------ the client's model


_BREAK = re.compile(r"\r\n|\r|\n")


def wire(text: str) -> str:
    """What the server decodes from `text` sent as JSON (ensure_ascii): escaped surrogate pairs combine."""
    return json.loads(json.dumps(text))


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le", "surrogatepass")


def uint(value: Any) -> int | None:
    """A position field as lsprotocol structures it: leniently ("3" -> 3, 1.5 -> 1, true -> 1), then range-checked
    (uinteger is 0..2**31-1); None when the field does not structure and the notification is dropped."""
    try:
        n = int(value) if isinstance(value, (bool, int, float, str)) else None
    except (ValueError, OverflowError):
        return None
    return n if n is not None and 0 <= n < 2**31 else None


def model_offset(text: str, pos: dict[str, Any]) -> int:
    """LSP utf-16 position -> offset, per the spec and the server's documented clamping: a line past the end means
    the end of the document, a character past the end of its line (or inside a surrogate pair) rounds down."""
    starts = [0] + [m.end() for m in _BREAK.finditer(text)]
    line, character = uint(pos["line"]), uint(pos["character"])
    assert line is not None and character is not None
    if line >= len(starts):
        return len(text)
    start = starts[line]
    m = _BREAK.search(text, start)
    end = m.start() if m else len(text)
    units = 0
    for i in range(start, end):
        width = 2 if ord(text[i]) > 0xFFFF else 1
        if units + width > character:
            return i
        units += width
    return end


def model_apply(text: str, change: dict[str, Any]) -> str:
    if "range" not in change:
        return wire(change["text"])
    a = model_offset(text, change["range"]["start"])
    b = max(a, model_offset(text, change["range"]["end"]))
    return text[:a] + wire(change["text"]) + text[b:]


def well_formed(change: Any) -> bool:
    """Whether lsprotocol will accept this content change (else the whole notification is dropped)."""
    if not isinstance(change, dict) or not isinstance(change.get("text"), str):
        return False
    if "range" not in change:
        return True
    rng = change["range"]
    if not isinstance(rng, dict):
        return False
    for key in ("start", "end"):
        p = rng.get(key)
        if not isinstance(p, dict) or set(p) != {"line", "character"}:
            return False
        if any(uint(p[k]) is None for k in ("line", "character")):
            return False
    return True


# ------------------------------------------------------------------------------------------------ strategies


PIECES = [
    "a",
    "b",
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "é",
    "😀",
    "\ud83d",
    "\ude00",
    "\ud800",
    "\udfff",
    "\x00",
    "\x0c",
    "\u2028",
    "\x85",
    "}",
    "def f():\n    return ",
    "\ufeff",
    "\U0001f600x",
]
texts = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)
SIZES = {"as drawn": 1, "empty": 0, "big": 500, "huge": 200_000}  # huge: MBs
documents = st.tuples(texts, st.sampled_from(list(SIZES))).map(
    lambda t: "" if t[1] == "empty" else t[0] if t[1] == "as drawn" else (t[0] + "x = 1\n") * SIZES[t[1]]
)
positions = st.fixed_dictionaries(
    {
        "line": st.one_of(st.integers(0, 6), st.integers(0, 2**31 - 1)),
        "character": st.one_of(st.integers(0, 12), st.integers(0, 2**31 - 1)),
    }
)
bad_positions = st.fixed_dictionaries(
    {
        "line": st.one_of(st.integers(-5, -1), st.just(2**31), st.text(max_size=2), st.none(), st.floats()),
        "character": st.integers(0, 3),
    }
)
changes = st.one_of(
    st.fixed_dictionaries({"range": st.fixed_dictionaries({"start": positions, "end": positions}), "text": texts}),
    st.fixed_dictionaries({"text": texts}),  # whole document
)
# (a non-string "text" is left out: see test_did_change_with_non_string_text_is_dropped)
bad_changes = st.one_of(
    st.fixed_dictionaries({"range": st.fixed_dictionaries({"start": bad_positions, "end": positions}), "text": texts}),
    st.fixed_dictionaries({"range": st.text(max_size=3), "text": texts}),
    st.fixed_dictionaries({"range": st.fixed_dictionaries({"start": positions}), "text": texts}),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
# Methods a fuzzer may call with any params: everything but the lifecycle (initialize/shutdown/exit) and settings.
METHODS = [
    INLINE,
    "textDocument/completion",
    "textDocument/codeAction",
    "codeAction/resolve",
    "workspace/executeCommand",
    "textDocument/hover",
    "dg/debug/document",
    "$/cancelRequest",
    "textDocument/didSave",
    "$/setTrace",
    "workspace/didChangeWatchedFiles",
]


LIFECYCLE = ("initialize", "initialized", "shutdown", "exit")
_FUZZ_IDS = itertools.count(1)


@st.composite
def garbage_frames(draw) -> bytes:
    """Frames that are broken but self-delimiting, each followed by a line break (a conforming reader resyncs)."""
    body = draw(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [
                    b"{",
                    b"[]",
                    b"null",
                    b"42",
                    b'"x"',
                    b"{}",
                    b'{"jsonrpc": "2.0"}',
                    b"\xff\xfe{}",
                    b'{"jsonrpc": "2.0", "method": 5}',
                    b'{"jsonrpc": "1.0", "id": 1}',
                    b'{"jsonrpc":"2.0","id":[1],"method":"textDocument/hover"}',
                    b'{"jsonrpc":"2.0","method":"textDocument/didChange","params":"x"}',
                ]
            ),
            json_values.map(lambda v: json.dumps(v).encode()),
        )
    )
    kind = draw(st.sampled_from(["body", "no-length", "bad-length", "extra-header", "zero"]))
    if kind == "body":
        raw = frame(body)
    elif kind == "no-length":
        raw = b"Content-Type: application/json\r\n\r\n"
    elif kind == "bad-length":
        raw = b"Content-Length: abc\r\n\r\n"
    elif kind == "zero":
        raw = b"Content-Length: 0\r\n\r\n"
    else:
        header = b"Content-Length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" % len(body)
        raw = header + body
    return raw + b"\r\n"


def is_notification(method: str) -> bool:
    types = METHOD_TO_TYPES.get(method)
    return types is not None and types[0].__name__.endswith("Notification")


@st.composite
def mangled_requests(draw, uri: str) -> dict[str, Any]:
    method = draw(st.one_of(st.sampled_from(METHODS), st.text(max_size=12).filter(lambda m: m not in LIFECYCLE)))
    good = {"textDocument": {"uri": uri}, "position": draw(positions), "context": {"triggerKind": 1}}
    params = draw(
        st.one_of(
            json_values,
            st.just(good),
            st.builds(lambda k, v: {**good, k: v}, st.sampled_from(list(good)), json_values),
            st.builds(lambda p: {**good, "position": p}, bad_positions),
            st.just(
                {
                    "textDocument": {"uri": "file:///etc/passwd"},
                    "position": {"line": 0, "character": 0},
                    "context": {"triggerKind": 1},
                }
            ),
        )
    )
    # ids are unique among requests in flight (JSON-RPC requires it), whatever their type
    n = next(_FUZZ_IDS)
    msg_id = draw(
        st.one_of(st.integers(0, 999).map(lambda k: n * 1000 + k), st.text(max_size=6).map(lambda s: f"fz{n}-{s}"))
    )
    return {"method": method, "params": params, "id": msg_id}


# ------------------------------------------------------------------------------------------------ 1. fuzzing


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    server = start(tmp, fake=fake_spec(text="a + b", steps=2), log_level="warning")
    server.initialize(tmp)
    server.wait_status("ready")
    server.uris = itertools.count()  # type: ignore[attr-defined]
    server.tmp = tmp  # type: ignore[attr-defined]
    yield server
    assert server.alive(), server.log_tail()
    server.close()


def still_answers(server: RawServer) -> None:
    uri = (server.tmp / f"alive-{next(server.uris)}.py").as_uri()  # type: ignore[attr-defined]
    server.open(uri, PY)
    answer = server.request(INLINE, server.inline_params(uri, 1, 11))
    assert answer.get("result", {}).get("items", [{}])[0].get("insertText") == "a + b", answer
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


def fuzz_settings(n: int):
    # The default run neither shrinks (a failing example is printed with its draws; shrinking through a subprocess
    # can take minutes) nor varies from run to run; the slow run explores and shrinks.
    quick = n <= FUZZ_EXAMPLES
    phases = (Phase.explicit, Phase.generate) if quick else tuple(Phase)
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=quick,
        database=None,
        phases=phases,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.large_base_example,
        ],
    )


def _fuzz_protocol(server: RawServer, data: st.DataObject) -> None:
    uri = (server.tmp / f"doc-{next(server.uris)}.py").as_uri()  # type: ignore[attr-defined]
    server.open(uri, PY)
    expect: list[Any] = []
    for _ in range(data.draw(st.integers(1, 6), label="actions")):
        if data.draw(st.booleans(), label="garbage?"):
            server.write(data.draw(garbage_frames(), label="frame"))
        else:
            msg = data.draw(mangled_requests(uri), label="request")
            server.request_async(msg["method"], msg["params"], msg["id"])
            if not is_notification(msg["method"]):  # see test_request_for_a_notification_method_is_answered
                expect.append(msg["id"])
    for msg_id in expect:  # every well-formed request gets a result or an error
        answer = server.wait(msg_id)
        assert ("result" in answer) != ("error" in answer), answer
    still_answers(server)
    doc = server.document(uri)
    assert doc is not None and doc["text"] == PY, doc
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


def _fuzz_document(server: RawServer, data: st.DataObject) -> None:
    uri = (server.tmp / f"doc-{next(server.uris)}.py").as_uri()  # type: ignore[attr-defined]
    text = data.draw(documents, label="document")
    event(
        "document: "
        + ("empty" if not text else "small" if len(text) < 10_000 else "big" if len(text) < 10**6 else "huge")
    )
    model, version = wire(text), 1
    server.open(uri, text)
    for _ in range(data.draw(st.integers(0, 12), label="edits")):
        batch = data.draw(
            st.lists(st.one_of(changes, changes, changes, bad_changes), min_size=1, max_size=3), label="didChange"
        )
        if data.draw(st.integers(0, 9), label="garbage?") == 0:
            server.write(data.draw(garbage_frames(), label="frame"))
        version += 1
        server.notify(
            "textDocument/didChange", {"textDocument": {"uri": uri, "version": version}, "contentChanges": batch}
        )
        if all(well_formed(c) for c in batch):
            for change in batch:
                model = model_apply(model, change)
        else:
            version -= 1  # the notification does not deserialize: dropped whole, as it must be
    pos = data.draw(positions, label="inline at")
    answer = server.request(INLINE, server.inline_params(uri, pos["line"], pos["character"]))
    assert "result" in answer or answer["error"]["code"] == -32602, answer  # InvalidParams: line past the end
    doc = server.document(uri)
    assert doc is not None, "the document was lost"
    assert utf16(wire(doc["text"])) == utf16(model), (len(doc["text"]), len(model))
    assert doc["version"] == version
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert server.document(uri) is None


@fuzz_settings(FUZZ_EXAMPLES)
@given(data=st.data())
def test_fuzz_raw_frames_and_requests(fuzz_server, data):
    _fuzz_protocol(fuzz_server, data)


@fuzz_settings(FUZZ_EXAMPLES)
@given(data=st.data())
def test_fuzz_documents_stay_in_sync(fuzz_server, data):
    _fuzz_document(fuzz_server, data)


@pytest.mark.slow
@fuzz_settings(400)
@given(data=st.data())
def test_fuzz_big_run(fuzz_server, data):
    (_fuzz_protocol if data.draw(st.booleans()) else _fuzz_document)(fuzz_server, data)


def test_request_for_a_notification_method_is_answered(fuzz_server):
    msg_id = fuzz_server.request_async("textDocument/didSave", {"textDocument": {"uri": "file:///x.py"}})
    answer = fuzz_server.wait(msg_id, timeout=3)
    assert "error" in answer


@pytest.mark.parametrize("text", [None, 5])
def test_did_change_with_non_string_text_is_dropped(fuzz_server, text):
    uri = (fuzz_server.tmp / f"text-{next(fuzz_server.uris)}.py").as_uri()
    fuzz_server.open(uri, PY)
    for change in (
        {"text": text},
        {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}, "text": text},
    ):
        fuzz_server.notify(
            "textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [change]}
        )
    assert fuzz_server.document(uri) == {"text": PY, "version": 1}


def test_fuzz_survivor_has_one_shown_message_at_most(fuzz_server):
    """Garbage is logged (window/logMessage), never popped up per message: no showMessage storm."""
    still_answers(fuzz_server)
    assert len(fuzz_server.shown(1)) <= 1, fuzz_server.shown(1)


# ------------------------------------------------------------------------------------------------ 2. typing storm


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def typing_storm(tmp: Path, seconds: float, per_second: int = 50) -> None:
    record = tmp / "events.jsonl"
    steps, step_ms = 10, 10  # a job takes ~100 ms: five keystrokes arrive while it runs
    server = start(
        tmp,
        fake=fake_spec(text="a + b", steps=steps, step_ms=step_ms, record=str(record), keep_calls=4),
        log_level="warning",
    )
    try:
        server.initialize(tmp, {"debounceMs": 0})
        server.wait_status("ready")
        uri = (tmp / "storm.py").as_uri()
        source = Path(textwrap.__file__).read_text()
        server.open(uri, source + "\n")
        line = source.count("\n")
        sent: list[tuple[Any, float]] = []
        samples: list[int] = []
        interval = 1.0 / per_second
        began = time.monotonic()
        i = 0
        while time.monotonic() - began < seconds:
            ch = "abc "[i % 4]
            server.notify(
                "textDocument/didChange",
                {
                    "textDocument": {"uri": uri, "version": i + 2},
                    "contentChanges": [
                        {
                            "range": {"start": {"line": line, "character": i}, "end": {"line": line, "character": i}},
                            "text": ch,
                        }
                    ],
                },
            )
            sent.append(
                (server.request_async(INLINE, server.inline_params(uri, line, i + 1, invoked=False)), time.monotonic())
            )
            i += 1
            if i % per_second == 0:
                samples.append(rss(server.proc.pid))
            time.sleep(max(0.0, began + i * interval - time.monotonic()))
        for msg_id, _ in sent:  # every request is answered
            answer = server.wait(msg_id, timeout=30)
            assert "result" in answer, answer
        final = server.request(INLINE, server.inline_params(uri, line, i))  # the queue has drained
        assert "result" in final
        doc = server.document(uri)
        assert doc is not None and doc["text"].endswith("".join("abc "[k % 4] for k in range(i)) + "\n")
        latencies = [server.answered_at[json.dumps(m)] - t0 for m, t0 in sent]
    finally:
        server.close()
    events = read_events(record)
    starts = [e for e in events if e["event"] == "start"]
    ended = [e for e in events if e["event"] in ("done", "cancelled")]
    cancelled = [e for e in events if e["event"] == "cancelled"]
    assert len(starts) == len(ended), "a job was left running"
    assert len(starts) <= len(sent) + 1
    # superseded jobs are cancelled (at a step boundary), not run to the end: with a keystroke every 20 ms and a
    # 100 ms job, almost every job is superseded
    assert len(cancelled) >= 0.5 * (len(starts) - 1), (len(cancelled), len(starts))
    assert all(e["step"] < steps for e in cancelled)
    # no backlog: the last third of the answers is not slower than the first third (relative, with slack)
    third = len(latencies) // 3
    first, last = sorted(latencies[:third]), sorted(latencies[-third:])
    print(
        f"storm: {len(sent)} requests in {seconds} s, jobs {len(starts)} started, {len(cancelled)} cancelled; "
        f"answer p50 first third {first[len(first) // 2] * 1000:.0f} ms, last third {last[len(last) // 2] * 1000:.0f}"
        f" ms; RSS MiB {[x // 2**20 for x in samples]}"
    )
    assert last[len(last) // 2] <= 3 * first[len(first) // 2] + 0.25, (first[len(first) // 2], last[len(last) // 2])
    # memory flat: RSS grows by less than 16 MiB (the exact leak check is test_notifications_leave_nothing_behind)
    assert samples and max(samples[1:] or samples) - samples[0] < 16 * 2**20, [s // 2**20 for s in samples]


def test_typing_storm_10s(tmp_path):
    typing_storm(tmp_path, 10)


def test_notifications_leave_nothing_behind(tmp_path):
    server = start(tmp_path, fake=fake_spec(), log_level="warning")
    try:
        server.initialize(tmp_path)
        server.wait_status("ready")
        uri = (tmp_path / "n.py").as_uri()
        server.open(uri, PY)
        before = server.request("dg/debug/memory", {})["result"]["request_futures"]
        for i in range(200):
            server.notify(
                "textDocument/didChange",
                {
                    "textDocument": {"uri": uri, "version": i + 2},
                    "contentChanges": [
                        {
                            "range": {"start": {"line": 1, "character": 11}, "end": {"line": 1, "character": 11}},
                            "text": "x",
                        }
                    ],
                },
            )
        after = server.request("dg/debug/memory", {})["result"]
        assert after["documents"] == 1
        assert after["request_futures"] - before < 10, after
    finally:
        server.close()


@pytest.mark.slow
def test_typing_storm_60s(tmp_path):
    typing_storm(tmp_path, 60)


# ------------------------------------------------------------------------------------------------ 3. fault injection


def one_error_then_fallback(server: RawServer, tmp: Path, mentions: str, fake_fallback: bool) -> None:
    """The server reports the fault once and keeps completing with the fallback (the embedded model on the CPU, or
    the fake one standing in for it)."""
    server.initialize(tmp)
    status = server.wait_status("ready", "error", timeout=90)
    assert status["state"] == "ready", status  # serving with the fallback, not stuck in "error"
    uri = (tmp / "f.py").as_uri()
    server.open(uri, PY)
    answer = server.request(INLINE, server.inline_params(uri, 1, 11), timeout=60)
    assert "result" in answer, answer  # never an error per request
    errors = server.shown(1)
    assert len(errors) == 1 and mentions in errors[0], errors
    assert server.alive()
    assert status["device"] == "cpu" and "fallback" in status["message"] and mentions in status["message"], status
    answer = server.request(INLINE, server.inline_params(uri, 1, 11), timeout=60)
    assert "result" in answer, answer
    if fake_fallback:
        assert answer["result"]["items"][0]["insertText"] == "fallback()", answer
    assert len(server.shown(1)) == 1


def test_missing_weights_fall_back_to_the_embedded_model(tmp_path):
    missing = tmp_path / "no-such-model"
    server = start(tmp_path, "--model", str(missing), "--device", "cpu")  # the real fallback, end to end
    try:
        one_error_then_fallback(server, tmp_path, str(missing), fake_fallback=False)
    finally:
        server.close()


def test_corrupt_weights_fall_back_to_the_embedded_model(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(EMBEDDED / name, broken / name)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + os.urandom(4096))
    server = start(tmp_path, "--model", str(broken), "--device", "cpu", fallback_to=FAKE_FALLBACK)
    try:
        one_error_then_fallback(server, tmp_path, "broken-model", fake_fallback=True)
    finally:
        server.close()


def failing_import(tmp_path: Path, module: str, message: str) -> Path:
    """A directory to put first on the server's PYTHONPATH, holding a `module` whose import fails with `message`."""
    shims = tmp_path / "shims"
    (shims / module).mkdir(parents=True)
    (shims / module / "__init__.py").write_text(f"raise ImportError({message!r})\n")
    return shims


def test_missing_bitsandbytes_falls_back_to_the_embedded_model(tmp_path):
    shims = failing_import(tmp_path, "bitsandbytes", "No module named bitsandbytes (test)")
    server = start(tmp_path, "--model", str(EMBEDDED), "--quantize", "4bit", shims=shims, fallback_to=FAKE_FALLBACK)
    try:
        one_error_then_fallback(server, tmp_path, "4bit", fake_fallback=True)
    finally:
        server.close()


@contextlib.contextmanager
def failing_gpu_engine(tmp_path: Path, fault: str) -> Iterator[tuple[RawServer, str, Path]]:
    """A ready server on a fake "cuda:0" engine whose every job fails with `fault` ("oom", "boom"), a fake fallback,
    and f.py open: (server, f.py's URI, the engine's event record)."""
    record = tmp_path / "events.jsonl"
    server = start(
        tmp_path,
        fake={fault: True, "device": "cuda:0", "text": "a + b", "record": str(record)},
        fallback_to=FAKE_FALLBACK,
    )
    try:
        server.initialize(tmp_path)
        server.wait_status("ready")
        uri = (tmp_path / "f.py").as_uri()
        server.open(uri, PY)
        yield server, uri, record
    finally:
        server.close()


def test_cuda_out_of_memory_reports_once_and_falls_back(tmp_path):
    with failing_gpu_engine(tmp_path, "oom") as (server, uri, record):
        answers = [server.request(INLINE, server.inline_params(uri, 1, 11), timeout=60) for _ in range(3)]
        assert any(e["event"] == "oom" for e in read_events(record))
        assert server.alive()
        assert all("result" in a for a in answers), answers  # answered (empty) while the fallback loads
        status = server.wait_status("ready", "error", timeout=90, where=lambda s: s["device"] == "cpu")
        errors = server.shown(1)
        assert len(errors) == 1 and "out of" in errors[0] and "Tried to allocate 2.00 GiB" in errors[0], errors
        assert status["device"] == "cpu" and "fallback" in status["message"], status
        # the engine's memory given back at the first failure and again once the fallback serves
        assert sum(e["event"] == "freed" for e in read_events(record)) == 2, read_events(record)
        server.open(uri2 := (tmp_path / "g.py").as_uri(), PY)
        answer = server.request(INLINE, server.inline_params(uri2, 1, 11), timeout=60)
        assert answer["result"]["items"][0]["insertText"] == "fallback()", answer
        assert len(server.shown(1)) == 1


def test_any_other_engine_error_stays_the_request_error_and_nothing_falls_back(tmp_path):
    """Only out of memory falls back: an engine bug must not be papered over by a silent model swap."""
    with failing_gpu_engine(tmp_path, "boom") as (server, uri, record):
        for _ in range(2):
            answer = server.request(INLINE, server.inline_params(uri, 1, 11), timeout=60)
            assert "error" in answer and "boom" in answer["error"]["message"], answer
        assert sum(e["event"] == "boom" for e in read_events(record)) == 2  # the same engine, asked again
        assert server.alive() and not server.shown(1), server.shown(1)
        assert all(s["device"] == "cuda:0" for s in server.statuses() if s["state"] == "ready"), server.statuses()


def test_missing_grammar_means_plain_text_context_and_one_warning(tmp_path):
    shims = failing_import(tmp_path, "tree_sitter_python", "tree-sitter-python (test)")
    record = tmp_path / "events.jsonl"
    server = start(tmp_path, fake=fake_spec(text="a + b", record=str(record)), shims=shims)
    try:
        server.initialize(tmp_path)
        server.wait_status("ready")
        for k in range(3):
            uri = (tmp_path / f"g{k}.py").as_uri()
            server.open(uri, "import os\n\nclass A:\n    def f(self):\n        return \n")
            answer = server.request(INLINE, server.inline_params(uri, 4, 15))
            assert answer["result"]["items"][0]["insertText"] == "a + b", answer  # plain-text context completes
        assert read_events(record)[-2]["prefix_tail"].endswith("return ")
        assert not server.shown(1), server.shown(1)  # no error popups
        warnings = server.shown(2)
        assert len(warnings) == 1 and "python" in warnings[0] and "tree-sitter" in warnings[0], warnings
        assert "plain-text context for python" in server.statuses()[-1]["message"]
    finally:
        server.close()


# ------------------------------------------------------------------------------------------------ 4. security


def test_tcp_listens_on_loopback_unless_told_otherwise():
    assert cli.build_parser().parse_args(["--tcp", "2087"]).tcp == ("127.0.0.1", 2087)
    assert cli.build_parser().parse_args(["--tcp", ":2087"]).tcp == ("127.0.0.1", 2087)
    assert cli.build_parser().parse_args(["--tcp", "0.0.0.0:2087"]).tcp == ("0.0.0.0", 2087)


def _listening(pid: int, port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) == port and fields[3] == "0A":
                out.append(addr)
    return out


def test_tcp_server_binds_127_0_0_1(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = server_env()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(FAKE_SERVER),
            "--tcp",
            str(port),
            "--model",
            "{}",
            "--log-file",
            str(tmp_path / "tcp.log"),
        ],
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not (addrs := _listening(proc.pid, port)) and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.05)
        assert addrs == ["0100007F"], addrs  # 127.0.0.1, and nothing else
    finally:
        proc.kill()
        proc.wait()


GUARD = r'''
"""Test shim: every socket use outside AF_UNIX fails and is logged; every file open is logged."""
import json, os, socket, sys
_LOG = os.environ["DG_TEST_AUDIT_LOG"]
def _note(kind, what):
    with open(_LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps([kind, str(what)]) + "\n")
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def connect(self, address):
    if self.family != socket.AF_UNIX:
        _note("connect", address)
        raise OSError("network use in a test that forbids it")
    return _connect(self, address)
def getaddrinfo(host, *args, **kwargs):
    _note("getaddrinfo", host)
    raise OSError("network use in a test that forbids it")
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
_opened = set()
def _audit(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes)) and args[0] != _LOG:
        path = os.fsdecode(args[0])
        if path not in _opened:
            _opened.add(path)
            _note("open", path)
sys.addaudithook(_audit)
'''


def test_no_network_and_no_unopened_files_read(tmp_path):
    workspace, outside, shims = tmp_path / "ws", tmp_path / "outside", tmp_path / "shims"
    for d in (workspace, outside, shims):
        d.mkdir()
    (shims / "sitecustomize.py").write_text(GUARD)
    audit = tmp_path / "audit.jsonl"
    body = "def frobnicate_widget(x):\n    return x * 42\n"
    (workspace / "helpers.py").write_text(body)  # in the workspace, never opened in the editor
    (outside / "secret.py").write_text(body)  # outside the workspace
    opened = workspace / "opened.py"
    server = start(
        tmp_path,
        "--device",
        "cpu",
        probe=False,
        shims=shims,
        env={"DG_TEST_AUDIT_LOG": str(audit), "HF_HUB_OFFLINE": "", "DG_LSP_ALLOW_DOWNLOAD": ""},
    )
    try:
        server.initialize(workspace)
        server.wait_status("ready", timeout=90)
        other = (workspace / "other.py").as_uri()
        server.open(other, "def frobnicate_gadget(y):\n    return y + 1\n")  # open: may be used for context
        uri = opened.as_uri()
        server.open(uri, "from helpers import frobnicate_widget\n\nprint(frobnicate_\n")
        assert "result" in server.request(INLINE, server.inline_params(uri, 2, 17), timeout=60)
        for target in ((outside / "secret.py").as_uri(), (workspace / "helpers.py").as_uri()):
            answer = server.request(INLINE, server.inline_params(target, 0, 0))
            assert answer["error"]["code"] == -32602 and "not open" in answer["error"]["message"], answer
            answer = server.request(
                "workspace/executeCommand",
                {
                    "command": "dg.rewriteBlock",
                    "arguments": [target, {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}}],
                },
            )
            assert "error" in answer, answer
        server.request(
            "codeAction/resolve",
            {
                "title": "Rewrite this block",
                "data": {
                    "uri": (outside / "secret.py").as_uri(),
                    "range": {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}},
                },
            },
        )
        assert server.alive()
    finally:
        server.close()
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert not [e for e in events if e[0] in ("connect", "getaddrinfo")], "network use: " + str(events)
    opened_paths = {Path(e[1]).resolve() for e in events if e[0] == "open"}
    for forbidden in (outside / "secret.py", workspace / "helpers.py", opened, workspace / "other.py"):
        assert forbidden.resolve() not in opened_paths, f"{forbidden} was read from disk"
    # nothing under the test's directories but the server's own log
    stray = [p for p in opened_paths if tmp_path.resolve() in p.parents and not p.name.startswith("server-")]
    assert not stray, stray


def test_loading_never_runs_remote_code_or_downloads_by_default(monkeypatch):
    """What the loader asks transformers for (recorded, nothing loaded): never remote code, local files only."""
    import transformers

    from dg_model import loading

    monkeypatch.delenv("DG_LSP_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls: list[tuple[str, dict[str, Any]]] = []

    class Model:
        generation_config = None

        def to(self, *_: Any) -> Model:
            return self

        def eval(self) -> Model:
            return self

    def spy(what: str, returns: Any):
        def from_pretrained(name: str, **kw: Any) -> Any:
            calls.append((what, kw))
            return returns

        return from_pretrained

    config = type("Config", (), {"model_type": "diffusion_gemma"})()
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy("config", config))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy("tokenizer", object()))
    monkeypatch.setattr(transformers.DiffusionGemmaForBlockDiffusion, "from_pretrained", spy("model", Model()))
    for source in ("google/diffusiongemma-26B-A4B-it", None):  # a hub id, and the embedded model's directory
        calls.clear()
        loading.load_model(source, device="cpu")
        assert {what for what, _ in calls} == {"config", "tokenizer", "model"}, calls
        for what, kw in calls:
            assert kw.get("local_files_only") is True, (source, what, kw)
            assert not kw.get("trust_remote_code"), (source, what, kw)
            if what != "model":  # the Auto* classes are where remote code could come in: refused explicitly
                assert kw.get("trust_remote_code") is False, (source, what, kw)
    assert not loading.downloads_allowed()
    monkeypatch.setenv("DG_LSP_ALLOW_DOWNLOAD", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not loading.downloads_allowed()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert loading.downloads_allowed()
    calls.clear()
    loading.load_model("google/diffusiongemma-26B-A4B-it", device="cpu")  # downloads on: still no remote code
    assert calls and all(kw.get("local_files_only") is False and not kw.get("trust_remote_code") for _, kw in calls)
