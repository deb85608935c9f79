"""The CUDA path. Skipped without a GPU (CI never has one); run on a GPU machine with
`python -m pytest tests/engine/test_cuda.py`. nvidia-ml-py is a dependency, so NVML must answer there."""
import pytest
import torch

from ngl_profile.engine.case import run_case
from ngl_profile.schema.categories import TRACKED

from tests.helpers import case_spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_spec(name, mode="measured", target=24 << 30, **hp):
    spec = case_spec(name, mode=mode, **hp)
    spec["device"] = "cuda"
    spec["target_bytes"] = target
    spec["scenario"]["dtype"] = "bfloat16"
    return spec


@pytest.mark.parametrize("name,hp", [("adamw", {}), ("natural-galore-8bit-layerwise",
                                                    {"rank": 8, "history_size": 2, "history_dtype": "int8"})])
def test_measured_on_cuda_adds_slack_and_context(name, hp):
    r = run_case(cuda_spec(name, **hp))
    assert r.status == "ok", r.message
    assert r.provenance == "measured"
    assert sum(r.memory_bytes.values()) == r.peak_bytes
    c, m = r.cuda, r.memory_bytes
    # the CUDA context: NVML's used memory minus torch's reservation, measured before the model
    assert c["context_bytes_at_start"] > 0 and m["context"] == c["context_bytes_at_start"]
    # allocator slack: the reserved pool's peak minus what our tensors held at the tracked peak
    slack = c["max_reserved_bytes"] - c["tracked_peak_bytes"]
    assert slack >= 0 and m["allocator_slack"] == slack
    assert r.peak_bytes == c["tracked_peak_bytes"] + slack + m["context"]
    assert 0 < c["max_allocated_bytes"] <= c["max_reserved_bytes"]  # allocated blocks lie in reserved segments
    if c["device_total_bytes"] > 24 << 30:  # a card bigger than the target is capped to context + pool ≤ target
        assert c["cap_bytes"] == (24 << 30) - c["context_bytes_at_start"]
    else:
        assert "cap_bytes" not in c
    assert r.tokens_per_s and r.tokens_per_s > 0 and r.step_time_s["optimizer"] > 0
    # NVML sampled the timed steps: at least the closing sample, and the device's used memory then
    # holds at least torch's pool (the caching allocator keeps its segments; nothing empties it)
    nv = r.nvml
    assert nv["available"] is True, nv
    assert nv["samples"] >= 1 and nv["window_s"] >= 0
    assert nv["used_max_bytes"] >= c["max_reserved_bytes"], (nv, c)


def test_nvml_names_the_device():
    from ngl_profile.measure.nvml import NvmlSampler

    torch.ones(1, device="cuda")  # this process has a CUDA context, so NVML sees it using memory
    sampler = NvmlSampler(0)
    assert sampler.available, sampler.reason
    info = sampler.device_info()
    assert isinstance(info["device_name"], str) and info["device_name"].strip()
    assert info["device_memory_bytes"] > 0
    used = sampler.used_bytes_now()
    assert used is not None and 0 < used <= info["device_memory_bytes"]


def test_cuda_estimate_matches_measurement_per_category():
    for name, hp in (("adamw", {}), ("natural-galore", {"rank": 8, "history_size": 3})):
        m = run_case(cuda_spec(name, **hp))
        e = run_case(cuda_spec(name, mode="estimated", **hp))
        for cat in TRACKED:
            a, b = m.memory_bytes[cat], e.memory_bytes[cat]
            assert abs(a - b) <= 0.03 * max(a, b, 1), (name, cat, a, b)


def test_allocator_cap_turns_a_too_big_case_into_an_oom():
    r = run_case(cuda_spec("adamw", target=64 << 20))  # a "64 MiB GPU": the context alone nearly fills it
    assert r.status == "oom" and r.fits is False
    context = r.cuda["context_bytes_at_start"]
    assert context > 0 and r.cuda["cap_bytes"] == (64 << 20) - context
    # the breakdown at the failure holds the measured context, and sums to the recorded peak
    assert r.memory_bytes["context"] == context and sum(r.memory_bytes.values()) == r.peak_bytes
