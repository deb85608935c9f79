"""A results file for a case the Python API ran: the same RunResult the CLI writes, with one case,
so that `ngl-profile report`, `compare` and `check` read it like any other run. The scenario part
describes the user's model and batch as seen (class name, batch × sequence of the token ids, the
weights' dtype), since there is no scenario file behind it."""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from ngl_profile.schema.results import CaseResult, RunResult, write_json_atomic
from ngl_profile.schema.thresholds import Thresholds

__all__ = ["model_facts", "token_ids", "batch_facts", "run_record", "write_run", "results_path", "first_lr"]


def model_facts(model: torch.nn.Module) -> dict:
    """What the report's headings and `check`'s like-for-like test read off the model itself."""
    params = list(model.parameters())
    dtype = str(params[0].dtype).removeprefix("torch.") if params else "float32"
    config = getattr(model, "config", None)
    named = getattr(config, "name_or_path", "") or ""
    return {"model": named or type(model).__name__, "dtype": dtype,
            # what transformers' is_activation_checkpointing reads (its older name warns on v5)
            "checkpointing": any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())}


def token_ids(batch):
    """The batch's token ids: `input_ids` in a dict, else its first integer tensor; None if none."""
    if isinstance(batch, dict):
        if torch.is_tensor(batch.get("input_ids")):
            return batch["input_ids"]
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = [batch]
    return next((v for v in values if torch.is_tensor(v) and not v.is_floating_point()
                 and not v.is_complex() and v.dtype != torch.bool), None)


def batch_facts(batch) -> dict:
    """batch_size, seq_len and tokens of a batch from its token ids ((batch, seq) shaped); batch 1 ×
    sequence 1 and tokens None where it has none (a model that does not take tokens)."""
    ids = token_ids(batch)
    if ids is None or ids.dim() == 0:
        return {"batch_size": 1, "seq_len": 1, "tokens": None}
    b = int(ids.shape[0])
    s = int(ids.shape[1]) if ids.dim() >= 2 else 1
    return {"batch_size": max(1, b), "seq_len": max(1, s), "tokens": int(ids.numel()) or None}


def run_record(case: CaseResult, *, name: str, model: dict, batch: dict, gpu, mode: str, device: str,
               source: str, steps: int = 0, warmup: int = 0, lr: float | None = None) -> RunResult:
    """A one-case RunResult. `model` and `batch` are model_facts() and batch_facts(); `steps` the
    timed steps (0: none, left out of the scenario, where a value must be ≥ 1)."""
    from ngl_profile.engine.runner import environment

    scenario = {"name": name, "model": model["model"], "seq_len": batch["seq_len"],
                "batch_size": batch["batch_size"], "dtype": model["dtype"], "warmup": warmup,
                "gpu": gpu.name, "checkpointing": model["checkpointing"], "mode": mode,
                "optimizers": [dict(case.optimizer)], "thresholds": asdict(Thresholds()), "source": source}
    if steps:
        scenario["steps"] = steps
    if lr is not None:
        scenario["lr"] = lr
    return RunResult(scenario=scenario,
                     gpu={"name": gpu.name, "memory_bytes": gpu.memory_bytes, "bf16_tflops": gpu.bf16_tflops,
                          "bandwidth_gbs": gpu.bandwidth_gbs, "source": gpu.source},
                     mode=mode, device=device, environment=environment(device), cases=[case],
                     created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def results_path(out: str | Path) -> Path:
    """`out` itself when it names a .json file, else results.json inside the directory `out`."""
    out = Path(out)
    return out if out.suffix == ".json" else out / "results.json"


def write_run(run: RunResult, out: str | Path) -> Path:
    """Write atomically (a reader never sees half a file); an existing file there is replaced."""
    path = results_path(out)
    try:
        write_json_atomic(path, run.to_dict())
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def first_lr(optimizer) -> float | None:
    """The first parameter group's learning rate, where it is a plain positive number."""
    groups = getattr(optimizer, "param_groups", None) or []
    lr = groups[0].get("lr") if groups else None
    if isinstance(lr, torch.Tensor) and lr.numel() == 1:
        lr = float(lr)
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 else None
