"""compare matches cases across runs by optimizer and settings, not only by label, says what
differs, warns where runs are not like for like, and stays readable at 80 columns."""
import io

from rich.console import Console

from ngl_profile.analysis.compare import comparison
from ngl_profile.report.check_table import comparison_cells, comparison_table, print_comparison

from tests.report import fakes

MiB, GiB = fakes.MiB, fakes.GiB


def ngl(label, s, history, **kw):
    return fakes.case("natural-galore-8bit-layerwise", label, hparams={"rank": 8, "history_size": s}, weights=GiB,
                      history=history, **kw)


def test_same_optimizer_other_settings_is_one_row_that_says_what_differs():
    a = fakes.run([fakes.case("adamw", weights=GiB), ngl("ngl (s=2)", 2, 20 * MiB)])
    b = fakes.run([fakes.case("adamw", weights=GiB), ngl("ngl (s=4)", 4, 40 * MiB)])
    c = comparison([a, b])
    hist = [r for r in c.rows if r.metric == "memory.history"]
    assert len(hist) == 1 and hist[0].case == "ngl (s=2)" and hist[0].values == (20 * MiB, 40 * MiB)
    m = next(m for m in c.matches if m.case == "ngl (s=2)")
    assert m.labels == ("ngl (s=2)", "ngl (s=4)")
    assert m.differences == ("[1] 'ngl (s=4)': history_size 2 → 4",)
    assert next(m for m in c.matches if m.case == "adamw").differences == ()
    head, rows = comparison_cells(c)
    assert not any("—" in cell for row in rows for cell in row)  # nothing left unmatched


def test_same_settings_under_another_label_match_and_say_so():
    a = fakes.run([ngl("mine", 2, 20 * MiB)])
    b = fakes.run([ngl("theirs", 2, 20 * MiB)])
    (m,) = comparison([a, b]).matches
    assert m.labels == ("mine", "theirs") and m.differences == ("[1] 'theirs': same settings",)


def test_ambiguous_cases_are_not_guessed():
    """Two cases of one optimizer on each side, no label or settings in common: which is which is
    unknown, so each stays a row of its own with — where the other run lacks it."""
    a = fakes.run([ngl("a2", 2, 20 * MiB), ngl("a3", 3, 30 * MiB)])
    b = fakes.run([ngl("b4", 4, 40 * MiB), ngl("b5", 5, 50 * MiB)])
    c = comparison([a, b])
    assert [m.labels for m in c.matches] == [("a2", None), ("a3", None), (None, "b4"), (None, "b5")]
    # with one of them matched by its settings, the one left on each side pairs up
    b.cases[0] = ngl("b3", 3, 31 * MiB)
    assert [m.labels for m in comparison([a, b]).matches] == [("a2", "b5"), ("a3", "b3")]


def test_warns_when_scenarios_or_machines_differ():
    a, b = fakes.seven_b(), fakes.seven_b(model="llama-1b", batch=4)
    warnings = comparison([a, b]).warnings
    assert "[1] is not like [0]: model 'llama-1b' vs 'llama-7b'" in warnings
    assert "[1] is not like [0]: batch_size 4 vs 1" in warnings
    m1, m2 = fakes.seven_b("measured"), fakes.seven_b("measured", env=dict(fakes.ENV, cpu_count=64))
    (w,) = comparison([m1, m2]).warnings
    assert "another machine" in w and "cpu_count" in w
    assert comparison([m1, fakes.seven_b("measured")]).warnings == []


def test_rows_read_in_one_unit_each_with_deltas_in_it():
    a, b = fakes.seven_b(), fakes.seven_b()
    b.cases[3].memory_bytes["history"] //= 2
    b.cases[3].peak_bytes -= a.cases[3].memory_bytes["history"] // 2
    head, rows = comparison_cells(comparison([a, b]))
    by = {(r[0], r[1]): r[2:] for r in rows}
    h0, h1 = a.cases[3].memory_bytes["history"] / GiB, b.cases[3].memory_bytes["history"] / GiB
    assert by[("natural-galore (s=10)", "memory.history")] == [f"{h0:.2f} GiB", f"{h1:.2f} GiB",
                                                                f"{h1 - h0:+.2f} GiB (-50.0%)"]
    assert by[("adamw", "memory.temporaries")] == ["512.0 MiB", "512.0 MiB", "+0.0 MiB (+0.0%)"]
    assert not any("e+" in cell for row in rows for cell in row)


def test_compare_at_80_columns_cuts_nothing(capsys):
    a, b, c = fakes.seven_b(), fakes.seven_b(), fakes.seven_b()
    for r, f in ((b, 2), (c, 3)):
        r.cases[3].memory_bytes["history"] *= f
    cmp = comparison([a, b, c])
    console = Console(width=80, file=io.StringIO(), color_system=None)
    console.print(comparison_table(cmp))
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    head, rows = comparison_cells(cmp)
    flat = " ".join(text.split())
    for row in rows:  # every value, every delta and its percentage, whole
        for cell in row[2:]:
            for part in cell.replace("(", "").replace(")", "").split(" "):
                assert part in flat, (part, text)
    assert "natural-galore-8bit-" in text  # long names wrap at a hyphen, not mid-word
    print_comparison(cmp, markdown=False, console=console)  # the whole command's output, too


def test_check_table_at_80_columns_cuts_nothing(tmp_path):
    import json

    from ngl_profile.analysis.regress import check_results
    from ngl_profile.report.check_table import print_check

    base, cur = fakes.seven_b("measured"), fakes.seven_b("measured")
    cur.cases[4].memory_bytes["history"] *= 2
    cur.cases[4].peak_bytes += base.cases[4].memory_bytes["history"]
    paths = []
    for name, r in (("base.json", base), ("cur.json", cur)):
        (tmp_path / name).write_text(json.dumps(r.to_dict()))
        paths.append(tmp_path / name)
    outcome = check_results(paths[1], paths[0])
    console = Console(width=80, file=io.StringIO(), color_system=None)
    print_check(outcome, console)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text, text
    assert "natural-galore-8bit-" in text and "REGRESSED" in text
    for r in outcome.verdict.rows:
        assert r.metric in text


def test_a_change_against_a_near_zero_base_reads_as_a_factor():
    from ngl_profile.report.check_table import _delta

    assert _delta("memory.history", 1024.0, 1024.0 * 5000) == "+4.9 MiB (5,000×)"
    assert _delta("memory.history", 100.0 * (1 << 20), 150.0 * (1 << 20)) == "+50.0 MiB (+50.0%)"
    assert _delta("memory.history", 0.0, 5.0 * (1 << 20)) == "+5.0 MiB (new)"
