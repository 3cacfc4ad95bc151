"""The remote backend (issue 16): `RemoteEngine` against a local OpenAI-compatible server that answers through our own
fake engine (`dg_bench.openai_stub`), the server-side guard, and the real `dg-lsp --stdio` / `doctor --remote`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, fake_spec, server_env, session
from fake_engine import FakeEngine

from dg_bench.openai_stub import EMBEDDED_TOKENIZER, ConstantEngine, StubServer
from dg_lsp.engines import LOCAL
from dg_lsp.remote import RemoteGuard
from dg_lsp.settings import parse_settings
from dg_model.api import Cancelled, InfillJob, RewriteJob
from dg_model.prompts import build_prompt, fim_text
from dg_model.remote import RemoteConfig, RemoteEngine
from dg_model.remote_errors import API_KEY_ENV, RemoteError, insecure

KEY = "sk-test-7f3a9c"
PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine(texts=["a + b", "a - b", "b + a"], steps=4)


@pytest.fixture
def stub(fake):
    with StubServer(fake, model="m", api_key=KEY) as server:
        yield server


def engine(stub: StubServer, key: str | None = KEY, **config) -> RemoteEngine:
    return RemoteEngine(RemoteConfig(**{"url": stub.url, "model": "m", **config}), api_key=key)


def posts(stub: StubServer, path: str) -> list[dict]:
    return [r for r in stub.requests if r["path"] == path]


# -- prompt formats --


def test_fim_text_tokenizes_to_the_local_prompt():
    """The text prompt a server tokenizes is the engine's own FIM prompt: special tokens split it the same way."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(EMBEDDED_TOKENIZER))

    class Adapter:
        def encode(self, s, add_special_tokens=False):
            return tok.encode(s, add_special_tokens=add_special_tokens).ids

        def convert_tokens_to_ids(self, token):
            return tok.token_to_id(token)

    local = build_prompt(Adapter(), "fim-spm", PREFIX, SUFFIX, 4096, ["import os\n"]).ids
    assert tok.encode(fim_text(PREFIX, SUFFIX, "fim-spm", ["import os\n"]), add_special_tokens=False).ids == local


def test_fim_format_renders_tokens_into_prompt(stub, fake):
    result = engine(stub, format="fim-spm").infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    assert [c.text for c in result.candidates] == ["a + b"]
    (req,) = posts(stub, "/v1/completions")
    body = req["body"]
    assert "suffix" not in body  # vLLM answers it with HTTP 400
    assert body["prompt"] == fim_text(PREFIX, SUFFIX, "fim-spm") and body["add_special_tokens"] is False
    assert body["temperature"] == 0.0 and body["n"] == 1
    job = fake.calls[-1][1]
    assert (job.prefix, job.suffix) == (PREFIX, SUFFIX)  # the server's engine saw our context, unchanged


def test_chat_format_strips_fences_and_prose(stub, fake):
    eng = engine(stub, format="chat")
    result = eng.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    assert [c.text for c in result.candidates] == ["a + b"]  # the stub wraps it in "Here is the code:\n```python"
    assert posts(stub, "/v1/chat/completions") and not posts(stub, "/v1/completions")
    fake.rewrite_text = "y = 3\n"
    rewritten = eng.rewrite(RewriteJob(prefix="x = 1\n", block="y = 2\n", suffix="z = 3\n"))
    assert rewritten.candidates[0].text == "y = 3\n"
    assert fake.calls[-1][1].block == "y = 2\n"


def test_auto_format_from_the_servers_tokenizer():
    """A tokenizer with our FIM tokens (the embedded model's, asked through /tokenize) gets the FIM format."""
    with StubServer(ConstantEngine(), model="m") as server:
        eng = RemoteEngine(RemoteConfig(url=server.url, model="m"))
        assert eng.check().format == "fim-spm"
    with StubServer(FakeEngine(), model="m") as server:  # counts 4 characters per token: no FIM tokens
        assert RemoteEngine(RemoteConfig(url=server.url, model="m")).check().format == "chat"


