"""check / compare logic on crafted inputs, each way a regression could hide, and the CI gate on a
real change. CLI exit codes go through `ngl_profile.cli.main` in-process: 0 pass, 1 regression,
2 refused (one line on stderr, no traceback)."""
import copy
import json
import math
import re
import subprocess
import sys

import pytest

from ngl_profile.analysis import regress
from ngl_profile.analysis.compare import comparison
from ngl_profile.analysis.regress import Check, benchmark_json, check_results, evaluate, machine_difference, scenario_value
from ngl_profile.cli import main
from ngl_profile.report.check_table import comparison_cells, print_comparison
from ngl_profile.schema.results import CaseResult, RunResult, load_results
from ngl_profile.schema.thresholds import Thresholds

MiB = 1 << 20
ENV = {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "machine": "x86_64", "cpu_count": 2,
       "torch": "2.13.0+cpu", "torch_threads": 2, "device_name": "CPU (x86_64)", "driver": None}
LABELS = ("adamw", "natural-galore")


def case(name, tps, step, hist=0):
    mem = dict.fromkeys(("weights", "grads", "moments", "quant_stats", "projectors", "history", "activations",
                         "temporaries", "allocator_slack", "context"), 0)
    mem.update(weights=100 * MiB, moments=50 * MiB, history=hist)
    return CaseResult(optimizer={"name": name, "label": name, "hparams": {}}, status="ok", provenance="measured",
                      memory_bytes=mem, peak_bytes=sum(mem.values()), fits=True, tokens_per_s=tps,
                      step_time_s={"optimizer": step})


def run(env=None, thresholds=None):
    """A complete two-case run: AdamW, and Natural GaLore at 0.9× its tokens/s and 2× its step time."""
    scenario = {"name": "s", "model": "tiny", "seq_len": 8, "batch_size": 1, "dtype": "float32",
                "checkpointing": False, "optimizers": [{"name": n, "label": n, "hparams": {}} for n in LABELS]}
    if thresholds is not None:
        scenario["thresholds"] = thresholds
    cases = [case("adamw", 1000.0, 0.010), case("natural-galore", 900.0, 0.020, hist=40 * MiB)]
    return RunResult(scenario=scenario, gpu={"name": "rtx-4090", "memory_bytes": 24 << 30}, mode="measured",
                     device="cpu", environment=dict(ENV if env is None else env), cases=cases)


def ng(r):
    return r.case("natural-galore")


def slower(r, factor):
    for c in r.cases:
        c.tokens_per_s /= factor
        c.step_time_s["optimizer"] *= factor
    return r


def problems(base, cur, th=None):
    return evaluate(base, cur, th or Thresholds()).problems


def test_identical_runs_pass():
    v = evaluate(run(), run(), Thresholds())
    # these hand-made runs carry medians only, as schema-1 files did: the check says how it judged them
    assert v.problems == [] and v.notes == ["the baseline and the results record no spread of their timings "
                                            "(older results files have none): speed judged on medians alone"]
    assert {r.metric for r in v.rows} >= {"memory.peak", "tokens_per_s", "optimizer_step_s"}


def test_category_growth_past_threshold_fails():
    cur = run()
    ng(cur).memory_bytes["history"] = 42 * MiB
    v = evaluate(run(), cur, Thresholds())
    assert any("natural-galore: memory.history rose by 5.0% (40.00 MiB → 42.00 MiB" in p for p in v.problems)
    assert any(r.regressed and r.metric == "memory.history" for r in v.rows)


def test_noise_under_threshold_and_floor_passes():
    # +1 % of history: under 2 %; +512 KiB on a 0-byte category: under the 1 MiB floor
    cur = run()
    ng(cur).memory_bytes["history"] = int(40.4 * MiB)
    cur.case("adamw").memory_bytes["temporaries"] = MiB // 2
    assert problems(run(), cur) == []


def test_ratio_to_adamw_catches_one_case_slowing():
    cur = run(env=dict(ENV, cpu_count=64))  # another machine: only the ratio can judge
    ng(cur).tokens_per_s = 700.0  # 0.9 → 0.7 of AdamW
    assert any("tokens_per_s.adamw_ratio fell by 22.2%" in p for p in problems(run(), cur))
    cur = run()
    ng(cur).step_time_s["optimizer"] = 0.03
    assert any("natural-galore: optimizer_step.adamw_ratio rose by 50.0%" in p for p in problems(run(), cur))


