"""`python -m dg_bench.drafts`: the hybrid's draft acceptance on held-out cuts, per model, side by side."""

import json

from dg_bench import drafts


def test_drafts_reports_each_model_on_the_same_cuts(tmp_path):
    corpus = tmp_path / "valid.jsonl"
    code = "def area(width, height):\n    total = width * height\n    return total\n\n\nprint(area(2, 3))\n"
    corpus.write_text("\n".join(json.dumps({"text": code * 3}) for _ in range(4)) + "\n")
    out = tmp_path / "drafts.json"
    assert (
        drafts.main(
            ["--corpus", str(corpus), "--model", "embedded", "--model", "embedded", "--cuts", "2", "--out", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    first, second = result["rows"]
    assert first == second  # the same weights on the same cuts: the same numbers
    assert first["cuts"] == 2 and first["tokens_per_decoder_forward"] >= 1.0
    assert 0.0 <= first["acceptance"] <= 1.0
