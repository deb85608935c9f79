"""One rank of tests/optim/test_sharded.py: every configuration stepped on FSDP2-sharded parameters
and, in the same process, on plain full copies (the single-process reference), from the same
gradients. Rank 0 writes the per-configuration errors as JSON.

Shapes are picked so the shards are uneven (odd row counts) and every 8-bit chunk starts on a
256-element block (sharded.py: that is when the blocks equal the single-process ones):
  287×64 (tall: std → right, R 287×16, rank rows 144/143 → offset 144·16 = 9·256)
  63×288 (wide: std → left, R 16×288, rows 8/8 → offset 8·288 = 9·256)
  135×64 plain (8-bit: the fused kernel, offset 68·64 = 17·256) and a bias of 65.
"""
from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch import nn

from ngl_profile.optim import NaturalGaLoreAdafactor, NaturalGaLoreAdamW, NaturalGaLoreAdamW8bit, sharded

SHAPES = [(287, 64), (63, 288)]
PLAIN = [(135, 64), (65,)]
STEPS, GAP, RANK = 5, 2, 16  # refreshes at steps 0, 2 and 4
# state keys that hold a chunk of the single-process tensor (the rest: replicated or per-rank rows of P)
SHARDED_KEYS = ("history", "exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax", "exp_avg_sq_row")

ADAM = {"lr": 1e-2, "weight_decay": 0.01}
CONFIGS = {
    "galore std": (NaturalGaLoreAdamW, ADAM, {"history_size": 0}),
    "galore left": (NaturalGaLoreAdamW, ADAM, {"history_size": 0, "proj_type": "left"}),
    "galore right": (NaturalGaLoreAdamW, ADAM, {"history_size": 0, "proj_type": "right"}),
    "natural float32 std": (NaturalGaLoreAdamW, ADAM, {}),
    "natural float32 left": (NaturalGaLoreAdamW, ADAM, {"proj_type": "left"}),
    "natural float32 right rotate": (NaturalGaLoreAdamW, ADAM, {"proj_type": "right", "on_subspace_change": "rotate"}),
    "natural float32 left rotate": (NaturalGaLoreAdamW, ADAM, {"proj_type": "left", "on_subspace_change": "rotate"}),
    "natural bfloat16 std": (NaturalGaLoreAdamW, ADAM, {"history_dtype": "bfloat16"}),
    "natural int8 std": (NaturalGaLoreAdamW, ADAM, {"history_dtype": "int8"}),
    "natural int8 std rotate": (NaturalGaLoreAdamW, ADAM, {"history_dtype": "int8", "on_subspace_change": "rotate"}),
    "galore-8bit std": (NaturalGaLoreAdamW8bit, ADAM, {"history_size": 0}),
    "natural-8bit int8 std": (NaturalGaLoreAdamW8bit, ADAM, {"history_dtype": "int8"}),
    "natural-adafactor std": (NaturalGaLoreAdafactor, {"lr": 1e-2, "beta1": 0.9}, {}),
    "galore-adafactor left": (NaturalGaLoreAdafactor, {"lr": 1e-2}, {"history_size": 0, "proj_type": "left"}),
    # bf16 weights and gradients (the bf16 recipe): projectors, g and moments in bf16 too
    "natural bf16-weights std": (NaturalGaLoreAdamW, ADAM, {}, torch.bfloat16),
    "galore-8bit bf16-weights std": (NaturalGaLoreAdamW8bit, ADAM, {"history_size": 0}, torch.bfloat16),
}


def _tensors(gen: torch.Generator, scale: float) -> list[torch.Tensor]:
    return [torch.randn(s, generator=gen) * scale for s in SHAPES + PLAIN]


def _optimizer(cls, kwargs, low_rank_kw, params):
    n = len(SHAPES)
    groups = [{"params": params[:n], "rank": RANK, "update_proj_gap": GAP, "history_size": 3, **low_rank_kw},
              {"params": params[n:]}]
    return cls(groups, **kwargs, compile=False)


def _run_config(mesh, cls, kwargs, low_rank_kw, dtype=torch.float32) -> dict:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    gen = torch.Generator().manual_seed(0)
    init = [w.to(dtype) for w in _tensors(gen, 0.02)]
    ref = [nn.Parameter(w.clone()) for w in init]
    holder = nn.Module()
    for i, w in enumerate(init):
        holder.register_parameter(f"p{i}", nn.Parameter(w.clone()))
    fully_shard(holder, mesh=mesh)
    shards = list(holder.parameters())
    ref_opt = _optimizer(cls, kwargs, low_rank_kw, ref)
    opt = _optimizer(cls, kwargs, low_rank_kw, shards)
    base = _tensors(gen, 1.0)
    for _ in range(STEPS):
        # correlated gradients (a common part + noise), so the window's correction is not trivial
        grads = [(b + 0.5 * n).to(dtype) for b, n in zip(base, _tensors(gen, 1.0))]
        for p, q, g in zip(ref, shards, grads):
            p.grad = g.clone()
            rows = sharded.Rows.split(None, mesh.get_local_rank(), mesh.size(), tuple(g.shape))
            q.grad = DTensor.from_local(g[rows.lo : rows.hi].clone(), mesh, [Shard(0)], run_check=False,
                                        shape=g.shape, stride=g.stride())
        ref_opt.step()
        opt.step()
    err, moved, largest, local, whole = 0.0, 0.0, 0.0, 0, 0
    for w0, p, q in zip(init, ref, shards):
        rows = sharded.Rows.split(None, mesh.get_local_rank(), mesh.size(), tuple(p.shape))
        mine = q.to_local()
        diff = (mine.float() - p.detach()[rows.lo : rows.hi].float()).abs()
        err = max(err, diff.max().item() if mine.numel() else 0.0)
        moved = max(moved, (p.detach().float() - w0.float()).abs().max().item())
        largest = max(largest, p.detach().abs().max().item())
        for key in SHARDED_KEYS:
            if key in ref_opt.state[p]:
                whole += ref_opt.state[p][key].numel()
                local += opt.state[q][key].numel()
    totals = torch.tensor([local, whole], dtype=torch.int64)
    dist.all_reduce(totals)  # Σ over ranks: the chunks must add up to the single-process tensors
    errs = torch.tensor([err], dtype=torch.float64)
    dist.all_reduce(errs, dist.ReduceOp.MAX)
    return {"max_abs_err": errs.item(), "max_update": moved, "max_weight": largest, "state_local_sum": int(totals[0]),
            "state_whole_x_world": int(totals[1]), "state_local": local, "state_whole": whole}


def _refused(mesh) -> str:
    """An unsupported layout (tucker: a 3-D low-rank tensor) fails on every rank before any
    collective, with a one-line error."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    holder = nn.Module()
    holder.experts = nn.Parameter(torch.zeros(4, 6, 8))
    fully_shard(holder, mesh=mesh)
    p = holder.experts
    opt = NaturalGaLoreAdamW([{"params": [p], "rank": 2}], compile=False)
    rows = sharded.Rows.split(None, mesh.get_local_rank(), mesh.size(), tuple(p.shape))
    p.grad = DTensor.from_local(torch.ones(rows.hi - rows.lo, 6, 8), mesh, [Shard(0)], run_check=False,
                                shape=p.shape, stride=p.stride())
    try:
        opt.step()
    except ValueError as e:
        return str(e)
    return ""


def run(rank: int, world: int, init_file: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        results = {name: _run_config(mesh, *cfg) for name, cfg in CONFIGS.items()}
        results["refused"] = _refused(mesh)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()
