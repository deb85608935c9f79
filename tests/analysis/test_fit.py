"""`fit`'s search, with the estimator replaced by a known memory model (the real one is slow)."""
import json

import pytest

import ngl_profile.engine.runner as runner
from ngl_profile.analysis.fit import search, write_fit
from ngl_profile.cli import main
from ngl_profile.schema.presets import load_scenario
from ngl_profile.schema.results import CaseResult, RunResult

GiB = 1 << 30


def fake_estimator(calls):
    def run_scenario(scn, mode, device, out, **kw):
        c = scn.optimizers[0]
        s, rank = c.hparams.get("history_size", 10), c.hparams.get("rank", 128)
        per = {"int8": 1, "bfloat16": 2, "float32": 4}[c.hparams.get("history_dtype", "float32")]
        peak = int((10 + scn.batch_size * 0.5 + s * per * rank / 1024) * GiB)
        calls.append((scn.batch_size, s, rank, c.hparams.get("history_dtype")))
        case = CaseResult(optimizer={"name": c.name, "label": c.label, "hparams": c.hparams}, status="ok",
                          provenance="estimated", peak_bytes=peak, fits=peak + (512 << 20) <= 24 * GiB)
        return RunResult(scenario={}, gpu={}, mode=mode, device=device, environment={}, cases=[case])
    return run_scenario


def test_fit_finds_largest_settings_by_bisection(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run_scenario", fake_estimator(calls))
    scn = load_scenario("7b")
    case = next(c for c in scn.optimizers if c.name == "natural-galore-8bit-layerwise")
    result = search(scn, case, ["history_dtype", "history_size", "batch_size"])
    write_fit(result, tmp_path / "fit.json")
    best = json.loads((tmp_path / "fit.json").read_text())
    # knobs in the order given, each the largest value that fits 24 GiB − 512 MiB with the others held:
    assert best["best"]["history_dtype"] == "float32"  # at the scenario's s=2: 10.5 + 2·4 = 18.5 fits
    assert best["best"]["history_size"] == 3  # 10.5 + 3·4 = 22.5 fits; 4·4 → 26.5 does not
    assert best["best"]["batch_size"] == 2  # 10 + 1 + 12 = 23 fits; batch 4 → 24 does not
    assert best["provenance"] == "estimated" and best["probes"]
    assert len(calls) <= 4 + 4 + 4  # bisection, not a scan of every value


def test_fit_cli_prints_what_it_tried_and_where_fit_json_went(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "run_scenario", fake_estimator([]))
    out = tmp_path / "fit"
    # no --gpu: the scenario's own target (rtx-4090) is used
    assert main(["fit", "7b", "--optimizer", "natural-galore-8bit-layerwise", "--vary", "history_size",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "history_size = 12" in text and str(out / "fit.json") in text and "← best" in text
    assert "{" not in text  # a table, not raw Python dicts
    assert json.loads((out / "fit.json").read_text())["gpu"] == "rtx-4090"


def test_fit_refuses_an_unwritable_out_before_searching(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runner, "run_scenario", fake_estimator(calls))
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["fit", "7b", "--optimizer", "galore", "--out", str(blocker / "sub")]) == 2
    assert calls == [] and "cannot create output directory" in capsys.readouterr().err


@pytest.mark.parametrize("vary,message", [(["colour"], "unknown knob 'colour'"),
                                          (["rank", "rank"], "rank given twice")])
def test_fit_bad_knobs(vary, message):
    scn = load_scenario("tiny")
    with pytest.raises(ValueError, match=message):
        search(scn, scn.optimizers[0], vary)


def test_a_crashed_probe_stops_the_search_and_is_not_called_too_big(tmp_path, monkeypatch, capsys):
    real = fake_estimator([])

    def crashing(scn, mode, device, out, **kw):
        run = real(scn, mode, device, out, **kw)
        if scn.optimizers[0].hparams.get("history_size", 0) >= 8:  # the bigger windows crash
            c = run.cases[0]
            c.status, c.fits, c.message = "error", None, "RuntimeError: boom"
        return run

    monkeypatch.setattr(runner, "run_scenario", crashing)
    scn = load_scenario("7b")
    case = next(c for c in scn.optimizers if c.name == "natural-galore-8bit-layerwise")
    result = search(scn, case, ["history_size"])
    assert result.best is None and result.crashed is not None and result.crashed.setting["history_size"] >= 8
    assert main(["fit", "7b", "--optimizer", "natural-galore-8bit-layerwise", "--vary", "history_size",
                 "--out", str(tmp_path / "f")]) == 3
    assert "crashed: RuntimeError: boom" in capsys.readouterr().out


def test_a_measured_run_that_does_not_fit_is_not_a_confirmation():
    from ngl_profile.analysis.fit import FitResult

    r = FitResult(scenario="s", model="m", gpu="g", gpu_memory_bytes=1, optimizer="o", label="o", best={},
                  confirmed={"status": "oom", "fits": False})
    assert not r.confirmed_ok and "contradicts" in r.provenance
    r.confirmed = {"status": "ok", "fits": True}
    assert r.confirmed_ok and r.provenance == "estimated, confirmed by a measured run"
