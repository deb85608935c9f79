"""Steady-state optimizer step time, ratios measured side by side in one process.

    python benchmarks/optimizer_step.py [--model llama-60m] [--rank 128] [--rounds 7] [--steps 5]
                                        [--kernels auto|native|compiled|eager|each]

Every optimizer gets its own copy of the model's block matrices (llama-60m: 56 matrices), the same
gradients, and is timed for `--steps` steps per round; rounds alternate between optimizers so drift
in machine speed hits all of them alike. Reported: median seconds per step and the ratio to
galore-torch's GaLoreAdamW and to torch AdamW. The projector refresh (SVD) is excluded from the
steady state (update_proj_gap is larger than the run) and timed separately.

Beside each time: its floor, the bytes the step must move at least (`step_bytes`) over the read
bandwidth measured in this process (best of a plain x.sum() over 256 MB), and their ratio. The
GaLore rows are bound by their two matmuls, not by bytes (so that ratio is well above 1): `×
matmuls` compares them with those matmuls alone (`matmul_pass`, timed in every round), and the
line below the table says how close to galore-torch any GaLore step could come; the
window rows below the table isolate what the window costs: (s = 10 step) − (s = 0 step) in the
same round, against two reads of the window at the read rate measured at the start of that round
(a noisy machine's drift cancels in the pair); medians and interquartile ranges over the rounds. Beside
them, `× moved`: the window part against everything it cannot avoid moving, the two reads plus the
new column written into the window and g̃ written and read (for llama-60m's fp32 window, 582 MB
against the two reads' 506 MB; each byte counted once, so an allocating write's extra read is not). `--kernels` sets NGL_PROFILE_KERNELS for the windowed rows; `each` runs
them once per choice (native, compiled, eager, auto) side by side, so a run shows which the chooser
(ngl_profile/optim/choice.py: each optimizer times its own steps, before the timed rounds) picked
and whether it was the faster.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from ngl_profile.zoo.models import get_model
from ngl_profile.optim import NaturalGaLoreAdamW, choice, native, natural


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
        S = lam * torch.eye(G.shape[1], device=G.device) + G.t() @ G
        # solve_ex: with the benchmark's repeated gradient S is singular in float32 and solve() raises
        # (ours: float64 Gram + Cholesky with damping backoff); this class is only timed
        z = torch.linalg.solve_ex(S, G.t() @ G[:, -1])[0]
        return ((G[:, -1] - G @ z) / lam).view(g.shape).to(g.dtype)


def candidates(rank: int, gap: int, modes: tuple[str, ...]):
    def ours(s, svd="full", history_dtype="float32"):
        return lambda ps: NaturalGaLoreAdamW([{"params": ps, "rank": rank, "update_proj_gap": gap,
                                               "scale": 0.25, "history_size": s, "svd": svd,
                                               "history_dtype": history_dtype}], lr=1e-3)

    def official(ps):
        return OfficialStyle([{"params": ps, "rank": rank, "update_proj_gap": gap, "scale": 0.25,
                               "history_size": 0}], history_size=10, lr=1e-3)

    out = {"adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3), "galore (ours, s=0)": ours(0)}
    for mode in modes:
        tag = "" if len(modes) == 1 else f" [{mode}]"
        out |= {f"natural-galore (s=10){tag}": ours(10), f"n-g bf16 window{tag}": ours(10, history_dtype="bfloat16"),
                f"n-g int8 window{tag}": ours(10, history_dtype="int8")}
    out |= {"natural-galore lowrank": ours(10, "lowrank"), "official-style s=10": official}
    try:
        from galore_torch import GaLoreAdamW

        out["galore-torch"] = lambda ps: GaLoreAdamW(
            [{"params": ps, "rank": rank, "update_proj_gap": gap, "scale": 0.25, "proj_type": "std"}],
            lr=1e-3, eps=1e-8, no_deprecation_warning=True)
    except ImportError:
        print("galore-torch not installed (pip install 'ngl-profile[peers]'): no ratio to it")
    return out


def compile_kernels(device) -> None:
    """Compile our window kernels (kernels.py) and build window.c (native.py) once up front, so no
    timed step includes it: one window per storage dtype, large enough for the kernels to be used."""
    native.available()
    for storage in natural.HISTORY_DTYPES:
        state = {}
        natural.init_window(state, 1 << 15, 4, storage, device)
        natural.push(state, torch.ones(1 << 15, device=device), compiled=True)
        natural.combine(state, torch.ones(4, dtype=torch.float64, device=device), compiled=True)


def read_bandwidth(device, x: torch.Tensor | None = None, reads: int = 5) -> float:
    """Bytes per second a plain x.sum() reads from a 256 MB buffer (best of `reads`): the floor's rate."""
    if x is None:
        x = torch.ones(64 << 20, device=device)
        x.sum()  # faults the pages in
    best = float("inf")
    for _ in range(reads):
        sync(device)
        t0 = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return x.numel() * x.element_size() / best


