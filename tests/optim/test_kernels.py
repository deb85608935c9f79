"""The compiled kernels (kernels.py) against float64 references and against the eager code."""
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ngl_profile.measure.memory import MemoryTracker
from ngl_profile.optim import NaturalGaLoreAdamW, kernels, natural

from . import reference as ref


@pytest.fixture(autouse=True)
def compile_small_windows(monkeypatch):
    # the windows here are small; production leaves windows under MIN_ELEMENTS to the eager code
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)


def window(storage: str, s=6, k=5000, seed=0):
    """A filled window whose columns are alike (as consecutive gradients are), pushed for real."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(k, generator=gen)
    state = {}
    natural.init_window(state, k, s, storage, torch.device("cpu"))
    for _ in range(s + 2):  # wraps around: the ring's head is not slot 0
        natural.push(state, 1e3 * (base + 0.01 * torch.randn(k, generator=gen)))
    return state


def dequantized64(state):
    cols = state["history"].double()
    if "history_scale" in state:
        cols = cols * state["history_scale"].double()[:, None]
    return cols


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
def test_gram_row_is_float64_exact_products(storage):
    state = window(storage)
    cols = dequantized64(state)
    slot = 3
    scale = state.get("history_scale")
    row = kernels.gram_row(state["history"], scale, state["history"][slot],
                           None if scale is None else scale[slot])
    assert row is not None and row.dtype == torch.float64
    expect = cols @ cols[slot]  # products of float32/bf16/int8·scale values are exact in float64
    assert ((row - expect).abs() / expect.abs()).max() < 1e-13


def test_compiled_gram_matches_eager_update():
    state = window("float32")
    eager = state["gram"].clone()
    for j in range(state["history"].shape[0]):
        natural._gram_update(state, j, state["history_count"], compiled=True)
    assert ((state["gram"] - eager).abs() / eager.abs()).max() < 1e-13


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_combine_matches_exact_sum_and_ignores_unfilled_slots(storage, dtype):
    state = window(storage)
    s = state["history"].shape[0]
    w = torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w[4:] = 0  # as `weights` pads slots that are not filled; their (finite) contents must not count
    cols = dequantized64(state)[:4]
    got = natural.combine(state, w, compiled=True, dtype=dtype)
    assert got.dtype == dtype and "cpu" not in kernels._failed  # the compiled kernel ran
    # the compiled kernel sums all s rows (the zero ones add exactly 0): the bound's m is s + 1
    ref.assert_within_summation_bound(got, torch.cat([cols, torch.zeros(s - 4, cols.shape[1], dtype=cols.dtype)]),
                                  w, dtype)
    state["history_count"] = 4
    eager = natural.combine(state, w, compiled=False, dtype=dtype)
    assert eager.dtype == dtype
    ref.assert_within_summation_bound(eager, cols, w[:4], dtype)


@pytest.mark.parametrize("history_dtype", ["float32", "bfloat16", "int8"])
def test_optimizer_compiled_equals_eager(history_dtype):
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(40, 24, generator=gen), torch.randn(24, 40, generator=gen), torch.randn(24, generator=gen)]
             for _ in range(9)]
    results = []
    for compiled in (True, False):
        init = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(40, 24, generator=init)),
              torch.nn.Parameter(torch.randn(24, 40, generator=init)), torch.nn.Parameter(torch.randn(24, generator=init))]
        opt = NaturalGaLoreAdamW([{"params": ps[:2], "rank": 6, "update_proj_gap": 4, "history_size": 4,
                                   "history_dtype": history_dtype}, {"params": ps[2:]}],
                                 lr=1e-2, weight_decay=0.01, compile=compiled)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach().clone() for p in ps])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tracker_sees_the_outputs_and_no_float64_copy():
    state = window("float32", s=8, k=20000)
    buf = state["history"]
    peaks = {}
    for compiled in (True, False):
        tracker = MemoryTracker(record_timeline=False)
        with tracker:
            tracker.start_step()
            natural._gram_update(state, 2, 8, compiled)
            tracker.end_step()
        peaks[compiled] = tracker.snapshot().peak_bytes
    # both: the window itself (seen through the views taken of it); compiled: + the float64 row
    # the kernel writes into (allocated where the tracker sees it); eager: + a float64 window copy
    window_bytes = buf.numel() * buf.element_size()
    assert window_bytes < peaks[True] <= window_bytes + 1024
    assert peaks[False] >= window_bytes + buf.numel() * 8  # the window fits one slice here


def test_tracker_sees_combine_output_and_a_bounded_float64_transient(monkeypatch):
    """g̃ = G·w is summed in float64 without a float64 copy of the window: compiled, the sum is
    per element in registers (the tracker sees the window and the output only); eager, one float64
    slice at a time, at most _CHUNK_ELEMENTS elements, plus its float64 result."""
    s, k = 8, 20000
    state = window("float32", s=s, k=k)
    w = natural.weights([state], [1e-3])[0]
    buf = state["history"]
    window_bytes, out_bytes = buf.numel() * buf.element_size(), k * 4
    monkeypatch.setattr(natural, "_CHUNK_ELEMENTS", s * 2500)  # eager: slices of 2500 columns
    peaks = {}
    for compiled in (True, False):
        tracker = MemoryTracker(record_timeline=False)
        with tracker:
            tracker.start_step()
            out = natural.combine(state, w, compiled)
            tracker.end_step()
        assert out.shape == (k,)
        peaks[compiled] = tracker.snapshot().peak_bytes
    # compiled: only the output (the kernel takes the window whole, no view the tracker would see)
    assert out_bytes <= peaks[True] <= out_bytes + 1024
    # eager: the window (seen through the slices taken of it), the output, and at most one float64
    # slice with its float64 mat-vec result at a time: 1/4 of a float64 window copy here
    slice_bytes = s * 2500 * 8 + 2500 * 8
    assert window_bytes + out_bytes < peaks[False] <= window_bytes + out_bytes + slice_bytes + 1024


def test_fake_mode_allocates_only_the_outputs():
    with FakeTensorMode():
        state = {}
        natural.init_window(state, 1000, 4, "float32", torch.device("cpu"))
        natural.push(state, torch.ones(1000), compiled=True)  # fake: no values either way
        w = natural.weights([state], [1e-3])[0]
        out = natural.combine(state, w, compiled=True)
    assert out.shape == (1000,) and w.shape == (4,)


def test_compile_failure_falls_back_to_eager_once(monkeypatch):
    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_failed", set())
    state = window("float32")
    eager = state["gram"].clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        natural._gram_update(state, 1, state["history_count"], compiled=True)
        assert not kernels.usable(state["history"])  # no second attempt on this device
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "no C++ compiler found" in msgs[0] and "more detail" not in msgs[0]
    torch.testing.assert_close(state["gram"], eager, rtol=1e-13, atol=0)


def test_small_windows_stay_eager(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 1 << 17)
    assert not kernels.usable(torch.empty(10, 13106)) and kernels.usable(torch.empty(10, 13108))
    calls = []
    monkeypatch.setattr(kernels, "_run", lambda *a: calls.append(a))
    state = window("float32", s=4, k=1000)
    natural._gram_update(state, 1, 4, compiled=True)
    assert calls == []


def test_env_switch_and_validation(monkeypatch):
    monkeypatch.setenv("NGL_PROFILE_COMPILE", "0")
    assert not kernels.usable(torch.empty(4))
    monkeypatch.setenv("NGL_PROFILE_COMPILE", "1")
    assert kernels.usable(torch.empty(4))
    calls = []
    monkeypatch.setattr(kernels, "_run", lambda *a: calls.append(a))
    natural._gram_update(window("float32", s=4, k=1000), 1, 4, compiled=False)  # compile=False
    assert calls == []
    with pytest.raises(ValueError, match="compile must be true or false"):
        NaturalGaLoreAdamW([torch.nn.Parameter(torch.zeros(2))], compile="yes")


@pytest.mark.parametrize("history_dtype", ["float32", "bfloat16", "int8"])
def test_resume_is_bit_exact_with_the_compiled_kernels(history_dtype):
    # test_state's resume check, run here where every window takes the compiled kernels
    from .test_state import test_resume_mid_window_mid_gap_is_bit_exact as resume_check

    resume_check(NaturalGaLoreAdamW, "full", history_dtype)
