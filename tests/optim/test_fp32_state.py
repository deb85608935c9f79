"""bf16 weights with float32 optimizer state: AdamWFp32State against torch AdamW in float64, and
the GaLore family's moments kept in float32 (state_dtype) for bfloat16 parameters."""
import torch

from ngl_profile.optim.fp32_state import AdamWFp32State
from ngl_profile.optim.optimizer import NaturalGaLoreAdamW


def _grads(gen, shape, n):
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(n)]


def test_each_step_is_float64_adamw_rounded_once_into_bf16():
    """Reference: torch AdamW on a float64 copy; ours must land on that copy rounded to bf16 (one
    rounding a step: the float32 state carries what bf16 weights cannot), checked over 5 steps by
    restarting the reference from our bf16 weights each step."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    p = torch.nn.Parameter(w0.to(torch.bfloat16))
    ours = AdamWFp32State([p], lr=1e-2, weight_decay=0.1)
    ref_p = torch.nn.Parameter(w0.clone())
    ref = torch.optim.AdamW([ref_p], lr=1e-2, weight_decay=0.1, foreach=False)
    for g in _grads(gen, (16, 8), 5):
        with torch.no_grad():
            ref_p.copy_(p.double())  # the same starting point: the bf16 weights ours holds
        p.grad, ref_p.grad = g.to(torch.bfloat16), g.to(torch.bfloat16).double()
        ours.step()
        ref.step()
        assert ours.state[p]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(ours.state[p]["exp_avg"].double(), ref.state[ref_p]["exp_avg"], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"].double(), ref.state[ref_p]["exp_avg_sq"],
                                   rtol=1e-6, atol=1e-9)
        # within one bf16 rounding of the float64 result (float32 arithmetic may flip a tie)
        ulp = ref_p.detach().abs().clamp_min(1e-3) * 2.0 ** -7
        assert ((p.detach().double() - ref_p.detach()).abs() <= ulp).all()


def test_fp32_state_for_float32_parameters_is_torch_adamw():
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(10, 6, generator=gen)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ours, ref = AdamWFp32State([a], lr=3e-3), torch.optim.AdamW([b], lr=3e-3, foreach=False)
    for g in _grads(gen, (10, 6), 4):
        a.grad, b.grad = g.float(), g.float()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_galore_moments_in_float32_for_bf16_parameters():
    gen = torch.Generator().manual_seed(2)
    p = torch.nn.Parameter(torch.randn(32, 16, generator=gen).to(torch.bfloat16))
    q = torch.nn.Parameter(torch.randn(16, generator=gen).to(torch.bfloat16))
    opt = NaturalGaLoreAdamW([{"params": [p], "rank": 4, "history_size": 2}, {"params": [q]}], lr=1e-3,
                             state_dtype="float32")
    for _ in range(3):
        p.grad = torch.randn(32, 16, generator=gen).to(torch.bfloat16)
        q.grad = torch.randn(16, generator=gen).to(torch.bfloat16)
        opt.step()
    for t in (p, q):
        assert opt.state[t]["exp_avg"].dtype == opt.state[t]["exp_avg_sq"].dtype == torch.float32
        assert t.dtype == torch.bfloat16 and torch.isfinite(t.float()).all()
    plain = NaturalGaLoreAdamW([torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))])
    plain.param_groups[0]["params"][0].grad = torch.ones(4, dtype=torch.bfloat16)
    plain.step()
    assert next(iter(plain.state.values()))["exp_avg"].dtype == torch.bfloat16  # default: g's dtype
