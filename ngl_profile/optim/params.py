"""Which parameters get the low-rank projection: the paper's choice, the 2-D weights of the linear
layers inside the repeated transformer blocks (attention and MLP). Embeddings, the LM head or
classifier, norms and biases take the plain path."""
from __future__ import annotations

import re

from torch import nn

__all__ = ["low_rank_parameters"]

# a block is a numbered child of a ModuleList, whatever the architecture calls it
_BLOCK = re.compile(r"(^|\.)(layers|layer|h|blocks)\.\d+\.")


def low_rank_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrices that get low rank, everything else), trainable parameters only."""
    chosen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and _BLOCK.search(name + "."):
            if module.weight.requires_grad:
                chosen.add(id(module.weight))
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) in chosen], [p for p in params if id(p) not in chosen]
