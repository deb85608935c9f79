"""Single-pass kernels for the Natural GaLore window: made by torch.compile when it works here, or
window.c's (native.py) on a CPU where the step chooser found those faster.

The window is the step's largest memory traffic (s×k per matrix, read twice per step). Eagerly,
both passes convert the window to float64 (slice by slice, a copy twice the slice's size) before
a mat-vec over it. Compiled (inductor: C++ on a CPU, Triton on a GPU), each is one loop that
reads the window once: products of float32, bfloat16 or int8·scale values are exact in float64,
so the Gram row is as accurate as the eager one, only summed in another order (≤ 1e-13
relative, tested); g̃ = G·w is summed in float64 per element (natural.combine says why), in
registers, and written once in the requested dtype. Measured on 2 cores (llama-60m matrices,
rank 128, fp32; s = 10 step minus s = 0 step, two runs each, g̃ then summed in float32): the
window's part of the step went from 44–55 ms eager to 23–27 ms compiled (AMD EPYC); on an Intel
Xeon of the same size compiled was the slower (issue 15): inductor's float32 → float64 conversion
goes through ATen's vector library, which has no vectorised form of it (native.py says more). So
the optimizers assume none of the three: each times its own steps with each and keeps the
fastest (choice.py); `native=True` asks a call for window.c's kernel, which takes over wherever
it handles the case (a CPU tensor of a storage dtype it has), else this module's compiled one.
Each kernel takes an arena of P windows of one shape (P×s×k, natural.init_windows) and runs as
one call over all of them: called once per window, a call's ~35–50 µs of Dynamo and wrapper
overhead and the restart of its s + 1 memory streams made the two passes over llama-60m's 56
windows 1.5–2× a plain read of them, where over its two arenas each pass is ~1.0–1.4× one
(benchmarks/window_passes.py prints both). `gram_row` and `combine` are the same kernels on one
window, made a batch of one inside the compiled graph.
Tried and left out: a compiled Adam (one pass instead of six). Alone it was 1.6–2.6× faster per
call, but steps were no faster (llama-60m 74.7 vs 71.8 ms eager; llama-350m layers 268–273 vs
264–266 ms): between the matmuls its gain was lost to the call's Dynamo overhead and thread hand-offs.

Memory: the outputs are allocated here, eagerly, where ngl-profile's memory tracker and estimator
see them; the compiled kernel only writes into them (the Gram kernel also keeps an s-element
float64 reduction buffer of its own). Under a TorchDispatchMode (the tracker) the kernel is run
with the mode switched off, else Dynamo would silently run it eagerly, with the eager transients;
under FakeTensorMode (the estimator) only the outputs are made, which is all a compiled run
allocates. If compiling fails (no C++ compiler, no Triton), one warning, then the eager code.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

from ngl_profile.optim import native as native_kernels
from ngl_profile.optim.values import has_values, outside_dispatch_modes

__all__ = ["MIN_ELEMENTS", "usable", "gram_rows", "combine_rows", "gram_row", "combine"]

# NGL_PROFILE_COMPILE=0 turns the compiled kernels off for every optimizer in the process
_ENV = "NGL_PROFILE_COMPILE"
_compiled: dict[str, Callable] = {}
_failed: set[str] = set()  # device types where compiling failed once: eager from then on


# Below this many window elements (s·k) the eager code is faster: a compiled call costs ~20 µs of
# Dynamo overhead. Measured on 2 cores, s = 10, per call (compiled vs eager): Gram row 47 vs 46 µs at
# k = 16384 and 83 vs 136 µs at k = 65536; across 56 windows too big for the cache, g̃ = G·w took
# ~7 ms compiled vs 10.7 ms eager.
MIN_ELEMENTS = 1 << 17


def usable(window: torch.Tensor, native: bool = False) -> bool:
    """Whether the kernels run for this window: large enough, not switched off by the environment,
    and (for the compiled ones, not `native`: window.c does not need inductor) compiling has not
    failed on its device type."""
    return (window.numel() >= MIN_ELEMENTS and os.environ.get(_ENV, "1") != "0"
            and (native or window.device.type not in _failed))


def _gram_row_kernel(cols, col_scale, g, g_scale, out):
    # cols: P×s×k (an arena of P windows, natural.init_windows), g: P×k, out: P×s. One float64
    # dot per row, unrolled (s is fixed per window): inductor makes one loop over P·k holding s
    # accumulators, which reads every window once at a plain read's speed (benchmarks/
    # window_passes.py). bf16·bf16 and int8·int8 products are exact in float32, so those are
    # multiplied in float32 and only the products widened: inductor's bf16 → float64 conversion
    # is not vectorised on a CPU (the bf16 Gram row took 2.5× the float32 one). float32 values
    # are widened first: their products are exact only in float64.
    exact32 = cols.dtype != torch.float32
    x = g.to(torch.float32) if exact32 else g.to(torch.float64)
    dots = []
    for j in range(cols.shape[1]):
        if exact32:
            dots.append((cols[:, j].to(torch.float32) * x).to(torch.float64).sum(-1))
        else:
            dots.append((cols[:, j].to(torch.float64) * x).sum(-1))
    row = torch.stack(dots, 1)
    if col_scale is not None:  # int8 storage: every column has its own absmax scale
        row = row * col_scale.to(torch.float64) * g_scale.to(torch.float64)[:, None]
    out.copy_(row)


def _combine_kernel(cols, col_scale, w, out):
    # Σ_j w_j c_j for each of P windows (cols P×s×k, w P×s, out P×k), accumulated in float64 (w is
    # float64; in a dependent window its entries are ≈ ±1/λ and cancel: a float32 sum lost every
    # digit, natural.combine), rounded once into `out`. Row by row (the loop unrolls: s is fixed
    # per window), so each row is one streaming read; torch.mv over the transposed window ran on
    # one core at ~60 % of the read bandwidth. bf16 and int8 go through float32 (exact) on their
    # way to float64: inductor vectorises that on a CPU, not a direct bf16 → float64 conversion.
    # An int8 column's scale is folded into its weight (s multiplies, not s·k). Cost of float64:
    # one FMA per window element at half the float32 vector width (benchmarks/optimizer_step.py
    # measures it on a CPU). On a GPU with 1/64-rate float64 (RTX 4090 datasheet: 0.65 T FMA/s,
    # 1.0 TB/s) a float32 or bf16 window stays read-bound; an int8 one (1 byte per FMA) would take
    # ~1.6× its read time.
    acc = None
    for j in range(cols.shape[1]):
        wj = w[:, j:j + 1] if col_scale is None else w[:, j:j + 1] * col_scale[:, j:j + 1].to(torch.float64)
        term = cols[:, j].to(torch.float32).to(torch.float64) * wj
        acc = term if acc is None else acc + term
    out.copy_(acc)


# the batched kernels on one window, made a batch of one inside the compiled graph: views taken
# eagerly would show the window to the memory tracker as if the pass allocated it
def _gram_row_one(cols, col_scale, g, g_scale, out):
    _gram_row_kernel(cols[None], None if col_scale is None else col_scale[None], g[None],
                     None if g_scale is None else g_scale[None], out[None])


def _combine_one(cols, col_scale, w, out):
    _combine_kernel(cols[None], None if col_scale is None else col_scale[None], w[None], out[None])


_KERNELS = {"gram_row": _gram_row_kernel, "combine": _combine_kernel,
            "gram_row_1": _gram_row_one, "combine_1": _combine_one}


def _run(name: str, device: torch.device, *args) -> bool:
    """Run the compiled kernel `name`; False if it cannot be compiled here (caller goes eager)."""
    fn = _compiled.get(name)
    if fn is None:
        # dynamic: one kernel for every matrix shape, not one per shape. Not fullgraph: past
        # Dynamo's recompile limit it runs the function eagerly instead of failing
        fn = _compiled[name] = torch.compile(_KERNELS[name], dynamic=True)
    try:
        with outside_dispatch_modes():  # under the tracker's mode Dynamo would run it eagerly
            fn(*args)
    except torch.OutOfMemoryError:
        raise  # not a compiler failure: the eager kernel would need more memory, not less
    except Exception as e:  # noqa: BLE001 — any compiler failure means: use the eager kernel
        _failed.add(device.type)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(f"torch.compile is not usable on {device.type} here ({first[:200]}); "
                      f"Natural GaLore falls back to its eager kernels (slower, same results)",
                      RuntimeWarning, stacklevel=3)
        return False
    return True


_NATIVE = {"gram_row": native_kernels.gram_rows, "gram_row_1": native_kernels.gram_rows,
           "combine": native_kernels.combine_rows, "combine_1": native_kernels.combine_rows}


def _call(name: str, cols: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, native: bool,
          *args) -> torch.Tensor | None:
    """Allocate the output eagerly (where the tracker and estimator see it) and run kernel `name`
    into it: window.c's (native.py) if `native` and it takes the case, else the compiled one; None
    if the kernels are not `usable` for `cols` or cannot be compiled here."""
    if not usable(cols, native):
        return None
    out = torch.empty(shape, dtype=dtype, device=cols.device)
    if not has_values(out) or (native and _NATIVE[name](*args, out)):
        return out
    if cols.device.type not in _failed and _run(name, cols.device, *args, out):
        return out
    return None


def gram_rows(cols: torch.Tensor, col_scale: torch.Tensor | None, g: torch.Tensor,
              g_scale: torch.Tensor | None, native: bool = False) -> torch.Tensor | None:
    """float64 P×s [⟨c_j, g_p⟩ for every row c_j of window p] of an arena `cols` (P×s×k; g: P×k;
    scales P×s and P, int8 storage only), or None if the kernel is not `usable` for it or cannot
    be compiled here: the caller computes it eagerly. native: window.c's kernel where it runs."""
    return _call("gram_row", cols, cols.shape[:2], torch.float64, native, cols, col_scale, g, g_scale)


