"""Hand-made results for the rendering tests: exact, instant, no model run."""
from pathlib import Path

from ngl_profile.schema.categories import CATEGORIES
from ngl_profile.schema.results import CaseResult, RunResult, load_results

GiB, MiB = 1 << 30, 1 << 20
REPORTS = Path(__file__).resolve().parents[2] / "reports"
ENV = {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "machine": "x86_64", "cpu_count": 2,
       "torch": "2.13.0+cpu", "torch_threads": 2, "transformers": "5.0", "bitsandbytes": "0.50", "peft": "0.21",
       "device_name": "CPU (x86_64)", "driver": None, "commit": "abc1234"}
ROOFLINE = "roofline: the step's counted FLOPs at 100% of 165.2 TFLOP/s; an upper bound, not a measurement"


def timeline(peak: int, events: int = 300) -> list:
    """A step that climbs through forward, falls through backward and holds in the optimizer."""
    out = []
    for i in range(events):
        phase = "forward" if i < events // 3 else "backward" if i < 2 * events // 3 else "optimizer"
        frac = i / (events // 3) if phase == "forward" else 1 - (i - events // 3) / events
        out.append([i, int(peak * (0.6 + 0.4 * min(frac, 1))), phase])
    return out


def case(name, label=None, *, hparams=None, mode="estimated", cap=24 * GiB, status="ok", tps=None, spread=None,
         **mem):
    memory = dict.fromkeys(CATEGORIES, 0)
    memory.update(mem)
    peak = sum(memory.values())
    c = CaseResult(optimizer={"name": name, "label": label or name, "hparams": hparams or {}}, status=status,
                   message="" if status == "ok" else "CUDA out of memory", provenance=mode, memory_bytes=memory,
                   peak_bytes=peak, fits=peak + 512 * MiB <= cap, headroom_bytes=cap - 512 * MiB - peak,
                   timeline=timeline(peak), params={"total": int(memory.get("weights", 0) // 2) or 1000})
    if mode == "measured":
        c.tokens_per_s = tps or 256 / 0.65  # batch 1 × seq 256 in a 0.65 s step
        c.step_time_s = {"forward": 0.2, "backward": 0.4, "optimizer": 0.05, "total": 256 / c.tokens_per_s,
                         "steps": 6}
        if spread:
            c.step_time_s.update(total_min=spread[0], total_max=spread[1])
    else:
        c.projected = {"tokens_per_s_upper_bound": (tps or 1500.0), "assumptions": ROOFLINE}
    return c


def run(cases, *, mode="estimated", name="s", model="llama-7b", batch=1, seq=256, checkpointing=False,
        cap=24 * GiB, env=None) -> RunResult:
    scenario = {"name": name, "model": model, "seq_len": seq, "batch_size": batch, "dtype": "bfloat16",
                "checkpointing": checkpointing, "steps": 6, "warmup": 2,
                "optimizers": [c.optimizer for c in cases]}
    return RunResult(scenario=scenario, gpu={"name": "rtx-4090", "memory_bytes": cap}, mode=mode, device="cpu",
                     environment=dict(env or ENV), cases=cases, created_utc="2026-01-01T00:00:00+00:00")


def seven_b(mode="estimated", **kw) -> RunResult:
    """A 7B-shaped run: the README's six optimizers, two of them too big, with real-length labels."""
    w = int(12.55 * GiB)
    cases = [case("adamw", mode=mode, weights=w, grads=w, moments=2 * w, temporaries=GiB // 2),
             case("adamw8bit", mode=mode, weights=w, grads=w, moments=w, quant_stats=200 * MiB),
             case("galore-8bit-layerwise", mode=mode, hparams={"rank": 1024}, weights=w, grads=86 * MiB,
                  moments=int(3.5 * GiB), quant_stats=56 * MiB, projectors=int(1.75 * GiB),
                  activations=int(1.42 * GiB), temporaries=250 * MiB),
             case("natural-galore", "natural-galore (s=10)", mode=mode, hparams={"rank": 1024, "history_size": 10},
                  weights=w, grads=w, moments=7 * GiB, projectors=int(1.75 * GiB), history=int(60.31 * GiB),
                  temporaries=GiB // 2),
             case("natural-galore-8bit-layerwise", "natural-galore-8bit-layerwise (s=2, int8)", mode=mode,
                  hparams={"rank": 1024, "history_size": 2, "history_dtype": "int8"}, weights=w, grads=86 * MiB,
                  moments=int(3.5 * GiB), quant_stats=56 * MiB, projectors=int(1.75 * GiB),
                  history=int(3.02 * GiB), activations=int(1.42 * GiB), temporaries=250 * MiB),
             case("lora", mode=mode, hparams={"rank": 64}, weights=int(12.85 * GiB), moments=610 * MiB,
                  activations=int(1.34 * GiB), temporaries=64 * MiB)]
    return run(cases, mode=mode, **kw)


def committed(name: str) -> RunResult | None:
    """A results file the repository ships under reports/, or None where it is absent."""
    p = REPORTS / name / "results.json"
    return load_results(p) if p.exists() else None
