"""The memory categories, the report's columns: every byte of the peak belongs to exactly one."""
__all__ = ["CATEGORIES", "TRACKED", "STATE_CATEGORIES"]

CATEGORIES = ("weights", "grads", "moments", "quant_stats", "projectors", "history", "activations",
              "temporaries", "allocator_slack", "context")
TRACKED = CATEGORIES[:8]  # the last two exist only on CUDA, from the allocator and NVML
STATE_CATEGORIES = ("moments", "quant_stats", "projectors", "history")
"""what an optimizer's state key may be declared as"""
