"""Registries that fail loudly: a name registered twice is a bug, raised at import."""
from __future__ import annotations

from typing import Iterable, TypeVar

__all__ = ["unique"]

T = TypeVar("T")


def unique(items: Iterable[tuple[str, T]], kind: str) -> dict[str, T]:
    out: dict[str, T] = {}
    for name, value in items:
        if name in out:
            raise ValueError(f"{kind} {name!r} registered twice")
        out[name] = value
    return out
