"""Our MemoryTracker taught the FSDP2/DDP program, so a sharded rank keeps our categories.

What it adds to the one-GPU tracker:
- storages behind tensor subclasses: a DTensor parameter, gradient or optimizer state is a wrapper
  whose bytes live in its local shard (`__tensor_flatten__`), as torch's MemTracker reads them;
- `UntypedStorage.resize_`: FSDP2 frees an unsharded parameter by resizing its storage to 0 after
  forward and grows it back for backward; a dispatch mode never sees that, so it is patched while
  the tracker is active (as torch.distributed._tools.mem_tracker does);
- roles for what distribution adds, each in the category of what the bytes hold, so every report
  keeps its columns: all-gathered (unsharded) parameters and the all-gather buffer → weights;
  unsharded gradients, FSDP2's reduce-scatter input and DDP's gradient buckets → grads. The bytes
  of each role at the peak are kept apart (`roles_at_peak`) for the per-rank table.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

from ngl_profile.measure.memory import MemoryTracker

__all__ = ["ShardedMemoryTracker", "ROLES", "local_storages"]

# role → the category its bytes count in
ROLES = {"unsharded_weights": "weights", "all_gather_buffer": "weights", "unsharded_grads": "grads",
         "reduce_scatter_buffer": "grads", "grad_buckets": "grads"}


def local_storages(t: torch.Tensor) -> list:
    """The storages a tensor's bytes live in: its own, or (a DTensor, any traceable wrapper) its
    inner tensors' — a wrapper's own storage is a size-only placeholder."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        inner = (getattr(t, n) for n in names)  # a DTensor also names its mesh, which holds no bytes
        return [s for x in inner if isinstance(x, torch.Tensor) for s in local_storages(x)]
    return [t.untyped_storage()]


class ShardedMemoryTracker(MemoryTracker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._roles: dict[int, str] = {}  # serial → role
        self._storage_role: dict[int, str] = {}  # id(storage) of a long-lived storage → role
        self._orig_resize = None
        self._depth = 0  # nested `with tracker:` blocks (DDP's constructor, then each step)
        self._peak_roles: dict | None = None
        self._bucket_like: set | None = None  # inside naming_new: serials a floating-point empty() made

    # --- tensors behind subclasses ----------------------------------------------------------------
    def _tag(self, tensor: torch.Tensor, category: str) -> None:
        for st in local_storages(tensor):
            self._tags[self._track(st, "other").serial] = category

    def tag_weights(self, tensor: torch.Tensor) -> None:
        self._tag(tensor, "weights")

    def tag_role(self, tensor: torch.Tensor, role: str, persistent: bool = False) -> None:
        """Name what a tensor is for; `persistent` for a storage that is resized rather than freed
        (FSDP2's unsharded parameters), so its later re-growths carry the role too."""
        for st in local_storages(tensor):
            if persistent:
                self._storage_role[id(st)] = role
            # outside the tracked steps (FLOP counting) FSDP2's hooks still call here: nothing to track
            if st.nbytes() and self._depth:
                serial = self._track(st, self._phase).serial
                self._roles[serial] = role
                self._tags[serial] = ROLES[role]

    @contextmanager
    def naming_new(self, phase: str, role: str):
        """Run a block in `phase` and give `role` to every storage a floating-point empty() in it
        created that outlives it (DDP's reducer builds its buckets in C++, out of Python's sight:
        what it leaves behind of those is them)."""
        first = self._serial
        self._bucket_like, outer = set(), self._bucket_like
        try:
            with self.phase(phase):
                yield
        finally:
            bucket_like, self._bucket_like = self._bucket_like, outer
        # The rest is the C++ code's scratch (the flat copies DDP broadcasts parameters and buffers
        # through, the rebuild's bucket indices): a gloo Work holds it too, and its worker thread
        # drops the last reference whenever it gets the GIL, so it can outlive the block and even
        # the step's peak. Counted as freed here, where the block ends, so no run depends on when.
        for key, entry in list(self._s.live.items()):
            if entry.serial > first and entry.serial not in bucket_like:
                self._free(key)
        for entry in self._s.live.values():
            if entry.serial > first and entry.nbytes:
                self._roles[entry.serial] = role
                self._tags[entry.serial] = ROLES[role]

    def roles_now(self) -> dict:
        """Bytes of each role live now (for a breakdown at a failure)."""
        return self._sum_roles((e.serial, e.nbytes, e.phase) for e in self._s.live.values())

    def _sum_roles(self, entries) -> dict:
        out = dict.fromkeys(ROLES, 0)
        for serial, nbytes, _ in entries:
            role = self._roles.get(serial)
            if role is not None:
                out[role] += nbytes
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        role = _OP_ROLES.get(func)
        written = tree_flatten(out)[0]
        if func in _OUT_ROLES:  # an out= op: the buffer it fills is the one with the role
            role = _OUT_ROLES[func]
            written = [(kwargs or {}).get("out")]
        for t in written:
            if isinstance(t, torch.Tensor):
                for st in local_storages(t):
                    entry = self._track(st, self._phase)
                    if (self._bucket_like is not None and func is torch.ops.aten.empty.memory_format
                            and t.is_floating_point()):  # the reducer's at::empty of a bucket
                        self._bucket_like.add(entry.serial)
                    if role is not None:
                        self._roles[entry.serial] = role
                        self._tags[entry.serial] = ROLES[role]
        return out

    # --- storages resized in place --------------------------------------------------------------
    def __enter__(self):
        self._depth += 1
        if self._depth > 1:
            return super().__enter__()
        tracker, orig = self, torch.UntypedStorage.resize_
        self._orig_resize = orig

        def resize_(st, size):
            before = st.nbytes()
            out = orig(st, size)
            if st.nbytes() != before:
                tracker._resized(st)
            return out

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._orig_resize is not None and not self._depth:
            torch.UntypedStorage.resize_ = self._orig_resize
            self._orig_resize = None
        return super().__exit__(*exc)

    def _resized(self, st) -> None:
        """A resize is the free of the old size and the allocation of the new one (a fresh serial, so
        the allocator replay sees two separate blocks, as the CUDA allocator does)."""
        key = id(st)
        if key in self._s.live:
            self._free(key)
        if st.nbytes():
            entry = self._track(st, self._phase)
            role = self._storage_role.get(key)
            if role is not None:
                self._roles[entry.serial] = role
                self._tags[entry.serial] = ROLES[role]

    # --- result ---------------------------------------------------------------------------------
    def snapshot(self):
        snap = super().snapshot()
        # frozen with the snapshot: later untracked steps (FLOP counting) move the live set on
        self._peak_roles = self._sum_roles(self._s.snapshot)
        return snap

    def roles_at_peak(self) -> dict:
        """Bytes of each role among the storages live at the peak, as of snapshot()."""
        return dict(self._peak_roles) if self._peak_roles is not None else self._sum_roles(self._s.snapshot)


def _op_roles() -> tuple[dict, dict]:
    """FSDP2's own ops (torch.ops.fsdp, defined when its collectives module is imported): the
    all-gather buffer is the copy-in's output, the reduce-scatter input is chunk_cat's out=."""
    try:
        import torch.distributed.fsdp._fully_shard._fsdp_collectives  # noqa: F401

        return ({torch.ops.fsdp.all_gather_copy_in.default: "all_gather_buffer"},
                {torch.ops.fsdp.chunk_cat.default: "reduce_scatter_buffer"})
    except (ImportError, AttributeError):  # a torch without FSDP2: nothing to name
        return {}, {}


_OP_ROLES, _OUT_ROLES = _op_roles()
