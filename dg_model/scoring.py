"""How well a block of code fits where it stands: the model reads candidate blocks, it does not write them.

The self-correction actions ("Fix this block", and the ranking of "Rewrite this block") need two readings:

- the causal encoder's log-probability of every token of each candidate block, given the fill-in-the-middle prompt
  (both sides of the block) and the tokens before it in the block, plus the end of the middle. Summed, that is the
  likelihood of the block in its place, comparable between candidates of different lengths. All candidates go in one
  batched encoder forward over a copy of the prompt's cache (right padding: a causal model's earlier positions never
  see it).
- the bidirectional decoder's reading of the block as it is: DiffusionGemma's decoder is trained to tell noise from
  text in a partly noised canvas, so where it would put another token than the one present, that token is suspect
  and its choice is a repair to try. One decoder forward.
"""

from __future__ import annotations

import torch

from dg_model.api import BlockScore, TokenScore

ALTERNATIVES = 3  # the decoder's best other tokens kept per position


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

    The prompt's last state predicts token 0; the state at token j predicts token j + 1."""
    n, width = len(seqs), max(len(s) for s in seqs)
    padded = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=last_hidden.device)
    states = last_hidden[:, -1:].expand(n, 1, -1)
    start = fwd.seq_length(cache)
    if width > 1:
        batched = fwd.expand(cache, n) if n > 1 else cache
        try:
            states = torch.cat([states, fwd.encode(padded[:, :-1], batched, start)], 1)
        finally:
            fwd.trim(cache, start)
    logp = torch.log_softmax(fwd.lm_logits(states).float(), -1)  # [N, T, V]
    best = logp.max(-1)
    return logp.gather(-1, padded[..., None])[..., 0].cpu(), best.indices.cpu(), best.values.cpu()


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
    logp, best_id, best_lp = encoder_logprobs(fwd, cache, last_hidden, [ids + [eos_id] for ids in encoded], pad_id)
    scores = []
    for row, ids in enumerate(encoded):
        spans = token_spans(tokenizer, ids) if detail else []
        tokens = [TokenScore(s, e, float(logp[row, j])) for j, (s, e) in enumerate(spans)]
        scores.append(BlockScore(float(logp[row, : len(ids) + 1].sum()), tokens))
    if detail and encoded and encoded[0]:
        ids = encoded[0]
        by_decoder = decoder_alternatives(fwd, cache, ids, pad_id, last_hidden.device)
        for j, token in enumerate(scores[0].tokens):
            options = dict(by_decoder[j])
            enc_id, enc_lp = int(best_id[0, j]), float(best_lp[0, j])
            if enc_id != ids[j]:
                options[enc_id] = max(options.get(enc_id, float("-inf")), enc_lp)
            token.alternatives = sorted(((tokenizer.decode([t]), lp) for t, lp in options.items()), key=lambda x: -x[1])
    return scores
