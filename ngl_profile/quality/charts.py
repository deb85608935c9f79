"""Quality charts from a finished `train` results record (matplotlib, Agg); nothing here trains.

  loss_curves   train loss (median over seeds, band: min–max over seeds) and held-out loss points,
                against the step and against wall time (median over seeds of the cumulative step
                time: evaluations are not counted)
  pareto        final held-out loss against peak memory, one point per case, error bars the IQR
                over seeds, the Pareto front joined
Each `*_figure` returns a Figure; the function without the suffix saves it as PNG and returns the path.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ngl_profile.quality.verdict import pareto_front, points
from ngl_profile.report.charts import plt
from ngl_profile.zoo.gpus import GiB

__all__ = ["loss_curves", "loss_curves_figure", "pareto", "pareto_figure"]

# Okabe–Ito, colour-blind safe; markers tell official-formula rows apart in greyscale too
_PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _colors(run) -> dict:
    return {c.label: col for c, col in zip(run.cases, itertools.cycle(_PALETTE))}


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    """Trailing mean over k steps (per-batch train loss is noisy; the held-out points are not smoothed)."""
    if k <= 1 or y.shape[-1] < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0, axis=-1), axis=-1)
    out = np.empty_like(y)
    out[..., k - 1:] = (c[..., k:] - c[..., :-k]) / k
    for i in range(k - 1):
        out[..., i] = c[..., i + 1] / (i + 1)
    return out


def _title(run) -> str:
    q = run.scenario.get("quality", {})
    corpus = q.get("corpus", {})
    return (f"{run.scenario['name']}: {run.scenario['model']} on {corpus.get('bytes', 0) / 1e6:.1f} MB of Python "
            f"{corpus.get('python', '?')} stdlib source, {q.get('steps')} steps × {run.scenario['batch_size']}×"
            f"{run.scenario['seq_len']} bytes, {q.get('seeds')} seed{'s' if q.get('seeds') != 1 else ''}, {run.device}")


def loss_curves_figure(run):
    pyplot = plt()
    fig, (ax_step, ax_time) = pyplot.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    colors = _colors(run)
    base = run.scenario.get("quality", {}).get("baselines", {})
    for c in run.cases:
        curves = (c.quality or {}).get("curves") or []
        n = min((len(cv["train_loss"]) for cv in curves), default=0)
        if n == 0:
            continue
        col = colors[c.label]
        train = _smooth(np.array([cv["train_loss"][:n] for cv in curves], dtype=float), 10)
        t = np.median(np.array([np.cumsum(cv["step_s"][:n]) for cv in curves]), axis=0)
        steps = np.arange(1, n + 1)
        for ax, x in ((ax_step, steps), (ax_time, t)):
            ax.plot(x, np.median(train, axis=0), color=col, lw=1.4, label=f"{c.label} (train, 10-step mean)")
            ax.fill_between(x, train.min(axis=0), train.max(axis=0), color=col, alpha=0.18, lw=0)
        evs = [cv for cv in curves if cv["diverged_at"] is None]
        if evs:
            es = np.array(evs[0]["eval_steps"])
            held = np.array([cv["heldout_loss"] for cv in evs], dtype=float)
            med = np.median(held, axis=0)
            err = np.vstack([med - held.min(axis=0), held.max(axis=0) - med])
            t_at = np.concatenate([[0.0], t])[np.minimum(es, n)]
            ax_step.errorbar(es, med, yerr=err, fmt="o", ms=4, color=col, capsize=2)
            ax_time.errorbar(t_at, med, yerr=err, fmt="o", ms=4, color=col, capsize=2)
    for ax in (ax_step, ax_time):
        for key, text, style in (("unigram_loss", "unigram baseline (held-out)", ":"),
                                 ("uniform_loss", "uniform ln 256", "--")):
            if base.get(key):
                ax.axhline(base[key], color="#666666", ls=style, lw=1)
                ax.annotate(text, (0.01, base[key]), xycoords=("axes fraction", "data"), ha="left", va="bottom",
                            fontsize=8, color="#444444")
        ax.grid(alpha=0.3)
    ax_step.set_xlabel("step")
    ax_time.set_xlabel("wall seconds of training steps (median over seeds)")
    ax_step.set_ylabel("loss (nats per byte)")
    ax_step.legend(fontsize=8, loc="upper right")
    fig.suptitle(_title(run) + "\nlines: train loss, median and min–max band over seeds; "
                 "dots: held-out loss, median and min–max over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def pareto_figure(run):
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(8.5, 5.6))
    colors = _colors(run)
    pts = points(run)
    # MiB below a GiB: a small model's points would read 0.0079 … 0.0084
    scale, unit = (GiB, "GiB") if max((p.peak_bytes for p in pts), default=0) >= GiB else (1 << 20, "MiB")
    for p in pts:
        if p.loss is None:
            continue
        x = p.peak_bytes / scale
        err = [[p.loss - p.band[0]], [p.band[1] - p.loss]] if p.band else None
        # the official-formula row often lands on its twin: a hollow, larger square keeps both visible
        style = dict(fmt="s", ms=12, mfc="none", mew=1.6) if "official" in p.label else dict(fmt="o", ms=7)
        ax.errorbar([x], [p.loss], yerr=err, capsize=4, color=colors[p.label], label=p.label, **style)
        below = "official" in p.label  # under its twin's label, not over it
        ax.annotate(p.label, (x, p.loss), xytext=(8, -12 if below else 6), textcoords="offset points", fontsize=7,
                    color=colors[p.label])
    ax.margins(x=0.25, y=0.12)  # room for the point labels inside the axes
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot([p.peak_bytes / scale for p in front], [p.loss for p in front], color="#444444", lw=1, ls="--",
                label="Pareto front (lower loss and memory)")
    ax.set_xlabel(f"tensors live at the peak, {unit} (estimated for {run.gpu['name']}'s code paths, FakeTensorMode)")
    ax.set_ylabel("final held-out loss (nats per byte)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_title(run) + "\nerror bars: interquartile range over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt().close(fig)
    return path


def loss_curves(run, out: Path) -> Path:
    return _save(loss_curves_figure(run), Path(out) / "loss_curves.png")


def pareto(run, out: Path) -> Path:
    return _save(pareto_figure(run), Path(out) / "pareto.png")