def _low_ranks(shapes, rank: int):
    """The projected gradient's length k of every matrix."""
    return [min(m, rank) * n if m < n else m * min(n, rank) for m, n in shapes]


def _window_item(name: str) -> int:
    return {"bf16": 2, "int8": 1}.get(next((t for t in ("bf16", "int8") if t in name), ""), 4)


def window_bytes(name: str, shapes, rank: int) -> int:
    """Two reads of the s = 10 window of row `name`: the window part's floor."""
    return sum(2 * 10 * k * _window_item(name) for k in _low_ranks(shapes, rank))


def window_moved_bytes(name: str, shapes, rank: int, itemsize: int) -> int:
    """What the window part must move besides those two reads, too: the new column written into
    the window, and g̃ written (by G·w) and read (by Adam)."""
    return window_bytes(name, shapes, rank) + sum(k * _window_item(name) + 2 * k * itemsize
                                                  for k in _low_ranks(shapes, rank))


def step_bytes(name: str, shapes, rank: int, itemsize: int) -> int:
    """The bytes a step of row `name` must move at least. AdamW: p, m, v read and written, ∇ read.
    GaLore: ∇ read by the projection, p read and written by the back-projection, and Adam on the
    projected gradient (g, M, V in and out, N written and read); + for a window of s = 10: its two
    reads (Gram row, G·w), the new column written, g̃ written and read (window_moved_bytes)."""
    if name == "adamw":
        return 7 * itemsize * sum(m * n for m, n in shapes)
    total = sum(3 * m * n * itemsize + 8 * k * itemsize for (m, n), k in zip(shapes, _low_ranks(shapes, rank)))
    if "natural" in name or "n-g" in name or "official" in name:
        total += window_moved_bytes(name, shapes, rank, itemsize)
    return total


