"""Model configurations: the released 26B-A4B architecture and a tiny one for tests and smoke benchmarks.

`diffusiongemma-26B-A4B.json` is reconstructed from public sources (see `diffusiongemma-26B-A4B.md` next to it);
it is used to build the architecture on the `meta` device (footprint projection) or with random weights (GPU bench).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import DiffusionGemmaConfig

CONFIG_DIR = Path(__file__).parent
DG_26B_A4B = CONFIG_DIR / "diffusiongemma-26B-A4B.json"


def load_config(path: str | Path = DG_26B_A4B) -> DiffusionGemmaConfig:
    return DiffusionGemmaConfig(**json.loads(Path(path).read_text()))


def tiny_config(vocab_size: int = 256, canvas_length: int = 16) -> DiffusionGemmaConfig:
    """2 layers (one sliding, one full), 4 experts top-2: the same code paths as 26B-A4B, in ~0.1 M parameters.

    The vision config must be tiny too: left to its defaults, Gemma4VisionConfig builds a 167 M-param tower.
    """
    text = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=16,
        num_global_key_value_heads=1,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=32,
        max_position_embeddings=2048,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"],
        use_bidirectional_attention="vision",
    )
    vision = dict(
        model_type="gemma4_vision",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        max_position_embeddings=128,
        position_embedding_size=64,
        patch_size=4,
        pooling_kernel_size=1,
    )
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length)
