"""The one contract between the editor half (`dg_lsp`) and the model half (`dg_model`).

`dg_lsp` builds jobs from editor state and never touches tensors; `dg_model` turns jobs into text and never imports
lsprotocol. Everything that crosses the boundary is plain strings and numbers, so the server can be tested with a
fake engine and the engine without a server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

# How a completion is decoded: the one list of choices (settings, job, engine and command line take it from here).
# "diffusion": the denoising sampler; "ar": next-token decoding through the causal encoder of the same weights;
# "hybrid": the decoder drafts, the encoder keeps what it agrees with (greedy AR's text, fewer encoder forwards);
# "auto": what the model's engine settings recommend for the job's kind (measured per model, see dg_engine.json)
Decoding = Literal["auto", "diffusion", "ar", "hybrid"]
DECODINGS: tuple[str, ...] = get_args(Decoding)


class Cancelled(Exception):
    """The job's `cancel` event was set; the engine stopped at its next decoder step and produced nothing."""


class EngineError(Exception):
    """A problem the user can fix (missing weights, unknown model id, no CUDA). The message says how."""


class EngineOutOfMemory(Exception):
    """The job ran out of memory (GPU or host), whatever library noticed: the one type `dg_lsp` falls back on, so it
    never needs to know torch. Not an `EngineError`: code that tolerates an engine's refusal must not swallow it.

    `free_memory`, when given, returns what the engine's device allocator caches to the device; the server calls it
    after the failure and again once the engine is dropped. It must not hold on to the engine.
    """

    def __init__(self, message: str, free_memory: Callable[[], None] | None = None) -> None:
        super().__init__(message)
        self.free_memory = free_memory


@dataclass(frozen=True)
class InfillJob:
    """Fill the gap between `prefix` and `suffix` (fill-in-the-middle at the cursor)."""

    prefix: str
    suffix: str
    # "line": finish the current line; "block": several lines (empty body, start of a statement). dg_lsp decides.
    kind: Literal["line", "block"] = "line"
    max_tokens: int = 64  # budget for the whole middle, across canvases
    canvas: int | None = None  # canvas length override; None lets the engine size it from `kind`
    n: int = 1  # candidates, batched in one forward
    context: Sequence[str] = ()  # snippets from other open documents, most relevant last
    doc_key: str = ""  # stable per document (its URI): the engine keeps one prompt cache per key
    seed: int | None = None
    temperature: float | None = None  # diffusion sampling; None: the model's generation_config. AR is greedy/beam
    decoding: Decoding = "auto"  # see `Decoding`
    cancel: threading.Event | None = None
    on_draft: Callable[[str], None] | None = None  # argmax text after each decoder step
    # Asked for explicitly, not while typing: the user waits for this one, so the engine may take longer for a better
    # first candidate (`EngineSettings.invoked_beam`, `next_line_rescore`).
    invoked: bool = False


@dataclass(frozen=True)
class RewriteJob:
    """Rewrite `block`, which sits between `prefix` and `suffix`, keeping both as context."""

    prefix: str
    block: str
    suffix: str
    # Share of the block's words written afresh, those holding the tokens least likely in place first (at least one);
    # every other token stays.
    renoise: float = 0.15
    max_tokens: int = 256
    n: int = 1  # candidates per word and length tried (a remote API: samples)
    # Character ranges of `block` the editor's checks find wrong (an undefined name; a point: where the parser gave
    # up): their words are written afresh too.
    suspects: tuple[tuple[int, int], ...] = ()
    doc_key: str = ""
    seed: int | None = None
    cancel: threading.Event | None = None


@dataclass(frozen=True)
class ScoreJob:
    """How well each of `blocks` fits between `prefix` and `suffix`: the self-correction actions read the block as it
    is and rank repairs by it."""

    prefix: str
    suffix: str
    blocks: Sequence[str]  # the block as it is first, then candidate replacements; scored in one batch
    doc_key: str = ""
    cancel: threading.Event | None = None
    # Per-token scores, and the alternatives for `blocks[0]` (one more decoder forward); False: totals only, for
    # ranking candidates.
    detail: bool = True


@dataclass
class TokenScore:
    start: int  # the token's characters in its block: block[start:end]
    end: int
    logprob: float  # the causal encoder's log-probability of the token after everything before it
    # Tokens that would fit here instead, best first, as (text, log-probability): the bidirectional decoder's reading
    # of the block as it is (both sides in view) and the encoder's next-token choice. Only for `blocks[0]`.
    alternatives: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class BlockScore:
    logprob: float  # total log-probability of the block and the end of the middle: comparable across lengths
    tokens: list[TokenScore]  # empty unless the job asked for detail


@dataclass
class JobStats:
    mode: str = "diffusion"  # "diffusion" | "ar" | "hybrid"
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens served from the per-document cache instead of re-encoded
    encode_ms: float = 0.0
    steps: int = 0  # decoder forwards (diffusion) or encoder forwards (ar)
    decoder_ms: list[float] = field(default_factory=list)  # per step
    new_tokens: int = 0
    total_ms: float = 0.0
    decoder_forwards: int = 0  # bidirectional decoder passes (diffusion steps, or hybrid drafts)
    drafted: int = 0  # hybrid: draft tokens offered to the encoder, and those it agreed with
    accepted: int = 0
    rescore_ms: float = 0.0  # re-ranking the candidates by the suffix's next line (rescore.py), prompt included

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0


@dataclass
class Candidate:
    text: str
    # higher is better, compared within one result: the mean log-probability of the committed tokens, or, where the
    # engine re-read its candidates (rescore.py), the total log-probability of each followed by the suffix's next line
    score: float


@dataclass
class JobResult:
    candidates: list[Candidate]  # best first; may be empty
    stats: JobStats


class Engine(Protocol):
    """What dg_lsp needs from a model. Implementations must be safe to call from one worker thread at a time."""

    name: str  # model name for status lines
    device: str  # "cpu", "cuda:0", ...

    def count_tokens(self, text: str) -> int: ...

    def infill(self, job: InfillJob) -> JobResult: ...

    def rewrite(self, job: RewriteJob) -> JobResult: ...

    def score(self, job: ScoreJob) -> list[BlockScore]: ...
