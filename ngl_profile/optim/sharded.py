"""Natural GaLore on FSDP2-sharded (DTensor) parameters: the same update as on one process.

FSDP2's `fully_shard` keeps each parameter as a DTensor split by rows (Shard(0), torch.chunk's
split: ⌈m/W⌉ rows per rank, the last ranks shorter or empty). Left to DTensor, every projection
would silently all-gather its gradient on every step, the projectors would be full copies on every
rank and a left projection's window and moments would be too. Instead the optimizer steps each
rank's local rows as plain tensors (`local_views`) and communicates only what the single-process
arithmetic needs. For ∇ (m×n) sharded as ∇_i (m_i×n), rank r, world W, element size b:

  right (g = ∇Qᵀ, Q r×n): Q replicated (r·n), g_i = ∇_i Qᵀ is rank i's rows of g: window and moments
      hold m_i·r elements. Back-projection p_i += N_i Q is local. Per step: nothing for the matrix.
  left (g = Pᵀ∇, P m×r): rank i keeps P_i (its m_i rows of P); Pᵀ∇ = Σ_i P_iᵀ∇_i is reduce-
      scattered by rows of g (⌈r/W⌉ rows each), so window and moments hold ⌈r/W⌉·n elements;
      back-projection all-gathers N (r×n) and adds P_i N. Per step: reduce-scatter + all-gather
      of r·n elements (b·r·n each way per rank, what one all-reduce of g would cost).
  refresh (every update_proj_gap steps): ∇ is all-gathered (m·n), group rank 0 takes the SVD and
      broadcasts the basis (r·n or m·r), so every rank holds the same P to the bit.
  window: the Gram row ⟨c_j, g⟩ is a sum of per-rank float64 partial dots, all-reduced (s·8
      bytes); an int8 column's absmax scale is the all-reduced MAX of the local ones (4 bytes);
      the s×s solve then runs on identical Gram matrices on every rank, and g̃_i = G_i w is local.
  finiteness: one all-reduce (MIN) of one flag per parameter per step, so every rank skips the
      same updates (a rank that skipped alone would leave the others waiting in a collective).
  Adafactor: its factored statistics reduce over rows: the column means and the row statistic's
      mean are all-reduced (n + 1 floats), and the update's RMS (1 float).
  8-bit moments: bitsandbytes quantizes each rank's chunk in 256-element blocks from the chunk's
      first element; that is the single-process block partition exactly when each chunk starts
      at a multiple of 256 (right: row offset·r, left: ⌈r/W⌉·n·rank), else each rank's blocks are
      shifted (the same blockwise 8-bit Adam over a different partition, ≤ 1 extra block per rank).
      Whether a tensor gets 8-bit moments (≥ 4096 elements) is decided on its global size.

  rotate (on_subspace_change): a right shard rotates its rows alone (g Q_old Q_newᵀ); a left one
      all-reduces P_newᵀP_old (r×r) and all-gathers each stored column (s·r·n) on refresh steps.

Tucker (≥3-D) projection is not done on shards (its core mixes every mode): a ValueError says so.
"""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ngl_profile.optim import projector

__all__ = ["Rows", "context", "shape", "numel", "local_views", "agree", "compute_basis", "project",
           "add_projected_back", "project_into", "follow", "rotation", "mean", "norm", "traffic"]

_TAG = "_ngl_shard"
traffic: dict[str, int] = {}
"""bytes this process sent into each kind of collective, summed (a measurement aid: reset it freely)"""


def _count(kind: str, t: torch.Tensor) -> None:
    traffic[kind] = traffic.get(kind, 0) + t.numel() * t.element_size()


