"""Every state key our optimizers create is declared with its memory category."""
import pytest
import torch

from ngl_profile.optim import (LayerwiseOptimizer, NaturalGaLoreAdafactor, NaturalGaLoreAdamW,
                               NaturalGaLoreAdamW8bit, state_keys)
from ngl_profile.schema.categories import STATE_CATEGORIES

CLASSES = {NaturalGaLoreAdamW: {}, NaturalGaLoreAdamW8bit: {}, NaturalGaLoreAdafactor: {"beta1": 0.9}}


def params(gen):
    # a matrix whose projected moments are 8-bit (48×96 ≥ 4096 elements), a 3-D tensor (Tucker:
    # proj_0 … proj_2), a plain matrix (bitsandbytes' fused 8-bit kernel) and a bias (float moments)
    shapes = [(64, 96), (6, 8, 10), (64, 128), (96,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def groups(ps, s, history_dtype):
    low = {"history_size": s, "history_dtype": history_dtype, "update_proj_gap": 2}
    return [{"params": ps[:1], "rank": 48, **low}, {"params": ps[1:2], "rank": 4, **low}, {"params": ps[2:]}]


def run(opt, ps, gen, steps=3):
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


@pytest.mark.parametrize("cls", list(CLASSES))
@pytest.mark.parametrize("s,history_dtype", [(0, "float32"), (4, "float32"), (4, "int8")])
def test_every_state_key_is_declared(cls, s, history_dtype):
    gen = torch.Generator().manual_seed(0)
    ps = params(gen)
    opt = cls(groups(ps, s, history_dtype), **CLASSES[cls])
    run(opt, ps, gen)
    keys = {k for st in opt.state.values() for k in st}
    undeclared = {k for k in keys if opt.state_category(k) is None}
    assert not undeclared, undeclared
    assert {opt.state_category(k) for k in keys} <= set(STATE_CATEGORIES)
    if s:
        assert opt.state_category("history") == opt.state_category("gram") == "history"
    assert opt.state_category("proj_2") == "projectors"
    if cls is NaturalGaLoreAdamW8bit:
        assert opt.state_category("exp_avg_absmax") == "quant_stats" and "exp_avg_absmax" in keys


def test_layerwise_declares_the_union_of_its_inner_optimizers():
    gen = torch.Generator().manual_seed(0)
    ps = params(gen)
    lw = LayerwiseOptimizer(groups(ps, 4, "int8"),
                            lambda g: (NaturalGaLoreAdamW8bit if g[0]["params"][0].dim() == 3 else NaturalGaLoreAdafactor)(g))
    assert lw.state_category("exp_avg_sq_row") == "moments"  # Adafactor's
    assert lw.state_category("exp_avg_sq_absmax") == "quant_stats"  # 8-bit Adam's
    assert lw.state_category("history_scale") == "history" and lw.state_category("proj_0") == "projectors"
    assert lw.state_category("not_ours") is None


def test_declarations_use_the_report_categories_and_fail_loudly():
    assert set(state_keys.CATEGORIES) == set(STATE_CATEGORIES)
    with pytest.raises(ValueError, match="'exp_avg' is declared both 'moments' and 'history'"):
        state_keys.merge({"exp_avg": "moments"}, {"exp_avg": "history"})
    with pytest.raises(ValueError, match="unknown category 'weights'"):
        state_keys.merge({"x": "weights"})
    assert state_keys.category_of({"proj_*": "projectors", "proj_factors": "history"}, "proj_factors") == "history"
    assert state_keys.category_of({"proj_*": "projectors"}, "proj_11") == "projectors"
