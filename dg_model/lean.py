"""A lean inference forward for DiffusionGemma: the same math as transformers' modules, over the same weight tensors,
without their per-call machinery (gpt-fast style).

On the embedded model on a CPU, a decoder step through transformers' modules spent ~2/3 of its time outside the
matmuls: mask and position builders, a `DynamicCache` that concatenates keys on every call, per-expert index loops,
output-recording hooks. Here a step is one function per layer over packed projections, a preallocated KV cache that the
canvas writes into past its end (so a decoder step never copies the prompt's keys), one RoPE table and experts
computed for their routed tokens only. Rows that continue one prompt (a beam, a batch of candidates) share its keys
and values, read once per step for all of them: a width-10 beam step at 460 prompt tokens went from 27.5 to 20.2 ms.
The result matches `HFForward` to float rounding (tests/test_lean.py).

Shapes: B batch, T new tokens, C canvas, H hidden, h heads, g kv heads, d head dim, L cached length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dg_model.forward import softcap


def unsupported(model) -> str | None:
    """Why the lean forward cannot run `model`, or None."""
    text = model.config.text_config
    if any(p.dtype not in (torch.float32, torch.float16, torch.bfloat16) for p in model.parameters()):
        return "quantized weights"
    layers = list(model.model.encoder.language_model.layers) + list(model.model.decoder.layers)
    if any(not isinstance(getattr(layer.experts, "gate_up_proj", None), torch.Tensor) for layer in layers):
        return "quantized experts"
    if len({p.device for p in model.parameters()}) > 1:
        return "weights on several devices"
    if getattr(text, "use_bidirectional_attention", None) == "all":
        return "a bidirectional encoder"
    if "sliding_attention" in text.layer_types and text.sliding_window < text.max_position_embeddings:
        return "sliding-window layers (their cache keeps only the window)"
    if getattr(text, "use_clipped_linears", False):
        return "clipped linears"
    return None


@dataclass
class LeanCache:
    """Keys and values per layer: `shared_*` [1, g, P, d] hold the first P positions once for every row (a prompt
    that beams or candidates continue), `k`/`v` [B, g, capacity - P, d] each row's positions after them, valid up to
    `length`; the rows' storage grows by doubling."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0
    shared_k: list[torch.Tensor] = field(default_factory=list)
    shared_v: list[torch.Tensor] = field(default_factory=list)

    @property
    def shared(self) -> int:
        return self.shared_k[0].shape[2] if self.shared_k else 0

    @property
    def capacity(self) -> int:
        return self.shared + self.k[0].shape[2]


# A logits projection at most this large also keeps a column-major copy (below): the embedding it is tied to is read
# by rows (token lookups, the decoder's self-conditioning), which that layout slows.
LM_HEAD_COPY_BYTES = 64 * 2**20


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """The same [..., N, K] weight stored as its transpose: `x @ w.mT` then multiplies a contiguous [K, N] matrix,
    which MKL does 1.1-2.5x faster for a beam's few rows (10 x 256 by 256 x 8192: 0.84 vs 2.1 ms on the CPU of
    session 14) and no slower for a prompt's hundreds."""
    return t.mT.contiguous().mT


def _relayout(param: torch.Tensor) -> torch.Tensor:
    """`param` re-laid out column-major in place (its values, shape and every module reading it unchanged), so
    inference keeps one copy of each weight."""
    param.data = _column_major(param.data)
    return param


