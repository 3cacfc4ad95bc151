"""DiffusionGemma configurations we build ourselves: the embedded code model and the tiny test model.

Both use the library's own `DiffusionGemmaConfig`, so they load through exactly the code path of the 26B checkpoint.
"""

from __future__ import annotations

from typing import Any

from transformers import DiffusionGemmaConfig
from transformers.models.diffusion_gemma import DiffusionGemmaTextConfig
from transformers.models.gemma4 import Gemma4VisionConfig

from dg_model.special_tokens import BOS, EOS, PAD

# Sized for the CPU latency goal (p50 inline completion <= 100 ms on 2 cores, float32): ~11 M parameters,
# a 14 ms decoder step over a 32-token canvas and a 60 ms encode of 512 prompt tokens, measured here.
EMBEDDED = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    num_experts=4,
    top_k_experts=2,
    moe_intermediate_size=256,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    num_experts=4,
    top_k_experts=2,
    moe_intermediate_size=32,
)
# The next size up for a GPU run: 22.4 M parameters. With lines decoded autoregressively its one-token step is 6.8 ms
# on this CPU against 5.7 ms for EMBEDDED (`dg-lsp bench forward --size medium`, bench_forward_medium.json), so an
# ~8-token line still fits the 100 ms goal; a 480-token cold prompt encode takes 142 ms (82 ms).
MEDIUM = dict(
    hidden_size=384,
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=64,
    num_experts=4,
    top_k_experts=2,
    moe_intermediate_size=384,
)
SIZES = {"tiny": TINY, "embedded": EMBEDDED, "medium": MEDIUM}


def build_config(vocab_size: int, canvas_length: int = 64, max_positions: int = 2048, **sizes) -> DiffusionGemmaConfig:
    sizes = {**EMBEDDED, **sizes}
    layers = sizes["num_hidden_layers"]
    # transformers' configs are strict dataclasses: the typed __init__ lists only their fields, while at run time more
    # keyword arguments reach __post_init__ (the text config reads global_head_dim there; the outer config keeps the
    # token ids as attributes). Passed as a dict, they are not held against the field list.
    text_extra: dict[str, Any] = {"global_head_dim": sizes["head_dim"]}
    outer_extra: dict[str, Any] = {"pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": BOS}
    text = DiffusionGemmaTextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        # All layers global with full-width RoPE: at a 1k context a sliding window saves nothing, and the 26B's
        # partial (25%) rotary at theta 1e6 is tuned for 128k contexts, not for a tiny model's 1k.
        layer_types=["full_attention"] * layers,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        sliding_window=max_positions,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
        **text_extra,
        **sizes,
    )
    # A vision tower is mandatory in the config; a 1-layer 16-wide one keeps it out of the way (~20 k params).
    vision = Gemma4VisionConfig(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=16,
    )
    return DiffusionGemmaConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), canvas_length=canvas_length, **outer_extra
    )
