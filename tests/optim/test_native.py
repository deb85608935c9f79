"""The native window kernels (window.c, built by native.py) against float64 references, the
compiled kernels and the eager code; their build, cache and fallback; what the tracker sees."""
import platform
import warnings

import pytest
import torch

from ngl_profile.measure.memory import MemoryTracker
from ngl_profile.optim import NaturalGaLoreAdamW, choice, kernels, native, natural

from . import reference as ref
from .test_kernels import dequantized64, window

STORAGES = ["float32", "bfloat16", "int8"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)  # small windows here
    monkeypatch.delenv(choice.ENV, raising=False)
    monkeypatch.delenv("NGL_PROFILE_COMPILE", raising=False)


@pytest.fixture
def built():
    if not native.available():
        pytest.skip("no C compiler here: the native kernels are not built (the fallback is tested apart)")


def spy_native(monkeypatch) -> list[bool]:
    """Records, for every pass that asked kernels.py for window.c's kernel, whether it ran."""
    ran = []
    patched = {}
    for name, real in kernels._NATIVE.items():
        patched[name] = lambda *a, _real=real: ran.append(_real(*a)) or ran[-1]
    monkeypatch.setattr(kernels, "_NATIVE", patched)
    return ran


def arena(storage: str, P=3, s=6, k=5003, seed=0):
    """P filled windows in one arena (k not a multiple of 8: the kernels' scalar tail runs)."""
    gen = torch.Generator().manual_seed(seed)
    states = [{} for _ in range(P)]
    natural.init_windows(states, k, s, storage, torch.device("cpu"))
    for i, st in enumerate(states):
        base = torch.randn(k, generator=gen) * 10.0 ** i
        for _ in range(s + 2):  # wraps around: the newest column is not in slot 0
            natural.push(st, 1e3 * (base + 0.01 * torch.randn(k, generator=gen)), compiled=False)
    at = natural._arena_slot(states[0]["history"])
    scale = natural._arena_slot(states[0]["history_scale"])[0] if storage == "int8" else None
    return states, at[0], scale


@pytest.mark.parametrize("storage", STORAGES)
def test_gram_rows_are_float64_exact_products(built, storage):
    states, cols, scale = arena(storage)
    slot = 2
    out = torch.empty(cols.shape[:2], dtype=torch.float64)
    g_scale = None if scale is None else scale[:, slot]
    assert native.gram_rows(cols, scale, cols[:, slot], g_scale, out)
    for p, st in enumerate(states):
        c = dequantized64(st)
        expect = c @ c[slot]
        assert ((out[p] - expect).abs() / expect.abs()).max() < 1e-13
        one = torch.empty(cols.shape[1], dtype=torch.float64)  # one window: the same numbers
        assert native.gram_rows(st["history"], st.get("history_scale"), st["history"][slot],
                                None if scale is None else st["history_scale"][slot], one)
        assert torch.equal(one, out[p])


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("s", [1, 5, 8, 9, 10, 17])
def test_gram_rows_of_every_group_split(built, storage, s):
    """window.c reads a window's rows in groups of ≤ 8 (s = 9: 5 + 4, s = 17: 6 + 6 + 5): every row
    against the float64 products, whatever group it falls in; int8 rows exactly."""
    states, cols, scale = arena(storage, P=2, s=s, k=1000 + s)
    slot = s // 2
    out = torch.empty(cols.shape[:2], dtype=torch.float64)
    assert native.gram_rows(cols, scale, cols[:, slot], None if scale is None else scale[:, slot], out)
    for p, st in enumerate(states):
        c = dequantized64(st)
        expect = c @ c[slot]
        if storage == "int8":
            codes = st["history"].to(torch.int64)
            exact = (codes @ codes[slot]).to(torch.float64) * st["history_scale"].double() * st["history_scale"][slot].double()
            assert torch.equal(out[p], exact)
        assert ((out[p] - expect).abs() / expect.abs()).max() < 1e-13


