"""`ngl-profile train`: every optimizer of a scenario trained on the same bytes, several seeds, its
learning rate tuned where the case sets none; then the memory and speed of the same case.

Per case:
  1. lr: the case's own, or the best of its quality.lr_grid — one run per grid value (seed 0,
     tune_steps steps, the same schedule), judged by held-out loss on the *tune* split, never on
     the test split the results report. At full length (tune_steps 0) the winner's run is seed
     0's (the same weights and batches; its test-split curve recorded alongside). An
     official-formula row takes its twin's lr: the row is there to show what the formula alone
     changes
  2. quality.seeds runs at that lr, judged on the test split
  3. memory by category: ngl_profile.estimate on the same model, batch and optimizer (FakeTensorMode:
     exact sizes, nothing allocated, the target GPU's code paths) — estimated, and labelled so
  4. tokens/s and step time: measured in the runs of 2, the first timing_warmup steps of each left out
The results file is a RunResult (so `compare` and `check` read it) whose cases carry a `quality`
record: held-out loss over seeds, the sweep, the curves.
"""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone

import torch

from ngl_profile.measure.timing import rate_stats, timing_stats
from ngl_profile.quality.data import load_corpus
from ngl_profile.quality.train import Curve, build_optimizer, train_run

__all__ = ["train_scenario", "Plan", "plan_cases", "at_grid_edge", "OFFICIAL_SUFFIX"]

OFFICIAL_SUFFIX = " (official formula)"


class Plan:
    """One row of the comparison: a scenario case, or its official-formula twin."""

    def __init__(self, case, hparams: dict, official: bool):
        self.case, self.hparams, self.official = case, hparams, official
        self.label = case.label + (OFFICIAL_SUFFIX if official else "")
        self.tuned = "lr" not in case.hparams

    @property
    def name(self) -> str:
        return self.case.name


def plan_cases(scn, spec) -> list[Plan]:
    out = []
    for case in scn.optimizers:
        hp = case.resolved_hparams(scn)
        out.append(Plan(case, hp, False))
        if case.label in spec.official_formula:
            out.append(Plan(case, hp, True))
    return out


def _say(progress, text: str) -> None:
    if progress is not None:
        progress(text)


def _tune(plan, scn, spec, corpus, test_windows, device, progress) -> tuple[float, list[dict], Curve | None]:
    """(lr, sweep, the chosen lr's run when it can stand as seed 0). A sweep at full length
    (tune_steps = 0 or = steps) trains exactly seed 0's run at each lr, so it also records the test
    split's curve: the winner's run is then seed 0's, not trained a second time."""
    grid = spec.grid_for(plan.case.label)
    if not plan.tuned or not grid:
        return float(plan.hparams["lr"]), [], None
    tune_windows = corpus.eval_windows("tune", scn.seq_len, spec.eval_sequences)
    full = spec.tune_length == spec.steps
    sweep, runs = [], {}
    for lr in grid:
        if full:
            curve = train_run(scn, plan.name, {**plan.hparams, "lr": lr}, corpus=corpus, steps=spec.steps, seed=0,
                              windows=test_windows, eval_every=spec.eval_every, tune_windows=tune_windows,
                              warmup_fraction=spec.warmup_fraction, min_lr_ratio=spec.min_lr_ratio,
                              official=plan.official, device=device)
            loss, runs[lr] = curve.tune_loss, curve
        else:
            curve = train_run(scn, plan.name, {**plan.hparams, "lr": lr}, corpus=corpus, steps=spec.tune_length,
                              seed=0, windows=tune_windows, eval_every=spec.tune_length,
                              warmup_fraction=spec.warmup_fraction, min_lr_ratio=spec.min_lr_ratio,
                              official=plan.official, device=device)
            loss = curve.final_heldout
        sweep.append({"lr": lr, "tune_loss": loss})
        _say(progress, f"{plan.label}: lr {lr:g} → tune loss {loss:.4f}")
    finite = [s for s in sweep if math.isfinite(s["tune_loss"])]
    if not finite:
        raise ValueError(f"{plan.label}: every learning rate of quality.lr_grid diverged; try smaller ones")
    lr = min(finite, key=lambda s: s["tune_loss"])["lr"]
    return lr, sweep, runs.get(lr)


def _memory(plan, scn, lr: float):
    """The estimator's CaseResult for this case (api.estimate: the same model and optimizer)."""
    from ngl_profile.api import estimate
    from ngl_profile.zoo.models import build_model, make_batch

    spec, dtype = scn.model_spec, getattr(torch, scn.dtype)
    hp = {**plan.hparams, "lr": lr}
    make_model = lambda: build_model(spec, dtype, scn.checkpointing,  # noqa: E731
                                     attention="eager" if scn.attention == "eager" else "sdpa")
    batch = lambda i: make_batch(spec, scn.batch_size, scn.seq_len)  # noqa: E731 — shapes are all it reads
    if plan.official:
        # its window is a list that grows to s columns (ours is preallocated): step until it is full
        steps = min(100, int(hp.get("history_size", 20)) + 1)
        return estimate(make_model, lambda m: build_optimizer(m, plan.name, hp, True, scn.precision, "cuda"), batch,
                        gpu=scn.gpu, steps=steps, label=plan.label, flops=False)
    return estimate(make_model, plan.name, batch, gpu=scn.gpu, optimizer_hparams=hp, label=plan.label, flops=False)


