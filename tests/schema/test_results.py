"""Results files against their schema: a wrong shape is one ResultsError naming the file and the key
path, never a TypeError later; older files upgrade; the CI baseline loads; load_many skips and warns."""
import json
import math
from pathlib import Path

import pytest

from ngl_profile.analysis.regress import load_thresholds
from ngl_profile.cli import main
from ngl_profile.measure.timing import rate_stats, timing_stats
from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import CaseResult, ResultsError, RunResult, load_many, load_results

BASELINE = Path(__file__).resolve().parents[1] / "baselines" / "tiny-cpu.json"


def valid() -> dict:
    """A complete results record as the runner writes it (to_dict), three cases."""
    def case(name, tps):
        return CaseResult(optimizer={"name": name, "label": name, "hparams": {"lr": 1e-3}}, status="ok",
                          provenance="measured", memory_bytes={**dict.fromkeys(CATEGORIES, 0), "weights": 1024},
                          peak_bytes=4096, peak_phase="backward", fits=True, headroom_bytes=1 << 30,
                          tokens_per_s=tps, step_time_s={"optimizer": 0.001, "steps": 3, "svd_refresh": None},
                          step_time_stats={"optimizer": timing_stats([0.0011, 0.001, 0.0009])},
                          tokens_per_s_stats=rate_stats(1, [1 / tps] * 3),
                          nvml={"available": False, "reason": "no CUDA device"}, step_peaks_bytes=[4000, 4096],
                          timeline=[[0, 10, "forward"], [1, 20, "backward"]], cuda={"assumed_context_bytes": 5},
                          params={"total": 10, "trainable": 10}, duration_s=1.5)
    names = ("adamw", "galore", "natural-galore")
    r = RunResult(scenario={"name": "s", "model": "tiny", "seq_len": 8, "batch_size": 1, "dtype": "float32",
                            "checkpointing": False, "steps": 3, "warmup": 1, "thresholds": {"memory_rel": 0.02},
                            "optimizers": [{"name": n, "label": n, "hparams": {}} for n in names]},
                  gpu={"name": "rtx-4090", "memory_bytes": 24 << 30}, mode="measured", device="cpu",
                  environment={"torch": "2.13.0", "cpu_count": 2, "driver": None}, cases=[case(n, 1e3) for n in names],
                  created_utc="2026-01-01T00:00:00+00:00")
    return json.loads(json.dumps(r.to_dict()))


def setter(path, value):
    """Set `value` at a key path of the record (a list of keys and indices)."""
    def apply(d):
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return apply


def deleter(path):
    def apply(d):
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return apply


