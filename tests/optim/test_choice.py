"""The window kernels' chooser (choice.py): forced either way the same results within the stated
rounding; on a CPU, each kind chosen from its own in-step calls (alternated, warm-ups left out,
the lower median time per element kept); nothing timed under FakeTensorMode, under the memory
tracker, or for a partial window; a GPU's candidates timed apart, best of REPEATS."""
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
    """Stands in for choice._timed: runs the candidate (its result is the pass's result, as with
    the real one) and reports `per_element[name] × the window's elements` seconds."""

    def __init__(self, compiled_s: float, eager_s: float):
        self.per_element, self.calls, self.elements = {"compiled": compiled_s, "eager": eager_s}, [], 1

    def __call__(self, name, fn):
        out = fn()
        assert out is not None
        self.calls.append(name)
        return out, self.per_element[name] * self.elements


def no_timing(*_):
    pytest.fail("something was timed")


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
    monkeypatch.setattr(choice, "_timed", no_timing)
    monkeypatch.setattr(choice, "_once", no_timing)
    cols = dequantized64(state)
    s = cols.shape[0]
    for slot in range(s):
        natural._gram_update(state, slot, s, "auto")
    expect = cols @ cols.t()  # products of stored values are exact in float64
    assert ((state["gram"] - expect).abs() / expect.abs()).max() < 1e-13
    w = torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = natural.combine(state, w, "auto")
    ref.assert_within_summation_bound(got, cols, w, torch.float32)
    assert calls == ({"gram_row": s, "combine": 1} if forced == "compiled" else {"gram_row": 0, "combine": 0})


def trial_calls() -> int:
    return 2 * (choice.TRIALS + 1)  # both candidates, each a warm-up call and TRIALS timed ones


def test_auto_times_a_kind_in_its_own_calls_and_keeps_the_faster(monkeypatch):
    calls = spy(monkeypatch)
    timer = FakeTimer(compiled_s=2e-9, eager_s=1e-9)  # eager "faster"
    monkeypatch.setattr(choice, "_timed", timer)
    monkeypatch.setattr(choice, "_once", no_timing)  # the GPU's way: not on a CPU
    a, b = window("float32", k=5000, seed=0), window("float32", k=6000, seed=1)  # k up to 8192: one kind
    timer.elements = a["history"].numel()
    cols = dequantized64(a)
    for i in range(trial_calls()):
        natural._gram_update(a, i % 6, 6, "auto")
        expect = cols @ cols[i % 6]
        assert ((a["gram"][i % 6] - expect).abs() / expect.abs()).max() < 1e-13  # every trial call is a real pass
    assert timer.calls == ["compiled", "eager"] * (choice.TRIALS + 1)  # alternated, compiled first
    assert calls["gram_row"] == choice.TRIALS + 1
    (key, (picked, seconds)), = choice.choices().items()
    assert key == ("gram_row", 6, 8192, torch.float32, torch.float64, "cpu") and picked == "eager"
    assert seconds == pytest.approx({"compiled": 2e-9 * timer.elements, "eager": 1e-9 * timer.elements})
    natural._gram_update(b, 1, 6, "auto")  # same kind: decided, eager, nothing timed
    assert len(timer.calls) == trial_calls() and calls["gram_row"] == choice.TRIALS + 1
    # another k bucket, storage dtype or pass is another kind, timed on its own
    natural._gram_update(window("float32", k=9000), 1, 6, "auto")
    natural.combine(a, torch.ones(6, dtype=torch.float64), "auto")
    assert len(timer.calls) == trial_calls() + 2 and len(choice.choices()) == 1
    # the device is part of the kind
    assert choice.kind("combine", torch.empty(6, 5000, device="meta"), torch.float32)[-1] == "meta"


def test_auto_compares_time_per_element(monkeypatch):
    """A kind's windows differ in k (up to a power of two): the compiled calls here are on the
    larger window and take longer each, yet less per element, so compiled is kept."""
    big, small = window("float32", k=8000, seed=0), window("float32", k=4200, seed=1)
    seconds = {"compiled": 0, "eager": 0}

    def timed(name, fn):
        out = fn()
        elements = (big if name == "compiled" else small)["history"].numel()
        seconds[name] = (1e-9 if name == "compiled" else 1.5e-9) * elements
        return out, seconds[name]
    monkeypatch.setattr(choice, "_timed", timed)
    for i in range(trial_calls()):
        natural._gram_update(big if i % 2 == 0 else small, 1, 6, "auto")
    (picked, per_call), = choice.choices().values()
    assert per_call["compiled"] > per_call["eager"] and picked == "compiled"


def test_auto_results_match_the_exact_sum_whichever_wins(monkeypatch):
    for compiled_s, eager_s in ((1.0, 2.0), (2.0, 1.0)):
        choice.clear()
        monkeypatch.setattr(choice, "_timed", FakeTimer(compiled_s, eager_s))
        state = window("int8")
        cols = dequantized64(state)
        w = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        for _ in range(trial_calls() + 2):  # the trial calls, then the chosen candidate's
            got = natural.combine(state, w, "auto")
            # s + 1 terms: the compiled kernel folds the int8 scale into w_j, one rounding more
            ref.assert_within_summation_bound(got, cols, w, torch.float32)
        assert set(c for c, _ in choice.choices().values()) == {"compiled" if compiled_s < eager_s else "eager"}


