"""One Natural GaLore step for one parameter, written plainly, in the paper's order and names.

Read it beside the paper (arXiv 2410.16029, §2) or DESIGN.md "The optimizer". It computes what
NaturalGaLoreAdamW computes — tests/optim/test_reference_path.py checks that the two agree step
for step — without the machinery that makes the optimizer fast and lean: no batching across
parameters, no ring buffer, no incrementally updated Gram matrix, no compiled kernels, no
memory-bounded slices. The window is a Python list of columns, S and G·w are recomputed from it
in float64 every step (a float64 copy of the window: fine for reading and testing, not for
training a large model). The projector functions are the optimizer's own (projector.py).

    state = {}
    for batch in data:
        loss(batch).backward()
        reference_step(p, state, group)   # group: the optimizer's param-group dict

Moments are AdamW's (NaturalGaLoreAdamW); the 8-bit and Adafactor rules are not written here.
"""
from __future__ import annotations

import math

import torch

from ngl_profile.optim.projector import clamp_rank, compute_basis, project, project_back, projected_shape, \
    resolve_side, rotate

__all__ = ["reference_step", "natural_gradient", "stored"]

# λ, 1e3·λ, 1e6·λ: the damping tiers tried in turn when the Cholesky factorisation of S fails
DAMPING_TIERS = (1.0, 1e3, 1e6)


def stored(g: torch.Tensor, history_dtype: str) -> torch.Tensor:
    """The column the window keeps for g, as float64 values: g itself (float32), g rounded to
    bfloat16, or g quantized to int8 with one absmax scale per column."""
    if history_dtype == "float32":
        return g.float().double()
    if history_dtype == "bfloat16":
        return g.to(torch.bfloat16).double()
    scale = g.abs().amax().float().clamp_min(torch.finfo(torch.float32).tiny) / 127.0
    codes = torch.round(g.float() / scale).clamp(-127, 127)
    return codes.double() * scale.double()


def natural_gradient(window: list[torch.Tensor], damping: float) -> torch.Tensor:
    """g̃ = (λI + GGᵀ)⁻¹ g_t for the window G = [g_{t−s+1} … g_t] (k×n; window[-1] is g_t).

    By the push-through identity (λI + GGᵀ)⁻¹G = G(λI + GᵀG)⁻¹ and g_t = G e_last:
        S = λI + GᵀG (n×n),   S w = e_last,   g̃ = G w.
    All in float64: w has entries ≈ ±1/λ when the columns are (nearly) dependent, and G w cancels.
    """
    G = torch.stack(window, dim=1).to(torch.float64)  # k × n, the newest column last
    n = G.shape[1]
    e_last = torch.zeros(n, 1, dtype=torch.float64)
    e_last[-1] = 1.0
    for tier in DAMPING_TIERS:
        S = damping * tier * torch.eye(n, dtype=torch.float64) + G.t() @ G
        L, info = torch.linalg.cholesky_ex(S)
        if info == 0:  # factored: S is positive definite at this damping
            w = torch.cholesky_solve(e_last, L)[:, 0]
            return G @ w
    return G[:, -1] / (damping * DAMPING_TIERS[-1])  # none factored: the λ → ∞ limit


@torch.no_grad()
def reference_step(p: torch.Tensor, state: dict, group: dict) -> None:
    """Update p in place from p.grad, keeping `state` (this path's own dict, not the optimizer's).

    group: lr, betas, eps, weight_decay; with "rank" also update_proj_gap, scale, proj_type,
    history_size, damping, history_dtype, on_subspace_change, svd (a NaturalGaLoreAdamW group).
    """
    grad = p.grad
    state.setdefault("step", 0)
    state.setdefault("nonfinite_skips", 0)
    if not torch.isfinite(grad).all():  # never update with NaN or inf: skip, and count it
        state["nonfinite_skips"] += 1
        return
    low_rank = group.get("rank") is not None and p.dim() >= 2
    if low_rank:
        side = resolve_side(p.shape, group["proj_type"])
        s = group["history_size"]

        # 1. every T steps: P ← the top-r singular vectors of ∇ (SVD in float32)
        if state["step"] % group["update_proj_gap"] == 0:
            ranks = clamp_rank(tuple(p.shape), group["rank"], side)
            P_new = compute_basis(grad, ranks, side, group["svd"], seed=state["step"] + 1)
            if "P" in state and s > 0:
                _on_subspace_change(state, group, side, P_new, projected_shape(tuple(p.shape), ranks, side))
            state["P"] = P_new
        P = state["P"]

        # 2. the projected gradient g_t = Pᵀ∇ (or ∇Q, or the Tucker core)
        g = project(grad, P, side)

        # 3.–5. push g_t into the window G, solve S w = e_last, combine g̃ = G w
        if s > 0:
            window = state.setdefault("window", [])
            window.append(stored(g.reshape(-1), group["history_dtype"]))
            del window[:-s]  # keep the last s columns
            g = natural_gradient(window, group["damping"]).view(g.shape).to(g.dtype)
    else:
        g = grad  # parameters without a rank: plain AdamW

    # 6. Adam moments on g̃, bias correction, N = M / (√V + ε)
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(g)
        state["exp_avg_sq"] = torch.zeros_like(g)
    state["step"] += 1
    t = state["step"]
    beta1, beta2 = group["betas"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    N = m / (v.sqrt() + group["eps"])
    step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)

    # 7. the update, projected back: p ← p − step_size·α·P N; then decoupled weight decay
    if low_rank:
        p.add_(project_back(N, P, side).to(p.dtype), alpha=-step_size * group["scale"])
    else:
        p.add_(N, alpha=-step_size)
    if group["weight_decay"] > 0:
        p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def _on_subspace_change(state: dict, group: dict, side: str, P_new, low_shape) -> None:
    """What the window's old-basis columns become when P changes (group["on_subspace_change"])."""
    policy = group["on_subspace_change"]
    window = state.get("window", [])
    if policy == "reset":  # forget them
        window.clear()
    elif policy == "rotate":  # re-express them in the new basis: P_newᵀ P_old g (and alike)
        old = tuple(u.float() for u in state["P"])
        new = tuple(u.float() for u in P_new)
        state["window"] = [stored(rotate(c.float().view(low_shape), old, new, side).reshape(-1),
                                  group["history_dtype"]) for c in window]
    # "keep" (the official code's choice): they stay as they are
