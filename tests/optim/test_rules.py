"""8-bit moments track float32; our Adafactor rule matches transformers' Adafactor."""
import pytest
import torch

from ngl_profile.optim import NaturalGaLoreAdafactor, NaturalGaLoreAdamW, NaturalGaLoreAdamW8bit


def run(cls, steps=20, history=4):
    init = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(128, 256, generator=init))
    e = torch.nn.Parameter(torch.randn(64, 128, generator=init))  # plain group, ≥ 4096 elements: bnb's fused kernel
    opt = cls([{"params": [w], "rank": 32, "history_size": history}, {"params": [e]}], lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        w.grad = torch.randn(w.shape, generator=gen)
        e.grad = torch.randn(e.shape, generator=gen)
        opt.step()
    return w.detach(), e.detach(), opt


def test_8bit_tracks_float32():
    w32, e32, _ = run(NaturalGaLoreAdamW)
    w8, e8, opt = run(NaturalGaLoreAdamW8bit)
    st = opt.state[opt.param_groups[0]["params"][0]]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg_sq"].dtype == torch.uint8
    assert opt.state[opt.param_groups[1]["params"][0]]["exp_avg"].dtype == torch.uint8
    w0, e0, _ = run(NaturalGaLoreAdamW, steps=0)
    for a32, a8, a0 in ((w32, w8, w0), (e32, e8, e0)):
        d32, d8 = a32 - a0, a8 - a0
        rel = ((d8 - d32).norm() / d32.norm()).item()
        cos = torch.nn.functional.cosine_similarity(d8.flatten(), d32.flatten(), dim=0).item()
        assert rel < 0.05 and cos > 0.998, (rel, cos)


def test_adafactor_plain_path_matches_transformers():
    from transformers.optimization import Adafactor

    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(16, 24, generator=gen), torch.randn(24, generator=gen)]
    ours_p = [torch.nn.Parameter(t.clone()) for t in init]
    hf_p = [torch.nn.Parameter(t.clone()) for t in init]
    ours = NaturalGaLoreAdafactor(ours_p, lr=1e-2, beta1=0.9)
    hf = Adafactor(hf_p, lr=1e-2, beta1=0.9, scale_parameter=False, relative_step=False, warmup_init=False)
    gen = torch.Generator().manual_seed(2)
    for _ in range(6):
        for a, b in zip(ours_p, hf_p):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        hf.step()
        for a, b in zip(ours_p, hf_p):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [NaturalGaLoreAdamW8bit, NaturalGaLoreAdafactor])
def test_variants_run_low_rank_with_history(cls):
    w, e, opt = run(cls, steps=5)
    st = opt.state[opt.param_groups[0]["params"][0]]
    assert st["history_count"] == 4 and torch.isfinite(w).all()
