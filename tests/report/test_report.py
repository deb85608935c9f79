"""Every chart renders from a results file; HTML embeds its images; CSV round-trips."""
import copy
import struct

import pandas as pd
import pytest

from ngl_profile.engine.case import run_case
from ngl_profile.report.render import render_report
from ngl_profile.schema.results import RunResult

from tests.helpers import case_spec, scenario_dict


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


@pytest.fixture(scope="module")
def runs():
    def make(mode, model="tiny"):
        scn = scenario_dict(model=model, name=f"r-{model}")
        cases = [run_case(case_spec("adamw", mode=mode, scenario=scn)),
                 run_case(case_spec("natural-galore", mode=mode, scenario=scn, rank=8, history_size=2))]
        return RunResult(scenario=scn, gpu={"name": "rtx-4090", "memory_bytes": 24 << 30}, mode=mode, device="cpu",
                         environment={"device_name": "CPU", "torch": "x"}, cases=cases)
    return make("measured"), make("estimated")


def test_report_files_and_charts(tmp_path, runs):
    measured, estimated = runs
    oom = copy.deepcopy(measured)
    oom.cases[1].status, oom.cases[1].message = "oom", "CUDA out of memory"
    files = render_report([oom, estimated], tmp_path)
    names = {f.name for f in files}
    for expected in ("report.md", "report.html", "results.csv", "r-tiny-measured-memory_breakdown.png",
                     "r-tiny-measured-throughput.png", "r-tiny-measured-step_timeline.png",
                     "r-tiny-estimated-memory_breakdown.png", "r-tiny-estimated_vs_measured.png"):
        assert expected in names, names
    assert "r-tiny-estimated-throughput.png" not in names  # no measured speed: no chart, not a fake one
    for f in files:
        if f.suffix == ".png":
            w, h = png_size(f)
            assert 400 < w < 3000 and 300 < h < 3000, (f.name, w, h)
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == sum(f.suffix == ".png" for f in files)
    assert "<img" in html and "src='r-tiny" not in html  # embedded, nothing to fetch
    md = (tmp_path / "report.md").read_text()
    assert "oom — CUDA out of memory" in md and "estimated (exact tensor sizes" in md
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(df) == 2 * 2 * 10 and set(df["provenance"]) == {"measured", "estimated"}
    hist = df[(df.optimizer == "natural-galore") & (df.category == "history") & (df["mode"] == "estimated")]
    assert int(hist["bytes"].iloc[0]) == estimated.cases[1].memory_bytes["history"]


def test_size_sweep_needs_two_models(tmp_path, runs):
    measured, _ = runs
    bigger = copy.deepcopy(measured)
    bigger.scenario = dict(bigger.scenario, model="llama-60m", name="r-60m")
    for c in bigger.cases:
        c.params = {"total": 10 * c.params["total"]}
        c.peak_bytes *= 10
    files = render_report([measured, bigger], tmp_path)
    assert "size_sweep.png" in {f.name for f in files}
    png_size(tmp_path / "size_sweep.png")


def test_cases_csv_and_a_corrupt_file_among_several(tmp_path, runs):
    import json

    from ngl_profile.schema.results import load_many

    measured, estimated = runs
    (tmp_path / "a.json").write_text(json.dumps(measured.to_dict()))
    (tmp_path / "bad.json").write_text("{truncated")
    with pytest.warns(UserWarning, match="skipped: .*bad.json"):
        loaded = load_many([tmp_path / "a.json", tmp_path / "bad.json"])
    assert len(loaded) == 1
    render_report(loaded, tmp_path / "out")
    cases = pd.read_csv(tmp_path / "out" / "cases.csv")
    assert list(cases["optimizer"]) == ["adamw", "natural-galore"] and (cases["tokens_per_s"] > 0).all()
