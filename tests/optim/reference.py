"""An independent float64 reference of the Natural GaLore step, written from the formula as printed.

Deliberately naive: torch.stack of the history, fresh SVD in float64, and the Fisher correction
evaluated exactly as printed, g̃ = (g − G z)/λ with (λI + GᵀG) z = Gᵀg, in 60-digit arithmetic
(mpmath). Even float64 is not enough for that formula — or for an explicit inverse of λI + GGᵀ —
once ‖g‖² ≫ λ: the condition number reaches ~1e12. Only usable for small k; nothing here shares
code with ngl_profile.
"""
from __future__ import annotations

import math

import torch

D = torch.float64


def _align(ref: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    """Singular vectors are defined up to sign: flip the reference's columns to match ours."""
    signs = torch.sign((ref * ours.to(D)).sum(0))
    signs[signs == 0] = 1
    return ref * signs


def basis(grad: torch.Tensor, rank: int, side: str, ours=None):
    g = grad.to(D)
    if side == "left":
        u = torch.linalg.svd(g, full_matrices=False)[0][:, :rank]
        return [u if ours is None else _align(u, ours[0])]
    if side == "right":
        v = torch.linalg.svd(g, full_matrices=False)[2][:rank].t()  # n×r columns
        v = v if ours is None else _align(v, ours[0].t())
        return [v.t()]
    out = []
    for mode in range(g.dim()):
        unf = g.movedim(mode, 0).reshape(g.shape[mode], -1)
        u = torch.linalg.svd(unf, full_matrices=False)[0][:, : min(rank, g.shape[mode])]
        out.append(u if ours is None else _align(u, ours[mode]))
    return out


def project(grad, P, side):
    g = grad.to(D)
    if side == "left":
        return P[0].t() @ g
    if side == "right":
        return g @ P[0].t()
    for mode, u in enumerate(P):
        g = torch.tensordot(u.t(), g, dims=([1], [mode])).movedim(0, mode)
    return g


def project_back(n, P, side):
    if side == "left":
        return P[0] @ n
    if side == "right":
        return n @ P[0]
    for mode, u in enumerate(P):
        n = torch.tensordot(u, n, dims=([1], [mode])).movedim(0, mode)
    return n


def natural_gradient(history: list[torch.Tensor], lam: float) -> torch.Tensor:
    """(λI + GGᵀ)⁻¹ g_t by the printed Woodbury formula in 60-digit arithmetic; history[-1] is g_t."""
    import mpmath

    with mpmath.workdps(60):
        cols = [[mpmath.mpf(float(x)) for x in h.reshape(-1).tolist()] for h in history]
        g = cols[-1]
        s = len(cols)
        S = mpmath.matrix(s, s)
        y = mpmath.matrix(s, 1)
        for i in range(s):
            y[i] = mpmath.fdot(cols[i], g)
            for j in range(s):
                S[i, j] = mpmath.fdot(cols[i], cols[j]) + (lam if i == j else 0)
        z = mpmath.lu_solve(S, y)
        out = [(g[r] - mpmath.fsum(cols[i][r] * z[i] for i in range(s))) / lam for r in range(len(g))]
        return torch.tensor([float(v) for v in out], dtype=D).reshape(history[-1].shape)


def naive_float32(history: list[torch.Tensor], lam: float) -> torch.Tensor:
    """The formula exactly as printed, in float32: g̃ = (g − G z)/λ, (λI + GᵀG) z = Gᵀg."""
    G = torch.stack([h.reshape(-1).float() for h in history], dim=1)
    g = G[:, -1]
    S = lam * torch.eye(G.shape[1]) + G.t() @ G
    z = torch.linalg.solve(S, G.t() @ g)
    return ((g - G @ z) / lam).reshape(history[-1].shape)


class ReferenceNaturalGaLore:
    """One parameter, AdamW moments, float64. `ours_state` supplies only P's sign convention."""

    def __init__(self, p0, rank, side, gap, s, lam, lr, betas, eps, scale, wd, policy="keep"):
        self.p = p0.detach().to(D).clone()
        self.rank, self.side, self.gap, self.s, self.lam = rank, side, gap, s, lam
        self.lr, self.betas, self.eps, self.scale, self.wd, self.policy = lr, betas, eps, scale, wd, policy
        self.t = 0
        self.P = None
        self.hist: list[torch.Tensor] = []
        self.m = self.v = None

    def step(self, grad, ours_basis=None):
        if self.t % self.gap == 0:
            newP = basis(grad, self.rank, self.side, ours_basis)
            if self.P is not None and self.policy == "reset":
                self.hist = []
            elif self.P is not None and self.policy == "rotate":
                # re-express: back to full space with the old basis, project with the new one
                self.hist = [project(project_back(h, self.P, self.side), newP, self.side) for h in self.hist]
            self.P = newP
        g = project(grad, self.P, self.side)
        if self.s > 0:
            self.hist = (self.hist + [g])[-self.s:]
            g = natural_gradient(self.hist, self.lam)
        if self.m is None:
            self.m, self.v = torch.zeros_like(g), torch.zeros_like(g)
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        n = self.m / (self.v.sqrt() + self.eps)
        c = math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        self.p = self.p - self.lr * c * self.scale * project_back(n, self.P, self.side)
        self.p = self.p - self.lr * self.wd * self.p
        return self.p


def exact_combine(cols: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_j w_j c_j rounded once to float64, Σ_j |w_j c_j|) for float64 rows c_j and weights w_j.

    Exact before the one rounding: every product of two float64 values is exact in 106 bits, and
    mpmath sums at 2000 bits (the terms' exponents differ by far less), so the first output is
    within 2⁻⁵³ (relative) of the true sum. The second is the scale of the summation error bound.
    """
    import mpmath

    with mpmath.workprec(2000):
        ws = [mpmath.mpf(float(x)) for x in w.tolist()]
        rows = [[mpmath.mpf(x) for x in c.tolist()] for c in cols]
        out, mag = [], []
        for i in range(cols.shape[1]):
            terms = [wj * row[i] for wj, row in zip(ws, rows)]
            out.append(float(mpmath.fsum(terms)))
            mag.append(float(mpmath.fsum(abs(t) for t in terms)))
    return torch.tensor(out, dtype=D), torch.tensor(mag, dtype=D)


def gamma(m: int, u: float) -> float:
    """Higham's γ_m = m·u/(1 − m·u): the relative error bound of m successive roundings."""
    return m * u / (1 - m * u)


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2⁻ᵖ for a float format with p bits of significand (float32: 2⁻²⁴, bfloat16: 2⁻⁸)."""
    return torch.finfo(dtype).eps / 2


def assert_within_summation_bound(got: torch.Tensor, cols: torch.Tensor, w: torch.Tensor,
                                  out_dtype: torch.dtype) -> None:
    """got = Σ_j w_j c_j as Natural GaLore's combine computes it: float64 products and sums of
    exact float64 values c_j (stored float32/bf16 values and int8·scale are), rounded once to
    out_dtype. Higham's bound for m terms, each carrying one product rounding, summed in any
    order: |ŷ − y| ≤ γ_m·Σ|w_j c_j|, m = rows + 1 (an int8 column's scale may be folded into its
    weight first: one rounding more); then the rounding to out_dtype, ≤ u_out·|ŷ|; and the
    reference's own rounding to float64, ≤ u64·|y|. It holds for any data, not for a lucky draw —
    and it is the bound that matters when the terms cancel (|w_j| ≈ 1/λ in a dependent window)."""
    exact, mag = exact_combine(cols, w)
    u64, u_out = unit_roundoff(torch.float64), unit_roundoff(out_dtype)
    sum_err = gamma(cols.shape[0] + 1, u64) * mag
    bound = u_out * (exact.abs() + sum_err) + sum_err + u64 * exact.abs()
    err = (got.double() - exact).abs()
    assert (err <= bound).all(), f"over the bound by {(err - bound).max().item():.3g}"
