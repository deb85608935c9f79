"""The estimated world-size sweep (`run --parallelism fsdp2 --sweep world_size=...`), in process to
stay cheap: the sweep's scenarios, one estimated rank each, and the chart of per-GPU peak vs N (one
line per optimizer, the card's memory as a dashed line). The CLI path itself made
reports/llama-7b-h100-fsdp2-world-size-sweep/."""
import math

from ngl_profile.engine.case import run_case
from ngl_profile.report.sweep import axis_sweep_figure, sweep_rows
from ngl_profile.schema.results import RunResult
from ngl_profile.schema.scenario import CaseSpec, Scenario
from ngl_profile.schema.sweep import parse_sweep
from tests.distributed.test_estimate import _shapes
from tests.helpers import scenario_dict

SIZES = (2, 1024)  # 1024 ranks: more than the tiny model's 1000 vocabulary rows, so most shards are empty


def test_world_size_sweep_and_its_chart():
    base = Scenario(**scenario_dict(parallelism="fsdp2", seq_len=8, batch_size=1, optimizers=[])).select(["adamw"])
    sweep = parse_sweep([f"world_size={','.join(map(str, SIZES))}"], base)
    runs = []
    for scn in sweep.scenarios:
        case = run_case(CaseSpec(scenario=scn, case=scn.optimizers[0], mode="estimated", device="cpu",
                                 target_bytes=24 << 30))
        runs.append(RunResult(scenario=scn.to_dict(), gpu={"name": "rtx-4090", "memory_bytes": 24 << 30},
                              mode="estimated", device="cpu", environment={}, cases=[case]))
    small, large = (r.cases[0] for r in runs)
    assert small.status == large.status == "ok"
    assert (small.distributed["world_size"], large.distributed["world_size"]) == SIZES
    # AdamW's moments: 2 × rank 0's rows (ceil(rows / N), at least one) + a float32 step count per parameter
    params, _ = _shapes()
    for n, c in zip(SIZES, (small, large)):
        rows0 = sum(math.ceil(s[0] / n) * math.prod(s[1:]) for s in params)
        assert c.memory_bytes["moments"] == 4 * (2 * rows0 + len(params))
    # (the peak itself grows here: FSDP2's all-gather buffer is N × the padded shard, and at 1024 ranks
    # a 64-row weight is padded to 1024 rows; a real model's rows outnumber its ranks)
    fig = axis_sweep_figure(runs, "world_size")
    series = [ln for a in fig.axes for ln in a.get_lines() if ln.get_gid() == "series"]
    assert [list(ln.get_xdata()) for ln in series] == [list(SIZES)]
    assert any(ln.get_gid() == "capacity" for a in fig.axes for ln in a.get_lines())
    head, rows, _ = sweep_rows(runs, "world_size")
    assert head[1:3] == ["world_size=2", "world_size=1024"] and rows[0][0] == "adamw"
