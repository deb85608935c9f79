"""The examples/ scripts (the README's Python API section) run as a user runs them."""
import subprocess
import sys
from pathlib import Path

import pytest

from ngl_profile.schema.results import load_results

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("script, mode, name", [
    ("estimate_custom_model.py", "estimated", "estimate"),
    ("profile_own_loop.py", "measured", "profile"),
    ("hf_trainer_callback.py", "measured", "hf-trainer"),
])
def test_example_runs_and_writes_results(script, mode, name, tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLES / script), str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"results: {tmp_path}/results.json" in r.stdout
    run = load_results(tmp_path)
    assert run.mode == mode and run.scenario["name"] == name
    c = run.cases[0]
    assert c.status == "ok" and c.peak_bytes == sum(c.memory_bytes.values()) and c.memory_bytes["moments"] > 0
    assert f"peak {c.peak_bytes / 2**20:.2f} MiB" in r.stdout  # what it prints is what it wrote
