"""`check` and `compare` read a train run's held-out loss: a loss regression beyond the limit whose
seed bands lie apart fails; one within the seeds' spread is a note; a profile run is unchanged."""
import copy

import pytest

from ngl_profile.analysis.compare import comparison
from ngl_profile.analysis.regress import LOSS, evaluate
from ngl_profile.schema.results import CaseResult, RunResult
from ngl_profile.schema.thresholds import Thresholds

ENV = {"python": "3.11.7", "platform": "Linux", "machine": "x86_64", "cpu_count": 2, "torch": "2.13.0+cpu",
       "torch_threads": 2, "device_name": "CPU (x86_64)"}
QUALITY = {"steps": 40, "seeds": 3, "corpus": {"sha256": "abc", "directory": "/here"}, "baselines": {}}


def _stats(median, half):
    return {"rounds": 3, "median": median, "q1": median - half, "q3": median + half, "iqr": 2 * half,
            "min": median - 2 * half, "max": median + 2 * half, "mean": median, "stddev": half}


def _case(name, loss, half):
    quality = None if loss is None else {"heldout_loss": loss, "heldout_loss_stats": _stats(loss, half), "seeds": 3}
    return CaseResult(optimizer={"name": name, "label": name, "hparams": {}}, status="ok", provenance="estimated",
                      memory_bytes={"weights": 1 << 20}, peak_bytes=1 << 20, tokens_per_s=1000.0,
                      step_time_s={"optimizer": 0.01}, quality=quality)


def _run(loss=2.0, half=0.01, quality=True):
    scenario = {"name": "q", "model": "tiny", "seq_len": 8, "batch_size": 1, "dtype": "float32",
                "optimizers": [{"name": n, "label": n, "hparams": {}} for n in ("adamw", "natural-galore")]}
    if quality:
        scenario["quality"] = copy.deepcopy(QUALITY)
    cases = [_case("adamw", 2.5 if quality else None, half), _case("natural-galore", loss if quality else None, half)]
    return RunResult(scenario=scenario, gpu={"name": "rtx-4090", "memory_bytes": 24 << 30}, mode="measured",
                     device="cpu", environment=dict(ENV), cases=cases)


def _loss_problems(v):
    return [p for p in v.problems if LOSS in p]


def test_loss_regression_fails():
    v = evaluate(_run(2.0), _run(2.1), Thresholds(heldout_loss_rel=0.02))
    assert _loss_problems(v) == [p for p in v.problems if p.startswith("natural-galore: loss.heldout rose by 5.0%")]
    assert len(_loss_problems(v)) == 1 and "IQR" in _loss_problems(v)[0]
    assert any(r.metric == LOSS and r.regressed for r in v.rows)


def test_within_the_seeds_spread_is_a_note():
    v = evaluate(_run(2.0, half=0.1), _run(2.1, half=0.1), Thresholds(heldout_loss_rel=0.02))
    assert not _loss_problems(v)
    assert any("loss.heldout" in n and "within the runs' spread" in n for n in v.notes)


def test_improvement_and_limit_pass():
    th = Thresholds(heldout_loss_rel=0.10)
    assert not _loss_problems(evaluate(_run(2.0), _run(1.9), th))
    assert not _loss_problems(evaluate(_run(2.0), _run(2.1), th))


def test_lost_loss_fails_and_profile_runs_are_not_judged():
    cur = _run(2.0)
    cur.cases[1].quality = None
    assert "no longer measured" in _loss_problems(evaluate(_run(2.0), cur, Thresholds()))[0]
    prof = evaluate(_run(quality=False), _run(quality=False), Thresholds())
    assert not prof.problems and not [r for r in prof.rows if r.metric == LOSS]


def test_another_protocol_is_refused_but_not_another_directory():
    other = _run(2.0)
    other.scenario["quality"]["corpus"]["directory"] = "/elsewhere"
    evaluate(_run(2.0), other, Thresholds())  # the same bytes kept elsewhere: like for like
    other.scenario["quality"]["steps"] = 80
    with pytest.raises(ValueError, match="different scenarios: quality"):
        evaluate(_run(2.0), other, Thresholds())


def test_compare_shows_the_loss_with_its_band():
    rows = [r for r in comparison([_run(2.0), _run(2.1)]).rows if r.metric == LOSS]
    assert [r.case for r in rows] == ["adamw", "natural-galore"]
    assert rows[1].values == (2.0, 2.1)
    assert rows[1].bands == (pytest.approx((1.99, 2.01)), pytest.approx((2.09, 2.11)))


def test_threshold_is_validated():
    with pytest.raises(ValueError, match="heldout_loss_rel"):
        Thresholds(heldout_loss_rel=-1)
