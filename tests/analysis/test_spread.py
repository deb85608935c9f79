"""check judges speed with its spread: a median past the limit is a regression only when the runs'
interquartile ranges lie apart by more than the limit too; a run without statistics (schema 1) is
judged on its medians as before. Runs are built from scripted step times, so every figure is exact."""
import io
import math

import pytest
import torch
from rich.console import Console

from ngl_profile.analysis.compare import comparison
from ngl_profile.analysis.regress import Check, evaluate
from ngl_profile.analysis.spread import band_of, bands, ratio_band, separation
from ngl_profile.measure.timing import rate_stats, timing_stats
from ngl_profile.report.check_table import comparison_cells, comparison_table
from ngl_profile.schema.results import CaseResult, RunResult
from ngl_profile.schema.thresholds import Thresholds

MiB = 1 << 20
TOKENS = 1000
ENV = {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "machine": "x86_64", "cpu_count": 2,
       "torch": "2.13.0+cpu", "torch_threads": 2, "device_name": "CPU (x86_64)", "driver": None}


def steps(median, rel_spread, n=21):
    """n step times, evenly spread over median × (1 ± rel_spread): their quartiles are median ×
    (1 ∓ rel_spread / 2) exactly (type 7 on an arithmetic progression of odd length)."""
    return [median * (1 + rel_spread * (2 * i / (n - 1) - 1)) for i in range(n)]


def case(name, total, opt, spread=0.1, stats=True):
    totals, opts = steps(total, spread), steps(opt, spread)
    c = CaseResult(optimizer={"name": name, "label": name, "hparams": {}}, status="ok", provenance="measured",
                   memory_bytes={"weights": MiB}, peak_bytes=MiB, tokens_per_s=TOKENS / total,
                   step_time_s={"total": total, "optimizer": opt, "steps": len(totals)})
    if stats:
        c.step_time_stats = {"total": timing_stats(totals), "optimizer": timing_stats(opts)}
        c.tokens_per_s_stats = rate_stats(TOKENS, totals)
    return c


def run(ng_total=0.020, ng_opt=0.008, spread=0.1, stats=True, adamw_spread=None):
    """AdamW (10 ms steps, 2 ms optimizer) and Natural GaLore, on one machine."""
    cases = [case("adamw", 0.010, 0.002, spread if adamw_spread is None else adamw_spread, stats),
             case("natural-galore", ng_total, ng_opt, spread, stats)]
    scenario = {"name": "s", "model": "tiny", "seq_len": 8, "batch_size": 1, "dtype": "float32",
                "checkpointing": False, "optimizers": [c.optimizer for c in cases]}
    return RunResult(scenario=scenario, gpu={"name": "rtx-4090", "memory_bytes": 24 << 30}, mode="measured",
                     device="cpu", environment=dict(ENV), cases=cases)


TH = Thresholds(throughput_rel=0.25, step_time_rel=0.25, throughput_abs_rel=0.25, step_time_abs_rel=0.25,
                step_time_abs_floor_s=0.0)


def test_the_steps_helper_has_the_quartiles_it_says():
    s = timing_stats(steps(0.008, 0.4))
    assert (s["q1"], s["median"], s["q3"]) == pytest.approx((0.008 * 0.8, 0.008, 0.008 * 1.2))


def test_a_median_past_the_limit_within_overlapping_spreads_is_a_note_not_a_regression():
    # optimizer step 8 → 10.4 ms (+30 %, limit 25 %); IQRs ±20 %: 6.4–9.6 vs 8.32–12.48 ms overlap
    v = evaluate(run(spread=0.4), run(ng_opt=0.0104, spread=0.4), TH)
    assert v.problems == []
    (note,) = [n for n in v.notes if n.startswith("natural-galore: optimizer_step_s")]
    assert note == ("natural-galore: optimizer_step_s rose by 30.0% (8.000 ms → 10.400 ms; IQR 8.320–12.480 ms vs "
                    "6.400–9.600 ms, overlapping; limit 25%): within the runs' spread, not a regression")
    assert any(n.startswith("natural-galore: optimizer_step.adamw_ratio rose by 30.0%") for n in v.notes)


