"""Natural GaLore optimizers: GaLore's low-rank projection + the windowed inverse-Fisher correction.

One step for a parameter with a rank (paper §2, DESIGN.md "seed formula"):
  every update_proj_gap steps: P ← top-r singular vectors of ∇ (SVD in float32)
  g_t = project(∇)                          projected gradient, flattened to length k
  g̃  = (λI + GGᵀ)⁻¹ g_t                     window of the last s projected gradients (natural.py)
  N, c = rule(g̃)                             Adam / 8-bit Adam / Adafactor moments (rules.py)
  p ← p − lr·c·scale·project_back(N);  then p ← p − lr·wd·p (decoupled, galore-torch's order)
Groups without "rank" use the same rule on the full gradient (plain AdamW etc.).
"""
from __future__ import annotations

import math
import warnings
from itertools import chain

import torch

from ngl_profile.optim import choice, natural, sharded
from ngl_profile.optim.backoff import BackoffWatch, total_backoffs
from ngl_profile.optim.projector import PROJ_TYPES, SVD_METHODS, clamp_rank, projected_shape, resolve_side, rotate
from ngl_profile.optim.rules import STATE_DTYPES, Adam8bitRule, AdafactorRule, AdamRule
from ngl_profile.optim.state_keys import category_of, merge
from ngl_profile.optim.values import has_values, under_dispatch_mode

__all__ = ["NaturalGaLoreAdamW", "NaturalGaLoreAdamW8bit", "NaturalGaLoreAdafactor",
           "LOW_RANK_DEFAULTS", "SUBSPACE_POLICIES"]

SUBSPACE_POLICIES = ("keep", "reset", "rotate")
LOW_RANK_DEFAULTS = {"update_proj_gap": 200, "scale": 0.25, "proj_type": "std", "history_size": 10,
                     "damping": 1e-3, "history_dtype": "float32", "on_subspace_change": "keep",
                     "svd": "full"}


def _history_dtype_name(value) -> str:
    for name, dtype in natural.HISTORY_DTYPES.items():
        if value in (name, dtype):
            return name
    raise ValueError(f"history_dtype must be one of {', '.join(natural.HISTORY_DTYPES)}; got {value!r}")


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def _validate_low_rank(group: dict) -> None:
    rank = group["rank"]
    _check(isinstance(rank, int) and not isinstance(rank, bool) and rank > 0, "rank", rank,
           "a positive integer")
    gap = group["update_proj_gap"]
    _check(isinstance(gap, int) and gap >= 1, "update_proj_gap", gap, "an integer ≥ 1")
    s = group["history_size"]
    _check(isinstance(s, int) and not isinstance(s, bool) and s >= 0, "history_size", s,
           "an integer ≥ 0 (0 = plain GaLore)")
    _check(isinstance(group["damping"], (int, float)) and group["damping"] > 0, "damping",
           group["damping"], "a number > 0")
    _check(isinstance(group["scale"], (int, float)) and group["scale"] > 0, "scale", group["scale"],
           "a number > 0")
    _check(group["proj_type"] in PROJ_TYPES, "proj_type", group["proj_type"],
           f"one of {', '.join(PROJ_TYPES)}")
    _check(group["svd"] in SVD_METHODS, "svd", group["svd"], f"one of {', '.join(SVD_METHODS)}")
    _check(group["on_subspace_change"] in SUBSPACE_POLICIES, "on_subspace_change",
           group["on_subspace_change"], f"one of {', '.join(SUBSPACE_POLICIES)}")
    # stored as a name: a string survives torch.load(weights_only=True) on any torch version
    group["history_dtype"] = _history_dtype_name(group["history_dtype"])


# the state keys this module creates (in _begin and _project); the rule and natural.py declare theirs
_STATE_CATEGORIES = {"step": "moments", "nonfinite_skips": "moments",  # ints: Adam's t, skip counter
                     "proj_factors": "projectors", "proj_*": "projectors"}  # basis factors proj_0, proj_1, …


def _kernels(group: dict) -> bool | str:
    # compile=True: the native, compiled or eager window passes, whichever made this optimizer's
    # steps fastest (choice.py; NGL_PROFILE_KERNELS forces one); False: eager
    return "auto" if group["compile"] else False


def _projected_numel(p: torch.Tensor, group: dict) -> int:
    """The length of p's flattened projected gradient (its window's row length)."""
    shape = tuple(p.shape)
    side = resolve_side(shape, group["proj_type"])
    return math.prod(projected_shape(shape, clamp_rank(shape, group["rank"], side), side))


