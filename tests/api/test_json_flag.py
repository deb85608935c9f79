"""`ngl-profile run --json`: the results object on stdout and nothing else; errors stay exit 2."""
import json
import subprocess
import sys


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ngl_profile.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_json_on_stdout_is_the_results_file(tmp_path):
    scn = tmp_path / "small.toml"
    scn.write_text('[scenario]\nname = "small"\nmodel = "tiny"\nseq_len = 16\nbatch_size = 1\n\n[[optimizers]]\nname = "adamw"\n')
    out = tmp_path / "run"
    r = cli("run", scn, "--mode", "estimated", "--out", out, "--no-report", "--json")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert printed == json.loads((out / "results.json").read_text())
    assert printed["scenario"]["name"] == "small" and [c["optimizer"]["name"] for c in printed["cases"]] == ["adamw"]
    assert "small: 1 optimizer(s)" in r.stderr and "results:" in r.stderr  # the table and progress moved


def test_errors_still_exit_2_with_one_line(tmp_path):
    for args in (("run", "tiny", "--gpu", "nope", "--json"),
                 ("run", "tiny", "--json", "--sweep", "seq_len=8,16", "--out", tmp_path / "s")):
        r = cli(*args)
        assert r.returncode == 2, r.stderr
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ngl-profile: error: ")
