"""One typed settings object for the server, parsed from camelCase JSON.

Settings arrive from three places: command-line flags (the base), `initializationOptions` and
`workspace/didChangeConfiguration` (section "dg"). All three go through `parse_settings`, which merges a partial
camelCase dict over a base `Settings`. A bad key never crashes the server: it keeps the base value for that key and
is reported back, so the caller can show one warning naming it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from dg_model.api import Decoding

SECTION = "dg"


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"range": (lo, hi)}


@dataclass(kw_only=True)
class ContextSettings:
    """Token budget for the prompt (see `dg_lsp.context.ContextBudget`)."""

    # The embedded model was trained on 512-token prompts; 480 leaves room for the FIM tokens so the engine never
    # re-trims (a re-trim shifts the prompt start while typing and defeats the prompt cache).
    max_prompt_tokens: int = field(default=480, metadata=_range(16, 32768))
    suffix_share: float = field(default=0.25, metadata=_range(0.0, 0.9))
    snippet_share: float = field(default=0.15, metadata=_range(0.0, 0.9))
    max_snippets: int = field(default=3, metadata=_range(0, 16))


@dataclass(kw_only=True)
class RemoteSettings:
    """An OpenAI-compatible server (vLLM) that runs the model for this editor (docs/remote.md). The API key is never a
    setting: it comes from the environment variable DG_LSP_API_KEY, so it stays out of settings files and argv."""

    url: str | None = None  # the API's /v1 base, e.g. "http://gpu-box:8000/v1"; None: run the model in this process
    model: str | None = None  # the served model name; None: the one model the server lists
    # "auto": FIM tokens when the model's tokenizer has them, else the chat format; or force one of them.
    format: Literal["auto", "fim-spm", "fim-psm", "chat"] = "auto"
    tokenizer: str | None = None  # tokenizer.json (or its folder) for exact local token counts; None: look for one
    # A completion that takes longer answers empty; the next keystroke does not wait for it either way (it cancels).
    timeout_ms: int = field(default=5000, metadata=_range(100, 600000))
    # When the server fails, complete with the local model (`model`/`device`/`quantize`) instead of answering empty.
    fallback: bool = False


@dataclass(kw_only=True)
class Settings:
    model: str | None = None  # path or HF id; None = the embedded model
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantize: Literal["none", "8bit", "4bit"] = "none"
    # Per-language switch keyed by LSP languageId; a language that is not listed is enabled.
    enable: dict[str, bool] = field(default_factory=dict)
    context: ContextSettings = field(default_factory=ContextSettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    max_line_tokens: int = field(default=48, metadata=_range(1, 4096))
    max_block_tokens: int = field(default=192, metadata=_range(1, 4096))
    candidates: int = field(default=1, metadata=_range(1, 8))
    # Server-side wait before an automatic request runs. 0: editors already debounce (VS Code's inline completion
    # trigger, the Neovim plugin's 75 ms), and a superseded job stops within one model step, so a second wait here only
    # adds latency (bench latency: time-to-result p50 127 ms at 50, 81 ms at 0, same CPU model). Raise it for a client
    # that asks on every keystroke with no wait of its own.
    debounce_ms: int = field(default=0, metadata=_range(0, 5000))
    # While the user types along with a suggestion, answer with its untyped rest instead of asking the model again
    # (dg_lsp/typeahead.py). Off: every keystroke asks the model.
    type_ahead: bool = True
    # A suggestion while typing on an empty line or after a block's opener (a block job) is asked for as an explicit
    # request is: the embedded model decodes it with a beam of 10 re-ranked by the suffix's next line, and passes 211
    # instead of 153 of 1,033 HumanEval lines (eval humaneval --editor --trigger automatic). That is where a typist
    # waits for a whole line; it costs ~2.2x the time there (bench latency, three pairs on the quiet 2-core CPU, line
    # starts p50 428 vs 192 ms) and nothing within a line (p50 121 vs 141 ms). Off: every typing request is fast.
    thorough_blocks: bool = True
    # Where the best of an explicit request (or of a thorough block) does not compile or would certainly fail when
    # run (a name nothing defines, a function calling itself endlessly, a local read where no path binds it:
    # dg_lsp/diagnose.py), it asks again: first with the line the code below needs opened for the model
    # (dg_lsp/bindings.py: `total =` where the lines below add to `total`; this much also where the best reads a local
    # some path leaves unbound), then, if that is not it either, with one beam this wide. With the embedded model
    # 22% of HumanEval's 1,033 lines would fail; the wider beam alone makes 243 pass instead of 231 (session 15), the
    # opening first 295 (session 16), at the cost of a second decode on those requests (model card). 0: never ask
    # twice.
    retry_candidates: int = field(default=24, metadata=_range(0, 64))
    # The middle's budget for a block asked for while typing (maxBlockTokens caps it too). A block decoded token by
    # token costs one model step per token, and a beam of 10 writing 192 tokens kept a typist waiting seconds for
    # lines below the screen: bench latency, three alternating pairs on the quiet 2-core CPU, line starts p95 1.5 s at
    # 64 against 4.6 s at 192, p50 the same (451 / 445 ms); HumanEval through `--trigger automatic` passes the same
    # tasks (211 single-line, 1 multi-line), 64 tokens holding 88% of its multi-line middles. A block out of budget
    # ends with its last whole line. An explicit request writes up to maxBlockTokens.
    typing_block_tokens: int = field(default=64, metadata=_range(1, 4096))
    # How long a request waits for a model that is still loading before it answers empty.
    model_wait_ms: int = field(default=2000, metadata=_range(0, 60000))
    renoise: float = field(default=0.15, metadata=_range(0.05, 1.0))  # share of a rewritten block's words re-noised
    temperature: float | None = field(default=None, metadata=_range(0.0, 5.0))  # diffusion only (AR: greedy/beam)
    # "auto": the model's own measured choice per job kind (dg_engine.json); "diffusion", "ar" or "hybrid" (the
    # decoder drafts, the encoder keeps what it agrees with) force one decoder for every completion. Rewrites denoise.
    decoding: Decoding = "auto"
    seed: int | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def enabled_for(self, language_id: str) -> bool:
        return self.enable.get(language_id, self.enable.get("*", True))

    @property
    def engine_key(self) -> tuple[str | None, str, str]:
        """What identifies a loaded engine: a change here means reloading the model."""
        return (self.model, self.device, self.quantize)

    @property
    def backend_key(self) -> tuple:
        """What identifies the whole backend, the remote server included: a change here means reloading."""
        return (*self.engine_key, self.remote.url and dataclasses.astuple(self.remote))


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# cattrs' default hooks coerce ("yes" -> True, 3 -> "3"); settings typed by hand deserve a clear error instead.
def _strict(kind: type, accept: tuple[type, ...]):
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accept):
            raise ValueError(f"expected {kind.__name__}, got {type(value).__name__}")
        result = kind(value)
        if kind is float and not math.isfinite(result):
            raise ValueError("expected a finite number")
        return result

    return hook


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    conv.register_structure_hook(int, _strict(int, (int,)))
    conv.register_structure_hook(float, _strict(float, (int, float)))
    conv.register_structure_hook(str, _strict(str, (str,)))
    for cls in (ContextSettings, RemoteSettings, Settings):
        # Any: mypy matches a `**dict` against the functions' named bool options too, not only their `**overrides`.
        renames: dict[str, Any] = {f.name: override(rename=camel(f.name)) for f in dataclasses.fields(cls)}
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **renames))
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **renames))
    return conv


_converter = _make_converter()


def to_json(settings: Settings) -> dict[str, Any]:
    return _converter.unstructure(settings)


def parse_settings(raw: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Merge the camelCase dict `raw` over `base`. Returns the settings and the dotted names of rejected keys.

    `raw` may be the "dg" section itself or an object holding it (`{"dg": {...}}`), as clients send either.
    """
    base = base or Settings()
    if raw is None:
        return base, []
    if isinstance(raw, dict) and isinstance(raw.get(SECTION), dict):
        raw = raw[SECTION]
    if not isinstance(raw, dict):
        return base, [SECTION]
    merged = _merge(to_json(base), raw)
    bad: list[str] = []
    # Each pass drops the keys cattrs rejected; bounded by the number of keys, in practice 1-2 passes.
    for _ in range(64):
        try:
            settings = _converter.structure(merged, Settings)
            break
        except (ClassValidationError, ForbiddenExtraKeysError) as exc:
            paths = list(_bad_paths(exc, ()))
            assert paths, f"cattrs error without a path: {exc!r}"
            for path in paths:
                bad.append(".".join(path))
                _drop(merged, path, to_json(base))
    else:  # pragma: no cover - would need > 64 independent bad keys that re-fail
        return base, bad or [SECTION]
    bad += _check_ranges(settings, base, ())
    return settings, sorted(set(bad))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if value is None:
            continue  # clients send null for "not set" (VS Code setting defaults); keep the base value
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "enable":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _bad_paths(exc: BaseException, path: tuple[str, ...]):
    """Yield camelCase key paths named by a cattrs validation error tree."""
    if isinstance(exc, ForbiddenExtraKeysError):
        yield from (path + (key,) for key in sorted(exc.extra_fields))
    elif isinstance(exc, ClassValidationError):
        for sub, note in exc.group_exceptions()[0]:
            yield from _bad_paths(sub, path + (camel(note.name),))
        for sub in exc.group_exceptions()[1]:
            yield from _bad_paths(sub, path)
    elif isinstance(exc, IterableValidationError):
        for sub, item in exc.group_exceptions()[0]:
            yield from _bad_paths(sub, path + (str(item.index),))
        if not exc.group_exceptions()[0]:
            yield path
    else:
        yield path


def _drop(merged: dict[str, Any], path: tuple[str, ...], base: dict[str, Any]) -> None:
    """Put the base value back at `path` (or remove the key when the base has none)."""
    node, base_node = merged, base
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            # The parent itself has the wrong shape: restore the whole parent.
            node[key] = base_node.get(key) if isinstance(base_node, dict) else None
            return
        node, base_node = node[key], (base_node or {}).get(key, {})
    if isinstance(base_node, dict) and path[-1] in base_node:
        node[path[-1]] = base_node[path[-1]]
    else:
        node.pop(path[-1], None)


def _check_ranges(obj: Any, base: Any, path: tuple[str, ...]) -> list[str]:
    bad: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            bad += _check_ranges(value, getattr(base, f.name), path + (camel(f.name),))
            continue
        lo, hi = f.metadata.get("range", (None, None))
        if value is None or (lo is None and hi is None):
            continue
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            setattr(obj, f.name, getattr(base, f.name))
            bad.append(".".join(path + (camel(f.name),)))
    return bad
