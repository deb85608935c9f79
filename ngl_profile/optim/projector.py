"""Low-rank gradient projection: GaLore's one-sided projectors and a Tucker (HOSVD) projector.

Everything here is a pure function of tensors, so the optimizer state holds only tensors (a
basis is a tuple of factor matrices), never a projector object: `torch.load(weights_only=True)`
can reload it, unlike galore-torch's pickled `GaLoreProjector`.

Shapes, for a gradient ∇ of shape m×n and rank r:
  left   P: m×r   g = Pᵀ∇ (r×n)      back: P g
  right  Q: r×n   g = ∇Qᵀ (m×r)      back: g Q
  tucker U_i: d_i×r_i for every mode  g = ∇ ×_i U_iᵀ (core)   back: g ×_i U_i
"""
from __future__ import annotations

import math

import torch

__all__ = ["PROJ_TYPES", "SVD_METHODS", "resolve_side", "clamp_rank", "compute_basis", "project", "project_back",
           "rotate", "projected_shape", "add_projected_back", "project_into"]

PROJ_TYPES = ("std", "left", "right", "tucker")
SVD_METHODS = ("full", "lowrank")
# torch.svd_lowrank: a randomized range finder with q = r + oversampling columns and a few power
# iterations; accuracy is tested against the full SVD (tests/optim/test_projector.py)
_OVERSAMPLE, _POWER_ITERS = 10, 2
Basis = tuple[torch.Tensor, ...]


def resolve_side(shape: torch.Size | tuple[int, ...], proj_type: str) -> str:
    """The concrete side for a gradient shape: galore-torch's "std" is right if rows ≥ cols, else left."""
    if proj_type == "tucker" or len(shape) != 2:
        # a ≥3-D tensor has no "side"; HOSVD over every mode is the only projection that fits it
        return "tucker"
    if proj_type == "std":
        return "right" if shape[0] >= shape[1] else "left"
    return proj_type


