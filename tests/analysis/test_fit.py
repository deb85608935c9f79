"""`fit`'s search, with the estimator replaced by a known memory model (the real one is slow)."""
import argparse
import json

from rich.console import Console

import ngl_profile.engine.runner as runner
from ngl_profile.analysis.fit import search
from ngl_profile.schema.results import CaseResult, RunResult

GiB = 1 << 30


def fake_estimator(calls):
    def run_scenario(scn, mode, device, out, **kw):
        c = scn.optimizers[0]
        s, rank = c.hparams.get("history_size", 10), c.hparams.get("rank", 128)
        per = {"int8": 1, "bfloat16": 2, "float32": 4}[c.hparams.get("history_dtype", "float32")]
        peak = int((10 + scn.batch_size * 0.5 + s * per * rank / 1024) * GiB)
        calls.append((scn.batch_size, s, rank, c.hparams.get("history_dtype")))
        case = CaseResult(optimizer={"name": c.name, "label": c.label, "hparams": c.hparams}, status="ok",
                          provenance="estimated", peak_bytes=peak, fits=peak + (512 << 20) <= 24 * GiB)
        return RunResult(scenario={}, gpu={}, mode=mode, device=device, environment={}, cases=[case])
    return run_scenario


def test_fit_finds_largest_settings_by_bisection(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run_scenario", fake_estimator(calls))
    args = argparse.Namespace(scenario="7b", gpu="4090", optimizer="natural-galore-8bit-layerwise",
                              vary=["history_dtype", "history_size", "batch_size"], out=tmp_path)
    assert search(args, Console(file=open("/dev/null", "w"))) == 0
    best = json.loads((tmp_path / "fit.json").read_text())
    # knobs in the order given, each the largest value that fits 24 GiB − 512 MiB with the others held:
    assert best["best"]["history_dtype"] == "float32"  # at the scenario's s=2: 10.5 + 2·4 = 18.5 fits
    assert best["best"]["history_size"] == 3  # 10.5 + 3·4 = 22.5 fits; 4·4 → 26.5 does not
    assert best["best"]["batch_size"] == 2  # 10 + 1 + 12 = 23 fits; batch 4 → 24 does not
    assert best["provenance"] == "estimated" and best["probes"]
    assert len(calls) <= 4 + 4 + 4  # bisection, not a scan of every value
