"""Prompt formats (FIM strategies), chosen per model by configuration.

1. `fim-spm` / `fim-psm`: FIM special tokens (the embedded model). SPM keeps the prompt stable while the user types:
   the prefix, which grows at the cursor, comes last, so the cached KV of everything before it stays valid.
2. `chat`: instruction-tuned checkpoints without FIM tokens (the released DiffusionGemma). Prefix, a cursor marker
   and suffix go into a user turn; the canvas is the answer, stripped of fences and prose afterwards.
3. `pinned-suffix`: any checkpoint. The canvas holds free slots followed by the suffix's first tokens as pinned
   positions, so the bidirectional decoder sees both sides inside the canvas; pad in a free slot means "empty".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dg_model.fim import fim_ids, spm_prompt
from dg_model.special_tokens import BOS, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS

CURSOR = "<|cursor|>"
REWRITE_START, REWRITE_END = "<|rewrite|>", "<|/rewrite|>"
BOS_TEXT, FIM_PREFIX_TEXT, FIM_SUFFIX_TEXT, FIM_MIDDLE_TEXT, FILE_SEP_TEXT = (
    SPECIAL_TOKENS[BOS],
    SPECIAL_TOKENS[FIM_PREFIX],
    SPECIAL_TOKENS[FIM_SUFFIX],
    SPECIAL_TOKENS[FIM_MIDDLE],
    SPECIAL_TOKENS[FILE_SEP],
)
FORMATS = ("fim-spm", "fim-psm", "chat", "pinned-suffix")
# The first fenced block, wherever it starts: answers often open with a sentence ("Here is the code:").
FENCE = re.compile(r"^```[\w+-]*\n(.*?)(?:\n```|\Z)", re.S | re.M)


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    pinned_tail: list[int]  # tokens pinned at the end of the canvas (pinned-suffix format), else []


def choose_format(tokenizer, configured: str | None) -> str:
    if configured:
        if configured not in FORMATS:
            raise ValueError(f"unknown prompt format {configured!r}; expected one of {FORMATS}")
        return configured
    vocab = tokenizer.get_vocab()
    if "<fim_middle>" in vocab and "<fim_prefix>" in vocab and "<fim_suffix>" in vocab:
        return "fim-spm"
    return "chat" if getattr(tokenizer, "chat_template", None) else "pinned-suffix"


def _encoder(tokenizer):
    return lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []


def build_prompt(
    tokenizer,
    fmt: str,
    prefix: str,
    suffix: str,
    max_tokens: int,
    snippets: Sequence[str] = (),
    pinned_suffix_tokens: int = 8,
) -> Prompt:
    encode = _encoder(tokenizer)
    if fmt == "fim-spm":
        return Prompt(spm_prompt(encode, prefix, suffix, max_tokens, snippets, ids=fim_ids(tokenizer)), [])
    if fmt == "fim-psm":
        special = fim_ids(tokenizer)
        ids = spm_prompt(encode, prefix, suffix, max_tokens, snippets, ids=special)
        # Reorder the SPM pieces into <fim_prefix> prefix <fim_suffix> suffix <fim_middle>.
        s_at, p_at = ids.index(special.fim_suffix), ids.index(special.fim_prefix)
        head, suffix_ids, prefix_ids = ids[:s_at], ids[s_at + 1 : p_at], ids[p_at + 1 : -1]
        return Prompt(head + [special.fim_prefix] + prefix_ids + [special.fim_suffix] + suffix_ids + ids[-1:], [])
    if fmt == "chat":
        messages = chat_messages(prefix, suffix, max_tokens, snippets)
        # Render then encode: the template already holds the special tokens, and the return type of
        # apply_chat_template(tokenize=True) differs between transformers versions.
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return Prompt(tokenizer.encode(text, add_special_tokens=False)[-max_tokens:], [])
    if fmt == "pinned-suffix":
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prefix_ids = encode(prefix[-max_tokens * 6 :])[-(max_tokens - len(bos)) :]
        return Prompt(bos + prefix_ids, encode(suffix)[:pinned_suffix_tokens])
    raise ValueError(f"unknown prompt format {fmt!r}")


def chat_messages(prefix: str, suffix: str, max_tokens: int, snippets: Sequence[str] = ()) -> list[dict[str, str]]:
    """The chat format's one user turn (also what a remote server's /v1/chat/completions gets)."""
    context = "".join(f"Related code:\n```\n{s}\n```\n" for s in snippets)
    body = prefix[-max_tokens * 3 :] + CURSOR + suffix[:max_tokens]
    return [
        {
            "role": "user",
            "content": f"{context}Complete the code at {CURSOR}. Reply with only the code that replaces "
            f"{CURSOR}, no explanation, no code fences.\n```\n{body}\n```",
        }
    ]


def rewrite_messages(prefix: str, block: str, suffix: str, max_tokens: int) -> list[dict[str, str]]:
    """A rewrite as a chat turn, for servers that cannot re-noise a block in place (the remote engine)."""
    body = prefix[-max_tokens * 3 :] + REWRITE_START + block + REWRITE_END + suffix[:max_tokens]
    return [
        {
            "role": "user",
            "content": f"Rewrite the code between {REWRITE_START} and {REWRITE_END}: the same behaviour, clearer and "
            "correct. Reply with only the code that replaces it, no explanation, no code fences."
            f"\n```\n{body}\n```",
        }
    ]


def fim_text(prefix: str, suffix: str, fmt: str, snippets: Sequence[str] = ()) -> str:
    """The FIM prompt of `build_prompt` as text, special tokens written out, for a server that tokenizes it itself
    (a remote /v1/completions). Tokenized with the model's tokenizer it gives `build_prompt`'s ids when nothing is
    trimmed: special tokens split the text, so prefix and suffix are tokenized separately, as at the cursor."""
    head = BOS_TEXT + "".join(FILE_SEP_TEXT + s for s in snippets)
    if fmt == "fim-spm":
        return f"{head}{FIM_SUFFIX_TEXT}{suffix}{FIM_PREFIX_TEXT}{prefix}{FIM_MIDDLE_TEXT}"
    if fmt == "fim-psm":
        return f"{head}{FIM_PREFIX_TEXT}{prefix}{FIM_SUFFIX_TEXT}{suffix}{FIM_MIDDLE_TEXT}"
    raise ValueError(f"{fmt!r} is not a FIM format")


def clean_answer(text: str, fmt: str) -> str:
    """Chat answers come with fences or a sentence around the code; keep the code."""
    if fmt != "chat":
        return text
    stripped = text.strip("\n")
    match = FENCE.search(stripped)
    code = match.group(1) if match else stripped
    return code.replace(CURSOR, "").replace(REWRITE_START, "").replace(REWRITE_END, "")
