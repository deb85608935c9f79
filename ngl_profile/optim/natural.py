"""The Natural GaLore correction: a window of recent projected gradients and its Woodbury solve.

With G = [g_{t-s+1} … g_t] (k×s, newest column = g_t) and damping λ, the paper's update is
    g̃ = (λI + GGᵀ)⁻¹ g_t = (g_t − G z)/λ,   S z = Gᵀ g_t,   S = λI + GᵀG.
As printed, that subtracts two nearly equal k-vectors whenever ‖g‖² ≫ λ (always, for LLM gradients
at λ = 1e-3) and float32 leaves only rounding noise. Because g_t = G e_last, the push-through
identity (λI + GGᵀ)⁻¹G = G(λI + GᵀG)⁻¹ gives the same vector without forming g_t − G z:
    S w = e_last,   g̃ = G w.
That sum still cancels when the window's columns are (nearly) linearly dependent — the same
gradient repeated, or s > k: w then has entries ≈ ±1/λ while g̃ ≈ g/(n‖g‖²) (n identical columns:
exactly g/(λ + n‖g‖²)). Summed in float32 (with w rounded to float32) it was off by 6.5e-2 at
‖g‖² = 1e2, by 330× at 1e6 and 4.8e4× at 1e8 (10 repeated columns, λ = 1e-3), so `combine` keeps
w in float64 and accumulates Σ_j w_j c_j in float64, reading the window in slices (eager) or
per element (compiled), never as a float64 copy. What is left is the conditioning of S itself
(κ ≈ n‖g‖²/λ for a dependent window): the float64 Cholesky leaves g̃ a relative error of order
s·2⁻⁵³·κ: measured ≤ 1.6e-6 at ‖g‖² = 1e6 and ≤ 1.2e-4 at 1e8 for s = 10; up to 1e4 the float32
rounding of the result (≤ 6e-8) dominates (`python -m tests.optim.dependent_windows` prints them).
The s×s system is solved in float64 from a Gram matrix GᵀG that is kept in float64 and updated by
one row/column per step (s·k work instead of s²·k), and G is a preallocated ring buffer (no
torch.stack of the history every step, as the official code does); the windows of one shape are
slices of one arena (`init_windows`). A step is `store` (g_t into its slot, where the projection
already made it if the storage holds its dtype: `next_column`) for every matrix, then
`update_grams` (the new Gram rows), one batched `weights` for all of them, then `combine_all`
(g̃ = G w); each of the two passes runs over a whole arena at once as a native kernel (window.c,
native.py) or a compiled one (kernels.py), or one window at a time eagerly, whichever made the
optimizer's steps faster on this machine (choice.py times them). `push` and `combine` are the same
passes for one window.

State keys (all tensors or ints, so `torch.load(weights_only=True)` reloads them; their memory
category is declared in STATE_CATEGORIES, next to `init_windows`, which creates them):
  history        s×k ring buffer in the storage dtype (float32, bfloat16 or int8)
  history_scale  s per-column scales, int8 storage only (absmax / 127)
  gram           s×s float64 Gram matrix of the stored (dequantized) columns, slot order
  history_count  number of filled slots (≤ s);  history_head  slot the next column goes to
  damping_backoffs  how many damping tiers the Cholesky factorisation had to climb, summed
"""
from __future__ import annotations

import math
import weakref
from functools import lru_cache
from typing import NamedTuple

import torch

from ngl_profile.optim import choice, kernels, native
from ngl_profile.optim.values import has_values, under_dispatch_mode, value_scope

__all__ = ["HISTORY_DTYPES", "STATE_CATEGORIES", "N_TIERS", "TIER_FACTOR", "init_windows", "init_window",
           "repack", "reset_window", "next_column", "discard", "store", "push", "Plan", "plan", "update_grams", "weights", "combine",
           "combine_all", "solve", "rotate_window", "all_finite"]

HISTORY_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
# The window is read in slices of at most this many elements (all columns together), so neither the
# float64 Gram update nor the eager float64 g̃ = G·w materialises an s×k float64 copy of it (a 7B
# MLP matrix at s = 10: ~0.9 GB); the transient is one float64 slice, ≤ 64 MiB (+ for `combine`
# its float64 result, 1/n of that). Larger slices mean fewer kernel launches (and a faster estimator).
_CHUNK_ELEMENTS = 1 << 23
# λ, then 1e3·λ, then 1e6·λ if the factorisation fails (bounded; see weights)
N_TIERS, TIER_FACTOR = 3, 1e3