def test_n_candidates_in_one_request(stub):
    result = engine(stub, format="fim-spm").infill(InfillJob(prefix=PREFIX, suffix=SUFFIX, n=3))
    assert [c.text for c in result.candidates] == ["a + b", "a - b", "b + a"]
    (req,) = posts(stub, "/v1/completions")
    assert req["body"]["n"] == 3


def test_connections_are_reused(stub):
    eng = engine(stub, format="fim-spm")
    for _ in range(5):
        eng.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    assert len({r["port"] for r in stub.requests}) == 1


# -- the key --


def test_key_is_sent_as_bearer_token(stub):
    engine(stub).check()
    assert {r["authorization"] for r in stub.requests} == {f"Bearer {KEY}"}


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_wrong_key(stub, key):
    with pytest.raises(RemoteError) as err:
        engine(stub, key=key).check()
    assert err.value.kind == "auth" and stub.url in str(err.value) and API_KEY_ENV in str(err.value)
    assert "wrong-key" not in str(err.value)


# -- each failure: one kind, one sentence naming the URL --


def test_unknown_model(stub):
    with pytest.raises(RemoteError) as err:
        engine(stub, model="other").check()
    assert err.value.kind == "model" and "'other'" in str(err.value) and "it serves: m" in str(err.value)


def test_bad_request(stub):
    eng = engine(stub, format="fim-spm")
    eng.check()
    stub.fail = (400, "This model's maximum context length is 8192 tokens")
    with pytest.raises(RemoteError) as err:
        eng.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    assert err.value.kind == "request" and "HTTP 400" in str(err.value) and "maximum context" in str(err.value)


def test_timeout(stub):
    eng = engine(stub, format="fim-spm", timeout_s=0.3)
    eng.check()
    stub.delay_s = 5
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        eng.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    assert err.value.kind == "timeout" and stub.url in str(err.value)
    assert time.monotonic() - t0 < 1.5


def test_unreachable():
    eng = RemoteEngine(RemoteConfig(url="http://127.0.0.1:9/v1", model="m"))
    with pytest.raises(RemoteError) as err:
        eng.check()
    assert err.value.kind == "unreachable" and "http://127.0.0.1:9/v1" in str(err.value)


def test_bad_url_is_a_config_error():
    with pytest.raises(RemoteError) as err:
        RemoteEngine(RemoteConfig(url="gpu-box:8000"))
    assert err.value.kind == "config"


# -- typing: cancellation closes the request --


def test_cancel_closes_the_http_request(stub, fake):
    eng = engine(stub, format="fim-spm")
    eng.check()
    fake.steps, fake.step_ms = 200, 10  # two seconds of "denoising" on the server
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        eng.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX, cancel=cancel))
    assert time.monotonic() - t0 < 0.4  # the caller is free at once
    deadline = time.monotonic() + 2
    while not any(kind == "cancelled" for kind, _ in stub.events) and time.monotonic() < deadline:
        time.sleep(0.01)
    gone = [t for kind, t in stub.events if kind == "cancelled"]
    assert gone and gone[0] - t0 < 0.5  # the server saw the connection close and stopped the job


# -- token counts --


def test_token_counts_from_tokenize_local_tokenizer_or_estimate():
    with StubServer(FakeEngine(), model="m") as server:
        eng = RemoteEngine(RemoteConfig(url=server.url, model="m"))
        assert "/tokenize" in eng.check().counting
        assert eng.count_tokens("x" * 40) == 10  # the fake engine's count, from the server
    with StubServer(ConstantEngine(), model="m") as server:  # the same tokenizer as the file named here
        eng = RemoteEngine(RemoteConfig(url=server.url, model="m", tokenizer=str(EMBEDDED_TOKENIZER)))
        assert eng.check().counting.startswith("local tokenizer")
        calls = len(server.requests)
        assert eng.count_tokens(PREFIX) == ConstantEngine().count_tokens(PREFIX)
        assert len(server.requests) == calls  # no round trip
    with StubServer(FakeEngine(), model="m", tokenize=False) as server:
        eng = RemoteEngine(RemoteConfig(url=server.url, model="m"))
        assert eng.check().counting.startswith("estimate")
        assert eng.count_tokens("x" * 30) == 10


