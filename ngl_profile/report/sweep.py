"""The sweep charts: peak memory against model size (runs of different models), or against one
axis of one scenario (`run --sweep seq_len=...`), one line per optimizer, the target card's memory
as a horizontal line; and the axis sweep's table (sweep.md).

A line joins the cases of one optimizer *name*, even where each model's scenario gave it other
settings (a smaller history window for the 7B, say): the legend says which settings held for
which models. Runs whose batch × sequence differ are not mixed silently: the top axis gives each
model's, and the title says they differ.
"""
from __future__ import annotations

from pathlib import Path

from ngl_profile.report.charts import CAPACITY, fit_text, plt
from ngl_profile.report.tables import human_bytes, large_unit, markdown_table, size_unit
from ngl_profile.schema.results import RunResult
from ngl_profile.schema.sweep import label_tag, sweep_value, takes

__all__ = ["sweep_figure", "axis_sweep_figure", "axis_sweep", "sweep_rows", "sweep_markdown", "AXIS_LABELS"]

MARKERS = "osD^v<>ph*"


def _settings(c) -> str:
    """What the label adds to the optimizer's name: "s=2, int8" for "natural-galore (s=2, int8)"."""
    name, label = c.optimizer["name"], c.label
    return label[len(name):].strip(" ()") if label.startswith(name) else label


def _key(c, cases, run: RunResult, modes: bool, tag: str = "") -> str:
    """The line a case belongs on: its optimizer's name, or its label where the run has two
    settings of that optimizer (two lines); `tag` is what a sweep added to the label."""
    twins = sum(x.optimizer["name"] == c.optimizer["name"] for x in cases)
    label = c.label[:-len(tag)] if tag and c.label.endswith(tag) else c.label
    key = c.optimizer["name"] if twins == 1 else label
    return key + (f" ({run.mode})" if modes else "")


def _series(runs: list[RunResult], scale: int) -> dict[str, list]:
    modes = len({r.mode for r in runs}) > 1
    points: dict[str, list] = {}
    for r in runs:
        ok = [c for c in r.cases if c.status == "ok" and c.params.get("total")]
        for c in ok:
            points.setdefault(_key(c, ok, r, modes), []).append(
                (c.params["total"], c.peak_bytes / scale, c, r.scenario["model"]))
    return points


def _capacity(ax, runs: list[RunResult], unit: str, scale: int, units: str) -> None:
    """The target cards' memory as dashed lines, labelled in the family `units` names (the card's
    size in its own largest unit, then on the axis's unit where that differs: "24 GiB = 24,576 MiB")."""
    for name, cap in {r.gpu["name"]: r.gpu["memory_bytes"] for r in runs}.items():
        ax.axhline(cap / scale, color=CAPACITY, linestyle="--", linewidth=1, gid="capacity")
        own = human_bytes(cap, units, 0)
        text = f"{name}: {own}" + (f" = {cap / scale:,.0f} {unit}" if not own.endswith(f" {unit}") else "")
        # at the left, where the small settings sit far below any card's memory
        ax.text(0.01, cap / scale, text, color=CAPACITY, fontsize=8, va="bottom", ha="left",
                transform=ax.get_yaxis_transform(), gid="capacity-label")


def _legend(ax) -> None:
    # beside the axes: inside, the capacity line or a series would run through it
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="optimizer",
              title_fontsize=8)


def _changes(pts) -> str:
    """For a line whose settings change between models: "\n  s=4, int8: llama-60m–llama-1b; ..."."""
    spans: list[list] = []  # [settings, first model, last model]
    for _, _, c, model in pts:
        s = _settings(c) or "defaults"
        if spans and spans[-1][0] == s:
            spans[-1][2] = model
        else:
            spans.append([s, model, model])
    if len(spans) < 2:
        return ""
    return "".join(f"\n   {s}: {a}" + (f"–{b}" if b != a else "") for s, a, b in spans)


def _shape(r: RunResult) -> str:
    s = r.scenario
    return f"{s['batch_size']}×{s['seq_len']}" + (" ckpt" if s.get("checkpointing") else "")


