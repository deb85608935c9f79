"""Which implementation of a window pass runs: chosen by timing both where they run, like cuDNN's benchmark mode.

The two passes over a Natural GaLore window (the Gram row, g̃ = G·w) each have a compiled kernel
(kernels.py: one read of the window, float64 in registers) and an eager one (natural.py: float64
slices, then a mat-vec). Which is faster depends on the machine, not on the code: on an AMD EPYC
(2 cores) the compiled pair took the window part of a llama-60m step from 44–55 ms to 23–27 ms;
on an Intel Xeon of the same size it was slower than eager (75 vs 58 ms, issue 15). So neither is
assumed. A kind of window is (pass, s, k rounded up to a power of two, storage dtype, result
dtype, device); each kind is chosen once per process, and both candidates give the same results
within the rounding their docstrings state (≤ 1e-13 relative for the Gram row; the (s+1)·2⁻⁵³
bound for g̃), so a choice changes only speed.

On a CPU the candidates are timed inside the optimizer's own steps: the calls of a kind that has
no choice yet alternate between them (every call's result is used: it is a real pass), the first
call of each is left out as a warm-up (the compiled one compiles there), and once each has
`TRIALS` timed calls the one with the lower median time per window element is kept. Timing them
apart from the step, each from a cold cache, chose eager for the float32 Gram row at k ≤ 65536 on
the EPYC (within 10 % in isolation), and that `auto` step was 18 ms slower than the compiled one:
inside a step the eager pass's float64 slice is a fresh allocation among the step's others
(page faults, a polluted cache) that a loop of the pass alone does not see. On a GPU the
candidates are timed apart, synchronised (a host wait, once per kind), best of `REPEATS`: a step
there would need a host wait per timed call.

The optimizers (compile=True, the default) ask for this choice; natural.py's functions called
with compiled=True take the compiled kernel wherever it is usable, as before, and compile=False
is eager. NGL_PROFILE_KERNELS = auto (default) | compiled | eager forces a choice for the whole
process; NGL_PROFILE_COMPILE=0 still means eager. A window that is not full yet is not timed
(its eager pass reads only the filled rows, so it would win for the wrong reason): it takes the
choice made for full windows of its kind if there is one, else the compiled kernel (the
behaviour before this module).

Nothing is timed under a dispatch mode: not in an estimate (FakeTensorMode: shape-only tensors),
and not in a measured run's memory-tracked steps (the tracker's mode), where an eager trial call
would put its float64 slice into the measured peak. There, under `auto`, a kind follows the choice
this process has already made for it, else takes the compiled kernel wherever it is usable
(windows of ≥ kernels.MIN_ELEMENTS elements), as an estimate does, and counts its allocations
(only the outputs). A real run whose chooser later picks eager holds the eager pass's float64
slice (≤ 8·natural._CHUNK_ELEMENTS bytes = 64 MiB, plus its result) while the pass runs; force
NGL_PROFILE_KERNELS=eager (or compiled) to make an estimate and a run follow the same path. A
CUDA allocator's own peak counter sees the timed candidates, in the step where a kind is timed.
"""
from __future__ import annotations

import os
import time
from statistics import median
from typing import Callable

import torch

from ngl_profile.optim import kernels
from ngl_profile.optim.values import has_values, outside_dispatch_modes, under_dispatch_mode

__all__ = ["MODES", "ENV", "REPEATS", "TRIALS", "mode", "kind", "run", "choices", "clear"]

MODES = ("auto", "compiled", "eager")
ENV = "NGL_PROFILE_KERNELS"
REPEATS = 5  # GPU: timed runs per candidate after the warm-up; the best one counts (noise only adds time)
TRIALS = 4  # CPU: timed in-step calls per candidate after its warm-up call; the median counts

_choices: dict[tuple, str] = {}  # kind → "compiled" | "eager", for the process
_timings: dict[tuple, dict[str, float]] = {}  # kind → seconds per candidate, as measured
_trials: dict[tuple, "_Trial"] = {}  # CPU kinds being timed in the steps, not decided yet


def mode() -> str:
    """The forced choice from the environment: "compiled", "eager" or "auto" (choose by timing)."""
    if os.environ.get("NGL_PROFILE_COMPILE", "1") == "0":
        return "eager"
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(MODES)}; got {value!r}")
    return value