def _normed(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dimension, in float32 (transformers' DiffusionGemmaRMSNorm's
    statistics). The mean as a dot product: CPU's `mean` is a sum and a division, and a beam step at a few rows is
    dispatch-bound (this form: 31 vs 45 us a call, the same bits)."""
    xf = x.float()
    return xf * torch.rsqrt(torch.linalg.vecdot(xf, xf).unsqueeze(-1).div(xf.shape[-1]).add(eps))


def _scaled(normed: torch.Tensor, weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A norm's scale applied as is (no 1 + w), in `like`'s dtype: one statistic can serve several norms."""
    return (normed * weight.float() if weight is not None else normed).type_as(like)


def _rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return _scaled(_normed(x, eps), weight, x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def _attend_shared(q, shared_k, shared_v, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of q [B, h, T, d] over a prefix every row shares (keys, values [1, g, P, d]) and then each row's own
    keys and values [B, g, L, d], `mask` [T, L] (True: visible) on the own part only: the prefix precedes every query.
    The prefix is read once for all rows (their queries stacked as one matrix per kv head) where attention over a
    batch would read B copies of it, which dominated a beam's step at a few hundred prompt tokens."""
    B, h, T, d = q.shape
    g, P = k.shape[1], shared_k.shape[2]
    rows = (h // g) * T  # a kv head's queries in one row: its query heads (GQA groups adjacent heads) x positions
    q = q.reshape(B, g, rows, d)
    own = q @ k.transpose(-1, -2)  # [B, g, rows, L]
    if mask is not None:
        own = own.view(B, g, h // g, T, -1).masked_fill(~mask, float("-inf")).view(B, g, rows, -1)
    stacked = q.transpose(0, 1).reshape(g, B * rows, d)
    pre = (stacked @ shared_k[0].transpose(-1, -2)).view(g, B, rows, P).transpose(0, 1)  # [B, g, rows, P]
    p = torch.softmax(torch.cat([pre, own], -1), -1, dtype=torch.float32).to(q.dtype)
    out = (p[..., :P].transpose(0, 1).reshape(g, B * rows, P) @ shared_v[0]).view(g, B, rows, d).transpose(0, 1)
    return (out + p[..., P:] @ v).reshape(B, h, T, d)


class _Layer:
    """One transformer layer's weights, packed for few large matmuls (a decoder layer whose weights are its encoder
    layer's reads through the encoder's pack: `LeanForward`).

    `trainable`: the packed tensors stay in the autograd graph of the parameters (training packs them anew each step,
    since the optimizer replaces what a pack copied); inference packs once, detached, and on a CPU column-major
    (`_column_major`): with the logits head's copy (`LeanForward`), a width-10 beam step of the embedded model 22.3 ->
    15.0 ms, the same candidates."""

    def __init__(self, layer, eps: float, trainable: bool = False):
        relayout = not trainable and layer.self_attn.o_proj.weight.device.type == "cpu"
        keep = (lambda t: t) if trainable else (lambda t: t.detach())
        pack = (lambda t: _column_major(keep(t))) if relayout else keep
        own = _relayout if relayout else (lambda t: t)
        attn = layer.self_attn
        self.eps = eps
        self.h, self.d = attn.q_proj.out_features // attn.head_dim, attn.head_dim
        self.g = attn.k_proj.out_features // attn.head_dim
        self.k_is_v = attn.v_proj is None  # global layers reuse the key projection for values (own norm, no RoPE)
        self.layer_type = attn.layer_type
        projections = [attn.q_proj.weight, attn.k_proj.weight] + ([] if self.k_is_v else [attn.v_proj.weight])
        self.qkv = pack(torch.cat(projections))
        self.o = own(attn.o_proj.weight)
        # one scale per query head, then per key head: their norms applied in one multiply
        self.qk_norm = keep(torch.cat([attn.q_norm.weight.expand(self.h, -1), attn.k_norm.weight.expand(self.g, -1)]))
        self.norms = {
            name: getattr(layer, name).weight
            for name in (
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
                "post_feedforward_layernorm_1",
                "post_feedforward_layernorm_2",
                "pre_feedforward_layernorm_2",
            )
        }
        self.gate_up = pack(torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]))
        self.down = own(layer.mlp.down_proj.weight)
        self.act = layer.mlp.act_fn
        router = layer.router
        self.router_proj, self.router_scale = own(router.proj.weight), keep(router.scale * router.scalar_root_size)
        self.per_expert_scale, self.top_k = router.per_expert_scale, router.config.top_k_experts
        self.experts_gate_up, self.experts_down = own(layer.experts.gate_up_proj), own(layer.experts.down_proj)
        self.expert_act = layer.experts.act_fn
        self.scalar = layer.layer_scalar

    def qkv_states(self, x: torch.Tensor, cos, sin):
        """x [B, T, H] (normed) -> q [B, h, T, d], k and v [B, g, T, d]. Every head is normed at once and queries and
        keys rotate together (where values are the keys' projection, its statistics serve both): a decode step is
        dispatch-bound (with the shared statistics in `__call__`, 1,148 ops a beam step instead of 1,309)."""
        B, T, _ = x.shape
        normed = _normed((x @ self.qkv.T).view(B, T, -1, self.d), self.eps)  # q heads, k heads, v heads unless v is k
        qk = _rotate(_scaled(normed[:, :, : self.h + self.g], self.qk_norm, x), cos, sin)
        v = _scaled(normed[:, :, self.h if self.k_is_v else self.h + self.g :], None, x)
        q, k = qk.split([self.h, self.g], 2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def routing(self, route: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The router on the residual (`route`: normed, unscaled) -> each row's expert weights and experts [N, k]."""
        scores = (route * self.router_scale) @ self.router_proj.T
        weights, index = torch.softmax(scores, -1, dtype=torch.float32).topk(self.top_k, -1)
        return (weights / weights.sum(-1, keepdim=True)) * self.per_expert_scale[index], index

    def moe(self, route: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Router on the residual (`route`: normed, unscaled), experts on its pre-norm: [N, H] -> [N, H]."""
        weights, index = self.routing(route)
        # (row, slot) pairs grouped by expert, rows ascending within one: one gather and one scatter for all experts,
        # each expert's rows a slice (the same products and sums, in the same order, as a gather per expert)
        flat = index.flatten()
        order = flat.argsort(stable=True)
        rows = order // self.top_k
        xs, ys, at = x[rows], [], 0
        for e, count in enumerate(torch.bincount(flat, minlength=self.experts_down.shape[0]).tolist()):
            if count:
                gate, up = (xs[at : at + count] @ self.experts_gate_up[e].T).chunk(2, -1)
                ys.append((self.expert_act(gate) * up) @ self.experts_down[e].T)
                at += count
        y = torch.cat(ys) * weights.flatten()[order, None]
        return torch.zeros_like(x).index_add_(0, rows, y.to(x.dtype))

    def __call__(self, x: torch.Tensor, cos, sin, attend) -> torch.Tensor:
        n = self.norms
        q, k, v = self.qkv_states(_rms(x, n["input_layernorm"], self.eps), cos, sin)
        a = attend(q, k, v)  # [B, h, T, d]
        a = a.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1) @ self.o.T
        x = x + _rms(a, n["post_attention_layernorm"], self.eps)
        # the dense MLP, the router and the experts each norm the same residual: its statistics once
        normed = _normed(x, self.eps)
        gate, up = (_scaled(normed, n["pre_feedforward_layernorm"], x) @ self.gate_up.T).chunk(2, -1)
        dense = _rms((self.act(gate) * up) @ self.down.T, n["post_feedforward_layernorm_1"], self.eps)
        flat = normed.reshape(-1, x.shape[-1])
        experts = self.moe(_scaled(flat, None, x), _scaled(flat, n["pre_feedforward_layernorm_2"], x)).view_as(x)
        experts = _rms(experts, n["post_feedforward_layernorm_2"], self.eps)
        x = x + _rms(dense + experts, n["post_feedforward_layernorm"], self.eps)
        return x * self.scalar


def _same_layer(layer, other) -> bool:
    """Whether two transformers layers compute the same function: the same parameter tensors, equal buffers (each
    module keeps its own copy of its layer scalar) and the same kind of attention."""
    mine, theirs = list(layer.parameters()), list(other.parameters())
    buffers = list(zip(layer.buffers(), other.buffers()))
    return (
        len(mine) == len(theirs)
        and all(a is b for a, b in zip(mine, theirs))
        and len(buffers) == len(list(layer.buffers())) == len(list(other.buffers()))
        and all(torch.equal(a, b) for a, b in buffers)
        and (layer.self_attn.layer_type, layer.self_attn.head_dim)
        == (other.self_attn.layer_type, other.self_attn.head_dim)
    )


class LeanForward:
    kind = "lean"
    shared_by_threads = True  # its RoPE tables are its only state, and they grow safely (ONNX Runtime's sessions too)

    def __init__(self, model):
        text = model.config.text_config
        enc, dec = model.model.encoder.language_model, model.model.decoder
        self.eps, self.softcap = text.rms_norm_eps, text.final_logit_softcapping
        self.enc_layers = [_Layer(layer, self.eps) for layer in enc.layers]
        # DiffusionGemma's decoder layers are its encoder's, read both ways: one pack of their weights serves both
        self.dec_layers = [
            packed if _same_layer(layer, mine) else _Layer(layer, self.eps)
            for layer, mine, packed in zip(dec.layers, enc.layers, self.enc_layers)
        ]
        self.enc_norm, self.dec_norm = enc.norm.weight, dec.norm.weight
        self.enc_embed, self.dec_embed = enc.embed_tokens, dec.embed_tokens
        self.sc = dec.self_conditioning
        head = model.lm_head.weight.detach()
        small = head.device.type == "cpu" and head.numel() * head.element_size() <= LM_HEAD_COPY_BYTES
        self.lm_head_t = head.T.contiguous() if small else head.T  # [H, V]
        self.rotary = enc.rotary_emb
        self.dtype, self.device = head.dtype, head.device
        self._rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._rope_len = 0
        self._grow_rope(1024)

    # ------------------------------------------------------------------ cache
    def new_cache(self, batch: int = 1, capacity: int = 640) -> LeanCache:
        shape = lambda layer: (batch, layer.g, capacity, layer.d)  # noqa: E731
        # Uninitialised: nothing reads a position before writing it (attention reads the cache up to what was just
        # written), and zeroing a batch-4 cache cost ~5 ms per beam-search job.
        return LeanCache(
            [torch.empty(shape(x), dtype=self.dtype, device=self.device) for x in self.enc_layers],
            [torch.empty(shape(x), dtype=self.dtype, device=self.device) for x in self.enc_layers],
        )

    def seq_length(self, cache: LeanCache) -> int:
        return cache.length

    def trim(self, cache: LeanCache, length: int) -> None:
        cache.length = min(cache.length, length)
        if cache.length < cache.shared:
            cache.shared_k = [t[:, :, : cache.length] for t in cache.shared_k]
            cache.shared_v = [t[:, :, : cache.length] for t in cache.shared_v]

    def expand(self, cache: LeanCache, n: int) -> LeanCache:
        """`n` rows continuing `cache`'s first row: what it holds becomes their shared prefix, copied once (the
        source's memory is the next request's, so it is not borrowed)."""
        own = cache.length - cache.shared

        def prefix(shared: list[torch.Tensor], store: list[torch.Tensor]) -> list[torch.Tensor]:
            rows = [t[:1, :, :own] for t in store]
            return [torch.cat([s, t], 2) for s, t in zip(shared, rows)] if shared else [t.clone() for t in rows]

        out = self.new_cache(n, max(64, cache.capacity - cache.length))
        out.shared_k, out.shared_v = prefix(cache.shared_k, cache.k), prefix(cache.shared_v, cache.v)
        out.length = cache.length
        return out

    def reorder(self, cache: LeanCache, rows: torch.Tensor, start: int = 0) -> None:
        """Row i continues row rows[i] from position `start` on (before it the rows agree: nothing moves there)."""
        rows, lo, hi = rows.to(self.device), max(0, start - cache.shared), cache.length - cache.shared
        for store in (cache.k, cache.v):
            for t in store:
                t[:, :, lo:hi] = t[rows, :, lo:hi]

    def _reserve(self, cache: LeanCache, needed: int) -> None:
        if needed > cache.capacity:
            grown, kept = max(needed, 2 * cache.capacity) - cache.shared, cache.length - cache.shared
            for store in (cache.k, cache.v):
                for i, old in enumerate(store):
                    new = old.new_empty(old.shape[0], old.shape[1], grown, old.shape[3])
                    new[:, :, :kept] = old[:, :, :kept]
                    store[i] = new
        self._grow_rope(needed)

    def _ready_to_append(self, cache: LeanCache, B: int, start: int, T: int) -> None:
        """Storage for T tokens appended at `start` to a B-row cache (an empty cache takes any batch)."""
        assert start == cache.length, "the encoder appends at the end of the cache"
        if cache.k[0].shape[0] != B:
            assert cache.length == 0, "a cache's batch is fixed once it holds tokens"
            fresh = self.new_cache(B, cache.capacity)
            cache.k, cache.v, cache.shared_k, cache.shared_v = fresh.k, fresh.v, [], []
        self._reserve(cache, start + T)

    def _causal_mask(self, cache: LeanCache, start: int, end: int) -> torch.Tensor | None:
        """[T, end - shared]: queries at start..end-1 see the rows' own keys up to their own position."""
        if end - start == 1:  # one token alone needs no mask
            return None
        lo, hi = start - cache.shared, end - cache.shared
        return torch.arange(hi, device=self.device)[None] <= torch.arange(lo, hi, device=self.device)[:, None]

    def _attend(self, cache: LeanCache, i: int, start: int, end: int, mask: torch.Tensor | None):
        """Layer i's attention for new tokens at start..end-1: their keys and values written into the rows' storage,
        queries over everything before `end`, `mask` on the rows' own part."""
        P = cache.shared
        lo, hi = start - P, end - P

        def attend(q, k, v):
            cache.k[i][:, :, lo:hi], cache.v[i][:, :, lo:hi] = k, v
            own_k, own_v = cache.k[i][:, :, :hi], cache.v[i][:, :, :hi]
            if P:
                return _attend_shared(q, cache.shared_k[i], cache.shared_v[i], own_k, own_v, mask)
            return F.scaled_dot_product_attention(q, own_k, own_v, mask, scale=1.0, enable_gqa=True)

        return attend

    def _grow_rope(self, needed: int) -> None:
        if needed <= self._rope_len:
            return
        length = max(needed, 2 * self._rope_len)
        pos = torch.arange(length, device=self.device)[None]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        # transformers' own rotary module builds the table: partial and scaled RoPE variants come for free
        for layer_type in {x.layer_type for x in self.enc_layers}:
            cos, sin = self.rotary(probe, pos, layer_type)
            self._rope[layer_type] = (cos[0], sin[0])  # [P, d]
        self._rope_len = length  # after the tables: a prompt encoding on another thread reads them (prompt_cache.py)

    def _rope_at(self, layer: _Layer, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._rope[layer.layer_type]
        return cos[start : start + length, None], sin[start : start + length, None]  # [T, 1, d]: broadcast over heads

    # ------------------------------------------------------------------ model calls
    @torch.inference_mode()
    def encode(self, ids: torch.Tensor, cache: LeanCache, start: int, last_only: bool = False) -> torch.Tensor:
        """Append `ids` [B, T] at position `start` (== cache.length) through the causal encoder (`Forward.encode`)."""
        B, T = ids.shape
        self._ready_to_append(cache, B, start, T)
        hidden = self._encoder_stack(self.enc_embed(ids), cache, start, last_only)
        cache.length = start + T
        return hidden

    @torch.inference_mode()
    def encode_tree(
        self, ids: torch.Tensor, depth: torch.Tensor, visible: torch.Tensor, cache: LeanCache
    ) -> torch.Tensor:
        """The tokens of a prefix tree after a one-row cache's end, through the causal encoder: token j [T] at
        position `cache.length + depth[j]`, seeing the cache and the tree tokens `visible[j]` [T, T] marks (its
        ancestors and itself). Candidates that share their first tokens are read once for all of them, where a batch
        would read each copy. Written past the end like a canvas: `cache.length` does not move. -> states [T, H]."""
        if cache.k[0].shape[0] != 1:
            raise ValueError("a tree is read after a one-row cache")
        self._reserve(cache, cache.length + ids.shape[0])
        x = self.enc_embed(ids.to(self.device)[None])
        return self._tree_stack(x, (cache.length + depth).to(self.device), visible.to(self.device), cache)[0]

    @torch.inference_mode()
    def decoder_logits(self, canvas: torch.Tensor, cache: LeanCache, sc_logits: torch.Tensor | None) -> torch.Tensor:
        """Canvas [B, C] -> logits [B, C, V]: bidirectional over the cache and the canvas. The canvas's keys go past
        the cache's end, where the next call overwrites them; `cache.length` does not move."""
        B, C = canvas.shape
        if cache.k[0].shape[0] != B:
            raise ValueError(f"a batch-{cache.k[0].shape[0]} cache cannot serve a batch-{B} canvas; expand it first")
        self._reserve(cache, cache.length + C)
        return self.lm_logits(self._decoder_stack(self.canvas_states(canvas, sc_logits), cache))

    # The three passes through a stack, from embeddings [B, T, H] to final-norm states (dg_model.ort runs them in
    # ONNX Runtime); the cache has room for the new positions.
    def _encoder_stack(self, x: torch.Tensor, cache: LeanCache, start: int, last_only: bool) -> torch.Tensor:
        """New tokens at start.. (== cache.length), causal; their keys and values stay in the cache. `last_only`: the
        last token's state alone (here simply cut from all: the torch path is the fallback)."""
        T = x.shape[1]
        end = start + T
        mask = self._causal_mask(cache, start, end)
        for i, layer in enumerate(self.enc_layers):
            x = layer(x, *self._rope_at(layer, start, T), self._attend(cache, i, start, end, mask))
        return _rms(x[:, -1:] if last_only else x, self.enc_norm, self.eps)

    def _tree_stack(self, x: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor, cache: LeanCache) -> torch.Tensor:
        """A one-row tree's tokens at positions `pos` [T] after the cache's end, each seeing the cache and `visible`."""
        start, T = cache.length, x.shape[1]
        seen = torch.ones(T, start - cache.shared, dtype=torch.bool, device=self.device)
        mask = torch.cat([seen, visible], 1)
        for i, layer in enumerate(self.enc_layers):
            cos, sin = self._rope[layer.layer_type]
            x = layer(x, cos[pos, None], sin[pos, None], self._attend(cache, i, start, start + T, mask))
        return _rms(x, self.enc_norm, self.eps)

    def _decoder_stack(self, x: torch.Tensor, cache: LeanCache) -> torch.Tensor:
        """A canvas after the cache's end, bidirectional over the cache and itself."""
        start, C = cache.length, x.shape[1]
        for i, layer in enumerate(self.dec_layers):
            x = layer(x, *self._rope_at(layer, start, C), self._attend(cache, i, start, start + C, None))
        return _rms(x, self.dec_norm, self.eps)

    def canvas_states(self, canvas: torch.Tensor, sc_logits: torch.Tensor | None) -> torch.Tensor:
        """The decoder's input for a canvas [B, C]: its embeddings with the self-conditioning signal -> [B, C, H]."""
        x = self.dec_embed(canvas)
        if sc_logits is None:  # a zero signal passes the self-conditioning MLP as zero: only its output norm is left
            return _rms(x, None, self.eps)
        soft = torch.softmax(sc_logits, -1, dtype=torch.float32).to(self.dtype) @ self.dec_embed.weight
        return self.sc(x, soft * self.dec_embed.embed_scale.to(self.dtype))

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap(hidden @ self.lm_head_t, self.softcap)
