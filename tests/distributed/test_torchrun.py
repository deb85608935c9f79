"""A real 2-rank run (torchrun, gloo on this CPU) of FSDP2 and DDP: every rank's measured breakdown
equals the one-process estimate of it, category by category, byte for byte (the CPU code paths, as
the measurement ran them). One torchrun launch for both cases (~15 s with its start-up).

The shape puts the peak in backward's first layers (the logits' gradient live), as in most real
runs. Where the peak falls inside a reduce-scatter instead (seq 16 here), the measurement holds one
more temporary, the size of that reduce-scatter's input, made inside gloo's reduce_scatter (the
fake group the estimate runs on allocates nothing; NCCL, which the estimate stands for on a GPU,
writes the output in place): tiny at seq 16, +512,260 B of temporaries during the root group's
reduce-scatter, which moves the peak there."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ngl_profile.engine.case import run_case
from ngl_profile.engine.distributed.launch import merge_ranks
from ngl_profile.schema.categories import TRACKED
from tests.helpers import case_spec, scenario_dict

ROOT = Path(__file__).resolve().parents[2]
CASES = [("fsdp2", "adamw"), ("ddp", "adamw")]


def _spec(parallelism, name, mode):
    scn = scenario_dict(parallelism=parallelism, world_size=2, seq_len=64, batch_size=2, steps=1, warmup=0,
                        code_paths="cpu")
    return case_spec(name, mode=mode, scenario=scn)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    specs = []
    for i, (par, name) in enumerate(CASES):
        p = tmp / f"spec{i}.json"
        p.write_text(json.dumps(_spec(par, name, "measured")))
        specs.append(str(p))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
           str(ROOT / "tests" / "distributed" / "torchrun_cases.py"), str(tmp), *specs]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = []
    for i, (par, name) in enumerate(CASES):
        ranks = {r: json.loads((tmp / f"case{i}.rank{r}.json").read_text()) for r in range(2)}
        out.append(merge_ranks(ranks, 2, {"optimizer": {"name": name}, "provenance": "measured"}))
    return out


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{p}-{n}" for p, n in CASES])
def test_every_rank_measured_equals_its_estimate(measured, i):
    par, name = CASES[i]
    case = measured[i]
    assert case.status == "ok", case.message
    assert [r["rank"] for r in case.ranks] == [0, 1]
    assert {r["distributed"]["backend"] for r in case.ranks} == {"gloo"}
    est = run_case(_spec(par, name, "estimated"))
    assert est.status == "ok", est.message
    for r in case.ranks:
        # the tiny model's rows split evenly in 2: both ranks hold the same shard sizes as rank 0
        diff = {k: r["memory_bytes"][k] - est.memory_bytes[k] for k in TRACKED}
        assert diff == dict.fromkeys(TRACKED, 0), f"rank {r['rank']}: measured − estimated {diff}"
        assert r["distributed"]["roles_at_peak_bytes"] == est.distributed["roles_at_peak_bytes"]
        assert r["peak_phase"] == est.peak_phase
        assert r["step_peaks_bytes"] == est.step_peaks_bytes
    added = est.distributed["roles_at_peak_bytes"]
    assert (added["grad_buckets"] > 0) if par == "ddp" else (added["unsharded_weights"] > 0)
