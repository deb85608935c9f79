"""The window kernels' chooser (choice.py): forced each way the same results within the stated
rounding; each optimizer times its own whole steps, all-native, all-compiled and all-eager (in
turn, warm-ups left out, the lowest median kept); nothing timed under FakeTensorMode, under the
memory tracker, for a partial window, or when the environment forces a mode."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ngl_profile.measure.memory import MemoryTracker
from ngl_profile.optim import NaturalGaLoreAdamW, choice, kernels, native, natural

from . import reference as ref
from .test_kernels import dequantized64, window

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_environment(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)  # small windows here; production leaves them eager
    monkeypatch.delenv(choice.ENV, raising=False)
    monkeypatch.delenv("NGL_PROFILE_COMPILE", raising=False)


def spy(monkeypatch):
    """Counts calls of the fused kernels (native or compiled), for one window or a batch of them
    (results unchanged); calls["native"]: how many of them asked for the native kernel."""
    calls = {"gram_row": 0, "combine": 0, "native": 0}
    for name, pass_ in (("gram_row", "gram_row"), ("gram_rows", "gram_row"), ("combine", "combine"),
                        ("combine_rows", "combine")):
        real = getattr(kernels, name)

        def counted(*a, _real=real, _pass=pass_):
            calls[_pass] += 1
            calls["native"] += bool(a[-1])  # the last argument: native or not
            return _real(*a)
        monkeypatch.setattr(kernels, name, counted)
    return calls


def passes(state, request):
    """Every Gram row of a full window, then g̃; returns (Gram matrix, g̃, w)."""
    s = state["history"].shape[0]
    for slot in range(s):
        natural._gram_update(state, slot, s, request)
    w = torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return state["gram"], natural.combine(state, w, request), w


def assert_exact(state, gram, got, w):
    cols = dequantized64(state)
    expect = cols @ cols.t()  # products of stored values are exact in float64
    assert ((gram - expect).abs() / expect.abs()).max() < 1e-13
    # s + 1 terms for int8: the compiled kernel folds the scale into w_j, one rounding more
    ref.assert_within_summation_bound(got, cols, w, torch.float32)


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("forced", ["native", "compiled", "eager"])
def test_forced_mode_runs_that_path_within_the_rounding(monkeypatch, storage, forced):
    state = window(storage)
    monkeypatch.setenv(choice.ENV, forced)
    calls = spy(monkeypatch)
    with choice.stepping("eager" if forced != "eager" else "compiled"):  # the environment wins
        assert_exact(state, *passes(state, "auto"))
    s = state["history"].shape[0]
    fused = {"gram_row": s, "combine": 1}
    expect = {"native": {**fused, "native": s + 1}, "compiled": {**fused, "native": 0},
              "eager": {"gram_row": 0, "combine": 0, "native": 0}}[forced]
    assert calls == expect


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
def test_auto_takes_the_mode_of_the_step(monkeypatch, storage):
    state = window(storage)
    s = state["history"].shape[0]
    calls = spy(monkeypatch)
    assert_exact(state, *passes(state, "auto"))  # no step deciding: compiled
    assert calls == {"gram_row": s, "combine": 1, "native": 0}
    with choice.stepping("eager"):
        assert_exact(state, *passes(state, "auto"))
        assert calls == {"gram_row": s, "combine": 1, "native": 0}
        passes(state, True)  # compiled=True asks for the compiled kernel whatever the step's mode
        assert calls == {"gram_row": 2 * s, "combine": 2, "native": 0}
    with choice.stepping("native"):
        assert_exact(state, *passes(state, "auto"))
        assert calls == {"gram_row": 3 * s, "combine": 3, "native": s + 1}
    passes(state, False)
    assert calls == {"gram_row": 3 * s, "combine": 3, "native": s + 1}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_steps(chooser, clock, cost: dict, n: int, timeable=True) -> list:
    modes = []
    for _ in range(n):
        with chooser.step(timeable, CPU):
            modes.append(choice._stepping)
            clock.now += cost[choice._stepping or "compiled"]
    return modes


@pytest.mark.parametrize("candidates, faster", [(c, f) for c in (("native", "compiled", "eager"), ("compiled", "eager"))
                                                 for f in c])
@pytest.mark.parametrize("trials", [1, 3])
def test_step_chooser_takes_turns_leaves_out_warm_ups_and_keeps_the_fastest(monkeypatch, candidates, faster, trials):
    monkeypatch.setattr(choice, "candidates", lambda device: candidates)  # native: built here or not
    monkeypatch.setattr(choice, "TRIALS", trials)
    chooser, clock = choice.StepChooser(), Clock()
    chooser.clock = clock
    n = len(candidates)
    # each mode's first (warm-up) step is slow: with one trial, a choice that counted it would flip
    cost = {m: 1.0 if m == faster else 2.0 + i for i, m in enumerate(candidates)}
    first = {m: 100.0 if m == faster else 2.0 for m in candidates}
    modes = []
    for i in range(n * (choice.TRIALS + 1)):
        with chooser.step(True, CPU):
            modes.append(choice._stepping)
            clock.now += (first if i < n else cost)[choice._stepping]
    assert modes == list(candidates) * (choice.TRIALS + 1)
    assert chooser.choice == faster
    assert chooser.summary() == {"choice": faster, "median_step_s": cost}
    assert run_steps(chooser, clock, cost, 3) == [faster] * 3  # decided: no more trials


def test_candidates_are_native_compiled_eager_on_a_cpu_where_window_c_builds(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: True)
    assert choice.candidates(CPU) == ("native", "compiled", "eager")
    assert choice.candidates(torch.device("cuda")) == ("compiled", "eager")
    monkeypatch.setattr(native, "available", lambda: False)
    assert choice.candidates(CPU) == ("compiled", "eager")


def test_step_chooser_waits_for_a_timeable_step(monkeypatch):
    chooser, clock = choice.StepChooser(), Clock()
    chooser.clock = clock
    assert run_steps(chooser, clock, {"compiled": 1.0}, 4, timeable=False) == [None] * 4
    assert chooser.summary() == {"choice": None, "median_step_s": {}}
    monkeypatch.setenv(choice.ENV, "compiled")  # a forced mode times nothing either
    assert run_steps(chooser, clock, {"compiled": 1.0}, 4) == [None] * 4 and chooser.choice is None


def optimizer(s=3, compile=True):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(40, 24, generator=gen)) for _ in range(2)]
    return ps, NaturalGaLoreAdamW([{"params": ps, "rank": 6, "history_size": s, "compile": compile}], lr=1e-2)


def step(ps, opt, gen):
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()


def test_an_optimizer_times_its_steps_once_its_windows_are_full(monkeypatch):
    ps, opt = optimizer(s=3)
    gen = torch.Generator().manual_seed(1)
    seen = []
    real = choice.StepChooser.step

    def watched(self, timeable, device):
        seen.append(timeable)
        return real(self, timeable, device)
    monkeypatch.setattr(choice.StepChooser, "step", watched)
    modes = choice.candidates(CPU)
    for _ in range(3 + len(modes) * (choice.TRIALS + 1)):
        step(ps, opt, gen)
    # steps 0–2 fill the windows (full before the push of step 3): not timed
    assert seen == [False] * 3 + [True] * (len(modes) * (choice.TRIALS + 1))
    summary = opt.kernel_choice
    assert summary["choice"] in modes and set(summary["median_step_s"]) == set(modes)
    _, eager_only = optimizer(compile=False)
    assert eager_only._timeable([(p, eager_only.param_groups[0]) for p in eager_only.param_groups[0]["params"]]) is False


def test_nothing_is_timed_in_a_tracked_step_or_an_estimate(monkeypatch):
    """Under the tracker (a measured run's tracked steps) and under FakeTensorMode no trial runs:
    the compiled kernel, whose only allocations are its outputs."""
    ps, opt = optimizer(s=2)
    gen = torch.Generator().manual_seed(2)
    step(ps, opt, gen)
    step(ps, opt, gen)  # windows full from here
    calls = spy(monkeypatch)
    tracker = MemoryTracker(record_timeline=False)
    with tracker:
        tracker.start_step()
        step(ps, opt, gen)
        tracker.end_step()
    assert opt.kernel_choice == {"choice": None, "median_step_s": {}}
    # compiled: one pass each over the arena of both windows
    assert calls == {"gram_row": 1, "combine": 1, "native": 0}
    with FakeTensorMode():
        fake_ps, fake = optimizer(s=2)
        for _ in range(4):
            for p in fake_ps:
                p.grad = torch.ones(p.shape)
            fake.step()
    assert fake.kernel_choice == {"choice": None, "median_step_s": {}}


def test_a_compiled_kernel_that_cannot_run_means_eager(monkeypatch):
    monkeypatch.setattr(kernels, "combine", lambda *a: None)  # as when compiling fails here
    state = window("float32")
    s = state["history"].shape[0]
    w = torch.ones(s, dtype=torch.float64)
    got = natural.combine(state, w, "auto")
    ref.assert_within_summation_bound(got, dequantized64(state), w, torch.float32)


def test_optimizer_forced_each_way_agrees(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(40, 24, generator=gen) for _ in range(12)]
    results = []
    for forced in ("native", "compiled", "eager", "auto"):
        monkeypatch.setenv(choice.ENV, forced)
        p = torch.nn.Parameter(torch.randn(40, 24, generator=torch.Generator().manual_seed(0)))
        opt = NaturalGaLoreAdamW([{"params": [p], "rank": 6, "history_size": 4}], lr=1e-2)
        for g in grads:  # auto: the trial steps run both modes, then the chosen one
            p.grad = g.clone()
            opt.step()
        results.append(p.detach().clone())
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)


def test_bad_environment_value_is_one_line(monkeypatch):
    monkeypatch.setenv(choice.ENV, "fastest")
    with pytest.raises(ValueError, match="NGL_PROFILE_KERNELS must be one of auto, native, compiled, eager; got 'fastest'"):
        choice.mode()
    monkeypatch.setenv(choice.ENV, "compiled")
    monkeypatch.setenv("NGL_PROFILE_COMPILE", "0")  # the older switch still wins: eager
    assert choice.mode() == "eager"
