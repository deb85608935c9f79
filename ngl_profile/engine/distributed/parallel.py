"""The process group, the device mesh and the model wrapped for DDP or FSDP2 — torch.distributed's
own `DistributedDataParallel` and `fully_shard`, nothing home-made.

Estimated: one process plays rank 0 of `world_size` on torch's fake process group (its collectives
do nothing, so sizes are exact and no bytes move); with FakeTensorMode nothing is allocated either.
Rank 0 is the per-GPU worst case: FSDP2 shards dim 0 with torch.chunk, whose last chunks are the
short ones (or empty), and pads every shard to the first one's size.
Measured: torchrun has set RANK/WORLD_SIZE/MASTER_ADDR; gloo on the CPU, NCCL on CUDA.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "setup", "decoder_layers"]


@dataclass
class DistContext:
    parallelism: str
    """ddp | fsdp2"""
    world_size: int
    rank: int
    backend: str
    mesh: object = None
    owns_group: bool = False
    """the fake group this process made for an estimate, ended with the case"""
    buckets: list = None
    """an estimated DDP rank's gradient buckets, held for the case's life as the reducer holds them"""

    def tracker(self):
        from ngl_profile.engine.distributed.tracker import ShardedMemoryTracker

        return ShardedMemoryTracker()

    def finish(self, result, tracker) -> None:
        """This rank's figures on the result; the fake group ended (a real one is torchrun's)."""
        import torch.distributed as dist

        result.distributed = {"parallelism": self.parallelism, "world_size": self.world_size, "rank": self.rank,
                              "backend": self.backend,
                              "roles_at_peak_bytes": tracker.roles_at_peak() if result.status == "ok"
                              else tracker.roles_now()}
        if result.status == "error":  # most often an optimizer that cannot step DTensor/DDP parameters
            result.message = f"failed under {self.parallelism}: {result.message}"
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: torch.nn.Module, tracker=None) -> torch.nn.Module:
        """The model as this rank trains it. Call under the same fake mode the model was built in;
        build the optimizer after this (it must hold the sharded parameters)."""
        if self.parallelism == "fsdp2":
            return _fully_shard(model, self.mesh, tracker)
        if self.backend == "fake":
            self.buckets = _ddp_buckets(model, tracker)
            return model
        return _ddp(model, tracker)


def setup(parallelism: str, world_size: int, estimated: bool, device: str = "cpu") -> DistContext:
    """Join (or, for an estimate, fake) the process group and build the mesh. Outside FakeTensorMode:
    init_device_mesh reads its rank tensor with .tolist(), which a fake tensor cannot answer."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    owns = estimated and not dist.is_initialized()
    if estimated:
        from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

        if not dist.is_initialized():
            dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    elif not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if dist.get_world_size() != world_size:
        raise RuntimeError(f"the process group has {dist.get_world_size()} ranks; the scenario asks for {world_size}")
    mesh_device = "cuda" if device == "cuda" and not estimated else "cpu"
    mesh = init_device_mesh(mesh_device, (world_size,)) if parallelism == "fsdp2" else None
    return DistContext(parallelism=parallelism, world_size=world_size, rank=dist.get_rank(),
                       backend=dist.get_backend(), mesh=mesh, owns_group=owns)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks FSDP2 shards one by one: the classes transformers marks as never to be split
    across devices (`_no_split_modules`, e.g. LlamaDecoderLayer)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def _fully_shard(model, mesh, tracker):
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest (embeddings, final norm, head) as the root group
    if tracker is not None:
        _name_unsharded(model, tracker)
    return model


def _name_unsharded(model, tracker) -> None:
    """After FSDP2's pre-forward has all-gathered a group (its hook runs first: prepended), tag the
    group's unsharded parameters, and their gradients as autograd accumulates them. The sharded
    parameters are tagged again: the root's lazy init re-pads a shard shorter than the first
    (the last ranks'), in new storage that the tracker first sees in forward."""
    from torch.distributed.fsdp import FSDPModule

    def tag_group(module, args, kwargs):
        group = module._get_fsdp_state()._fsdp_param_group
        for fp in group.fsdp_params if group is not None else ():
            tracker.tag_weights(fp.sharded_param)
            p = fp._unsharded_param
            tracker.tag_role(p, "unsharded_weights", persistent=True)
            if p.requires_grad and id(p) not in hooked:
                hooked.add(id(p))
                p.register_post_accumulate_grad_hook(lambda q: tracker.tag_role(q.grad, "unsharded_grads"))
        return None

    hooked: set[int] = set()
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.register_forward_pre_hook(tag_group, with_kwargs=True)


def _ddp(model, tracker):
    """DDP's reducer allocates its gradient buckets (one gradient's worth) in C++ when it is built,
    and again when it rebuilds them in the order backward produced the gradients, in the second
    step's pre-forward. Both are run in the tracker's "setup" phase; what outlives them is buckets."""
    from torch.nn.parallel import DistributedDataParallel

    if tracker is None:
        return DistributedDataParallel(model)
    tracker.attach(model)  # the weights first seen now, not as storages new in the constructor
    with tracker, tracker.naming_new("setup", "grad_buckets"):
        ddp = DistributedDataParallel(model)
    pre_forward = ddp._pre_forward

    def named_pre_forward(*args, **kwargs):
        with tracker.naming_new("setup", "grad_buckets"):
            return pre_forward(*args, **kwargs)

    ddp._pre_forward = named_pre_forward  # an instance attribute: this DDP object only
    return ddp


def _bucket_limits() -> list[int]:
    """DDP's default bucket caps: a small first bucket (dist._DEFAULT_FIRST_BUCKET_BYTES), then 25 MiB."""
    import torch.distributed as dist

    return [dist._DEFAULT_FIRST_BUCKET_BYTES, 25 * 1024 * 1024]


def _ddp_buckets(model, tracker) -> list[torch.Tensor]:
    """An estimated DDP rank. DDP's C++ reducer cannot be built on fake tensors (it reads every
    parameter's data to check shapes across ranks), and apart from the reducer a DDP rank runs the
    one-process program. So the estimate runs that program plus the reducer's buckets: one flat
    buffer per bucket of torch's own assignment (dist._compute_bucket_assignment_by_size, DDP's
    default caps), each the sum of its parameters' numels (the reducer's at::empty), allocated
    when DDP is built and again, in backward's order, before the second forward (the rebuild frees
    the old ones first). Default gradient_as_bucket_view=False: the gradients stay their own tensors."""
    held: list[torch.Tensor] = []

    def allocate(params) -> None:
        import torch.distributed as dist

        held.clear()
        indices, _ = dist._compute_bucket_assignment_by_size(params, _bucket_limits(), [False] * len(params))
        for idx in indices:
            b = torch.empty(sum(params[i].numel() for i in idx), dtype=params[idx[0]].dtype,
                            device=params[idx[0]].device)
            if tracker is not None:
                tracker.tag_role(b, "grad_buckets")
            held.append(b)

    params = [p for p in model.parameters() if p.requires_grad]
    ctx = tracker if tracker is not None else contextlib.nullcontext()
    with ctx:
        allocate(params)
    calls = [0]

    def rebuild(module, args, kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the reducer's rebuild_buckets, once, with the order backward used
            allocate(params[::-1])

    model.register_forward_pre_hook(rebuild, with_kwargs=True)
    return held
