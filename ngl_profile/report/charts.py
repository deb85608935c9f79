"""Charts from finished results (matplotlib, Agg). Each function takes records and a path, draws
one PNG and returns its path, or None when the records hold nothing to draw (e.g. no measured
throughput in an estimated run).

Colours are fixed per category (Okabe–Ito, colour-blind safe); the history buffer is vermillion
with a hatch so it stands apart in print and in greyscale.
"""
from __future__ import annotations

from pathlib import Path

from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import RunResult
from ngl_profile.report.tables import provenance_line, unit_for

__all__ = ["COLORS", "memory_breakdown", "throughput", "step_timeline", "estimated_vs_measured", "size_sweep"]

COLORS = {"weights": "#0072B2", "grads": "#56B4E9", "moments": "#009E73", "quant_stats": "#F0E442",
          "projectors": "#CC79A7", "history": "#D55E00", "activations": "#E69F00", "temporaries": "#999999",
          "allocator_slack": "#DDDDDD", "context": "#444444"}
HATCH = {"history": "///"}
PHASE_COLORS = {"forward": "#E69F00", "backward": "#56B4E9", "optimizer": "#009E73", "other": "#DDDDDD"}
GiB = 1 << 30


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110, **layout) -> Path:
    fig.tight_layout(**layout)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _title(run: RunResult) -> str:
    s = run.scenario
    return f"{s['model']} · batch {s['batch_size']} × seq {s['seq_len']} · {s['dtype']}"


def _wrap(label: str, width: int = 18) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def memory_breakdown(run: RunResult, path: Path) -> Path:
    plt = _plt()
    unit, scale = unit_for(run)
    cases = run.cases
    fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(cases) + 3), 6.2))
    xs = range(len(cases))
    bottoms = [0.0] * len(cases)
    for cat in CATEGORIES:
        vals = [c.memory_bytes.get(cat, 0) / scale for c in cases]
        if not any(vals):
            continue
        ax.bar(xs, vals, bottom=bottoms, color=COLORS[cat], hatch=HATCH.get(cat), edgecolor="white",
               linewidth=0.5, label=cat.replace("_", " "), width=0.65)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    cap = run.gpu["memory_bytes"] / scale
    if unit == "GiB" or cap < 4 * max(bottoms + [0]):
        ax.axhline(cap, color="#CC0000", linestyle="--", linewidth=1.4)
        ax.text(len(cases) - 0.5, cap, f" {run.gpu['name']}: {cap:.1f} {unit}", color="#CC0000",
                va="bottom", ha="right", fontsize=9)
    for x, c, top in zip(xs, cases, bottoms):
        if c.status == "ok":
            # boxed, so a total that lands on the capacity line stays readable
            ax.text(x, top, f"{top:.1f}" if unit == "GiB" else f"{top:.2f}", ha="center", va="bottom", fontsize=9,
                    bbox=dict(facecolor="white", edgecolor="none", pad=1.0, alpha=0.85))
        else:
            ax.text(x, top, "OOM" if c.status == "oom" else "error", ha="center", va="bottom", fontsize=10,
                    color="#CC0000", fontweight="bold")
    ax.set_xticks(list(xs), [_wrap(c.label) for c in cases], fontsize=8.5)
    ax.set_ylabel(f"{unit} at the step's peak")
    ax.set_ylim(0, max(bottoms + [cap if unit == "GiB" else 0]) * 1.12 or 1)
    ax.set_title(f"Memory at the peak — {_title(run)}\n{provenance_line(run)}", fontsize=9.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False,
              title="category", title_fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path, 110)


def throughput(run: RunResult, path: Path) -> Path | None:
    cases = [c for c in run.cases if c.tokens_per_s]
    if not cases:
        return None
    plt = _plt()
    adamw = next((c.tokens_per_s for c in cases if c.optimizer["name"] == "adamw"), None)
    fig, ax = plt.subplots(figsize=(max(7, 1.5 * len(cases) + 2), 4.8))
    xs = range(len(cases))
    ax.bar(xs, [c.tokens_per_s for c in cases], color="#0072B2", width=0.6)
    for x, c in zip(xs, cases):
        notes = []
        if adamw:
            notes.append(f"{c.tokens_per_s / adamw:.2f}× AdamW")
        if c.mfu is not None:
            notes.append(f"MFU {c.mfu:.1%}")
        ax.text(x, c.tokens_per_s, f"{c.tokens_per_s:,.0f}\n" + "\n".join(notes), ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(list(xs), [_wrap(c.label) for c in cases], fontsize=8.5)
    ax.set_ylabel("tokens / s (median of timed steps)")
    ax.set_ylim(0, max(c.tokens_per_s for c in cases) * 1.3)
    ax.set_title(f"Throughput — {_title(run)}\nmeasured on {run.environment.get('device_name') or run.device}",
                 fontsize=9.5)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path, 110)