def test_status_change_fails():
    cur = run()
    ng(cur).status, ng(cur).message = "oom", "CUDA out of memory"
    assert problems(run(), cur) == ["natural-galore: status ok → oom (CUDA out of memory)"]


# --- a figure the baseline measured, now 0 / null / NaN / missing: a regression whatever the limits ---

LOOSE = Thresholds(throughput_rel=9, step_time_rel=9, throughput_abs_rel=9, step_time_abs_rel=9, memory_rel=9)


@pytest.mark.parametrize("value", [0.0, None, math.nan, math.inf])
@pytest.mark.parametrize("same_machine", [True, False])
def test_lost_tokens_per_s_is_a_regression(value, same_machine):
    cur = run(env=None if same_machine else dict(ENV, device_name="CPU (other)"))
    ng(cur).tokens_per_s = value
    found = problems(run(), cur, LOOSE)
    assert any(p.startswith("natural-galore: tokens_per_s no longer measured (900 tokens/s → ") for p in found)


@pytest.mark.parametrize("value", [0.0, None, math.nan, "drop"])
@pytest.mark.parametrize("same_machine", [True, False])
def test_lost_optimizer_step_time_is_a_regression(value, same_machine):
    cur = run(env=None if same_machine else dict(ENV, torch="2.14.0"))
    if value == "drop":
        del ng(cur).step_time_s["optimizer"]
    else:
        ng(cur).step_time_s["optimizer"] = value
    found = problems(run(), cur, LOOSE)
    assert any(p.startswith("natural-galore: optimizer_step_s no longer measured (20.000 ms → ") for p in found)


def test_peak_of_zero_is_a_regression():
    cur = run()
    ng(cur).peak_bytes = 0
    assert any(p.startswith("natural-galore: memory.peak no longer measured") for p in problems(run(), cur, LOOSE))


def test_adamw_losing_its_speed_fails_once_not_in_every_ratio():
    cur = run()
    cur.case("adamw").tokens_per_s = 0.0
    v = evaluate(run(), cur, LOOSE)
    assert v.problems == ["adamw: tokens_per_s no longer measured (1,000 tokens/s → 0 tokens/s)"]
    assert any("tokens_per_s.adamw_ratio not judged" in n for n in v.notes)


def test_unmeasured_in_both_is_not_judged():
    base, cur = run(), run()
    for r in (base, cur):
        ng(r).tokens_per_s = None
        ng(r).step_time_s = {}
    assert problems(base, cur) == []


# --- every case equally slower: the ratios hold, the absolute figures do not ---

def test_every_case_slower_fails_on_the_same_machine():
    found = problems(run(), slower(run(), 1.5))
    assert "adamw: tokens_per_s fell by 33.3% (1,000 tokens/s → 667 tokens/s; limit 25%)" in found
    assert "natural-galore: optimizer_step_s rose by 50.0% (20.000 ms → 30.000 ms; limit 25%)" in found
    assert not any("ratio" in p for p in found)  # the ratios alone would have let it through


def test_absolute_speed_has_its_own_limits():
    cur = slower(run(), 1.5)
    assert problems(run(), cur, Thresholds(throughput_abs_rel=0.5, step_time_abs_rel=0.6)) == []
    assert len(problems(run(), cur, Thresholds(throughput_abs_rel=0.5, step_time_abs_rel=0.4))) == 2


def test_a_tiny_step_time_rise_under_the_floor_never_fails():
    base, cur = run(), run()
    for r, step in ((base, 30e-6), (cur, 90e-6)):  # a per-layer optimizer's step(): tens of µs
        ng(r).step_time_s["optimizer"] = step
    th = Thresholds(step_time_rel=9.0)  # the ratio to AdamW is judged apart; here only the absolute rise
    assert problems(base, cur, th) == []  # +200 %, but 60 µs: under the 0.5 ms floor
    found = problems(base, cur, Thresholds(step_time_rel=9.0, step_time_abs_floor_s=0.0))
    assert found == ["natural-galore: optimizer_step_s rose by 200.0% (0.030 ms → 0.090 ms; limit 25%)"]


