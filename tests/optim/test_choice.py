"""The window kernels' chooser (choice.py): forced either way the same results within the stated
rounding, one timing per kind of window, nothing timed under FakeTensorMode or for a partial window."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ngl_profile.measure.memory import MemoryTracker
from ngl_profile.optim import NaturalGaLoreAdamW, choice, kernels, natural

from . import reference as ref
from .test_kernels import dequantized64, window


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)  # small windows here; production leaves them eager
    monkeypatch.delenv(choice.ENV, raising=False)
    monkeypatch.delenv("NGL_PROFILE_COMPILE", raising=False)
    choice.clear()
    yield
    choice.clear()


class FakeTimer:
    """Stands in for choice._once: runs the candidate (as the real one does) and reports a
    fixed time per candidate, in the order _measure asks (compiled, eager, compiled, …)."""

    def __init__(self, compiled_s: float, eager_s: float):
        self.seconds, self.calls = (compiled_s, eager_s), 0

    def __call__(self, fn, device, evict):
        out = fn()
        assert out is not None
        self.calls += 1
        return self.seconds[(self.calls - 1) % 2]


def spy(monkeypatch):
    """Counts calls of the compiled kernels (their results unchanged)."""
    calls = {"gram_row": 0, "combine": 0}
    for name in calls:
        real = getattr(kernels, name)

        def counted(*a, _real=real, _name=name):
            calls[_name] += 1
            return _real(*a)
        monkeypatch.setattr(kernels, name, counted)
    return calls


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("forced", ["compiled", "eager"])
def test_forced_choice_runs_that_path_within_the_rounding(monkeypatch, storage, forced):
    state = window(storage)
    monkeypatch.setenv(choice.ENV, forced)
    calls = spy(monkeypatch)
    timer = FakeTimer(1.0, 1.0)
    monkeypatch.setattr(choice, "_once", timer)
    cols = dequantized64(state)
    s = cols.shape[0]
    for slot in range(s):
        natural._gram_update(state, slot, s, "auto")
    expect = cols @ cols.t()  # products of stored values are exact in float64
    assert ((state["gram"] - expect).abs() / expect.abs()).max() < 1e-13
    w = torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = natural.combine(state, w, "auto")
    ref.assert_within_summation_bound(got, cols, w, torch.float32)
    assert timer.calls == 0  # forced: nothing timed
    assert calls == ({"gram_row": s, "combine": 1} if forced == "compiled" else {"gram_row": 0, "combine": 0})


def test_auto_times_once_per_kind_and_uses_the_faster(monkeypatch):
    calls = spy(monkeypatch)
    timer = FakeTimer(compiled_s=2e-3, eager_s=1e-3)  # eager "faster"
    monkeypatch.setattr(choice, "_once", timer)
    a, b = window("float32", k=5000, seed=0), window("float32", k=6000, seed=1)  # k up to 8192: one kind
    natural._gram_update(a, 1, 6, "auto")
    runs = 2 * choice.REPEATS  # both candidates, alternated
    assert timer.calls == runs and calls["gram_row"] == 1 + choice.REPEATS  # compiled: warm-up + timed
    natural._gram_update(b, 1, 6, "auto")
    natural._gram_update(a, 2, 6, "auto")
    assert timer.calls == runs and calls["gram_row"] == 1 + choice.REPEATS  # same kind: cached, eager
    (key, (picked, seconds)), = choice.choices().items()
    assert key == ("gram_row", 6, 8192, torch.float32, torch.float64, "cpu") and picked == "eager"
    assert seconds == {"compiled": 2e-3, "eager": 1e-3}
    # another k bucket, storage dtype or pass is another kind, timed on its own
    natural._gram_update(window("float32", k=9000), 1, 6, "auto")
    natural._gram_update(window("bfloat16", k=5000), 1, 6, "auto")
    natural.combine(a, torch.ones(6, dtype=torch.float64), "auto")
    natural.combine(a, torch.ones(6, dtype=torch.float64), "auto", dtype=torch.bfloat16)
    assert timer.calls == 5 * runs and len(choice.choices()) == 5
    # the device is part of the kind
    assert choice.kind("combine", torch.empty(6, 5000, device="meta"), torch.float32)[-1] == "meta"


def test_auto_results_match_the_exact_sum_whichever_wins(monkeypatch):
    for compiled_s, eager_s in ((1.0, 2.0), (2.0, 1.0)):
        choice.clear()
        monkeypatch.setattr(choice, "_once", FakeTimer(compiled_s, eager_s))
        state = window("int8")
        cols = dequantized64(state)
        w = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        got = natural.combine(state, w, "auto")
        assert set(c for c, _ in choice.choices().values()) == {"compiled" if compiled_s < eager_s else "eager"}
        # s + 1 terms: the compiled kernel folds the int8 scale into w_j, one rounding more
        ref.assert_within_summation_bound(got, cols, w, torch.float32)


def test_partial_window_is_not_timed(monkeypatch):
    calls = spy(monkeypatch)
    monkeypatch.setattr(choice, "_once", lambda fn, device, evict: pytest.fail("a partial window was timed"))
    state = {}
    natural.init_window(state, 5000, 4, "float32", torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        natural.push(state, torch.randn(5000, generator=gen), "auto")
    assert calls["gram_row"] == 3 and choice.choices() == {}  # no choice yet: the compiled kernel


def test_fake_mode_times_nothing_and_allocates_as_the_compiled_kernel(monkeypatch):
    monkeypatch.setattr(choice, "_once", lambda fn, device, evict: pytest.fail("an estimate was timed"))
    calls = spy(monkeypatch)
    with FakeTensorMode():
        state = {}
        natural.init_window(state, 1000, 4, "float32", torch.device("cpu"))
        for _ in range(5):  # full, then wrapped
            natural.push(state, torch.ones(1000), "auto")
        w = natural.weights([state], [1e-3])[0]
        out = natural.combine(state, w, "auto")
    assert out.shape == (1000,) and choice.choices() == {}
    assert calls == {"gram_row": 5, "combine": 1}  # no choice made: the compiled kernels, as before


def test_timing_runs_are_invisible_to_the_tracker(monkeypatch):
    """The tracker (a measured run) sees the chosen pass only: here compiled, whose only
    allocation is its float64 row, not the eager candidate's float64 window copy."""
    monkeypatch.setattr(choice, "_once", FakeTimer(compiled_s=1.0, eager_s=2.0))
    state = window("float32", s=8, k=20000)
    window_bytes = state["history"].numel() * 4
    tracker = MemoryTracker(record_timeline=False)
    with tracker:
        tracker.start_step()
        natural._gram_update(state, 2, 8, "auto")
        tracker.end_step()
    assert window_bytes < tracker.snapshot().peak_bytes <= window_bytes + 1024  # test_kernels' bound


