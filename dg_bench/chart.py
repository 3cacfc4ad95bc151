"""PNG charts of the benchmark results (matplotlib, headless). One function per benchmark: `result dict -> PNG`.

matplotlib is optional (`pip install 'dg-lsp[bench]'`); without it the JSON is still written and the chart skipped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _plt():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


Chart = Callable[[dict[str, Any], Path], bool]  # (result, path) -> whether the PNG was written


def _chart(draw: Callable[[Any, dict[str, Any]], Any]) -> Chart:
    """A chart function from `draw(plt, result) -> figure`: the figure saved to the path, or without matplotlib a
    note that there is no chart."""

    @functools.wraps(draw)
    def chart(r: dict[str, Any], path: Path) -> bool:
        plt = _plt()
        if plt is None:
            print(f"matplotlib is not installed; no chart at {path} (pip install matplotlib)")
            return False
        fig = draw(plt, r)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True

    return chart


def _side_by_side(ax, groups: list[str], series: list[tuple[str, list[float], str | None]], width: float = 0.38):
    """One bar per series in each group, next to each other; series = (label, values per group, colour or None)."""
    for j, (label, values, color) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, values, width, label=label, color=color)
    ax.set_xticks(range(len(groups)), groups)


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else 0.0


@_chart
def latency(plt, r: dict[str, Any]) -> Any:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    pauses = [s for s in r["samples"] if s["pause"] and s["latency_ms"] is not None]
    xs = [s["sent"] for s in pauses]
    colors = ["tab:green" if s["outcome"] == "items" else "tab:gray" for s in pauses]
    ax1.scatter(xs, [s["latency_ms"] for s in pauses], c=colors, s=12)
    for key, style in (("p50", "--"), ("p95", ":")):
        v = r["time_to_result_ms"][key]
        if v is not None and math.isfinite(_num(v)) and v:
            ax1.axhline(v, linestyle=style, color="tab:blue", label=f"{key} {v:.0f} ms (with items)")
    ax1.set(xlabel="time while typing (s)", ylabel="time to answer (ms)", title="answers at pauses (green: items)")
    ax1.set_ylim(bottom=0)
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=8)

    values = sorted(s["latency_ms"] for s in pauses)
    if values:
        ax2.plot(values, [(i + 1) / len(values) for i in range(len(values))], color="tab:blue")
    ax2.set(xlabel="time to answer (ms)", ylabel="share of pauses", title="CDF", ylim=(0, 1.02))

    tok = r["tokens"]
    bars = {
        "full encode\nper job": tok["full_encode_mean"],
        "re-encoded\nper job": tok["reencoded_per_job_mean"],
        "full encode\nper keystroke": tok["full_encode_per_keystroke"],
        "re-encoded\nper keystroke": tok["reencoded_per_keystroke"],
    }
    ax3.bar(list(bars), [_num(v) for v in bars.values()], color=["tab:gray", "tab:green"] * 2)
    outcomes = r["requests"]["outcomes"]
    ax3.set(
        ylabel="prompt tokens",
        title=f"prompt encoding; requests {outcomes}\nserver superseded "
        f"{r['server_jobs']['superseded']}, engine cancelled {r['engine']['cancelled']}",
    )
    ax3.tick_params(axis="x", labelsize=8)
    ax3.title.set_fontsize(8)
    fig.suptitle(f"dg-lsp latency: {r['server']['status'].get('message', '')}", fontsize=10)
    return fig


@_chart
def memory(plt, r: dict[str, Any]) -> Any:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    timeline = r["timeline"]
    if timeline:
        ax1.plot([t for t, _ in timeline], [m for _, m in timeline], color="tab:blue", label="RSS under load")
    m = r["rss_mib"]
    ax1.axhline(_num(m["idle"]), linestyle="--", color="tab:gray", label=f"idle {_num(m['idle']):.0f} MiB")
    ax1.set(xlabel="s", ylabel="MiB", title=f"server RSS during {r['load']['keystrokes']} keystrokes")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    bars = {
        "before model": m["before_model"],
        "idle": m["idle"],
        "load max": m["load"]["max"],
        "after load": m["after_load"],
        "peak (HWM)": m["peak_hwm"],
    }
    if r["cuda"]["peak_allocated_mib"]:
        bars["CUDA peak"] = r["cuda"]["peak_allocated_mib"]
    ax2.bar(list(bars), [_num(v) for v in bars.values()], color="tab:blue")
    ax2.set(ylabel="MiB", title="memory")
    ax2.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"dg-lsp memory: {r['server']['status'].get('message', '')}", fontsize=10)
    return fig


@_chart
def speed(plt, r: dict[str, Any]) -> Any:
    kinds = list(r["kinds"])
    metrics = [
        ("tok_per_s", "new tokens / s"),
        ("tokens_per_forward", "tokens per forward"),
        ("mean_steps", "forwards per task"),
        ("pass_at_1", "pass@1"),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4.2))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        _side_by_side(
            ax,
            kinds,
            [
                (mode, [_num(r["kinds"][k][mode].get(key)) for k in kinds], color)
                for mode, color in (("diffusion", "tab:green"), ("ar", "tab:gray"), ("hybrid", "tab:blue"))
                if mode in r["kinds"][kinds[0]]
            ],
        )
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    ratios = ", ".join(
        f"{k}: {_num(r['kinds'][k]['ratio']['tok_per_s']):.2f}x tok/s, "
        f"{_num(r['kinds'][k]['ratio']['task_latency']):.2f}x per task"
        for k in kinds
    )
    fig.suptitle(f"diffusion / hybrid vs AR, {r['model']} on {r['device']}: diffusion {ratios}", fontsize=9)
    return fig


@_chart
def forward(plt, r: dict[str, Any]) -> Any:
    ops = list(r["ops"])
    kinds = r.get("forwards", ["hf", "lean"])
    colors = {"hf": "tab:gray", "lean": "tab:green", "ort": "tab:blue"}
    fig, ax = plt.subplots(figsize=(1.6 * len(ops) + 2, 4.2))
    series = [(k, [_num(r["ops"][op][f"{k}_ms"]) for op in ops], colors.get(k)) for k in kinds]
    _side_by_side(ax, ops, series, width=0.8 / len(kinds))
    for i, op in enumerate(ops):
        o = r["ops"][op]
        top = max(_num(o[f"{k}_ms"]) for k in kinds)
        label = f"{_num(o['speedup']):.2f}x" + (f", {_num(o['ort_speedup']):.2f}x" if "ort_speedup" in o else "")
        ax.annotate(label, (i, top), ha="center", va="bottom", fontsize=8)
    ax.set(
        ylabel="median ms",
        title=f"{' vs '.join(kinds)} forward (hf/lean, lean/ort), {r['model']} on {r['device']}, "
        f"{r['torch_threads']} thread(s), prompt {r['prompt_tokens']}",
    )
    ax.legend(fontsize=8)
    return fig


@_chart
def gpu(plt, r: dict[str, Any]) -> Any:
    """`dg_bench.gpu` results: decoder step time per canvas and the projected tokens/s."""
    canvases = list(r["steps"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.bar(canvases, [_num(r["steps"][c]["step_ms"]) for c in canvases], color="tab:blue")
    prefill = _num(r.get("prefill_ms"))
    ax1.set(xlabel="canvas (tokens)", ylabel="decoder step (ms, median)", title=f"prefill {prefill:.0f} ms")
    _side_by_side(
        ax2,
        canvases,
        [
            (f"{k} tokens/forward", [_num(r["steps"][c]["tok_per_s"].get(k)) for c in canvases], None)
            for k in ("15", "20")
        ],
    )
    ax2.set(xlabel="canvas (tokens)", ylabel="projected tokens/s", title="projected decode speed")
    ax2.legend(fontsize=8, loc="lower right")
    peak = (r.get("memory_after_steps") or {}).get("peak_gib")
    vram = f", VRAM peak {peak:.1f} GiB" if peak else ""
    fig.suptitle(
        f"{r['config']} on {r['device']}: experts {r['expert_bits']}-bit, dense {r['dense_bits']}-bit{vram}",
        fontsize=10,
    )
    return fig
