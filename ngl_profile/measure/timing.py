"""Step timing and the throughput math, in one place.

tokens/s = tokens per step / median(step time over the timed steps)   (warm-up steps never count)
MFU      = model FLOPs per token × tokens/s / peak dense bf16 FLOP/s of the device
           (nanoGPT's estimate_mfu, with FLOPs counted by torch.utils.flop_counter on the real
           model instead of 6N; optimizer FLOPs are not model FLOPs and are left out.)
Either is None ("n/a") when it would mislead: no timed steps, or a device with no catalog peak.

The spread over the timed steps (`timing_stats`) is pytest-benchmark's set of statistics: rounds,
median, q1, q3, iqr, min, max, mean, stddev (sample, n − 1). Quartiles are
`statistics.quantiles(method="inclusive")`: linear interpolation between order statistics
(Hyndman & Fan's type 7), the default of numpy.percentile and of torch.quantile(interpolation="linear").
tokens/s is tokens / step time, a decreasing map, so its order statistics are the step time's mapped
(q1 ↔ q3, min ↔ max) and its median is the headline figure exactly; its mean and stddev are those of
the per-step rates.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

__all__ = ["PhaseTimer", "tokens_per_second", "timing_stats", "rate_stats", "model_flops_utilization",
           "flops_per_token"]


def tokens_per_second(tokens_per_step: int, step_times_s: list[float]) -> float | None:
    times = [t for t in step_times_s if t > 0]
    if not times:
        return None
    return tokens_per_step / statistics.median(times)


def timing_stats(samples: list[float]) -> dict | None:
    """pytest-benchmark's statistics of `samples` (seconds), or None when there are none."""
    xs = sorted(samples)
    if not xs:
        return None
    n = len(xs)
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if n > 1 else (xs[0],) * 3
    return {"rounds": n, "median": statistics.median(xs), "q1": q1, "q3": q3, "iqr": q3 - q1, "min": xs[0],
            "max": xs[-1], "mean": statistics.fmean(xs), "stddev": statistics.stdev(xs) if n > 1 else 0.0}


def rate_stats(tokens_per_step: int, step_times_s: list[float]) -> dict | None:
    """The statistics of tokens/s over the steps `tokens_per_second` counts (see the module's note)."""
    times = [t for t in step_times_s if t > 0]
    t = timing_stats(times)
    if t is None:
        return None
    rates = [tokens_per_step / x for x in times]
    q1, q3 = tokens_per_step / t["q3"], tokens_per_step / t["q1"]
    return {"rounds": t["rounds"], "median": tokens_per_step / t["median"], "q1": q1, "q3": q3, "iqr": q3 - q1,
            "min": tokens_per_step / t["max"], "max": tokens_per_step / t["min"], "mean": statistics.fmean(rates),
            "stddev": statistics.stdev(rates) if len(rates) > 1 else 0.0}


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
