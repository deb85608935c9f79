"""One training step, optionally inside the memory tracker's and the timer's phases; progress
events for the parent process. Shared by the tracked steps (case.py) and the timed ones
(throughput.py)."""
from __future__ import annotations

import contextlib
import json

from ngl_profile.zoo.models import make_batch

__all__ = ["emit", "one_step", "compute_context"]


def emit(event: str, **fields) -> None:
    """A progress line for the parent process (JSON on stdout)."""
    print(json.dumps({"event": event, **fields}), flush=True)


def _phase_ctx(tracker, timer, name):
    stack = contextlib.ExitStack()
    if tracker is not None:
        stack.enter_context(tracker.phase(name))
    if timer is not None:
        stack.enter_context(timer.phase(name))
    return stack


def compute_context(scn, device) -> contextlib.ExitStack:
    """What the forward runs under for the scenario's precision recipe and attention choice:
    bf16 autocast for mixed-bf16 (its weight casts are cached until the forward ends and saved
    for backward, so they count as activations), SDPA held to its flash kernel for
    flash_attention_2 (the same saved output and log-sum-exp as the flash-attn package)."""
    import torch

    stack = contextlib.ExitStack()
    if scn.precision == "mixed-bf16":
        stack.enter_context(torch.autocast(torch.device(device).type, dtype=torch.bfloat16))
    if scn.attention == "flash_attention_2":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel(SDPBackend.FLASH_ATTENTION))
    return stack


def one_step(model, opt, scn, device, gen, tracker=None, timer=None) -> None:
    with _phase_ctx(tracker, timer, "forward"):
        batch = make_batch(scn.model_spec, scn.batch_size, scn.seq_len, device=device, generator=gen)
        with compute_context(scn, device):
            loss = model(**batch).loss
    with _phase_ctx(tracker, timer, "backward"):
        loss.backward()
    del loss, batch
    with _phase_ctx(tracker, timer, "optimizer"):
        opt.step()
        opt.zero_grad(set_to_none=True)
    if tracker is not None:
        tracker.tag_optimizer(opt)
