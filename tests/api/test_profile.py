"""ngl_profile.profile: memory by category inside the user's own loop (measured, on the CPU here)."""
import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

import ngl_profile
from ngl_profile.schema.results import load_results
from tests.api.models import BATCH, adamw, batches, mlp, mse, param_bytes


def loop(prof, model, opt, make, steps, mark=None):
    for i in range(steps):
        batch = make(i)
        if mark is None:
            loss = mse(model, batch)
        else:
            with prof.phase(mark):
                loss = mse(model, batch)
        loss.backward()
        del loss, batch
        opt.step()
        opt.zero_grad(set_to_none=True)
        prof.step()


def test_same_breakdown_as_the_estimate_of_the_same_program(tmp_path):
    est = ngl_profile.estimate(mlp, adamw, batches(), loss_fn=mse, flops=False)
    model = mlp()
    opt = adamw(model)
    with ngl_profile.profile(model, opt, out=tmp_path, track_steps=2) as prof:
        loop(prof, model, opt, batches(), 2)
    c = prof.case
    assert c.provenance == "measured" and c.status == "ok"
    for k in ("weights", "grads", "moments", "projectors", "history", "allocator_slack"):
        assert c.memory_bytes[k] == est.memory_bytes[k], k
    # the loss's gradient seed is made before autograd's engine starts: the loop counts its 4 bytes
    # as forward's, the estimate (which marks backward itself) as backward's
    assert c.memory_bytes["activations"] + c.memory_bytes["temporaries"] == \
        est.memory_bytes["activations"] + est.memory_bytes["temporaries"]
    assert abs(c.memory_bytes["activations"] - est.memory_bytes["activations"]) <= 4
    assert (c.peak_bytes, c.peak_phase, c.step_peaks_bytes) == (est.peak_bytes, est.peak_phase, est.step_peaks_bytes)
    assert c.memory_bytes["moments"] == 2 * param_bytes(model) + 4 * len(list(model.parameters()))
    run = load_results(tmp_path)
    assert run.mode == "measured" and run.device == "cpu" and run.cases[0].memory_bytes == c.memory_bytes
    assert _get_current_dispatch_mode() is None  # the tracker left with the block


def test_a_marked_phase_overrides_the_automatic_one():
    model = mlp()
    opt = adamw(model)
    with ngl_profile.profile(model, opt, track_steps=2) as auto:
        loop(auto, model, opt, batches(), 2)
    model = mlp()
    opt = adamw(model)
    with ngl_profile.profile(model, opt, track_steps=2) as marked:
        loop(marked, model, opt, batches(), 2, mark="other")
    a, m = auto.case.memory_bytes, marked.case.memory_bytes
    assert a["activations"] > 0
    # still forward's: the batch (made before the marked block) and the loss's 4-byte gradient seed
    # (made after it, before autograd's engine starts); the saved activations moved to temporaries
    assert m["activations"] == BATCH * (16 + 8) * 4 + 4
    assert a["activations"] + a["temporaries"] == m["activations"] + m["temporaries"]
    with pytest.raises(ValueError, match="phase must be one of forward, backward, optimizer, other"):
        with marked.phase("loss"):
            pass


def test_steps_after_the_tracked_ones_are_timed():
    model = mlp()
    opt = adamw(model)
    with ngl_profile.profile(model, opt, track_steps=1, warmup=1, tokens_per_step=BATCH) as prof:
        loop(prof, model, opt, batches(), 5)
    c = prof.case
    assert len(c.step_peaks_bytes) == 1
    assert c.step_time_s["steps"] == 3  # 5 steps: 1 tracked, 1 warm-up, 3 timed
    assert c.step_time_s["total_min"] <= c.step_time_s["total"] <= c.step_time_s["total_max"]
    assert c.tokens_per_s == pytest.approx(BATCH / c.step_time_s["total"])
    assert prof.run.scenario["steps"] == 3 and prof.run.scenario["warmup"] == 1


def test_every_step_tracked_with_track_steps_none():
    model = mlp()
    opt = adamw(model)
    with ngl_profile.profile(model, opt, track_steps=None) as prof:
        loop(prof, model, opt, batches(), 3)
    assert len(prof.case.step_peaks_bytes) == 3 and prof.case.tokens_per_s is None


@pytest.mark.parametrize("exc, status", [(torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"), "oom"),
                                         (RuntimeError("boom"), "error")])
def test_a_failure_in_the_loop_is_recorded_and_raised_on(tmp_path, exc, status):
    model = mlp()
    opt = adamw(model)
    with pytest.raises(type(exc)):
        with ngl_profile.profile(model, opt, out=tmp_path):
            mse(model, batches()(0)).backward()
            raise exc
    c = load_results(tmp_path).cases[0]
    assert c.status == status and str(exc).split(".")[0] in c.message
    assert c.peak_phase == "at failure" and c.memory_bytes["weights"] == param_bytes(model)
    assert c.fits is (False if status == "oom" else None)
    assert _get_current_dispatch_mode() is None


def test_unknown_optimizer_state_fails_at_the_step_naming_the_key():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="SGD's optimizer state key 'momentum_buffer'"):
        with ngl_profile.profile(model, opt) as prof:
            loop(prof, model, opt, batches(), 1)
    assert _get_current_dispatch_mode() is None
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with ngl_profile.profile(model, opt, state_categories={"momentum_buffer": "moments"}) as prof:
        loop(prof, model, opt, batches(), 2)
    assert prof.case.memory_bytes["moments"] == param_bytes(model)


@pytest.mark.parametrize("kwargs, message", [
    ({"track_steps": 0}, "track_steps must be an integer ≥ 1 or None; got 0"),
    ({"warmup": -1}, "warmup must be an integer ≥ 0; got -1"),
    ({"gpu": "nope"}, "unknown GPU 'nope'"),
    ({"state_categories": "weights"}, "a category must be one of moments"),
])
def test_bad_arguments_fail_before_the_loop(kwargs, message):
    model = mlp()
    with pytest.raises(ValueError, match=message):
        ngl_profile.profile(model, adamw(model), **kwargs)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer; got str"):
        ngl_profile.profile(model, "adamw")
