"""Regression checks and run comparison. They return records; report/check_table.py prints them.

A threshold is a tiny check object: `check(baseline, current) -> message | None`.

- Memory: a relative increase above `rel` *and* above an absolute floor (so a category of a few KiB
  does not flap).
- Speed, twice. As a ratio to the same run's AdamW case: measured side by side on one machine,
  ratios survive noisy CI hosts where absolute times do not. And absolutely (tokens/s, optimizer step
  time), which is what sees every case getting slower together — but only when both runs come from
  the same machine and software; elsewhere the figure measures the machine, and the check says it
  was skipped and why.
- Speed with its spread: where both runs record the interquartile range of a timed figure over their
  timed steps (analysis/spread.py), a slowdown beyond the limit counts only if the bands are apart by
  more than the limit too. For a step time (bigger is worse), with baseline median b and IQR [b1, b3],
  current c and [c1, c3], limit rel and floor f:
      c − b > max(f, rel·b)   and   c1 − b3 > max(f, rel·b3)
  and mirrored for tokens/s (b1 − c3 > rel·b1). The first half is the rule for medians alone, the only
  one where either run lacks the spread (schema-1 files); the second says three quarters of the current
  steps are slower than three quarters of the baseline's by more than the limit, so a median that moved
  by as much as the steps scatter is not a regression. The price: a noisy run (a wide IQR) needs a
  larger slowdown to fail, by about its half-widths. A median beyond the limit that the spread explains
  is a note, not a failure; a regression's message gives both IQRs.
- Held-out loss (`ngl-profile train` runs, ngl_profile/quality/): a loss regression is a regression. The
  median over seeds must rise by more than heldout_loss_rel, and the seeds' quartile bands lie apart by
  more than it — the speed rule above with seeds in place of timed steps. Runs without it are not judged.
- A figure the baseline measured (> 0) that the results lack — 0, null, NaN, missing — fails
  whatever the limits: a case that stopped measuring must not pass as one that did not slow down.

The limits come from the baseline's scenario [thresholds] or a --thresholds file, never from the run
being judged (it could loosen its own). A baseline that is not a complete, clean run is refused, and
so is making one from such a run. Everything is collected, then the command fails once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ngl_profile.analysis.spread import Band, band_of, bands, separation
from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import ResultsError, RunResult, load_results, write_json_atomic
from ngl_profile.schema.thresholds import MiB, Thresholds

__all__ = ["Thresholds", "Check", "Row", "Verdict", "CheckOutcome", "metrics", "build_checks", "evaluate",
           "incomplete", "machine_difference", "duplicate_label", "load_thresholds", "check_results",
           "benchmark_json", "fmt_value", "fmt_band", "SAME_SCENARIO", "scenario_value", "spread_bands", "LOSS"]

SAME_SCENARIO = ("model", "model_config", "seq_len", "batch_size", "dtype", "precision", "attention",
                 "checkpointing", "code_paths", "quality")


def scenario_value(run: RunResult, key: str):
    """A scenario key as it would read in a file made today: files from before a key existed ran
    its default (bf16 or fp32 from the dtype, SDPA, the CPU's code paths in an estimate); a measured
    run runs its device's code paths whatever it asked; a model is its config, not only its name."""
    scn = run.scenario
    if key == "precision":
        return scn.get("precision") or {"float32": "fp32"}.get(scn.get("dtype"), "bf16")
    if key == "attention":
        return scn.get("attention") or "sdpa"
    if key == "code_paths":
        return (scn.get("code_paths") or "cpu") if run.mode == "estimated" else "the device's"
    if key == "model_config":
        return (scn.get("model_config") or {}).get("config")
    if key == "quality":  # the protocol and the corpus's bytes, not where this machine keeps them
        q = scn.get("quality")
        if not isinstance(q, dict):
            return None
        corpus = q.get("corpus") if isinstance(q.get("corpus"), dict) else {}
        return {**{k: v for k, v in q.items() if k not in ("corpus", "baselines")}, "corpus": corpus.get("sha256")}
    return scn.get(key)
# Absolute speed compares only on the same device, host and hot-path software: device_name (the GPU;
# on a CPU only "CPU (<arch>)", hence also machine, cpu_count and torch_threads), platform (the kernel
# build: two VMs of one image differ there), python (a small model's optimizer step is mostly Python),
# torch, cuda and driver (the kernels). Not the commit: that is what is being judged.
_SAME_MACHINE = ("device_name", "machine", "platform", "cpu_count", "torch_threads", "python", "torch", "cuda",
                 "driver")
_MUST_RECORD = ("device_name", "machine", "cpu_count", "torch")
_SHOWN = ("memory.peak", "memory.history", "tokens_per_s", "tokens_per_s.adamw_ratio", "optimizer_step_s",
          "optimizer_step.adamw_ratio", "loss.heldout")
LOSS = "loss.heldout"
"""the held-out loss (nats per byte), median over seeds, of a `ngl-profile train` run's case"""
_RATIO_OF = {"tokens_per_s.adamw_ratio": "tokens_per_s", "optimizer_step.adamw_ratio": "optimizer_step_s"}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x) -> float | None:
    return x if _finite(x) and x > 0 else None


