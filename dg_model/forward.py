"""The model calls the engine makes, behind one small `Forward` protocol with three implementations.

    encode(ids, cache, start)          -> final-norm encoder states [B, T, H] (the last alone: `last_only`); the
                                          cache grows by T
    decoder_logits(canvas, cache, sc)  -> soft-capped logits [B, C, V]; the cache is only read
    lm_logits(hidden)                  -> soft-capped logits (the AR mode's next-token head)

`HFForward` calls transformers' `DiffusionGemmaForBlockDiffusion` modules with a `DynamicCache`: every checkpoint,
every device, quantized experts included. `dg_model.lean.LeanForward` is a compact re-implementation over the same
weight tensors with a preallocated cache, for unquantized models on one device (the embedded model on a CPU), where
the library's per-call overhead was ~2/3 of a decoder step. `dg_model.ort.OrtForward` is that lean forward with its
layer stacks and logits head run by ONNX Runtime (float32 on a CPU). `make_forward` picks one.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Protocol, cast

import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache
from transformers.cache_utils import CacheLayerMixin

log = logging.getLogger(__name__)

FORWARDS = ("auto", "hf", "lean", "ort")


class Forward(Protocol):
    kind: str  # "hf" | "lean" | "ort"
    # whether two threads may call it at once, each with a cache of its own (an explicit request's rescoring prompt
    # is read on a spare core while the job decodes: dg_model/rescore.py)
    shared_by_threads: bool

    def new_cache(self) -> Any: ...

    def seq_length(self, cache) -> int: ...

    def trim(self, cache, length: int) -> None: ...

    def expand(self, cache, n: int) -> Any: ...

    def reorder(self, cache, rows: torch.Tensor, start: int = 0) -> None:
        """Row i of the batch becomes old row `rows[i]` (beam search); positions before `start` are equal in every
        row already and may be left alone."""
        ...

    def encode(self, ids: torch.Tensor, cache, start: int, last_only: bool = False) -> torch.Tensor:
        """Append `ids` [B, T] at `start` (== the cache's length) through the causal encoder -> final-norm states
        [B, T, H], or only the last position's [B, 1, H] where `last_only` (a prompt's: AR's first prediction; a
        forward may then skip the final layer's work after attention on the others)."""
        ...

    def decoder_logits(self, canvas: torch.Tensor, cache, sc_logits: torch.Tensor | None) -> torch.Tensor: ...

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------- transformers' modules


# The keyword DiffusionGemma's modules take their KV cache by: transformers 5.24 renamed `past_key_values` to `cache`
# (the old name warns, and goes in 5.40); 5.23, the oldest we support, knows only the old one.
_TAKES = inspect.signature(DiffusionGemmaForBlockDiffusion.forward).parameters
CACHE_ARG = "cache" if "cache" in _TAKES else "past_key_values"


def with_cache(cache, **kwargs) -> dict[str, Any]:
    """`kwargs` plus `cache` under the keyword this transformers takes it by."""
    return {**kwargs, CACHE_ARG: cache}


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    logits = logits.float()
    return torch.tanh(logits / cap) * cap if cap else logits


def positions(start: torch.Tensor | int, length: int, device) -> torch.Tensor:
    return (torch.as_tensor(start, device=device).view(-1, 1) + torch.arange(length, device=device)).long()


def encode(model, ids: torch.Tensor, cache, start: int) -> torch.Tensor:
    """Append `ids` [B, T] to `cache` through the causal encoder; returns final-norm states [B, T, H]."""
    at = positions(start, ids.shape[1], ids.device)
    out = model.model.encoder(**with_cache(cache, input_ids=ids, position_ids=at))
    return out.last_hidden_state


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    return softcap(model.lm_head(hidden), model.config.text_config.final_logit_softcapping)


def decoder_logits(model, canvas: torch.Tensor, cache, sc_logits: torch.Tensor | None) -> torch.Tensor:
    """Canvas [B, C] -> logits [B, C, V]. The decoder attends to the whole cache and the canvas, bidirectionally."""
    start = cache.get_seq_length()
    hidden = model.model.decoder(
        **with_cache(
            cache,
            decoder_input_ids=canvas,
            self_conditioning_logits=sc_logits,
            decoder_position_ids=positions(start, canvas.shape[1], canvas.device).expand(canvas.shape[0], -1),
        )
    ).last_hidden_state
    return lm_logits(model, hidden)


class HFForward:
    kind = "hf"
    shared_by_threads = False  # never measured under two threads; the spare core stays idle with it

    def __init__(self, model):
        self.model = model
        self.config = model.config.text_config

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def seq_length(self, cache: DynamicCache) -> int:
        return cache.get_seq_length()

    def trim(self, cache: DynamicCache, length: int) -> None:
        extra = cache.get_seq_length() - length
        if extra > 0:
            cache.crop(-extra)

    def expand(self, cache: DynamicCache, n: int) -> DynamicCache:
        """A batch-n copy of a batch-1 cache, for n candidates in one forward."""
        out = DynamicCache(config=self.config)
        for idx, layer in enumerate(cache.layers):
            # transformers types a layer as any of its kinds (linear attention, dummy, unfilled); DiffusionGemma's are
            # attention layers, all filled by the prompt
            assert isinstance(layer, CacheLayerMixin) and layer.keys is not None and layer.values is not None
            keys, values = layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1)
            out.update(keys.contiguous(), values.contiguous(), idx)
        return out

    def reorder(self, cache: DynamicCache, rows: torch.Tensor, start: int = 0) -> None:
        # transformers annotates the rows as the legacy class `torch.LongTensor`, which no tensor is typed as
        cache.reorder_cache(cast(torch.LongTensor, rows))

    def encode(self, ids, cache, start, last_only=False):
        hidden = encode(self.model, ids, cache, start)
        return hidden[:, -1:] if last_only else hidden

    def decoder_logits(self, canvas, cache, sc_logits):
        return decoder_logits(self.model, canvas, cache, sc_logits)

    def lm_logits(self, hidden):
        return lm_logits(self.model, hidden)


