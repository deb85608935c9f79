"""The window's two passes alone, against a plain read of the same bytes.

    python benchmarks/window_passes.py [--model llama-60m] [--rank 128] [--s 10] [--rounds 9]
                                       [--storage float32|bfloat16|int8]

One s×k window per block matrix of the model (llama-60m: 56) in the storage dtype (int8: with
per-column scales), filled with random values; timed back to back over all of them, as a step runs
them (together they outgrow the cache): a plain `x.sum()` of every window's bytes read as float32
(the read floor, the same bytes whatever the storage), every compiled Gram row, every compiled g̃ = G·w, both
passes phased (all Gram rows, then all g̃) and paired (each window's two passes back to back: the
second reads it from the cache), one call per window; then the same windows packed into arenas by
shape, as the optimizer keeps them (natural.init_windows), each pass one call per arena (`arena
…` rows; g̃ in batches of natural._COMBINE_BYTES, as the step makes them). Every pass twice: by
the compiled kernels (inductor) and, where window.c builds, by the native ones (`native …` rows,
optim/native.py). Rounds cycle through every row, so drift hits all alike; medians and minima of
`--rounds` rounds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from ngl_profile.optim import kernels, natural
from ngl_profile.optim import native as native_kernels
from ngl_profile.zoo.models import get_model


def projected_sizes(model: str, rank: int) -> list[int]:
    from optimizer_step import block_shapes  # benchmarks/ is on the path when run as a script

    return [min(m, rank) * n if m < n else m * min(n, rank) for m, n in block_shapes(model)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-60m")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--s", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--storage", default="float32", choices=list(natural.HISTORY_DTYPES))
    args = ap.parse_args()
    try:
        get_model(args.model)  # an unknown name is one line, before anything is allocated
    except ValueError as e:
        print(f"window_passes.py: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    gen = torch.Generator().manual_seed(0)
    dtype = natural.HISTORY_DTYPES[args.storage]
    windows = [torch.randn(args.s, k, generator=gen) for k in projected_sizes(args.model, args.rank)]
    if dtype == torch.int8:
        windows = [(30 * x).round().clamp(-127, 127).to(dtype) for x in windows]
    else:
        windows = [x.to(dtype) for x in windows]
    scales = [torch.rand(args.s, generator=gen) + 0.5 if dtype == torch.int8 else None for _ in windows]
    w = torch.randn(args.s, dtype=torch.float64, generator=gen)
    if any((x.shape[1] * x.element_size()) % 4 for x in windows):
        print("window_passes.py: a window row is not a whole number of float32 words", file=sys.stderr)
        raise SystemExit(2)

    def read():
        for x in windows:
            x.view(torch.float32).sum()

    by_k: dict[int, list[torch.Tensor]] = {}
    for x in windows:
        by_k.setdefault(x.shape[1], []).append(x)
    arenas = [torch.stack(xs) for xs in by_k.values()]  # P×s×k, the layout of the optimizer's arenas
    weights = [w.expand(a.shape[0], -1).contiguous() for a in arenas]
    arena_scales = [None if dtype != torch.int8 else torch.rand(a.shape[:2], generator=gen) + 0.5 for a in arenas]

    def arena_read():
        for a in arenas:
            a.view(torch.float32).sum()

    def passes(native: bool) -> dict:
        """The passes by one implementation: native (window.c) or compiled (inductor)."""
        def gram():
            for x, c in zip(windows, scales):
                kernels.gram_row(x, c, x[0], None if c is None else c[0], native)

        def combine():
            for x, c in zip(windows, scales):
                kernels.combine(x, c, w, torch.float32, native)

        def paired():
            for x, c in zip(windows, scales):
                kernels.gram_row(x, c, x[0], None if c is None else c[0], native)
                kernels.combine(x, c, w, torch.float32, native)

        def arena_gram():
            for a, c in zip(arenas, arena_scales):
                kernels.gram_rows(a, c, a[:, 0], None if c is None else c[:, 0], native)

        def arena_combine():
            for a, c, wa in zip(arenas, arena_scales, weights):
                per = max(1, natural._COMBINE_BYTES // (a.shape[2] * 4))
                for lo in range(0, a.shape[0], per):
                    kernels.combine_rows(a[lo:lo + per], None if c is None else c[lo:lo + per], wa[lo:lo + per],
                                         torch.float32, native)

        def phased():
            gram()
            combine()

        def arena_phased():
            arena_gram()
            arena_combine()

        def unfetched(f):  # window.c's passes without their prefetch, for the side-by-side rows
            def run():
                with native_kernels.prefetch_forced(0):
                    f()
            run.__name__ = f.__name__ + "_no_prefetch"
            return run

        tag = "native " if native else ""
        fs = [gram, combine, phased, paired, arena_gram, arena_combine, arena_phased]
        if native:
            fs += [unfetched(arena_gram), unfetched(arena_combine)]
        return {tag + f.__name__.replace("_", " "): f for f in fs}

    runs = {"read": read, "arena read": arena_read, **passes(False)}
    if native_kernels.available():
        runs.update(passes(True))
    else:
        print("window.c is not built here (see the warning): no native rows", file=sys.stderr)
    for f in runs.values():
        f()  # compiles the kernels, faults the pages in
    for _ in range(native_kernels.PREFETCH_TRIES * len(native_kernels.PREFETCH_CANDIDATES)):
        for name, f in runs.items():  # window.c's prefetch trials (native.py), before anything is timed
            if name.startswith("native") and "no prefetch" not in name:
                f()
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    nbytes = sum(x.numel() * x.element_size() for x in windows)
    read_s = statistics.median(times["read"])
    print(f"{args.model}: {len(windows)} windows, s = {args.s}, rank {args.rank}, {args.storage}, {nbytes / 1e6:.0f} MB; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} rounds")
    print(f"{'pass':<22}{'median ms':>11}{'min ms':>9}{'× read':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        reads = 2 if name.endswith(("phased", "paired")) else 1
        print(f"{name:<22}{med * 1e3:>11.2f}{min(ts) * 1e3:>9.2f}{med / (reads * read_s):>9.2f}")
    print(f"× read: against one plain read of every window, one call per window ({read_s * 1e3:.2f} ms; "
          f"two for phased and paired)")
    for name, c in native_kernels.prefetch_choice().items():
        tried = ", ".join(f"{d} B {t * 1e3:.2f} ms" for d, t in c["seconds"].items())
        print(f"native {name}: prefetch {c['bytes']} bytes ahead (medians of its timed calls: {tried})")


if __name__ == "__main__":
    main()
