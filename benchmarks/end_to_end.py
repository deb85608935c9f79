"""End-to-end training-step throughput of Natural GaLore vs AdamW, side by side in one process.

    python benchmarks/end_to_end.py [--model llama-60m] [--batch 8] [--seq 256] [--rounds 5] [--steps 3]

Two copies of the same randomly initialised model, one per optimizer, stepped in alternating rounds
(forward + backward + optimizer step on the same batch); reported: median tokens/s of each and the
ratio. The projector refresh is excluded (update_proj_gap larger than the run; its first step is
warm-up). On a CUDA GPU every round is synchronised before its clock is read.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ngl_profile.zoo.models import build_model, get_model, make_batch
from ngl_profile.zoo.optimizers import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-60m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rank = get_model(args.model).default_rank
    runs = {}
    for name, hp in (("adamw", {}), ("natural-galore", {"rank": rank, "history_size": args.history,
                                                         "update_proj_gap": 10**9})):
        torch.manual_seed(0)
        model = build_model(args.model, dtype, device=device)
        # target: each optimizer's kernel path on this device (torch AdamW: foreach on CUDA)
        runs[name] = {"model": model, "opt": build(name, model, target=device.type, lr=1e-3, **hp), "times": []}
    batch = make_batch(args.model, args.batch, args.seq, device=device, generator=torch.Generator(device).manual_seed(0))

    def step(r):
        r["model"](**batch).loss.backward()
        r["opt"].step()
        r["opt"].zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for r in runs.values():  # warm-up: state allocation and the one SVD refresh
        step(r)
    for _ in range(args.rounds):
        for r in runs.values():
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(r)
            sync()
            r["times"].append((time.perf_counter() - t0) / args.steps)
    tokens = args.batch * args.seq
    tps = {n: tokens / statistics.median(r["times"]) for n, r in runs.items()}
    print(f"{args.model}, batch {args.batch} × seq {args.seq}, {args.dtype}, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; rank {rank}, s={args.history}; median of {args.rounds} rounds × "
          f"{args.steps} steps")
    for n, v in tps.items():
        print(f"{n:<16}{v:>12,.0f} tokens/s")
    print(f"natural-galore / adamw = {tps['natural-galore'] / tps['adamw']:.3f}")


if __name__ == "__main__":
    main()
