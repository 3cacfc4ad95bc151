"""'Rewrite this block': the denoiser's self-correction of a block, as an edit the editor may offer.

block context -> ONE `RewriteJob` (the engine writes the words it doubts afresh: dg_model/rewrite_spans.py) -> each
candidate post-processed in place and checked -> ONE `ScoreJob` ranks them -> `choose` offers the best only if it
earns its place. `rewrite_options` stops before the choice, so `python -m dg_bench.rewrite_tolerance` calibrates it.
"""

from __future__ import annotations

import dataclasses
import threading

from dg_model.api import Engine, EngineError, RewriteJob, ScoreJob

from .diagnose import Problem, problems
from .pipeline import MARGIN, BlockContext, OtherDocs, block_context
from .postprocess import Edit, postprocess
from .repairs import edit_distance
from .settings import Settings

# Nats a rewrite of a block with a problem may lose against it, after the channel's price of its change: e^2, about
# 7 times less likely, is still "as plausible" when the rewrite removes a problem the block has.
REWRITE_TOLERANCE = 2.0
# Nats per changed character a rewrite pays (the noisy channel of `repairs.CHANNEL`, priced higher): a fresh rewrite
# draws far more alternatives than "Fix this block"'s few named repairs, and among many a wrong one that reads well is
# common. On held-out corpus slips (`dg_bench.rewrite_tolerance`, 302 blocks) 6 restores 19.8% (2: 20.3%), offers a
# wrong change for 2.2% instead of 12.1%, and changes 0.8% of intact blocks instead of 5.8%. 8 offers fewer wrong
# changes still, but its restored share falls as soon as the tolerance moves (a dropped bracket's repair gains 6-10
# nats: at the edge of 8 - 2); 6 holds its share from tolerance 0 to 4.
REWRITE_CHANNEL = 6.0
REWRITE_CANDIDATES = 4  # per word and length the denoiser tries: the model's score picks among them
# Why `rewrite_range` returned None, for the editor and the CLI alike.
NO_REWRITE = (
    "no rewrite of this block parsed, added no problem and earned its place (one that removes a problem and "
    "is about as likely, or, for code that passes the checks, one the model finds far likelier)"
)


@dataclasses.dataclass(frozen=True)
class Option:
    edit: Edit
    # The model's log-likelihood of the rewritten block in place less the block's; None from an engine that cannot
    # score (a remote API).
    logprob_gain: float | None
    distance: int  # characters changed


@dataclasses.dataclass(frozen=True)
class RewriteOptions:
    """The rewrites that pass the checks, in the engine's order, and whether the block as it is has a problem."""

    broken: bool
    options: list[Option]


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
    """A rewrite of `text[start:end]` (the enclosing block when the range is empty) that earns its place, or None."""
    found = rewrite_options(engine, text, start, end, language_id, settings, other_docs, cancel, doc_key=doc_key)
    return None if found is None else choose(found)


def choose(
    found: RewriteOptions, channel: float = REWRITE_CHANNEL, tolerance: float = REWRITE_TOLERANCE
) -> Edit | None:
    """The option the model finds likeliest in place less the size of its change (the noisy channel "Fix this block"
    ranks by: the block as typed is evidence, so a change pays `channel` nats a character), if it earns its place:
    for a broken block, within `tolerance` nats of the block as it is (a misspelt name's respelling wins over a new
    expression in its place); for working code, MARGIN nats likelier, as "Fix this block" asks. A small model's fresh
    rewrite is more often wrong than right, and a rewrite that breaks working code is worse than none."""
    if not found.options:
        return None
    if any(o.logprob_gain is None for o in found.options):
        return found.options[0].edit  # unranked: the first candidate that passes the checks
    gain, best = max(
        (((o.logprob_gain or 0.0) - channel * o.distance, o) for o in found.options), key=lambda scored: scored[0]
    )
    return best.edit if gain >= (-tolerance if found.broken else MARGIN) else None