@dataclass(slots=True)
class Rows:
    """One rank's block of rows [lo, hi) of a tensor of global `shape` split on dim 0 in chunks of
    `chunk` rows (torch.chunk's split, as DTensor's Shard(0) and FSDP2 use), over `group`."""

    group: object  # a torch.distributed ProcessGroup
    rank: int
    world: int
    shape: tuple[int, ...]
    lo: int
    hi: int
    chunk: int

    @classmethod
    def split(cls, group, rank: int, world: int, shape: tuple[int, ...]) -> "Rows":
        chunk = -(-shape[0] // world) if shape[0] else 0
        lo = min(rank * chunk, shape[0])
        return cls(group, rank, world, tuple(shape), lo, min(lo + chunk, shape[0]), chunk)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def all_sum_(self, t: torch.Tensor) -> torch.Tensor:
        _count("all_reduce", t)
        dist.all_reduce(t, dist.ReduceOp.SUM, group=self.group)
        return t

    def all_max_(self, t: torch.Tensor) -> torch.Tensor:
        _count("all_reduce", t)
        dist.all_reduce(t, dist.ReduceOp.MAX, group=self.group)
        return t

    def amax(self, x: torch.Tensor) -> torch.Tensor:
        """max |x| over every rank's x (a rank with no rows contributes 0)."""
        local = x.abs().amax() if x.numel() else x.new_zeros(()).abs()
        return self.all_max_(local.clone())

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The whole tensor from every rank's rows (all-gather, padded to equal chunks)."""
        rest = local.shape[1:]
        pad = local.new_zeros((self.chunk, *rest))
        pad[: local.shape[0]] = local
        out = local.new_empty((self.world * self.chunk, *rest))
        _count("all_gather", pad)
        dist.all_gather_into_tensor(out, pad, group=self.group)
        return out[: self.shape[0]]

    def reduce_scatter(self, partial: torch.Tensor) -> torch.Tensor:
        """This rank's rows of Σ_ranks partial (partial: the whole shape on every rank)."""
        rows = self.world * self.chunk
        if rows != partial.shape[0]:
            padded = partial.new_zeros((rows, *partial.shape[1:]))
            padded[: partial.shape[0]] = partial
            partial = padded
        out = partial.new_empty((self.chunk, *partial.shape[1:]))
        _count("reduce_scatter", partial)
        dist.reduce_scatter_tensor(out, partial, dist.ReduceOp.SUM, group=self.group)
        return out[: self.hi - self.lo]

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """t as group rank 0 holds it, on every rank."""
        _count("broadcast", t)
        dist.broadcast(t, group=self.group, group_src=0)
        return t


def context(t: torch.Tensor) -> Rows | None:
    """The rows of a sharded whole that `t` holds (None: t is not a local shard)."""
    return getattr(t, _TAG, None)


def shape(t: torch.Tensor) -> tuple[int, ...]:
    """The global shape of a local shard (t's own shape for a plain tensor)."""
    ctx = context(t)
    return tuple(t.shape) if ctx is None else ctx.shape


def numel(t: torch.Tensor) -> int:
    ctx = context(t)
    return t.numel() if ctx is None else ctx.numel


def _rows_of(p: torch.Tensor) -> Rows:
    from torch.distributed.tensor import Replicate, Shard

    shard_dims = [d for d, pl in enumerate(p.placements) if isinstance(pl, Shard)]
    others_ok = all(isinstance(pl, (Shard, Replicate)) for pl in p.placements)
    if not (others_ok and len(shard_dims) == 1 and p.placements[shard_dims[0]] == Shard(0)):
        raise ValueError(f"Natural GaLore steps DTensor parameters sharded on dim 0 (FSDP2's layout, "
                         f"optionally replicated: HSDP); got placements {tuple(p.placements)}")
    mesh_dim = shard_dims[0]
    mesh = p.device_mesh
    rows = Rows.split(mesh.get_group(mesh_dim), mesh.get_local_rank(mesh_dim), mesh.size(mesh_dim),
                      tuple(p.shape))
    if p.to_local().shape[0] != rows.hi - rows.lo:
        raise ValueError(f"a DTensor parameter of shape {tuple(p.shape)} holds {p.to_local().shape[0]} "
                         f"rows on this rank; torch.chunk's split gives {rows.hi - rows.lo}")
    return rows


def _check_group(p: torch.Tensor, group: dict) -> None:
    if group.get("rank") is None or p.dim() < 2:
        return
    side = projector.resolve_side(tuple(p.shape), group["proj_type"])
    if side == "tucker":
        raise ValueError(f"proj_type tucker (and any ≥3-D low-rank parameter, here {tuple(p.shape)}) is "
                         f"not supported on sharded (DTensor) parameters; use std, left or right")


@contextmanager
def local_views(state: dict, live: list):
    """`live` ([(param, group)]) with every DTensor parameter replaced by its local rows: a plain
    tensor sharing the parameter's storage, with the local gradient as .grad and its layout as
    `context`. Its optimizer state is the DTensor's (the same dict, under both keys while the
    step runs); everything added here is removed on exit. No DTensor: `live` unchanged."""
    # not imported, no DTensor exists: a plain run never pays for importing torch.distributed.tensor
    module = sys.modules.get("torch.distributed.tensor")
    DTensor = getattr(module, "DTensor", None)
    if DTensor is None or not any(isinstance(p, DTensor) for p, _ in live):
        yield live
        return
    out, made = [], []
    try:
        for p, group in live:
            if not isinstance(p, DTensor):
                out.append((p, group))
                continue
            _check_group(p, group)
            rows = _rows_of(p)
            if tuple(p.grad.placements) != tuple(p.placements):
                raise ValueError(f"a DTensor parameter placed {tuple(p.placements)} has a gradient placed "
                                 f"{tuple(p.grad.placements)}; Natural GaLore needs them alike (FSDP2's)")
            # a view of the local tensor (shared storage, so updates land in the parameter): the
            # .grad and mark set here then never stay on the DTensor's own local tensor
            local = p.to_local().view(p.to_local().shape)
            local.grad = p.grad.to_local()
            setattr(local, _TAG, rows)
            state[local] = state[p]
            made.append(local)
            out.append((local, group))
        yield out
    finally:
        for local in made:
            state.pop(local, None)
            local.grad = None


def agree(finite: torch.Tensor, live: list) -> torch.Tensor:
    """Per-parameter finiteness flags agreed by every rank (AND), so all skip the same updates."""
    ctx = next((c for c in (context(p) for p, _ in live) if c is not None), None)
    if ctx is None:
        return finite
    flags = finite.to(torch.int32)
    return ctx.all_max_(flags.neg_()).neg_().bool()  # MIN(flags) = −MAX(−flags): gloo and NCCL have MAX


def compute_basis(p: torch.Tensor, grad: torch.Tensor, ranks: tuple[int, ...], side: str, method: str,
                  seed: int) -> projector.Basis:
    """projector.compute_basis of the whole gradient; for a shard, what this rank keeps of it."""
    ctx = context(p)
    if ctx is None:
        return projector.compute_basis(grad, ranks, side, method, seed)
    full = ctx.gather(grad)  # m×n on every rank for the SVD step only: the refresh's transient
    m, n = ctx.shape
    basis = (projector.compute_basis(full, ranks, side, method, seed)[0] if ctx.rank == 0
             else grad.new_empty((m, ranks[0]) if side == "left" else (ranks[0], n)))
    del full
    # one SVD broadcast, not W SVDs: every rank must hold the same basis to the bit (an SVD's
    # signs may differ between two runs of it on different thread counts)
    ctx.broadcast_(basis)
    if side == "left":
        basis = basis[ctx.lo : ctx.hi].clone()  # P_i: this rank's rows of P
    return (basis,)


def project(p: torch.Tensor, grad: torch.Tensor, basis: projector.Basis, side: str) -> torch.Tensor:
    """This rank's rows of the projected gradient (the whole of it for a plain tensor)."""
    ctx = context(p)
    if ctx is None:
        return projector.project(grad, basis, side)
    if side == "right":
        return grad @ basis[0].t()  # rows lo:hi of ∇Qᵀ, m_i×r
    return _low_rows(ctx, basis, side).reduce_scatter(basis[0].t() @ grad)  # Σ_i P_iᵀ∇_i, our rows


def project_into(p: torch.Tensor, grad: torch.Tensor, basis: projector.Basis, side: str,
                 out: torch.Tensor) -> torch.Tensor | None:
    """projector.project_into for a plain tensor; None for a shard (its projection is reduced over
    the ranks, not one matmul)."""
    return projector.project_into(grad, basis, side, out) if context(p) is None else None


def _low_rows(ctx: Rows, basis: projector.Basis, side: str) -> Rows:
    if side == "right":
        return Rows(ctx.group, ctx.rank, ctx.world, (ctx.shape[0], basis[0].shape[0]), ctx.lo, ctx.hi, ctx.chunk)
    return Rows.split(ctx.group, ctx.rank, ctx.world, (basis[0].shape[1], ctx.shape[1]))


def follow(g: torch.Tensor, p: torch.Tensor, basis: projector.Basis | None, side: str | None) -> torch.Tensor:
    """g (p's gradient, projected when `side` is set) marked with the rows it holds, for the moment
    rules (which reduce over rows, or decide on the global size); g itself for a plain tensor."""
    ctx = context(p)
    if ctx is None:
        return g
    g = g.view(g.shape)  # a view of its own: the mark must not stay on a tensor someone else holds
    setattr(g, _TAG, ctx if side is None else _low_rows(ctx, basis, side))
    return g


def add_projected_back(p: torch.Tensor, low: torch.Tensor, basis: projector.Basis, side: str,
                       alpha: float) -> None:
    ctx = context(p)
    if ctx is None or side == "right":  # right: N_i Q is this rank's rows of N Q
        return projector.add_projected_back(p, low, basis, side, alpha)
    # left: P_i N needs all of N (r×n)
    full = _low_rows(ctx, basis, side).gather(low)
    projector.add_projected_back(p, full, basis, side, alpha)


def rotation(ctx: Rows | None, old: projector.Basis, new: projector.Basis, side: str):
    """For on_subspace_change "rotate" on a left shard: column → column in the new basis, as
    projector.rotate would turn the whole column (P_newᵀP_old g); None where projector.rotate on the
    local column is already right (a plain tensor, or a right shard: g Q_old Q_newᵀ acts row by row).
    Costs one all-reduce of the r×r change of basis, then one all-gather of each stored column."""
    if ctx is None or side != "left":
        return None
    rows = _low_rows(ctx, old, side)
    c = ctx.all_sum_(new[0].t() @ old[0])  # Σ_i P_new,iᵀ P_old,i = P_newᵀ P_old, r×r
    mine = c[rows.lo : rows.hi]  # the rows of the rotated column this rank keeps

    def change(col: torch.Tensor) -> torch.Tensor:
        return (mine @ rows.gather(col.view(rows.hi - rows.lo, -1))).reshape(-1)

    return change


def mean(x: torch.Tensor, dim: int, ctx: Rows | None, keepdim: bool = False) -> torch.Tensor:
    """x.mean(dim), over every rank's rows when dim is the sharded dim 0 (x's rows are ctx's)."""
    if ctx is None or dim % x.dim() != 0:
        return x.mean(dim=dim, keepdim=keepdim)
    return ctx.all_sum_(x.sum(dim=dim, keepdim=keepdim)).div_(ctx.shape[0])


def norm(x: torch.Tensor, ctx: Rows | None) -> torch.Tensor:
    """‖x‖₂ over every rank's x."""
    if ctx is None:
        return x.norm()
    return ctx.all_sum_(x.square().sum()).sqrt_()
