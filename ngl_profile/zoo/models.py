"""Model zoo: configs embedded, random init, nothing downloaded.

LLaMA sizes are GaLore's configs (vocab 32000, SiLU, untied embeddings); `tiny` is a
few-hundred-thousand-parameter LLaMA for CI. Each model comes with a batch maker, so the runner
never needs to know whether it is a causal LM or a sequence classifier.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import contextlib

import torch
from torch import nn

from ngl_profile.zoo.dtypes import default_dtype
from ngl_profile.zoo.registry import unique

__all__ = ["MODELS", "ModelSpec", "get_model", "build_model", "make_batch", "approx_parameters"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    family: str  # "llama" (causal LM) or "roberta" (sequence classification)
    config: dict = field(repr=False)
    default_rank: int = 128
    description: str = ""
    max_seq_len: int | None = None
    """longest sequence the model can embed (None: rotary positions, no table to run past)"""

    def make_config(self, dtype: torch.dtype):
        if self.family == "llama":
            from transformers import LlamaConfig

            return LlamaConfig(**self.config, dtype=dtype, use_cache=False, tie_word_embeddings=False)
        from transformers import RobertaConfig

        return RobertaConfig(**self.config, dtype=dtype, num_labels=2)

    @property
    def n_layers(self) -> int:
        return self.config["num_hidden_layers"]

    @property
    def vocab_size(self) -> int:
        return self.config.get("vocab_size", 50265)


def _llama(name, hidden, inter, layers, heads, rank, kv=None, vocab=32000, desc=""):
    cfg = dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv or heads, vocab_size=vocab,
               max_position_embeddings=2048)
    return ModelSpec(name, "llama", cfg, rank, desc)


_SPECS = [
    _llama("tiny", 64, 172, 2, 4, 16, vocab=1000, desc="CI-sized LLaMA (~0.2M parameters)"),
    _llama("llama-60m", 512, 1376, 8, 8, 128, desc="GaLore configs/llama_60m"),
    _llama("llama-130m", 768, 2048, 12, 12, 256, desc="GaLore configs/llama_130m"),
    _llama("llama-350m", 1024, 2736, 24, 16, 256, desc="GaLore configs/llama_350m"),
    _llama("llama-1b", 2048, 5461, 24, 32, 1024, desc="GaLore configs/llama_1b (paper table: rank 512)"),
    _llama("llama-7b", 4096, 11008, 32, 32, 1024, desc="GaLore configs/llama_7b"),
    _llama("tinyllama-1.1b", 2048, 5632, 22, 32, 1024, kv=4, desc="TinyLlama-1.1B shape, 4 KV heads"),
    ModelSpec("roberta-base", "roberta", dict(num_hidden_layers=12), 8,
              "RobertaConfig defaults, GLUE-style sequence classification (2 labels)",
              max_seq_len=512),  # 514 learned positions, two reserved for the padding offset
]


MODELS = unique(((s.name, s) for s in _SPECS), "model")


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def approx_parameters(name: str) -> int:
    """Parameter count from the config alone (no model built): for planning, not for reports."""
    spec = get_model(name)
    c = spec.config
    if spec.family == "roberta":
        return 125_000_000
    h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = h * c["num_key_value_heads"] // c["num_attention_heads"]
    return 2 * v * h + L * (2 * h * h + 2 * h * kv + 3 * h * i)


def build_model(name: str, dtype: torch.dtype = torch.float32, checkpointing: bool = False,
                num_layers: int | None = None, device: str | torch.device | None = None) -> nn.Module:
    """A randomly initialised model in train mode (dropout off: steps must be comparable).

    Parameters are created directly in `dtype` on `device` (default: torch's current device),
    never as float32 on the CPU first: a 7B model would need 28 GB of host memory for that.
    `num_layers` overrides the depth.
    """
    spec = get_model(name)
    cfg = spec.make_config(dtype)
    if num_layers is not None:
        cfg.num_hidden_layers = num_layers
    if spec.family == "roberta":
        from transformers import RobertaForSequenceClassification as cls

        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    else:
        from transformers import LlamaForCausalLM as cls
    with default_dtype(dtype), (torch.device(device) if device is not None else contextlib.nullcontext()):
        model = cls(cfg)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def make_batch(name: str, batch_size: int, seq_len: int, device="cpu", generator=None) -> dict:
    """Random token ids (and labels) of the model's vocabulary: shapes are all the profile needs."""
    spec = get_model(name)
    ids = torch.randint(0, spec.vocab_size, (batch_size, seq_len), device=device, generator=generator)
    if spec.family == "roberta":
        labels = torch.randint(0, 2, (batch_size,), device=device, generator=generator)
    else:
        labels = ids
    return {"input_ids": ids, "labels": labels}