def fmt_value(metric: str, v) -> str:
    """A metric's value with its unit, as check's messages and table show it."""
    if v is None:
        return "—"
    if not _finite(v):
        return str(v)
    if metric.startswith("memory."):
        return f"{v / MiB:,.2f} MiB"
    if metric.endswith("ratio"):
        return f"{v:.3f}"
    if metric.startswith("loss."):
        return f"{v:.4f} nats/byte"
    if metric == "tokens_per_s":
        return f"{v:,.0f} tokens/s"
    return f"{v * 1e3:,.3f} ms"


def fmt_band(metric: str, band: Band) -> str:
    """An IQR as "7.400–7.900 ms": the unit once, after the upper edge."""
    lo, hi = fmt_value(metric, band[0]), fmt_value(metric, band[1])
    num, _, unit = lo.partition(" ")
    return f"{num}–{hi}" if unit and hi.endswith(" " + unit) else f"{lo}–{hi}"


@dataclass(frozen=True, slots=True)
class Check:
    case: str
    metric: str
    direction: int  # +1: bigger is worse (memory, step time); −1: smaller is worse (throughput)
    rel: float | None
    """largest allowed relative change for the worse; None: only checked to be still measured"""
    floor: float = 0.0
    """a change for the worse this small never fails"""
    required: bool = False
    """0 where the baseline measured > 0 fails too (a peak, tokens/s, a step time: 0 is not a figure)"""

    def check(self, baseline, current, spreads: tuple[Band, Band] | None = None) -> str | None:
        """The regression, or None. `spreads`: (baseline's, current's) IQR, where both are known."""
        return self.judge(baseline, current, spreads)[0]

    def judge(self, baseline, current, spreads: tuple[Band, Band] | None = None) -> tuple[str | None, str | None]:
        """(regression, note): the note says where a median beyond the limit lies within the spread."""
        if not _finite(baseline):
            return None, None  # the baseline measured nothing to hold it to
        if not _finite(current) or (self.required and baseline > 0 and current <= 0):
            now = "missing" if current is None else fmt_value(self.metric, current)
            return f"{self.case}: {self.metric} no longer measured ({fmt_value(self.metric, baseline)} → {now})", None
        if self.rel is None:
            return None, None
        delta = (current - baseline) * self.direction
        if delta <= self.floor or delta <= self.rel * abs(baseline):
            return None, None
        change = f"by {delta / abs(baseline):,.1%}" if baseline else "from nothing"  # a new category: no %
        said = (f"{self.case}: {self.metric} {'rose' if self.direction > 0 else 'fell'} {change} "
                f"({fmt_value(self.metric, baseline)} → {fmt_value(self.metric, current)}")
        if spreads is None:
            return f"{said}; limit {self.rel:.0%})", None
        was, now = spreads
        gap, edge = separation(self.direction, was, now)
        apart = f"{gap / edge:+,.1%} between them" if gap > 0 else "overlapping"
        iqr = f"IQR {fmt_band(self.metric, now)} vs {fmt_band(self.metric, was)}, {apart}"
        if gap <= self.floor or gap <= self.rel * edge:
            return None, f"{said}; {iqr}; limit {self.rel:.0%}): within the runs' spread, not a regression"
        return f"{said}; {iqr}; limit {self.rel:.0%})", None


def _adamw(run: RunResult):
    return next((c for c in run.cases if c.optimizer["name"] == "adamw" and c.status == "ok"), None)


