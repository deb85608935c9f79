"""Memory attribution: which category every byte of the step's peak belongs to.

A TorchDispatchMode sees every tensor an op creates, real or fake (FakeTensorMode), and follows
each storage until it is freed. At the peak of the live total it keeps the list of live storages;
their categories are settled at the end, when it is known which became a gradient (tagged by a
post-accumulate-grad hook as it happens, so per-layer updates that free it at once are seen too)
and which ended up in the optimizer's state (by state key). torch's own MemTracker would label all
optimizer tensors one "OPT" bucket; here moments, quantization stats, projectors and the Fisher
history are told apart.

Peak snapshots are cheap: the live set is copied only when the total starts to fall after having
set a new maximum (a local maximum above every earlier one), not on every allocation.

Every allocation and free is also kept, in order, as two integers (serial, ±bytes), so that the
caching allocator's reserved bytes can be replayed from the sequence (measure/allocator.py). Weights
enter it when `attach` first sees them, in parameters()-then-buffers() order: the order the model's
constructor creates them in, each parameter its own allocation.
"""
from __future__ import annotations

import weakref
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ngl_profile.schema.categories import CATEGORIES, TRACKED

__all__ = ["CATEGORIES", "TRACKED", "MemoryTracker", "MemorySnapshot", "state_key_category",
           "optimizer_states"]


def state_key_category(declared: Callable[[str], str | None] | None, key: str) -> str:
    """The category the optimizer (or the zoo, for third-party optimizers) declares for a state key.
    An undeclared key is an error, not a silent "moments": a new key must say what it is."""
    category = declared(key) if declared is not None else None
    if category is None:
        raise ValueError(f"optimizer state key {key!r} has no declared memory category "
                         "(declare it in the optimizer's state_categories, or in the zoo for a third-party one)")
    return category


def optimizer_states(optimizer) -> list[dict]:
    """Per-parameter state dicts, looking inside per-layer wrappers."""
    inner = getattr(optimizer, "optimizers", None)
    opts = inner if inner is not None else [optimizer]
    return [st for o in opts for st in o.state.values()]


