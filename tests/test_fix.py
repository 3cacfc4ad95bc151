""" "Fix this block": the checks (diagnose), the repairs they propose (repairs), the choice (fix), and the real
embedded model repairing slips while leaving working code alone."""

from __future__ import annotations

import ast

import pytest
from fake_engine import FakeEngine

from dg_lsp import diagnose, repairs
from dg_lsp.fix import MARGIN, _Option, choose, fix_range
from dg_lsp.repairs import edit_distance
from dg_lsp.rewrite_block import REWRITE_CHANNEL, REWRITE_TOLERANCE
from dg_lsp.settings import Settings
from dg_model.api import TokenScore


def block_of(text: str, first: int, last: int) -> tuple[int, int]:
    lines = text.splitlines(keepends=True)
    return sum(map(len, lines[:first])), sum(map(len, lines[: last + 1]))


def apply(text: str, result) -> str:
    e = result.edit
    return text if e is None else text[: e.start] + e.text + text[e.end :]


# ---------------------------------------------------------------------------------------------------- diagnose
def test_problems_name_syntax_errors_and_undefined_names_in_the_block_only():
    text = "import os\n\ndef f(numbers):\n    total = 0\n    for n in numbrs:\n        total += n\n    return total\n"
    start, end = block_of(text, 4, 5)
    (problem,) = diagnose.problems(text, start, end, "python")
    assert problem.kind == "undefined-name" and problem.name == "numbrs"
    assert text[problem.start : problem.end] == "numbrs"
    # outside the block, the same slip is not this block's problem
    assert diagnose.problems(text, *block_of(text, 3, 3), "python") == []
    broken = text.replace("total += n", "total += abs(n")
    assert [p.kind for p in diagnose.problems(broken, start, end + 1, "python")] == ["syntax"]


def test_names_defined_elsewhere_in_the_file_count_as_defined():
    text = "LIMIT = 3\n\n\ndef f(x):\n    return min(x, LIMIT)\n\n\ndef g():\n    return f(1)\n"
    assert diagnose.problems(text, *block_of(text, 4, 4), "python") == []


def test_other_languages_are_checked_by_tree_sitter():
    good = "function f(a) {\n  return g(a);\n}\n"
    assert diagnose.problems(good, *block_of(good, 1, 1), "javascript") == []
    bad = good.replace("g(a);", "g(a;")
    assert diagnose.problems(bad, *block_of(bad, 1, 1), "javascript")


# ----------------------------------------------------------------------------------------------------- repairs
def test_bracket_repairs_close_an_unclosed_opener_where_it_belongs():
    block = "        result += abs(x\n"
    assert "        result += abs(x)\n" in repairs.bracket_repairs(block)
    # the inner bracket of `f(a[1)` is the unclosed one
    assert "    y = f(a[1])\n" in repairs.bracket_repairs("    y = f(a[1)\n")
    assert "    if x > 0:\n" in repairs.bracket_repairs("    if x > 0\n")
    # brackets in strings and comments are not code
    assert repairs.bracket_repairs("    s = '(' # )\n") == []


def test_renames_respell_a_suspect_name_as_a_close_name_of_the_file():
    text = "def f(numbers):\n    for n in numbrs:\n        print(n)\n"
    start, end = block_of(text, 1, 2)
    found = diagnose.problems(text, start, end, "python")
    out = repairs.renames(text[start:end], text, found, diagnose.name_pool(text, "python"), start)
    assert "    for n in numbers:\n        print(n)\n" in out


def test_substitutions_follow_the_models_preferences_and_skip_special_tokens():
    block = "return a - b"
    tokens = [
        TokenScore(0, 6, -0.1, []),
        TokenScore(6, 8, -0.2, []),
        TokenScore(8, 10, -5.0, [(" +", -0.5), ("<eos>", 0.0)]),
        TokenScore(10, 12, -0.1, []),
    ]
    assert repairs.substitutions(block, tokens) == ["return a + b"]


def test_edit_distance_counts_the_slip_not_the_block():
    assert repairs.edit_distance("    if lne(x):\n", "    if len(x):\n") == 1  # two letters swapped
    assert repairs.edit_distance("    if lne(x):\n", "    if lst(x):\n") == 2
    assert repairs.edit_distance("f(a\n", "f(a)\n") == 1 and repairs.edit_distance("same", "same") == 0