def _typing_down(eng: RemoteEngine, text: str, places: list[int], budget: int = 480) -> list[tuple[str, int]]:
    """Completions at `places` of `text` through the server's own path; every (text, count) the context asked for,
    and every prompt's real token count (prefix + suffix + snippets) checked against the budget."""
    from dg_lsp import pipeline

    real = ConstantEngine()
    settings = parse_settings({"context": {"maxPromptTokens": budget}})[0]
    counted: list[tuple[str, int]] = []

    class Recorded:
        name, device = eng.name, eng.device

        def count_tokens(self, s):
            counted.append((s, eng.count_tokens(s)))
            return counted[-1][1]

        def infill(self, job):
            prompt = sum(real.count_tokens(t) for t in (job.prefix, job.suffix, *job.context))
            assert prompt <= budget, f"the prompt counts {prompt} tokens, over the budget of {budget}"
            return eng.infill(job)

    for offset in places:
        assert pipeline.complete(Recorded(), text, offset, "python", settings, doc_key="t.py").edits is not None
    return counted


def _stdlib(name: str) -> str:
    import importlib
    from pathlib import Path

    return Path(importlib.import_module(name).__file__).read_text(encoding="utf-8")


def test_tokenize_counts_from_token_offsets_without_round_trips():
    """Typing down a file: the texts the context builder counts are cuts and joins of texts already tokenized (with
    their token offsets), or lines just below them; nearly none waits for a /tokenize request, and no count is below
    the tokenizer's."""
    text = _stdlib("textwrap")
    real = ConstantEngine()
    with StubServer(ConstantEngine(), model="m") as server:
        eng = RemoteEngine(RemoteConfig(url=server.url, model="m", format="fim-spm"))
        assert "/tokenize" in eng.check().counting
        places = [i for i, ch in enumerate(text) if ch == "\n"][::3][:40]
        counted = _typing_down(eng, text, places)
        # One request per new text would be ~0.9 of the counts; texts inside ONE tokenized text, ~0.45 of them.
        assert eng.tokenize_requests <= 0.1 * len(counted), (eng.tokenize_requests, len(counted))
        assert all(n >= real.count_tokens(s) for s, n in counted)  # never below: the budget holds
        close = sum(n - real.count_tokens(s) <= 2 for s, n in counted)
        assert close >= 0.8 * len(counted)  # and mostly exact or 1-2 above (new lines count high until tokenized)
        whole = next(
            r["body"]["prompt"]
            for r in server.requests
            if r["path"] == "/tokenize" and r["body"].get("return_token_strs")
        )
        assert eng.count_tokens(whole) == real.count_tokens(whole)  # a tokenized text's own count is exact


@pytest.mark.parametrize("budget", [128, 480, 2048])
def test_tokenize_counts_keep_every_prompt_within_the_budget(budget):
    """Jumping around files and typing down them, with counts from /tokenize: no prompt the context builder makes
    counts over `context.maxPromptTokens` by the real tokenizer (asserted in `_typing_down`), and the prompts are
    about as full as with exact counts."""
    import random

    from dg_lsp import pipeline

    real = ConstantEngine()
    settings = parse_settings({"context": {"maxPromptTokens": budget}})[0]
    with StubServer(ConstantEngine(), model="m") as server:
        for name in ("textwrap", "shlex"):
            text = _stdlib(name)
            lines = [i for i, ch in enumerate(text) if ch == "\n"]
            places = sorted(random.Random(budget).sample(lines, 8)) + [o + 1 for o in lines[100:130:3]]
            eng = RemoteEngine(RemoteConfig(url=server.url, model="m", format="fim-spm"))
            eng.check()
            _typing_down(eng, text, places, budget)
            eng.close()
            # As full as exact counting makes them: the same places with the tokenizer in this process.
            exact, remote = [], []
            eng = RemoteEngine(RemoteConfig(url=server.url, model="m", format="fim-spm"))
            eng.check()
            for offset in places:
                for engine, sizes in ((real, exact), (eng, remote)):

                    class Sized:
                        name, device = "m", "cpu"
                        count_tokens = engine.count_tokens

                        def infill(self, job, sizes=sizes):
                            sizes.append(sum(real.count_tokens(t) for t in (job.prefix, job.suffix, *job.context)))
                            return real.infill(job)

                    pipeline.complete(Sized(), text, offset, "python", settings, doc_key="t.py")
            eng.close()
            assert sum(remote) >= 0.9 * sum(exact), (sum(remote), sum(exact))


