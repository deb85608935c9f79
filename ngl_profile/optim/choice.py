"""Which implementation of the window passes runs: chosen by timing whole optimizer steps where they run.

The two passes over a Natural GaLore window (the Gram row, g̃ = G·w) have three implementations:
native (window.c, built here by native.py: one read of the window, float64 in registers; CPU
only), compiled (kernels.py: the same passes made by inductor) and eager (natural.py: float64
slices, then a mat-vec); in native mode window.c also quantizes an int8 window's new column
(natural._store: the same bytes as the torch ops). Which is fastest depends on the machine, not
on the code: on an AMD EPYC (2 cores) the compiled pair took the window part of a llama-60m step from 44–55 ms to 23–27 ms;
on an Intel Xeon of the same size it was slower than eager (75 vs 58 ms, issue 15), because
inductor's float32 → float64 conversion is not vectorised there, which window.c's is. So none is
assumed. All give the same results within the rounding their docstrings state (≤ 1e-13 relative
for the Gram row; the (s+1)·2⁻⁵³ bound for g̃), so a choice changes only speed.

What is timed is the optimizer's whole step, not a pass. Timing each kind of window's pass alone
(from a cold cache, or inside the step) chose eager for the float32 Gram row and g̃ at k ≤ 65536 on
the EPYC, where the two were within 10–20 % per call; yet the step that took those choices was
40–50 ms slower than the all-compiled one (benchmarks/RESULTS.md, 2026-12-02): the eager pass's
float64 slices are fresh allocations whose page faults, frees and cache pollution land in the
step's other work (Adam, the projections, the next window), outside the pass's own clock. So each
optimizer (a `StepChooser` per optimizer, as its parameters are its workload) times its own steps:
once every window it steps is full (a partial window's eager pass reads only the filled rows and
would win for the wrong reason), its steps cycle through the candidates (`candidates`: native
where it builds, compiled, eager), the first step of each left out as a warm-up (a kernel may be
built or compiled there), and after `TRIALS` timed steps each the mode with the lowest median step
time is kept for that optimizer. Every trial step is a real step: its result is used. On a GPU a
trial step is synchronised before and after (a host wait, 2·2·(TRIALS + 1) times per optimizer,
then never).

NGL_PROFILE_KERNELS = auto (default) | native | compiled | eager forces a mode for the whole
process (native where window.c takes the case, else compiled); NGL_PROFILE_COMPILE=0 still means
eager; an optimizer group with compile=False is eager. natural.py's functions called with
compiled=True take a fused kernel (native or compiled: `kernel`) wherever it is usable
(kernels.usable); called with "auto" outside a step that is being decided they take the mode the
step chose, else the compiled kernel.

Nothing is timed under a dispatch mode: not in an estimate (FakeTensorMode: shape-only tensors),
and not in a measured run's memory-tracked steps (the tracker's mode), where an eager trial step
would put its float64 slices into the measured peak. There an undecided optimizer takes the
compiled kernel wherever it is usable (windows of ≥ kernels.MIN_ELEMENTS elements), as an estimate
does, and counts its allocations (only the outputs: the native kernel allocates the same); a
decided one keeps its choice. A run whose optimizer later picks eager holds the eager pass's
float64 slice (≤ 8·natural._CHUNK_ELEMENTS bytes = 64 MiB, plus its result) while the pass runs;
force NGL_PROFILE_KERNELS=eager (or compiled) to make an estimate and a run follow the same path.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from statistics import median
from typing import Callable

import torch

from ngl_profile.optim import kernels, native

__all__ = ["MODES", "ENV", "TRIALS", "mode", "candidates", "kernel", "run", "StepChooser", "stepping"]

MODES = ("auto", "native", "compiled", "eager")
ENV = "NGL_PROFILE_KERNELS"
TRIALS = 3  # timed steps per mode after its warm-up step; the median counts

_stepping: str | None = None  # the mode of the step running now (StepChooser.step sets it)


def mode() -> str:
    """The forced choice from the environment: "compiled", "eager" or "auto" (choose by timing)."""
    if os.environ.get("NGL_PROFILE_COMPILE", "1") == "0":
        return "eager"
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(MODES)}; got {value!r}")
    return value


@contextmanager
def stepping(name: str | None):
    """Run the body's "auto" passes as `name` ("native" | "compiled" | "eager"; None: compiled)."""
    global _stepping
    before, _stepping = _stepping, name
    try:
        yield
    finally:
        _stepping = before


def candidates(device: torch.device) -> tuple[str, ...]:
    """The modes a StepChooser times on `device`: native only on a CPU where window.c builds."""
    return ("native", "compiled", "eager") if device.type == "cpu" and native.available() else ("compiled", "eager")


def kernel(window: torch.Tensor, request: bool | str) -> str:
    """Which implementation a pass over `window` (one window or an arena of them) takes:
    "native", "compiled" or "eager".

    request: False → eager; True → the compiled kernel wherever it is usable; "auto" → the mode of
    the step running now (`stepping`), else the compiled kernel. The environment (`mode`) overrides
    all three. "native" means window.c's kernel where it takes the case (kernels.py falls back to
    the compiled one)."""
    forced = mode()
    if not request or forced == "eager":
        return "eager"
    if forced != "auto":
        which = forced
    else:
        which = _stepping if request == "auto" and _stepping is not None else "compiled"
    return which if kernels.usable(window, native=which == "native") else "eager"


def run(window: torch.Tensor, request: bool | str, fused: Callable[[bool], torch.Tensor | None],
        eager: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The result of a pass over `window` by the implementation `kernel` picks.
    fused(native): the native or compiled kernel's call (None: it cannot run here); eager: the
    eager pass."""
    which = kernel(window, request)
    out = None if which == "eager" else fused(which == "native")
    return eager() if out is None else out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepChooser:
    """One optimizer's choice between all-native, all-compiled and all-eager window passes, by
    timing its steps."""

    clock = staticmethod(time.perf_counter)

    def __init__(self) -> None:
        self.choice: str | None = None
        self.seconds: dict[str, list[float]] = {}
        self._made = 0
        self._modes: tuple[str, ...] = ()

    def _next(self, device: torch.device) -> str:
        if not self._modes:  # at the first trial: building window.c waits until a step is timed
            self._modes = candidates(device)
            self.seconds = {n: [] for n in self._modes}
        name = self._modes[self._made % len(self._modes)]
        self._made += 1
        return name

    @contextmanager
    def step(self, timeable: bool, device: torch.device):
        """Around one optimizer step. timeable: every window is full and real, no dispatch mode is
        active, and nothing forces a mode (the caller knows its windows; `mode` is read here)."""
        if self.choice is not None or not timeable or mode() != "auto":
            with stepping(self.choice):
                yield
            return
        name = self._next(device)
        _sync(device)
        t0 = self.clock()
        with stepping(name), native.prefetch_frozen():  # trials compare kernels: no prefetch trials inside
            yield
        _sync(device)
        seconds = self.clock() - t0
        if self._made > len(self._modes):  # the first step of each mode is its warm-up
            self.seconds[name].append(seconds)
        if all(len(v) >= TRIALS for v in self.seconds.values()):
            med = {n: median(v) for n, v in self.seconds.items()}
            self.choice = min(self._modes, key=lambda n: med[n])  # ties: the earlier candidate

    def summary(self) -> dict:
        """{"choice": …, "median_step_s": {mode: seconds}} for reports and benchmarks."""
        return {"choice": self.choice, "median_step_s": {n: median(v) for n, v in self.seconds.items() if v}}
