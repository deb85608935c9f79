"""The CUDA path. Skipped without a GPU (CI never has one); run on a GPU machine with
`python -m pytest tests/test_cuda.py`."""
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
    assert r.memory_bytes["context"] > 0  # the CUDA context, from NVML
    assert r.cuda["max_reserved_bytes"] >= r.cuda["tracked_peak_bytes"]
    assert r.tokens_per_s and r.tokens_per_s > 0 and r.step_time_s["optimizer"] > 0
    assert r.nvml.get("available") in (True, False)


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
    assert "cap_bytes" in r.cuda
