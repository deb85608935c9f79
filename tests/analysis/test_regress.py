"""check / compare logic on crafted inputs, and the CI gate on a real change."""
import json
import subprocess
import sys

import pytest

from ngl_profile.analysis.regress import Check, benchmark_json, evaluate
from ngl_profile.schema.thresholds import Thresholds
from ngl_profile.schema.results import CaseResult, RunResult, load_results

MiB = 1 << 20


def run(**case_over):
    def case(name, tps, step, hist=0):
        mem = {k: 0 for k in ("weights", "grads", "moments", "quant_stats", "projectors", "history", "activations",
                              "temporaries", "allocator_slack", "context")}
        mem.update(weights=100 * MiB, moments=50 * MiB, history=hist)
        return CaseResult(optimizer={"name": name, "label": name, "hparams": {}}, status="ok",
                          provenance="measured", memory_bytes=mem, peak_bytes=sum(mem.values()), fits=True,
                          tokens_per_s=tps, step_time_s={"optimizer": step})
    cases = [case("adamw", 1000.0, 0.010), case("natural-galore", 900.0, 0.020, hist=40 * MiB)]
    r = RunResult(scenario={"name": "s", "model": "tiny", "seq_len": 8, "batch_size": 1, "dtype": "float32",
                            "checkpointing": False}, gpu={"name": "rtx-4090", "memory_bytes": 24 << 30},
                  mode="measured", device="cpu", environment={}, cases=cases)
    for key, value in case_over.items():
        label, field, sub = key.split("__")
        c = r.case(label.replace("_", "-"))
        getattr(c, field)[sub] = value
        c.peak_bytes = sum(c.memory_bytes.values())
    return r


def test_identical_runs_pass():
    problems, _ = evaluate(run(), run(), Thresholds())
    assert problems == []


def test_category_growth_past_threshold_fails():
    problems, rows = evaluate(run(), run(natural_galore__memory_bytes__history=42 * MiB), Thresholds())
    assert any("natural-galore: memory.history rose by 5.0%" in p for p in problems)
    assert any(r[-1] == "REGRESSED" for r in rows)


def test_noise_under_threshold_and_floor_passes():
    # +1 % of history: under 2 %; +512 KiB on a 0-byte category: under the 1 MiB floor
    cur = run(natural_galore__memory_bytes__history=int(40.4 * MiB), adamw__memory_bytes__temporaries=MiB // 2)
    assert evaluate(run(), cur, Thresholds())[0] == []


def test_throughput_is_judged_as_ratio_to_adamw():
    slow_machine = run()
    for c in slow_machine.cases:  # everything 2× slower: the ratio holds, no regression
        c.tokens_per_s /= 2
    assert evaluate(run(), slow_machine, Thresholds())[0] == []
    regressed = run()
    regressed.case("natural-galore").tokens_per_s = 700.0  # 0.9 → 0.7 of AdamW
    problems, _ = evaluate(run(), regressed, Thresholds())
    assert any("tokens_per_s.adamw_ratio fell by 22.2%" in p for p in problems)


def test_step_time_ratio_and_status_change():
    cur = run(natural_galore__step_time_s__optimizer=0.03)
    problems, _ = evaluate(run(), cur, Thresholds())
    assert any("natural-galore: optimizer_step.adamw_ratio rose by 50.0%" in p for p in problems)
    cur = run()
    cur.cases[1].status, cur.cases[1].message = "oom", "CUDA out of memory"
    problems, _ = evaluate(run(), cur, Thresholds())
    assert any("natural-galore: status ok → oom (CUDA out of memory)" in p for p in problems)


def test_mismatched_scenarios_are_bad_input():
    other = run()
    other.scenario["seq_len"] = 16
    with pytest.raises(ValueError, match="different scenarios: seq_len 16 vs 8"):
        evaluate(run(), other, Thresholds())


def test_check_object():
    c = Check("x", "memory.peak", +1, 0.02, MiB)
    assert c.check(100 * MiB, 101 * MiB) is None
    assert "rose by 5.0%" in c.check(100 * MiB, 105 * MiB)
    with pytest.raises(ValueError, match="memory_rel must be a number"):
        Thresholds(memory_rel=-1)
    with pytest.raises(ValueError, match="unknown threshold"):
        Thresholds.from_table({"speed": 1}, "t.toml")


def test_benchmark_json_format():
    recs = benchmark_json(run())
    assert all(set(r) == {"name", "unit", "value"} for r in recs)
    assert {"name": "s/natural-galore/history", "unit": "bytes", "value": float(40 * MiB)} in recs


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ngl_profile.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_check_exit_codes_and_update_baseline(tmp_path):
    base, cur = tmp_path / "base.json", tmp_path / "cur.json"
    base.write_text(json.dumps(run().to_dict()))
    cur.write_text(json.dumps(run(natural_galore__memory_bytes__history=50 * MiB).to_dict()))
    r = cli("check", str(cur), "--baseline", str(base))
    assert r.returncode == 1 and "REGRESSED" in r.stdout and "memory.history rose by 25.0%" in r.stdout
    assert cli("check", str(base), "--baseline", str(base)).returncode == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = cli("check", str(cur), "--baseline", str(bad))
    assert r.returncode == 2 and "baseline" in r.stderr and "Traceback" not in r.stderr
    exported = tmp_path / "bench.json"
    r = cli("check", str(cur), "--baseline", str(base), "--update-baseline", "--export-benchmark-json", str(exported))
    assert r.returncode == 0
    assert load_results(base).case("natural-galore").memory_bytes["history"] == 50 * MiB
    assert json.loads(exported.read_text())[0]["unit"] == "bytes"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temp left


def test_ci_gate_catches_a_real_change(tmp_path):
    """The gate on a real run: a bigger history window grows `history` past its threshold."""
    base_dir, cur_dir = tmp_path / "base", tmp_path / "cur"
    toml = tmp_path / "s.toml"
    text = ('[scenario]\nname = "gate"\nmodel = "tiny"\nseq_len = 16\nbatch_size = 1\ndtype = "float32"\n'
            'steps = 2\nwarmup = 0\n[[optimizers]]\nname = "natural-galore"\nrank = 8\nhistory_size = {s}\n'
            '[thresholds]\nmemory_abs_bytes = 4096\nthroughput_rel = 5.0\nstep_time_rel = 5.0\n')
    toml.write_text(text.format(s=4))
    assert cli("run", str(toml), "--mode", "measured", "--out", str(base_dir), "--no-report").returncode == 0
    toml.write_text(text.format(s=5))
    assert cli("run", str(toml), "--mode", "measured", "--out", str(cur_dir), "--no-report").returncode == 0
    r = cli("check", str(cur_dir), "--baseline", str(base_dir / "results.json"))
    assert r.returncode == 1 and "memory.history rose by" in r.stdout
    assert cli("check", str(base_dir), "--baseline", str(base_dir / "results.json")).returncode == 0
