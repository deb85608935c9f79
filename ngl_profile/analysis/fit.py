"""`ngl-profile fit`: the largest settings of one optimizer that fit a GPU.

Knobs are searched one at a time, in the priority order given, with the knobs already settled held
fixed (coordinate search). Memory grows monotonically with batch size, sequence length, history
size s, rank and history precision, so each of those is bisected over its candidate values
(~log2(candidates) estimates). The projection side (proj_type) has no order: std, left, right and
tucker trade one projector shape for another, so every value the optimizer accepts is estimated
(in one run, the cases side by side) and the smallest peak that fits is kept; put it first in
`--vary` to let the knobs after it use the room it saves. Every probe is an estimated run of the
real model, optimizer and step (engine/runner.py). When this machine has a CUDA GPU at least as
large as the target, the answer is confirmed by one measured run. Returns data (`FitResult`); the
CLI prints it.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ngl_profile.optim.projector import PROJ_TYPES
from ngl_profile.schema.results import write_json_atomic
from ngl_profile.schema.scenario import OptimizerCase, Scenario
from ngl_profile.zoo.gpus import get_gpu

__all__ = ["KNOBS", "CATEGORICAL", "DEFAULT_VARY", "SEQ_LEN_CAP", "Probe", "FitResult", "candidates",
           "check_knobs", "search", "write_fit"]

KNOBS = ("batch_size", "seq_len", "rank", "proj_type", "history_size", "history_dtype")
DEFAULT_VARY = ("batch_size", "history_size", "rank", "history_dtype")
CATEGORICAL = ("proj_type",)
"""knobs with no memory order: every value is estimated, never bisected"""
SEQ_LEN_CAP = 131072
"""the longest sequence tried for a model with rotary positions (no table that sets a limit)"""
_SCENARIO_KNOBS = ("batch_size", "seq_len")  # the rest are optimizer hyperparameters
_PRECISION = ["int8", "bfloat16", "float32"]  # ascending memory


@dataclass(frozen=True, slots=True)
class Probe:
    setting: dict
    fits: bool
    peak_bytes: int
    status: str
    message: str = ""
    allocated_bytes: int | None = None
    """the peak without the allocator's slack and the CUDA context: what the step itself holds, which
    tells two settings apart that the allocator's 2 MiB segments round to one peak"""


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


def _seq_lens(scn: Scenario) -> list[int]:
    """The scenario's own length, then each power of two above it, up to the model's limit."""
    cap = scn.model_spec.max_seq_len or SEQ_LEN_CAP
    out, p = [scn.seq_len], 1
    while p <= cap:
        if p > scn.seq_len:
            out.append(p)
        p *= 2
    if cap > out[-1]:
        out.append(cap)  # a limit that is no power of two (a learned table) is tried too
    return out


def candidates(knob: str, scn: Scenario, case: OptimizerCase | None = None) -> list:
    """Values in ascending memory order; for a categorical knob, the values `case` accepts."""
    if knob == "batch_size":
        return [1, 2, 4, 8, 16, 32, 64, 128]
    if knob == "seq_len":
        return _seq_lens(scn)
    if knob == "history_size":
        return [0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 20]
    if knob == "rank":
        hidden = scn.model_spec.hidden_size
        return [r for r in (32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096) if r <= hidden]
    if knob == "history_dtype":
        return _PRECISION
    if knob == "proj_type":
        if case is None:
            return list(PROJ_TYPES)
        from ngl_profile.zoo.optimizers import OPTIMIZERS

        def accepted(v) -> bool:
            try:
                OPTIMIZERS[case.name].check_hparams({"proj_type": v})
            except ValueError:  # galore-torch has no tucker
                return False
            return True

        return [v for v in PROJ_TYPES if accepted(v)]
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

    return knob in _SCENARIO_KNOBS or knob in OPTIMIZERS[case.name].hparams


def _apply(scn: Scenario, case: OptimizerCase, settings: list[dict]) -> Scenario:
    """One scenario that runs `case` once per setting; the settings share batch size and length."""
    cases = []
    for i, setting in enumerate(settings):
        hp = dict(case.hparams)
        hp.update({k: v for k, v in setting.items() if k not in _SCENARIO_KNOBS})
        # labels must differ within a scenario; a lone case keeps its own
        cases.append(OptimizerCase(name=case.name, label=case.label if len(settings) == 1 else f"probe-{i}",
                                   hparams=hp))
    shape = {k: settings[0].get(k) for k in _SCENARIO_KNOBS}
    return scn.with_overrides(**shape, optimizers=cases)


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

    def key(setting: dict) -> str:
        return json.dumps(setting, sort_keys=True)

    def probe_all(settings: list[dict]) -> list[Probe]:
        """Estimate every setting not yet estimated: one run per batch size × length, its cases in
        parallel (the runner's jobs)."""
        todo = list({key(s): s for s in settings if key(s) not in cache}.values())
        groups: dict[tuple, list[dict]] = {}
        for s in todo:
            groups.setdefault(tuple(s.get(k) for k in _SCENARIO_KNOBS), []).append(s)
        for group in groups.values():
            with tempfile.TemporaryDirectory() as tmp:
                run = runner.run_scenario(_apply(scn, case, group), "estimated", "cpu", Path(tmp))
            for s, c in zip(group, run.cases):
                held = c.peak_bytes - sum(c.memory_bytes.get(k, 0) for k in ("allocator_slack", "context"))
                cache[key(s)] = p = Probe(setting=dict(s), fits=c.status == "ok" and bool(c.fits),
                                          peak_bytes=c.peak_bytes, status=c.status, message=c.message,
                                          allocated_bytes=held)
                result.probes.append(p)
                on_probe(p)
        return [cache[key(s)] for s in settings]

    def probe(setting: dict) -> Probe:
        return probe_all([setting])[0]

    setting = {"batch_size": scn.batch_size}
    if "seq_len" in knobs:
        setting["seq_len"] = scn.seq_len
    setting.update({k: case.hparams[k] for k in KNOBS if k not in _SCENARIO_KNOBS and k in case.hparams})
    for knob in knobs:
        values = candidates(knob, scn, case)
        if knob in CATEGORICAL:
            probes = probe_all([{**setting, knob: v} for v in values])
            crashed = [p for p in probes if p.status == "error"]
            if crashed:
                result.crashed = crashed[0]
                return result
            # the smallest peak; on a tie the one that holds less, then the value already set (no
            # change for no gain), then the first
            fitting = sorted((p.peak_bytes, p.allocated_bytes, p.setting[knob] != setting.get(knob), i)
                             for i, p in enumerate(probes) if p.fits)
            if not fitting:
                result.failed_knob = knob
                return result
            setting[knob] = values[fitting[0][3]]
            continue
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
        run = runner.run_scenario(_apply(scn, case, [setting]), "measured", "cuda", Path(tmp))
    return {**asdict(run.cases[0]), "device_name": run.environment.get("device_name")}


def write_fit(result: FitResult, path: Path) -> None:
    d = asdict(result)
    d["provenance"] = result.provenance
    d["schema_version"] = 1
    write_json_atomic(path, d)
