"""Load a DiffusionGemma checkpoint: the embedded model, a local directory or a Hugging Face hub id.

Offline by default: nothing is downloaded unless `DG_LSP_ALLOW_DOWNLOAD=1`, and `HF_HUB_OFFLINE=1` wins over that.
Remote code is never run (`trust_remote_code=False`): DiffusionGemma is native in transformers >= 5.23.
A user-fixable problem (missing weights, not a DiffusionGemma, k-bit without CUDA) raises `EngineError` with one
message that says what to do.

Device and dtype: CUDA -> bfloat16; CPU -> float32, because bf16 matmuls are ~100x slower on CPUs without bf16
units (measured here). `quantize="4bit"|"8bit"` loads to CPU memory first, then quantizes experts (per-expert
NF4/int8, see `dg_model.quantize`) and dense linears (bnb) onto the GPU layer by layer, so the GPU never holds the
bf16 model (~52 GB for 26B-A4B); 4-bit ends near 16 GB.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch

from dg_model.api import EngineError

EMBEDDED_DIR = Path(__file__).parent / "embedded"
RELEASED = "google/diffusiongemma-26B-A4B-it"
QUANTIZE = {"none": 16, "4bit": 4, "8bit": 8}


# ------------------------------------------------------------------------------------------------------- policies
def downloads_allowed() -> bool:
    """DG_LSP_ALLOW_DOWNLOAD=1 opts in; HF_HUB_OFFLINE=1 (the hub's own switch) always wins."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    return not offline and os.environ.get("DG_LSP_ALLOW_DOWNLOAD", "0") == "1"


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"--device {device}: CUDA is not available here. Use --device cpu (or auto).")
    return dev


def pick_dtype(device: torch.device, dtype: torch.dtype | str | None = None) -> torch.dtype:
    chosen: torch.dtype | None = getattr(torch, dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype
    return chosen or (torch.bfloat16 if device.type == "cuda" else torch.float32)


# ---------------------------------------------------------------------------------------------------- resolution
def is_hub_id(source: str) -> bool:
    """ "owner/name" or a legacy bare "name" that is not an existing path and does not look like one."""
    return not Path(source).expanduser().exists() and re.fullmatch(r"[\w-][\w.-]*(/[\w.-]+)?", source) is not None


def _missing(source: str | None) -> EngineError:
    if source is None:
        return EngineError(
            f"The embedded model is missing ({EMBEDDED_DIR}). Reinstall dg-lsp, or download "
            f"DiffusionGemma with `huggingface-cli download {RELEASED}` and start with --model PATH."
        )
    if not is_hub_id(source):
        return EngineError(
            f"No DiffusionGemma weights in {source}. Download them with `huggingface-cli download "
            f"{RELEASED} --local-dir {source}` and start with --model {source}."
        )
    return EngineError(
        f"{source} is not in the local Hugging Face cache and downloads are off. Download it with "
        f"`huggingface-cli download {source}` (or set DG_LSP_ALLOW_DOWNLOAD=1), then start with "
        f"--model {source} or --model PATH."
    )


def resolve(source: str | None) -> tuple[str, bool]:
    """-> (what to pass to from_pretrained, local_files_only). Local directories must hold a config and weights."""
    if source is not None and is_hub_id(source):
        return source, not downloads_allowed()
    path = EMBEDDED_DIR if source is None else Path(source).expanduser()
    has_weights = path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))
    if not (path / "config.json").is_file() or not has_weights:
        raise _missing(source)
    return str(path), True


# ------------------------------------------------------------------------------------------------------- loading
def _load_parts(name: str, local_only: bool, source: str | None, dtype: torch.dtype, device_map):
    from transformers import AutoConfig, AutoTokenizer, DiffusionGemmaForBlockDiffusion
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()  # its "Loading weights" bar goes to stderr, which editors log as [ERROR] lines

    kw = dict(local_files_only=local_only, trust_remote_code=False)
    try:
        config = AutoConfig.from_pretrained(name, **kw)
    except (OSError, ValueError) as e:
        raise _missing(source) from e
    if config.model_type != "diffusion_gemma":
        raise EngineError(
            f"{name} is a {config.model_type!r} checkpoint, not DiffusionGemma (model_type "
            f"'diffusion_gemma'). Point --model at a DiffusionGemma checkpoint such as {RELEASED}."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kw)
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(
            name, config=config, dtype=dtype, device_map=device_map, local_files_only=local_only
        )
    except OSError as e:
        raise _missing(source) from e
    return model, tokenizer


def _check_quantize(quantize: str, device: torch.device, allow_cpu: bool) -> int:
    if quantize not in QUANTIZE:
        raise EngineError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE)}.")
    bits = QUANTIZE[quantize]
    if bits != 16 and device.type != "cuda" and not allow_cpu:
        raise EngineError(
            f"--quantize {quantize} needs a CUDA GPU (bitsandbytes k-bit kernels); none is in use "
            f"here. Drop --quantize to run in float32 on the CPU."
        )
    if bits != 16:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise EngineError(f"--quantize {quantize} needs bitsandbytes: pip install 'dg-lsp[cuda]'.") from e
    return bits


def load_model(
    source: str | None = None,
    device: str = "auto",
    quantize: str = "none",
    dtype: torch.dtype | str | None = None,
    allow_cpu: bool = False,
):
    """-> (model, tokenizer, generation_config). `source` None is the embedded model. `allow_cpu` lets tests
    quantize on the CPU (slow, and bnb's CPU kernels are for testing, not serving)."""
    dev = pick_device(device)
    bits = _check_quantize(quantize, dev, allow_cpu)
    dtype = pick_dtype(dev, dtype)
    name, local_only = resolve(source)
    # k-bit: load to CPU memory and quantize onto the device; otherwise straight onto the GPU where accelerate
    # (needed by transformers for device_map) is installed, else via CPU memory
    direct = bits == 16 and dev.type == "cuda" and importlib.util.find_spec("accelerate") is not None
    model, tokenizer = _load_parts(name, local_only, source, dtype, {"": str(dev)} if direct else None)
    if bits == 16:
        model.to(dev)
    else:
        from dg_model.quantize import quantize_dense, quantize_experts

        quantize_experts(model, bits, device=dev)
        quantize_dense(model, bits, dev)
        model.to(dev)  # what is left: embeddings, norms, routers, vision tower, buffers
    return model.eval(), tokenizer, model.generation_config


def load_engine(source: str | None = None, device: str = "auto", quantize: str = "none", mode: str = "auto"):
    """The `Engine` the server uses: `load_model` plus the model's tuned engine settings."""
    from dg_model.engine import DiffusionEngine, EngineSettings

    model, tokenizer, _ = load_model(source, device, quantize)
    if next(model.parameters()).device.type == "cpu":
        # Half the cores by default: the editor needs the rest, and measured here with 2 cores under load, two
        # spinning OpenMP threads made diffusion steps 20-50x slower while one thread stayed steady.
        torch.set_num_threads(int(os.environ.get("DG_LSP_THREADS", 0)) or max(1, (os.cpu_count() or 2) // 2))
    local = EMBEDDED_DIR if source is None else Path(source).expanduser()
    settings = EngineSettings.from_model_dir(local if local.is_dir() else None)
    name = "dg-embedded" if source is None else (local.name if local.is_dir() else source)
    return DiffusionEngine(model, tokenizer, settings, name=name, mode=mode)