def metrics(run: RunResult) -> dict[str, dict[str, float | None]]:
    """label → metric → value, for everything `check` and `compare` look at. A ratio to AdamW is None
    unless both figures are positive."""
    ref = _adamw(run)
    ref_tps = _positive(ref.tokens_per_s) if ref else None
    ref_step = _positive(ref.step_time_s.get("optimizer")) if ref else None
    out = {}
    for c in run.cases:
        m: dict[str, float | None] = {f"memory.{k}": _as_float(c.memory_bytes.get(k, 0)) for k in CATEGORIES}
        m["memory.peak"] = _as_float(c.peak_bytes)
        m["tokens_per_s"] = c.tokens_per_s
        m["optimizer_step_s"] = c.step_time_s.get("optimizer")
        tps, step = _positive(c.tokens_per_s), _positive(m["optimizer_step_s"])
        m["tokens_per_s.adamw_ratio"] = tps / ref_tps if tps and ref_tps else None
        m["optimizer_step.adamw_ratio"] = step / ref_step if step and ref_step else None
        quality = getattr(c, "quality", None)
        m[LOSS] = quality.get("heldout_loss") if isinstance(quality, dict) else None
        out[c.label] = m
    return out


def spread_bands(run: RunResult) -> dict[str, dict[str, Band | None]]:
    """analysis/spread.py's bands, plus the held-out loss's quartile band over seeds where recorded."""
    out = bands(run)
    for c in run.cases:
        quality = getattr(c, "quality", None)
        if isinstance(quality, dict):
            out[c.label][LOSS] = band_of(quality.get("heldout_loss"), quality.get("heldout_loss_stats"))
    return out


def _below_floor(mb: dict, mc: dict, label: str, floor: float) -> bool:
    """Both runs' optimizer step of this case shorter than the floor: too short to judge."""
    steps = (mb[label].get("optimizer_step_s"), mc[label].get("optimizer_step_s"))
    return all(_finite(x) and x < floor for x in steps)


def _as_float(x):
    return float(x) if _finite(x) else x


def build_checks(labels, th: Thresholds, absolute: bool = True) -> list[Check]:
    """`absolute`: hold absolute speed to its limits (same machine); else only to being measured."""
    checks = []
    for label in labels:
        checks.append(Check(label, "memory.peak", +1, th.memory_rel, th.memory_abs_bytes, required=True))
        for k in CATEGORIES:
            checks.append(Check(label, f"memory.{k}", +1, th.memory_rel, th.memory_abs_bytes))
        checks.append(Check(label, "tokens_per_s", -1, th.throughput_abs_rel if absolute else None, required=True))
        checks.append(Check(label, "tokens_per_s.adamw_ratio", -1, th.throughput_rel))
        checks.append(Check(label, "optimizer_step_s", +1, th.step_time_abs_rel if absolute else None,
                            th.step_time_abs_floor_s, required=True))
        checks.append(Check(label, "optimizer_step.adamw_ratio", +1, th.step_time_rel))
        # only where the baseline has a held-out loss (a train run): judge() passes a missing baseline
        checks.append(Check(label, LOSS, +1, th.heldout_loss_rel, required=True))
    return checks


def _same_scenario(baseline: RunResult, current: RunResult) -> None:
    diff = [k for k in SAME_SCENARIO if scenario_value(baseline, k) != scenario_value(current, k)]
    if diff:
        k = diff[0]
        if k == "model_config":
            raise ValueError(f"results and baseline are different scenarios: model {current.scenario.get('model')!r} "
                             "has another config than the baseline's")
        raise ValueError(f"results and baseline are different scenarios: {k} {scenario_value(current, k)!r} vs "
                         f"{scenario_value(baseline, k)!r}")
    if baseline.mode != current.mode:
        raise ValueError(f"results are {current.mode}, the baseline is {baseline.mode}: compare like with like")


def duplicate_label(run: RunResult) -> str | None:
    seen = set()
    for c in run.cases:
        if c.label in seen:
            return c.label
        seen.add(c.label)
    return None


def incomplete(run: RunResult) -> str | None:
    """Why `run` is not a complete, clean run — what a baseline must be — or None when it is."""
    if not run.cases:
        return "it has no cases"
    dup = duplicate_label(run)
    if dup is not None:
        return f"two cases are labelled {dup!r}"
    bad = next((c for c in run.cases if c.status != "ok"), None)
    if bad is not None:
        return f"case {bad.label!r} ended {bad.status}" + (f" ({bad.message})" if bad.message else "")
    planned = run.planned
    if planned is not None:
        done = {c.label for c in run.cases}
        missing = [p for p in planned if p not in done]
        if missing:
            return (f"it was interrupted: {len(planned) - len(missing)} of {len(planned)} planned cases "
                    f"finished ({', '.join(missing)} missing)")
    return None


