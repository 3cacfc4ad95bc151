"""Turn a model's raw middle into an edit that belongs at the cursor, or into nothing.

Models trained on fill-in-the-middle still run past the gap: they repeat the line above, re-type the suffix,
close brackets the document already closes, or wander out of the block. Each rule below removes one of those
failure modes; the tree-sitter check at the end refuses anything that leaves the file more broken than it was.
Pure functions only: text in, an `Edit` (offsets into the original document) or None out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from tree_sitter import Tree

from dg_lsp import diagnose, languages
from dg_lsp.languages import (
    FULL_PARSE_CHARS,
    MAX_PARSE_CHARS,
    Doc,
    LanguageSpec,
    count_errors,
    indent_width,
    top_level_region,
)
from dg_model import code_scan
from dg_model.stops import same_line

_PAIRS = {")": "(", "]": "[", "}": "{"}
_SCAN_CHARS = 4000  # brackets are matched over this much text on each side of the cursor
_MAX_TRIES = 12  # parses spent trimming a completion that does not validate


@dataclass(frozen=True)
class Edit:
    start: int  # character offsets into the ORIGINAL document text
    end: int  # end > start: the completion also replaces text after the cursor (the rest of the line)
    text: str
    # After the edit, does the top-level statement around it pass the language's own parser (languages.compiles)?
    # None where there is no such check. Callers rank candidates by it; it is not part of the edit's identity.
    compiles: bool | None = field(default=None, compare=False)


# How the text around the cursor is read when matching brackets: well enough, the parse check is the backstop. Windows
# cut at the cursor: a quote that does not close on its line is code, so a string the cursor sits in reads the same in
# the prefix and the middle. Python's triple quotes read as one-line quotes: a window that starts inside a docstring
# would otherwise pair its closing quotes with the next docstring's opening ones and hide the code between.
_PYTHON = code_scan.Lexicon("#", triple_quotes=False, window=True)
_C_LIKE = code_scan.Lexicon("//", block_comments=True, triple_quotes=False, window=True)  # also for a language unknown
_C_CHARS = replace(_C_LIKE, char_literals=True)  # a lone ' is a lifetime (Rust) or a char literal: only 'x' and '\n'


def _lexicon(spec: LanguageSpec | None) -> code_scan.Lexicon:
    if spec is not None and spec.line_comment == "#":
        return _PYTHON
    return _C_LIKE if spec is None or spec.name in ("javascript", "typescript", "tsx") else _C_CHARS


def _open_brackets(prefix: str, lexicon: code_scan.Lexicon) -> list[str]:
    stack: list[str] = []
    for _, ch in code_scan.brackets(prefix, lexicon):
        if ch in "([{":
            stack.append(ch)
        elif ch in _PAIRS and stack and stack[-1] == _PAIRS[ch]:
            stack.pop()
        elif ch in _PAIRS:
            stack.clear()  # an unmatched closer: whatever came before is not what the cursor sits in
    return stack


def _closed_by_suffix(stack: list[str], suffix: str, lexicon: code_scan.Lexicon) -> int:
    """How many of the innermost open brackets the text after the cursor closes."""
    own: list[str] = []
    closed = 0
    for _, ch in code_scan.brackets(suffix, lexicon):
        if ch in "([{":
            own.append(ch)
        elif ch in _PAIRS:
            if own:
                if own.pop() != _PAIRS[ch]:
                    break
            elif closed < len(stack) and stack[-1 - closed] == _PAIRS[ch]:
                closed += 1
            else:
                break
    return closed


def _balance(middle: str, stack: list[str], closed: int, lexicon: code_scan.Lexicon) -> str:
    """Cut the middle at its first closer that the suffix already provides or that matches nothing."""
    outer = stack[: len(stack) - closed]  # open brackets nobody closes yet: the middle may close these
    own: list[str] = []
    for at, ch in code_scan.brackets(middle, lexicon):
        if ch in "([{":
            own.append(ch)
        elif ch in _PAIRS:
            if own and own[-1] == _PAIRS[ch]:
                own.pop()
            elif not own and closed == 0 and outer and outer[-1] == _PAIRS[ch]:
                outer.pop()
            else:
                return middle[:at]
    return middle


def _indent_style(lines: list[str], row: int, spec: LanguageSpec | None) -> tuple[str, int] | None:
    """("\\t", 1) or (" ", unit): how the document indents, judged near the cursor first; None when it never does."""
    widths = []
    for r in [*range(row, max(-1, row - 200), -1), *range(row + 1, min(len(lines), row + 200))]:
        line = lines[r]
        if line.startswith("\t") and line.strip():
            return "\t", 1
        if line.startswith(" ") and line.strip():
            widths.append(len(line) - len(line.lstrip(" ")))
    if not widths:
        return ("\t", 1) if spec is not None and spec.name == "go" else None  # gofmt indents with tabs
    unit = min(w for w in widths if w > 0)
    return " ", unit if unit in (2, 3, 4, 8) else 4


def _reindent(line: str, style: tuple[str, int], model_unit: int) -> str:
    body = line.lstrip(" \t")
    lead = line[: len(line) - len(body)]
    if style[0] == "\t":
        width = len(lead.expandtabs(model_unit))
        return "\t" * (width // model_unit) + " " * (width % model_unit) + body
    return lead.expandtabs(style[1]) + body


def _shape(lines: list[str], doc: Doc, kind: str, spec: LanguageSpec | None) -> list[str]:
    """Indentation fixes and scope limits; lines[0] continues the cursor line."""
    before = doc.before
    blank_before = not before.strip()
    model_unit = min((indent_width(x) for x in lines[1:] if x.strip() and indent_width(x) > 0), default=4)
    style = _indent_style(doc.lines, doc.row, spec)
    if style is not None:
        lines = [lines[0]] + [_reindent(x, style, model_unit) for x in lines[1:]]
    tabs = style[0] == "\t" if style else any(x.startswith("\t") for x in lines[1:])
    unit = 4 if tabs or style is None else style[1]
    if kind == "line":
        return lines[:1]
    header = indent_width(doc.lines[doc.row])
    opener = not blank_before and before.rstrip().endswith((":", "{", "(", "["))
    body = next((x for x in lines[1:] if x.strip()), None)
    if opener and body is not None and indent_width(body) <= header and not body.strip().startswith(("}", ")", "]")):
        # the model indented the body relative to column 0: move it under the header
        shift = header + unit - indent_width(body)
        pad = "\t" * -(-shift // 4) if tabs else " " * shift
        lines = [lines[0]] + [pad + x if x.strip() else x for x in lines[1:]]
    # Stop where the completion leaves the block it was asked for.
    floor = len(before.expandtabs(4)) if blank_before else header + (1 if opener else 0)
    for i, x in enumerate(lines[1:], 1):
        if x.strip() and indent_width(x) < floor:
            return lines[:i]
    return lines


def _drop_prefix_repeats(lines: list[str], doc: Doc) -> list[str]:
    """Drop leading lines that repeat the lines just above the cursor (or the cursor line's own start)."""
    before = doc.before
    blank_before = not before.strip()
    if blank_before:
        while len(lines) > 1 and not lines[0].strip():  # the cursor line is already the empty line to fill
            lines = _onto_cursor_line(lines[1:], before)
    above = [x.strip() for x in doc.lines[max(0, doc.row - 8) : doc.row] + [before] if any(ch.isalnum() for ch in x)]
    first = 0 if blank_before else 1
    # An echo repeats the last lines above in their order, ending with the one just above. A line that only matches
    # an earlier one is often right: a second `return False` two lines below the first.
    skip = first
    for k in range(min(3, len(above), len(lines) - first), 0, -1):
        if [x.strip() for x in lines[first : first + k]] == above[-k:]:
            skip = first + k
            break
    if skip == first:
        return lines
    return _onto_cursor_line(lines[skip:], before) if blank_before else [lines[0], *lines[skip:]]


def _onto_cursor_line(lines: list[str], before: str) -> list[str]:
    """Make lines[0] continue a cursor line that already holds the indentation `before`."""
    if lines:
        lines = [lines[0][len(before) :] if lines[0].startswith(before) else lines[0].lstrip(" \t"), *lines[1:]]
    return lines


def _cut_at_suffix(lines: list[str], doc: Doc) -> list[str]:
    """Cut at the first line that starts repeating what follows the cursor."""
    after = [doc.after] if doc.after.strip() else []
    heads = (after + [x for x in doc.lines[doc.row + 1 : doc.row + 40] if x.strip()])[:2]
    if not heads:
        return lines
    blank_before = not doc.before.strip()
    for i in range(0 if blank_before else 1, len(lines)):
        if same_line(lines[i] if i else doc.before + lines[i], heads[0]):
            following = next((x for x in lines[i + 1 :] if x.strip()), None)
            if following is None or len(heads) < 2 or same_line(following, heads[1]):
                return lines[:i]
    return lines


def _validate(
    doc: Doc, text: str, start: int, end: int, new: list[str], tail: str, eol: str, spec: LanguageSpec
) -> str | None:
    """The longest leading part of `new` (whole lines, then `tail`) that adds no syntax errors to the document."""
    if languages.get_parser(spec.name) is None:
        return "\n".join(new) + tail
    # Large documents: judge by the top-level statement around the edit, which is what the edit can break.
    lo = hi = 0
    if len(text) > FULL_PARSE_CHARS:
        lo_row, hi_row = top_level_region(doc.lines, doc.row, doc.locate(end)[0] + 1)
        lo, hi = doc.offset_of(lo_row, 0), doc.offset_of(hi_row - 1, len(doc.lines[hi_row - 1]))
    else:
        hi = len(text)
    region = text[lo:hi]
    if len(region) > MAX_PARSE_CHARS:  # one giant line: no structure to judge by, as for an unknown language
        return "\n".join(new) + tail
    base = languages.parse(region.encode("utf-8", "surrogatepass"), spec.name)
    if base is None:
        return "\n".join(new) + tail
    allowed = count_errors(base.root_node)
    for n in range(len(new), max(0, len(new) - _MAX_TRIES), -1):
        candidate = "\n".join(new[:n]).rstrip()
        if not candidate.strip():
            return None
        candidate += tail if n > 1 else ""
        edited = region[: start - lo] + candidate.replace("\n", eol) + region[end - lo :]
        tree: Tree | None = languages.parse(edited.encode("utf-8", "surrogatepass"), spec.name)
        if tree is not None and count_errors(tree.root_node) <= allowed:
            return candidate
    return None


def postprocess(raw: str, text: str, offset: int, language_id: str, kind: Literal["line", "block"]) -> Edit | None:
    if not isinstance(raw, str) or not isinstance(text, str):
        return None
    doc = Doc(text, offset)
    offset = doc.offset_of(doc.row, doc.col)  # clamped, and never between "\r" and "\n"
    spec = None if doc.binary else languages.spec_for(language_id)
    first_break = text.find("\n")
    eol = "\r\n" if first_break > 0 and text[first_break - 1] == "\r" else "\n"
    middle = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if not middle.strip():
        return None

    lines = _drop_prefix_repeats(middle.split("\n"), doc)
    if not lines:  # nothing but a repeat of the lines above
        return None
    lines = _cut_at_suffix(_shape(lines, doc, kind, spec), doc)
    if not lines:
        return None
    end = offset
    lexicon = _lexicon(spec)
    scan_from = text.rfind("\n", 0, max(0, offset - _SCAN_CHARS)) + 1 if offset > _SCAN_CHARS else 0
    stack = _open_brackets(text[scan_from:offset], lexicon)
    rest, line_end = doc.after.strip(), offset + len(doc.after)
    first = lines[0].rstrip()
    if kind == "line" and rest and first.strip() == rest:
        return None  # the model only re-typed what follows the cursor
    if (
        kind == "line"
        and rest
        and first.endswith(rest)
        and _balance(first, stack, _closed_by_suffix(stack, text[line_end : line_end + _SCAN_CHARS], lexicon), lexicon)
        == first
    ):
        # The model wrote the line through what already follows the cursor, brackets and all: replace that rest
        # rather than insert before it, so the ghost text never shows it twice.
        lines, end = [first], line_end
    else:
        closed = _closed_by_suffix(stack, text[offset : offset + _SCAN_CHARS], lexicon)
        lines = _balance("\n".join(lines), stack, closed, lexicon).split("\n")

    lines = [x.rstrip() for x in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    if not "".join(lines).strip():
        return None
    # A block typed between braces on one line (`{|}`) leaves the closer on its own line, at the header's indent.
    tail = ""
    if kind == "block" and len(lines) > 1 and doc.after.strip()[:1] in ("}", ")", "]"):
        line = doc.lines[doc.row]
        tail = "\n" + line[: len(line) - len(line.lstrip(" \t"))]
    result = "\n".join(lines) + tail
    if spec is not None:
        kept = _validate(doc, text, offset, end, lines, tail, eol, spec)
        if kept is None:
            return None
        result = kept
    result = result.replace("\n", eol)
    return Edit(offset, end, result, _compiles(doc, text, offset, end, result, language_id))


def rank(edits: list[Edit]) -> list[Edit]:
    """The model's order, except that an edit after which the code no longer compiles goes last: tree-sitter forgives
    what Python does not (an unexpected indent, a header without a body)."""
    return sorted(edits, key=lambda e: e.compiles is False)


_CLEAN = diagnose.RunCheck(0, 0, 0)


def prefer_runnable(edits: list[Edit], text: str, language_id: str) -> list[Edit]:
    """`edits` (ranked) with the one whose code a run would trip over least (`diagnose.run_faults`) moved to the
    front, if that is less than the first's: a small model often writes a line around a name the code never defines
    (`idx2` before its loop), skips the line that defines what the next lines use (`total = 0`, where `total += n`
    follows), or has a function return itself (`return fib(n)` in `fib`); all of them compile. Then fewer reads of
    locals that some path leaves unbound (`return i` after a loop that may not run), then fewer linter's hints
    (`diagnose.check_run`: `return None` in a function `-> str`, a parameter left unread, a loop whose variable
    nothing reads). Only edits that compile are weighed, in order, stopping at a clean one; where the check cannot
    tell for the first, the order stays."""
    best, fewest = 0, None
    for i, edit in enumerate(edits):
        if edit.compiles is False:
            break
        check = diagnose.check_run(text, edit.start, edit.end, edit.text, language_id)
        if i == 0 and check is None:
            return edits
        if check is not None and (fewest is None or check < fewest):
            best, fewest = i, check
        if fewest == _CLEAN:
            break
    return [edits[best], *edits[:best], *edits[best + 1 :]] if best else edits


def compiles_around(text: str, start: int, end: int, language_id: str) -> bool | None:
    """Whether the statement(s) around `text[start:end]` compile with a neutral line in its place (`pass`; above a
    more indented line `if True:`, which an `elif` may follow, or `while True:`, whose body may `break`): if not, no
    edit there can make them compile. None within a line, where no line stands in for the edit."""
    line_start = text.rfind("\n", 0, start) + 1
    if text[line_start:start].strip():
        return None
    following = next((line for line in text[end:].split("\n")[1:] if line.strip()), "")
    indent = len(text[line_start:start].expandtabs())
    deeper = len(following.expandtabs()) - len(following.expandtabs().lstrip()) > indent
    doc = Doc(text, start)
    verdicts = [_compiles(doc, text, start, end, line, language_id) for line in _NEUTRAL[deeper]]
    return True if True in verdicts else verdicts[0]


_NEUTRAL = {False: ("pass",), True: ("if True:", "while True:")}


def _compiles(doc: Doc, text: str, start: int, end: int, new: str, language_id: str) -> bool | None:
    """languages.compiles over the top-level statement(s) the edit touches, as they read after it."""
    if not languages.has_compiler(language_id):
        return None
    lo_row, hi_row = top_level_region(doc.lines, doc.row, doc.locate(end)[0] + 1)
    lo, hi = doc.offset_of(lo_row, 0), doc.offset_of(hi_row - 1, len(doc.lines[hi_row - 1]))
    if hi - lo > MAX_PARSE_CHARS:
        return None
    return languages.compiles(text[lo:start] + new + text[end:hi], language_id)
