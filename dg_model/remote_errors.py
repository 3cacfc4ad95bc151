"""What a user is told about the remote server: a failure as ONE `RemoteError` sentence (what happened, where, and
the fix) with a `kind` the server layer acts on, the URL without its credentials, and a warning for plain http."""

from __future__ import annotations

import ipaddress

import httpx

from dg_model.api import EngineError

API_KEY_ENV = "DG_LSP_API_KEY"  # the only place the key comes from: never argv, never a settings file
KINDS = ("unreachable", "timeout", "auth", "model", "request", "server", "config")


class RemoteError(EngineError):
    """The server could not answer. `kind`: one of KINDS; the message says what happened, where, and the fix."""

    def __init__(self, kind: str, message: str) -> None:
        assert kind in KINDS, kind
        super().__init__(message)
        self.kind = kind


def display_url(url: str) -> str:
    """The URL without user:password, for messages and status lines."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url  # RemoteEngine reports it
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url


def insecure(url: str) -> bool:
    """Plain http to another machine: code and the API key cross the network readable."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        return False
    if parsed.host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(parsed.host).is_loopback
    except ValueError:
        return True


def read_answer(response: httpx.Response, server: str, where: str, key: str, model: str) -> dict:
    """The JSON object `server` answered on `where`, or the RemoteError that says what went wrong and the fix. `key`
    is blanked out of the server's words."""
    code, detail = response.status_code, _detail(response)
    if key:
        detail = detail.replace(key, "***")
    if code in (401, 403):
        fix = f"check the key in {API_KEY_ENV}" if key else f"set the server's API key in {API_KEY_ENV}"
        raise RemoteError("auth", f"{server} refused the request (HTTP {code}: {detail}); {fix}")
    if code == 404 and "model" in detail.lower():
        raise RemoteError("model", f"{server} does not serve model {model!r} ({detail}); set remote.model")
    if 400 <= code < 500:
        hint = "; is remote.url the server's /v1 base?" if code == 404 else ""
        raise RemoteError("request", f"{server} rejected {where} (HTTP {code}: {detail}){hint}")
    if code >= 300:
        raise RemoteError("server", f"{server} failed on {where} (HTTP {code}: {detail})")
    try:
        data = response.json()
    except ValueError:
        raise RemoteError("server", f"{server} answered {where} with something that is not JSON") from None
    if not isinstance(data, dict):
        raise RemoteError("server", f"{server} answered {where} with unexpected JSON")
    return data


def _detail(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, vLLM's {"message"}, or the status phrase."""
    try:
        data = response.json()
    except ValueError:
        return first_line(response.text) or response.reason_phrase
    error = data.get("error", data) if isinstance(data, dict) else data
    message = error.get("message") if isinstance(error, dict) else error
    return first_line(message or response.reason_phrase)


def first_line(value: object, limit: int = 200) -> str:
    line = next((s.strip() for s in str(value).splitlines() if s.strip()), "")
    if not line and isinstance(value, BaseException):
        line = type(value).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
