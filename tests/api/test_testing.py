"""ngl_profile.testing: the assertions pass and fail where they should, and a failure shows the
breakdown and the difference."""
import copy

import pytest

from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import CaseResult, load_results
from ngl_profile.testing import UPDATE_ENV, assert_peak_under, assert_within_baseline, parse_bytes

MiB = 1 << 20


def case(label="adamw", **memory) -> CaseResult:
    m = dict.fromkeys(CATEGORIES, 0)
    m.update(memory)
    return CaseResult(optimizer={"name": "adamw", "label": label, "hparams": {}}, status="ok",
                      provenance="estimated", memory_bytes=m, peak_bytes=sum(m.values()), peak_phase="optimizer")


BASE = case(weights=100 * MiB, grads=100 * MiB, moments=200 * MiB, temporaries=8 * MiB)  # 408 MiB


@pytest.mark.parametrize("text, n", [("12 GiB", 12 << 30), ("512MiB", 512 << 20), ("1.5 GB", 1_500_000_000),
                                     ("2 kb", 2000), ("0.5 KiB", 512), ("100", 100), (7, 7)])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["12 gigs", "GiB", "-1 MiB", "", None, 1.5, True, -3])
def test_parse_bytes_refuses_what_is_not_a_size(bad):
    with pytest.raises(ValueError, match="size"):
        parse_bytes(bad)


def test_peak_under_passes_at_and_below_the_limit():
    assert_peak_under(BASE, 408 * MiB)
    assert_peak_under(BASE, "1 GiB")


def test_peak_under_fails_with_the_breakdown():
    with pytest.raises(AssertionError) as e:
        assert_peak_under(BASE, "400 MiB")
    msg = str(e.value)
    assert msg.splitlines()[0] == ("adamw (estimated, peak in optimizer): peak 408.00 MiB is over the limit "
                                   "400.00 MiB by 8.00 MiB (+2.0%)")
    assert "moments" in msg and "200.00" in msg and "49.0%" in msg  # 200 of 408 MiB
    assert "quant_stats" not in msg  # empty categories are left out


def test_peak_under_fails_a_case_that_did_not_finish():
    oom = copy.deepcopy(BASE)
    oom.status, oom.message = "oom", "CUDA out of memory"
    with pytest.raises(AssertionError, match="adamw .* ended oom: CUDA out of memory"):
        assert_peak_under(oom, "1 TiB")


def test_within_baseline_from_a_case_file(tmp_path, monkeypatch):
    path = tmp_path / "base.json"
    with pytest.raises(AssertionError, match=f"no baseline at {path}: record it with update=True or {UPDATE_ENV}=1"):
        assert_within_baseline(BASE, path)
    monkeypatch.setenv(UPDATE_ENV, "1")
    assert_within_baseline(BASE, path)  # records it
    monkeypatch.delenv(UPDATE_ENV)
    assert_within_baseline(BASE, path)
    grown = case(weights=100 * MiB, grads=100 * MiB, moments=210 * MiB, temporaries=8 * MiB)
    assert_within_baseline(grown, path, rel=0.05)  # moments +5.0 %: at the limit, not over it
    more = case(weights=100 * MiB, grads=100 * MiB, moments=230 * MiB, temporaries=8 * MiB)
    with pytest.raises(AssertionError) as e:
        assert_within_baseline(more, path, rel=0.05)
    lines = str(e.value).splitlines()
    assert lines[0] == f"adamw (estimated, peak in optimizer) is outside its baseline {path} (+5.0%) in: moments, peak"
    assert lines[1].split() == ["category", "baseline", "current", "change", "(MiB)"]
    moments = next(ln for ln in lines if ln.split()[0] == "moments")
    assert moments.split() == ["moments", "200.00", "230.00", "+30.00", "(+15.0%)", "←", "over", "the", "limit"]
    peak = next(ln for ln in lines if ln.split()[0] == "peak")
    assert peak.split()[:6] == ["peak", "408.00", "438.00", "+30.00", "(+7.4%)", "←"]  # 30 of 408 MiB
    weights = next(ln for ln in lines if ln.split()[0] == "weights")
    assert weights.split() == ["weights", "100.00", "100.00", "0"]


def test_within_baseline_floor_two_sided_and_new_categories(tmp_path):
    path = tmp_path / "base.json"
    assert_within_baseline(BASE, path, update=True)
    tiny_growth = case(weights=100 * MiB, grads=100 * MiB, moments=200 * MiB, temporaries=8 * MiB + 4096)
    with pytest.raises(AssertionError, match="in: temporaries"):
        assert_within_baseline(tiny_growth, path, rel=0.0)
    assert_within_baseline(tiny_growth, path, rel=0.0, abs_bytes="1 MiB")
    smaller = case(weights=100 * MiB, grads=100 * MiB, moments=100 * MiB, temporaries=8 * MiB)
    assert_within_baseline(smaller, path)  # a shrink passes one-sided
    with pytest.raises(AssertionError, match=r"\(±5.0%\) in: moments, peak") as e:
        assert_within_baseline(smaller, path, two_sided=True)
    assert "← under the limit" in str(e.value)
    new = case(weights=100 * MiB, grads=100 * MiB, moments=200 * MiB, temporaries=8 * MiB, history=3 * MiB)
    with pytest.raises(AssertionError, match=r"history .* \+3.00 \(new\)"):
        assert_within_baseline(new, path)
    with pytest.raises(ValueError, match="rel must be a finite number"):
        assert_within_baseline(BASE, path, rel=-0.1)


def test_within_baseline_of_a_results_file_picks_the_case_by_label(tmp_path):
    from ngl_profile.schema.results import RunResult

    run = RunResult(scenario={"name": "t", "model": "m", "seq_len": 1, "batch_size": 1, "dtype": "float32",
                              "optimizers": [{"name": "adamw", "label": "a"}, {"name": "adamw", "label": "b"}]},
                    gpu={"name": "rtx-4090", "memory_bytes": 24 << 30}, mode="estimated", device="cpu",
                    environment={}, cases=[case("a", weights=MiB), case("b", weights=2 * MiB)])
    path = tmp_path / "base.json"
    assert_within_baseline(run, path, update=True)
    assert [c.label for c in load_results(path).cases] == ["a", "b"]  # a results.json, as check reads it
    assert_within_baseline(case("b", weights=2 * MiB), path, label="b")
    with pytest.raises(AssertionError, match="in: weights"):
        assert_within_baseline(case("a", weights=2 * MiB), path, label="a")
    assert_within_baseline(case("a", weights=MiB), path)  # matched by its own label
    with pytest.raises(AssertionError, match="has no case 'c'; it has a, b"):
        assert_within_baseline(case("c", weights=MiB), path)
    assert_within_baseline(run, path)  # a whole run: each case against its own label's
    worse = copy.deepcopy(run)
    for c in worse.cases:
        c.memory_bytes["moments"] = c.peak_bytes = MiB
        c.peak_bytes += c.memory_bytes["weights"]
    with pytest.raises(AssertionError) as e:
        assert_within_baseline(worse, path)
    assert [ln.split(" (")[0] for ln in str(e.value).splitlines() if " is outside " in ln] == ["a", "b"]
