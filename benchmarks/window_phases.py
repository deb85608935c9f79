"""Where the window's part of a Natural GaLore step goes: timers around each phase of the step.

    python benchmarks/window_phases.py [--model llama-60m] [--rank 128] [--s 10] [--rounds 30]

Two optimizers over copies of the model's block matrices (llama-60m: 56), one without a window
(s = 0, plain GaLore) and one with (s = 10), stepped in alternating rounds, one step each, so that a
drifting machine slows both alike. Each phase of the step is timed by wrapping the function that
runs it: the projections (`_project`), the stores of the new columns (`natural.store`), the Gram
rows (`natural.update_grams`), the batched solve (`natural.weights`), g̃ (`natural.combine_all`, the
time spent making each batch) and Adam with the back-projection (`_finish`). The read rate of a plain
`x.sum()` over 256 MB is measured at the start of every round; the window part (s = 10 step minus s = 0
step of the same round) is set against two reads of the window at that rate. Then, on the stepped
windows alone, 200 calls each: the batched solve, and the arena membership (`natural.plan`).
Medians over the rounds (IQR for the window part).
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time

import torch

from ngl_profile.optim import NaturalGaLoreAdamW, natural
from ngl_profile.optim import optimizer as optimizer_module
from ngl_profile.zoo.models import get_model

PHASES = {natural: ("store", "update_grams", "weights"),
          optimizer_module._NaturalGaLore: ("_project", "_finish")}


def timed(spent: dict[str, float]) -> None:
    """Wrap every phase so that its seconds add up in `spent` (combine_all: a generator, timed per batch)."""
    def wrap(owner, name):
        fn = getattr(owner, name)

        def inner(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[name] += time.perf_counter() - t0
            return out
        setattr(owner, name, inner)

    for owner, names in PHASES.items():
        for name in names:
            wrap(owner, name)
    combine_all = natural.combine_all

    def batches(*a, **k):
        it = combine_all(*a, **k)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                spent["combine_all"] += time.perf_counter() - t0
                return
            spent["combine_all"] += time.perf_counter() - t0
            yield item
    natural.combine_all = batches


def per_call(fn, calls: int = 200) -> float:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    from optimizer_step import block_shapes  # benchmarks/ is on the path when run as a script

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-60m")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--s", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    try:
        get_model(args.model)
    except ValueError as e:
        print(f"window_phases.py: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    gen = torch.Generator().manual_seed(0)
    shapes = block_shapes(args.model)
    grads = [torch.randn(*sh, generator=gen) * 0.01 for sh in shapes]
    opts = {}
    for s in (0, args.s):
        ps = [torch.nn.Parameter(torch.randn(*sh, generator=gen) * 0.02) for sh in shapes]
        for p, g in zip(ps, grads):
            p.grad = g
        opts[s] = NaturalGaLoreAdamW([{"params": ps, "rank": args.rank, "history_size": s,
                                       "update_proj_gap": 10**9}], lr=1e-3)
        for _ in range(40):  # the windows filled, the kernels compiled and chosen (choice.py)
            opts[s].step()
    spent: dict[str, float] = collections.defaultdict(float)
    timed(spent)
    x = torch.ones(64 << 20)
    x.sum()
    states = [st for st in opts[args.s].state.values() if "history" in st]
    window = sum(st["history"].numel() * st["history"].element_size() for st in states)
    phases = {s: collections.defaultdict(list) for s in opts}
    steps = {s: [] for s in opts}
    reads = []
    for _ in range(args.rounds):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t0)
        reads.append(x.numel() * x.element_size() / best)
        for s, opt in opts.items():
            spent.clear()
            t0 = time.perf_counter()
            opt.step()
            steps[s].append(time.perf_counter() - t0)
            for name, sec in spent.items():
                phases[s][name].append(sec)
    print(f"{args.model}: {len(shapes)} matrices, rank {args.rank}, float32, window s = {args.s}: "
          f"{window / 1e6:.0f} MB; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.rounds} rounds, s = 0 and s = {args.s} stepped in turn")
    names = ["_project", "store", "update_grams", "weights", "combine_all", "_finish"]
    print(f"{'s':>3}{'step ms':>10}" + "".join(f"{n:>14}" for n in names))
    for s in opts:
        cells = "".join(f"{statistics.median(phases[s][n]) * 1e3:>14.2f}" if phases[s][n] else f"{'—':>14}"
                        for n in names)
        print(f"{s:>3}{statistics.median(steps[s]) * 1e3:>10.2f}{cells}")
    parts = [a - b for a, b in zip(steps[args.s], steps[0])]
    ratios = sorted(p * bw / (2 * window) for p, bw in zip(parts, reads))
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    print(f"window part (s = {args.s} step − s = 0 step, per round): {statistics.median(parts) * 1e3:.2f} ms, "
          f"{statistics.median(ratios):.2f}× two reads of the window (IQR {q1:.2f}–{q3:.2f}) at the round's "
          f"read rate (median {statistics.median(reads) / 1e9:.1f} GB/s)")
    w_states = [opts[args.s].state[p] for p in opts[args.s].param_groups[0]["params"]]
    lams = [1e-6] * len(w_states)
    requests = ["auto"] * len(w_states)
    solve = per_call(lambda: natural.weights(w_states, lams))
    plan = per_call(lambda: natural.plan(w_states, requests))
    print(f"alone, 200 calls each: the batched solve {solve * 1e3:.3f} ms, the arena membership "
          f"(natural.plan) {plan * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
