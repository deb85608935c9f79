"""Assertions for your own tests: a training step stays under a memory budget, or within x % of a
stored baseline. A failure's message shows the breakdown by category and what changed.

    from ngl_profile.testing import assert_peak_under, assert_within_baseline

    def test_step_memory():
        result = ngl_profile.estimate(build_model, build_optimizer, make_batch, gpu="4090")
        assert_peak_under(result, "12 GiB")
        assert_within_baseline(result, "tests/baselines/step.json", rel=0.05)

`result` is a CaseResult (estimate, profile's .case), a RunResult (every case is judged), or the
path of a results.json. A baseline made from a RunResult is a results.json (`ngl-profile check`
reads it too), from a CaseResult the case alone (as a case process writes it); record or refresh
it with update=True or NGL_PROFILE_UPDATE_BASELINE=1 in the environment. A missing baseline
fails, saying how to make one, rather than passing on nothing.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import CaseResult, RunResult, load_results

__all__ = ["assert_peak_under", "assert_within_baseline", "parse_bytes", "UPDATE_ENV"]

UPDATE_ENV = "NGL_PROFILE_UPDATE_BASELINE"
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_bytes(size) -> int:
    """Bytes from an int, or a string such as "12 GiB", "512MiB", "1.5 GB" (GB = 10⁹, GiB = 2³⁰)."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0:
            raise ValueError(f"a size must be ≥ 0 bytes; got {size}")
        return size
    if isinstance(size, str):
        m = _SIZE.fullmatch(size)
        unit = m.group(2).lower() if m else None
        if m and unit in _UNITS | {"": 1}:
            return int(float(m.group(1)) * _UNITS.get(unit, 1))
    raise ValueError(f"not a size: {size!r} (an int of bytes, or e.g. \"12 GiB\", \"512 MiB\", \"1.5 GB\")")


def _fmt(n: float, scale: int, unit: str) -> str:
    return f"{n / scale:,.2f} {unit}"


def _unit(values) -> tuple[int, str]:
    biggest = max((abs(v) for v in values if v is not None), default=0)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if biggest >= scale:
            return scale, unit
    return 1, "B"


def _cases(result) -> list[CaseResult]:
    if isinstance(result, CaseResult):
        return [result]
    if isinstance(result, RunResult):
        run = result
    elif isinstance(result, (str, os.PathLike)):
        run = load_results(result)
    else:
        raise ValueError(f"expected a CaseResult, a RunResult or a results.json path; got {type(result).__name__}")
    if not run.cases:
        raise AssertionError("the results hold no case to judge")
    return run.cases


def _describe(c: CaseResult) -> str:
    where = f", peak in {c.peak_phase}" if c.peak_phase else ""
    return f"{c.label} ({c.provenance}{where})"


def _not_ok(c: CaseResult) -> str | None:
    if c.status == "ok":
        return None
    return f"{_describe(c)} ended {c.status}" + (f": {c.message}" if c.message else "")


def _breakdown(c: CaseResult, scale: int, unit: str) -> list[str]:
    rows = [f"  {'category':<16}{unit:>14}{'share':>9}"]
    for k in CATEGORIES:
        v = c.memory_bytes.get(k, 0)
        if v:
            share = f"{v / c.peak_bytes:.1%}" if c.peak_bytes else ""
            rows.append(f"  {k:<16}{v / scale:>14,.2f}{share:>9}")
    rows.append(f"  {'peak':<16}{c.peak_bytes / scale:>14,.2f}")
    return rows


def assert_peak_under(result, limit) -> None:
    """Fail unless every case's peak is at most `limit` (bytes, or "12 GiB"); a case that ended in
    an OOM or an error fails too."""
    cap = parse_bytes(limit)
    problems = []
    for c in _cases(result):
        bad = _not_ok(c)
        if bad:
            problems.append(bad)
            continue
        if c.peak_bytes > cap:
            scale, unit = _unit([c.peak_bytes, cap])
            over = c.peak_bytes - cap
            problems.append("\n".join([
                f"{_describe(c)}: peak {_fmt(c.peak_bytes, scale, unit)} is over the limit "
                f"{_fmt(cap, scale, unit)} by {_fmt(over, scale, unit)}" + (f" ({over / cap:+.1%})" if cap else ""),
                *_breakdown(c, scale, unit)]))
    if problems:
        raise AssertionError("\n".join(problems))


