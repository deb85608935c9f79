"""Which optimizer gave the lowest held-out loss for its memory: computed from finished records.

Each case has a held-out loss band over seeds, [q1, q3] of the final held-out loss (the quartile
band analysis/spread.py uses for timings, here over seeds). The lowest median wins, but every case
whose band overlaps the winner's is indistinguishable from it at these seeds; among those, the one
with the smallest peak memory is the answer to "lowest loss per GiB" — as low a loss as any, for
the fewest bytes. A case is on the Pareto front when no other case has both a lower median loss and
a smaller peak. One seed has no spread: the sentence says so rather than claim a difference.
"""
from __future__ import annotations

from dataclasses import dataclass

from ngl_profile.zoo.gpus import GiB

__all__ = ["Point", "points", "pareto_front", "verdict"]


@dataclass(frozen=True, slots=True)
class Point:
    label: str
    loss: float | None
    """median final held-out loss over seeds (None: a seed diverged, or no record)"""
    band: tuple | None
    """(q1, q3) over seeds; None with one seed or none finite"""
    peak_bytes: int
    """bytes of tensors live at the step's peak (categories summed, allocator slack and context left
    out: at a small model's size the simulated allocator's 2/20 MiB segments would hide every difference)"""
    seeds: int


def points(run) -> list[Point]:
    out = []
    for c in run.cases:
        q = c.quality or {}
        stats = q.get("heldout_loss_stats")
        band = (stats["q1"], stats["q3"]) if stats and q.get("seeds", 1) > 1 else None
        peak = (c.cuda or {}).get("tracked_peak_bytes", c.peak_bytes)
        out.append(Point(c.label, q.get("heldout_loss"), band, int(peak), int(q.get("seeds", 0))))
    return out


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def pareto_front(pts: list[Point]) -> list[Point]:
    ok = [p for p in pts if p.loss is not None]
    return sorted((p for p in ok if not any(q.loss < p.loss and q.peak_bytes < p.peak_bytes for q in ok)),
                  key=lambda p: p.peak_bytes)


def _fmt(p: Point) -> str:
    spread = f"IQR {p.band[0]:.4f}–{p.band[1]:.4f} over {p.seeds} seeds" if p.band else f"{p.seeds} seed"
    return f"{p.label} [{p.loss:.4f} nats/byte, {spread}, {p.peak_bytes / GiB:.4g} GiB at the peak]"


def verdict(pts: list[Point]) -> str:
    """One sentence naming the optimizer with the lowest held-out loss per GiB, with the spread."""
    ok = [p for p in pts if p.loss is not None]
    failed = [p.label for p in pts if p.loss is None]
    tail = f" ({', '.join(failed)} diverged in at least one seed)" if failed else ""
    if not ok:
        return "No case finished every seed with a finite held-out loss, so none can be named" + tail + "."
    best = min(ok, key=lambda p: p.loss)
    if best.band is None:
        return (f"Lowest held-out loss: {_fmt(best)}; with one seed there is no spread, so no difference "
                f"between optimizers can be claimed{tail}.")
    tied = [p for p in ok if p.band is not None and _overlap(p.band, best.band)]
    lightest = min(tied, key=lambda p: (p.peak_bytes, p.loss))
    others = [p.label for p in tied if p is not lightest and p is not best]
    also = f"; also indistinguishable from it: {', '.join(others)}" if others else ""
    if len(tied) == 1:
        return f"{_fmt(best)} gave the lowest held-out loss, its IQR apart from every other case's{tail}."
    if lightest is best:
        return (f"{_fmt(best)} gave the lowest held-out loss per GiB: the lowest median, with no more memory than "
                f"the cases whose IQRs overlap its own ({', '.join(others)}){tail}.")
    return (f"{_fmt(lightest)} gave the lowest held-out loss per GiB: indistinguishable (overlapping IQRs) from "
            f"the lowest median, {_fmt(best)}, with less memory{also}{tail}.")
