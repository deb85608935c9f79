"""The statistics of the timed steps: pytest-benchmark's figures, quartiles as torch.quantile computes
them, tokens/s as the step time's image, and timed_steps recording them beside the medians."""
import statistics
import types

import pytest
import torch

from ngl_profile.engine import throughput
from ngl_profile.measure.timing import PhaseTimer, rate_stats, timing_stats, tokens_per_second
from ngl_profile.schema.results import CaseResult


def test_pytest_benchmarks_own_example():
    # pytest-benchmark's tests/test_stats.py: 4, 36, 45, 50, 75 → mean 42, stddev 25.700194551792794
    s = timing_stats([75.0, 4.0, 45.0, 36.0, 50.0])
    assert s["rounds"] == 5 and s["min"] == 4.0 and s["max"] == 75.0 and s["median"] == 45.0
    assert s["mean"] == 42.0 and s["stddev"] == pytest.approx(25.700194551792794, rel=1e-15)
    assert (s["q1"], s["q3"], s["iqr"]) == (36.0, 50.0, 14.0)  # type 7: order statistics 2 and 4 of 5


def test_quartiles_are_torch_quantiles_linear():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 4, 7, 20, 51):
        x = torch.rand(n, generator=g, dtype=torch.float64) * 0.01 + 0.01
        s = timing_stats(x.tolist())
        q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), interpolation="linear")
        assert (s["q1"], s["median"], s["q3"]) == pytest.approx(q.tolist(), rel=1e-12), n
        assert s["stddev"] == pytest.approx(x.std(correction=1).item(), rel=1e-12)
        assert s["mean"] == pytest.approx(x.mean().item(), rel=1e-12)


def test_one_step_and_none():
    assert timing_stats([]) is None and rate_stats(100, []) is None and rate_stats(100, [0.0]) is None
    s = timing_stats([0.02])
    assert s == {"rounds": 1, "median": 0.02, "q1": 0.02, "q3": 0.02, "iqr": 0.0, "min": 0.02, "max": 0.02,
                 "mean": 0.02, "stddev": 0.0}


def test_tokens_per_s_is_the_step_times_image_and_its_median_the_headline():
    times = [0.010, 0.012, 0.011, 0.030, 0.0105, 0.0099]  # an even count: the median interpolates
    t, r = timing_stats(times), rate_stats(1024, times)
    assert r["median"] == tokens_per_second(1024, times) == 1024 / t["median"]
    assert (r["q1"], r["q3"], r["min"], r["max"]) == (1024 / t["q3"], 1024 / t["q1"], 1024 / t["max"], 1024 / t["min"])
    rates = [1024 / x for x in times]
    assert r["mean"] == pytest.approx(statistics.fmean(rates)) and r["stddev"] == pytest.approx(statistics.stdev(rates))
    assert r["min"] <= r["q1"] <= r["median"] <= r["q3"] <= r["max"]


def test_timed_steps_records_each_phase_with_its_spread(monkeypatch):
    """timed_steps on a fake clock: phase times scripted per step, the medians in step_time_s, the
    statistics beside them, tokens/s from the totals; warm-up steps never counted."""
    script = iter([(1.0, 2.0, 9.0)] * 2 + [(1.0, 2.0, 0.5), (1.5, 2.0, 0.5), (1.0, 4.0, 0.5), (2.0, 2.0, 1.5)])
    now = [0.0]

    def one_step(model, opt, scn, device, gen, timer=None):
        fwd, bwd, opt_s = next(script)
        if timer is None:
            return  # a warm-up step: timed nowhere
        for name, dt in (("forward", fwd), ("backward", bwd), ("optimizer", opt_s)):
            with timer.phase(name):
                now[0] += dt

    monkeypatch.setattr(throughput, "one_step", one_step)
    monkeypatch.setattr(throughput, "PhaseTimer", lambda device: PhaseTimer(device, clock=lambda: now[0]))
    monkeypatch.setattr(throughput, "emit", lambda *a, **k: None)
    result = CaseResult(optimizer={"name": "x"}, status="ok")
    scn = types.SimpleNamespace(warmup=2, steps=4)
    opt = types.SimpleNamespace(param_groups=[])
    throughput.timed_steps(result, None, opt, scn, torch.device("cpu"), None, 100, None, None)
    totals = [3.5, 4.0, 5.5, 5.5]  # forward + backward + optimizer, by hand
    assert result.step_time_stats["total"] == timing_stats(totals)
    assert result.step_time_stats["forward"] == timing_stats([1.0, 1.5, 1.0, 2.0])
    assert result.step_time_s["total"] == 4.75 and result.step_time_s["optimizer"] == 0.5
    assert result.step_time_s["steps"] == 4
    assert (result.step_time_s["total_min"], result.step_time_s["total_max"]) == (3.5, 5.5)
    assert result.tokens_per_s == 100 / 4.75 == result.tokens_per_s_stats["median"]
    assert result.tokens_per_s_stats == rate_stats(100, totals)
