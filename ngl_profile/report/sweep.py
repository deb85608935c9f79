"""The size sweep chart: peak memory against model size, one line per optimizer across runs of
different models.

A line joins the cases of one optimizer *name*, even where each model's scenario gave it other
settings (a smaller history window for the 7B, say): the legend says which settings held for
which models. Runs whose batch × sequence differ are not mixed silently: the top axis gives each
model's, and the title says they differ.
"""
from __future__ import annotations

from ngl_profile.report.charts import CAPACITY, fit_text, plt
from ngl_profile.schema.results import RunResult

__all__ = ["sweep_figure"]

GiB = 1 << 30
MARKERS = "osD^v<>ph*"


def _settings(c) -> str:
    """What the label adds to the optimizer's name: "s=2, int8" for "natural-galore (s=2, int8)"."""
    name, label = c.optimizer["name"], c.label
    return label[len(name):].strip(" ()") if label.startswith(name) else label


def _series(runs: list[RunResult]) -> dict[str, list]:
    modes = len({r.mode for r in runs}) > 1
    points: dict[str, list] = {}
    for r in runs:
        ok = [c for c in r.cases if c.status == "ok" and c.params.get("total")]
        for c in ok:
            twins = sum(x.optimizer["name"] == c.optimizer["name"] for x in ok)
            key = c.optimizer["name"] if twins == 1 else c.label  # two settings in one run: two lines
            if modes:
                key += f" ({r.mode})"
            points.setdefault(key, []).append((c.params["total"], c.peak_bytes / GiB, c, r.scenario["model"]))
    return points


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


def sweep_figure(runs: list[RunResult]):
    runs = [r for r in runs if r.cases]
    if len({r.scenario["model"] for r in runs}) < 2:
        return None
    from matplotlib.ticker import NullLocator

    width = 11.0
    fig, ax = plt().subplots(figsize=(width, 6.0), layout="constrained")
    for i, (name, pts) in enumerate(sorted(_series(runs).items())):
        pts.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[i % len(MARKERS)],
                label=name + _changes(pts))
    ax.set_xscale("log")
    ax.set_yscale("log")
    for name, cap in {r.gpu["name"]: r.gpu["memory_bytes"] / GiB for r in runs}.items():
        ax.axhline(cap, color=CAPACITY, linestyle="--", linewidth=1)
        # at the left, where the small models sit far below any card's memory
        ax.text(0.01, cap, f"{name}: {cap:,.0f} GiB", color=CAPACITY, fontsize=8, va="bottom", ha="left",
                transform=ax.get_yaxis_transform(), gid="capacity-label")
    ax.set_xlabel("model parameters")
    ax.set_ylabel("GiB at the step's peak")
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
    # beside the axes: inside, the capacity line or a series would run through it
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="optimizer",
              title_fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.draw_without_rendering()
    return fig
