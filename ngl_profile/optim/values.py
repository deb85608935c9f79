"""Tensors that may carry no values: FakeTensor and meta tensors, i.e. shape-only tracing.

torch can run a program on tensors that have a shape, a dtype and a device but no data: a
FakeTensor (torch._subclasses.fake_tensor, used by torch.compile and by memory estimators that
run a training step under FakeTensorMode) or a tensor on the "meta" device. Such a tensor cannot
be read on the host (`bool(t)`, `.item()`, `.tolist()` raise), and some constants must be real
even while a FakeTensorMode is active. A dispatch mode (FakeTensorMode, or a TorchDispatchMode
that tracks allocations) also sits between a compiled kernel and its inputs.

This module is the optimizer package's only contact with those private torch APIs; natural.py,
kernels.py and rules.py ask it, and never import torch._subclasses or torch.utils._python_dispatch.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch._subclasses.fake_tensor import is_fake, unset_fake_temporarily
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode

__all__ = ["has_values", "value_scope", "real_constants", "outside_dispatch_modes", "under_dispatch_mode"]


def has_values(t: torch.Tensor) -> bool:
    """False for a tensor that has a shape but no data (a FakeTensor, or one on the meta device):
    its values cannot be read on the host, and no result computed from it can be cached."""
    return not (is_fake(t) or t.device.type == "meta")


def value_scope(t: torch.Tensor):
    """What a tensor's values belong to: None for real (and meta) tensors, else its FakeTensorMode.
    A cache of tensors must be kept per scope: a fake tensor cannot outlive its mode."""
    return getattr(t, "fake_mode", None) if is_fake(t) else None


def real_constants():
    """A context in which new tensors are real even under a FakeTensorMode: for constants that are
    built from host values (bitsandbytes' quantization maps go through .tolist()). Outside a
    FakeTensorMode it changes nothing."""
    return unset_fake_temporarily()


@contextmanager
def outside_dispatch_modes():
    """Run the body with the active dispatch modes (a memory tracker's TorchDispatchMode) switched
    off: a compiled kernel called under one is silently run eagerly by Dynamo, with the eager
    kernel's transients. Callers give it real tensors only (check `has_values` first)."""
    with (_disable_current_modes() if _get_current_dispatch_mode() is not None else nullcontext()):
        yield


def under_dispatch_mode() -> bool:
    """Whether a dispatch mode (a memory tracker, FakeTensorMode) is active here."""
    return _get_current_dispatch_mode() is not None