def sweep_figure(runs: list[RunResult], units: str = "GiB"):
    """Peak memory against model size, one line per optimizer, in the `units` family's large unit
    (GiB or GB: a size sweep's peaks span decades; the log axis keeps every one readable)."""
    unit, scale = large_unit(units)
    runs = [r for r in runs if r.cases]
    if len({r.scenario["model"] for r in runs}) < 2:
        return None
    from matplotlib.ticker import NullLocator

    width = 11.0
    fig, ax = plt().subplots(figsize=(width, 6.0), layout="constrained")
    for i, (name, pts) in enumerate(sorted(_series(runs, scale).items())):
        pts.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[i % len(MARKERS)],
                label=name + _changes(pts))
    ax.set_xscale("log")
    ax.set_yscale("log")
    _capacity(ax, runs, unit, scale, units)
    ax.set_xlabel("model parameters")
    ax.set_ylabel(f"{unit} at the step's peak")
    by_model = {}
    for r in runs:
        size = min(c.params.get("total", 0) or 0 for c in r.cases) or None
        if size:
            by_model.setdefault(r.scenario["model"], (size, _shape(r)))
    shapes = {s for _, s in by_model.values()}
    modes = "/".join(sorted({r.mode for r in runs}))
    dtypes = ", ".join(sorted({r.scenario["dtype"] for r in runs}))
    if len(shapes) > 1:
        top = ax.secondary_xaxis("top")
        top.set_xticks([v[0] for v in by_model.values()],
                       [f"{m}\n{s}" for m, (_, s) in by_model.items()], fontsize=7.5)
        top.xaxis.set_minor_locator(NullLocator())
        top.set_xlabel("model, batch × seq", fontsize=8)
        how = ("batch × seq differs between models (top axis): each peak is at its own scenario's batch, "
               "not at one batch for all")
    else:
        how = f"batch × seq {shapes.pop() if shapes else '?'} for every model"
    fig.suptitle(fit_text(f"Peak memory vs model size ({modes}, {dtypes})\n{how}", width, 9.5), fontsize=9.5)
    _legend(ax)
    ax.grid(True, which="both", alpha=0.2)
    fig.draw_without_rendering()
    return fig


# --- one scenario swept along one axis (`run --sweep`) ---

AXIS_LABELS = {"seq_len": "sequence length (tokens)", "batch_size": "batch size (sequences per step)",
               "rank": "projection rank (GaLore-style optimizers)", "history_size": "history window s (gradients)",
               "world_size": "world size (ranks = GPUs; peak per GPU, batch per rank)"}


def _axis_points(runs: list[RunResult], axis: str) -> dict[str, list]:
    """line → [(axis value, case)], every case of every run (a run's value read from its scenario)."""
    modes = len({r.mode for r in runs}) > 1
    points: dict[str, list] = {}
    for r in runs:
        v = sweep_value(r.scenario, axis)
        if v is None:
            continue
        for c in r.cases:
            points.setdefault(_key(c, r.cases, r, modes, label_tag(axis, v)), []).append((v, c))
    for pts in points.values():
        pts.sort(key=lambda p: p[0])
    return points


def _varies(axis: str, c) -> bool:
    """Whether the sweep changed this case (schema/sweep.py set the value on exactly these)."""
    return takes(axis, c.optimizer.get("name", ""))


def _tick(v, _pos=None) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.3g}"


def _fixed(runs: list[RunResult], axis: str) -> str:
    """What held for every run: the shape not swept, dtype, mode."""
    s = runs[0].scenario
    shape = [f"batch {s['batch_size']}" if axis != "batch_size" else "",
             f"seq {s['seq_len']}" if axis != "seq_len" else ""]
    bits = [" × ".join(x for x in shape if x), s["dtype"], "/".join(sorted({r.mode for r in runs}))]
    if s.get("checkpointing"):
        bits.append("activation checkpointing")
    if s.get("parallelism", "none") != "none":
        bits.append(f"{s['parallelism']}" + (f" × {s.get('world_size')} ranks" if axis != "world_size" else ""))
    return ", ".join(bits)


