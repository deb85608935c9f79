"""Per-layer updates equal the standard path, with and without gradient accumulation."""
import io

import pytest
import torch
from torch import nn

from ngl_profile.optim import LayerwiseOptimizer, NaturalGaLoreAdamW


def model():
    # built on the meta device (nn.Linear's own init would draw from the global RNG), then drawn
    # from a local generator: every call gives the same model
    m = nn.Sequential(nn.Linear(16, 32, device="meta"), nn.Tanh(), nn.Linear(32, 8, device="meta"))
    m.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.25, 0.25, generator=gen)
    return m


def groups(m, history=3):
    mats = [m[0].weight, m[2].weight]
    rest = [m[0].bias, m[2].bias]
    return [{"params": mats, "rank": 4, "update_proj_gap": 3, "history_size": history}, {"params": rest}]


def make(g):
    return NaturalGaLoreAdamW(g, lr=1e-2, weight_decay=0.01)


def batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 16, generator=gen), torch.randn(5, 8, generator=gen)) for _ in range(n)]


def loss_of(m, batch):
    x, y = batch
    return ((m(x) - y) ** 2).mean()


@pytest.mark.parametrize("accum", [1, 3])
def test_layerwise_equals_standard(accum):
    data = batches(6 * accum)
    std_m, lw_m = model(), model()
    std_opt = make(groups(std_m))
    lw_opt = LayerwiseOptimizer(groups(lw_m), make, accumulation_steps=accum)
    for i in range(0, len(data), accum):
        for b in data[i:i + accum]:
            (loss_of(std_m, b) / accum).backward()
        std_opt.step()
        std_opt.zero_grad()
        for b in data[i:i + accum]:
            (loss_of(lw_m, b) / accum).backward()
        lw_opt.step()
        assert all(p.grad is None for p in lw_m.parameters())  # freed by the hooks
    for a, b in zip(std_m.parameters(), lw_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_scheduler_steps_once_per_optimizer_step():
    m = model()
    opt = LayerwiseOptimizer(groups(m), make)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    for b in batches(4):
        loss_of(m, b).backward()
        opt.step()
        sched.step()
    for inner in opt.optimizers:
        assert inner.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**4)


def test_state_dict_roundtrip_weights_only():
    data = batches(8, seed=2)
    m1 = model()
    o1 = LayerwiseOptimizer(groups(m1), make)
    for b in data[:5]:
        loss_of(m1, b).backward()
    buf = io.BytesIO()
    torch.save({"m": m1.state_dict(), "o": o1.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m2 = model()
    m2.load_state_dict(ck["m"])
    o2 = LayerwiseOptimizer(groups(m2), make)
    o2.load_state_dict(ck["o"])
    for b in data[5:]:
        loss_of(m1, b).backward()
        loss_of(m2, b).backward()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_bad_accumulation_steps():
    with pytest.raises(ValueError, match="accumulation_steps must be an integer ≥ 1; got 0"):
        LayerwiseOptimizer(groups(model()), make, accumulation_steps=0)