def all_finite(x: torch.Tensor) -> bool:
    """False if x holds NaN or ±inf — or if its sum overflows float32 (|Σx| > 3.4e38).

    One pass, where isfinite().all() is four. The overflow case is a skip worth having: it needs
    entries ≥ 3.4e38/numel, whose squares already overflow Adam's second moment. A float64 sum
    would tell the two apart but costs 3× the float32 one (~2 ms of a llama-60m step, 2 cores).
    The sum is read as a Python float (a sync on a GPU, as any verdict is): a torch.isfinite on
    it would be a second op per parameter, 0.8–1.1 ms of llama-60m's ~64 ms s = 0 step (A/B in
    one process, Intel Xeon 2 vCPUs, 2026-12-03). Under FakeTensorMode — ngl-profile's estimator —
    there is no value to read: the estimate follows the normal path (finite).
    """
    total = x.sum(dtype=torch.float32)
    return math.isfinite(total.item()) if has_values(total) else True


# the memory category of every state key this module creates (the optimizer classes collect them)
STATE_CATEGORIES = {"history": "history", "history_scale": "history", "gram": "history",
                    "history_count": "history", "history_head": "history", "damping_backoffs": "history"}


# Windows of one shape, dtype and device are made as slices of one arena (P×s×k history, P×s scales,
# P×s×s Gram matrices) so that each pass runs as one compiled call over all of them: per window,
# the call's ~50 µs of Dynamo and wrapper overhead and the restart of its memory streams made the
# passes over llama-60m's 56 windows ~1.5× a plain read of them, against ~1.05× over arenas
# (benchmarks/window_passes.py). Windows larger than _PACK_WINDOW_BYTES stay alone (one call is
# then a long read), and an arena holds at most _ARENA_BYTES, the transient of re-packing one
# after a checkpoint load (`repack`); the cap counts the history, not the (s/k smaller) Gram and
# scale arenas beside it.
_PACK_WINDOW_BYTES = 64 << 20
_ARENA_BYTES = 256 << 20
# g̃ of an arena's windows is made for at most this many bytes of them at a time (and at least one
# window): the peak holds that many g̃ bytes at once instead of one window's. 32 MiB covers
# llama-60m's larger arena (24 × 0.7 MB) in one call: in three calls of ≤ 8 MiB its g̃ took
# 14.2 against 12.2 ms (AMD EPYC, 2 cores, medians of 9)
_COMBINE_BYTES = 32 << 20


