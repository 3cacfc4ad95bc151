"""Byte-level BPE for code, with FIM special tokens, trained with the `tokenizers` library:
`python -m dg_model.training.tokenizer CORPUS OUT`.

A newline plus the next line's indentation is one pre-token and a word takes at most ONE leading space, so
indentation never merges into code. Training tokenizes prefix, middle and suffix separately at character-level cut
points, exactly as the engine does at the cursor, so a prefix ending in a space or mid-word looks the same in both.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from dg_model.special_tokens import SPECIAL_TOKENS

SPLIT_PATTERN = r"\r?\n[ \t]*| ?[A-Za-z_][A-Za-z_0-9]*| ?[0-9]+| ?[^\sA-Za-z_0-9]+|[ \t]+"


def new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_for_transformers(tok: Tokenizer, out_dir: Path) -> None:
    """Save as a `PreTrainedTokenizerFast` directory (tokenizer.json + tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out_dir)


if __name__ == "__main__":
    import argparse

    from dg_model.training.corpus import read_jsonl

    ap = argparse.ArgumentParser(
        description="Train the embedded model's tokenizer on a corpus written by dg_model.training.corpus"
    )
    ap.add_argument("corpus", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--sample-mb", type=float, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    texts = read_jsonl(args.corpus / "train.jsonl")
    random.Random(args.seed).shuffle(texts)
    budget, sample = args.sample_mb * 1e6, []
    for t in texts:
        if budget <= 0:
            break
        sample.append(t)
        budget -= len(t)
    tok = train_tokenizer(sample, args.vocab_size)
    save_for_transformers(tok, args.out_dir)
    print(f"trained on {len(sample)} files, vocab {tok.get_vocab_size()}")