# ------------------------------------------------------------------------------------------------------ choose
def test_working_code_changes_only_for_a_wide_margin():
    current = _Option("a", [], logprob=-10.0)
    assert choose(current, [_Option("b", [], logprob=-10.0 + MARGIN / 2)]) is None
    wide = _Option("c", [], logprob=-10.0 + MARGIN + 0.1)
    assert choose(current, [wide]) is wide


def test_broken_code_takes_the_likeliest_repair_that_removes_a_problem():
    syntax = diagnose.Problem("syntax", 0, 0, "invalid syntax")
    current = _Option("x", [syntax], logprob=-5.0)
    unlikely, likely = _Option("y", [], logprob=-30.0), _Option("z", [], logprob=-20.0)
    still_broken = _Option("w", [syntax], logprob=-1.0)
    assert choose(current, [unlikely, likely, still_broken]) is likely
    assert choose(current, [still_broken]) is None
    # between repairs about as likely, the smaller change wins: a slip of one letter beats one of two
    near, far = _Option("len", [], logprob=-20.0, edits=1), _Option("lst", [], logprob=-19.0, edits=2)
    assert choose(current, [far, near]) is near


def test_fix_with_a_stand_in_model_repairs_a_misspelt_keyword_and_leaves_good_code():
    engine = FakeEngine()
    broken = "def add(a, b):\n    retrun a + b\n"
    result = fix_range(engine, broken, *block_of(broken, 1, 1), "python", Settings())
    assert apply(broken, result) == "def add(a, b):\n    return a + b\n"
    good = "def add(a, b):\n    return a + b\n"
    result = fix_range(engine, good, *block_of(good, 1, 1), "python", Settings())
    assert result.edit is None and "nothing to fix" in result.message


# ------------------------------------------------------------------------------------------- the embedded model
@pytest.fixture(scope="module")
def embedded_engine():
    from dg_model.loading import load_engine

    return load_engine(None)


SLIPS = [
    ("def add(a, b):\n    retrun a + b\n", (1, 1), "return a + b"),
    (
        "def total(xs):\n    result = 0\n    for x in xs:\n        result += abs(x\n    return result\n",
        (1, 3),
        "result += abs(x)",
    ),
    (
        "def count_even(numbers):\n    count = 0\n    for n in numbrs:\n"
        "        if n % 2 == 0:\n            count += 1\n    return count\n",
        (1, 4),
        "for n in numbers:",
    ),
]


@pytest.mark.parametrize("text,lines,expected", SLIPS, ids=["keyword", "bracket", "name"])
def test_embedded_model_repairs_slips(embedded_engine, text, lines, expected):
    result = fix_range(embedded_engine, text, *block_of(text, *lines), "python", Settings())
    fixed = apply(text, result)
    assert expected in fixed
    ast.parse(fixed)


def test_embedded_model_leaves_working_code_alone(embedded_engine):
    text = (
        "def count_even(numbers):\n    count = 0\n    for n in numbers:\n        if n % 2 == 0:\n"
        "            count += 1\n    return count\n"
    )
    result = fix_range(embedded_engine, text, *block_of(text, 1, 4), "python", Settings())
    assert result.edit is None and result.message == "nothing to fix in this block"


def test_embedded_model_rewrite_respells_a_misspelt_name(embedded_engine):
    """ "Rewrite this block" on the shipped weights: the denoiser rewrites the word the checks and its own reading
    doubt (`reslt`, two tokens where `result` is one) between the pinned rest of the block."""
    from dg_lsp.rewrite_block import rewrite_range

    text = "def total(items):\n    result = 0\n    for item in items:\n        reslt += item\n    return result\n"
    edit = rewrite_range(embedded_engine, text, *block_of(text, 2, 3), "python", Settings())
    assert edit is not None and text[: edit.start] + edit.text + text[edit.end :] == text.replace("reslt", "result")


# ----------------------------------------------------------------------------------------- rewrite, ranked likewise
REWRITE_DOC = "def add(a, b):\n    s = a + b\n    return s\n\n\nprint(add(1, 2))\n"
BROKEN_DOC = "def add(a, b):\n    s = a +\n    return s\n\n\nprint(add(1, 2))\n"
BLOCK, BROKEN = "    s = a + b\n    return s\n", "    s = a +\n    return s\n"
NEW = "    return a + b\n"


