"""AdamW that keeps its moments in float32 while the parameters stay in bfloat16 (the
"bf16-fp32-state" precision recipe). torch.optim.AdamW cannot: it creates its moments in the
parameter's dtype and its kernels refuse mixed dtypes (`lerp_`: "expected dtype float for `end`").

Each parameter is updated in float32 and rounded once into its bfloat16 storage; the float32
gradient and parameter copies are per-parameter temporaries (the loop is torch's single-tensor
path), so the step's extra memory is one parameter's worth, not the model's.
"""
from __future__ import annotations

import math

import torch

__all__ = ["AdamWFp32State"]


class AdamWFp32State(torch.optim.Optimizer):
    """torch.optim.AdamW's update (decoupled weight decay, bias correction, ε outside the root),
    with exp_avg and exp_avg_sq in float32 whatever the parameter's dtype."""

    state_categories = {"step": "moments", "exp_avg": "moments", "exp_avg_sq": "moments"}

    @classmethod
    def state_category(cls, key: str) -> str | None:
        return cls.state_categories.get(key)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                st["step"] += 1
                t = st["step"]
                g = p.grad.float()  # a no-op view for a float32 parameter
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                w = p.float()
                w.mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                p.copy_(w)  # the one rounding into the parameter's dtype
        return loss
