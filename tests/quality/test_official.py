"""The official formula row: with unit-scale gradients it is the same g̃ as the float64 reference
(so the two rows differ in numerics only); at LLM-scale gradient norms its float32 subtraction loses
the answer, which is why ngl_profile does not evaluate it as printed."""
import torch

from ngl_profile.optim.reference import natural_gradient
from ngl_profile.quality.official import OfficialFormulaAdamW


def _corrected(columns, lam=1e-3):
    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = OfficialFormulaAdamW([{"params": [p], "rank": 2, "history_size": 0}], history_size=len(columns),
                               damping=lam)
    state = {}
    for g in columns:
        out = opt._corrected(state, g.clone())
    assert len(state["hist_list"]) == len(columns)
    return out


def _rel_err(x, ref):
    return float((x.double() - ref).norm() / ref.norm())


def test_same_quantity_as_the_reference_at_unit_scale():
    gen = torch.Generator().manual_seed(0)
    cols = [torch.randn(64, generator=gen) * 0.05 for _ in range(4)]  # ‖g‖² ≈ λ-scale: no cancellation
    ref = natural_gradient([c.double() for c in cols], 1e-3)
    assert _rel_err(_corrected(cols), ref) < 1e-3


def test_printed_formula_cancels_at_large_gradients():
    gen = torch.Generator().manual_seed(1)
    cols = [torch.randn(4096, generator=gen) * 30 for _ in range(4)]  # ‖g‖² ≈ 4e6 ≫ λ = 1e-3
    ref = natural_gradient([c.double() for c in cols], 1e-3)
    assert _rel_err(_corrected(cols), ref) > 1e-2


def test_declares_its_window_as_history():
    assert OfficialFormulaAdamW.state_category("hist_list") == "history"
    assert OfficialFormulaAdamW.state_category("exp_avg") == "moments"
