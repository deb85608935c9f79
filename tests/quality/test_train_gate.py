"""The CI gate of quality mode: the tiny scenario, trained for real on stdlib bytes, still learns —
held-out loss after 40 steps clearly below both the uniform ln 256 and the unigram baseline computed
from the same data. One training pass (module fixture) serves every test here; with it the results
file, its loss figures as `check` reads them, and the report files."""
import math

import pytest

from ngl_profile.analysis.regress import LOSS, metrics
from ngl_profile.quality.config import load_quality
from ngl_profile.quality.run import OFFICIAL_SUFFIX, train_scenario
from ngl_profile.records import write_run
from ngl_profile.schema.results import load_results

STEPS = 40


def on_one_thread(fn, *args, **kwargs):
    # one thread: a model this small gains nothing from two, and on a busy 2-core runner two
    # threads spinning against the other jobs made it 10x slower (0.46 s a step instead of 0.04)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def train_on_one_thread(scn, spec):
    return on_one_thread(train_scenario, scn, spec)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    scn, spec = load_quality("quality-tiny")
    scn = scn.select(["adamw", "natural-galore s=4"])
    run = train_on_one_thread(scn, spec.with_overrides(steps=STEPS, seeds=1, eval_every=20))
    out = tmp_path_factory.mktemp("quality")
    write_run(run, out)
    return run, out


def test_training_learns(trained):
    run, _ = trained
    base = run.scenario["quality"]["baselines"]
    assert base["uniform_loss"] == pytest.approx(math.log(256))
    assert base["unigram_loss"] < base["uniform_loss"] - 1  # Python source is far from uniform bytes
    labels = [c.label for c in run.cases]
    assert labels == ["adamw", "natural-galore s=4", "natural-galore s=4" + OFFICIAL_SUFFIX]
    for c in run.cases:
        curve = c.quality["curves"][0]
        assert curve["diverged_at"] is None and len(curve["train_loss"]) == STEPS
        assert curve["eval_steps"] == [0, 20, 40]
        # an untrained model predicts near-uniform bytes
        assert abs(curve["heldout_loss"][0] - base["uniform_loss"]) < 0.2
        assert c.quality["heldout_loss"] < base["unigram_loss"] - 0.05, c.label


def test_same_initialisation_and_batches(trained):
    run, _ = trained
    first = [c.quality["curves"][0] for c in run.cases]
    # same weights at step 0 (same held-out loss, bit for bit) and the same first batch
    assert len({f["heldout_loss"][0] for f in first}) == 1
    assert len({f["train_loss"][0] for f in first}) == 1


def test_memory_and_speed_of_the_same_case(trained):
    run, _ = trained
    adamw, ngl, official = run.cases
    assert ngl.memory_bytes["history"] > 0 and adamw.memory_bytes["history"] == 0
    assert official.memory_bytes["history"] > 0  # its list of columns, tagged by its state key
    for c in run.cases:
        assert c.provenance == "estimated" and c.tokens_per_s > 0
        assert c.step_time_s["total"] >= c.step_time_s["optimizer"] > 0


def test_results_file_carries_the_loss(trained):
    run, out = trained
    again = load_results(out)
    m = metrics(again)
    for c in run.cases:
        assert m[c.label][LOSS] == pytest.approx(c.quality["heldout_loss"])
    assert again.scenario["quality"]["corpus"]["sha256"] == run.scenario["quality"]["corpus"]["sha256"]


def test_report_files(trained, tmp_path):
    from ngl_profile.quality.report import write_report

    run, _ = trained
    files = write_report(run, tmp_path, wall_s=1.0)
    assert [f.name for f in files] == ["report.md", "loss_curves.png", "pareto.png"]
    text = files[0].read_text()
    assert "**Verdict:** " in text and "one seed there is no spread" in text
    for c in run.cases:
        assert f"| {c.label} |" in text


