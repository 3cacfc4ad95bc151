"""An OpenAI-compatible stand-in for vLLM that serves any `Engine`: the remote end of the tests and `bench remote`.

Not a server for a team (that is vLLM: docs/remote.md): stdlib `http.server`, a thread per connection, HTTP/1.1
keep-alive, engine calls one at a time. It answers what dg-lsp's remote engine sends, the way vLLM does:
- GET /v1/models; POST /v1/completions (the FIM prompt parsed back into prefix and suffix), POST /v1/chat/completions
  (the chat turn parsed back at the cursor or rewrite markers; the answer comes inside a fence after a sentence, as
  instruction-tuned models write it), POST /tokenize (the engine's count;
  `token_strs` too when asked `return_token_strs` and the engine spells tokens). A `suffix` field gets vLLM's HTTP 400.
- a bearer key (401 without it), unknown models (404), and faults for tests: `delay_s` before answering, `fail`
  (a forced HTTP status and message).
- a client that disconnects mid-request cancels the engine job, as vLLM aborts it; `events` records it.
- `open_connections`: the client connections open now (a closed client leaves none).

    python -m dg_bench.openai_stub [--port 8000] [--text "a + b" | --model PATH|embedded]
"""

from __future__ import annotations

import argparse
import json
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from dg_model.api import (
    BlockScore,
    Cancelled,
    Candidate,
    Engine,
    InfillJob,
    JobResult,
    JobStats,
    RewriteJob,
    ScoreJob,
)
from dg_model.prompts import (
    BOS_TEXT,
    CURSOR,
    FILE_SEP_TEXT,
    FIM_MIDDLE_TEXT,
    FIM_PREFIX_TEXT,
    FIM_SUFFIX_TEXT,
    REWRITE_END,
    REWRITE_START,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EMBEDDED_TOKENIZER = Path(__file__).resolve().parents[1] / "dg_model" / "embedded" / "tokenizer.json"


def _fim_pattern(first: str, second: str) -> re.Pattern:
    return re.compile(f"{re.escape(first)}(.*){re.escape(second)}(.*){re.escape(FIM_MIDDLE_TEXT)}\\Z", re.S)


_SPM, _PSM = _fim_pattern(FIM_SUFFIX_TEXT, FIM_PREFIX_TEXT), _fim_pattern(FIM_PREFIX_TEXT, FIM_SUFFIX_TEXT)
_CODE = "no code fences.\n```\n"  # where the chat turn's code starts (dg_model.prompts.chat_messages)


@dataclass
class ConstantEngine:
    """Answers `text` at once, counting tokens with the embedded model's tokenizer: both ends of `bench remote` then
    build the same context, and the time measured is the path around the engine."""

    text: str = "a + b"
    name: str = "constant"
    device: str = "cpu"
    tokenizer_path: Path = EMBEDDED_TOKENIZER
    _tok: Tokenizer | None = field(default=None, repr=False)

    def count_tokens(self, text: str) -> int:
        return len(self.token_strs(text))

    def token_strs(self, text: str) -> list[str]:
        """The tokens as the tokenizer spells them (vLLM's /tokenize `token_strs`)."""
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(self.tokenizer_path))
        return self._tok.encode(text, add_special_tokens=False).tokens if text else []

    def infill(self, job: InfillJob) -> JobResult:
        return JobResult([Candidate(self.text, 0.0)], JobStats())

    def rewrite(self, job: RewriteJob) -> JobResult:
        return JobResult([Candidate(self.text, 0.0)], JobStats())

    def score(self, job: ScoreJob) -> list[BlockScore]:
        return [BlockScore(0.0, []) for _ in job.blocks]  # every block fits equally well