class _NaturalGaLore(torch.optim.Optimizer):
    rule = AdamRule()
    # key → memory category for every state key this optimizer can create ("prefix*": every key
    # with that prefix); built per class from its rule's declaration (see __init_subclass__)
    state_categories: dict[str, str] = merge(_STATE_CATEGORIES, natural.STATE_CATEGORIES,
                                             AdamRule.state_categories)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.state_categories = merge(_STATE_CATEGORIES, natural.STATE_CATEGORIES, cls.rule.state_categories)

    @classmethod
    def state_category(cls, key: str) -> str | None:
        """The memory category declared for state key `key` (None: not one of ours)."""
        return category_of(cls.state_categories, key)

    def __init__(self, params, defaults: dict):
        _check(defaults["lr"] >= 0, "lr", defaults["lr"], "≥ 0")
        _check(isinstance(defaults["compile"], bool), "compile", defaults["compile"], "true or false")
        _check(defaults["weight_decay"] >= 0, "weight_decay", defaults["weight_decay"], "≥ 0")
        # a name, not a torch.dtype: it survives torch.load(weights_only=True)
        _check(defaults["state_dtype"] in (None, *STATE_DTYPES), "state_dtype", defaults["state_dtype"],
               f"None or one of {', '.join(STATE_DTYPES)}")
        self._rank_warned = False
        # warns once if a window's solve needed a larger damping than asked (backoff.py says how,
        # and what it costs); a LayerwiseOptimizer gives its inner optimizers one shared watch
        self._backoff_watch = BackoffWatch()
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        if param_group.get("rank") is not None:
            for key, value in LOW_RANK_DEFAULTS.items():
                param_group.setdefault(key, value)
            _validate_low_rank(param_group)
        super().add_param_group(param_group)

    @property
    def skipped_updates(self) -> int:
        """Parameter updates skipped because the gradient held NaN or inf."""
        return sum(st.get("nonfinite_skips", 0) for st in self.state.values())

    @property
    def damping_backoffs(self) -> int:
        """Damping tiers the window solves had to climb (1e3·λ: 1, 1e6·λ: 2, none factored: 3),
        summed over parameters and steps; 0 = every solve used the requested λ. A host read."""
        return total_backoffs(self.state.values())

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        live = [(p, g) for g in self.param_groups for p in g["params"] if p.grad is not None]
        # DTensor (FSDP2) parameters are stepped as their local rows; sharded.py says what that
        # communicates. Plain parameters pass through unchanged.
        with sharded.local_views(self.state, live) as local:
            chooser = self._chooser
            timeable = chooser.choice is None and self._timeable(local)  # once chosen, never asked again
            with chooser.step(timeable, local[0][0].device if local else torch.device("cpu")):
                self._step_live(local)
        return loss

    @property
    def _chooser(self) -> choice.StepChooser:
        if "_step_chooser" not in self.__dict__:  # made on first use: also for optimizers loaded or copied
            self._step_chooser = choice.StepChooser()
        return self._step_chooser

    @property
    def kernel_choice(self) -> dict:
        """{"choice": "native" | "compiled" | "eager" | None (not decided), "median_step_s": {mode: s}}
        (choice.py)."""
        return self._chooser.summary()

    def _timeable(self, live) -> bool:
        """Whether this step can be one of the chooser's trials: some group asks for the choice,
        every window is full, and the tensors are real with no dispatch mode (a tracker) active."""
        windows = [self.state[p] for p, g in live if g["compile"] and g.get("rank") is not None
                   and g["history_size"] > 0 and p.dim() >= 2]
        return (bool(windows) and all(st.get("history_count", 0) == st["history"].shape[0] if "history" in st
                                      else False for st in windows)
                and has_values(windows[0]["history"]) and not under_dispatch_mode())

    def _step_live(self, live: list) -> None:
        verdicts = [None] * len(live)
        if self._check_whole_step(live):
            # on a GPU every host read stalls the launch queue: one read for the whole step (one
            # extra pass over the gradients, cheap at HBM bandwidth) instead of one per parameter
            finite = torch.stack(torch._foreach_norm([p.grad for p, _ in live])).isfinite()
            finite = sharded.agree(finite, live)  # shards: every rank skips the same updates
            # shape-only tensors (an estimate) hold no verdict to read: assume finite, as all_finite does
            verdicts = finite.tolist() if has_values(finite) else [True] * len(live)
        self._make_windows(live)
        waiting = []  # stored into their windows, waiting for the Gram rows and the batched solve
        for (p, group), finite in zip(live, verdicts):
            pushed = self._begin(p, group, finite)
            if pushed is not None:
                waiting.append((p, group, *pushed))
        if waiting:
            states = [self.state[p] for p, *_ in waiting]
            kernels = [_kernels(group) for _, group, *_ in waiting]
            shards = [sharded.context(p) for p, *_ in waiting]
            dtypes = [w[4] for w in waiting]
            how = natural.plan(states, kernels, dtypes, shards)  # for both passes: the stores moved no window
            natural.update_grams(states, kernels, shards, how)
            # one batched solve for every window of the step. Tried on a CPU, where each window
            # could instead be solved and combined right after its push while still in the cache:
            # the step was 26 ms slower (155 vs 129 ms, llama-60m, benchmarks/optimizer_step.py,
            # AMD EPYC 2 cores, 2026-12-02): 56 small solves cost more than the cache saved
            ws = natural.weights(states, [gr["damping"] for _, gr, *_ in waiting], self._backoff_watch.tally)
            for i, g_tilde in natural.combine_all(states, ws, kernels, dtypes, shards, how):
                p, group, side, shape, _ = waiting[i]
                self._finish(p, group, g_tilde.view(shape), side)
                del g_tilde  # before the next batch of g̃ is made
            self._backoff_watch.check()  # CPU: a free read; GPU: no sync (backoff.py)

    def _make_windows(self, live) -> None:
        """Windows for the parameters about to store their first column, made together so that
        windows of one shape share an arena (natural.init_windows: one pass over all of them).
        A sharded parameter's window is made at its first push, from its local rows; its passes
        run one window at a time, in the same order on every rank (natural.update_grams,
        natural.combine_all)."""
        new: dict[tuple, list[dict]] = {}
        for p, group in live:
            state = self.state[p]
            if ("history" in state or group.get("rank") is None or p.dim() < 2
                    or group["history_size"] == 0 or sharded.context(p) is not None):
                continue
            # compile flag and dtype in the key: an arena whose windows want different kernels
            # or g̃ dtypes could never be stepped as one
            key = (_projected_numel(p, group), group["history_size"], group["history_dtype"], p.device,
                   group["compile"], p.dtype)
            new.setdefault(key, []).append(state)
        for (k, s, storage, device, *_), states in new.items():
            natural.init_windows(states, k, s, storage, device)

    # None: decide by device (CUDA → one check per step; CPU → per parameter, where a host read is
    # free and the extra pass over every gradient is not: ~7 % of a GaLore step measured on 2 cores)
    whole_step_check: bool | None = None

    def _check_whole_step(self, live) -> bool:
        if not live:
            return False
        if any(sharded.context(p) is not None for p, _ in live):
            return True  # one agreed verdict per step (sharded.agree), whatever the device
        if self.whole_step_check is not None:
            return self.whole_step_check
        return live[0][0].grad.is_cuda and len(live) > 1

    def _begin(self, p: torch.Tensor, group: dict, finite: bool | None = None) -> tuple | None:
        """Project ∇ and, with a window, store g_t and return (side, shape, dtype): its Gram row
        and its update wait for the step's batched passes and solve, and g_t itself is not kept
        (the window holds it), so the peak never holds a projected gradient beside its g̃.
        Without a window, update p right away and return None.

        `finite`: the step's verdict on this gradient, if already known; None: check it here.
        """
        if p.grad.is_sparse:
            raise RuntimeError("Natural GaLore does not support sparse gradients")
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["nonfinite_skips"] = 0
        low_rank = group.get("rank") is not None and p.dim() >= 2
        # A non-finite entry of ∇ reaches its projection (inf·x = ±inf, inf·0 = NaN), so for a
        # low-rank parameter checking the small projected g is enough: no extra pass over ∇.
        # Either way a host sync per parameter: the price of never updating with NaN.
        if finite is False:
            state["nonfinite_skips"] += 1
            return None
        side = resolve_side(sharded.shape(p), group["proj_type"]) if low_rank else None
        windowed = low_rank and group["history_size"] > 0
        g, in_place = self._project(p, state, group, side, finite, windowed) if low_rank else (p.grad, False)
        if g is None or (finite is None and not natural.all_finite(g)):
            state["nonfinite_skips"] += 1
            if in_place:
                natural.discard(state)
            return None
        if windowed:
            # _make_windows sized it; re-made here only if that ever disagreed with g
            if "history" not in state or state["history"].shape[1] != g.numel():
                natural.init_window(state, g.numel(), group["history_size"], group["history_dtype"], g.device)
            natural.store(state, g.reshape(-1), sharded.context(p), _kernels(group), in_place)
            return side, g.shape, g.dtype
        self._finish(p, group, g, side)
        return None

    def _finish(self, p: torch.Tensor, group: dict, g: torch.Tensor, side: str | None) -> None:
        """Moments, then p ← p − lr·c·scale·project_back(N) and the decoupled weight decay.
        `side`: the projection side of a low-rank parameter; None for a plain one."""
        state = self.state[p]
        g = sharded.follow(g, p, self._basis(state) if side else None, side)  # a shard: its rows, for the rule
        if state["step"] == 0:
            self.rule.init(state, g, group)
        state["step"] += 1
        t = state["step"]
        fused = self.rule.fused_full_update
        if side is not None or not (fused and fused(p, state, group, t)):
            n, c = self.rule.direction(state, g, group, t)
            if side is not None:
                sharded.add_projected_back(p, n, self._basis(state), side, -group["lr"] * c * group["scale"])
            else:
                p.add_(n, alpha=-group["lr"] * c)
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    @staticmethod
    def _basis(state: dict) -> tuple[torch.Tensor, ...]:
        return tuple(state[f"proj_{i}"] for i in range(state["proj_factors"]))

    def _project(self, p: torch.Tensor, state: dict, group: dict, side: str, checked: bool | None = None,
                 windowed: bool = False) -> tuple[torch.Tensor | None, bool]:
        """(g_t, whether it was made in its window's next slot): the projected gradient, refreshing
        P on gap steps; (None, False) if ∇ is not finite there. windowed: make g_t in the slot it
        will be stored in where it can be (natural.next_column), after a subspace change moved it."""
        grad = p.grad
        if state["step"] % group["update_proj_gap"] == 0:
            if not checked and not natural.all_finite(grad):  # an SVD of NaN would poison P
                return None, False
            ranks = clamp_rank(sharded.shape(p), group["rank"], side)
            if min(ranks) < group["rank"] and not self._rank_warned:
                self._rank_warned = True
                warnings.warn(f"rank {group['rank']} exceeds what a {tuple(p.shape)} tensor allows; "
                              f"clamped to {ranks} (warned once per optimizer)", stacklevel=4)
            new = sharded.compute_basis(p, grad, ranks, side, group["svd"], seed=state["step"] + 1)
            if "proj_factors" in state and group["history_size"] > 0:
                self._on_subspace_change(state, group, side, self._basis(state), new, ranks, p.shape,
                                         sharded.context(p))
            state["proj_factors"] = len(new)
            for i, factor in enumerate(new):
                state[f"proj_{i}"] = factor
        basis = self._basis(state)
        slot = natural.next_column(state, grad.dtype) if windowed else None
        g = None if slot is None else sharded.project_into(p, grad, basis, side, slot)
        return (g, True) if g is not None else (sharded.project(p, grad, basis, side), False)

    @staticmethod
    def _on_subspace_change(state, group, side, old, new, ranks, shape, shard=None) -> None:
        policy = group["on_subspace_change"]
        if policy == "reset":
            natural.reset_window(state)
        elif policy == "rotate":
            low_shape = projected_shape(tuple(shape), ranks, side)
            old32, new32 = tuple(u.float() for u in old), tuple(u.float() for u in new)
            change = (sharded.rotation(shard, old32, new32, side)  # a left shard: needs the other rows
                      or (lambda col: rotate(col.view(low_shape), old32, new32, side).reshape(-1)))
            natural.rotate_window(state, change, shard)
        # "keep" (the official code's behaviour): old-basis columns stay in the window as they are

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts every floating state tensor to the parameter's dtype on load; the float64
        # Gram matrix and a bfloat16 window must come back exactly as saved for a bit-exact resume
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for pid, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(pid, {}).items():
                if torch.is_tensor(value):
                    self.state[p][key] = value.to(device=p.device, copy=True)
        natural.repack(list(self.state.values()))  # the loaded windows back into arenas (natural.py)


