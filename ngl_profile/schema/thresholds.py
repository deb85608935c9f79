"""Regression thresholds for `ngl-profile check`: a typed [thresholds] table."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Thresholds", "MiB"]

MiB = 1 << 20


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

    def __post_init__(self) -> None:
        for key in ("memory_rel", "throughput_rel", "step_time_rel"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 10:
                raise ValueError(f"thresholds: {key} must be a number in [0, 10); got {v!r}")
        if not isinstance(self.memory_abs_bytes, int) or self.memory_abs_bytes < 0:
            raise ValueError(f"thresholds: memory_abs_bytes must be an integer ≥ 0; got {self.memory_abs_bytes!r}")

    @classmethod
    def from_table(cls, table: dict, where: str) -> "Thresholds":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{where}: unknown threshold(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**table)
