"""k-bit weights for DiffusionGemma, experts included.

Why this exists: transformers + bitsandbytes `load_in_4bit` only replaces `nn.Linear`. DiffusionGemma keeps its 128
experts per layer as two fused 3-D parameters (`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`), ~88% of the 26B
weights, and those stay bf16 (~46-50 GB). Here every expert is quantized on its own (NF4 or 8-bit blockwise via
`bitsandbytes.functional`, blocks never straddle two experts) and `QuantizedExperts` replaces
`DiffusionGemmaTextExperts` with the same forward signature. Per call it dequantizes only the experts the router hit,
all of them in ONE bnb call per projection, then runs one grouped matmul (`torch.nn.functional.grouped_mm`), so the
launch count per layer does not grow with the number of experts.

bnb has no grouped 4-bit GEMM (its `gemv_4bit` only serves a single input row), so dequantize-then-grouped-mm is the
fastest path bnb offers. Its cost is bandwidth: every hit expert is written and read once in bf16 per call.

Encoder and decoder share every layer weight; the two `DiffusionGemmaTextExperts` of a layer hold the same Parameter
objects, so each layer is quantized once and the one `QuantizedExperts` is installed in both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

BITS = (4, 8)


# ----------------------------------------------------------------------------------------------- packing (bnb calls)
def _bnb():
    import bitsandbytes.functional as bnbf  # imported lazily: optional dependency ([cuda] extra)

    return bnbf


def pack(w: torch.Tensor, bits: int, blocksize: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[E, N, K] float -> (data [E, bytes/expert] uint8, absmax [E, blocks/expert] fp32, code)."""
    assert bits in BITS, bits
    assert (w.shape[1] * w.shape[2]) % blocksize == 0, "a quantization block must not straddle two experts"
    bnbf, e = _bnb(), w.shape[0]
    if bits == 4:
        flat = w.reshape(-1)
        data, state = bnbf.quantize_4bit(flat, blocksize=blocksize, quant_type="nf4", compress_statistics=False)
        code = state.code if state.code is not None else torch.zeros(0)
    else:
        data, state = bnbf.quantize_blockwise(w.reshape(-1), blocksize=blocksize)
        code = state.code
    return data.reshape(e, -1), state.absmax.float().reshape(e, -1), code.to(w.device)


@torch.compiler.disable  # bnb 0.50.2's fake (meta) kernels disagree with its CPU op on output rank under inductor
def unpack(
    data: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    shape: tuple[int, int],
    bits: int,
    blocksize: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Inverse of `pack` for any subset of experts (rows of data/absmax): -> [k, N, K] in `dtype`.

    Dequantized as one flat vector, then reshaped: bnb 0.50.2's CPU `dequantize_4bit` is wrong (40% error instead of
    9%) when the output's last dim is smaller than the blocksize, e.g. a tiny `down_proj` [E, 64, 32].
    """
    bnbf, k = _bnb(), data.shape[0]
    flat = torch.Size((k * shape[0] * shape[1],))
    if bits == 4:
        state = bnbf.QuantState(
            absmax=absmax.reshape(-1), shape=flat, blocksize=blocksize, quant_type="nf4", dtype=dtype
        )
        return bnbf.dequantize_4bit(data.reshape(-1, 1), state).view(k, *shape)
    state = bnbf.QuantState(absmax=absmax.reshape(-1), code=code, blocksize=blocksize, dtype=dtype)
    return bnbf.dequantize_blockwise(data.reshape(-1), state).view(k, *shape)


# --------------------------------------------------------------------------------------------- grouped matmul helper
def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x [S, K] sorted by group, w [G, K, N], offs [G] int32 cumulative ends -> [S, N].

    Fused kernel where torch has one: `nn.functional.grouped_mm` (torch >= 2.10; CPU, CUDA sm80+ in bf16), else
    `torch._grouped_mm` (CUDA sm90 bf16 since torch 2.8); anything else (and non-bf16 under torch.compile, which
    cannot trace it) loops over the groups.
    """
    cuda_bf16 = x.device.type == "cuda" and x.dtype == torch.bfloat16
    capability = torch.cuda.get_device_capability(x.device) if cuda_bf16 else (0, 0)
    traceable = x.dtype == torch.bfloat16 or not torch.compiler.is_compiling()  # inductor: bf16 grouped_mm only
    if hasattr(nn.functional, "grouped_mm") and traceable and (x.device.type == "cpu" or capability >= (8, 0)):
        return nn.functional.grouped_mm(x, w, offs=offs)
    if hasattr(torch, "_grouped_mm") and capability >= (9, 0):
        return torch._grouped_mm(x, w, offs=offs)
    out, start = x.new_zeros(x.shape[0], w.shape[2]), 0
    for g, end in enumerate(offs.tolist()):  # one host sync for the whole loop
        if end > start:
            torch.mm(x[start:end], w[g], out=out[start:end])
        start = end
    return out