def machine_difference(baseline: RunResult, current: RunResult) -> str | None:
    """Why absolute speeds of these runs do not compare (another machine or software), or None."""
    if baseline.device != current.device:
        return f"device {current.device!r} vs {baseline.device!r} in the baseline"
    for k in _MUST_RECORD:
        for run, which in ((baseline, "the baseline"), (current, "the results")):
            if run.environment.get(k) is None:
                return f"{which} does not record {k}"
    for k in _SAME_MACHINE:
        was, now = baseline.environment.get(k), current.environment.get(k)
        if was != now:
            return f"{k} {now!r} vs {was!r} in the baseline"
    return None


@dataclass(frozen=True, slots=True)
class Row:
    """One line of check's table: a metric of a case, both values, its limit, and the verdict."""
    case: str
    metric: str
    baseline: float | None
    current: float | None
    direction: int
    rel: float | None
    regressed: bool
    baseline_band: Band | None = None
    """the IQR over the timed steps, where the run records it"""
    current_band: Band | None = None


@dataclass(kw_only=True)
class Verdict:
    problems: list[str] = field(default_factory=list)
    """each regression, one line: the command fails when there is any"""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """what was not judged and why (new cases, absolute speed on another machine, ...): not failures"""


def evaluate(baseline: RunResult, current: RunResult, th: Thresholds) -> Verdict:
    """Judge `current` against `baseline` with the limits `th` (which must not come from `current`)."""
    _same_scenario(baseline, current)
    why = incomplete(baseline)
    if why:
        raise ValueError(f"the baseline is not a complete run, refusing to judge against it: {why}")
    dup = duplicate_label(current)
    if dup is not None:
        raise ValueError(f"the results have two cases labelled {dup!r}: cannot tell which one to judge")
    v = Verdict()
    if baseline.planned is None:
        v.notes.append("the baseline does not list its planned cases (an older file), so it cannot be shown "
                       "to be uninterrupted; re-make it with --update-baseline")
    mb, mc = metrics(baseline), metrics(current)
    sb, sc = spread_bands(baseline), spread_bands(current)
    judged = []
    for label in mb:
        now = current.case(label)
        if now is None:
            v.problems.append(f"{label}: in the baseline, missing from the results")
        elif now.status != "ok":  # its figures are those of a failure: the status says it all
            v.problems.append(f"{label}: status ok → {now.status} ({now.message})")
        else:
            judged.append(label)
    v.notes += [f"{label}: new in the results, not in the baseline (not judged)" for label in mc if label not in mb]
    other = machine_difference(baseline, current)
    if other:
        v.notes.append(f"absolute tokens/s and optimizer step time only checked to be still measured, not "
                       f"against their limits: another machine or software ({other})")
    # AdamW's own figure gone: its case already fails above; every ratio failing with it says nothing new
    unref = [r for r, m in _RATIO_OF.items() if _ref(baseline, m) is not None and _ref(current, m) is None]
    if unref:
        v.notes.append(f"{', '.join(unref)} not judged: the results have no AdamW figure to divide by")
    for chk in build_checks(judged, th, absolute=other is None):
        if chk.metric in unref:
            continue
        a, b = mb[chk.case][chk.metric], mc[chk.case][chk.metric]
        ba, bb = sb[chk.case].get(chk.metric), sc[chk.case].get(chk.metric)
        if chk.metric == "optimizer_step.adamw_ratio" and _below_floor(mb, mc, chk.case, th.step_time_abs_floor_s):
            # a per-layer optimizer's "optimizer" phase is tens of µs (its work is in backward): a ratio
            # of timer noise, not of the optimizer; the absolute floor applies to the ratio too
            continue
        msg, note = chk.judge(a, b, (ba, bb) if ba and bb else None)
        if msg:
            v.problems.append(msg)
        if note:
            v.notes.append(note)
        if msg or (chk.metric in _SHOWN and _finite(a)):
            v.rows.append(Row(chk.case, chk.metric, a, b, chk.direction, chk.rel, msg is not None, ba, bb))
    unknown = [which for run, which in ((baseline, "the baseline"), (current, "the results"))
               if not any(c.tokens_per_s_stats or c.step_time_stats for c in run.cases)]
    timed = any(_finite(mb[label].get("tokens_per_s")) for label in judged)
    if unknown and timed:
        who = " and ".join(unknown) + (" record no spread of their" if len(unknown) > 1 else
                                       " records no spread of its")
        v.notes.append(f"{who} timings (older results files have none): speed judged on medians alone")
    return v


