"""The spread of a timed figure, and how far apart two spreads are: what `check` judges speed by and
what `compare` shows.

A figure's band is its interquartile range over the timed steps, [q1, q3] (measure/timing.py; the
statistics pytest-benchmark records). It is shown as the median ± half the IQR, asv's error measure
(asv `statistics.get_err`). A figure whose statistics are absent (results files of schema version 1,
estimated runs) or do not bracket its headline median has no band: its spread is unknown.

A ratio to AdamW divides two figures measured in different processes, so its band is made from both:
in log space the quartile half-widths of independent figures add in quadrature (exact when the log
step times are normal, since the half-widths are then 0.674 σ and σ² adds; an approximation
otherwise). AdamW's own ratio is 1 with no spread: it is one figure divided by itself.

`separation` is the rule's second half: the relative gap between the two bands' near edges in the
direction that is worse, e.g. for a step time (bigger is worse) (current q1 − baseline q3) / baseline
q3. Above a limit rel it says that three quarters of the current steps are slower, by more than rel,
than three quarters of the baseline's — a statement about both runs' steps, not only their medians.
"""
from __future__ import annotations

import math

__all__ = ["Band", "band_of", "ratio_band", "bands", "separation", "half_width"]

Band = tuple  # (q1, q3), q1 ≤ q3, both > 0

_TIMED = ("tokens_per_s", "optimizer_step_s")
_RATIOS = {"tokens_per_s.adamw_ratio": "tokens_per_s", "optimizer_step.adamw_ratio": "optimizer_step_s"}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def band_of(median, stats) -> Band | None:
    """(q1, q3) of `stats` when they bracket `median` (the headline figure they belong to), else None."""
    if not isinstance(stats, dict) or not _positive(median):
        return None
    q1, q3 = stats.get("q1"), stats.get("q3")
    if not (_positive(q1) and _positive(q3)):
        return None
    slack = 1e-9 * median  # the same median computed twice may differ in its last bit
    if not (q1 - slack <= median <= q3 + slack):
        return None
    return (min(q1, median), max(q3, median))


def ratio_band(num: float, num_band: Band, den: float, den_band: Band) -> Band:
    """The band of num / den, each with its own band, measured independently (the module's note)."""
    r = num / den
    low = math.hypot(math.log(num / num_band[0]), math.log(den_band[1] / den))
    high = math.hypot(math.log(num_band[1] / num), math.log(den / den_band[0]))
    return (r * math.exp(-low), r * math.exp(high))


def _figure(case, metric):
    if metric == "tokens_per_s":
        return case.tokens_per_s, case.tokens_per_s_stats
    return case.step_time_s.get("optimizer"), (case.step_time_stats or {}).get("optimizer")


def bands(run) -> dict[str, dict[str, Band | None]]:
    """label → metric → band, for the timed metrics `check` judges (regress.metrics's names)."""
    ref = next((c for c in run.cases if c.optimizer["name"] == "adamw" and c.status == "ok"), None)
    out = {}
    for c in run.cases:
        m = {}
        for metric in _TIMED:
            m[metric] = band_of(*_figure(c, metric))
        for ratio, metric in _RATIOS.items():
            if ref is None:
                m[ratio] = None
            elif c is ref:
                m[ratio] = (1.0, 1.0) if m[metric] is not None else None
            else:
                (v, _), (a, _) = _figure(c, metric), _figure(ref, metric)
                ref_band = band_of(*_figure(ref, metric))
                m[ratio] = (ratio_band(v, m[metric], a, ref_band)
                            if m[metric] is not None and ref_band is not None else None)
        out[c.label] = m
    return out


def separation(direction: int, baseline: Band, current: Band) -> tuple[float, float]:
    """(gap, edge): how far the current band lies beyond the baseline's in the worse direction, between
    their near edges (negative where they overlap), and the baseline edge it is measured from."""
    if direction > 0:
        return current[0] - baseline[1], baseline[1]
    return baseline[0] - current[1], baseline[0]


def half_width(band: Band) -> float:
    return (band[1] - band[0]) / 2
