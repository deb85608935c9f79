"""The official Natural GaLore code's formula, as printed, for a comparison row in quality runs.

The official code (selfsupervised-ai/Natural-GaLore) keeps a Python list of projected gradients per
parameter, stacks it into G every step and evaluates g̃ = (g − G z)/λ with S z = Gᵀg, S = λI + GᵀG,
all in float32: a subtraction of two nearly equal vectors whenever ‖g‖² ≫ λ (DESIGN.md,
"Numerics"). ngl_profile's own optimizer computes the same quantity without the subtraction
(g̃ = G w, S w = e_last, float64 solve). This class is plain GaLore (history_size 0, the zoo's
"galore" parameter groups) with that printed correction applied to the projected gradient, so the
two rows differ in the formula only. Like benchmarks/optimizer_step.py's timing row, it solves with
solve_ex: where S is singular in float32 the official code would raise, and the row records the
resulting update instead.
"""
from __future__ import annotations

import torch

from ngl_profile.optim.optimizer import NaturalGaLoreAdamW

__all__ = ["OfficialFormulaAdamW", "build_official"]

HISTORY_KEY = "hist_list"


class OfficialFormulaAdamW(NaturalGaLoreAdamW):
    """GaLore AdamW whose low-rank gradients get the official code's float32 Woodbury correction."""

    def __init__(self, params, history_size: int, damping: float = 1e-3, **kwargs):
        super().__init__(params, **kwargs)
        if not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"history_size must be an integer ≥ 1 for the official formula; got {history_size!r}")
        self.official_history_size = history_size
        self.official_damping = float(damping)

    @classmethod
    def state_category(cls, key: str) -> str | None:
        return "history" if key == HISTORY_KEY else super().state_category(key)

    def _finish(self, p, group, g, side):
        if side is not None:
            g = self._corrected(self.state[p], g)
        super()._finish(p, group, g, side)

    def _corrected(self, state, g):
        hist = state.setdefault(HISTORY_KEY, [])
        hist.append(g.reshape(-1).float().clone())  # the official code keeps the gradient's dtype (fp32)
        del hist[:-self.official_history_size]
        G = torch.stack(hist, dim=1)  # k × s, rebuilt every step as the official code does
        lam = self.official_damping
        S = lam * torch.eye(G.shape[1], device=G.device) + G.t() @ G
        z = torch.linalg.solve_ex(S, G.t() @ G[:, -1])[0]
        return ((G[:, -1] - G @ z) / lam).view(g.shape).to(g.dtype)


def build_official(model, hparams: dict) -> OfficialFormulaAdamW:
    """The official-formula optimizer for `model` from a natural-galore case's hyperparameters: the
    zoo's "galore" parameter groups (same matrices, rank, T, scale), history_size and damping taken
    for the printed correction (default s = 20, λ = 1e-3: the official code's)."""
    from ngl_profile.zoo.optimizers import OPTIMIZERS

    hp = dict(hparams)
    s, lam = hp.pop("history_size", 20), hp.pop("damping", 1e-3)
    if hp.pop("history_dtype", "float32") != "float32":
        raise ValueError("the official formula keeps its window in float32: drop history_dtype from that case")
    hp.pop("on_subspace_change", None)  # the official code keeps old-basis columns ("keep")
    spec = OPTIMIZERS["galore"]
    spec.check_hparams(hp)
    groups, _ = spec.make(model, hp)
    kwargs = {k: hp[k] for k in ("lr", "betas", "eps", "weight_decay", "compile") if k in hp}
    return OfficialFormulaAdamW([g for g in groups if g["params"]], history_size=s, damping=lam, **kwargs)
