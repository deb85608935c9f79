"""Regression thresholds for `ngl-profile check`: a typed [thresholds] table."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["Thresholds", "MiB"]

MiB = 1 << 20

_RELATIVE = ("memory_rel", "throughput_rel", "step_time_rel", "throughput_abs_rel", "step_time_abs_rel",
             "heldout_loss_rel")


@dataclass(kw_only=True, slots=True)
class Thresholds:
    memory_rel: float = 0.02
    """max relative increase of the peak and of each memory category"""
    memory_abs_bytes: int = MiB
    """an increase smaller than this never fails (tiny categories would flap)"""
    throughput_rel: float = 0.10
    """max relative decrease of tokens/s as a ratio to the run's AdamW case"""
    step_time_rel: float = 0.10
    """max relative increase of optimizer step time as a ratio to the run's AdamW case"""
    throughput_abs_rel: float = 0.25
    """max relative decrease of absolute tokens/s; judged only when both runs come from the same machine
    and software (ratios cancel a busy host, absolute figures do not: hence wider than the ratio's)"""
    step_time_abs_rel: float = 0.25
    """max relative increase of absolute optimizer step time; same machine and software only"""
    step_time_abs_floor_s: float = 0.0005
    """a rise of the absolute optimizer step time smaller than this never fails (a per-layer
    optimizer's step() is tens of µs: scheduler jitter alone moves it by more than 25 %)"""
    heldout_loss_rel: float = 0.02
    """max relative increase of the held-out loss (`ngl-profile train` runs): the median over seeds must
    rise by more than this, and the seeds' quartile bands lie apart by more than it, to fail"""

    def __post_init__(self) -> None:
        for key in _RELATIVE:
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and 0 <= v < 10):
                raise ValueError(f"thresholds.{key}: expected a number in [0, 10), got {v!r}")
        v = self.step_time_abs_floor_s
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and 0 <= v < 60):
            raise ValueError(f"thresholds.step_time_abs_floor_s: expected a number of seconds in [0, 60), got {v!r}")
        v = self.memory_abs_bytes
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"thresholds.memory_abs_bytes: expected an integer ≥ 0, got {v!r}")

    @classmethod
    def from_table(cls, table, where: str) -> "Thresholds":
        """From a [thresholds] table; errors name `where` and the key."""
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table of thresholds, got {type(table).__name__} {table!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{where}: unknown threshold(s) {', '.join(map(str, unknown))}; "
                             f"allowed: {', '.join(sorted(known))}")
        try:
            return cls(**table)
        except ValueError as e:  # "thresholds.key: ..." → "<where>.key: ..."
            raise ValueError(f"{where}{str(e).removeprefix('thresholds')}") from None
