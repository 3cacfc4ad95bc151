"""The one scan that tells code from strings and comments (stops, post-processing and repairs all read text with it)."""

import pytest

from dg_model.code_scan import PYTHON, Lexicon, brackets, code_mask, scan

C = Lexicon("//", block_comments=True, triple_quotes=False)
RUST = Lexicon("//", block_comments=True, triple_quotes=False, char_literals=True)


def code(text: str, lexicon: Lexicon = PYTHON) -> str:
    """The text with everything that is not code turned into `_` (line breaks kept, to read the cases)."""
    return "".join(ch if keep or ch == "\n" else "_" for ch, keep in zip(text, code_mask(text, lexicon)))


@pytest.mark.parametrize(
    ("text", "lexicon", "expected"),
    [
        # brackets and comment markers inside strings are not code
        ('f("(", x)', PYTHON, "f(___, x)"),
        ("s = '# not a comment' # (a comment", PYTHON, "s = _________________ ____________"),
        # escapes: an escaped quote does not close the string, an escaped backslash does not escape the quote
        (r'f("a\"(", "\\") + g(', PYTHON, r"f(______, ____) + g("),
        # triple quotes span lines, and hold lone quotes
        ('x = """a ( "b"\n c )""" + (', PYTHON, "x = __________\n_______ + ("),
        # a one-line string left open ends at its line; a triple-quoted one runs to the end
        ('x = "a (\ny = (', PYTHON, "x = ____\ny = ("),
        ("x = '''a (\ny = (", PYTHON, "x = ______\n_____"),
        # a backslash before the line break continues a one-line string
        ('s = "a \\\n ( "; (', PYTHON, "s = ____\n____; ("),
        # the language's comments: `#` is code in C, `//` and `/* */` are comments
        ("a[i] # x // (y\n/* ( */ b(", C, "a[i] # x _____\n_______ b("),
        # backticks span lines (template literals, Go raw strings)
        ("s = `(\n)`; f(", C, "s = __\n__; f("),
        # char literals: '(' is a literal, a lifetime's ' is code
        ("fn f<'a>(c: char) { c == '(' || c == '\\'' }", RUST, "fn f<'a>(c: char) { c == ___ || c == ____ }"),
    ],
)
def test_code_mask(text: str, lexicon: Lexicon, expected: str) -> None:
    assert code(text, lexicon) == expected


def test_brackets_are_the_ones_in_code() -> None:
    text = 'f(a["]"], {1: "}"})  # )'
    assert [ch for _, ch in brackets(text)] == list("([]{})")
    assert all(text[at] == ch for at, ch in brackets(text))


def test_a_string_left_open_is_reported_as_open() -> None:
    assert [t.kind for t in scan('"a" # c\nx = "b')] == ["string", "comment", "open"]


def test_a_window_reads_a_quote_that_does_not_close_as_code() -> None:
    """Cut at the cursor inside a string, the prefix and the middle both read the string's brackets as code, so they
    still pair up."""
    window = Lexicon(window=True)
    prefix, middle = 'print("see (', 'below)")'
    assert [ch for _, ch in brackets(prefix, window)] == ["(", "("]
    assert [ch for _, ch in brackets(middle, window)] == [")", ")"]
    assert [ch for _, ch in brackets(prefix)] == ["("]  # not a window: the open string hides its bracket
    assert code("/* open ( comment", Lexicon("//", block_comments=True, window=True)) == "/* open ( comment"