def test_spreads_apart_by_more_than_the_limit_are_a_regression_that_gives_both_iqrs():
    # 8 → 16 ms with ±5 % IQRs: 15.2–16.8 vs 7.6–8.4 ms, q1 / q3 = 15.2 / 8.4 = +81 %
    v = evaluate(run(spread=0.1), run(ng_opt=0.016, spread=0.1), TH)
    gap = 15.2 / 8.4 - 1
    assert (f"natural-galore: optimizer_step_s rose by 100.0% (8.000 ms → 16.000 ms; IQR 15.200–16.800 ms vs "
            f"7.600–8.400 ms, {gap:+.1%} between them; limit 25%)") in v.problems
    row = next(r for r in v.rows if r.case == "natural-galore" and r.metric == "optimizer_step_s")
    assert row.regressed and row.baseline_band == pytest.approx((0.0076, 0.0084))
    assert row.current_band == pytest.approx((0.0152, 0.0168))


def test_apart_but_by_less_than_the_limit_is_not_a_regression():
    # 8 → 12 ms (+50 %) with ±10 % IQRs: 10.8–13.2 vs 7.2–8.8 ms are apart, but by 10.8 / 8.8 = +22.7 % < 25 %
    v = evaluate(run(spread=0.2), run(ng_opt=0.012, spread=0.2), TH)
    assert not any("optimizer_step_s" in p for p in v.problems)
    assert any("+22.7% between them; limit 25%): within the runs' spread" in n for n in v.notes)


def test_tokens_per_s_mirrors_the_rule():
    # whole step 20 → 30 ms: tokens/s 50,000 → 33,333 (−33 %); ±5 % step IQRs keep the bands far apart
    v = evaluate(run(spread=0.1), run(ng_total=0.030, spread=0.1), TH)
    b_lo, c_hi = TOKENS / (0.020 * 1.05), TOKENS / (0.030 * 0.95)
    assert any(p.startswith("natural-galore: tokens_per_s fell by 33.3%") and f"{(b_lo - c_hi) / b_lo:+.1%} between"
               in p for p in v.problems)
    # the same slowdown with ±25 % IQRs: steps of 15–25 ms and 22.5–37.5 ms overlap, and nothing fails
    v = evaluate(run(spread=0.5), run(ng_total=0.030, spread=0.5), TH)
    assert not any("tokens_per_s" in p for p in v.problems)


def test_an_old_baseline_falls_back_to_the_median_rule():
    """The overlapping case of the first test, with a baseline of schema 1 (no statistics): today's
    rule on medians alone, so +30 % fails, and the check says why it judged that way."""
    old = run(spread=0.4, stats=False)
    v = evaluate(old, run(ng_opt=0.0104, spread=0.4), TH)
    assert ("natural-galore: optimizer_step_s rose by 30.0% (8.000 ms → 10.400 ms; limit 25%)") in v.problems
    assert ("the baseline records no spread of its timings (older results files have none): speed judged on "
            "medians alone") in v.notes
    # and the same with the results being the old side
    v = evaluate(run(spread=0.4), run(ng_opt=0.0104, spread=0.4, stats=False), TH)
    assert "natural-galore: optimizer_step_s rose by 30.0% (8.000 ms → 10.400 ms; limit 25%)" in v.problems


def test_the_floor_holds_for_the_gap_between_the_bands():
    # 8 → 16 ms, IQRs 7.6–8.4 and 15.2–16.8 ms, 6.8 ms apart: a floor of 10 ms forgives it, one of 5 ms not
    base, cur = run(spread=0.1), run(ng_opt=0.016, spread=0.1)
    check = Check("natural-galore", "optimizer_step_s", +1, 0.25, floor=0.010)
    bb, bc = bands(base)["natural-galore"]["optimizer_step_s"], bands(cur)["natural-galore"]["optimizer_step_s"]
    assert check.judge(0.008, 0.016, (bb, bc))[0] is None
    assert Check("natural-galore", "optimizer_step_s", +1, 0.25, floor=0.005).check(0.008, 0.016, (bb, bc))


def test_a_band_must_bracket_its_headline():
    s = timing_stats([1.0, 2.0, 3.0])
    assert band_of(2.0, s) == (1.5, 2.5) and band_of(2.6, s) is None and band_of(None, s) is None
    assert band_of(2.0, None) is None and band_of(0.0, s) is None


