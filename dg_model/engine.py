"""`DiffusionEngine`: the `Engine` protocol on a DiffusionGemma checkpoint.

    job -> prompt ids (prompts.py) -> per-document KV cache, reused over the common prefix -> the middle decoded
    (decoders.py: canvases denoised block by block by sampler.py, AR, or hybrid) -> text up to EOS -> JobResult

The same object also decodes autoregressively through the causal encoder (`"ar"`): same weights, same prompt, same
cache, the honest baseline for diffusion-vs-AR comparisons, and the better choice for some models and job kinds
(`EngineSettings.decoding`, which a job's `decoding` or the engine's `mode` override).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from dg_model import decoders, rescore, rewrite_spans
from dg_model.api import (
    DECODINGS,
    BlockScore,
    Cancelled,
    Candidate,
    EngineError,
    EngineOutOfMemory,
    InfillJob,
    JobResult,
    JobStats,
    RewriteJob,
    ScoreJob,
)
from dg_model.decoders import mean
from dg_model.fim import fim_ids
from dg_model.forward import make_forward
from dg_model.prompt_cache import Encoded, PromptCaches
from dg_model.prompts import Prompt, build_prompt, choose_format, clean_answer
from dg_model.sampler import SamplerConfig, noise_like
from dg_model.scoring import score_blocks
from dg_model.stops import block_end, cursor_indent

MODES = DECODINGS  # "auto" first: a job or a forced mode may say "auto", dg_engine.json picks among MODES[1:]


@dataclass(frozen=True)
class EngineSettings:
    """Tuned per model in `dg_engine.json` next to its weights (keys as below; transformers' generation config
    rejects keys it does not know, so ours live in their own file)."""

    prompt_format: str | None = None  # None: FIM tokens if the tokenizer has them, else chat, else pinned-suffix
    prompt_tokens: int = 512  # the embedded model's training length; RoPE does not extrapolate far
    line_canvas: int = 24
    block_canvas: int = 64
    pinned_suffix_tokens: int = 8
    cached_documents: int = 4
    # forward.FORWARDS: the lean path where it can run the model (its stacks in ONNX Runtime on a CPU), else
    # transformers' modules
    forward: str = "auto"
    # Decoding per job kind when neither the job nor the engine names one. Diffusion unless a model's measurements say
    # otherwise: the embedded model's decoder is a weaker predictor than its causal encoder (model card).
    decoding: dict[str, str] = field(default_factory=lambda: {"line": "diffusion", "block": "diffusion"})
    # Beam width of AR decoding (at least the job's `n`): 1 is greedy; wider returns more candidates for the editor
    # to rank by syntax, at the cost of a batched forward per token.
    ar_beam: int = 1
    # Hybrid decoding (speculative.py): the decoder drafts `draft_canvas` slots in `draft_steps` denoising steps, the
    # encoder keeps the prefix it agrees with. The text is greedy AR's; the canvas size trades draft cost for reach.
    draft_canvas: int = 16
    draft_steps: int = 1  # 0: no denoising, the draft is the lookup's continuation alone (a baseline for the decoder)
    # Start each draft from the context's continuation of its last tokens (speculative.lookup) where there is one.
    draft_lookup: bool = False
    # The beam's width for an invoked job (`InfillJob.invoked`); 0: `ar_beam`.
    invoked_beam: int = 0
    # [k, margin] or [k, margin, lone]: an invoked job's beam stops once k candidates are complete and every one
    # still going is `margin` nats less likely than the k-th, or (lone) once fewer are and every one still going is
    # `lone` nats less likely than the best complete (beam.py); empty: it runs until `width` are complete. Typing's
    # beam of a few always runs until they are complete (the [3, 4] of sessions 13-20 could not cut a beam of 3).
    beam_prune: list[float] = field(default_factory=list)
    # Re-rank an invoked job's candidates by the likelihood of each followed by the suffix's next line (rescore.py):
    # one more prompt (the suffix without that line, cached per document like the first) and one batched forward.
    next_line_rescore: bool = False
    # Decoder forwards that write a rewrite's doubted words after its in-place reading: 1 writes every slot at once,
    # 2 reads each word again behind its chosen first token.
    rewrite_steps: int = 1
    sampler: SamplerConfig = SamplerConfig()

    @classmethod
    def from_model_dir(cls, path: Path | None) -> EngineSettings:
        raw = {}
        if path is not None and (path / "dg_engine.json").exists():
            raw = json.loads((path / "dg_engine.json").read_text())
        known_sampler = SamplerConfig.__dataclass_fields__
        sampler = SamplerConfig(**{k: v for k, v in raw.pop("sampler", {}).items() if k in known_sampler})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known and k != "sampler"}, sampler=sampler)


def _out_of_memory_typed(method):
    """Out of memory leaves a job as `EngineOutOfMemory`, whichever way it was raised: torch's OutOfMemoryError, a
    kernel library's own class of that name or its "out of memory" RuntimeError, or a host MemoryError."""

    @functools.wraps(method)
    def typed(self, job):
        try:
            return method(self, job)
        except Exception as exc:  # re-raised unchanged unless it is out of memory
            if not (
                isinstance(exc, (torch.OutOfMemoryError, MemoryError))
                or type(exc).__name__ == "OutOfMemoryError"
                or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())
            ):
                raise
            raise EngineOutOfMemory(f"{type(exc).__name__}: {exc}", _empty_cuda_cache) from exc

    return typed


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def _empty_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prompt_format_ids(tokenizer) -> set[int]:
    """Tokens that frame a prompt and are never text of a middle: a small model sometimes writes <fim_middle> as the
    whole middle. Only these: other special tokens may end a turn (a chat checkpoint's <end_of_turn>)."""
    try:
        ids = fim_ids(tokenizer)
    except ValueError:
        return {i for i in (tokenizer.bos_token_id,) if i is not None}
    return {i for i in (ids.bos, ids.fim_prefix, ids.fim_suffix, ids.fim_middle, ids.file_sep) if i is not None}


