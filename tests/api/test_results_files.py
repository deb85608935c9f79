"""What profile() and estimate(out=) write is a results file the CLI's report, compare and check read."""
import json
import shutil
import subprocess
import sys

import ngl_profile
from tests.api.models import adamw, batches, mlp, mse


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ngl_profile.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_report_compare_and_check_accept_api_results(tmp_path):
    loop_dir, est_dir = tmp_path / "loop", tmp_path / "est"
    model = mlp()
    opt = adamw(model)
    with ngl_profile.profile(model, opt, out=loop_dir, track_steps=2) as prof:
        for i in range(3):
            (model(batches()(i)["x"]).pow(2).mean()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            prof.step()
    ngl_profile.estimate(mlp, adamw, batches(), loss_fn=mse, flops=False, out=est_dir / "results.json")

    r = cli("report", loop_dir, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert "adamw" in (tmp_path / "rep" / "report.md").read_text()

    r = cli("compare", loop_dir, est_dir, "--md")
    assert r.returncode == 0, r.stderr
    assert "memory.moments" in r.stdout and "mode 'estimated' vs 'measured'" in r.stdout + r.stderr

    base = tmp_path / "baseline.json"
    shutil.copy(loop_dir / "results.json", base)  # a complete, clean run: check takes it as a baseline
    r = cli("check", loop_dir, "--baseline", base)
    assert r.returncode == 0, r.stdout + r.stderr

    # the same run with 50 % more moments: check must call it a regression (exit 1)
    worse = tmp_path / "worse.json"
    data = json.loads((loop_dir / "results.json").read_text())
    case = data["cases"][0]
    extra = case["memory_bytes"]["moments"] // 2
    case["memory_bytes"]["moments"] += extra
    case["peak_bytes"] += extra
    worse.write_text(json.dumps(data))
    r = cli("check", worse, "--baseline", base, "--thresholds", _thresholds(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "memory.moments rose by 50" in r.stdout


def _thresholds(tmp_path):
    # the default 1 MiB floor would hide a KiB-sized model's change
    p = tmp_path / "th.toml"
    p.write_text("[thresholds]\nmemory_abs_bytes = 0\n")
    return p
