"""The bad-input corpus: every subcommand fed wrong TOML, wrong results/baseline/threshold files, bad
paths and bad arguments. Each must exit 2 with exactly one line on stderr, no traceback, write
nothing outside --out, and leave any results already on disk untouched.

In-process through `cli.main` (a subprocess per case would take minutes); the subprocess tests of
the real console script are in test_cli.py."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ngl_profile.cli import main

HEAD = '[scenario]\nname = "x"\nmodel = "tiny"\n'
OPT = '[[optimizers]]\nname = "{}"\n'

# --- scenario files (run) ---------------------------------------------------------------------
SCENARIO_BAD = {
    # [scenario] keys: wrong types, ranges, non-finite numbers, bools where numbers belong
    "name-int": ('[scenario]\nname = 3\nmodel = "tiny"\n', "name must be"),
    "name-dotdot": ('[scenario]\nname = "../escape"\nmodel = "tiny"\n', "no '/' or '..'"),
    "name-slash": ('[scenario]\nname = "a/b"\nmodel = "tiny"\n', "no '/' or '..'"),
    "name-empty": ('[scenario]\nname = ""\nmodel = "tiny"\n', "name must be"),
    "name-abs": ('[scenario]\nname = "/etc/x"\nmodel = "tiny"\n', "name must be"),
    "name-list": ('[scenario]\nname = ["a"]\nmodel = "tiny"\n', "name must be"),
    "model-int": ('[scenario]\nname = "x"\nmodel = 7\n', "model must be"),
    "model-unknown": ('[scenario]\nname = "x"\nmodel = "gpt5"\n', "unknown model 'gpt5'"),
    "model-table": ('[scenario]\nname = "x"\nmodel = {a = 1}\n', "model must be"),
    "seq-str": (HEAD + 'seq_len = "x"\n', "seq_len must be an integer"),
    "seq-zero": (HEAD + "seq_len = 0\n", "seq_len must be an integer"),
    "seq-huge": (HEAD + "seq_len = 1099511627776\n", "seq_len must be an integer"),
    "seq-float": (HEAD + "seq_len = 1.5\n", "seq_len must be an integer"),
    "seq-bool": (HEAD + "seq_len = true\n", "seq_len must be an integer"),
    "seq-roberta": ('[scenario]\nname = "x"\nmodel = "roberta-base"\nseq_len = 1024\n', "at most 512"),
    "batch-neg": (HEAD + "batch_size = -1\n", "batch_size must be an integer"),
    "batch-huge": (HEAD + "batch_size = 10000000\n", "batch_size must be an integer"),
    "dtype-int": (HEAD + "dtype = 1\n", "dtype must be one of"),
    "dtype-fp16": (HEAD + 'dtype = "float16"\n', "dtype must be one of"),
    "steps-zero": (HEAD + "steps = 0\n", "steps must be an integer"),
    "warmup-neg": (HEAD + "warmup = -1\n", "warmup must be an integer"),
    "gpu-int": (HEAD + "gpu = 4090\n", "gpu must be a GPU name"),
    "gpu-unknown": (HEAD + 'gpu = "gtx-480"\n', "unknown GPU 'gtx-480'"),
    "gpu-list": (HEAD + 'gpu = ["4090"]\n', "gpu must be a GPU name"),
    "ckpt-str": (HEAD + 'checkpointing = "yes"\n', "checkpointing must be true or false"),
    "ckpt-int": (HEAD + "checkpointing = 1\n", "checkpointing must be true or false"),
    "mode-bad": (HEAD + 'mode = "fast"\n', "mode must be one of"),
    "lr-inf": (HEAD + "lr = inf\n", "lr must be a finite number > 0"),
    "lr-nan": (HEAD + "lr = nan\n", "lr must be a finite number > 0"),
    "lr-neg": (HEAD + "lr = -1.0\n", "lr must be a finite number > 0"),
    "lr-bool": (HEAD + "lr = true\n", "lr must be a finite number > 0"),
    "lr-str": (HEAD + 'lr = "0.1"\n', "lr must be a finite number > 0"),
    "unknown-key": (HEAD + "colour = 3\n", "unknown key(s) colour"),
    # [[optimizers]] entries
    "opt-name-list": (HEAD + '[[optimizers]]\nname = ["adamw"]\n', "name must be a string"),
    "opt-name-table": (HEAD + "[[optimizers]]\nname = {a = 1}\n", "name must be a string"),
    "opt-name-int": (HEAD + "[[optimizers]]\nname = 3\n", "name must be a string"),
    "opt-no-name": (HEAD + "[[optimizers]]\nrank = 3\n", "needs a name"),
    "opt-unknown": (HEAD + OPT.format("sgd"), "unknown optimizer 'sgd'"),
    "opt-label-list": (HEAD + OPT.format("adamw") + "label = [1]\n", "label must be"),
    "opt-label-table": (HEAD + OPT.format("adamw") + "label = {x = 1}\n", "label must be"),
    "opt-label-newline": (HEAD + OPT.format("adamw") + 'label = "a\\nb"\n', "label must be"),
    "opt-unknown-hparam": (HEAD + OPT.format("adamw") + "rank = 3\n", "takes no rank"),
    "eps-str": (HEAD + OPT.format("adamw") + 'eps = "x"\n', "eps must be"),
    "eps-inf": (HEAD + OPT.format("adamw") + "eps = inf\n", "eps must be"),
    "eps-zero": (HEAD + OPT.format("adamw") + "eps = 0.0\n", "eps must be"),
    "betas-one": (HEAD + OPT.format("adamw") + "betas = [0.9]\n", "betas must be"),
    "betas-one-point-oh": (HEAD + OPT.format("adamw") + "betas = [0.9, 1.0]\n", "betas must be"),
    "betas-str": (HEAD + OPT.format("adamw") + 'betas = "x"\n', "betas must be"),
    "betas-nan": (HEAD + OPT.format("adamw") + "betas = [0.9, nan]\n", "betas must be"),
    "wd-neg": (HEAD + OPT.format("adamw") + "weight_decay = -0.1\n", "weight_decay must be"),
    "wd-nan": (HEAD + OPT.format("adamw") + "weight_decay = nan\n", "weight_decay must be"),
    "wd-bool": (HEAD + OPT.format("adamw") + "weight_decay = true\n", "weight_decay must be"),
    "opt-lr-inf": (HEAD + OPT.format("adamw") + "lr = inf\n", "lr must be"),
    "lora-rank-zero": (HEAD + OPT.format("lora") + "rank = 0\n", "rank must be"),
    "lora-rank-float": (HEAD + OPT.format("lora") + "rank = 1.5\n", "rank must be"),
    "lora-rank-bool": (HEAD + OPT.format("lora") + "rank = true\n", "rank must be"),
    "lora-dropout": (HEAD + OPT.format("lora") + "lora_dropout = 1.5\n", "lora_dropout must be"),
    "lora-alpha": (HEAD + OPT.format("lora") + "lora_alpha = -1\n", "lora_alpha must be"),
    "accum-zero": (HEAD + OPT.format("galore-layerwise") + "accumulation_steps = 0\n", "accumulation_steps must be"),
    "accum-float": (HEAD + OPT.format("galore-layerwise") + "accumulation_steps = 2.0\n",
                    "accumulation_steps must be"),
    "accum-plain": (HEAD + OPT.format("galore") + "accumulation_steps = 2\n", "takes no accumulation_steps"),
    "damping-inf": (HEAD + OPT.format("natural-galore") + "damping = inf\n", "damping must be"),
    "damping-zero": (HEAD + OPT.format("natural-galore") + "damping = 0.0\n", "damping must be"),
    "s-neg": (HEAD + OPT.format("natural-galore") + "history_size = -1\n", "history_size must be"),
    "s-bool": (HEAD + OPT.format("natural-galore") + "history_size = true\n", "history_size must be"),
    "s-galore": (HEAD + OPT.format("galore") + "history_size = 3\n", "takes no history_size"),
    "hdtype": (HEAD + OPT.format("natural-galore") + 'history_dtype = "fp4"\n', "history_dtype must be"),
    "proj-type": (HEAD + OPT.format("galore") + 'proj_type = "up"\n', "proj_type must be"),
    "proj-galore-torch": (HEAD + OPT.format("galore-torch") + 'proj_type = "tucker"\n', "no tucker"),
    "svd": (HEAD + OPT.format("galore") + 'svd = "qr"\n', "svd must be"),
    "subspace": (HEAD + OPT.format("natural-galore") + 'on_subspace_change = "x"\n', "on_subspace_change must"),
    "compile-str": (HEAD + OPT.format("natural-galore") + 'compile = "yes"\n', "compile must be true or false"),
    "gap-zero": (HEAD + OPT.format("galore") + "update_proj_gap = 0\n", "update_proj_gap must be"),
    "scale-zero": (HEAD + OPT.format("galore") + "scale = 0\n", "scale must be"),
    "rank-huge": (HEAD + OPT.format("galore") + "rank = 10000000000\n", "rank must be"),
    "adafactor-beta1": (HEAD + OPT.format("adafactor") + "beta1 = 1.0\n", "beta1 must be"),
    "dup-labels": (HEAD + OPT.format("adamw") + OPT.format("adamw"), "label 'adamw' appears twice"),
    "optimizers-table": (HEAD + "[optimizers]\nname = 'adamw'\n", "array of tables"),
    "no-optimizers": (HEAD, "no [[optimizers]] to run"),
    # [thresholds]
    "th-str": (HEAD + OPT.format("adamw") + '[thresholds]\nmemory_rel = "x"\n', "memory_rel"),
    "th-unknown": (HEAD + OPT.format("adamw") + "[thresholds]\nspeed = 1\n", "unknown threshold(s) speed"),
    "th-neg": (HEAD + OPT.format("adamw") + "[thresholds]\nmemory_rel = -1\n", "memory_rel"),
    "th-scalar": ("thresholds = 3\n" + HEAD + OPT.format("adamw"), "thresholds must be a table"),
    "th-in-optimizer": (HEAD + OPT.format("adamw") + "thresholds = 3\n", "takes no thresholds"),
    # the file itself
    "toml-syntax": ("[scenario\nname=", "not valid TOML"),
    "empty": ("", "missing [scenario] table"),
    "no-scenario-table": ('name = "x"\n', "unknown table"),
    "scenario-scalar": ('scenario = 3\n', "missing [scenario] table"),
    "needs-model": ('[scenario]\nname = "x"\n', "needs 'model'"),
    "unknown-table": (HEAD + "[extra]\n", "unknown table(s) extra"),
}


def _tree(root: Path) -> dict[str, str]:
    """Every file under root → its sha256 (to prove nothing outside --out was written or changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def expect_bad(argv: list[str], capsys, match: str, cwd: Path, out: Path | None = None) -> None:
    before = _tree(cwd)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in err, (match, err)
    after = _tree(cwd)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    inside = {k for k in changed if out is not None and (cwd / k).resolve().is_relative_to(out.resolve())}
    assert changed == inside, f"written outside --out: {sorted(changed - inside)}"


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("key", sorted(SCENARIO_BAD))
def test_bad_scenario_file(key, cwd, capsys):
    text, match = SCENARIO_BAD[key]
    path = cwd / "s.toml"
    path.write_text(text)
    expect_bad(["run", str(path), "--out", str(cwd / "out")], capsys, match, cwd, cwd / "out")


def test_bad_scenario_bytes_and_paths(cwd, capsys):
    (cwd / "latin1.toml").write_bytes(b'[scenario]\nname = "\xe9"\n')
    expect_bad(["run", str(cwd / "latin1.toml")], capsys, "cannot read", cwd)
    (cwd / "dir.toml").mkdir()
    expect_bad(["run", str(cwd / "dir.toml")], capsys, "no such scenario file", cwd)
    expect_bad(["run", str(cwd / "missing.toml")], capsys, "no such scenario file", cwd)


RUN_ARGS_BAD = {
    "unknown-preset": (["run", "nosuch"], "unknown scenario 'nosuch'"),
    "gpu": (["run", "tiny", "--gpu", "gtx-480"], "unknown GPU 'gtx-480'"),
    "optimizers-empty": (["run", "tiny", "--optimizers", ","], "expected a comma-separated list"),
    "optimizers-unknown": (["run", "tiny", "--optimizers", "sgd"], "unknown optimizer 'sgd'"),
    "mode": (["run", "tiny", "--mode", "fast"], "invalid choice"),
    "jobs-zero": (["run", "tiny", "--jobs", "0"], "--jobs must be in [1, 64]"),
    "jobs-str": (["run", "tiny", "--jobs", "many"], "invalid int value"),
    "measured-7b": (["run", "7b", "--mode", "measured"], "measured mode needs a CUDA GPU for llama-7b"),
    "unknown-flag": (["run", "tiny", "--colour"], "unrecognized arguments"),
    "no-scenario": (["run"], "required: scenario"),
    "no-command": ([], "required: COMMAND"),
    "unknown-command": (["profile"], "invalid choice"),
    "list-what": (["list", "colours"], "invalid choice"),
    "fit-knob": (["fit", "tiny", "--optimizer", "galore", "--vary", "colour"], "unknown knob 'colour'"),
    "fit-knob-twice": (["fit", "tiny", "--optimizer", "galore", "--vary", "rank,rank"], "rank given twice"),
    "fit-optimizer": (["fit", "tiny", "--optimizer", "sgd"], "unknown optimizer 'sgd'"),
    "fit-gpu": (["fit", "tiny", "--optimizer", "galore", "--gpu", "x"], "unknown GPU 'x'"),
    "fit-no-optimizer": (["fit", "tiny"], "required: --optimizer"),
    "fit-scenario": (["fit", "nosuch", "--optimizer", "galore"], "unknown scenario 'nosuch'"),
    "compare-one": (["compare", "nosuch.json"], "no such results file"),
    "report-missing": (["report", "nosuch/results.json"], "no such results file"),
    "check-no-baseline": (["check", "x.json"], "required: --baseline"),
}


@pytest.mark.parametrize("key", sorted(RUN_ARGS_BAD))
def test_bad_arguments(key, cwd, capsys):
    argv, match = RUN_ARGS_BAD[key]
    if key == "measured-7b":
        import torch

        if torch.cuda.is_available():
            pytest.skip("with a CUDA GPU, a measured 7B run is not bad input: it would start")
    expect_bad(argv, capsys, match, cwd)


def test_unwritable_out(cwd, capsys):
    (cwd / "file").write_text("x")
    expect_bad(["run", "tiny", "--out", str(cwd / "file" / "sub")], capsys, "cannot create output directory", cwd)
    expect_bad(["fit", "tiny", "--optimizer", "galore", "--out", str(cwd / "file" / "sub")], capsys,
               "cannot create output directory", cwd)


def test_out_holding_another_run_is_refused_and_kept(cwd, capsys):
    out = cwd / "out"
    out.mkdir()
    (out / "results.json").write_text('{"precious": true}')
    expect_bad(["run", "tiny", "--out", str(out)], capsys, "already holds a run's results.json", cwd)
    assert (out / "results.json").read_text() == '{"precious": true}'


def test_out_locked_by_a_live_run_is_refused(cwd, capsys):
    import fcntl

    out = cwd / "out"
    out.mkdir()
    lock = out / ".ngl-profile.lock"
    with open(lock, "w") as held:  # another run holding the folder (its own open file, its own lock)
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        expect_bad(["run", "tiny", "--out", str(out), "--force"], capsys, "being written by another ngl-profile run "
                   "(pid 4242)", cwd)
        assert lock.exists()  # not ours to remove


def test_a_lock_left_by_a_dead_run_does_not_block(cwd):
    from ngl_profile.engine.runner import output_lock

    out = cwd / "out"
    out.mkdir()
    (out / ".ngl-profile.lock").write_text("999999")  # the file stayed, its holder (and its flock) did not
    with output_lock(out):
        assert (out / ".ngl-profile.lock").read_text() == str(os.getpid())
    assert not (out / ".ngl-profile.lock").exists()


# --- results, baselines and thresholds files (report, compare, check) --------------------------
def _good_run() -> dict:
    return json.loads((Path(__file__).parent / "baselines" / "tiny-cpu.json").read_text())


def _mutate(path: str, value):
    def apply(d):
        keys = path.split(".")
        target = d
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        last = keys[-1]
        if value is _DELETE:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return d
    return apply


_DELETE = object()
RESULTS_BAD = {
    "not-json": (b"{not json", "not a readable results file"),
    "binary": (b"\x00\xff\xfe", "not a readable results file"),
    "array": (b"[]", "not a results object"),
    "no-version": (_mutate("schema_version", _DELETE), "schema_version"),
    "newer-version": (_mutate("schema_version", 99), "newer than this ngl-profile"),
    "version-str": (_mutate("schema_version", "1"), "schema_version"),
    "no-scenario": (_mutate("scenario", _DELETE), "scenario"),
    "scenario-list": (_mutate("scenario", []), "scenario"),
    "cases-dict": (_mutate("cases", {}), "cases"),
    "case-str": (_mutate("cases.0", "x"), "cases[0]"),
    "memory-str": (_mutate("cases.0.memory_bytes.history", "abc"), "memory_bytes"),
    "memory-list": (_mutate("cases.0.memory_bytes", [1, 2]), "memory_bytes"),
    "peak-str": (_mutate("cases.0.peak_bytes", "big"), "peak_bytes"),
    "tokens-list": (_mutate("cases.0.tokens_per_s", [1]), "tokens_per_s"),
    "label-list": (_mutate("cases.0.optimizer.label", ["a"]), "label"),
    "optimizer-str": (_mutate("cases.0.optimizer", "adamw"), "optimizer"),
    "status-int": (_mutate("cases.0.status", 3), "status"),
    "gpu-str": (_mutate("gpu", "4090"), "gpu"),
    "mode-int": (_mutate("mode", 1), "mode"),
}


def _write_results(tmp: Path, name: str, spec) -> Path:
    p = tmp / f"{name}.json"
    if isinstance(spec, bytes):
        p.write_bytes(spec)
    else:
        p.write_text(json.dumps(spec(_good_run())))
    return p


@pytest.mark.parametrize("key", sorted(RESULTS_BAD))
@pytest.mark.parametrize("command", ["report", "compare", "check-results", "check-baseline"])
def test_bad_results_files(key, command, cwd, capsys):
    spec, match = RESULTS_BAD[key]
    bad = _write_results(cwd, "bad", spec)
    good = cwd / "good.json"
    good.write_text(json.dumps(_good_run()))
    out = cwd / "out"
    argv = {"report": ["report", str(bad), "--out", str(out)],
            "compare": ["compare", str(good), str(bad)],
            "check-results": ["check", str(bad), "--baseline", str(good)],
            "check-baseline": ["check", str(good), "--baseline", str(bad)]}[command]
    expect_bad(argv, capsys, match, cwd, out)


THRESHOLDS_BAD = {
    "missing": (None, "no such thresholds file"),
    "syntax": ("[thresholds\n", "not valid TOML"),
    "empty": ("", "no [thresholds] table"),
    "no-table": ("memory_rel = 0.1\n", "no [thresholds] table"),
    "unknown": ("[thresholds]\nspeed = 1\n", "unknown threshold(s) speed"),
    "str": ('[thresholds]\nmemory_rel = "x"\n', "memory_rel"),
    "neg": ("[thresholds]\nmemory_abs_bytes = -1\n", "memory_abs_bytes"),
    "nan": ("[thresholds]\nmemory_rel = nan\n", "memory_rel"),
    "bool": ("[thresholds]\nmemory_rel = true\n", "memory_rel"),
    "scalar": ("thresholds = 3\n", "[thresholds]"),
}


@pytest.mark.parametrize("key", sorted(THRESHOLDS_BAD))
def test_bad_thresholds_files(key, cwd, capsys):
    text, match = THRESHOLDS_BAD[key]
    good = cwd / "good.json"
    good.write_text(json.dumps(_good_run()))
    th = cwd / "t.toml"
    if text is not None:
        th.write_text(text)
    expect_bad(["check", str(good), "--baseline", str(good), "--thresholds", str(th)], capsys, match, cwd)


def test_check_refuses_to_update_a_baseline_where_it_cannot_write(cwd, capsys):
    good = cwd / "good.json"
    good.write_text(json.dumps(_good_run()))
    expect_bad(["check", str(good), "--baseline", str(cwd / "no" / "dir" / "b.json"), "--update-baseline"],
               capsys, "does not exist", cwd)


def test_report_never_writes_outside_out_for_a_hostile_scenario_name(cwd, capsys):
    """A results file from elsewhere, whose scenario name is a path: the report stays inside --out."""
    a, b = _good_run(), _good_run()
    a["scenario"]["name"] = "../../escape"
    b["scenario"]["name"] = "/tmp/escape2"
    for name, d in (("a", a), ("b", b)):
        (cwd / f"{name}.json").write_text(json.dumps(d))
    before = _tree(cwd.parent)
    out = cwd / "out"
    rc = main(["report", str(cwd / "a.json"), str(cwd / "b.json"), "--out", str(out)])
    capsys.readouterr()
    after = _tree(cwd.parent)
    new = {k for k in after if k not in before}
    assert new and all((cwd.parent / k).resolve().is_relative_to(out.resolve()) for k in new), new
    assert rc in (0, 2)