def test_joined_and_new_text_counted_without_waiting():
    """A text joining runs of two tokenized texts is counted from their offsets; a line never tokenized counts one
    token per byte at once (never low) and is tokenized in the background, after which its count is exact."""
    real = ConstantEngine()
    a = "def fill(self, text):\n    return '\\n'.join(self.wrap(text))\n"
    b = "class TextWrapper:\n    def __init__(self, width=70):\n        self.width = width\n"
    with StubServer(ConstantEngine(), model="m") as server:
        eng = RemoteEngine(RemoteConfig(url=server.url, model="m", format="fim-spm"))
        eng.check()
        assert eng.count_tokens(a) == real.count_tokens(a) and eng.count_tokens(b) == real.count_tokens(b)
        waited = eng.tokenize_requests
        joined = b[:19] + a  # a scope's header line, then the window
        assert real.count_tokens(joined) <= eng.count_tokens(joined) <= real.count_tokens(joined) + 2
        new_line = "        self.tabsize = 8\n"
        grown = b + new_line  # the suffix reaching one line further
        bound = eng.count_tokens(grown)
        assert bound >= real.count_tokens(b) + len(new_line)  # the new line: one token per byte
        assert eng.tokenize_requests == waited  # nothing waited for a round trip
        deadline = time.monotonic() + 5
        while eng.count_tokens(grown) != real.count_tokens(grown) and time.monotonic() < deadline:
            time.sleep(0.01)  # the background request lands
        assert eng.count_tokens(grown) == real.count_tokens(grown) and eng.tokenize_requests == waited
        eng.close()


def test_token_ends_spellings():
    from dg_model.remote_counts import token_ends

    assert token_ends("def f", ["def", "\u0120f"]) == [3, 5]  # byte-level BPE
    assert token_ends("é x", ["\u00c3\u00a9", "\u0120x"]) == [1, 3]  # a character in two bytes
    assert token_ends("a b", ["\u2581a", "\u2581b"]) == [1, 3]  # SentencePiece, its prefix space dropped
    assert token_ends("a b", ["??"]) is None and token_ends("a", None) is None


def test_remote_engine_does_not_import_torch():
    code = "import sys, dg_model.remote, dg_lsp.remote; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=server_env(), timeout=60)


def test_insecure_urls():
    assert insecure("http://10.1.2.3:8000/v1") and insecure("http://gpu-box:8000/v1")
    assert not insecure("http://127.0.0.1:8000/v1") and not insecure("http://localhost:8000/v1")
    assert not insecure("https://gpu-box/v1") and not insecure("http://[::1]:8000/v1")


def test_settings_are_camel_case():
    settings, bad = parse_settings(
        {"remote": {"url": "http://h:8000/v1", "model": "m", "timeoutMs": 2000, "fallback": True, "format": "chat"}}
    )
    assert not bad and settings.remote.timeout_ms == 2000 and settings.remote.fallback
    assert parse_settings({"remote": {"apiKey": "x"}})[1] == ["remote.apiKey"]  # never a setting
    assert settings.backend_key != parse_settings({})[0].backend_key


# -- the guard: one message per outage, answers meanwhile, recovery --


class Recorder:
    def __init__(self) -> None:
        self.shown: list[str] = []
        self.statuses: list[tuple[str, str]] = []
        self.logs: list[str] = []

    def show(self, message, error):
        self.shown.append(message)

    def status(self, state, message):
        self.statuses.append((state, message))

    def log(self, message):
        self.logs.append(message)


