"""Checkpointing, non-finite gradients, Cholesky backoff and hyperparameter validation."""
import io
import warnings

import pytest
import torch

from ngl_profile.optim import NaturalGaLoreAdafactor, NaturalGaLoreAdamW, NaturalGaLoreAdamW8bit
from ngl_profile.optim import natural

from .rng import local_rng


def make(cls=NaturalGaLoreAdamW, history_dtype="float32", **kw):
    init = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 96, generator=init)), torch.nn.Parameter(torch.randn(96, generator=init))]
    opt = cls([{"params": [params[0]], "rank": 16, "update_proj_gap": 5, "history_size": 4,
                "history_dtype": history_dtype, **kw}, {"params": [params[1]]}], lr=1e-2)
    return params, opt


def grads(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(64, 96, generator=gen) * 50, torch.randn(96, generator=gen)] for _ in range(n)]


def train(params, opt, gs):
    for g in gs:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()


@pytest.mark.parametrize("cls,svd", [(NaturalGaLoreAdamW, "full"), (NaturalGaLoreAdamW8bit, "full"),
                                     (NaturalGaLoreAdafactor, "full"), (NaturalGaLoreAdamW, "lowrank")])
@pytest.mark.parametrize("history_dtype", ["float32", "bfloat16", "int8"])
def test_resume_mid_window_mid_gap_is_bit_exact(cls, svd, history_dtype):
    gs = grads(11, seed=3)
    ref_params, ref_opt = make(cls, history_dtype, svd=svd)
    train(ref_params, ref_opt, gs)
    # a resumed process's global RNG is not the original's (and the conftest guard checks that
    # the optimizer never draws from it)
    with local_rng(999):
        params, opt = make(cls, history_dtype, svd=svd)
        train(params, opt, gs[:7])  # step 7: window full and sliding, 2 steps into the 2nd gap
        buf = io.BytesIO()
        torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in params]}, buf)
        buf.seek(0)
        ckpt = torch.load(buf, weights_only=True)

        params2, opt2 = make(cls, history_dtype, svd=svd)
        with torch.no_grad():
            for p, saved in zip(params2, ckpt["params"]):
                p.copy_(saved)
        opt2.load_state_dict(ckpt["opt"])
        assert opt2.state[params2[0]]["gram"].dtype == torch.float64
        assert opt2.state[params2[0]]["history"].dtype == natural.HISTORY_DTYPES[history_dtype]
        train(params2, opt2, gs[7:])
        for a, b in zip(ref_params, params2):
            assert torch.equal(a, b)


def test_state_holds_only_tensors_and_numbers():
    params, opt = make()
    train(params, opt, grads(3, 0))
    for st in opt.state.values():
        for v in st.values():
            assert torch.is_tensor(v) or isinstance(v, (int, float)), type(v)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_is_skipped_and_counted(bad):
    params, opt = make()
    train(params, opt, grads(3, 0))
    st = opt.state[params[0]]
    before = [p.detach().clone() for p in params]
    gram, count = st["gram"].clone(), st["history_count"]
    moments = st["exp_avg"].clone()
    g = grads(1, 9)[0]
    g[0][3, 4] = bad
    for p, gi in zip(params, g):
        p.grad = gi
    opt.step()
    assert opt.skipped_updates == 1
    assert torch.equal(params[0], before[0])  # skipped: no update, no weight decay
    assert not torch.equal(params[1], before[1])  # the other parameter still trains
    assert torch.equal(st["gram"], gram) and st["history_count"] == count
    assert torch.equal(st["exp_avg"], moments)
    train(params, opt, grads(2, 4))  # and training goes on
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("policy", ["keep", "reset", "rotate"])
@pytest.mark.parametrize("compile", [True, False])
def test_projection_made_in_the_window_trains_as_a_copied_one(policy, compile, monkeypatch):
    """g_t projected straight into its window slot (natural.next_column) against the copy it
    replaces, with non-finite gradients before the window is full, once it is, and right before
    gap steps (a reset moves the head, a rotation rewrites every slot): the same bits, and no NaN
    ever stays in a window."""
    gs = grads(16, seed=8)
    for step, value in ((1, float("nan")), (6, float("inf")), (9, float("nan")), (14, float("-inf"))):
        gs[step][0][step % 64, 7] = value  # steps 6 and 14 fall right before gap steps 7 and 15
    runs = []
    for in_place in (True, False):
        if not in_place:
            monkeypatch.setattr(natural, "next_column", lambda state, dtype: None)
        params, opt = make(on_subspace_change=policy)
        opt.param_groups[0]["compile"] = opt.param_groups[1]["compile"] = compile
        for g in gs:
            train(params, opt, [g])
            assert torch.isfinite(opt.state[params[0]]["history"]).all()
        assert opt.skipped_updates == 4
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad,finite", [(None, True), (float("nan"), False), (float("inf"), False),
                                        (float("-inf"), False)])