# ------------------------------------------------------------------------------------------------- the expert module
def _expert_parts(experts: nn.Module) -> tuple[int, nn.Module, torch.Tensor, torch.Tensor]:
    """A DiffusionGemmaTextExperts' (num_experts, act_fn, gate_up_proj [E, 2I, H], down_proj [E, H, I]). Read through
    nn.Module.__getattr__ every attribute types as `Tensor | Module`, and transformers types `num_experts` as
    `int | None`: the asserts narrow them to what a drop-in needs (E is the weights' first dimension)."""
    gate_up, down, act_fn = experts.gate_up_proj, experts.down_proj, experts.act_fn
    assert isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and isinstance(act_fn, nn.Module)
    return gate_up.shape[0], act_fn, gate_up, down


class QuantizedExperts(nn.Module):
    """Drop-in for DiffusionGemmaTextExperts: forward(hidden [T, H], top_k_index [T, K], top_k_weights [T, K])."""

    def __init__(self, experts: nn.Module, bits: int, blocksize: int = 64, device: str | torch.device | None = None):
        """Quantize `experts` (on `device`, default: where its weights are; the result stays there)."""
        super().__init__()
        self.num_experts, self.act_fn, gate_up, down = _expert_parts(experts)
        self.bits, self.blocksize = bits, blocksize
        self.gate_up_shape = tuple(gate_up.shape[1:])  # (2I, H)
        self.down_shape = tuple(down.shape[1:])  # (H, I)
        with torch.no_grad():
            for name, w in (("gate_up", gate_up.detach()), ("down", down.detach())):
                data, absmax, code = pack(w.to(device) if device is not None else w, bits, blocksize)
                self.register_buffer(f"{name}_data", data)
                self.register_buffer(f"{name}_absmax", absmax)
        self.register_buffer("code", code)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, bits={self.bits}, blocksize={self.blocksize}"

    def dequantize(self, name: str, ids: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Experts `ids` (None: all) of projection `name` -> [k, N, K] in `dtype`, one bnb call."""
        data, absmax = getattr(self, f"{name}_data"), getattr(self, f"{name}_absmax")
        if ids is not None:
            data, absmax = data.index_select(0, ids), absmax.index_select(0, ids)
        shape = getattr(self, f"{name}_shape")
        return unpack(data, absmax, self.code, shape, self.bits, self.blocksize, dtype)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        t, k = top_k_index.shape
        dtype = hidden_states.dtype
        hit = torch.unique(top_k_index)  # sorted; its size is data-dependent (one host sync, as in the eager ref.)
        ids = None if hit.numel() == self.num_experts else hit
        gate_up = self.dequantize("gate_up", ids, dtype)  # [G, 2I, H]
        down = self.dequantize("down", ids, dtype)  # [G, H, I]
        # expert id -> its row in the dequantized stack
        local = torch.empty(self.num_experts, dtype=torch.long, device=hit.device)
        local[hit] = torch.arange(hit.numel(), device=hit.device)
        flat = local[top_k_index.reshape(-1)]  # [T*K]
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=hit.numel())
        offs = torch.cumsum(counts, 0).to(torch.int32)  # [G]
        x = hidden_states[order // k]  # [T*K, H] grouped by expert
        h = grouped_mm(x, gate_up.transpose(1, 2), offs)  # [T*K, 2I]
        gate, up = h.chunk(2, dim=-1)
        h = grouped_mm(self.act_fn(gate) * up, down.transpose(1, 2), offs)  # [T*K, H]
        out = torch.empty_like(h)
        out[order] = h  # back to (token, slot) order
        out = out.view(t, k, -1) * top_k_weights.unsqueeze(-1)  # weights are fp32: sum in fp32
        return out.sum(dim=1).to(dtype)


# ---------------------------------------------------------------------------------------------- model-level helpers
def _expert_modules(model: nn.Module):
    """(parent, attribute name, module) for every DiffusionGemmaTextExperts in the model."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child).__name__ == "DiffusionGemmaTextExperts":
                yield parent, name, child


@torch.no_grad()
def quantize_experts(model: nn.Module, bits: int, blocksize: int = 64, device=None) -> nn.Module:
    """Replace every DiffusionGemmaTextExperts by a QuantizedExperts, in place, on `device` (default: the weights'
    own device). With a CPU model and device="cuda" the experts move one projection at a time: the GPU never holds
    more than one layer's bf16 experts (~1.5 GB for 26B-A4B).

    Shared experts (encoder and decoder layer i) are quantized once and the same module is installed in both. The
    quantized model is for inference: it cannot be saved with `save_pretrained` (the fused expert keys are gone).
    """
    return _replace_once(
        model,
        _expert_modules(model),
        lambda experts: experts.gate_up_proj,
        lambda experts: QuantizedExperts(experts, bits, blocksize, device),
    )


@torch.no_grad()
def quantize_dense(model: nn.Module, bits: int, device: str | torch.device = "cuda") -> nn.Module:
    """Replace the transformer's dense `nn.Linear`s by bnb `Linear4bit` (NF4) / `Linear8bitLt`, moved to `device`.

    Why our own replacement rather than transformers' BitsAndBytesConfig: that path quantizes while loading, but the
    experts would reach the GPU in bf16 first (~46 GB peak), which is exactly what must not happen on a 24 GB card.
    Loading to CPU, then quantizing experts and dense layers layer by layer onto the GPU, keeps the peak at the final
    size plus one layer. bnb quantizes a `Params4bit`/`Int8Params` when it moves to `device` (CPU works in bnb 0.50,
    slowly; it is meant for CUDA).
    Left in bf16 on purpose: embeddings / lm_head (tied, one copy), the routers (tiny; routing decisions are the most
    quantization-sensitive part of an MoE) and the vision tower (off the text path).
    """
    import bitsandbytes as bnb

    return _replace_once(
        model, dense_linears(model), lambda linear: linear.weight, lambda linear: _to_kbit(bnb, linear, bits, device)
    )


M = TypeVar("M", bound=nn.Module)  # the kind of module `_replace_once` replaces


def _replace_once(
    model: nn.Module,
    found: Iterable[tuple[nn.Module, str, M]],
    weight: Callable[[M], object],
    make: Callable[[M], nn.Module],
) -> nn.Module:
    """Install `make(module)` in place of each (parent, attribute, module) `found`, one replacement per `weight`:
    modules that share a weight (tied layers) share the replacement, made once."""
    done: dict[int, nn.Module] = {}
    for parent, name, module in list(found):
        key = id(weight(module))
        if key not in done:
            done[key] = make(module)
        setattr(parent, name, done[key])
    return model


def dense_linears(model: nn.Module):
    """(parent, attribute, nn.Linear) for the text transformer's dense projections (what `quantize_dense` replaces)."""
    for path, parent in model.named_modules():
        if "vision" in path or path.endswith("router"):
            continue
        for name, child in parent.named_children():
            if type(child) is nn.Linear and name != "lm_head":
                yield parent, name, child


def _to_kbit(bnb, linear: nn.Linear, bits: int, device) -> nn.Module:
    w = linear.weight.data
    if bits == 4:
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=w.dtype,
            quant_type="nf4",
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")  # quantized by .to(device)
    else:
        q = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=linear.bias is not None, has_fp16_weights=False, device="meta"
        )
        # Int8Params quantizes only when it leaves the CPU (or is moved CPU -> CPU), so start from the CPU
        q.weight = bnb.nn.Int8Params(w.to("cpu"), requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    return q.to(device)


# ------------------------------------------------------------------------------------------------------- footprint
def _quant_state_tensors(module: nn.Module):
    """Tensors bnb keeps outside parameters/buffers: Params4bit's quant_state (absmax, code, nested state, offset)
    and Int8Params' per-row scales, which Linear8bitLt moves from `weight.SCB` to `state.SCB` on its first forward."""
    weight = module._parameters.get("weight")
    state = getattr(weight, "quant_state", None)
    while state is not None:
        yield from (x for x in (state.absmax, state.code, getattr(state, "offset", None)) if torch.is_tensor(x))
        state = getattr(state, "state2", None)
    for owner in (weight, getattr(module, "state", None)):
        scb = getattr(owner, "SCB", None)
        if torch.is_tensor(scb):
            yield scb


def footprint_bytes(model: nn.Module) -> int:
    """Real bytes of all parameters and buffers, each shared tensor counted once, bnb quant state included."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for m in model.modules() for t in _quant_state_tensors(m)]
    seen, total = set(), 0
    for x in tensors:
        key = (x.data_ptr(), x.numel()) if x.device.type != "meta" else id(x)
        if key not in seen:
            seen.add(key)
            total += x.numel() * x.element_size()
    return total


def packed_bytes(numel: int, bits: int, blocksize: int = 64, nested: bool = False) -> int:
    """Bytes of a k-bit blockwise tensor: data + absmax (fp32, or uint8 + fp32 per 256 blocks when nested)."""
    blocks = -(-numel // blocksize)
    absmax = blocks + 4 * -(-blocks // 256) if nested else 4 * blocks
    return numel * bits // 8 + absmax


def projected_footprint_bytes(
    model: nn.Module, expert_bits: int, dense_bits: int, blocksize: int = 64, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Bytes the model WOULD take after `quantize_experts(expert_bits)` + `quantize_dense(dense_bits)` (16 = keep),
    everything else in `dtype`. Works on a `meta` model, so the 26B footprint is known without any weights.

    Dense 4-bit follows bnb `Params4bit` defaults (NF4, blocksize 64, nested absmax); dense 8-bit is int8 rows plus
    one fp32 scale per output row (`SCB`). Expert codebooks (16 or 256 fp32 values) are counted once per layer.
    """
    size = torch.finfo(dtype).bits // 8
    dense = {id(lin.weight): lin for _, _, lin in dense_linears(model)}
    seen, total = set(), 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")) and expert_bits != 16:
            total += packed_bytes(n, expert_bits, blocksize) + (64 if expert_bits == 4 else 1024) // 2
        elif id(p) in dense and dense_bits == 4:
            total += packed_bytes(n, 4, 64, nested=True) + 4 * (16 + 256 + 1)  # + NF4 code, nested code, offset
        elif id(p) in dense and dense_bits == 8:
            total += n + 4 * p.shape[0]
        else:
            total += n * size
    bufs = {id(b): b for b in model.buffers()}.values()
    return total + sum(b.numel() * b.element_size() for b in bufs)


# ----------------------------------------------------------------------------------------------------- fp8 experts
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def fp8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., N, K] float -> (fp8 [..., N, K], fp32 scale [..., N]): one scale per output row, w ~= q * scale."""
    scale = w.detach().abs().amax(dim=-1).float().clamp(min=1e-12) / FP8_MAX
    q = (w.float() / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def fp8_backend(device: torch.device | str) -> str:
    """The fastest fp8 expert matmul this torch + device offer (the bench probes it before use).

    "scaled_grouped_mm": `torch._scaled_grouped_mm` (CUDA sm90+, rowwise scales), one launch per projection;
    "scaled_mm": a per-expert `torch._scaled_mm` loop (CUDA sm89+; one host sync per call, no CUDA graphs);
    "dequant": fp8 -> compute dtype per call + grouped matmul (any device: the CPU-testable reference).
    """
    device = torch.device(device)
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    if cap >= (9, 0) and hasattr(torch, "_scaled_grouped_mm"):
        return "scaled_grouped_mm"
    if cap >= (8, 9) and hasattr(torch, "_scaled_mm"):
        return "scaled_mm"
    return "dequant"


class Fp8Experts(nn.Module):
    """Drop-in for DiffusionGemmaTextExperts with fp8 (e4m3) weights and one fp32 scale per expert output row.

    Activations are quantized per token row on the fly (dynamic rowwise scaling), so the product is what
    `torch._scaled_grouped_mm` computes. Shapes are static (all experts take part; empty groups cost nothing; no
    `unique`, no host sync on the grouped path), so the step can be captured in a CUDA graph.
    """

    gate_up_fp8: torch.Tensor  # a buffer, typed here: through nn.Module.__getattr__ it types as `Tensor | Module`

    def __init__(self, experts: nn.Module, device: str | torch.device | None = None, backend: str | None = None):
        super().__init__()
        self.num_experts, self.act_fn, gate_up, down = _expert_parts(experts)
        with torch.no_grad():
            for name, w in (("gate_up", gate_up.detach()), ("down", down.detach())):
                q, scale = fp8_rows(w.to(device) if device is not None else w)
                self.register_buffer(f"{name}_fp8", q)  # [E, N, K]
                self.register_buffer(f"{name}_scale", scale)  # [E, N]
        self.backend = backend or fp8_backend(self.gate_up_fp8.device)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, backend={self.backend}"

    def dequantize(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """All experts of projection `name` -> [E, N, K] in `dtype`."""
        q, scale = getattr(self, f"{name}_fp8"), getattr(self, f"{name}_scale")
        return (q.to(torch.float32) * scale.unsqueeze(-1)).to(dtype)

    def _mm(self, x: torch.Tensor, name: str, offs: torch.Tensor) -> torch.Tensor:
        """x [S, K] grouped by expert (offs [E] int32 cumulative ends) -> [S, N] in x.dtype."""
        xq, xs = fp8_rows(x)  # [S, K] fp8, [S] fp32
        w, ws = getattr(self, f"{name}_fp8"), getattr(self, f"{name}_scale")  # [E, N, K], [E, N]
        if self.backend == "scaled_grouped_mm":
            out = torch._scaled_grouped_mm(xq, w.transpose(1, 2), xs, ws, offs=offs, out_dtype=torch.bfloat16)
            return out.to(x.dtype)
        if self.backend == "scaled_mm":
            out, start = x.new_zeros(x.shape[0], w.shape[1]), 0
            for g, end in enumerate(offs.tolist()):
                if end > start:
                    out[start:end] = torch._scaled_mm(
                        xq[start:end], w[g].t(), xs[start:end, None], ws[g][None], out_dtype=torch.bfloat16
                    ).to(x.dtype)
                start = end
            return out
        assert self.backend == "dequant", self.backend
        xd = (xq.to(torch.float32) * xs.unsqueeze(-1)).to(x.dtype)  # the same activation rounding as the kernels
        return grouped_mm(xd, self.dequantize(name, x.dtype).transpose(1, 2), offs)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        t, k = top_k_index.shape
        dtype = hidden_states.dtype
        flat = top_k_index.reshape(-1)  # [T*K]
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(self.num_experts, dtype=torch.int32, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))  # static shape (unlike bincount)
        offs = torch.cumsum(counts, 0, dtype=torch.int32)  # [E]
        x = hidden_states[order // k]  # [T*K, H] grouped by expert
        h = self._mm(x, "gate_up", offs)  # [T*K, 2I]
        gate, up = h.chunk(2, dim=-1)
        h = self._mm(self.act_fn(gate) * up, "down", offs)  # [T*K, H]
        out = torch.empty_like(h)
        out[order] = h  # back to (token, slot) order
        out = out.view(t, k, -1) * top_k_weights.unsqueeze(-1)
        return out.sum(dim=1).to(dtype)


def fp8_expert_bytes(numel: int, rows: int) -> int:
    """Bytes of fp8 experts: one byte per weight plus one fp32 scale per output row."""
    return numel + 4 * rows
