"""Windows whose columns are linearly dependent — the same gradient repeated, s > k, or columns
1e-4 apart — at ‖g‖² from 1 to 1e8, and g̃ = G·w against the exact (λI + GGᵀ)⁻¹ g_t of the
*stored* columns (60-digit mpmath, tests/optim/reference.py). Shared by test_dependent_windows.py;
run as a script it prints the relative errors:

    python -m tests.optim.dependent_windows
"""
from __future__ import annotations

import math

import torch

from ngl_profile.optim import kernels, natural

from . import reference as ref

S, LAM = 10, 1e-3
NORMS2 = (1.0, 1e2, 1e4, 1e6, 1e8)
KINDS = ("repeated", "s>k", "near-duplicate")
STORAGES = ("float32", "bfloat16", "int8")


def columns(kind: str, norm2: float, seed: int = 0) -> list[torch.Tensor]:
    """S + 3 float32 columns (the ring wraps: its head is not slot 0), each with ‖c‖² ≈ norm2."""
    gen = torch.Generator().manual_seed(seed)
    k = 6 if kind == "s>k" else 256
    g = torch.randn(k, generator=gen, dtype=torch.float64)
    g *= math.sqrt(norm2) / g.norm()
    if kind == "repeated":
        cols = [g] * (S + 3)
    elif kind == "s>k":  # independent directions, but only k = 6 of them for s = 10 columns
        cols = [c * math.sqrt(norm2) / c.norm() for c in torch.randn(S + 3, k, generator=gen, dtype=torch.float64)]
    else:  # every entry perturbed by 1e-4 of the typical entry
        cols = [g + 1e-4 * math.sqrt(norm2 / k) * torch.randn(k, generator=gen, dtype=torch.float64)
                for _ in range(S + 3)]
    return [c.float() for c in cols]


def filled_window(kind: str, norm2: float, storage: str) -> dict:
    cols = columns(kind, norm2)
    state = {}
    natural.init_window(state, cols[0].numel(), S, storage, torch.device("cpu"))
    for c in cols:
        natural.push(state, c)
    return state


def stored_columns(state: dict) -> torch.Tensor:
    """The window as the solve sees it: dequantized float64 rows (exact), in slot order."""
    cols = state["history"].double()
    if "history_scale" in state:
        cols = cols * state["history_scale"].double()[:, None]
    return cols


def exact_natural_gradient(state: dict) -> torch.Tensor:
    """(λI + GGᵀ)⁻¹ g_t of the stored columns, in 60 digits (g_t: the newest slot)."""
    rows = stored_columns(state)
    newest = (state["history_head"] - 1) % S
    order = [j for j in range(S) if j != newest] + [newest]
    return ref.natural_gradient([rows[j] for j in order], LAM)


def ours(state: dict, compiled: bool) -> torch.Tensor:
    """float32 g̃ through the eager or the compiled combine (MIN_ELEMENTS lowered for the latter)."""
    w = natural.weights([state], [LAM])[0]
    saved = kernels.MIN_ELEMENTS
    kernels.MIN_ELEMENTS = 0 if compiled else saved
    try:
        return natural.combine(state, w, compiled=compiled, dtype=torch.float32)
    finally:
        kernels.MIN_ELEMENTS = saved


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).norm() / exact.norm())


def main() -> None:
    print(f"relative error of g̃ (float32 out) vs the exact g̃ of the stored window; s = {S}, λ = {LAM}")
    print(f"{'window':<16}{'storage':<10}{'path':<10}" + "".join(f"{f'‖g‖²={a:.0e}':>13}" for a in NORMS2))
    for kind in KINDS:
        for storage in STORAGES:
            states = [filled_window(kind, a, storage) for a in NORMS2]
            exact = [exact_natural_gradient(st) for st in states]
            for compiled in (False, True):
                errs = [relative_error(ours(st, compiled), e) for st, e in zip(states, exact)]
                print(f"{kind:<16}{storage:<10}{'compiled' if compiled else 'eager':<10}"
                      + "".join(f"{e:>13.2e}" for e in errs))


if __name__ == "__main__":
    main()
