"""A measured DDP/FSDP2 case: torchrun starts `world_size` ranks on this machine, each runs the case
(engine/case.py, on the real gloo or NCCL group) and writes its own result; this process merges them
into one case whose `ranks` hold every rank's breakdown.

    python -m ngl_profile.engine.distributed.launch SPEC.json RESULT.json
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

__all__ = ["torchrun_command", "merge_ranks", "main", "rank_main"]

# what each rank record keeps (the timeline and event lists stay with the case's worst rank)
_RANK_FIELDS = ("status", "message", "memory_bytes", "peak_bytes", "peak_phase", "distributed", "step_peaks_bytes",
                "tokens_per_s", "step_time_s")


def torchrun_command(spec_path: Path, rank_dir: Path, world_size: int) -> list[str]:
    # --local-ranks-filter 0: only rank 0's progress lines reach the parent (they are the same on every rank)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(world_size), "--local-ranks-filter", "0",
            "-m", "ngl_profile.engine.distributed.launch", "--rank", str(spec_path), str(rank_dir)]


def merge_ranks(rank_results: dict, world_size: int, fallback: dict):
    """One CaseResult from every rank's (rank → CaseResult dict). The case's figures are the rank
    with the largest peak: a GPU that does not fit fails the job. A rank without a result is an error."""
    from ngl_profile.schema.results import CaseResult

    missing = [r for r in range(world_size) if r not in rank_results]
    ok = [r for r in sorted(rank_results) if rank_results[r].get("status") == "ok"]
    pool = ok or sorted(rank_results)
    if not pool:
        return CaseResult(**fallback, status="error", message=f"no rank wrote a result (of {world_size})")
    worst = max(pool, key=lambda r: rank_results[r].get("peak_bytes", 0))
    case = CaseResult(**rank_results[worst])
    case.ranks = [{"rank": r, **{k: rank_results[r][k] for k in _RANK_FIELDS if k in rank_results[r]}}
                  for r in sorted(rank_results)]
    bad = [r for r in sorted(rank_results) if rank_results[r].get("status") != "ok"]
    if bad and case.status == "ok":
        first = rank_results[bad[0]]
        case.status, case.message = first["status"], f"rank {bad[0]}: {first.get('message', '')}"
    if missing and case.status == "ok":
        case.status = "error"
        case.message = f"rank(s) {', '.join(map(str, missing))} wrote no result"
    return case


def main(argv: list[str]) -> int:
    """Parent side: run torchrun, then merge the ranks' files into RESULT.json."""
    import tempfile

    from ngl_profile.schema.results import write_json_atomic
    from ngl_profile.schema.scenario import CaseSpec

    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = CaseSpec.from_dict(json.loads(spec_path.read_text()))
    n = spec.scenario.world_size
    with tempfile.TemporaryDirectory(prefix="ngl-ranks-", dir=out_path.parent) as rank_dir:
        proc = subprocess.Popen(torchrun_command(spec_path, Path(rank_dir), n), env=dict(os.environ))
        # the runner ends an interrupted case with SIGTERM: pass it on, so no rank is left running
        signal.signal(signal.SIGTERM, lambda signum, frame: (proc.terminate(), proc.wait(), sys.exit(128 + signum)))
        proc.wait()
        results = {}
        for r in range(n):
            p = Path(rank_dir) / f"rank{r}.json"
            if p.is_file():
                results[r] = json.loads(p.read_text())
    fallback = {"optimizer": {"name": spec.case.name, "label": spec.case.label, "hparams": spec.hparams},
                "provenance": spec.mode}
    case = merge_ranks(results, n, fallback)
    if proc.returncode != 0 and case.status == "ok":
        case.status, case.message = "error", f"torchrun exited with code {proc.returncode}"
    write_json_atomic(out_path, asdict(case))
    return 0


def rank_main(argv: list[str]) -> int:
    """Rank side (under torchrun): the case on this rank, its result in RANK_DIR/rank<r>.json."""
    import warnings

    from ngl_profile.engine.case import run_case
    from ngl_profile.schema.results import write_json_atomic
    from ngl_profile.schema.scenario import CaseSpec

    warnings.filterwarnings("ignore")
    spec = CaseSpec.from_dict(json.loads(Path(argv[0]).read_text()))
    result = run_case(spec)
    rank = int(os.environ["RANK"])
    write_json_atomic(Path(argv[1]) / f"rank{rank}.json", asdict(result))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(rank_main(args[1:]) if args[:1] == ["--rank"] else main(args))
