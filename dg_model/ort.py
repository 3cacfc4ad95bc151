"""The lean forward's two layer stacks and its logits head run by ONNX Runtime on a CPU.

On the 2-core AMD EPYC of session 23 a width-10 beam step through the lean forward took ~27 ms, half of it in
MKL's float32 products of a few rows (the same products alone, cold: 15.3 ms in torch against 8.3 ms in ONNX
Runtime's MLAS and 12.7 ms in numpy's OpenBLAS) and half in ~1,100 small operators at several microseconds of dispatch
each. Here a stack's six layers are one ONNX graph, built at load time from the model's own tensors (nothing is
exported or shipped), and one `run` per call.

The cache stays the lean forward's `LeanCache` of torch tensors, so what only moves it (beam reorder, expand, trim)
is `LeanForward`'s, and so are the embeddings and the decoder's self-conditioning input. Each call passes the
cache's keys and values as inputs; the encoder's new keys and values come back as outputs and are written into it.
The price is memory: ONNX Runtime keeps its own packed copy of the weights, and a server on the embedded model holds
~590 MiB after loading against 457 MiB with the torch path (688 and 466 MiB while the decoder had its own copies)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from dg_model.lean import LeanCache, LeanForward, _Layer

OPSET = 20  # Gelu with the tanh approximation
NEG_INF = np.float32(-np.inf)


def unsupported(model) -> str | None:
    """Why ONNX Runtime cannot run `model`'s lean forward here, or None (see also `lean.unsupported`)."""
    if "CPUExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CPU provider"
    if next(model.parameters()).device.type != "cpu":
        return "not on a CPU"
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return "weights not in float32"
    return None


def layer_types(layers: list[_Layer]) -> list[str]:
    return sorted({layer.layer_type for layer in layers})


