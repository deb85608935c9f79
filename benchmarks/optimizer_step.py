"""Steady-state optimizer step time, ratios measured side by side in one process.

    python benchmarks/optimizer_step.py [--model llama-60m] [--rank 128] [--rounds 7] [--steps 5]

Every optimizer gets its own copy of the model's block matrices (llama-60m: 56 matrices), the same
gradients, and is timed for `--steps` steps per round; rounds alternate between optimizers so drift
in machine speed hits all of them alike. Reported: median seconds per step and the ratio to
galore-torch's GaLoreAdamW and to torch AdamW. The projector refresh (SVD) is excluded from the
steady state (update_proj_gap is larger than the run) and timed separately.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ngl_profile.zoo.models import get_model
from ngl_profile.optim import NaturalGaLoreAdamW


def block_shapes(model: str) -> list[tuple[int, int]]:
    cfg = get_model(model).config
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    per_layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # q k v o gate up down
    return per_layer * cfg["num_hidden_layers"]


class OfficialStyle(NaturalGaLoreAdamW):
    """The official code's way, for timing only: the history list is stacked into G every step and
    the printed formula is evaluated in float32 (numerically meaningless at LLM gradient norms).
    Built with history_size 0 (plain GaLore) plus this correction on the projected gradient."""

    def __init__(self, params, history_size: int, **kwargs):
        super().__init__(params, **kwargs)
        self.history_size = history_size

    def _finish(self, p, group, g, side):
        if side is not None:
            g = self._official(self.state[p], g)
        super()._finish(p, group, g, side)

    def _official(self, state, g):
        hist = state.setdefault("hist_list", [])
        hist.append(g.reshape(-1).clone())
        del hist[: -self.history_size]
        G = torch.stack(hist, dim=1).float()  # k×s, rebuilt every step (solve needs float32)
        lam = 1e-3
        S = lam * torch.eye(G.shape[1]) + G.t() @ G
        # solve_ex: with the benchmark's repeated gradient S is singular in float32 and solve() raises
        # (ours: float64 Gram + Cholesky with damping backoff); this class is only timed
        z = torch.linalg.solve_ex(S, G.t() @ G[:, -1])[0]
        return ((G[:, -1] - G @ z) / lam).view(g.shape).to(g.dtype)


def candidates(rank: int, gap: int):
    def ours(s, svd="full", history_dtype="float32"):
        return lambda ps: NaturalGaLoreAdamW([{"params": ps, "rank": rank, "update_proj_gap": gap,
                                               "scale": 0.25, "history_size": s, "svd": svd,
                                               "history_dtype": history_dtype}], lr=1e-3)

    def official(ps):
        return OfficialStyle([{"params": ps, "rank": rank, "update_proj_gap": gap, "scale": 0.25,
                               "history_size": 0}], history_size=10, lr=1e-3)

    out = {"adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3), "galore (ours, s=0)": ours(0),
           "natural-galore (s=10)": ours(10), "natural-galore lowrank": ours(10, "lowrank"),
           "n-g bf16 window": ours(10, history_dtype="bfloat16"), "n-g int8 window": ours(10, history_dtype="int8"),
           "official-style s=10": official}
    try:
        from galore_torch import GaLoreAdamW

        out["galore-torch"] = lambda ps: GaLoreAdamW(
            [{"params": ps, "rank": rank, "update_proj_gap": gap, "scale": 0.25, "proj_type": "std"}],
            lr=1e-3, eps=1e-8, no_deprecation_warning=True)
    except ImportError:
        print("galore-torch not installed (pip install 'ngl-profile[peers]'): no ratio to it")
    return out


def compile_kernels(dtype, device) -> None:
    """Compile our kernels (kernels.py) once up front, so no first step below includes it."""
    for history_dtype in ("float32", "bfloat16", "int8"):
        ps = [torch.nn.Parameter(torch.randn(24, 16, device=device, dtype=dtype))]
        opt = NaturalGaLoreAdamW([{"params": ps, "rank": 4, "history_size": 3, "history_dtype": history_dtype}])
        for _ in range(4):
            ps[0].grad = torch.randn_like(ps[0])
            opt.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-60m")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights and gradients (bfloat16: the paper's training dtype)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    shapes = block_shapes(args.model)
    dtype = getattr(torch, args.dtype)
    grads = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    gap = 10**9  # steady state: the refresh happens once, on the first (warm-up) step
    compile_kernels(dtype, device)
    runs = {}
    for name, make in candidates(args.rank, gap).items():
        ps = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype)) for s in shapes]
        opt = make(ps)
        for p, g in zip(ps, grads):
            p.grad = g
        sync(device)
        t0 = time.perf_counter()
        opt.step()  # warm-up: allocates state, and for the low-rank ones runs every SVD
        sync(device)
        runs[name] = {"opt": opt, "first": time.perf_counter() - t0, "times": []}
    for _ in range(args.rounds):
        for name, run in runs.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run["opt"].step()
            sync(device)
            run["times"].append((time.perf_counter() - t0) / args.steps)
    med = {n: statistics.median(r["times"]) for n, r in runs.items()}
    print(f"{args.model} block matrices ({len(shapes)}), {args.dtype}, rank {args.rank}, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds "
          f"× {args.steps} steps")
    print(f"{'optimizer':<24}{'s/step':>10}{'× galore-torch':>16}{'× adamw':>10}{'first step s':>14}")
    for name, t in med.items():
        vs_gt = f"{t / med['galore-torch']:.3f}" if "galore-torch" in med else "n/a"
        print(f"{name:<24}{t:>10.4f}{vs_gt:>16}{t / med['adamw']:>10.3f}{runs[name]['first']:>14.3f}")
    print("first step: every SVD and the state allocation (the compiled kernels were compiled before)")


if __name__ == "__main__":
    main()
