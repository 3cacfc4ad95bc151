"""The model's view of the cursor: prefix/suffix windows under a token budget, the job kind, cross-file snippets.

Everything here is pure (text in, strings out) and never raises on odd input: offsets are clamped, binary or
unknown-language text gets plain line windows. The syntax tree only refines: which header lines to keep, where a
window may start or end, and whether the cursor wants one line or a block.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal
from urllib.parse import unquote, urlparse

from dg_lsp import languages
from dg_lsp.languages import Doc, LanguageSpec, Syntax

CHARS_PER_TOKEN = 3.5  # first guess only; every window is checked with the real count before it is returned
SNIPPET_LINES, SNIPPET_STRIDE, MAX_OTHER_CHARS, MAX_OTHER_DOCS = 20, 10, 200_000, 20

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_STOP = frozenset(
    "def class return import from self this const let var function func true false True False None null none int "
    "void static public private protected new else elif while for pub use mut impl struct".split()
)
_PY_OPENER = re.compile(r"\s*(async\s+)?(def|class|if|elif|else|for|while|with|try|except|finally|match|case)\b")


@dataclass(frozen=True)
class ContextBudget:
    """No defaults here: the values come from the typed settings (`dg_lsp.pipeline.budget_of(settings)`)."""

    max_prompt_tokens: int  # prefix + suffix + snippets, in model tokens
    suffix_share: float  # share of the budget for the suffix
    snippet_share: float  # max share for other-document snippets
    max_snippets: int
    line_tokens: int  # middle budget when finishing a line
    block_tokens: int  # middle budget for a multi-line block


@dataclass(frozen=True)
class Context:
    prefix: str  # kept headers/imports + trimmed window before the cursor, "\n" line endings
    suffix: str  # what follows the cursor, trimmed, "\n" line endings
    kind: Literal["line", "block"]
    max_tokens: int  # middle budget: the budget's line_tokens or block_tokens, by kind
    snippets: tuple[str, ...]  # from other open docs, most relevant LAST; each starts with a comment naming its file
    language: str | None  # normalized language name, None if unknown


def decide_kind(doc: Doc, syntax: Syntax | None, spec: LanguageSpec | None) -> Literal["line", "block"]:
    before, after = doc.before, doc.after.strip()
    if syntax is not None and syntax.in_string_or_comment(doc.row, doc.col):
        return "line"
    empty_body = after == "" or after.startswith("}")
    if not before.strip():
        return "block" if empty_body else "line"
    code = before.rstrip()
    if spec is not None and spec.indent_scoped:
        opener = code.endswith(":") and bool(_PY_OPENER.match(code))
    else:
        opener = code.endswith("{") or (
            spec is not None and code.endswith(":") and code.lstrip().startswith(("case ", "default"))
        )
    return "block" if opener and empty_body else "line"


def fit(
    count_k: Callable[[int], int], lengths: Sequence[int], budget: int, chars_per_token: float = CHARS_PER_TOKEN
) -> int:
    """Largest k with count_k(k) <= budget (or within 5% of it), guessing from characters, checking with few counts."""
    n = len(lengths)
    if n == 0 or budget <= 0:
        return 0
    cum = list(accumulate(length + 1 for length in lengths))
    good, bad, probes = 0, n + 1, 0
    k = max(1, min(n, bisect.bisect_right(cum, budget * chars_per_token)))
    while bad - good > 1:
        tokens = count_k(k)
        good, bad = (k, bad) if tokens <= budget else (good, k)
        probes += 1
        if bad - good <= 1 or budget * 0.95 <= tokens <= budget:  # within 5% is as good as exact, and cheaper
            break
        if probes < 4:  # re-estimate with this text's own chars-per-token, then settle by bisection
            k = bisect.bisect_right(cum, budget * cum[k - 1] / max(tokens, 1))
        else:
            k = (good + bad) // 2 if bad <= n else min(n, 2 * good + 1)
        k = min(max(k, good + 1), bad - 1, n)
    return good


def _too_long(s: str, budget: int, count: Callable[[str], int]) -> bool:
    return len(s) > 16 * max(budget, 0) or count(s) > budget  # no tokenizer packs 16 characters of code per token


def _trim_chars(s: str, budget: int, count: Callable[[str], int], keep_end: bool) -> str:
    """A single line too long for the budget (minified code): cut it by characters, keeping the cursor side."""
    s = s[len(s) - 16 * max(budget, 0) :] if keep_end else s[: 16 * max(budget, 0)]  # see _too_long
    n = fit(lambda k: count(s[len(s) - k :] if keep_end else s[:k]), [0] * len(s), budget)
    return s[len(s) - n :] if keep_end else s[:n]


def _snippets(
    doc: Doc,
    spec: LanguageSpec | None,
    other_docs: Sequence[tuple[str, str, str]],
    budget: int,
    max_snippets: int,
    count: Callable[[str], int],
) -> tuple[str, ...]:
    if spec is None or budget <= 0 or max_snippets <= 0:
        return ()
    target = set(_IDENT.findall("\n".join(doc.lines[max(0, doc.row - 15) : doc.row + 15]))) - _STOP
    if not target:
        return ()
    ranked: list[tuple[float, int, int, list[str], str]] = []
    for i, item in enumerate(list(other_docs)[:MAX_OTHER_DOCS]):
        try:
            uri, language_id, other = item
        except (TypeError, ValueError):
            continue
        other_spec = languages.spec_for(language_id) or languages.spec_for(uri)
        if other_spec is None or other_spec.family != spec.family or not isinstance(other, str) or other == doc.text:
            continue
        if "\x00" in other[:8192]:
            continue
        lines = other[:MAX_OTHER_CHARS].replace("\r\n", "\n").split("\n")
        for start in range(0, max(1, len(lines) - SNIPPET_LINES + SNIPPET_STRIDE), SNIPPET_STRIDE):
            chunk = lines[start : start + SNIPPET_LINES]
            ids = set(_IDENT.findall("\n".join(chunk))) - _STOP
            if ids & target:
                ranked.append((len(ids & target) / len(ids | target), i, start, chunk, str(uri)))
    ranked.sort(key=lambda r: -r[0])
    chosen: list[tuple[float, int, int, str]] = []
    used = 0
    for score, i, start, chunk, uri in ranked[: 4 * max_snippets]:
        if any(j == i and abs(s - start) < SNIPPET_LINES for _, j, s, _ in chosen):
            continue  # overlapping windows of one file would spend the budget twice on the same lines
        body = "\n".join(chunk).strip("\n")
        snippet = f"{spec.line_comment} {_display_name(uri)}\n{body}\n"
        tokens = count(snippet)
        if used + tokens <= budget:
            chosen.append((score, i, start, snippet))
            used += tokens
            if len(chosen) == max_snippets:
                break
    return tuple(s for *_, s in sorted(chosen, key=lambda c: c[0]))


def _display_name(uri: str) -> str:
    path = unquote(urlparse(uri).path) if "://" in uri else uri
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) or uri


def build_context(
    text: str,
    offset: int,
    language_id: str,
    count_tokens: Callable[[str], int],
    budget: ContextBudget,
    other_docs: Sequence[tuple[str, str, str]] = (),
) -> Context:
    doc = Doc(text, offset)
    spec = None if doc.binary else languages.spec_for(language_id)
    total = max(0, int(budget.max_prompt_tokens))
    counted: dict[str, int] = {}  # the last probe of a window is the window itself: count each text once

    def count(s: str) -> int:
        if s not in counted:
            counted[s] = count_tokens(s)
        return counted[s]

    snippet_cap = int(total * budget.snippet_share) if other_docs and spec is not None else 0
    suffix_budget = int(total * budget.suffix_share)
    prefix_all = doc.text[: doc.starts[doc.row] + doc.col]
    if len(prefix_all) <= 1.5 * total * CHARS_PER_TOKEN:  # a short prefix leaves the suffix more room
        suffix_budget = max(suffix_budget, total - snippet_cap - count(prefix_all))

    below = [doc.after, *doc.lines[doc.row + 1 :]]
    if _too_long(doc.after, suffix_budget, count):
        below = [_trim_chars(doc.after, suffix_budget, count, keep_end=False)]
    n_below = fit(lambda k: count("\n".join(below[:k])), [len(s) for s in below], suffix_budget)
    syntax = Syntax.build(doc, spec, doc.row + n_below + 1)
    if syntax is not None:  # end the suffix before a statement starts, not halfway through one
        end = doc.row + n_below
        for candidate in range(end, max(doc.row + 1, end - 10) - 1, -1):
            if candidate >= len(doc.lines) or syntax.is_boundary(candidate):
                n_below = candidate - doc.row
                break
    suffix = "\n".join(below[:n_below])
    suffix_used = count(suffix) if suffix else 0

    prefix_budget = max(0, total - suffix_used - snippet_cap)
    header_rows: list[int] = []
    header_cap, header_chars = prefix_budget // 2, 0
    # Enclosing scopes' headers first (innermost first), then imports: what the window most needs from far above.
    groups = [syntax.header_rows(n) for n in syntax.scopes(doc.row, doc.col)] + syntax.import_rows() if syntax else []
    for group in groups:
        rows = sorted(set(header_rows) | {r for r in group if r < doc.row})
        chars = header_chars + sum(len(doc.lines[r]) + 1 for r in group if r < doc.row)
        # count for real only once the character estimate gets near the cap
        if chars <= 0.6 * header_cap * CHARS_PER_TOKEN or count("\n".join(doc.lines[r] for r in rows)) <= header_cap:
            header_rows, header_chars = rows, chars
    header_text = "\n".join(doc.lines[r] for r in header_rows)
    window_budget = prefix_budget - (count(header_text) + 1 if header_rows else 0)

    above = [doc.before, *reversed(doc.lines[: doc.row])]
    if _too_long(doc.before, window_budget, count):
        above = [_trim_chars(doc.before, max(0, window_budget), count, keep_end=True)]
    ratio = len(suffix) / suffix_used if suffix_used > 50 else CHARS_PER_TOKEN  # this text's density, measured
    n_above = fit(lambda k: count("\n".join(reversed(above[:k]))), [len(s) for s in above], window_budget, ratio)
    start = doc.row - max(n_above, 1) + 1
    if syntax is not None and n_above > 1:  # start the window where a statement starts
        start = next((r for r in range(start, min(start + 10, doc.row) + 1) if syntax.is_boundary(r)), start)
    window = "\n".join(reversed(above[: doc.row - start + 1]))
    kept = [doc.lines[r] for r in header_rows if r < start]
    prefix = "\n".join([*kept, window])
    while kept and count(prefix) > prefix_budget:  # sub-additive counts rarely need this; keep the promise
        kept.pop(0)
        prefix = "\n".join([*kept, window])

    kind = decide_kind(doc, syntax, spec)
    snippet_budget = min(snippet_cap, total - suffix_used - count(prefix))
    snippets = _snippets(doc, spec, other_docs, snippet_budget, budget.max_snippets, count)
    max_tokens = budget.line_tokens if kind == "line" else budget.block_tokens
    return Context(prefix, suffix, kind, max_tokens, snippets, spec.name if spec else None)


def enclosing_block(text: str, start: int, end: int, language_id: str) -> tuple[int, int]:
    """Whole lines [first line's start, last line's end without its line break) of the smallest enclosing block
    (function/class/if/for/...) around [start, end); the paragraph of non-blank lines when there is none."""
    doc = Doc(text, start)
    row, col = doc.row, doc.col
    end_row, end_col = doc.locate(max(end, start) if isinstance(end, int) and isinstance(start, int) else 0)
    end_row, end_col = max((end_row, end_col), (row, col))
    if end_row > row and end_col == 0:  # a selection of whole lines ends at the next line's start
        end_row, end_col = end_row - 1, len(doc.lines[end_row - 1])
    spec = None if doc.binary else languages.spec_for(language_id)
    syntax = Syntax.build(doc, spec, end_row + 1) if spec else None
    if syntax is not None and syntax.covers(end_row):
        if (row, col) == (end_row, end_col) or (syntax.spec.indent_scoped and not doc.before.strip()):
            candidates = syntax.scopes(row, col)  # by indentation for Python: a blank line may lie past the node
        else:
            candidates = syntax.blocks(
                syntax.tree.root_node.descendant_for_point_range(syntax.point(row, col), syntax.point(end_row, end_col))
            )
        if candidates:
            node = candidates[0]
            first, last = node.start_point.row + syntax.row0, node.end_point.row + syntax.row0
            if node.parent is not None and node.parent.type == "decorated_definition":
                first = node.parent.start_point.row + syntax.row0
            return doc.offset_of(first, 0), doc.offset_of(last, len(doc.lines[last]))
    lines = doc.lines
    if not lines[row].strip():  # on a blank line, the paragraph is the nearest one above (else below)
        above = (r for r in range(row - 1, -1, -1) if lines[r].strip())
        nearby = next(above, next((r for r in range(row, len(lines)) if lines[r].strip()), row))
        row = end_row = nearby
    while row > 0 and lines[row - 1].strip():
        row -= 1
    while end_row + 1 < len(lines) and lines[end_row + 1].strip():
        end_row += 1
    return doc.offset_of(row, 0), doc.offset_of(end_row, len(lines[end_row]))


def should_complete(text: str, offset: int, language_id: str) -> bool:
    """Whether an automatic completion at the cursor is worth asking for (llama.vim's and Continue's rules)."""
    doc = Doc(text, offset)
    if doc.binary or len("".join(doc.after.split())) > 8:
        return False
    spec = languages.spec_for(language_id)
    if spec is None or not any(mark in doc.before for mark in (spec.line_comment, "/*")):
        return True  # no comment marker before the cursor on this line: no need to parse
    syntax = Syntax.build(doc, spec, doc.row + 1)
    return syntax is None or not syntax.in_string_or_comment(doc.row, doc.col, line_comment_only=True)