C2 = ["cases", 2]
MALFORMED = [
    # (how the record is spoiled, what the one-line error must say after "x.json: ")
    (setter(["cases"], {"a": 1}), "cases: expected a list, got an object"),
    (setter(["cases", 1], "adamw"), 'cases[1]: expected an object, got "adamw"'),
    (setter(C2 + ["memory_bytes"], [1, 2]), "cases[2].memory_bytes: expected an object, got a list"),
    (setter(C2 + ["memory_bytes", "history"], "abc"), 'cases[2].memory_bytes.history: expected a number ≥ 0, got "abc"'),
    (setter(C2 + ["memory_bytes", "history"], True), "cases[2].memory_bytes.history: expected a number ≥ 0, got true"),
    (setter(C2 + ["memory_bytes", "history"], -1), "cases[2].memory_bytes.history: expected a number ≥ 0, got -1"),
    (setter(C2 + ["memory_bytes", "history"], math.nan), "cases[2].memory_bytes.history: expected a finite number, got NaN"),
    (setter(C2 + ["peak_bytes"], "4096"), 'cases[2].peak_bytes: expected a number ≥ 0, got "4096"'),
    (setter(C2 + ["peak_bytes"], None), "cases[2].peak_bytes: expected a number ≥ 0, got null"),
    (setter(C2 + ["peak_bytes"], math.inf), "cases[2].peak_bytes: expected a finite number, got Infinity"),
    (setter(C2 + ["tokens_per_s"], [1, 2]), "cases[2].tokens_per_s: expected a number ≥ 0 or null, got a list"),
    (setter(C2 + ["tokens_per_s"], math.nan), "cases[2].tokens_per_s: expected a finite number or null, got NaN"),
    (setter(C2 + ["tokens_per_s"], False), "cases[2].tokens_per_s: expected a number ≥ 0 or null, got false"),
    (setter(C2 + ["step_time_s"], 0.1), "cases[2].step_time_s: expected an object, got 0.1"),
    (setter(C2 + ["step_time_s", "optimizer"], "fast"), 'cases[2].step_time_s.optimizer: expected a number ≥ 0 or null, got "fast"'),
    (setter(C2 + ["step_time_s", "optimizer"], -math.inf), "cases[2].step_time_s.optimizer: expected a finite number or null, got -Infinity"),
    (setter(C2 + ["step_time_stats"], [1]), "cases[2].step_time_stats: expected an object, got a list"),
    (setter(C2 + ["step_time_stats", "total"], 0.1), "cases[2].step_time_stats.total: expected an object, got 0.1"),
    (setter(C2 + ["step_time_stats", "total"], {"rounds": 3, "min": 1, "q1": 3, "median": 2, "q3": 4, "max": 5}),
     "cases[2].step_time_stats.total: expected statistics with min ≤ q1 ≤ median ≤ q3 ≤ max, got an object"),
    (setter(C2 + ["step_time_stats", "total"], {"rounds": 0, "min": 1, "q1": 1, "median": 1, "q3": 1, "max": 1}),
     "cases[2].step_time_stats.total.rounds: expected an integer ≥ 1, got 0"),
    (setter(C2 + ["tokens_per_s_stats"], {"rounds": 3, "min": 1, "q1": 2, "median": 2, "max": 3}),
     "cases[2].tokens_per_s_stats: missing 'q3'"),
    (setter(C2 + ["tokens_per_s_stats", "q1"], math.nan),
     "cases[2].tokens_per_s_stats.q1: expected a finite number, got NaN"),
    (setter(C2 + ["optimizer"], "adamw"), 'cases[2].optimizer: expected an object, got "adamw"'),
    (setter(C2 + ["optimizer", "label"], ["a"]), "cases[2].optimizer.label: expected a string or null, got a list"),
    (setter(C2 + ["optimizer", "name"], 3), "cases[2].optimizer.name: expected a non-empty string, got 3"),
    (deleter(C2 + ["optimizer", "name"]), "cases[2].optimizer: missing 'name'"),
    (setter(C2 + ["optimizer", "hparams"], [1]), "cases[2].optimizer.hparams: expected an object, got a list"),
    (deleter(C2 + ["status"]), "cases[2]: missing 'status'"),
    (setter(C2 + ["status"], "fine"), 'cases[2].status: expected one of "ok", "oom", "error", got "fine"'),
    (setter(C2 + ["provenance"], 1), 'cases[2].provenance: expected one of "measured", "estimated", got 1'),
    (setter(C2 + ["fits"], "yes"), 'cases[2].fits: expected true or false or null, got "yes"'),
    (setter(C2 + ["mfu"], {}), "cases[2].mfu: expected a number ≥ 0 or null, got an object"),
    (setter(C2 + ["projected"], {"gpu": "x"}), "cases[2].projected: missing 'tokens_per_s_upper_bound'"),
    (setter(C2 + ["projected"], 5), "cases[2].projected: expected an object or null, got 5"),
    (setter(C2 + ["timeline"], [[0, 1]]), "cases[2].timeline[0]: expected [event, live bytes, phase], got a list"),
    (setter(C2 + ["timeline", 1, 1], "x"), 'cases[2].timeline[1][1]: expected a number ≥ 0, got "x"'),
    (setter(C2 + ["step_peaks_bytes"], [1, None]), "cases[2].step_peaks_bytes[1]: expected a number ≥ 0, got null"),
    (setter(C2 + ["params", "total"], 1.5), "cases[2].params.total: expected an integer ≥ 0, got 1.5"),
    (setter(C2 + ["skipped_updates"], "0"), 'cases[2].skipped_updates: expected an integer ≥ 0, got "0"'),
    (setter(C2 + ["nvml", "power_w_mean"], [1]), "cases[2].nvml.power_w_mean: expected a number, got a list"),
    (setter(C2 + ["cuda", "max_reserved_bytes"], "1"), 'cases[2].cuda.max_reserved_bytes: expected a number or null, got "1"'),
    (setter(C2 + ["duration_s"], "1s"), 'cases[2].duration_s: expected a number ≥ 0 or null, got "1s"'),
    (setter(C2 + ["memory_bytes", "odd key"], "x"), 'cases[2].memory_bytes["odd key"]: expected a number ≥ 0, got "x"'),
    (setter(["scenario"], "tiny"), 'scenario: expected an object, got "tiny"'),
    (setter(["scenario"], None), "scenario: expected an object, got null"),
    (deleter(["scenario", "model"]), "scenario: missing 'model'"),
    (setter(["scenario", "seq_len"], "8"), 'scenario.seq_len: expected an integer ≥ 1, got "8"'),
    (setter(["scenario", "seq_len"], 0), "scenario.seq_len: expected an integer ≥ 1, got 0"),
    (setter(["scenario", "batch_size"], True), "scenario.batch_size: expected an integer ≥ 1, got true"),
    (setter(["scenario", "checkpointing"], "no"), 'scenario.checkpointing: expected true or false, got "no"'),
    (setter(["scenario", "thresholds"], [1]), "scenario.thresholds: expected a table of thresholds"),
    (setter(["scenario", "thresholds", "memory_rel"], "x"), "scenario.thresholds.memory_rel: expected a number in [0, 10)"),
    (setter(["scenario", "thresholds", "loose"], 1), "scenario.thresholds: unknown threshold(s) loose"),
    (setter(["scenario", "optimizers"], "adamw"), 'scenario.optimizers: expected a list, got "adamw"'),
    (setter(["scenario", "optimizers", 0, "label"], 7), "scenario.optimizers[0].label: expected a string or null, got 7"),
    (setter(["gpu"], []), "gpu: expected an object, got a list"),
    (setter(["gpu", "memory_bytes"], "24GB"), 'gpu.memory_bytes: expected a number ≥ 1, got "24GB"'),
    (deleter(["gpu", "name"]), "gpu: missing 'name'"),
    (setter(["mode"], "fast"), 'mode: expected one of "measured", "estimated", got "fast"'),
    (deleter(["mode"]), "missing 'mode'"),
    (setter(["device"], None), "device: expected a non-empty string, got null"),
    (setter(["environment"], "linux"), 'environment: expected an object, got "linux"'),
    (setter(["environment", "torch"], {"v": 2}), "environment.torch: expected a number, got an object"),
    (setter(["created_utc"], 0), "created_utc: expected a string, got 0"),
    (setter(["schema_version"], "1"), "no schema_version: not an ngl-profile results file"),
    (setter(["schema_version"], True), "no schema_version: not an ngl-profile results file"),
    (setter(["schema_version"], 99), "schema_version 99 is newer than this ngl-profile understands"),
]


