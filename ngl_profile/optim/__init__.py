"""Natural GaLore and the optimizers ngl-profile compares it with.

    from ngl_profile.optim import NaturalGaLoreAdamW
    opt = NaturalGaLoreAdamW([{"params": matrices, "rank": 128, "history_size": 10},
                              {"params": everything_else}], lr=1e-3)
"""
from .factory import OPTIMIZERS, build, low_rank_parameters, optimizer_names
from .layerwise import LayerwiseOptimizer
from .optimizer import (LOW_RANK_DEFAULTS, SUBSPACE_POLICIES, NaturalGaLoreAdafactor, NaturalGaLoreAdamW,
                        NaturalGaLoreAdamW8bit)

__all__ = ["NaturalGaLoreAdamW", "NaturalGaLoreAdamW8bit", "NaturalGaLoreAdafactor", "LayerwiseOptimizer",
           "build", "OPTIMIZERS", "optimizer_names", "low_rank_parameters", "LOW_RANK_DEFAULTS",
           "SUBSPACE_POLICIES"]
