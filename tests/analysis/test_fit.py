"""`fit`'s search, with the estimator replaced by a known memory model (the real one is slow)."""
import json

import pytest

import ngl_profile.engine.runner as runner
from ngl_profile.analysis.fit import search, write_fit
from ngl_profile.cli import main
from ngl_profile.schema.presets import load_scenario
from ngl_profile.schema.results import CaseResult, RunResult

GiB = 1 << 30


PROJ_GIB = {"std": 3, "left": 5, "right": 1, "tucker": 4}  # no order: bisection would miss "right"


def fake_estimator(calls, proj_gib=None):
    def run_scenario(scn, mode, device, out, **kw):
        cases = []
        for c in scn.optimizers:
            s, rank = c.hparams.get("history_size", 10), c.hparams.get("rank", 128)
            per = {"int8": 1, "bfloat16": 2, "float32": 4}[c.hparams.get("history_dtype", "float32")]
            extra = (proj_gib or {}).get(c.hparams.get("proj_type", "std"), 0)
            peak = int((10 + scn.batch_size * 0.5 + s * per * rank / 1024 + extra) * GiB)
            calls.append((scn.batch_size, s, rank, c.hparams.get("history_dtype")))
            cases.append(CaseResult(optimizer={"name": c.name, "label": c.label, "hparams": c.hparams}, status="ok",
                                    provenance="estimated", peak_bytes=peak, fits=peak + (512 << 20) <= 24 * GiB))
        return RunResult(scenario={}, gpu={}, mode=mode, device=device, environment={}, cases=cases)
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


# --- a categorical knob: every value estimated, the smallest peak kept ---

def test_proj_type_is_searched_by_trying_every_value_in_one_run(monkeypatch):
    calls, runs = [], []
    est = fake_estimator(calls, PROJ_GIB)

    def counting(scn, *a, **kw):
        runs.append(len(scn.optimizers))
        return est(scn, *a, **kw)

    monkeypatch.setattr(runner, "run_scenario", counting)
    scn = load_scenario("7b")
    case = next(c for c in scn.optimizers if c.name == "natural-galore-8bit-layerwise")
    result = search(scn, case, ["proj_type", "history_size"])
    tried = {p.setting["proj_type"]: p.peak_bytes for p in result.probes if p.setting["history_size"] == 2}
    assert set(tried) == {"std", "left", "right", "tucker"}  # each probed, none skipped by an order
    assert result.best["proj_type"] == "right" == min(tried, key=tried.get)
    assert runs[0] == 4  # side by side in one run (the runner's parallel jobs), not four runs
    # the room saved is spent by the knob after it: 10.5 + 1 (right) + s·1 GiB (int8, rank 1024) ≤ 23.5
    # → s = 12; at std's 3 GiB it would have been 10
    assert result.best["history_size"] == 12


def test_proj_type_keeps_the_current_value_on_a_tie_and_fails_when_none_fits(monkeypatch):
    monkeypatch.setattr(runner, "run_scenario", fake_estimator([], dict.fromkeys(PROJ_GIB, 1)))
    scn = load_scenario("7b")
    case = next(c for c in scn.optimizers if c.name == "natural-galore-8bit-layerwise")
    case.hparams["proj_type"] = "tucker"
    assert search(scn, case, ["proj_type"]).best["proj_type"] == "tucker"
    monkeypatch.setattr(runner, "run_scenario", fake_estimator([], dict.fromkeys(PROJ_GIB, 30)))
    result = search(scn, case, ["proj_type"])
    assert result.best is None and result.failed_knob == "proj_type" and len(result.probes) == 4


def test_proj_type_tries_only_what_the_optimizer_accepts():
    from ngl_profile.analysis.fit import candidates
    from ngl_profile.schema.scenario import OptimizerCase

    scn = load_scenario("tiny")
    assert candidates("proj_type", scn, OptimizerCase(name="galore-torch")) == ["std", "left", "right"]
    assert candidates("proj_type", scn, OptimizerCase(name="galore")) == ["std", "left", "right", "tucker"]


def test_seq_len_candidates_climb_in_powers_of_two_to_the_models_limit():
    from ngl_profile.analysis.fit import SEQ_LEN_CAP, candidates

    assert candidates("seq_len", load_scenario("tiny").with_overrides(seq_len=100)) == \
        [100] + [1 << k for k in range(7, SEQ_LEN_CAP.bit_length())]
    roberta = load_scenario("tiny").with_overrides(model="roberta-base", seq_len=128)
    assert candidates("seq_len", roberta) == [128, 256, 512]  # its 512 learned positions


def test_fit_over_proj_type_and_seq_len_on_tiny():
    """Real estimates: the choices checked against the probes' own peaks and the fit rule."""
    from ngl_profile.analysis.fit import candidates
    from ngl_profile.zoo.gpus import CUDA_CONTEXT_BYTES, get_gpu

    # 65536 tokens × 8 on a 16 GiB T4: ~12 GiB; 131072 ~24 GiB (activations grow linearly)
    scn = load_scenario("tiny").with_overrides(seq_len=65536, gpu="t4")
    case = next(c for c in scn.optimizers if c.name == "galore")
    result = search(scn, case, ["proj_type", "seq_len"])
    cap = get_gpu("t4").memory_bytes
    assert result.crashed is None and result.best is not None
    for p in result.probes:  # the verdict is the rule, applied to the probe's own peak
        assert p.status == "ok" and p.fits == (p.peak_bytes + CUDA_CONTEXT_BYTES <= cap), p
    sides = [p for p in result.probes if p.setting["seq_len"] == 65536]
    assert sorted(p.setting["proj_type"] for p in sides) == ["left", "right", "std", "tucker"]
    smallest = min(sides, key=lambda p: (p.peak_bytes, p.allocated_bytes))
    assert result.best["proj_type"] == smallest.setting["proj_type"]
    seqs = candidates("seq_len", scn)
    assert seqs == [65536, 131072]
    at = {p.setting["seq_len"]: p for p in result.probes if p.setting["proj_type"] == result.best["proj_type"]}
    best = result.best["seq_len"]
    assert at[best].fits and at[best].peak_bytes == result.best_peak_bytes
    above = seqs[seqs.index(best) + 1:]
    assert not above or not at[above[0]].fits  # the next length up was tried and does not fit
    assert at[131072].peak_bytes > at[65536].peak_bytes  # monotone, as bisection assumes