def _timing(result, curves: list[Curve], skip: int, tokens: int) -> None:
    steps = [t for c in curves for t in c.step_s[skip:]]
    result.tokens_per_s_stats = rate_stats(tokens, steps)
    result.tokens_per_s = result.tokens_per_s_stats["median"] if result.tokens_per_s_stats else None
    result.step_time_stats = {}
    for phase in ("forward", "backward", "optimizer"):
        stats = timing_stats([t for c in curves for t in c.phase_s[phase][skip:]])
        if stats:
            result.step_time_stats[phase] = stats
    total = timing_stats(steps)
    if total:
        result.step_time_stats["total"] = total
    result.step_time_s = {k: v["median"] for k, v in result.step_time_stats.items()}


def at_grid_edge(lr: float, sweep: list[dict]) -> bool:
    """True when a sweep of ≥ 2 values chose its smallest or largest: the optimum may lie outside the grid."""
    grid = [s["lr"] for s in sweep]
    return len(grid) >= 2 and lr in (min(grid), max(grid))


def summary(curves: list[Curve]) -> dict:
    """Held-out loss at the end over seeds: median and quartile statistics (measure/timing.py's),
    counting a diverged run as +inf (it is worse than any finite loss, and not left out)."""
    finals = [c.final_heldout for c in curves]
    ranked = [x if math.isfinite(x) else math.inf for x in finals]
    stats = timing_stats(ranked) if all(math.isfinite(x) for x in ranked) else None
    return {"heldout_loss": stats["median"] if stats else None, "heldout_loss_stats": stats,
            "heldout_loss_by_seed": [x if math.isfinite(x) else None for x in finals],
            "diverged": sum(not math.isfinite(x) for x in finals)}


def train_scenario(scn, spec, *, device: str = "cpu", progress=None):
    """The RunResult of a quality run (nothing written: commands.py does that)."""
    from ngl_profile.engine.runner import environment
    from ngl_profile.zoo.gpus import get_gpu

    corpus = load_corpus(spec.max_bytes, spec.heldout_every)
    windows = corpus.eval_windows("test", scn.seq_len, spec.eval_sequences)
    tokens = scn.batch_size * scn.seq_len
    cases, chosen = [], {}
    for plan in plan_cases(scn, spec):
        t_case = time.perf_counter()
        seed0 = None
        if plan.official and plan.case.label in chosen:
            lr, sweep, source = chosen[plan.case.label], [], f"its twin's ({plan.case.label})"
        else:
            lr, sweep, seed0 = _tune(plan, scn, spec, corpus, windows, device, progress)
            source = "tuned over quality.lr_grid" if sweep else "set by the case"
            chosen[plan.case.label] = lr
        curves = [seed0] if seed0 is not None else []  # the sweep's winner is seed 0's run
        for seed in range(len(curves), spec.seeds):
            curve = train_run(scn, plan.name, {**plan.hparams, "lr": lr}, corpus=corpus, steps=spec.steps, seed=seed,
                              windows=windows, eval_every=spec.eval_every, warmup_fraction=spec.warmup_fraction,
                              min_lr_ratio=spec.min_lr_ratio, official=plan.official, device=device)
            curves.append(curve)
            _say(progress, f"{plan.label}: seed {seed} held-out {curve.final_heldout:.4f} "
                           f"({sum(curve.step_s):.1f} s of steps)")
        result = _memory(plan, scn, lr)
        _timing(result, curves, min(spec.timing_warmup, spec.steps - 1), tokens)
        result.optimizer = {"name": plan.name, "label": plan.label, "hparams": {**plan.hparams, "lr": lr}}
        result.code_path = ("the official code's printed formula (float32, with the subtraction) on ngl_profile "
                            "galore" if plan.official else result.code_path)
        result.quality = {**summary(curves), "seeds": spec.seeds, "lr": lr,
                          "lr_source": source, "lr_sweep": sweep, "lr_at_grid_edge": at_grid_edge(lr, sweep),
                          "formula": "official (printed, float32)" if plan.official else "ngl_profile",
                          "tokens_per_run": tokens * spec.steps,
                          "provenance": {"loss": f"measured, training on {device}",
                                         "memory": "estimated (FakeTensorMode, exact sizes; the target GPU's "
                                                   "code paths)",
                                         "tokens_per_s": f"measured on {device} during training"},
                          "curves": [c.to_dict() for c in curves]}
        result.duration_s = time.perf_counter() - t_case  # sweep, seeds, evaluations and the estimate
        cases.append(result)
    from ngl_profile.schema.results import RunResult

    gpu = get_gpu(scn.gpu)
    scenario = scn.to_dict()
    scenario["quality"] = {**spec.to_dict(), "corpus": corpus.facts,
                           "baselines": {"uniform_loss": corpus.facts["uniform_loss"],
                                         "unigram_loss": corpus.unigram_loss("test")}}
    return RunResult(scenario=scenario,
                     gpu={"name": gpu.name, "memory_bytes": gpu.memory_bytes, "bf16_tflops": gpu.bf16_tflops,
                          "bandwidth_gbs": gpu.bandwidth_gbs, "source": gpu.source},
                     mode="measured", device=device, environment=environment(device), cases=cases,
                     created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
