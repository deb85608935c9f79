"""Which parameters get the low-rank projection: the paper's choice, the weights of the attention
and MLP linears inside the repeated transformer blocks, for any architecture.

A block is a numbered child of a ModuleList, whatever the model calls it (model.layers.3,
transformer.h.3, gpt_neox.layers.3, roberta.encoder.layer.3). Inside a block the matrices are
  - nn.Linear weights (q/k/v/o, fused qkv_proj, gate/up/down, fused gate_up_proj, dense_h_to_4h...);
  - GPT-2's Conv1D weights (a linear stored in×out: a 2-D matrix all the same);
  - fused MoE expert tensors, E×out×in (transformers ≥ 5 stores a layer's experts as one 3-D
    parameter, Mixtral's experts.gate_up_proj and experts.down_proj). They go to the low-rank path
    whole: the optimizer projects a ≥3-D tensor by HOSVD (Tucker) on every mode, so each expert
    mode is kept at full rank (min(r, E) = E) and the two matrix modes get rank r — one basis pair
    shared by the layer's experts, not one projector per expert as GaLore on unfused nn.Linear
    experts would keep. Leaving them on the plain path would make a MoE's estimate AdamW's
    for ~95 % of its weights.
Never low rank: embeddings, the LM head or classifier (outside the blocks), norms, biases, and
routers (the module named gate/router, a *Router class, or shared_expert_gate: a hidden×experts
or hidden×1 map whose rows are the experts' scores, not a matrix to compress).
"""
from __future__ import annotations

import re

from torch import nn

__all__ = ["low_rank_parameters", "low_rank_patterns"]

_INDEX = re.compile(r"\.\d+(?=\.|$)")
_ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


def _block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every module inside a numbered child of a ModuleList."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    inside = {id(child) for ml in lists for child in ml}
    blocks = [(n, m) for n, m in model.named_modules() if id(m) in inside]
    out, seen = [], set()
    for bname, block in blocks:  # every descendant of a block is in the block
        for sub, module in block.named_modules(prefix=bname):
            if id(module) not in seen:
                seen.add(id(module))
                out.append((sub, module))
    return out


def _is_router(name: str, module: nn.Module) -> bool:
    last = name.rpartition(".")[2]
    return last in _ROUTER_NAMES or "router" in type(module).__name__.lower()


def _matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    chosen, seen = [], set()
    for name, module in _block_modules(model):
        if _is_router(name, module):
            continue
        linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # transformers' GPT-2 linear
        for pname, p in module.named_parameters(recurse=False):
            fused_experts = p.dim() >= 3 and not isinstance(module, nn.modules.conv._ConvNd)
            if ((linear and pname == "weight" and p.dim() == 2) or fused_experts) and p.requires_grad:
                if id(p) not in seen:
                    seen.add(id(p))
                    chosen.append((f"{name}.{pname}", p))
    return chosen


def low_rank_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrices that get low rank, everything else), trainable parameters only, in the model's order."""
    chosen = {id(p) for _, p in _matrices(model)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) in chosen], [p for p in params if id(p) not in chosen]


def low_rank_patterns(model: nn.Module) -> dict[str, int]:
    """The low-rank parameters by name with block indices as '*' → their element count: which
    parameters a low-rank optimizer projects, in a form short enough for a results file."""
    out: dict[str, int] = {}
    for name, p in _matrices(model):
        key = _INDEX.sub(".*", name)
        out[key] = out.get(key, 0) + p.numel()
    return out
