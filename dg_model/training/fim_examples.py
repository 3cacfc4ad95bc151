"""FIM training examples cut from source files the way an editor asks, in the prompt and canvas layout that
`dg_model.fim` describes and the engine uses at the cursor."""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dg_model.fim import Encode, spm_prompt
from dg_model.special_tokens import EOS, PAD


@dataclass(frozen=True)
class FimPieces:
    prefix: str
    middle: str
    suffix: str


def canvas_target(middle_ids: list[int], canvas_length: int) -> list[int]:
    """Clean canvas: the middle, then EOS, then pad. A middle that does not fit has no EOS (more blocks follow)."""
    body = middle_ids[:canvas_length]
    if len(body) < canvas_length:
        body = body + [EOS]
    return body + [PAD] * (canvas_length - len(body))


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def documented_bodies(text: str) -> dict[int, int]:
    """Each line (0-based) in the body of a documented function, after its docstring, -> the function's last line:
    where an editor's requests mostly land (a function being written below its signature and docstring), and where
    a line follows from what the docstring says rather than from code repeated nearby. Nested functions map to the
    innermost. Empty for a file that does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    found: dict[int, int] = {}
    for node in ast.walk(tree):  # outer functions before the ones nested in them
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or ast.get_docstring(node) is None:
            continue
        body = node.body[1:]  # after the docstring
        if body and node.end_lineno is not None:
            found.update((i, node.end_lineno - 1) for i in range(body[0].lineno - 1, node.end_lineno))
    return found


def sample_fim(
    text: str, rng: random.Random, long_at_indent: float = 0.0, lines_from: Mapping[int, int] | None = None
) -> FimPieces | None:
    """Cut one editor-like FIM example from a source file.

    Kinds, by share: mid-line cursor completing the line (40%), cursor at a line's indentation writing 1-3 lines
    (25%), a multi-line span from a line's start (30%), nothing missing (5%, teaches "say nothing").
    `long_at_indent`: the share of indentation cuts that take 4-12 lines instead (an editor's cursor on an emptied
    line sits after the indentation, and the model ends 98% of HumanEval multi-line middles after one line). At 0.5
    for 225 CPU steps it made single-line answers twice as long and passed 131 instead of 147 of 1,033 single-line
    HumanEval tasks, multi-line unchanged (model card, session 7): off by default.
    `lines_from`: the lines a cut may start on, each with the last line it may take (`documented_bodies`: a middle
    ends with its function); any line, up to the end of the file, by default.
    """
    starts = _line_starts(text)
    lines = len(starts)
    if lines < 3:
        return None
    choices = [i for i in lines_from if i < lines - 1] if lines_from is not None else range(lines - 1)
    if not choices:
        return None
    for _ in range(8):
        i = rng.choice(choices)
        line_start, line_end = starts[i], starts[i + 1] - 1  # line_end: index of its "\n"
        line = text[line_start:line_end]
        body = line.lstrip()
        if not body.strip():
            continue
        indent_end = line_start + len(line) - len(body)
        r = rng.random()
        if r < 0.40:
            if line_end - indent_end < 2:
                continue
            cursor = rng.randrange(indent_end + 1, line_end)
            end = line_end
            if rng.random() < 0.15:  # the line and the next one or two
                end = starts[min(i + 1 + rng.randint(1, 2), lines - 1)] - 1
        elif r < 0.65:
            cursor = indent_end
            span = rng.randint(4, 12) if rng.random() < long_at_indent else rng.randint(1, 3)
            end = starts[min(i + span, lines - 1)] - 1
        elif r < 0.95:
            cursor = line_start
            end = starts[min(i + rng.randint(2, 12), lines - 1)] - 1
        else:
            cursor = end = rng.choice((line_end, indent_end))
        if lines_from is not None and lines_from[i] + 1 < lines:
            end = min(end, starts[lines_from[i] + 1] - 1)
        if end < cursor:
            continue
        return FimPieces(text[:cursor], text[cursor:end], text[end:])
    return None


def example_ids(
    encode: Encode,
    pieces: FimPieces,
    rng: random.Random,
    prompt_tokens: int,
    canvas_length: int,
    snippets: Sequence[str] = (),
) -> tuple[list[int], list[int]]:
    """(prompt ids, middle ids) of one training example; `canvas_target` cuts the middle to a canvas. Long middles are
    sometimes split as a later block of block-autoregressive decoding: the first part goes into the prompt after
    <fim_middle>, and the middle continues it."""
    middle_ids = encode(pieces.middle)
    done: list[int] = []
    if len(middle_ids) > canvas_length and rng.random() < 0.5:
        k = rng.randrange(1, len(middle_ids) - canvas_length // 2)
        done, middle_ids = middle_ids[:k], middle_ids[k:]
    budget = prompt_tokens - min(len(done), prompt_tokens // 2)
    prompt = spm_prompt(encode, pieces.prefix, pieces.suffix, budget, snippets, suffix_share=rng.uniform(0.1, 0.4))
    prompt = prompt + done[-(prompt_tokens - len(prompt)) :] if done and prompt_tokens > len(prompt) else prompt
    return prompt, middle_ids


def far_snippet(text: str, pieces: FimPieces, rng: random.Random, lines: int = 12) -> str | None:
    """A chunk of the same file far from the cursor: stands in for the related open-document snippets dg_lsp adds."""
    all_lines = text.splitlines(keepends=True)
    if len(all_lines) < 4 * lines:
        return None
    start = rng.randrange(len(all_lines) - lines)
    chunk = "".join(all_lines[start : start + lines])
    return None if chunk in pieces.prefix[-2000:] or chunk in pieces.suffix[:2000] else "# related code\n" + chunk
