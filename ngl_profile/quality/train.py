"""One training run: one optimizer, one seed, real bytes, a warm-up + cosine schedule.

Seed k fixes the model's initialisation (transformers' own init, run under torch.random.fork_rng
so the process's global generator is left as it was) and the batch order (a torch.Generator of its
own): every optimizer of seed k starts from the same weights and sees the same batches. Wall time
counts the training steps only, never the evaluations; on CUDA each phase ends with a
synchronize (a host sync, the price of timing phases).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

__all__ = ["Curve", "train_run", "schedule", "build_optimizer", "evaluate", "initial_model"]

_DATA_SEED = 1_000_003  # batch order of seed k: generator seeded k + this, apart from the init's seed k


@dataclass(kw_only=True)
class Curve:
    """What one run recorded; losses in nats per byte."""
    seed: int
    lr: float
    train_loss: list = field(default_factory=list)
    """per step"""
    eval_steps: list = field(default_factory=list)
    """steps after which the held-out loss was measured (0: before any update)"""
    heldout_loss: list = field(default_factory=list)
    step_s: list = field(default_factory=list)
    """wall seconds of each step (forward + backward + optimizer)"""
    phase_s: dict = field(default_factory=dict)
    """forward / backward / optimizer → wall seconds per step"""
    diverged_at: int | None = None
    """the step whose loss was not finite (the run stopped there), else None"""
    tune_loss: float | None = None
    """held-out loss on the tune split after the last step, when the run was also a tuning run"""

    @property
    def final_heldout(self) -> float:
        return self.heldout_loss[-1] if self.diverged_at is None else math.nan

    def to_dict(self) -> dict:
        return {"seed": self.seed, "lr": self.lr, "train_loss": self.train_loss, "eval_steps": self.eval_steps,
                "heldout_loss": self.heldout_loss, "step_s": self.step_s, "phase_s": self.phase_s,
                "diverged_at": self.diverged_at, "tune_loss": self.tune_loss}


def schedule(opt, steps: int, warmup_fraction: float, min_lr_ratio: float):
    """GaLore's schedule (torchrun_main's "cosine" with min_lr_ratio; its scripts warm up over 10 % of
    the steps): linear from 0 over the warm-up, then cosine down to min_lr_ratio × the peak lr. The
    same formula is transformers' get_cosine_with_min_lr_schedule_with_warmup, used here."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(opt, int(round(warmup_fraction * steps)), steps,
                                                       min_lr_rate=min_lr_ratio)


def build_optimizer(model, name: str, hparams: dict, official: bool, precision: str, target: str):
    if official:
        from ngl_profile.quality.official import build_official

        return build_official(model, hparams)
    from ngl_profile.zoo.optimizers import build

    return build(name, model, target=target, precision=precision, **hparams)


def initial_model(scn, seed: int, device):
    """The model of seed `seed`: the same weights every time (the global RNG is restored after)."""
    from ngl_profile.zoo.models import build_model

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return build_model(scn.model_spec, getattr(torch, scn.dtype), scn.checkpointing, device=device,
                           attention="eager" if scn.attention == "eager" else "sdpa")


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, batch_size: int, device, scn) -> float:
    """Mean next-byte cross-entropy over the windows (every predicted byte weighs the same)."""
    from ngl_profile.engine.steps import compute_context

    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i:i + batch_size].to(device)
        with compute_context(scn, device):
            loss = model(input_ids=ids, labels=ids).loss
        n = ids.shape[0] * (ids.shape[1] - 1)
        total += float(loss) * n
        count += n
    model.train(was)
    return total / count


def train_run(scn, name: str, hparams: dict, *, corpus, steps: int, seed: int, windows: torch.Tensor,
              eval_every: int, warmup_fraction: float, min_lr_ratio: float, official: bool = False,
              device="cpu", on_step=None, tune_windows: torch.Tensor | None = None) -> Curve:
    """Train from seed `seed`'s initialisation for `steps` steps at hparams["lr"] (the peak).
    tune_windows: also measure the tune split's loss after the last step (curve.tune_loss)."""
    from ngl_profile.engine.steps import compute_context

    device = torch.device(device)
    model = initial_model(scn, seed, device)
    target = "cuda" if device.type == "cuda" else "cpu"
    opt = build_optimizer(model, name, hparams, official, scn.precision, target)
    sched = schedule(opt, steps, warmup_fraction, min_lr_ratio)
    gen = torch.Generator().manual_seed(seed + _DATA_SEED)
    curve = Curve(seed=seed, lr=float(hparams["lr"]), phase_s={"forward": [], "backward": [], "optimizer": []})
    curve.eval_steps.append(0)
    curve.heldout_loss.append(evaluate(model, windows, scn.batch_size, device, scn))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(steps):
        batch = {k: v.to(device) for k, v in corpus.batch(scn.batch_size, scn.seq_len, gen).items()}
        t0 = time.perf_counter()
        with compute_context(scn, device):
            loss = model(**batch).loss
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        sync()
        t3 = time.perf_counter()
        value = float(loss.detach())  # a host read: after the step, so it is not inside the timed phases
        del loss, batch
        curve.train_loss.append(value)
        curve.step_s.append(t3 - t0)
        for k, dt in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2)):
            curve.phase_s[k].append(dt)
        if not math.isfinite(value):
            curve.diverged_at = step
            break
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.eval_steps.append(step + 1)
            curve.heldout_loss.append(evaluate(model, windows, scn.batch_size, device, scn))
        if on_step is not None:
            on_step(step + 1, value)
    if tune_windows is not None:
        curve.tune_loss = evaluate(model, tune_windows, scn.batch_size, device, scn) if curve.diverged_at is None \
            else math.nan
    del model, opt
    return curve
