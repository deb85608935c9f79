"""Natural GaLore and its per-layer wrapper: importable and usable with no profiler around it.

    from ngl_profile.optim import NaturalGaLoreAdamW, low_rank_parameters
    matrices, rest = low_rank_parameters(model)
    opt = NaturalGaLoreAdamW([{"params": matrices, "rank": 128, "history_size": 10},
                              {"params": rest}], lr=1e-3)

The comparison zoo (torch AdamW, bitsandbytes, transformers' Adafactor, peft LoRA, galore-torch)
is built by name by the profiler (its optimizer zoo), outside this package: nothing here imports it.
"""
from ngl_profile.optim.layerwise import LayerwiseOptimizer
from ngl_profile.optim.optimizer import (LOW_RANK_DEFAULTS, SUBSPACE_POLICIES, NaturalGaLoreAdafactor,
                                         NaturalGaLoreAdamW, NaturalGaLoreAdamW8bit)
from ngl_profile.optim.params import low_rank_parameters

__all__ = ["NaturalGaLoreAdamW", "NaturalGaLoreAdamW8bit", "NaturalGaLoreAdafactor", "LayerwiseOptimizer",
           "low_rank_parameters", "LOW_RANK_DEFAULTS", "SUBSPACE_POLICIES"]
