"""Regression checks and run comparison.

A threshold is a tiny check object: `check(baseline, current) -> message | None`. Memory: a
relative increase above `rel` *and* above an absolute floor (so a category of a few KiB does not
flap). Speed is compared as a ratio to the same run's AdamW case — measured side by side on one
machine, ratios survive noisy CI hosts where absolute times do not. Everything is printed, then
the command fails once.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.thresholds import MiB, Thresholds
from ngl_profile.schema.results import ResultsError, RunResult, load_results, write_json_atomic

__all__ = ["Thresholds", "Check", "build_checks", "evaluate", "run_check", "compare_runs", "benchmark_json"]

_SAME_SCENARIO = ("model", "seq_len", "batch_size", "dtype", "checkpointing")


@dataclass(frozen=True, slots=True)
class Check:
    case: str
    metric: str
    direction: int  # +1: bigger is worse (memory, step time); −1: smaller is worse (throughput)
    rel: float
    floor: float = 0.0

    def check(self, baseline: float | None, current: float | None) -> str | None:
        if baseline is None or current is None:
            return None
        delta = (current - baseline) * self.direction
        if delta <= self.floor or delta <= self.rel * abs(baseline):
            return None
        pct = delta / abs(baseline) if baseline else math.inf
        return (f"{self.case}: {self.metric} {'rose' if self.direction > 0 else 'fell'} by {pct:.1%} "
                f"({_fmt(self.metric, baseline)} → {_fmt(self.metric, current)}; limit {self.rel:.0%})")


def _fmt(metric: str, v: float) -> str:
    if metric.endswith("ratio"):
        return f"{v:.3f}"
    return f"{v / MiB:,.2f} MiB"


def _adamw(run: RunResult):
    return next((c for c in run.cases if c.optimizer["name"] == "adamw" and c.status == "ok"), None)


def metrics(run: RunResult) -> dict[str, dict[str, float | None]]:
    """label → metric → value, for everything `check` and `compare` look at."""
    base = _adamw(run)
    out = {}
    for c in run.cases:
        m: dict[str, float | None] = {f"memory.{k}": float(c.memory_bytes.get(k, 0)) for k in CATEGORIES}
        m["memory.peak"] = float(c.peak_bytes)
        m["tokens_per_s"] = c.tokens_per_s
        m["tokens_per_s.adamw_ratio"] = (c.tokens_per_s / base.tokens_per_s
                                         if base and c.tokens_per_s and base.tokens_per_s else None)
        step, base_step = c.step_time_s.get("optimizer"), base.step_time_s.get("optimizer") if base else None
        m["optimizer_step.adamw_ratio"] = step / base_step if step and base_step else None
        out[c.label] = m
    return out


def build_checks(labels, th: Thresholds) -> list[Check]:
    checks = []
    for label in labels:
        for k in ("peak",) + CATEGORIES:
            checks.append(Check(label, f"memory.{k}", +1, th.memory_rel, th.memory_abs_bytes))
        checks.append(Check(label, "tokens_per_s.adamw_ratio", -1, th.throughput_rel))
        checks.append(Check(label, "optimizer_step.adamw_ratio", +1, th.step_time_rel))
    return checks


def _same_scenario(baseline: RunResult, current: RunResult) -> None:
    diff = [k for k in _SAME_SCENARIO if baseline.scenario.get(k) != current.scenario.get(k)]
    if diff:
        k = diff[0]
        raise ValueError(f"results and baseline are different scenarios: {k} {current.scenario.get(k)!r} vs "
                         f"{baseline.scenario.get(k)!r}")
    if baseline.mode != current.mode:
        raise ValueError(f"results are {current.mode}, the baseline is {baseline.mode}: compare like with like")


def evaluate(baseline: RunResult, current: RunResult, th: Thresholds) -> tuple[list[str], list[tuple]]:
    """(regressions, table rows [label, metric, baseline, current, limit, verdict])."""
    _same_scenario(baseline, current)
    mb, mc = metrics(baseline), metrics(current)
    problems, rows = [], []
    for label in mb:
        if label not in mc:
            problems.append(f"{label}: in the baseline, missing from the results")
            continue
        was, now = baseline.case(label), current.case(label)
        if was.status == "ok" and now.status != "ok":
            problems.append(f"{label}: status {was.status} → {now.status} ({now.message})")
    for chk in build_checks([lb for lb in mb if lb in mc], th):
        a, b = mb[chk.case].get(chk.metric), mc[chk.case].get(chk.metric)
        if a is None or b is None:
            continue
        msg = chk.check(a, b)
        if msg:
            problems.append(msg)
        if msg or chk.metric in ("memory.peak", "memory.history", "tokens_per_s.adamw_ratio"):
            rows.append((chk.case, chk.metric, _fmt(chk.metric, a), _fmt(chk.metric, b),
                         f"{'+' if chk.direction > 0 else '−'}{chk.rel:.0%}", "REGRESSED" if msg else "ok"))
    return problems, rows


def _thresholds(args, current: RunResult) -> Thresholds:
    table = dict(current.scenario.get("thresholds") or {})
    where = "scenario [thresholds]"
    if args.thresholds is not None:
        try:
            import tomllib
        except ModuleNotFoundError:
            import tomli as tomllib
        try:
            data = tomllib.loads(Path(args.thresholds).read_text())
        except FileNotFoundError:
            raise ValueError(f"{args.thresholds}: no such thresholds file") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{args.thresholds}: not valid TOML: {e}") from None
        table = data.get("thresholds", data)
        where = str(args.thresholds)
    return Thresholds.from_table(table, where)


def run_check(args, console) -> int:
    current = load_results(args.results)
    th = _thresholds(args, current)
    if args.export_benchmark_json:
        write_json_atomic(args.export_benchmark_json, benchmark_json(current))
    if args.update_baseline:
        if not Path(args.baseline).parent.exists():
            raise ValueError(f"{args.baseline}: its directory does not exist")
        write_json_atomic(args.baseline, current.to_dict())
        console.print(f"baseline updated: {args.baseline}")
        return 0
    try:
        baseline = load_results(args.baseline)
    except ResultsError as e:
        raise ResultsError(f"baseline: {e}") from None
    problems, rows = evaluate(baseline, current, th)
    from rich.table import Table

    t = Table(title=f"check {args.results} against {args.baseline}")
    for col in ("optimizer", "metric", "baseline", "current", "limit", "verdict"):
        t.add_column(col)
    for r in rows:
        t.add_row(*r[:5], f"[red]{r[5]}[/]" if r[5] != "ok" else "ok")
    console.print(t)
    if problems:
        console.print(f"[bold red]{len(problems)} regression(s):[/]")
        for p in problems:
            console.print(f"  - {p}")
        return 1
    console.print("[green]no regression[/]")
    return 0


def benchmark_json(run: RunResult) -> list[dict]:
    """github-action-benchmark's customSmallerIsBetter-style records."""
    out = []
    for label, m in metrics(run).items():
        out.append({"name": f"{run.scenario['name']}/{label}/peak", "unit": "bytes", "value": m["memory.peak"]})
        out.append({"name": f"{run.scenario['name']}/{label}/history", "unit": "bytes",
                    "value": m["memory.history"]})
        if m["tokens_per_s.adamw_ratio"] is not None:
            out.append({"name": f"{run.scenario['name']}/{label}/tokens_per_s_vs_adamw", "unit": "ratio",
                        "value": m["tokens_per_s.adamw_ratio"]})
    return out