def test_guard_reports_once_answers_empty_and_recovers(stub):
    rec = Recorder()
    guard = RemoteGuard(engine(stub, format="fim-spm"), None, rec)
    stub.fail = (503, "loading")
    job = InfillJob(prefix=PREFIX, suffix=SUFFIX)
    for _ in range(5):
        t0 = time.monotonic()
        assert guard.infill(job).candidates == []
        assert time.monotonic() - t0 < 0.5
    assert len(rec.shown) == 1 and stub.url in rec.shown[0]
    assert rec.statuses == [("error", rec.statuses[0][1])] and stub.url in rec.statuses[0][1]
    assert len(posts(stub, "/v1/models")) == 1  # backing off: the server was asked once, not five times
    stub.fail = None
    guard._retry_at = 0  # the back-off has passed
    assert [c.text for c in guard.infill(job).candidates] == ["a + b"]
    assert rec.statuses[-1][0] == "ready" and len(rec.shown) == 1
    assert all(KEY not in m for m in rec.shown + [s for _, s in rec.statuses] + rec.logs)


def test_guard_falls_back_to_the_local_engine(stub):
    rec = Recorder()
    guard = RemoteGuard(engine(stub, key="wrong"), FakeEngine(texts=["local"]), rec)
    result = guard.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    assert [c.text for c in result.candidates] == ["local"]
    assert rec.statuses[0][0] == "ready" and "completing with fake" in rec.statuses[0][1]


@pytest.mark.parametrize("fault", ["key", "model", "400", "timeout"])
def test_guard_one_message_per_failure(stub, fault):
    rec = Recorder()
    eng = engine(
        stub,
        format="fim-spm",
        timeout_s=0.3,
        key="wrong" if fault == "key" else KEY,
        model="other" if fault == "model" else "m",
    )
    if fault in ("400", "timeout"):
        eng.check()
        stub.fail = (400, "bad prompt") if fault == "400" else None
        stub.delay_s = 5 if fault == "timeout" else 0
    guard = RemoteGuard(eng, None, rec)
    for _ in range(3):
        t0 = time.monotonic()
        assert guard.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX)).candidates == []
        assert time.monotonic() - t0 < 1.0  # within the request's timeout, every time
    assert len(rec.shown) == 1 and stub.url in rec.shown[0]
    assert rec.statuses[0][0] == "error" and stub.url in rec.statuses[0][1]


def test_load_warns_about_plain_http_to_another_machine(monkeypatch):
    from dg_lsp import remote

    def down(self, tries=1, cancel=None):  # no traffic leaves this machine in tests
        raise RemoteError("unreachable", f"cannot reach {self.url}")

    monkeypatch.setattr(RemoteEngine, "check", down)
    rec = Recorder()
    settings = parse_settings({"remote": {"url": "http://gpu-box:8000/v1", "model": "m"}})[0]
    guard = remote.load(settings, rec, LOCAL)  # no remote.fallback: nothing loads locally
    assert len(rec.shown) == 1 and "plain http" in rec.shown[0] and not rec.statuses
    remote.after_ready(guard)  # the start-up failure is reported once the loader said "ready"
    assert len(rec.shown) == 2 and rec.statuses[-1][0] == "error"


# -- closing a replaced engine --


def _until(predicate, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_close_ends_the_connections_once_and_for_all(stub):
    eng = engine(stub, format="fim-spm")
    for _ in range(3):
        eng.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    assert stub.open_connections == 1  # kept alive between requests
    t0 = time.monotonic()
    eng.close()
    eng.close()  # idempotent
    assert time.monotonic() - t0 < 0.1  # returns at once: the server's event loop calls it
    assert _until(lambda: stub.open_connections == 0)
    with pytest.raises(Cancelled):  # a job still holding the old engine ends quietly, not with a RemoteError
        eng.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    asked = len(stub.requests)
    with pytest.raises(Cancelled):
        eng.check()
    assert len(stub.requests) == asked


def test_close_lets_the_request_in_flight_finish(stub, fake):
    eng = engine(stub, format="fim-spm")
    eng.check()
    fake.steps, fake.step_ms = 30, 10  # 0.3 s on the server
    answers = []
    worker = threading.Thread(target=lambda: answers.append(eng.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))))
    worker.start()
    assert _until(lambda: len(posts(stub, "/v1/completions")) == 1)
    eng.close()
    worker.join(5)
    assert [c.text for c in answers[0].candidates] == ["a + b"]
    assert _until(lambda: stub.open_connections == 0)