def _onnx_runtime(model, required: bool, threads: int | None) -> Forward | None:
    """The lean forward with its stacks in ONNX Runtime, or None (logged) where it cannot run and is not required."""
    try:
        from dg_model import ort

        why_not = ort.unsupported(model)
        if why_not is None:
            return ort.OrtForward(model, threads)
    except Exception as exc:  # a broken install, or a runtime that refuses the graph: the torch path still answers
        if required:
            raise
        log.warning("using the lean forward in torch: onnxruntime failed (%s: %s)", type(exc).__name__, exc)
        return None
    if required:
        raise ValueError(f"ONNX Runtime cannot run this model: {why_not}")
    log.info("using the lean forward in torch: %s", why_not)
    return None


def make_forward(model, kind: str = "auto", threads: int | None = None) -> Forward:
    """`auto`: on a CPU where the lean path supports the model (see `lean.unsupported`), its layer stacks and head in
    ONNX Runtime (`dg_model.ort`: 1.7-2.3x faster AR and beam steps on a 2-core AMD EPYC) where that can run them, else
    the lean path in torch; else transformers' modules. On a GPU `auto` keeps transformers' modules: the lean path's
    per-expert loop syncs with the host, and it has been measured on CPUs only; `lean` asks for it anyway. `ort` runs
    float32 weights on a CPU only. `threads`: ONNX Runtime's threads per product (default: torch's)."""
    from dg_model.lean import LeanForward, unsupported

    if kind not in FORWARDS:
        raise ValueError(f"forward {kind!r}: choose one of {', '.join(FORWARDS)}")
    if kind == "hf":
        return HFForward(model)
    reason = unsupported(model)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if reason is None and kind == "auto" and not on_cpu:
        reason = "not on a CPU"
    if reason is None and kind in ("auto", "ort"):
        fast = _onnx_runtime(model, kind == "ort", threads)
        if fast is not None:
            return fast
    if reason is None:
        return LeanForward(model)
    if kind in ("lean", "ort"):
        raise ValueError(f"the {kind} forward cannot run this model: {reason}")
    log.info("using transformers' forward: %s", reason)
    return HFForward(model)
