"""`check` and `compare` on screen: they take the finished records of analysis/regress.py
(a CheckOutcome, a Comparison) and print them — rich tables for the terminal, Markdown with --md.
A timed figure whose run records its spread reads "median ±h": h is half its interquartile range over
the timed steps (asv's way of showing a timing)."""
from __future__ import annotations

import sys

from rich.markup import escape

from ngl_profile.analysis.compare import Comparison
from ngl_profile.analysis.regress import CheckOutcome, Row, fmt_value
from ngl_profile.analysis.spread import half_width
from ngl_profile.zoo.gpus import GB, MB, GiB, MiB

__all__ = ["check_table", "print_check", "comparison_cells", "comparison_table", "print_comparison"]

SPREAD_LEGEND = "±: half the interquartile range over the timed steps"
CHECK_RULE = ("speed with a ± on both sides is judged by the IQRs too: a slowdown past the limit fails only "
              "where the current IQR lies beyond the baseline's by more than the limit")


def _limit(r: Row) -> str:
    return "measured" if r.rel is None else f"{'+' if r.direction > 0 else '−'}{r.rel:.0%}"


def _sectioned(rows, headers: list[str], *, groups=None, narrow=None, title: str = "", caption: str = ""):
    """A FittedTable of (case, metric, cells...) rows: one section per case, led by its name in bold,
    then a row per metric — a 41-character label no longer takes a column of its own."""
    from ngl_profile.report.fitted import Column, FittedTable

    lead, styles, sections = [], [], set()
    cols: list[list[str]] = [[] for _ in headers]
    case = None
    for r in rows:
        if r[0] != case:
            case = r[0]
            sections.add(len(lead))
            lead.append(case)
            styles.append("bold")
            for col in cols:
                col.append("")
        lead.append(r[1])
        styles.append("")
        for col, cell in zip(cols, r[2:]):
            col.append(cell)
    groups = groups or [0] * len(headers)
    narrow = narrow or [()] * len(headers)
    columns = [Column(h, tuple(cells), group=g, narrow=nw(cells) if nw else ())
               for h, cells, g, nw in zip(headers, cols, groups, narrow)]
    return FittedTable(Column("optimizer / metric", tuple(lead), justify="left"), columns, title=title,
                       caption=caption, lead_styles=tuple(styles), sections=frozenset(sections))


def _pm(metric: str, band) -> str:
    """" ±h" for a band (h = half its width, in the value's unit, shown once), "" for none."""
    if band is None or metric.startswith("memory."):
        return ""
    h = half_width(band)
    if metric.endswith("ratio"):
        return f" ±{h:.3f}"
    if metric == "tokens_per_s":
        return f" ±{h:,.0f}"
    if metric.startswith("loss."):  # a held-out loss's band is over seeds
        return f" ±{h:.4f}"
    return f" ±{h * 1e3:,.3f}"


def _shown(metric: str, v, band=None) -> str:
    # the metric's name already says tokens_per_s: the unit again would only widen the column
    return escape(fmt_value(metric, v).removesuffix(" tokens/s") + (_pm(metric, band) if v is not None else ""))


def check_table(outcome: CheckOutcome):
    rows = [(r.case, r.metric, _shown(r.metric, r.baseline, r.baseline_band),
             _shown(r.metric, r.current, r.current_band), _limit(r),
             "[red]REGRESSED[/]" if r.regressed else "ok") for r in outcome.verdict.rows]
    return _sectioned(rows, ["baseline", "current", "limit", "verdict"],
                      title=escape(f"check {outcome.results} against {outcome.baseline}"))


def print_check(outcome: CheckOutcome, console) -> None:
    """The whole comparison, what was not judged and why, then the regressions (if any) once."""
    if outcome.exported is not None:
        console.print(f"benchmark JSON: {escape(str(outcome.exported))}")
    if outcome.updated:
        console.print(f"baseline updated: {escape(str(outcome.baseline))}")
        return
    v = outcome.verdict
    console.print(check_table(outcome))
    console.print(f"limits from {escape(outcome.thresholds_from)}")
    if any(r.baseline_band and r.current_band for r in v.rows):
        console.print(f"{SPREAD_LEGEND}; {CHECK_RULE}")
    for note in v.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if v.problems:
        console.print(f"[bold red]{len(v.problems)} regression(s):[/]")
        for p in v.problems:
            console.print(f"  - {escape(p)}")
    else:
        console.print("[green]no regression[/]")


def _unit(metric: str, values, units: str = "GiB") -> tuple[str, int, int]:
    """A memory row's unit (name, bytes, decimals): the largest in which every non-zero value of the
    row is at least 1 — GiB for a 7B's weights, MiB beside a 40 MiB history — so one row reads in one
    unit and its deltas in the same."""
    nonzero = [abs(v) for v in values if v]
    binary = units == "GiB"
    (big, big_scale), (small, small_scale) = (("GiB", GiB), ("MiB", MiB)) if binary else (("GB", GB), ("MB", MB))
    if nonzero and min(nonzero) >= big_scale:
        return big, big_scale, 2
    return small, small_scale, 1