def spare_core(device: str) -> bool:
    """Whether the engine has a core of its own beside torch's: where torch runs one thread on a CPU of more. Not a
    second torch thread: it would bring a second OpenMP team as large as the first, into the cores kept for the editor
    (`loading.load_engine`), where spinning teams were measured 3x slower under load (model card, session 19)."""
    return device == "cpu" and torch.get_num_threads() == 1 and (os.cpu_count() or 1) > 1


class DiffusionEngine:
    def __init__(self, model, tokenizer, settings: EngineSettings, name: str, mode: str = "auto"):
        if mode not in MODES or any(m not in MODES[1:] for m in settings.decoding.values()):
            raise EngineError(f"unknown decoding mode {mode!r} or {settings.decoding}; use one of {', '.join(MODES)}")
        self.model, self.tokenizer, self.settings, self.name, self.mode = model, tokenizer, settings, name, mode
        self.device = str(next(model.parameters()).device)
        self.text_config = model.config.text_config
        self.vocab_size = self.text_config.vocab_size
        self.format = choose_format(tokenizer, settings.prompt_format)
        self.eos_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        self._never = torch.tensor(sorted(_prompt_format_ids(tokenizer) - self.eos_ids), dtype=torch.long)
        # ONNX Runtime's products use a spare core while a job reads its prompt (1.79x on a 240-token prompt on the
        # 2-core EPYC); an explicit request's rescoring prompt is read on it while the job decodes, where the forward
        # may be shared by two threads.
        spare = spare_core(self.device)
        self.fwd = make_forward(model, settings.forward, threads=2 if spare else None)
        self.prompts = PromptCaches(self.fwd, self.device, settings.cached_documents)
        self._spare_core = spare and self.fwd.shared_by_threads
        # A one-line job is over once a newline is committed after the first position: what follows is dropped.
        self.newline_ids = tuple(i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.decode([i]))

    # ------------------------------------------------------------------ Engine protocol
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0

    @_out_of_memory_typed
    @torch.inference_mode()
    def infill(self, job: InfillJob) -> JobResult:
        t0 = time.perf_counter()
        prompt = self._infill_prompt(job, job.suffix)
        mode = self.decoding_for(job)
        stats = JobStats(mode=mode, prompt_tokens=len(prompt.ids))
        reader = None
        try:
            cache, last_hidden = self._prompt_cache(job.doc_key, prompt.ids, stats)
            # after the job's prompt, which both cores read where ONNX Runtime has a spare one: the rescoring prompt
            # then takes that core while the job decodes (session 24: explicit single-line requests 1.15x faster than
            # with the two prompts read side by side, each on one core)
            reader = self._reader(job) if job.invoked and self.settings.next_line_rescore else None
            try:
                if mode == "ar":
                    texts, scores = decoders.autoregressive(self, cache, last_hidden, len(prompt.ids), job, stats)
                elif mode == "hybrid":
                    texts, scores = decoders.hybrid(self, cache, last_hidden, prompt.ids, job, stats)
                else:
                    canvas = job.canvas or (
                        self.settings.line_canvas if job.kind == "line" else self.settings.block_canvas
                    )
                    texts, scores = decoders.diffuse(self, cache, canvas, prompt.pinned_tail, job, stats)
            finally:
                self.fwd.trim(cache, len(prompt.ids))
            texts = [self._middle(job, t) for t in texts]
            if reader is not None and len(set(texts)) > 1:
                _check(job.cancel)
                t1 = time.perf_counter()
                texts, scores = reader.ranked(texts)
                stats.rescore_ms = (time.perf_counter() - t1) * 1e3  # what the reading added after decoding
        finally:
            if reader is not None:
                reader.close()  # no thread is left in the model once a job returns, however it ends
        stats.total_ms = (time.perf_counter() - t0) * 1e3
        cands = [Candidate(clean_answer(t, self.format), s) for t, s in zip(texts, scores)]
        return JobResult(_dedupe(cands), stats)

    @_out_of_memory_typed
    @torch.inference_mode()
    def rewrite(self, job: RewriteJob) -> JobResult:
        t0 = time.perf_counter()
        coded = self.tokenizer(job.block, add_special_tokens=False, return_offsets_mapping=True)
        block_ids, offsets = list(coded["input_ids"]), list(coded["offset_mapping"])
        if not block_ids:
            raise EngineError("there is no block to rewrite")
        if len(block_ids) > job.max_tokens:
            raise EngineError(f"the block is {len(block_ids)} tokens; rewrites are limited to {job.max_tokens}")
        prompt = build_prompt(
            self.tokenizer,
            "fim-spm" if self.format.startswith("fim") else self.format,
            job.prefix,
            job.suffix,
            self.settings.prompt_tokens,
        )
        stats = JobStats(mode="diffusion", prompt_tokens=len(prompt.ids))
        cache, _ = self._prompt_cache(job.doc_key, prompt.ids, stats)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        try:
            # Self-correction of what the model doubts, not a fresh block: the decoder reads the block as it is, and
            # the words holding the tokens it finds least likely in place (and those the editor's checks point at)
            # are written afresh, each at the lengths a slip leaves likely, every other token pinned
            # (rewrite_spans.py). A free canvas let the small model collapse a block to `return False`; re-noising
            # single tokens kept the pieces of a misspelt name (`th|r|sh|old`) that no token fits between.
            _check(job.cancel)
            start = torch.tensor([block_ids + [eos]], device=self.device)
            in_place = torch.log_softmax(self.fwd.decoder_logits(start, cache, None)[0, : len(block_ids)].float(), -1)
            in_place = in_place.gather(-1, start[0, : len(block_ids), None]).squeeze(-1)
            spans = rewrite_spans.doubted(job.block, offsets, in_place.cpu(), job.renoise, job.suspects)
            rows = rewrite_spans.variants(spans)
            canvas, free = (t.to(self.device) for t in rewrite_spans.canvases(block_ids, rows, eos, pad))
            canvas[free] = noise_like(canvas[free], self.vocab_size, torch.Generator().manual_seed(job.seed or 0))
            # The first free slot of each row takes its k likeliest tokens, one candidate each; with one more
            # forward (`rewrite_steps` 2) the rest of the word is read again behind that first token. In batches of
            # bounded memory, the job's cancel checked before each.
            k, texts, scores = max(1, job.n), [], []
            stats.steps = stats.decoder_forwards = 1
            for part in rewrite_spans.batches(len(rows), canvas.shape[1], k, self.vocab_size):
                _check(job.cancel)
                tokens, part_scores, forwards = rewrite_spans.write(
                    lambda c, sc: self._rewrite_logits(c, cache, sc),
                    block_ids,
                    rows[part],
                    canvas[part],
                    free[part],
                    k,
                    self.settings.rewrite_steps,
                )
                texts += [self.tokenizer.decode(t) for t in tokens]
                scores += part_scores
                stats.steps += forwards
                stats.decoder_forwards += forwards
                stats.new_tokens += k * sum(v.length for v in rows[part])
        finally:
            self.fwd.trim(cache, len(prompt.ids))
        stats.total_ms = (time.perf_counter() - t0) * 1e3
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        return JobResult(_dedupe([Candidate(texts[i], scores[i]) for i in order if texts[i] != job.block]), stats)

    def _rewrite_logits(
        self, canvas: torch.Tensor, cache: object, self_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The decoder's reading of rewrite canvases, which may not end inside the block."""
        logits = self.text_only(self.fwd.decoder_logits(canvas, self.fwd.expand(cache, len(canvas)), self_cond))
        logits[..., sorted(self.eos_ids)] = -1e4
        return logits

    def text_only(self, scores: torch.Tensor) -> torch.Tensor:
        """Logits or log-probabilities over the vocabulary with the prompt-format tokens ruled out (finite, so the
        sampler's entropies stay numbers)."""
        if len(self._never):
            scores[..., self._never.to(scores.device)] = -1e4
        return scores

    @_out_of_memory_typed
    @torch.inference_mode()
    def score(self, job: ScoreJob) -> list[BlockScore]:
        if not job.blocks:
            return []
        _check(job.cancel)
        prompt = build_prompt(self.tokenizer, self.format, job.prefix, job.suffix, self.settings.prompt_tokens)
        return self._read(self.prompts.encode(job.doc_key, prompt.ids), list(job.blocks), job.detail)

    def _read(self, prompt: Encoded, blocks: list[str], detail: bool) -> list[BlockScore]:
        """`score_blocks` after an encoded prompt (whose cache it leaves holding the prompt alone)."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        return score_blocks(self.tokenizer, self.fwd, prompt.cache, prompt.last_hidden, blocks, eos, pad, detail)

    def _infill_prompt(self, job: InfillJob, suffix: str) -> Prompt:
        """The prompt an infill job decodes after, with `suffix` as the code after the middle."""
        return build_prompt(
            self.tokenizer,
            self.format,
            job.prefix,
            suffix,
            self.settings.prompt_tokens,
            job.context,
            self.settings.pinned_suffix_tokens,
        )

    def _middle(self, job: InfillJob, text: str) -> str:
        """A decoded middle as the job keeps it: a block stops where it has ended (both decoders notice that only
        after the step that wrote past it)."""
        return text[: block_end(text, cursor_indent(job.prefix))] if job.kind == "block" else text

    def _reader(self, job: InfillJob) -> rescore.NextLineReader:
        """The reading that ranks an invoked job's candidates (rescore.py)."""
        head, rest = rescore.split_next_line(job.suffix) or ("", job.suffix)
        # with a head, a second cache per document (while typing on a line the suffix after the next line stays the
        # same), read beside the decoding where a core is spare; without one, the prompt is the job's own, still
        # cached once the job has decoded
        key = job.doc_key and job.doc_key + ("\0rest" if head else "")
        ids = self._infill_prompt(job, rest).ids

        def read(prompt: Encoded, blocks: list[str]) -> list[float]:
            return [s.logprob for s in self._read(prompt, blocks, False)]

        return rescore.NextLineReader(self.prompts, key, ids, head, read, beside=bool(head) and self._spare_core)

    def beam_width(self, job: InfillJob) -> int:
        """AR's beam for `job`: wide enough for its `n` candidates, wider where the model's settings say so."""
        beam = self.settings.invoked_beam if job.invoked and self.settings.invoked_beam else self.settings.ar_beam
        return max(1, job.n, beam)

    def decoding_for(self, job: InfillJob) -> str:
        """The job's own choice, else the engine's, else the model's recommendation for the job's kind."""
        for choice in (job.decoding, self.mode):
            if choice != "auto":
                if choice not in MODES:
                    raise EngineError(f"unknown decoding mode {choice!r}; use one of {', '.join(MODES)}")
                return choice
        return self.settings.decoding.get(job.kind, "diffusion")

    # ------------------------------------------------------------------ prompt cache
    def _prompt_cache(self, key: str, ids: list[int], stats: JobStats):
        """Cache holding `ids`, re-encoding only what differs from this document's last prompt (prompt_cache.py), and
        the final encoder state of the last prompt token (the AR mode's first prediction)."""
        encoded = self.prompts.encode(key, ids)
        stats.encode_ms, stats.reused_tokens = encoded.ms, encoded.reused
        return encoded.cache, encoded.last_hidden

    # ------------------------------------------------------------------ canvas rows (here and in decoders.py)
    def _texts(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> tuple[list[str], list[float]]:
        texts, scores = [], []
        for row, lp in zip(tokens.tolist(), logprobs.tolist()):
            cut = self.eos_at(row)
            cut = len(row) if cut is None else cut
            texts.append(self.tokenizer.decode(row[:cut]))
            scores.append(mean(lp[: cut + 1]))
        return texts, scores

    def eos_at(self, row: list[int], default: int | None = None) -> int | None:
        """Index of the first EOS/pad in a canvas row: where the middle ends."""
        return next((j for j, t in enumerate(row) if t in self.eos_ids), default)

    def greedy_rows(self, n: int) -> torch.Tensor | None:
        if n == 1:
            return None
        rows = torch.zeros(n, dtype=torch.bool, device=self.device)
        rows[0] = True
        return rows

    def drafts(self, on_draft, prefix: list[int] | None = None):
        if on_draft is None:
            return None

        def emit(argmax: torch.Tensor) -> None:
            row = argmax[0].tolist()
            cut = self.eos_at(row, default=len(row))
            on_draft(self.tokenizer.decode((prefix or []) + row[:cut]))

        return emit


def _dedupe(cands: list[Candidate]) -> list[Candidate]:
    """Distinct texts: the first candidate (greedy, the best beam, or the best re-read), then the others by score,
    empty ones last."""
    seen: set[str] = set()
    out = []
    for c in [cands[0]] + sorted(cands[1:], key=lambda c: (not c.text.strip(), -c.score)) if cands else []:
        if c.text not in seen:
            seen.add(c.text)
            out.append(c)
    return out
