"""What the Python API needs to know about an optimizer it did not build: the name it reports under,
its hyperparameters, and which memory category each of its state keys belongs to.

Ours declare their state keys (optim/state_keys.py); torch's Adam/AdamW, bitsandbytes' 8-bit AdamW,
transformers' Adafactor and galore-torch use the zoo's tables (zoo/optimizers.py). Any other
optimizer's keys are unknown: the first one met is a one-line ValueError naming it and the
`state_categories=` argument that settles it. Nothing is guessed unless the user asks for it
(`state_categories="moments"` files every undeclared key there).
"""
from __future__ import annotations

import math
from typing import Callable

from ngl_profile.schema.categories import STATE_CATEGORIES

__all__ = ["innermost", "optimizer_name", "optimizer_hparams", "state_lookup", "code_path_note"]

# class (module.qualname, as the library defines it) → the zoo entry whose state table it uses
_THIRD_PARTY = {
    "torch.optim.adamw.AdamW": "adamw",
    "torch.optim.adam.Adam": "adamw",  # the same state keys as AdamW
    "bitsandbytes.optim.adamw.AdamW8bit": "adamw8bit",
    "transformers.optimization.Adafactor": "adafactor",
    "galore_torch.adamw.GaLoreAdamW": "galore-torch",
}
_OURS = {"NaturalGaLoreAdamW": "galore", "NaturalGaLoreAdamW8bit": "galore-8bit",
         "NaturalGaLoreAdafactor": "galore-adafactor"}


def innermost(optimizer):
    """The torch optimizer inside wrappers that are not one (accelerate's AcceleratedOptimizer keeps
    it as `.optimizer`): its step hooks are the ones that fire."""
    seen = set()
    while hasattr(optimizer, "optimizer") and id(optimizer) not in seen and not hasattr(optimizer, "optimizers"):
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def _members(optimizer) -> list:
    """The optimizers doing the work: a per-layer wrapper's inner ones, else itself."""
    inner = getattr(optimizer, "optimizers", None)
    return list(inner) if inner else [optimizer]


def _qualified(cls) -> str | None:
    for c in cls.__mro__:
        name = f"{c.__module__}.{c.__qualname__}"
        if name in _THIRD_PARTY:
            return name
    return None


def optimizer_name(optimizer) -> str:
    """The zoo's name where the optimizer is one the zoo builds (so reports, `compare` and the AdamW
    ratios of `check` treat it alike), else its class name."""
    opt = innermost(optimizer)
    members = _members(opt)
    first = members[0]
    suffix = "-layerwise" if first is not opt else ""
    ours = next((_OURS[c.__name__] for c in type(first).__mro__ if c.__name__ in _OURS), None)
    if ours is not None:
        history = any((g.get("history_size") or 0) > 0 for o in members for g in o.param_groups
                      if g.get("rank") is not None)
        return ("natural-" + ours if history else ours) + suffix
    qualified = _qualified(type(first))
    if qualified is None:
        return type(first).__name__ + suffix
    name = "adam" if qualified == "torch.optim.adam.Adam" else _THIRD_PARTY[qualified]
    return name + suffix


def _jsonable(v) -> bool:
    if isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (list, tuple)) and all(_jsonable(x) for x in v)


def optimizer_hparams(optimizer) -> dict:
    """Its defaults, overridden by the low-rank group's settings where it has one; only values a
    results file can hold (numbers, strings, lists of them), never parameters or tensors."""
    opt = innermost(optimizer)
    first = _members(opt)[0]
    hp = dict(getattr(first, "defaults", {}) or {})
    low_rank = next((g for o in _members(opt) for g in o.param_groups if g.get("rank") is not None), None)
    if low_rank is not None:
        hp.update(low_rank)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()
            if k != "params" and v is not None and _jsonable(v)}


def state_lookup(optimizer, declared: dict | str | None = None) -> Callable[[str], str]:
    """state key → memory category: the user's `declared` mapping first (their explicit word), then
    the optimizer's own declaration (ours), then the zoo's table for its library, then `declared`
    when it is a single category for every other key. An undeclared key raises ValueError."""
    from ngl_profile.optim.state_keys import merge
    from ngl_profile.zoo.optimizers import OPTIMIZERS

    fallback = None
    table: dict = {}
    if isinstance(declared, str):
        if declared not in STATE_CATEGORIES:
            raise ValueError(f"state_categories={declared!r}: a category must be one of {', '.join(STATE_CATEGORIES)}")
        fallback = declared
    elif isinstance(declared, dict):
        bad = [k for k in declared if not isinstance(k, str)]
        if bad:
            raise ValueError(f"state_categories: keys must be state key names (strings); got {bad[0]!r}")
        table = merge(declared)  # an unknown category raises, naming the key
    elif declared is not None:
        raise ValueError("state_categories must be a dict {state key: category} or one category name; "
                         f"got {type(declared).__name__}")
    opt = innermost(optimizer)
    members = _members(opt)
    own = getattr(opt, "state_category", None)
    qualified = _qualified(type(members[0]))
    zoo = OPTIMIZERS[_THIRD_PARTY[qualified]].state_categories if qualified else {}
    cls_name = type(members[0]).__name__

    def lookup(key: str) -> str:
        found = table.get(key)
        if found is None and own is not None:
            found = own(key)
        found = found or zoo.get(key) or fallback
        if found is None:
            raise ValueError(f"{cls_name}'s optimizer state key {key!r} has no known memory category: pass "
                             f"state_categories={{{key!r}: ...}} with one of {', '.join(STATE_CATEGORIES)} "
                             "(or one category for every unknown key, e.g. state_categories=\"moments\")")
        return found

    return lookup


def code_path_note(optimizer, estimated: bool) -> str:
    """One line on the implementation whose allocations were counted, where that matters: torch's
    Adam/AdamW pick their kernel by the parameters' device, and an estimate's parameters are CPU
    fakes, so it counts the for-loop path unless the optimizer was built with foreach/fused set."""
    opt = innermost(optimizer)
    first = _members(opt)[0]
    qualified = _qualified(type(first))
    if qualified not in ("torch.optim.adamw.AdamW", "torch.optim.adam.Adam"):
        return f"{type(first).__module__}.{type(first).__qualname__}, as built"
    name = qualified.rsplit(".", 1)[1]
    d = first.defaults
    if d.get("fused"):
        return f"torch {name}, fused"
    if d.get("foreach"):
        return f"torch {name}, foreach"
    if estimated and d.get("foreach") is None:
        return (f"torch {name}, for-loop (torch's default for CPU parameters, as an estimate's are; on CUDA "
                "it defaults to foreach, one more parameter-sized temporary at the step: build it with "
                "foreach=True to count that)")
    return f"torch {name}, for-loop" + (" (torch's default here)" if d.get("foreach") is None else "")
