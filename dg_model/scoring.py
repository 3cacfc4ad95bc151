"""How well a block of code fits where it stands: the model reads candidate blocks, it does not write them.

The self-correction actions ("Fix this block", and the ranking of "Rewrite this block") need two readings:

- the causal encoder's log-probability of every token of each candidate block, given the fill-in-the-middle prompt
  (both sides of the block) and the tokens before it in the block, plus the end of the middle. Summed, that is the
  likelihood of the block in its place, comparable between candidates of different lengths. All candidates go in one
  encoder forward after the prompt's cache: as one prefix tree where the forward reads trees (the lean one: what
  candidates share is read once), else as a batch over a copy of the cache (right padding: a causal model's earlier
  positions never see it).
- the bidirectional decoder's reading of the block as it is: DiffusionGemma's decoder is trained to tell noise from
  text in a partly noised canvas, so where it would put another token than the one present, that token is suspect
  and its choice is a repair to try. One decoder forward.
"""

from __future__ import annotations

import torch

from dg_model.api import BlockScore, TokenScore

ALTERNATIVES = 3  # the decoder's best other tokens kept per position
# Tokens one encoder reading may hold: the tree's attention over itself grows with the square of its nodes, and 164
# rewrites of a 150-token block read at once took a process from 2.2 to 6.6 GB.
READ_TOKENS = 2048


def token_spans(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Character span of each token in `decode(ids)`, by decoding growing prefixes (offset mappings are not available
    from every tokenizer, and byte-level pieces only make sense joined)."""
    spans, before = [], 0
    for i in range(len(ids)):
        upto = len(tokenizer.decode(ids[: i + 1]))
        spans.append((before, upto))
        before = upto
    return spans


def encoder_logprobs(fwd, cache, last_hidden: torch.Tensor, seqs: list[list[int]], pad_id: int):
    """For each token of each sequence (right-padded to T) after the prompt in `cache`: its log-probability, and the
    encoder's first choice there with that choice's log-probability; three [N, T] tensors. `cache` is left as it was.

    The prompt's last state predicts token 0; the state after token j predicts token j + 1."""
    width = max(len(s) for s in seqs)
    padded = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=last_hidden.device)
    states, rows = _states(fwd, cache, last_hidden[0, -1], seqs, padded)
    logp = torch.log_softmax(fwd.lm_logits(states).float(), -1)  # [R, V]
    best = logp.max(-1)
    rows = rows.to(logp.device)
    return logp[rows, padded].cpu(), best.indices[rows].cpu(), best.values[rows].cpu()


def _states(fwd, cache, last: torch.Tensor, seqs: list[list[int]], padded: torch.Tensor):
    """The encoder states [R, H] that predict the sequences' tokens, and per token the row of its state [N, T]."""
    n, width = padded.shape
    start = fwd.seq_length(cache)
    if width == 1:
        return last[None], torch.zeros(n, 1, dtype=torch.long)
    tree = getattr(fwd, "encode_tree", None)  # the lean forward's; transformers' modules read a batch
    try:
        if tree is not None:
            ids, depth, visible, rows = prefix_tree(seqs, width)
            return torch.cat([last[None], tree(ids, depth, visible, cache)]), rows
        batched = fwd.expand(cache, n) if n > 1 else cache
        states = torch.cat([last.expand(n, 1, -1), fwd.encode(padded[:, :-1], batched, start)], 1)
        return states.flatten(0, 1), torch.arange(n * width).view(n, width)
    finally:
        fwd.trim(cache, start)


def prefix_tree(seqs: list[list[int]], width: int):
    """The distinct proper prefixes of `seqs` as one tree (candidates of one beam share their first tokens, and an
    answer's duplicates all of them): for its nodes, token ids [M], depth [M] and which nodes each sees [M, M] (its
    ancestors and itself); per token of each sequence, the row of the state that predicts it [N, width] (0: the
    prompt's; 1 + node after it; padding 0)."""
    node: dict[tuple[int, int], int] = {}  # (parent node or -1, token) -> node
    ids: list[int] = []
    depth: list[int] = []
    parent: list[int] = []
    rows = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        at = -1
        for j, token in enumerate(s[:-1]):  # the last token predicts nothing that is read
            key = (at, token)
            if key not in node:
                node[key] = len(ids)
                ids.append(token)
                depth.append(j)
                parent.append(at)
            at = node[key]
            rows[i, j + 1] = 1 + at
    visible = torch.zeros(len(ids), len(ids), dtype=torch.bool)
    for k, p in enumerate(parent):  # parents come first: a node sees what its parent sees, and itself
        if p >= 0:
            visible[k] = visible[p]
        visible[k, k] = True
    return torch.tensor(ids, dtype=torch.long), torch.tensor(depth, dtype=torch.long), visible, rows


def decoder_alternatives(fwd, cache, ids: list[int], pad_id: int, device, k: int = ALTERNATIVES):
    """Per token of `ids`: up to `k` other token ids the decoder prefers there, with their log-probabilities, when it
    reads the block as it is (followed by the end of the middle and a little padding, as in training)."""
    canvas = torch.tensor([ids + [pad_id] * 8], device=device)
    logp = torch.log_softmax(fwd.decoder_logits(canvas, cache, None)[0, : len(ids)].float(), -1)
    top = logp.topk(k + 1, dim=-1)
    return [
        [(t, v) for t, v in zip(idx, vals) if t != ids[pos]][:k]
        for pos, (vals, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist()))
    ]


def score_blocks(
    tokenizer, fwd, cache, last_hidden, blocks: list[str], eos_id: int, pad_id: int, detail: bool = True
) -> list[BlockScore]:
    encoded = [tokenizer.encode(b, add_special_tokens=False) for b in blocks]
    seqs = [ids + [eos_id] for ids in encoded]
    logps: list[torch.Tensor] = []  # per sequence its tokens' log-probabilities
    for group in _groups(seqs, READ_TOKENS):
        logp, best_id, best_lp = encoder_logprobs(fwd, cache, last_hidden, [seqs[i] for i in group], pad_id)
        logps += [logp[r, : len(seqs[i])] for r, i in enumerate(group)]
        if group[0] == 0:
            first_best = best_id[0], best_lp[0]  # the encoder's own choices, for blocks[0]'s alternatives
    scores = []
    for ids, logp in zip(encoded, logps):
        spans = token_spans(tokenizer, ids) if detail else []
        tokens = [TokenScore(s, e, float(logp[j])) for j, (s, e) in enumerate(spans)]
        scores.append(BlockScore(float(logp.sum()), tokens))
    if detail and encoded and encoded[0]:
        ids = encoded[0]
        by_decoder = decoder_alternatives(fwd, cache, ids, pad_id, last_hidden.device)
        for j, token in enumerate(scores[0].tokens):
            options = dict(by_decoder[j])
            enc_id, enc_lp = int(first_best[0][j]), float(first_best[1][j])
            if enc_id != ids[j]:
                options[enc_id] = max(options.get(enc_id, float("-inf")), enc_lp)
            token.alternatives = sorted(((tokenizer.decode([t]), lp) for t, lp in options.items()), key=lambda x: -x[1])
    return scores


def _groups(seqs: list[list[int]], budget: int) -> list[list[int]]:
    """The sequences' indices in order, in groups of at most `budget` tokens (a longer sequence alone)."""
    groups: list[list[int]] = []
    size = budget
    for i, s in enumerate(seqs):
        if size + len(s) > budget:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += len(s)
    return groups