def test_prefetch_distance_is_measured_and_changes_no_result(built, monkeypatch):
    """Each pass over an arena of one shape takes native.PREFETCH_CANDIDATES in turn for its first
    calls, timed, then keeps one; at every distance the same bits as without prefetching; nothing
    is timed inside prefetch_frozen (a StepChooser's trials) or below the size worth timing."""
    monkeypatch.setattr(native, "_prefetch", {})
    monkeypatch.setattr(native, "_prefetch_seconds", {})
    monkeypatch.setattr(native, "_MEASURE_BYTES", 1 << 60)
    plain = _all_passes()
    monkeypatch.setattr(native, "_MEASURE_BYTES", 0)
    with native.prefetch_frozen():
        _all_passes()
    assert native.prefetch_choice() == {}
    calls = native.PREFETCH_TRIES * len(native.PREFETCH_CANDIDATES)
    runs = [_all_passes() for _ in range(calls)]  # the last ones run at the kept distances
    timed = native.prefetch_choice()
    with native.prefetch_forced(native.PREFETCH_CANDIDATES[-1]):  # the farthest, whatever was kept
        runs.append(_all_passes())
    assert native.prefetch_choice() == timed  # nothing timed while forced
    for got in runs:
        for key, value in plain.items():
            if isinstance(key, str):  # Gram rows
                assert torch.equal(got[key], value), key
            elif key[0] != "quantize":  # g̃
                assert torch.equal(got[key][0], value[0]), key
    chosen = native.prefetch_choice()
    assert {name.rsplit(" ", 1)[0] for name in chosen} == {
        f"{kind} {storage}" for kind in ("gram", "combine") for storage in STORAGES}
    for c in chosen.values():
        assert c["bytes"] in native.PREFETCH_CANDIDATES and set(c["seconds"]) == set(native.PREFETCH_CANDIDATES)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_combine_is_within_the_float64_summation_bound(built, storage, dtype):
    states, cols, scale = arena(storage)
    P, s, k = cols.shape
    w = torch.randn(P, s, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1e3
    w[:, 4:] = 0  # unfilled slots: their (finite) contents must add exactly 0
    out = torch.empty(P, k, dtype=dtype)
    assert native.combine_rows(cols, scale, w, out)
    for p, st in enumerate(states):
        # the int8 scale is folded into w_j (one rounding more): the bound's m counts all s rows + 1
        ref.assert_within_summation_bound(out[p], dequantized64(st), w[p], dtype)
        one = torch.empty(k, dtype=dtype)
        assert native.combine_rows(st["history"], st.get("history_scale"), w[p], one)
        assert torch.equal(one, out[p])


def test_a_dependent_window_keeps_its_digits(built):
    """Ten copies of one gradient: w ≈ ±1/λ cancels, g̃ = g/(λ + 10‖g‖²) (natural.py's docstring)."""
    k, s, lam = 6000, 10, 1e-3
    g = torch.randn(k, generator=torch.Generator().manual_seed(3))  # ‖g‖² ≈ 6e3: κ(S) ≈ 6e7
    state = {}
    natural.init_window(state, k, s, "float32", torch.device("cpu"))
    for _ in range(s):
        natural.push(state, g, compiled=False)
    w = natural.weights([state], [lam])[0]
    out = torch.empty(k)
    assert native.combine_rows(state["history"], None, w, out)
    g64 = g.double()
    expect = g64 / (lam + s * g64.dot(g64))
    assert ((out.double() - expect).abs().max() / expect.abs().max()) < 1e-6  # float32 rounding: 6e-8


def test_results_do_not_depend_on_the_thread_count(built):
    _, cols, _ = arena("float32", P=2, k=3 * 16384 + 5)  # several tasks per window
    w = torch.randn(2, cols.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            rows, out = torch.empty(2, cols.shape[1], dtype=torch.float64), torch.empty(2, cols.shape[2])
            assert native.gram_rows(cols, None, cols[:, 1], None, rows) and native.combine_rows(cols, None, w, out)
            got.append((rows, out))
    finally:
        torch.set_num_threads(threads)
    for rows, out in got[1:]:
        assert torch.equal(rows, got[0][0]) and torch.equal(out, got[0][1])


def test_cases_window_c_lacks_are_refused(built):
    _, cols, _ = arena("float32")
    rows = torch.empty(cols.shape[:2], dtype=torch.float64)
    assert not native.gram_rows(cols.transpose(1, 2).contiguous().transpose(1, 2), None, cols[:, 0], None, rows)
    assert not native.gram_rows(cols.double(), None, cols[:, 0].double(), None, rows)
    w = torch.ones(cols.shape[:2], dtype=torch.float64)
    assert not native.combine_rows(cols, None, w, torch.empty(cols.shape[0], cols.shape[2], dtype=torch.float64))
    assert not native.combine_rows(cols, None, w.float(), torch.empty(cols.shape[0], cols.shape[2]))
    # refused by window.c: kernels.py runs the compiled kernel instead, with the same result
    got = kernels.gram_rows(cols.double(), None, cols[:, 0].double(), None, native=True)
    expect = kernels.gram_rows(cols.double(), None, cols[:, 0].double(), None)
    assert got is not None and torch.equal(got, expect)


@pytest.mark.parametrize("history_dtype", STORAGES)
def test_optimizer_native_equals_eager(built, monkeypatch, history_dtype):
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(40, 24, generator=gen), torch.randn(24, 40, generator=gen)] for _ in range(9)]
    calls = spy_native(monkeypatch)  # both passes, batched or one window
    results = []
    for forced in ("native", "eager"):
        monkeypatch.setenv(choice.ENV, forced)
        calls.clear()
        init = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(40, 24, generator=init)),
              torch.nn.Parameter(torch.randn(24, 40, generator=init))]
        opt = NaturalGaLoreAdamW([{"params": ps, "rank": 6, "update_proj_gap": 4, "history_size": 4,
                                   "history_dtype": history_dtype}], lr=1e-2, weight_decay=0.01)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        assert (bool(calls) and all(calls)) if forced == "native" else not calls
        results.append([p.detach().clone() for p in ps])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tracker_sees_only_the_outputs(built, monkeypatch):
    monkeypatch.setenv(choice.ENV, "native")
    ran = spy_native(monkeypatch)
    state = window("float32", s=8, k=20000)
    w = natural.weights([state], [1e-3])[0]
    tracker = MemoryTracker(record_timeline=False)
    with tracker:
        tracker.start_step()
        out = natural.combine(state, w, "auto")
        tracker.end_step()
    assert out.shape == (20000,) and ran == [True]
    assert 20000 * 4 <= tracker.snapshot().peak_bytes <= 20000 * 4 + 1024


