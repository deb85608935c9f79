"""Step timing and the throughput math, in one place.

tokens/s = tokens per step / median(step time over the timed steps)   (warm-up steps never count)
MFU      = model FLOPs per token × tokens/s / peak dense bf16 FLOP/s of the device
           (nanoGPT's estimate_mfu, with FLOPs counted by torch.utils.flop_counter on the real
           model instead of 6N; optimizer FLOPs are not model FLOPs and are left out.)
Either is None ("n/a") when it would mislead: no timed steps, or a device with no catalog peak.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

__all__ = ["PhaseTimer", "tokens_per_second", "model_flops_utilization", "flops_per_token"]


def tokens_per_second(tokens_per_step: int, step_times_s: list[float]) -> float | None:
    times = [t for t in step_times_s if t > 0]
    if not times:
        return None
    return tokens_per_step / statistics.median(times)


def model_flops_utilization(flops_per_tok: float | None, tokens_per_s: float | None,
                            peak_tflops: float | None) -> float | None:
    if not flops_per_tok or not tokens_per_s or not peak_tflops:
        return None
    return flops_per_tok * tokens_per_s / (peak_tflops * 1e12)


def flops_per_token(run_fwd_bwd, tokens: int) -> float:
    """FLOPs of one forward+backward, counted per aten op (works under FakeTensorMode too)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run_fwd_bwd()
    return counter.get_total_flops() / tokens


class PhaseTimer:
    """Seconds per phase of a step. On CUDA, events recorded on the stream (no sync inside the
    step; one sync when the step's times are read); on CPU, perf_counter."""

    def __init__(self, device: torch.device, clock=time.perf_counter):
        self.cuda = device.type == "cuda"
        self.clock = clock
        self._marks: list[tuple[str, object, object]] = []

    def _mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return self.clock()

    @contextmanager
    def phase(self, name: str):
        start = self._mark()
        try:
            yield
        finally:
            self._marks.append((name, start, self._mark()))

    def finish_step(self) -> dict[str, float]:
        """{phase: seconds, ..., "total": seconds} for the phases since the last call."""
        out: dict[str, float] = {}
        if self.cuda:
            torch.cuda.synchronize()  # host sync: once per step, after the step
            for name, a, b in self._marks:
                out[name] = out.get(name, 0.0) + a.elapsed_time(b) / 1e3
        else:
            for name, a, b in self._marks:
                out[name] = out.get(name, 0.0) + (b - a)
        if self._marks:
            first, last = self._marks[0][1], self._marks[-1][2]
            out["total"] = first.elapsed_time(last) / 1e3 if self.cuda else last - first
        self._marks.clear()
        return out
