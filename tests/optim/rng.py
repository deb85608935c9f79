"""Seeded randomness for library code that takes no torch.Generator (a transformers model's init,
peft's adapter init): run it in a forked global RNG, seeded here, restored on exit."""
from contextlib import contextmanager

import torch


@contextmanager
def local_rng(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
