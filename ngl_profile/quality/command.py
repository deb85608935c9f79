"""`ngl-profile train <scenario>`: load, override, train, write results.json + report.md + charts."""
from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["train_command", "lr_list"]


def lr_list(text: str) -> list[float]:
    """--lr-grid's value: comma-separated learning rates (argparse type; bad input is exit 2)."""
    import argparse
    import math

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated learning rates, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected learning rates > 0, got {text!r}")
    return values


def train_command(args) -> int:
    import torch

    from ngl_profile.quality.config import check_trainable, load_quality
    from ngl_profile.quality.report import write_report
    from ngl_profile.quality.run import train_scenario
    from ngl_profile.records import write_run

    scn, spec = load_quality(args.scenario)
    spec = spec.with_overrides(steps=args.steps, seeds=args.seeds, lr_grid=args.lr_grid, tune_steps=args.tune_steps,
                               eval_every=args.eval_every)
    if args.optimizers:
        scn = scn.select(args.optimizers)
        kept = {c.label for c in scn.optimizers}
        grid = spec.lr_grid
        if isinstance(grid, dict):  # a grid for a case left out is no error
            grid = {k: v for k, v in grid.items() if k in kept or k == "*"}
        spec = spec.with_overrides(official_formula=[x for x in spec.official_formula if x in kept], lr_grid=grid)
        check_trainable(scn, spec, args.scenario)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be ≥ 1; got {args.threads}")
        torch.set_num_threads(args.threads)  # this process only: the command ends with it
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here")
    out = args.out or Path("reports") / f"{scn.name}-{device}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    if (Path(out) / "results.json").exists() and not args.force:
        raise ValueError(f"{out}/results.json exists: pass --force to overwrite it, or another --out")
    Path(out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = train_scenario(scn, spec, device=device, progress=lambda line: print(line, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    run.environment["train_wall_s"] = round(wall, 1)
    path = write_run(run, out)
    files = [path, *write_report(run, Path(out), wall)]
    from ngl_profile.quality.verdict import points, verdict

    print(verdict(points(run)))
    for f in files:
        print(f)
    return 0