def test_all_finite_reads_every_entry(dtype, bad, finite):
    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(5)).to(dtype)
    if bad is not None:
        x[40, 17] = bad  # one entry, away from the ends
    assert natural.all_finite(x) is finite


def test_all_finite_assumes_finite_without_values():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():  # the estimator's mode: no values to read, the normal path is taken
        assert natural.all_finite(torch.empty(8, 8)) is True


def test_cholesky_failure_raises_damping_instead_of_nan():
    state = {}
    natural.init_window(state, 8, 3, "float32", torch.device("cpu"))
    for _ in range(3):
        natural.push(state, torch.ones(8))
    state["gram"][:] = -1.0  # not positive definite for any small λ
    out = natural.solve(state, 1e-3)
    assert torch.isfinite(out).all()
    assert state["damping_backoffs"] > 0


@pytest.mark.parametrize("key,value,match", [
    ("rank", 0, "rank must be a positive integer"),
    ("rank", -3, "rank must be a positive integer"),
    ("history_size", -1, r"history_size must be an integer ≥ 0"),
    ("damping", 0.0, "damping must be a number > 0"),
    ("proj_type", "diagonal", "proj_type must be one of std, left, right, tucker"),
    ("history_dtype", "fp8", "history_dtype must be one of float32, bfloat16, int8"),
    ("on_subspace_change", "forget", "on_subspace_change must be one of keep, reset, rotate"),
    ("update_proj_gap", 0, "update_proj_gap must be an integer ≥ 1"),
])
def test_bad_hyperparameters_name_value_and_range(key, value, match):
    p = torch.nn.Parameter(torch.zeros(8, 8))
    with pytest.raises(ValueError, match=match) as e:
        NaturalGaLoreAdamW([{"params": [p], "rank": 4, key: value}])
    assert repr(value) in str(e.value)


def test_history_dtype_accepts_torch_dtypes():
    p = torch.nn.Parameter(torch.zeros(8, 8))
    opt = NaturalGaLoreAdamW([{"params": [p], "rank": 4, "history_dtype": torch.bfloat16}])
    assert opt.param_groups[0]["history_dtype"] == "bfloat16"