class StubServer:
    def __init__(
        self, engine: Engine, model: str = "stub", api_key: str | None = None, port: int = 0, tokenize: bool = True
    ) -> None:
        self.engine, self.model, self.api_key, self.tokenize = engine, model, api_key, tokenize
        self.delay_s = 0.0
        self.fail: tuple[int, str] | None = None
        self.requests: list[dict] = []  # path, body, authorization, client port
        self.events: list[tuple[str, float]] = []  # ("cancelled" | "answered", time.monotonic())
        self.open_connections = 0
        self._connections_lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubServer:
        threading.Thread(target=self.httpd.serve_forever, name="openai-stub", daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _connection(self, delta: int) -> None:
        with self._connections_lock:
            self.open_connections += delta

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answers: (status, JSON) --

    def answer(self, method: str, path: str, body: dict, auth: str | None, cancel: threading.Event) -> tuple[int, dict]:
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}
        if self.fail is not None:
            return self.fail[0], {"object": "error", "message": self.fail[1], "code": self.fail[0]}
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "stub"}]}
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
            return 404, {"detail": "Not Found"}
        if path == "/tokenize" and not self.tokenize:
            return 404, {"detail": "Not Found"}
        if body.get("model") != self.model:
            return 404, {
                "object": "error",
                "message": f"The model `{body.get('model')}` does not exist.",
                "type": "NotFoundError",
                "code": 404,
            }
        if path == "/tokenize":
            count = self.engine.count_tokens(body.get("prompt", ""))
            answer = {"count": count, "tokens": list(range(count)), "max_model_len": 8192}
            if body.get("return_token_strs") and hasattr(self.engine, "token_strs"):
                answer["token_strs"] = self.engine.token_strs(body.get("prompt", ""))
            return 200, answer
        if "suffix" in body:  # vLLM's answer to OpenAI's FIM field
            return 400, {"object": "error", "message": "suffix is not currently supported", "code": 400}
        if cancel.wait(self.delay_s):
            raise Cancelled("client gone")
        chat = path == "/v1/chat/completions"
        job = self._chat_job(body, cancel) if chat else self._fim_job(body, cancel)
        if job is None:
            return 400, {"object": "error", "message": "prompt is not a dg-lsp FIM or chat prompt", "code": 400}
        with self._engine_lock:
            result = self.engine.rewrite(job) if isinstance(job, RewriteJob) else self.engine.infill(job)
        texts = [c.text for c in result.candidates] or [""]
        texts = (texts * body.get("n", 1))[: body.get("n", 1)]
        if chat:  # as an instruction-tuned model writes it: a sentence, then the code in a fence
            said = [f"Here is the code:\n```python\n{t}\n```" for t in texts]
            choices = [
                {"index": i, "message": {"role": "assistant", "content": s}, "finish_reason": "stop"}
                for i, s in enumerate(said)
            ]
        else:
            choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
        usage = {"prompt_tokens": 10, "completion_tokens": sum(len(t) // 4 for t in texts)}
        return 200, {
            "object": "chat.completion" if chat else "text_completion",
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }

    def _fim_job(self, body: dict, cancel: threading.Event) -> InfillJob | None:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str) or not prompt.startswith(BOS_TEXT):
            return None
        head = prompt[len(BOS_TEXT) :]
        spm, psm = _SPM.search(head), _PSM.search(head)
        if spm is None and psm is None:
            return None
        match = spm or psm
        assert match is not None
        suffix, prefix = match.groups() if spm else match.groups()[::-1]
        snippets = [s for s in head[: match.start()].split(FILE_SEP_TEXT) if s]
        return InfillJob(
            prefix=prefix,
            suffix=suffix,
            n=body.get("n", 1),
            max_tokens=body.get("max_tokens", 64),
            context=tuple(snippets),
            cancel=cancel,
        )

    def _chat_job(self, body: dict, cancel: threading.Event) -> InfillJob | RewriteJob | None:
        content = (body.get("messages") or [{}])[-1].get("content", "")
        if _CODE not in content:
            return None
        code = content.rsplit(_CODE, 1)[1].removesuffix("\n```")
        n, max_tokens = body.get("n", 1), body.get("max_tokens", 64)
        if REWRITE_START in code and REWRITE_END in code:
            prefix, rest = code.split(REWRITE_START, 1)
            block, suffix = rest.split(REWRITE_END, 1)
            return RewriteJob(prefix=prefix, block=block, suffix=suffix, n=n, max_tokens=max_tokens, cancel=cancel)
        if CURSOR not in code:
            return None
        prefix, suffix = code.split(CURSOR, 1)
        return InfillJob(prefix=prefix, suffix=suffix, n=n, max_tokens=max_tokens, cancel=cancel)


def _handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add 40 ms

        def log_message(self, format, *args):  # noqa: A002 - http.server's signature
            pass

        def setup(self):
            super().setup()
            stub._connection(+1)

        def finish(self):
            try:
                super().finish()
            finally:
                stub._connection(-1)

        def do_GET(self):
            self._serve("GET", {})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self._send(400, {"object": "error", "message": "body is not a JSON object"})
                return
            self._serve("POST", body)

        def _serve(self, method: str, body: dict) -> None:
            auth = self.headers.get("Authorization")
            stub.requests.append(
                {
                    "method": method,
                    "path": self.path,
                    "body": body,
                    "authorization": auth,
                    "port": self.client_address[1],
                }
            )
            cancel, done = threading.Event(), threading.Event()
            threading.Thread(target=_watch, args=(self.connection, cancel, done), daemon=True).start()
            try:
                status, data = stub.answer(method, self.path, body, auth, cancel)
            except Cancelled:
                stub.events.append(("cancelled", time.monotonic()))
                self.close_connection = True
                return
            finally:
                done.set()
            stub.events.append(("answered", time.monotonic()))
            self._send(status, data)

        def _send(self, status: int, data: dict) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _watch(conn: socket.socket, cancel: threading.Event, done: threading.Event) -> None:
    """Set `cancel` when the client closes the connection while its request is being answered."""
    while not done.is_set():
        readable, _, _ = select.select([conn], [], [], 0.005)
        if readable:
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    cancel.set()
                    return
            except OSError:
                cancel.set()
                return
            time.sleep(0.005)  # data, not EOF: the next request on this connection; look again shortly


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OpenAI-compatible stand-in for vLLM serving a dg-lsp engine")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default="stub")
    ap.add_argument("--text", default="a + b", help="answer this text at once (the default engine)")
    ap.add_argument("--model", help="serve this model instead (a path, or 'embedded'); needs the model stack")
    ap.add_argument("--api-key", help="require this bearer key")
    ap.add_argument("--no-tokenize", action="store_true", help="no /tokenize endpoint")
    args = ap.parse_args(argv)
    if args.model:
        from dg_lsp.engines import LOCAL

        engine = LOCAL.load(None if args.model == "embedded" else args.model, device="cpu")
    else:
        engine = ConstantEngine(args.text)
    stub = StubServer(engine, args.served_model_name, args.api_key, args.port, tokenize=not args.no_tokenize)
    print(f"listening on {stub.url}", flush=True)
    try:
        stub.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