class NaturalGaLoreAdamW(_NaturalGaLore):
    """Natural GaLore with AdamW moments. Groups with "rank" are projected; others are plain AdamW."""

    rule = AdamRule()

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, compile: bool = True, state_dtype: str | None = None):
        _check(all(0 <= b < 1 for b in betas), "betas", betas, "in [0, 1)")
        _check(eps >= 0, "eps", eps, "≥ 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      compile=compile, state_dtype=state_dtype))


class NaturalGaLoreAdamW8bit(NaturalGaLoreAdamW):
    """NaturalGaLoreAdamW with both moments in bitsandbytes blockwise 8-bit (CPU and CUDA)."""

    rule = Adam8bitRule()


class NaturalGaLoreAdafactor(_NaturalGaLore):
    """Natural GaLore with Adafactor's factored second moment (first moment when beta1 is set)."""

    rule = AdafactorRule()

    def __init__(self, params, lr: float = 1e-2, beta1: float | None = None, decay_rate: float = -0.8,
                 clip_threshold: float = 1.0, eps: float = 1e-30, weight_decay: float = 0.0,
                 compile: bool = True, state_dtype: str | None = None):
        _check(beta1 is None or 0 <= beta1 < 1, "beta1", beta1, "None or in [0, 1)")
        _check(decay_rate < 0, "decay_rate", decay_rate, "< 0")
        super().__init__(params, dict(lr=lr, beta1=beta1, decay_rate=decay_rate, clip_threshold=clip_threshold,
                                      eps=eps, weight_decay=weight_decay, compile=compile,
                                      state_dtype=state_dtype))
