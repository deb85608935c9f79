"""report.md, a self-contained report.html (images embedded) and tidy results.csv / cases.csv from
finished runs. Rendering only: every figure here comes from the results files.

Both documents are written from one list of sections, so the HTML says everything report.md says
(the run's batch × seq × dtype, the precision recipe and attention modelled, each row's code path,
the environment, the roofline note, failures) and adds only styling: rows that do not fit and
negative headroom are highlighted. Sizes are in binary units (GiB) or decimal ones (GB), `units=`.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from ngl_profile.report import charts
from ngl_profile.report.tables import (check_units, checkpointing_note, code_paths, markdown_table, provenance_line,
                                       recipe_note, row_state, size_unit, summary_rows, unit_for, unit_note)
from ngl_profile.schema.results import RunResult, cases_frame, memory_frame
from ngl_profile.schema.scenario import safe_name

__all__ = ["render_report", "Section", "sections"]

# (caption, chart, whether it draws sizes and so takes the units)
_CHARTS = (("Memory at the step's peak, by category", charts.memory_breakdown, True),
           ("Throughput (measured)", charts.throughput, False),
           ("Tensor memory over one steady step", charts.step_timeline, True))
_CODE_PATHS = "Code path of each row (the optimizer implementation whose allocations were counted):"


@dataclass(kw_only=True)
class Section:
    """One run as both documents show it; `head`/`rows` empty for a section of charts only."""
    heading: str
    about: list[str] = field(default_factory=list)
    """sentences under the heading: where the numbers come from, the shape, checkpointing"""
    head: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    """per row: "ok", "too big", "oom" or "error" (tables.row_state)"""
    notes: list[str] = field(default_factory=list)
    """failures, the roofline projection's assumptions"""
    code_paths: list[tuple[str, str]] = field(default_factory=list)
    """(row label, the optimizer implementation whose allocations it counted)"""
    environment: str = ""
    charts: list[tuple[str, Path]] = field(default_factory=list)


def _headings(runs: list[RunResult]) -> list[str]:
    """"name: model on gpu", without the model where the name is the model; the mode added where two
    runs would otherwise read the same."""
    out = []
    for r in runs:
        s = r.scenario
        out.append(f"{s['model']} on {r.gpu['name']}" if s["name"] == s["model"]
                   else f"{s['name']}: {s['model']} on {r.gpu['name']}")
    return [f"{h} ({r.mode})" if out.count(h) > 1 else h for h, r in zip(out, runs)]


def _notes(run: RunResult) -> list[str]:
    notes = [f"**{c.label}**: {c.status} — {c.message}" for c in run.cases if c.status != "ok"]
    steps = sorted({int(c.step_time_s.get("steps") or 0) for c in run.cases if c.tokens_per_s})
    if steps:
        notes.append(f"tokens/s: the median of {'/'.join(map(str, steps))} timed steps")
    if "bf16_tflops" in run.gpu and run.gpu["bf16_tflops"] is None and run.mode == "estimated":
        notes.append(f"tokens/s n/a: {run.gpu['name']} is a memory size only, with no datasheet TFLOP/s or "
                     "bandwidth to project a speed from (name a card from `ngl-profile list gpus` for one)")
    projected = [c for c in run.cases if c.projected]
    assumptions = {c.projected["assumptions"] for c in projected}
    if len(assumptions) == 1:
        notes.append(f"tokens/s marked “proj.” are projected, not measured: {assumptions.pop()}")
    else:
        notes += [f"{c.label}: projected ≤ {c.projected['tokens_per_s_upper_bound']:,.0f} tokens/s "
                  f"({c.projected['assumptions']})" for c in projected]
    return notes


def _environment(run: RunResult) -> str:
    env = run.environment
    return (f"Environment: torch {env.get('torch')}, transformers {env.get('transformers')}, bitsandbytes "
            f"{env.get('bitsandbytes')}, peft {env.get('peft')}, device {env.get('device_name')}, driver "
            f"{env.get('driver')}, ngl-profile commit {env.get('commit')}, created {run.created_utc}.")


