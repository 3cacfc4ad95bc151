"""Editor state in, edits out: the one path from text to `Edit`s, shared by the LSP handlers and the CLI.

Each function is: gate -> build the context -> ONE engine call -> post-process each candidate. They run on the
job worker thread (or in the CLI's main thread), never on the event loop: tree-sitter parses and the model are both
too slow for it. Offsets are Python string indices into `text`; the LSP layer converts positions before and after.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Literal, Sequence

from dg_model.api import Engine, InfillJob, RewriteJob

from .context import ContextBudget, build_context, enclosing_block, should_complete
from .postprocess import Edit, postprocess, rank
from .settings import Settings

# Context and validation look at most this far (in characters) from the cursor: a multi-MB file still completes,
# in bounded time, from the part of it around the cursor.
WINDOW_CHARS = 100_000

OtherDocs = Sequence[tuple[str, str, str]]  # (uri, language_id, text)


def budget_of(settings: Settings, reserve_tokens: int = 0) -> ContextBudget:
    c = settings.context
    return ContextBudget(
        max_prompt_tokens=max(64, c.max_prompt_tokens - reserve_tokens),
        suffix_share=c.suffix_share,
        snippet_share=c.snippet_share,
        max_snippets=c.max_snippets,
        # The middle's budget per kind comes from the user's settings; the context module picks the kind.
        line_tokens=settings.max_line_tokens,
        block_tokens=settings.max_block_tokens,
    )


def complete_at(
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
) -> list[Edit]:
    """Completions at `offset`, best first, as edits on `text`; [] when there is nothing worth showing.

    `automatic` (typing, not an explicit request) additionally asks the context module whether this is a place to
    complete at all (not mid-word before text, not in a comment, ...).
    """
    if not settings.enabled_for(language_id):
        return []
    window, base = _window(text, offset)
    offset -= base
    if automatic and not should_complete(window, offset, language_id):
        return []
    ctx = build_context(window, offset, language_id, engine.count_tokens, budget_of(settings), other_docs)
    cap = settings.max_line_tokens if ctx.kind == "line" else settings.max_block_tokens
    job = InfillJob(
        prefix=ctx.prefix,
        suffix=ctx.suffix,
        kind=ctx.kind,
        max_tokens=min(ctx.max_tokens or cap, cap),
        n=settings.candidates,
        context=tuple(ctx.snippets),
        doc_key=doc_key,
        seed=settings.seed,
        temperature=settings.temperature,
        decoding=settings.decoding,
        cancel=cancel,
    )
    result = engine.infill(job)
    return [_shift(e, base) for e in candidate_edits([c.text for c in result.candidates], window, offset, language_id,
                                                     ctx.kind)]


def candidate_edits(
    texts: Sequence[str], text: str, offset: int, language_id: str, kind: Literal["line", "block"]
) -> list[Edit]:
    """The engine's candidate middles as distinct edits at `offset`, post-processed and ranked: best first."""
    edits: list[Edit] = []
    for raw in texts:
        edit = postprocess(raw, text, offset, language_id, kind)
        if edit is not None and edit.text and edit not in edits:
            edits.append(edit)
    return rank(edits)


def rewrite_range(
    engine: Engine,
    text: str,
    start: int,
    end: int,
    language_id: str,
    settings: Settings,
    other_docs: OtherDocs = (),
    cancel: threading.Event | None = None,
    *,
    doc_key: str = "",
) -> Edit | None:
    """A rewrite of `text[start:end]` (the enclosing block when the range is empty) that still parses, or None."""
    if not settings.enabled_for(language_id):
        return None
    start, end = block_range(text, start, end, language_id)
    block = text[start:end]
    if not block.strip():
        return None
    # The block is cut out and the context built around the gap it leaves, so prefix and suffix get the budget the
    # block does not use.
    gap = text[:start] + text[end:]
    window, base = _window(gap, start)
    at = start - base
    block_tokens = engine.count_tokens(block)
    ctx = build_context(window, at, language_id, engine.count_tokens, budget_of(settings, block_tokens), other_docs)
    job = RewriteJob(
        prefix=ctx.prefix,
        block=block,
        suffix=ctx.suffix,
        renoise=settings.renoise,
        max_tokens=max(settings.max_block_tokens, 2 * block_tokens + 16),
        n=settings.candidates,
        doc_key=doc_key,
        seed=settings.seed,
        cancel=cancel,
    )
    result = engine.rewrite(job)
    kind = "block" if "\n" in block else "line"
    fallback = None
    for cand in result.candidates:
        raw = cand.text
        if block.endswith("\n") and not raw.endswith("\n"):
            raw += "\n"  # models tend to drop the final newline; the block had one and the suffix expects it
        if raw == block:
            continue
        edit = postprocess(raw, window, at, language_id, kind)
        if edit is None or edit.start != at:
            continue
        # The post-processor strips trailing blank lines; the block's own line break(s) must stay, or the rewrite
        # would swallow the line break before the suffix.
        trailing = "".join(ch for ch in block[len(block.rstrip()) :] if ch in "\r\n") if edit.end == at else ""
        new_text = edit.text if edit.text.endswith(trailing) else edit.text.rstrip() + trailing
        # Offsets in the gap text at or after `start` are `end - start` further in the original.
        mapped = Edit(start=start, end=edit.end + base + (end - start), text=new_text)
        if text[mapped.start : mapped.end] != mapped.text:
            if edit.compiles is not False:
                return mapped
            fallback = fallback or mapped  # only if no other candidate compiles
    return fallback


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
