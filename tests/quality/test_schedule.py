"""The lr schedule is GaLore's (linear warm-up from 0, cosine to min_lr_ratio), checked against its
formula written out by hand; and the seeds' summary counts a diverged run instead of dropping it."""
import math

import pytest
import torch

from ngl_profile.quality.run import summary
from ngl_profile.quality.train import Curve, schedule


def galore_factor(step, warmup, total, floor):
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def test_warmup_then_cosine_to_the_floor():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = schedule(opt, 100, 0.1, 0.1)
    for step in range(100):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * galore_factor(step, 10, 100, 0.1), abs=1e-12)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)  # the floor, after the last step


def _curve(seed, final, diverged=False):
    return Curve(seed=seed, lr=1e-3, eval_steps=[0, 10], heldout_loss=[5.5, final],
                 diverged_at=3 if diverged else None)


def test_summary_over_seeds():
    s = summary([_curve(0, 2.0), _curve(1, 2.2), _curve(2, 2.1)])
    assert s["heldout_loss"] == pytest.approx(2.1) and s["diverged"] == 0
    assert s["heldout_loss_stats"]["q1"] == pytest.approx(2.05) and s["heldout_loss_stats"]["q3"] == pytest.approx(2.15)
    bad = summary([_curve(0, 2.0), _curve(1, 2.2, diverged=True)])
    assert bad["heldout_loss"] is None and bad["diverged"] == 1 and bad["heldout_loss_by_seed"] == [2.0, None]