def kind(op: str, window: torch.Tensor, out_dtype: torch.dtype) -> tuple:
    s, k = window.shape
    return (op, s, 1 << max(k - 1, 0).bit_length(), window.dtype, out_dtype, str(window.device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once(fn: Callable[[], torch.Tensor | None], device: torch.device) -> float:
    """Seconds of one synchronised run of `fn` (a GPU: the host waits for the kernel)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _measure(key: tuple, window: torch.Tensor, compiled, eager) -> str:
    """A GPU's choice: both candidates timed apart from the step, alternated, best of REPEATS."""
    device = window.device
    candidates = {"compiled": compiled, "eager": eager}
    seconds = dict.fromkeys(candidates, float("inf"))
    with outside_dispatch_modes():  # the tracker does not see the candidates' runs
        # warm-up: the compiled kernel compiles here; None: it cannot run here, and never wins
        runnable = [name for name, fn in candidates.items() if fn() is not None]
        # alternated, best of REPEATS each: a stall that hits a few runs in a row then hits both
        # candidates, and the best run of each is one without
        for _ in range(REPEATS):
            for name in runnable:
                seconds[name] = min(seconds[name], _once(candidates[name], device))
    _timings[key] = seconds
    _choices[key] = "compiled" if seconds["compiled"] < seconds["eager"] else "eager"
    return _choices[key]


class _Trial:
    """The in-step timings of one kind so far. Calls alternate, compiled first, switching every
    `period` calls: the Gram row's kinds every call, g̃'s every second call, so that over a step
    (a window's Gram row, then its g̃) each g̃ candidate is timed after either Gram row candidate,
    not always after its own (the cache state one pass leaves is part of the next one's cost)."""

    def __init__(self, period: int = 1):
        self.period, self.made = period, 0
        self.calls = {"compiled": 0, "eager": 0}
        self.seconds = {"compiled": [], "eager": []}
        self.per_element = {"compiled": [], "eager": []}

    def next(self) -> str:
        names = ("compiled", "eager")
        if self.done_with(names[0]) or self.done_with(names[1]):  # one has enough: time the other
            return names[1] if self.done_with(names[0]) else names[0]
        name = names[(self.made // self.period) % 2]
        self.made += 1
        return name

    def done_with(self, name: str) -> bool:
        return len(self.seconds[name]) >= TRIALS

    def add(self, name: str, seconds: float, elements: int) -> None:
        self.calls[name] += 1
        if self.calls[name] > 1:  # the first call of each is the warm-up
            self.seconds[name].append(seconds)
            self.per_element[name].append(seconds / elements)

    def done(self) -> bool:
        return all(self.done_with(name) for name in self.seconds)


def _timed(name: str, fn: Callable[[], torch.Tensor | None]) -> tuple[torch.Tensor | None, float]:
    """(result, seconds) of one in-step call of candidate `name` (a CPU: no synchronisation)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _trial_call(key: tuple, window: torch.Tensor, compiled, eager) -> torch.Tensor:
    trial = _trials.get(key) or _trials.setdefault(key, _Trial(period=2 if key[0] == "combine" else 1))
    name = trial.next()
    out, seconds = _timed(name, compiled if name == "compiled" else eager)
    if out is None:  # the compiled kernel cannot run here: eager, without more timing
        _trials.pop(key)
        _choices[key], _timings[key] = "eager", {"compiled": float("inf"), "eager": float("nan")}
        return eager()
    trial.add(name, seconds, window.numel())
    if trial.done():
        _trials.pop(key)
        per = {n: median(v) for n, v in trial.per_element.items()}
        _timings[key] = {n: median(v) for n, v in trial.seconds.items()}
        _choices[key] = "compiled" if per["compiled"] < per["eager"] else "eager"
    return out


def run(op: str, window: torch.Tensor, out_dtype: torch.dtype, request: bool | str, full: bool,
        compiled: Callable[[], torch.Tensor | None], eager: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The result of pass `op` over `window`, by the implementation chosen for its kind.

    request: False → eager; True → the compiled kernel wherever it is usable (kernels.usable);
    "auto" → whichever was faster on this kind of window (the optimizers ask for this). The
    environment (`mode`) overrides both. full: every slot of the window is filled.
    compiled: the compiled kernel's call (None: it cannot run here); eager: the eager pass.
    """
    forced = mode()
    if not request or forced == "eager" or not kernels.usable(window):
        return eager()
    choice = "compiled" if request is True or forced == "compiled" else None
    if choice is None:
        key = kind(op, window, out_dtype)
        choice = _choices.get(key)
        if choice is None:
            timeable = full and has_values(window)  # an estimate's shape-only tensors cannot be timed
            if not timeable or under_dispatch_mode():  # a tracked step: no timing (module docstring)
                choice = "compiled"
            elif window.device.type == "cpu":
                return _trial_call(key, window, compiled, eager)
            else:
                choice = _measure(key, window, compiled, eager)
    if choice == "compiled":
        out = compiled()
        if out is not None:
            return out
    return eager()


def choices() -> dict[tuple, tuple[str, dict[str, float]]]:
    """kind → (choice, seconds per candidate) for every kind decided so far in this process (CPU:
    the median seconds of a timed in-step call; GPU: the best of REPEATS synchronised runs)."""
    return {key: (c, dict(_timings.get(key, {}))) for key, c in _choices.items()}


def clear() -> None:
    """Forget every choice (the next full window of each kind is timed again)."""
    _choices.clear()
    _timings.clear()
    _trials.clear()
