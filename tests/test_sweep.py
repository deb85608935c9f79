"""`run --sweep AXIS=V1,V2,...`: the spec's errors, the runs it makes, what an interruption keeps, and
the chart and table it draws."""
import json
import subprocess
import sys

import pytest

import ngl_profile.engine.runner as runner
from ngl_profile.cli import main
from ngl_profile.report import charts
from ngl_profile.report.sweep import axis_sweep, axis_sweep_figure, sweep_markdown, sweep_rows
from ngl_profile.schema.presets import load_scenario
from ngl_profile.schema.results import CaseResult, RunResult, write_json_atomic
from ngl_profile.schema.sweep import parse_sweep

from tests.report import fakes

GiB, MiB = fakes.GiB, fakes.MiB


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    charts.plt().close("all")


# --- the spec ---

@pytest.mark.parametrize("extra,message", [
    (["--sweep", "foo=1"], "unknown axis 'foo'; allowed: seq_len, batch_size, rank, history_size"),
    (["--sweep", "seq_len="], "--sweep seq_len: expected comma-separated integers"),
    (["--sweep", "seq_len=64,,128"], "--sweep seq_len: expected comma-separated integers"),
    (["--sweep", "seq_len=abc"], "--sweep seq_len: 'abc' is not an integer"),
    (["--sweep", "seq_len"], "expected AXIS=V1,V2,..."),
    (["--sweep", "seq_len=64,64"], "--sweep seq_len: 64 given twice"),
    (["--sweep", "seq_len=0"], "--sweep seq_len=0: seq_len must be an integer in [1, 1048576]; got 0"),
    (["--sweep", "batch_size=100000"], "--sweep batch_size=100000: batch_size must be an integer in [1, 65536]"),
    (["--sweep", "rank=0"], "--sweep rank=0: rank must be an integer in [1, 1048576]; got 0"),
    (["--sweep", "history_size=-1"], "history_size must be an integer in [0, 4096]"),
    (["--sweep", "seq_len=64", "--sweep", "rank=8"], "--sweep: one axis at a time; got 2"),
    (["--optimizers", "adamw,lora", "--sweep", "rank=8"], "--sweep rank: it applies to none of tiny's optimizers"),
])
def test_a_bad_sweep_is_one_line_exit_2_and_runs_nothing(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(runner, "run_scenario", lambda *a, **k: pytest.fail("ran despite a bad --sweep"))
    out = tmp_path / "sweep"
    assert main(["run", "tiny", "--mode", "estimated", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_length_past_the_models_positions_is_refused(tmp_path, capsys):
    toml = tmp_path / "r.toml"
    toml.write_text('[scenario]\nname = "r"\nmodel = "roberta-base"\n\n[[optimizers]]\nname = "adamw"\n')
    assert main(["run", str(toml), "--mode", "estimated", "--sweep", "seq_len=256,1024",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--sweep seq_len=1024: seq_len must be at most 512 for roberta-base" in capsys.readouterr().err


def test_rank_is_set_only_where_the_optimizer_takes_one():
    scn = load_scenario("tiny")
    sweep = parse_sweep(["rank=4,32"], scn)
    assert sweep.values == (4, 32)
    for v, s in zip(sweep.values, sweep.scenarios):
        got = {c.name: c.hparams.get("rank") for c in s.optimizers}
        # LoRA's rank is its adapter's, not a projection's: it stays as the file sets it (as --rank does)
        assert got == {"adamw": None, "adamw8bit": None, "galore": v, "natural-galore": v,
                       "natural-galore-8bit-layerwise": v, "lora": 8}
        assert (s.seq_len, s.batch_size) == (scn.seq_len, scn.batch_size)
    # a label of the file's own may name the old value: the one run is added to it
    seven = load_scenario("7b")
    labelled = next(c for c in seven.optimizers if c.label != c.name and "history_size" in c.hparams)
    s = parse_sweep(["history_size=8"], seven).scenarios[0]
    assert any(c.label == labelled.label + " [history_size=8]" and c.hparams["history_size"] == 8
               for c in s.optimizers)


# --- runs ---

def test_sweep_cli_runs_each_value_into_its_own_folder(tmp_path):
    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "ngl_profile.cli", "run", "tiny", "--mode", "estimated",
                        "--optimizers", "galore", "--sweep", "seq_len=64,256", "--out", str(out),
                        "--no-report"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    peaks = {}
    for v in (64, 256):
        data = json.loads((out / f"seq_len-{v}" / "results.json").read_text())  # a normal run's file
        assert data["scenario"]["seq_len"] == v and data["mode"] == "estimated"
        assert [c["optimizer"]["label"] for c in data["cases"]] == ["galore"]  # one: the fakes test more
        assert all(c["status"] == "ok" for c in data["cases"])
        peaks[v] = {c["optimizer"]["label"]: c["peak_bytes"] for c in data["cases"]}
    assert peaks[256]["galore"] > peaks[64]["galore"]  # 4× the tokens: more activations
    md = (out / "sweep.md").read_text()
    unit, scale = ("GiB", GiB) if max(max(p.values()) for p in peaks.values()) >= GiB else ("MiB", MiB)
    cells = " | ".join(f"{peaks[v]['galore'] / scale:,.2f}" for v in (64, 256))
    assert f"| galore | {cells} | 256 |" in md  # the table is the results files', in the unit it names
    assert f"Peak memory in {unit}" in md and "seq_len-64/results.json" in md
    assert not (out / "sweep.png").exists() and not (out / "seq_len-64" / "report.md").exists()  # --no-report
    assert "largest seq_len that fits" in r.stdout


def _fake_runs(interrupt_at=None, crash_at=None):
    calls = []

    def run_scenario(scn, mode, device, out, on_event=lambda *a: None, jobs=None):
        calls.append(scn.seq_len)
        if scn.seq_len == interrupt_at:
            raise KeyboardInterrupt()
        cases = [CaseResult(optimizer=c.to_dict(), status="error" if scn.seq_len == crash_at else "ok",
                            message="RuntimeError: boom" if scn.seq_len == crash_at else "", provenance=mode,
                            peak_bytes=scn.seq_len * MiB, fits=True) for c in scn.optimizers]
        run = RunResult(scenario=scn.to_dict(), gpu={"name": "rtx-4090", "memory_bytes": 24 * GiB}, mode=mode,
                        device=device, environment={}, cases=cases)
        write_json_atomic(out / "results.json", run.to_dict())
        return run

    return run_scenario, calls


def test_an_interrupted_sweep_keeps_what_finished(tmp_path, monkeypatch, capsys):
    fake, calls = _fake_runs(interrupt_at=128)
    monkeypatch.setattr(runner, "run_scenario", fake)
    out = tmp_path / "sweep"
    assert main(["run", "tiny", "--mode", "estimated", "--optimizers", "galore", "--sweep", "seq_len=64,128,256",
                 "--out", str(out), "--no-report"]) == 130
    assert calls == [64, 128]  # stopped at the interruption, 256 never started
    assert json.loads((out / "seq_len-64" / "results.json").read_text())["scenario"]["seq_len"] == 64
    md = (out / "sweep.md").read_text()
    assert "| galore | 64.00 |" in md and "Not finished (interrupted): seq_len = 128, 256." in md
    assert not (out / ".ngl-profile.lock").exists()


def test_a_crashed_case_in_a_sweep_exits_3_after_every_value_ran(tmp_path, monkeypatch):
    fake, calls = _fake_runs(crash_at=64)
    monkeypatch.setattr(runner, "run_scenario", fake)
    assert main(["run", "tiny", "--mode", "estimated", "--optimizers", "galore", "--sweep", "seq_len=64,128",
                 "--out", str(tmp_path / "s"), "--no-report"]) == 3
    assert calls == [64, 128] and "| galore | error | 128.00 |" in (tmp_path / "s" / "sweep.md").read_text()


def test_a_sweep_does_not_overwrite_a_finished_value_without_force(tmp_path, monkeypatch, capsys):
    fake, calls = _fake_runs()
    monkeypatch.setattr(runner, "run_scenario", fake)
    out = tmp_path / "s"
    (out / "seq_len-128").mkdir(parents=True)
    (out / "seq_len-128" / "results.json").write_text("{}")
    assert main(["run", "tiny", "--mode", "estimated", "--optimizers", "galore", "--sweep", "seq_len=64,128",
                 "--out", str(out), "--no-report"]) == 2
    assert calls == [] and "seq_len-128 already holds a run's results.json" in capsys.readouterr().err


# --- the chart and the table ---

def rank_sweep(ranks=(128, 512, 1024), cap=24 * GiB):
    """A 7B rank sweep: galore grows with the rank; adamw has none and LoRA's (its adapter's) is not
    swept: the same at every value."""
    runs = []
    for r in ranks:
        w = int(12.55 * GiB)
        cases = [fakes.case("adamw", cap=cap, weights=w, grads=w, moments=2 * w),
                 fakes.case("galore", hparams={"rank": r}, cap=cap, weights=w, grads=86 * MiB, moments=r * 8 * MiB,
                            projectors=r * 2 * MiB),
                 fakes.case("lora", hparams={"rank": 8}, cap=cap, weights=w, moments=100 * MiB)]  # its adapter's
        runs.append(fakes.run(cases, cap=cap))
    return runs


def _series(fig):
    return {line.get_label(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "series"}


def test_the_chart_draws_each_optimizer_against_the_axis_with_the_cards_line(tmp_path):
    runs = rank_sweep()
    fig = axis_sweep_figure(runs, "rank")
    lines = _series(fig)
    assert set(lines) == {"adamw (rank not swept for it: the same at every value)", "galore",
                          "lora (rank not swept for it: the same at every value)"}
    galore = lines["galore"]
    assert list(galore.get_xdata()) == [128, 512, 1024]
    assert list(galore.get_ydata()) == [r.cases[1].peak_bytes / GiB for r in runs]  # GiB: these are ≥ 1 GiB
    ax = galore.axes
    (cap,) = [line for line in ax.get_lines() if line.get_gid() == "capacity"]
    assert cap.get_ydata()[0] == 24  # the card, in the axis' unit
    assert ax.get_ylabel() == "peak memory (GiB)" and "rank" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["128", "512", "1,024"]  # the values run
    # adamw (50 GiB) does not fit 24 GiB: hollow markers on its line; galore fits throughout
    too_big = [line for line in ax.get_lines() if line.get_gid() == "too-big"]
    assert len(too_big) == 1 and list(too_big[0].get_xdata()) == [128, 512, 1024]
    assert not any(a.get_gid() == "axis-break" for a in ax.get_lines())  # the card is on this scale
    assert axis_sweep(runs, "rank", tmp_path / "sweep.png").stat().st_size > 10_000


def test_the_chart_breaks_its_axis_when_the_card_dwarfs_every_peak():
    runs = []
    for seq in (64, 128, 256):
        runs.append(fakes.run([fakes.case("galore", weights=2 * MiB, activations=seq * 64 * 1024),
                               fakes.case("lora", weights=2 * MiB, activations=seq * 64 * 1024)], seq=seq,
                              model="tiny"))
    fig = axis_sweep_figure(runs, "seq_len")
    series = _series(fig)
    line = series["galore"]
    # lora's line lies exactly on galore's: the legend says so, or galore would seem to be missing
    assert "lora\n   (the same peaks as galore: drawn over it)" in series
    main_ax = line.axes
    assert main_ax.get_ylabel() == "" and "peak memory (MiB)" in fig.get_supylabel()  # MiB: a tiny model
    assert list(line.get_ydata()) == [r.cases[0].peak_bytes / MiB for r in runs]
    top = [a for a in fig.axes if a is not main_ax and any(x.get_gid() == "capacity" for x in a.get_lines())]
    assert len(top) == 1 and top[0].get_ylim()[0] < 24 * 1024 < top[0].get_ylim()[1]
    assert main_ax.get_ylim()[1] < max(line.get_ydata()) * 1.2  # the peaks fill the main panel
    assert any(t.get_gid() == "break-note" for t in main_ax.texts)


def test_units_gb_draws_and_tabulates_the_sweep_in_decimal_units():
    runs = rank_sweep()
    fig = axis_sweep_figure(runs, "rank", "GB")
    galore = _series(fig)["galore"]
    ax = galore.axes
    assert ax.get_ylabel() == "peak memory (GB)"
    assert list(galore.get_ydata()) == [r.cases[1].peak_bytes / 1e9 for r in runs]
    (cap,) = [line for line in ax.get_lines() if line.get_gid() == "capacity"]
    assert cap.get_ydata()[0] == pytest.approx(24 * GiB / 1e9)
    (label,) = [t.get_text() for t in ax.texts if t.get_gid() == "capacity-label"]
    assert label.endswith(": 26 GB")  # 24 GiB is 25.8 GB; not "24 GiB" on a GB axis
    head, rows, unit = sweep_rows(runs, "rank", "GB")
    assert unit == "GB"
    assert {r[0]: r for r in rows}["galore"][1] == f"{runs[0].cases[1].peak_bytes / 1e9:,.2f}"
    md = sweep_markdown(runs, "rank", [128, 512, 1024], {128: "rank-128", 512: "rank-512", 1024: "rank-1024"},
                        units="GB")
    assert "(25.77 GB). Peak memory in GB;" in md and "GiB" not in md


def test_sweep_rows_name_the_largest_value_that_fits():
    # galore: 12.55 GiB + 86 MiB + rank·10 MiB, + 512 MiB context: 13.9 / 17.6 / 22.6 GiB at 128 / 512 / 1024
    runs = rank_sweep(cap=20 * GiB)
    head, rows, unit = sweep_rows(runs, "rank")
    assert head == ["optimizer", "rank=128", "rank=512", "rank=1024", "largest rank that fits"] and unit == "GiB"
    by = {r[0]: r for r in rows}
    assert by["galore"][1:] == [f"{run.cases[1].peak_bytes / GiB:,.2f}" for run in runs[:2]] + \
        [f"{runs[2].cases[1].peak_bytes / GiB:,.2f} ✗", "512"]
    assert by["adamw"][-1] == by["lora"][-1] == "(not swept)"
    assert all(cell.endswith("✗") for cell in by["adamw"][1:4])  # 50 GiB of weights, grads and moments
