"""Per-rank figures of a DDP/FSDP2 run: a table (terminal and markdown) and stacked bars, one bar per
rank of each case. A measured run has every rank's record (CaseResult.ranks); an estimate played
rank 0, the per-GPU worst case (see engine/distributed/parallel.py), and says so.

The "of which" columns split weights and grads into what distribution adds (roles_at_peak_bytes):
all-gathered (unsharded) parameters with FSDP2's all-gather buffer, and unsharded gradients with
FSDP2's reduce-scatter input or DDP's gradient buckets. The rest of each is this rank's own shard.
"""
from __future__ import annotations

from pathlib import Path

from ngl_profile.report.tables import markdown_table, size_unit, unit_note
from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import RunResult

__all__ = ["is_distributed", "rank_records", "rank_rows", "rich_ranks", "ranks_markdown", "per_rank_figure",
           "per_rank"]

_GATHERED = ("unsharded_weights", "all_gather_buffer")
_REDUCED = ("unsharded_grads", "reduce_scatter_buffer", "grad_buckets")
_STATE = ("moments", "quant_stats", "projectors", "history")


def is_distributed(run: RunResult) -> bool:
    return run.scenario.get("parallelism", "none") not in ("none", None)


def rank_records(run: RunResult) -> list[tuple[str, str, dict]]:
    """(case label, rank name, record) for every rank of every case, in order. A record has
    status, message, memory_bytes, peak_bytes, peak_phase, distributed."""
    n = run.scenario.get("world_size", 1)
    out = []
    for c in run.cases:
        ranks = c.ranks or [{"rank": c.distributed.get("rank", 0), "status": c.status, "message": c.message,
                             "memory_bytes": c.memory_bytes, "peak_bytes": c.peak_bytes,
                             "peak_phase": c.peak_phase, "distributed": c.distributed}]
        for r in ranks:
            name = f"{r['rank']}" if c.ranks else f"{r['rank']} of {n}"
            out.append((c.label, name, r))
    return out


def _roles(r: dict) -> dict:
    return (r.get("distributed") or {}).get("roles_at_peak_bytes") or {}


def rank_rows(run: RunResult, units: str = "GiB") -> tuple[list[str], list[list[str]], str]:
    recs = rank_records(run)
    unit, scale = size_unit([r.get("peak_bytes", 0) for _, _, r in recs], units)

    def f(b) -> str:
        return f"{b / scale:,.2f}"

    head = ["optimizer", "rank", f"peak {unit}", f"weights {unit}", "of which gathered", f"grads {unit}",
            "of which unsharded/buckets", f"optimizer state {unit}", f"activations {unit}", f"temporaries {unit}",
            f"slack {unit}", "peak in", "status"]
    rows = []
    for label, name, r in recs:
        m, roles = r.get("memory_bytes", {}), _roles(r)
        if r.get("status") != "ok":
            rows.append([label, name, *(["—"] * 10), f"{r.get('status')}: {r.get('message', '')[:80]}"])
            continue
        rows.append([label, name, f(r["peak_bytes"]), f(m.get("weights", 0)), f(sum(roles.get(k, 0) for k in _GATHERED)),
                     f(m.get("grads", 0)), f(sum(roles.get(k, 0) for k in _REDUCED)),
                     f(sum(m.get(k, 0) for k in _STATE)), f(m.get("activations", 0)), f(m.get("temporaries", 0)),
                     f(m.get("allocator_slack", 0)), r.get("peak_phase", ""), "ok"])
    return head, rows, unit


def _about(run: RunResult) -> str:
    s = run.scenario
    n, par = s.get("world_size", 1), s.get("parallelism")
    who = ("every rank measured (torchrun), each with its own tracker" if run.mode == "measured" else
           f"rank 0 of {n} estimated in one process on a fake process group; rank 0 holds the largest shard "
           "(torch.chunk gives the last ranks the short ones), so no rank's peak is larger")
    return (f"{par} × {n} ranks, batch {s['batch_size']} × seq {s['seq_len']} per rank: {who}. 'gathered': "
            "all-gathered parameters and the all-gather buffer (in weights); 'unsharded/buckets': unsharded "
            "gradients, the reduce-scatter input or DDP's gradient buckets (in grads)")


def rich_ranks(run: RunResult, units: str = "GiB"):
    from rich.markup import escape
    from rich.table import Table

    head, rows, unit = rank_rows(run, units)
    t = Table(title=f"per rank (per GPU), in {unit_note(unit)}", caption=escape(_about(run)), caption_justify="left")
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i in (0, len(head) - 1, len(head) - 2) else "right")
    for row in rows:
        t.add_row(*(escape(x) for x in row))
    return t


def ranks_markdown(run: RunResult, units: str = "GiB", chart: str | None = None) -> str:
    head, rows, unit = rank_rows(run, units)
    lines = ["# Per rank", "", _about(run) + ".", "", f"Sizes in {unit_note(unit)} at each rank's peak.", "",
             markdown_table(head, rows), ""]
    if chart:
        lines += [f"![Memory per rank]({chart})", ""]
    return "\n".join(lines)


