"""Memory categories of optimizer state keys, declared by the code that creates the keys.

Every module that puts a key into an optimizer's per-parameter state declares it, next to the
code that creates it, as {key: category}: the moment rules (rules.py), the window (natural.py),
the optimizer's own counters and projector factors (optimizer.py). A key may end in "*" to
declare every key with that prefix (proj_0, proj_1, … for a Tucker basis). The optimizer classes
collect them in `state_categories`; a memory tracker reads that table instead of keeping its own.
The categories are the report's state columns: moments, quant_stats, projectors, history.
"""
from __future__ import annotations

__all__ = ["CATEGORIES", "merge", "category_of"]

CATEGORIES = ("moments", "quant_stats", "projectors", "history")


def merge(*tables: dict[str, str]) -> dict[str, str]:
    """One table from several; a key declared twice with different categories, or an unknown
    category, raises ValueError (two modules disagreeing about a key is a bug, not a choice)."""
    out: dict[str, str] = {}
    for table in tables:
        for key, category in table.items():
            if category not in CATEGORIES:
                raise ValueError(f"state key {key!r}: unknown category {category!r}; "
                                 f"known: {', '.join(CATEGORIES)}")
            if out.setdefault(key, category) != category:
                raise ValueError(f"state key {key!r} is declared both {out[key]!r} and {category!r}")
    return out


def category_of(table: dict[str, str], key: str) -> str | None:
    """The category `table` declares for `key`: its own entry, else the longest "prefix*" entry it
    starts with; None if it is not declared."""
    if key in table:
        return table[key]
    prefixes = [k for k in table if k.endswith("*") and key.startswith(k[:-1])]
    return table[max(prefixes, key=len)] if prefixes else None
