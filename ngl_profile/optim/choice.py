"""Which implementation of a window pass runs: chosen by timing both at first use, like cuDNN's benchmark mode.

The two passes over a Natural GaLore window (the Gram row, g̃ = G·w) each have a compiled kernel
(kernels.py: one read of the window, float64 in registers) and an eager one (natural.py: float64
slices, then a mat-vec). Which is faster depends on the machine, not on the code: on an AMD EPYC
(2 cores) the compiled pair took the window part of a llama-60m step from 44–55 ms to 23–27 ms;
on an Intel Xeon of the same size it was slower than eager (75 vs 58 ms, issue 15). So neither is
assumed: the first time a full window of a given kind is seen, both are run (once to warm up —
the compiled one compiles there — then `REPEATS` timed runs each, alternated, best kept) and the faster one
is used for every window of that kind for the rest of the process. A kind is (pass, s, k rounded
up to a power of two, storage dtype, result dtype, device). Both give the same results within
the rounding their docstrings state (≤ 1e-13 relative for the Gram row; the (s+1)·2⁻⁵³ bound
for g̃), so a choice changes only speed.

The optimizers (compile=True, the default) ask for this choice; natural.py's functions called
with compiled=True take the compiled kernel wherever it is usable, as before, and compile=False
is eager. NGL_PROFILE_KERNELS = auto (default) | compiled | eager forces a choice for the whole
process; NGL_PROFILE_COMPILE=0 still means eager. A window that is not full yet is not timed
(its eager pass reads only the filled rows, so it would win for the wrong reason): it takes the
choice made for full windows of its kind if there is one, else the compiled kernel (the
behaviour before this module).

Estimates (FakeTensorMode) time nothing: under `auto` they follow a choice this process has
already made for the kind, else take the compiled kernel wherever it is usable (windows of
≥ kernels.MIN_ELEMENTS elements), as before, and count its allocations (only the outputs). A
real run whose chooser picks eager also holds the eager pass's float64 slice (≤ 8·natural.
_CHUNK_ELEMENTS bytes = 64 MiB, plus its result) while the pass runs; force NGL_PROFILE_KERNELS=
eager (or compiled) to make an estimate and a run follow the same path. The timing runs are made
with the memory tracker's dispatch mode switched off, so a measured peak sees only the chosen
pass: not the candidates' runs, nor the 64 MiB buffer read before each timed run on a CPU (so
that the run reads the window from memory, as a step does, not from the cache the previous run
left it in). A CUDA allocator's own peak counter does see the candidates, in the step where a
kind is first timed; on a GPU the timed runs are synchronised (a host wait, once per kind).
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch

from ngl_profile.optim import kernels
from ngl_profile.optim.values import has_values, outside_dispatch_modes

__all__ = ["MODES", "ENV", "REPEATS", "mode", "kind", "run", "choices", "clear"]

MODES = ("auto", "compiled", "eager")
ENV = "NGL_PROFILE_KERNELS"
REPEATS = 5  # timed runs per candidate after the warm-up; the best one counts (noise only adds time)

_choices: dict[tuple, str] = {}  # kind → "compiled" | "eager", for the process
_timings: dict[tuple, dict[str, float]] = {}  # kind → seconds per candidate, as measured


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


def _once(fn: Callable[[], torch.Tensor | None], device: torch.device, evict: torch.Tensor | None) -> float:
    """Seconds of one run of `fn`. `evict` (if given) is read first, so the window is timed from
    memory, as a step reads it (a step's windows together outgrow any cache), not from the cache
    the previous run left it in."""
    if evict is not None:
        evict.sum()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


EVICT_BYTES = 64 << 20  # more than a CPU's last-level cache (32 MiB on the 2-core EPYC, ≤ 60 on Xeons)


def _measure(key: tuple, window: torch.Tensor, compiled, eager) -> str:
    device = window.device
    candidates = {"compiled": compiled, "eager": eager}
    seconds = dict.fromkeys(candidates, float("inf"))
    with outside_dispatch_modes():  # the tracker sees neither the eviction buffer nor the candidates' runs
        # warm-up: the compiled kernel compiles here; None: it cannot run here, and never wins
        runnable = [name for name, fn in candidates.items() if fn() is not None]
        # CPU only: a GPU's L2 (≤ 60 MB) is smaller than the windows worth timing there, and an
        # allocation on the GPU would move the allocator's peak
        evict = torch.ones(EVICT_BYTES // 4, device=device) if device.type == "cpu" else None
        # alternated, best of REPEATS each: a stall (another process taking the core) that hits
        # a few runs in a row then hits both candidates, and the best run of each is one without
        for _ in range(REPEATS):
            for name in runnable:
                seconds[name] = min(seconds[name], _once(candidates[name], device, evict))
        del evict
    _timings[key] = seconds
    _choices[key] = "compiled" if seconds["compiled"] < seconds["eager"] else "eager"
    return _choices[key]


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
        if choice is None:  # an estimate's shape-only tensors cannot be timed: the compiled kernel, as before
            choice = _measure(key, window, compiled, eager) if full and has_values(window) else "compiled"
    if choice == "compiled":
        out = compiled()
        if out is not None:
            return out
    return eager()


def choices() -> dict[tuple, tuple[str, dict[str, float]]]:
    """kind → (choice, seconds per candidate) for every kind timed so far in this process."""
    return {key: (c, dict(_timings.get(key, {}))) for key, c in _choices.items()}


def clear() -> None:
    """Forget every choice (the next full window of each kind is timed again)."""
    _choices.clear()
    _timings.clear()