def step_timeline(run: RunResult, path: Path) -> Path | None:
    cases = [c for c in run.cases if c.timeline]
    if not cases:
        return None
    plt = _plt()
    unit, scale = unit_for(run)
    n = len(cases)
    cols = 2 if n > 1 else 1
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 2.6 * rows + 0.8), squeeze=False)
    for ax, c in zip(axes.flat, cases):
        idx = [p[0] for p in c.timeline]
        live = [p[1] / scale for p in c.timeline]
        phases = [p[2] for p in c.timeline]
        start = 0
        for i in range(1, len(phases) + 1):  # shade each run of one phase
            if i == len(phases) or phases[i] != phases[start]:
                ax.axvspan(idx[start], idx[i - 1], color=PHASE_COLORS.get(phases[start], "#EEEEEE"), alpha=0.25,
                           linewidth=0)
                start = i
        ax.plot(idx, live, color="#222222", linewidth=1.0)
        ax.set_title(c.label, fontsize=9)
        ax.set_ylabel(f"live {unit}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("allocation / free events in one steady step", fontsize=7.5)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    from matplotlib.patches import Patch

    handles = [Patch(color=PHASE_COLORS[p], alpha=0.4, label=p) for p in ("forward", "backward", "optimizer")]
    fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False, ncol=3)
    fig.suptitle(f"Tensor memory over one step — {_title(run)} ({run.mode})", fontsize=10, x=0.02, ha="left")
    return _save(fig, path, 100, rect=(0, 0, 1, 0.95))


def estimated_vs_measured(estimated: RunResult, measured: RunResult, path: Path) -> Path | None:
    pairs = [(e, measured.case(e.label)) for e in estimated.cases]
    pairs = [(e, m) for e, m in pairs if m is not None and e.status == m.status == "ok"]
    if not pairs:
        return None
    plt = _plt()
    unit, scale = unit_for(measured)
    cats = [c for c in CATEGORIES[:8] if any(e.memory_bytes[c] or m.memory_bytes[c] for e, m in pairs)]
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 0.5, 3.2 * rows + 0.7), squeeze=False, sharey=True)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    for ax, (e, m) in zip(axes.flat, pairs):
        ys = range(len(cats))
        ax.barh([y - 0.2 for y in ys], [e.memory_bytes[c] / scale for c in cats], height=0.4, color="white",
                edgecolor="#333333", hatch="..", label="estimated")
        ax.barh([y + 0.2 for y in ys], [m.memory_bytes[c] / scale for c in cats], height=0.4,
                color=[COLORS[c] for c in cats], label="measured")
        ax.set_yticks(list(ys), cats, fontsize=8)
        ax.set_title(_wrap(e.label, 28), fontsize=8.5)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    axes.flat[0].legend(fontsize=7.5, frameon=False)
    fig.suptitle(f"Estimated (dotted) vs measured (coloured) on {measured.environment.get('device_name') or measured.device} "
                 f"— {_title(measured)}", fontsize=9.5)
    return _save(fig, path, 100)


def size_sweep(runs: list[RunResult], path: Path) -> Path | None:
    """Peak memory vs model size, one line per optimizer label (same label = same settings), across
    runs of different models."""
    runs = [r for r in runs if r.cases]
    if len({r.scenario["model"] for r in runs}) < 2:
        return None
    plt = _plt()
    points: dict[str, list] = {}
    for r in runs:
        for c in r.cases:
            if c.status == "ok" and c.params.get("total"):
                points.setdefault(c.label, []).append((c.params["total"], c.peak_bytes / GiB,
                                                         r.scenario["model"]))
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    markers = "osD^v<>ph*"
    for i, (name, pts) in enumerate(sorted(points.items())):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    gpus = {r.gpu["name"]: r.gpu["memory_bytes"] / GiB for r in runs}
    for name, cap in gpus.items():
        ax.axhline(cap, color="#CC0000", linestyle="--", linewidth=1)
        ax.text(0.99, cap, f"{name}: {cap:.0f} GiB", color="#CC0000", fontsize=8, va="bottom", ha="right",
                transform=ax.get_yaxis_transform())
    ax.set_xlabel("model parameters")
    ax.set_ylabel("GiB at the step's peak")
    modes = sorted({r.mode for r in runs})
    by_size = sorted(runs, key=lambda r: max((c.params.get("total", 0) for c in r.cases), default=0))
    batches = [f"{r.scenario['model']}: {r.scenario['batch_size']}×{r.scenario['seq_len']}" for r in by_size]
    ax.set_title(f"Peak memory vs model size ({'/'.join(modes)}; batch×seq per model: {', '.join(batches)})",
                 fontsize=8.5, wrap=True)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.grid(True, which="both", alpha=0.2)
    return _save(fig, path, 110)