def test_a_compiled_kernel_that_cannot_run_means_eager(monkeypatch):
    calls = {"eager": 0}
    real_eager = natural._combine_eager

    def eager(*a):
        calls["eager"] += 1
        return real_eager(*a)
    monkeypatch.setattr(kernels, "combine", lambda *a: None)  # as when compiling fails here
    monkeypatch.setattr(natural, "_combine_eager", eager)
    state = window("float32")
    natural.combine(state, torch.ones(6, dtype=torch.float64), "auto")
    natural.combine(state, torch.ones(6, dtype=torch.float64), "auto")
    assert calls["eager"] == 2 and [c for c, _ in choice.choices().values()] == ["eager"]


def test_gpu_way_times_apart_best_of_repeats(monkeypatch):
    """_measure (what a CUDA window gets): warm-up each, then REPEATS synchronised runs alternated,
    the best kept; here on a CPU tensor, which is all it needs."""
    order = []
    times = iter([3.0, 1.0] * choice.REPEATS)

    def once(fn, device):
        fn()
        order.append("run")
        return next(times)
    monkeypatch.setattr(choice, "_once", once)
    state = window("float32")
    key = choice.kind("combine", state["history"], torch.float32)
    w = torch.ones(6, dtype=torch.float64)
    picked = choice._measure(key, state["history"], lambda: kernels.combine(state["history"], None, w, torch.float32),
                             lambda: natural._combine_eager(state, w, torch.float32))
    assert picked == "eager" and len(order) == 2 * choice.REPEATS
    assert choice.choices()[key] == ("eager", {"compiled": 3.0, "eager": 1.0})


def test_partial_window_is_not_timed(monkeypatch):
    calls = spy(monkeypatch)
    monkeypatch.setattr(choice, "_timed", no_timing)
    state = {}
    natural.init_window(state, 5000, 4, "float32", torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        natural.push(state, torch.randn(5000, generator=gen), "auto")
    assert calls["gram_row"] == 3 and choice.choices() == {}  # no choice yet: the compiled kernel


def test_fake_mode_times_nothing_and_allocates_as_the_compiled_kernel(monkeypatch):
    monkeypatch.setattr(choice, "_timed", no_timing)
    monkeypatch.setattr(choice, "_once", no_timing)
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


def test_nothing_is_timed_in_a_tracked_step(monkeypatch):
    """Under the tracker (a measured run's tracked steps) no trial runs: the compiled kernel, whose
    only allocation is its float64 row, not an eager candidate's float64 window copy; once the
    kind is decided in untracked steps, a tracked step follows that choice."""
    monkeypatch.setattr(choice, "_timed", no_timing)
    state = window("float32", s=8, k=20000)
    window_bytes = state["history"].numel() * 4
    tracker = MemoryTracker(record_timeline=False)
    with tracker:
        tracker.start_step()
        natural._gram_update(state, 2, 8, "auto")
        tracker.end_step()
    assert window_bytes < tracker.snapshot().peak_bytes <= window_bytes + 1024  # test_kernels' bound
    assert choice.choices() == {}
    monkeypatch.setattr(choice, "_timed", FakeTimer(compiled_s=2.0, eager_s=1.0))
    for i in range(trial_calls()):
        natural._gram_update(state, i % 8, 8, "auto")
    calls = spy(monkeypatch)
    with tracker:
        tracker.start_step()
        natural._gram_update(state, 3, 8, "auto")
        tracker.end_step()
    assert calls["gram_row"] == 0  # decided eager outside: eager inside too


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
    monkeypatch.setattr(choice, "_timed", FakeTimer(compiled_s=2.0, eager_s=1.0))
    real = window("float32", s=4, k=1000)
    for i in range(trial_calls()):
        natural._gram_update(real, i % 4, 4, "auto")  # times both: eager "faster"
    calls = spy(monkeypatch)
    monkeypatch.setattr(choice, "_timed", no_timing)
    monkeypatch.setattr(choice, "_once", no_timing)
    with FakeTensorMode():
        state = {}
        natural.init_window(state, 1000, 4, "float32", torch.device("cpu"))
        for _ in range(5):
            natural.push(state, torch.ones(1000), "auto")
    assert calls["gram_row"] == 0  # every push, partial or full: eager, as chosen for this kind


def test_each_combine_candidate_is_timed_after_either_gram_candidate(monkeypatch):
    """The CPU order is Gram row then g̃ per window: the g̃ trial switches candidate every second
    call, so the (Gram row, g̃) candidate pairs of consecutive windows cover all four."""
    timer = FakeTimer(compiled_s=1.0, eager_s=1.0)
    monkeypatch.setattr(choice, "_timed", timer)
    state = window("float32")
    w = torch.ones(6, dtype=torch.float64)
    for i in range(8):
        natural._gram_update(state, i % 6, 6, "auto")
        natural.combine(state, w, "auto")
    pairs = set(zip(timer.calls[0::2], timer.calls[1::2]))
    assert pairs == {("compiled", "compiled"), ("eager", "compiled"), ("compiled", "eager"), ("eager", "eager")}
