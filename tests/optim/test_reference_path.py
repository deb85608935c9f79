"""The optimizer's batched step equals the plain reference path (ngl_profile/optim/reference.py).

Not an accuracy test (tests/optim/reference.py is the independent float64 oracle for that): both
run the same math in the same precisions — float32 projections and Adam, a float64 solve, a
float64 sum for g̃ — and differ only in the order of float64 sums (the Gram matrix row by row
vs GᵀG at once; batched vs single Cholesky; a compiled vs a BLAS mat-vec) and in fusing the
back-projection into one addmm. The float64 differences move g̃ by a few float64 ulps times
cond(S) (≤ 5e2 for these gradients), far below one float32 ulp; the addmm fusion rounds once
where the plain path rounds twice: one float32 ulp per step. So the parameters (entries of size
~1, float32 ulp 1.2e-7) agree to a few ulps: the tolerance (rtol 1e-6, atol 5e-7) allows ~8;
measured: at most 5.8e-8, half an ulp, over 8 steps.
"""
import pytest
import torch

from ngl_profile.optim import NaturalGaLoreAdamW, kernels
from ngl_profile.optim.reference import reference_step

SHAPES = {"std_a": (24, 40), "std_b": (24, 40), "std_tall": (40, 24), "left": (32, 36), "right": (36, 20),
          "tucker3": (6, 8, 10), "tucker2": (20, 28), "s0": (24, 40), "bias": (40,)}


def groups(params: dict, policy: str) -> list[dict]:
    low = dict(update_proj_gap=3, on_subspace_change=policy)
    return [
        {"params": [params["std_a"], params["std_b"], params["std_tall"]], "rank": 6, "history_size": 4,
         "proj_type": "std", **low},  # std_a and std_b: one batched solve
        {"params": [params["left"]], "rank": 5, "history_size": 3, "proj_type": "left", **low},
        {"params": [params["right"]], "rank": 4, "history_size": 4, "proj_type": "right", **low},
        {"params": [params["tucker3"], params["tucker2"]], "rank": 3, "history_size": 4, "proj_type": "tucker", **low},
        {"params": [params["s0"]], "rank": 6, "history_size": 0, **low},  # plain GaLore
        {"params": [params["bias"]]},  # plain AdamW
    ]


def gradients(steps: int, gen: torch.Generator) -> list[dict]:
    """Slowly drifting gradients (consecutive ones alike, as in training) of mixed scales."""
    base = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    out = []
    for t in range(steps):
        for n in base:
            base[n] = base[n] + 0.3 * torch.randn(SHAPES[n], generator=gen)
        out.append({n: (10.0 ** (i % 3)) * (b + 0.1 * torch.randn(b.shape, generator=gen))
                    for i, (n, b) in enumerate(base.items())})
    return out


@pytest.mark.parametrize("policy", ["keep", "reset", "rotate"])
@pytest.mark.parametrize("compiled", [False, True])
def test_batched_step_equals_reference_path(policy, compiled, monkeypatch):
    if compiled:
        monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)  # every window through the compiled kernels
    gen = torch.Generator().manual_seed(0)
    init = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    ours = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
    theirs = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
    opt = NaturalGaLoreAdamW(groups(ours, policy), lr=1e-2, weight_decay=0.01, compile=compiled)
    ref_groups = groups(theirs, policy)
    for group, filled in zip(ref_groups, opt.param_groups):  # the optimizer's settings, defaults included
        group.update({k: v for k, v in filled.items() if k != "params"})
    ref_states = {n: {} for n in SHAPES}
    by_param = {id(p): n for n, p in theirs.items()}
    for step, grads in enumerate(gradients(8, gen)):  # crosses two projector refreshes (gap 3)
        for n in SHAPES:
            ours[n].grad = grads[n].clone()
            theirs[n].grad = grads[n].clone()
        opt.step()
        for group in ref_groups:
            for p in group["params"]:
                reference_step(p, ref_states[by_param[id(p)]], group)
        for n in SHAPES:
            torch.testing.assert_close(ours[n], theirs[n], rtol=1e-6, atol=5e-7, msg=lambda m: f"{n}, step {step}: {m}")
    assert opt.state[ours["std_a"]]["history_count"] == 4 or policy == "reset"
