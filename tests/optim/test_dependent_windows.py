"""g̃ = G·w where the window's columns are linearly dependent (DESIGN.md "Dependent windows").

w = S⁻¹e_last then has entries ≈ ±1/λ whose terms cancel in G·w; float32 sums were off by
6.5e-2 (‖g‖² = 1e2) to 4.8e4 (1e8) on the repeated window below. Each case is checked twice:
  1. the sum itself, against the exact Σ_j w_j c_j for the w `weights` returned: a bound that
     holds for any data (reference.assert_within_summation_bound);
  2. g̃ end to end, against the exact (λI + GGᵀ)⁻¹ g_t of the stored columns (60 digits).
"""
import math

import pytest
import torch

from ngl_profile.optim import NaturalGaLoreAdamW, kernels, natural

from . import reference as ref
from .dependent_windows import (KINDS, LAM, NORMS2, S, STORAGES, exact_natural_gradient, filled_window,
                                relative_error, stored_columns)

U64, U32 = ref.unit_roundoff(torch.float64), ref.unit_roundoff(torch.float32)


def tolerance(norm2: float) -> float:
    """Relative error allowed for float32 g̃ from a window of S columns with ‖c‖² = norm2.

    u32: the final rounding to float32 (‖δ‖ ≤ u32·‖g̃‖ exactly). s²·u64·κ, κ = 1 + s‖g‖²/λ ≥ cond(S):
    for a repeated window (g̃ = g·1ᵀw, a rank-one case worked through by hand) the float64
    Cholesky solve's backward error |ΔS_ij| ≤ γ_{3s+1}·√(S_ii S_jj) (Higham, Thm 10.4) moves 1ᵀw by
    ≤ 6s·u64·κ relative, and the float64 sum adds ≤ 2(s+1)·u64·κ (Σ|w_j| ≈ 2/λ): together
    ≤ s²·u64·κ for s = 10. The s > k and near-duplicate windows are held to the same bound; they
    measure 100× or more below it (python -m tests.optim.dependent_windows prints the table).
    """
    kappa = 1 + S * norm2 / LAM
    return U32 + S * S * U64 * kappa


@pytest.fixture
def compiled_path(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)  # these windows are small: force the kernel


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_dependent_window_matches_exact(kind, storage, compiled_path):
    for norm2 in NORMS2:
        state = filled_window(kind, norm2, storage)
        exact = exact_natural_gradient(state)
        if kind == "repeated":  # the oracle against the closed form g/(λ + n‖g‖²) of the stored g
            g = stored_columns(state)[0]
            torch.testing.assert_close(exact, g / (LAM + S * g.dot(g)), rtol=1e-12, atol=0)
        w = natural.weights([state], [LAM])[0]
        for compiled in (False, True):
            got = natural.combine(state, w, compiled=compiled, dtype=torch.float32)
            assert not kernels._failed, "the compiled kernel did not run"
            ref.assert_within_summation_bound(got, stored_columns(state), w, torch.float32)
            err = relative_error(got, exact)
            assert err <= tolerance(norm2), (kind, storage, norm2, compiled, err, tolerance(norm2))
        assert int(state["damping_backoffs"]) == 0  # these are solved at λ itself


@pytest.mark.parametrize("compiled", [False, True])
def test_twelve_identical_steps_give_the_exact_update(compiled, monkeypatch):
    """The same gradient 12 times (a repeated batch) at ‖g_proj‖² ≈ 2.5e3; float64 parameters, so
    the only float32 arithmetic is the window's storage. The float32 sum was off by 0.29 here."""
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0 if compiled else kernels.MIN_ELEMENTS)
    grad = torch.randn(64, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(64, 128, dtype=torch.float64))
    lr, scale, (b1, b2), eps = 1e-2, 0.25, (0.9, 0.999), 1e-8
    opt = NaturalGaLoreAdamW([{"params": [p], "rank": 8, "update_proj_gap": 100, "history_size": S,
                               "damping": LAM, "scale": scale}], lr=lr, betas=(b1, b2), eps=eps, compile=compiled)
    for _ in range(11):
        p.grad = grad.clone()
        opt.step()
    before = p.detach().clone()
    p.grad = grad.clone()
    opt.step()
    got = p.detach() - before
    P = opt.state[p]["proj_0"]  # 64×8: "std" on a wide matrix projects from the left
    g = (P.t() @ grad).reshape(-1).float().double()  # as stored: the float32 window holds g
    norm2 = float(g.dot(g))
    assert 2e3 < norm2 < 3e3
    m = v = torch.zeros_like(g)
    for t in range(1, 13):  # step t's window holds min(t, s) copies of g: g̃ = g/(λ + n‖g‖²)
        g_tilde = g / (LAM + min(t, S) * norm2)
        m, v = b1 * m + (1 - b1) * g_tilde, b2 * v + (1 - b2) * g_tilde**2
    c = math.sqrt(1 - b2**12) / (1 - b1**12)
    expect = -lr * c * scale * P @ (m / (v.sqrt() + eps)).view(8, 128)
    # Adam's N = m/(√v + ε) passes g̃'s relative error through at most twice (m, and √v's half
    # of v's); float64 everywhere else. tolerance(): g̃'s bound (its u32 term does not apply
    # here, g̃ is float64, but it is far below the other term anyway)
    err = float((got - expect).norm() / expect.norm())
    assert err <= 2 * tolerance(norm2), err
    assert opt.damping_backoffs == 0
