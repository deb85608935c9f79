"""The Python API: ngl-profile on your own model and your own training loop.

    result = ngl_profile.estimate(build_model, build_optimizer, make_batch, gpu="4090")
    with ngl_profile.profile(model, optimizer, gpu="4090", out="run/") as prof:
        for batch in loader:
            ...
            prof.step()

`estimate` runs your callables the way the CLI runs a case in estimated mode (engine/case.py):
under FakeTensorMode (exact tensor sizes, nothing allocated), two memory-tracked steps by
default (step 0 allocates the optimizer's state, step 1 is a steady step), one more step counted
for FLOPs. It returns the CaseResult a CLI case produces: memory by category at the peak, the peak
and its phase, fits and headroom on the target GPU. `profile` (ngl_profile/loop.py) measures your
real loop on whatever device the model lives on and writes a results.json.
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from ngl_profile.measure.memory import MemoryTracker
from ngl_profile.schema.results import CaseResult
from ngl_profile.schema.scenario import check_name
from ngl_profile.zoo.gpus import get_gpu

__all__ = ["estimate", "profile"]

_MAX_STEPS = 100


def profile(model, optimizer, **options):
    """A context manager measuring memory by category inside your own training loop; see
    ngl_profile.loop.Profile for the options (gpu, out, track_steps, ...)."""
    from ngl_profile.loop import Profile

    return Profile(model, optimizer, **options)


def estimate(build_model, build_optimizer, make_batch, *, gpu: str = "rtx-4090", steps: int = 2,
             loss_fn=None, optimizer_hparams: dict | None = None, label: str | None = None,
             state_categories: dict | str | None = None, flops: bool = True, name: str = "estimate",
             out=None) -> CaseResult:
    """Estimate one training step of your model on `gpu` without allocating it.

    build_model()          → an nn.Module, built on the default (CPU) device from a config, not
                             from weights (its parameters are fakes: from_pretrained cannot load)
    build_optimizer(model) → an optimizer; or a zoo name ("natural-galore", "adamw8bit", ...: see
                             `ngl-profile list optimizers`) built with `optimizer_hparams`
    make_batch(step)       → the batch of step `step`: a dict for model(**batch).loss, or anything
                             `loss_fn(model, batch)` turns into the loss
    steps                  memory-tracked steps (1–100); the peak is the largest
    state_categories       memory category of optimizer state keys ngl-profile does not know
                           ({key: category}, or one category for all): an unknown key is an error
    flops                  also count the step's FLOPs (one more step) for the roofline projection
    out                    also write a results.json there (a directory, or a .json path) for
                           `ngl-profile report`, `compare` and `check`

    Bad arguments raise ValueError; what your callables raise is raised as it is.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ngl_profile.engine.case import _param_counts, _record_memory, _unpacked_batches
    from ngl_profile.user_optimizer import state_lookup

    target = get_gpu(gpu)
    check_name(name)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= _MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {_MAX_STEPS}]; got {steps!r}")
    for arg, fn in (("build_model", build_model), ("make_batch", make_batch)):
        if not callable(fn):
            raise ValueError(f"{arg} must be callable; got {type(fn).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable (model, batch) → loss; got {type(loss_fn).__name__}")
    if optimizer_hparams is not None and not isinstance(build_optimizer, str):
        raise ValueError("optimizer_hparams applies to a zoo optimizer given by name, not to build_optimizer()")
    t_start = time.perf_counter()
    # real inputs allowed: bitsandbytes' quantization maps are real constants (optim/rules.py)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = MemoryTracker()
    try:
        with _unpacked_batches(), fake:
            model = build_model()
            if not isinstance(model, torch.nn.Module):
                raise ValueError(f"build_model() must return a torch.nn.Module; got {type(model).__name__}")
            tracker.attach(model)  # before the optimizer: its grad hooks must run before per-layer ones
            opt, optimizer, code_path = _build_optimizer(build_optimizer, model, optimizer_hparams or {})
            tracker.declare_state(state_lookup(opt, state_categories))
            tracker.attach(model)  # LoRA adds adapter weights
            result = CaseResult(optimizer={**optimizer, "label": label or optimizer["name"]}, status="ok",
                                provenance="estimated", params=_param_counts(model), code_path=code_path)
            facts = None
            for i in range(steps):
                tracker.start_step()
                with tracker:
                    seen = _step(model, opt, make_batch, loss_fn, i, tracker)
                tracker.end_step()
                facts = facts or seen
            snap = tracker.snapshot()
            if flops:
                _count_flops(result, model, opt, make_batch, loss_fn, steps, facts["tokens"])
    finally:
        tracker.detach()
    _record_memory(result, snap, target, False, None, torch.device("cpu"))
    if result.step_flops and facts["tokens"]:
        from ngl_profile.engine.throughput import roofline_projection

        roofline_projection(result, target, facts["tokens"])
    result.skipped_updates = int(getattr(opt, "skipped_updates", 0))
    result.damping_backoffs = int(getattr(opt, "damping_backoffs", 0))
    result.duration_s = time.perf_counter() - t_start
    if out is not None:
        from ngl_profile.records import first_lr, model_facts, run_record, write_run

        run = run_record(result, name=name, model=model_facts(model), batch=facts, gpu=target, mode="estimated",
                         device="cpu", source="ngl_profile.estimate (your model, under FakeTensorMode)",
                         lr=first_lr(opt))
        write_run(run, out)
    return result


