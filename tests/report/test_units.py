"""Sizes in binary (GiB, the default) or decimal (GB) units: every number against a hand computation,
every size with its unit, titles naming it."""
import subprocess
import sys

import pytest

from ngl_profile.analysis.compare import comparison
from ngl_profile.report import charts
from ngl_profile.report.check_table import comparison_cells
from ngl_profile.report.tables import check_units, human_bytes, provenance_line, size_unit, summary_rows

from tests.report import fakes

GB, MB = 10**9, 10**6
GiB, MiB = fakes.GiB, fakes.MiB


def three_gb():
    """3 GB of weights, 1.5 GB of moments, 250 MB of temporaries: round in GB, not in GiB."""
    return fakes.run([fakes.case("adamw", weights=3 * GB, moments=3 * GB // 2, temporaries=250 * MB),
                      fakes.case("galore", hparams={"rank": 128}, weights=3 * GB, moments=GB // 10)])


def test_table_cells_in_gb_and_gib():
    run = three_gb()
    head, rows = summary_rows(run, "GB")
    gb = dict(zip(head, rows[0]))
    assert gb["weights (GB)"] == "3.00" and gb["moments (GB)"] == "1.50" and gb["temp (GB)"] == "0.25"
    assert gb["peak (GB)"] == "4.75"
    # the card: 24 GiB = 25.769803776 GB, less 512 MiB = 0.536870912 GB of context, less the 4.75 GB peak
    assert gb["headroom (GB)"] == "20.48"
    head, rows = summary_rows(run)  # GiB: 3e9 / 2^30 = 2.7939..., 4.75e9 / 2^30 = 4.4238...
    gib = dict(zip(head, rows[0]))
    assert gib["weights (GiB)"] == "2.79" and gib["peak (GiB)"] == "4.42" and gib["headroom (GiB)"] == "19.08"


def test_small_sizes_take_the_small_unit_of_the_family():
    assert size_unit([900 * MB], "GB") == ("MB", MB)
    assert size_unit([999 * MiB], "GiB") == ("MiB", MiB)  # 1.05 GB: a GB, but not yet a GiB
    assert size_unit([999 * MiB], "GB") == ("GB", GB)
    tiny = fakes.run([fakes.case("adamw", weights=900 * MB)])
    head, rows = summary_rows(tiny, "GB")
    assert dict(zip(head, rows[0]))["weights (MB)"] == "900.00"


def test_human_bytes_names_its_unit():
    assert human_bytes(1536 * MiB) == "1.50 GiB"
    assert human_bytes(1.5 * GB, "GB") == "1.50 GB"
    assert human_bytes(512 * MiB, "GB", 0) == "537 MB"  # 536,870,912 bytes
    assert human_bytes(200 * MiB, "GB") == "209.7 MB"
    assert human_bytes(999, "GB") == "999 B"
    with pytest.raises(ValueError, match="units 'MB': expected GiB"):
        check_units("MB")


def test_provenance_gives_the_card_in_the_units_asked():
    run = three_gb()
    assert "for rtx-4090 (25.77 GB); a 537 MB CUDA context" in provenance_line(run, "GB")
    assert "for rtx-4090 (24.00 GiB); a 512 MiB CUDA context" in provenance_line(run)


def test_memory_chart_in_gb():
    fig = charts.memory_breakdown_figure(three_gb(), "GB")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "GB at the step's peak"
    assert "in GB (10⁹ bytes)" in fig._suptitle.get_text()
    totals = [t.get_text() for t in ax.texts if t.get_gid() is None]
    assert totals == ["4.8 GB", "3.1 GB"]  # 4.75 and 3.1 GB, one decimal
    title = ax.get_title()
    assert "(25.77 GB)" in title and "GiB" not in title


def test_timeline_in_gb():
    run = fakes.seven_b()
    fig = charts.step_timeline_figure(run, "GB")
    assert fig.axes[0].get_ylabel() == "live GB"
    assert "in GB (10⁹ bytes)" in fig._suptitle.get_text()
    cap = [t.get_text() for t in fig.legends[0].get_texts() if "rtx-4090" in t.get_text()]
    assert cap == ["rtx-4090: 25.8 GB"]


def test_estimated_vs_measured_in_gb():
    est, meas = fakes.seven_b(), fakes.seven_b("measured")
    fig = charts.estimated_vs_measured_figure(est, meas, "GB")
    values = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "value"]
    w = int(12.55 * GiB)
    assert f"= {w / GB:,.2f} GB" in values  # weights agree: 13.48 GB
    assert not any("iB" in v for v in values)
    ax = fig.axes[0]
    ticks = [ax.xaxis.get_major_formatter()(v, i) for i, v in enumerate(ax.get_xticks())]
    assert {"100 MB", "1 GB", "10 GB", "100 GB"} <= set(ticks) and not any("iB" in t for t in ticks)


def test_compare_cells_in_gb():
    a, b = fakes.seven_b(), fakes.seven_b()
    b.cases[3].memory_bytes["history"] //= 2
    head, rows = comparison_cells(comparison([a, b]), "GB")
    by = {(r[0], r[1]): r[2:] for r in rows}
    h0 = a.cases[3].memory_bytes["history"]
    h1 = b.cases[3].memory_bytes["history"]
    assert by[("natural-galore (s=10)", "memory.history")] == [f"{h0 / GB:.2f} GB", f"{h1 / GB:.2f} GB",
                                                               f"{(h1 - h0) / GB:+.2f} GB (-50.0%)"]
    assert by[("adamw", "memory.temporaries")][0] == "536.9 MB"  # 512 MiB


def test_units_on_the_command_line(tmp_path):
    import json

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(three_gb().to_dict()))
    r = subprocess.run([sys.executable, "-m", "ngl_profile.cli", "report", str(tmp_path / "a"), "--units", "gb",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| weights (GB) |" in md and "| 3.00 |" in md and "(GiB)" not in md
    r = subprocess.run([sys.executable, "-m", "ngl_profile.cli", "compare", str(tmp_path / "a"), str(tmp_path / "a"),
                        "--units", "parsecs"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--units" in r.stderr and len(r.stderr.strip().splitlines()) == 1
