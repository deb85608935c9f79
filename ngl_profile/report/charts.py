"""Charts from finished results (matplotlib, Agg). Each `*_figure` function takes records and returns
a laid-out Figure, or None when the records hold nothing to draw (e.g. no measured throughput in an
estimated run); the function of the same name without `_figure` saves it as one PNG and returns its
path (or None). Tests inspect the figures; the report saves them.

Colours are fixed per category (Okabe–Ito, colour-blind safe); the history buffer is vermillion
with a hatch so it stands apart in print and in greyscale. The step's timeline lives in
report/timeline.py. Sizes are in binary units (GiB) or decimal ones (GB), `units=`, as in the tables.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from ngl_profile.report.tables import human_bytes, provenance_line, title_line, unit_for, unit_note
from ngl_profile.schema.categories import CATEGORIES, TRACKED
from ngl_profile.schema.results import RunResult

__all__ = ["COLORS", "memory_breakdown", "memory_breakdown_figure", "throughput", "throughput_figure",
           "step_timeline", "step_timeline_figure", "estimated_vs_measured", "estimated_vs_measured_figure",
           "size_sweep", "size_sweep_figure", "capacity_shown", "off_scale", "human_bytes", "fit_text", "wrap", "plt"]

COLORS = {"weights": "#0072B2", "grads": "#56B4E9", "moments": "#009E73", "quant_stats": "#F0E442",
          "projectors": "#CC79A7", "history": "#D55E00", "activations": "#E69F00", "temporaries": "#999999",
          "allocator_slack": "#DDDDDD", "context": "#444444"}
HATCH = {"history": "///"}
CAPACITY = "#CC0000"


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _save(fig, path: Path, dpi: int = 110) -> Path | None:
    if fig is None:
        return None
    fig.savefig(path, dpi=dpi)
    plt().close(fig)
    return path


def _laid_out(fig):
    fig.draw_without_rendering()  # runs the constrained layout, so positions are final for tests too
    return fig


def wrap(label: str, width: int = 18) -> str:
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=True)) or label


def fit_text(text: str, fig_width_in: float, fontsize: float) -> str:
    """`text` wrapped to what fits the figure's width at `fontsize` (a DejaVu Sans character is
    about 0.6 em wide), so a title is never cut at the figure's edges."""
    chars = max(20, int(fig_width_in * 72 / (fontsize * 0.6)))
    return "\n".join(wrap(line, chars) for line in text.split("\n"))


def capacity_shown(run: RunResult, top: float) -> bool:
    """Draw the card's memory as a line only when it is on a readable scale: at most 4× the largest
    value drawn (`top`, bytes); a 24 GiB line over a 1 MiB model would flatten every bar."""
    return run.gpu["memory_bytes"] <= 4 * top


def off_scale(run: RunResult, top: float, units: str = "GiB") -> str:
    cap = run.gpu["memory_bytes"]
    return (f"{run.gpu['name']}'s {human_bytes(cap, units)} is off this scale "
            f"({cap / max(top, 1):,.0f}× the largest peak)")


def _temporaries_label(run: RunResult) -> str:
    return "temporaries\n(incl. recomputed\nactivations)" if run.scenario.get("checkpointing") else "temporaries"


