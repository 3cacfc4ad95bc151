"""Typed-ahead reuse (dg_lsp/typeahead.py): typing along with a suggestion keeps its untyped rest, exactly."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from dg_lsp.postprocess import Edit
from dg_lsp.typeahead import MAX_TYPED_AHEAD, Answer, forward, typed_since

DOC = "def area(r):\n    return \n\nprint(area(2))\n"
AT = DOC.index("return ") + len("return ")


def apply(text: str, edit: Edit) -> str:
    return text[: edit.start] + edit.text + text[edit.end :]


def typing(text: str, at: int, typed: str) -> str:
    return text[:at] + typed + text[at:]


def test_typing_the_start_of_a_suggestion_leaves_its_rest_at_the_new_cursor():
    answer = Answer(DOC, AT, (Edit(AT, AT, "3.14 * r * r", compiles=True),))
    now = typing(DOC, AT, "3.1")
    (edit,) = forward(answer, now, AT + 3)
    assert edit == Edit(AT + 3, AT + 3, "4 * r * r") and edit.compiles is True
    assert apply(now, edit) == apply(DOC, answer.edits[0])  # the same document as accepting it at once


def test_rest_of_the_line_replaced_by_the_edit_moves_with_the_typing():
    text = "x = max()\n"
    at = text.index("(") + 1
    answer = Answer(text, at, (Edit(at, at + 1, "a, b)"),))  # replaces the auto-inserted ")"
    now = typing(text, at, "a, ")
    (edit,) = forward(answer, now, at + 3)
    assert (edit.start, edit.end, edit.text) == (at + 3, at + 4, "b)")
    assert apply(now, edit) == "x = max(a, b)\n"


def test_only_the_candidates_that_agree_with_the_typing_are_kept_in_order():
    edits = (Edit(AT, AT, "r * r"), Edit(AT, AT, "3.14"), Edit(AT, AT, "r ** 2"))
    out = forward(Answer(DOC, AT, edits), typing(DOC, AT, "r "), AT + 2)
    assert [e.text for e in out] == ["* r", "** 2"]


def test_a_multi_line_suggestion_follows_auto_indented_enter():
    text = "def f(xs):\n    \n"
    at = text.index("    \n") + 4
    answer = Answer(text, at, (Edit(at, at, "for x in xs:\n        print(x)"),))
    now = typing(text, at, "for x in xs:\n        ")  # the editor indents after Enter
    (edit,) = forward(answer, now, at + len("for x in xs:\n        "))
    assert edit.text == "print(x)"


def test_what_does_not_carry_over():
    answer = Answer(DOC, AT, (Edit(AT, AT, "3.14 * r * r"),))
    assert forward(answer, typing(DOC, AT, "2"), AT + 1) is None  # typed away from the suggestion
    assert forward(answer, typing(DOC, AT, "3.14 * r * r"), AT + 12) is None  # typed all of it: ask anew
    assert forward(answer, DOC, AT) is None  # nothing typed: the per-version cache answers that
    assert forward(answer, DOC[: AT - 1] + DOC[AT:], AT - 1) is None  # a backspace
    assert forward(answer, typing(DOC, AT, "3") + "# elsewhere\n", AT + 1) is None  # and an edit elsewhere
    assert forward(answer, typing(DOC, AT, "3")[:-3] + "3)\n", AT + 1) is None  # same length, changed below
    assert forward(answer, typing(DOC, AT, "3()"), AT + 2) is None  # an auto-inserted closer after the cursor
    moved = typing(DOC, 0, "3")  # the same characters typed somewhere else
    assert forward(answer, moved, AT + 1) is None
    long = Answer(DOC, AT, (Edit(AT, AT, "x" * (MAX_TYPED_AHEAD + 5)),))
    assert forward(long, typing(DOC, AT, "x" * (MAX_TYPED_AHEAD + 1)), AT + MAX_TYPED_AHEAD + 1) is None


def test_an_edit_that_starts_before_the_cursor_keeps_its_replaced_text_in_the_check():
    text = "value = fo\n"
    at = len("value = fo")
    answer = Answer(text, at, (Edit(at - 2, at, "foo(1)"),))  # replaces "fo"
    assert forward(answer, typing(text, at, "x"), at + 1) is None
    (edit,) = forward(answer, typing(text, at, "o("), at + 2)
    assert (edit.start, edit.end, edit.text) == (at + 2, at + 2, "1)")


@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    suggestion=st.text(min_size=1, max_size=40),
    cut=st.integers(min_value=1, max_value=40),
    replaced=st.integers(min_value=0, max_value=5),
)
@example(before="a", after="\r\nb", suggestion="\r\nx", cut=1, replaced=0)
def test_accepting_after_typing_ahead_gives_the_document_accepting_at_once_gives(
    before, after, suggestion, cut, replaced
):
    text, at = before + after, len(before)
    original = Edit(at, min(len(text), at + replaced), suggestion)
    typed = suggestion[: min(cut, len(suggestion))]
    now = typing(text, at, typed)
    assert typed_since(Answer(text, at, (original,)), now, at + len(typed)) == typed
    out = forward(Answer(text, at, (original,)), now, at + len(typed))
    if typed == suggestion:
        assert out is None
    else:
        (edit,) = out
        assert edit.start == at + len(typed) <= edit.end
        assert apply(now, edit) == apply(text, original)