class _Builder:
    """Nodes, initializers and unique names for one graph."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, hint: str = "c") -> str:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def i64(self, *values: int) -> str:
        return self.const(np.array(values, dtype=np.int64), "shape")

    def f32(self, value: float) -> str:
        return self.const(np.array(value, dtype=np.float32), "scalar")

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names


class _Stack:
    """One stack's graph (the causal encoder's or the decoder's layers) from embeddings to the final norm.

    Inputs: `x` [B, T, H] (the new tokens' embeddings); `cos_{type}`, `sin_{type}` [T, 1, d] (each new token's
    rotation, per layer type); per layer the prefix every row shares (`sk{i}`, `sv{i}` [1, g, P, d]) and each row's
    own earlier positions (`ok{i}`, `ov{i}` [B, g, C, d]), with additive biases `bias_sh` [P] and `bias_own` [C]
    (-inf over the one placeholder position a part holds while it is empty: no product here runs on an empty tensor),
    and `bias_new` [T, T] among the new tokens (causal, a tree's visibility, or none: a canvas); `tail` [1], the first
    new token whose state is wanted. Outputs: `hidden` [B, T - tail, H] and the new tokens' keys and values `nk{i}`,
    `nv{i}` [B, g, T, d]. The last layer writes keys and values for every new token but runs its queries, its output
    projection and its feed-forward on the wanted ones only: a prompt wants its last state, and the rest of its last
    layer was ~15% of its products."""

    def __init__(self, layers: list[_Layer], norm: torch.Tensor, eps: float):
        self.b = b = _Builder()
        self.eps = b.f32(eps)
        self.h, self.g, self.d = layers[0].h, layers[0].g, layers[0].d
        self.types = layer_types(layers)
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", int(layers[0].o.shape[0])])]
        inputs += [
            helper.make_tensor_value_info(f"{f}_{t}", TensorProto.FLOAT, ["T", 1, self.d])
            for t in self.types
            for f in ("cos", "sin")
        ]
        inputs += [
            helper.make_tensor_value_info("bias_sh", TensorProto.FLOAT, ["P"]),
            helper.make_tensor_value_info("bias_own", TensorProto.FLOAT, ["C"]),
            helper.make_tensor_value_info("bias_new", TensorProto.FLOAT, ["T", "T"]),
            helper.make_tensor_value_info("tail", TensorProto.INT64, [1]),
        ]
        outputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", None, None])]
        x = "x"
        for i, layer in enumerate(layers):
            for name, shape in ((f"sk{i}", [1, self.g, "P", self.d]), (f"ok{i}", ["B", self.g, "C", self.d])):
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
                inputs.append(helper.make_tensor_value_info(name.replace("k", "v"), TensorProto.FLOAT, shape))
            x = self.layer(layer, x, i, "tail" if i == len(layers) - 1 else None)
            outputs += [
                helper.make_tensor_value_info(f"n{kv}{i}", TensorProto.FLOAT, ["B", self.g, "T", self.d]) for kv in "kv"
            ]
        b.nodes.append(helper.make_node("Identity", [self.rms(x, norm)], ["hidden"]))
        graph = helper.make_graph(b.nodes, "dg_layers", inputs, outputs, b.inits)
        self.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])

    # -------------------------------------------------------------------------------------------------- pieces
    def normed(self, x: str) -> str:
        """x / sqrt(mean(x^2) + eps) over the last dimension (lean._normed). Squared by Pow: ONNX Runtime then fuses
        most norms into one operator (SimplifiedLayerNormalization; 1,074 -> 922 nodes in the encoder, a beam step
        5% faster), which it does not for Mul(x, x)."""
        b = self.b
        mean = b.op("ReduceMean", b.op("Pow", x, b.f32(2.0)), b.i64(-1), keepdims=1)
        return b.op("Div", x, b.op("Sqrt", b.op("Add", mean, self.eps)))

    def scaled(self, normed: str, weight: torch.Tensor | None) -> str:
        return normed if weight is None else self.b.op("Mul", normed, self.b.const(weight.float(), "norm"))

    def rms(self, x: str, weight: torch.Tensor | None) -> str:
        return self.scaled(self.normed(x), weight)

    def matmul_t(self, x: str, weight: torch.Tensor) -> str:
        """x @ weight.T for a [out, in] weight (stored transposed, [in, out], as the products read it)."""
        return self.b.op("MatMul", x, self.b.const(weight.detach().float().T.contiguous(), "w"))

    def heads(self, x: str, start: int, stop: int) -> str:
        return self.b.op("Slice", x, self.b.i64(start), self.b.i64(stop), self.b.i64(2))

    def wanted(self, x: str, tail: str | None, axis: int) -> str:
        """`x` from position `tail` on along `axis` (all of it where there is no tail)."""
        return x if tail is None else self.b.op("Slice", x, tail, self.b.i64(2**62), self.b.i64(axis))

    def rotate(self, x: str, layer_type: str) -> str:
        b, half = self.b, self.d // 2
        lo = b.op("Slice", x, b.i64(0), b.i64(half), b.i64(-1))
        hi = b.op("Slice", x, b.i64(half), b.i64(self.d), b.i64(-1))
        turned = b.op("Concat", b.op("Neg", hi), lo, axis=-1)
        return b.op("Add", b.op("Mul", x, f"cos_{layer_type}"), b.op("Mul", turned, f"sin_{layer_type}"))

    def attention(self, layer: _Layer, x: str, i: int, tail: str | None) -> str:
        """Layer i's attention of the new tokens [B, T, H] (their queries from `tail` on) over the shared prefix, the
        rows' own earlier positions and each other; writes the outputs nk{i}, nv{i}."""
        b, h, g, d = self.b, self.h, self.g, self.d
        normed = self.normed(b.op("Reshape", self.matmul_t(x, layer.qkv), b.i64(0, 0, -1, d)))  # [B, T, heads, d]
        qk = self.rotate(self.scaled(self.heads(normed, 0, h + g), layer.qk_norm), layer.layer_type)
        v = self.heads(normed, h, h + g) if layer.k_is_v else self.heads(normed, h + g, h + 2 * g)
        q = self.wanted(self.heads(qk, 0, h), tail, 1)
        q = b.op("Reshape", b.op("Transpose", q, perm=[0, 2, 1, 3]), b.i64(0, g, h // g, -1, d))
        b.nodes.append(helper.make_node("Transpose", [self.heads(qk, h, h + g)], [f"nk{i}"], perm=[0, 2, 1, 3]))
        b.nodes.append(helper.make_node("Transpose", [v], [f"nv{i}"], perm=[0, 2, 1, 3]))
        bias_new = self.wanted("bias_new", tail, 0)
        parts = [(f"sk{i}", f"sv{i}", "bias_sh"), (f"ok{i}", f"ov{i}", "bias_own"), (f"nk{i}", f"nv{i}", bias_new)]
        scores, values = [], []
        for keys, vals, bias in parts:  # q [B, g, h/g, T, d] against keys [*, g, 1, d, L]: kv head j serves its group
            keys_t = b.op("Transpose", b.op("Unsqueeze", keys, b.i64(2)), perm=[0, 1, 2, 4, 3])
            scores.append(b.op("Add", b.op("MatMul", q, keys_t), bias))
            values.append(b.op("Unsqueeze", vals, b.i64(2)))
        lengths = [b.op("Slice", b.op("Shape", keys), b.i64(2), b.i64(3)) for keys, _, _ in parts]
        p = b.op("Softmax", b.op("Concat", *scores, axis=-1), axis=-1)
        probs = b.op("Split", p, b.op("Concat", *lengths, axis=0), axis=-1, outputs=3)
        out = b.op("MatMul", probs[0], values[0])
        for prob, value in zip(probs[1:], values[1:]):
            out = b.op("Add", out, b.op("MatMul", prob, value))
        out = b.op("Transpose", b.op("Reshape", out, b.i64(0, h, -1, d)), perm=[0, 2, 1, 3])  # [B, T, h, d]
        return self.matmul_t(b.op("Reshape", out, b.i64(0, 0, h * d)), layer.o)

    def experts(self, layer: _Layer, route: str, xin: str) -> str:
        """The routed experts over flat rows [N, H] (lean._Layer.moe): each expert on the rows routed to it, their
        outputs weighted and added per row in expert order."""
        b = self.b
        scores = b.op("MatMul", b.op("Mul", route, b.const(layer.router_scale.float())), b.const(layer.router_proj.T))
        top, index = b.op(
            "TopK", b.op("Softmax", scores, axis=-1), b.i64(layer.top_k), axis=-1, largest=1, sorted=1, outputs=2
        )
        top = b.op("Div", top, b.op("ReduceSum", top, b.i64(-1), keepdims=1))
        top = b.op("Mul", top, b.op("Gather", b.const(layer.per_expert_scale.float()), index))
        acc = b.op("ConstantOfShape", b.op("Shape", xin), value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0]))
        zero = b.f32(0.0)
        for e in range(layer.experts_down.shape[0]):
            hit = b.op("Equal", index, b.i64(e))
            weight = b.op("ReduceSum", b.op("Where", hit, top, zero), b.i64(-1), keepdims=0)  # [N]
            rows = b.op("NonZero", b.op("ReduceMax", b.op("Cast", hit, to=TensorProto.FLOAT), b.i64(-1), keepdims=0))
            rows = b.op("Transpose", rows, perm=[1, 0])  # [n, 1]
            picked = b.op("GatherND", xin, rows)
            gate, up = b.op("Split", self.matmul_t(picked, layer.experts_gate_up[e]), axis=-1, num_outputs=2, outputs=2)
            y = self.matmul_t(b.op("Mul", b.op("Gelu", gate, approximate="tanh"), up), layer.experts_down[e])
            y = b.op("Mul", y, b.op("Unsqueeze", b.op("GatherND", weight, rows), b.i64(-1)))
            acc = b.op("ScatterND", acc, rows, y, reduction="add")
        return acc

    def layer(self, layer: _Layer, x: str, i: int, tail: str | None) -> str:
        b, n = self.b, layer.norms
        attended = self.attention(layer, self.rms(x, n["input_layernorm"]), i, tail)
        x = b.op("Add", self.wanted(x, tail, 1), self.rms(attended, n["post_attention_layernorm"]))
        normed = self.normed(x)
        gate, up = b.op(
            "Split",
            self.matmul_t(self.scaled(normed, n["pre_feedforward_layernorm"]), layer.gate_up),
            axis=-1,
            num_outputs=2,
            outputs=2,
        )
        dense = self.matmul_t(b.op("Mul", b.op("Gelu", gate, approximate="tanh"), up), layer.down)
        dense = self.rms(dense, n["post_feedforward_layernorm_1"])
        flat = b.op("Reshape", normed, b.i64(-1, int(layer.o.shape[0])))
        routed = self.experts(layer, flat, self.scaled(flat, n["pre_feedforward_layernorm_2"]))
        experts = self.rms(b.op("Reshape", routed, b.op("Shape", x)), n["post_feedforward_layernorm_2"])
        x = b.op("Add", x, self.rms(b.op("Add", dense, experts), n["post_feedforward_layernorm"]))
        return b.op("Mul", x, b.const(layer.scalar.float()))


def _head(fwd: LeanForward) -> onnx.ModelProto:
    """hidden [..., H] -> soft-capped logits [..., V] (lean's lm_logits)."""
    b = _Builder()
    logits = b.op("MatMul", "hidden", b.const(fwd.lm_head_t.float().contiguous(), "head"))
    if fwd.softcap:
        cap = b.f32(fwd.softcap)
        logits = b.op("Mul", b.op("Tanh", b.op("Div", logits, cap)), cap)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    graph = helper.make_graph(
        b.nodes,
        "dg_head",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        b.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


class _Graph(NamedTuple):
    session: ort.InferenceSession
    types: list[str]  # the layer types whose rotations it takes


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning between calls: the spare core reads the rescoring prompt (prompt_cache.Lease) meanwhile
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class OrtForward(LeanForward):
    """`LeanForward` whose layer stacks and logits head run in ONNX Runtime (float32 weights on a CPU)."""

    kind = "ort"

    def __init__(self, model, threads: int | None = None):
        super().__init__(model)
        self.threads = threads = threads or torch.get_num_threads()
        encoder = _session(_Stack(self.enc_layers, self.enc_norm, self.eps).model, threads)
        # DiffusionGemma's decoder is its encoder's layers read both ways (the attention biases are inputs), so the
        # two graphs would be the same: one session, one packed copy of the weights (RSS after loading 687 -> ~590 MiB)
        same = self.dec_layers == self.enc_layers and self.dec_norm is self.enc_norm
        decoder = encoder if same else _session(_Stack(self.dec_layers, self.dec_norm, self.eps).model, threads)
        self.encoder = _Graph(encoder, layer_types(self.enc_layers))
        self.decoder = _Graph(decoder, layer_types(self.dec_layers))
        self.head = _session(_head(self), threads)
        first = self.enc_layers[0]
        self._new_kv = [f"n{kv}{i}" for i in range(len(self.enc_layers)) for kv in "kv"]
        self._placeholder = np.zeros((1, first.g, 1, first.d), dtype=np.float32)

    def _run(
        self,
        stack: _Graph,
        x: torch.Tensor,
        pos: torch.Tensor,
        bias_new: np.ndarray,
        cache: LeanCache,
        write: bool,
        tail: int = 0,
    ) -> torch.Tensor:
        """The new tokens' embeddings `x` [B, T, H] at positions `pos` [T] through `stack` over the cache, their keys
        and values written into it after its end where `write`; -> final-norm states [B, T - tail, H]."""
        B, T = x.shape[:2]
        P, lo = cache.shared, cache.length - cache.shared
        feeds: dict[str, np.ndarray] = {
            "x": x.float().contiguous().numpy(),
            "bias_new": bias_new,
            "bias_sh": np.zeros(P, dtype=np.float32) if P else np.full(1, NEG_INF),
            "bias_own": np.zeros(lo, dtype=np.float32) if lo else np.full(1, NEG_INF),
            "tail": np.array([tail], dtype=np.int64),
        }
        for layer_type in stack.types:
            cos, sin = self._rope[layer_type]
            feeds[f"cos_{layer_type}"], feeds[f"sin_{layer_type}"] = (t[pos, None].float().numpy() for t in (cos, sin))
        none_yet = np.zeros((B, *self._placeholder.shape[1:]), dtype=np.float32)
        for i in range(len(self.enc_layers)):
            for kv, shared, own in (("k", cache.shared_k, cache.k), ("v", cache.shared_v, cache.v)):
                feeds[f"s{kv}{i}"] = shared[i].contiguous().numpy() if P else self._placeholder
                feeds[f"o{kv}{i}"] = own[i][:, :, :lo].contiguous().numpy() if lo else none_yet
        out = stack.session.run(["hidden"] + (self._new_kv if write else []), feeds)
        if write:
            for i in range(len(self.enc_layers)):
                cache.k[i][:, :, lo : lo + T] = torch.from_numpy(out[1 + 2 * i])
                cache.v[i][:, :, lo : lo + T] = torch.from_numpy(out[2 + 2 * i])
        return torch.from_numpy(out[0])

    def _encoder_stack(self, x: torch.Tensor, cache: LeanCache, start: int, last_only: bool) -> torch.Tensor:
        T = x.shape[1]
        causal = np.triu(np.full((T, T), NEG_INF, dtype=np.float32), 1)
        return self._run(
            self.encoder, x, torch.arange(start, start + T), causal, cache, True, T - 1 if last_only else 0
        )

    def _tree_stack(self, x: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor, cache: LeanCache) -> torch.Tensor:
        bias = np.where(visible.cpu().numpy(), np.float32(0), NEG_INF).astype(np.float32)
        return self._run(self.encoder, x, pos.cpu(), bias, cache, True)

    def _decoder_stack(self, x: torch.Tensor, cache: LeanCache) -> torch.Tensor:
        C = x.shape[1]
        both_ways = np.zeros((C, C), dtype=np.float32)
        return self._run(self.decoder, x, torch.arange(cache.length, cache.length + C), both_ways, cache, False)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.head.run(["logits"], {"hidden": hidden.float().contiguous().numpy()})[0])
