"""Editor state in, edits out: the one path from text to `Edit`s, shared by the LSP handlers and the CLI.

Each function is: gate -> build the context -> ONE engine call -> post-process each candidate (`complete` asks a
second, wider time where the best candidate of a request the user waits for would fail when run). They run on the
job worker thread (or in the CLI's main thread), never on the event loop: tree-sitter parses and the model are both
too slow for it. Offsets are Python string indices into `text`; the LSP layer converts positions before and after.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Literal

from dg_model.api import Candidate, Engine, InfillJob, JobResult, JobStats

from . import bindings, diagnose
from .context import ContextBudget, build_context, enclosing_block, should_complete
from .postprocess import Edit, compiles_around, postprocess, prefer_runnable, rank
from .settings import Settings

# Context and validation look at most this far (in characters) from the cursor: a multi-MB file still completes,
# in bounded time, from the part of it around the cursor.
WINDOW_CHARS = 100_000

# Nats of log-likelihood a change to code that passes every check must gain, for "Fix this block" and "Rewrite this
# block" alike. Calibrated on held-out functions of the training corpus (`python -m dg_bench.fix_margin`): the
# embedded model prefers some one-token change to most working blocks (by >= 2 nats for 71% of them, >= 10 for 9%,
# >= 15 for 7%) and restores a flipped operator by less than 10 nats when it does at all, so only a gain no working
# block reached in 97% of cases changes working code: with this model, code that passes the checks is left alone. A
# sharper model earns a lower margin by the same bench.
MARGIN = 16.0
OtherDocs = Sequence[tuple[str, str, str]]  # (uri, language_id, text)


def budget_of(settings: Settings, reserve_tokens: int = 0, typing: bool = False) -> ContextBudget:
    """The context's budget; `typing`: for a request made while typing, whose blocks are shorter."""
    c = settings.context
    block_tokens = min(settings.max_block_tokens, settings.typing_block_tokens) if typing else settings.max_block_tokens
    return ContextBudget(
        max_prompt_tokens=max(64, c.max_prompt_tokens - reserve_tokens),
        suffix_share=c.suffix_share,
        snippet_share=c.snippet_share,
        max_snippets=c.max_snippets,
        # The middle's budget per kind comes from the user's settings; the context module picks the kind.
        line_tokens=settings.max_line_tokens,
        block_tokens=block_tokens,
    )


@dataclasses.dataclass(frozen=True)
class Completions:
    edits: list[Edit]  # best first
    result: JobResult | None  # what the engine answered (raw candidates, its `JobStats`); None: it was not asked


def complete(
    engine: Engine,
    text: str,
    offset: int,
    language_id: str,
    settings: Settings,
    other_docs: OtherDocs = (),
    cancel: threading.Event | None = None,
    *,
    doc_key: str = "",
    automatic: bool = False,
) -> Completions:
    """Completions at `offset`, best first, as edits on `text` ([] when there is nothing worth showing), with the
    engine's answer beside them: its `JobStats` for logs, evaluations and benchmarks.

    `automatic` (typing, not an explicit request) additionally asks the context module whether this is a place to
    complete at all (not mid-word before text, not in a comment, ...).
    """
    if not settings.enabled_for(language_id):
        return Completions([], None)
    window, base = _window(text, offset)
    offset -= base
    if automatic and not should_complete(window, offset, language_id):
        return Completions([], None)
    budget = budget_of(settings, typing=automatic)
    ctx = build_context(window, offset, language_id, engine.count_tokens, budget, other_docs)
    job = InfillJob(
        prefix=ctx.prefix,
        suffix=ctx.suffix,
        kind=ctx.kind,  # decided once, by the context module; the middle's budget for it came with it
        max_tokens=ctx.max_tokens,
        n=settings.candidates,
        context=tuple(ctx.snippets),
        doc_key=doc_key,
        seed=settings.seed,
        temperature=settings.temperature,
        decoding=settings.decoding,
        cancel=cancel,
        # the engine tries harder where the user waits: a key press asked, or a block the settings say is worth it
        invoked=not automatic or (settings.thorough_blocks and ctx.kind == "block"),
    )
    result = engine.infill(job)
    edits = candidate_edits([c.text for c in result.candidates], window, offset, language_id, ctx.kind, job.invoked)
    # Where the best a request the user waits for offers would stop a run (or it offers nothing), ask again: first
    # with the line the code below needs opened for the model (bindings.py), then, if that is not it either (and only
    # where there was an answer: a wider beam does not find one where a beam of 10 found none), with a wider beam.
    retry = job.invoked and settings.retry_candidates > 0  # 0: never ask twice
    wider = False  # where the first answer runs, it is checked once, not again for the wider beam
    if retry and (not edits or _would_fail(edits, window, language_id, unsure=True)):
        for opening in bindings.openings(window, offset, language_id):
            result = _plus(result, _finish(engine, job, opening, settings.max_line_tokens))
        edits = candidate_edits([c.text for c in result.candidates], window, offset, language_id, ctx.kind, True)
        wider = settings.retry_candidates > job.n and _would_fail(edits, window, language_id)
    if wider:
        result = _plus(result, engine.infill(dataclasses.replace(job, n=settings.retry_candidates)))
        edits = candidate_edits([c.text for c in result.candidates], window, offset, language_id, ctx.kind, True)
    return Completions([_shift(e, base) for e in edits], result)


