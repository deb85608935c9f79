"""The step's timeline chart: live tensor memory through one steady step, one panel per case.

Panels share one y-range (from 0) so that levels and slopes compare across optimizers; the card's
memory is a dashed line when it is on that scale. The x-axis is the order of allocation and free
events the tracker saw — it has no clock — so a phase's width is how many allocations it makes, not
how long it takes; for measured runs each panel's title gives the phases' median times instead.
"""
from __future__ import annotations

from ngl_profile.report.charts import CAPACITY, capacity_shown, fit_text, off_scale, plt
from ngl_profile.report.tables import title_line, unit_for, unit_note
from ngl_profile.schema.results import RunResult

__all__ = ["PHASE_COLORS", "timeline_figure"]

PHASE_COLORS = {"forward": "#E69F00", "backward": "#56B4E9", "optimizer": "#009E73", "other": "#DDDDDD"}
PHASES = ("forward", "backward", "optimizer")


def _seconds(t: float) -> str:
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:,.1f} ms" if t >= 1e-3 else f"{t * 1e3:.2f} ms"


def _phase_times(c) -> str:
    times = [(p, c.step_time_s.get(p)) for p in PHASES]
    return " · ".join(f"{p} {_seconds(t)}" for p, t in times if t is not None)


def _shade(ax, idx, phases) -> None:
    start = 0
    for i in range(1, len(phases) + 1):  # one span per run of one phase
        if i == len(phases) or phases[i] != phases[start]:
            ax.axvspan(idx[start], idx[i - 1], color=PHASE_COLORS.get(phases[start], "#EEEEEE"), alpha=0.25,
                       linewidth=0)
            start = i


def timeline_figure(run: RunResult, units: str = "GiB"):
    """`units`: "GiB" (binary) or "GB" (decimal), as in the tables."""
    cases = [c for c in run.cases if c.timeline]
    if not cases:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    unit, scale = unit_for(run, units)
    n = len(cases)
    cols = 2 if n > 1 else 1
    rows = -(-n // cols)
    width = 6.4 * cols if cols > 1 else 8.0
    fig, axes = plt().subplots(rows, cols, figsize=(width, 2.5 * rows + 1.6), squeeze=False, sharey=True,
                               layout="constrained")
    top = max(p[1] for c in cases for p in c.timeline)
    show_cap = capacity_shown(run, top)
    cap = run.gpu["memory_bytes"] / scale
    for ax, c in zip(axes.flat, cases):
        idx = [p[0] for p in c.timeline]
        _shade(ax, idx, [p[2] for p in c.timeline])
        ax.plot(idx, [p[1] / scale for p in c.timeline], color="#222222", linewidth=1.0)
        if show_cap:
            ax.axhline(cap, color=CAPACITY, linestyle="--", linewidth=1.2, gid="capacity")
        times = _phase_times(c) if run.mode == "measured" else ""
        ax.set_title(c.label + (f"\n{times} (median step)" if times else ""), fontsize=8.5)
        ax.set_ylabel(f"live {unit}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("allocation / free event number (event order, not time)", fontsize=7.5)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].set_ylim(0, max(top / scale, cap if show_cap else 0) * 1.08)  # shared by every panel
    handles = [Patch(color=PHASE_COLORS[p], alpha=0.4, label=p) for p in PHASES]
    handles.append(Line2D([], [], color="#222222", linewidth=1.0, label="live tensors"))
    if show_cap:
        handles.append(Line2D([], [], color=CAPACITY, linestyle="--", label=f"{run.gpu['name']}: {cap:,.1f} {unit}"))
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False, ncol=len(handles))
    head = f"Tensor memory over one steady step ({run.mode}), in {unit_note(unit)} — {title_line(run)}"
    note = "" if show_cap else f"\n{off_scale(run, top, units)}"
    fig.suptitle(fit_text(head + note, width, 10), fontsize=10)
    fig.draw_without_rendering()  # runs the layout: positions are final (tests read them)
    return fig
