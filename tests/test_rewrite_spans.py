"""The words a rewrite writes afresh, and the canvases that try them (dg_model/rewrite_spans.py)."""

from __future__ import annotations

import torch

from dg_model.rewrite_spans import Variant, canvases, doubted, variants, words, written

# "    if d < thrshold:" as a byte-level tokenizer cuts it: the misspelt name in four pieces
BLOCK = "    if d < thrshold:\n"
OFFSETS = [(0, 4), (4, 7), (7, 9), (9, 11), (11, 14), (14, 15), (15, 17), (17, 20), (20, 21), (21, 22)]
#          "    "  " if"   " d"    " <"    " th"     "r"      "sh"      "old"     ":"       "\n"


def test_words_join_the_pieces_of_a_name_and_nothing_else():
    spans = words(BLOCK, OFFSETS)
    assert spans[4] == spans[5] == spans[6] == spans[7] == (4, 8)  # " th|r|sh|old"
    assert spans[2] == (2, 3) and spans[3] == (3, 4) and spans[8] == (8, 9)  # " d", " <", ":" stand alone
    assert words("a.b", [(0, 1), (1, 2), (2, 3)]) == [(0, 1), (1, 2), (2, 3)]  # a dot is not a word character


def test_doubted_takes_the_suspects_words_first_then_the_least_likely():
    in_place = torch.zeros(len(OFFSETS))
    in_place[2] = -9.0  # " d" the least likely token
    in_place[6] = -5.0  # "sh"
    in_place[0] = -1.0  # the indentation: third
    # no suspects: the least likely token's word, as many as `share` of the words (at least one)
    assert doubted(BLOCK, OFFSETS, in_place, 0.0) == [(2, 3)]
    assert doubted(BLOCK, OFFSETS, in_place, 0.3) == [(2, 3), (4, 8)]
    # a suspect (the checks' undefined name at characters 11-20) comes first, whole; its word is not taken twice
    assert doubted(BLOCK, OFFSETS, in_place, 0.3, suspects=[(11, 20)]) == [(4, 8), (2, 3), (0, 1)]
    # a point (where the parser gave up) is the token there
    assert doubted(BLOCK, OFFSETS, in_place, 0.0, suspects=[(20, 20)])[0] == (8, 9)


def test_variants_try_the_lengths_a_slip_leaves_likely():
    assert [v.length for v in variants([(4, 8)])] == [1, 2, 3, 4, 5]  # 4 pieces: 1-3, one fewer, as many, one more
    assert [v.length for v in variants([(8, 9)])] == [1, 2, 3]  # one token: itself, or one or two more
    assert {(v.start, v.end) for v in variants([(2, 3), (4, 8)])} == {(2, 3), (4, 8)}


def test_canvases_free_one_word_per_row_and_pin_the_rest():
    ids = list(range(10, 20))
    rows = [Variant(4, 8, 1), Variant(4, 8, 5), Variant(8, 9, 2)]
    canvas, free = canvases(ids, rows, eos=1, pad=0)
    assert canvas.shape == free.shape == (3, 12)  # the longest row (10 - 4 + 5 tokens) and its end
    assert canvas[0].tolist() == [10, 11, 12, 13, 0, 18, 19, 1, 0, 0, 0, 0]
    assert free[0].tolist() == [False] * 4 + [True] + [False] * 7
    assert free[1].sum() == 5 and free[2, 8:10].all() and free[2].sum() == 2
    row = canvas[0].tolist()
    row[4] = 99
    assert written(ids, rows[0], row) == [10, 11, 12, 13, 99, 18, 19]
