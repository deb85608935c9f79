"""Model zoo: any transformers causal LM by its config, random init, nothing downloaded.

A model is named by a preset (model_presets.py), a config.json or a directory holding one, a hub
id whose config is in the local Hugging Face cache, or a table (configs.py): `resolve_model` turns
each into a `ModelSpec`. Every model comes with a batch maker, so the runner never needs to know
whether it is a causal LM or a sequence classifier.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import torch
from torch import nn

from ngl_profile.zoo.configs import (ModelSpec, hub_config, read_config, spec_from_config,
                                     spec_from_table)
from ngl_profile.zoo.dtypes import default_dtype
from ngl_profile.zoo.model_presets import PRESETS
from ngl_profile.zoo.registry import unique

__all__ = ["MODELS", "ModelSpec", "ATTENTIONS", "get_model", "resolve_model", "build_model", "make_batch",
           "approx_parameters", "parameter_count", "model_record", "supports_sdpa"]

MODELS = unique(((s.name, s) for s in PRESETS), "model")
ATTENTIONS = ("sdpa", "eager")
"""transformers' attn_implementation values build_model accepts"""


def get_model(model: str | ModelSpec | dict) -> ModelSpec:
    """A preset by name, a spec as it is, or a spec's record (`ModelSpec.to_record`)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec.from_record(model)
    try:
        return MODELS[model]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}") from None


def resolve_model(ref: str | dict | ModelSpec, base_dir: str | Path | None = None) -> ModelSpec:
    """Whatever names a model, as a spec: a preset; a config.json or a directory holding one
    (relative paths: to `base_dir` first, then the working directory); a hub id whose config is
    in the local Hugging Face cache; or a [model] table (`architecture` + config keys, or `config`
    naming any of the above + keys that override it)."""
    if isinstance(ref, ModelSpec):
        return ref
    if isinstance(ref, dict):
        if "config" in ref:
            base = ref["config"]
            if not isinstance(base, str):
                raise ValueError(f"[model] config must name a preset, a config.json, a directory or a hub id; "
                                 f"got {base!r}")
            return spec_from_table(ref, resolve_model(base, base_dir))
        return spec_from_table(ref)
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"model must be a preset name (see `ngl-profile list models`), a config.json, a "
                         f"directory, a cached hub id, or a [model] table; got {ref!r}")
    if ref in MODELS:
        return MODELS[ref]
    path = _existing_path(ref, base_dir)
    if path is not None:
        data, name, source = read_config(path)
        return spec_from_config(data, name, source)
    found = hub_config(ref) if _looks_like_hub_id(ref) else None
    if found is not None:
        data, source = found
        return spec_from_config(data, ref, source)
    if _looks_like_path(ref):
        raise ValueError(f"model {ref!r}: no such file or directory")
    if "/" in ref:
        raise ValueError(f"model {ref!r}: its config.json is not in the local Hugging Face cache and ngl-profile "
                         "downloads nothing (no network): fetch it first (`hf download " + ref
                         + " config.json`) or give the path of a config.json")
    raise ValueError(f"unknown model {ref!r}; known: {', '.join(MODELS)} (or a config.json, a directory "
                     "holding one, or a hub id whose config is in the local Hugging Face cache)")


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".json") or ref.startswith((".", "~", os.sep)) or os.sep + os.sep in ref


def _looks_like_hub_id(ref: str) -> bool:
    return ref.count("/") <= 1 and not _looks_like_path(ref)


def _existing_path(ref: str, base_dir) -> Path | None:
    p = Path(ref).expanduser()
    candidates = [p] if p.is_absolute() else ([Path(base_dir) / p] if base_dir else []) + [p]
    return next((c for c in candidates if c.exists()), None)


def supports_sdpa(model: str | ModelSpec | dict) -> bool:
    """Whether transformers has an SDPA attention path for the architecture (Gemma 2 has none:
    SDPA cannot soft-cap attention logits)."""
    return bool(getattr(_model_class(get_model(model)), "_supports_sdpa", False))


def _model_class(spec: ModelSpec):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if spec.task == "causal-lm" else AutoModelForSequenceClassification
    return auto._model_mapping[type(spec.make_config())]


def build_model(model: str | ModelSpec | dict, dtype: torch.dtype = torch.float32, checkpointing: bool = False,
                num_layers: int | None = None, device: str | torch.device | None = None,
                attention: str = "sdpa") -> nn.Module:
    """A randomly initialised model in train mode (dropout off: steps must be comparable), built by
    transformers' Auto class from its config with `attention` as attn_implementation ("sdpa" or
    "eager") and the KV cache off.

    Parameters are created directly in `dtype` on `device` (default: torch's current device),
    never as float32 on the CPU first: a 7B model would need 28 GB of host memory for that. Under
    FakeTensorMode (the estimator) nothing is allocated at all. `num_layers` overrides the depth.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = get_model(model)
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}; got {attention!r}")
    if attention == "sdpa" and not supports_sdpa(spec):
        raise ValueError(f"{spec.name}: transformers has no SDPA attention for {spec.architecture} "
                         "(use attention \"eager\")")
    cfg = spec.make_config(dtype, num_layers=num_layers)
    for key, value in cfg.to_dict().items():  # every dropout off, whatever the architecture names it
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(cfg, key, 0.0)
    auto = AutoModelForCausalLM if spec.task == "causal-lm" else AutoModelForSequenceClassification
    with default_dtype(dtype), (torch.device(device) if device is not None else contextlib.nullcontext()):
        model = auto.from_config(cfg, dtype=dtype, attn_implementation=attention)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def make_batch(model: str | ModelSpec | dict, batch_size: int, seq_len: int, device="cpu", generator=None) -> dict:
    """Random token ids (and labels) of the model's vocabulary: shapes are all the profile needs."""
    spec = get_model(model)
    ids = torch.randint(0, spec.vocab_size, (batch_size, seq_len), device=device, generator=generator)
    if spec.task == "sequence-classification":
        labels = torch.randint(0, 2, (batch_size,), device=device, generator=generator)
    else:
        labels = ids
    return {"input_ids": ids, "labels": labels}


def _key(spec: ModelSpec) -> str:
    return json.dumps([spec.architecture, spec.task, spec.config], sort_keys=True)


@functools.lru_cache(maxsize=32)
def _census(key: str) -> tuple[int, tuple[tuple[str, int], ...]]:
    """(parameters, low-rank parameters by name pattern) of a model built on the meta device:
    exact counts from the config, no memory, ~0.1 s even at 405B."""
    from ngl_profile.optim.params import low_rank_patterns

    arch, task, config = json.loads(key)
    spec = ModelSpec(name="census", architecture=arch, config=config, task=task)
    with torch.device("meta"):
        model = build_model(spec, torch.bfloat16, attention="eager")
    total = sum(p.numel() for p in model.parameters())
    return total, tuple(low_rank_patterns(model).items())


def parameter_count(model: str | ModelSpec | dict) -> int:
    """The model's parameter count, from its config (built on the meta device, nothing allocated)."""
    return _census(_key(get_model(model)))[0]


def approx_parameters(model: str | ModelSpec | dict) -> int:
    """Parameter count for planning (kept for callers; now exact, see parameter_count)."""
    return parameter_count(model)


def model_record(model: str | ModelSpec | dict) -> dict:
    """The spec's record as a results file keeps it: what rebuilds the model, plus its parameter
    count and which parameters a low-rank optimizer projects (name pattern → elements)."""
    spec = get_model(model)
    total, patterns = _census(_key(spec))
    return {**spec.to_record(), "parameters": total, "low_rank_matrices": dict(patterns)}

