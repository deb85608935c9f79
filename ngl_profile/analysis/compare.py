"""`ngl-profile compare`: several runs side by side. Cases are matched across runs by label, else by
optimizer and settings (saying what differs), and the runs' scenario and machine differences are
returned as warnings. Timed figures carry their interquartile range over the timed steps where the
run records it (analysis/spread.py). Returns data; report/check_table.py prints it."""
from __future__ import annotations

from dataclasses import dataclass, field

from ngl_profile.analysis.regress import (LOSS, SAME_SCENARIO, duplicate_label, machine_difference, metrics,
                                          scenario_value, spread_bands)
from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import RunResult

__all__ = ["CompareRow", "CaseMatch", "Comparison", "comparison"]


@dataclass(frozen=True, slots=True)
class CompareRow:
    case: str
    """the case's label in the first run that has it (see CaseMatch)"""
    metric: str
    values: tuple
    """one per run, None where that run lacks it"""
    bands: tuple = ()
    """one per run: the value's IQR (q1, q3) over the timed steps, None where unknown; () for memory"""


@dataclass(frozen=True, slots=True)
class CaseMatch:
    """The cases of different runs compared as one: same label, or else the same optimizer with the
    same settings, or else the only case of that optimizer left on both sides."""
    case: str
    """the label its rows carry"""
    labels: tuple
    """one per run: the label of the matched case there, None where the run has none"""
    differences: tuple[str, ...] = ()
    """how a matched case differs from the first one, e.g. "[1] 'ngl (s=4)': history_size 2 → 4" """


@dataclass(kw_only=True)
class Comparison:
    names: list[str]
    """one per run: scenario (mode, time)"""
    rows: list[CompareRow]
    warnings: list[str] = field(default_factory=list)
    """where the runs are not like for like (another model, sequence length, machine, ...)"""
    matches: list[CaseMatch] = field(default_factory=list)
    """one per compared case, in row order"""


def _settings_difference(a, b) -> list[str]:
    """What differs between two cases' optimizers: the name, then each hyperparameter."""
    out = []
    if a.optimizer["name"] != b.optimizer["name"]:
        out.append(f"optimizer {a.optimizer['name']} → {b.optimizer['name']}")
    ha, hb = a.optimizer.get("hparams") or {}, b.optimizer.get("hparams") or {}
    for k in dict.fromkeys([*ha, *hb]):
        if ha.get(k) != hb.get(k):
            out.append(f"{k} {ha.get(k, 'unset')} → {hb.get(k, 'unset')}")
    return out


def _name(c) -> str:
    return c.optimizer["name"]


def _match_cases(runs: list[RunResult]) -> list[dict[int, object]]:
    """Groups of cases (run index → case), in the first run's order, then each later run's new ones."""
    groups: list[dict[int, object]] = [{0: c} for c in runs[0].cases]
    for i, run in enumerate(runs[1:], 1):
        left = list(run.cases)

        def take(same) -> None:
            for g in groups:
                if i in g:
                    continue
                anchor = next(iter(g.values()))
                hit = [c for c in left if same(anchor, c)]
                if hit:
                    g[i] = hit[0]
                    left.remove(hit[0])

        take(lambda a, c: c.label == a.label and _name(c) == _name(a))
        take(lambda a, c: _name(c) == _name(a) and (c.optimizer.get("hparams") or {}) ==
             (a.optimizer.get("hparams") or {}))

        # the one case of an optimizer left on each side: the same optimizer with other settings
        def unique(a, c) -> bool:
            if _name(c) != _name(a):
                return False
            open_groups = [g for g in groups if i not in g and _name(next(iter(g.values()))) == _name(a)]
            return len(open_groups) == 1 and sum(_name(x) == _name(a) for x in left) == 1

        take(unique)
        groups += [{i: c} for c in left]
    return groups


def comparison(runs: list[RunResult]) -> Comparison:
    """`ngl-profile compare`: every case's memory and speed across runs, the first as reference.
    Cases are matched by label, else by optimizer and settings, else by optimizer alone (and the
    differing settings are listed); runs that are not like for like are warned about."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two results files")
    for i, r in enumerate(runs):
        dup = duplicate_label(r)
        if dup is not None:
            raise ValueError(f"results [{i}] have two cases labelled {dup!r}: their rows would be mixed up")
    warnings = []
    for i, r in enumerate(runs[1:], 1):
        for k in SAME_SCENARIO + ("mode",):
            a, b = (runs[0].mode, r.mode) if k == "mode" else (scenario_value(runs[0], k), scenario_value(r, k))
            if a != b:
                warnings.append(f"[{i}] is not like [0]: " + (
                    "another model config" if k == "model_config" else
                    "another training protocol or corpus ([quality])" if k == "quality" else f"{k} {b!r} vs {a!r}"))
        speeds = all(any(c.tokens_per_s for c in x.cases) for x in (runs[0], r))
        other = machine_difference(runs[0], r) if speeds else None
        if other:
            warnings.append(f"[{i}] measured its speed on another machine or software than [0] ({other}): "
                            "its tokens/s compare only as ratios to AdamW")
    ms, spreads = [metrics(r) for r in runs], [spread_bands(r) for r in runs]
    # the held-out loss's band is over seeds, not timed steps; it is a row only for `train` runs
    timed = ["tokens_per_s", "tokens_per_s.adamw_ratio", "optimizer_step_s", "optimizer_step.adamw_ratio", LOSS]
    keys = [LOSS, "memory.peak"] + [f"memory.{k}" for k in CATEGORIES] + timed[:-1]
    rows, matches = [], []
    shown: set[str] = set()
    for g in _match_cases(runs):
        first = min(g)
        anchor = g[first]
        case = anchor.label if anchor.label not in shown else f"{anchor.label} [{first}]"
        shown.add(case)
        labels = tuple(g[i].label if i in g else None for i in range(len(runs)))
        diffs = []
        for i in sorted(g):
            c = g[i]
            if i == first:
                continue
            what = _settings_difference(anchor, c)
            named = f"[{i}] {c.label!r}" if c.label != anchor.label else f"[{i}]"
            if what or c.label != anchor.label:
                diffs.append(f"{named}: " + (", ".join(what) or "same settings"))
        matches.append(CaseMatch(case=case, labels=labels, differences=tuple(diffs)))
        for key in keys:
            vals = tuple(ms[i][labels[i]].get(key) if labels[i] is not None else None for i in range(len(runs)))
            if all(v in (None, 0.0) for v in vals):
                continue
            spread = tuple(spreads[i][labels[i]].get(key) if labels[i] is not None else None
                           for i in range(len(runs))) if key in timed else ()
            rows.append(CompareRow(case, key, vals, spread))
    names = [f"{r.scenario['name']} ({r.mode}, {r.created_utc or '?'})" for r in runs]
    return Comparison(names=names, rows=rows, warnings=warnings, matches=matches)