def test_rank_larger_than_matrix_is_clamped_with_one_warning():
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(6, 10, generator=gen)), torch.nn.Parameter(torch.randn(10, 4, generator=gen))]
    opt = NaturalGaLoreAdamW([{"params": ps, "rank": 64, "history_size": 2}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
    assert len([w for w in caught if "clamped" in str(w.message)]) == 1
    assert opt.state[ps[0]]["proj_0"].shape == (6, 6)  # left: m×min(r, m)
    assert opt.state[ps[1]]["proj_0"].shape == (4, 4)  # right: min(r, n)×n


@pytest.mark.parametrize("policy", ["keep", "reset", "rotate"])
def test_forced_side_rank_is_clamped_to_what_the_svd_gives(policy):
    """left forced onto a 16×6 matrix at rank 10: the SVD gives 6 columns, not min(10, 16)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16, 6, generator=gen))
    opt = NaturalGaLoreAdamW([{"params": [p], "rank": 10, "proj_type": "left", "history_size": 3,
                               "update_proj_gap": 2, "on_subspace_change": policy}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):  # two basis refreshes with old-basis columns in the window
            p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
    assert [str(w.message) for w in caught if "clamped" in str(w.message)] == [
        "rank 10 exceeds what a (16, 6) tensor allows; clamped to (6,) (warned once per optimizer)"]
    assert opt.state[p]["proj_0"].shape == (16, 6)
    assert opt.state[p]["history"].shape == (3, 36)
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("whole_step", [True, False])
def test_whole_step_and_per_parameter_checks_agree(whole_step, monkeypatch):
    """The GPU's one-read-per-step check and the CPU's per-parameter one skip the same updates."""
    monkeypatch.setattr(NaturalGaLoreAdamW, "whole_step_check", whole_step)
    params, opt = make()
    gs = grads(4, 1)
    gs[2][0][0, 0] = float("nan")
    gs[3][1][5] = float("inf")
    train(params, opt, gs)
    assert opt.skipped_updates == 2
    assert opt.state[params[0]]["step"] == 3 and opt.state[params[1]]["step"] == 3
    ref_params, ref_opt = make()
    monkeypatch.setattr(NaturalGaLoreAdamW, "whole_step_check", not whole_step)
    train(ref_params, ref_opt, gs)
    for a, b in zip(params, ref_params):
        assert torch.equal(a, b)


def repeated_gradient_run(make_opt, steps=12, damping=1e-14, n_params=1):
    """The same gradient every step (a repeated batch): S = λI + ‖g‖²·11ᵀ, whose float64 Cholesky
    fails at λ = 1e-14 (its pivots' rounding, ~2⁻⁵³·‖g‖², exceeds λ) and factors at 1e3·λ."""
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.zeros(64, 128)) for _ in range(n_params)]
    grads = [torch.randn(64, 128, generator=gen) for _ in ps]
    opt = make_opt([{"params": ps, "rank": 8, "history_size": 4, "damping": damping}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    return opt, [w for w in caught if "damping" in str(w.message)]


@pytest.mark.parametrize("cls", [NaturalGaLoreAdamW, NaturalGaLoreAdamW8bit, NaturalGaLoreAdafactor])
def test_damping_backoff_is_warned_once_and_counted(cls):
    opt, warned = repeated_gradient_run(lambda groups: cls(groups, lr=1e-2), n_params=2)
    assert len(warned) == 1, [str(w.message) for w in warned]
    msg = str(warned[0].message)
    assert "λ = 1e-14" in msg and "1e-11 (1e3·λ)" in msg and issubclass(warned[0].category, RuntimeWarning)
    assert opt.damping_backoffs > 0
    assert opt.damping_backoffs == sum(int(st["damping_backoffs"]) for st in opt.state.values())


def test_normal_run_warns_nothing_and_counts_zero():
    params, opt = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(params, opt, grads(8, 0))
    assert [str(w.message) for w in caught if "damping" in str(w.message)] == []
    assert opt.damping_backoffs == 0


def test_layerwise_warns_once_for_all_its_parameters():
    """Its inner optimizers (one per parameter, stepped by the backward hooks) share one warning."""
    from ngl_profile.optim import LayerwiseOptimizer

    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.zeros(64, 128)) for _ in range(3)]
    grads = [torch.randn(64, 128, generator=gen) for _ in ps]
    lw = LayerwiseOptimizer([{"params": ps, "rank": 8, "history_size": 4, "damping": 1e-14}],
                            lambda groups: NaturalGaLoreAdamW(groups, lr=1e-2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            sum((p * g).sum() for p, g in zip(ps, grads)).backward()  # ∂/∂p = g, stepped in the hooks
            lw.step()
    assert len([w for w in caught if "damping" in str(w.message)]) == 1
    assert all(o.damping_backoffs > 0 for o in lw.optimizers)
    assert lw.damping_backoffs == sum(o.damping_backoffs for o in lw.optimizers)


def test_damping_backoffs_reads_zero_without_values():
    """Under shape-only tracing (the estimator's FakeTensorMode) there is nothing to read: 0."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        p = torch.nn.Parameter(torch.zeros(64, 128))
        opt = NaturalGaLoreAdamW([{"params": [p], "rank": 8, "history_size": 4}])
        for _ in range(3):
            p.grad = torch.ones(64, 128)
            opt.step()
    assert opt.damping_backoffs == 0