def _y_scale(ax, lo: float, hi: float) -> None:
    """Log where the values span more than a decade and a bit, else linear from 0 (a peak drawn
    from 0 reads as the size it is)."""
    from matplotlib.ticker import FuncFormatter

    if hi > 20 * lo > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_tick))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _tick(v) if hi < 100 * lo else ""))
    else:
        ax.set_ylim(0, hi * 1.08)


def axis_sweep_figure(runs: list[RunResult], axis: str, units: str = "GiB"):
    """Peak memory against `axis`, one line per optimizer, the target card's memory as a dashed
    line; None with fewer than two values. Where the card's memory is far above every peak (a small
    model), the y-axis is broken: a narrow panel above holds the card's line, and the peaks keep
    the whole of the main panel instead of a sliver at its foot."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    runs = [r for r in runs if r.cases and sweep_value(r.scenario, axis) is not None]
    values = sorted({sweep_value(r.scenario, axis) for r in runs})
    if len(values) < 2:
        return None
    points = _axis_points(runs, axis)
    drawn = [c.peak_bytes for pts in points.values() for _, c in pts if c.status == "ok"]
    if not drawn:
        return None
    unit, scale = size_unit(drawn, units)
    lo, hi = min(drawn) / scale, max(drawn) / scale
    caps = {r.gpu["name"]: r.gpu["memory_bytes"] for r in runs}
    broken = max(caps.values()) > 4 * max(drawn)
    width = 11.0
    if broken:
        fig, (top, ax) = plt().subplots(2, 1, sharex=True, figsize=(width, 6.0), layout="constrained",
                                        gridspec_kw={"height_ratios": [1, 7]})
        fig.get_layout_engine().set(hspace=0.0, h_pad=0.02)
    else:
        fig, ax = plt().subplots(figsize=(width, 6.0), layout="constrained")
        top = None
    first_with: dict[tuple, str] = {}  # identical peaks draw one line over another: the legend says so
    for i, (name, pts) in enumerate(sorted(points.items())):
        ok = [(v, c.peak_bytes / scale) for v, c in pts if c.status == "ok"]
        if not ok:
            continue
        still = not _varies(axis, pts[0][1])
        label = name + (f" ({axis} not swept for it: the same at every value)" if still else "")
        twin = first_with.setdefault(tuple(ok), name)
        if twin != name:
            label += f"\n   (the same peaks as {twin}: drawn over it)"
        line, = ax.plot([v for v, _ in ok], [y for _, y in ok], marker=MARKERS[i % len(MARKERS)], label=label,
                        linestyle=":" if still else "-", linewidth=1.2 if still else 1.6, gid="series")
        # a setting that does not fit the card: its marker hollow, so it reads in greyscale too
        over = [(v, c.peak_bytes / scale) for v, c in pts if c.status == "ok" and c.fits is False]
        if over:
            ax.plot([v for v, _ in over], [y for _, y in over], linestyle="none", marker=MARKERS[i % len(MARKERS)],
                    markerfacecolor="white", color=line.get_color(), gid="too-big")
    if values[0] > 0 and values[-1] >= 4 * values[0]:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(values))  # ticks at the values run, not between them
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    if broken:
        _y_scale(ax, lo, hi)
        _capacity(top, runs, unit, scale, units)
        ys = [b / scale for b in caps.values()]
        top.set_ylim(min(ys) * 0.9, max(ys) * 1.12)
        top.yaxis.set_major_locator(FixedLocator(ys))
        top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        top.spines["bottom"].set_visible(False)
        ax.spines["top"].set_visible(False)
        top.tick_params(axis="x", which="both", bottom=False, labelbottom=False)
        # the usual break marks: two short diagonals where each panel's edge is cut
        marks = dict(marker=[(-1, -0.5), (1, 0.5)], markersize=10, linestyle="none", color="k", mec="k", mew=1,
                     clip_on=False, gid="axis-break")
        top.plot([0, 1], [0, 0], transform=top.transAxes, **marks)
        ax.plot([0, 1], [1, 1], transform=ax.transAxes, **marks)
        gap = (ax.get_ylim()[1], top.get_ylim()[0])
        ax.text(0.01, 0.985, f"y-axis broken: {_tick(gap[0])}–{gap[1]:,.0f} {unit} left out",
                transform=ax.transAxes, fontsize=7.5, color="#555555", va="top", ha="left", gid="break-note")
    else:
        _capacity(ax, runs, unit, scale, units)
        _y_scale(ax, lo, max(hi, max(caps.values()) / scale))
    ax.set_xlabel(AXIS_LABELS.get(axis, axis))
    ylabel = f"peak memory ({unit}{', log scale' if ax.get_yscale() == 'log' else ''})"
    if broken:
        fig.supylabel(ylabel, fontsize=10)
    else:
        ax.set_ylabel(ylabel)
    r = runs[0]
    fig.suptitle(fit_text(f"Peak memory vs {axis}: {r.scenario['model']}, {_fixed(runs, axis)} — target "
                          f"{r.gpu['name']} (dashed line; hollow markers do not fit it)", width, 9.5), fontsize=9.5)
    _legend(ax)
    ax.grid(True, which="major", alpha=0.25)
    fig.draw_without_rendering()
    return fig


def axis_sweep(runs: list[RunResult], axis: str, path: Path, units: str = "GiB") -> Path | None:
    fig = axis_sweep_figure(runs, axis, units)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    plt().close(fig)
    return path


def _cell(c, scale: int) -> str:
    if c is None:
        return "—"
    if c.status != "ok":
        return c.status
    return f"{c.peak_bytes / scale:,.2f}" + ("" if c.fits or c.fits is None else " ✗")


def sweep_rows(runs: list[RunResult], axis: str, units: str = "GiB") -> tuple[list[str], list[list[str]], str]:
    """(head, rows, unit): per optimizer, its peak at each value, and the largest value that fits."""
    values = sorted({v for r in runs if (v := sweep_value(r.scenario, axis)) is not None})
    points = _axis_points(runs, axis)
    unit, scale = size_unit((c.peak_bytes for pts in points.values() for _, c in pts), units)
    head = ["optimizer", *(f"{axis}={v}" for v in values), f"largest {axis} that fits"]
    rows = []
    for name, pts in sorted(points.items()):
        at = {v: c for v, c in pts}
        fitting = [v for v, c in pts if c.status == "ok" and c.fits]
        best = (str(max(fitting)) if fitting else "none") if _varies(axis, pts[0][1]) \
            else "(not swept)"
        rows.append([name, *(_cell(at.get(v), scale) for v in values), best])
    return head, rows, unit


def sweep_markdown(runs: list[RunResult], axis: str, planned: list[int], sub_dirs: dict[int, str],
                   chart: str | None = None, units: str = "GiB") -> str:
    """sweep.md: the table, what each column's run is, and which planned values have not run."""
    done = [v for v in planned if v in sub_dirs]
    lines = ["# ngl-profile sweep", ""]
    if runs:
        r = runs[0]
        head, rows, unit = sweep_rows(runs, axis, units)
        lines += [f"*{r.scenario['name']}*: {r.scenario['model']}, {_fixed(runs, axis)}, swept over {axis}; "
                  f"target {r.gpu['name']} ({human_bytes(r.gpu['memory_bytes'], units)}). Peak memory in {unit}; "
                  "✗: does not fit the target"
                  + (f" (a {human_bytes(512 << 20, units, 0)} CUDA context assumed)." if r.mode == "estimated"
                     else "."), ""]
        lines += [markdown_table(head, rows), ""]
    missing = [v for v in planned if v not in sub_dirs]
    if missing:
        lines += [f"Not finished (interrupted): {axis} = {', '.join(map(str, missing))}.", ""]
    lines += [f"- {axis}={v}: [{sub_dirs[v]}/results.json]({sub_dirs[v]}/results.json)" for v in done]
    if chart:
        lines += ["", f"![Peak memory vs {axis}]({chart})"]
    return "\n".join(lines) + "\n"