def memory_breakdown_figure(run: RunResult, units: str = "GiB"):
    unit, scale = unit_for(run, units)
    cases = run.cases
    width = max(7.5, 1.6 * len(cases) + 3)
    fig, ax = plt().subplots(figsize=(width, 6.2), layout="constrained")
    xs = range(len(cases))
    bottoms = [0.0] * len(cases)
    for cat in CATEGORIES:
        vals = [c.memory_bytes.get(cat, 0) / scale for c in cases]
        if not any(vals):
            continue
        label = _temporaries_label(run) if cat == "temporaries" else cat.replace("_", " ")
        ax.bar(xs, vals, bottom=bottoms, color=COLORS[cat], hatch=HATCH.get(cat), edgecolor="white",
               linewidth=0.5, label=label, width=0.65)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    top = max(bottoms + [0]) * scale
    cap = run.gpu["memory_bytes"] / scale
    subtitle = provenance_line(run, units)
    if capacity_shown(run, top):
        ax.axhline(cap, color=CAPACITY, linestyle="--", linewidth=1.4)
        # inside the axes, right-aligned: it can never run into the legend beside them
        ax.text(0.995, cap, f"{run.gpu['name']}: {cap:,.1f} {unit}", color=CAPACITY, va="bottom", ha="right",
                fontsize=9, transform=ax.get_yaxis_transform(), gid="capacity-label",
                bbox=dict(facecolor="white", edgecolor="none", pad=0.5, alpha=0.8))
    else:
        subtitle += f"\n{off_scale(run, top, units)}"
    for x, c, total in zip(xs, cases, bottoms):
        if c.status == "ok":
            # boxed, so a total that lands on the capacity line stays readable
            shown = f"{total:,.1f} {unit}" if unit in ("GiB", "GB") else f"{total:,.2f} {unit}"
            ax.text(x, total, shown, ha="center", va="bottom",
                    fontsize=9, bbox=dict(facecolor="white", edgecolor="none", pad=1.0, alpha=0.85))
        else:
            ax.text(x, total, "OOM" if c.status == "oom" else "error", ha="center", va="bottom", fontsize=10,
                    color=CAPACITY, fontweight="bold")
    ax.set_xticks(list(xs), [wrap(c.label) for c in cases], fontsize=8.5)
    ax.set_ylabel(f"{unit} at the step's peak")
    ax.set_ylim(0, max(bottoms + [cap if capacity_shown(run, top) else 0]) * 1.12 or 1)
    head = f"Memory at the step's peak, in {unit_note(unit)} — {title_line(run)}"
    fig.suptitle(fit_text(head, width, 10.5), fontsize=10.5)
    ax.set_title(fit_text(subtitle, width * 0.75, 8.5), fontsize=8.5, color="#333333")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False,
              title="category", title_fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return _laid_out(fig)


def memory_breakdown(run: RunResult, path: Path, units: str = "GiB") -> Path:
    return _save(memory_breakdown_figure(run, units), path)


def _spread(run: RunResult, c) -> tuple[float, float] | None:
    """tokens/s at the slowest and the fastest timed step, when the results record them
    (step_time_s total_max / total_min, seconds); None when only the median was kept."""
    lo, hi = c.step_time_s.get("total_max"), c.step_time_s.get("total_min")
    if not lo or not hi:
        return None
    tokens = run.scenario["batch_size"] * run.scenario["seq_len"]
    return tokens / lo, tokens / hi


def throughput_figure(run: RunResult):
    cases = [c for c in run.cases if c.tokens_per_s]
    if not cases:
        return None
    adamw = next((c.tokens_per_s for c in cases if c.optimizer["name"] == "adamw"), None)
    width = max(7, 1.5 * len(cases) + 2)
    fig, ax = plt().subplots(figsize=(width, 4.8), layout="constrained")
    xs = list(range(len(cases)))
    tps = [c.tokens_per_s for c in cases]
    spreads = [_spread(run, c) for c in cases]
    ax.bar(xs, tps, color="#0072B2", width=0.6)
    steps = sorted({int(c.step_time_s.get("steps") or 0) for c in cases})
    n = "/".join(str(s) for s in steps if s) or "?"
    if any(spreads):
        lower = [max(t - s[0], 0) if s else 0 for t, s in zip(tps, spreads)]
        upper = [max(s[1] - t, 0) if s else 0 for t, s in zip(tps, spreads)]
        ax.errorbar(xs, tps, yerr=[lower, upper], fmt="none", ecolor="#222222", capsize=4, linewidth=1, gid="spread")
        how = f"bars: median of {n} timed steps; whiskers: slowest to fastest step"
    else:
        how = f"median of {n} timed steps; these results record no per-step spread, so no error bars"
    tops = [s[1] if s else t for t, s in zip(tps, spreads)]
    for x, c, y in zip(xs, cases, tops):
        notes = [f"{c.tokens_per_s:,.0f}"]
        if adamw:
            notes.append(f"{c.tokens_per_s / adamw:.2f}× AdamW")
        if c.mfu is not None:
            notes.append(f"MFU {c.mfu:.1%}")
        ax.text(x, y, "\n".join(notes), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [wrap(c.label) for c in cases], fontsize=8.5)
    ax.set_ylabel("tokens / s")
    from matplotlib.ticker import StrMethodFormatter

    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))  # 35,000, as the bar labels read
    ax.set_ylim(0, max(tops) * 1.3)
    where = run.environment.get("device_name") or run.device
    fig.suptitle(fit_text(f"Throughput — {title_line(run)}", width, 10.5), fontsize=10.5)
    ax.set_title(fit_text(f"measured on {where}; {how}", width, 8.5), fontsize=8.5, color="#333333")
    ax.spines[["top", "right"]].set_visible(False)
    return _laid_out(fig)


