"""Telling the user, once, that the window's solve needed a larger damping than the one asked for.

`natural.weights` factors S = λI + GᵀG at λ, 1e3·λ and 1e6·λ and takes the first tier that
factors, on the device, without a host read (natural.py). A window of (nearly) dependent
gradients at a tiny λ can make the float64 Cholesky fail at λ; the update is then that of a
larger damping, which the user must know about. Each solve's tier is counted on the device
(`tally`), and `check` (once per optimizer step) reads the counts:
  CPU: read right away — a host read of a CPU tensor waits for nothing (~µs per step).
  GPU: a read would be a host sync per step, stalling the launch queue (the GPU idles while the
       host catches up). Instead `check` starts a non-blocking copy into pinned host memory and
       reads the previous copy only once its event says it has landed: no sync, one 32-byte
       device→host copy per step, and the warning comes a step or two late.
Once it has warned, it reads nothing any more; the per-state counters (state["damping_backoffs"])
keep counting, for the optimizer's `damping_backoffs` property.
"""
from __future__ import annotations

import warnings

import torch

from ngl_profile.optim.natural import N_TIERS, TIER_FACTOR
from ngl_profile.optim.values import has_values

__all__ = ["BackoffWatch", "total_backoffs"]


class BackoffWatch:
    """Tier counts per (λ, device) and the warn-once flag of one optimizer (or of every inner
    optimizer of a LayerwiseOptimizer, which share one)."""

    def __init__(self) -> None:
        self.warned = False
        self.tally: dict[tuple[float, torch.device], torch.Tensor] = {}  # for natural.weights
        self._inflight: dict[tuple, tuple[torch.Tensor, object]] = {}  # GPU: (pinned copy, event)

    def check(self) -> None:
        if self.warned:
            return
        for key, counts in list(self.tally.items()):
            if not has_values(counts):  # shape-only tracing (the estimator): nothing to read
                continue
            if counts.device.type == "cpu":
                self._report(key[0], counts.tolist())
            else:
                self._poll(key, counts)
            if self.warned:
                return

    def _poll(self, key: tuple, counts: torch.Tensor) -> None:
        host, event = self._inflight.get(key, (None, None))
        if event is not None:
            if not event.query():  # the last copy has not landed yet: look again next step
                return
            self._report(key[0], host.tolist())
            if self.warned:
                return
        if host is None:
            host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=counts.device.type == "cuda")
        host.copy_(counts, non_blocking=True)
        # torch.cuda's stream API exists on every torch this package allows (≥ 2.5); torch.accelerator
        # (2.6+) covers other devices
        stream = (torch.cuda.current_stream(counts.device) if counts.device.type == "cuda"
                  else torch.accelerator.current_stream(counts.device))
        self._inflight[key] = (host, stream.record_event())

    def _report(self, lam: float, counts: list[int]) -> None:
        raised = sum(counts[1:])
        if raised == 0:
            return
        self.warned = True
        used = [f"{lam * TIER_FACTOR**t:g} (1e{3 * t}·λ) in {c}" for t, c in enumerate(counts[1:N_TIERS], 1) if c]
        if counts[N_TIERS]:
            used.append(f"none factored, g̃ = g_t/(1e{3 * (N_TIERS - 1)}·λ), in {counts[N_TIERS]}")
        warnings.warn(
            f"Natural GaLore: the Cholesky factorisation of S = λI + GᵀG failed at the requested damping "
            f"λ = {lam:g} in {raised} of {sum(counts)} window solves so far (the window's gradients are "
            f"nearly linearly dependent); a larger damping was used there: {'; '.join(used)}. A larger "
            f"`damping` avoids it; the optimizer's `damping_backoffs` counts the tiers climbed "
            f"(warned once per optimizer)", RuntimeWarning, stacklevel=4)


def total_backoffs(states) -> int:
    """Σ state["damping_backoffs"] over per-parameter states: one host read per device (this is
    a sync: read it between steps, not inside one). Counters without values (the estimator's
    fake tensors) count 0."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for st in states:
        t = st.get("damping_backoffs")
        if torch.is_tensor(t) and has_values(t):
            by_device.setdefault(t.device, []).append(t)
    return sum(int(torch.stack(ts).sum()) for ts in by_device.values())
