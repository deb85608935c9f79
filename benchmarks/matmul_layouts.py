"""The GaLore step's two matmuls per matrix, each in the layouts that compute the same product.

    python benchmarks/matmul_layouts.py [--model llama-60m] [--rank 128] [--rounds 15]

For each distinct block-matrix shape of the model: the projection as ours runs it (left: Pᵀ∇,
right: ∇Qᵀ) and transposed ((∇ᵀP)ᵀ, (Q∇ᵀ)ᵀ: the same values, not contiguous), and the back-projection
fused into the update (p.addmm_) and the same update on pᵀ. Every variant runs five times per round,
the variants in turn within each round. Medians and IQRs over the rounds; ms per call.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ngl_profile.optim.projector import resolve_side


def variants(m: int, n: int, rank: int, gen: torch.Generator) -> dict[str, callable]:
    g, p = torch.randn(m, n, generator=gen), torch.randn(m, n, generator=gen)
    if resolve_side((m, n), "std") == "right":
        q, low = torch.randn(rank, n, generator=gen), torch.randn(m, rank, generator=gen)
        return {"project ∇Qᵀ (ours)": lambda: g @ q.t(), "project (Q∇ᵀ)ᵀ": lambda: (q @ g.t()).t(),
                "update p.addmm_(low, Q) (ours)": lambda: p.addmm_(low, q, alpha=-1e-9),
                "update pᵀ.addmm_(Qᵀ, lowᵀ)": lambda: p.t().addmm_(q.t(), low.t(), alpha=-1e-9)}
    b, low = torch.randn(m, rank, generator=gen), torch.randn(rank, n, generator=gen)
    return {"project Pᵀ∇ (ours)": lambda: b.t() @ g, "project (∇ᵀP)ᵀ": lambda: (g.t() @ b).t(),
            "update p.addmm_(P, low) (ours)": lambda: p.addmm_(b, low, alpha=-1e-9),
            "update pᵀ.addmm_(lowᵀ, Pᵀ)": lambda: p.t().addmm_(low.t(), b.t(), alpha=-1e-9)}


def main() -> None:
    from optimizer_step import block_shapes  # benchmarks/ is on the path when run as a script

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-60m")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    cases = {}
    for m, n in dict.fromkeys(block_shapes(args.model)):
        for name, fn in variants(m, n, args.rank, gen).items():
            cases[(m, n, name)] = fn
    times = {k: [] for k in cases}
    for fn in cases.values():
        for _ in range(5):
            fn()
    for _ in range(args.rounds):
        for key, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(5):
                fn()
            times[key].append((time.perf_counter() - t0) / 5)
    print(f"{args.model}, rank {args.rank}, float32, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median and IQR of {args.rounds} rounds, ms per call")
    for (m, n, name), ts in times.items():
        q1, med, q3 = statistics.quantiles(ts, n=4)
        print(f"{m:>5}×{n:<5} {name:<34}{statistics.median(ts) * 1e3:>8.3f}   IQR {q1 * 1e3:.3f}–{q3 * 1e3:.3f}")


if __name__ == "__main__":
    main()