def _state_tensors(value):
    """Tensors held by a state value; galore-torch keeps a projector *object* with the matrix inside."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _state_tensors(v)
    elif hasattr(value, "ortho_matrix"):
        yield from _state_tensors(value.ortho_matrix)


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """Bytes per category at the peak of the tracked window (tensor storages only)."""

    peak_bytes: int
    by_category: dict
    peak_phase: str
    step_peaks: tuple = ()
    """peak live bytes of each tracked step, in order"""
    timeline: tuple = ()
    """(event index, live bytes, phase) over the last tracked step, at most ~2000 points"""
    events: tuple = ()
    """every storage allocation and free since tracking began, in order, flat: serial, +nbytes for an
    allocation, serial, -nbytes for its free (zero-byte storages left out: they take no memory)"""


@dataclass
class _Live:
    serial: int
    nbytes: int
    phase: str


@dataclass
class _State:
    live: dict = field(default_factory=dict)  # id(storage) → _Live
    total: int = 0
    peak: int = 0
    dirty: bool = False
    snapshot: list = field(default_factory=list)  # [(serial, nbytes, phase)] at the peak
    snapshot_phase: str = ""


class MemoryTracker(TorchDispatchMode):
    """Follows every storage created while active. Use `phase(name)` around forward/backward/step.

    Create it, then `attach(model)` *before* building the optimizer, so its gradient hooks run
    before a per-layer optimizer's hooks free the gradient.
    """

    def __init__(self, record_timeline: bool = True, state_category: Callable[[str], str | None] | None = None):
        """state_category: state key → memory category, as the optimizer declares it."""
        super().__init__()
        self.state_category = state_category
        self._s = _State()
        self._serial = 0
        self._phase = "other"
        self._tags: dict[int, str] = {}  # serial → category known for sure
        self._hooks = []
        self._hooked: set[int] = set()
        self._step_peaks: list[int] = []
        self._step_peak = 0
        self._timeline: list = []
        self._record_timeline = record_timeline
        self._events = array("q")  # flat (serial, ±nbytes) pairs; ~16 bytes an event, no objects

    # --- registration -------------------------------------------------------------------------
    def _track(self, storage, phase: str) -> _Live:
        key = id(storage)
        entry = self._s.live.get(key)
        if entry is None:
            self._serial += 1
            entry = _Live(self._serial, storage.nbytes(), phase)
            self._s.live[key] = entry
            weakref.finalize(storage, self._free, key)
            if entry.nbytes:
                self._events.append(entry.serial)
                self._events.append(entry.nbytes)
            self._grow(entry.nbytes)
        return entry

    def _tag(self, tensor: torch.Tensor, category: str) -> None:
        self._tags[self._track(tensor.untyped_storage(), "other").serial] = category

    def attach(self, model: torch.nn.Module) -> None:
        """Weights (parameters and buffers) and gradient hooks. Call again after LoRA injection."""
        for t in list(model.parameters()) + list(model.buffers()):
            self._tag(t, "weights")
        for p in model.parameters():
            if p.requires_grad and id(p) not in self._hooked:
                self._hooked.add(id(p))
                self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_hook))

    def _grad_hook(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._tag(p.grad, "grads")

    def declare_state(self, state_category: Callable[[str], str | None]) -> None:
        """How the optimizer's state keys map to categories (once it is built; see tag_optimizer)."""
        self.state_category = state_category

    def tag_optimizer(self, optimizer) -> None:
        """Settle the category of everything in the optimizer's state (call after a step)."""
        for st in optimizer_states(optimizer):
            for key, value in st.items():
                for t in _state_tensors(value):
                    self._tag(t, state_key_category(self.state_category, key))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._hooked.clear()

    # --- accounting ----------------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        s = self._s
        s.total += n
        if s.total > s.peak:
            s.peak = s.total
            s.dirty = True
        self._step_peak = max(self._step_peak, s.total)
        if self._record_timeline:
            self._timeline.append((s.total, self._phase))

    def _free(self, key) -> None:
        s = self._s
        entry = s.live.get(key)
        if entry is None:
            return
        if s.dirty:  # the total is about to fall from a new maximum: that maximum is the peak so far
            self._take_snapshot()
        del s.live[key]
        s.total -= entry.nbytes
        if entry.nbytes:
            self._events.append(entry.serial)
            self._events.append(-entry.nbytes)
        if self._record_timeline:
            self._timeline.append((s.total, self._phase))

    def _take_snapshot(self) -> None:
        s = self._s
        s.snapshot = [(e.serial, e.nbytes, e.phase) for e in s.live.values()]
        s.snapshot_phase = self._phase
        s.dirty = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage(), self._phase)
        return out

    @contextmanager
    def phase(self, name: str):
        previous, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = previous

    def start_step(self) -> None:
        """Begin a tracked step: its own peak, and (if recording) a fresh timeline."""
        self._step_peak = self._s.total
        self._timeline = [(self._s.total, self._phase)]

    def end_step(self) -> None:
        self._step_peaks.append(self._step_peak)

    # --- result ---------------------------------------------------------------------------------
    def _categorise(self, entries) -> dict:
        out = dict.fromkeys(CATEGORIES, 0)
        for serial, nbytes, phase in entries:
            cat = self._tags.get(serial)
            if cat is None:
                cat = "activations" if phase == "forward" else "temporaries"
            out[cat] += nbytes
        return out

    def current(self) -> dict:
        """Categories of what is live now (for a breakdown at the moment of an OOM)."""
        return self._categorise((e.serial, e.nbytes, e.phase) for e in self._s.live.values())

    def snapshot(self) -> MemorySnapshot:
        if self._s.dirty:
            self._take_snapshot()
        timeline = self._timeline
        if len(timeline) > 2000:  # keep the shape, not every allocation
            stride = -(-len(timeline) // 2000)
            timeline = [max(timeline[i:i + stride], key=lambda x: x[0]) for i in range(0, len(timeline), stride)]
        return MemorySnapshot(peak_bytes=self._s.peak, by_category=self._categorise(self._s.snapshot),
                              peak_phase=self._s.snapshot_phase, step_peaks=tuple(self._step_peaks),
                              timeline=tuple((i, b, ph) for i, (b, ph) in enumerate(timeline)),
                              events=tuple(self._events))
