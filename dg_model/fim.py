"""Fill-in-the-middle: the prompt layout the engine uses (training examples in this layout:
`dg_model.training.fim_examples`).

Prompt (SPM order, so the prompt only grows at its end while the user types and the cached prefix stays valid):

    <bos> [<file_sep> snippet]* <fim_suffix> suffix <fim_prefix> prefix <fim_middle> [middle so far]

The canvas that follows is `middle + <eos> + <pad>...`. Prefix, middle and suffix are tokenized separately, at
character-level cut points, in training exactly as at the cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dg_model.special_tokens import BOS, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class FimIds:
    """A tokenizer's ids of the prompt's special tokens: each checkpoint numbers them its own way."""

    bos: int | None  # None: the prompt starts without one
    fim_prefix: int
    fim_suffix: int
    fim_middle: int
    file_sep: int | None  # None: the tokenizer cannot separate files, so snippets are left out


EMBEDDED_FIM_IDS = FimIds(BOS, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP)  # the embedded tokenizer's (training)


def fim_ids(tokenizer) -> FimIds:
    """The special-token ids of `tokenizer` (a transformers tokenizer), looked up by name. Raises ValueError when it
    has no FIM tokens."""

    def look(name: str) -> int | None:
        i = tokenizer.convert_tokens_to_ids(name)
        return None if i is None or i == getattr(tokenizer, "unk_token_id", None) else int(i)

    bos = look(SPECIAL_TOKENS[BOS])
    if bos is None:
        bos = getattr(tokenizer, "bos_token_id", None)
    keys = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
    prefix, suffix, middle = (look(SPECIAL_TOKENS[k]) for k in keys)
    if prefix is None or suffix is None or middle is None:
        missing = [SPECIAL_TOKENS[k] for k, i in zip(keys, (prefix, suffix, middle), strict=True) if i is None]
        raise ValueError(f"the tokenizer has no {', '.join(missing)}: use a non-FIM prompt format")
    return FimIds(bos, prefix, suffix, middle, look(SPECIAL_TOKENS[FILE_SEP]))


def spm_prompt(
    encode: Encode,
    prefix: str,
    suffix: str,
    max_tokens: int,
    snippets: Sequence[str] = (),
    suffix_share: float = 0.25,
    ids: FimIds = EMBEDDED_FIM_IDS,
) -> list[int]:
    """Token ids of an SPM prompt that fits `max_tokens`: the prefix keeps its end, the suffix its start. `ids` are the
    tokenizer's special tokens (`fim_ids`)."""
    suffix_ids = encode(suffix[: max_tokens * 4])[: max(int(max_tokens * suffix_share), 0)]
    room = max_tokens - len(suffix_ids) - 4
    prefix_ids = encode(prefix[-room * 6 :])[-room:] if room > 0 else []
    room -= len(prefix_ids)
    bos = [] if ids.bos is None else [ids.bos]
    files: list[int] = []
    sep = ids.file_sep  # None: no snippets
    for snippet in reversed(snippets) if sep is not None else ():  # most relevant last -> kept first
        snippet_ids = encode(snippet)
        if sep is None or len(snippet_ids) + 1 > room:
            break
        files[:0] = [sep] + snippet_ids
        room -= len(snippet_ids) + 1
    return bos + files + [ids.fim_suffix] + suffix_ids + [ids.fim_prefix] + prefix_ids + [ids.fim_middle]
