"""Creating modules directly in a dtype (no float32 copy first, no .to() afterwards)."""
from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["default_dtype"]


@contextmanager
def default_dtype(dtype: torch.dtype):
    """torch's default floating dtype set to `dtype` for the block, restored after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
