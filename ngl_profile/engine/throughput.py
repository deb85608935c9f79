"""Throughput: the timed steps (tokens/s, phase times, MFU, NVML energy), the projector refresh
timed apart, FLOP counts, and the roofline projection an estimated run gives instead of a
measurement. Every formula lives in measure/timing.py; this module runs the steps."""
from __future__ import annotations

import time

import torch

from ngl_profile.measure.timing import (PhaseTimer, flops_per_token, model_flops_utilization, rate_stats,
                                        timing_stats, tokens_per_second)
from ngl_profile.zoo.models import make_batch
from ngl_profile.engine.steps import emit, one_step

__all__ = ["timed_steps", "svd_refresh_time", "forward_flops", "roofline_projection"]


def forward_flops(result, model, scn, device, gen, tokens) -> None:
    """Model FLOPs per token = 3 × forward FLOPs (backward ≈ 2 × forward; the usual MFU convention,
    which does not count activation recomputation). Counted under no_grad: no graph, no gradients."""
    def fwd():
        with torch.no_grad():
            batch = make_batch(scn.model_spec, scn.batch_size, scn.seq_len, device=device, generator=gen)
            model(**batch)

    result.flops_per_token = 3 * flops_per_token(fwd, tokens)


def timed_steps(result, model, opt, scn, device, gen, tokens, gpu, nvml) -> None:
    for i in range(scn.warmup):
        emit("step", kind="warmup", i=i + 1, n=scn.warmup)
        one_step(model, opt, scn, device, gen)
    timer = PhaseTimer(device)
    per_step = []
    if nvml is not None:
        nvml.start()
    for i in range(scn.steps):
        emit("step", kind="timed", i=i + 1, n=scn.steps)
        one_step(model, opt, scn, device, gen, timer=timer)
        per_step.append(timer.finish_step())
    if nvml is not None:
        result.nvml = nvml.stop()
    else:
        result.nvml = {"available": False, "reason": "no CUDA device"}
    for key in ("forward", "backward", "optimizer", "total"):
        stats = timing_stats([s[key] for s in per_step if key in s])
        if stats:  # the headline figure is the median; its spread goes beside it for check and compare
            result.step_time_s[key] = stats["median"]
            result.step_time_stats[key] = stats
    totals = [s["total"] for s in per_step if "total" in s]
    if totals:  # the spread the throughput chart draws as whiskers (the figures stay medians)
        result.step_time_s["total_min"], result.step_time_s["total_max"] = min(totals), max(totals)
    result.step_time_s["steps"] = len(per_step)
    result.tokens_per_s = tokens_per_second(tokens, totals)
    result.tokens_per_s_stats = rate_stats(tokens, totals)
    svd_refresh_time(result, opt, device)
    if device.type == "cuda":
        from ngl_profile.zoo.gpus import match_device_name

        here = match_device_name(torch.cuda.get_device_name(device))
        peak = here.bf16_tflops if here else None
        result.step_time_s["mfu_peak_tflops"] = peak
        result.mfu = model_flops_utilization(result.flops_per_token, result.tokens_per_s, peak)
        energy = result.nvml.get("energy_j")
        if energy and result.tokens_per_s:
            result.nvml["tokens_per_joule"] = tokens * len(per_step) / energy
    import resource

    # peak resident set of this case's process (Linux reports KiB)
    result.host_rss_peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def svd_refresh_time(result, opt, device) -> None:
    """Seconds the projector refresh adds to a step every update_proj_gap steps: one SVD per
    distinct low-rank shape and SVD method (the call our optimizers and galore-torch make, on
    random data of that shape: its cost does not depend on the values), times how many parameters
    have it. Timed apart from the steady steps, which a refresh hits only once every T steps."""
    from collections import Counter

    from ngl_profile.optim.projector import clamp_rank, compute_basis, resolve_side

    inner = getattr(opt, "optimizers", None) or [opt]
    shapes, gaps = Counter(), set()
    for o in inner:
        for g in o.param_groups:
            if g.get("rank") is None:
                continue
            gaps.add(g.get("update_proj_gap", 200))
            for p in g["params"]:
                if p.dim() >= 2:
                    side = resolve_side(p.shape, g.get("proj_type", "std"))
                    ranks = clamp_rank(tuple(p.shape), g["rank"], side)
                    shapes[(tuple(p.shape), p.dtype, side, ranks, g.get("svd", "full"))] += 1
    if not shapes:
        return
    total = 0.0
    try:
        for (shape, dtype, side, ranks, method), count in shapes.items():
            x = torch.randn(shape, device=device).to(dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            compute_basis(x, ranks, side, method)
            if device.type == "cuda":
                torch.cuda.synchronize()
            total += (time.perf_counter() - t0) * count
            del x
    except torch.OutOfMemoryError:
        result.step_time_s["svd_refresh"] = None  # no room left for the SVD workspace: not measured
        return
    result.step_time_s["svd_refresh"] = total
    result.step_time_s["svd_refresh_amortized"] = total / min(gaps)


def roofline_projection(result, gpu, tokens) -> None:
    """Roofline upper bound for the target GPU: the step's counted FLOPs (forward, backward and the
    optimizer's projections) at 100 % of its dense bf16 peak, plus one read and write of weights,
    gradients and optimizer state at full bandwidth."""
    if not result.step_flops:
        return
    if gpu.bf16_tflops is None or gpu.bandwidth_gbs is None:  # a memory size only: no speed to project with
        result.projected = None
        return
    m = result.memory_bytes
    step_bytes = 2 * sum(m[c] for c in ("weights", "grads", "moments", "quant_stats", "projectors", "history"))
    t = result.step_flops / (gpu.bf16_tflops * 1e12) + step_bytes / (gpu.bandwidth_gbs * 1e9)
    result.projected = {"tokens_per_s_upper_bound": tokens / t, "gpu": gpu.name,
                        "assumptions": f"roofline: the step's counted FLOPs (optimizer included) at 100% of "
                                       f"{gpu.bf16_tflops} TFLOP/s dense bf16, plus 2 × state bytes per step at "
                                       f"{gpu.bandwidth_gbs} GB/s; an upper bound, not a measurement"}