def test_separation_in_both_directions():
    assert separation(+1, (7.0, 8.0), (10.0, 11.0)) == (2.0, 8.0)
    assert separation(-1, (7.0, 8.0), (5.0, 6.0)) == (1.0, 7.0)
    assert separation(+1, (7.0, 8.0), (7.5, 9.0))[0] < 0  # overlapping


def test_ratio_band_of_independent_lognormal_figures_matches_their_empirical_quartiles():
    """The quadrature rule against an independent reference: quartiles of C / A drawn apart."""
    g = torch.Generator().manual_seed(1)
    n = 200_000
    c = torch.exp(math.log(0.008) + 0.15 * torch.randn(n, generator=g, dtype=torch.float64))
    a = torch.exp(math.log(0.002) + 0.08 * torch.randn(n, generator=g, dtype=torch.float64))
    q = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    qc, qa, qr = (torch.quantile(x, q) for x in (c, a, c / a))
    lo, hi = ratio_band(qc[1].item(), (qc[0].item(), qc[2].item()), qa[1].item(), (qa[0].item(), qa[2].item()))
    assert lo == pytest.approx(qr[0].item(), rel=0.01) and hi == pytest.approx(qr[2].item(), rel=0.01)
    # with no spread in the denominator, exactly the numerator's band divided
    assert ratio_band(8.0, (7.0, 9.0), 2.0, (2.0, 2.0)) == pytest.approx((3.5, 4.5))


def test_adamws_own_ratio_has_no_spread_and_a_ratio_needs_both_bands():
    b = bands(run(spread=0.2))
    assert b["adamw"]["optimizer_step.adamw_ratio"] == (1.0, 1.0)
    lo, hi = b["natural-galore"]["optimizer_step.adamw_ratio"]
    assert lo < 4.0 < hi
    old = bands(run(stats=False))
    assert all(v is None for m in old.values() for v in m.values())


def test_compare_shows_median_and_half_iqr_and_says_what_it_is():
    a, b = run(spread=0.1), run(ng_opt=0.016, spread=0.1)
    cmp = comparison([a, b])
    head, rows = comparison_cells(cmp)
    by = {(r[0], r[1]): r[2:] for r in rows}
    assert by[("natural-galore", "optimizer_step_s")] == ["8.000 ms ±0.400", "16.000 ms ±0.800",
                                                          "+8.000 ms (+100.0%)"]
    tps = TOKENS / 0.020
    half = (TOKENS / (0.020 * 0.95) - TOKENS / (0.020 * 1.05)) / 2
    assert by[("natural-galore", "tokens_per_s")][0] == f"{tps:,.0f} ±{half:,.0f}"
    console = Console(width=80, file=io.StringIO(), color_system=None)
    console.print(comparison_table(cmp))
    text = console.file.getvalue()
    assert "half the interquartile range over the timed steps" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    # a schema-1 run beside it: its cells carry no ±, the other's still do
    head, rows = comparison_cells(comparison([run(stats=False), b]))
    cells = {(r[0], r[1]): r[2:] for r in rows}[("natural-galore", "optimizer_step_s")]
    assert cells[0] == "8.000 ms" and cells[1] == "16.000 ms ±0.800"


def test_check_output_shows_the_spread_and_the_rule_at_80_columns(tmp_path):
    import json

    from ngl_profile.analysis.regress import check_results
    from ngl_profile.report.check_table import print_check

    paths = []
    for name, r in (("base.json", run(spread=0.1)), ("cur.json", run(ng_opt=0.016, spread=0.1))):
        r.scenario["thresholds"] = {"step_time_rel": 0.25}
        (tmp_path / name).write_text(json.dumps(r.to_dict()))
        paths.append(tmp_path / name)
    outcome = check_results(paths[1], paths[0])
    assert outcome.exit_code == 1
    console = Console(width=80, file=io.StringIO(), color_system=None)
    print_check(outcome, console)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    flat = " ".join(text.split())
    assert "8.000 ms ±0.400" in flat and "16.000 ms ±0.800" in flat and "REGRESSED" in flat
    assert "half the interquartile range over the timed steps" in flat and "judged by the IQRs too" in flat
    assert "IQR 15.200–16.800 ms vs 7.600–8.400 ms" in flat
