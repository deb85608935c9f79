"""Per-layer (in-backward) updates: each parameter is stepped as soon as its gradient is complete.

Gradients then never coexist: the peak holds one parameter's gradient instead of all of them,
which is what makes 7B fit on 24 GB in the GaLore paper. Differences from galore-torch's script:
the LR scheduler is stepped by the training loop once per optimizer step (its script stepped it
inside every hook as well: issues #62/#78), gradient accumulation is supported, and the whole thing
is one `torch.optim.Optimizer` with a state_dict, so schedulers and checkpoints work unchanged.
"""
from __future__ import annotations

from functools import cached_property
from typing import Callable, Iterable

import torch

from ngl_profile.optim.backoff import BackoffWatch, total_backoffs
from ngl_profile.optim.state_keys import category_of, merge

__all__ = ["LayerwiseOptimizer"]


class LayerwiseOptimizer(torch.optim.Optimizer):
    """One inner optimizer per parameter, stepped from `register_post_accumulate_grad_hook`.

    `make(param_groups) -> Optimizer` builds an inner optimizer for a one-parameter group list.
    With accumulation_steps = k, a parameter is stepped on every k-th completed backward (its
    gradient accumulates in .grad until then) and its .grad is freed right after the update.
    `step()` only runs a closure, if any: the updates already happened during backward.
    """

    def __init__(self, params: Iterable, make: Callable[[list], torch.optim.Optimizer],
                 accumulation_steps: int = 1):
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an integer ≥ 1; got {accumulation_steps!r}")
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.accumulation_steps = accumulation_steps
        self.optimizers: list[torch.optim.Optimizer] = []
        self._handles = []
        self._pending: dict[torch.Tensor, int] = {}
        inner_groups = []
        for group in groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                opt = make([{**group, "params": [p]}])
                self.optimizers.append(opt)
                inner_groups.extend(opt.param_groups)
                self._pending[p] = 0
                self._handles.append(p.register_post_accumulate_grad_hook(self._hook(opt)))
        super().__init__([g["params"][0] for g in inner_groups], {})
        # share the inner groups' dicts: an LR scheduler that sets group["lr"] here sets it there
        self.param_groups = inner_groups
        # one damping-backoff warning for the whole optimizer, not one per parameter
        watch = BackoffWatch()
        for opt in self.optimizers:
            if isinstance(getattr(opt, "_backoff_watch", None), BackoffWatch):
                opt._backoff_watch = watch

    def _hook(self, opt: torch.optim.Optimizer):
        def step_now(p: torch.Tensor) -> None:
            self._pending[p] += 1
            if self._pending[p] < self.accumulation_steps:
                return
            self._pending[p] = 0
            opt.step()
            p.grad = None  # freed here so the peak holds one parameter's gradient at a time

        return step_now

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            with torch.enable_grad():
                return closure()
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        # gradients are freed by the hooks; a parameter mid-accumulation keeps its partial sum
        return None

    @property
    def skipped_updates(self) -> int:
        return sum(getattr(o, "skipped_updates", 0) for o in self.optimizers)

    @property
    def damping_backoffs(self) -> int:
        # one host read per device for all inner optimizers, not one per parameter
        return total_backoffs(st for o in self.optimizers for st in o.state.values())

    @cached_property
    def state_categories(self) -> dict[str, str]:
        """The union of the inner optimizers' declarations (state key → memory category); merged
        once: a memory tracker asks for every state tensor of every parameter."""
        return merge(*(getattr(o, "state_categories", {}) for o in self.optimizers))

    def state_category(self, key: str) -> str | None:
        return category_of(self.state_categories, key)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "pending": [self._pending[g["params"][0]] for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict) -> None:
        if len(state_dict["optimizers"]) != len(self.optimizers):
            raise ValueError(f"state_dict holds {len(state_dict['optimizers'])} per-parameter optimizers, "
                             f"this one has {len(self.optimizers)}")
        for opt, sd in zip(self.optimizers, state_dict["optimizers"]):
            opt.load_state_dict(sd)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        for g, n in zip(self.param_groups, state_dict.get("pending", [])):
            self._pending[g["params"][0]] = n

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
