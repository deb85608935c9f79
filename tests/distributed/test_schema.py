"""The parallelism and world_size keys (file, CLI, sweep), the per-rank results records and the
per-rank report: one-line errors for bad input, every rank kept, rank 0 named as what an estimate is."""
import pytest

from ngl_profile.engine.distributed.launch import merge_ranks
from ngl_profile.schema.results import ResultsError, RunResult
from ngl_profile.schema.scenario import Scenario
from tests.helpers import scenario_dict
from tests.test_bad_input import expect_bad


@pytest.mark.parametrize("over, match", [
    ({"parallelism": "zero3"}, "parallelism must be one of none, ddp, fsdp2; got 'zero3'"),
    ({"parallelism": "fsdp2", "world_size": 0}, "world_size must be an integer in [1, 65536]; got 0"),
    ({"parallelism": "fsdp2", "world_size": True}, "world_size must be an integer"),
    ({"parallelism": "ddp", "world_size": 8.0}, "world_size must be an integer"),
    ({"parallelism": "fsdp2", "world_size": 1 << 17}, "world_size must be an integer in [1, 65536]"),
    ({"world_size": 8}, "world_size 8 needs parallelism ddp or fsdp2"),
])
def test_bad_keys_are_one_line_errors(over, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")) as e:
        Scenario(**scenario_dict(**over))
    assert "\n" not in str(e.value)


def test_file_keys_and_cli_flags(tmp_path, monkeypatch, capsys):
    from ngl_profile.schema.presets import load_scenario

    path = tmp_path / "s.toml"
    path.write_text('[scenario]\nname = "d"\nmodel = "tiny"\nparallelism = "fsdp2"\nworld_size = 64\n'
                    '[[optimizers]]\nname = "adamw"\n')
    scn = load_scenario(str(path))
    assert (scn.parallelism, scn.world_size) == ("fsdp2", 64)
    assert Scenario.from_dict(scn.to_dict()).world_size == 64
    old = scn.to_dict()
    del old["parallelism"], old["world_size"]  # a results file from before the keys: one process
    assert (Scenario.from_dict(old).parallelism, Scenario.from_dict(old).world_size) == ("none", 1)
    monkeypatch.chdir(tmp_path)
    expect_bad(["run", "tiny", "--world-size", "8"], capsys, "world_size 8 needs parallelism ddp or fsdp2", tmp_path)
    expect_bad(["run", "tiny", "--parallelism", "zero"], capsys, "invalid choice", tmp_path)
    expect_bad(["run", "tiny", "--parallelism", "ddp", "--world-size", "0"], capsys,
               "world_size must be an integer in [1, 65536]", tmp_path)
    import os

    many = str((os.cpu_count() or 1) + 1)  # a measured CPU run starts one gloo rank per core at most
    expect_bad(["run", "tiny", "--parallelism", "ddp", "--world-size", many, "--mode", "measured"], capsys,
               f"measured ddp with world_size {many} needs that many ranks on this machine", tmp_path)


def test_world_size_sweep():
    from ngl_profile.schema.sweep import parse_sweep

    scn = Scenario(**scenario_dict(parallelism="fsdp2", optimizers=[]))
    scn = scn.select(["adamw"])
    sweep = parse_sweep(["world_size=8,64,1024"], scn)
    assert [s.world_size for s in sweep.scenarios] == [8, 64, 1024]
    with pytest.raises(ValueError, match="--sweep world_size=8: world_size 8 needs parallelism ddp or fsdp2"):
        parse_sweep(["world_size=8"], Scenario(**scenario_dict()).select(["adamw"]))


def _rank(r, peak, status="ok"):
    return {"optimizer": {"name": "adamw", "label": "adamw", "hparams": {}}, "status": status,
            "message": "" if status == "ok" else "boom", "provenance": "measured", "peak_bytes": peak,
            "memory_bytes": {"weights": peak}, "peak_phase": "backward",
            "distributed": {"parallelism": "fsdp2", "world_size": 2, "rank": r, "backend": "gloo",
                            "roles_at_peak_bytes": {"unsharded_weights": 1}}}


def test_merge_keeps_every_rank_and_the_worst_one_speaks():
    fallback = {"optimizer": {"name": "adamw"}, "provenance": "measured"}
    case = merge_ranks({0: _rank(0, 10), 1: _rank(1, 30)}, 2, fallback)
    assert case.status == "ok" and case.peak_bytes == 30 and case.distributed["rank"] == 1
    assert [r["rank"] for r in case.ranks] == [0, 1]
    assert merge_ranks({0: _rank(0, 10)}, 2, fallback).message == "rank(s) 1 wrote no result"
    bad = merge_ranks({0: _rank(0, 10), 1: _rank(1, 5, "error")}, 2, fallback)
    assert (bad.status, bad.message) == ("error", "rank 1: boom")
    assert merge_ranks({}, 2, fallback).status == "error"


def _run(cases, mode="measured") -> RunResult:
    return RunResult(scenario={**scenario_dict(parallelism="fsdp2", world_size=2), "optimizers": []},
                     gpu={"name": "h100-sxm", "memory_bytes": 80 << 30}, mode=mode, device="cpu", environment={},
                     cases=cases)


def test_results_hold_every_rank_and_check_their_shape():
    case = merge_ranks({0: _rank(0, 10), 1: _rank(1, 30)}, 2, {})
    run = _run([case])
    again = RunResult.from_dict(run.to_dict())
    assert again.cases[0].ranks == case.ranks and again.cases[0].distributed == case.distributed
    d = run.to_dict()
    d["cases"][0]["ranks"][1]["peak_bytes"] = -1
    with pytest.raises(ResultsError, match=r"cases\[0\]\.ranks\[1\]\.peak_bytes: expected a number ≥ 0"):
        RunResult.from_dict(d)


def test_per_rank_table_and_bars():
    from ngl_profile.report.ranks import per_rank_figure, rank_rows

    run = _run([merge_ranks({0: _rank(0, 3 << 30), 1: _rank(1, 2 << 30)}, 2, {})])
    head, rows, unit = rank_rows(run)
    assert unit == "GiB" and [r[1] for r in rows] == ["0", "1"] and [r[2] for r in rows] == ["3.00", "2.00"]
    fig = per_rank_figure(run)
    bars = [p.get_height() for p in fig.axes[0].patches if p.get_fill()]
    assert sorted(bars) == [2.0, 3.0]
    est = _run([merge_ranks({0: _rank(0, 1 << 30)}, 1, {})], mode="estimated")
    est.cases[0].ranks = []  # an estimate records rank 0 only, and says of how many
    est.scenario["world_size"] = 8
    assert rank_rows(est)[1][0][1] == "0 of 8"