def per_rank_figure(run: RunResult, units: str = "GiB"):
    """Stacked bars by category, one per rank of each case, the card's memory dashed where on scale."""
    from ngl_profile.report.charts import CAPACITY, COLORS, HATCH, fit_text, plt, wrap

    recs = [x for x in rank_records(run) if x[2].get("status") == "ok"]
    if not recs:
        return None
    unit, scale = size_unit([r["peak_bytes"] for _, _, r in recs], units)
    width = max(7.5, 0.9 * len(recs) + 3.5)
    fig, ax = plt().subplots(figsize=(width, 6.0), layout="constrained")
    xs = list(range(len(recs)))
    bottoms = [0.0] * len(recs)
    for cat in CATEGORIES:
        vals = [r["memory_bytes"].get(cat, 0) / scale for _, _, r in recs]
        if any(vals):
            ax.bar(xs, vals, bottom=bottoms, color=COLORS[cat], hatch=HATCH.get(cat), edgecolor="white",
                   linewidth=0.5, label=cat.replace("_", " "), width=0.7)
            bottoms = [b + v for b, v in zip(bottoms, vals)]
    for x, (_, _, r) in zip(xs, recs):
        gathered = sum(_roles(r).get(k, 0) for k in _GATHERED + _REDUCED) / scale
        if gathered:  # what distribution adds, outlined inside weights + grads
            ax.bar([x], [gathered], bottom=[r["memory_bytes"].get("weights", 0) / scale - sum(
                _roles(r).get(k, 0) for k in _GATHERED) / scale], fill=False, edgecolor="black", linestyle=":",
                linewidth=1.0, width=0.7, label="_added" if x else "unsharded / comm. buffers")
    cap = run.gpu["memory_bytes"] / scale
    top = max(bottoms)
    if cap <= 4 * top:
        ax.axhline(cap, color=CAPACITY, linestyle="--", linewidth=1.4)
        ax.text(0.995, cap, f"{run.gpu['name']}: {cap:,.1f} {unit}", color=CAPACITY, va="bottom", ha="right",
                fontsize=9, transform=ax.get_yaxis_transform())
    ax.set_xticks(xs, [wrap(f"{label}\nrank {name}", 14) for label, name, _ in recs], fontsize=8)
    ax.set_ylabel(f"{unit} at the rank's peak")
    ax.set_ylim(0, max(top, cap if cap <= 4 * top else 0) * 1.12 or 1)
    s = run.scenario
    fig.suptitle(fit_text(f"Memory per rank ({run.mode}) — {s['model']}, {s.get('parallelism')} × "
                          f"{s.get('world_size')} ranks, {s['dtype']}", width, 10.5), fontsize=10.5)
    failed = [f"{label} ({r.get('status')})" for label, _, r in rank_records(run) if r.get("status") != "ok"]
    note = _about(run) + (f". Not drawn: {', '.join(dict.fromkeys(failed))}" if failed else "")
    ax.set_title(fit_text(note, width * 0.8, 8), fontsize=8, color="#333333")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False, title="category")
    ax.spines[["top", "right"]].set_visible(False)
    fig.draw_without_rendering()
    return fig


def per_rank(run: RunResult, path: Path, units: str = "GiB") -> Path | None:
    from ngl_profile.report.charts import plt

    fig = per_rank_figure(run, units)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    plt().close(fig)
    return path


def rank_differences(estimated: RunResult, measured: RunResult, units: str = "GiB") -> str:
    """Markdown: for every case both runs have, each measured rank minus the estimate (rank 0 of the
    same world size), per tracked category and in total, in bytes (exact figures, no rounding)."""
    from ngl_profile.schema.categories import TRACKED

    head = ["optimizer", "rank", *TRACKED, "tracked peak", "peak in (measured / estimated)"]
    rows = []
    for m in measured.cases:
        e = estimated.case(m.label)
        if e is None or e.status != "ok" or m.status != "ok":
            rows.append([m.label, "—", *(["—"] * len(TRACKED)), "—",
                         f"not compared ({'no estimate' if e is None else e.status + ' / ' + m.status})"])
            continue
        e_peak = sum(e.memory_bytes.get(k, 0) for k in TRACKED)
        for r in m.ranks or [{"rank": 0, **vars(m)}]:
            mb = r["memory_bytes"]
            d = [mb.get(k, 0) - e.memory_bytes.get(k, 0) for k in TRACKED]
            rows.append([m.label, str(r["rank"]), *(f"{x:+,d}" if x else "0" for x in d),
                         f"{sum(mb.get(k, 0) for k in TRACKED) - e_peak:+,d}" if sum(d) else "0",
                         f"{r.get('peak_phase', '')} / {e.peak_phase}"])
    s = measured.scenario
    return "\n".join([
        "# Measured − estimated, per rank", "",
        f"{s['model']}, {s.get('parallelism')} × {s.get('world_size')} ranks, batch {s['batch_size']} × seq "
        f"{s['seq_len']} per rank, {s['dtype']}. Measured: {measured.environment.get('device_name', measured.device)}, "
        f"torchrun, every rank's own tracker. Estimated: rank 0 in one process on a fake process group, with "
        f"the {estimated.scenario.get('code_paths', 'gpu')} code paths. Bytes; 0 = identical.", "",
        markdown_table(head, rows), ""])
