"""The CLI end to end, through a subprocess, as a user runs it."""
import json
import subprocess
import sys
import time

import pytest


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ngl_profile.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_is_fast():
    t0 = time.perf_counter()
    r = cli("--help")
    assert r.returncode == 0 and "run" in r.stdout
    assert time.perf_counter() - t0 < 10


def test_run_tiny_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = cli("run", "tiny", "--mode", "measured", "--optimizers", "adamw,natural-galore", "--out", str(out),
            "--no-report")
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["schema_version"] == 2 and data["mode"] == "measured" and data["device"] == "cpu"
    assert [c["optimizer"]["label"] for c in data["cases"]] == ["adamw", "natural-galore"]
    for c in data["cases"]:
        assert c["status"] == "ok" and c["provenance"] == "measured" and c["tokens_per_s"] > 0
        assert sum(c["memory_bytes"].values()) == c["peak_bytes"]
        assert set(c["memory_bytes"]) == {"weights", "grads", "moments", "quant_stats", "projectors", "history",
                                          "activations", "temporaries", "allocator_slack", "context"}
    assert "natural-galore" in r.stdout and "fits" in r.stdout
    for key in ("scenario", "gpu", "environment"):
        assert data[key]
    assert data["gpu"]["name"] == "rtx-4090" and data["environment"]["torch"]


@pytest.mark.parametrize("args,message", [
    (["run", "nosuch"], "unknown scenario 'nosuch'"),
    (["run", "tiny", "--gpu", "gtx-480"], "unknown GPU 'gtx-480'"),
    (["run", "tiny", "--optimizers", "sgd"], "unknown optimizer 'sgd'"),
    (["run", "7b", "--mode", "measured"], "measured mode needs a CUDA GPU for llama-7b"),
    (["run", "tiny", "--out", "/proc/nope"], "cannot create output directory"),
    (["report", "/nonexistent/results.json"], "no such results file"),
    (["fit", "tiny", "--gpu", "4090", "--optimizer", "adamw", "--vary", "colour"], "unknown knob 'colour'"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    r = cli(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("what,expect", [("models", "llama-7b"), ("gpus", "rtx-4090"),
                                         ("optimizers", "natural-galore-8bit-layerwise"), ("scenarios", "llama-7b")])
def test_list(what, expect):
    r = cli("list", what)
    assert r.returncode == 0 and expect in r.stdout


def test_ctrl_c_keeps_finished_cases(tmp_path):
    import os
    import signal

    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "ngl_profile.cli", "run", "tiny", "--mode", "measured",
                          "--optimizers", "adamw,adafactor,galore,natural-galore", "--out", str(out), "--no-report"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=_as_in_a_terminal)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads((out / "results.json").read_text())["cases"]:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
    cases = json.loads((out / "results.json").read_text())["cases"]
    assert 1 <= len(cases) < 4 and all(c["status"] == "ok" for c in cases)


def _as_in_a_terminal():
    """Ctrl-C's default action, as in a terminal: a test run started as a background job of a script
    inherits SIGINT ignored (POSIX shells do that without job control), and ngl-profile keeps it so."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _case_processes(marker: str) -> list[int]:
    """PIDs of live processes whose command line mentions `marker` (the run's temp folder)."""
    import os

    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_to_run_ends_its_case_process_and_removes_the_temp_folder(tmp_path, sig, code):
    """Only the ngl-profile process gets the signal (a service manager's SIGTERM, a `kill`), not the
    process group: the runner itself must end the case it started, not orphan it."""
    import os
    import signal

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "run"
    env = dict(os.environ, TMPDIR=str(tmp), NGL_PROFILE_FAULT="galore=hang")
    p = subprocess.Popen([sys.executable, "-m", "ngl_profile.cli", "run", "tiny", "--mode", "estimated",
                          "--optimizers", "adamw,galore", "--jobs", "1", "--out", str(out), "--no-report"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=_as_in_a_terminal)
    deadline = time.time() + 120
    while time.time() < deadline:  # adamw finished, galore's case process is hanging
        try:
            if json.loads((out / "results.json").read_text())["cases"] and _case_processes(str(tmp)):
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.2)
    else:
        p.kill()
        pytest.fail("the run never reached its second case")
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    orphans = _case_processes(str(tmp))
    for pid in orphans:  # never leave a hanging case behind, even when this test fails
        os.kill(pid, signal.SIGKILL)
    assert p.returncode == code and "Traceback" not in err, err
    assert orphans == []  # no orphaned case process
    assert list(tmp.glob("ngl-profile-*")) == []  # our temp folder is gone (torch's caches may stay)
    cases = json.loads((out / "results.json").read_text())["cases"]
    assert [c["optimizer"]["label"] for c in cases] == ["adamw"]  # the finished case is kept
    assert not (out / ".ngl-profile.lock").exists()


def test_report_of_several_runs_never_overwrites_the_first_runs_report(tmp_path, monkeypatch):
    """`report A B` without --out writes a combined report in a new folder; A's own files stay."""
    import hashlib
    import shutil
    from pathlib import Path

    from ngl_profile.cli import main

    base = Path(__file__).parent / "baselines" / "tiny-cpu.json"
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        shutil.copy(base, d / "results.json")
    (a / "report.md").write_text("run A's own report")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in a.iterdir()}
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(a), str(b)]) == 0
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in a.iterdir()} == before
    combined = list((tmp_path / "reports").glob("combined-*"))
    assert len(combined) == 1 and (combined[0] / "report.md").is_file()


@pytest.mark.parametrize("command,positional", [("run", "scenario"), ("fit", "scenario"), ("report", "results"),
                                                ("compare", "results"), ("check", "results")])
def test_every_positional_argument_has_help(command, positional, capsys):
    from ngl_profile.cli import main

    assert main([command, "--help"]) == 0
    section = capsys.readouterr().out.split("positional arguments:")[1].split("options:")[0]
    words = section.split()
    assert words[0] == positional and len(words) > 2, section  # the name, then its help text


def test_version_and_examples(capsys):
    from ngl_profile import __version__
    from ngl_profile.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ngl-profile {__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "ngl-profile run 7b --gpu 4090" in out and "exit codes:" in out


def test_an_internal_error_is_one_line_with_a_distinct_code_and_debug_shows_it(monkeypatch, capsys):
    from ngl_profile import commands
    from ngl_profile.cli import main

    def boom(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(commands, "list_things", boom)
    assert main(["list", "gpus"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: ZeroDivisionError: a bug" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["list", "gpus", "--debug"])
