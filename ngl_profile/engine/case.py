"""One case = one model + one optimizer, run in this process (the runner gives each its own).

Step plan (the same in both modes, so estimated and measured figures are comparable):
  2 memory-tracked steps  step 0 refreshes the projectors (SVD) and allocates optimizer state,
                          step 1 is a steady step; the peak is the larger, its phase recorded
  1 counted step          estimated mode only: the step's FLOPs for the roofline projection,
                          outside the tracker (see _counted_step)
  warmup untimed steps    measured mode only: settle caches and allocator
  `steps` timed steps     measured mode only, without the tracker (a dispatch mode costs time)
Estimated mode runs the tracked steps under FakeTensorMode: exact sizes, nothing allocated.
"""
from __future__ import annotations

import contextlib
import gc
import json
import sys
import time

import torch

from ngl_profile.zoo.gpus import CUDA_CONTEXT_BYTES, get_gpu
from ngl_profile.measure.memory import MemoryTracker
from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.zoo.models import build_model
from ngl_profile.schema.results import CaseResult
from ngl_profile.schema.scenario import CaseSpec
from ngl_profile.engine.steps import emit, one_step
from ngl_profile.engine.throughput import forward_flops, roofline_projection, timed_steps

__all__ = ["run_case"]

TRACKED_STEPS = 2