def throughput(run: RunResult, path: Path) -> Path | None:
    return _save(throughput_figure(run), path)


def step_timeline_figure(run: RunResult, units: str = "GiB"):
    from ngl_profile.report.timeline import timeline_figure

    return timeline_figure(run, units)


def step_timeline(run: RunResult, path: Path, units: str = "GiB") -> Path | None:
    return _save(step_timeline_figure(run, units), path, 100)


def estimated_vs_measured_figure(estimated: RunResult, measured: RunResult, units: str = "GiB"):
    """Per case and category, the estimate (hatched) beside the measurement (coloured), on a log
    scale so that a few KiB of quantisation statistics show beside GiB of weights, each pair with
    its numbers."""
    pairs = [(e, measured.case(e.label)) for e in estimated.cases]
    pairs = [(e, m) for e, m in pairs if m is not None and e.status == m.status == "ok"]
    if not pairs:
        return None
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    cats = [c for c in TRACKED if any(e.memory_bytes[c] or m.memory_bytes[c] for e, m in pairs)]
    values = [v for e, m in pairs for c in cats for v in (e.memory_bytes[c], m.memory_bytes[c]) if v > 0]
    lo, hi = min(values) / 3, max(values) * 25  # room on the right for the numbers
    # ticks at whole units of the family: 1 and 32 KiB, MiB, GiB; or 1, 10 and 100 kB, MB, GB
    base, steps = (1024, (1, 32)) if units == "GiB" else (1000, (1, 10, 100))
    ticks = [m * base ** k for k in range(5) for m in steps if lo <= m * base ** k <= hi]
    cols = min(2, len(pairs))
    rows = -(-len(pairs) // cols)
    width = 5.6 * cols + 0.6
    fig, axes = plt().subplots(rows, cols, figsize=(width, 0.36 * len(cats) * rows + 1.1 * rows + 0.8),
                               squeeze=False, sharex=True, layout="constrained")
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    for ax, (e, m) in zip(axes.flat, pairs):
        ys = range(len(cats))
        ev = [e.memory_bytes[c] for c in cats]
        mv = [m.memory_bytes[c] for c in cats]
        ax.barh([y + 0.2 for y in ys], ev, height=0.4, color="white", edgecolor="#333333", hatch="..",
                label="estimated")
        ax.barh([y - 0.2 for y in ys], mv, height=0.4, color=[COLORS[c] for c in cats], label="measured")
        for y, a, b in zip(ys, ev, mv):
            if a == b:
                text = "both 0" if a == 0 else f"= {human_bytes(a, units)}"
            else:
                text = f"est {human_bytes(a, units)} / meas {human_bytes(b, units)}"
            ax.text(max(a, b, lo) * 1.25, y, text, va="center", fontsize=7, gid="value")
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v, units, 0)))
        ax.set_yticks(list(ys), [c.replace("_", " ") for c in cats], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(wrap(e.label, 40), fontsize=8.5)
        ax.tick_params(axis="x", labelsize=7)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8,
               frameon=False)
    where = measured.environment.get("device_name") or measured.device
    fig.suptitle(fit_text(f"Estimated (hatched) vs measured (coloured) on {where} — {title_line(measured)}\n"
                          f"sizes at the step's peak in {_family(units)}, log scale", width, 9.5), fontsize=9.5)
    return _laid_out(fig)


def _family(units: str) -> str:
    return "KiB, MiB, GiB (binary: 2¹⁰, 2²⁰, 2³⁰ bytes)" if units == "GiB" else \
        "kB, MB, GB (decimal: 10³, 10⁶, 10⁹ bytes)"


def estimated_vs_measured(estimated: RunResult, measured: RunResult, path: Path,
                          units: str = "GiB") -> Path | None:
    return _save(estimated_vs_measured_figure(estimated, measured, units), path, 100)


def size_sweep_figure(runs: list[RunResult], units: str = "GiB"):
    from ngl_profile.report.sweep import sweep_figure

    return sweep_figure(runs, units)


def size_sweep(runs: list[RunResult], path: Path, units: str = "GiB") -> Path | None:
    return _save(size_sweep_figure(runs, units), path)

