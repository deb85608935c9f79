"""`ngl-profile fit`: the largest settings of one optimizer that fit a GPU.

Memory grows monotonically with batch size, history size s, rank and history precision, so each
knob is searched by bisection over its candidate values, in the priority order given, with the
knobs already settled held fixed (coordinate search, ~log2(candidates) estimates per knob). Every
probe is an estimated run of the real model, optimizer and step (engine/runner.py). When this
machine has a CUDA GPU at least as large as the target, the answer is confirmed by one measured
run. Returns data (`FitResult`); the CLI prints it.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ngl_profile.schema.results import write_json_atomic
from ngl_profile.schema.scenario import OptimizerCase, Scenario
from ngl_profile.zoo.gpus import get_gpu
from ngl_profile.zoo.models import get_model

__all__ = ["KNOBS", "Probe", "FitResult", "candidates", "check_knobs", "search", "write_fit"]

KNOBS = ("batch_size", "history_size", "rank", "history_dtype")
_PRECISION = ["int8", "bfloat16", "float32"]  # ascending memory


@dataclass(frozen=True, slots=True)
class Probe:
    setting: dict
    fits: bool
    peak_bytes: int
    status: str
    message: str = ""


@dataclass(kw_only=True, slots=True)
class FitResult:
    scenario: str
    model: str
    gpu: str
    gpu_memory_bytes: int
    optimizer: str
    label: str
    best: dict | None
    """the largest setting that fits; None when not even the smallest does"""
    best_peak_bytes: int | None = None
    failed_knob: str | None = None
    """the knob for which no value fit (best is then None)"""
    crashed: Probe | None = None
    """a probe whose case crashed (status error, not an OOM): the search stops there, since a crash
    says nothing about whether the setting fits"""
    not_varied: list = field(default_factory=list)
    """knobs asked for that the optimizer does not have"""
    probes: list[Probe] = field(default_factory=list)
    confirmed: dict | None = None
    """the measured case, when a GPU at least as large as the target was here"""

    @property
    def confirmed_ok(self) -> bool:
        """The measured run on a GPU here agreed: it ran and fit."""
        return self.confirmed is not None and self.confirmed.get("status") == "ok" and bool(self.confirmed.get("fits"))

    @property
    def provenance(self) -> str:
        if self.confirmed is None:
            return "estimated"
        if self.confirmed_ok:
            return "estimated, confirmed by a measured run"
        return "estimated; a measured run here contradicts it"


def candidates(knob: str, scn: Scenario) -> list:
    """Values in ascending memory order."""
    if knob == "batch_size":
        return [1, 2, 4, 8, 16, 32, 64, 128]
    if knob == "history_size":
        return [0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 20]
    if knob == "rank":
        hidden = get_model(scn.model).config.get("hidden_size", 768)
        return [r for r in (32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096) if r <= hidden]
    if knob == "history_dtype":
        return _PRECISION
    raise ValueError(f"--vary: unknown knob {knob!r}; allowed: {', '.join(KNOBS)}")


def check_knobs(knobs: list[str]) -> None:
    """ValueError for an unknown or repeated knob: bad input, found before any estimate runs."""
    for k in knobs:
        if k not in KNOBS:
            raise ValueError(f"--vary: unknown knob {k!r}; allowed: {', '.join(KNOBS)}")
    dup = sorted({k for k in knobs if knobs.count(k) > 1})
    if dup:
        raise ValueError(f"--vary: {dup[0]} given twice")


def _applies(knob: str, case: OptimizerCase) -> bool:
    from ngl_profile.zoo.optimizers import OPTIMIZERS

    return knob == "batch_size" or knob in OPTIMIZERS[case.name].hparams


def _apply(scn: Scenario, case: OptimizerCase, setting: dict) -> Scenario:
    hp = dict(case.hparams)
    hp.update({k: v for k, v in setting.items() if k != "batch_size"})
    c = OptimizerCase(name=case.name, label=case.label, hparams=hp)
    return scn.with_overrides(batch_size=setting["batch_size"], optimizers=[c])


def search(scn: Scenario, case: OptimizerCase, vary: list[str],
           on_probe: Callable[[Probe], None] = lambda probe: None) -> FitResult:
    from ngl_profile.engine import runner

    check_knobs(vary)
    knobs = [k for k in vary if _applies(k, case)]
    gpu = get_gpu(scn.gpu)
    result = FitResult(scenario=scn.name, model=scn.model, gpu=gpu.name, gpu_memory_bytes=gpu.memory_bytes,
                       optimizer=case.name, label=case.label, best=None,
                       not_varied=[k for k in vary if k not in knobs])
    cache: dict[str, Probe] = {}

    def probe(setting: dict) -> Probe:
        key = json.dumps(setting, sort_keys=True)
        if key not in cache:
            with tempfile.TemporaryDirectory() as tmp:
                run = runner.run_scenario(_apply(scn, case, setting), "estimated", "cpu", Path(tmp))
            c = run.cases[0]
            cache[key] = p = Probe(setting=dict(setting), fits=c.status == "ok" and bool(c.fits),
                                   peak_bytes=c.peak_bytes, status=c.status, message=c.message)
            result.probes.append(p)
            on_probe(p)
        return cache[key]

    setting = {"batch_size": scn.batch_size}
    setting.update({k: case.hparams[k] for k in KNOBS[1:] if k in case.hparams})
    for knob in knobs:
        values = candidates(knob, scn)
        best_i, lo, hi = None, 0, len(values) - 1
        while lo <= hi:  # bisection for the last value that fits (memory is monotone in each knob)
            mid = (lo + hi) // 2
            p = probe({**setting, knob: values[mid]})
            if p.status == "error":
                result.crashed = p
                return result
            if p.fits:
                best_i, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best_i is None:
            result.failed_knob = knob
            return result
        setting[knob] = values[best_i]
    result.best = setting
    result.best_peak_bytes = probe(setting).peak_bytes
    result.confirmed = _confirm(scn, case, setting, gpu)
    return result


def _confirm(scn, case, setting, gpu) -> dict | None:
    """One measured run on this machine's GPU when there is one big enough; None otherwise."""
    import torch

    from ngl_profile.engine import runner
    from ngl_profile.measure.nvml import NvmlSampler

    if not torch.cuda.is_available():
        return None
    # NVML, not torch.cuda: this process must not hold a CUDA context while the case runs
    total = (NvmlSampler().device_info() or {}).get("device_memory_bytes")
    if not total or total < gpu.memory_bytes:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        run = runner.run_scenario(_apply(scn, case, setting), "measured", "cuda", Path(tmp))
    return {**asdict(run.cases[0]), "device_name": run.environment.get("device_name")}


def write_fit(result: FitResult, path: Path) -> None:
    d = asdict(result)
    d["provenance"] = result.provenance
    d["schema_version"] = 1
    write_json_atomic(path, d)