def _cell(metric: str, v, unit=("MiB", MiB, 1), band=None) -> str:
    if v is None:
        return "—"
    if metric.startswith("memory."):
        name, scale, dec = unit
        return f"{v / scale:,.{dec}f} {name}"
    if metric.endswith("ratio"):
        return f"{v:.3f}{_pm(metric, band)}"
    if metric == "tokens_per_s":
        return f"{v:,.0f}{_pm(metric, band)}"
    if metric.startswith("loss."):
        return f"{v:.4f}{_pm(metric, band)} nats/byte"
    return f"{v * 1e3:,.3f} ms{_pm(metric, band)}"  # seconds: a step time


def _delta(metric: str, a, b, unit=("MiB", MiB, 1)) -> str:
    """b − a in the values' own unit, and relative to a."""
    if a is None or b is None:
        return "—"
    d = b - a
    if metric.startswith("memory."):
        name, scale, dec = unit
        shown = f"{d / scale:+,.{dec}f} {name}"
    elif metric.endswith("ratio"):
        shown = f"{d:+.3f}"
    elif metric == "tokens_per_s":
        shown = f"{d:+,.0f}"
    elif metric.startswith("loss."):
        shown = f"{d:+.4f}"
    else:
        shown = f"{d * 1e3:+,.3f} ms"
    if a == 0:  # no percentage of nothing
        return f"{shown} (new)" if b else shown
    rel = d / abs(a)
    if abs(rel) >= 100:  # a percentage of a near-zero base says nothing: a factor does
        return f"{shown} ({b / a:,.0f}×)"
    return f"{shown} ({rel:+,.1%})"


def _cells(r, units: str = "GiB") -> tuple[list[str], list[str]]:
    """A row's values and its deltas to [0], in the row's one unit (of `units`' family: GiB or GB)."""
    unit = _unit(r.metric, r.values, units)
    spreads = r.bands or (None,) * len(r.values)
    return ([_cell(r.metric, v, unit, band) for v, band in zip(r.values, spreads)],
            [_delta(r.metric, r.values[0], v, unit) for v in r.values[1:]])


def comparison_cells(c: Comparison, units: str = "GiB") -> tuple[list[str], list[list[str]]]:
    """Header and rows of strings: optimizer, metric, each run's value, then each run's delta to [0]."""
    n = len(c.names)
    head = ["optimizer", "metric"] + [f"[{i}]" for i in range(n)] + [f"Δ[{i}]" for i in range(1, n)]
    rows = []
    for r in c.rows:
        values, deltas = _cells(r, units)
        rows.append([r.case, r.metric] + values + deltas)
    return head, rows


def _match_lines(c: Comparison) -> list[str]:
    """One line per case matched across runs under another label or with other settings."""
    return [f"{m.case} compared with " + "; ".join(m.differences) for m in c.matches if m.differences]


def comparison_table(c: Comparison, units: str = "GiB"):
    """The terminal form: one section per case (its name, then a row per metric), each run's value and
    its delta to [0]; at 80 columns the percentage gets a column of its own and report/fitted.py spreads
    the runs over several tables if need be, so that nothing is cut."""
    from ngl_profile.report.fitted import Column

    n = len(c.names)
    rows = []
    for r in c.rows:
        values, deltas = _cells(r, units)
        rows.append((r.case, r.metric, *(escape(v) for v in values), *(escape(d) for d in deltas)))
    headers = [f"[{i}]" for i in range(n)] + [f"Δ[{i}]" for i in range(1, n)]
    groups = list(range(n)) + list(range(1, n))  # each run's value beside its delta

    def split(i):  # narrow: the delta and its percentage in columns of their own
        def columns(cells):
            parts = [d.partition(" (") for d in cells]
            return (Column(f"Δ[{i}]", tuple(a for a, _, _ in parts), group=i),
                    Column("%", tuple(b.rstrip(")") for _, _, b in parts), group=i))
        return columns

    order = [0] + [k for i in range(1, n) for k in (i, n - 1 + i)]  # [0], [1], Δ[1], [2], Δ[2], ...
    rows = [(r[0], r[1], *(r[2 + k] for k in order)) for r in rows]
    headers, groups = [headers[k] for k in order], [groups[k] for k in order]
    narrow = [split(groups[j]) if headers[j].startswith("Δ") else None for j in range(len(headers))]
    return _sectioned(rows, headers, groups=groups, narrow=narrow, caption=escape(_legend(c)))


def _legend(c: Comparison) -> str:
    legend = "; ".join(f"[{i}] {name}" for i, name in enumerate(c.names))
    spread = any(b is not None for r in c.rows for b in r.bands)
    return legend + (f"\n{SPREAD_LEGEND}; Δ: of the medians" if spread else "")


def print_comparison(c: Comparison, markdown: bool, console, units: str = "GiB") -> None:
    head, rows = comparison_cells(c, units)
    legend = _legend(c)
    matched = _match_lines(c)
    if markdown:
        from ngl_profile.report.tables import markdown_table

        warn = "".join(f"\n> **warning:** {w}\n" for w in c.warnings)
        notes = "".join(f"\n- settings differ: {m}" for m in matched)
        sys.stdout.write(markdown_table(head, rows) + f"\n\n{legend}\n" + (f"{notes}\n" if notes else "") + warn)
        return
    for w in c.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    console.print(comparison_table(c, units))
    for m in matched:
        console.print(f"[cyan]settings differ:[/] {escape(m)}")
