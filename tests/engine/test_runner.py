"""Subprocess isolation and atomic output."""
import json

import pytest

from ngl_profile.schema.results import load_results, write_json_atomic
from ngl_profile.engine.runner import run_scenario
from ngl_profile.schema.scenario import OptimizerCase, Scenario


def scenario(*names):
    return Scenario(name="iso", model="tiny", seq_len=16, batch_size=1, dtype="float32", steps=1, warmup=0,
                    optimizers=[OptimizerCase(name=n) for n in names])


@pytest.mark.parametrize("fault,status,text", [("raise", "error", "injected failure"),
                                               ("oom", "oom", "out of memory"),
                                               ("exit", "error", "exited with code 3"),
                                               ("signal9", "error", "killed by signal 9 (SIGKILL)"),
                                               ("signal15", "error", "killed by signal 15 (SIGTERM)")])
def test_failing_case_is_recorded_and_the_next_runs(tmp_path, monkeypatch, fault, status, text):
    monkeypatch.setenv("NGL_PROFILE_FAULT", f"adamw={fault}")
    events = []
    run = run_scenario(scenario("adamw", "adafactor"), "measured", "cpu", tmp_path,
                       on_event=lambda label, ev: events.append((label, ev["event"])), jobs=1)
    bad, good = run.cases
    assert bad.status == status and text in bad.message
    assert good.status == "ok" and good.tokens_per_s > 0
    saved = load_results(tmp_path)  # the file on disk holds both, in scenario order
    assert [c.label for c in saved.cases] == ["adamw", "adafactor"]
    assert ("adafactor", "done") in events
    if fault == "oom":
        assert bad.fits is False


def test_results_written_after_each_case(tmp_path, monkeypatch):
    """A run stopped midway keeps its finished cases: the file is rewritten as each one ends."""
    import ngl_profile.engine.runner as runner

    seen = []
    real_save = runner.write_json_atomic

    def spy(path, data):
        seen.append(len(data["cases"]))
        real_save(path, data)

    monkeypatch.setattr(runner, "write_json_atomic", spy)
    run_scenario(scenario("adamw", "adafactor"), "estimated", "cpu", tmp_path, jobs=1)
    assert seen == [0, 1, 2]


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(RuntimeError):
        write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_a_kill_is_not_called_an_out_of_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("NGL_PROFILE_FAULT", "adamw=signal15")
    bad, = run_scenario(scenario("adamw"), "estimated", "cpu", tmp_path, jobs=1).cases
    assert bad.status == "error" and "out of memory" not in bad.message and "OOM" not in bad.message