def _update_requested(update: bool | None) -> bool:
    if update is not None:
        return bool(update)
    return os.environ.get(UPDATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _pick(cases: list[CaseResult], label: str, where: str) -> CaseResult:
    hit = next((c for c in cases if c.label == label), None)
    if hit is None:
        raise AssertionError(f"{where} has no case {label!r}; it has {', '.join(c.label for c in cases)}")
    return hit


def _pairs(base: list[CaseResult], cur: list[CaseResult], label: str | None, path: Path) -> list[tuple]:
    """(baseline case, current case) to judge: the one `label` names; else one against one whatever
    their labels; else each current case against the baseline's of the same label."""
    if label is not None:
        return [(_pick(base, label, f"baseline {path}"), _pick(cur, label, "the results"))]
    if len(base) == len(cur) == 1:
        return [(base[0], cur[0])]
    return [(_pick(base, c.label, f"baseline {path}"), c) for c in cur]


def _judge(b: CaseResult, c: CaseResult, rel: float, floor: int, two_sided: bool, path: Path) -> str | None:
    """The failure block for one case (its summary line and a row per category), or None."""
    bad = _not_ok(c)
    if bad:
        return bad
    rows, over = [], []
    metrics = [(k, b.memory_bytes.get(k, 0), c.memory_bytes.get(k, 0)) for k in CATEGORIES]
    metrics.append(("peak", b.peak_bytes, c.peak_bytes))
    scale, unit = _unit([v for _, x, y in metrics for v in (x, y)])
    for name, x, y in metrics:
        if not (x or y):
            continue
        d = y - x
        grew = d > floor and d > rel * x
        shrank = two_sided and -d > floor and -d > rel * x
        change = "0" if d == 0 else f"{d / scale:+,.2f}" + (f" ({d / x:+.1%})" if x else " (new)")
        mark = "  ← over the limit" if grew else "  ← under the limit" if shrank else ""
        rows.append(f"  {name:<16}{x / scale:>12,.2f}{y / scale:>12,.2f}  {change}{mark}")
        if grew or shrank:
            over.append(name)
    if not over:
        return None
    limit = f"±{rel:.1%}" if two_sided else f"+{rel:.1%}"
    floor_note = f" and {_fmt(floor, *_unit([floor]))}" if floor else ""
    head = (f"{_describe(c)} is outside its baseline {path} ({limit}{floor_note}) in: {', '.join(over)}\n"
            f"  {'category':<16}{'baseline':>12}{'current':>12}  change ({unit})")
    return "\n".join([head, *rows])


def assert_within_baseline(result, baseline, rel: float = 0.05, *, abs_bytes: int | str = 0,
                           label: str | None = None, two_sided: bool = False, update: bool | None = None) -> None:
    """Fail when the peak or any memory category of `result` grew past the baseline's by more than
    `rel` (relative) and more than `abs_bytes` (so a tiny category cannot flap); `two_sided` fails a
    shrink of the same size too (a stale baseline). Cases are matched by label (`label`: only that
    one); one case against a one-case baseline whatever its label. With update (or
    NGL_PROFILE_UPDATE_BASELINE=1) the baseline is rewritten from `result` instead."""
    if not (isinstance(rel, (int, float)) and not isinstance(rel, bool) and math.isfinite(rel) and rel >= 0):
        raise ValueError(f"rel must be a finite number ≥ 0 (0.05 is 5 %); got {rel!r}")
    floor = parse_bytes(abs_bytes)
    path = Path(baseline)
    if _update_requested(update):
        _write_baseline(result, path)
        return
    if not path.exists():
        raise AssertionError(f"no baseline at {path}: record it with update=True or {UPDATE_ENV}=1")
    pairs = _pairs(_load_baseline(path), _cases(result), label, path)
    problems = [p for p in (_judge(b, c, rel, floor, two_sided, path) for b, c in pairs) if p]
    if problems:
        raise AssertionError("\n".join(problems))


def _load_baseline(path: Path) -> list[CaseResult]:
    """A results.json's cases, or the one case of a case file (written from a bare CaseResult)."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"baseline {path}: not readable ({e.__class__.__name__}: {e})") from None
    if isinstance(data, dict) and "schema_version" in data:
        return load_results(path).cases
    known = set(CaseResult.__dataclass_fields__)
    if not (isinstance(data, dict) and isinstance(data.get("optimizer"), dict) and "status" in data
            and isinstance(data.get("memory_bytes", {}), dict)):
        raise ValueError(f"baseline {path}: neither a results.json nor a case file")
    return [CaseResult(**{k: v for k, v in data.items() if k in known})]


def _write_baseline(result, path: Path) -> None:
    """A CaseResult as a case file (what a case process writes: the record alone), anything else as
    the results.json it is."""
    from dataclasses import asdict

    from ngl_profile.records import write_run
    from ngl_profile.schema.results import write_json_atomic

    if isinstance(result, CaseResult):
        write_json_atomic(path, asdict(result))
        return
    write_run(result if isinstance(result, RunResult) else load_results(result), path)
