"""What the profiler costs the steps it times, measured side by side in one process.

    python benchmarks/profiler_overhead.py [--model llama-60m] [--rounds 7] [--steps 3]

The runner times steps with PhaseTimer (CUDA events or perf_counter per phase) while the NVML
sampler thread reads the GPU at 10 Hz; memory tracking (a TorchDispatchMode) runs only on its own,
untimed steps. Reported: step time with timer + sampler on over off (the runner's overhead on what
it reports), and, for information, the tracked step over a plain one.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ngl_profile.measure.memory import MemoryTracker
from ngl_profile.measure.nvml import NvmlSampler
from ngl_profile.measure.timing import PhaseTimer
from ngl_profile.zoo.models import build_model, make_batch
from ngl_profile.zoo.optimizers import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-60m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(args.model, dtype, device=device)
    opt = build("natural-galore", model, rank=128, history_size=10, update_proj_gap=10**9)
    batch = make_batch(args.model, args.batch, args.seq, device=device)
    timer = PhaseTimer(device)
    nvml = NvmlSampler()
    tracker = MemoryTracker()
    tracker.attach(model)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain():
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed():
        with timer.phase("forward"):
            loss = model(**batch).loss
        with timer.phase("backward"):
            loss.backward()
        with timer.phase("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        timer.finish_step()

    def tracked():
        with tracker:
            plain()

    def sampled_timed():
        nvml.start()
        try:
            timed()
        finally:
            nvml.stop()

    variants = {"off": plain, "timer + NVML sampler": sampled_timed, "memory tracker": tracked}
    times = {k: [] for k in variants}
    plain()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    nvml_state = 'on' if nvml.available else f'unavailable ({nvml.reason})'
    print(f"{args.model}, batch {args.batch} × seq {args.seq}, {device}, NVML {nvml_state}; "
          f"median of {args.rounds} rounds × {args.steps} steps")
    for k, v in med.items():
        print(f"{k:<24}{v:>9.4f} s/step  {v / med['off']:.3f}× off")


if __name__ == "__main__":
    main()