def test_every_case_slower_on_another_machine_is_skipped_with_the_reason():
    v = evaluate(run(), slower(run(env=dict(ENV, cpu_count=4)), 1.5), Thresholds())
    assert v.problems == []
    assert any("absolute tokens/s and optimizer step time only checked to be still measured" in n
               and "cpu_count 4 vs 2 in the baseline" in n for n in v.notes)


@pytest.mark.parametrize("key", ["device_name", "machine", "platform", "cpu_count", "torch_threads", "python",
                                 "torch", "cuda", "driver"])
def test_each_machine_key_tells_machines_apart(key):
    assert machine_difference(run(), run(env=dict(ENV, **{key: "elsewhere"}))).startswith(f"{key} 'elsewhere'")


def test_machine_unknown_when_not_recorded():
    assert machine_difference(run(env={}), run(env={})) == "the baseline does not record device_name"
    other_device = run()
    other_device.device = "cuda"
    assert machine_difference(run(), other_device) == "device 'cuda' vs 'cpu' in the baseline"


# --- cases: missing, new, duplicated; baselines that are not complete runs ---

def test_missing_case_is_a_regression_and_a_new_one_is_reported():
    cur = run()
    cur.cases = [cur.case("adamw"), case("galore", 950.0, 0.015)]
    v = evaluate(run(), cur, Thresholds())
    assert v.problems == ["natural-galore: in the baseline, missing from the results"]
    assert "galore: new in the results, not in the baseline (not judged)" in v.notes


@pytest.mark.parametrize("spoil,reason", [
    (lambda r: r.cases.clear(), "it has no cases"),
    (lambda r: setattr(ng(r), "status", "error"), "case 'natural-galore' ended error"),
    (lambda r: r.cases.pop(), "it was interrupted: 1 of 2 planned cases finished (natural-galore missing)"),
    (lambda r: r.cases.append(copy.deepcopy(r.cases[0])), "two cases are labelled 'adamw'"),
])
def test_an_incomplete_baseline_is_refused(spoil, reason):
    base = run()
    spoil(base)
    with pytest.raises(ValueError, match=re.escape("refusing to judge against it: " + reason)):
        evaluate(base, run(), Thresholds())


def test_duplicate_labels_in_the_results_are_refused():
    cur = run()
    cur.cases.append(copy.deepcopy(cur.cases[1]))
    with pytest.raises(ValueError, match="two cases labelled 'natural-galore'"):
        evaluate(run(), cur, Thresholds())


def test_mismatched_scenarios_are_bad_input():
    other = run()
    other.scenario["seq_len"] = 16
    with pytest.raises(ValueError, match="different scenarios: seq_len 16 vs 8"):
        evaluate(run(), other, Thresholds())


def test_check_object():
    c = Check("x", "memory.peak", +1, 0.02, MiB)
    assert c.check(100 * MiB, 101 * MiB) is None
    assert "rose by 5.0%" in c.check(100 * MiB, 105 * MiB)
    assert Check("x", "tokens_per_s", -1, None, required=True).check(5.0, 1.0) is None  # presence only
    with pytest.raises(ValueError, match="memory_rel: expected a number"):
        Thresholds(memory_rel=-1)
    with pytest.raises(ValueError, match="unknown threshold"):
        Thresholds.from_table({"speed": 1}, "t.toml")


def test_benchmark_json_format():
    recs = benchmark_json(run())
    assert all(set(r) == {"name", "unit", "value"} for r in recs)
    assert {"name": "s/natural-galore/history", "unit": "bytes", "value": float(40 * MiB)} in recs
    # every record smaller-is-better: Natural GaLore's step at 2× AdamW's
    assert {"name": "s/natural-galore/optimizer_step_vs_adamw", "unit": "ratio", "value": 2.0} in recs
    assert not any("tokens_per_s" in r["name"] for r in recs)


def test_a_category_that_was_zero_rises_from_nothing_not_by_inf_percent():
    base, cur = run(), run()
    ng(cur).memory_bytes["projectors"] = 8 * MiB
    ng(cur).peak_bytes += 8 * MiB
    found = problems(base, cur, Thresholds(memory_rel=0.5))
    assert "natural-galore: memory.projectors rose from nothing (0.00 MiB → 8.00 MiB; limit 50%)" in found
    assert not any("inf" in p for p in found)


# --- through the CLI: files, exit codes, one-line refusals ---

def write(path, r):
    path.write_text(json.dumps(r.to_dict()))
    return str(path)