def _per_arena(window_bytes: int) -> int:
    """How many windows of this size one arena holds."""
    return 1 if window_bytes > _PACK_WINDOW_BYTES else max(1, _ARENA_BYTES // max(window_bytes, 1))


def init_windows(states: list[dict], k: int, s: int, storage: str, device: torch.device) -> None:
    """Empty windows (length-k columns, s slots) for every state, packed into arenas."""
    dtype = HISTORY_DTYPES[storage]
    per_arena = _per_arena(s * k * torch.empty((), dtype=dtype).element_size())
    for lo in range(0, len(states), per_arena):
        members = states[lo : lo + per_arena]
        P = len(members)
        history = torch.zeros(P, s, k, dtype=dtype, device=device)
        scale = torch.ones(P, s, dtype=torch.float32, device=device) if storage == "int8" else None
        gram = torch.zeros(P, s, s, dtype=torch.float64, device=device)
        for i, state in enumerate(members):
            state["history"] = history[i]
            if scale is not None:
                state["history_scale"] = scale[i]
            state["gram"] = gram[i]
            state["history_count"] = 0
            state["history_head"] = 0
            state["damping_backoffs"] = torch.zeros((), dtype=torch.int64, device=device)  # a tensor: no sync


def init_window(state: dict, k: int, s: int, storage: str, device: torch.device) -> None:
    init_windows([state], k, s, storage, device)


def repack(states: list[dict]) -> None:
    """Put loaded windows (a checkpoint's tensors, each of its own) back into arenas as
    `init_windows` makes them (a window over _PACK_WINDOW_BYTES: an arena of one), one arena at a
    time, so a resumed run takes the kernels of the run that saved them; the values are unchanged.
    Bit-exact resumes need the same arenas as before: windows grouped by shape in state order, as
    a first step groups them when every parameter has a gradient."""
    groups: dict[tuple, list[dict]] = {}
    for st in states:
        h = st.get("history")
        if h is not None and h.dim() == 2:
            groups.setdefault((tuple(h.shape), h.dtype, h.device), []).append(st)
    for ((s, k), dtype, device), members in groups.items():
        storage = next(name for name, d in HISTORY_DTYPES.items() if d == dtype)
        per_arena = _per_arena(s * k * members[0]["history"].element_size())
        for lo in range(0, len(members), per_arena):
            chunk = members[lo : lo + per_arena]
            saved = [dict(st) for st in chunk]
            init_windows(chunk, k, s, storage, device)
            for st, sv in zip(chunk, saved):
                for key in ("history", "history_scale", "gram", "damping_backoffs"):
                    if key in sv:
                        st[key].copy_(sv[key])
                st["history_count"], st["history_head"] = sv["history_count"], sv["history_head"]
            del saved


def reset_window(state: dict) -> None:
    state["gram"].zero_()
    state["history_count"] = 0
    state["history_head"] = 0


def _columns(state: dict, rows: slice, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
    """Dequantized slice [lo:hi) of the stored columns `rows`, as `dtype`."""
    c = state["history"][rows, lo:hi].to(dtype)
    scale = state.get("history_scale")
    if scale is not None:
        c = c * scale[rows, None].to(dtype)
    return c


def _store(state: dict, slot: int, g: torch.Tensor, shard=None, compiled: bool | str = False) -> None:
    buf = state["history"]
    if buf.dtype == torch.int8:
        # window.c makes the same bytes in two reads of g, where these ops make five passes and
        # three g-sized temporaries (llama-60m's 56 columns: 2.1 against 4.0 ms, Intel Xeon 2 vCPUs,
        # a one-off probe). Under a dispatch mode (the tracker) the ops run: a measured step
        # allocates what an estimate counts, an upper bound on what the native store allocates.
        if (shard is None and choice.kernel(buf, compiled) == "native" and has_values(g)
                and not under_dispatch_mode() and native.quantize(g, buf[slot], state["history_scale"][slot])):
            return
        # per-column absmax keeps the int8 grid matched to each gradient's own scale; for a
        # sharded g (sharded.Rows) the whole column's absmax, as one process would take it
        amax = g.abs().amax() if shard is None else shard.amax(g)
        scale = amax.float().clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        state["history_scale"][slot] = scale
        buf[slot].copy_(torch.round(g.float() / scale).clamp_(-127, 127))
    else:
        buf[slot].copy_(g)


def _slices(k: int, n: int):
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    return ((lo, min(k, lo + step)) for lo in range(0, k, step))


def _gram_update(state: dict, slot: int, n: int, compiled: bool | str = False, shard=None) -> None:
    """Recompute row/column `slot` of GᵀG over the n filled slots, in float64.

    float64 because S = λI + GᵀG is as ill-conditioned as consecutive gradients are alike: a
    float32 Gram row (relative error ~1e-6) moved g̃ by 0.3 % at condition number 8e3 and made
    S indefinite for repeated gradients; float32 products are exact in float64.
    """
    buf, scale = state["history"], state.get("history_scale")

    def fused(native: bool):  # one pass over the window, no float64 copy of it (kernels.py; None: not here)
        # the whole buffer, not its n filled rows: one compiled kernel per window shape, not
        # one per fill level; unfilled rows are never read back (the Gram matrix uses [:n])
        row = kernels.gram_row(buf, scale, buf[slot], None if scale is None else scale[slot], native)
        return None if row is None else row[:n]

    row = choice.run(buf, compiled, fused, lambda: _gram_row_eager(state, slot, n))
    if shard is not None:  # this rank's rows of the columns: the dots are sums of per-rank partials
        shard.all_sum_(row)
    state["gram"][slot, :n] = row
    state["gram"][:n, slot] = row


def _gram_row_eager(state: dict, slot: int, n: int) -> torch.Tensor:
    row = torch.zeros(n, dtype=torch.float64, device=state["gram"].device)
    for lo, hi in _slices(state["history"].shape[1], n):
        c = _columns(state, slice(0, n), lo, hi, torch.float64)  # n × slice
        row += c @ c[slot]
        del c  # before the next slice is made: one float64 slice alive at a time, not two
    return row


def next_column(state: dict, dtype: torch.dtype) -> torch.Tensor | None:
    """The slot the next `store` writes (length k), if a projected gradient of `dtype` can be made
    there as it is stored (float32 or bfloat16 storage of that dtype), else None. The projection
    written there (projector.project_into) saves `store` a copy: a read and a write of every
    window's new column, ~1.7 ms of a llama-60m step. One that turns out not finite must be
    `discard`ed."""
    buf = state.get("history")
    return None if buf is None or buf.dtype != dtype or buf.dtype == torch.int8 else buf[state["history_head"]]


def discard(state: dict) -> None:
    """Zero the slot a non-finite projection was written to (`next_column`), so that no NaN stays
    in the window: that slot is the next one `store` writes (head and count are unchanged), so
    until then its Gram entries are never read, but an unfilled slot's zeros are (the compiled
    and native g̃ weight every slot, 0 for unfilled ones, and 0·NaN is NaN). It held the oldest
    column, which the next store would have overwritten anyway: every later g̃ is the same."""
    state["history"][state["history_head"]].zero_()


def store(state: dict, g: torch.Tensor, shard=None, compiled: bool | str = False, in_place: bool = False) -> int:
    """Write the flattened projected gradient g (length k) into the next slot; returns that slot.
    The Gram matrix is not updated yet: `push` does both, `update_grams` the second for many.
    compiled: as for `push` (an int8 column is made by window.c where the passes are native).
    in_place: g was made in that slot (`next_column`); nothing is copied."""
    s = state["history"].shape[0]
    slot = state["history_head"]
    if not in_place:
        _store(state, slot, g, shard, compiled)
    state["history_count"] = min(state["history_count"] + 1, s)
    state["history_head"] = (slot + 1) % s
    return slot


def push(state: dict, g: torch.Tensor, compiled: bool | str = False, shard=None) -> None:
    """Append the flattened projected gradient g (length k) as the newest column.

    compiled: compute the new Gram row with the compiled kernel where it is usable (kernels.py);
    "auto": as the optimizer step running now chose (choice.py), else compiled.
    shard: a sharded.Rows when g is one rank's chunk of the column (the window is then sharded
    the same way; the Gram row and an int8 scale are reduced over the ranks)."""
    slot = store(state, g, shard, compiled)
    _gram_update(state, slot, state["history_count"], compiled, shard)


def _arena_slot(t: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(arena, index) if t is slice `index` of an arena made by `init_windows`, else None."""
    base = t._base
    if base is None or base.dim() != t.dim() + 1 or tuple(base.shape[1:]) != tuple(t.shape):
        return None
    return base, (t.storage_offset() - base.storage_offset()) // max(t.numel(), 1)


def _arenas(states: list[dict], idx) -> tuple[list[tuple[torch.Tensor, dict[int, int]]], list[int]]:
    """Split the windows states[i], i in idx, into arenas ({arena index: i}) that hold at least
    half of their windows in idx (a batched pass over the whole arena serves them; the results
    for the others are dropped), and the rest (windows of their own, or of an arena stepped
    mostly elsewhere: one pass each)."""
    found: dict[int, tuple[torch.Tensor, dict[int, int]]] = {}
    rest = []
    for i in idx:
        at = _arena_slot(states[i]["history"])
        if at is None:
            rest.append(i)
            continue
        found.setdefault(id(at[0]), (at[0], {}))[1][at[1]] = i
    out = []
    for base, members in found.values():
        if 2 * len(members) >= base.shape[0]:
            out.append((base, members))
        else:
            rest.extend(members.values())
    return out, rest


def _sibling(states: list[dict], members: dict[int, int], key: str, P: int) -> torch.Tensor | None:
    """The P-slice arena whose slice j is states[i][key] for every member j → i (None: not one)."""
    t = states[next(iter(members.values()))].get(key)
    at = None if t is None else _arena_slot(t)
    if at is None or at[0].shape[0] != P:
        return None
    base = at[0]
    off, per = base.storage_offset(), base.stride(0)
    same = all(states[i][key]._base is base and states[i][key].storage_offset() == off + j * per
               for j, i in members.items())
    return base if same else None


class Plan(NamedTuple):
    """How one step's windows are passed over: `batches` of (arena, {arena index: state index},
    Gram arena, scale arena or None, whether the native kernel is asked for (choice.kernel),
    whether its members want one g̃ dtype), one batched pass each (g̃ only where that dtype is
    one); `rest`, one pass per window, in index order, sharded windows last (their reductions must
    run in the same order on every rank)."""
    batches: list[tuple[torch.Tensor, dict[int, int], torch.Tensor, torch.Tensor | None, bool, bool]]
    rest: list[int]


def plan(states: list[dict], compiled: list[bool | str], dtypes: list[torch.dtype] | None = None,
         shards: list | None = None) -> Plan:
    """The arenas (`_arenas`) whose passes run batched: one compile request for all their members,
    sibling arenas in the same order, and the compiled kernel taken (choice.py); g̃ also needs one
    dtype (`dtypes`; None: assumed), which only an arena rebuilt by `repack` can lack (it groups
    windows without their parameters' dtype). Made once per step for both passes (`update_grams`,
    `combine_all`): nothing between them moves a window."""
    shards = shards or [None] * len(states)
    arenas, rest = _arenas(states, [i for i in range(len(states)) if shards[i] is None])
    batches = []
    for base, members in arenas:
        P = base.shape[0]
        first = next(iter(members.values()))
        int8 = "history_scale" in states[first]
        gram = _sibling(states, members, "gram", P)
        scale = _sibling(states, members, "history_scale", P) if int8 else None
        one_dtype = dtypes is None or len({dtypes[i] for i in members.values()}) == 1
        which = choice.kernel(base, compiled[first])
        if (len({compiled[i] for i in members.values()}) == 1 and gram is not None
                and (scale is not None or not int8) and which != "eager"):
            batches.append((base, members, gram, scale, which == "native", one_dtype))
        else:
            rest.extend(members.values())
    return Plan(batches, sorted(rest) + [i for i in range(len(states)) if shards[i] is not None])


def update_grams(states: list[dict], compiled: list[bool | str], shards: list, how: Plan | None = None) -> None:
    """The Gram row of each window's newest column (after `store`), as `push` would compute it:
    one batched pass per arena of the step's `plan` (made here if not given), one pass per window
    for the rest."""
    how = how or plan(states, compiled, shards=shards)
    rest = []
    for base, members, gram, scale, native, _ in how.batches:
        P, s = base.shape[:2]
        slots = {j: (states[i]["history_head"] - 1) % s for j, i in members.items()}
        counts = {j: states[i]["history_count"] for j, i in members.items()}
        if len(set(slots.values())) == 1:  # the usual step: every window's newest column in one slot
            slot = slots[next(iter(slots))]
            g, g_scale = base[:, slot], None if scale is None else scale[:, slot]
        else:  # after a skipped update: each window's own slot, gathered (one P×k copy)
            at = [slots.get(j, 0) for j in range(P)]  # a window not stepped: any row, result dropped
            g = torch.stack([base[j, at[j]] for j in range(P)])
            g_scale = None if scale is None else torch.stack([scale[j, at[j]] for j in range(P)])
        rows = kernels.gram_rows(base, scale, g, g_scale, native)
        del g
        if rows is None:
            rest.extend(members.values())
            continue
        if len(members) == P and len(set(slots.values())) == 1 and len(set(counts.values())) == 1:
            slot, n = slots[0], counts[0]
            gram[:, slot, :n] = rows[:, :n]
            gram[:, :n, slot] = rows[:, :n]
            continue
        for j in members:
            slot, n = slots[j], counts[j]
            gram[j, slot, :n] = rows[j, :n]
            gram[j, :n, slot] = rows[j, :n]
    # the batches the kernel refused go first: they hold no sharded window, which must come last
    for i in sorted(rest) + how.rest:
        st = states[i]
        _gram_update(st, (st["history_head"] - 1) % st["history"].shape[0], st["history_count"],
                     compiled[i], shards[i])


def weights(states: list[dict], dampings: list[float], tally: dict | None = None) -> list[torch.Tensor]:
    """w with (λI + GᵀG) w = e_newest for every window: float64, one entry per slot (length s),
    0 for slots not filled yet.

    tally: if given, {(λ, device): int64 tensor of N_TIERS + 1 counts}, the number of solves that
    took each damping tier (the last entry: none factored), added to on the device (no host read).

    Windows with the same size, fill, newest slot, λ and device (normally every matrix of a
    model) are solved together: one batched factorisation instead of ~20 tiny ops per matrix,
    which were ~10 ms of a llama-60m step on 2 cores and would be ~20 kernel launches per matrix
    on a GPU. Each system is factored at every damping tier at once (`cholesky_ex`) and the first
    tier that factors is taken with `torch.where`: a failed factorisation raises λ instead of
    giving NaN, and nothing is read back to the host.
    """
    out: list[torch.Tensor | None] = [None] * len(states)
    batches: dict[tuple, list[int]] = {}
    for i, (st, lam) in enumerate(zip(states, dampings)):
        s, n = st["history"].shape[0], st["history_count"]
        key = (s, n, (st["history_head"] - 1) % s, float(lam), st["gram"].device)
        batches.setdefault(key, []).append(i)
    for (s, n, newest, lam, device), idx in batches.items():
        single = len(idx) == 1  # a per-layer optimizer's step: views instead of stack/foreach/unbind
        grams = (states[idx[0]]["gram"][None, :n, :n] if single
                 else torch.stack([states[i]["gram"][:n, :n] for i in idx]))  # P×n×n
        w, tiers = _solve_tiers(grams, newest, lam)
        if tally is not None:
            _count_tiers(tally, lam, device, tiers)
        if n < s:
            w = torch.cat([w, w.new_zeros(len(idx), s - n)], dim=1)
        if single:
            states[idx[0]]["damping_backoffs"] += tiers[0]
            out[idx[0]] = w[0]
            continue
        torch._foreach_add_([states[i]["damping_backoffs"] for i in idx], list(tiers.unbind(0)))
        for i, w_i in zip(idx, w.unbind(0)):
            out[i] = w_i
    return out


def _count_tiers(tally: dict, lam: float, device: torch.device, tiers: torch.Tensor) -> None:
    counts = tally.get((lam, device))
    if counts is None:
        counts = tally[(lam, device)] = torch.zeros(N_TIERS + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, tiers, torch.ones_like(tiers))  # two small kernels, no sync


def _tier_constants(n: int, damping: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(I, λ_tier·I for every tier, I/λ_last) in float64. Cached per (n, λ, device): making them
    was 7 of the solve's ops, ~15 µs a step for each per-layer optimizer on 2 cores."""
    eye = torch.eye(n, dtype=torch.float64, device=device)
    # λ·[1, 10³, 10⁶] made on the device by a fill and a cumprod: torch.tensor(list, device=cuda)
    # would be a host→device copy
    lams = torch.full((N_TIERS,), TIER_FACTOR, dtype=torch.float64, device=device).cumprod(0)
    lams = lams / TIER_FACTOR * damping  # [1, 1e3, 1e6] exactly, then λ: tier 0 is λ to the bit
    return eye, lams[:, None, None] * eye, eye / lams[-1]


_cached_tier_constants = lru_cache(maxsize=64)(_tier_constants)
# the same cache for each FakeTensorMode: an estimate then holds the constants exactly as long as
# a real run does (rebuilt at every solve, they were 40·n² bytes of temporaries a real run lacks)
_scoped_tier_constants: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _constants_for(grams: torch.Tensor, n: int, damping: float) -> tuple[torch.Tensor, ...]:
    scope = value_scope(grams)
    if scope is None:
        return _cached_tier_constants(n, damping, grams.device)
    per_scope = _scoped_tier_constants.setdefault(scope, {})
    key = (n, float(damping), grams.device)
    if key not in per_scope:
        per_scope[key] = _tier_constants(n, damping, grams.device)
    return per_scope[key]


def _solve_tiers(grams: torch.Tensor, newest: int, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w: P×n, damping tiers climbed: P) for P Gram matrices with the same newest slot."""
    P, n, _ = grams.shape
    eye, shifts, eye_over_last = _constants_for(grams, n, damping)
    chol, info = torch.linalg.cholesky_ex(grams[:, None] + shifts)  # P×tiers×n×n
    e = eye[:, newest : newest + 1]
    w_tiers = torch.cholesky_solve(e.expand(P, N_TIERS, n, 1), chol).squeeze(-1)  # P×tiers×n
    ok = info == 0
    first = torch.argmax(ok.to(torch.int8), dim=1)  # the smallest λ that factored (0 if none did)
    chosen = torch.gather(w_tiers, 1, first[:, None, None].expand(P, 1, n)).squeeze(1)  # no host read
    factored = ok.any(dim=1)
    # none factored (impossible with finite gradients, but never NaN): the λ → ∞ limit, g_t / λ
    w = torch.where(factored[:, None], chosen, eye_over_last[newest])
    return w, torch.where(factored, first, N_TIERS).to(torch.int64)


def combine(state: dict, w: torch.Tensor, compiled: bool | str = False,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """g̃ = G w over the window (w from `weights`: float64, one entry per slot), length k, as `dtype`.

    Summed in float64 and rounded once: each term w_j·c_j is one float64 rounding of exact
    values (stored float32/bf16 values and int8·scale are exact in float64; the compiled kernel
    folds an int8 scale into w_j first, one rounding more), so the sum is within (s+1)·2⁻⁵³·
    Σ_j |w_j c_j| of the exact one, element by element — the bound that matters when the terms
    cancel (a dependent window: |w_j| ≈ 1/λ, module docstring; tested). Never a float64
    copy of the window: the compiled kernel accumulates per element in registers; the eager code
    widens one slice at a time (≤ 8·_CHUNK_ELEMENTS bytes, plus the slice's float64 result).
    """
    buf = state["history"]
    w64 = w.to(torch.float64)
    # the compiled kernel sums every slot (w = 0 for unfilled ones): one kernel per window shape
    return choice.run(buf, compiled, lambda native: kernels.combine(buf, state.get("history_scale"), w64, dtype, native),
                      lambda: _combine_eager(state, w64, dtype))


def combine_all(states: list[dict], ws: list[torch.Tensor], compiled: list[bool | str],
                dtypes: list[torch.dtype], shards: list | None = None, how: Plan | None = None):
    """(i, g̃_i = G_i w_i as dtypes[i]) for every window, as `combine` gives them, in an order of
    its choosing: the arenas of the step's `plan` (made here if not given) in batched passes of at
    most _COMBINE_BYTES of g̃ (and at least one window), then every other window alone, sharded
    windows (shards[i] not None) last and in index order: what the caller does with each g̃ may
    communicate, so every rank must reach them in the same order. Each batch's g̃ are views of
    one buffer, made when the batch is reached: consume them before asking for the next."""
    how = how or plan(states, compiled, dtypes, shards)
    rest = []
    for base, members, _, scale, native, one_dtype in how.batches:
        if not one_dtype:
            rest.extend(members.values())
            continue
        P = base.shape[0]
        dtype = dtypes[next(iter(members.values()))]
        none = torch.zeros(base.shape[1], dtype=torch.float64, device=base.device) if len(members) < P else None
        w = torch.stack([ws[members[j]].to(torch.float64) if j in members else none for j in range(P)])  # P×s
        per = max(1, _COMBINE_BYTES // max(base.shape[2] * torch.empty((), dtype=dtype).element_size(), 1))
        for lo in range(0, P, per):
            hi = min(P, lo + per)
            inside = [j for j in range(lo, hi) if j in members]
            if not inside:
                continue
            out = kernels.combine_rows(base[lo:hi], None if scale is None else scale[lo:hi], w[lo:hi], dtype, native)
            if out is None:  # not compilable here, or this batch below kernels.MIN_ELEMENTS: eager
                rest.extend(members[j] for j in range(lo, P) if j in members)
                break
            for j in inside:
                yield members[j], out[j - lo]
            del out
    for i in sorted(rest) + how.rest:
        yield i, combine(states[i], ws[i], compiled[i], dtypes[i])


def _combine_eager(state: dict, w64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    buf = state["history"]
    n = state["history_count"]
    k = buf.shape[1]
    out = torch.empty(k, dtype=dtype, device=buf.device)
    for lo, hi in _slices(k, n):
        cols = _columns(state, slice(0, n), lo, hi, torch.float64)  # n × slice, the bounded transient
        out[lo:hi].copy_(torch.mv(cols.t(), w64[:n]))  # float64 sum, rounded once into `dtype`
        del cols  # before the next slice is made: one float64 slice alive at a time, not two
    return out


def solve(state: dict, damping: float) -> torch.Tensor:
    """g̃ = (λI + GGᵀ)⁻¹ g_t = G w for one window (needs a pushed column); float32, length k."""
    return combine(state, weights([state], [damping])[0])


def rotate_window(state: dict, change_basis, shard=None) -> None:
    """Re-express every stored column with `change_basis(column) -> column`, then rebuild GᵀG.

    One column at a time, so the transient is one k-vector, not a dequantized copy of the window.
    """
    n = state["history_count"]
    k = state["history"].shape[1]
    for j in range(n):
        _store(state, j, change_basis(_columns(state, slice(j, j + 1), 0, k, torch.float32)[0]), shard)
    state["gram"].zero_()
    for j in range(n):
        _gram_update(state, j, n, shard=shard)
