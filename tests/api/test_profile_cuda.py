"""profile() on a CUDA device: the allocator's reserved − tracked bytes as slack, NVML's context.
Skipped without a GPU; on a GPU machine: `python -m pytest tests/api/test_profile_cuda.py`."""
import pytest
import torch

import ngl_profile
from tests.api.models import adamw, mlp, param_bytes

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_loop_counts_slack_and_context(tmp_path):
    model = mlp().cuda()
    opt = adamw(model)
    g = torch.Generator(device="cuda").manual_seed(0)
    with ngl_profile.profile(model, opt, out=tmp_path, track_steps=2, warmup=1) as prof:
        for _ in range(5):
            x = torch.randn(256, 16, device="cuda", generator=g)
            (model(x).pow(2).mean()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            prof.step()
    c = prof.case
    assert c.status == "ok" and c.provenance == "measured" and prof.run.device == "cuda"
    assert c.memory_bytes["weights"] == param_bytes(model)
    assert sum(c.memory_bytes.values()) == c.peak_bytes
    assert c.memory_bytes["context"] > 0  # NVML's used − torch's reserved, before the loop
    assert c.cuda["max_reserved_bytes"] - c.cuda["tracked_peak_bytes"] == c.memory_bytes["allocator_slack"]
    # torch's allocator rounds every block up to 512 bytes: it holds at least what the tracker counted
    assert c.cuda["max_allocated_bytes"] >= c.cuda["tracked_peak_bytes"]
    assert c.step_time_s["steps"] == 2 and c.tokens_per_s is None  # no token ids: no tokens/s
    assert "assumed_context_bytes" not in c.cuda
