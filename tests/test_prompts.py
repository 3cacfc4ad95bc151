"""FIM prompts take their special-token ids from the model's tokenizer, whatever ids a checkpoint gives them."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import dg_model
from dg_model.fim import EMBEDDED_FIM_IDS, fim_ids
from dg_model.prompts import build_prompt, fim_text
from dg_model.training.tokenizer import new_tokenizer

PREFIX, SUFFIX, SNIPPET = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n", "import os\n"
# The embedded tokenizer's special tokens, numbered another way (after two unrelated ones), as another checkpoint may.
OTHER_ORDER = [
    "<unk>",
    "<extra>",
    "<fim_middle>",
    "<eos>",
    "<file_sep>",
    "<fim_suffix>",
    "<bos>",
    "<fim_prefix>",
    "<pad>",
]


def other_tokenizer(specials: list[str] = OTHER_ORDER) -> PreTrainedTokenizerFast:
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([PREFIX + SUFFIX + SNIPPET] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=[s for s in specials if s.startswith(("<fim", "<file"))],
    )


def test_fim_ids_are_the_tokenizers_own() -> None:
    tok = other_tokenizer()
    ids, embedded = fim_ids(tok), EMBEDDED_FIM_IDS
    names = ("<bos>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>")
    got = (ids.bos, ids.fim_prefix, ids.fim_suffix, ids.fim_middle, ids.file_sep)
    assert got == tuple(OTHER_ORDER.index(name) for name in names)
    # Every one differs from the embedded tokenizer's id for the same token.
    assert all(
        a != b
        for a, b in zip(
            got,
            (embedded.bos, embedded.fim_prefix, embedded.fim_suffix, embedded.fim_middle, embedded.file_sep),
            strict=True,
        )
    )


@pytest.mark.parametrize("fmt", ["fim-spm", "fim-psm"])
def test_prompt_uses_the_tokenizers_fim_ids(fmt: str) -> None:
    tok = other_tokenizer()
    t = tok.convert_tokens_to_ids

    def enc(s: str) -> list[int]:
        return tok.encode(s, add_special_tokens=False)

    ids = build_prompt(tok, fmt, PREFIX, SUFFIX, 512, [SNIPPET]).ids
    head = [t("<bos>"), t("<file_sep>"), *enc(SNIPPET)]
    if fmt == "fim-spm":
        assert ids == head + [t("<fim_suffix>"), *enc(SUFFIX), t("<fim_prefix>"), *enc(PREFIX), t("<fim_middle>")]
    else:
        assert ids == head + [t("<fim_prefix>"), *enc(PREFIX), t("<fim_suffix>"), *enc(SUFFIX), t("<fim_middle>")]
    # The text a remote server tokenizes is the same prompt.
    assert enc(fim_text(PREFIX, SUFFIX, fmt, [SNIPPET])) == ids


def test_tokenizer_without_file_separator_leaves_snippets_out() -> None:
    tok = other_tokenizer([s for s in OTHER_ORDER if s != "<file_sep>"])
    ids = build_prompt(tok, "fim-spm", PREFIX, SUFFIX, 512, [SNIPPET]).ids
    assert ids == build_prompt(tok, "fim-spm", PREFIX, SUFFIX, 512).ids
    assert ids[0] == tok.convert_tokens_to_ids("<bos>") and ids[-1] == tok.convert_tokens_to_ids("<fim_middle>")


def test_tokenizer_without_fim_tokens_is_refused() -> None:
    tok = other_tokenizer([s for s in OTHER_ORDER if not s.startswith("<fim")])
    with pytest.raises(ValueError, match="<fim_prefix>, <fim_suffix>, <fim_middle>"):
        build_prompt(tok, "fim-spm", PREFIX, SUFFIX, 512)


def test_embedded_ids_are_the_embedded_tokenizers() -> None:
    embedded = PreTrainedTokenizerFast.from_pretrained(str(Path(dg_model.__file__).parent / "embedded"))
    assert fim_ids(embedded) == EMBEDDED_FIM_IDS