def _units_used(run: RunResult, units: str) -> str:
    """"MiB (2²⁰ bytes) and GiB (2³⁰ bytes)": the units of a run's size columns."""
    used = dict.fromkeys((unit_for(run, units)[0], size_unit((c.headroom_bytes for c in run.cases), units)[0]))
    return " and ".join(unit_note(u) for u in used)


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def sections(runs: list[RunResult], out: Path, units: str = "GiB") -> list[Section]:
    """Draw the charts into `out` and describe every run; cross-run charts come last. `units`: "GiB"
    (binary sizes) or "GB" (decimal)."""
    check_units(units)
    many = len(runs) > 1
    made = []
    for run, heading in zip(runs, _headings(runs)):
        s = run.scenario
        head, rows = summary_rows(run, units)
        about = [f"{provenance_line(run, units)}.",
                 f"Memory at the step's peak, in {_units_used(run, units)} as each column's header names; batch "
                 f"{s['batch_size']} × sequence {s['seq_len']}, {s['dtype']}"
                 f"{', activation checkpointing' if s.get('checkpointing') else ''}."]
        if recipe_note(run):
            about.append(f"Modelled: {recipe_note(run)}.")
        if checkpointing_note(run):
            about.append(_capital(checkpointing_note(run)) + ".")
        sec = Section(heading=heading, about=about, head=head, rows=rows, states=[row_state(c) for c in run.cases],
                      notes=_notes(run), code_paths=code_paths(run), environment=_environment(run))
        # a results file may come from anywhere: its scenario name is not trusted as a path
        prefix = f"{safe_name(s['name'])}-{run.mode}-" if many else ""
        for caption, fn, sized in _CHARTS:
            path = out / f"{prefix}{fn.__name__}.png"
            p = fn(run, path, units) if sized else fn(run, path)
            if p is not None:
                sec.charts.append((caption, p))
        made.append(sec)
    across = Section(heading="Across runs")
    by_scenario: dict[str, dict[str, RunResult]] = {}
    for run in runs:
        by_scenario.setdefault(run.scenario["name"], {})[run.mode] = run
    for name, modes in by_scenario.items():
        if {"estimated", "measured"} <= set(modes):
            p = charts.estimated_vs_measured(modes["estimated"], modes["measured"],
                                             out / f"{safe_name(name)}-estimated_vs_measured.png", units)
            if p is not None:
                across.charts.append((f"Estimated vs measured: {name}", p))
    p = charts.size_sweep(runs, out / "size_sweep.png", units)
    if p is not None:
        across.charts.append(("Peak memory vs model size", p))
    if across.charts:
        if len(made) == 1:  # one run: its own charts, no separate heading
            made[0].charts += across.charts
        else:
            made.append(across)
    return made


def _markdown(secs: list[Section]) -> str:
    md = ["# ngl-profile report", ""]
    for sec in secs:
        md += [f"## {sec.heading}", ""]
        if sec.about:
            md += [f"*{sec.about[0]}* " + " ".join(sec.about[1:]), ""]
        if sec.head:
            md += [markdown_table(sec.head, sec.rows), ""]
        if sec.code_paths:
            md += [_CODE_PATHS, ""] + [f"- **{label}**: {path}" for label, path in sec.code_paths] + [""]
        md += [f"- {n}" for n in sec.notes] + ([""] if sec.notes else [])
        if sec.environment:
            md += [sec.environment, ""]
        for caption, p in sec.charts:
            md += [f"### {caption}", "", f"![{caption}]({p.name})", ""]
    return "\n".join(md)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right}td{white-space:nowrap}td:first-child,th:first-child{text-align:left}"
        "th{background:#f4f4f4;vertical-align:bottom}.scroll{overflow-x:auto}"
        "tr.too-big td,tr.oom td,tr.error td{background:#fdecea}tr.oom td,tr.error td{font-weight:600}"
        "td.negative{color:#b00020;font-weight:600}img{max-width:100%}.prov{color:#555}.env{color:#555;"
        "font-size:12px}.notes{font-size:13px}")


def _inline(text: str) -> str:
    """The Markdown the notes use (**bold**) as HTML, everything else escaped."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html(secs: list[Section]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ngl-profile report</title>",
             f"<style>{_CSS}</style></head><body><h1>ngl-profile report</h1>"]
    for sec in secs:
        parts.append(f"<section><h2>{html.escape(sec.heading)}</h2>")
        if sec.about:
            parts.append(f"<p class='prov'><i>{html.escape(sec.about[0])}</i> "
                         f"{html.escape(' '.join(sec.about[1:]))}</p>")
        if sec.head:
            negative = [i for i, h in enumerate(sec.head) if h.startswith("headroom")]
            parts.append("<div class='scroll'><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in sec.head)
                         + "</tr>")
            for row, state in zip(sec.rows, sec.states):
                cls = "" if state == "ok" else f" class='{state.replace(' ', '-')}'"
                cells = [f"<td class='negative'>{html.escape(x)}</td>" if i in negative and x.startswith("-")
                         else f"<td>{html.escape(str(x))}</td>" for i, x in enumerate(row)]
                parts.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
            parts.append("</table></div>")
        if sec.code_paths:
            parts.append(f"<p class='notes'>{html.escape(_CODE_PATHS)}</p><ul class='notes'>"
                         + "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(path)}</li>"
                                   for label, path in sec.code_paths) + "</ul>")
        if sec.notes:
            parts.append("<ul class='notes'>" + "".join(f"<li>{_inline(n)}</li>" for n in sec.notes) + "</ul>")
        if sec.environment:
            parts.append(f"<p class='env'>{html.escape(sec.environment)}</p>")
        for caption, p in sec.charts:
            data = base64.b64encode(p.read_bytes()).decode()
            parts.append(f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_report(runs: list[RunResult], out: Path, units: str = "GiB") -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    secs = sections(runs, out, units)
    (out / "report.md").write_text(_markdown(secs))
    (out / "report.html").write_text(_html(secs))
    import pandas as pd

    pd.concat([memory_frame(r) for r in runs], ignore_index=True).to_csv(out / "results.csv", index=False)
    pd.concat([cases_frame(r) for r in runs], ignore_index=True).to_csv(out / "cases.csv", index=False)
    return [out / "report.md", out / "report.html", out / "results.csv", out / "cases.csv"] + \
        [p for sec in secs for _, p in sec.charts]
