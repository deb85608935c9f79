"""Wall-clock of the product's main job without a GPU: `ngl-profile run 7b --gpu 4090` (estimated,
every default optimizer, report included).

    python benchmarks/estimate_7b.py [--repeat 1]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "ngl_profile.cli", "run", "7b", "--gpu", "4090", "--out", tmp],
                               capture_output=True, text=True)
            dt = time.perf_counter() - t0
        status = "ok" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip()[-200:]}"
        print(f"run {i + 1}: {dt:.1f} s on {os.cpu_count()} cores ({status}); target ≤ 60 s")


if __name__ == "__main__":
    main()
