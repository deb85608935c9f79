"""`check` and `compare` on screen: they take the finished records of analysis/regress.py
(a CheckOutcome, a Comparison) and print them — rich tables for the terminal, Markdown with --md."""
from __future__ import annotations

import sys

from rich.markup import escape

from ngl_profile.analysis.regress import CheckOutcome, Comparison, Row, fmt_value
from ngl_profile.schema.thresholds import MiB

__all__ = ["check_table", "print_check", "comparison_cells", "print_comparison"]


def _limit(r: Row) -> str:
    return "measured" if r.rel is None else f"{'+' if r.direction > 0 else '−'}{r.rel:.0%}"


def check_table(outcome: CheckOutcome):
    from rich.table import Table

    t = Table(title=escape(f"check {outcome.results} against {outcome.baseline}"))
    for col in ("optimizer", "metric", "baseline", "current", "limit", "verdict"):
        t.add_column(col)
    for r in outcome.verdict.rows:
        t.add_row(escape(r.case), r.metric, fmt_value(r.metric, r.baseline), fmt_value(r.metric, r.current),
                  _limit(r), "[red]REGRESSED[/]" if r.regressed else "ok")
    return t


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
    for note in v.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if v.problems:
        console.print(f"[bold red]{len(v.problems)} regression(s):[/]")
        for p in v.problems:
            console.print(f"  - {escape(p)}")
    else:
        console.print("[green]no regression[/]")


def _cell(metric: str, v) -> str:
    if v is None:
        return "—"
    if metric.startswith("memory."):
        return f"{v / MiB:,.1f} MiB"
    if metric.endswith("ratio"):
        return f"{v:.3f}"
    return f"{v:,.0f}"


def _delta(metric: str, a, b) -> str:
    """b − a in the values' own unit, and relative to a."""
    if a is None or b is None:
        return "—"
    if a == 0:
        return "new" if b else "0"
    d = b - a
    if metric.startswith("memory."):
        shown = f"{d / MiB:+,.1f} MiB"
    elif metric.endswith("ratio"):
        shown = f"{d:+.3f}"
    else:
        shown = f"{d:+,.0f}"
    return f"{shown} ({d / abs(a):+.1%})"


def comparison_cells(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of strings: optimizer, metric, each run's value, then each run's delta to [0]."""
    n = len(c.names)
    head = ["optimizer", "metric"] + [f"[{i}]" for i in range(n)] + [f"Δ[{i}]" for i in range(1, n)]
    rows = []
    for r in c.rows:
        rows.append([r.case, r.metric] + [_cell(r.metric, v) for v in r.values]
                    + [_delta(r.metric, r.values[0], v) for v in r.values[1:]])
    return head, rows


def print_comparison(c: Comparison, markdown: bool, console) -> None:
    head, rows = comparison_cells(c)
    legend = "; ".join(f"[{i}] {n}" for i, n in enumerate(c.names))
    if markdown:
        from ngl_profile.report.tables import markdown_table

        warn = "".join(f"\n> **warning:** {w}\n" for w in c.warnings)
        sys.stdout.write(markdown_table(head, rows) + f"\n\n{legend}\n" + warn)
        return
    from rich.table import Table

    for w in c.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    t = Table(caption=escape(legend), caption_justify="left")
    for h in head:
        t.add_column(escape(h), justify="left" if h in ("optimizer", "metric") else "right")
    for r in rows:
        t.add_row(*(escape(x) for x in r))
    console.print(t)