def matmul_pass(shapes, rank: int, device, dtype):
    """The two matmuls every GaLore-family step runs per matrix, alone: the projection (g = Pᵀ∇ or
    ∇Qᵀ; into a buffer made once, where ours allocates it each step and a window copies it in) and
    the back-projection fused into the update (addmm_ onto a copy of the weights, as ours runs it).
    Its time is a compute floor: these rows are bound by their matmuls, not by bytes, and
    galore-torch runs the same products (unfused). It holds a copy of ∇ and of the weights."""
    from ngl_profile.optim.projector import resolve_side

    gen = torch.Generator(device=device).manual_seed(1)
    work = []
    for m, n in shapes:
        grad = torch.randn(m, n, generator=gen, device=device, dtype=dtype)
        p = torch.randn(m, n, generator=gen, device=device, dtype=dtype)
        if resolve_side((m, n), "std") == "right":
            basis = torch.randn(min(rank, n), n, generator=gen, device=device, dtype=dtype)
            low = torch.empty(m, basis.shape[0], device=device, dtype=dtype)
            work.append(lambda g=grad, q=basis, o=low, p=p: (torch.mm(g, q.t(), out=o), p.addmm_(o, q, alpha=-1e-9)))
        else:
            basis = torch.randn(m, min(rank, m), generator=gen, device=device, dtype=dtype)
            low = torch.empty(basis.shape[1], n, device=device, dtype=dtype)
            work.append(lambda g=grad, b=basis, o=low, p=p: (torch.mm(b.t(), g, out=o), p.addmm_(b, o, alpha=-1e-9)))

    def run():
        for w in work:
            w()
    return run


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
    ap.add_argument("--kernels", default="auto", choices=[*choice.MODES, "each"],
                    help="the window kernels of the windowed rows (NGL_PROFILE_KERNELS); each: one row per choice")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    shapes = block_shapes(args.model)
    dtype = getattr(torch, args.dtype)
    grads = [torch.randn(s, device=device, dtype=dtype) for s in shapes]
    gap = 10**9  # steady state: the refresh happens once, on the first (warm-up) step
    modes = choice.MODES[1:] + ("auto",) if args.kernels == "each" else (args.kernels,)
    compile_kernels(device)
    bandwidth = read_bandwidth(device)
    runs = {}
    for name, make in candidates(args.rank, gap, modes).items():
        mode = next((m for m in modes if name.endswith(f"[{m}]")), args.kernels if args.kernels != "each" else "auto")
        os.environ[choice.ENV] = mode
        ps = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype)) for s in shapes]
        opt = make(ps)
        for p, g in zip(ps, grads):
            p.grad = g
        sync(device)
        t0 = time.perf_counter()
        opt.step()  # warm-up: allocates state, and for the low-rank ones runs every SVD
        sync(device)
        first = time.perf_counter() - t0
        # fill s = 10, then the chooser's trials, then window.c's prefetch trials (native.py)
        for _ in range(10 + len(choice.candidates(device)) * (choice.TRIALS + 1)
                       + native.PREFETCH_TRIES * len(native.PREFETCH_CANDIDATES)):
            opt.step()
        runs[name] = {"opt": opt, "first": first, "times": [], "mode": mode}
        # as it goes: where a run is cut short (a device machine's time limit), what was ready shows
        print(f"ready: {name} (first step {first:.2f} s)", file=sys.stderr, flush=True)
    probe = torch.ones(64 << 20, device=device)
    matmuls = matmul_pass(shapes, args.rank, device, dtype)
    matmuls()
    round_bandwidth = []  # the read rate in each round: the window part's floor is taken per round
    matmul_times = []
    for _ in range(args.rounds):
        round_bandwidth.append(read_bandwidth(device, probe, reads=2))
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            matmuls()
        sync(device)
        matmul_times.append((time.perf_counter() - t0) / args.steps)
        for name, run in runs.items():
            os.environ[choice.ENV] = run["mode"]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run["opt"].step()
            sync(device)
            run["times"].append((time.perf_counter() - t0) / args.steps)
    os.environ.pop(choice.ENV)
    med = {n: statistics.median(r["times"]) for n, r in runs.items()}
    itemsize = torch.empty((), dtype=dtype).element_size()
    print(f"{args.model} block matrices ({len(shapes)}), {args.dtype}, rank {args.rank}, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds "
          f"× {args.steps} steps; read bandwidth {bandwidth / 1e9:.1f} GB/s (x.sum() over 256 MB)")
    mm = statistics.median(matmul_times)
    print(f"{'optimizer':<32}{'ms/step':>9}{'floor ms':>10}{'× floor':>9}{'× matmuls':>11}{'× galore-torch':>16}"
          f"{'× adamw':>9}{'first step s':>14}")
    for name, t in med.items():
        floor = step_bytes(name, shapes, args.rank, itemsize) / bandwidth
        vs_gt = f"{t / med['galore-torch']:.3f}" if "galore-torch" in med else "n/a"
        vs_mm = "n/a" if name == "adamw" else f"{t / mm:.2f}"
        print(f"{name:<32}{t * 1e3:>9.2f}{floor * 1e3:>10.2f}{t / floor:>9.2f}{vs_mm:>11}{vs_gt:>16}"
              f"{t / med['adamw']:>9.3f}{runs[name]['first']:>14.3f}")
    print("first step: every SVD and the state allocation (the window kernels were compiled and built before)")
    q1, _, q3 = statistics.quantiles(matmul_times, n=4) if len(matmul_times) > 1 else (mm,) * 3
    print(f"× matmuls: against the GaLore rows' two matmuls per matrix alone, {mm * 1e3:.2f} ms "
          f"(IQR {q1 * 1e3:.2f}–{q3 * 1e3:.2f}), timed in every round (projection, then back-projection "
          f"fused into the update, as ours runs them)")
    if "galore-torch" in med:
        print(f"a GaLore step cannot beat its matmuls: the lowest possible × galore-torch here is "
              f"{mm / med['galore-torch']:.3f}")
    print(f"\n{'window part (row − galore s=0)':<32}{'ms/step':>9}{'floor ms':>10}{'× floor':>9}"
          f"{'IQR × floor':>15}{'× moved':>9}")
    base = runs["galore (ours, s=0)"]["times"]
    for name, run in runs.items():
        if name.startswith(("natural-galore (s=10)", "n-g")):
            nbytes = window_bytes(name, shapes, args.rank)
            parts = [t - t0 for t, t0 in zip(run["times"], base)]  # the same round: seconds apart
            ratios = sorted(part * bw / nbytes for part, bw in zip(parts, round_bandwidth))
            q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            floor = nbytes / statistics.median(round_bandwidth)
            moved = window_moved_bytes(name, shapes, args.rank, itemsize)
            print(f"{name:<32}{statistics.median(parts) * 1e3:>9.2f}{floor * 1e3:>10.2f}"
                  f"{statistics.median(ratios):>9.2f}{f'{q1:.2f}–{q3:.2f}':>15}"
                  f"{statistics.median(part * bw / moved for part, bw in zip(parts, round_bandwidth)):>9.2f}")
    print("window part: per round, the row's step minus galore s=0's step in the same round; its floor: two "
          "reads of the window (Gram row, then g̃ = G·w) at the read rate measured at the start of that round "
          f"(median {statistics.median(round_bandwidth) / 1e9:.1f} GB/s); medians over the rounds; × moved: "
          "against the bytes the window part cannot avoid moving at that rate, the two reads plus the new "
          "column written and g̃ written and read (writes counted once, as reads)")
    picked = {n: r["opt"].kernel_choice for n, r in runs.items()
              if r["mode"] == "auto" and hasattr(r["opt"], "kernel_choice")}
    print_choices(f"kernel choices of the auto rows (each optimizer times its own steps with each of "
                  f"{', '.join(choice.candidates(device))} window passes, median of the trial steps; choice.py)",
                  {n: (c["choice"], {m: f"{sec * 1e3:.1f} ms" for m, sec in c["median_step_s"].items()})
                   for n, c in picked.items()})
    print_choices(f"window.c's prefetch distance per pass and arena, kept after {native.PREFETCH_TRIES} timed "
                  f"calls at each (their medians; optim/native.py)",
                  {n: (f"{c['bytes']} B ahead", {f"{d} B": f"{sec * 1e3:.2f} ms" for d, sec in c["seconds"].items()})
                   for n, c in native.prefetch_choice().items()})


def print_choices(title: str, rows: dict[str, tuple[str, dict[str, str]]]) -> None:
    """name → what was kept (each candidate and its time), under `title`; nothing if no rows."""
    if rows:
        print(f"\n{title}:")
        for name, (kept, timed) in rows.items():
            print(f"  {name:<40}→ {str(kept):<12} ({', '.join(f'{k} {v}' for k, v in timed.items())})")


if __name__ == "__main__":
    main()