def fresh_build(monkeypatch, cache):
    monkeypatch.setenv("NGL_PROFILE_CACHE", str(cache))
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)


def test_build_is_cached(built, monkeypatch, tmp_path):
    fresh_build(monkeypatch, tmp_path)
    assert native.available()
    made = list((tmp_path / "native").glob("window-*.so"))
    assert len(made) == 1
    stamp = made[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_tried", False)
    assert native.available() and made[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert list((tmp_path / "native").iterdir()) == made  # no temporary left behind


def test_no_compiler_is_one_warning_and_the_compiled_kernel(monkeypatch, tmp_path):
    fresh_build(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not native.available() and not native.available()
    msgs = [str(m.message) for m in caught if issubclass(m.category, RuntimeWarning)]
    assert len(msgs) == 1 and "native window kernels are not usable here" in msgs[0]
    assert choice.candidates(torch.device("cpu")) == ("compiled", "eager")
    _, cols, _ = arena("float32")
    assert not native.gram_rows(cols, None, cols[:, 0], None, torch.empty(cols.shape[:2], dtype=torch.float64))
    got = kernels.gram_rows(cols, None, cols[:, 0], None, native=True)  # asked for native: compiled runs
    assert got is not None and torch.equal(got, kernels.gram_rows(cols, None, cols[:, 0], None))


def test_native_runs_where_compiling_failed(built, monkeypatch):
    """window.c needs no inductor: a failed torch.compile on this device leaves it usable."""
    monkeypatch.setattr(kernels, "_failed", {"cpu"})
    monkeypatch.setenv(choice.ENV, "native")
    ran = spy_native(monkeypatch)
    state = window("float32")
    eager = state["gram"].clone()
    natural._gram_update(state, 1, state["history_count"], "auto")
    assert ran == [True]
    torch.testing.assert_close(state["gram"], eager, rtol=1e-13, atol=0)
    monkeypatch.setenv(choice.ENV, "compiled")
    assert choice.kernel(state["history"], "auto") == "eager"  # the compiled kernel cannot run here


def test_int8_scales_must_come_together(built):
    _, cols, scale = arena("int8")
    rows = torch.empty(cols.shape[:2], dtype=torch.float64)
    assert not native.gram_rows(cols, scale, cols[:, 0], None, rows)  # would read a NULL g scale
    assert not native.gram_rows(cols, scale.double(), cols[:, 0], scale[:, 0].double(), rows)
    assert native.gram_rows(cols, scale, cols[:, 0], scale[:, 0], rows)


def test_int8_gram_rows_are_the_exact_integer_dots(built):
    """int8·int8 products summed in integers (int32 within a block, then exact doubles): the same
    numbers as the exact dot of the codes, times the two scales, in that order."""
    gen = torch.Generator().manual_seed(4)
    P, s, k = 2, 5, 4 * 16384 * 2 + 37  # several tasks (int32 blocks) per window, and a scalar tail
    cols = torch.randint(-128, 128, (P, s, k), generator=gen, dtype=torch.int8)  # -128 too: the int32 bound
    cols[0, :, :40000] = -128  # the largest products, many in one block
    scale = torch.rand(P, s, generator=gen)
    out = torch.empty(P, s, dtype=torch.float64)
    assert native.gram_rows(cols, scale, cols[:, 1], scale[:, 1], out)
    dots = (cols.long() * cols[:, 1:2].long()).sum(-1)  # int64: exact
    expect = dots.double() * scale.double() * scale[:, 1:2].double()
    assert torch.equal(out, expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_store_makes_the_same_bytes_as_the_torch_ops(built, dtype):
    gen = torch.Generator().manual_seed(5)
    cases = [torch.randn(100_003, generator=gen) * 3, torch.randn(7, generator=gen), torch.zeros(50)]
    tie = torch.randn(5000, generator=gen)
    tie[0], tie[1:7] = 127.0, torch.tensor([0.5, 1.5, -2.5, 2.5, -0.5, 126.5])  # scale 1: halves are ties
    for g in [*cases, tie]:
        g = g.to(dtype)
        ops, ours = {}, {}
        for st in (ops, ours):
            natural.init_window(st, g.numel(), 3, "int8", torch.device("cpu"))
        natural._store(ops, 1, g)  # compiled=False: the torch ops
        assert native.quantize(g, ours["history"][1], ours["history_scale"][1])
        assert torch.equal(ops["history"], ours["history"]) and torch.equal(ops["history_scale"], ours["history_scale"])


def test_int8_store_of_a_non_finite_g_is_left_to_torch(built):
    state = {}
    natural.init_window(state, 64, 2, "int8", torch.device("cpu"))
    before = (state["history"].clone(), state["history_scale"].clone())
    for bad in (float("nan"), float("inf"), -float("inf")):
        g = torch.ones(64)
        g[9] = bad
        assert not native.quantize(g, state["history"][0], state["history_scale"][0])
        assert torch.equal(state["history"], before[0]) and torch.equal(state["history_scale"], before[1])


def test_int8_store_is_native_only_where_the_passes_are_and_no_tracker_runs(built, monkeypatch):
    calls = []
    real = native.quantize
    monkeypatch.setattr(native, "quantize", lambda *a: calls.append(real(*a)) or calls[-1])
    g = torch.randn(20000, generator=torch.Generator().manual_seed(6))
    state = {}
    natural.init_window(state, g.numel(), 4, "int8", torch.device("cpu"))
    monkeypatch.setenv(choice.ENV, "native")
    natural.store(state, g, compiled=True)
    assert calls == [True]
    natural.store(state, g, compiled=False)  # an eager group
    tracker = MemoryTracker(record_timeline=False)
    with tracker:  # what a measured step allocates must be what an estimate counts: the torch ops
        tracker.start_step()
        natural.store(state, g, compiled=True)
        tracker.end_step()
    monkeypatch.setenv(choice.ENV, "eager")
    natural.store(state, g, compiled=True)
    assert calls == [True]
    assert tracker.snapshot().peak_bytes >= g.numel() * 4  # the ops' g-sized temporaries
    assert torch.equal(state["history"][0], state["history"][1])  # the same bytes every way
    assert all(torch.equal(state["history"][0], state["history"][j]) for j in (2, 3))


def _all_passes():
    """Every entry point of window.c on small arenas of each storage: the Gram rows, g̃ (float32
    and bfloat16) and an int8 column from a float32 and a bfloat16 g."""
    got = {}
    for storage in STORAGES:
        states, cols, scale = arena(storage, k=3 * 16384 + 29)
        rows = torch.empty(cols.shape[:2], dtype=torch.float64)
        assert native.gram_rows(cols, scale, cols[:, 2], None if scale is None else scale[:, 2], rows)
        w = torch.randn(cols.shape[:2], dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        for dtype in (torch.float32, torch.bfloat16):
            out = torch.empty(cols.shape[0], cols.shape[2], dtype=dtype)
            assert native.combine_rows(cols, scale, w, out)
            got[storage, dtype] = (out, [dequantized64(st) for st in states], w)
        got[storage] = rows
    g = torch.randn(40_009, generator=torch.Generator().manual_seed(8)) * 5
    for dtype in (torch.float32, torch.bfloat16):
        codes, sc = torch.empty(g.numel(), dtype=torch.int8), torch.empty(1)
        assert native.quantize(g.to(dtype), codes, sc)
        got["quantize", dtype] = (codes, sc)
    return got


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction-set flags")
@pytest.mark.parametrize("isa", [["-mno-avx512f"], ["-march=x86-64"]], ids=["avx2", "generic"])
def test_instruction_set_fallbacks_give_the_same_numbers(built, monkeypatch, tmp_path, isa):
    """window.c's AVX2 and plain-C branches (built here with AVX-512, or AVX2, turned off), against
    the build this machine uses: Gram rows and int8 columns exact, so equal; g̃ within its bound
    (without FMA a product is rounded apart from its sum)."""
    base = _all_passes()
    fresh_build(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "_FLAGS", [*native._FLAGS, *isa])
    assert native.available()
    other = _all_passes()
    assert _bf16_rounding_matches_torch()
    for key, value in base.items():
        if isinstance(key, str):
            assert torch.equal(other[key], value), key
        elif key[0] == "quantize":
            assert all(torch.equal(a, b) for a, b in zip(other[key], value)), key
        else:
            out, cols, w = other[key]
            for p in range(out.shape[0]):
                ref.assert_within_summation_bound(out[p], cols[p], w[p], key[1])


def _bf16_rounding_matches_torch() -> bool:
    """window.c rounds g̃ to bfloat16 through float32 with its own integer rounding, 8 lanes at a
    time: against torch's own float32 → bfloat16 conversion on ties, subnormals, the largest
    finite floats (they round to inf) and random values, in the vector lanes and the scalar tail."""
    gen = torch.Generator().manual_seed(9)
    special = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2**-130, -3 * 2**-140, 1e-45,
                            3.4028235e38, -3.4028235e38, 0.0, -0.0, 65504.0, 2**-126], dtype=torch.float32)
    c = torch.cat([special, torch.randn(997, generator=gen) * 10.0 ** torch.randint(-30, 30, (997,), generator=gen)])
    window = c.view(1, -1).contiguous()  # s = 1: g̃ = 1·c exactly, so only the rounding is tested
    w = torch.ones(1, dtype=torch.float64)
    f32, bf16 = torch.empty(c.numel()), torch.empty(c.numel(), dtype=torch.bfloat16)
    assert native.combine_rows(window, None, w, f32) and native.combine_rows(window, None, w, bf16)
    return torch.equal(f32, c) and torch.equal(bf16.view(torch.int16), c.to(torch.bfloat16).view(torch.int16))


def test_bfloat16_g_tilde_is_torchs_rounding_of_the_float32_one(built):
    assert _bf16_rounding_matches_torch()
