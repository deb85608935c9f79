"""Every optimizer hyperparameter a scenario may set: its type, its range, one line of doc.

Checked when a scenario is loaded (TOML, CLI or Python), so a bad value is a one-line error and
exit 2 before anything runs, never a case that fails half-way through a run. `bool` is never a
number here (TOML's `true` where a rate belongs is a mistake), and every number must be finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ngl_profile.optim.natural import HISTORY_DTYPES
from ngl_profile.optim.optimizer import SUBSPACE_POLICIES
from ngl_profile.optim.projector import PROJ_TYPES, SVD_METHODS

__all__ = ["Hparam", "HPARAMS", "check_hparams", "is_int", "is_number"]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, slots=True)
class Hparam:
    ok: Callable[[Any], bool]
    allowed: str
    """what the error message says is allowed"""
    doc: str


def _int_at_least(lo: int, hi: int = 1 << 31) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and lo <= v <= hi


def _one_of(options) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in options


def _betas(v) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 2
            and all(is_number(b) and 0 <= b < 1 for b in v))


HPARAMS: dict[str, Hparam] = {
    "lr": Hparam(lambda v: is_number(v) and v > 0, "a finite number > 0", "learning rate"),
    "betas": Hparam(_betas, "two numbers in [0, 1), e.g. [0.9, 0.999]", "Adam's moment decay rates"),
    "eps": Hparam(lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)", "Adam's denominator floor"),
    "weight_decay": Hparam(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)",
                           "decoupled weight decay"),
    "beta1": Hparam(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)",
                    "Adafactor's first-moment decay (absent: no first moment)"),
    "rank": Hparam(_int_at_least(1, 1 << 20), "an integer in [1, 1048576]",
                   "projection rank (GaLore) or adapter rank (LoRA)"),
    "update_proj_gap": Hparam(_int_at_least(1), "an integer in [1, 2147483648]",
                              "steps between projector refreshes (T)"),
    "scale": Hparam(lambda v: is_number(v) and v > 0, "a finite number > 0", "GaLore's update scale α"),
    "proj_type": Hparam(_one_of(PROJ_TYPES), f"one of {', '.join(PROJ_TYPES)}", "projection side"),
    "svd": Hparam(_one_of(SVD_METHODS), f"one of {', '.join(SVD_METHODS)}", "projector SVD method"),
    "history_size": Hparam(_int_at_least(0, 4096), "an integer in [0, 4096] (0 = plain GaLore)",
                           "Fisher window length s"),
    "damping": Hparam(lambda v: is_number(v) and v > 0, "a finite number > 0", "Woodbury damping λ"),
    "history_dtype": Hparam(_one_of(HISTORY_DTYPES), f"one of {', '.join(HISTORY_DTYPES)}",
                            "storage of the window"),
    "on_subspace_change": Hparam(_one_of(SUBSPACE_POLICIES), f"one of {', '.join(SUBSPACE_POLICIES)}",
                                 "what the window does when P is refreshed"),
    "compile": Hparam(lambda v: isinstance(v, bool), "true or false", "compiled window kernels"),
    "lora_alpha": Hparam(lambda v: is_number(v) and v > 0, "a finite number > 0", "LoRA scaling numerator"),
    "lora_dropout": Hparam(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)", "LoRA dropout"),
    "implementation": Hparam(_one_of(("for-loop", "foreach", "fused")), "one of for-loop, foreach, fused",
                             "torch optimizer kernels (default: torch's default on the target device)"),
    "accumulation_steps": Hparam(_int_at_least(1, 1 << 16), "an integer in [1, 65536]",
                                 "backward passes per update (per-layer optimizers)"),
}


def check_hparams(optimizer: str, accepted: tuple[str, ...], hparams: dict,
                  extra: dict[str, Hparam] | None = None) -> None:
    """Raise ValueError naming the first unknown or out-of-range hyperparameter."""
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ValueError(f"optimizer {optimizer!r} takes no {', '.join(unknown)}; "
                         f"it takes: {', '.join(('name', 'label') + tuple(accepted))}")
    table = {**HPARAMS, **(extra or {})}
    for key, value in hparams.items():
        h = table[key]
        if not h.ok(value):
            raise ValueError(f"{key} must be {h.allowed}; got {value!r}")
