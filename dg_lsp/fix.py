""" "Fix this block": self-correction that keeps what is right.

    block -> problems (diagnose.py: compiler, tree-sitter, pyflakes) -> the model reads the block as it is (its
    likelihood per token, and the tokens it would rather see) -> candidate repairs (repairs.py) -> the candidates the
    checks accept -> the model scores them -> the best one, if it earns its place -> again, a few rounds

A repair of broken code (a syntax error, an undefined name) must remove a problem; among those that do, the model's
likelihood of the block in its place decides. Code that passes every check is changed only where the model prefers a
repair by a wide margin (MARGIN): most blocks a user asks to fix are fine, and then "nothing to fix" is the answer.
The line the first problem sits on is also written afresh by the model (fill-in-the-middle, the rest of the block
pinned), for slips no small edit undoes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dg_model.api import BlockScore, Engine, EngineError, InfillJob, ScoreJob

from . import diagnose, languages, repairs
from .diagnose import Problem, Region
from .pipeline import MARGIN, BlockContext, OtherDocs, block_context
from .postprocess import Edit
from .settings import Settings

ROUNDS = 3
# A token the model gives less than e^-3 (5%) in its place is one it finds unlikely.
SUSPECT = -3.0


@dataclass(frozen=True)
class FixResult:
    edit: Edit | None  # None: nothing to fix, or nothing found that fixes it (`message` says which)
    message: str
    problems: tuple[Problem, ...] = ()  # what the checks found in the block as it was


@dataclass
class _Option:
    block: str
    problems: list[Problem]
    logprob: float = 0.0
    edits: int = 0  # characters changed from the block it repairs

    @property
    def merit(self) -> float:
        return self.logprob - repairs.CHANNEL * self.edits

    @property
    def hard(self) -> int:
        return sum(p.hard for p in self.problems)

    @property
    def soft(self) -> int:
        return len(self.problems) - self.hard


def fix_range(
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
) -> FixResult:
    """The fix of `text[start:end]` (the enclosing block when the range is empty)."""
    bc = block_context(engine, text, start, end, language_id, settings, other_docs)
    if bc is None:
        return FixResult(None, "no code to fix here")
    fixer = _Fixer(engine, text, bc, language_id, settings, cancel, doc_key)
    first = fixer.check(bc.block)
    current = first
    for _ in range(ROUNDS):
        # Once broken code passes the checks, stop: what the model would change further is its taste, not a slip.
        if current is not first and not current.hard:
            break
        better = fixer.round(current)
        if better is None:
            break
        current = better
    found = tuple(p for p in first.problems if p.hard)
    if current.block == bc.block:
        if found:
            return FixResult(None, f"found {_describe(found)} but no repair the checks accept", found)
        return FixResult(None, "nothing to fix in this block", found)
    what = f"fixed {_describe(found)}" if found and current.hard < first.hard else "fixed what the model found unlikely"
    return FixResult(Edit(bc.start, bc.end, current.block), what, found)


class _Fixer:
    def __init__(
        self,
        engine: Engine,
        text: str,
        bc: BlockContext,
        language_id: str,
        settings: Settings,
        cancel: threading.Event | None,
        doc_key: str,
    ) -> None:
        self.engine, self.text, self.bc, self.language_id = engine, text, bc, language_id
        self.settings, self.cancel, self.doc_key = settings, cancel, doc_key
        self.region = diagnose.region_of(text, bc.start, bc.end)
        self.pool = diagnose.name_pool(text, language_id)
        spec = languages.spec_for(language_id)
        self.comment = spec.line_comment if spec else "#"

    def document(self, block: str) -> str:
        return self.text[: self.bc.start] + block + self.text[self.bc.end :]

    def check(self, block: str) -> _Option:
        grown = len(block) - len(self.bc.block)
        region = Region(self.region.lo, self.region.hi + grown, self.region.outside_names)
        start = self.bc.start
        return _Option(
            block, diagnose.problems(self.document(block), start, start + len(block), self.language_id, region)
        )

    def score(self, blocks: list[str], detail: bool = False) -> list[BlockScore]:
        job = ScoreJob(self.bc.prefix, self.bc.suffix, blocks, self.doc_key, self.cancel, detail)
        try:
            return self.engine.score(job)
        except EngineError:  # an engine that cannot read (a remote API): the checks alone decide, in proposal order
            return [BlockScore(0.0, []) for _ in blocks]

    def round(self, current: _Option) -> _Option | None:
        """The best repair of `current`, or None when none earns its place."""
        here = self.score([current.block], detail=True)[0]
        current = _Option(current.block, current.problems, here.logprob)
        # Proposals no check asks for go only where the model finds the text unlikely: "only what is implausible in
        # context is re-noised". Each costs a row in the scoring batch.
        unlikely = [t for t in here.tokens if t.logprob < SUSPECT]
        spans = [(t.start, t.end) for t in unlikely]
        document = self.document(current.block)
        proposals = (
            repairs.renames(current.block, document, current.problems, self.pool, self.bc.start, spans)
            + repairs.bracket_repairs(current.block, self.comment)
            + repairs.operator_flips(current.block, self.comment, spans)
            + repairs.substitutions(current.block, unlikely)
        )
        options = self.admissible(current, proposals)
        if current.hard and not any(o.hard < current.hard for o in options):
            options += self.admissible(current, self.rewritten_line(current))
        if not options:
            return None
        for option, scored in zip(options, self.score([o.block for o in options])):
            option.logprob = scored.logprob
        return choose(current, options)

    def admissible(self, current: _Option, proposals: list[str]) -> list[_Option]:
        """Proposals that add no problem of a kind the block did not have (hard ones never grow)."""
        out = []
        for block in dict.fromkeys(proposals):
            option = self.check(block)
            if option.hard <= current.hard and (current.hard > 0 or option.soft <= current.soft):
                option.edits = repairs.edit_distance(current.block, block)
                out.append(option)
        return out

    def rewritten_line(self, current: _Option) -> list[str]:
        """The line of the first hard problem, written afresh by the model between the rest of the block."""
        problem = next(p for p in current.problems if p.hard)
        block, at = current.block, problem.start - self.bc.start
        at = min(max(at, 0), len(block.rstrip("\n")) - 1 if block.strip() else 0)
        line_start = block.rfind("\n", 0, at) + 1
        line_end = block.find("\n", at)
        line_end = len(block) if line_end < 0 else line_end
        indent_end = line_start + len(block[line_start:line_end]) - len(block[line_start:line_end].lstrip(" \t"))
        job = InfillJob(
            prefix=self.bc.prefix + block[:indent_end],
            suffix=block[line_end:] + self.bc.suffix,
            kind="line",
            max_tokens=self.settings.max_line_tokens,
            n=max(2, self.settings.candidates),
            doc_key=self.doc_key,
            seed=self.settings.seed,
            decoding=self.settings.decoding,
            cancel=self.cancel,
        )
        lines = [c.text.split("\n", 1)[0].rstrip() for c in self.engine.infill(job).candidates]
        return [block[:indent_end] + line + block[line_end:] for line in lines if line.strip()]


def choose(current: _Option, options: list[_Option]) -> _Option | None:
    """Fewer hard problems first, then the model's likelihood less the size of the change; working code only changes
    for a wide margin."""
    if current.hard:
        fewest = min(o.hard for o in options)
        if fewest >= current.hard:
            return None
        return max((o for o in options if o.hard == fewest), key=lambda o: o.merit)
    if current.soft:  # an unused name that a respelling puts to use, if the model agrees
        fewer = [o for o in options if o.soft < current.soft and o.logprob >= current.logprob]
        if fewer:
            return max(fewer, key=lambda o: o.merit)
    better = [o for o in options if o.merit - current.logprob >= MARGIN]
    return max(better, key=lambda o: o.merit) if better else None


def _describe(found: tuple[Problem, ...]) -> str:
    first = found[0]
    what = f"a syntax error ({first.message})" if first.kind == "syntax" else first.message
    return what if len(found) == 1 else f"{what} and {len(found) - 1} more"