def rewrite_options(
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
) -> RewriteOptions | None:
    """The engine's rewrites of the block that parse as written and add no problem, each with what `choose` weighs;
    None when there is no block to rewrite."""
    bc = block_context(engine, text, start, end, language_id, settings, other_docs)
    if bc is None:
        return None
    found = problems(text, bc.start, bc.end, language_id)
    job = RewriteJob(
        prefix=bc.prefix,
        block=bc.block,
        suffix=bc.suffix,
        renoise=settings.renoise,
        max_tokens=max(settings.max_block_tokens, 2 * bc.block_tokens + 16),
        n=max(settings.candidates, REWRITE_CANDIDATES),
        suspects=tuple(
            (p.start - bc.start, p.end - bc.start) for p in found if p.hard and bc.start <= p.start <= bc.end
        ),
        doc_key=doc_key,
        seed=settings.seed,
        cancel=cancel,
    )
    result = engine.rewrite(job)
    edits = [e for e in (_rewrite_edit(text, bc, c.text, language_id) for c in result.candidates) if e is not None]
    return _checked(engine, text, bc, edits, language_id, doc_key, cancel, found)


def _rewrite_edit(text: str, bc: BlockContext, raw: str, language_id: str) -> Edit | None:
    """A rewrite candidate as an edit of `text` that changes it and still parses, or None."""
    # The block's code is rewritten and its trailing line breaks and blank lines stay where they are: the candidate is
    # post-processed in the document with them in place, as a completion of an emptied line is (without them the
    # rewrite would run into the line after the block).
    code = bc.block.rstrip()
    body = code + bc.block[len(code) :].split("\n", 1)[0].rstrip("\r")  # through the last code line's end
    raw = raw.rstrip()
    if raw == body:
        return None
    at = bc.start - bc.base
    window = bc.window[:at] + bc.block[len(body) :] + bc.window[at:]
    edit = postprocess(raw, window, at, language_id, "block" if "\n" in body else "line")
    if edit is None or edit.start != at or edit.end != at or edit.compiles is False:
        return None  # never offer a rewrite that breaks the parse
    if edit.text.replace("\r\n", "\n") != raw.replace("\r\n", "\n"):
        return None  # post-processing had to change it (cut what does not parse, closed a bracket): not this rewrite
    mapped = Edit(start=bc.start, end=bc.start + len(body), text=edit.text)
    return mapped if text[mapped.start : mapped.end] != mapped.text else None


def _checked(
    engine: Engine,
    text: str,
    bc: BlockContext,
    edits: list[Edit],
    language_id: str,
    doc_key: str,
    cancel: threading.Event | None,
    found: list[Problem],
) -> RewriteOptions:
    """The edits that remove a problem of a broken block (or, for working code, add none), scored in place."""

    def after(edit: Edit) -> tuple[str, int, int]:
        new = text[: edit.start] + edit.text + text[edit.end :]
        return new, bc.start, max(edit.start + len(edit.text), bc.end + len(new) - len(text))

    def counts(found: list[Problem]) -> tuple[int, int]:
        hard = sum(p.hard for p in found)
        return hard, len(found) - hard

    hard_before, soft_before = counts(found)
    kept, blocks = [], [bc.block]
    for edit in edits:
        new, start, end = after(edit)
        hard, soft = counts(problems(new, start, end, language_id))
        # no rewrite may add even a soft problem: a name assigned and never read is a respelt variable, or a
        # `retrun x` "repaired" into `retr = x`
        if soft <= soft_before and (hard < hard_before or hard == hard_before == 0):
            kept.append(edit)
            blocks.append(new[start:end])
    broken = hard_before > 0
    if not kept:
        return RewriteOptions(broken, [])
    try:
        scores = engine.score(ScoreJob(bc.prefix, bc.suffix, blocks, doc_key, cancel, detail=False))
    except EngineError:
        return RewriteOptions(broken, [Option(e, None, edit_distance(bc.block, b)) for e, b in zip(kept, blocks[1:])])
    return RewriteOptions(
        broken,
        [
            Option(e, s.logprob - scores[0].logprob, edit_distance(bc.block, b))
            for e, b, s in zip(kept, blocks[1:], scores[1:])
        ],
    )