def cli_check(capsys, *args):
    rc = main(["check", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(rc, err, text):
    assert rc == 2, (rc, err)
    assert err.count("\n") == 1 and "Traceback" not in err and text in err, err


def test_cli_check_exit_codes_and_update_baseline(tmp_path, capsys):
    base, cur = write(tmp_path / "base.json", run()), tmp_path / "cur.json"
    grown = run()
    ng(grown).memory_bytes["history"] = 50 * MiB
    write(cur, grown)
    rc, out, _ = cli_check(capsys, cur, "--baseline", base)
    assert rc == 1 and "REGRESSED" in out and "memory.history rose by 25.0%" in out
    assert cli_check(capsys, base, "--baseline", base)[0] == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    refused(*cli_check(capsys, cur, "--baseline", bad)[::2], "baseline")
    exported = tmp_path / "bench.json"
    rc, out, _ = cli_check(capsys, cur, "--baseline", base, "--update-baseline", "--export-benchmark-json", exported)
    assert rc == 0 and "baseline updated" in out
    assert load_results(base).case("natural-galore").memory_bytes["history"] == 50 * MiB
    assert json.loads(exported.read_text())[0]["unit"] == "bytes"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temp left


def test_limits_come_from_the_baseline_not_from_the_results(tmp_path, capsys):
    grown = run(thresholds={"memory_rel": 9.0, "memory_abs_bytes": 1 << 40})  # the run loosens its own limits
    ng(grown).memory_bytes["history"] = 50 * MiB
    cur = write(tmp_path / "cur.json", grown)
    rc, out, _ = cli_check(capsys, cur, "--baseline", write(tmp_path / "base.json", run()))
    assert rc == 1 and "memory.history rose by 25.0%" in out
    loose_base = write(tmp_path / "loose.json", run(thresholds={"memory_rel": 0.5}))
    rc, out, _ = cli_check(capsys, cur, "--baseline", loose_base)
    assert rc == 0 and "its scenario's [thresholds]" in out


def test_thresholds_file_replaces_the_baselines(tmp_path, capsys):
    grown = run()
    ng(grown).memory_bytes["history"] = 50 * MiB
    cur, base = write(tmp_path / "cur.json", grown), write(tmp_path / "base.json", run())
    t = tmp_path / "t.toml"
    t.write_text("[thresholds]\nmemory_rel = 0.5\n")
    assert cli_check(capsys, cur, "--baseline", base, "--thresholds", t)[0] == 0


@pytest.mark.parametrize("text,message", [
    ("", "t.toml: no [thresholds] table"),
    ("memory_rel = 0.5\n", "t.toml: no [thresholds] table"),  # top-level keys are not the table
    ("[scenario]\nname = 'x'\n", "t.toml: no [thresholds] table"),
    ("thresholds = 3\n", "t.toml: [thresholds]: expected a table of thresholds"),
    ("[thresholds]\nmemory_rel = 'x'\n", "t.toml: [thresholds].memory_rel: expected a number in [0, 10)"),
    ("[thresholds]\nmemory_rel = nan\n", "t.toml: [thresholds].memory_rel: expected a number in [0, 10)"),
    ("[thresholds]\nmemory_abs_bytes = true\n", "memory_abs_bytes: expected an integer ≥ 0, got True"),
    ("[thresholds]\nspeed = 1\n", "unknown threshold(s) speed"),
    ("[thresholds\n", "t.toml: not valid TOML"),
])
def test_bad_thresholds_file_is_refused(tmp_path, capsys, text, message):
    base = write(tmp_path / "base.json", run())
    t = tmp_path / "t.toml"
    t.write_text(text)
    refused(*cli_check(capsys, base, "--baseline", base, "--thresholds", t)[::2], message)


def test_missing_thresholds_file_is_refused(tmp_path, capsys):
    base = write(tmp_path / "base.json", run())
    refused(*cli_check(capsys, base, "--baseline", base, "--thresholds", tmp_path / "no.toml")[::2],
            "no such thresholds file")


@pytest.mark.parametrize("spoil,reason", [
    (lambda r: r.cases.clear(), "it has no cases"),
    (lambda r: setattr(ng(r), "status", "oom"), "case 'natural-galore' ended oom"),
    (lambda r: r.cases.pop(), "it was interrupted: 1 of 2 planned cases finished"),
    (lambda r: r.cases.append(copy.deepcopy(r.cases[0])), "two cases are labelled 'adamw'"),
])
def test_cli_refuses_an_incomplete_baseline(tmp_path, capsys, spoil, reason):
    base = run()
    spoil(base)
    b = write(tmp_path / "b.json", base)
    rc, _, err = cli_check(capsys, write(tmp_path / "cur.json", run()), "--baseline", b)
    refused(rc, err, f"baseline {b}: not a complete run, refusing to judge against it: {reason}")


@pytest.mark.parametrize("spoil,reason", [
    (lambda r: r.cases.pop(), "it was interrupted: 1 of 2 planned cases finished (natural-galore missing)"),
    (lambda r: setattr(ng(r), "status", "error"), "case 'natural-galore' ended error"),
    (lambda r: r.cases.clear(), "it has no cases"),
    (lambda r: r.scenario.pop("optimizers"), "it does not list its planned cases"),
])
def test_update_baseline_refuses_an_incomplete_run_and_writes_nothing(tmp_path, capsys, spoil, reason):
    base = tmp_path / "base.json"
    write(base, run())
    before = base.read_bytes()
    partial = run()
    spoil(partial)
    exported = tmp_path / "bench.json"
    rc, _, err = cli_check(capsys, write(tmp_path / "cur.json", partial), "--baseline", base, "--update-baseline",
                           "--export-benchmark-json", exported)
    refused(rc, err, f"not made the baseline: {reason}")
    assert base.read_bytes() == before and not exported.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json", "cur.json"]


def test_cli_refuses_duplicate_labels_in_the_results(tmp_path, capsys):
    cur = run()
    cur.cases.append(copy.deepcopy(cur.cases[0]))
    base = write(tmp_path / "base.json", run())
    refused(*cli_check(capsys, write(tmp_path / "cur.json", cur), "--baseline", base)[::2],
            "two cases are labelled 'adamw'")


def test_cli_regression_for_a_lost_figure_and_a_note_for_a_new_case(tmp_path, capsys):
    cur = run()
    ng(cur).tokens_per_s = None
    cur.cases.append(case("galore", 950.0, 0.015))
    cur.scenario["optimizers"].append({"name": "galore", "label": "galore", "hparams": {}})
    rc, out, _ = cli_check(capsys, write(tmp_path / "cur.json", cur), "--baseline", write(tmp_path / "b.json", run()))
    assert rc == 1 and "natural-galore: tokens_per_s no longer measured (900 tokens/s → missing)" in out
    assert "galore: new in the results" in out


def test_an_unexpected_error_in_check_never_exits_1(tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(regress, "evaluate", broken)
    base = write(tmp_path / "base.json", run())
    rc, _, err = cli_check(capsys, base, "--baseline", base)
    assert rc not in (0, 1) and rc in (2, 4), rc  # 1 would read as "regression found"
    assert err.count("\n") == 1 and "Traceback" not in err


# --- compare: data out, printed at the edge ---

def test_compare_returns_rows_and_warns_when_scenarios_differ():
    other = run()
    other.scenario["seq_len"] = 16
    ng(other).memory_bytes["history"] = 1234 * MiB
    c = comparison([run(), other])
    assert c.warnings == ["[1] is not like [0]: seq_len 16 vs 8"]
    hist = next(r for r in c.rows if r.case == "natural-galore" and r.metric == "memory.history")
    assert hist.values == (40.0 * MiB, 1234.0 * MiB)
    assert comparison([run(), run()]).warnings == []


def test_compare_deltas_are_in_mib_with_separators(capsys):
    other = run()
    ng(other).memory_bytes["history"] = 1234 * MiB
    head, rows = comparison_cells(comparison([run(), other]))
    assert head == ["optimizer", "metric", "[0]", "[1]", "Δ[1]"]
    assert ["natural-galore", "memory.history", "40.0 MiB", "1,234.0 MiB", "+1,194.0 MiB (+2,985.0%)"] in rows
    assert not any("e+" in cell for r in rows for cell in r)  # no raw bytes in scientific notation
    other.scenario["model"] = "llama-60m"
    print_comparison(comparison([run(), other]), markdown=True, console=None)
    out = capsys.readouterr().out
    assert "| natural-galore | memory.history | 40.0 MiB | 1,234.0 MiB | +1,194.0 MiB (+2,985.0%) |" in out
    assert "> **warning:** [1] is not like [0]: model 'llama-60m' vs 'tiny'" in out


def test_compare_refuses_duplicate_labels_and_a_single_run():
    dup = run()
    dup.cases.append(copy.deepcopy(dup.cases[0]))
    with pytest.raises(ValueError, match="two cases labelled 'adamw'"):
        comparison([run(), dup])
    with pytest.raises(ValueError, match="at least two"):
        comparison([run()])


def test_cli_compare(tmp_path, capsys):
    a, b = write(tmp_path / "a.json", run()), write(tmp_path / "b.json", slower(run(), 2))
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "tokens_per_s" in out and "-500 (-50.0%)" in out


def test_check_results_returns_data(tmp_path):
    out = check_results(write(tmp_path / "c.json", run()), write(tmp_path / "b.json", run()))
    assert out.exit_code == 0 and out.verdict.problems == [] and not out.updated


# --- the gate on real runs ---

def cli(*args):
    return subprocess.run([sys.executable, "-m", "ngl_profile.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_ci_gate_catches_a_real_change(tmp_path):
    """The gate on a real run: a bigger history window grows `history` past its threshold."""
    base_dir, cur_dir = tmp_path / "base", tmp_path / "cur"
    toml = tmp_path / "s.toml"
    text = ('[scenario]\nname = "gate"\nmodel = "tiny"\nseq_len = 16\nbatch_size = 1\ndtype = "float32"\n'
            'steps = 2\nwarmup = 0\n[[optimizers]]\nname = "natural-galore"\nrank = 8\nhistory_size = {s}\n'
            '[thresholds]\nmemory_abs_bytes = 4096\nthroughput_rel = 5.0\nstep_time_rel = 5.0\n'
            'throughput_abs_rel = 5.0\nstep_time_abs_rel = 5.0\n')
    toml.write_text(text.format(s=4))
    assert cli("run", str(toml), "--mode", "measured", "--out", str(base_dir), "--no-report").returncode == 0
    toml.write_text(text.format(s=5))
    assert cli("run", str(toml), "--mode", "measured", "--out", str(cur_dir), "--no-report").returncode == 0
    r = cli("check", str(cur_dir), "--baseline", str(base_dir / "results.json"))
    assert r.returncode == 1 and "memory.history rose by" in r.stdout
    assert cli("check", str(base_dir), "--baseline", str(base_dir / "results.json")).returncode == 0


def test_a_baseline_from_another_recipe_or_attention_is_refused_and_old_files_read_as_their_defaults():
    other = run()
    other.scenario["precision"] = "mixed-bf16"
    with pytest.raises(ValueError, match="different scenarios: precision 'mixed-bf16' vs"):
        evaluate(run(), other, Thresholds())
    eager = run()
    eager.scenario["attention"] = "eager"
    with pytest.raises(ValueError, match="different scenarios: attention 'eager' vs 'sdpa'"):
        evaluate(run(), eager, Thresholds())
    # a file from before the keys existed ran the defaults: the same scenario as one that names them
    named = run()
    named.scenario.update(precision=scenario_value(run(), "precision"), attention="sdpa")
    evaluate(run(), named, Thresholds())
    custom = run()
    custom.scenario["model_config"] = {"config": {"hidden_size": 64}}
    with pytest.raises(ValueError, match="has another config than the baseline's"):
        evaluate(run(), custom, Thresholds())
    assert "[1] is not like [0]: precision 'mixed-bf16' vs" in comparison([run(), other]).warnings[0]


def test_a_step_ratio_under_the_floor_in_both_runs_is_not_judged():
    """A per-layer optimizer's optimizer phase is tens of µs: its ratio to AdamW is timer noise."""
    base, cur = run(), run()
    for r, step in ((base, 30e-6), (cur, 90e-6)):  # 3× slower, both far under a 2 ms floor
        ng(r).step_time_s["optimizer"] = step
    th = Thresholds(step_time_rel=0.5, step_time_abs_floor_s=0.002)
    assert not [p for p in evaluate(base, cur, th).problems if "optimizer_step.adamw_ratio" in p]
    th_no_floor = Thresholds(step_time_rel=0.5, step_time_abs_floor_s=0.0)
    assert [p for p in evaluate(base, cur, th_no_floor).problems if "optimizer_step.adamw_ratio" in p]
