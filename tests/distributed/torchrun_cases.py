"""Run under torchrun by test_torchrun.py: every case spec given, on this rank, one result file
each (RANK_DIR/case<i>.rank<r>.json). One launch for all cases: torchrun's start-up is the cost."""
import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from ngl_profile.engine.case import run_case
from ngl_profile.schema.results import write_json_atomic

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out, specs = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ["RANK"])
    for i, spec in enumerate(specs):
        result = run_case(json.loads(Path(spec).read_text()))
        write_json_atomic(out / f"case{i}.rank{rank}.json", asdict(result))
    import torch.distributed as dist

    dist.destroy_process_group()