def test_cli_end_to_end(tmp_path, capsys):
    import torch

    from ngl_profile.cli import main

    out = tmp_path / "q"
    argv = ["train", "quality-tiny", "--steps", "3", "--seeds", "1", "--eval-every", "3", "--optimizers", "galore",
            "--threads", "1", "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("Lowest held-out loss: galore [")
        assert {p.name for p in out.iterdir()} == {"results.json", "report.md", "loss_curves.png", "pareto.png"}
        assert main(argv) == 2 and "pass --force" in capsys.readouterr().err  # never over a finished run
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    run = load_results(out)
    assert [c.label for c in run.cases] == ["galore"] and run.scenario["quality"]["steps"] == 3
    assert run.scenario["quality"]["official_formula"] == []  # its case was not selected


def test_tuning_per_case_grid_and_the_official_twin(tmp_path):
    """Each case is swept over its own grid; the official-formula row runs at its twin's chosen lr
    without a sweep of its own (so that only the formula differs), and an lr chosen at a grid's end
    is flagged."""
    from ngl_profile.quality.run import at_grid_edge

    scn, spec = load_quality("quality-tiny")
    scn = scn.select(["adamw", "natural-galore s=4"])
    for c in scn.optimizers:
        c.hparams.pop("lr", None)
    spec = spec.with_overrides(steps=4, seeds=1, eval_every=4, tune_steps=2,
                               lr_grid={"adamw": [1e-3, 3e-3], "*": [3e-3, 1e-2, 3e-2]})
    run = train_on_one_thread(scn, spec)
    adamw, ngl, official = run.cases
    assert [s["lr"] for s in adamw.quality["lr_sweep"]] == [1e-3, 3e-3]
    assert [s["lr"] for s in ngl.quality["lr_sweep"]] == [3e-3, 1e-2, 3e-2]
    best = min(ngl.quality["lr_sweep"], key=lambda s: s["tune_loss"])["lr"]
    assert ngl.quality["lr"] == best and official.quality["lr"] == best
    assert official.quality["lr_sweep"] == [] and official.quality["lr_source"].startswith("its twin's")
    assert ngl.quality["lr_at_grid_edge"] == (best != 1e-2)
    assert at_grid_edge(1e-2, [{"lr": 1e-2}]) is False  # one value is no grid to be at the edge of


def test_full_length_tuning_reuses_the_winners_run_as_seed_0(monkeypatch):
    """tune_steps 0: each grid value trains seed 0's whole run; the winner's run is seed 0's (the
    same losses, bit for bit, as training seed 0 at that lr again), so seeds − 1 runs remain."""
    from ngl_profile.quality import run as quality_run
    from ngl_profile.quality.data import load_corpus

    scn, spec = load_quality("quality-tiny")
    scn = scn.select(["galore"])
    scn.optimizers[0].hparams.pop("lr", None)
    spec = spec.with_overrides(steps=4, seeds=2, eval_every=2, tune_steps=0, lr_grid=[3e-3, 3e-2])
    runs = []
    real = quality_run.train_run
    monkeypatch.setattr(quality_run, "train_run", lambda *a, **k: runs.append(k["seed"]) or real(*a, **k))
    run = train_on_one_thread(scn, spec)
    assert runs == [0, 0, 1]  # the two grid values at seed 0, then seed 1 only
    q = run.cases[0].quality
    seed0 = q["curves"][0]
    assert seed0["seed"] == 0 and seed0["lr"] == q["lr"] and seed0["eval_steps"] == [0, 2, 4]
    assert seed0["tune_loss"] == min(s["tune_loss"] for s in q["lr_sweep"])
    corpus = load_corpus(spec.max_bytes, spec.heldout_every)
    again = on_one_thread(real, scn, "galore", {**scn.optimizers[0].resolved_hparams(scn), "lr": q["lr"]}, corpus=corpus, steps=4,
                 seed=0, windows=corpus.eval_windows("test", scn.seq_len, spec.eval_sequences), eval_every=2,
                 warmup_fraction=spec.warmup_fraction, min_lr_ratio=spec.min_lr_ratio)
    assert again.train_loss == seed0["train_loss"] and again.heldout_loss == seed0["heldout_loss"]