def compare_runs(runs: list[RunResult], markdown: bool, console) -> int:
    if len(runs) < 2:
        raise ValueError("compare needs at least two results files")
    ms = [metrics(r) for r in runs]
    names = [f"{r.scenario['name']} ({r.mode}, {r.created_utc or '?'})" for r in runs]
    head = ["optimizer", "metric"] + [f"[{i}]" for i in range(len(runs))] + [f"Δ[{i}]" for i in range(1, len(runs))]
    rows = []
    keys = ["memory.peak"] + [f"memory.{k}" for k in CATEGORIES] + ["tokens_per_s", "tokens_per_s.adamw_ratio"]
    for label in ms[0]:
        for key in keys:
            vals = [m.get(label, {}).get(key) for m in ms]
            if all(v in (None, 0.0) for v in vals):
                continue
            row = [label, key] + [_cell(key, v) for v in vals]
            for v in vals[1:]:
                row.append(_delta(vals[0], v))
            rows.append(row)
    legend = "; ".join(f"[{i}] {n}" for i, n in enumerate(names))
    if markdown:
        from ngl_profile.report.tables import markdown_table

        sys.stdout.write(markdown_table(head, rows) + f"\n\n{legend}\n")
        return 0
    from rich.table import Table

    t = Table(caption=legend, caption_justify="left")
    for h in head:
        t.add_column(h, justify="left" if h in ("optimizer", "metric") else "right")
    for r in rows:
        t.add_row(*r)
    console.print(t)
    return 0


def _cell(key: str, v) -> str:
    if v is None:
        return "—"
    if key.startswith("memory."):
        return f"{v / MiB:,.1f} MiB"
    if key.endswith("ratio"):
        return f"{v:.3f}"
    return f"{v:,.0f}"


def _delta(a, b) -> str:
    if a is None or b is None:
        return "—"
    if a == 0:
        return "new" if b else "0"
    return f"{b - a:+,.3g} ({(b - a) / abs(a):+.1%})"