def combine_rows(cols: torch.Tensor, col_scale: torch.Tensor | None, w: torch.Tensor,
                 dtype: torch.dtype, native: bool = False) -> torch.Tensor | None:
    """P×k: Σ_j w_pj c_pj for every window p of an arena `cols` (P×s×k, dequantized by col_scale;
    w: float64 P×s), summed in float64 and rounded once to `dtype`; None if not `usable` or not
    compilable here. Rows with w_pj = 0 add exactly 0 (stored values are finite). Allocates only
    the P×k output. native: window.c's kernel where it runs."""
    return _call("combine", cols, (cols.shape[0], cols.shape[2]), dtype, native, cols, col_scale, w)


def gram_row(cols: torch.Tensor, col_scale: torch.Tensor | None, g: torch.Tensor,
             g_scale: torch.Tensor | None, native: bool = False) -> torch.Tensor | None:
    """`gram_rows` for one s×k window: float64, length s (None: compute it eagerly)."""
    return _call("gram_row_1", cols, cols.shape[:1], torch.float64, native, cols, col_scale, g, g_scale)


def combine(cols: torch.Tensor, col_scale: torch.Tensor | None, w: torch.Tensor,
            dtype: torch.dtype, native: bool = False) -> torch.Tensor | None:
    """`combine_rows` for one s×k window (w: float64, length s): length k (None: eagerly)."""
    return _call("combine_1", cols, cols.shape[1:], dtype, native, cols, col_scale, w)