def _param_counts(model) -> dict:
    from ngl_profile.zoo.optimizers import low_rank_parameters

    params = list(model.parameters())
    mats, _ = low_rank_parameters(model)
    return {"total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "low_rank": sum(p.numel() for p in mats)}


def run_case(spec: CaseSpec | dict) -> CaseResult:
    """One case, in this process (a CaseSpec, or its dict form, which is validated first).
    Never raises for a failing case: the failure is the result (status "oom" or "error")."""
    from ngl_profile.zoo.optimizers import build, code_path, state_category_lookup

    spec = CaseSpec.from_dict(spec)
    scn, case, mode = spec.scenario, spec.case, spec.mode
    estimated = mode == "estimated"
    device = torch.device("cpu" if estimated else spec.device)
    dist_ctx = _join_group(scn, estimated, spec.device)  # outside FakeTensorMode: the mesh needs real ranks
    if dist_ctx is not None and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (LOCAL_RANK)
    dtype = getattr(torch, scn.dtype)
    gpu = get_gpu(scn.gpu)
    result = CaseResult(optimizer={"name": case.name, "label": case.label, "hparams": spec.hparams},
                        status="ok", provenance=mode)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    nvml = context_bytes = None
    if cuda:
        context_bytes = _cap_to_target(result, device, spec.target_bytes)
        from ngl_profile.measure.nvml import NvmlSampler

        nvml = NvmlSampler(device.index or 0)
    fake = None
    if estimated:
        from torch._subclasses.fake_tensor import FakeTensorMode

        # real inputs allowed: bitsandbytes' quantization maps are real constants (see rules.py)
        fake = FakeTensorMode(allow_non_fake_inputs=True)
    # an estimate is for a GPU: the optimizers must allocate as their CUDA code paths do
    target = "cuda" if cuda or (estimated and scn.code_paths == "gpu") else "cpu"
    tracker = MemoryTracker() if dist_ctx is None else dist_ctx.tracker()
    same_attention_path = _unpacked_batches()
    gen = None if estimated else torch.Generator(device=device).manual_seed(0)
    model = opt = None
    try:
        with same_attention_path, fake if fake is not None else contextlib.nullcontext():
            model = build_model(scn.model_spec, dtype, scn.checkpointing, device=device,
                                attention="eager" if scn.attention == "eager" else "sdpa")
            if dist_ctx is not None:  # DDP or FSDP2 before the optimizer: it must hold the sharded parameters
                model = dist_ctx.wrap(model, tracker)
            tracker.attach(model)  # before the optimizer: its grad hooks must run before layerwise ones
            result.code_path = code_path(case.name, spec.hparams, target, scn.precision, estimated)
            opt = build(case.name, model, target=target, precision=scn.precision, **result.optimizer["hparams"])
            tracker.declare_state(state_category_lookup(case.name, opt))
            tracker.attach(model)  # LoRA adds adapter weights
            result.params = _param_counts(model)
            tokens = scn.batch_size * scn.seq_len
            _injected_fault(case.label)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t_steps = _tracked_steps(model, opt, scn, device, gen, tracker)
            snap = tracker.snapshot()
            if estimated:  # only the roofline projection reads it; a measured run is timed instead
                _counted_step(result, model, opt, scn, device, gen)
            forward_flops(result, model, scn, device, gen, tokens)
        _record_memory(result, snap, gpu, cuda, context_bytes, device)
        if estimated:
            roofline_projection(result, gpu, tokens)
        else:
            result.step_time_s["first_tracked_step"] = t_steps[0]
            timed_steps(result, model, opt, scn, device, gen, tokens, gpu, nvml)
        result.skipped_updates = int(getattr(opt, "skipped_updates", 0))
        result.damping_backoffs = int(getattr(opt, "damping_backoffs", 0))
    except torch.OutOfMemoryError as e:
        _record_failure(result, "oom", e, tracker, gpu, cuda, context_bytes, device)
    except Exception as e:  # recorded for this case; the runner goes on with the next one
        oom = "can't allocate memory" in str(e) or "out of memory" in str(e).lower()
        _record_failure(result, "oom" if oom else "error", e, tracker, gpu, cuda, context_bytes, device)
    finally:
        tracker.detach()
        del model, opt
        gc.collect()
        if dist_ctx is not None:
            dist_ctx.finish(result, tracker)
    result.duration_s = time.perf_counter() - t_start
    return result


def _join_group(scn, estimated: bool, device: str):
    """The distributed context for a DDP/FSDP2 scenario (engine/distributed), else None."""
    if scn.parallelism == "none":
        return None
    from ngl_profile.engine.distributed import setup

    return setup(scn.parallelism, scn.world_size, estimated, device)


def _tracked_steps(model, opt, scn, device, gen, tracker) -> list[float]:
    """The memory-tracked steps; wall seconds of each (with the tracker's overhead: never reported
    as throughput)."""
    seconds = []
    for i in range(TRACKED_STEPS):
        emit("step", kind="tracked", i=i + 1, n=TRACKED_STEPS)
        tracker.start_step()
        t0 = time.perf_counter()
        with tracker:
            one_step(model, opt, scn, device, gen, tracker=tracker)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        tracker.end_step()
    return seconds


def _counted_step(result, model, opt, scn, device, gen) -> None:
    """All counted FLOPs of one steady step, optimizer included (projections; an SVD has no formula
    in torch's counter and refreshes are rare), for the roofline projection. A step of its own,
    never inside the tracked ones: FlopCounterMode's ModuleTracker hooks every module's inputs and
    outputs and so keeps a checkpointed block's recomputed activations alive until it exits (tiny,
    adamw, checkpointing: a 4.53 MB peak instead of 4.15, larger than without checkpointing)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        one_step(model, opt, scn, device, gen)
    result.step_flops = float(counter.get_total_flops())


def _injected_fault(label: str) -> None:
    """Test hook: NGL_PROFILE_FAULT="<label>=raise|oom|exit|signalN|hang" makes that case fail on purpose, so the
    runner's isolation (the failure is recorded, the next case runs) can be tested without a GPU."""
    import os

    target, _, kind = os.environ.get("NGL_PROFILE_FAULT", "").partition("=")
    if target != label:
        return
    if kind == "oom":
        raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2.00 GiB")
    if kind == "exit":
        os._exit(3)  # a crash that leaves no result file behind
    if kind.startswith("signal"):  # e.g. "signal9": killed from outside, as the OOM killer would
        import signal

        os.kill(os.getpid(), int(kind[len("signal"):]) or signal.SIGKILL)
    if kind == "hang":  # a case that never ends by itself (for the interrupt tests)
        time.sleep(3600)
    raise RuntimeError(f"injected failure ({kind})")


def _unpacked_batches():
    """transformers probes position_ids for packed sequences, a data-dependent check it cannot do on
    fake tensors, so an estimate would build a 4-D mask a real run skips. Our batches are never
    packed: answer the probe the same way in both modes, so both take the same attention path."""
    from unittest import mock

    try:
        import transformers.masking_utils as mu
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(mu, "find_packed_sequence_indices"):
        return contextlib.nullcontext()
    return mock.patch.object(mu, "find_packed_sequence_indices", lambda position_ids: None)


def _cap_to_target(result, device, target_bytes: int) -> int | None:
    """Measure the CUDA context, then cap PyTorch's allocator so that context + pool ≤ the target
    GPU's memory: "fits a 4090" is then tested on a bigger card, not guessed."""
    from ngl_profile.measure.nvml import NvmlSampler

    torch.cuda.init()
    x = torch.ones(256, 256, device=device)
    (x @ x).sum().item()  # a matmul loads cuBLAS and its workspace, part of every real context
    del x
    torch.cuda.synchronize()
    used = NvmlSampler(device.index or 0).used_bytes_now()
    context = max(0, used - torch.cuda.memory_reserved(device)) if used is not None else None
    total = torch.cuda.get_device_properties(device).total_memory
    result.cuda["device_total_bytes"] = total
    result.cuda["context_bytes_at_start"] = context
    if total > target_bytes:
        cap = target_bytes - (context or 0)
        torch.cuda.set_per_process_memory_fraction(max(0.0, min(1.0, cap / total)), device)
        result.cuda["cap_bytes"] = cap
    return context


def _record_memory(result, snap, gpu, cuda, context_bytes, device) -> None:
    mem = dict(snap.by_category)
    peak = snap.peak_bytes
    if cuda:
        reserved = torch.cuda.max_memory_reserved(device)
        result.cuda.update(max_allocated_bytes=torch.cuda.max_memory_allocated(device),
                           max_reserved_bytes=reserved, tracked_peak_bytes=peak)
        # reserved − what our tensors held at the peak: the caching allocator's rounding and cache
        mem["allocator_slack"] = max(0, reserved - peak)
        mem["context"] = context_bytes or 0
        peak = peak + mem["allocator_slack"] + mem["context"]
    else:
        # no CUDA allocator ran: replay its rules over the same allocation sequence, within what the
        # target card leaves it beside the assumed context (where it would free its cache and retry)
        from ngl_profile.measure.allocator import RULES_SOURCE, replay

        t0 = time.perf_counter()
        sim = capped = replay(snap.events, gpu.memory_bytes - CUDA_CONTEXT_BYTES)
        if capped.oom_at_event is not None:  # it would run out on the card: what it would have needed
            sim = replay(snap.events)
        result.cuda.update(
            allocator_model=f"simulated: {RULES_SOURCE}, replayed over the {result.provenance} allocation sequence",
            simulated_max_reserved_bytes=sim.peak_reserved_bytes,
            simulated_allocated_at_peak_bytes=sim.allocated_at_peak_bytes,
            simulated_max_allocated_bytes=sim.peak_allocated_bytes, simulated_alloc_retries=capped.alloc_retries,
            simulated_oom_at_event=capped.oom_at_event, tracked_peak_bytes=peak,
            allocator_simulation_s=time.perf_counter() - t0)
        mem["allocator_slack"] = max(0, sim.peak_reserved_bytes - peak)
        peak = peak + mem["allocator_slack"]
    result.memory_bytes = {c: int(mem.get(c, 0)) for c in CATEGORIES}
    result.peak_bytes = int(peak)
    result.peak_phase = snap.peak_phase
    result.step_peaks_bytes = list(snap.step_peaks)
    result.timeline = [list(x) for x in snap.timeline]
    _fits(result, gpu, cuda)


def _fits(result, gpu, cuda) -> None:
    # a run that did not see a CUDA context (estimated, or measured on CPU) must still leave room
    # for one on the target GPU: the catalog's typical figure, recorded as an assumption (its
    # allocator slack is simulated, see _record_memory)
    extra = 0 if cuda else CUDA_CONTEXT_BYTES
    if not cuda:
        result.cuda["assumed_context_bytes"] = extra
    result.headroom_bytes = int(gpu.memory_bytes - result.peak_bytes - extra)
    # the simulated allocator can run out below the peak it reports when freeing its cache at the
    # limit leaves a layout that needs more than the card has (fragmentation)
    result.fits = result.headroom_bytes >= 0 and result.cuda.get("simulated_oom_at_event") is None


def _record_failure(result, status, exc, tracker, gpu, cuda, context_bytes, device) -> None:
    result.status = status
    result.message = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    live = tracker.current()
    result.memory_bytes = {c: int(live.get(c, 0)) for c in CATEGORIES}
    if cuda:
        result.memory_bytes["context"] = int(context_bytes or 0)
    result.peak_bytes = int(sum(result.memory_bytes.values()))
    result.peak_phase = "at failure"
    if status == "oom":
        result.fits = False
        result.headroom_bytes = None
        total = result.cuda.get("device_total_bytes")
        if cuda and total is not None and total < gpu.memory_bytes:
            # this card is smaller than the target: running out here says nothing about the target
            result.fits = None
            result.message += f" (this device has {total / 2**30:.1f} GiB, less than {gpu.name}: " \
                              "use --mode estimated to judge the target)"


def main() -> int:
    """python -m ngl_profile.engine.case SPEC.json RESULT.json"""
    import warnings
    from dataclasses import asdict

    from ngl_profile.schema.results import write_json_atomic

    warnings.filterwarnings("ignore")
    with open(sys.argv[1]) as f:
        spec = CaseSpec.from_dict(json.load(f))
    result = run_case(spec)
    write_json_atomic(sys.argv[2], asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