def test_optimizer_forced_each_way_agrees(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(40, 24, generator=gen) for _ in range(8)]
    results = []
    for forced in ("compiled", "eager", "auto"):
        monkeypatch.setenv(choice.ENV, forced)
        p = torch.nn.Parameter(torch.randn(40, 24, generator=torch.Generator().manual_seed(0)))
        opt = NaturalGaLoreAdamW([{"params": [p], "rank": 6, "history_size": 4}], lr=1e-2)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        results.append(p.detach().clone())
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)


def test_bad_environment_value_is_one_line(monkeypatch):
    monkeypatch.setenv(choice.ENV, "fastest")
    with pytest.raises(ValueError, match="NGL_PROFILE_KERNELS must be one of auto, compiled, eager; got 'fastest'"):
        choice.mode()
    monkeypatch.setenv(choice.ENV, "compiled")
    monkeypatch.setenv("NGL_PROFILE_COMPILE", "0")  # the older switch still wins: eager
    assert choice.mode() == "eager"


def test_a_candidate_that_cannot_run_never_wins():
    runs = []
    state = window("float32", s=4, k=1000)
    picked = choice._measure(("x",), state["history"], lambda: None,  # as if compiling failed here
                             lambda: runs.append(1) or torch.ones(3))
    assert picked == "eager" and len(runs) == 1 + choice.REPEATS  # warm-up, then the timed runs
    (_, seconds), = choice.choices().values()
    assert seconds["compiled"] == float("inf") and 0 <= seconds["eager"] < float("inf")


def test_an_estimate_follows_a_choice_already_made(monkeypatch):
    monkeypatch.setattr(choice, "_once", FakeTimer(compiled_s=2.0, eager_s=1.0))
    real = window("float32", s=4, k=1000)
    natural._gram_update(real, 0, 4, "auto")  # times both: eager "faster"
    calls = spy(monkeypatch)
    monkeypatch.setattr(choice, "_once", lambda fn, device, evict: pytest.fail("an estimate was timed"))
    with FakeTensorMode():
        state = {}
        natural.init_window(state, 1000, 4, "float32", torch.device("cpu"))
        for _ in range(5):
            natural.push(state, torch.ones(1000), "auto")
    assert calls["gram_row"] == 0  # every push, partial or full: eager, as chosen for this kind