def _ref(run: RunResult, metric: str) -> float | None:
    ref = _adamw(run)
    if ref is None:
        return None
    return _positive(ref.tokens_per_s if metric == "tokens_per_s" else ref.step_time_s.get("optimizer"))


def load_thresholds(path) -> Thresholds:
    """The [thresholds] table of a TOML file (a scenario file will do)."""
    from ngl_profile.schema.presets import read_toml

    data = read_toml(Path(path), what="thresholds file")
    if "thresholds" not in data:
        raise ValueError(f"{path}: no [thresholds] table")
    return Thresholds.from_table(data["thresholds"], f"{path}: [thresholds]")


@dataclass(kw_only=True)
class CheckOutcome:
    results: Path
    baseline: Path
    verdict: Verdict | None = None
    """None when the baseline was rewritten instead of judged against"""
    thresholds_from: str = ""
    updated: bool = False
    exported: Path | None = None

    @property
    def exit_code(self) -> int:
        """1 when a regression was found, else 0 (refusals and errors are exceptions: exit 2)."""
        return 1 if self.verdict is not None and self.verdict.problems else 0


def check_results(results, baseline, *, thresholds=None, update_baseline: bool = False,
                  export_benchmark_json=None) -> CheckOutcome:
    """`ngl-profile check`: judge `results` against `baseline`, or make `results` the baseline.
    Bad input and refusals raise ValueError/OSError; nothing is written unless everything holds."""
    th = load_thresholds(thresholds) if thresholds is not None else None  # bad input before any work
    current = load_results(results)
    dup = duplicate_label(current)
    if dup is not None:
        raise ValueError(f"{results}: two cases are labelled {dup!r}: cannot tell which one to judge")
    out = CheckOutcome(results=Path(results), baseline=Path(baseline))
    if update_baseline:
        if not Path(baseline).parent.exists():
            raise ValueError(f"{baseline}: its directory does not exist")
        why = incomplete(current) or (None if current.planned is not None else
                                      "it does not list its planned cases (an older file), so it cannot be "
                                      "shown to be complete: run it again")
        if why:
            raise ValueError(f"{results}: not made the baseline: {why}")
        out.updated = True
    else:
        try:
            base = load_results(baseline)
        except ResultsError as e:
            raise ResultsError(f"baseline: {e}") from None
        why = incomplete(base)
        if why:
            raise ValueError(f"baseline {baseline}: not a complete run, refusing to judge against it: {why}")
        if th is None:
            th = Thresholds.from_table(base.scenario.get("thresholds") or {}, f"{baseline}: scenario.thresholds")
            out.thresholds_from = (f"{baseline} (its scenario's [thresholds])" if base.scenario.get("thresholds")
                                   else "the defaults (the baseline's scenario sets none)")
        else:
            out.thresholds_from = str(thresholds)
        out.verdict = evaluate(base, current, th)
    if export_benchmark_json:
        write_json_atomic(export_benchmark_json, benchmark_json(current))
        out.exported = Path(export_benchmark_json)
    if update_baseline:
        write_json_atomic(baseline, current.to_dict())
    return out


def benchmark_json(run: RunResult) -> list[dict]:
    """github-action-benchmark's customSmallerIsBetter-style records."""
    out = []
    for label, m in metrics(run).items():
        out.append({"name": f"{run.scenario['name']}/{label}/peak", "unit": "bytes", "value": m["memory.peak"]})
        out.append({"name": f"{run.scenario['name']}/{label}/history", "unit": "bytes",
                    "value": m["memory.history"]})
        # smaller is better in this format: the step time's ratio, not tokens/s's (where bigger is)
        if m["optimizer_step.adamw_ratio"] is not None:
            out.append({"name": f"{run.scenario['name']}/{label}/optimizer_step_vs_adamw", "unit": "ratio",
                        "value": m["optimizer_step.adamw_ratio"]})
    return out