def _finish(engine: Engine, job: InfillJob, opening: bindings.Opening, max_tokens: int) -> JobResult:
    """Candidates that start with `opening`: the model finishes the line after it (the whole line needs no call)."""
    if opening.whole:
        return JobResult([Candidate(opening.text, 0.0)], JobStats())
    job = dataclasses.replace(job, prefix=job.prefix + opening.text, kind="line", max_tokens=max_tokens)
    answer = engine.infill(job)
    return JobResult([Candidate(opening.text + c.text, c.score) for c in answer.candidates], answer.stats)


def _plus(first: JobResult, then: JobResult) -> JobResult:
    """Two engine answers as one: the first's candidates keep their places, the second's follow."""
    return JobResult(first.candidates + then.candidates, _sum_stats(first.stats, then.stats))


def _would_fail(edits: list[Edit], text: str, language_id: str, unsure: bool = False) -> bool:
    """Whether the best edit leaves code the compiler refuses (every candidate does: those go last) or a run trips
    over; with `unsure`, also code that reads a local some path leaves unbound. That much asks for the openings, which
    cost a short line job where there are any (a name read below that only some paths bind) and nothing otherwise,
    but not for the wider beam: `return i` after a loop that binds `i` is common in working code."""
    if not edits:
        return False
    best = edits[0]
    if best.compiles is False:
        # the edit's fault only where a line there can compile: code still being typed below often does not
        return bool(compiles_around(text, best.start, best.end, language_id))
    check = diagnose.check_run(text, best.start, best.end, best.text, language_id)
    return check is not None and (check.faults > 0 or (unsure and check.unsure > 0))


def _sum_stats(first: JobStats, then: JobStats) -> JobStats:
    """Two engine calls' costs as one answer's: the first call's prompt, both calls' work."""
    return dataclasses.replace(
        first,
        steps=first.steps + then.steps,
        decoder_ms=first.decoder_ms + then.decoder_ms,
        new_tokens=first.new_tokens + then.new_tokens,
        total_ms=first.total_ms + then.total_ms,
        encode_ms=first.encode_ms + then.encode_ms,
        rescore_ms=first.rescore_ms + then.rescore_ms,
        decoder_forwards=first.decoder_forwards + then.decoder_forwards,
        drafted=first.drafted + then.drafted,
        accepted=first.accepted + then.accepted,
    )


def candidate_edits(
    texts: Sequence[str],
    text: str,
    offset: int,
    language_id: str,
    kind: Literal["line", "block"],
    thorough: bool = False,
) -> list[Edit]:
    """The engine's candidate middles as distinct edits at `offset`, post-processed and ranked: best first.
    `thorough` (a job the user waits for, `InfillJob.invoked`): also by what a run would trip over, which costs a
    check per candidate weighed (`prefer_runnable`); typing within a line keeps its time for the model."""
    edits: list[Edit] = []
    for raw in texts:
        edit = postprocess(raw, text, offset, language_id, kind)
        if edit is not None and edit.text and edit not in edits:
            edits.append(edit)
    ranked = rank(edits)
    return prefer_runnable(ranked, text, language_id) if thorough else ranked


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """A block cut out of its document, and the prompt context around the gap it leaves."""

    start: int  # the block: text[start:end]
    end: int
    block: str
    prefix: str
    suffix: str
    window: str  # the document without the block, cut to WINDOW_CHARS around it
    base: int  # where `window` starts in the gap text
    block_tokens: int


def block_context(
    engine: Engine, text: str, start: int, end: int, language_id: str, settings: Settings, other_docs: OtherDocs = ()
) -> BlockContext | None:
    """The block a rewrite or fix works on (the enclosing syntax block when the range is empty) in its context, or
    None when there is nothing to work on."""
    if not settings.enabled_for(language_id):
        return None
    start, end = block_range(text, start, end, language_id)
    block = text[start:end]
    if not block.strip():
        return None
    # The block is cut out and the context built around the gap it leaves, so prefix and suffix get the budget the
    # block does not use.
    window, base = _window(text[:start] + text[end:], start)
    block_tokens = engine.count_tokens(block)
    ctx = build_context(
        window, start - base, language_id, engine.count_tokens, budget_of(settings, block_tokens), other_docs
    )
    return BlockContext(start, end, block, ctx.prefix, ctx.suffix, window, base, block_tokens)


def block_range(text: str, start: int, end: int, language_id: str) -> tuple[int, int]:
    """The range a rewrite works on: the selection, or with an empty selection the enclosing syntax block."""
    if start != end:
        return start, end
    window, base = _window(text, start)
    s, e = enclosing_block(window, start - base, end - base, language_id)
    return s + base, e + base


def _window(text: str, offset: int) -> tuple[str, int]:
    """`text` cut to whole lines within WINDOW_CHARS of `offset`, and the offset the cut starts at."""
    if len(text) <= 2 * WINDOW_CHARS:
        return text, 0
    lo = max(0, offset - WINDOW_CHARS)
    if lo > 0:
        nl = text.find("\n", lo, offset)
        lo = nl + 1 if nl >= 0 else lo  # start at a line start when there is one nearby
    hi = min(len(text), offset + WINDOW_CHARS)
    if hi < len(text):
        nl = text.rfind("\n", offset, hi)
        hi = nl + 1 if nl >= 0 else hi
    return text[lo:hi], lo


def _shift(edit: Edit, base: int) -> Edit:
    return edit if base == 0 else dataclasses.replace(edit, start=edit.start + base, end=edit.end + base)