def test_guard_and_close_engine_close_the_remote(stub):
    from dg_lsp.engines import close_engine

    guard = RemoteGuard(engine(stub, format="fim-spm"), FakeEngine(), Recorder())
    guard.infill(InfillJob(prefix=PREFIX, suffix=SUFFIX))
    assert stub.open_connections == 1
    close_engine(guard)
    close_engine(guard)
    close_engine(FakeEngine())  # an engine in this process has nothing to close
    close_engine(None)
    assert _until(lambda: stub.open_connections == 0)


# -- Fix and Rewrite: the model cannot score over the OpenAI API --


def test_fix_and_rewrite_say_once_that_the_remote_cannot_score(stub):
    from dg_lsp import rewrite_block
    from dg_lsp.fix import fix_range
    from dg_lsp.settings import Settings

    rec = Recorder()
    guard = RemoteGuard(engine(stub, format="fim-spm"), None, rec)
    broken = "def add(a, b):\n    retrun a + b\n\n\nprint(add(1, 2))\n"
    for _ in range(2):
        fixed = fix_range(guard, broken, 20, 20, "python", Settings())
        assert fixed.edit is not None and "return a + b" in fixed.edit.text  # the checks alone repair the slip
        rewrite_block.rewrite_range(guard, broken, 20, 20, "python", Settings())  # unranked, no exception
    (shown,) = rec.shown
    assert stub.url in shown and "cannot score" in shown and "remote.fallback" in shown
    assert rec.statuses == []  # the server is fine: no error status
    rec.shown.clear()
    local = FakeEngine()
    with_local = RemoteGuard(engine(stub, format="fim-spm"), local, rec)
    fix_range(with_local, broken, 20, 20, "python", Settings())
    assert rec.shown == [] and any(kind == "score" for kind, _ in local.calls)  # the local model scores


# -- end to end: the real server over stdio, and doctor --


def _messages(s) -> list[str]:
    return [m.message for m in s.client.messages]


async def test_server_completes_through_the_remote(stub, fake, monkeypatch, py_uri):
    monkeypatch.setenv(API_KEY_ENV, KEY)
    args = ("--remote", stub.url, "--remote-model", "m")
    async with session(fake_spec(text="local"), extra_args=args, init_options={"remote": {"format": "fim-spm"}}) as s:
        ready = await s.wait_status("ready")
        assert stub.url in ready["message"] and ready["model"] == "m"
        s.open(py_uri, "def add(a, b):\n    return \n")
        result = await s.inline(py_uri, 1, 11)
        assert result.items[0].insert_text == "a + b"  # from the remote, not the local "local"
        assert fake.calls[-1][1].prefix.endswith("return ")
        assert {r["authorization"] for r in stub.requests} == {f"Bearer {KEY}"}
        said = _messages(s) + [m.message for m in s.client.log_messages] + [str(x) for x in s.statuses]
        assert all(KEY not in m for m in said)


async def test_server_unreachable_one_message_and_answers(monkeypatch, py_uri):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    url = "http://127.0.0.1:9/v1"
    async with session(fake_spec(), extra_args=("--remote", url, "--remote-model", "m")) as s:
        error = await s.wait_status("error")
        assert url in error["message"] and error["device"] == url
        s.open(py_uri, "def add(a, b):\n    return \n")
        for _ in range(3):
            t0 = time.monotonic()
            result = await s.inline(py_uri, 1, 11)
            assert not (result and result.items) and time.monotonic() - t0 < 5
        shown = [m for m in _messages(s) if url in m]
        assert len(shown) == 1 and "cannot reach" in shown[0]


