"""report.md, a self-contained report.html (images embedded) and a tidy results.csv from finished
runs. Rendering only: every figure here comes from the results files."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ngl_profile.schema.results import RunResult, cases_frame, memory_frame
from ngl_profile.report import charts
from ngl_profile.schema.scenario import safe_name
from ngl_profile.report.tables import markdown_table, provenance_line, summary_rows, unit_for

__all__ = ["render_report"]


def _charts(runs: list[RunResult], out: Path) -> list[tuple[str, Path]]:
    """(caption, png) for everything the runs can show."""
    made = []
    many = len(runs) > 1
    for run in runs:
        # a results file may come from anywhere: its scenario name is not trusted as a path
        prefix = f"{safe_name(run.scenario['name'])}-{run.mode}-" if many else ""
        for caption, fn in (("Memory at the step's peak, by category", charts.memory_breakdown),
                            ("Throughput (measured)", charts.throughput),
                            ("Tensor memory over one step", charts.step_timeline)):
            p = fn(run, out / f"{prefix}{fn.__name__}.png")
            if p is not None:
                made.append((f"{caption} — {run.scenario['name']}", p))
    by_scenario: dict[str, dict[str, RunResult]] = {}
    for run in runs:
        by_scenario.setdefault(run.scenario["name"], {})[run.mode] = run
    for name, modes in by_scenario.items():
        if {"estimated", "measured"} <= set(modes):
            p = charts.estimated_vs_measured(modes["estimated"], modes["measured"],
                                             out / f"{safe_name(name)}-estimated_vs_measured.png")
            if p is not None:
                made.append((f"Estimated vs measured — {name}", p))
    p = charts.size_sweep(runs, out / "size_sweep.png")
    if p is not None:
        made.append(("Peak memory vs model size", p))
    return made


def _run_markdown(run: RunResult) -> list[str]:
    head, rows = summary_rows(run)
    unit = unit_for(run)[0]
    lines = [f"## {run.scenario['name']}: {run.scenario['model']} on {run.gpu['name']}", "",
             f"*{provenance_line(run)}.* Sizes in {unit}; batch {run.scenario['batch_size']} × sequence "
             f"{run.scenario['seq_len']}, {run.scenario['dtype']}"
             f"{', activation checkpointing' if run.scenario.get('checkpointing') else ''}.", "",
             markdown_table(head, rows), ""]
    for c in run.cases:
        if c.status != "ok":
            lines.append(f"- **{c.label}**: {c.status} — {c.message}")
        if c.projected:
            lines.append(f"- {c.label}: projected ≤ {c.projected['tokens_per_s_upper_bound']:,.0f} tokens/s "
                         f"({c.projected['assumptions']})")
    env = run.environment
    lines += ["", f"Environment: torch {env.get('torch')}, transformers {env.get('transformers')}, "
                  f"bitsandbytes {env.get('bitsandbytes')}, peft {env.get('peft')}, device "
                  f"{env.get('device_name')}, driver {env.get('driver')}, ngl-profile commit {env.get('commit')}, "
                  f"created {run.created_utc}.", ""]
    return lines


def render_report(runs: list[RunResult], out: Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = _charts(runs, out)
    md = ["# ngl-profile report", ""]
    for run in runs:
        md += _run_markdown(run)
    for caption, p in made:
        md += [f"### {caption}", "", f"![{caption}]({p.name})", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(runs, made))
    import pandas as pd

    pd.concat([memory_frame(r) for r in runs], ignore_index=True).to_csv(out / "results.csv", index=False)
    pd.concat([cases_frame(r) for r in runs], ignore_index=True).to_csv(out / "cases.csv", index=False)
    return [out / "report.md", out / "report.html", out / "results.csv", out / "cases.csv"] + [p for _, p in made]


def _html(runs: list[RunResult], made) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ngl-profile report</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             ".prov{color:#555;font-style:italic}</style></head><body><h1>ngl-profile report</h1>"]
    for run in runs:
        head, rows = summary_rows(run)
        parts.append(f"<h2>{html.escape(run.scenario['name'])}: {html.escape(run.scenario['model'])} on "
                     f"{html.escape(run.gpu['name'])}</h2><p class='prov'>{html.escape(provenance_line(run))}. "
                     f"Sizes in {unit_for(run)[0]}.</p><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>")
        parts.append("</table>")
        for c in run.cases:
            if c.status != "ok":
                parts.append(f"<p><b>{html.escape(c.label)}</b>: {c.status} — {html.escape(c.message)}</p>")
    for caption, p in made:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(caption)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