def write(tmp_path, data, name="x.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def one_line_error(path, match):
    with pytest.raises(ResultsError) as e:
        load_results(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert match in msg, msg
    return msg


def test_the_corpus_is_big_enough():
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize("spoil,match", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_results_name_the_file_and_the_key(tmp_path, spoil, match):
    d = valid()
    spoil(d)
    one_line_error(write(tmp_path, d), match)


@pytest.mark.parametrize("text,match", [
    ("{truncated", "not a readable results file (JSONDecodeError"),
    ("[1, 2]", "not a results object: expected an object, got a list"),
    ("null", "not a results object: expected an object, got null"),
    ('"results"', 'not a results object: expected an object, got "results"'),
    ("[" * 100000 + "]" * 100000, "not a readable results file"),
    (b"\xff\xfe{}", "not a readable results file"),
])
def test_unreadable_files(tmp_path, text, match):
    p = tmp_path / "x.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    one_line_error(p, match)


@pytest.mark.parametrize("spoil,match", MALFORMED[:12], ids=[m for _, m in MALFORMED[:12]])
def test_a_malformed_baseline_is_exit_2_and_one_line(tmp_path, capsys, spoil, match):
    good = write(tmp_path, valid(), "good.json")
    d = valid()
    spoil(d)
    bad = write(tmp_path, d, "bad.json")
    assert main(["check", str(good), "--baseline", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"baseline: {bad}: {match}" in err


def test_malformed_results_given_to_check_are_exit_2(tmp_path, capsys):
    d = valid()
    d["cases"][0]["tokens_per_s"] = [1]
    assert main(["check", str(write(tmp_path, d, "bad.json")), "--baseline", str(write(tmp_path, valid()))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cases[0].tokens_per_s: expected a number" in err


@pytest.mark.parametrize("text,match", [
    ("", "no [thresholds] table"),
    ("# nothing\n", "no [thresholds] table"),
    ("memory_rel = 0.1\n", "no [thresholds] table"),
    ("[other]\nmemory_rel = 0.1\n", "no [thresholds] table"),
    ("thresholds = [1]\n", "[thresholds]: expected a table of thresholds"),
    ("[thresholds]\nthroughput_rel = -0.1\n", "[thresholds].throughput_rel: expected a number in [0, 10), got -0.1"),
    ("[thresholds]\nstep_time_abs_rel = inf\n", "[thresholds].step_time_abs_rel: expected a number in [0, 10), got inf"),
    ("[thresholds]\nthroughput_abs_rel = true\n", "[thresholds].throughput_abs_rel: expected a number in [0, 10), got True"),
    ("[thresholds]\nmemory_abs_bytes = 1.5\n", "[thresholds].memory_abs_bytes: expected an integer ≥ 0, got 1.5"),
    ("[thresholds]\nmemory_rel = [0.1]\n", "[thresholds].memory_rel: expected a number in [0, 10)"),
    ("[thresholds]\nfoo = 1\n", "[thresholds]: unknown threshold(s) foo; allowed:"),
    ("[thresholds]\nmemory_rel = \n", "not valid TOML"),
])
def test_malformed_thresholds_files(tmp_path, text, match):
    p = tmp_path / "t.toml"
    p.write_text(text)
    with pytest.raises(ValueError) as e:
        load_thresholds(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: ") and match in msg, msg


def test_a_valid_file_round_trips(tmp_path):
    r = load_results(write(tmp_path, valid()))
    assert [c.label for c in r.cases] == ["adamw", "galore", "natural-galore"]
    assert r.planned == ["adamw", "galore", "natural-galore"]
    assert load_results(write(tmp_path, r.to_dict(), "again.json")).to_dict() == r.to_dict()


def test_older_files_upgrade(tmp_path):
    d = valid()
    del d["cases"][0]["memory_bytes"]["context"]  # a category older files lack held nothing then
    del d["cases"][1]["memory_bytes"]
    del d["cases"][2]["damping_backoffs"]
    del d["scenario"]["optimizers"]  # written before the scenario listed its cases
    d["schema_version"] = 0
    r = load_results(write(tmp_path, d))
    assert r.cases[0].memory_bytes["context"] == 0 and r.cases[1].memory_bytes == dict.fromkeys(CATEGORIES, 0)
    assert r.cases[2].damping_backoffs == 0 and r.planned is None


def test_a_version_1_file_loads_with_its_spread_unknown(tmp_path):
    """Schema 1 kept medians only: such a file loads with no statistics, and check and compare read
    its spread as unknown (None), never as zero."""
    from ngl_profile.analysis.spread import bands

    d = valid()
    for c in d["cases"]:
        del c["step_time_stats"], c["tokens_per_s_stats"]
    d["schema_version"] = 1
    r = load_results(write(tmp_path, d))
    assert r.schema_version == 2 and all(c.step_time_stats == {} and c.tokens_per_s_stats is None for c in r.cases)
    assert all(b is None for m in bands(r).values() for b in m.values())
    fresh = load_results(write(tmp_path, valid(), "v2.json"))
    # type-7 quartiles of 0.9, 1.0, 1.1 ms
    assert bands(fresh)["galore"]["optimizer_step_s"] == pytest.approx((0.00095, 0.00105))


def test_unknown_keys_are_kept_out_not_refused(tmp_path):
    d = valid()
    d["cases"][0]["new_metric"] = {"anything": [1]}
    d["future"] = 1
    assert load_results(write(tmp_path, d)).cases[0].label == "adamw"


def test_nulls_where_the_schema_allows_them(tmp_path):
    d = valid()
    c = d["cases"][0]
    c.update(tokens_per_s=None, mfu=None, fits=None, headroom_bytes=None, projected=None, duration_s=None)
    c["optimizer"]["label"] = None
    assert load_results(write(tmp_path, d)).cases[0].label == "adamw"  # the name stands in


def test_the_ci_baseline_loads():
    r = load_results(BASELINE)
    assert len(r.cases) == 6 and all(c.status == "ok" for c in r.cases)


def test_load_many_skips_a_malformed_file_with_a_warning(tmp_path):
    d = valid()
    d["cases"] = "none"
    paths = [write(tmp_path, valid(), "a.json"), write(tmp_path, d, "b.json"), write(tmp_path, "{", "c.json")]
    with pytest.warns(UserWarning) as w:
        runs = load_many(paths)
    assert len(runs) == 1
    texts = [str(x.message) for x in w]
    assert any("b.json: cases: expected a list" in t for t in texts) and any("c.json" in t for t in texts)


def test_a_run_directory_and_a_missing_file(tmp_path):
    (tmp_path / "run").mkdir()
    write(tmp_path / "run", valid(), "results.json")
    assert load_results(tmp_path / "run").scenario["name"] == "s"
    with pytest.raises(ResultsError, match="no such results file"):
        load_results(tmp_path / "nope.json")
