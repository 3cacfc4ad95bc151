"""The embedded tokenizer's special tokens and their ids (training the tokenizer: `dg_model.training.tokenizer`).

Another checkpoint numbers its special tokens its own way: prompts look them up by name (`fim.fim_ids`).
"""

from __future__ import annotations

# Ids 0/1/2 match DiffusionGemma's config defaults (pad / eos / bos).
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"]
PAD, EOS, BOS, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP = range(len(SPECIAL_TOKENS))
