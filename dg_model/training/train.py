"""Train the embedded DiffusionGemma code model:
`python -m dg_model.training.train --corpus DIR --tokenizer DIR --out DIR`.

Two objectives over the same FIM examples (`--objective`):
- `block` (default): block diffusion over the whole row, prompt + canvas region (`blockdiff.py`): every position
  is denoised by the decoder against the clean context before its block, and predicted by the causal encoder,
  in one vectorised step (a clean and a noised pass). The denoiser gets ~25x the supervised tokens of `canvas`.
- `canvas` (the first recipe): one step supervises every token it pays for, but the decoder sees one canvas:
- the causal encoder reads the FIM prompt into the KV cache, and its states predict each next prompt token;
- the bidirectional decoder denoises the canvas (uniform-state noise at rate t ~ U(eps, 1), optional
  self-conditioning from a first no-grad pass), cross-entropy on the clean canvas, pad down-weighted;
- the encoder then continues over the clean canvas (the middle), so the same weights also decode the middle
  autoregressively: the honest AR baseline of the same checkpoint.
The learning rate follows a cosine over the wall-clock budget (`--minutes`), so a run ends on time wherever it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_model.architecture import SIZES, build_config
from dg_model.forward import softcap, with_cache
from dg_model.sampler import FIRST_NOISE_ID
from dg_model.special_tokens import PAD
from dg_model.training import blockdiff
from dg_model.training.corpus import read_jsonl
from dg_model.training.fim_examples import (
    canvas_target,
    documented_bodies,
    example_ids,
    far_snippet,
    sample_fim,
)
from dg_model.training.grow import grow, width


@dataclass
class TrainConfig:
    corpus: str  # DIR, or DIR,DIR,... mixed by --corpus-shares (validation: the first one's held-out files)
    tokenizer: str
    out: str
    size: str = "embedded"  # architecture.SIZES: tiny | embedded | medium (ignored with --resume)
    prompt_tokens: int = 512
    canvas: int = 64
    batch: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    minutes: float = 20.0
    max_steps: int = 10**9
    ckpt_minutes: float = 5.0
    eval_every: int = 250
    self_cond_prob: float = 0.5
    pad_weight: float = 0.1
    ar_weight: float = 1.0
    noise_eps: float = 0.02
    snippet_prob: float = 0.2
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # bf16 autocast: on CUDA, and on a CPU with AMX (auto); on | off
    corpus_shares: str = ""  # share of examples drawn from each --corpus DIR, e.g. "0.5,0.5"; default: equal
    resume: str | None = None
    objective: str = "block"  # block | canvas (see the module docstring)
    canvases: str = "16,24,32,64"  # block objective: canvas-region block sizes, one drawn per row
    prompt_weight: float = 0.5  # block objective: denoising weight of prompt blocks (canvas region: 1)
    full_noise_prob: float = 0.0  # block objective: share of blocks noised completely (a draft's starting state)
    distill: float = 0.0  # block objective: share of the encoder's own distribution in the denoiser's targets
    long_at_indent: float = 0.0  # share of cuts at a line's indentation taking 4-12 lines (fim_examples.sample_fim)
    body_cuts: float = 0.0  # share of cuts inside documented functions' bodies (fim_examples.documented_bodies)
    compile: bool = True  # block objective: layers and LM-head loss through torch.compile (bench_train.json)
    grow: int = 0  # widen the --resume model to this hidden size first, computing the same (grow.py); 0: as it is


class FimBatches(torch.utils.data.IterableDataset):
    """Endless collated batches: block rows (`blockdiff.collate_rows`) for the block objective, else (prompt,
    prompt_mask, canvas) with prompts left-padded to the batch's longest."""

    def __init__(
        self,
        corpora: list[list[str]],
        tokenizer_path: str,
        cfg: TrainConfig,
        seed: int,
        shares: list[float] | None = None,
    ):
        self.corpora, self.tokenizer_path, self.cfg, self.seed = corpora, tokenizer_path, cfg, seed
        self.shares = shares or [1.0] * len(corpora)
        # within a corpus, files by length (capped): one huge file does not dominate
        self.weights = [[min(len(t), 20_000) for t in texts] for texts in corpora]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        tok = Tokenizer.from_file(os.path.join(self.tokenizer_path, "tokenizer.json"))

        def encode(s: str) -> list[int]:
            return tok.encode(s, add_special_tokens=False).ids

        if self.cfg.objective == "block":
            layout = block_layout(self.cfg)
            canvas = max(layout.canvases)
            examples = self._examples(rng, encode, canvas)
            # compiled layers want one row width, or they recompile per width
            width = self.cfg.prompt_tokens + max(layout.middle_tokens, canvas) if self.cfg.compile else 0
            while True:
                rows = [blockdiff.block_row(*next(examples), layout, rng) for _ in range(self.cfg.batch)]
                yield blockdiff.collate_rows(rows, width)
        canvas = self.cfg.canvas
        examples = self._examples(rng, encode, canvas)
        while True:
            yield collate(
                [
                    (prompt, canvas_target(middle, canvas))
                    for prompt, middle in itertools.islice(examples, self.cfg.batch)
                ]
            )

    def _examples(
        self, rng: random.Random, encode: Callable[[str], list[int]], canvas: int
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Endless (prompt ids, middle ids) cut from the corpora."""
        bodies: dict[tuple[int, int], dict[int, int]] = {}  # each file parsed once per worker
        while True:
            k = rng.choices(range(len(self.corpora)), self.shares)[0]
            j = rng.choices(range(len(self.corpora[k])), self.weights[k])[0]
            text = self.corpora[k][j]
            lines_from = None
            if rng.random() < self.cfg.body_cuts:
                if (k, j) not in bodies:
                    bodies[k, j] = documented_bodies(text)
                lines_from = bodies[k, j]
            pieces = sample_fim(text, rng, self.cfg.long_at_indent, lines_from)
            if pieces is None:
                continue
            snips = []
            if rng.random() < self.cfg.snippet_prob and (s := far_snippet(text, pieces, rng)):
                snips.append(s)
            yield example_ids(encode, pieces, rng, self.cfg.prompt_tokens, canvas, snips)


def block_layout(cfg: TrainConfig) -> blockdiff.BlockLayout:
    return blockdiff.BlockLayout(
        canvases=tuple(int(c) for c in cfg.canvases.split(",")),
        prompt_weight=cfg.prompt_weight,
        pad_weight=cfg.pad_weight,
    )


def step_losses(model, batch, cfg: TrainConfig, evaluation: bool = False) -> dict[str, torch.Tensor]:
    """The objective's losses on one batch; `evaluation`: noise rate 0.5 everywhere (and 1, reported as `draft_*`;
    `loss` stays the rate-0.5 one, so best checkpoints compare across runs), no self-conditioning draw."""
    if cfg.objective == "block":
        t = torch.full(batch["ids"].shape, 0.5, device=batch["ids"].device) if evaluation else None
        self_cond = not evaluation and random.random() < cfg.self_cond_prob
        out = blockdiff.losses(
            model,
            batch,
            self_cond=self_cond,
            noise_eps=cfg.noise_eps,
            t=t,
            ar_weight=cfg.ar_weight,
            compiled=cfg.compile,
            full_noise=cfg.full_noise_prob,
            distill=0.0 if evaluation else cfg.distill,
            agree=evaluation,
        )  # held-out losses: hard targets
        if evaluation:  # also from pure noise: what a draft (and diffusion's first step) sees
            full = torch.ones(batch["ids"].shape, device=batch["ids"].device)
            draft = blockdiff.losses(model, batch, self_cond=False, t=full, compiled=cfg.compile, agree=True)
            out["draft_diffusion"], out["draft_acc"] = draft["diffusion"], draft["canvas_acc"]
            out["draft_agree"] = draft["canvas_agree"]  # what the hybrid's verifier would accept, token by token
        return out
    prompt, mask, canvas = batch
    t = torch.full((canvas.shape[0], 1), 0.5, device=canvas.device) if evaluation else None
    out = losses(model, prompt, mask, canvas, cfg, t=t)
    out["denoised_tokens"] = (canvas != PAD).sum()  # pad is supervised too, at a tenth
    out["ar_tokens"] = mask.sum() + (canvas != PAD).sum()
    return out


def batch_tokens(batch, cfg: TrainConfig) -> int:
    """Token positions one step runs through the model (clean + noised rows, or prompt + canvas + middle)."""
    if cfg.objective == "block":
        return 2 * int(batch["real"].sum())
    prompt, mask, canvas = batch
    return int(mask.sum()) + canvas.numel() * 2


def to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return tuple(x.to(device) for x in batch)


def collate(rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(p) for p, _ in rows)
    prompt = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, _) in enumerate(rows):
        prompt[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    canvas = torch.tensor([c for _, c in rows], dtype=torch.long)
    return prompt, mask, canvas


def losses(model, prompt, mask, canvas, cfg: TrainConfig, t: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    B, C = canvas.shape
    text_cfg = model.config.text_config
    cap = text_cfg.final_logit_softcapping
    lm_head = model.lm_head
    lens = mask.sum(-1)
    cache = DynamicCache(config=text_cfg)
    # prompt [B, P] -> encoder states [B, P, H]; the cache now holds the prompt for the decoder
    enc = model.model.encoder(
        **with_cache(cache, input_ids=prompt, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    )
    h_prompt = enc.last_hidden_state

    # Diffusion on the canvas: uniform-state noise at rate t
    if t is None:
        t = torch.rand(B, 1, device=canvas.device) * (1 - cfg.noise_eps) + cfg.noise_eps
    noise = torch.randint(FIRST_NOISE_ID, text_cfg.vocab_size, canvas.shape, device=canvas.device)
    noised = torch.where(torch.rand(canvas.shape, device=canvas.device) < t, noise, canvas)
    dec_kwargs = with_cache(
        cache,
        decoder_input_ids=noised,
        decoder_attention_mask=torch.cat([mask, torch.ones_like(canvas)], 1),
        decoder_position_ids=lens[:, None] + torch.arange(C, device=canvas.device),
    )
    sc_logits = sc_mask = None
    if cfg.self_cond_prob > 0:
        with torch.no_grad():
            sc_logits = softcap(lm_head(model.model.decoder(**dec_kwargs).last_hidden_state), cap)
        sc_mask = torch.rand(B, device=canvas.device) < cfg.self_cond_prob
    h_canvas = model.model.decoder(
        **dec_kwargs, self_conditioning_logits=sc_logits, self_conditioning_mask=sc_mask
    ).last_hidden_state
    logits = softcap(lm_head(h_canvas), cap)
    weight = torch.where(canvas == PAD, cfg.pad_weight, 1.0)
    ce = F.cross_entropy(logits.flatten(0, 1), canvas.flatten(), reduction="none").view(B, C)
    diffusion = (ce * weight).sum() / weight.sum()
    canvas_acc = ((logits.argmax(-1) == canvas).float() * (canvas != PAD)).sum() / (canvas != PAD).sum()

    # Causal LM over prompt + clean middle, through the same (encoder) weights
    middle_mask = (canvas != PAD).long()
    enc2 = model.model.encoder(
        **with_cache(
            cache,
            input_ids=canvas,
            attention_mask=torch.cat([mask, middle_mask], 1),
            position_ids=lens[:, None] + torch.arange(C, device=canvas.device),
        )
    )
    h = torch.cat([h_prompt, enc2.last_hidden_state], 1)[:, :-1]
    tokens = torch.cat([prompt, canvas], 1)
    valid = torch.cat([mask, middle_mask], 1).bool()
    pairs = valid[:, :-1] & valid[:, 1:]
    ar = F.cross_entropy(softcap(lm_head(h[pairs]), cap), tokens[:, 1:][pairs])
    return {"loss": diffusion + cfg.ar_weight * ar, "diffusion": diffusion, "ar": ar, "canvas_acc": canvas_acc}


def loss_definition(cfg: TrainConfig) -> str:
    """What the validation loss means: a best checkpoint is only better than another under the same definition."""
    return f"{cfg.objective} ar_weight={cfg.ar_weight} pad_weight={cfg.pad_weight}" + (
        f" prompt_weight={cfg.prompt_weight}" if cfg.objective == "block" else ""
    )


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


@torch.no_grad()
def evaluate(model, batches, cfg: TrainConfig, autocast) -> dict[str, float]:
    model.eval()
    totals: dict[str, float] = {}
    for batch in batches:
        with autocast():
            out = step_losses(model, batch, cfg, evaluation=True)
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v) / len(batches)
    model.train()
    return totals


def save_checkpoint(model, optimizer, cfg: TrainConfig, state: dict, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "state": state}, path / "trainer.pt")
    (path / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    (path / "train_state.json").write_text(json.dumps(state, indent=1))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def use_bf16(amp: str, device: torch.device) -> bool:
    """bf16 autocast where bf16 matmuls are native. On a CPU with AMX (Sapphire Rapids and later) a training step of
    the embedded model ran 1.4x faster than float32 (5.0 vs 7.0 s for 16 examples, 2 threads); a CPU without it
    emulates bf16 at a fraction of float32 speed, so `auto` stays in float32 there."""
    if amp not in ("auto", "on", "off"):
        raise SystemExit(f"--amp {amp}: choose auto, on or off")
    if amp != "auto":
        return amp == "on"
    if device.type != "cpu":
        return device.type == "cuda"
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _flag(value: str) -> bool:
    if value.lower() not in ("on", "off", "true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"{value!r}: use on or off")
    return value.lower() in ("on", "true", "1")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in TrainConfig.__dataclass_fields__.items():
        required = field.default is dataclasses.MISSING
        kind: Callable[[str], Any] = str if required or field.default is None else type(field.default)
        if kind is bool:
            kind = _flag
        ap.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None if required else field.default, required=required
        )
    cfg = TrainConfig(**vars(ap.parse_args(argv)))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer.from_file(os.path.join(cfg.tokenizer, "tokenizer.json"))
    grown = False
    if cfg.resume:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(cfg.resume, dtype=torch.float32)
        if cfg.grow > (wide := width(model)):  # (a continuation of a grown run is already this wide: nothing to do)
            model, grown = grow(model, cfg.grow, seed=cfg.seed), True
        elif 0 < cfg.grow < wide:
            raise SystemExit(f"--grow {cfg.grow}: the model is {wide} wide already; widths only grow")
    elif cfg.grow:
        raise SystemExit("--grow widens a trained model: give it --resume")
    else:
        if cfg.size not in SIZES:
            raise SystemExit(f"--size {cfg.size}: choose one of {', '.join(SIZES)} (dg_model/architecture.py)")
        model = DiffusionGemmaForBlockDiffusion(build_config(tok.get_vocab_size(), cfg.canvas, **SIZES[cfg.size]))
    torch.nn.Module.to(model, device).train()  # not model.to: transformers' wrapper of it is typed without `self`
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    state: dict[str, Any] = {"step": 0, "tokens": 0, "minutes": 0.0, "best_val": float("inf")}
    if cfg.objective not in ("block", "canvas"):
        raise SystemExit(f"--objective {cfg.objective}: choose block or canvas")
    if cfg.resume and not grown and (Path(cfg.resume) / "trainer.pt").exists():  # (grown: new shapes, new moments)
        saved = torch.load(Path(cfg.resume) / "trainer.pt", map_location=device)
        optimizer.load_state_dict(saved["optimizer"])
        state.update(saved["state"])
        state["step_at_resume"] = state["step"]
        if state.get("loss_definition") != loss_definition(cfg):  # losses defined otherwise do not compare
            state["best_val"] = float("inf")
    state["loss_definition"] = loss_definition(cfg)

    bf16 = use_bf16(cfg.amp, device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    dirs = [Path(d) for d in cfg.corpus.split(",")]
    shares = [float(x) for x in cfg.corpus_shares.split(",")] if cfg.corpus_shares else None
    if shares is not None and len(shares) != len(dirs):
        raise SystemExit(f"--corpus-shares names {len(shares)} shares for {len(dirs)} corpora")
    train_texts = [read_jsonl(d / "train.jsonl") for d in dirs]
    valid_texts = read_jsonl(dirs[0] / "valid.jsonl")
    batches = FimBatches(train_texts, cfg.tokenizer, cfg, cfg.seed, shares)
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        num_workers=cfg.workers,
        prefetch_factor=4 if cfg.workers else None,
        persistent_workers=cfg.workers > 0,
    )
    val_iter = iter(FimBatches([valid_texts], cfg.tokenizer, cfg, seed=12345))
    val_batches = [to_device(next(val_iter), device) for _ in range(4)]
    print(
        json.dumps(
            {
                "params": n_params,
                "device": str(device),
                "bf16": bf16,
                "train_files": [len(t) for t in train_texts],
                "valid_files": len(valid_texts),
                "config": asdict(cfg),
            }
        ),
        flush=True,
    )

    start = time.time()
    last_ckpt = start
    step_at_start = state["step"]
    tokens_window, t_window = 0, time.time()
    for batch in loader:
        elapsed = (time.time() - start) / 60
        if elapsed >= cfg.minutes or state["step"] - step_at_start >= cfg.max_steps:
            break
        batch = to_device(batch, device)
        lr = lr_at(cfg, state["step"] - step_at_start, elapsed / cfg.minutes)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast():
            res = step_losses(model, batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        res["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state["step"] += 1
        n_tok = batch_tokens(batch, cfg)
        state["tokens"] += n_tok
        tokens_window += n_tok
        if state["step"] % 50 == 0:
            rate = tokens_window / (time.time() - t_window)
            tokens_window, t_window = 0, time.time()
            print(
                json.dumps(
                    {
                        "step": state["step"],
                        "min": round(elapsed, 2),
                        "lr": round(lr, 6),
                        "loss": round(float(res["loss"]), 4),
                        "diff": round(float(res["diffusion"]), 4),
                        "ar": round(float(res["ar"]), 4),
                        "acc": round(float(res["canvas_acc"]), 3),
                        "gnorm": round(float(grad_norm), 3),
                        "tok_s": int(rate),
                        "denoised": int(res["denoised_tokens"]),
                    }
                ),
                flush=True,
            )
        if state["step"] % cfg.eval_every == 0:
            val = evaluate(model, val_batches, cfg, autocast)
            print(json.dumps({"step": state["step"], "val": {k: round(v, 4) for k, v in val.items()}}), flush=True)
            if val["loss"] < state["best_val"]:
                state["best_val"] = val["loss"]
                state["best_step"] = state["step"]
                save_checkpoint(model, optimizer, cfg, state, out / "best")  # what to export when a run ends badly
                print(json.dumps({"checkpoint": str(out / "best"), "step": state["step"]}), flush=True)
        if time.time() - last_ckpt > cfg.ckpt_minutes * 60:
            state["minutes"] += (time.time() - last_ckpt) / 60
            last_ckpt = time.time()
            save_checkpoint(model, optimizer, cfg, state, out / "last")
            print(json.dumps({"checkpoint": str(out / "last"), "step": state["step"]}), flush=True)
    state["minutes"] += (time.time() - last_ckpt) / 60
    val = evaluate(model, val_batches, cfg, autocast)
    state["final_val"] = val
    save_checkpoint(model, optimizer, cfg, state, out / "last")
    print(json.dumps({"done": True, "step": state["step"], "tokens": state["tokens"], "val": val}), flush=True)


if __name__ == "__main__":
    main()