def clamp_rank(shape: tuple[int, ...], rank: int, side: str) -> tuple[int, ...]:
    """The rank actually used per projected mode: no more columns than the SVD it comes from gives,
    min(rank, m, n) one-sided, and min(rank, d, numel/d) for a Tucker mode's d × numel/d unfolding."""
    if side in ("left", "right"):
        return (min(rank, *shape),)
    numel = math.prod(shape)
    return tuple(min(rank, d, numel // d) for d in shape)


def projected_shape(shape: tuple[int, ...], ranks: tuple[int, ...], side: str) -> tuple[int, ...]:
    if side == "left":
        return (ranks[0], shape[1])
    if side == "right":
        return (shape[0], ranks[0])
    return ranks


def _top_left_singular(a: torch.Tensor, r: int, method: str = "full", seed: int = 0) -> torch.Tensor:
    # SVD in float32 whatever the training dtype: bf16 SVD is unsupported on most backends and
    # its rounding would pick a different subspace than galore-torch does.
    if method == "lowrank" and r + _OVERSAMPLE < min(a.shape):
        # seeded in a forked RNG: the same refresh gives the same basis after a resume, and the
        # training loop's own random stream is left untouched
        with torch.random.fork_rng(devices=[a.device] if a.is_cuda else []):
            torch.manual_seed(seed)
            u, _, _ = torch.svd_lowrank(a.float(), q=r + _OVERSAMPLE, niter=_POWER_ITERS)
        return u[:, :r]
    u, _, _ = torch.linalg.svd(a.float(), full_matrices=False)
    return u[:, :r]


def _own(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # A slice of U or Vh is a view that keeps the *whole* SVD factor alive (measured on fp32
    # tiny LLaMA: 8× the projector's size). Always copy into storage of its own.
    return x.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)


def compute_basis(grad: torch.Tensor, ranks: tuple[int, ...], side: str, method: str = "full",
                  seed: int = 0) -> Basis:
    """Top singular vectors of the gradient, stored in the gradient's dtype."""
    if side == "left":
        return (_own(_top_left_singular(grad, ranks[0], method, seed), grad.dtype),)
    if side == "right" and method == "lowrank":
        return (_own(_top_left_singular(grad.t(), ranks[0], method, seed).t(), grad.dtype),)
    if side == "right":
        # right singular vectors of ∇ are the left ones of ∇ᵀ; galore-torch keeps them as r×n rows
        _, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
        return (_own(vh[: ranks[0]], grad.dtype),)
    factors = []
    for mode, r in enumerate(ranks):
        unfolded = grad.movedim(mode, 0).reshape(grad.shape[mode], -1)
        factors.append(_own(_top_left_singular(unfolded, r, method, seed + mode), grad.dtype))
    return tuple(factors)


def _mode_product(x: torch.Tensor, mats: Basis, transpose: bool) -> torch.Tensor:
    for mode, u in enumerate(mats):
        m = u.t() if transpose else u
        x = torch.tensordot(m, x, dims=([1], [mode])).movedim(0, mode)
    return x


def _one_sided(grad: torch.Tensor, basis: Basis, side: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two factors of a one-sided projection's matmul (left: Pᵀ∇, right: ∇Qᵀ); None for Tucker."""
    if side == "left":
        return basis[0].t(), grad
    if side == "right":
        return grad, basis[0].t()
    return None


def project(grad: torch.Tensor, basis: Basis, side: str) -> torch.Tensor:
    factors = _one_sided(grad, basis, side)
    return _mode_product(grad, basis, transpose=True) if factors is None else factors[0] @ factors[1]


def project_into(grad: torch.Tensor, basis: Basis, side: str, out: torch.Tensor) -> torch.Tensor | None:
    """project(grad, basis, side) written into `out` (flat, contiguous, grad's dtype: a window's
    next slot), returned as a view of it in the projected shape: the window then needs no copy of
    a projected gradient. None, writing nothing, where that is not one matmul of out's size and
    dtype (a Tucker basis, another length)."""
    factors = _one_sided(grad, basis, side)
    if factors is None:
        return None
    a, b = factors
    shape = (a.shape[0], b.shape[1])
    if out.numel() != shape[0] * shape[1] or not (out.dtype == a.dtype == b.dtype) or not out.is_contiguous():
        return None
    return torch.mm(a, b, out=out.view(shape))  # the kernel `@` runs: the same bits


def project_back(low: torch.Tensor, basis: Basis, side: str) -> torch.Tensor:
    if side == "left":
        return basis[0] @ low
    if side == "right":
        return low @ basis[0]
    return _mode_product(low, basis, transpose=False)


def add_projected_back(p: torch.Tensor, low: torch.Tensor, basis: Basis, side: str, alpha: float) -> None:
    """p += alpha · project_back(low), fused into one addmm for one-sided projectors.

    Saves the full-size m×n temporary and a pass over it (galore-torch makes two: the product and
    its `* scale`), which is most of the step's memory traffic after the matmuls themselves.
    """
    if side == "left":
        p.addmm_(basis[0], low.to(p.dtype), alpha=alpha)
    elif side == "right":
        p.addmm_(low.to(p.dtype), basis[0], alpha=alpha)
    else:  # 8-bit moments hand back a float32 update, like the one-sided branches' .to()
        p.add_(project_back(low.to(p.dtype), basis, side), alpha=alpha)


def rotate(low: torch.Tensor, old: Basis, new: Basis, side: str) -> torch.Tensor:
    """Re-express projected gradients (leading batch dim allowed) from basis `old` in basis `new`.

    left: P_newᵀ P_old g; right: g Q_old Q_newᵀ; tucker: (U_newᵀ U_old) on every mode.
    The change-of-basis matrices are r×r, so this never forms a full-size gradient.
    """
    if side == "left":
        return (new[0].t() @ old[0]) @ low
    if side == "right":
        return low @ (old[0] @ new[0].t())
    batch = low.dim() - len(old)
    x = low
    for mode, (u_old, u_new) in enumerate(zip(old, new)):
        c = u_new.t() @ u_old
        x = torch.tensordot(c, x, dims=([1], [batch + mode])).movedim(0, batch + mode)
    return x
