"""How "Rewrite this block" chooses among the rewrites that pass the checks (`rewrite_block.choose`), and the bench
that calibrates it counting what the choice does to slipped and intact blocks."""

from __future__ import annotations

from dg_bench.rewrite_tolerance import Case, table
from dg_lsp.pipeline import MARGIN
from dg_lsp.postprocess import Edit
from dg_lsp.rewrite_block import REWRITE_TOLERANCE, Option, RewriteOptions, choose

TEXT = "x = lne(a)\n"
RESPELT, FRESH = Edit(4, 7, "len"), Edit(4, 10, "sum(a) + 1")


def test_a_broken_block_takes_the_likeliest_option_less_its_size_within_the_tolerance():
    # `sum(a) + 1` reads 3 nats likelier but changes 10 characters to the respelling's 1
    found = RewriteOptions(broken=True, options=[Option(FRESH, 3.0, 10), Option(RESPELT, 0.0, 1)])
    assert choose(found, channel=2.0) == RESPELT
    assert choose(found, channel=0.0) == FRESH
    lost = RewriteOptions(broken=True, options=[Option(RESPELT, -REWRITE_TOLERANCE - 0.5, 0)])
    assert choose(lost) is None and choose(lost, tolerance=REWRITE_TOLERANCE + 1) == RESPELT


def test_working_code_changes_only_for_the_margin_and_unranked_options_come_in_order():
    assert choose(RewriteOptions(broken=False, options=[Option(RESPELT, MARGIN - 0.5, 0)]), channel=0.0) is None
    assert choose(RewriteOptions(broken=False, options=[Option(RESPELT, MARGIN + 0.5, 0)]), channel=0.0) == RESPELT
    unranked = RewriteOptions(broken=True, options=[Option(FRESH, None, 10), Option(RESPELT, None, 1)])
    assert choose(unranked) == FRESH and choose(RewriteOptions(broken=True, options=[])) is None


def test_the_bench_counts_restored_slips_damaged_slips_and_changed_intact_blocks():
    original = "x = len(a)\n"
    cases = [
        Case("misspelt-name", TEXT, original, RewriteOptions(True, [Option(RESPELT, 0.0, 1)])),
        Case("misspelt-name", TEXT, original, RewriteOptions(True, [Option(FRESH, 3.0, 10)])),
        Case("misspelt-name", TEXT, original, RewriteOptions(True, [])),
        Case("intact", original, original, RewriteOptions(False, [Option(Edit(4, 7, "abs"), MARGIN + 30, 3)])),
    ]
    row = next(r for r in table(cases) if r["channel"] == 1.0 and r["tolerance"] == 2.0)
    # the fresh expression gains 3 nats and costs 10 at 1 a character: offered at a tolerance of 8 nats, not 2
    assert (row["restored"], row["damaged"], row["intact_changed"]) == (0.333, 0.0, 1.0)
    loose = next(r for r in table(cases) if r["channel"] == 1.0 and r["tolerance"] == 8.0)
    assert (loose["restored"], loose["damaged"]) == (0.333, 0.333)
