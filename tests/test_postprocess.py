"""postprocess on real snippets: the edit applies, the file parses no worse, nothing after the cursor is duplicated."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dg_lsp import languages
from dg_lsp.languages import count_errors
from dg_lsp.postprocess import Edit, postprocess

CURSOR = "<CURSOR>"


def at(marked: str) -> tuple[str, int]:
    return marked.replace(CURSOR, ""), marked.index(CURSOR)


def apply(text: str, edit: Edit) -> str:
    return text[: edit.start] + edit.text + text[edit.end :]


def errors(text: str, language_id: str) -> int:
    tree = languages.parse(text.encode("utf-8", "surrogatepass"), language_id)
    assert tree is not None
    return count_errors(tree.root_node)


def complete(marked: str, raw: str, language_id: str, kind: str) -> str | None:
    """The document after the edit, checked to parse no worse than before; None when there is no edit."""
    text, offset = at(marked)
    edit = postprocess(raw, text, offset, language_id, kind)  # type: ignore[arg-type]
    if edit is None:
        return None
    assert edit.start == offset and edit.end >= edit.start and edit.text.strip()
    result = apply(text, edit)
    if languages.get_parser(language_id) is not None:
        assert errors(result, language_id) <= errors(text, language_id)
    return result


# ---- line completions ------------------------------------------------------------------------------------------------


def test_line_keeps_first_line_only() -> None:
    assert complete("x = compute(<CURSOR>\n", "a, b)\ny = 2\nz = 3", "python", "line") == "x = compute(a, b)\n"


def test_line_rest_of_line_is_replaced_not_duplicated() -> None:
    text, offset = at("print(<CURSOR>)\n")
    assert postprocess("value)", text, offset, "python", "line") == Edit(offset, offset + 1, "value)")
    text, offset = at(
        "    if (ready(<CURSOR>)) {\n",
    )
    edit = postprocess("conn, 5)) {", text, offset, "javascript", "line")
    assert edit == Edit(offset, offset + len(")) {"), "conn, 5)) {")
    assert apply(text, edit) == "    if (ready(conn, 5)) {\n"


def test_line_closer_already_in_suffix_is_cut() -> None:
    assert complete("print(<CURSOR>)\n", "value)); extra()", "python", "line") == "print(value)\n"
    assert complete("let v = vec![<CURSOR>];\n", "1, 2, 3];", "rust", "line") == "let v = vec![1, 2, 3];\n"
    assert complete("y = f(<CURSOR>) + 1\n", "x) + 2", "python", "line") == "y = f(x) + 1\n"


def test_line_that_only_repeats_the_suffix_is_dropped() -> None:
    assert complete("return <CURSOR>total\n", "total", "python", "line") is None
    assert complete("    <CURSOR>\n    return total\n", "return total", "python", "line") is None


def test_empty_and_whitespace_results() -> None:
    for raw in ["", "   ", "\n\n", "\t \r\n", "\x00"]:
        assert complete("x = <CURSOR>\n", raw, "python", "line") is None
    assert complete("def f():<CURSOR>\n", "\nfoo", "python", "line") is None  # "line" but the model left the line


# ---- block completions -----------------------------------------------------------------------------------------------


def test_python_block_after_header_stops_at_dedent() -> None:
    raw = "\n    total = 0\n    for x in xs:\n        total += x\n    return total\n\ndef other():\n    pass\n"
    result = complete("def total(xs):<CURSOR>\n", raw, "python", "block")
    assert result == "def total(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n"


def test_python_block_on_indented_blank_line() -> None:
    marked = "class A:\n    def f(self, xs):\n        <CURSOR>\n\n    def g(self):\n        return 1\n"
    raw = "out = []\n        for x in xs:\n            out.append(x)\n        return out\n\n"
    raw += "    def g(self):\n        return 1\n"
    result = complete(marked, raw, "python", "block")
    assert result == (
        "class A:\n    def f(self, xs):\n        out = []\n        for x in xs:\n            out.append(x)\n"
        "        return out\n\n    def g(self):\n        return 1\n"
    )


def test_python_leading_line_repeating_the_prefix_is_dropped() -> None:
    marked = "def f():\n    x = load()\n    <CURSOR>\n"
    assert (
        complete(marked, "x = load()\n    y = x + 1", "python", "block") == "def f():\n    x = load()\n    y = x + 1\n"
    )
    assert complete("def f():<CURSOR>\n", "\ndef f():\n    return 1", "python", "block") == "def f():\n    return 1\n"


def test_completion_that_only_repeats_the_line_above_is_dropped() -> None:
    # found by sampling candidates on HumanEval: every line was a repeat, which left nothing to shape (IndexError)
    marked = "def f(a):\n    d = abs(a)\n    if d < 1:\n        <CURSOR>\n"
    assert complete(marked, "if d < 1:", "python", "line") is None
    assert complete(marked, "if d < 1:\n", "python", "block") is None


def test_a_line_that_only_matches_an_earlier_line_is_kept() -> None:
    # HumanEval/82: the editor dropped a correct `return False` because one stood two lines above
    marked = (
        "def f(l):\n    if l < 2:\n        return False\n    for i in range(2, l):\n        if l % i == 0:\n"
        "            <CURSOR>\n"
    )
    assert complete(marked, "return False", "python", "line") == marked.replace(CURSOR, "return False")
    echo = "def f():\n    a = 1\n    b = 2\n    <CURSOR>\n"
    assert complete(echo, "a = 1\n    b = 2\n    c = 3", "python", "block") == echo.replace(CURSOR, "c = 3")


def test_python_body_indented_from_column_zero_is_moved_under_header() -> None:
    assert (
        complete("    def f(self):<CURSOR>\n", "\nreturn self.x", "python", "block")
        == "    def f(self):\n        return self.x\n"
    )


def test_javascript_block_does_not_duplicate_closing_brace() -> None:
    marked = "function f(x) {<CURSOR>\n}\n"
    raw = "\n  const y = x * 2;\n  return y;\n}\n\nfunction g() {}\n"
    assert complete(marked, raw, "javascript", "block") == "function f(x) {\n  const y = x * 2;\n  return y;\n}\n"


def test_block_between_braces_on_one_line_puts_closer_on_its_own_line() -> None:
    result = complete("  run(() => {<CURSOR>});\n", "\n    step();\n    done();\n  });", "typescript", "block")
    assert result == "  run(() => {\n    step();\n    done();\n  });\n"


def test_go_block_with_tabs() -> None:
    marked = "package main\n\nfunc load(p string) error {\n\t<CURSOR>\n}\n"
    raw = "f, err := os.Open(p)\n\tif err != nil {\n\t\treturn err\n\t}\n\treturn f.Close()\n}\n"
    assert complete(marked, raw, "go", "block") == (
        "package main\n\nfunc load(p string) error {\n\tf, err := os.Open(p)\n\tif err != nil {\n\t\treturn err\n"
        "\t}\n\treturn f.Close()\n}\n"
    )


def test_spaces_from_the_model_become_the_documents_tabs_and_back() -> None:
    marked = "int f(int x)\n{\n\tint y = 0;\n\t<CURSOR>\n}\n"
    raw = "if (x) {\n        y = x;\n    }\n    return y;"
    assert (
        complete(marked, raw, "c", "block")
        == "int f(int x)\n{\n\tint y = 0;\n\tif (x) {\n\t\ty = x;\n\t}\n\treturn y;\n}\n"
    )
    marked = "fn f() {\n    let a = 1;\n    <CURSOR>\n}\n"
    assert (
        complete(marked, 'if a > 0 {\n\t\tprintln!("{}", a);\n\t}', "rust", "block")
        == 'fn f() {\n    let a = 1;\n    if a > 0 {\n        println!("{}", a);\n    }\n}\n'
    )


def test_java_block_cut_before_suffix_repeat() -> None:
    marked = (
        "public class A {\n    int sum(int[] xs) {\n        int s = 0;\n        <CURSOR>\n        return s;\n    }\n}\n"
    )
    raw = "for (int x : xs) {\n            s += x;\n        }\n        return s;\n    }\n}\n"
    assert complete(marked, raw, "java", "block") == (
        "public class A {\n    int sum(int[] xs) {\n        int s = 0;\n        for (int x : xs) {\n"
        "            s += x;\n        }\n        return s;\n    }\n}\n"
    )


def test_crlf_document_gets_crlf_edit() -> None:
    text, offset = at("def f():\r\n    <CURSOR>\r\n    return 1\r\n")
    edit = postprocess("x = 1\r\n    y = 2\n", text, offset, "python", "block")
    assert edit is not None and edit.text == "x = 1\r\n    y = 2"
    assert "\r\r" not in apply(text, edit) and "\n\n" not in apply(text, edit)


# ---- validation ------------------------------------------------------------------------------------------------------


def test_broken_completion_is_rejected() -> None:
    assert complete("def f(a):\n    <CURSOR>\n", "return (a +", "python", "block") is None
    assert complete("int main() {\n    <CURSOR>\n}\n", "int x = ;", "c", "block") is None


def test_broken_trailing_lines_are_trimmed_first() -> None:
    marked = "def f(a):\n    <CURSOR>\n"
    assert (
        complete(marked, "b = a * 2\n    c = b + 1\n    return (c +", "python", "block")
        == "def f(a):\n    b = a * 2\n    c = b + 1\n"
    )


def test_completion_that_fixes_an_error_is_welcome() -> None:
    marked = "function f(x) {\n  return [x,<CURSOR>\n}\n"
    assert complete(marked, " x + 1];", "javascript", "line") == "function f(x) {\n  return [x, x + 1];\n}\n"


def test_unknown_language_skips_validation_but_still_cleans() -> None:
    assert complete("say (<CURSOR>)\n", "hello)) + +", "cobol", "line") == "say (hello)\n"
    assert (
        complete("  item:<CURSOR>\n", "\n    a: 1\n    b: 2\nother:", "yaml", "block")
        == "  item:\n    a: 1\n    b: 2\n"
    )


# ---- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-5, 10_000])
def test_out_of_range_offset_is_clamped(offset: int) -> None:
    text = "x = 1\ny = "
    edit = postprocess("z = 0;", text, offset, "python", "line")
    assert edit is not None and 0 <= edit.start <= edit.end <= len(text)


def test_garbage_never_raises() -> None:
    assert postprocess(None, "x", 0, "python", "line") is None  # type: ignore[arg-type]
    assert postprocess("x", None, 0, "python", "line") is None  # type: ignore[arg-type]
    assert postprocess("x = 1", "", 0, "python", "line") == Edit(0, 0, "x = 1")
    assert postprocess("abc", "\x00\x01\x02", 1, "python", "line") == Edit(1, 1, "abc")
    assert postprocess(" + 2", "x = 1\r\n", 6, "python", "line") == Edit(5, 5, " + 2")  # between "\r" and "\n"
    big = "value = compute(1)\n" * 20_000  # large document: validated on the statement around the cursor
    assert postprocess("result = value + 1", big + "\n", len(big), "python", "block") == Edit(
        len(big), len(big), "result = value + 1"
    )
    assert postprocess("result = (value +", big + "\n", len(big), "python", "block") is None


# ---- properties ------------------------------------------------------------------------------------------------------

DOCS = {
    "python": "import os\n\n\ndef f(a, b):\n    if a:\n        return [a, b]\n    \n    return None\n\n\nx = f(1, 2)\n",
    "javascript": "const fs = require('fs');\n\nfunction f(a) {\n  if (a) {\n    return [a];\n  }\n  \n}\n",
    "go": "package main\n\nfunc f(a int) int {\n\tif a > 0 {\n\t\treturn a\n\t}\n\t\n\treturn 0\n}\n",
    "c": "#include <stdio.h>\n\nint f(int a) {\n    if (a) {\n        return a;\n    }\n    \n}\n",
}
FRAGMENTS = [
    "x",
    " = ",
    "1",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ":",
    ";",
    ",",
    "\n",
    "\n    ",
    "\n\t",
    "return ",
    "if ",
    "'",
    '"',
    "#",
    "//",
    "a",
    "b",
    " + ",
    "def ",
    "    ",
    "\r\n",
    "None",
    "f(a)",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    language_id=st.sampled_from(sorted(DOCS)),
    where=st.floats(0, 1),
    raw=st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join),
    kind=st.sampled_from(["line", "block"]),
)
@example(language_id="c", where=0.3984375, raw="f(a)\nx", kind="block")  # `int f(int a|) {`: closer tail at column 0
def test_never_adds_parse_errors(language_id: str, where: float, raw: str, kind: str) -> None:
    text = DOCS[language_id]
    offset = int(len(text) * where)
    edit = postprocess(raw, text, offset, language_id, kind)  # type: ignore[arg-type]
    if edit is None:
        return
    assert edit.start == offset and offset <= edit.end <= len(text)
    # No trailing whitespace, except the line break + indentation that puts a closer right after the cursor on its
    # own line below a block (`{|}`, `(|)`); at column 0 that indentation is empty.
    line_rest = text[offset:].split("\n", 1)[0].strip()
    closer_tail = kind == "block" and line_rest[:1] in ("}", ")", "]") and edit.text.rstrip(" \t").endswith("\n")
    assert edit.text.strip() and (edit.text == edit.text.rstrip() or edit.text.endswith((" ", "\t")) or closer_tail)
    if kind == "line":
        assert "\n" not in edit.text
    assert errors(apply(text, edit), language_id) <= errors(text, language_id)


# ---- ranking by the language's own parser -----------------------------------------------------------------------


GAP = "def total(numbers):\n    result = 0\n    <CURSOR>\n        result += n\n    return result\n"


def test_python_edits_say_whether_the_code_still_compiles() -> None:
    text, offset = at(GAP)
    header = postprocess("for n in numbers:", text, offset, "python", "line")
    statement = postprocess("print(numbers)", text, offset, "python", "line")
    assert header is not None and header.compiles is True
    # tree-sitter takes the unexpected indent after a plain statement; Python does not
    assert statement is not None and statement.compiles is False
    js = postprocess("x = 1;", *at("function f() {\n  <CURSOR>\n}\n"), "javascript", "line")
    assert js is not None and js.compiles is None
    # what parses but the compiler refuses: a `break` outside any loop
    loop, at_loop = at("def f(xs):\n    for x in xs:\n        if x:\n            <CURSOR>\n    return 1\n")
    text, offset = at("def f(xs):\n    if xs:\n        <CURSOR>\n    return 1\n")
    assert getattr(postprocess("break", text, offset, "python", "line"), "compiles", None) is False
    assert getattr(postprocess("break", loop, at_loop, "python", "line"), "compiles", None) is True


def test_ranking_moves_edits_that_break_compilation_last_and_keeps_the_models_order_otherwise() -> None:
    from dg_lsp.postprocess import rank

    a, b, c, d = (Edit(0, 0, t, ok) for t, ok in (("a", False), ("b", True), ("c", None), ("d", False)))
    assert [e.text for e in rank([a, b, c, d])] == ["b", "c", "a", "d"]
    assert Edit(0, 0, "x", True) == Edit(0, 0, "x", False), "the verdict is not part of the edit's identity"


def test_complete_offers_the_candidate_that_compiles_first() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete
    from dg_lsp.settings import Settings

    text, offset = at(GAP)
    engine = FakeEngine(texts=["print(numbers)", "for n in numbers:"])
    edits = complete(engine, text, offset, "python", Settings(candidates=2)).edits
    assert [e.text for e in edits] == ["for n in numbers:", "print(numbers)"]
    compile(apply(text, edits[0]), "<edit>", "exec")


def test_complete_offers_a_candidate_that_uses_only_defined_names_first_and_runs() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete
    from dg_lsp.settings import Settings

    # both compile; the likelier one loops over a name the function never defines
    text, offset = at(GAP)
    engine = FakeEngine(texts=["for n in nums:", "for n in numbers:", "for n in range(3):"])
    edits = complete(engine, text, offset, "python", Settings(candidates=3)).edits
    assert [e.text for e in edits] == ["for n in numbers:", "for n in nums:", "for n in range(3):"]
    scope: dict = {}
    exec(apply(text, edits[0]), scope)
    assert scope["total"]([1, 2, 3]) == 6


def test_the_models_order_stays_where_names_cannot_be_judged_or_all_are_undefined() -> None:
    from dg_lsp.postprocess import prefer_runnable

    text, offset = at(GAP)
    both = [Edit(offset, offset, t, True) for t in ("for n in nums:", "for n in numbrs:")]
    assert prefer_runnable(both, text, "python") == both  # nothing better to offer
    broken, offset_b = at("def f(:\n    <CURSOR>\n")  # the code around does not parse: nothing to judge by
    first = [Edit(offset_b, offset_b, t, None) for t in ("x = nope", "x = 1")]
    assert prefer_runnable(first, broken, "python") == first
    js = [Edit(0, 0, t, None) for t in ("nope()", "f()")]
    assert prefer_runnable(js, "function f() {}\n", "javascript") == js
    failing = [Edit(offset, offset, "for n in nums", False), Edit(offset, offset, "for n in numbers:", False)]
    assert prefer_runnable(failing, text, "python") == failing  # what does not compile is not promoted


def test_an_answer_that_would_fail_when_run_is_asked_for_once_more_wider() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete
    from dg_lsp.settings import Settings

    # a fault no line here can bind away (the function calls itself as it was called): no opening, a wider beam
    text, offset = at("def fib(n):\n    if n < 2:\n        return n\n    <CURSOR>\n")
    engine = FakeEngine(texts=["return fib(n)", "return fib(n - 1) + fib(n - 2)"])  # a beam of one: the endless call
    out = complete(engine, text, offset, "python", Settings())
    assert [e.text for e in out.edits] == ["return fib(n - 1) + fib(n - 2)", "return fib(n)"]
    assert [job.n for kind, job in engine.calls] == [1, Settings().retry_candidates]
    scope: dict = {}
    exec(apply(text, out.edits[0]), scope)
    assert scope["fib"](10) == 55
    # an answer the compiler refuses (a statement where the block below needs its header) is asked again too
    header, at_header = at("def sign(x):\n    <CURSOR>\n        return -1\n    return 1\n")
    engine = FakeEngine(texts=["print(x)", "if x < 0:"])
    out = complete(engine, header, at_header, "python", Settings())
    assert out.edits[0].text == "if x < 0:"
    assert [job.n for kind, job in engine.calls] == [1, Settings().retry_candidates]
    # a body that `continue`s: only a loop's header compiles above it, and a loop is what is asked for
    loop, at_loop = at(
        "def f(xs):\n    out = []\n    <CURSOR>\n        if out:\n            continue\n        out.append(1)\n"
    )
    engine = FakeEngine(texts=["print(xs)", "for _ in xs:"])
    assert complete(engine, loop, at_loop, "python", Settings()).edits[0].text == "for _ in xs:"
    # code below that no line here can make compile (typed halfway): an answer that does not compile is not retried
    broken, at_broken = at("def sign(x):\n    <CURSOR>\n    return (x,\n")
    engine = FakeEngine(texts=["print(x)", "y = x"])
    complete(engine, broken, at_broken, "python", Settings())
    assert len(engine.calls) == 1
    # a read some path leaves unbound (the loop may not run) with no line to open for it: no wider beam
    after_loop, at_end = at("def last(xs):\n    for x in xs:\n        pass\n    <CURSOR>\n")
    engine = FakeEngine(texts=["return x", "return None"])
    assert complete(engine, after_loop, at_end, "python", Settings()).edits[0].text == "return x"
    assert len(engine.calls) == 1
    # no second call: where the first answer runs, while typing within a line, or where the setting is 0
    for first, chosen, automatic in [
        ("return fib(n - 1) + fib(n - 2)", Settings(), False),
        ("return fib(n)", Settings(), True),
        ("return fib(n)", Settings(retry_candidates=0), False),
    ]:
        engine = FakeEngine(texts=[first, "return fib(n - 1) + fib(n - 2)"])
        mid_line, at_mid = at("def fib(n):\n    if n < 2:\n        return n\n    return fib<CURSOR>\n")
        doc, cursor = (mid_line, at_mid) if automatic else (text, offset)
        complete(engine, doc, cursor, "python", chosen, automatic=automatic)
        assert len(engine.calls) == 1


def test_the_line_the_code_below_needs_is_opened_for_the_model_before_a_wider_beam() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete
    from dg_lsp.settings import Settings

    body = "    for n in numbers:\n        result += n\n    return result\n"
    text, offset = at("def total(numbers):\n    <CURSOR>\n" + body)
    # the beam ignores `result`, which the loop below adds to; opened as `result =`, the model finishes it
    engine = FakeEngine(texts=["count = 0"], after={"result =": [" 0", " []"]})
    out = complete(engine, text, offset, "python", Settings())
    assert out.edits[0].text == "result = 0"
    (_, first), (_, opened) = engine.calls  # the opening's answer runs: no wider beam
    assert opened.prefix == first.prefix + "result =" and opened.kind == "line"
    scope: dict = {}
    exec(apply(text, out.edits[0]), scope)
    assert scope["total"]([1, 2]) == 3
    # a beam with nothing to offer: the opening still asks (its answer runs: no wider beam)
    engine = FakeEngine(texts=[""], after={"result =": [" 0"]})
    assert complete(engine, text, offset, "python", Settings()).edits[0].text == "result = 0"
    assert len(engine.calls) == 2
    # the loop's names: the missing line opens the loop that binds them
    loop, at_loop = at("def show(items):\n    <CURSOR>\n        print(i, item)\n")
    engine = FakeEngine(texts=["for x in items:"], after={"for i, item in": [" enumerate(items):"]})
    out = complete(engine, loop, at_loop, "python", Settings())
    assert out.edits[0].text == "for i, item in enumerate(items):" and len(engine.calls) == 2  # no wider beam
    # a name only some paths below bind before they read it: the answer runs on the others, and may stop there
    flag, at_flag = at(
        "def f(s):\n    <CURSOR>\n    for c in s:\n        if c == 'x':\n            seen = 1\n    return seen\n"
    )
    engine = FakeEngine(texts=["print(s)"], after={"seen =": [" 0"]})
    out = complete(engine, flag, at_flag, "python", Settings())
    assert out.edits[0].text == "seen = 0" and len(engine.calls) == 2
    exec(apply(flag, out.edits[0]), scope)
    assert scope["f"]("abc") == 0
    # a module read below and never imported: the line is the import, no model call needed for it
    root, at_root = at("def root(x):\n    <CURSOR>\n    return math.sqrt(x)\n")
    engine = FakeEngine(texts=["y = x"])
    out = complete(engine, root, at_root, "python", Settings())
    assert out.edits[0].text == "import math" and len(engine.calls) == 1
    exec(apply(root, out.edits[0]), scope)
    assert scope["root"](9) == 3.0
    # retryCandidates 0: never ask twice
    engine = FakeEngine(texts=["count = 0"], after={"result =": [" 0"]})
    assert complete(engine, text, offset, "python", Settings(retry_candidates=0)).edits[0].text == "count = 0"
    assert len(engine.calls) == 1


def test_complete_prefers_the_line_that_defines_what_the_next_lines_use() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete
    from dg_lsp.settings import Settings

    body = "    for n in numbers:\n        result += n\n    return result\n"
    text, offset = at("def total(numbers):\n    <CURSOR>\n" + body)
    engine = FakeEngine(texts=["count = 0", "result = 0"])
    edits = complete(engine, text, offset, "python", Settings(candidates=2)).edits
    assert [e.text for e in edits] == ["result = 0", "count = 0"]
    scope: dict = {}
    exec(apply(text, edits[0]), scope)
    assert scope["total"]([1, 2, 3]) == 6


@pytest.mark.parametrize(
    ("code", "endless"),
    [
        ("def fib(n):\n    <CURSOR>\n", True),  # the middle: fib(n) again
        ("class A:\n    def run(self, x):\n        <CURSOR>\n", True),
        # after a base case, with the parameter changed on the way: a recursion's step
        ("def fib(n):\n    if n < 2:\n        return n\n    n = n - 1\n    <CURSOR>\n", False),
    ],
)
def test_a_function_that_calls_itself_unchanged_is_a_fault(code, endless) -> None:
    from dg_lsp.diagnose import run_faults

    text, offset = at(code)
    call = "return self.run(x)" if "class" in code else "return fib(n)"
    assert run_faults(text, offset, offset, call, "python") == int(endless)
    smaller = "if x:\n            return self.run(x[1:])" if "class" in code else "if n:\n        return fib(n - 1)"
    assert run_faults(text, offset, offset, smaller, "python") == 0


def test_a_call_to_itself_that_every_call_reaches_is_a_fault() -> None:
    from dg_lsp.diagnose import run_faults

    text, offset = at('def truncate(number):\n    """The decimal part."""\n    <CURSOR>\n')
    assert run_faults(text, offset, offset, "return truncate(1.0)", "python") == 1
    assert run_faults(text, offset, offset, "return list(truncate(number - 1))", "python") == 1
    # behind a condition, a short-circuit or an earlier return, it may be the recursion's step
    for fine in ("return number and truncate(number - 1)", "if number > 1:\n        return truncate(number - 1)"):
        assert run_faults(text, offset, offset, fine, "python") == 0
    base, at_base = at("def count(n):\n    if n == 0:\n        return 0\n    <CURSOR>\n")
    assert run_faults(base, at_base, at_base, "return 1 + count(n - 1)", "python") == 0
    # a helper defined first returns from itself, not from the function around it
    helper = "def nth_square(n):\n    def square(k):\n        return k * k\n    <CURSOR>\n    return square(n)\n"
    text, offset = at(helper)
    assert run_faults(text, offset, offset, "n = nth_square(n)", "python") == 1
    assert run_faults(text, offset, offset, "n = square(n)", "python") == 0


def test_a_local_read_before_the_function_binds_it_is_a_fault() -> None:
    from dg_lsp.diagnose import run_faults

    body = "    for x in xs:\n        if x > best:\n            best = x\n    return best\n"
    text, offset = at("def peak(xs):\n    <CURSOR>\n" + body)
    assert run_faults(text, offset, offset, "best = xs[0]", "python") == 0
    assert run_faults(text, offset, offset, "count = 0", "python") == 1  # UnboundLocalError at `x > best`
    # a name bound before it is read, or read only in a comprehension of its own, is fine
    assert run_faults(text, offset, offset, "best = max([y for y in xs])", "python") == 0


@pytest.mark.parametrize(
    ("code", "worse", "better"),
    [
        # the annotation says what comes back: -1 and None are not lists
        (
            "def evens(xs: list[int]) -> list[int]:\n    if not xs:\n        <CURSOR>\n    return xs[::2]\n",
            "return -1",
            "return []",
        ),
        # no annotation: the function's other literal returns say it, and a flag may be 0 or False
        ("def name(s):\n    if not s:\n        <CURSOR>\n    return 'x'\n", "return None", "return ''"),
        ("def ok(n):\n    if n < 0:\n        <CURSOR>\n    return n > 1\n", "return 'no'", "return 0"),
        # a bare return where the function returns values
        ("def tri(n):\n    if n == 0:\n        return [1]\n    out = [1, 3]\n    <CURSOR>\n", "return", "return out"),
        # a test an earlier branch that returns already took, in a chain or as a sibling: the branch is dead
        (
            "def fib(n):\n    <CURSOR>\n        return 0\n    if n == 1:\n        return 1\n    return n\n",
            "if n == 1:",
            "if n == 0:",
        ),
        (
            "def f(n):\n    if n == 0:\n        return 0\n    <CURSOR>\n        return 1\n",
            "elif n == 0:",
            "elif n > 0:",
        ),
        # an else that returns above the function's last return: that return can never run
        (
            "def f(n):\n    if n == 0:\n        return 0\n    <CURSOR>\n        return 1\n    return 2\n",
            "else:",
            "if n == 1:",
        ),
        # a local computed and never read
        ("def f(xs):\n    total = sum(xs)\n    <CURSOR>\n", "return True", "return total"),
        # with code below, a local the edit binds and nothing reads
        ("def f(xs):\n    <CURSOR>\n    return xs\n", "n = len(xs)", "xs.sort()"),
        # a loop the code it opens never reads the variable of: the line was a test
        (
            "def f(n):\n    ns = []\n    for i in range(n):\n        <CURSOR>\n            ns.append(i)\n"
            "    return ns\n",
            "for j in range(n):",
            "if i % 3 == 0:",
        ),
        # a loop that rebinds the variable of the loop around it
        (
            "def f(s):\n    out = []\n    for c in s:\n        <CURSOR>\n            out.append(c)\n    return out\n",
            "for c in s:",
            "if c.isdigit():",
        ),
        # a loop over its own variable, a test of an expression against itself
        (
            "def f(word):\n    out = []\n    <CURSOR>\n        out.append(word)\n    return out\n",
            "for word in word:",
            "if word:",
        ),
        (
            "def f(xs):\n    n = 0\n    for i in range(len(xs)):\n        <CURSOR>\n            n += 1\n    return n\n",
            "if xs[i] < xs[i]:",
            "if xs[i] < 0:",
        ),
        # an item assigned to itself, a list given itself
        (
            "def f(xs, ys):\n    for i in range(len(ys)):\n        <CURSOR>\n    return xs\n",
            "xs[i] = xs[i]",
            "xs[i] = ys[i]",
        ),
        (
            "def f(xs):\n    out = []\n    for x in xs:\n        <CURSOR>\n    return out\n",
            "out.append(out)",
            "out.append(x)",
        ),
        # a parameter nothing reads, with code below: the line that read it is the one missing
        (
            "def scale(xs, k):\n    out = []\n    for x in xs:\n        <CURSOR>\n    return out\n",
            "out.append(x)",
            "out.append(x * k)",
        ),
    ],
)
def test_a_linters_hints_break_ties_between_candidates_that_run(code, worse, better) -> None:
    from dg_lsp.diagnose import check_run
    from dg_lsp.postprocess import prefer_runnable

    text, offset = at(code)
    assert (
        check_run(text, offset, offset, worse, "python").hints > check_run(text, offset, offset, better, "python").hints
    )
    ranked = [Edit(offset, offset, worse, True), Edit(offset, offset, better, True)]
    assert [e.text for e in prefer_runnable(ranked, text, "python")] == [better, worse]


def test_hints_leave_alone_what_working_code_often_does() -> None:
    from dg_lsp.diagnose import check_run

    # a parameter or a local not read yet where the function ends at the cursor: code written top-down reads them
    # further on
    text, offset = at("def add(a, b):\n    <CURSOR>\n")
    assert check_run(text, offset, offset, "total = a", "python").hints == 0
    # Optional, unions and the program's own classes say nothing a literal can be held to
    for note in ("Optional[str]", "str | None", "Node"):
        text, offset = at(f"def find(xs) -> {note}:\n    if not xs:\n        <CURSOR>\n    return xs[0]\n")
        assert check_run(text, offset, offset, "return None", "python").hints == 0
    # the same test again after a branch that does not leave may be meant: `if x: a()` ... `if x: b()`
    text, offset = at("def f(x):\n    if x:\n        print(1)\n    print(2)\n    <CURSOR>\n        print(3)\n")
    assert check_run(text, offset, offset, "if x:", "python").hints == 0
    # a loop whose variable is `_`, or read after the loop; a test for NaN
    text, offset = at("def f(n):\n    k = 0\n    <CURSOR>\n        k += 1\n    return k\n")
    assert check_run(text, offset, offset, "for _ in range(n):", "python").hints == 0
    text, offset = at("def f(xs):\n    i = -1\n    <CURSOR>\n        pass\n    return i\n")
    assert check_run(text, offset, offset, "for i, x in enumerate(xs):", "python").hints == 0
    text, offset = at("def f(x):\n    <CURSOR>\n        return 0\n    return x\n")
    assert check_run(text, offset, offset, "if x != x:", "python").hints == 0
    # a run fault outweighs any number of hints
    text, offset = at("def f(xs, k):\n    <CURSOR>\n    return 1\n")
    assert check_run(text, offset, offset, "return nope", "python") > check_run(
        text, offset, offset, "return", "python"
    )


def test_faults_are_not_weighed_in_a_statement_too_large_to_check_per_keystroke() -> None:
    from dg_lsp.diagnose import RUN_FAULT_CHARS, run_faults

    filler = "".join(f"    v{i} = {i}\n" for i in range(RUN_FAULT_CHARS // 10))
    text, offset = at("def big():\n" + filler + "    <CURSOR>\n")
    assert run_faults(text, offset, offset, "return nope", "python") is None
    small, at_small = at("def small():\n    <CURSOR>\n")
    assert run_faults(small, at_small, at_small, "return nope", "python") == 1


def test_a_loop_over_a_number_is_a_fault() -> None:
    from dg_lsp.diagnose import run_faults

    text, offset = at("def primes(n):\n    found = []\n    <CURSOR>\n        found.append(i)\n    return found\n")
    assert run_faults(text, offset, offset, "for i in 1:", "python") == 1  # TypeError: 'int' is not iterable
    assert run_faults(text, offset, offset, "for i in range(2, n):", "python") == 0
    line, at_line = at("def squares(n):\n    <CURSOR>\n")
    assert run_faults(line, at_line, at_line, "return [i * i for i in n + 1]", "python") == 0  # n may be a list
    assert run_faults(line, at_line, at_line, "return [i * i for i in 10]", "python") == 1


@pytest.mark.parametrize(
    ("new", "faults"),
    [
        ("count = []", 1),  # `count += 1` below: a list takes no number
        ("count = 0", 0),
        ("count = None", 1),
        ("seen = 0", 1),  # `seen.append(x)`: an int has no append
        ("seen = []", 0),
        ("seen = ''", 1),
        ("table = 0", 1),  # `table[x] = 1`: an int holds no items
        ("table = {}", 0),
        ("table = ()", 1),  # a tuple cannot have items stored into it
        ("names = 0", 1),  # `del names[0]`: nor can a number lose one
        ("names = []", 0),
        # a builtin's result has its one type, a negated number is a number
        ("seen = len(xs)", 1),
        ("seen = list(xs)", 0),
        ("seen = sorted(xs)", 0),
        ("table = -1", 1),
        ("table = str(xs)", 1),  # a string holds no items stored into it
        ("table = dict(a=1)", 0),
    ],
)
def test_a_literal_whose_type_the_code_below_cannot_use_is_a_fault(new: str, faults: int) -> None:
    from dg_lsp.diagnose import run_faults

    name = new.split(" ")[0]
    use = {"count": "count += 1", "seen": "seen.append(x)", "table": "table[x] = 1", "names": "del names[0]"}[name]
    text, offset = at(f"def f(xs):\n    <CURSOR>\n    for x in xs:\n        {use}\n    return {name}\n")
    assert run_faults(text, offset, offset, new, "python") == faults


@pytest.mark.parametrize(
    ("new", "faults"),
    [
        ("lo, hi = []", 1),  # ValueError: not enough values to unpack
        ("lo, hi = 0", 1),  # TypeError: cannot unpack a number
        ("lo, hi = 0, len(xs)", 0),
        ("lo, *rest = [0]", 0),
        ("lo, hi = xs", 0),  # the list's length is the caller's
        ("for lo, hi, n in enumerate(xs):\n        print(lo, hi, n)", 1),  # enumerate yields pairs
        ("for lo, hi in enumerate(xs):\n        print(lo, hi)", 0),
        ("for lo, hi in range(len(xs)):\n        print(lo, hi)", 1),
        ("for lo, hi in zip(xs, xs[1:]):\n        print(lo, hi)", 0),
    ],
)
def test_unpacking_into_more_or_fewer_names_than_the_value_has_is_a_fault(new: str, faults: int) -> None:
    from dg_lsp.diagnose import run_faults

    text, offset = at("def f(xs):\n    <CURSOR>\n    return xs\n")
    assert run_faults(text, offset, offset, new, "python") == faults
    scope: dict = {}
    exec(text[:offset] + new + text[offset:], scope)
    if faults:
        with pytest.raises((TypeError, ValueError)):
            scope["f"]([1, 2])
    else:
        scope["f"]([1, 2])


@pytest.mark.parametrize(
    ("new", "faults"),
    [
        ("top = [0]", 1),  # `top + 1` below: a list takes no number
        ("top = 0", 0),
        ("top = len(xs)", 0),
        ("top = str(xs)", 1),  # a string takes no number either
    ],
)
def test_an_operation_the_types_of_its_sides_refuse_is_a_fault(new: str, faults: int) -> None:
    from dg_lsp.diagnose import run_faults

    text, offset = at("def f(xs):\n    <CURSOR>\n    return list(range(0, top + 1))\n")
    assert run_faults(text, offset, offset, new, "python") == faults
    # a format string's `%` depends on its text
    text, offset = at("def f(n):\n    <CURSOR>\n    return fmt % n\n")
    assert run_faults(text, offset, offset, "fmt = '%d'", "python") == 0


def test_a_literal_rebound_elsewhere_or_huge_to_repeat_is_not_judged_by_its_type() -> None:
    from dg_lsp.diagnose import run_faults

    # rebound on another line: the use may see the other value
    text, offset = at(
        "def f(xs):\n    <CURSOR>\n    if xs:\n        count = []\n    count.append(1)\n    return count\n"
    )
    assert run_faults(text, offset, offset, "count = 0", "python") == 0
    # the type allows it; the check must not build the value (a 10 GB string) to find out
    text, offset = at("def f():\n    <CURSOR>\n    s *= 10000000000\n    return s\n")
    assert run_faults(text, offset, offset, "s = 'abc'", "python") == 0
    assert run_faults(text, offset, offset, "s = None", "python") == 1


@pytest.mark.parametrize(
    ("code", "wrong", "right"),
    [
        # `n: int` is not iterable, has no length, holds nothing `in` it
        (
            "def divisor(n: int) -> int:\n    <CURSOR>\n        if n % i == 0:\n            return i\n",
            "for i in n:",
            "for i in range(2, n):",
        ),
        ("def f(n: int) -> int:\n    <CURSOR>\n", "return len(n)", "return n + 1"),
        ("def f(xs: list, n: int) -> bool:\n    <CURSOR>\n", "return 3 in n", "return n in xs"),
        # a list is no count: `range(xs)`
        (
            "from typing import List\n\n\n"
            "def f(xs: List[int]) -> int:\n    t = 0\n    <CURSOR>\n        t += xs[i]\n    return t\n",
            "for i in range(xs):",
            "for i in range(len(xs)):",
        ),
        # the items of a `List[float]` are floats
        (
            "from typing import List\n\n\n"
            "def f(xs: List[float]) -> int:\n    for x in xs:\n        <CURSOR>\n    return 0\n",
            "print(len(x))",
            "print(x)",
        ),
        # ... as they are counted (`enumerate`)
        (
            "from typing import List\n\n\n"
            "def f(xs: List[float]) -> int:\n    for i, x in enumerate(xs):\n        <CURSOR>\n    return 0\n",
            "for y in x:\n            print(y, i)",
            "for y in xs:\n            print(y, x, i)",
        ),
    ],
)
def test_an_annotated_parameter_used_as_its_type_cannot_be_is_a_fault(code: str, wrong: str, right: str) -> None:
    from dg_lsp.diagnose import run_faults

    text, offset = at(code)
    assert run_faults(text, offset, offset, wrong, "python") == 1
    assert run_faults(text, offset, offset, right, "python") == 0


def test_the_edit_using_a_local_another_line_binds_to_a_literal_is_held_to_its_type() -> None:
    from dg_lsp.diagnose import run_faults

    text, offset = at(
        "def f(ops):\n    balance = 0\n    seen = {}\n    for op in ops:\n        <CURSOR>\n    return 1\n"
    )
    assert run_faults(text, offset, offset, "balance.append(op)", "python") == 1  # an int has no append
    assert run_faults(text, offset, offset, "if seen > 0:\n            return 0", "python") == 1  # {} > 0
    assert run_faults(text, offset, offset, "if balance > 0:\n            return 0", "python") == 0
    assert run_faults(text, offset, offset, "seen[op] = 1", "python") == 0


def test_parameters_are_judged_by_their_annotation_only_where_nothing_else_can_hold_them() -> None:
    from dg_lsp.diagnose import run_faults

    # rebound in the function, or annotated with a union or a class of the program's own: not judged
    for code in (
        "def f(n: int):\n    n = str(n)\n    <CURSOR>\n",
        "def f(n: int | str):\n    <CURSOR>\n",
        "from typing import Optional\n\n\ndef f(n: Optional[int]):\n    <CURSOR>\n",
        "class Node:\n    pass\n\n\ndef f(n: Node):\n    <CURSOR>\n",
    ):
        text, offset = at(code)
        assert run_faults(text, offset, offset, "return len(n)", "python") == 0, code
    # `max(a, b)` compares two numbers; `max(n)` iterates one
    text, offset = at("def f(a: int, b: int):\n    <CURSOR>\n")
    assert run_faults(text, offset, offset, "return max(a, b)", "python") == 0
    assert run_faults(text, offset, offset, "return max(a)", "python") == 1