@pytest.mark.parametrize(
    "doc,candidate,gain,offered",
    [
        # code that passes the checks changes only for the margin "Fix this block" uses
        (REWRITE_DOC, NEW, MARGIN + 0.5, True),
        (REWRITE_DOC, NEW, MARGIN - 0.5, False),  # likelier, but not by the margin: working code stays
        (REWRITE_DOC, "    return a + c\n", MARGIN + 5, False),  # `c` is undefined: the checks refuse it
        (REWRITE_DOC, "    return (a +\n", MARGIN + 5, False),  # does not parse
        # a block with a problem: a rewrite that removes it is offered when about as likely
        (BROKEN_DOC, NEW, -REWRITE_TOLERANCE + 0.5, True),
        (BROKEN_DOC, NEW, -REWRITE_TOLERANCE - 0.5, False),
        (BROKEN_DOC, "    t = a + b\n    return a + b\n", 5.0, False),  # parses, but `t` is never read
        (REWRITE_DOC, "    t = a + b\n    return a + b\n", MARGIN + 5, False),  # `t` is never read: a new problem
    ],
)
def test_rewrite_offers_only_a_candidate_that_earns_its_place(doc, candidate, gain, offered):
    from dg_lsp.rewrite_block import rewrite_range

    block = BLOCK if doc == REWRITE_DOC else BROKEN
    # `gain` is what the rewrite earns beyond the price of its change (REWRITE_CHANNEL nats a character)
    cost = REWRITE_CHANNEL * edit_distance(block, candidate)
    engine = FakeEngine(rewrite_text=candidate, scores={block: -20.0, candidate: -20.0 + gain + cost})
    edit = rewrite_range(engine, doc, *block_of(doc, 1, 2), "python", Settings())
    assert (edit is not None) == offered
    if offered:
        new = doc[: edit.start] + edit.text + doc[edit.end :]
        assert new == "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"


def test_a_rewrite_is_never_cut_short_into_a_deletion():
    """Post-processing trims a completion that does not parse back to the part that does; for a rewrite the edit
    would then delete the block's last lines, so such a candidate is not offered, however likely the rest reads."""
    from dg_lsp.rewrite_block import rewrite_range

    trimmed = "    s = a + b\n"
    engine = FakeEngine(rewrite_text=trimmed + "    return (s\n", scores={BLOCK: -20.0, trimmed: -20.0 + MARGIN + 5})
    assert rewrite_range(engine, REWRITE_DOC, *block_of(REWRITE_DOC, 1, 2), "python", Settings()) is None


def test_between_rewrites_about_as_likely_the_smaller_change_wins():
    """A misspelt name's respelling and a new expression in its place, the second a little likelier: the noisy channel
    (REWRITE_CHANNEL nats a changed character) offers the respelling."""
    from dg_lsp.rewrite_block import rewrite_range

    doc = "def total(xs):\n    result = 0\n    for x in xs:\n        reslt += x\n    return result\n"
    block = "    for x in xs:\n        reslt += x\n"
    respelt, fresh = "    for x in xs:\n        result += x\n", "    result = sum(xs)\n"
    engine = FakeEngine(rewrite_texts=[fresh, respelt], scores={block: -31.0, respelt: -21.0, fresh: -20.0})
    edit = rewrite_range(engine, doc, *block_of(doc, 2, 3), "python", Settings())
    assert edit is not None
    assert doc[: edit.start] + edit.text + doc[edit.end :] == doc.replace("reslt", "result")


def test_a_rewrite_keeps_the_line_after_the_block():
    """A block followed at once by more code: the rewrite replaces the block's code and keeps its line break, so the
    next line is untouched (the rewrite used to be post-processed as if it ran into that line, and was refused)."""
    from dg_lsp.rewrite_block import rewrite_range

    doc = "def shout(words):\n    out = []\n    for w in words:\n        out.append(w.upper()\n    return out\n"
    fixed = "    for w in words:\n        out.append(w.upper())\n"
    engine = FakeEngine(rewrite_text=fixed.rstrip("\n"), scores={fixed: -10.0})
    edit = rewrite_range(engine, doc, *block_of(doc, 2, 3), "python", Settings())
    assert edit is not None
    assert doc[: edit.start] + edit.text + doc[edit.end :] == doc.replace("upper()", "upper())")
