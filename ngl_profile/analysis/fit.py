"""`ngl-profile fit`: the largest settings of one optimizer that fit a GPU.

Memory grows monotonically with batch size, history size s, rank and history precision, so each
knob is searched by bisection over its candidate values, in the priority order given, with the
knobs already settled held fixed (coordinate search, ~log2(candidates) estimates per knob). Every
probe is an estimated run of the real model, optimizer and step (runner.py). When this machine
has a CUDA GPU at least as large as the target, the answer is confirmed by one measured run.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from ngl_profile.zoo.gpus import get_gpu
from ngl_profile.zoo.models import get_model
from ngl_profile.schema.results import write_json_atomic
from ngl_profile.schema.scenario import OptimizerCase, Scenario, load_scenario

__all__ = ["search", "candidates", "KNOBS"]

KNOBS = ("batch_size", "history_size", "rank", "history_dtype")
_PRECISION = ["int8", "bfloat16", "float32"]  # ascending memory


def candidates(knob: str, scn: Scenario, case: OptimizerCase) -> list:
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


def _applies(knob: str, case: OptimizerCase) -> bool:
    from ngl_profile.zoo.optimizers import OPTIMIZERS

    return knob == "batch_size" or knob in OPTIMIZERS[case.name].hparams


def _setting(scn: Scenario, case: OptimizerCase) -> dict:
    out = {"batch_size": scn.batch_size}
    out.update({k: case.hparams[k] for k in KNOBS[1:] if k in case.hparams})
    return out


def _apply(scn: Scenario, case: OptimizerCase, setting: dict) -> Scenario:
    hp = dict(case.hparams)
    hp.update({k: v for k, v in setting.items() if k != "batch_size"})
    c = OptimizerCase(name=case.name, label=case.label, hparams=hp)
    return scn.with_overrides(batch_size=setting["batch_size"], optimizers=[c])


def search(args, console) -> int:
    from ngl_profile.engine.runner import run_scenario

    scn = load_scenario(args.scenario).with_overrides(gpu=args.gpu)
    wanted = [c for c in scn.optimizers if args.optimizer in (c.label, c.name)]
    case = wanted[0] if wanted else OptimizerCase(name=args.optimizer)
    for k in args.vary:
        candidates(k, scn, case)  # an unknown knob is bad input: raises with the allowed ones
    knobs = [k for k in args.vary if _applies(k, case)]
    skipped = [k for k in args.vary if k not in knobs]
    if skipped:
        console.print(f"[yellow]{case.name} has no {', '.join(skipped)}: not varied[/]")
    gpu = get_gpu(scn.gpu)
    probes: list[dict] = []
    cache: dict[str, tuple[bool, int, dict]] = {}

    def fits(setting: dict) -> bool:
        key = json.dumps(setting, sort_keys=True)
        if key not in cache:
            trial = _apply(scn, case, setting)
            with tempfile.TemporaryDirectory() as tmp:
                run = run_scenario(trial, "estimated", "cpu", Path(tmp))
            c = run.cases[0]
            ok = c.status == "ok" and bool(c.fits)
            cache[key] = (ok, c.peak_bytes, c.memory_bytes)
            probes.append({"setting": dict(setting), "fits": ok, "peak_bytes": c.peak_bytes,
                           "status": c.status, "message": c.message})
            console.print(f"  {setting} → {c.peak_bytes / 2**30:.2f} GiB "
                          f"{'[green]fits[/]' if ok else '[red]does not fit[/]'}")
        return cache[key][0]

    setting = _setting(scn, case)
    for knob in knobs:
        values = candidates(knob, scn, case)
        lo_fits = None
        lo, hi = 0, len(values) - 1
        # bisection for the last value that fits (memory is monotone in each knob)
        while lo <= hi:
            mid = (lo + hi) // 2
            if fits({**setting, knob: values[mid]}):
                lo_fits, lo = mid, mid + 1
            else:
                hi = mid - 1
        if lo_fits is None:
            console.print(f"[red]no value of {knob} fits {gpu.name} with {setting}[/]")
            _write(args, scn, case, gpu, setting, probes, None)
            return 0
        setting[knob] = values[lo_fits]
        console.print(f"[bold]{knob} = {setting[knob]}[/]")
    confirmed = _confirm(scn, case, setting, gpu, console)
    _write(args, scn, case, gpu, setting, probes, confirmed)
    peak = cache[json.dumps(setting, sort_keys=True)][1]
    console.print(f"[bold green]{case.label} on {gpu.name}: {setting}[/] — estimated peak "
                  f"{peak / 2**30:.2f} GiB of {gpu.memory_gib:.2f} GiB (+512 MiB assumed CUDA context)")
    return 0


def _confirm(scn, case, setting, gpu, console):
    """One measured run on this machine's GPU when there is one big enough; None otherwise."""
    import torch

    from ngl_profile.measure.nvml import NvmlSampler

    # NVML, not torch.cuda: this process must not hold a CUDA context while the case runs
    total = NvmlSampler().device_info().get("device_memory_bytes") if torch.cuda.is_available() else None
    if not total or total < gpu.memory_bytes:
        console.print("no CUDA GPU at least as large as the target here: the answer is estimated, not confirmed")
        return None
    from ngl_profile.engine.runner import run_scenario

    with tempfile.TemporaryDirectory() as tmp:
        run = run_scenario(_apply(scn, case, setting), "measured", "cuda", Path(tmp))
    c = run.cases[0]
    console.print(f"measured on {run.environment.get('device_name')}: {c.status}, peak "
                  f"{c.peak_bytes / 2**30:.2f} GiB, fits={c.fits}")
    return asdict(c)


def _write(args, scn, case, gpu, setting, probes, confirmed) -> None:
    out = args.out or Path("reports") / f"fit-{scn.name}-{case.name}-{gpu.name}"
    write_json_atomic(Path(out) / "fit.json", {
        "schema_version": 1, "scenario": scn.name, "model": scn.model, "gpu": gpu.name,
        "optimizer": case.name, "best": setting, "probes": probes,
        "provenance": "estimated" if confirmed is None else "estimated, confirmed by a measured run",
        "confirmed": confirmed})