def _build_optimizer(build_optimizer, model, hparams: dict):
    """(optimizer, {"name", "hparams"}, code path) from a zoo name or the user's callable."""
    from ngl_profile.user_optimizer import code_path_note, optimizer_hparams, optimizer_name

    if isinstance(build_optimizer, str):
        from ngl_profile.zoo.optimizers import build, code_path

        hp = dict(hparams)
        # an estimate is for a GPU: the optimizer must allocate as its CUDA code path does
        opt = build(build_optimizer, model, target="cuda", **hp)
        return opt, {"name": build_optimizer, "hparams": hparams}, code_path(build_optimizer, hparams, "cuda",
                                                                             estimated=True)
    if not callable(build_optimizer):
        raise ValueError("build_optimizer must be a callable (model → optimizer) or an optimizer name "
                         f"(see `ngl-profile list optimizers`); got {type(build_optimizer).__name__}")
    opt = build_optimizer(model)
    if not isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "step"):
        raise ValueError(f"build_optimizer(model) must return an optimizer; got {type(opt).__name__}")
    return opt, {"name": optimizer_name(opt), "hparams": optimizer_hparams(opt)}, code_path_note(opt, True)


def _loss(model, batch, loss_fn):
    if loss_fn is not None:
        loss = loss_fn(model, batch)
    elif not isinstance(batch, dict):
        raise ValueError(f"make_batch(step) returned {type(batch).__name__}: return a dict of tensors for "
                         "model(**batch), or pass loss_fn=lambda model, batch: ... for anything else")
    else:
        out = model(**batch)
        loss = out if torch.is_tensor(out) else getattr(out, "loss", None)
        if loss is None:
            raise ValueError(f"model(**batch) gave no loss ({type(out).__name__} without .loss): put labels "
                             "in the batch, or pass loss_fn=lambda model, batch: ...")
    if not torch.is_tensor(loss) or loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}" if torch.is_tensor(loss) else type(loss).__name__
        raise ValueError(f"the loss must be a one-element tensor; got {got}")
    return loss


def _step(model, opt, make_batch, loss_fn, i, tracker=None) -> dict:
    """One training step of the user's program, in the tracker's phases; the batch's facts."""
    from ngl_profile.records import batch_facts

    def phase(name):
        return tracker.phase(name) if tracker is not None else nullcontext()

    with phase("forward"):
        batch = make_batch(i)
        facts = batch_facts(batch)
        loss = _loss(model, batch, loss_fn)
    with phase("backward"):
        loss.backward()
    del loss, batch
    with phase("optimizer"):
        opt.step()
        opt.zero_grad(set_to_none=True)
    if tracker is not None:
        tracker.tag_optimizer(opt)
    return facts


def _count_flops(result, model, opt, make_batch, loss_fn, i, tokens) -> None:
    """The step's counted FLOPs (optimizer included) and, where the batch has tokens, model FLOPs per
    token (3 × forward, the MFU convention): outside the tracker, as engine/case.py does, since the
    counter's module hooks keep recomputed activations alive."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _step(model, opt, make_batch, loss_fn, i)
    result.step_flops = float(counter.get_total_flops())
    if tokens:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            _loss(model, make_batch(i + 1), loss_fn)
        result.flops_per_token = 3 * counter.get_total_flops() / tokens
