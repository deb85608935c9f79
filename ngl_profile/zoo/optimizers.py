"""name → optimizer for a model: the optimizers ngl-profile compares, built the same way everywhere.

Low rank goes to the 2-D weights of the linear layers inside the repeated transformer blocks
(attention and MLP, the paper's choice); embeddings, the LM head / classifier, norms and biases
take the plain path. Every name except lora and galore-torch also has a `-layerwise` variant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ngl_profile.zoo.dtypes import default_dtype
from ngl_profile.zoo.hparams import Hparam, check_hparams
from ngl_profile.zoo.registry import unique
from ngl_profile.optim.layerwise import LayerwiseOptimizer
from ngl_profile.optim.params import low_rank_parameters
from ngl_profile.optim.state_keys import merge
from ngl_profile.optim.optimizer import (LOW_RANK_DEFAULTS, NaturalGaLoreAdafactor, NaturalGaLoreAdamW,
                        NaturalGaLoreAdamW8bit)

__all__ = ["OPTIMIZERS", "build", "code_path", "low_rank_parameters", "optimizer_names", "state_category_lookup"]

_ADAM = ("lr", "betas", "eps", "weight_decay")
_TORCH_IMPL = ("implementation",)  # torch.optim's for-loop / foreach / fused kernels
_ADAFACTOR = ("lr", "beta1", "weight_decay")
_GALORE_TORCH = ("rank", "update_proj_gap", "scale", "proj_type")
_GALORE = _GALORE_TORCH + ("svd",)
_NATURAL = _GALORE + ("history_size", "damping", "history_dtype", "on_subspace_change")
_LORA = ("rank", "lora_alpha", "lora_dropout", "lr", "weight_decay")
_OURS = ("compile",)  # ngl_profile.optim's fused kernels on/off (kernels.py)
LAYERWISE_SUFFIX = "-layerwise"
LORA_DEFAULT_RANK = 8

# State keys of the third-party optimizers (ours declare their own: optim/state_keys.py), as each
# library names them at the versions in .ci/constraints.txt; a key missing here fails the case
# loudly (measure/memory.py) instead of being counted as something it is not.
_TORCH_ADAM = merge({"step": "moments", "exp_avg": "moments", "exp_avg_sq": "moments", "max_exp_avg_sq": "moments"})
_BNB = merge({"step": "moments", "state1": "moments", "state2": "moments", "absmax1": "quant_stats",
        "absmax2": "quant_stats", "qmap1": "quant_stats", "qmap2": "quant_stats", "max1": "quant_stats",
        "max2": "quant_stats", "new_max1": "quant_stats", "new_max2": "quant_stats", "unorm_vec": "quant_stats"})
_HF_ADAFACTOR = merge({"step": "moments", "exp_avg": "moments", "exp_avg_sq": "moments", "exp_avg_sq_row": "moments",
                 "exp_avg_sq_col": "moments", "RMS": "moments"})
_GALORE_TORCH_KEYS = merge(_TORCH_ADAM, {"projector": "projectors"})  # merge: an unknown category raises


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    name: str
    description: str
    hparams: tuple[str, ...]
    make: Callable[[nn.Module, dict], tuple[list, Callable[[list], torch.optim.Optimizer]]]
    """(model, hparams) → (param groups, groups → optimizer); the split lets -layerwise reuse it."""
    layerwise: bool = True
    low_rank: bool = False
    """GaLore-style projection: its `rank` is a projection rank (LoRA's is an adapter rank)"""

    restrict: dict = field(default_factory=dict)
    """narrower ranges than zoo/hparams.py's for this optimizer (name → Hparam)"""
    requires: tuple[str, ...] = ()
    """(import name, pip requirement) of an optional package it is built with"""
    state_categories: dict = field(default_factory=dict)
    """state key → memory category, for a third-party optimizer that does not declare its own"""

    def check_available(self) -> None:
        """ValueError, before a run starts, when the package this optimizer needs is not installed."""
        import importlib.util

        if self.requires and importlib.util.find_spec(self.requires[0]) is None:
            raise ValueError(f"optimizer {self.name!r} needs the {self.requires[0]} package: "
                             f"pip install {self.requires[1]!r}")

    def check_hparams(self, hparams: dict) -> None:
        """ValueError naming the first unknown or out-of-range hyperparameter."""
        check_hparams(self.name, self.hparams, hparams, self.restrict)


def _plain(cls_path: str, keys: tuple[str, ...]):
    def make(model, hp):
        cls = _import(cls_path)
        kwargs = {k: hp[k] for k in keys if k in hp}
        if cls_path == "torch.optim.AdamW":
            cls, kwargs = _torch_adamw(hp, kwargs)
        if cls_path.endswith("Adafactor"):
            kwargs = {"scale_parameter": False, "relative_step": False, "warmup_init": False,
                      "lr": hp.get("lr", 1e-3), **{k: v for k, v in kwargs.items() if k != "lr"}}
        return [{"params": [p for p in model.parameters() if p.requires_grad]}], lambda g: _construct(cls, g, kwargs)

    return make


def _torch_adamw(hp: dict, kwargs: dict):
    """torch AdamW on the code path build() chose, or ours where the moments must be float32 and
    the parameters are not (torch's kernels refuse mixed dtypes)."""
    if hp.get("_state_dtype") == "float32":
        from ngl_profile.optim.fp32_state import AdamWFp32State

        return AdamWFp32State, kwargs
    impl = hp.get("implementation")
    if impl is not None:  # None: torch's own default for the parameters' device
        kwargs = {**kwargs, "foreach": impl == "foreach", "fused": impl == "fused"}
    return torch.optim.AdamW, kwargs


def _construct(cls, groups, kwargs):
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    # bitsandbytes builds its quantization maps with .tolist() in __init__: that needs real
    # tensors even when the estimator runs everything else under FakeTensorMode
    with unset_fake_temporarily():
        return cls(groups, **kwargs)


def _import(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(__import__(module, fromlist=[attr]), attr)


def _low_rank(cls, history: bool, opt_keys: tuple[str, ...]):
    def make(model, hp):
        matrices, rest = low_rank_parameters(model)
        group = {"params": matrices, "rank": hp.get("rank", 128)}
        for key in _NATURAL[1:]:
            if key in hp:
                group[key] = hp[key]
        if not history:
            group["history_size"] = 0
        kwargs = {k: hp[k] for k in opt_keys + _OURS if k in hp}
        if hp.get("_state_dtype"):
            kwargs["state_dtype"] = hp["_state_dtype"]
        return [group, {"params": rest}], lambda g: cls(g, **kwargs)

    return make


def _galore_torch(model, hp):
    try:
        from galore_torch import GaLoreAdamW
    except ImportError as e:
        raise ValueError("optimizer 'galore-torch' needs the published galore-torch package: "
                         "pip install 'ngl-profile[peers]'") from e
    matrices, rest = low_rank_parameters(model)
    # its projector is for matrices only (a fused 3-D expert tensor breaks its SVD slicing)
    rest = rest + [p for p in matrices if p.dim() != 2]
    matrices = [p for p in matrices if p.dim() == 2]
    group = {"params": matrices, "rank": hp.get("rank", 128)}
    for key in ("update_proj_gap", "scale", "proj_type"):
        group[key] = hp.get(key, LOW_RANK_DEFAULTS[key])
    kwargs = {k: hp[k] for k in _ADAM if k in hp}
    kwargs.setdefault("eps", 1e-8)  # galore-torch defaults to 1e-6; compare like with like
    return [group, {"params": rest}], lambda g: GaLoreAdamW(g, no_deprecation_warning=True, **kwargs)


def _lora(model, hp):
    from peft import LoraConfig, inject_adapter_in_model

    matrices, _ = low_rank_parameters(model)
    chosen = {id(p) for p in matrices}
    # full module names, not suffixes: "dense" would also catch RoBERTa's pooler and classifier.
    # Linear and GPT-2's Conv1D by module; fused 3-D expert tensors by parameter (peft's ParamWrapper)
    targets = sorted(n for n, m in model.named_modules()
                     if isinstance(getattr(m, "weight", None), nn.Parameter) and id(m.weight) in chosen)
    experts = sorted(n for n, p in model.named_parameters() if id(p) in chosen and p.dim() >= 3)
    rank = hp.get("rank", LORA_DEFAULT_RANK)
    config = LoraConfig(r=rank, lora_alpha=hp.get("lora_alpha", 2 * rank),
                        lora_dropout=hp.get("lora_dropout", 0.0), target_modules=targets,
                        **({"target_parameters": experts} if experts else {}))
    from torch._subclasses.fake_tensor import is_fake

    if any(is_fake(p) for p in model.parameters()):
        # Under FakeTensorMode (the estimator) peft's Module.to() of each new adapter would swap
        # fake parameters, which they refuse. Everything is on the one fake device already, so
        # skip those moves and create the adapters in the base weights' dtype, as .to() would.
        from unittest import mock

        with default_dtype(matrices[0].dtype), mock.patch.object(nn.Module, "to", lambda self, *a, **k: self):
            inject_adapter_in_model(config, model)
    else:
        inject_adapter_in_model(config, model)  # in place: the caller's model now trains the adapters
    for name, p in model.named_parameters():
        # a classification head is new for the task and trains in full (peft's modules_to_save)
        p.requires_grad_("lora_" in name or name.startswith("classifier."))
    cls, kwargs = _torch_adamw(hp, {k: hp[k] for k in ("lr", "weight_decay") if k in hp})
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": params}], lambda g: cls(g, **kwargs)


_SPECS = [
    OptimizerSpec("adamw", "torch.optim.AdamW on every parameter", _ADAM + _TORCH_IMPL,
                  _plain("torch.optim.AdamW", _ADAM), state_categories=_TORCH_ADAM),
    OptimizerSpec("adamw8bit", "bitsandbytes AdamW8bit (blockwise 8-bit moments)", _ADAM,
                  _plain("bitsandbytes.optim.AdamW8bit", _ADAM), state_categories=_BNB),
    OptimizerSpec("adafactor", "transformers' Adafactor (factored second moment), fixed lr", _ADAFACTOR,
                  _plain("transformers.optimization.Adafactor", ("lr", "beta1", "weight_decay")),
                  state_categories=_HF_ADAFACTOR),
    OptimizerSpec("galore", "GaLore AdamW (ours, history_size 0)", _ADAM + _GALORE + _OURS,
                  _low_rank(NaturalGaLoreAdamW, False, _ADAM), low_rank=True),
    OptimizerSpec("galore-8bit", "GaLore with 8-bit Adam moments (ours, history_size 0)", _ADAM + _GALORE + _OURS,
                  _low_rank(NaturalGaLoreAdamW8bit, False, _ADAM), low_rank=True),
    OptimizerSpec("galore-adafactor", "GaLore with Adafactor moments (ours, history_size 0)",
                  _ADAFACTOR + _GALORE + _OURS,
                  _low_rank(NaturalGaLoreAdafactor, False, _ADAFACTOR), low_rank=True),
    OptimizerSpec("natural-galore", "Natural GaLore, AdamW moments", _ADAM + _NATURAL + _OURS,
                  _low_rank(NaturalGaLoreAdamW, True, _ADAM), low_rank=True),
    OptimizerSpec("natural-galore-8bit", "Natural GaLore, 8-bit Adam moments", _ADAM + _NATURAL + _OURS,
                  _low_rank(NaturalGaLoreAdamW8bit, True, _ADAM), low_rank=True),
    OptimizerSpec("natural-galore-adafactor", "Natural GaLore, Adafactor moments", _ADAFACTOR + _NATURAL + _OURS,
                  _low_rank(NaturalGaLoreAdafactor, True, _ADAFACTOR), low_rank=True),
    OptimizerSpec("galore-torch", "the published galore-torch GaLoreAdamW (extra 'peers')",
                  _ADAM + _GALORE_TORCH, _galore_torch, low_rank=True,
                  requires=("galore_torch", "ngl-profile[peers]"), state_categories=_GALORE_TORCH_KEYS,
                  restrict={"proj_type": Hparam(lambda v: v in ("std", "left", "right"),
                                                "one of std, left, right (galore-torch has no tucker)",
                                                "projection side")}),
    OptimizerSpec("lora", "peft LoRA adapters on the same linear layers + AdamW", _LORA + _TORCH_IMPL, _lora,
                  layerwise=False, state_categories=_TORCH_ADAM),
]


def _with_layerwise(specs):
    for spec in specs:
        yield spec.name, spec
        if spec.layerwise:
            yield spec.name + LAYERWISE_SUFFIX, OptimizerSpec(
                spec.name + LAYERWISE_SUFFIX, spec.description + ", stepped per layer during backward",
                spec.hparams + ("accumulation_steps",), spec.make, False, spec.low_rank, spec.restrict,
                spec.requires, spec.state_categories)


OPTIMIZERS = unique(_with_layerwise(_SPECS), "optimizer")


def state_category_lookup(name: str, optimizer) -> Callable[[str], str | None]:
    """state key → memory category for a built optimizer: its own declaration (ours), else the
    zoo's table for the library it comes from."""
    own = getattr(optimizer, "state_category", None)
    table = OPTIMIZERS[name].state_categories

    def lookup(key: str) -> str | None:
        found = own(key) if own is not None else None
        return found if found is not None else table.get(key)

    return lookup


def optimizer_names() -> list[str]:
    return list(OPTIMIZERS)


def _implementation(name: str, hparams: dict, target: str) -> str | None:
    """torch AdamW's kernel path: the one asked for, else torch's default on the target device
    (foreach on CUDA, which holds one more parameter-sized temporary at the step's peak than the
    CPU's for-loop: 7B AdamW 50.7 → 62.8 GiB). None: not a torch AdamW."""
    if not name.startswith(("adamw", "lora")) or name.startswith("adamw8bit"):
        return None
    return hparams.get("implementation") or ("foreach" if target == "cuda" else "for-loop")


def code_path(name: str, hparams: dict, target: str = "cpu", precision: str = "bf16",
              estimated: bool = False) -> str:
    """One line naming the implementation whose allocations a case counts (shown in reports)."""
    base = name.removesuffix(LAYERWISE_SUFFIX)
    per_layer = ", stepped per layer in backward" if name.endswith(LAYERWISE_SUFFIX) else ""
    fp32_state = precision == "bf16-fp32-state"
    impl = _implementation(name, hparams, target)
    if impl is not None:
        if fp32_state:
            return f"ngl_profile AdamWFp32State (float32 moments, for-loop){per_layer}"
        default = " (torch's default on " + target.upper() + ")" if "implementation" not in hparams else ""
        return f"torch AdamW, {impl}{default}{per_layer}"
    if base in ("adamw8bit",):
        return f"bitsandbytes 8-bit blockwise AdamW kernel, in place{per_layer}"
    if base == "adafactor":
        return "transformers Adafactor (float32 update and state for low-precision weights)" + per_layer
    if base == "galore-torch":
        note = ", moments in the weights' dtype (it has no float32-state option)" if fp32_state else ""
        return f"galore-torch GaLoreAdamW, for-loop{note}"
    # an estimate times nothing: it assumes the compiled window kernels (their outputs only), which
    # a measured run's chooser (optim/choice.py, NGL_PROFILE_KERNELS) picks unless eager is faster
    kernels = ("eager kernels" if hparams.get("compile") is False
               else "window kernels assumed compiled" if estimated
               else "window kernels chosen by timing (native, compiled or eager)")
    state = ", float32 moments" if fp32_state and "8bit" not in base else ""
    whole = ", one finiteness check per step" if target == "cuda" and not per_layer else ""
    return f"ngl_profile {base}, {kernels}{state}{whole}{per_layer}"


def build(name: str, model: nn.Module, *, target: str = "cpu", precision: str = "bf16",
          **hparams) -> torch.optim.Optimizer:
    """The optimizer `name` for `model` (lora injects its adapters into `model` in place), on the
    code path it takes on `target` ("cpu" | "cuda": an estimate for a GPU runs on the CPU but must
    allocate as the GPU path does) for the precision recipe (schema/scenario.py PRECISIONS)."""
    spec = OPTIMIZERS.get(name)
    if spec is None:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    spec.check_hparams(hparams)
    accumulation = hparams.pop("accumulation_steps", 1)
    impl = _implementation(name, hparams, target)
    if impl is not None:
        hparams["implementation"] = impl
    if precision == "bf16-fp32-state":
        hparams["_state_dtype"] = "float32"  # internal: not a user hyperparameter
    groups, make = spec.make(model, hparams)
    groups = [g for g in groups if g["params"]]
    if name.endswith(LAYERWISE_SUFFIX):
        return LayerwiseOptimizer(groups, make, accumulation_steps=accumulation)
    opt = make(groups)
    if target == "cuda" and hasattr(opt, "whole_step_check"):
        opt.whole_step_check = True  # what CUDA gradients choose by themselves (optimizer.py)
    return opt
