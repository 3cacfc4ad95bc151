"""An `Engine` whose model runs on an OpenAI-compatible server (vLLM), so one GPU box serves a team's editors.

dg-lsp keeps everything else (context, post-processing, cancellation, caching); each job becomes ONE HTTP request:
- FIM formats: the FIM tokens written into `prompt` (`prompts.fim_text`), to /v1/completions. Never the `suffix`
  field: vLLM rejects it with HTTP 400.
- chat (instruction-tuned checkpoints, which have no FIM tokens): `prompts.chat_messages` / `rewrite_messages`, to
  /v1/chat/completions; fences and prose are stripped from the answer (`prompts.clean_answer`).
`n` candidates come from one request. The answer is read whole, not streamed: a diffusion model writes it a canvas at
a time, so streaming would bring no text earlier, and cancelling works without it (below).

Requests run on this engine's own event-loop thread with one `httpx.AsyncClient` (connections are kept alive and
reused; `close` ends both when settings replace the engine). The caller's thread waits for the answer and polls
`job.cancel` every few milliseconds; a cancel cancels the request's task, httpx closes the connection, and vLLM aborts
a request whose client has gone. A failure is a `RemoteError` (remote_errors.py, an `EngineError`) with a `kind`
and one sentence naming the URL; the server layer decides how to show it. Nothing here imports torch, so a thin
client starts without the model stack.

Token counts for the context budget come from a local copy of the model's tokenizer when one matches the server, else
from the server's /tokenize, mostly without a round trip (remote_counts.py), else from an estimate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx

from dg_model.api import Cancelled, Candidate, EngineError, InfillJob, JobResult, JobStats, RewriteJob
from dg_model.prompts import chat_messages, choose_format, clean_answer, fim_text, rewrite_messages
from dg_model.remote_counts import (
    CHARS_PER_TOKEN,
    MAX_PIECES,
    NEW_SHARE,
    SPAN_TEXTS,
    count_pieces,
    estimate_tokens,
    find_tokenizer,
    keep,
    token_ends,
)
from dg_model.remote_errors import RemoteError, display_url, first_line, read_answer
from dg_model.stops import block_end, cursor_indent

log = logging.getLogger(__name__)

POLL_S = 0.005  # how often a waiting caller looks at `job.cancel`
COUNT_TIMEOUT_S = 1.0  # a /tokenize call; past it the estimate is used (a count must never stall a keystroke)
CONNECT_TIMEOUT_S = 3.0
STARTUP_BACKOFF_S = 0.25  # the start-up check retries a refused connection after 0.25, 0.5, 1 s ...
FIM_PROBE = "<fim_prefix><fim_suffix><fim_middle>"  # three tokens for a tokenizer with our FIM tokens
COUNT_PROBE = "def add(a, b):\n    return a + b  # probe\n"
UNTRIMMED = 1 << 30  # the context builder already fit prefix and suffix to the budget: the prompt helpers cut nothing


@dataclass(frozen=True)
class RemoteConfig:
    url: str  # the /v1 base
    model: str | None = None  # None: the one model the server lists
    format: str = "auto"  # "auto" | "fim-spm" | "fim-psm" | "chat"
    tokenizer: str | None = None  # tokenizer.json or its folder
    timeout_s: float = 5.0  # per request, from sending to the whole answer


@dataclass(frozen=True)
class ServerInfo:
    """What the start-up check learned."""

    models: list[str]
    model: str
    format: str
    counting: str  # how tokens are counted, for doctor and the log
    ms: float  # the GET /models round trip


class RemoteEngine:
    def __init__(self, config: RemoteConfig, api_key: str | None = None) -> None:
        try:
            parsed = httpx.URL(config.url)
        except httpx.InvalidURL as exc:
            raise RemoteError("config", f"remote.url {config.url!r} is not a URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise RemoteError("config", f"remote.url must look like http(s)://HOST:PORT/v1, got {config.url!r}")
        self.config = config
        self.url = display_url(config.url)
        self.name = config.model or "remote"
        self.device = self.url  # status lines say "<model> on <url>"
        self.format = None if config.format == "auto" else config.format
        self.info: ServerInfo | None = None  # None until a check succeeds, and again after the server failed
        self._key = api_key or ""  # only to blank it out of a server's error text
        self._base = config.url.rstrip("/")
        self._root = self._base.removesuffix("/v1")  # vLLM serves /tokenize next to /v1, not under it
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, CONNECT_TIMEOUT_S)),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=120),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokenizer = None
        self._server_counts = False
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._spans: list[tuple[str, list[int]]] = []  # tokenized texts, newest last, with their tokens' end offsets
        # `bench remote` compares other values
        self.span_texts, self.max_pieces, self.new_share = SPAN_TEXTS, MAX_PIECES, NEW_SHARE
        self.tokenize_requests = 0  # /tokenize round trips a count waited for (bench)
        self.tokenize_prefetches = 0  # and those made in the background
        self._prefetching: concurrent.futures.Future | None = None
        self._prefetch_next: str | None = None
        self._prefetch_task: asyncio.Task | None = None
        self._lock = threading.Lock()  # the loop's start and `close`
        self._said_unscored = False
        self._closed = False

    # ------------------------------------------------------------------ Engine protocol
    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        if self._server_counts:
            if (hit := self._counts.get(text)) is not None:
                return hit
            if (pieced := self._count_pieces(text)) is not None:
                return pieced
            try:
                self.tokenize_requests += 1
                count = self._run(self._tokenize(text, spans=True), timeout=COUNT_TIMEOUT_S)
            except RemoteError as exc:
                # Estimate until the next successful check: a down server must not cost one timeout per count.
                log.warning(
                    "token counts from %s/tokenize failed (%s); estimating until the server is back", self.url, exc
                )
                self._server_counts = False
            else:
                self._counts[text] = count
                while len(self._counts) > 256:
                    self._counts.popitem(last=False)
                return count
        return estimate_tokens(text)

    def _count_pieces(self, text: str) -> int | None:
        """`remote_counts.count_pieces`; a text with new lines in it is tokenized in the background, so the next
        count of it, or of text around it, comes from its offsets."""
        # The loop thread replaces `_spans`, never changes it: this count reads one whole list.
        counted = count_pieces(text, self._spans, self.max_pieces, self.new_share)
        if counted is None:
            return None
        total, new = counted
        if new:
            self._prefetch(text)
        return total

    def _prefetch(self, text: str) -> None:
        """Tokenize `text` in the background (one request at a time; while one runs, only the longest text asked
        for meanwhile waits)."""
        loop = self._loop
        if loop is None or self._closed:
            return
        running = self._prefetching
        if running is not None and not running.done():
            if len(text) > len(self._prefetch_next or ""):
                self._prefetch_next = text
            return
        self._prefetch_next = None
        try:
            self._prefetching = asyncio.run_coroutine_threadsafe(self._prefetch_loop(text), loop)
        except RuntimeError:  # closed meanwhile
            pass

    async def _prefetch_loop(self, text: str | None) -> None:
        self._prefetch_task = asyncio.current_task()
        while text is not None and not self._closed:
            self.tokenize_prefetches += 1
            try:
                async with asyncio.timeout(COUNT_TIMEOUT_S):
                    await self._tokenize(text, spans=True)
            except Exception as exc:  # noqa: BLE001 - a count made in the background must never fail anything
                log.debug("background /tokenize failed: %s", exc)
                return
            text, self._prefetch_next = self._prefetch_next, None

    def infill(self, job: InfillJob) -> JobResult:
        self._ensure_checked(job.cancel)
        body: dict[str, Any]
        if self.format == "chat":
            messages = chat_messages(job.prefix, job.suffix, UNTRIMMED, job.context)
            path, body = "/chat/completions", {"messages": messages}
        else:
            prompt = fim_text(job.prefix, job.suffix, self._checked_format(), job.context)
            path, body = "/completions", {"prompt": prompt, "add_special_tokens": False}  # <bos> is in the prompt
        result = self._complete(path, body, job.max_tokens, job.n, job.temperature, job.seed, job.cancel)
        if job.kind == "block":  # the answer may run past the block the cursor is in, as a local decoder's would
            indent = cursor_indent(job.prefix)
            for cand in result.candidates:
                cand.text = cand.text[: block_end(cand.text, indent)]
        return result

    def rewrite(self, job: RewriteJob) -> JobResult:
        self._ensure_checked(job.cancel)
        body: dict[str, Any]
        if self.format == "chat":
            messages = rewrite_messages(job.prefix, job.block, job.suffix, UNTRIMMED)
            path, body = "/chat/completions", {"messages": messages}
        else:  # a FIM model cannot be shown the old block; it writes the block anew from both sides
            prompt = fim_text(job.prefix, job.suffix, self._checked_format())
            path, body = "/completions", {"prompt": prompt, "add_special_tokens": False}
        return self._complete(path, body, job.max_tokens, job.n, None, job.seed, job.cancel)

    def score(self, job) -> list:
        """`ScoreJob`s need per-token log-probabilities of given text from both of the model's halves; the OpenAI API
        has no such call. Fix and Rewrite catch this and go on unranked; it is logged once."""
        message = (
            f"the model at {self.url} cannot score code over the OpenAI API; scoring needs the model in process "
            "(with remote.fallback on, the local model scores)"
        )
        if not self._said_unscored:
            self._said_unscored = True
            log.warning("%s; fixes use the checks alone, rewrites are not ranked", message)
        raise EngineError(message)

    # ------------------------------------------------------------------ start-up check
    def check(self, tries: int = 1, cancel: threading.Event | None = None) -> ServerInfo:
        """GET /models (retried with back-off only on connection failures: it is idempotent), the model, the prompt
        format and how tokens are counted. Raises RemoteError."""
        models, ms = self._run(self._models(tries), cancel)
        model = self.config.model
        if model is None and len(models) != 1:
            raise RemoteError(
                "model",
                f"{self.url} serves {', '.join(models) or 'no model'}; name one with remote.model (--remote-model)",
            )
        if model is not None and model not in models:
            raise RemoteError(
                "model", f"{self.url} does not serve model {model!r}; it serves: {', '.join(models) or 'nothing'}"
            )
        self.name = model or models[0]
        tokenizer, where = find_tokenizer(self.config.tokenizer, self.name)
        server_count = self._optional(self._tokenize(COUNT_PROBE), cancel)
        local_count = len(tokenizer.encode(COUNT_PROBE, add_special_tokens=False).ids) if tokenizer else None
        if tokenizer is not None and server_count not in (None, local_count):
            log.warning("the tokenizer at %s counts differently from %s; using the server's counts", where, self.url)
            tokenizer = None
        self._tokenizer, self._server_counts = tokenizer, tokenizer is None and server_count is not None
        counting = (
            f"local tokenizer {where}"
            if tokenizer
            else f"{self._root}/tokenize"
            if self._server_counts
            else f"estimate ({CHARS_PER_TOKEN:g} characters per token)"
        )
        fmt = self._auto_format(tokenizer, cancel) if self.config.format == "auto" else self.config.format
        self.format = fmt
        self.info = ServerInfo(models, self.name, fmt, counting, ms)
        log.info("remote %s: model %s, format %s, token counts: %s", self.url, self.name, self.format, counting)
        return self.info

    def _auto_format(self, tokenizer, cancel: threading.Event | None) -> str:
        if tokenizer is not None:
            # pinned-suffix needs canvas positions pinned inside the model: a server cannot, so chat instead.
            fmt = choose_format(tokenizer, None)
            return fmt if fmt.startswith("fim") else "chat"
        fim = self._optional(self._tokenize(FIM_PROBE), cancel)
        return "fim-spm" if fim == 3 else "chat"  # no /tokenize: the released checkpoint is instruction-tuned

    def _ensure_checked(self, cancel: threading.Event | None) -> None:
        if self.info is None:
            self.check(tries=1, cancel=cancel)

    def _checked_format(self) -> str:
        if self.format is None:  # `check` decides it; jobs call `_ensure_checked` first
            raise RuntimeError("the remote prompt format is decided by check()")
        return self.format

    def close(self) -> None:
        """Close the connections and end the engine's thread. Idempotent, callable from any thread, and it returns at
        once: a request in flight finishes first (within its timeout), a background count is dropped, and a call
        made afterwards raises `Cancelled` (the engine was replaced, e.g. by a settings change)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop = self._loop
        self._prefetch_next = None
        if loop is None:
            return  # no request was ever made: no connection, no thread
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        except RuntimeError:  # the loop is already closed
            pass

    async def _shutdown(self) -> None:
        if self._prefetch_task is not None:
            self._prefetch_task.cancel()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            _, late = await asyncio.wait(others, timeout=self.config.timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._client.aclose()
        asyncio.get_running_loop().stop()

    # ------------------------------------------------------------------ requests
    def _complete(
        self,
        path: str,
        body: dict,
        max_tokens: int,
        n: int,
        temperature: float | None,
        seed: int | None,
        cancel: threading.Event | None,
    ) -> JobResult:
        t0 = time.perf_counter()
        body = {"model": self.name, **body, "max_tokens": max_tokens, "n": max(1, n)}
        if temperature is not None:
            body["temperature"] = temperature
        elif n <= 1:
            body["temperature"] = 0.0  # one candidate: greedy, as the local decoders; several: the server's sampling
        if seed is not None:
            body["seed"] = seed
        try:
            data = self._run(self._post(path, body), cancel)
        except RemoteError as exc:
            if exc.kind != "request":
                self.info = None  # check the server again (models, counting) before the next request
            raise
        chat = path == "/chat/completions"
        texts: list[str] = []
        for choice in sorted(data.get("choices") or [], key=lambda c: c.get("index", 0)):
            text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
            text = clean_answer(text or "", "chat" if chat else "fim")
            if text not in texts:
                texts.append(text)
        usage = data.get("usage") or {}
        stats = JobStats(
            mode="remote",
            prompt_tokens=usage.get("prompt_tokens") or 0,
            steps=1,
            new_tokens=usage.get("completion_tokens") or 0,
            total_ms=(time.perf_counter() - t0) * 1e3,
        )
        # The server's order is its preference; it reports no score comparable to a local decoder's mean log-prob.
        return JobResult([Candidate(t, -0.01 * i) for i, t in enumerate(texts)], stats)

    def _run(self, coro, cancel: threading.Event | None = None, timeout: float | None = None):
        """Run `coro` on the engine's loop; cancel it (closing its connection) as soon as `cancel` is set."""
        with self._lock:
            if self._loop is None and not self._closed:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=_serve, args=(self._loop,), name="dg-remote", daemon=True).start()
            loop = None if self._closed else self._loop
        if loop is None:
            coro.close()
            raise Cancelled(f"the connection to {self.url} was closed (the settings changed)")
        future = asyncio.run_coroutine_threadsafe(self._deadline(coro, timeout or self.config.timeout_s), loop)
        while True:
            try:
                return future.result(timeout=POLL_S)
            except concurrent.futures.CancelledError:  # `close` gave up waiting for it
                raise Cancelled(f"the connection to {self.url} was closed (the settings changed)") from None
            except concurrent.futures.TimeoutError:
                if cancel is not None and cancel.is_set():
                    future.cancel()
                    raise Cancelled("cancelled; the HTTP request was closed") from None
                if loop.is_closed():  # closed (`close`) before this request could start
                    raise Cancelled(f"the connection to {self.url} was closed (the settings changed)") from None

    async def _deadline(self, coro, seconds: float):
        try:
            async with asyncio.timeout(seconds):
                return await coro
        except TimeoutError:
            raise RemoteError("timeout", f"{self.url} did not answer within {seconds:g} s") from None

    async def _models(self, tries: int) -> tuple[list[str], float]:
        for attempt in range(tries):
            t0 = time.perf_counter()
            try:
                data = await self._send("GET", f"{self._base}/models")
                break
            except RemoteError as exc:
                if exc.kind not in ("unreachable", "server") or attempt == tries - 1:
                    raise
                await asyncio.sleep(STARTUP_BACKOFF_S * 2**attempt)
        models = [m["id"] for m in data.get("data") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        return models, (time.perf_counter() - t0) * 1e3

    async def _post(self, path: str, body: dict) -> dict:
        return await self._send("POST", self._base + path, body)

    async def _tokenize(self, text: str, spans: bool = False) -> int:
        body = {"model": self.name, "prompt": text, "add_special_tokens": False}
        if spans:
            body["return_token_strs"] = True  # vLLM; a server without it ignores the key, and texts are counted whole
        data = await self._send("POST", f"{self._root}/tokenize", body)
        count = int(data["count"]) if "count" in data else len(data.get("tokens") or [])
        if spans and (ends := token_ends(text, data.get("token_strs"))) is not None and len(ends) == count:
            self._spans = keep(self._spans, text, ends, self.span_texts)
        return count

    def _optional(self, coro, cancel: threading.Event | None) -> int | None:
        """A /tokenize answer, or None when the server has no /tokenize (any answer but a refusal of the key)."""
        try:
            return self._run(coro, cancel, timeout=COUNT_TIMEOUT_S)
        except RemoteError as exc:
            if exc.kind == "auth":
                raise
            log.debug("no /tokenize at %s: %s", self._root, exc)
            return None

    async def _send(self, method: str, url: str, body: dict | None = None) -> dict:
        try:
            response = await self._client.request(method, url, json=body)
        except RuntimeError:
            if self._closed:  # `close` won the race with this request
                raise Cancelled(f"the connection to {self.url} was closed (the settings changed)") from None
            raise
        except httpx.TimeoutException:
            raise RemoteError("timeout", f"{self.url} did not answer within {self.config.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise RemoteError(
                "unreachable", f"cannot reach {self.url} ({first_line(exc)}); is the server running, and the URL right?"
            ) from None
        return read_answer(response, self.url, url.removeprefix(self._root) or "/", self._key, self.name)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The engine's thread: its event loop, until `RemoteEngine.close` stops it."""
    asyncio.set_event_loop(loop)
    loop.run_forever()
    loop.close()