async def test_server_falls_back_to_the_local_model(py_uri):
    url = "http://127.0.0.1:9/v1"
    options = {"remote": {"fallback": True}}
    async with session(fake_spec(text="local"), extra_args=("--remote", url), init_options=options) as s:
        await s.wait_status("ready")
        s.open(py_uri, "def add(a, b):\n    return \n")
        result = await s.inline(py_uri, 1, 11)
        assert result.items[0].insert_text == "local"
        assert len([m for m in _messages(s) if url in m]) == 1


def _doctor(url: str, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in server_env().items() if k != API_KEY_ENV}
    if key:
        env[API_KEY_ENV] = key
    cmd = [sys.executable, "-m", "dg_lsp.cli", "doctor", "--remote", url, "--remote-model", "m"]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_doctor_remote(stub):
    ok = _doctor(stub.url, KEY)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for check in ("reachable", "auth", "model", "latency"):
        assert f"ok    {check}:" in ok.stdout
    assert KEY not in ok.stdout + ok.stderr
    refused = _doctor(stub.url, "wrong")
    assert refused.returncode == 1 and "FAIL  auth:" in refused.stdout


def _range(l1: int, c1: int, l2: int, c2: int) -> dict:
    return {"start": {"line": l1, "character": c1}, "end": {"line": l2, "character": c2}}


async def test_server_fix_and_rewrite_with_a_remote_one_message(stub, monkeypatch, py_uri):
    from lsprotocol import types

    monkeypatch.setenv(API_KEY_ENV, KEY)
    args = ("--remote", stub.url, "--remote-model", "m")
    async with session(fake_spec(), extra_args=args, init_options={"remote": {"format": "fim-spm"}}) as s:
        broken = "def add(a, b):\n    retrun a + b\n\n\nprint(add(1, 2))\n"
        s.open(py_uri, broken)
        arguments = [py_uri, _range(1, 0, 2, 0), 1, {"apply": False}]
        for command in ("dg.fixBlock", "dg.rewriteBlock", "dg.fixBlock", "dg.rewriteBlock"):
            await s.client.workspace_execute_command_async(
                types.ExecuteCommandParams(command=command, arguments=arguments)
            )
        await asyncio.sleep(0.2)
        about_scores = [m for m in _messages(s) if "cannot score" in m]
        assert len(about_scores) == 1 and stub.url in about_scores[0]
        assert not [m for m in s.client.log_messages if "model error" in m.message]
        assert s.statuses[-1]["state"] == "ready"


async def test_settings_change_closes_the_old_remote(monkeypatch, py_uri):
    """A settings change to another server replaces the engine: the old one's connections are closed."""
    from lsprotocol import types

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with (
        StubServer(FakeEngine(texts=["old"]), model="m") as old,
        StubServer(FakeEngine(texts=["new"]), model="m") as new,
    ):
        remote = {"url": old.url, "model": "m", "format": "fim-spm"}
        async with session(fake_spec(), init_options={"remote": remote}) as s:
            s.open(py_uri, "def add(a, b):\n    return \n")
            assert (await s.inline(py_uri, 1, 11)).items[0].insert_text == "old"
            assert old.open_connections >= 1
            s.client.workspace_did_change_configuration(
                types.DidChangeConfigurationParams(settings={"dg": {"remote": {**remote, "url": new.url}}})
            )
            deadline = time.monotonic() + 10
            while [st["state"] for st in s.statuses].count("ready") < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert new.url in s.statuses[-1]["message"]
            assert (await s.inline(py_uri, 1, 11)).items[0].insert_text == "new"
            while old.open_connections and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert old.open_connections == 0


def test_bench_remote_smoke(tmp_path):
    import argparse
    import json

    from dg_bench import remote as bench_remote

    assert bench_remote.main(argparse.Namespace(places=5), tmp_path) == 0
    result = json.loads((tmp_path / "bench_remote.json").read_text())
    assert result["places"] == 5
    assert set(result["added_p50_ms"]) == {"remote", "remote+tokenize", "remote+tokenize:inside"}
    assert result["counting"]["remote"].startswith("local tokenizer")
    assert set(result["over_budget"].values()) == {0}
